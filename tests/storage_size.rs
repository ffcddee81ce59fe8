//! On-disk size of a realistic curve set: 100 keys x 100,000 steps of noisy,
//! decaying float values (one point per step and key), after the run ends
//! and its files are compacted. Goal: at most 8 bytes per point (MLflow's
//! SQL store spends about 300).

use std::time::{Duration, Instant};

use stepstore::catalog::{NewRun, RunUpdate};
use stepstore::engine::{Engine, EngineConfig};
use stepstore::model::{ExperimentId, MetricBatchBuilder, RunStatus, now_millis};
use stepstore::wal::SyncPolicy;

const KEYS: usize = 100;
const STEPS: i64 = 100_000;
const STEPS_PER_BATCH: i64 = 100;

/// A small deterministic generator of standard normal noise.
struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
}

fn files_bytes(dir: &std::path::Path) -> (usize, u64) {
    let mut count = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.join("metrics")];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else if entry.path().extension().is_some_and(|ext| ext == "parquet") {
                count += 1;
                bytes += entry.metadata().unwrap().len();
            }
        }
    }
    (count, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realistic_curves_take_at_most_eight_bytes_per_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.wal_sync = SyncPolicy::Off;
    let engine = Engine::open(config).unwrap();
    let run = engine
        .create_run(NewRun {
            experiment_id: ExperimentId::DEFAULT,
            run_name: Some("curves".into()),
            user_id: String::new(),
            start_time: now_millis(),
            params: Vec::new(),
            tags: Vec::new(),
        })
        .await
        .unwrap();
    let keys: Vec<String> = (0..KEYS)
        .map(|key| format!("train/metric_{key:03}"))
        .collect();
    let mut noise = Noise(0x2545_f491_4f6c_dd1d);
    let start = 1_700_000_000_000_i64;
    let mut wall_time = start;
    for first in (0..STEPS).step_by(STEPS_PER_BATCH as usize) {
        let mut builder = MetricBatchBuilder::with_capacity(KEYS * STEPS_PER_BATCH as usize);
        for step in first..first + STEPS_PER_BATCH {
            // Steps take 180-220 ms of wall time; all keys share a timestamp.
            wall_time += 180 + (noise.uniform() * 40.0) as i64;
            for (index, key) in keys.iter().enumerate() {
                let scale = 1.0 + index as f64 * 0.1;
                let decay = (-(step as f64) / (20_000.0 + 500.0 * index as f64)).exp();
                let value = scale * decay + 0.05 + 0.02 * scale * noise.normal();
                builder.push(key, step, wall_time, value);
            }
        }
        engine
            .log_metrics(run.run_id, builder.finish())
            .await
            .unwrap();
    }
    let points = KEYS as u64 * STEPS as u64;
    engine
        .update_run(
            run.run_id,
            RunUpdate {
                status: Some(RunStatus::Finished),
                ..RunUpdate::default()
            },
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let telemetry = engine.telemetry();
        let (files, _) = files_bytes(dir.path());
        if files == 1 && telemetry.buffer_bytes == 0 && telemetry.compactions >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the run was not compacted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, bytes) = files_bytes(dir.path());
    let per_point = bytes as f64 / points as f64;
    eprintln!("{points} points in {bytes} bytes after compaction: {per_point:.2} bytes per point");
    assert!(per_point <= 8.0, "{per_point:.2} bytes per point");
    let series = engine.metric_series(run.run_id, &keys[7]).await.unwrap();
    assert_eq!(series.len(), STEPS as usize);
    engine.shutdown().unwrap();
}
