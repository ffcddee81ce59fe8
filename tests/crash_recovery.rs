//! Crash test: clients log while the server is killed with SIGKILL at a
//! random moment; after a restart every acknowledged point is present
//! exactly once, and no point appears twice. Repeated several times on the
//! same data directory, with buffers persisted and runs compacted between.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TestServer, same_value};
use serde_json::json;

const RUNS: usize = 6;
const KEYS: usize = 3;
const STEPS_PER_REQUEST: i64 = 40;
const ROUNDS: usize = 5;

fn value(run: usize, key: usize, step: i64) -> f64 {
    if step % 97 == 5 {
        f64::NAN
    } else {
        (run * 1000 + key) as f64 + step as f64 / 7.0
    }
}

/// What the clients know about each run: steps acknowledged, and steps sent
/// without an answer (they may or may not have been stored).
#[derive(Default)]
struct Ledger {
    acknowledged: BTreeMap<usize, Vec<(i64, i64)>>,
    uncertain: BTreeMap<usize, Vec<(i64, i64)>>,
    next_step: BTreeMap<usize, i64>,
}

fn log_until_failure(
    base_url: &str,
    run_ids: &[String],
    ledger: &Mutex<Ledger>,
    stop: &AtomicBool,
) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    std::thread::scope(|scope| {
        for worker in 0..3 {
            let client = client.clone();
            scope.spawn(move || {
                let mut run = worker;
                while !stop.load(Ordering::SeqCst) {
                    let first = {
                        let mut ledger = ledger.lock().unwrap();
                        let next = ledger.next_step.entry(run).or_insert(0);
                        let first = *next;
                        *next += STEPS_PER_REQUEST;
                        first
                    };
                    let range = (first, first + STEPS_PER_REQUEST);
                    let mut points = Vec::new();
                    for step in range.0..range.1 {
                        for key in 0..KEYS {
                            let value = value(run, key, step);
                            points.push(json!({
                                "key": format!("k{key}"),
                                "value": if value.is_nan() { json!("NaN") } else { json!(value) },
                                "step": step,
                                "timestamp": 1000 + step,
                            }));
                        }
                    }
                    let outcome = client
                        .post(format!("{base_url}/api/v1/runs/{}/metrics", run_ids[run]))
                        .json(&json!({ "points": points }))
                        .send();
                    let acknowledged =
                        matches!(&outcome, Ok(response) if response.status().as_u16() == 200);
                    let mut ledger = ledger.lock().unwrap();
                    if acknowledged {
                        ledger.acknowledged.entry(run).or_default().push(range);
                    } else {
                        ledger.uncertain.entry(run).or_default().push(range);
                        if outcome.is_err() {
                            return;
                        }
                    }
                    run = (run + 3) % run_ids.len();
                }
            });
        }
    });
}

fn verify(server: &TestServer, run_ids: &[String], ledger: &Ledger, round: usize) -> usize {
    let mut total = 0;
    for (run, run_id) in run_ids.iter().enumerate() {
        let acknowledged = ledger.acknowledged.get(&run).cloned().unwrap_or_default();
        let uncertain = ledger.uncertain.get(&run).cloned().unwrap_or_default();
        for key in 0..KEYS {
            let (steps, timestamps, values) = server.series(run_id, &format!("k{key}"));
            let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
            for (index, step) in steps.iter().enumerate() {
                *seen.entry(*step).or_default() += 1;
                assert_eq!(timestamps[index], 1000 + step);
                assert!(
                    same_value(values[index], value(run, key, *step)),
                    "round {round}: wrong value"
                );
                let known = acknowledged
                    .iter()
                    .chain(&uncertain)
                    .any(|&(start, end)| (start..end).contains(step));
                assert!(known, "round {round}: step {step} was never sent");
            }
            for (step, count) in &seen {
                assert_eq!(
                    *count, 1,
                    "round {round}: run {run} key {key} step {step} stored {count} times"
                );
            }
            for &(start, end) in &acknowledged {
                for step in start..end {
                    assert!(
                        seen.contains_key(&step),
                        "round {round}: acknowledged step {step} of run {run} key {key} is lost"
                    );
                }
            }
            total += steps.len();
        }
    }
    total
}

#[test]
fn acknowledged_points_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // A small row threshold: crashes land while files are being written.
    let args = ["--flush-rows", "2000"];
    let mut server = TestServer::start(dir.path(), &args);
    let run_ids: Vec<String> = (0..RUNS)
        .map(|run| server.create_run("crash", &format!("r{run}")))
        .collect();
    let ledger = Mutex::new(Ledger::default());
    for round in 0..ROUNDS {
        let stop = AtomicBool::new(false);
        let kill_after = Duration::from_millis(rand::random_range(300..1500));
        let base_url = server.base_url.clone();
        std::thread::scope(|scope| {
            scope.spawn(|| log_until_failure(&base_url, &run_ids, &ledger, &stop));
            std::thread::sleep(kill_after);
            if round == 2 {
                // End a run mid-stream: its compaction races the crash.
                let (status, _) = server.request(
                    "PATCH",
                    &format!("/api/v1/runs/{}", run_ids[0]),
                    Some(&json!({"status": "FINISHED"})),
                );
                assert_eq!(status, 200);
                std::thread::sleep(Duration::from_millis(rand::random_range(0..50)));
            }
            server.kill();
            stop.store(true, Ordering::SeqCst);
        });
        server.start_again();
        let ledger = ledger.lock().unwrap();
        let acknowledged_requests: usize = ledger.acknowledged.values().map(Vec::len).sum();
        assert!(
            acknowledged_requests > 0,
            "round {round}: nothing was logged"
        );
        let stored = verify(&server, &run_ids, &ledger, round);
        eprintln!(
            "round {round}: killed after {kill_after:?}, {acknowledged_requests} requests acknowledged so far, {stored} points stored"
        );
    }
    server.stop();
}

/// The `.spill` files in the data directory's spill directory.
fn spill_files(data_dir: &std::path::Path) -> usize {
    std::fs::read_dir(data_dir.join("spill"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "spill"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn spilled_points_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // A 1 MiB buffer budget: the runs' small buffers are spilled to
    // shared spill files long before any is written to its own file.
    let args = ["--buffer-budget-mb", "1"];
    let mut server = TestServer::start(dir.path(), &args);
    let run_ids: Vec<String> = (0..RUNS)
        .map(|run| server.create_run("spill-crash", &format!("r{run}")))
        .collect();
    let ledger = Mutex::new(Ledger::default());
    for round in 0..3 {
        let stop = AtomicBool::new(false);
        let base_url = server.base_url.clone();
        let spilled = std::thread::scope(|scope| {
            scope.spawn(|| log_until_failure(&base_url, &run_ids, &ledger, &stop));
            // Killed once points of this process are spilled, at a random
            // moment after.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let spilled = loop {
                let spilled = server.metric("stepstore_points_spilled_total");
                if spilled > 0.0 {
                    break spilled;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: nothing was spilled"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            std::thread::sleep(Duration::from_millis(rand::random_range(0..400)));
            server.kill();
            stop.store(true, Ordering::SeqCst);
            spilled
        });
        server.start_again();
        let ledger = ledger.lock().unwrap();
        let stored = verify(&server, &run_ids, &ledger, round);
        eprintln!(
            "round {round}: {spilled} points spilled before the kill, {stored} points stored"
        );
        // The previous process's spill files are gone: what is left is
        // what this one spilled (while it replayed the WAL) and tracks.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while server.metric("stepstore_spill_files") as usize != spill_files(dir.path()) {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: {} spill files on disk, {} tracked",
                spill_files(dir.path()),
                server.metric("stepstore_spill_files")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    server.stop();
}
