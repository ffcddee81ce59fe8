//! Helpers for the SQL end-to-end tests: run a query over HTTP and read the
//! JSON rows back, and a generated run history whose answers the tests
//! compute themselves.

#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::common::{TestServer, json_to_f64};

/// Runs `query`; asserts 200 and returns the JSON document.
pub fn sql(server: &TestServer, query: &str) -> Value {
    let (status, body) = server.request("POST", "/api/v1/sql", Some(&json!({ "query": query })));
    assert_eq!(status, 200, "{query}: {body}");
    body
}

/// Runs `query` and returns its rows.
pub fn rows(server: &TestServer, query: &str) -> Vec<Value> {
    sql(server, query)["rows"].as_array().expect("rows").clone()
}

/// Runs `query` expecting a failure; returns (status, body).
pub fn sql_failure(server: &TestServer, query: &str) -> (u16, Value) {
    let (status, body) = server.request("POST", "/api/v1/sql", Some(&json!({ "query": query })));
    assert_ne!(status, 200, "{query} should fail: {body}");
    (status, body)
}

/// A field of a row as f64 (numbers or "NaN"/"Infinity" strings).
pub fn f(row: &Value, column: &str) -> f64 {
    json_to_f64(&row[column])
}

/// A field of a row as i64.
pub fn i(row: &Value, column: &str) -> i64 {
    row[column]
        .as_i64()
        .unwrap_or_else(|| panic!("{column} is not an integer in {row}"))
}

/// A field of a row as a string.
pub fn s(row: &Value, column: &str) -> String {
    row[column]
        .as_str()
        .unwrap_or_else(|| panic!("{column} is not a string in {row}"))
        .to_string()
}

/// One logged point.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    pub step: i64,
    pub timestamp: i64,
    pub value: f64,
}

/// What the tests logged, per run id and key, in logged order.
#[derive(Default)]
pub struct History {
    /// run id -> (experiment name, run name)
    pub runs: BTreeMap<String, (String, String)>,
    /// run id -> param key -> value
    pub params: BTreeMap<String, BTreeMap<String, String>>,
    /// (run id, key) -> points
    pub points: BTreeMap<(String, String), Vec<Point>>,
}

impl History {
    /// Every point count.
    pub fn total_points(&self) -> usize {
        self.points.values().map(Vec::len).sum()
    }

    /// The latest point of a series: greatest step, then timestamp, then
    /// the one logged last.
    pub fn latest(&self, run_id: &str, key: &str) -> Point {
        let points = &self.points[&(run_id.to_string(), key.to_string())];
        let mut latest = points[0];
        for point in points {
            if (point.step, point.timestamp) >= (latest.step, latest.timestamp) {
                latest = *point;
            }
        }
        latest
    }
}

/// A deterministic pseudo-random generator (64-bit LCG).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Logs a small sweep: two experiments, three runs each, params `lr` and
/// `batch_size` (missing for the last run of each experiment), keys `loss`
/// and `acc` with `steps(run)` steps each, `acc` of each run's final step
/// logged twice (the later timestamp wins). Returns what was logged.
pub fn log_sweep(server: &TestServer, steps: impl Fn(usize) -> i64) -> History {
    let mut history = History::default();
    let mut random = Lcg(42);
    let mut run_index = 0;
    for experiment in ["sweep-a", "sweep-b"] {
        for run_in_experiment in 0..3 {
            let run_name = format!("{experiment}-run{run_in_experiment}");
            let run_id = server.create_run(experiment, &run_name);
            let mut params = BTreeMap::new();
            params.insert("lr".to_string(), format!("0.{}", run_index + 1));
            if run_in_experiment < 2 {
                params.insert(
                    "batch_size".to_string(),
                    format!("{}", 32 << run_in_experiment),
                );
            }
            let body: serde_json::Map<String, Value> = params
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            server.post(
                &format!("/api/v1/runs/{run_id}/params"),
                &Value::Object(body),
            );
            history
                .runs
                .insert(run_id.clone(), (experiment.to_string(), run_name));
            history.params.insert(run_id.clone(), params);

            let last = steps(run_index);
            let mut batch = Vec::new();
            for step in 0..last {
                let loss = 2.0 / (1.0 + step as f64) + random.next_f64() * 0.01;
                let acc = (step as f64 / last as f64) * 0.9 + random.next_f64() * 0.05;
                let timestamp = 1_700_000_000_000 + step * 100 + run_index as i64;
                for (key, value) in [("loss", loss), ("acc", acc)] {
                    batch.push(
                        json!({"key": key, "step": step, "timestamp": timestamp, "value": value}),
                    );
                    history
                        .points
                        .entry((run_id.clone(), key.to_string()))
                        .or_default()
                        .push(Point {
                            step,
                            timestamp,
                            value,
                        });
                }
                if batch.len() >= 400 {
                    server.post(
                        &format!("/api/v1/runs/{run_id}/metrics"),
                        &json!({ "points": std::mem::take(&mut batch) }),
                    );
                }
            }
            // The final accuracy again, later: this one is the latest.
            let final_acc = 0.5 + run_index as f64 * 0.05;
            let timestamp = 1_700_000_000_000 + last * 100 + 50;
            batch.push(
                json!({"key": "acc", "step": last - 1, "timestamp": timestamp, "value": final_acc}),
            );
            history
                .points
                .entry((run_id.clone(), "acc".to_string()))
                .or_default()
                .push(Point {
                    step: last - 1,
                    timestamp,
                    value: final_acc,
                });
            server.post(
                &format!("/api/v1/runs/{run_id}/metrics"),
                &json!({ "points": batch }),
            );
            run_index += 1;
        }
    }
    history
}

/// Asserts two floats are equal up to a relative `1e-9`.
pub fn assert_close(actual: f64, expected: f64, what: &str) {
    let scale = expected.abs().max(1.0);
    assert!(
        (actual - expected).abs() <= 1e-9 * scale,
        "{what}: got {actual}, expected {expected}"
    );
}

/// Runs the standard questions against the server and checks every answer
/// against `history` (computed here, not by the server).
pub fn check_answers(server: &TestServer, history: &History, phase: &str) {
    // Only the logged runs (other tests add more): an IN list, which also
    // prunes by run.
    let in_runs = history
        .runs
        .keys()
        .map(|run_id| format!("'{run_id}'"))
        .collect::<Vec<_>>()
        .join(", ");
    // Total count.
    let total = rows(
        server,
        &format!("SELECT count(*) AS n FROM metrics WHERE run_id IN ({in_runs})"),
    );
    assert_eq!(
        i(&total[0], "n") as usize,
        history.total_points(),
        "{phase}: count"
    );

    // Count, sum, min, max and step range per run and key.
    let aggregates = rows(
        server,
        &format!(
            "SELECT run_id, key, count(*) AS n, sum(value) AS total, min(value) AS lo, \
                    max(value) AS hi, min(step) AS first_step, max(step) AS last_step \
             FROM metrics WHERE run_id IN ({in_runs}) GROUP BY run_id, key ORDER BY run_id, key"
        ),
    );
    assert_eq!(aggregates.len(), history.points.len(), "{phase}: groups");
    for (row, ((run_id, key), points)) in aggregates.iter().zip(&history.points) {
        assert_eq!(&s(row, "run_id"), run_id, "{phase}: ordering by run_id");
        assert_eq!(&s(row, "key"), key, "{phase}: ordering by key");
        assert_eq!(
            i(row, "n") as usize,
            points.len(),
            "{phase}: count {run_id}/{key}"
        );
        let sum: f64 = points.iter().map(|p| p.value).sum();
        assert_close(
            f(row, "total"),
            sum,
            &format!("{phase}: sum {run_id}/{key}"),
        );
        let lo = points.iter().map(|p| p.value).fold(f64::INFINITY, f64::min);
        let hi = points
            .iter()
            .map(|p| p.value)
            .fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(f(row, "lo"), lo, "{phase}: min {run_id}/{key}");
        assert_eq!(f(row, "hi"), hi, "{phase}: max {run_id}/{key}");
        assert_eq!(
            i(row, "first_step"),
            points.iter().map(|p| p.step).min().unwrap()
        );
        assert_eq!(
            i(row, "last_step"),
            points.iter().map(|p| p.step).max().unwrap()
        );
    }

    // latest_metrics: latest by step then timestamp, min, max, count.
    let latest = rows(
        server,
        &format!(
            "SELECT run_id, key, step, value, min_value, max_value, count \
             FROM latest_metrics WHERE run_id IN ({in_runs}) ORDER BY run_id, key"
        ),
    );
    assert_eq!(latest.len(), history.points.len(), "{phase}: latest rows");
    for (row, ((run_id, key), points)) in latest.iter().zip(&history.points) {
        let expected = history.latest(run_id, key);
        assert_eq!(&s(row, "run_id"), run_id);
        assert_eq!(
            i(row, "step"),
            expected.step,
            "{phase}: latest step {run_id}/{key}"
        );
        assert_eq!(
            f(row, "value"),
            expected.value,
            "{phase}: latest value {run_id}/{key}"
        );
        assert_eq!(i(row, "count") as usize, points.len());
        let lo = points.iter().map(|p| p.value).fold(f64::INFINITY, f64::min);
        assert_eq!(f(row, "min_value"), lo);
    }

    // One series, filtered by run, key and a step window, in order.
    let (run_id, _) = history.runs.iter().nth(1).expect("a second run");
    let series = rows(
        server,
        &format!(
            "SELECT step, timestamp, value FROM metrics \
             WHERE run_id = '{run_id}' AND key = 'loss' AND step BETWEEN 100 AND 149 \
             ORDER BY step"
        ),
    );
    let expected: Vec<&Point> = history.points[&(run_id.clone(), "loss".to_string())]
        .iter()
        .filter(|p| (100..=149).contains(&p.step))
        .collect();
    assert_eq!(series.len(), expected.len(), "{phase}: step window");
    for (row, point) in series.iter().zip(expected) {
        assert_eq!(i(row, "step"), point.step);
        assert_eq!(f(row, "value"), point.value);
        assert!(s(row, "timestamp").starts_with("2023-11-"), "{row}");
    }

    // Runs joined with params: one row per run, NULL for a missing param.
    let sweep = rows(
        server,
        "SELECT r.run_name, lr.value AS lr, bs.value AS batch_size \
         FROM runs r \
         JOIN experiments e ON e.experiment_id = r.experiment_id \
         LEFT JOIN params lr ON lr.run_id = r.run_id AND lr.key = 'lr' \
         LEFT JOIN params bs ON bs.run_id = r.run_id AND bs.key = 'batch_size' \
         WHERE e.name LIKE 'sweep-%' \
         ORDER BY r.run_name",
    );
    let mut expected: Vec<(String, &BTreeMap<String, String>)> = history
        .runs
        .iter()
        .map(|(run_id, (_, name))| (name.clone(), &history.params[run_id]))
        .collect();
    expected.sort();
    assert_eq!(sweep.len(), expected.len(), "{phase}: one row per run");
    for (row, (name, params)) in sweep.iter().zip(expected) {
        assert_eq!(s(row, "run_name"), name);
        assert_eq!(row["lr"].as_str(), params.get("lr").map(String::as_str));
        match params.get("batch_size") {
            Some(value) => assert_eq!(s(row, "batch_size"), *value),
            None => assert!(row["batch_size"].is_null(), "{phase}: NULL expected: {row}"),
        }
    }

    // Best run per experiment by final accuracy (latest_metrics joined
    // with runs and experiments), ordering and LIMIT.
    let best = rows(
        server,
        "SELECT e.name AS experiment, r.run_name, l.value AS final_acc \
         FROM latest_metrics l \
         JOIN runs r ON r.run_id = l.run_id \
         JOIN experiments e ON e.experiment_id = r.experiment_id \
         WHERE l.key = 'acc' AND e.name LIKE 'sweep-%' \
         QUALIFY row_number() OVER (PARTITION BY e.name ORDER BY l.value DESC) = 1 \
         ORDER BY experiment",
    );
    let mut expected_best: BTreeMap<String, (f64, String)> = BTreeMap::new();
    for (run_id, (experiment, name)) in &history.runs {
        let acc = history.latest(run_id, "acc").value;
        let entry = expected_best
            .entry(experiment.clone())
            .or_insert((f64::NEG_INFINITY, String::new()));
        if acc > entry.0 {
            *entry = (acc, name.clone());
        }
    }
    assert_eq!(
        best.len(),
        expected_best.len(),
        "{phase}: best per experiment"
    );
    for (row, (experiment, (acc, name))) in best.iter().zip(&expected_best) {
        assert_eq!(&s(row, "experiment"), experiment);
        assert_eq!(&s(row, "run_name"), name);
        assert_eq!(f(row, "final_acc"), *acc);
    }

    // Filtering by experiment through the directory tree.
    let by_experiment = rows(
        server,
        "SELECT count(*) AS n FROM metrics m JOIN experiments e \
         ON e.experiment_id = m.experiment_id WHERE e.name = 'sweep-b'",
    );
    let expected_b: usize = history
        .points
        .iter()
        .filter(|((run_id, _), _)| history.runs[run_id].0 == "sweep-b")
        .map(|(_, points)| points.len())
        .sum();
    assert_eq!(
        i(&by_experiment[0], "n") as usize,
        expected_b,
        "{phase}: by experiment"
    );
}
