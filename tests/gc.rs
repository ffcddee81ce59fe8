//! `stepstore gc`, end to end: deleted runs and experiments removed for
//! good (catalog entries and metric files) through `POST
//! /api/v1/admin/gc` and the `stepstore gc` command, a dry run first; a
//! parent whose fork stays is kept; kept runs are untouched; the removal
//! survives a SIGKILL and a restart.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestServer;
use serde_json::{Value, json};

fn log(server: &TestServer, run: &str, steps: std::ops::Range<i64>) {
    let points: Vec<Value> = steps
        .map(|step| json!({"key": "loss", "step": step, "value": step as f64}))
        .collect();
    server.post(
        &format!("/api/v1/runs/{run}/metrics"),
        &json!({ "points": points }),
    );
}

/// The run directories under the data directory's metrics tree.
fn run_directories(data_dir: &Path) -> Vec<String> {
    common::parquet_files(data_dir)
        .iter()
        .filter_map(|file| {
            let name = file.parent()?.file_name()?.to_str()?;
            Some(name.trim_start_matches("run_id=").to_string())
        })
        .collect()
}

fn run_ids(report: &Value) -> Vec<String> {
    let mut ids: Vec<String> = report["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|run| run["run_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn gc_command(data_dir: &Path, extra: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_stepstore"))
        .arg("gc")
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .output()
        .expect("stepstore gc");
    assert!(
        output.status.success(),
        "stepstore gc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn deleted_runs_and_experiments_are_removed_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &["--flush-rows", "50"]);
    let kept = server.create_run("keep", "kept");
    let old_a = server.create_run("old", "a");
    let old_b = server.create_run("old", "b");
    let deleted = server.create_run("keep", "deleted");
    let parent = server.create_run("keep", "parent");
    for run in [&kept, &old_a, &old_b, &deleted, &parent] {
        log(&server, run, 0..120);
    }
    let fork = server.post(
        "/api/v1/runs",
        &json!({"fork_from": {"run_id": parent, "step": 99}}),
    )["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    log(&server, &fork, 100..110);
    let old_experiment = server.get(&format!("/api/v1/runs/{old_a}"))["experiment_id"].clone();
    server.post(
        "/api/2.0/mlflow/experiments/delete",
        &json!({ "experiment_id": old_experiment }),
    );
    for run in [&deleted, &parent] {
        server.post("/api/2.0/mlflow/runs/delete", &json!({ "run_id": run }));
    }
    let files_before = common::parquet_files(dir.path()).len();
    assert!(run_directories(dir.path()).contains(&old_a));

    // A dry run (the default) lists and removes nothing.
    let report = server.post("/api/v1/admin/gc", &json!({}));
    let mut expected = vec![old_a.clone(), old_b.clone(), deleted.clone()];
    expected.sort();
    assert_eq!(
        run_ids(&report),
        expected,
        "the fork keeps its parent: {report}"
    );
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["experiments"][0]["name"], "old", "{report}");
    assert!(report["files"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(common::parquet_files(dir.path()).len(), files_before);
    server.get(&format!("/api/v1/runs/{deleted}"));
    // Deleted a moment ago: not older than an hour.
    let recent = server.post("/api/v1/admin/gc", &json!({"older_than": "1h"}));
    assert!(run_ids(&recent).is_empty(), "{recent}");
    let (status, answer) = server.request(
        "POST",
        "/api/v1/admin/gc",
        Some(&json!({"older_than": "soon"})),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error_code"], "INVALID_PARAMETER_VALUE");

    // For good.
    let removed = server.post("/api/v1/admin/gc", &json!({"dry_run": false}));
    assert_eq!(run_ids(&removed), expected);
    assert_eq!(removed["dry_run"], false);
    let check = |server: &TestServer, phase: &str| {
        for run in &expected {
            let (status, _) = server.request("GET", &format!("/api/v1/runs/{run}"), None);
            assert_eq!(status, 404, "{phase}: run {run}");
        }
        let (status, _) = server.request(
            "GET",
            "/api/2.0/mlflow/experiments/get-by-name?experiment_name=old",
            None,
        );
        assert_eq!(status, 404, "{phase}: the experiment");
        let directories = run_directories(dir.path());
        for run in &expected {
            assert!(!directories.contains(run), "{phase}: files of {run} remain");
        }
        assert!(directories.contains(&kept) && directories.contains(&parent));
        assert_eq!(server.series(&kept, "loss").0, (0..120).collect::<Vec<_>>());
        assert_eq!(server.series(&fork, "loss").0, (0..110).collect::<Vec<_>>());
        let rows = server.post(
            "/api/v1/sql",
            &json!({"query": "SELECT count(DISTINCT run_id) AS n FROM metrics"}),
        );
        assert_eq!(rows["rows"][0]["n"], 3, "{phase}: kept, parent and fork");
    };
    // A file goes once no reader holds it, on the remover's thread:
    // moments after the answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while run_directories(dir.path())
        .iter()
        .any(|run| expected.contains(run))
    {
        assert!(std::time::Instant::now() < deadline, "files still there");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    check(&server, "after gc");
    assert_eq!(server.metric("stepstore_gc_runs_purged_total"), 3.0);
    server.kill();
    server.start_again();
    check(&server, "after a SIGKILL");
    let again = server.post("/api/v1/admin/gc", &json!({"dry_run": false}));
    assert!(run_ids(&again).is_empty(), "{again}");

    // The command, offline: a dry run, then --yes. The parent goes once
    // its fork is deleted too.
    server.post("/api/2.0/mlflow/runs/delete", &json!({ "run_id": fork }));
    server.stop();
    let dry = gc_command(dir.path(), &[]);
    assert!(dry.contains(&parent) && dry.contains(&fork), "{dry}");
    assert!(dry.contains("would remove 2 runs"), "{dry}");
    let done = gc_command(dir.path(), &["--yes"]);
    assert!(done.contains("removed 2 runs"), "{done}");
    let server = TestServer::start(dir.path(), &[]);
    for run in [&parent, &fork] {
        let (status, _) = server.request("GET", &format!("/api/v1/runs/{run}"), None);
        assert_eq!(status, 404, "run {run}");
    }
    assert_eq!(run_directories(dir.path()), vec![kept.clone()]);
    assert_eq!(server.series(&kept, "loss").0.len(), 120);
}
