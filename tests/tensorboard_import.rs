//! `stepstore import tensorboard` reads event files written by
//! `tensorboardX` (from the virtual environment the test command prepares)
//! and the same values read back through the API.

mod common;

use std::process::Command;

use common::{TestServer, json_to_f64, python_or_skip, same_value};

const BASE: f64 = 1_700_000_000.0;

#[test]
fn tensorboardx_event_files_import_and_read_back() {
    let Some(python) = python_or_skip("tensorboardx_event_files_import_and_read_back") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("tb");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/write_tfevents.py"
    );
    let output = Command::new(&python)
        .arg(script)
        .arg(&logdir)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "write_tfevents.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let data_dir = dir.path().join("data");
    let import = Command::new(env!("CARGO_BIN_EXE_stepstore"))
        .args(["import", "tensorboard"])
        .arg(&logdir)
        .args(["--experiment", "from-tensorboard", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("run import");
    let stdout = String::from_utf8_lossy(&import.stdout);
    assert!(
        import.status.success(),
        "import failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&import.stderr)
    );
    assert!(stdout.contains("imported 2 runs, 1010 points"), "{stdout}");

    let server = TestServer::start(&data_dir, &[]);
    let experiments = server.get("/api/v1/experiments");
    let experiment = experiments["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "from-tensorboard")
        .expect("experiment");
    let experiment_id = experiment["experiment_id"].as_str().unwrap();
    let runs = server.get(&format!("/api/v1/experiments/{experiment_id}/runs"));
    let run_id = |name: &str| -> String {
        runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|run| run["run_name"] == name)
            .unwrap_or_else(|| panic!("run {name} in {runs}"))["run_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let baseline = run_id("baseline");
    let sweep = run_id("sweep/lr_0.1");

    // simple_value scalars: float32 values, NaN and Infinity kept, wall
    // times in ms.
    let (steps, timestamps, values) = server.series(&baseline, "train/loss");
    assert_eq!(steps, (0..500).collect::<Vec<_>>());
    for step in 0..500usize {
        let expected = match step {
            250 => f64::NAN,
            300 => f64::INFINITY,
            _ => f64::from((1.0 / (step as f64 + 1.0)) as f32),
        };
        assert!(
            same_value(values[step], expected),
            "step {step}: {}",
            values[step]
        );
        assert_eq!(
            timestamps[step],
            ((BASE + step as f64 / 4.0) * 1000.0).round() as i64
        );
    }
    let (_, _, acc) = server.series(&baseline, "train/acc");
    assert_eq!(acc[100], f64::from((100.0f64 / 500.0) as f32));

    // Rank-0 tensor scalars (float_val and tensor_content); the rank-1
    // tensor is not a scalar and is skipped.
    let (steps, timestamps, values) = server.series(&sweep, "eval/acc");
    assert_eq!(steps, (0..10).map(|i| i * 10).collect::<Vec<_>>());
    for (index, value) in values.iter().enumerate() {
        let exact = index as f64 / 8.0;
        assert_eq!(*value, exact, "index {index}");
    }
    assert_eq!(timestamps[1], ((BASE + 1010.0) * 1000.0) as i64);
    let keys = server.get(&format!("/api/v1/runs/{sweep}/metrics"));
    assert_eq!(keys["metrics"].as_array().unwrap().len(), 1, "{keys}");

    // The run is finished, and readable through the TensorBoard endpoint.
    let run = server.get(&format!("/api/v1/runs/{baseline}"));
    assert_eq!(run["status"], "FINISHED");
    let rows = server.get(&format!(
        "/data/plugin/scalars/scalars?run={baseline}&tag=train/loss&max_points=0"
    ));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 500);
    assert_eq!(rows[2][0].as_f64().unwrap(), BASE + 0.5);
    assert_eq!(rows[250][2], "NaN");
    assert!(same_value(json_to_f64(&rows[300][2]), f64::INFINITY));
}
