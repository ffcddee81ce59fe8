//! The fault sweep: the n-th file operation of one kind on one write path
//! fails (through the server's `STEPSTORE_IO_FAULTS` test hook, which sends
//! every create, write, sync and rename of the WAL, the metric files,
//! compaction and the catalog snapshots through one injectable layer),
//! swept over n, once and from then on. Each case runs a workload that
//! writes WAL segments past a rotation, metric files, compactions and
//! snapshots; the server is then stopped (SIGTERM and SIGKILL in turn) and
//! started without faults, and every acknowledged write must be there
//! exactly once, every refused point absent, and the server healthy.
//!
//! By default n follows 1, 2, 3, 5, 8, 13, ... up to the last operation
//! the workload makes of that kind; `STEPSTORE_FAULT_SWEEP=every` tries
//! every n (the long mode in the README).

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestServer;
use common::ledger::{Client, Ledger, Outcome, verify};
use serde_json::{Value, json};

/// Server settings that make the small workload rotate WAL segments,
/// write many metric files, compact and snapshot.
const ARGS: &[&str] = &[
    "--wal-segment-mb",
    "1",
    "--flush-rows",
    "3000",
    "--compact-after-files",
    "3",
    "--snapshot-interval",
    "0s",
];

/// Write paths and the operations swept on each: (operation, directory).
const PATHS: &[(&str, &str)] = &[
    ("create", "wal"),
    ("write", "wal"),
    ("sync", "wal"),
    ("create", "metrics"),
    ("write", "metrics"),
    ("sync", "metrics"),
    ("rename", "metrics"),
    ("create", "catalog"),
    ("write", "catalog"),
    ("sync", "catalog"),
    ("rename", "catalog"),
];

/// Ingest requests per run.
const REQUESTS: i64 = 16;
/// Steps per request, for each of [`KEYS`].
const STEPS: i64 = 500;
const KEYS: [&str; 4] = ["train/loss", "train/acc", "lr", "grad/norm"];

/// What one case did.
struct CaseResult {
    rule: String,
    fired: bool,
    started: bool,
    acked_points: usize,
    refused_points: usize,
}

/// Sends the workload; every answer goes into the ledger. Returns whether
/// its last write was refused.
fn workload(server: &TestServer, ledger: &mut Ledger) -> bool {
    let mut last_refused = false;
    let client = Client::of(server);
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        for _attempt in 0..3 {
            let body = json!({"experiment_name": "faults", "run_name": name});
            match client.json("POST", "/api/v1/runs", &body) {
                Some((200, answer)) => {
                    let run = answer["run_id"].as_str().expect("run_id").to_string();
                    ledger.runs.insert(run.clone());
                    runs.push(run);
                    break;
                }
                Some((status, _)) if status >= 500 => continue,
                other => panic!("create run: {other:?}"),
            }
        }
    }
    for request in 0..REQUESTS {
        for run in &runs {
            let steps: Vec<i64> = (request * STEPS..(request + 1) * STEPS).collect();
            let values: Vec<f64> = steps.iter().map(|&step| step as f64 * 0.25).collect();
            let columns: serde_json::Map<String, Value> = KEYS
                .iter()
                .map(|key| (key.to_string(), json!(values)))
                .collect();
            let body = json!({"batches": [{"run_id": run, "steps": steps, "values": columns}]});
            let outcome = match client.json("POST", "/api/v1/ingest", &body) {
                Some((200, _)) => Outcome::Acked,
                Some((status, _)) if status >= 500 => Outcome::Refused,
                Some(other) => panic!("ingest: {other:?}"),
                None => Outcome::Unknown,
            };
            last_refused = outcome == Outcome::Refused;
            for key in KEYS {
                ledger.points(run, key, steps.iter().copied(), outcome);
            }
            if request % 4 == 1 {
                // MLflow's log-batch: a metric, a param and a tag at once.
                let (param, tag) = (format!("p{request}"), format!("t{request}"));
                let body = json!({
                    "run_id": run,
                    "metrics": [{"key": "mlflow/loss", "value": 1.0, "timestamp": 1_700_000_000_000i64, "step": request}],
                    "params": [{"key": param, "value": "v"}],
                    "tags": [{"key": tag, "value": "on"}],
                });
                let acked = match client.json("POST", "/api/2.0/mlflow/runs/log-batch", &body) {
                    Some((200, _)) => true,
                    Some((status, _)) if status >= 500 => false,
                    other => panic!("log-batch: {other:?}"),
                };
                last_refused = !acked;
                // A refused log-batch may have kept its metric part.
                ledger.points(
                    run,
                    "mlflow/loss",
                    [request],
                    Outcome::acked_or_unknown(acked),
                );
                ledger.params.push((run.clone(), param, "v".into(), acked));
                ledger.tags.push((run.clone(), tag, "on".into(), acked));
            }
        }
    }
    for run in &runs {
        let body = json!({"run_id": run, "status": "FINISHED"});
        match client.json("POST", "/api/2.0/mlflow/runs/update", &body) {
            Some((200, _)) => {
                ledger.finished.insert(run.clone());
                last_refused = false;
            }
            Some((status, _)) if status >= 500 => last_refused = true,
            other => panic!("runs/update: {other:?}"),
        }
    }
    // Let the finished runs compact and a checkpoint snapshot the catalog
    // and remove WAL segments (maintenance runs every second).
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline
        && server.metric("stepstore_compactions_total") < ledger.finished.len() as f64
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1200));
    last_refused
}

/// Runs one case: the workload under `rule`, a stop, a clean start, the
/// check.
fn run_case(rule: &str, kill: bool) -> CaseResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = Ledger::default();
    let mut result = CaseResult {
        rule: rule.to_string(),
        fired: false,
        started: true,
        acked_points: 0,
        refused_points: 0,
    };
    match TestServer::try_start_with_env(dir.path(), ARGS, &[("STEPSTORE_IO_FAULTS", rule)]) {
        Ok(mut server) => {
            let last_refused = workload(&server, &mut ledger);
            result.fired = server.metric("stepstore_injected_io_faults_total") > 0.0;
            if last_refused {
                // Writes still failing show in /health.
                let health = server.get("/health");
                assert_eq!(
                    health["status"], "degraded",
                    "{rule}: /health hides refused writes: {health}"
                );
            }
            if kill {
                server.kill();
            } else {
                let started = Instant::now();
                let exit = server.terminate();
                // Even with writes failing, SIGTERM ends the process in
                // bounded time (the WAL keeps what could not be written).
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{rule}: SIGTERM took {:?}:\n{}",
                    started.elapsed(),
                    common::tail(&exit.stderr, 30)
                );
                assert!(
                    exit.success || result.fired,
                    "{rule}: failed to stop without any fault:\n{}",
                    exit.stderr
                );
            }
        }
        Err(exit) => {
            // A fault at start refuses the start, with a clear reason.
            result.started = false;
            result.fired = true;
            assert!(
                exit.stderr.contains("injected"),
                "{rule}: the start failed for another reason:\n{}",
                common::tail(&exit.stderr, 30)
            );
        }
    }
    let mut server = TestServer::start(dir.path(), &[]);
    verify(&server, &ledger, None, 0);
    let health = server.get("/health");
    assert_eq!(
        health["status"], "ok",
        "{rule}: after a clean start: {health}"
    );
    server.stop();
    result.acked_points = ledger.points.values().map(|steps| steps.acked.len()).sum();
    result.refused_points = ledger
        .points
        .values()
        .map(|steps| steps.refused.len())
        .sum();
    eprintln!(
        "{rule} ({}): fired {}, started {}, {} acknowledged points kept, {} refused absent",
        if kill { "SIGKILL" } else { "SIGTERM" },
        result.fired,
        result.started,
        result.acked_points,
        result.refused_points
    );
    result
}

/// The n to try: 1, 2, 3, 5, 8, 13, ... (or every n).
fn next_n(n: u64, every: bool) -> u64 {
    if every || n < 3 {
        n + 1
    } else {
        // Grows by about 1.6 each time, like Fibonacci numbers.
        n + n.div_ceil(2).max(1) + n / 6
    }
}

#[test]
fn every_write_path_survives_failed_file_operations() {
    if let Ok(rule) = std::env::var("STEPSTORE_FAULT_CASE") {
        // One case alone, to replay a failure.
        let result = run_case(&rule, std::env::var("STEPSTORE_FAULT_KILL").is_ok());
        assert!(result.fired, "{rule} never fired");
        return;
    }
    let every = std::env::var("STEPSTORE_FAULT_SWEEP").is_ok_and(|mode| mode == "every");
    // Per path: a sweep of single failures, and failures that stay from
    // an early and a late operation on (a disk that stays full).
    let cases: VecDeque<(String, String, Option<u64>)> = PATHS
        .iter()
        .flat_map(|(op, dir)| {
            [None, Some(5), Some(30)].map(|from| (op.to_string(), dir.to_string(), from))
        })
        .collect();
    let cases = Arc::new(Mutex::new(cases));
    let results = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (cases, results) = (Arc::clone(&cases), Arc::clone(&results));
            std::thread::spawn(move || {
                let mut index = 0usize;
                loop {
                    let Some((op, dir, from)) = cases.lock().unwrap().pop_front() else {
                        return;
                    };
                    let mut n = 1;
                    loop {
                        let rule = match from {
                            Some(from) => format!("{op}:{from}+:{dir}"),
                            None => format!("{op}:{n}:{dir}"),
                        };
                        index += 1;
                        let result = run_case(&rule, index.is_multiple_of(2));
                        let fired = result.fired;
                        results.lock().unwrap().push(result);
                        // A sweep ends past the workload's last operation.
                        if from.is_some() || !fired {
                            break;
                        }
                        n = next_n(n, every);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a fault case failed");
    }
    let results = results.lock().unwrap();
    let fired = results.iter().filter(|result| result.fired).count();
    let refused_starts = results.iter().filter(|result| !result.started).count();
    for (op, dir) in PATHS {
        let prefix = format!("{op}:");
        let suffix = format!(":{dir}");
        let tried: Vec<&CaseResult> = results
            .iter()
            .filter(|result| result.rule.starts_with(&prefix) && result.rule.ends_with(&suffix))
            .collect();
        assert!(
            tried.iter().any(|result| result.fired),
            "no {op} fault on {dir} ever fired: the workload does not reach that path"
        );
        eprintln!(
            "{op:>6} on {dir:<8}: {} cases, {} fired, {} acknowledged points kept, {} refused points absent",
            tried.len(),
            tried.iter().filter(|result| result.fired).count(),
            tried
                .iter()
                .map(|result| result.acked_points)
                .sum::<usize>(),
            tried
                .iter()
                .map(|result| result.refused_points)
                .sum::<usize>(),
        );
    }
    eprintln!(
        "fault sweep: {} cases ({fired} with a fault fired, {refused_starts} refused to start) in {:.0?}",
        results.len(),
        started.elapsed()
    );
}
