//! SQL benchmark: stepstore (DataFusion over its Parquet files) against
//! DuckDB over the same files, in one run.
//!
//! `cargo bench --bench sql` generates (once, then reuses) a history of
//! 1,000 runs x 10 keys x 10,000 steps = 100 million points in 10
//! experiments, written straight to Parquet through stepstore's storage
//! writer, with the runs and their params in the catalog. It then times,
//! through the same query path as `POST /api/v1/sql` (minus HTTP):
//!
//! - `one_run_one_key`: the loss curve of one run (10,000 rows);
//! - `per_run_aggregate`: count, mean and max per run over all 100 M points;
//! - `step_window_avg`: the average of one key over a step window, all runs;
//! - `latest_join_params`: final loss by learning rate from
//!   `latest_metrics` joined with `params`;
//! - `latest_scan_join_params`: the same computed from `metrics` (what
//!   DuckDB has to do);
//!
//! and the same questions in DuckDB (Python package, in a virtual
//! environment the benchmark creates under `~/.cache/stepstore-bench-venv`;
//! set `STEPSTORE_BENCH_PYTHON` to use another interpreter) over the same
//! files. Each query runs once untimed, then 5 times (`STEPSTORE_BENCH_REPEAT`); the median is
//! reported.
//!
//! Environment: `STEPSTORE_BENCH_DIR` (data directory; default
//! `target/stepstore-sql-bench`), `STEPSTORE_BENCH_RUNS`,
//! `STEPSTORE_BENCH_STEPS` (smaller histories for a quick look),
//! `STEPSTORE_BENCH_EXPLAIN` (print `EXPLAIN ANALYZE` of each query),
//! `STEPSTORE_BENCH_PRINT` (print each query's answer),
//! `STEPSTORE_BENCH_QUERIES` (comma-separated names: run only these, e.g.
//! under a profiler), `STEPSTORE_BENCH_REPEAT` (timed runs per query,
//! default 5), `STEPSTORE_BENCH_NO_DUCKDB` (skip the DuckDB side).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use stepstore::catalog::{NewExperiment, NewRun};
use stepstore::engine::{Engine, EngineConfig};
use stepstore::model::{ExperimentId, RunId, now_millis};
use stepstore::query::{QueryConfig, QueryService};
use stepstore::storage::{MetricFileWriter, MetricsLayout, SortedColumns};
use stepstore::wal::SyncPolicy;

const EXPERIMENTS: usize = 10;
const KEYS: [&str; 10] = [
    "acc",
    "eval/acc",
    "eval/loss",
    "grad_norm",
    "loss",
    "lr",
    "throughput",
    "train/acc",
    "train/loss",
    "weight_norm",
];
const LEARNING_RATES: [&str; 5] = ["0.0001", "0.0003", "0.001", "0.003", "0.01"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let runs = env_usize("STEPSTORE_BENCH_RUNS", 1000);
    let steps = env_usize("STEPSTORE_BENCH_STEPS", 10_000) as i64;
    let data_dir = std::env::var("STEPSTORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/stepstore-sql-bench")
        });
    let data_dir = std::path::absolute(&data_dir)?;
    let marker = data_dir.join(format!("GENERATED-{runs}x{}x{steps}", KEYS.len()));
    if !marker.exists() {
        if data_dir.exists() {
            std::fs::remove_dir_all(&data_dir)
                .with_context(|| format!("cannot clear {}", data_dir.display()))?;
        }
        let started = Instant::now();
        generate(&data_dir, runs, steps)?;
        std::fs::write(&marker, b"")?;
        println!(
            "generated {} points in {:.1} s",
            runs as i64 * KEYS.len() as i64 * steps,
            started.elapsed().as_secs_f64()
        );
    }
    let points = runs as u64 * KEYS.len() as u64 * steps as u64;
    let bytes = directory_bytes(&data_dir.join("metrics"))?;
    println!(
        "history: {runs} runs x {} keys x {steps} steps = {points} points, {:.0} MiB of Parquet ({:.2} bytes/point)",
        KEYS.len(),
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / points as f64
    );

    // --- stepstore ---
    let mut config = EngineConfig::new(&data_dir);
    config.read_only = true;
    config.wal_sync = SyncPolicy::Off;
    let opened = Instant::now();
    let engine = Engine::open(config)?;
    println!("engine opened in {:.2} s", opened.elapsed().as_secs_f64());
    let query_config = QueryConfig {
        memory_limit_bytes: 4 << 30,
        time_limit: Duration::from_secs(600),
        ..QueryConfig::default()
    };
    println!("stepstore query threads: {}", query_config.threads);
    let service = Arc::new(QueryService::new(Arc::clone(&engine), query_config)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pick = format!(
        "SELECT run_id FROM runs ORDER BY experiment_id, run_name LIMIT 1 OFFSET {}",
        runs / 2
    );
    let picked = runtime.block_on(service.execute(&pick))?;
    let run_id = picked
        .batches
        .first()
        .context("no runs")?
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .context("run id column")?
        .value(0)
        .to_string();
    let params_file = data_dir.join("params.parquet");
    let params = runtime.block_on(service.execute("SELECT * FROM params"))?;
    write_parquet(&params_file, &params)?;

    let ours: Vec<(&str, String)> = vec![
        (
            "one_run_one_key",
            format!(
                "SELECT step, value FROM metrics WHERE run_id = '{run_id}' AND key = 'loss' ORDER BY step"
            ),
        ),
        (
            "per_run_aggregate",
            "SELECT run_id, count(*) AS n, avg(value) AS mean, max(value) AS hi \
             FROM metrics GROUP BY run_id"
                .to_string(),
        ),
        (
            "step_window_avg",
            "SELECT avg(value) AS mean, count(*) AS n FROM metrics \
             WHERE key = 'loss' AND step BETWEEN 5000 AND 5999"
                .to_string(),
        ),
        (
            "latest_join_params",
            "SELECT p.value AS lr, avg(l.value) AS final_loss, count(*) AS runs \
             FROM latest_metrics l JOIN params p ON p.run_id = l.run_id AND p.key = 'lr' \
             WHERE l.key = 'loss' GROUP BY p.value ORDER BY p.value"
                .to_string(),
        ),
        (
            "latest_scan_join_params",
            "SELECT p.value AS lr, avg(l.v) AS final_loss, count(*) AS runs \
             FROM (SELECT run_id, last_value(value ORDER BY step, timestamp) AS v \
                   FROM metrics WHERE key = 'loss' GROUP BY run_id) l \
             JOIN params p ON p.run_id = l.run_id AND p.key = 'lr' \
             GROUP BY p.value ORDER BY p.value"
                .to_string(),
        ),
    ];
    let repeat = env_usize("STEPSTORE_BENCH_REPEAT", 5).max(1);
    let chosen: Option<Vec<String>> = std::env::var("STEPSTORE_BENCH_QUERIES").ok().map(|names| {
        names
            .split(',')
            .map(|name| name.trim().to_string())
            .collect()
    });
    let ours: Vec<(&str, String)> = ours
        .into_iter()
        .filter(|(name, _)| {
            chosen
                .as_ref()
                .is_none_or(|chosen| chosen.iter().any(|chosen| chosen == name))
        })
        .collect();
    let mut stepstore_ms: BTreeMap<&str, (f64, f64, usize)> = BTreeMap::new();
    for (name, sql) in &ours {
        let result = runtime.block_on(service.execute(sql))?;
        let rows = result.num_rows();
        let mut times = Vec::new();
        for _ in 0..repeat {
            let started = Instant::now();
            let result = runtime.block_on(service.execute(sql))?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(result.num_rows(), rows);
        }
        times.sort_by(f64::total_cmp);
        stepstore_ms.insert(name, (times[times.len() / 2], times[0], rows));
        println!(
            "stepstore {name}: {:.1} ms ({rows} rows)",
            times[times.len() / 2]
        );
        if std::env::var_os("STEPSTORE_BENCH_PRINT").is_some() {
            print!("{}", stepstore::query::output::to_table(&result)?);
        }
        if std::env::var_os("STEPSTORE_BENCH_EXPLAIN").is_some() {
            let plan = runtime.block_on(service.execute(&format!("EXPLAIN ANALYZE {sql}")))?;
            print!("{}", stepstore::query::output::to_table(&plan)?);
        }
    }
    drop(service);
    engine.shutdown()?;
    if std::env::var_os("STEPSTORE_BENCH_NO_DUCKDB").is_some() {
        return Ok(());
    }

    // --- DuckDB over the same files ---
    let files = format!(
        "read_parquet('{}/metrics/*/*/*.parquet', hive_partitioning = true, \
         hive_types = {{'experiment_id': VARCHAR, 'run_id': VARCHAR}})",
        data_dir.display()
    );
    let params_sql = format!("read_parquet('{}')", params_file.display());
    let duck_queries = json!({
        "one_run_one_key": format!(
            "SELECT step, value FROM {files} WHERE run_id = '{run_id}' AND key = 'loss' ORDER BY step"),
        "per_run_aggregate": format!(
            "SELECT run_id, count(*) AS n, avg(value) AS mean, max(value) AS hi FROM {files} GROUP BY run_id"),
        "step_window_avg": format!(
            "SELECT avg(value) AS mean, count(*) AS n FROM {files} WHERE key = 'loss' AND step BETWEEN 5000 AND 5999"),
        "latest_join_params": format!(
            "SELECT p.value AS lr, avg(l.v) AS final_loss, count(*) AS runs \
             FROM (SELECT run_id, arg_max(value, step) AS v FROM {files} WHERE key = 'loss' GROUP BY run_id) l \
             JOIN {params_sql} p ON p.run_id = l.run_id AND p.key = 'lr' GROUP BY p.value ORDER BY p.value"),
    });
    let python = bench_python()?;
    let job = json!({"queries": duck_queries, "repeat": repeat, "warmup": 1});
    let duck = run_duckdb(&python, &job)?;
    let duck_results = &duck["results"];

    println!();
    println!(
        "| query | stepstore median ms | DuckDB {} median ms ({} threads) | stepstore / DuckDB |",
        duck["duckdb_version"].as_str().unwrap_or("?"),
        duck["threads"]
    );
    println!("|---|---|---|---|");
    for (name, (median, _, rows)) in &stepstore_ms {
        let duck_name = if *name == "latest_scan_join_params" {
            "latest_join_params"
        } else {
            name
        };
        let duck_ms = duck_results[duck_name]["median_ms"].as_f64();
        let duck_rows = duck_results[duck_name]["rows"].as_u64();
        if let Some(duck_rows) = duck_rows
            && duck_rows as usize != *rows
        {
            bail!("{name}: stepstore returned {rows} rows, DuckDB {duck_rows}");
        }
        match duck_ms {
            Some(duck_ms) => println!(
                "| {name} | {median:.1} | {duck_ms:.1} | {:.2} |",
                median / duck_ms
            ),
            None => println!("| {name} | {median:.1} | - | - |"),
        }
    }
    Ok(())
}

/// Creates the catalog through the engine and writes every run's points
/// straight to one Parquet file with the storage writer.
fn generate(data_dir: &Path, runs: usize, steps: i64) -> anyhow::Result<()> {
    let mut config = EngineConfig::new(data_dir);
    config.wal_sync = SyncPolicy::Off;
    let engine = Engine::open(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut created: Vec<(ExperimentId, RunId, usize)> = Vec::with_capacity(runs);
    runtime.block_on(async {
        let mut experiments = Vec::new();
        for experiment in 0..EXPERIMENTS {
            experiments.push(
                engine
                    .create_experiment(NewExperiment {
                        name: format!("bench-{experiment}"),
                        artifact_location: None,
                        tags: Vec::new(),
                    })
                    .await?,
            );
        }
        for run in 0..runs {
            let experiment_id = experiments[run % EXPERIMENTS];
            let created_run = engine
                .create_run(NewRun {
                    experiment_id,
                    run_name: Some(format!("run-{run:04}")),
                    user_id: "bench".to_string(),
                    start_time: now_millis(),
                    params: vec![
                        ("lr".to_string(), LEARNING_RATES[run % 5].to_string()),
                        ("batch_size".to_string(), (32 << (run % 4)).to_string()),
                        ("seed".to_string(), run.to_string()),
                    ],
                    tags: Vec::new(),
                })
                .await?;
            created.push((experiment_id, created_run.run_id, run));
        }
        anyhow::Ok(())
    })?;
    engine.shutdown()?;
    drop(engine);

    let layout = MetricsLayout::new(data_dir.join("metrics"));
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2);
    let chunk = created.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = created
            .chunks(chunk)
            .map(|part| {
                let layout = layout.clone();
                scope.spawn(move || -> anyhow::Result<()> {
                    for &(experiment_id, run_id, run) in part {
                        let path = layout.file_path(experiment_id, run_id, 1);
                        let mut writer = MetricFileWriter::create(&path)?;
                        writer.write(run_columns(run, steps))?;
                        writer.finish(vec![(1, 1)], Vec::new())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        }
        anyhow::Ok(())
    })?;
    Ok(())
}

/// One run's points in file order: decaying noisy curves.
fn run_columns(run: usize, steps: i64) -> SortedColumns {
    let rows = KEYS.len() * steps as usize;
    let mut columns = SortedColumns {
        keys: KEYS.iter().map(|key| key.to_string()).collect(),
        key_ids: Vec::with_capacity(rows),
        steps: Vec::with_capacity(rows),
        timestamps: Vec::with_capacity(rows),
        values: Vec::with_capacity(rows),
    };
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ (run as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let rate = 1.0 + (run % 5) as f64;
    for key in 0..KEYS.len() {
        for step in 0..steps {
            columns.key_ids.push(key as i32);
            columns.steps.push(step);
            columns
                .timestamps
                .push(1_700_000_000_000 + run as i64 * 1000 + step * 250);
            columns
                .values
                .push((key as f64 + 1.0) * (-(step as f64) * rate / 4000.0).exp() + 0.05 * noise());
        }
    }
    columns
}

fn write_parquet(path: &Path, result: &stepstore::query::QueryResult) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, Arc::clone(&result.schema), None)?;
    for batch in &result.batches {
        writer.write(batch)?;
    }
    writer.close()?;
    Ok(())
}

fn directory_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        total += if metadata.is_dir() {
            directory_bytes(&entry.path())?
        } else {
            metadata.len()
        };
    }
    Ok(total)
}

/// A Python with DuckDB: `STEPSTORE_BENCH_PYTHON`, or a virtual
/// environment created (once) under `~/.cache/stepstore-bench-venv`.
fn bench_python() -> anyhow::Result<PathBuf> {
    if let Ok(python) = std::env::var("STEPSTORE_BENCH_PYTHON") {
        return Ok(PathBuf::from(python));
    }
    let home = std::env::var("HOME").context("HOME is not set")?;
    let venv = PathBuf::from(home).join(".cache/stepstore-bench-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("cannot run python3 -m venv")?;
        if !status.success() {
            bail!("python3 -m venv failed");
        }
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "duckdb>=1.1",
        ])
        .status()
        .context("cannot run pip")?;
    if !status.success() {
        bail!("pip install duckdb failed");
    }
    Ok(python)
}

fn run_duckdb(python: &Path, job: &Value) -> anyhow::Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sql_bench_duckdb.py");
    let mut child = Command::new(python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the DuckDB script")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(job.to_string().as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("the DuckDB script failed");
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}
