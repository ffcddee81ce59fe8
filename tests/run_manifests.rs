//! Run manifests: once a run's files settle, a manifest beside them
//! records what start-up needs of them, and the next start reads it
//! instead of every file's footer. The answers are the same either way,
//! and a manifest that is damaged, or that names other files than the
//! directory holds, is passed over for the footers.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{TestServer, parquet_files};
use serde_json::{Value, json};

fn log_points(server: &TestServer, run_id: &str, key: &str, steps: std::ops::Range<i64>) {
    let points: Vec<_> = steps
        .map(|step| json!({"key": key, "value": (step as f64).sin(), "step": step}))
        .collect();
    server.post(
        &format!("/api/v1/runs/{run_id}/metrics"),
        &json!({ "points": points }),
    );
}

fn finish(server: &TestServer, run_id: &str) {
    server.post(
        "/api/2.0/mlflow/runs/update",
        &json!({"run_id": run_id, "status": "FINISHED"}),
    );
}

/// The manifest of a run's directory.
fn manifest_of(data_dir: &Path, run_id: &str) -> Option<PathBuf> {
    parquet_files(data_dir)
        .into_iter()
        .find(|path| path.to_string_lossy().contains(&format!("run_id={run_id}")))
        .and_then(|file| file.parent().map(|dir| dir.join("_files.manifest")))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the server answers about a run: its latest metrics (MLflow) and
/// every point of each key.
fn answers(server: &TestServer, run_id: &str) -> Value {
    let run = server.get(&format!("/api/2.0/mlflow/runs/get?run_id={run_id}"));
    let mut metrics = run["run"]["data"]["metrics"].as_array().cloned().unwrap();
    metrics.sort_by_key(|metric| metric["key"].as_str().unwrap().to_string());
    let series: Vec<Value> = ["loss", "accuracy"]
        .iter()
        .map(|key| {
            let (steps, timestamps, values) = server.series(run_id, key);
            json!({"steps": steps, "timestamps": timestamps, "values": values})
        })
        .collect();
    json!({"metrics": metrics, "series": series})
}

/// The answers about every run of the test, finished ones first.
fn all_answers(server: &TestServer, finished: &[String], running: &str) -> Vec<Value> {
    finished
        .iter()
        .map(String::as_str)
        .chain([running])
        .map(|run_id| answers(server, run_id))
        .collect()
}

#[test]
fn finished_runs_start_from_their_manifests_and_answer_as_before() {
    let dir = tempfile::tempdir().unwrap();
    // Small buffers, so a run has several files until it ends; runs stay
    // loaded (`dormant_runs.rs` tests runs held by their summaries, which
    // a start takes from the dormant-run log before their manifests).
    let args = ["--flush-rows", "100", "--idle-run-secs", "0"];
    let mut server = TestServer::start(dir.path(), &args);
    let finished: Vec<String> = (0..3)
        .map(|index| {
            let run_id = server.create_run("manifests", &format!("finished-{index}"));
            for part in 0..3 {
                log_points(&server, &run_id, "loss", part * 150..(part + 1) * 150);
            }
            log_points(&server, &run_id, "accuracy", 0..40);
            finish(&server, &run_id);
            run_id
        })
        .collect();
    let running = server.create_run("manifests", "still-running");
    log_points(&server, &running, "loss", 0..250);
    wait_for("the finished runs' manifests", || {
        server.metric("stepstore_run_manifests_written_total") >= 3.0
            && finished
                .iter()
                .all(|run_id| manifest_of(dir.path(), run_id).is_some_and(|path| path.exists()))
    });
    assert!(
        manifest_of(dir.path(), &running).is_none_or(|path| !path.exists()),
        "a running run has no manifest"
    );
    let before = all_answers(&server, &finished, &running);

    server.restart();
    assert_eq!(
        server.metric("stepstore_runs_from_manifests"),
        3.0,
        "the three finished runs start from their manifests, the running one from its footers"
    );
    let after = all_answers(&server, &finished, &running);
    assert_eq!(after, before);

    // A damaged manifest, and one of another run: both runs start from
    // their footers, with the same answers.
    let damaged = manifest_of(dir.path(), &finished[0]).unwrap();
    let mut text = fs::read(&damaged).unwrap();
    let middle = text.len() / 2;
    text[middle] ^= 0x01;
    fs::write(&damaged, text).unwrap();
    // Another run's manifest (its files may well have the same sequence
    // numbers).
    let stale = manifest_of(dir.path(), &finished[1]).unwrap();
    fs::copy(manifest_of(dir.path(), &finished[2]).unwrap(), &stale).unwrap();
    server.restart();
    assert_eq!(server.metric("stepstore_runs_from_manifests"), 1.0);
    let again = all_answers(&server, &finished, &running);
    assert_eq!(again, before);
}
