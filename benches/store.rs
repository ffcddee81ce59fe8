//! Reads from an object store against reads from the local disk, in one
//! run (release build): `cargo bench --bench store`.
//!
//! It starts moto's S3 server on loopback (`STEPSTORE_PYTHON`: a Python
//! with `moto[server]`, as `./scripts/test.sh` prepares; without it the
//! benchmark says so and stops), then builds the same history in two data
//! directories, one local and one with `--store s3://…` whose local copies
//! are then evicted, so every read goes through the store's cache:
//! - a run of 10 million points of one key (one file);
//! - 100 runs of 10 keys x 10,000 steps (10 million points, 100 files).
//!
//! It times, each as the median of `STEPSTORE_BENCH_REPEAT` (default 5)
//! runs after one untimed run:
//! - `downsampled_10m`: 1,000 points of the 10-million-point series
//!   (the scalar API's read);
//! - `per_run_aggregate`: count, mean and max per run over the 100 runs
//!   (SQL).
//!
//! for the local disk, the store with a warm cache (ranges read before are
//! on local disk), and the store with a cold cache (no cached ranges, no
//! footer in memory; the footer copies stay, as they do after a restart),
//! and prints the bytes each cold read fetched.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use stepstore::catalog::NewRun;
use stepstore::engine::{Engine, EngineConfig};
use stepstore::ingest::IngestConfig;
use stepstore::model::{ExperimentId, MetricBatchBuilder, RunId};
use stepstore::query::{QueryConfig, QueryService};
use stepstore::scalars::query::{self, SeriesParams};
use stepstore::storage::MetricStore;
use stepstore::wal::SyncPolicy;

const BUCKET: &str = "stepstore-bench";

/// moto's S3 server, stopped on drop.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts moto on a free port and creates the bucket; its endpoint.
fn start_moto(python: &Path) -> anyhow::Result<Option<(Moto, String)>> {
    let installed = Command::new(python)
        .args(["-c", "import moto.server"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !installed {
        return Ok(None);
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(python)
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start moto")?;
    let moto = Moto(child);
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.put(format!("{endpoint}/{BUCKET}")).send() {
            Ok(response) if response.status().is_success() => return Ok(Some((moto, endpoint))),
            _ if Instant::now() > deadline => bail!("moto did not start"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn open(dir: &Path, store: Option<MetricStore>) -> anyhow::Result<Arc<Engine>> {
    let mut config = EngineConfig::new(dir);
    config.wal_sync = SyncPolicy::Off;
    config.ingest = IngestConfig {
        shards: 2,
        flush_rows: 20_000_000,
        flush_age: Duration::from_secs(3600),
        buffer_budget_bytes: 4 << 30,
        ..IngestConfig::default()
    };
    config.store = store;
    config.cache_bytes = 4 << 30;
    Ok(Engine::open(config)?)
}

fn new_run(name: &str) -> NewRun {
    NewRun {
        experiment_id: ExperimentId::DEFAULT,
        run_name: Some(name.to_string()),
        user_id: String::new(),
        start_time: 1_700_000_000_000,
        params: Vec::new(),
        tags: Vec::new(),
    }
}

/// Logs the history; returns the 10-million-point run.
async fn build(engine: &Engine) -> anyhow::Result<RunId> {
    let long = engine.create_run(new_run("10m")).await?.run_id;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    for first in (0..10_000_000i64).step_by(100_000) {
        let mut batch = MetricBatchBuilder::with_capacity(100_000);
        for step in first..first + 100_000 {
            let value = (-(step as f64) / 2e6).exp() + 0.05 * noise();
            batch.push("loss", step, 1_700_000_000_000 + step * 50, value);
        }
        engine.log_metrics(long, batch.finish()).await?;
    }
    for run in 0..100 {
        let run_id = engine
            .create_run(new_run(&format!("run-{run}")))
            .await?
            .run_id;
        let mut batch = MetricBatchBuilder::with_capacity(100_000);
        for step in 0..10_000i64 {
            for key in 0..10 {
                batch.push(
                    &format!("key-{key}"),
                    step,
                    1_700_000_000_000 + step * 50,
                    noise() + key as f64,
                );
            }
        }
        engine.log_metrics(run_id, batch.finish()).await?;
    }
    engine.flush_buffers()?;
    Ok(long)
}

/// Median and fastest of `repeat` timed runs of `work` (after one
/// untimed run), in ms; `before` runs before each (untimed).
fn time(repeat: usize, mut before: impl FnMut(), mut work: impl FnMut()) -> (f64, f64) {
    before();
    work();
    let mut times: Vec<f64> = (0..repeat)
        .map(|_| {
            before();
            let started = Instant::now();
            work();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0])
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|arg| arg == "--list") {
        return Ok(());
    }
    let Some(python) = std::env::var_os("STEPSTORE_PYTHON") else {
        println!(
            "store bench SKIPPED: set STEPSTORE_PYTHON to a Python with moto[server] (./scripts/test.sh prepares ~/.cache/stepstore-venv)"
        );
        return Ok(());
    };
    let Some((_moto, endpoint)) = start_moto(Path::new(&python))? else {
        println!("store bench SKIPPED: moto[server] is not installed in {python:?}");
        return Ok(());
    };
    // SAFETY: set before any other thread of this process starts.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    let repeat = std::env::var("STEPSTORE_BENCH_REPEAT")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(5usize)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let store = MetricStore::open(&format!("s3://{BUCKET}/bench"), Some(&endpoint))?;
    let local = open(&dir.path().join("local"), None)?;
    let stored = open(&dir.path().join("stored"), Some(store))?;
    let built = Instant::now();
    let long = runtime.block_on(build(&local))?;
    let long_stored = runtime.block_on(build(&stored))?;
    let files = stored.metric_files();
    let uploads = files.uploads().context("uploads")?;
    if !uploads.wait_until_idle(Duration::from_secs(600)) {
        bail!("the uploads did not finish");
    }
    let cache = files.cache().context("cache")?;
    cache.evict_local_copies();
    let uploaded = uploads.snapshot();
    println!(
        "built both histories and uploaded {} files ({:.0} MiB) in {:.1} s; local copies evicted: {}",
        uploaded.uploaded_files,
        uploaded.uploaded_bytes as f64 / (1 << 20) as f64,
        built.elapsed().as_secs_f64(),
        cache.snapshot().evicted_local_files
    );

    let read = |engine: &Arc<Engine>, run: RunId| {
        let series = runtime
            .block_on(query::read_series(
                engine,
                run,
                "loss",
                &SeriesParams::default(),
            ))
            .expect("read");
        assert!(series.downsampled && series.steps.len() <= 1000);
    };
    let query_config = QueryConfig {
        memory_limit_bytes: 4 << 30,
        ..QueryConfig::default()
    };
    let local_sql = Arc::new(QueryService::new(Arc::clone(&local), query_config.clone())?);
    let stored_sql = Arc::new(QueryService::new(Arc::clone(&stored), query_config)?);
    let aggregate = "SELECT run_id, count(*) AS n, avg(value) AS mean, max(value) AS hi \
                     FROM metrics WHERE run_id <> '"
        .to_string()
        + &long.to_string()
        + "' AND run_id <> '"
        + &long_stored.to_string()
        + "' GROUP BY run_id";
    let sql = |service: &Arc<QueryService>| {
        let result = runtime.block_on(service.execute(&aggregate)).expect("sql");
        assert_eq!(result.num_rows(), 100);
    };
    let cold = || {
        // Chunks of the last read still being written go first.
        assert!(cache.wait_for_writes(Duration::from_secs(60)));
        cache.clear_ranges();
        files.footers().clear();
    };
    let fetched = || {
        let snapshot = cache.snapshot();
        (snapshot.fetched_bytes, snapshot.fetches)
    };
    // Per cold read: KiB fetched and fetches.
    let per_read = |before: (u64, u64), after: (u64, u64)| {
        let reads = repeat as u64 + 1;
        ((after.0 - before.0) / reads, (after.1 - before.1) / reads)
    };

    let mut rows = Vec::new();
    let local_read = time(repeat, || {}, || read(&local, long));
    let warm_read = time(repeat, || {}, || read(&stored, long_stored));
    let before = fetched();
    let cold_read = time(repeat, cold, || read(&stored, long_stored));
    rows.push((
        "downsampled_10m",
        local_read,
        warm_read,
        cold_read,
        per_read(before, fetched()),
    ));
    let local_sql_time = time(repeat, || {}, || sql(&local_sql));
    let warm_sql = time(repeat, || {}, || sql(&stored_sql));
    let before = fetched();
    let cold_sql = time(repeat, cold, || sql(&stored_sql));
    rows.push((
        "per_run_aggregate",
        local_sql_time,
        warm_sql,
        cold_sql,
        per_read(before, fetched()),
    ));

    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>14} {:>12}",
        "query",
        "local ms",
        "warm ms",
        "cold ms",
        "warm/local",
        "cold/local",
        "cold KiB/read",
        "fetches/read"
    );
    for (name, local, warm, cold, (bytes, fetches)) in rows {
        println!(
            "{name:<20} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>14.0} {:>12}",
            local.0,
            warm.0,
            cold.0,
            warm.0 / local.0,
            cold.0 / local.0,
            bytes as f64 / 1024.0,
            fetches
        );
    }
    drop(local_sql);
    drop(stored_sql);
    local.shutdown()?;
    stored.shutdown()?;
    Ok(())
}
