//! Damaged metric files at start: a file whose footer cannot be read no
//! longer stops the server. It is moved to `quarantine/` (counted on
//! `/metrics`, named in the log), the other runs are served, and the run's
//! points still in the WAL are rebuilt from it. A damaged copy of the
//! catalog snapshot is moved there too, and the other copy used. A data
//! page damaged later fails the reads of its run only, naming the file.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{TestServer, parquet_files};
use serde_json::json;

/// The metric files of one run.
fn files_of(data_dir: &Path, run_id: &str) -> Vec<PathBuf> {
    parquet_files(data_dir)
        .into_iter()
        .filter(|path| path.to_string_lossy().contains(&format!("run_id={run_id}")))
        .collect()
}

/// Cuts the end of a file (the Parquet footer and its magic).
fn cut_footer(path: &Path) {
    let length = fs::metadata(path).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(length - 12).unwrap();
    file.sync_all().unwrap();
}

fn log_points(server: &TestServer, run_id: &str, steps: std::ops::Range<i64>) {
    let points: Vec<_> = steps
        .map(|step| json!({"key": "loss", "value": step as f64, "step": step}))
        .collect();
    server.post(
        &format!("/api/v1/runs/{run_id}/metrics"),
        &json!({ "points": points }),
    );
}

fn quarantined(data_dir: &Path) -> usize {
    let root = data_dir.join("quarantine");
    let mut found = 0;
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found += 1;
            }
        }
    }
    found
}

#[test]
fn a_damaged_file_whose_wal_is_gone_is_quarantined_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let damaged_run = server.create_run("damage", "damaged");
    let intact_run = server.create_run("damage", "intact");
    log_points(&server, &damaged_run, 0..100);
    log_points(&server, &intact_run, 0..100);
    // A clean stop persists the buffers and removes the WAL they came from.
    server.stop();
    let damaged = files_of(dir.path(), &damaged_run);
    assert!(!damaged.is_empty());
    for file in &damaged {
        cut_footer(file);
    }

    let mut server = TestServer::start(dir.path(), &[]);
    assert_eq!(server.series(&intact_run, "loss").0.len(), 100);
    // The damaged run is still served; the file's points are gone.
    let (steps, _, _) = server.series(&damaged_run, "loss");
    assert!(steps.is_empty(), "{steps:?}");
    assert_eq!(
        server.metric("stepstore_quarantined_files_total"),
        damaged.len() as f64
    );
    assert!(files_of(dir.path(), &damaged_run).is_empty());
    assert_eq!(quarantined(dir.path()), damaged.len());
    // The run takes new points, and the next start is clean.
    log_points(&server, &damaged_run, 100..110);
    let log = server.stop();
    assert!(log.contains("quarantine"), "the log names the move:\n{log}");
    let server = TestServer::start(dir.path(), &[]);
    assert_eq!(server.metric("stepstore_quarantined_files_total"), 0.0);
    assert_eq!(
        server.series(&damaged_run, "loss").0,
        (100..110).collect::<Vec<_>>()
    );
    assert_eq!(server.series(&intact_run, "loss").0.len(), 100);
}

#[test]
fn a_damaged_file_whose_points_are_still_in_the_wal_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    // Buffers are persisted only when a run ends.
    let args = ["--flush-age-secs", "3600", "--flush-rows", "100000000"];
    let mut server = TestServer::start(dir.path(), &args);
    // A run that keeps its points buffered holds the WAL from its first
    // record on, so the WAL still has the finished run's points when its
    // file is written.
    let buffered_run = server.create_run("damage", "still-training");
    log_points(&server, &buffered_run, 0..10);
    let finished_run = server.create_run("damage", "finished");
    log_points(&server, &finished_run, 0..500);
    server.post(
        "/api/2.0/mlflow/runs/update",
        &json!({"run_id": finished_run, "status": "FINISHED"}),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while files_of(dir.path(), &finished_run).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the finished run was never persisted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    let damaged = files_of(dir.path(), &finished_run);
    for file in &damaged {
        cut_footer(file);
    }

    let server = TestServer::start(dir.path(), &args);
    assert_eq!(
        server.series(&finished_run, "loss").0,
        (0..500).collect::<Vec<_>>(),
        "every point is back from the WAL"
    );
    assert_eq!(server.series(&buffered_run, "loss").0.len(), 10);
    assert_eq!(
        server.metric("stepstore_quarantined_files_total"),
        damaged.len() as f64
    );
    assert_eq!(quarantined(dir.path()), damaged.len());
}

/// The catalog snapshot files (both copies).
fn snapshot_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(data_dir.join("catalog"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            name.starts_with("snapshot-") && !name.ends_with(".tmp")
        })
        .collect();
    found.sort();
    found
}

fn flip_middle_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_catalog_snapshot_copy_is_quarantined_and_the_other_used() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let run = server.create_run("snap", "r");
    server.post(&format!("/api/v1/runs/{run}/params"), &json!({"lr": "0.1"}));
    log_points(&server, &run, 0..10);
    // A clean stop snapshots the catalog and removes the WAL before it.
    server.stop();
    let snapshots = snapshot_files(dir.path());
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    assert!(snapshots[0].to_string_lossy().ends_with(".bin"));
    assert!(snapshots[1].to_string_lossy().ends_with(".copy"));
    flip_middle_byte(&snapshots[0]);

    // The first copy is damaged: the second is used, the first moved away.
    let mut server = TestServer::start(dir.path(), &[]);
    let answer = server.get(&format!("/api/2.0/mlflow/runs/get?run_id={run}"));
    assert_eq!(answer["run"]["data"]["params"][0]["key"], "lr", "{answer}");
    assert_eq!(server.series(&run, "loss").0.len(), 10);
    assert_eq!(server.metric("stepstore_quarantined_files_total"), 1.0);
    assert_eq!(quarantined(dir.path()), 1);
    // New changes are snapshotted in two good copies again.
    server.post(&format!("/api/v1/runs/{run}/tags"), &json!({"t": "x"}));
    server.stop();
    assert_eq!(snapshot_files(dir.path()).len(), 2);

    // Both copies damaged: the start stops, naming both files.
    for path in snapshot_files(dir.path()) {
        flip_middle_byte(&path);
    }
    let exit = TestServer::start_expecting_failure(dir.path(), &[]);
    assert!(!exit.success);
    assert!(
        exit.stderr
            .contains("every copy of the newest catalog snapshot is damaged")
            && exit.stderr.contains(".copy")
            && exit
                .stderr
                .contains("restore the catalog directory from a backup"),
        "{}",
        exit.stderr
    );
}

#[test]
fn a_damaged_data_page_fails_reads_of_its_run_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let damaged = server.create_run("pages", "damaged");
    let intact = server.create_run("pages", "intact");
    for run in [&damaged, &intact] {
        let steps: Vec<i64> = (0..40_000).collect();
        let values: Vec<f64> = steps.iter().map(|&step| (step as f64).sin()).collect();
        server.post(
            "/api/v1/ingest",
            &json!({"batches": [{"run_id": run, "steps": steps, "values": {"loss": values}}]}),
        );
    }
    server.stop();
    // Flip one bit in the middle of the run's file: a data page, not the
    // footer, so the file passes the checks at start, and the page may
    // well still decode (to a wrong value).
    let files = files_of(dir.path(), &damaged);
    assert_eq!(files.len(), 1);
    let mut bytes = fs::read(&files[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    fs::write(&files[0], bytes).unwrap();

    let mut server = TestServer::start(dir.path(), &[]);
    // Reading the damaged run is a clear error naming the file, not a
    // wrong value, a crash or a silently short answer: through the scalar
    // API, MLflow's get-history and SQL.
    let file_name = files[0].file_name().unwrap().to_string_lossy().to_string();
    for path in [
        format!("/api/v1/runs/{damaged}/metrics/loss?max_points=0"),
        format!("/api/2.0/mlflow/metrics/get-history?run_id={damaged}&metric_key=loss"),
    ] {
        let (status, body) = server.request("GET", &path, None);
        assert!(status >= 500, "{path}: {status}");
        let text = body.to_string();
        assert!(
            text.contains("damaged") && text.contains(&file_name),
            "{path}: {text}"
        );
    }
    let (status, body) = server.request(
        "POST",
        "/api/v1/sql",
        Some(&json!({"query": format!("SELECT sum(value) AS s FROM metrics WHERE run_id = '{damaged}'")})),
    );
    assert_ne!(status, 200, "{body}");
    assert!(body.to_string().contains("damaged"), "{body}");
    // Each of the three failed reads is counted.
    assert!(server.metric("stepstore_damaged_file_reads_total") >= 3.0);
    // The engine's footer cache holds the files it opened.
    assert!(server.metric("stepstore_footer_cache_bytes") > 0.0);
    // The other run is served whole, by every read path.
    let (steps, _, values) = server.series(&intact, "loss");
    assert_eq!(steps.len(), 40_000);
    assert!(common::same_value(values[123], (123f64).sin()));
    let count = server.post(
        "/api/v1/sql",
        &json!({"query": format!("SELECT count(*) AS n FROM metrics WHERE run_id = '{intact}'")}),
    );
    assert_eq!(count["rows"][0]["n"], 40_000, "{count}");
    let history = server.get(&format!(
        "/api/2.0/mlflow/metrics/get-history?run_id={intact}&metric_key=loss&max_results=100"
    ));
    assert_eq!(history["metrics"].as_array().unwrap().len(), 100);
    assert_eq!(server.get("/health")["status"], "ok");
    server.stop();
}
