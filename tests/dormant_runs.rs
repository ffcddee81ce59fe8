//! Dormant runs, end to end: a finished run left idle is held by its key
//! summaries only, and its files are loaded again (from its manifest) when
//! its points are read or it is written to. Every answer is the same as
//! while it was loaded, searches and latest metrics need no loading, a
//! restart starts finished runs dormant, and gc removes a dormant run's
//! files.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestServer, parquet_files};
use serde_json::{Value, json};

fn log_points(server: &TestServer, run_id: &str, key: &str, steps: std::ops::Range<i64>) {
    let points: Vec<_> = steps
        .map(|step| json!({"key": key, "value": (step as f64 * 0.37).cos(), "step": step}))
        .collect();
    server.post(
        &format!("/api/v1/runs/{run_id}/metrics"),
        &json!({ "points": points }),
    );
}

fn set_status(server: &TestServer, run_id: &str, status: &str) {
    server.post(
        "/api/2.0/mlflow/runs/update",
        &json!({"run_id": run_id, "status": status}),
    );
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What needs only the runs' summaries: an MLflow search with a param and
/// a metric filter ordered by a metric, each run's latest metrics, and the
/// SQL latest-metrics table.
fn summary_answers(server: &TestServer, experiment_id: &str, runs: &[String]) -> Value {
    let search = server.post(
        "/api/2.0/mlflow/runs/search",
        &json!({
            "experiment_ids": [experiment_id],
            "filter": "params.lr = '0.1' and metrics.loss > -2",
            "order_by": ["metrics.loss DESC"],
        }),
    );
    let found: Vec<Value> = search["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|run| run["info"]["run_id"].clone())
        .collect();
    let latest: Vec<Value> = runs
        .iter()
        .map(|run_id| {
            let run = server.get(&format!("/api/2.0/mlflow/runs/get?run_id={run_id}"));
            let mut metrics = run["run"]["data"]["metrics"].as_array().cloned().unwrap();
            metrics.sort_by_key(|metric| metric["key"].as_str().unwrap().to_string());
            Value::Array(metrics)
        })
        .collect();
    let sql = server.post(
        "/api/v1/sql",
        &json!({"query": "SELECT run_id, key, value, step FROM latest_metrics ORDER BY run_id, key"}),
    );
    json!({"search": found, "latest": latest, "sql": sql["rows"]})
}

/// Every point of each key of each run.
fn points(server: &TestServer, runs: &[String]) -> Value {
    runs.iter()
        .map(|run_id| {
            ["loss", "accuracy"]
                .iter()
                .map(|key| {
                    let (steps, timestamps, values) = server.series(run_id, key);
                    json!({"steps": steps, "timestamps": timestamps, "values": values})
                })
                .collect::<Vec<Value>>()
                .into()
        })
        .collect::<Vec<Value>>()
        .into()
}

fn run_directory_exists(data_dir: &Path, run_id: &str) -> bool {
    parquet_files(data_dir)
        .iter()
        .any(|path| path.to_string_lossy().contains(&format!("run_id={run_id}")))
}

#[test]
fn idle_finished_runs_go_dormant_and_answer_as_before() {
    let dir = tempfile::tempdir().unwrap();
    // Small buffers (several files per run until it ends), and runs go
    // dormant one second after their last use.
    let args = ["--flush-rows", "100", "--idle-run-secs", "1"];
    let mut server = TestServer::start(dir.path(), &args);
    let runs: Vec<String> = (0..3)
        .map(|index| {
            let run_id = server.create_run("dormant", &format!("run-{index}"));
            let lr = if index == 2 { "0.2" } else { "0.1" };
            server.post(
                "/api/2.0/mlflow/runs/log-parameter",
                &json!({"run_id": run_id, "key": "lr", "value": lr}),
            );
            log_points(&server, &run_id, "loss", index * 7..250 + index * 7);
            log_points(&server, &run_id, "accuracy", 0..40);
            set_status(&server, &run_id, "FINISHED");
            run_id
        })
        .collect();
    let running = server.create_run("dormant", "running");
    log_points(&server, &running, "loss", 0..120);
    let experiment_id = server.get(&format!("/api/v1/runs/{}", runs[0]))["experiment_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("the finished runs' manifests", || {
        server.metric("stepstore_run_manifests_written_total") >= 3.0
    });
    let summaries_loaded = summary_answers(&server, &experiment_id, &runs);
    let points_loaded = points(&server, &runs);

    wait_for("the finished runs to go dormant", || {
        server.metric("stepstore_runs_dormant") == 3.0
    });
    assert_eq!(
        summary_answers(&server, &experiment_id, &runs),
        summaries_loaded
    );
    assert_eq!(
        server.metric("stepstore_run_wakes_total"),
        0.0,
        "searches and latest metrics answer from the summaries"
    );
    assert_eq!(points(&server, &runs), points_loaded);
    // Each was loaded again (a run idle for a second between two reads
    // would be loaded twice).
    assert!(server.metric("stepstore_run_wakes_total") >= 3.0);

    // A dormant run written to again: it is loaded, and its new points
    // join the old ones.
    wait_for("the runs to go dormant again", || {
        server.metric("stepstore_runs_dormant") == 3.0
    });
    set_status(&server, &runs[0], "RUNNING");
    log_points(&server, &runs[0], "loss", 250..300);
    set_status(&server, &runs[0], "FINISHED");
    let resumed = points(&server, &runs);
    let loss = &resumed[0][0]["steps"];
    assert_eq!(loss.as_array().unwrap().len(), 300, "{loss}");
    assert_eq!(resumed[1], points_loaded[1]);
    let summaries_resumed = summary_answers(&server, &experiment_id, &runs);
    assert_ne!(summaries_resumed, summaries_loaded);

    // After a restart the finished runs start dormant, with the same
    // answers.
    wait_for("the resumed run's new manifest", || {
        server.metric("stepstore_run_manifests_written_total") >= 4.0
    });
    server.restart();
    assert_eq!(server.metric("stepstore_runs_dormant"), 3.0);
    // From the dormant-run log (the runs that went dormant) or their
    // manifests (the resumed one, if it did not go dormant again).
    assert_eq!(
        server.metric("stepstore_runs_from_dormant_log")
            + server.metric("stepstore_runs_from_manifests"),
        3.0
    );
    assert_eq!(
        summary_answers(&server, &experiment_id, &runs),
        summaries_resumed
    );
    assert_eq!(points(&server, &runs), resumed);
    assert_eq!(
        server.series(&running, "loss").0,
        (0..120).collect::<Vec<_>>()
    );
    // The next start takes every finished run from the log.
    server.restart();
    assert_eq!(server.metric("stepstore_runs_from_dormant_log"), 3.0);
    assert_eq!(server.metric("stepstore_runs_from_manifests"), 0.0);
    assert_eq!(
        summary_answers(&server, &experiment_id, &runs),
        summaries_resumed
    );
    assert_eq!(points(&server, &runs), resumed);

    // Written to while dormant and stopped at once: the log records it
    // awake, so the next start does not take it for dormant as it was.
    wait_for("the runs to go dormant before the write", || {
        server.metric("stepstore_runs_dormant") == 3.0
    });
    log_points(&server, &runs[2], "accuracy", 40..45);
    server.restart();
    let written = points(&server, &runs);
    assert_eq!(written[2][1]["steps"].as_array().unwrap().len(), 45);
    let summaries_written = summary_answers(&server, &experiment_id, &runs);
    assert_ne!(summaries_written, summaries_resumed);
    server.restart();
    assert_eq!(
        summary_answers(&server, &experiment_id, &runs),
        summaries_written
    );

    // A dormant run deleted and collected: its files go.
    wait_for("the runs to go dormant after the restart", || {
        server.metric("stepstore_runs_dormant") == 3.0
    });
    server.post("/api/2.0/mlflow/runs/delete", &json!({ "run_id": runs[1] }));
    let removed = server.post("/api/v1/admin/gc", &json!({"dry_run": false}));
    assert_eq!(
        removed["runs"].as_array().map(Vec::len),
        Some(1),
        "{removed}"
    );
    wait_for("the collected run's files to go", || {
        !run_directory_exists(dir.path(), &runs[1])
    });
    assert!(run_directory_exists(dir.path(), &runs[0]));
    assert_eq!(server.metric("stepstore_run_wake_failures_total"), 0.0);
}
