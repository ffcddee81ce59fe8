//! The engine's operations: health, `/metrics` values, checkpoints
//! (catalog snapshots and WAL segment removal), flushing buffers and
//! shutdown.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::recovery;
use super::{Engine, EngineError};
use crate::catalog::snapshot;
use crate::wal::Lsn;

/// How long shutdown waits for the object store to take the last files.
const UPLOADS_AT_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(30);

/// Values for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TelemetrySnapshot {
    /// Points applied to buffers since start.
    pub points_ingested: u64,
    /// Bytes of buffered points.
    pub buffer_bytes: u64,
    /// The most `buffer_bytes` has been since start.
    pub buffer_bytes_peak: u64,
    /// The buffer budget.
    pub buffer_budget_bytes: u64,
    /// Bytes of points accepted by the WAL but not yet buffered.
    pub in_flight_bytes: u64,
    /// Bytes of metric files written since start.
    pub bytes_persisted: u64,
    /// Metric files written since start.
    pub files_persisted: u64,
    /// Compactions since start.
    pub compactions: u64,
    /// Spill files written since start.
    pub spill_files_written: u64,
    /// Bytes of spill files written since start.
    pub spill_bytes_written: u64,
    /// Points moved to spill files since start.
    pub points_spilled: u64,
    /// Spilled points read back since start (reads of members).
    pub spill_member_reads: u64,
    /// Spill files on disk now.
    pub spill_files: u64,
    /// Bytes of spill files on disk now.
    pub spill_bytes: u64,
    /// Run manifests written since start.
    pub run_manifests_written: u64,
    /// Runs held only by their key summaries now (dormant).
    pub runs_dormant: u64,
    /// Dormant runs loaded again since start.
    pub run_wakes: u64,
    /// Dormant runs whose files could not be loaded again since start.
    pub run_wake_failures: u64,
    /// Runs whose files the start took from their manifests (no footer
    /// read).
    pub runs_from_manifests: u64,
    /// Runs the start held dormant as the dormant-run log recorded them
    /// (their directories not opened).
    pub runs_from_dormant_log: u64,
    /// Failed file writes since start.
    pub persist_failures: u64,
    /// Bytes of WAL segments still needed or not yet removed.
    pub wal_unpersisted_bytes: u64,
    /// WAL segment files on disk.
    pub wal_segments: u64,
    /// WAL syncs since start.
    pub wal_fsyncs: u64,
    /// WAL bytes written since start.
    pub wal_bytes_written: u64,
    /// Experiments in the catalog.
    pub experiments: u64,
    /// Runs in the catalog.
    pub runs: u64,
    /// Damaged metric files and snapshot copies moved to quarantine at
    /// start.
    pub quarantined_files: u64,
    /// File operations a test's fault plan failed on purpose.
    pub injected_io_faults: u64,
    /// Reads of metric files that found a damaged data page.
    pub damaged_file_reads: u64,
    /// Memory the cached metric file footers take.
    pub footer_cache_bytes: u64,
    /// Footers read from disk because they were not cached.
    pub footer_loads: u64,
    /// Panics contained in persister and shard threads since start.
    pub thread_panics: u64,
    /// Keyed bulk requests answered from their receipt (sent again).
    pub idempotent_replays: u64,
    /// Keyed bulk requests refused: the key was in use by a request in
    /// progress, or was used before with another body.
    pub idempotency_conflicts: u64,
    /// Receipts of keyed bulk requests kept.
    pub ingest_receipts: u64,
    /// Runs rewound since start.
    pub rewinds: u64,
    /// Runs with at least one rewind.
    pub rewound_runs: u64,
    /// Runs forked since start.
    pub forks: u64,
    /// Runs forked from another.
    pub forked_runs: u64,
    /// Runs removed for good by gc since start.
    pub runs_purged: u64,
    /// What the object store uploader did (all zero without a store).
    pub uploads: crate::storage::UploadSnapshot,
    /// The object store's local cache (all zero without a store).
    pub cache: crate::storage::CacheSnapshot,
    /// A read replica's refreshes (all zero for a writer).
    pub replica: super::replica::ReplicaSnapshot,
}

impl Engine {
    /// What keeps the server from taking writes durably now (a full disk,
    /// an I/O error), one line each; empty when healthy. Reads are served
    /// either way.
    pub fn health_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(reason) = self.wal.degraded() {
            problems.push(format!("writes are refused (507): {reason}"));
        }
        let panics = self.ingester.stats().thread_panics();
        if panics > 0 {
            problems.push(format!(
                "{panics} panic(s) in persister or shard threads were contained since start (see \
                 the log; the work is retried)"
            ));
        }
        if let Some(uploads) = self.files_shared.uploads() {
            let snapshot = uploads.snapshot();
            if let Some(reason) = uploads.last_error() {
                problems.push(format!(
                    "metric files cannot be uploaded to {} ({} waiting, the oldest for {} s; \
                     retried, the WAL keeps their points): {reason}",
                    uploads.store().url(),
                    snapshot.pending_files,
                    snapshot.lag.as_secs()
                ));
            }
        }
        if let Some(reason) = self.ingester.stats().persist_failing() {
            problems.push(format!(
                "buffers cannot be written to metric files (retried; the WAL keeps them): {reason}"
            ));
        }
        problems
    }

    /// Values for `/metrics`.
    pub fn telemetry(&self) -> TelemetrySnapshot {
        let ingest = self.ingester.stats();
        let spill = self.ingester.spill_stats();
        let spilled = |read: fn(&crate::storage::spill::SpillStats) -> u64| spill.map_or(0, read);
        let wal = self.wal.stats();
        let state = self.catalog.read();
        TelemetrySnapshot {
            points_ingested: ingest.points_ingested(),
            buffer_bytes: ingest.buffer_bytes(),
            buffer_bytes_peak: ingest.buffer_bytes_peak(),
            buffer_budget_bytes: self.config.ingest.buffer_budget_bytes,
            in_flight_bytes: self.in_flight_bytes.load(Ordering::Relaxed),
            bytes_persisted: ingest.bytes_persisted(),
            files_persisted: ingest.files_persisted(),
            compactions: ingest.compactions(),
            spill_files_written: spilled(|stats| stats.files_written()),
            spill_bytes_written: spilled(|stats| stats.bytes_written()),
            points_spilled: spilled(|stats| stats.points_spilled()),
            spill_member_reads: spilled(|stats| stats.member_reads()),
            spill_files: spilled(|stats| stats.files_live()),
            spill_bytes: spilled(|stats| stats.bytes_live()),
            run_manifests_written: ingest.manifests_written(),
            runs_dormant: ingest.runs_dormant(),
            run_wakes: ingest.run_wakes(),
            run_wake_failures: ingest.run_wake_failures(),
            runs_from_manifests: self.runs_from_manifests,
            runs_from_dormant_log: self.runs_from_dormant_log,
            persist_failures: ingest.persist_failures(),
            wal_unpersisted_bytes: wal.live_bytes,
            wal_segments: wal.segments as u64,
            wal_fsyncs: wal.fsyncs,
            wal_bytes_written: wal.bytes_written,
            experiments: state.experiments().count() as u64,
            runs: state.run_count() as u64,
            quarantined_files: self.quarantined_files,
            injected_io_faults: self.config.file_io.injected_faults(),
            damaged_file_reads: self.files_shared.damaged_reads(),
            footer_cache_bytes: self.files_shared.footers().bytes(),
            footer_loads: self.files_shared.footers().loads(),
            thread_panics: ingest.thread_panics(),
            idempotent_replays: self.receipts.replays(),
            idempotency_conflicts: self.receipts.conflicts(),
            ingest_receipts: self.receipts.len() as u64,
            rewinds: self.rewinds_applied.load(Ordering::Relaxed),
            rewound_runs: state.continuity().all_rewinds().count() as u64,
            forks: self.forks_made.load(Ordering::Relaxed),
            forked_runs: state.continuity().all_forks().count() as u64,
            runs_purged: self.runs_purged.load(Ordering::Relaxed),
            uploads: self
                .files_shared
                .uploads()
                .map(|uploads| uploads.snapshot())
                .unwrap_or_default(),
            cache: self
                .files_shared
                .cache()
                .map(|cache| cache.snapshot())
                .unwrap_or_default(),
            replica: self
                .replica
                .as_ref()
                .map(|replica| replica.stats.snapshot())
                .unwrap_or_default(),
        }
    }

    /// Removes WAL segments whose records are all persisted elsewhere,
    /// writing a catalog snapshot first when one is due (or `force`d).
    /// Blocking.
    pub fn checkpoint(&self, force_snapshot: bool) -> Result<(), EngineError> {
        let _checkpoint = self
            .checkpoint_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Read first: every record up to it has been handed to a shard or
        // applied to the catalog by the time the bounds below are taken.
        let completed = self.wal.completed_lsn();
        let oldest_buffered = self.ingester.oldest_unpersisted_lsn()?;
        let oldest_catalog = self.snapshot_catalog_if_due(force_snapshot)?;
        let oldest_receipt = self.receipts.oldest_unsnapshotted();
        let min_needed = [
            Some(completed + 1),
            oldest_buffered,
            oldest_catalog,
            oldest_receipt,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(completed + 1);
        let removed = self.wal.remove_segments_before(min_needed)?;
        if removed > 0 {
            tracing::debug!(removed, min_needed, "removed persisted WAL segments");
        }
        Ok(())
    }

    /// Writes a catalog snapshot when the catalog or the ingest receipts
    /// changed since the last one and the snapshot interval passed (or
    /// `force`). Returns the oldest LSN of a catalog record the newest
    /// snapshot lacks, if any (receipts it lacks are the receipts window's
    /// to tell).
    fn snapshot_catalog_if_due(&self, force: bool) -> Result<Option<Lsn>, EngineError> {
        let mut last = self
            .last_snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = self.catalog.read();
        let current = self.snapshot_lsn.load(Ordering::SeqCst);
        let receipts_pending = self.receipts.oldest_unsnapshotted().is_some();
        if state.applied_lsn <= current && !receipts_pending {
            return Ok(None);
        }
        // Only a durable state is snapshotted: not one holding changes
        // still on their way to the WAL, nor one that failed and waits to
        // be rolled back.
        if state.applied_lsn > self.wal.completed_lsn()
            || self.catalog_in_doubt.load(Ordering::SeqCst)
        {
            return Ok(Some(current + 1));
        }
        if !force && last.elapsed() < self.config.snapshot_interval {
            return Ok(Some(current + 1));
        }
        // The lock is held only to copy the state (as every SQL query
        // does): encoding, writing and syncing the file under it would
        // stall every change to the catalog meanwhile.
        let mut copy = state.clone();
        // Taken under the catalog's read lock: no catalog record can be
        // sequenced meanwhile, so every catalog record older than the
        // newest receipt is in the copy, and the snapshot may be named
        // by whichever is newer.
        let (receipts, receipts_included) = self.receipts.for_snapshot();
        drop(state);
        copy.applied_lsn = copy.applied_lsn.max(receipts.max_lsn).max(current);
        let encoded = snapshot::encode(&copy, &receipts)?;
        drop(copy);
        let lsn = encoded.lsn();
        let catalog_dir = self.config.data_dir.join(recovery::CATALOG_DIR);
        let bytes = encoded.write(&catalog_dir, &self.config.file_io)?;
        if let Some(uploads) = self.files_shared.uploads() {
            uploads.upload_catalog(&snapshot::file_path(&catalog_dir, lsn));
        }
        self.snapshot_lsn.store(lsn, Ordering::SeqCst);
        self.receipts.snapshotted(&receipts_included);
        *last = Instant::now();
        tracing::debug!(lsn, bytes, "wrote catalog snapshot");
        Ok(None)
    }

    /// Persists every buffered point to Parquet files and waits for it.
    /// Blocking.
    pub fn flush_buffers(&self) -> Result<(), EngineError> {
        // Once rotation returns, every queued record has been handed on.
        self.wal.rotate()?;
        Ok(self.ingester.flush_all()?)
    }

    /// Stops taking writes, persists every buffer, snapshots the catalog,
    /// removes the WAL segments that are no longer needed and stops the
    /// background threads. Blocking; safe to call more than once.
    pub fn shutdown(&self) -> Result<(), EngineError> {
        self.accepting.store(false, Ordering::SeqCst);
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let started = Instant::now();
        if let Some(handle) = self
            .maintenance
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            handle.stop();
        }
        if let Some(handle) = self
            .replica_thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            handle.stop();
        }
        let outcome = if self.config.read_only {
            Ok(())
        } else {
            self.flush_buffers().and_then(|()| self.checkpoint(true))
        };
        if let Some(uploads) = self.files_shared.uploads() {
            // The files just written and the catalog go up before the
            // process ends, within reason: what does not is uploaded at
            // the next start (the WAL keeps the files' points).
            if uploads.wait_until_idle(UPLOADS_AT_SHUTDOWN) {
                if let Err(error) = self.checkpoint(false) {
                    tracing::warn!(%error, "the checkpoint after the last uploads failed");
                }
            } else {
                let pending = uploads.snapshot();
                tracing::warn!(
                    pending_files = pending.pending_files,
                    pending_bytes = pending.pending_bytes,
                    "stopping before every file reached the object store; the next start uploads them"
                );
            }
        }
        self.wal.shutdown();
        self.ingester.shutdown();
        match &outcome {
            Ok(()) => tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "engine stopped; buffers persisted"
            ),
            Err(error) => {
                tracing::error!(%error, "engine stopped without persisting everything; the WAL keeps it")
            }
        }
        outcome
    }
}
