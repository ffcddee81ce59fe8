//! WAL damage on disk: a torn final frame (a crash mid-write) is truncated
//! and the server starts with everything before it; a flipped byte in the
//! middle of a segment stops the start with a clear error instead of
//! silently skipping acknowledged data.

mod common;

use std::fs;

use common::{TestServer, newest_wal_segment};
use serde_json::json;

const BATCHES: i64 = 20;
const POINTS_PER_BATCH: i64 = 10;

/// Logs BATCHES sequential requests (one WAL frame each) and kills the server.
fn logged_then_killed(dir: &std::path::Path) -> String {
    let mut server = TestServer::start(dir, &[]);
    let run_id = server.create_run("wal", "victim");
    for batch in 0..BATCHES {
        let points: Vec<_> = (0..POINTS_PER_BATCH)
            .map(|offset| {
                let step = batch * POINTS_PER_BATCH + offset;
                json!({"key": "loss", "value": step as f64 * 0.5, "step": step})
            })
            .collect();
        server.post(
            &format!("/api/v1/runs/{run_id}/metrics"),
            &json!({ "points": points }),
        );
    }
    server.kill();
    run_id
}

#[test]
fn torn_final_frame_is_truncated_and_the_rest_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let run_id = logged_then_killed(dir.path());
    let segment = newest_wal_segment(dir.path());
    let length = fs::metadata(&segment).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(length - 7).unwrap();
    drop(file);

    let mut server = TestServer::start(dir.path(), &[]);
    let (steps, _, values) = server.series(&run_id, "loss");
    let expected: Vec<i64> = (0..(BATCHES - 1) * POINTS_PER_BATCH).collect();
    assert_eq!(
        steps, expected,
        "everything but the torn last batch is back"
    );
    assert_eq!(values[5], 2.5);
    // The server keeps working after the repair.
    server.post(
        &format!("/api/v1/runs/{run_id}/metrics"),
        &json!({"points": [{"key": "loss", "value": 1.0, "step": 1000}]}),
    );
    let stderr = server.stop();
    assert!(
        stderr.contains("torn frame"),
        "a warning names the repair:\n{stderr}"
    );
    let server = TestServer::start(dir.path(), &[]);
    assert_eq!(server.series(&run_id, "loss").0.len(), expected.len() + 1);
}

#[test]
fn flipped_byte_in_the_middle_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    logged_then_killed(dir.path());
    let segment = newest_wal_segment(dir.path());
    let mut bytes = fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    fs::write(&segment, &bytes).unwrap();

    let exit = TestServer::start_expecting_failure(dir.path(), &[]);
    assert!(!exit.success);
    assert!(
        exit.stderr.contains("corrupt"),
        "the error says what is wrong:\n{}",
        exit.stderr
    );
    assert!(
        exit.stderr
            .contains(&segment.file_name().unwrap().to_string_lossy().to_string()),
        "the error names the segment:\n{}",
        exit.stderr
    );
    assert_eq!(
        fs::read(&segment).unwrap(),
        bytes,
        "the damaged segment is left as it was"
    );
}

/// The non-empty WAL segments, oldest first.
fn wal_segments(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut segments: Vec<_> = fs::read_dir(data_dir.join("wal"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .filter(|path| fs::metadata(path).is_ok_and(|meta| meta.len() > 0))
        .collect();
    segments.sort();
    segments
}

#[test]
fn a_missing_middle_segment_stops_the_start_and_names_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments, and buffers that are not persisted during the test,
    // so every record stays in the WAL.
    let args = [
        "--wal-segment-mb",
        "1",
        "--flush-age-secs",
        "3600",
        "--flush-rows",
        "100000000",
    ];
    let mut server = TestServer::start(dir.path(), &args);
    let run_id = server.create_run("wal", "gap");
    let per_request = 20_000i64;
    let mut requests = 0i64;
    while wal_segments(dir.path()).len() < 3 {
        assert!(requests < 100, "the WAL never reached three segments");
        let steps: Vec<i64> = (requests * per_request..(requests + 1) * per_request).collect();
        let values: Vec<f64> = steps.iter().map(|&step| step as f64).collect();
        server.post(
            "/api/v1/ingest",
            &json!({"batches": [{"run_id": run_id, "steps": steps, "values": {"loss": values}}]}),
        );
        requests += 1;
    }
    server.kill();
    let segments = wal_segments(dir.path());
    let middle = segments[1].clone();
    let kept = fs::read(&middle).unwrap();
    fs::remove_file(&middle).unwrap();

    let exit = TestServer::start_expecting_failure(dir.path(), &args);
    assert!(!exit.success);
    assert!(
        exit.stderr.contains("WAL records are missing"),
        "the error says what is wrong:\n{}",
        exit.stderr
    );
    assert!(
        exit.stderr.contains(
            &segments[2]
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string()
        ),
        "the error names the segment after the gap:\n{}",
        exit.stderr
    );
    // Nothing was removed or cut, so restoring the segment recovers all.
    assert_eq!(wal_segments(dir.path()).len(), segments.len() - 1);
    fs::write(&middle, kept).unwrap();
    let server = TestServer::start(dir.path(), &args);
    let (steps, _, _) = server.series(&run_id, "loss");
    assert_eq!(steps, (0..requests * per_request).collect::<Vec<_>>());
}
