//! Ingest throughput, in one run:
//! - `pipeline`: the in-process ingest path on one shard: batches applied
//!   to a run's Arrow buffers, then frozen, sorted and written as Parquet;
//! - `engine_wal_off`: the same through the engine (WAL encoding and write,
//!   sync off) and back out to Parquet;
//! - `baseline_arrow_parquet`: the same points written straight to Parquet
//!   with arrow-rs (same encodings and compression, no buffering, no sort).
//!
//! `cargo bench --bench ingest`; points/s is criterion's "thrpt".

use std::sync::Arc;

use arrow::array::{
    DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::Int32Type;
use arrow::record_batch::RecordBatch;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use parquet::arrow::ArrowWriter;

use stepstore::catalog::NewRun;
use stepstore::engine::{Engine, EngineConfig};
use stepstore::ingest::{IngestConfig, Ingester};
use stepstore::model::{ExperimentId, MetricBatch, MetricBatchBuilder, RunId, now_millis};
use stepstore::storage::MetricsLayout;
use stepstore::storage::schema::{TIMEZONE, metric_file_schema, writer_properties};
use stepstore::wal::SyncPolicy;

const KEYS: usize = 100;
const STEPS: i64 = 10_000;
const STEPS_PER_BATCH: i64 = 10;
const POINTS: u64 = KEYS as u64 * STEPS as u64;

/// A training loop's output: every step logs every key; noisy decaying values.
fn batches() -> Vec<MetricBatch> {
    let keys: Vec<String> = (0..KEYS)
        .map(|key| format!("train/metric_{key:03}"))
        .collect();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    (0..STEPS)
        .step_by(STEPS_PER_BATCH as usize)
        .map(|first| {
            let mut builder = MetricBatchBuilder::with_capacity(KEYS * STEPS_PER_BATCH as usize);
            for step in first..first + STEPS_PER_BATCH {
                for (index, key) in keys.iter().enumerate() {
                    let value =
                        (index as f64 + 1.0) * (-(step as f64) / 3000.0).exp() + 0.05 * noise();
                    builder.push(key, step, 1_700_000_000_000 + step * 50, value);
                }
            }
            builder.finish()
        })
        .collect()
}

fn pipeline(c: &mut Criterion, input: &[MetricBatch]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = IngestConfig {
        shards: 1,
        persist_threads: 1,
        flush_rows: POINTS as usize,
        ..IngestConfig::default()
    };
    let ingester = Ingester::start(
        config,
        MetricsLayout::new(dir.path().join("metrics")),
        Vec::new(),
    )
    .expect("ingester");
    let mut lsn = 0;
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(POINTS));
    group.sample_size(10);
    group.bench_function("pipeline", |bench| {
        bench.iter_batched(
            || input.to_vec(),
            |batches| {
                let run_id = RunId::new_random();
                for batch in batches {
                    lsn += 1;
                    ingester.apply(run_id, ExperimentId::DEFAULT, lsn, batch, None);
                }
                ingester.flush_all().expect("flush");
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    ingester.shutdown();
}

fn engine_wal_off(c: &mut Criterion, input: &[MetricBatch]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = EngineConfig::new(dir.path());
    config.wal_sync = SyncPolicy::Off;
    config.ingest.shards = 1;
    config.ingest.flush_rows = POINTS as usize;
    let engine = Engine::open(config).expect("engine");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(POINTS));
    group.sample_size(10);
    group.bench_function("engine_wal_off", |bench| {
        bench.iter_batched(
            || input.to_vec(),
            |batches| {
                runtime.block_on(async {
                    let run = engine
                        .create_run(NewRun {
                            experiment_id: ExperimentId::DEFAULT,
                            run_name: None,
                            user_id: String::new(),
                            start_time: now_millis(),
                            params: Vec::new(),
                            tags: Vec::new(),
                        })
                        .await
                        .expect("run");
                    let mut writes = tokio::task::JoinSet::new();
                    for batch in batches {
                        let engine = Arc::clone(&engine);
                        writes.spawn(async move { engine.log_metrics(run.run_id, batch).await });
                    }
                    while let Some(written) = writes.join_next().await {
                        written.expect("task").expect("log");
                    }
                });
                engine.flush_buffers().expect("flush");
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    engine.shutdown().expect("shutdown");
}

fn baseline(c: &mut Criterion, input: &[MetricBatch]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("baseline.parquet");
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(POINTS));
    group.sample_size(10);
    group.bench_function("baseline_arrow_parquet", |bench| {
        bench.iter(|| {
            let file = std::fs::File::create(&path).expect("create");
            let mut writer =
                ArrowWriter::try_new(file, metric_file_schema(), Some(writer_properties()))
                    .expect("writer");
            for batch in input {
                let keys = DictionaryArray::<Int32Type>::try_new(
                    Int32Array::from_iter_values(
                        batch.key_indices.iter().map(|&index| index as i32),
                    ),
                    Arc::new(StringArray::from_iter_values(batch.keys.iter())),
                )
                .expect("keys");
                let record_batch = RecordBatch::try_new(
                    metric_file_schema(),
                    vec![
                        Arc::new(keys),
                        Arc::new(Int64Array::from(batch.steps.clone())),
                        Arc::new(
                            TimestampMillisecondArray::from(batch.timestamps.clone())
                                .with_timezone(TIMEZONE),
                        ),
                        Arc::new(Float64Array::from(batch.values.clone())),
                    ],
                )
                .expect("batch");
                writer.write(&record_batch).expect("write");
            }
            let file = writer.into_inner().expect("finish");
            file.sync_all().expect("sync");
        })
    });
    group.finish();
}

fn ingest(c: &mut Criterion) {
    let input = batches();
    pipeline(c, &input);
    engine_wal_off(c, &input);
    baseline(c, &input);
}

criterion_group!(benches, ingest);
criterion_main!(benches);
