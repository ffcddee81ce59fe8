//! `stepstore bench` against a real server, for each protocol: it sets up
//! its experiment and runs, every point it counts as acknowledged is in the
//! server (the server's own counter agrees), and there are no errors.

mod common;

use std::process::Command;

use common::{TestServer, run_bench};
use serde_json::Value;

fn bench(server: &TestServer, protocol: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--target",
        &server.base_url,
        "--protocol",
        protocol,
        "--runs",
        "4",
        "--keys",
        "20",
        "--steps-per-request",
        "10",
        "--concurrency",
        "2",
        "--duration",
        "1s",
    ];
    args.extend_from_slice(extra);
    run_bench(&args)
}

#[test]
fn every_protocol_delivers_what_it_counts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    for (protocol, extra) in [
        ("mlflow", &[][..]),
        ("columnar", &["--runs-per-request", "2"][..]),
        ("ndjson", &[][..]),
        ("arrow", &["--runs-per-request", "2"][..]),
    ] {
        let before = server.metric("stepstore_points_ingested_total");
        let report = bench(&server, protocol, extra);
        let after = server.metric("stepstore_points_ingested_total");
        let points = report["points"].as_f64().unwrap();
        assert!(points > 0.0, "{protocol}: {report}");
        assert_eq!(report["errors"], 0, "{protocol}: {report}");
        assert_eq!(after - before, points, "{protocol}: {report}");
        assert_eq!(
            report["server_counter_deltas"]["stepstore_points_ingested_total"]
                .as_f64()
                .unwrap(),
            points,
            "{protocol}: {report}"
        );
        assert!(report["latency"]["p99_ms"].as_f64().unwrap() > 0.0);
        // The points are readable: the first run has every key's first steps.
        let experiment = report["experiment"].as_str().unwrap();
        let found = server.get(&format!(
            "/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}"
        ));
        assert_eq!(found["experiment"]["name"], experiment);
    }
}

#[test]
fn keyed_requests_each_leave_a_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    for protocol in ["columnar", "arrow"] {
        let receipts = server.metric("stepstore_ingest_receipts");
        let report = bench(&server, protocol, &["--idempotency-keys"]);
        assert_eq!(report["errors"], 0, "{protocol}: {report}");
        let requests = report["requests"].as_f64().unwrap();
        assert!(requests > 0.0, "{protocol}: {report}");
        // Every key is new: each request is written and leaves a receipt.
        assert_eq!(
            server.metric("stepstore_ingest_receipts") - receipts,
            requests,
            "{protocol}: {report}"
        );
        assert_eq!(server.metric("stepstore_idempotent_replays_total"), 0.0);
    }
}

#[test]
fn refuses_settings_mlflow_cannot_take() {
    let output = Command::new(env!("CARGO_BIN_EXE_stepstore"))
        .args([
            "bench",
            "--protocol",
            "mlflow",
            "--keys",
            "200",
            "--steps-per-request",
            "10",
            "--dry-run",
        ])
        .output()
        .expect("run stepstore bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at most 1000 metrics"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_stepstore"))
        .args([
            "bench",
            "--protocol",
            "mlflow",
            "--idempotency-keys",
            "--dry-run",
        ])
        .output()
        .expect("run stepstore bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bulk protocols"), "{stderr}");
}
