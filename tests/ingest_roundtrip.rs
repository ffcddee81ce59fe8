//! 100 runs x 10 keys x 1,000 steps logged over HTTP to the real server and
//! read back exactly: from buffers and files, after a clean restart, and
//! after the runs finish (then from compacted Parquet files only).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{TestServer, f64_to_json, parquet_files, same_value};
use serde_json::{Value, json};

const RUNS: usize = 100;
const KEYS: usize = 10;
const STEPS: i64 = 1000;
const STEPS_PER_REQUEST: i64 = 100;

fn key_name(key: usize) -> String {
    if key.is_multiple_of(2) {
        format!("train/metric_{key}")
    } else {
        format!("eval metric.{key}")
    }
}

/// The value logged for (run, key, step): noisy, with NaN and infinities.
fn value(run: usize, key: usize, step: i64) -> f64 {
    match (step + key as i64 + run as i64) % 331 {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        _ => {
            let x = (run * 7919 + key * 104_729) as f64 + step as f64 * 0.001;
            (x.sin() * 1e3).fract() / (1.0 + step as f64)
        }
    }
}

fn timestamp(run: usize, step: i64) -> i64 {
    1_700_000_000_000 + step * 10 + run as i64
}

fn log_run(server: &TestServer, run: usize, run_id: &str) {
    if run == 0 {
        // The columnar form: one request per step, every key at once.
        for step in 0..STEPS {
            let values: serde_json::Map<String, Value> = (0..KEYS)
                .map(|key| (key_name(key), f64_to_json(value(run, key, step))))
                .collect();
            let body = json!({"step": step, "timestamp": timestamp(run, step), "values": values});
            let response = server.post(&format!("/api/v1/runs/{run_id}/metrics"), &body);
            assert_eq!(response["accepted"], KEYS);
        }
        return;
    }
    for first in (0..STEPS).step_by(STEPS_PER_REQUEST as usize) {
        let mut points = Vec::new();
        for step in first..first + STEPS_PER_REQUEST {
            for key in 0..KEYS {
                points.push(json!({
                    "key": key_name(key),
                    "value": f64_to_json(value(run, key, step)),
                    "step": step,
                    "timestamp": timestamp(run, step),
                }));
            }
        }
        let response = server.post(
            &format!("/api/v1/runs/{run_id}/metrics"),
            &json!({ "points": points }),
        );
        assert_eq!(response["accepted"], points.len());
    }
}

fn check_all(server: &TestServer, run_ids: &[String], phase: &str) {
    for (run, run_id) in run_ids.iter().enumerate() {
        for key in 0..KEYS {
            let (steps, timestamps, values) = server.series(run_id, &key_name(key));
            assert_eq!(
                steps,
                (0..STEPS).collect::<Vec<_>>(),
                "{phase}: run {run} key {key}"
            );
            for (index, step) in steps.iter().enumerate() {
                assert_eq!(timestamps[index], timestamp(run, *step), "{phase}");
                let expected = value(run, key, *step);
                assert!(
                    same_value(values[index], expected),
                    "{phase}: run {run} key {key} step {step}: {} != {expected}",
                    values[index]
                );
            }
        }
        let summary = server.get(&format!("/api/v1/runs/{run_id}"));
        let latest = &summary["metrics"][key_name(3)];
        assert_eq!(latest["step"], STEPS - 1, "{phase}");
        assert_eq!(latest["count"], STEPS, "{phase}");
    }
}

#[test]
fn million_points_round_trip_through_buffers_restart_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    // A small row threshold so that runs mix persisted files and buffers.
    let mut server = TestServer::start(dir.path(), &["--flush-rows", "4000"]);
    let run_ids: Vec<String> = (0..RUNS)
        .map(|run| server.create_run("roundtrip", &format!("run-{run}")))
        .collect();

    let started = Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..8 {
            let server = &server;
            let run_ids = &run_ids;
            scope.spawn(move || {
                for run in (worker..RUNS).step_by(8) {
                    log_run(server, run, &run_ids[run]);
                }
            });
        }
    });
    eprintln!(
        "logged {} points in {:?}",
        RUNS * KEYS * STEPS as usize,
        started.elapsed()
    );
    assert_eq!(
        server.metric("stepstore_points_ingested_total") as usize,
        RUNS * KEYS * STEPS as usize
    );
    assert!(
        !parquet_files(dir.path()).is_empty(),
        "the row threshold persisted files"
    );
    check_all(&server, &run_ids, "live");

    server.restart();
    check_all(&server, &run_ids, "after restart");

    for run_id in &run_ids {
        let (status, body) = server.request(
            "PATCH",
            &format!("/api/v1/runs/{run_id}"),
            Some(&json!({"status": "FINISHED"})),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "FINISHED");
    }
    // Finished runs are persisted and compacted into one file each.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut per_run: BTreeMap<String, usize> = BTreeMap::new();
        for file in parquet_files(dir.path()) {
            let run_dir = file
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            *per_run.entry(run_dir).or_default() += 1;
        }
        let compacted = per_run.len() == RUNS && per_run.values().all(|&files| files == 1);
        if compacted && server.metric("stepstore_buffer_bytes") == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runs were not compacted: {per_run:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    check_all(&server, &run_ids, "finished (Parquet only)");
    server.restart();
    assert_eq!(
        server.metric("stepstore_buffer_bytes"),
        0.0,
        "nothing left to replay"
    );
    check_all(&server, &run_ids, "finished, after restart");
    server.stop();
}
