//! The benchmark's result: throughput, latency percentiles, errors and the
//! server's own counters, as a readable table or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Serialize, Serializer};

use super::{BenchConfig, Progress};
use std::sync::atomic::Ordering;

/// Counters of stepstore's `/metrics` whose change the report shows.
const COUNTER_DELTAS: [&str; 7] = [
    "stepstore_points_ingested_total",
    "stepstore_wal_fsyncs_total",
    "stepstore_wal_bytes_written_total",
    "stepstore_bytes_persisted_total",
    "stepstore_files_persisted_total",
    "stepstore_points_spilled_total",
    "stepstore_spill_files_written_total",
];
/// Gauges of stepstore's `/metrics` whose final value the report shows.
const GAUGES: [&str; 4] = [
    "stepstore_buffer_bytes",
    "stepstore_spill_bytes",
    "stepstore_wal_unpersisted_bytes",
    "stepstore_in_flight_bytes",
];

/// Serializes a duration as seconds.
pub fn serialize_seconds<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// What a benchmark measured.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// The settings.
    pub config: BenchConfig,
    /// The experiment the runs were created in.
    pub experiment: String,
    /// Wall time of the load phase, seconds.
    pub elapsed_secs: f64,
    /// Points acknowledged (generated, in a dry run).
    pub points: u64,
    /// Successful requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Points per second.
    pub points_per_sec: f64,
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Request body megabytes per second.
    pub body_mb_per_sec: f64,
    /// Acknowledgement latency (absent in a dry run).
    pub latency: Option<Latency>,
    /// Up to five error messages per connection.
    pub error_samples: Vec<String>,
    /// Change of stepstore's counters over the run.
    pub server_counter_deltas: BTreeMap<String, f64>,
    /// stepstore's gauges at the end.
    pub server_gauges: BTreeMap<String, f64>,
}

impl BenchReport {
    /// Builds the report from the counters and the merged histogram.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        config: BenchConfig,
        experiment: String,
        progress: &Progress,
        elapsed: Duration,
        latencies: &Histogram<u64>,
        error_samples: Vec<String>,
        before: Option<BTreeMap<String, f64>>,
        after: Option<BTreeMap<String, f64>>,
    ) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let points = progress.points.load(Ordering::Relaxed);
        let requests = progress.requests.load(Ordering::Relaxed);
        let bytes = progress.bytes.load(Ordering::Relaxed);
        let millis = |micros: u64| micros as f64 / 1000.0;
        let latency = (!config.dry_run && !latencies.is_empty()).then(|| Latency {
            p50_ms: millis(latencies.value_at_quantile(0.50)),
            p90_ms: millis(latencies.value_at_quantile(0.90)),
            p99_ms: millis(latencies.value_at_quantile(0.99)),
            max_ms: millis(latencies.max()),
        });
        let mut server_counter_deltas = BTreeMap::new();
        let mut server_gauges = BTreeMap::new();
        if let (Some(before), Some(after)) = (&before, &after) {
            for name in COUNTER_DELTAS {
                if let (Some(start), Some(end)) = (before.get(name), after.get(name)) {
                    server_counter_deltas.insert(name.to_string(), end - start);
                }
            }
            for name in GAUGES {
                if let Some(value) = after.get(name) {
                    server_gauges.insert(name.to_string(), *value);
                }
            }
        }
        BenchReport {
            experiment,
            elapsed_secs: seconds,
            points,
            requests,
            errors: progress.errors.load(Ordering::Relaxed),
            points_per_sec: points as f64 / seconds,
            requests_per_sec: requests as f64 / seconds,
            body_mb_per_sec: bytes as f64 / seconds / 1e6,
            latency,
            error_samples,
            server_counter_deltas,
            server_gauges,
            config,
        }
    }

    /// A readable summary.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let config = &self.config;
        let _ = writeln!(
            out,
            "{} {} -> {}: {} runs x {} keys, {} steps x {} run(s) per request, {} connections, {:.1} s",
            if config.dry_run { "dry run" } else { "bench" },
            config.protocol,
            config.target,
            config.runs,
            config.keys,
            config.steps_per_request,
            config.runs_per_request,
            config.concurrency,
            self.elapsed_secs
        );
        let _ = writeln!(
            out,
            "  points/s   {:>14.0}   ({} points)",
            self.points_per_sec, self.points
        );
        let _ = writeln!(
            out,
            "  requests/s {:>14.1}   ({} requests, {:.1} MB/s of bodies)",
            self.requests_per_sec, self.requests, self.body_mb_per_sec
        );
        if let Some(latency) = &self.latency {
            let _ = writeln!(
                out,
                "  latency    p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
                latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.max_ms
            );
        }
        let _ = writeln!(out, "  errors     {}", self.errors);
        for sample in &self.error_samples {
            let _ = writeln!(out, "    {sample}");
        }
        if !self.server_counter_deltas.is_empty() {
            let _ = writeln!(out, "  server /metrics over the run:");
            for (name, delta) in &self.server_counter_deltas {
                let _ = writeln!(out, "    {name:<40} +{delta:.0}");
            }
            for (name, value) in &self.server_gauges {
                let _ = writeln!(out, "    {name:<40} {value:.0} (at the end)");
            }
        }
        out
    }
}
