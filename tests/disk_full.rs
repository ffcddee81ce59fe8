//! A full disk: the data directory lives on a small tmpfs that a filler
//! file fills up while the server writes. Writes that cannot be made
//! durable get 507 `INSUFFICIENT_STORAGE` and are not acknowledged,
//! `/health` says why, reads keep working, and once space returns writes
//! succeed again without a restart. A clean stop or a SIGKILL at any point
//! of this keeps every acknowledged point and nothing else.
//!
//! Mounting needs root: without it the test says so and passes.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestServer;
use serde_json::{Value, json};

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount_or_skip(test: &str, megabytes: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Tmpfs { dir }),
            Ok(output) => {
                eprintln!(
                    "skipping {test}: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                None
            }
            Err(error) => {
                eprintln!("skipping {test}: cannot run mount: {error}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the file system with a filler file until a write fails.
fn fill(path: &Path) -> PathBuf {
    let filler = path.join("filler");
    let mut file = fs::File::create(&filler).unwrap();
    let chunk = vec![0xA5u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
    filler
}

const ARGS: [&str; 4] = ["--flush-age-secs", "3600", "--flush-rows", "100000000"];

fn post_points(server: &TestServer, run: &str, first: i64) -> (u16, Value) {
    let steps: Vec<i64> = (first..first + 200).collect();
    let values: Vec<f64> = steps.iter().map(|&step| step as f64).collect();
    server.request(
        "POST",
        "/api/v1/ingest",
        Some(&json!({"batches": [{"run_id": run, "steps": steps, "values": {"loss": values}}]})),
    )
}

/// Posts batches until one is refused with 507; returns the steps of the
/// acknowledged ones.
fn write_until_refused(server: &TestServer, run: &str, next: &mut i64) -> Vec<i64> {
    let mut acknowledged = Vec::new();
    for _ in 0..200 {
        let (status, body) = post_points(server, run, *next);
        match status {
            200 => acknowledged.extend(*next..*next + 200),
            507 => {
                assert_eq!(body["error_code"], "INSUFFICIENT_STORAGE", "{body}");
                *next += 200;
                return acknowledged;
            }
            other => panic!("unexpected {other}: {body}"),
        }
        *next += 200;
    }
    panic!("the full disk never refused a write");
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_without_a_restart() {
    let Some(tmpfs) = Tmpfs::mount_or_skip("disk_full", 24) else {
        return;
    };
    let data = tmpfs.path().join("data");
    let mut server = TestServer::start(&data, &ARGS);
    let run = server.create_run("disk", "full");
    let mut next = 0i64;
    let mut acknowledged = Vec::new();
    let (status, body) = post_points(&server, &run, next);
    assert_eq!(status, 200, "{body}");
    acknowledged.extend(next..next + 200);
    next += 200;

    // The disk fills up: writes are refused, not acknowledged.
    let filler = fill(tmpfs.path());
    acknowledged.extend(write_until_refused(&server, &run, &mut next));
    let (status, body) = post_points(&server, &run, next);
    assert_eq!(status, 507, "still full: {body}");
    next += 200;
    let health = server.get("/health");
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["problems"][0].as_str().unwrap().contains("507"),
        "{health}"
    );
    // Reads are served, with exactly the acknowledged points.
    assert_eq!(server.series(&run, "loss").0, acknowledged);
    // Catalog changes are refused too and leave nothing behind. A small
    // record may still fit in the log's last page: retry until refused.
    let refused_tag = (0..50)
        .find_map(|attempt| {
            let key = format!("refused{attempt}");
            let (status, body) = server.request(
                "POST",
                &format!("/api/v1/runs/{run}/tags"),
                Some(&json!({ key.clone(): "x" })),
            );
            match status {
                200 => None,
                507 => {
                    assert_eq!(body["error_code"], "INSUFFICIENT_STORAGE", "{body}");
                    Some(key)
                }
                other => panic!("unexpected {other}: {body}"),
            }
        })
        .expect("a catalog change refused");
    let shown = server.get(&format!("/api/v1/runs/{run}"));
    assert!(!shown.to_string().contains(&refused_tag), "{shown}");
    let refused_experiment = (0..50)
        .find_map(|attempt| {
            let name = format!("made-while-full-{attempt}");
            let (status, body) = server.request(
                "POST",
                "/api/2.0/mlflow/experiments/create",
                Some(&json!({ "name": name })),
            );
            match status {
                200 => None,
                507 => Some(name),
                other => panic!("unexpected {other}: {body}"),
            }
        })
        .expect("an experiment refused");
    let (status, _) = server.request(
        "GET",
        &format!("/api/2.0/mlflow/experiments/get-by-name?experiment_name={refused_experiment}"),
        None,
    );
    assert_eq!(status, 404, "a refused experiment does not exist");

    // Space comes back: the next write succeeds, no restart.
    fs::remove_file(&filler).unwrap();
    let (status, body) = post_points(&server, &run, next);
    assert_eq!(status, 200, "{body}");
    acknowledged.extend(next..next + 200);
    next += 200;
    assert_eq!(server.get("/health")["status"], "ok");
    assert_eq!(server.series(&run, "loss").0, acknowledged);
    server.post(
        "/api/2.0/mlflow/experiments/create",
        &json!({ "name": refused_experiment }),
    );
    server.post(
        &format!("/api/v1/runs/{run}/tags"),
        &json!({"stage": "kept"}),
    );

    // A clean restart keeps every acknowledged point and change, and
    // nothing else.
    server.stop();
    server.start_again();
    assert_eq!(server.series(&run, "loss").0, acknowledged);
    let shown = server.get(&format!("/api/v1/runs/{run}"));
    assert!(shown.to_string().contains("kept"), "{shown}");
    assert!(!shown.to_string().contains(&refused_tag), "{shown}");
    server.get(&format!(
        "/api/2.0/mlflow/experiments/get-by-name?experiment_name={refused_experiment}"
    ));

    // Full again, then SIGKILL while refusing writes; space back; start.
    let filler = fill(tmpfs.path());
    acknowledged.extend(write_until_refused(&server, &run, &mut next));
    server.kill();
    fs::remove_file(&filler).unwrap();
    server.start_again();
    assert_eq!(server.get("/health")["status"], "ok");
    assert_eq!(server.series(&run, "loss").0, acknowledged);
    let (status, body) = post_points(&server, &run, next);
    assert_eq!(status, 200, "{body}");
    acknowledged.extend(next..next + 200);
    server.stop();
    server.start_again();
    assert_eq!(server.series(&run, "loss").0, acknowledged);
    server.stop();
}

/// Polls `/health` until `done` accepts it.
fn wait_for_health(server: &TestServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let health = server.get("/health");
        if done(&health) {
            return health;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never came: {health}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn metric_files_that_cannot_be_written_stay_in_the_wal_and_are_retried() {
    let Some(tmpfs) = Tmpfs::mount_or_skip("disk_full (metric files)", 24) else {
        return;
    };
    let data = tmpfs.path().join("data");
    // Buffers are written to files one second after their first point.
    let mut server = TestServer::start(&data, &["--flush-age-secs", "1"]);
    let run = server.create_run("disk", "files");
    let (status, body) = post_points(&server, &run, 0);
    assert_eq!(status, 200, "{body}");
    let filler = fill(tmpfs.path());
    let health = wait_for_health(&server, "a failed file write", |health| {
        health["problems"].as_array().is_some_and(|problems| {
            problems
                .iter()
                .any(|p| p.as_str().unwrap_or("").contains("metric files"))
        })
    });
    assert_eq!(health["status"], "degraded");
    assert!(server.metric("stepstore_persist_failures_total") >= 1.0);
    assert_eq!(server.series(&run, "loss").0, (0..200).collect::<Vec<_>>());
    // Space comes back: the retry writes the file, health is ok again.
    fs::remove_file(&filler).unwrap();
    wait_for_health(&server, "recovery", |health| health["status"] == "ok");
    assert!(server.metric("stepstore_files_persisted_total") >= 1.0);
    server.kill();
    server.start_again();
    assert_eq!(server.series(&run, "loss").0, (0..200).collect::<Vec<_>>());
    server.stop();
}
