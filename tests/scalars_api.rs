//! The scalar API end to end: a run's keys, downsampled series that keep
//! spikes across Parquet files and buffers, smoothing, time axes, many
//! runs and keys at once, TensorBoard-shaped endpoints, and bad input.

mod common;

use common::{TestServer, f64_to_json, json_to_f64, same_value};
use serde_json::{Value, json};

const BASE_TIME: i64 = 1_700_000_000_000;

fn value_at(step: i64) -> f64 {
    match step {
        31_337 => 1e6,
        7_777 => -1e6,
        20_000 => f64::NAN,
        _ => (step as f64 / 1000.0).sin(),
    }
}

fn log_points(server: &TestServer, run_id: &str, key: &str, steps: &[i64]) {
    for chunk in steps.chunks(5000) {
        let points: Vec<Value> = chunk
            .iter()
            .map(|&step| {
                json!({"key": key, "step": step, "timestamp": BASE_TIME + step * 10,
                       "value": f64_to_json(value_at(step))})
            })
            .collect();
        server.post(
            &format!("/api/v1/runs/{run_id}/metrics"),
            &json!({ "points": points }),
        );
    }
}

fn numbers(body: &Value, field: &str) -> Vec<i64> {
    body[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} in {body}"))
        .iter()
        .map(|value| value.as_i64().unwrap())
        .collect()
}

fn floats(body: &Value, field: &str) -> Vec<f64> {
    body[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} in {body}"))
        .iter()
        .map(json_to_f64)
        .collect()
}

fn assert_invalid(server: &TestServer, method: &str, path: &str, body: Option<&Value>) {
    let (status, response) = server.request(method, path, body);
    assert_eq!(status, 400, "{method} {path}: {response}");
    assert_eq!(
        response["error_code"], "INVALID_PARAMETER_VALUE",
        "{response}"
    );
    assert!(response["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[test]
fn series_split_between_files_and_buffers_come_back_whole_and_downsampled_with_spikes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--flush-rows", "7000"]);
    let run_id = server.create_run("curves", "long");
    // Even steps first, then odd ones: the files' step ranges overlap.
    let n = 60_000i64;
    let even: Vec<i64> = (0..n).step_by(2).collect();
    let odd: Vec<i64> = (1..n).step_by(2).collect();
    log_points(&server, &run_id, "train/loss", &even);
    log_points(&server, &run_id, "train/loss", &odd);
    assert!(
        common::parquet_files(dir.path()).len() >= 3,
        "the series spans several files"
    );

    // Every point, in order, nothing missing or doubled.
    let (steps, timestamps, values) = server.series(&run_id, "train/loss");
    assert_eq!(steps, (0..n).collect::<Vec<_>>());
    assert_eq!(timestamps[123], BASE_TIME + 1230);
    for (step, value) in steps.iter().zip(&values) {
        assert!(same_value(*value, value_at(*step)), "step {step}");
    }

    // The default budget: at most 1,000 points, spikes, NaN, ends kept.
    let body = server.get(&format!("/api/v1/runs/{run_id}/metrics/train/loss"));
    let steps = numbers(&body, "steps");
    assert!(steps.len() <= 1000, "{} points", steps.len());
    assert!(steps.len() >= 500);
    assert_eq!(body["total_points"], n);
    assert_eq!(body["downsampled"], true);
    assert_eq!(body["non_finite_points"], 1);
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "x order");
    assert_eq!((steps[0], *steps.last().unwrap()), (0, n - 1));
    for spike in [31_337, 7_777, 20_000] {
        assert!(steps.contains(&spike), "step {spike} kept");
    }
    let values = floats(&body, "values");
    let nan_at = steps.iter().position(|&s| s == 20_000).unwrap();
    assert!(values[nan_at].is_nan());
    assert_eq!(
        body["values"][nan_at], "NaN",
        "NaN marked as in the rest of the API"
    );

    // Any budget keeps the spike; a zoom puts bucket edges at the range.
    for max_points in [4, 37, 200, 5000] {
        let body = server.get(&format!(
            "/api/v1/runs/{run_id}/metrics/train/loss?max_points={max_points}"
        ));
        let steps = numbers(&body, "steps");
        assert!(steps.contains(&31_337) && steps.contains(&7_777));
        assert!(steps.len() as f64 <= max_points as f64 * 1.25);
    }
    let zoom = server.get(&format!(
        "/api/v1/runs/{run_id}/metrics/train/loss?start=1000&end=1999&max_points=40"
    ));
    let steps = numbers(&zoom, "steps");
    assert_eq!(zoom["total_points"], 1000);
    assert_eq!((steps[0], *steps.last().unwrap()), (1000, 1999));
    // 10 buckets of exactly 100 steps: each holds its first and last step.
    for bucket in 0..10 {
        assert!(steps.contains(&(1000 + bucket * 100)), "{steps:?}");
        assert!(steps.contains(&(1099 + bucket * 100)), "{steps:?}");
    }
    // A short range comes back exactly.
    let exact = server.get(&format!(
        "/api/v1/runs/{run_id}/metrics/train/loss?start=500&end=599"
    ));
    assert_eq!(numbers(&exact, "steps"), (500..600).collect::<Vec<_>>());
    assert_eq!(exact["downsampled"], false);

    // The key list.
    let keys = server.get(&format!("/api/v1/runs/{run_id}/metrics"));
    let loss = &keys["metrics"][0];
    assert_eq!(loss["key"], "train/loss");
    assert_eq!(loss["count"], n);
    assert_eq!(
        (loss["first_step"].clone(), loss["last_step"].clone()),
        (json!(0), json!(n - 1))
    );
    assert_eq!(loss["max"], 1e6);
    assert_eq!(loss["min"], -1e6);
    assert!(same_value(
        json_to_f64(&loss["last_value"]),
        value_at(n - 1)
    ));
}

#[test]
fn many_runs_and_keys_with_smoothing_time_axes_and_tensorboard_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let runs: Vec<String> = (0..3)
        .map(|index| server.create_run("compare", &format!("run-{index}")))
        .collect();
    let value =
        |run: usize, key: usize, step: i64| (run * 10 + key) as f64 + ((step * 7) % 13) as f64;
    for (run_index, run_id) in runs.iter().enumerate() {
        let mut points = Vec::new();
        for step in 0..300i64 {
            for (key_index, key) in ["train/loss", "train/acc", "eval/loss"].iter().enumerate() {
                points.push(json!({"key": key, "step": step,
                    "timestamp": BASE_TIME + 5000 + step * 1000,
                    "value": value(run_index, key_index, step)}));
            }
        }
        server.post(
            &format!("/api/v1/runs/{run_id}/metrics"),
            &json!({ "points": points }),
        );
    }

    let response = server.post(
        "/api/v1/scalars",
        &json!({"runs": runs, "keys": ["train/*"], "smoothing": 0.6, "max_points": 0}),
    );
    let series = response["series"].as_array().unwrap();
    assert_eq!(series.len(), 6, "3 runs x 2 keys");
    let pairs: Vec<(String, String)> = series
        .iter()
        .map(|s| {
            (
                s["run_id"].as_str().unwrap().to_string(),
                s["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(pairs[0], (runs[0].clone(), "train/acc".to_string()));
    assert_eq!(pairs[5], (runs[2].clone(), "train/loss".to_string()));
    // Smoothing matches a reference debiased EMA on the raw values.
    for entry in series {
        let values = floats(entry, "values");
        let smoothed = floats(entry, "smoothed");
        assert_eq!(values.len(), 300);
        let (mut last, mut count) = (0.0f64, 0);
        for (raw, got) in values.iter().zip(&smoothed) {
            last = last * 0.6 + 0.4 * raw;
            count += 1;
            let want = last / (1.0 - 0.6f64.powi(count));
            assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        }
    }
    // The same through the single-series endpoint, zoomed: unchanged.
    let zoomed = server.get(&format!(
        "/api/v1/runs/{}/metrics/train/acc?smoothing=0.6&start=100&end=109",
        runs[0]
    ));
    assert_eq!(numbers(&zoomed, "steps"), (100..110).collect::<Vec<_>>());
    let full_smoothed = floats(&series[0], "smoothed");
    for (index, got) in floats(&zoomed, "smoothed").iter().enumerate() {
        assert!((got - full_smoothed[100 + index]).abs() < 1e-9);
    }
    // Time axes: seconds since the first point, and wall-clock seconds.
    let relative = server.post(
        "/api/v1/scalars",
        &json!({"runs": [runs[1]], "keys": ["eval/loss"], "x": "relative_time",
                "start": 10, "end": 19.5}),
    );
    let entry = &relative["series"][0];
    assert_eq!(entry["x"], "relative_time");
    assert_eq!(numbers(entry, "steps"), (10..20).collect::<Vec<_>>());
    assert_eq!(floats(entry, "relative_times")[0], 10.0);
    let start = (BASE_TIME + 5000 + 250_000) as f64 / 1000.0;
    let wall = server.post(
        "/api/v1/scalars",
        &json!({"runs": [runs[1]], "keys": ["eval/loss", "missing"], "x": "wall_time", "start": start}),
    );
    assert_eq!(wall["series"].as_array().unwrap().len(), 1);
    assert_eq!(
        numbers(&wall["series"][0], "steps"),
        (250..300).collect::<Vec<_>>()
    );

    // TensorBoard-shaped endpoints, runs named by id.
    let tags = server.get("/data/plugin/scalars/tags");
    for run_id in &runs {
        assert!(tags[run_id]["train/loss"].is_object(), "{tags}");
        assert!(tags[run_id]["eval/loss"].is_object());
    }
    let listed = server.get("/data/runs");
    assert_eq!(listed.as_array().unwrap().len(), 3);
    let rows = server.get(&format!(
        "/data/plugin/scalars/scalars?run={}&tag=train/loss",
        runs[2]
    ));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 300);
    assert_eq!(
        rows[3][0].as_f64().unwrap(),
        (BASE_TIME + 5000 + 3000) as f64 / 1000.0
    );
    assert_eq!(rows[3][1], 3);
    assert_eq!(rows[3][2].as_f64().unwrap(), value(2, 0, 3));
    let (status, _) = server.request(
        "GET",
        &format!("/data/plugin/scalars/scalars?run={}&tag=nope", runs[2]),
        None,
    );
    assert_eq!(status, 404);

    // Bad input is a 400 with INVALID_PARAMETER_VALUE.
    let series_path = format!("/api/v1/runs/{}/metrics/train/loss", runs[0]);
    for query in [
        "max_points=2",
        "max_points=-1",
        "max_points=1000000",
        "smoothing=1",
        "smoothing=-0.5",
        "smoothing=abc",
        "x=epoch",
        "start=10&end=5",
        "start=nan",
        "unknown=1",
    ] {
        assert_invalid(&server, "GET", &format!("{series_path}?{query}"), None);
    }
    for body in [
        json!({"runs": [], "keys": ["a"]}),
        json!({"runs": [runs[0]], "keys": []}),
        json!({"runs": ["not-a-run-id"], "keys": ["a"]}),
        json!({"runs": [runs[0]], "keys": ["a/../b"]}),
        json!({"runs": [runs[0]], "keys": ["a"], "x": "epochs"}),
        json!({"runs": [runs[0]], "keys": ["a"], "smoothing": 2}),
        json!({"runs": [runs[0]], "keys": ["a"], "max_points": 1}),
        json!({"runs": [runs[0]], "keys": ["a"], "surprise": true}),
    ] {
        assert_invalid(&server, "POST", "/api/v1/scalars", Some(&body));
    }
    assert_invalid(&server, "GET", "/data/plugin/scalars/scalars?run=abc", None);
    let unknown = "0123456789abcdef0123456789abcdef";
    let (status, body) = server.request(
        "POST",
        "/api/v1/scalars",
        Some(&json!({"runs": [unknown], "keys": ["a"]})),
    );
    assert_eq!(
        (status, body["error_code"].clone()),
        (404, json!("RESOURCE_DOES_NOT_EXIST"))
    );
    let (status, _) = server.request("GET", &format!("/api/v1/runs/{unknown}/metrics"), None);
    assert_eq!(status, 404);
}
