//! Metric writes (validated, budgeted against `--buffer-budget-mb` and
//! `--max-keys-per-run`, made durable in one WAL record, then applied to
//! the shards) and the reads of one key's points that follow them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::wal_record::WalRecordRef;
use super::{Engine, EngineError, key_budget};
use crate::catalog::receipts::{BodyFingerprint, IngestReceipt, KeyClaim, KeyState};
use crate::catalog::{CatalogError, ensure_run_active};
use crate::ingest::{BYTES_PER_POINT, IngestError, LiveHub, SeriesSources};
use crate::model::validation::{KeyKind, validate_key};
use crate::model::{MetricBatch, MetricSeries, RunId, now_millis};

/// Subtracts in-flight bytes when a metric write completes or is abandoned.
struct InFlightGuard {
    counter: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Engine {
    /// Logs metric points; returns once they are durable and visible to
    /// reads. Refused with `Overloaded` while buffers are over the limit.
    pub async fn log_metrics(
        &self,
        run_id: RunId,
        batch: MetricBatch,
    ) -> Result<usize, EngineError> {
        self.log_metric_batches(vec![(run_id, batch)]).await
    }

    /// Logs metric points of several runs as one durable write (one WAL
    /// record): every run must exist and be active and every batch be
    /// valid, or nothing is written. Returns the number of points once all
    /// are durable and visible to reads.
    pub async fn log_metric_batches(
        &self,
        batches: Vec<(RunId, MetricBatch)>,
    ) -> Result<usize, EngineError> {
        self.write_metric_batches(batches, None).await
    }

    /// Looks up the `Idempotency-Key` of a bulk request whose body is
    /// `fingerprint`: a new key is claimed for the caller, who then writes
    /// with [`Self::log_keyed_metric_batches`].
    pub fn claim_ingest_key(&self, key: &str, fingerprint: BodyFingerprint) -> KeyState {
        self.receipts.begin(key, fingerprint, now_millis())
    }

    /// [`Self::log_metric_batches`] for a keyed request: `receipt` (its
    /// point count filled in here) is written in the same WAL record as the
    /// points, so a repeat of the request is recognised even after a
    /// restart. `claim` is held until then.
    pub async fn log_keyed_metric_batches(
        &self,
        batches: Vec<(RunId, MetricBatch)>,
        claim: KeyClaim,
        receipt: IngestReceipt,
    ) -> Result<usize, EngineError> {
        let accepted = self.write_metric_batches(batches, Some(receipt)).await;
        drop(claim);
        accepted
    }

    /// Receipts of keyed requests kept (for `/metrics`).
    pub fn ingest_receipts(&self) -> usize {
        self.receipts.len()
    }

    async fn write_metric_batches(
        &self,
        batches: Vec<(RunId, MetricBatch)>,
        receipt: Option<IngestReceipt>,
    ) -> Result<usize, EngineError> {
        self.ensure_accepting()?;
        let mut experiments = Vec::with_capacity(batches.len());
        {
            let state = self.catalog.read();
            for (run_id, batch) in &batches {
                batch.validate()?;
                let run = state
                    .run(*run_id)
                    .ok_or(CatalogError::RunNotFound(*run_id))?;
                ensure_run_active(run)?;
                experiments.push(run.experiment_id);
            }
        }
        let mut routed: Vec<(RunId, MetricBatch)> = Vec::with_capacity(batches.len());
        let mut experiment_ids = Vec::with_capacity(batches.len());
        for ((run_id, batch), experiment_id) in batches.into_iter().zip(experiments) {
            if !batch.is_empty() {
                routed.push((run_id, batch));
                experiment_ids.push(experiment_id);
            }
        }
        let points: usize = routed.iter().map(|(_, batch)| batch.len()).sum();
        if points == 0 {
            return Ok(0);
        }
        let key_reservations = self.reserve_keys(&routed).await?;
        let bytes = points as u64 * BYTES_PER_POINT;
        let limit = self.config.ingest.buffer_budget_bytes;
        if bytes > limit {
            return Err(EngineError::LargerThanBudget {
                points,
                bytes,
                limit,
            });
        }
        let _guard = self.reserve_buffer_room(bytes).await?;
        // Refused here, before it is acknowledged, if its WAL frame would be
        // over the frame limit (replay would refuse it).
        let receipt = receipt.map(|receipt| IngestReceipt {
            points: points as u64,
            ..receipt
        });
        let body = match &receipt {
            Some(receipt) => WalRecordRef::KeyedMetrics(receipt, &routed).encode()?,
            None => WalRecordRef::Metrics(&routed).encode()?,
        };
        let mut signals = Vec::with_capacity(routed.len());
        let mut responses = Vec::with_capacity(routed.len());
        for _ in 0..routed.len() {
            let (applied, response) = oneshot::channel();
            signals.push(applied);
            responses.push(response);
        }
        let ingester = Arc::clone(&self.ingester);
        let receipts = Arc::clone(&self.receipts);
        self.wal.append(
            body,
            Box::new(move |lsn, result| match result {
                Ok(()) => {
                    // Before the record counts as complete: a checkpoint
                    // that sees it also sees the receipt.
                    if let Some(receipt) = receipt {
                        receipts.record(receipt, lsn);
                    }
                    for (((run_id, batch), experiment_id), applied) in
                        routed.into_iter().zip(experiment_ids).zip(signals)
                    {
                        ingester.apply(run_id, experiment_id, lsn, batch, Some(applied));
                    }
                }
                Err(error) => {
                    for applied in signals {
                        let _ = applied.send(Err(IngestError::Wal(error.clone())));
                    }
                }
            }),
        )?;
        let mut accepted = 0;
        for (response, reservation) in responses.into_iter().zip(key_reservations) {
            let applied = response.await.map_err(|_| EngineError::ShuttingDown)??;
            self.key_budgets.settle(reservation, applied.run_keys);
            accepted += applied.points;
        }
        Ok(accepted)
    }

    /// Reserves room for the batches' new metric keys under
    /// `--max-keys-per-run`, or refuses the request before anything is
    /// written.
    async fn reserve_keys(
        &self,
        batches: &[(RunId, MetricBatch)],
    ) -> Result<Vec<key_budget::KeyReservation>, EngineError> {
        let mut reservations = Vec::with_capacity(batches.len());
        for (run_id, batch) in batches {
            let run_id = *run_id;
            let mut loaded = false;
            loop {
                match self.key_budgets.try_reserve(run_id, batch.keys.len()) {
                    key_budget::Quick::Reserved(reservation) => {
                        reservations.push(reservation);
                        break;
                    }
                    key_budget::Quick::Unknown if !loaded => {
                        let known = self.ingester.run_summaries(run_id).await?.len();
                        self.key_budgets.load(run_id, known);
                        loaded = true;
                    }
                    key_budget::Quick::Unknown | key_budget::Quick::Tight => {
                        let summaries = self.ingester.run_summaries(run_id).await?;
                        let existing: std::collections::HashSet<&str> =
                            summaries.iter().map(|(key, _)| key.as_str()).collect();
                        let new_keys = batch
                            .keys
                            .iter()
                            .filter(|key| !existing.contains(key.as_str()))
                            .count();
                        let reservation = self
                            .key_budgets
                            .reserve_exact(run_id, new_keys, existing.len())
                            .map_err(|refused| EngineError::TooManyKeys {
                                run_id,
                                have: refused.have,
                                adding: refused.adding,
                                limit: refused.limit,
                            })?;
                        reservations.push(reservation);
                        break;
                    }
                }
            }
        }
        Ok(reservations)
    }

    /// Reserves `bytes` of the buffer budget for a write on its way to the
    /// buffers (released when the guard drops, by then the points are
    /// buffered and counted there). While the budget is full, waits for
    /// written buffers to give memory back, up to `overload_wait`; a write
    /// that waited in vain is `Overloaded` (one that can never fit was
    /// refused before, as `LargerThanBudget`).
    async fn reserve_buffer_room(&self, bytes: u64) -> Result<InFlightGuard, EngineError> {
        let limit = self.config.ingest.buffer_budget_bytes;
        let stats = self.ingester.stats();
        let deadline = tokio::time::Instant::now() + self.config.overload_wait;
        loop {
            let freed = stats.memory_freed().notified();
            let in_flight = self.in_flight_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
            let guard = InFlightGuard {
                counter: Arc::clone(&self.in_flight_bytes),
                bytes,
            };
            let buffered = stats.buffer_bytes() + in_flight;
            if buffered <= limit {
                return Ok(guard);
            }
            drop(guard);
            if tokio::time::Instant::now() >= deadline {
                return Err(EngineError::Overloaded {
                    buffered: buffered - bytes,
                    limit,
                });
            }
            let _ = tokio::time::timeout_at(deadline, freed).await;
        }
    }

    /// The full series of one key of a run, in step order, buffered points
    /// included (loaded whole: paged and downsampled reads stream through
    /// [`Self::series_sources`] instead).
    pub async fn metric_series(
        &self,
        run_id: RunId,
        key: &str,
    ) -> Result<MetricSeries, EngineError> {
        let sources = self.series_sources(run_id, key).await?;
        let key = key.to_string();
        tokio::task::spawn_blocking(move || sources.collect(&key))
            .await
            .map_err(|error| EngineError::Task(error.to_string()))?
            .map_err(EngineError::from)
    }

    /// Where the points of one key of a run are (files, frozen chunks and
    /// a copy of the key's points in the active buffer), captured
    /// atomically, for readers that stream them.
    pub async fn series_sources(
        &self,
        run_id: RunId,
        key: &str,
    ) -> Result<SeriesSources, EngineError> {
        validate_key(KeyKind::Metric, key)?;
        self.catalog.run(run_id)?;
        self.gathered_sources(run_id, key).await
    }

    /// Live notifications of acknowledged points and run ends, per run.
    pub fn live(&self) -> &Arc<LiveHub> {
        self.ingester.live()
    }
}
