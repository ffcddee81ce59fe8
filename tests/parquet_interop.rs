//! The Parquet files of a finished run, read by an independent reader
//! (pyarrow, from the virtual environment the test command prepares), hold
//! exactly the logged points.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestServer, f64_to_json, parquet_files, python_or_skip};
use serde_json::{Value, json};

fn value(key: usize, step: i64) -> f64 {
    match step % 500 {
        17 => f64::NAN,
        18 => f64::INFINITY,
        19 => f64::NEG_INFINITY,
        _ => {
            (key as f64 + 1.0) * (-(step as f64) / 2000.0).exp() + (step as f64 * 0.37).sin() * 0.01
        }
    }
}

#[test]
fn pyarrow_reads_exactly_the_logged_points() {
    let Some(python) = python_or_skip("pyarrow_reads_exactly_the_logged_points") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &["--flush-rows", "4000"]);
    let run = server.post(
        "/api/v1/runs",
        &json!({"experiment_name": "interop", "run_name": "pyarrow"}),
    );
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let keys = ["loss", "train/acc", "lr schedule"];
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    for (index, key) in keys.iter().enumerate() {
        let steps: Vec<i64> = (0..5000).collect();
        let timestamps: Vec<i64> = steps
            .iter()
            .map(|step| 1_700_000_000_000 + step * 37)
            .collect();
        let values: Vec<Value> = steps
            .iter()
            .map(|step| f64_to_json(value(index, *step)))
            .collect();
        for chunk in (0..steps.len()).collect::<Vec<_>>().chunks(1000) {
            let points: Vec<Value> = chunk
                .iter()
                .map(|&i| json!({"key": key, "step": steps[i], "timestamp": timestamps[i], "value": values[i]}))
                .collect();
            server.post(
                &format!("/api/v1/runs/{run_id}/metrics"),
                &json!({ "points": points }),
            );
        }
        expected.insert(
            key.to_string(),
            json!({"steps": steps, "timestamps": timestamps, "values": values}),
        );
    }
    assert!(
        parquet_files(dir.path()).len() > 1,
        "several files before the run ends"
    );
    let (status, _) = server.request(
        "PATCH",
        &format!("/api/v1/runs/{run_id}"),
        Some(&json!({"status": "FINISHED"})),
    );
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while parquet_files(dir.path()).len() != 1 || server.metric("stepstore_buffer_bytes") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the finished run was not compacted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();

    let expected_path = dir.path().join("expected.json");
    let document = json!({
        "experiment_id": run["experiment_id"],
        "run_id": run_id,
        "series": expected,
    });
    std::fs::write(&expected_path, serde_json::to_vec(&document).unwrap()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_parquet.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(dir.path())
        .arg(&expected_path)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pyarrow check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all exact"), "{stdout}");
    eprintln!("{stdout}");
}
