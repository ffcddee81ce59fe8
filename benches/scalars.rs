//! Scalar API read latency (release build), in one run:
//! - `parquet_10m`: 1,000 points from a 10-million-point series persisted in
//!   one Parquet file (39 row groups);
//! - `parquet_10m_smoothed`: the same with smoothing 0.9;
//! - `parquet_1m_chart_2400`: 2,400 points (a 600-pixel dashboard chart)
//!   of a 1-million-point series, buckets narrower than a block: every
//!   point decoded;
//! - `buffers_10m`: the same series still in the run's Arrow buffer;
//! - `one_key_100_runs`: one key across 100 runs of 100,000 points each
//!   (persisted), 1,000 points per run;
//! - `parquet_11m` and `forked_10m_plus_1m`: 1,000 points of an ordinary
//!   run of 11 million points, and of a run forked at step 9,999,999 from
//!   a run of 12 million points (10 million inherited, read from the
//!   parent's file up to the fork step) that logged 1 million of its own
//!   (all persisted).
//!
//! Before the timed runs, it prints the peak extra heap one query takes for
//! a 1-million and a 10-million-point series (a counting allocator), which
//! shows that memory does not grow with the series length, and the time of
//! the first read from buffers (which computes the buffer segments' block
//! aggregates; later reads reuse them).
//!
//! The unsmoothed reads use the block aggregates (files' footers, buffer
//! segments); the smoothed read needs every point and is a full scan.
//!
//! `cargo bench --bench scalars`

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};

use stepstore::catalog::NewRun;
use stepstore::catalog::continuity::NewFork;
use stepstore::engine::{Engine, EngineConfig};
use stepstore::ingest::IngestConfig;
use stepstore::model::{ExperimentId, MetricBatchBuilder, RunId};
use stepstore::scalars::KeyPattern;
use stepstore::scalars::query::{self, SeriesParams};
use stepstore::wal::SyncPolicy;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded to the system allocator with the same layout.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the pointer came from `alloc` with this layout.
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const BATCH: i64 = 100_000;

fn open(dir: &Path) -> Arc<Engine> {
    let mut config = EngineConfig::new(dir);
    config.wal_sync = SyncPolicy::Off;
    config.ingest = IngestConfig {
        shards: 2,
        flush_rows: 20_000_000,
        flush_age: std::time::Duration::from_secs(3600),
        buffer_budget_bytes: 4 << 30,
        ..IngestConfig::default()
    };
    Engine::open(config).expect("engine")
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

/// A run with `points` points of `loss`: a noisy decaying curve with one
/// spike.
async fn logged_run(engine: &Engine, name: &str, points: i64) -> RunId {
    let run = engine.create_run(new_run(name)).await.expect("run");
    log_steps(engine, run.run_id, 0..points, points).await;
    run.run_id
}

/// Logs the steps `steps` of a curve of `points` points to a run.
async fn log_steps(engine: &Engine, run_id: RunId, steps: std::ops::Range<i64>, points: i64) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for first in steps.clone().step_by(BATCH as usize) {
        let mut builder = MetricBatchBuilder::with_capacity(BATCH as usize);
        for step in first..(first + BATCH).min(steps.end) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let value = if step == points / 3 {
                1e6
            } else {
                (-(step as f64) / (points as f64 / 5.0)).exp() + 0.05 * noise
            };
            builder.push("loss", step, 1_700_000_000_000 + step * 50, value);
        }
        engine
            .log_metrics(run_id, builder.finish())
            .await
            .expect("log");
    }
}

fn peak_query_heap(
    runtime: &tokio::runtime::Runtime,
    engine: &Arc<Engine>,
    run_id: RunId,
) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let series = runtime
        .block_on(query::read_series(
            engine,
            run_id,
            "loss",
            &SeriesParams::default(),
        ))
        .expect("read");
    assert!(series.steps.len() <= 1000 && series.downsampled);
    PEAK.load(Ordering::Relaxed) - before
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");

    let persisted = open(&dir.path().join("persisted"));
    let (long, short) = runtime.block_on(async {
        (
            logged_run(&persisted, "10m", 10_000_000).await,
            logged_run(&persisted, "1m", 1_000_000).await,
        )
    });
    persisted.flush_buffers().expect("flush");
    let spike = runtime
        .block_on(query::read_series(
            &persisted,
            long,
            "loss",
            &SeriesParams::default(),
        ))
        .expect("read");
    assert!(spike.steps.contains(&(10_000_000 / 3)), "the spike is kept");
    eprintln!(
        "peak extra heap per query, from Parquet: 1M points {:.1} MiB, 10M points {:.1} MiB",
        peak_query_heap(&runtime, &persisted, short) as f64 / (1 << 20) as f64,
        peak_query_heap(&runtime, &persisted, long) as f64 / (1 << 20) as f64,
    );

    let mut group = c.benchmark_group("scalars");
    group.sample_size(10);
    group.bench_function("parquet_10m", |b| {
        b.iter(|| {
            runtime
                .block_on(query::read_series(
                    &persisted,
                    long,
                    "loss",
                    &SeriesParams::default(),
                ))
                .expect("read")
        })
    });
    // A dashboard chart 600 pixels wide: 4 points per pixel column, so
    // buckets of about 1,700 points, narrower than the 4,096-row blocks
    // whose aggregates a read could take whole: every point is decoded.
    let chart = SeriesParams {
        max_points: 2400,
        ..SeriesParams::default()
    };
    group.bench_function("parquet_1m_chart_2400", |b| {
        b.iter(|| {
            runtime
                .block_on(query::read_series(&persisted, short, "loss", &chart))
                .expect("read")
        })
    });
    let smoothed = SeriesParams {
        smoothing: Some(0.9),
        ..SeriesParams::default()
    };
    group.bench_function("parquet_10m_smoothed", |b| {
        b.iter(|| {
            runtime
                .block_on(query::read_series(&persisted, long, "loss", &smoothed))
                .expect("read")
        })
    });

    let many = open(&dir.path().join("many"));
    let runs: Vec<RunId> = runtime.block_on(async {
        let mut runs = Vec::new();
        for index in 0..100 {
            runs.push(logged_run(&many, &format!("run-{index}"), 100_000).await);
        }
        runs
    });
    many.flush_buffers().expect("flush");
    let keys = vec![KeyPattern::Exact("loss".into())];
    group.bench_function("one_key_100_runs", |b| {
        b.iter(|| {
            let results = runtime
                .block_on(query::query(&many, &runs, &keys, &SeriesParams::default()))
                .expect("query");
            assert_eq!(results.len(), 100);
            results
        })
    });
    drop(many);

    // A forked run against an ordinary one of the same length.
    let forks = open(&dir.path().join("forks"));
    let (ordinary, forked) = runtime.block_on(async {
        let ordinary = logged_run(&forks, "11m", 11_000_000).await;
        let parent = logged_run(&forks, "parent-12m", 12_000_000).await;
        forks.flush_buffers().expect("flush");
        let child = forks
            .fork_run(NewFork {
                parent,
                step: 9_999_999,
                run: new_run("fork"),
                time: 1_700_000_000_000,
            })
            .await
            .expect("fork");
        log_steps(&forks, child.run_id, 10_000_000..11_000_000, 11_000_000).await;
        (ordinary, child.run_id)
    });
    forks.flush_buffers().expect("flush");
    for run_id in [ordinary, forked] {
        let series = runtime
            .block_on(query::read_series(
                &forks,
                run_id,
                "loss",
                &SeriesParams::default(),
            ))
            .expect("read");
        assert!(series.downsampled && series.steps.len() <= 1000);
        assert_eq!(series.steps.last(), Some(&10_999_999));
    }
    group.bench_function("parquet_11m", |b| {
        b.iter(|| {
            runtime
                .block_on(query::read_series(
                    &forks,
                    ordinary,
                    "loss",
                    &SeriesParams::default(),
                ))
                .expect("read")
        })
    });
    group.bench_function("forked_10m_plus_1m", |b| {
        b.iter(|| {
            runtime
                .block_on(query::read_series(
                    &forks,
                    forked,
                    "loss",
                    &SeriesParams::default(),
                ))
                .expect("read")
        })
    });
    drop(forks);

    let buffered = open(&dir.path().join("buffered"));
    let in_buffer = runtime.block_on(logged_run(&buffered, "10m", 10_000_000));
    // The first read of buffered segments computes their block aggregates.
    let started = std::time::Instant::now();
    let first_heap = peak_query_heap(&runtime, &buffered, in_buffer);
    let first_read = started.elapsed();
    eprintln!(
        "first read from buffers (computes the segments' block aggregates): {:.1} ms, \
         peak extra heap {:.1} MiB; next read: peak extra heap {:.1} MiB",
        first_read.as_secs_f64() * 1000.0,
        first_heap as f64 / (1 << 20) as f64,
        peak_query_heap(&runtime, &buffered, in_buffer) as f64 / (1 << 20) as f64,
    );
    group.bench_function("buffers_10m", |b| {
        b.iter(|| {
            runtime
                .block_on(query::read_series(
                    &buffered,
                    in_buffer,
                    "loss",
                    &SeriesParams::default(),
                ))
                .expect("read")
        })
    });
    group.finish();
    drop(persisted);
    drop(buffered);
}

criterion_group!(benches, bench);
criterion_main!(benches);
