//! Prometheus text exposition of the engine's counters for `/metrics`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::engine::TelemetrySnapshot;

/// A counter or gauge kept outside the engine (by the HTTP layer): name,
/// help, value.
pub type ExtraCounter = (&'static str, &'static str, u64);

/// Renders `snapshot`, `extra` counters and `gauges` in the Prometheus
/// (OpenMetrics) text format.
pub fn render(
    snapshot: TelemetrySnapshot,
    extra: &[ExtraCounter],
    gauges: &[ExtraCounter],
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("stepstore");
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    registry.register_collector(Box::new(ExtraCollector(extra.to_vec())));
    registry.register_collector(Box::new(ExtraGauges(gauges.to_vec())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct SnapshotCollector(TelemetrySnapshot);

#[derive(Debug)]
struct ExtraCollector(Vec<ExtraCounter>);

impl Collector for ExtraCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for &(name, help, value) in &self.0 {
            let counter = ConstCounter::new(value);
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric_encoder)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct ExtraGauges(Vec<ExtraCounter>);

impl Collector for ExtraGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for &(name, help, value) in &self.0 {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric_encoder)?;
        }
        Ok(())
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = &self.0;
        let uploads = &snapshot.uploads;
        let cache = &snapshot.cache;
        let replica = &snapshot.replica;
        let counters: [(&str, &str, u64); 37] = [
            (
                "store_fetches",
                "Fetches from the object store for reads (each gets the missing 1 MiB ranges of one read, concurrently)",
                cache.fetches,
            ),
            (
                "replica_refreshes",
                "Read replica refreshes from the object store that succeeded since start",
                replica.refreshes,
            ),
            (
                "replica_failed_refreshes",
                "Read replica refreshes that failed (the store did not answer; retried at the next)",
                replica.failed_refreshes,
            ),
            (
                "replica_catalog_updates",
                "Newer catalog snapshots (runs, params, tags) taken from the object store by a read replica since start",
                replica.catalog_updates,
            ),
            (
                "replica_run_updates",
                "Runs whose files changed in the store, applied by a read replica since start",
                replica.run_updates,
            ),
            (
                "store_cache_hits",
                "1 MiB ranges of stored metric files read from the local cache",
                cache.hits,
            ),
            (
                "store_cache_misses",
                "1 MiB ranges of stored metric files fetched from the object store for reads",
                cache.misses,
            ),
            (
                "store_fetched_bytes",
                "Bytes fetched from the object store for reads since start",
                cache.fetched_bytes,
            ),
            (
                "store_evicted_local_files",
                "Local copies of uploaded metric files evicted from the cache (read from the store since)",
                cache.evicted_local_files,
            ),
            (
                "store_uploaded_files",
                "Metric files uploaded to the object store since start",
                uploads.uploaded_files,
            ),
            (
                "store_uploaded_bytes",
                "Bytes of metric files uploaded to the object store since start",
                uploads.uploaded_bytes,
            ),
            (
                "store_failed_requests",
                "Object store uploads and deletes that failed (each is retried with backoff)",
                uploads.failed_attempts,
            ),
            (
                "store_deleted_files",
                "Replaced metric files deleted from the object store since start",
                uploads.deleted_files,
            ),
            (
                "spill_files_written",
                "Spill files written since start (small buffers of many runs moved out of memory together)",
                snapshot.spill_files_written,
            ),
            (
                "spill_bytes_written",
                "Bytes of spill files written since start",
                snapshot.spill_bytes_written,
            ),
            (
                "points_spilled",
                "Metric points moved from memory to spill files since start",
                snapshot.points_spilled,
            ),
            (
                "spill_member_reads",
                "Reads of a run's spilled points back from a spill file since start",
                snapshot.spill_member_reads,
            ),
            (
                "gc_runs_purged",
                "Deleted runs removed for good by stepstore gc since start",
                snapshot.runs_purged,
            ),
            (
                "forks",
                "Runs forked since start (POST /api/v1/runs with fork_from)",
                snapshot.forks,
            ),
            (
                "rewinds",
                "Runs rewound since start (POST /api/v1/runs/{id}/rewind or the tag stepstore.rewind_to_step)",
                snapshot.rewinds,
            ),
            (
                "idempotent_replays",
                "Bulk ingest requests sent again with an Idempotency-Key already accepted: answered from its receipt, nothing written",
                snapshot.idempotent_replays,
            ),
            (
                "idempotency_conflicts",
                "Bulk ingest requests refused because their Idempotency-Key was in use (409) or used with another body (422)",
                snapshot.idempotency_conflicts,
            ),
            (
                "damaged_file_reads",
                "Reads of metric files that found a data page failing its checksum (the read failed)",
                snapshot.damaged_file_reads,
            ),
            (
                "injected_io_faults",
                "File operations failed on purpose by a test's fault plan (STEPSTORE_IO_FAULTS); 0 in production",
                snapshot.injected_io_faults,
            ),
            (
                "thread_panics",
                "Panics contained in persister and shard threads since start",
                snapshot.thread_panics,
            ),
            (
                "quarantined_files",
                "Damaged metric files and catalog snapshot copies moved to the quarantine directory at start",
                snapshot.quarantined_files,
            ),
            (
                "points_ingested",
                "Metric points applied to buffers since start",
                snapshot.points_ingested,
            ),
            (
                "bytes_persisted",
                "Bytes of metric files written since start",
                snapshot.bytes_persisted,
            ),
            (
                "files_persisted",
                "Metric files written since start",
                snapshot.files_persisted,
            ),
            (
                "compactions",
                "Run compactions since start",
                snapshot.compactions,
            ),
            (
                "run_manifests_written",
                "Run manifests written since start (what the next start reads instead of the run's footers)",
                snapshot.run_manifests_written,
            ),
            (
                "run_wakes",
                "Dormant runs whose files were loaded again for a read or a write, since start",
                snapshot.run_wakes,
            ),
            (
                "run_wake_failures",
                "Dormant runs whose files could not be loaded again, since start (logged)",
                snapshot.run_wake_failures,
            ),
            (
                "persist_failures",
                "Failed metric file writes since start (retried)",
                snapshot.persist_failures,
            ),
            (
                "wal_fsyncs",
                "WAL fdatasync calls since start",
                snapshot.wal_fsyncs,
            ),
            (
                "wal_bytes_written",
                "Bytes written to the WAL since start",
                snapshot.wal_bytes_written,
            ),
            (
                "footer_loads",
                "Metric file footers read from disk because the footer cache did not hold them",
                snapshot.footer_loads,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric_encoder)?;
        }
        let gauges: [(&str, &str, u64); 23] = [
            (
                "runs_dormant",
                "Finished runs held only by their key summaries (files loaded again when read)",
                snapshot.runs_dormant,
            ),
            (
                "runs_from_dormant_log",
                "Finished runs the start held dormant as the dormant-run log recorded them, their directories not opened",
                snapshot.runs_from_dormant_log,
            ),
            (
                "runs_from_manifests",
                "Runs whose files the start took from their manifests, no footer read",
                snapshot.runs_from_manifests,
            ),
            (
                "replica_staleness_seconds",
                "Seconds since a read replica's last successful refresh (0 for a writer)",
                replica.staleness_secs,
            ),
            (
                "store_cache_bytes",
                "Local disk the object store's cache holds: copies of uploaded files and ranges read (--cache-mb bounds it)",
                cache.bytes,
            ),
            (
                "store_cache_budget_bytes",
                "The object store cache's budget (--cache-mb)",
                cache.budget,
            ),
            (
                "store_pending_files",
                "Metric files waiting to be uploaded to the object store (the WAL keeps their points)",
                uploads.pending_files,
            ),
            (
                "store_pending_bytes",
                "Bytes of metric files waiting to be uploaded to the object store",
                uploads.pending_bytes,
            ),
            (
                "store_upload_lag_seconds",
                "How long the oldest metric file waiting for upload has waited",
                uploads.lag.as_secs(),
            ),
            (
                "forked_runs",
                "Runs forked from another run (they read their parent's points up to the fork step)",
                snapshot.forked_runs,
            ),
            (
                "rewound_runs",
                "Runs with at least one rewind (their hidden points are kept until stepstore gc)",
                snapshot.rewound_runs,
            ),
            (
                "ingest_receipts",
                "Receipts of bulk ingest requests with an Idempotency-Key kept (the last 24 hours, at most 100,000)",
                snapshot.ingest_receipts,
            ),
            (
                "footer_cache_bytes",
                "Memory the cached metric file footers take (--footer-cache-mb bounds it)",
                snapshot.footer_cache_bytes,
            ),
            (
                "wal_segments",
                "WAL segment files on disk",
                snapshot.wal_segments,
            ),
            (
                "buffer_bytes",
                "Bytes of metric points held in memory buffers",
                snapshot.buffer_bytes,
            ),
            (
                "spill_files",
                "Spill files on disk (each removed once its points are in their runs' files)",
                snapshot.spill_files,
            ),
            (
                "spill_bytes",
                "Bytes of spill files on disk",
                snapshot.spill_bytes,
            ),
            (
                "buffer_bytes_peak",
                "The most bytes metric buffers have held since start",
                snapshot.buffer_bytes_peak,
            ),
            (
                "buffer_budget_bytes",
                "Memory budget of metric buffers",
                snapshot.buffer_budget_bytes,
            ),
            (
                "in_flight_bytes",
                "Bytes of metric points accepted but not yet buffered",
                snapshot.in_flight_bytes,
            ),
            (
                "wal_unpersisted_bytes",
                "Bytes of WAL segments not yet removed (WAL lag)",
                snapshot.wal_unpersisted_bytes,
            ),
            (
                "experiments",
                "Experiments in the catalog",
                snapshot.experiments,
            ),
            ("runs", "Runs in the catalog", snapshot.runs),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value as i64);
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric_encoder)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let text = render(
            TelemetrySnapshot {
                points_ingested: 42,
                buffer_bytes: 7,
                spill_bytes: 11,
                points_spilled: 13,
                footer_cache_bytes: 9,
                footer_loads: 5,
                ..TelemetrySnapshot::default()
            },
            &[("auth_unauthenticated", "Refused requests", 3)],
            &[("connections_open", "Open connections", 2)],
        )
        .unwrap();
        assert!(
            text.contains("stepstore_auth_unauthenticated_total 3"),
            "{text}"
        );
        assert!(
            text.contains("stepstore_points_ingested_total 42"),
            "{text}"
        );
        assert!(text.contains("stepstore_buffer_bytes 7"), "{text}");
        assert!(text.contains("stepstore_spill_bytes 11"), "{text}");
        assert!(text.contains("stepstore_points_spilled_total 13"), "{text}");
        assert!(text.contains("stepstore_footer_cache_bytes 9"), "{text}");
        assert!(text.contains("stepstore_footer_loads_total 5"), "{text}");
        assert!(text.contains("stepstore_connections_open 2"), "{text}");
        assert!(
            text.contains("# TYPE stepstore_wal_unpersisted_bytes gauge"),
            "{text}"
        );
    }
}
