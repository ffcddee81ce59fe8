//! What the MLflow UI waits for, over real HTTP (release build): a history
//! of 100 runs x 10 keys x 100,000 steps (100 million points, persisted),
//! served by the real router on a loopback port, then:
//! - `chart_one_key_100_runs`: the request the UI's chart view sends for
//!   one key over 100 runs (`get-history-bulk-interval`, 100 `run_ids`,
//!   `max_results=320`), the whole body received;
//! - `charts_10_keys_100_runs`: the ten such requests of a chart view
//!   with one chart per key, six at a time as a browser sends them;
//! - `get_history_140k`: `metrics/get-history` of a 140,000-point series
//!   (what `MlflowClient.get_metric_history` reads), the whole body.
//!
//! `cargo bench --bench mlflow_ui` (`STEPSTORE_BENCH_DIR` keeps the
//! history elsewhere than the system's temporary directory).

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;

use stepstore::catalog::NewRun;
use stepstore::engine::{Engine, EngineConfig};
use stepstore::ingest::IngestConfig;
use stepstore::model::{ExperimentId, MetricBatchBuilder, RunId};
use stepstore::server::{self, ServerConfig};
use stepstore::wal::SyncPolicy;

const RUNS: usize = 100;
const KEYS: usize = 10;
const STEPS: i64 = 100_000;
const HISTORY_POINTS: i64 = 140_000;

fn open(dir: &std::path::Path) -> Arc<Engine> {
    let mut config = EngineConfig::new(dir);
    config.wal_sync = SyncPolicy::Off;
    config.ingest = IngestConfig {
        shards: 2,
        flush_rows: 20_000_000,
        flush_age: Duration::from_secs(3600),
        buffer_budget_bytes: 4 << 30,
        ..IngestConfig::default()
    };
    Engine::open(config).expect("engine")
}

async fn create_run(engine: &Engine, name: String) -> RunId {
    engine
        .create_run(NewRun {
            experiment_id: ExperimentId::DEFAULT,
            run_name: Some(name),
            user_id: String::new(),
            start_time: 1_700_000_000_000,
            params: Vec::new(),
            tags: Vec::new(),
        })
        .await
        .expect("run")
        .run_id
}

/// Logs `steps` steps of `keys` noisy decaying curves (one spike each).
async fn log_curves(engine: &Engine, run_id: RunId, keys: &[String], steps: i64, seed: u64) {
    let mut state = seed | 1;
    let batch = 10_000;
    for first in (0..steps).step_by(batch as usize) {
        let mut builder = MetricBatchBuilder::with_capacity(batch as usize * keys.len());
        for (index, key) in keys.iter().enumerate() {
            for step in first..(first + batch).min(steps) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                let value = if step == steps / 3 + index as i64 {
                    1e3
                } else {
                    (-(step as f64) / (steps as f64 / 5.0)).exp() + 0.05 * noise
                };
                builder.push(key, step, 1_700_000_000_000 + step * 50, value);
            }
        }
        engine
            .log_metrics(run_id, builder.finish())
            .await
            .expect("log");
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let base = std::env::var_os("STEPSTORE_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = match &base {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let engine = open(dir.path());
    let keys: Vec<String> = (0..KEYS)
        .map(|index| format!("train/key_{index}"))
        .collect();
    let started = std::time::Instant::now();
    let (runs, history_run) = runtime.block_on(async {
        let mut runs = Vec::with_capacity(RUNS);
        for index in 0..RUNS {
            let run_id = create_run(&engine, format!("run-{index}")).await;
            log_curves(&engine, run_id, &keys, STEPS, index as u64 + 7).await;
            runs.push(run_id);
            if index % 10 == 9 {
                engine.flush_buffers().expect("flush");
            }
        }
        let history_run = create_run(&engine, "history".to_string()).await;
        log_curves(&engine, history_run, &keys[..1], HISTORY_POINTS, 3).await;
        (runs, history_run)
    });
    engine.flush_buffers().expect("flush");
    eprintln!(
        "wrote {} points in {:.1} s",
        RUNS as i64 * KEYS as i64 * STEPS + HISTORY_POINTS,
        started.elapsed().as_secs_f64()
    );

    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("listen");
    let address = listener.local_addr().expect("address");
    let router = server::router(Arc::clone(&engine), &ServerConfig::default());
    runtime.spawn(async move { axum::serve(listener, router).await });
    let base = format!("http://{address}/ajax-api/2.0/mlflow");
    let run_ids: String = runs.iter().map(|id| format!("run_ids={id}&")).collect();
    let chart_url = |key: &str| {
        format!(
            "{base}/metrics/get-history-bulk-interval?{run_ids}metric_key={key}&max_results=320"
        )
    };
    let client = reqwest::Client::new();
    let fetch = |url: String| {
        let client = client.clone();
        async move {
            let response = client.get(url).send().await.expect("request");
            assert!(response.status().is_success(), "{}", response.status());
            response.bytes().await.expect("body").len()
        }
    };
    let one = runtime.block_on(fetch(chart_url(&keys[0])));
    let points = runtime
        .block_on(async {
            client
                .get(chart_url(&keys[0]))
                .send()
                .await?
                .json::<serde_json::Value>()
                .await
        })
        .expect("json")["metrics"]
        .as_array()
        .map_or(0, Vec::len);
    eprintln!("one chart request: {points} points, {one} bytes");

    let mut group = c.benchmark_group("mlflow_ui");
    group.sample_size(10);
    group.bench_function("chart_one_key_100_runs", |b| {
        b.iter(|| runtime.block_on(fetch(chart_url(&keys[0]))))
    });
    group.bench_function("charts_10_keys_100_runs", |b| {
        b.iter(|| {
            runtime.block_on(
                futures::stream::iter(keys.iter().map(|key| fetch(chart_url(key))))
                    .buffer_unordered(6)
                    .collect::<Vec<usize>>(),
            )
        })
    });
    let history_url = format!(
        "{base}/metrics/get-history?run_id={history_run}&metric_key={}",
        keys[0]
    );
    group.bench_function("get_history_140k", |b| {
        b.iter(|| runtime.block_on(fetch(history_url.clone())))
    });
    group.finish();
    drop(engine);
}

criterion_group!(benches, bench);
criterion_main!(benches);
