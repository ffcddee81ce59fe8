//! Rewinds and forks, end to end: random histories of logged points,
//! rewinds (native `POST /rewind`, MLflow `set-tag` and `log-batch` with
//! the tag `stepstore.rewind_to_step`) and forks (forks of forks too, and
//! a deleted parent), with clean restarts and SIGKILLs between them and
//! buffers small enough that points sit in files, frozen chunks and the
//! active buffer alike. After each phase every read path is compared with
//! a model of what must be shown: the scalar API (with and without
//! `include_rewound`, and downsampled), MLflow `get-history`, the
//! TensorBoard endpoint, SQL `metrics`, `rewound_metrics` and
//! `latest_metrics`, and the run's key summaries.

mod common;

use common::{TestServer, json_to_f64};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const KEYS: [&str; 2] = ["loss", "acc"];

/// One logged point; `seq` orders points and rewinds as they were sent.
#[derive(Clone, Copy, Debug)]
struct Point {
    key: usize,
    step: i64,
    timestamp: i64,
    value: f64,
    seq: u64,
}

/// What one run should show.
#[derive(Clone, Default)]
struct RunModel {
    points: Vec<Point>,
    /// `(seq, step)` of each rewind.
    rewinds: Vec<(u64, i64)>,
    /// The step the trainer logs next.
    cursor: i64,
    /// `(parent index, step, seq)` of a forked run.
    fork: Option<(usize, i64, u64)>,
    /// Deleted: no longer written to nor read (its forks still are).
    deleted: bool,
}

/// The points run `run` of `runs` holds as of `as_of` (a seq; its own
/// and those it inherits), each with whether it is shown. A point is
/// hidden by a rewind of the run made after it with a smaller step; a fork
/// inherits the points its parent showed when it was forked, up to the
/// fork's step.
fn view(runs: &[(String, RunModel)], run: usize, as_of: u64) -> Vec<(Point, bool)> {
    let model = &runs[run].1;
    let rewinds: Vec<(u64, i64)> = model
        .rewinds
        .iter()
        .copied()
        .filter(|&(seq, _)| seq < as_of)
        .collect();
    let mut out: Vec<(Point, bool)> = model
        .points
        .iter()
        .filter(|point| point.seq < as_of)
        .map(|point| {
            let shown = rewinds
                .iter()
                .all(|&(seq, step)| seq < point.seq || point.step <= step);
            (*point, shown)
        })
        .collect();
    if let Some((parent, fork_step, fork_seq)) = model.fork {
        for (point, shown) in view(runs, parent, fork_seq) {
            if shown && point.step <= fork_step {
                let shown = rewinds.iter().all(|&(_, step)| point.step <= step);
                out.push((point, shown));
            }
        }
    }
    out
}

/// `(step, timestamp, value)` of the key's points of run `run`, shown or
/// hidden (or every point), in `(step, timestamp)` order.
fn series(
    runs: &[(String, RunModel)],
    run: usize,
    key: usize,
    which: Which,
) -> Vec<(i64, i64, f64)> {
    let mut out: Vec<(i64, i64, f64)> = view(runs, run, u64::MAX)
        .into_iter()
        .filter(|(point, _)| point.key == key)
        .filter(|&(_, shown)| match which {
            Which::Shown => shown,
            Which::Hidden => !shown,
            Which::All => true,
        })
        .map(|(point, _)| (point.step, point.timestamp, point.value))
        .collect();
    out.sort_by_key(|&(step, timestamp, _)| (step, timestamp));
    out
}

#[derive(Clone, Copy)]
enum Which {
    Shown,
    Hidden,
    All,
}

struct History {
    runs: Vec<(String, RunModel)>,
    seq: u64,
    timestamp: i64,
}

impl History {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Points of the run's next steps (some steps logged again, as a
    /// trainer's evaluation does).
    fn new_points(&mut self, rng: &mut SmallRng, run: usize) -> Vec<Point> {
        let count = rng.random_range(1..12);
        let mut points = Vec::new();
        for _ in 0..count {
            let key = rng.random_range(0..KEYS.len());
            let step = self.runs[run].1.cursor;
            self.runs[run].1.cursor += rng.random_range(0..3);
            self.timestamp += 1;
            let seq = self.next_seq();
            points.push(Point {
                key,
                step,
                timestamp: self.timestamp,
                value: f64::from(rng.random_range(-1000..1000)) / 8.0,
                seq,
            });
        }
        points
    }

    fn rewind_to(&mut self, rng: &mut SmallRng, run: usize) -> i64 {
        let model = &self.runs[run].1;
        let step = rng.random_range(-2..model.cursor.max(0) + 3);
        let seq = self.next_seq();
        let model = &mut self.runs[run].1;
        model.rewinds.push((seq, step));
        model.cursor = step + 1;
        step
    }
}

fn native_points(points: &[Point]) -> Value {
    let points: Vec<Value> = points
        .iter()
        .map(|point| {
            json!({"key": KEYS[point.key], "step": point.step,
                   "timestamp": point.timestamp, "value": point.value})
        })
        .collect();
    json!({ "points": points })
}

fn mlflow_metrics(points: &[Point]) -> Vec<Value> {
    points
        .iter()
        .map(|point| {
            json!({"key": KEYS[point.key], "step": point.step,
                   "timestamp": point.timestamp, "value": point.value})
        })
        .collect()
}

fn triples(steps: &Value, timestamps: &Value, values: &Value) -> Vec<(i64, i64, f64)> {
    let steps = steps.as_array().expect("steps");
    let timestamps = timestamps.as_array().expect("timestamps");
    let values = values.as_array().expect("values");
    (0..steps.len())
        .map(|index| {
            (
                steps[index].as_i64().unwrap(),
                timestamps[index].as_i64().unwrap(),
                json_to_f64(&values[index]),
            )
        })
        .collect()
}

fn scalar_series(server: &TestServer, run: &str, key: &str, extra: &str) -> Vec<(i64, i64, f64)> {
    let body = server.get(&format!(
        "/api/v1/runs/{run}/metrics/{key}?max_points=0{extra}"
    ));
    triples(&body["steps"], &body["timestamps"], &body["values"])
}

fn sql(server: &TestServer, query: &str) -> Vec<Value> {
    let answer = server.post("/api/v1/sql", &json!({ "query": query }));
    answer["rows"].as_array().expect("rows").clone()
}

fn sql_series(server: &TestServer, table: &str, run: &str, key: &str) -> Vec<(i64, i64, f64)> {
    sql(
        server,
        &format!(
            "SELECT step, CAST(timestamp AS BIGINT) AS ms, value FROM {table} \
             WHERE run_id = '{run}' AND key = '{key}' ORDER BY step, ms"
        ),
    )
    .iter()
    .map(|row| {
        (
            row["step"].as_i64().unwrap(),
            row["ms"].as_i64().unwrap(),
            json_to_f64(&row["value"]),
        )
    })
    .collect()
}

fn check(server: &TestServer, history: &History, phase: &str) {
    let runs = &history.runs;
    for (run_index, (run, model)) in runs.iter().enumerate() {
        if model.deleted {
            continue;
        }
        let summaries = server.get(&format!("/api/v1/runs/{run}"));
        match model.fork {
            Some((parent, step, _)) => {
                assert_eq!(
                    summaries["forked_from"]["run_id"], runs[parent].0,
                    "{phase}"
                );
                assert_eq!(summaries["forked_from"]["step"], step, "{phase}");
            }
            None => assert!(summaries["forked_from"].is_null(), "{phase}"),
        }
        for (index, key) in KEYS.iter().enumerate() {
            let shown = series(runs, run_index, index, Which::Shown);
            let context = format!("{phase}: run {run} key {key}");
            assert_eq!(
                scalar_series(server, run, key, ""),
                shown,
                "scalars, {context}"
            );
            assert_eq!(
                scalar_series(server, run, key, "&include_rewound=true"),
                series(runs, run_index, index, Which::All),
                "include_rewound, {context}"
            );
            let mlflow = server.get(&format!(
                "/api/2.0/mlflow/metrics/get-history?run_id={run}&metric_key={key}"
            ));
            let mut from_mlflow: Vec<(i64, i64, f64)> = mlflow["metrics"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|metric| {
                    (
                        metric["step"].as_i64().unwrap(),
                        metric["timestamp"].as_i64().unwrap(),
                        json_to_f64(&metric["value"]),
                    )
                })
                .collect();
            from_mlflow.sort_by_key(|&(step, timestamp, _)| (step, timestamp));
            assert_eq!(from_mlflow, shown, "MLflow get-history, {context}");
            let (status, board) = server.request(
                "GET",
                &format!("/data/plugin/scalars/scalars?run={run}&tag={key}&max_points=0"),
                None,
            );
            if shown.is_empty() {
                assert_eq!(status, 404, "TensorBoard, {context}: {board}");
            } else {
                let rows: Vec<(i64, f64)> = board
                    .as_array()
                    .expect("rows")
                    .iter()
                    .map(|row| (row[1].as_i64().unwrap(), json_to_f64(&row[2])))
                    .collect();
                let expected: Vec<(i64, f64)> = shown
                    .iter()
                    .map(|&(step, _, value)| (step, value))
                    .collect();
                assert_eq!(rows, expected, "TensorBoard, {context}");
            }
            assert_eq!(
                sql_series(server, "metrics", run, key),
                shown,
                "SQL metrics, {context}"
            );
            assert_eq!(
                sql_series(server, "rewound_metrics", run, key),
                series(runs, run_index, index, Which::Hidden),
                "SQL rewound_metrics, {context}"
            );
            // Downsampled: only shown points, and the extremes kept.
            let sampled = server.get(&format!("/api/v1/runs/{run}/metrics/{key}?max_points=4"));
            let sampled = triples(
                &sampled["steps"],
                &sampled["timestamps"],
                &sampled["values"],
            );
            assert!(
                sampled.iter().all(|point| shown.contains(point)),
                "downsampled shows only shown points, {context}: {sampled:?}"
            );
            // The key's summary: the latest shown point, the count, the
            // step range.
            let summary = &summaries["metrics"][key];
            let latest = sql(
                server,
                &format!(
                    "SELECT value, step, count FROM latest_metrics \
                     WHERE run_id = '{run}' AND key = '{key}'"
                ),
            );
            match shown
                .iter()
                .max_by_key(|&&(step, timestamp, _)| (step, timestamp))
            {
                None => {
                    assert!(summary.is_null(), "no summary, {context}: {summary}");
                    assert!(latest.is_empty(), "no latest row, {context}");
                }
                Some(&(step, _, value)) => {
                    assert_eq!(summary["step"], step, "latest step, {context}");
                    assert_eq!(json_to_f64(&summary["value"]), value, "{context}");
                    assert_eq!(summary["count"], shown.len(), "count, {context}");
                    let min_step = shown.iter().map(|point| point.0).min().unwrap();
                    let max_step = shown.iter().map(|point| point.0).max().unwrap();
                    assert_eq!(summary["first_step"], min_step, "first step, {context}");
                    assert_eq!(summary["last_step"], max_step, "last step, {context}");
                    let max_value = shown.iter().map(|point| point.2).fold(f64::MIN, f64::max);
                    assert_eq!(json_to_f64(&summary["max"]), max_value, "max, {context}");
                    assert_eq!(latest.len(), 1, "{context}");
                    assert_eq!(json_to_f64(&latest[0]["value"]), value, "{context}");
                    assert_eq!(latest[0]["count"], shown.len(), "{context}");
                }
            }
        }
        let rewinds = summaries["rewinds"].as_array().expect("rewinds");
        let steps: Vec<i64> = rewinds
            .iter()
            .map(|r| r["step"].as_i64().unwrap())
            .collect();
        let expected: Vec<i64> = model.rewinds.iter().map(|&(_, step)| step).collect();
        assert_eq!(steps, expected, "{phase}: rewinds of run {run}");
    }
}

/// Forks run `parent` at `step` (chosen at random when `None`) through
/// `POST /api/v1/runs`; returns the new run's index.
fn fork(
    server: &TestServer,
    history: &mut History,
    rng: &mut SmallRng,
    parent: usize,
    step: Option<i64>,
) -> usize {
    let cursor = history.runs[parent].1.cursor;
    let step = step.unwrap_or_else(|| rng.random_range(-2..cursor.max(0) + 3));
    let seq = history.next_seq();
    let name = format!("fork-{}", history.runs.len());
    let answer = server.post(
        "/api/v1/runs",
        &json!({"run_name": name,
                "fork_from": {"run_id": history.runs[parent].0, "step": step}}),
    );
    assert_eq!(answer["forked_from"]["step"], step, "{answer}");
    let id = answer["run_id"].as_str().expect("run_id").to_string();
    history.runs.push((
        id,
        RunModel {
            cursor: step + 1,
            fork: Some((parent, step, seq)),
            ..RunModel::default()
        },
    ));
    history.runs.len() - 1
}

#[test]
fn every_read_path_shows_what_the_rewinds_and_forks_leave() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(
        dir.path(),
        &["--flush-rows", "9", "--compact-after-files", "3"],
    );
    let mut rng = SmallRng::seed_from_u64(15);
    let mut history = History {
        runs: (0..3)
            .map(|index| {
                (
                    server.create_run("continuity", &format!("run-{index}")),
                    RunModel::default(),
                )
            })
            .collect(),
        seq: 0,
        timestamp: 1_700_000_000_000,
    };
    for phase in 0..12 {
        match phase {
            // A fork, a fork of it, and its parent deleted.
            2 => {
                let step = history.runs[0].1.cursor / 2;
                fork(&server, &mut history, &mut rng, 0, Some(step));
            }
            5 => {
                let forked = history.runs.len() - 1;
                fork(&server, &mut history, &mut rng, forked, None);
            }
            8 => {
                server.post(
                    "/api/2.0/mlflow/runs/delete",
                    &json!({ "run_id": history.runs[0].0 }),
                );
                history.runs[0].1.deleted = true;
            }
            _ => {}
        }
        for _ in 0..14 {
            let live: Vec<usize> = (0..history.runs.len())
                .filter(|&run| !history.runs[run].1.deleted)
                .collect();
            let run = live[rng.random_range(0..live.len())];
            let id = history.runs[run].0.clone();
            match rng.random_range(0..11) {
                10 if history.runs.len() < 9 => {
                    fork(&server, &mut history, &mut rng, run, None);
                }
                0 => {
                    let step = history.rewind_to(&mut rng, run);
                    let answer = server.post(
                        &format!("/api/v1/runs/{id}/rewind"),
                        &json!({ "step": step }),
                    );
                    assert_eq!(
                        answer["rewinds"].as_array().unwrap().last().unwrap()["step"],
                        step
                    );
                }
                1 => {
                    let step = history.rewind_to(&mut rng, run);
                    server.post(
                        "/api/2.0/mlflow/runs/set-tag",
                        &json!({"run_id": id, "key": "stepstore.rewind_to_step",
                                "value": step.to_string()}),
                    );
                }
                2 => {
                    // The rewind comes before the batch's metrics.
                    let step = history.rewind_to(&mut rng, run);
                    let points = history.new_points(&mut rng, run);
                    server.post(
                        "/api/2.0/mlflow/runs/log-batch",
                        &json!({"run_id": id, "metrics": mlflow_metrics(&points),
                                "tags": [{"key": "stepstore.rewind_to_step",
                                          "value": step.to_string()}]}),
                    );
                    history.runs[run].1.points.extend(points);
                }
                3 | 4 => {
                    let points = history.new_points(&mut rng, run);
                    server.post(
                        "/api/2.0/mlflow/runs/log-batch",
                        &json!({"run_id": id, "metrics": mlflow_metrics(&points)}),
                    );
                    history.runs[run].1.points.extend(points);
                }
                _ => {
                    let points = history.new_points(&mut rng, run);
                    server.post(
                        &format!("/api/v1/runs/{id}/metrics"),
                        &native_points(&points),
                    );
                    history.runs[run].1.points.extend(points);
                }
            }
        }
        check(&server, &history, &format!("phase {phase}"));
        match phase % 4 {
            1 => {
                server.kill();
                server.start_again();
                check(&server, &history, &format!("phase {phase} after SIGKILL"));
            }
            3 => {
                server.restart();
                check(&server, &history, &format!("phase {phase} after a restart"));
            }
            _ => {}
        }
    }
    // A finished run is compacted; its rewinds and forks still hold.
    for (id, _) in history.runs.iter().filter(|(_, model)| !model.deleted) {
        server.post(
            "/api/2.0/mlflow/runs/update",
            &json!({"run_id": id, "status": "FINISHED"}),
        );
    }
    server.restart();
    check(&server, &history, "finished and restarted");
    let rewinds = sql(&server, "SELECT count(*) AS n FROM rewinds");
    let expected: usize = history
        .runs
        .iter()
        .map(|(_, model)| model.rewinds.len())
        .sum();
    assert_eq!(rewinds[0]["n"], expected);
    // The history hid enough to mean something, and points sat in files.
    let hidden: usize = (0..history.runs.len())
        .map(|run| {
            (0..KEYS.len())
                .map(|key| series(&history.runs, run, key, Which::Hidden).len())
                .sum::<usize>()
        })
        .sum();
    assert!(
        hidden >= 30 && expected >= 10,
        "{hidden} hidden points, {expected} rewinds"
    );
    assert!(common::parquet_files(dir.path()).len() >= history.runs.len());
    assert_eq!(
        server.metric("stepstore_rewound_runs"),
        history
            .runs
            .iter()
            .filter(|(_, model)| !model.rewinds.is_empty())
            .count() as f64
    );
    // The forks: in SQL, in /metrics, and in the lineage as the parent's
    // checkpoint at the fork step, an input of the fork.
    let forks: Vec<(usize, usize, i64)> = history
        .runs
        .iter()
        .enumerate()
        .filter_map(|(run, (_, model))| model.fork.map(|(parent, step, _)| (run, parent, step)))
        .collect();
    assert!(forks.len() >= 3, "only {} forks", forks.len());
    let rows = sql(&server, "SELECT count(*) AS n FROM forks");
    assert_eq!(rows[0]["n"], forks.len());
    assert_eq!(server.metric("stepstore_forked_runs"), forks.len() as f64);
    let inherited: usize = forks
        .iter()
        .map(|&(run, _, _)| {
            view(&history.runs, run, u64::MAX).len() - history.runs[run].1.points.len()
        })
        .sum();
    assert!(inherited >= 20, "forks inherited only {inherited} points");
    for &(run, parent, step) in &forks {
        let (child, parent) = (&history.runs[run].0, &history.runs[parent].0);
        let lineage = server.get(&format!(
            "/api/v1/lineage?run={child}&direction=upstream&max_hops=2"
        ));
        let events = lineage["events"].as_array().expect("events");
        let input = events
            .iter()
            .find(|event| event["run_id"] == *child && event["type"] == "INPUT")
            .unwrap_or_else(|| panic!("no INPUT of the fork: {lineage}"));
        assert!(
            events.iter().any(|event| event["run_id"] == *parent
                && event["type"] == "OUTPUT"
                && event["step"] == step
                && event["artifact_id"] == input["artifact_id"]),
            "the parent's checkpoint at step {step}: {lineage}"
        );
    }
}

/// POSTs `body` to `path` and checks it is refused: 400
/// `INVALID_PARAMETER_VALUE`.
fn assert_invalid(server: &TestServer, path: &str, body: &Value, what: &str) {
    let (status, answer) = server.request("POST", path, Some(body));
    assert_eq!(status, 400, "{what}: {answer}");
    assert_eq!(
        answer["error_code"], "INVALID_PARAMETER_VALUE",
        "{what}: {answer}"
    );
}

#[test]
fn bad_rewinds_are_refused_with_mlflow_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let run = server.create_run("continuity", "r");
    for (body, what) in [
        (json!({}), "no step"),
        (json!({"step": "ten"}), "a step that is not a number"),
        (json!({"step": 1.5}), "a fractional step"),
        (json!({"step": 1, "extra": true}), "an unknown field"),
    ] {
        assert_invalid(&server, &format!("/api/v1/runs/{run}/rewind"), &body, what);
    }
    let (status, answer) = server.request(
        "POST",
        "/api/v1/runs/0123456789abcdef0123456789abcdef/rewind",
        Some(&json!({"step": 1})),
    );
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = server.request(
        "POST",
        "/api/2.0/mlflow/runs/set-tag",
        Some(&json!({"run_id": run, "key": "stepstore.rewind_to_step", "value": "2.5"})),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error_code"], "INVALID_PARAMETER_VALUE");
    let run_json = server.get(&format!("/api/v1/runs/{run}"));
    assert!(run_json["rewinds"].as_array().unwrap().is_empty());
    assert!(
        run_json["tags"].get("stepstore.rewind_to_step").is_none(),
        "a refused rewind sets no tag: {run_json}"
    );
    // A deleted run cannot be rewound.
    server.post("/api/2.0/mlflow/runs/delete", &json!({ "run_id": run }));
    let (status, answer) = server.request(
        "POST",
        &format!("/api/v1/runs/{run}/rewind"),
        Some(&json!({"step": 1})),
    );
    assert_eq!(status, 400, "{answer}");
}

/// One write of the crash test and whether its answer came back.
enum Op {
    Log(Vec<Point>),
    Rewind(i64),
}

/// The run's model with `op` applied.
fn applied(model: &RunModel, op: &Op, seq: u64) -> RunModel {
    let mut next = model.clone();
    match op {
        Op::Log(points) => next.points.extend(points.iter().copied()),
        Op::Rewind(step) => {
            next.rewinds.push((seq, *step));
            next.cursor = step + 1;
        }
    }
    next
}

#[test]
fn a_sigkill_in_the_middle_of_rewinds_keeps_one_consistent_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &["--flush-rows", "25"]);
    let run = server.create_run("continuity", "preempted");
    let mut history = History {
        runs: vec![(run.clone(), RunModel::default())],
        seq: 0,
        timestamp: 1_700_000_000_000,
    };
    let mut rng = SmallRng::seed_from_u64(99);
    let mut applied_unknown = 0;
    for round in 0..8 {
        let client = common::ledger::Client::of(&server);
        let seed = rng.random::<u64>();
        let mut moved = std::mem::take(&mut history.runs[0].1);
        let (seq, timestamp) = (history.seq, history.timestamp);
        let path = run.clone();
        // The trainer: logs and rewinds one request at a time until the
        // server is gone; returns the model of what was acknowledged and
        // the request whose answer was lost, if any.
        let worker = std::thread::spawn(move || {
            let mut thread_rng = SmallRng::seed_from_u64(seed);
            let mut local = History {
                runs: vec![(path.clone(), std::mem::take(&mut moved))],
                seq,
                timestamp,
            };
            loop {
                let (op, seq, response) = if thread_rng.random_range(0..6) == 0 {
                    let step = {
                        let model = &local.runs[0].1;
                        thread_rng.random_range(0..model.cursor.max(0) + 2)
                    };
                    let seq = local.next_seq();
                    let response = client.json(
                        "POST",
                        &format!("/api/v1/runs/{path}/rewind"),
                        &json!({ "step": step }),
                    );
                    (Op::Rewind(step), seq, response)
                } else {
                    let points = local.new_points(&mut thread_rng, 0);
                    let response = client.json(
                        "POST",
                        &format!("/api/v1/runs/{path}/metrics"),
                        &native_points(&points),
                    );
                    (Op::Log(points), 0, response)
                };
                match response {
                    Some((200, _)) => {
                        let next = applied(&local.runs[0].1, &op, seq);
                        local.runs[0].1 = next;
                    }
                    Some((status, body)) => panic!("refused with {status}: {body}"),
                    None => return (local, Some((op, seq))),
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(40..400)));
        server.kill();
        let (local, lost) = worker.join().expect("the trainer thread");
        history.seq = local.seq;
        history.timestamp = local.timestamp;
        let acked = local.runs.into_iter().next().unwrap().1;
        server.start_again();
        // The lost request is there whole or not at all.
        let candidates: Vec<RunModel> = match &lost {
            Some((op, seq)) => vec![applied(&acked, op, *seq), acked],
            None => vec![acked],
        };
        let server_rewinds: Vec<i64> = server.get(&format!("/api/v1/runs/{run}"))["rewinds"]
            .as_array()
            .expect("rewinds")
            .iter()
            .map(|rewind| rewind["step"].as_i64().unwrap())
            .collect();
        let mut matched = None;
        for (index, candidate) in candidates.iter().enumerate() {
            let candidate_rewinds: Vec<i64> =
                candidate.rewinds.iter().map(|&(_, step)| step).collect();
            let fits = candidate_rewinds == server_rewinds
                && KEYS.iter().enumerate().all(|(key_index, key)| {
                    let runs = [(run.clone(), candidate.clone())];
                    scalar_series(&server, &run, key, "")
                        == series(&runs, 0, key_index, Which::Shown)
                        && scalar_series(&server, &run, key, "&include_rewound=true")
                            == series(&runs, 0, key_index, Which::All)
                });
            if fits {
                matched = Some(index);
                break;
            }
        }
        let Some(index) = matched else {
            panic!(
                "round {round}: the server's series fit no history (lost request: {})",
                lost.is_some()
            );
        };
        if index == 0 && lost.is_some() {
            applied_unknown += 1;
        }
        history.runs[0].1 = candidates.into_iter().nth(index).unwrap();
        // Every other read path agrees with the series.
        check(&server, &history, &format!("round {round} after SIGKILL"));
    }
    server.restart();
    check(&server, &history, "after a clean restart");
    let rewinds = history.runs[0].1.rewinds.len();
    assert!(rewinds >= 3, "only {rewinds} rewinds acknowledged");
    eprintln!("{applied_unknown} of 8 lost requests were applied");
}

/// The LSN of the newest catalog snapshot in `data_dir`.
fn newest_snapshot_lsn(data_dir: &std::path::Path) -> u64 {
    std::fs::read_dir(data_dir.join("catalog"))
        .expect("the catalog directory")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let lsn = name.strip_prefix("snapshot-")?;
            lsn.split('.').next()?.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn a_rewind_in_the_snapshot_still_splits_the_points_replayed_around_it() {
    // The run has a file; then no metric file can be written (the disk
    // refuses), so its points stay in the WAL, while snapshots come every
    // second: after the SIGKILL the snapshot knows the rewind, and the WAL
    // replays the points logged before it and after it.
    let dir = tempfile::tempdir().unwrap();
    const ARGS: &[&str] = &["--snapshot-interval", "0s", "--flush-rows", "30"];
    let mut server = TestServer::start_with_env(
        dir.path(),
        ARGS,
        &[("STEPSTORE_IO_FAULTS", "create:3+:metrics")],
    );
    let run = server.create_run("continuity", "snapshotted");
    let log = |server: &TestServer, steps: std::ops::RangeInclusive<i64>, value: f64| {
        let points: Vec<Value> = steps
            .map(|step| json!({"key": "loss", "step": step, "value": value + step as f64}))
            .collect();
        server.post(
            &format!("/api/v1/runs/{run}/metrics"),
            &json!({ "points": points }),
        );
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    log(&server, 0..=29, 0.0);
    wait_for("the first 30 points were not written to a file", &|| {
        !common::parquet_files(dir.path()).is_empty()
    });
    log(&server, 30..=40, 0.0);
    let before = newest_snapshot_lsn(dir.path());
    server.post(
        &format!("/api/v1/runs/{run}/rewind"),
        &json!({ "step": 35 }),
    );
    log(&server, 36..=38, 1000.0);
    // A fork at step 37 (the parent's points up to it, the rewound ones
    // left out), then the parent logs on: the fork does not see it.
    let forked = server.post(
        "/api/v1/runs",
        &json!({"fork_from": {"run_id": run, "step": 37}}),
    )["run_id"]
        .as_str()
        .expect("run_id")
        .to_string();
    log(&server, 39..=39, 1000.0);
    let fork_points = [(&forked, 38.0), (&forked, 39.0)];
    for (id, step) in fork_points {
        server.post(
            &format!("/api/v1/runs/{id}/metrics"),
            &json!({"points": [{"key": "loss", "step": step as i64, "value": 5000.0 + step}]}),
        );
    }
    wait_for("no catalog snapshot was written after the rewind", &|| {
        newest_snapshot_lsn(dir.path()) > before
    });
    assert_eq!(common::parquet_files(dir.path()).len(), 1);
    let expected: Vec<(i64, f64)> = (0..=35)
        .map(|step| (step, step as f64))
        .chain((36..=39).map(|step| (step, 1000.0 + step as f64)))
        .collect();
    let expected_fork: Vec<(i64, f64)> = (0..=35)
        .map(|step| (step, step as f64))
        .chain((36..=37).map(|step| (step, 1000.0 + step as f64)))
        .chain((38..=39).map(|step| (step, 5000.0 + step as f64)))
        .collect();
    let shown = |server: &TestServer, run: &str| -> Vec<(i64, f64)> {
        scalar_series(server, run, "loss", "")
            .into_iter()
            .map(|(step, _, value)| (step, value))
            .collect()
    };
    assert_eq!(shown(&server, &run), expected, "before the SIGKILL");
    assert_eq!(shown(&server, &forked), expected_fork, "the fork, before");
    server.kill();
    let server = TestServer::start(dir.path(), ARGS);
    assert_eq!(shown(&server, &run), expected, "after the SIGKILL");
    assert_eq!(shown(&server, &forked), expected_fork, "the fork, after");
    let summary = &server.get(&format!("/api/v1/runs/{run}"))["metrics"]["loss"];
    assert_eq!(summary["count"], 40, "{summary}");
    assert_eq!(summary["last_step"], 39, "{summary}");
    assert_eq!(json_to_f64(&summary["value"]), 1039.0, "{summary}");
    assert_eq!(
        scalar_series(&server, &run, "loss", "&include_rewound=true").len(),
        45
    );
    let summary = &server.get(&format!("/api/v1/runs/{forked}"))["metrics"]["loss"];
    assert_eq!(summary["count"], 40, "{summary}");
    assert_eq!(json_to_f64(&summary["value"]), 5039.0, "{summary}");
}

#[test]
fn a_fork_inherits_params_and_tags_and_bad_forks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let parent = server.post(
        "/api/v1/runs",
        &json!({"experiment_name": "forks", "run_name": "parent",
                "params": {"lr": "0.1", "batch": "32"}, "tags": {"team": "vision"}}),
    )["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let points: Vec<Value> = (0..10)
        .map(|step| json!({"key": "loss", "step": step, "value": step as f64}))
        .collect();
    server.post(
        &format!("/api/v1/runs/{parent}/metrics"),
        &json!({ "points": points }),
    );
    server.post(
        "/api/2.0/mlflow/runs/set-tag",
        &json!({"run_id": parent, "key": "stepstore.rewind_to_step", "value": "7"}),
    );
    // The fork's own params and tags win over the parent's.
    let child = server.post(
        "/api/v1/runs",
        &json!({"run_name": "lower-lr", "params": {"lr": "0.01"}, "tags": {"note": "retry"},
                "fork_from": {"run_id": parent, "step": 5}}),
    );
    let child_id = child["run_id"].as_str().unwrap().to_string();
    assert_eq!(child["forked_from"]["run_id"], parent.as_str());
    assert_eq!(
        child["experiment_id"],
        server.get(&format!("/api/v1/runs/{parent}"))["experiment_id"]
    );
    let got = server.get(&format!("/api/v1/runs/{child_id}"));
    assert_eq!(got["params"]["lr"], "0.01", "{got}");
    assert_eq!(got["params"]["batch"], "32", "{got}");
    assert_eq!(got["tags"]["team"], "vision", "{got}");
    assert_eq!(got["tags"]["note"], "retry", "{got}");
    assert_eq!(got["tags"]["mlflow.runName"], "lower-lr", "{got}");
    assert!(
        got["tags"].get("stepstore.rewind_to_step").is_none(),
        "{got}"
    );
    assert_eq!(got["metrics"]["loss"]["count"], 6, "{got}");
    assert!(got["rewinds"].as_array().unwrap().is_empty());
    // Its tags are its own.
    server.post(
        "/api/2.0/mlflow/runs/set-tag",
        &json!({"run_id": child_id, "key": "team", "value": "audio"}),
    );
    assert_eq!(
        server.get(&format!("/api/v1/runs/{parent}"))["tags"]["team"],
        "vision"
    );
    // The MLflow form: two tags on runs/create.
    let experiment_id = got["experiment_id"].as_str().unwrap().to_string();
    let created = server.post(
        "/api/2.0/mlflow/runs/create",
        &json!({"experiment_id": experiment_id, "tags": [
            {"key": "stepstore.fork_from_run_id", "value": parent},
            {"key": "stepstore.fork_from_step", "value": "3"}]}),
    );
    let mlflow_child = created["run"]["info"]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let history = server.get(&format!(
        "/api/2.0/mlflow/metrics/get-history?run_id={mlflow_child}&metric_key=loss"
    ));
    assert_eq!(history["metrics"].as_array().unwrap().len(), 4, "{history}");
    let forked = server.get(&format!("/api/v1/runs/{mlflow_child}"));
    assert_eq!(forked["forked_from"]["step"], 3, "{forked}");
    assert_eq!(forked["params"]["batch"], "32", "{forked}");
    // Refused: each with an MLflow error body.
    let other = server.create_run("elsewhere", "x");
    let other_experiment = server.get(&format!("/api/v1/runs/{other}"))["experiment_id"].clone();
    for (body, status, what) in [
        (
            json!({"fork_from": {"run_id": "0123456789abcdef0123456789abcdef", "step": 1}}),
            404,
            "an unknown parent",
        ),
        (
            json!({"fork_from": {"run_id": parent, "step": 1}, "experiment_name": "elsewhere"}),
            400,
            "another experiment",
        ),
        (json!({"fork_from": {"run_id": parent}}), 400, "no step"),
        (
            json!({"fork_from": {"run_id": parent, "step": "x"}}),
            400,
            "a step that is not a number",
        ),
        (
            json!({"fork_from": {"run_id": parent, "step": 1, "at": 2}}),
            400,
            "an unknown field",
        ),
        (
            json!({"fork_from": {"run_id": "nope", "step": 1}}),
            400,
            "a malformed run id",
        ),
    ] {
        let (got, answer) = server.request("POST", "/api/v1/runs", Some(&body));
        assert_eq!(got, status, "{what}: {answer}");
        assert!(answer["error_code"].is_string(), "{what}: {answer}");
    }
    for (tags, what) in [
        (
            json!([{"key": "stepstore.fork_from_run_id", "value": parent}]),
            "no step tag",
        ),
        (
            json!([{"key": "stepstore.fork_from_run_id", "value": parent},
                   {"key": "stepstore.fork_from_step", "value": "1.5"}]),
            "a fractional step",
        ),
    ] {
        let body = json!({"experiment_id": experiment_id, "tags": tags});
        assert_invalid(&server, "/api/2.0/mlflow/runs/create", &body, what);
    }
    let (got, answer) = server.request(
        "POST",
        "/api/2.0/mlflow/runs/create",
        Some(&json!({"experiment_id": other_experiment, "tags": [
            {"key": "stepstore.fork_from_run_id", "value": parent},
            {"key": "stepstore.fork_from_step", "value": "1"}]})),
    );
    assert_eq!(got, 400, "a fork into another experiment: {answer}");
    // A deleted parent cannot be forked, and its forks stay readable.
    server.post("/api/2.0/mlflow/runs/delete", &json!({ "run_id": parent }));
    let (got, answer) = server.request(
        "POST",
        "/api/v1/runs",
        Some(&json!({"fork_from": {"run_id": parent, "step": 1}})),
    );
    assert_eq!(got, 400, "{answer}");
    assert_eq!(scalar_series(&server, &child_id, "loss", "").len(), 6);
}
