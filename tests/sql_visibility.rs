//! Every acknowledged point is visible to SQL at once: queried right after
//! logging (all buffered), after the runs finish (persisted and compacted),
//! after a clean restart, after a kill -9 (replayed from the WAL), and
//! offline with `stepstore sql --data-dir`: the same answers each time.

mod common;
mod sql_support;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestServer, parquet_files};
use serde_json::{Value, json};
use sql_support::{check_answers, log_sweep, rows, s};

fn stepstore(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stepstore"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run stepstore")
}

#[test]
fn points_are_visible_before_and_after_flush_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let history = log_sweep(&server, |run| 200 + run as i64 * 10);
    assert!(
        parquet_files(dir.path()).is_empty(),
        "nothing persisted yet"
    );
    check_answers(&server, &history, "buffered");

    for run_id in history.runs.keys() {
        let (status, body) = server.request(
            "PATCH",
            &format!("/api/v1/runs/{run_id}"),
            Some(&json!({"status": "FINISHED"})),
        );
        assert_eq!(status, 200, "{body}");
    }
    // Queried while buffers are being persisted and compacted, then once
    // every run is in one file.
    check_answers(&server, &history, "while persisting");
    let deadline = Instant::now() + Duration::from_secs(60);
    while parquet_files(dir.path()).len() != history.runs.len() {
        assert!(Instant::now() < deadline, "runs were not persisted");
        std::thread::sleep(Duration::from_millis(50));
    }
    check_answers(&server, &history, "persisted");

    server.restart();
    check_answers(&server, &history, "after restart");

    // More points, acknowledged, then kill -9: they come back from the WAL.
    let (status, body) = server.request(
        "POST",
        "/api/v1/runs",
        Some(&json!({"experiment_name": "late", "run_name": "late-run"})),
    );
    assert_eq!(status, 200, "{body}");
    let late_run = body["run_id"].as_str().unwrap().to_string();
    server.post(
        &format!("/api/v1/runs/{late_run}/metrics"),
        &json!({"points": [{"key": "loss", "step": 0, "value": 1.5}, {"key": "loss", "step": 1, "value": 0.25}]}),
    );
    let query = format!("SELECT sum(value) AS total FROM metrics WHERE run_id = '{late_run}'");
    assert_eq!(rows(&server, &query)[0]["total"], 1.75);
    server.kill();
    server.start_again();
    assert_eq!(rows(&server, &query)[0]["total"], 1.75, "after kill -9");
    check_answers(&server, &history, "after kill -9");

    // Offline against a directory a server holds: a clear error.
    let data_dir = dir.path().to_str().unwrap();
    let locked = stepstore(&["sql", "--data-dir", data_dir, "SELECT 1"]);
    assert!(!locked.status.success());
    let stderr = String::from_utf8_lossy(&locked.stderr);
    assert!(stderr.contains("--server"), "{stderr}");

    // Through the server with the CLI.
    let via_server = stepstore(&[
        "sql",
        "--server",
        &server.base_url,
        "--format",
        "csv",
        &format!("SELECT count(*) AS n FROM metrics WHERE run_id = '{late_run}'"),
    ]);
    assert!(
        via_server.status.success(),
        "{}",
        String::from_utf8_lossy(&via_server.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&via_server.stdout), "n\r\n2\r\n");
    let bad = stepstore(&["sql", "--server", &server.base_url, "DROP TABLE runs"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not allowed"));

    // Offline, with the server stopped: same answers (WAL-only points
    // included), as JSON and as a table.
    let expected_total = history.total_points() + 2;
    server.stop();
    let offline = stepstore(&[
        "sql",
        "--data-dir",
        data_dir,
        "--format",
        "json",
        "SELECT count(*) AS n FROM metrics",
    ]);
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let document: Value = serde_json::from_slice(&offline.stdout).unwrap();
    assert_eq!(document["rows"][0]["n"], expected_total);
    let table = stepstore(&[
        "sql",
        "--data-dir",
        data_dir,
        "SELECT name FROM experiments ORDER BY experiment_id",
    ]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("| sweep-a"), "{text}");
    assert!(text.contains("| late"), "{text}");

    // And the directory still serves afterwards with the same answers.
    server.start_again();
    check_answers(&server, &history, "after offline queries");
    let late = rows(
        &server,
        &format!("SELECT run_id FROM latest_metrics WHERE run_id = '{late_run}'"),
    );
    assert_eq!(s(&late[0], "run_id"), late_run);
}
