//! The cost of a long history: `cargo bench --bench scale`.
//!
//! For each N in `STEPSTORE_SCALE_RUNS` (comma-separated; default
//! `10000`), it starts the release `stepstore` binary on an empty data
//! directory and builds, over HTTP, N finished runs in 100 experiments:
//! each run created with MLflow's `runs/create`, three params through
//! `runs/log-batch`, 10 keys x 100 steps through the bulk API (columnar
//! JSON, 50 runs per request), then ended with `runs/update`. It stops the
//! server, starts it again on the same directory and reports:
//! - the build rate (runs and points per second) and the data directory's
//!   size;
//! - the start time (from spawn to "listening") and the resident memory
//!   once idle (15 s after the start), in all and per run;
//! - MLflow `runs/search` with a param filter, a metric filter and
//!   `order_by` a metric, first page of 100: over one experiment, and over
//!   all 100;
//! - SQL over `latest_metrics` joined with `params` for one experiment;
//! - a 1,000-point scalar read of one run.
//!
//! Last, it stops and starts the server once more: the second start shows
//! the steady state (a data directory from an older version gets its run
//! manifests written after its first start).
//!
//! Each query runs once untimed, then `STEPSTORE_BENCH_REPEAT` (default 5)
//! times; the median is shown. `STEPSTORE_SCALE_DIR` keeps the data
//! directories there (default: a temporary directory, removed after).
//! With `STEPSTORE_SCALE_REUSE=1`, a data directory already there is
//! measured as it is, not built again, and `STEPSTORE_SCALE_BINARY` names
//! the binary to run (default: this build's): together they compare two
//! versions on the same history.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

const EXPERIMENTS: usize = 100;
const KEYS: usize = 10;
const STEPS: usize = 100;
const RUNS_PER_REQUEST: usize = 50;
const THREADS: usize = 4;

/// A running server, killed on drop.
struct Server {
    child: Child,
    url: String,
    started_in: Duration,
}

impl Server {
    fn start(data_dir: &Path) -> anyhow::Result<Server> {
        let started = Instant::now();
        let binary = std::env::var_os("STEPSTORE_SCALE_BINARY")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_stepstore").into());
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start stepstore")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("stepstore listening on ") {
                    let _ = sender.send(url.trim().to_string());
                }
            }
        });
        let url = match receiver.recv_timeout(Duration::from_secs(600)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                bail!("stepstore did not start");
            }
        };
        Ok(Server {
            child,
            url,
            started_in: started.elapsed(),
        })
    }

    /// Stops the server as an operator would (SIGTERM) and waits.
    fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("stepstore did not stop");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Resident memory, bytes.
    fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse()?;
        Ok(kib * 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> anyhow::Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?)
}

fn post(client: &reqwest::blocking::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let response = client.post(url).json(body).send()?;
    let status = response.status();
    let text = response.text()?;
    if !status.is_success() {
        bail!("{url}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The value of key `key` of run `run` at `step`: a decaying curve whose
/// level differs by run, so metric filters and ordering have work to do.
fn value(run: usize, key: usize, step: usize) -> f64 {
    let level = 0.2 + ((run * 7919 + key * 31) % 1000) as f64 / 1000.0;
    level * (-(step as f64) / 40.0).exp() + 0.01 * key as f64
}

/// Builds `runs` finished runs in `experiments`; returns the run ids.
fn build(url: &str, experiments: &[String], runs: usize) -> anyhow::Result<Vec<String>> {
    let chunks: Vec<Vec<usize>> = (0..THREADS)
        .map(|thread| (thread..runs).step_by(THREADS).collect())
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|mine| {
            let url = url.to_string();
            let experiments = experiments.to_vec();
            std::thread::spawn(move || -> anyhow::Result<Vec<String>> {
                let client = client()?;
                let mut ids = Vec::with_capacity(mine.len());
                for group in mine.chunks(RUNS_PER_REQUEST) {
                    let mut batches = Vec::with_capacity(group.len());
                    let mut group_ids = Vec::with_capacity(group.len());
                    for &run in group {
                        let created = post(
                            &client,
                            &format!("{url}/api/2.0/mlflow/runs/create"),
                            &json!({
                                "experiment_id": experiments[run % experiments.len()],
                                "run_name": format!("trial-{run}"),
                                "start_time": 1_700_000_000_000u64 + run as u64,
                            }),
                        )?;
                        let lr = ["0.1", "0.01", "0.001"][run % 3];
                        let id = created["run"]["info"]["run_id"]
                            .as_str()
                            .context("run_id")?
                            .to_string();
                        post(
                            &client,
                            &format!("{url}/api/2.0/mlflow/runs/log-batch"),
                            &json!({
                                "run_id": id,
                                "params": [
                                    {"key": "lr", "value": lr},
                                    {"key": "batch_size", "value": (32 << (run % 4)).to_string()},
                                    {"key": "seed", "value": run.to_string()},
                                ],
                            }),
                        )?;
                        let mut values = serde_json::Map::new();
                        for key in 0..KEYS {
                            let name = if key == 0 {
                                "loss".to_string()
                            } else {
                                format!("metric_{key}")
                            };
                            let series: Vec<f64> =
                                (0..STEPS).map(|step| value(run, key, step)).collect();
                            values.insert(name, json!(series));
                        }
                        batches.push(json!({
                            "run_id": id,
                            "steps": (0..STEPS).collect::<Vec<_>>(),
                            "values": values,
                        }));
                        group_ids.push(id);
                    }
                    post(
                        &client,
                        &format!("{url}/api/v1/ingest"),
                        &json!({ "batches": batches }),
                    )?;
                    for id in &group_ids {
                        post(
                            &client,
                            &format!("{url}/api/2.0/mlflow/runs/update"),
                            &json!({
                                "run_id": id,
                                "status": "FINISHED",
                                "end_time": 1_700_000_100_000u64,
                            }),
                        )?;
                    }
                    ids.extend(group_ids);
                }
                Ok(ids)
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(runs);
    for handle in handles {
        ids.extend(
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a build thread panicked"))??,
        );
    }
    Ok(ids)
}

/// Bytes of every file under `dir`.
fn size_of(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(metadata) if metadata.is_dir() => pending.push(entry.path()),
                Ok(metadata) => total += metadata.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Median of `repeat` timed runs of `work` after one untimed run, in ms.
fn time(repeat: usize, mut work: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    work()?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let started = Instant::now();
        work()?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// [`time`], with a failure reported on stderr and shown as NaN ("failed"
/// in the table), so that one failing query does not hide the others.
fn time_or_failed(what: &str, repeat: usize, work: impl FnMut() -> anyhow::Result<()>) -> f64 {
    time(repeat, work).unwrap_or_else(|error| {
        eprintln!("{what} failed: {error:#}");
        f64::NAN
    })
}

/// A figure for the table: `failed` for NaN.
fn shown(value: f64, decimals: usize) -> String {
    if value.is_nan() {
        "failed".to_string()
    } else {
        format!("{value:.decimals$}")
    }
}

/// One N's figures.
struct Figures {
    runs: usize,
    build_seconds: f64,
    bytes: u64,
    start_seconds: f64,
    start_again_seconds: f64,
    rss: u64,
    rss_empty: u64,
    search_one_ms: f64,
    search_all_ms: f64,
    sql_ms: f64,
    scalar_ms: f64,
}

/// Builds a history of `runs` runs in `data_dir` (emptied first) on a
/// server it starts and stops. Returns the build time, seconds, and the
/// resident memory of the server while still empty.
fn build_history(
    client: &reqwest::blocking::Client,
    data_dir: &Path,
    runs: usize,
) -> anyhow::Result<(f64, u64)> {
    let _ = std::fs::remove_dir_all(data_dir);
    let server = Server::start(data_dir)?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_empty = server.rss()?;
    let mut experiments = Vec::with_capacity(EXPERIMENTS);
    for experiment in 0..EXPERIMENTS {
        let created = post(
            client,
            &format!("{}/api/2.0/mlflow/experiments/create", server.url),
            &json!({ "name": format!("sweep-{experiment}") }),
        )?;
        experiments.push(
            created["experiment_id"]
                .as_str()
                .context("experiment_id")?
                .to_string(),
        );
    }
    let started = Instant::now();
    build(&server.url, &experiments, runs)?;
    let build_seconds = started.elapsed().as_secs_f64();
    server.stop()?;
    Ok((build_seconds, rss_empty))
}

/// The ids of the benchmark's experiments (`sweep-0` ...), in order.
fn experiments_of(client: &reqwest::blocking::Client, url: &str) -> anyhow::Result<Vec<String>> {
    let found = post(
        client,
        &format!("{url}/api/2.0/mlflow/experiments/search"),
        &json!({ "max_results": 1000 }),
    )?;
    let mut sweeps: Vec<(usize, String)> = found["experiments"]
        .as_array()
        .context("experiments")?
        .iter()
        .filter_map(|experiment| {
            let number = experiment["name"]
                .as_str()?
                .strip_prefix("sweep-")?
                .parse()
                .ok()?;
            Some((number, experiment["experiment_id"].as_str()?.to_string()))
        })
        .collect();
    sweeps.sort();
    Ok(sweeps.into_iter().map(|(_, id)| id).collect())
}

fn measure(root: &Path, runs: usize, repeat: usize) -> anyhow::Result<Figures> {
    let data_dir = root.join(format!("runs-{runs}"));
    let client = client()?;
    let reuse = std::env::var_os("STEPSTORE_SCALE_REUSE").is_some() && data_dir.exists();
    let (build_seconds, rss_empty) = if reuse {
        let empty = tempfile::tempdir()?;
        let server = Server::start(empty.path())?;
        std::thread::sleep(Duration::from_secs(1));
        let rss_empty = server.rss()?;
        server.stop()?;
        (f64::NAN, rss_empty)
    } else {
        build_history(&client, &data_dir, runs)?
    };
    let bytes = size_of(&data_dir);

    let server = Server::start(&data_dir)?;
    let start_seconds = server.started_in.as_secs_f64();
    // Idle long enough for the allocator to give back what the start
    // freed (jemalloc's decay time is 10 s).
    std::thread::sleep(Duration::from_secs(15));
    let rss = server.rss()?;
    let experiments = experiments_of(&client, &server.url)?;
    if experiments.len() != EXPERIMENTS {
        bail!(
            "{} experiments found in {}",
            experiments.len(),
            data_dir.display()
        );
    }
    let search = |experiment_ids: &[String]| -> anyhow::Result<()> {
        let found = post(
            &client,
            &format!("{}/api/2.0/mlflow/runs/search", server.url),
            &json!({
                "experiment_ids": experiment_ids,
                "filter": "params.lr = '0.01' and metrics.loss < 0.6",
                "order_by": ["metrics.loss ASC"],
                "max_results": 100,
            }),
        )?;
        let page = found["runs"].as_array().map_or(0, Vec::len);
        if runs >= 10 * EXPERIMENTS && page == 0 {
            bail!("the search found no run: {found}");
        }
        Ok(())
    };
    let search_one_ms = time_or_failed("search of one experiment", repeat, || {
        search(&experiments[..1])
    });
    let search_all_ms =
        time_or_failed("search of all experiments", repeat, || search(&experiments));
    let sql = format!(
        "SELECT m.run_id, m.value FROM latest_metrics m \
         JOIN params p ON p.run_id = m.run_id AND p.key = 'lr' \
         WHERE m.experiment_id = '{}' AND m.key = 'loss' AND p.value = '0.01' \
         ORDER BY m.value LIMIT 100",
        experiments[0]
    );
    let sql_ms = time_or_failed("SQL", repeat, || {
        post(
            &client,
            &format!("{}/api/v1/sql", server.url),
            &json!({ "query": sql }),
        )
        .map(|_| ())
    });
    let found = post(
        &client,
        &format!("{}/api/2.0/mlflow/runs/search", server.url),
        &json!({ "experiment_ids": [experiments[EXPERIMENTS / 2]], "max_results": 1 }),
    )?;
    let run = found["runs"][0]["info"]["run_id"]
        .as_str()
        .context("no run")?
        .to_string();
    let scalar_ms = time_or_failed("scalar read", repeat, || {
        let response = client
            .get(format!("{}/api/v1/runs/{run}/metrics/loss", server.url))
            .send()?;
        if !response.status().is_success() {
            bail!("scalar read: {}", response.status());
        }
        response.bytes()?;
        Ok(())
    });
    server.stop()?;
    let again = Server::start(&data_dir)?;
    let start_again_seconds = again.started_in.as_secs_f64();
    again.stop()?;
    Ok(Figures {
        runs,
        build_seconds,
        bytes,
        start_seconds,
        start_again_seconds,
        rss,
        rss_empty,
        search_one_ms,
        search_all_ms,
        sql_ms,
        scalar_ms,
    })
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|arg| arg == "--list") {
        return Ok(());
    }
    let counts: Vec<usize> = std::env::var("STEPSTORE_SCALE_RUNS")
        .unwrap_or_else(|_| "10000".to_string())
        .split(',')
        .map(|count| count.trim().parse().context("STEPSTORE_SCALE_RUNS"))
        .collect::<anyhow::Result<_>>()?;
    let repeat = std::env::var("STEPSTORE_BENCH_REPEAT")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(5usize)
        .max(1);
    let temporary;
    let root: PathBuf = match std::env::var_os("STEPSTORE_SCALE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            temporary = tempfile::tempdir()?;
            temporary.path().to_path_buf()
        }
    };
    let mut all = Vec::new();
    for runs in counts {
        let figures = measure(&root, runs, repeat)?;
        println!(
            "{} runs built in {:.1} s ({:.0} runs/s, {:.2} M points/s)",
            runs,
            figures.build_seconds,
            runs as f64 / figures.build_seconds,
            (runs * KEYS * STEPS) as f64 / figures.build_seconds / 1e6
        );
        all.push(figures);
    }
    println!(
        "{:>9} {:>10} {:>9} {:>9} {:>9} {:>12} {:>13} {:>13} {:>9} {:>10}",
        "runs",
        "data MiB",
        "start s",
        "again s",
        "RSS MiB",
        "bytes/run",
        "search 1 ms",
        "search all ms",
        "SQL ms",
        "scalar ms"
    );
    for figures in all {
        println!(
            "{:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.0} {:>12.0} {:>13} {:>13} {:>9} {:>10}",
            figures.runs,
            figures.bytes as f64 / (1 << 20) as f64,
            figures.start_seconds,
            figures.start_again_seconds,
            figures.rss as f64 / (1 << 20) as f64,
            figures.rss.saturating_sub(figures.rss_empty) as f64 / figures.runs as f64,
            shown(figures.search_one_ms, 1),
            shown(figures.search_all_ms, 1),
            shown(figures.sql_ms, 1),
            shown(figures.scalar_ms, 2)
        );
    }
    Ok(())
}
