//! The catalog's mutation log on the WAL, and what happens when a catalog
//! change cannot be made durable.
//!
//! A catalog change is validated and applied under the catalog's write lock
//! and recorded in the WAL in the same step, so that the next change is
//! validated against it; the caller then waits for the record to be
//! durable before answering. When the WAL refuses the record (a full disk,
//! an I/O error), the change must not survive: the record's completion
//! marks the catalog as in doubt, which keeps snapshots from persisting it,
//! and the caller rebuilds the catalog from what is durable (the newest
//! snapshot and the WAL's catalog records) before it answers 507. The
//! rebuild holds the catalog's write lock and first waits until the WAL has
//! written or refused every record sequenced so far, so no change is lost
//! in between and none sneaks in.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::recovery::{CATALOG_DIR, WAL_DIR};
use super::wal_record::{WalRecord, WalRecordRef};
use super::{Engine, EngineError};
use crate::catalog::{CatalogError, CatalogMutation, CatalogState, MutationLog, snapshot};
use crate::model::now_millis;
use crate::wal::{self, Lsn, Wal, WalError};

/// How long a rollback waits for the WAL to finish the records sequenced
/// before it.
const ROLLBACK_WAIT: Duration = Duration::from_secs(30);

/// What a caller waits on for its catalog change to be durable.
pub(super) type DurableTicket = oneshot::Receiver<Result<(), WalError>>;

/// Called with a record's LSN once the WAL wrote it, in WAL order.
pub(super) type OnWritten = Box<dyn FnOnce(Lsn) + Send>;

/// The WAL as the catalog's mutation log.
pub(super) struct WalMutationLog<'a> {
    pub(super) wal: &'a Wal,
    /// Set by a record's completion when the WAL refused it.
    pub(super) in_doubt: &'a Arc<AtomicBool>,
    /// What the (one) record recorded through this log does once written,
    /// before its caller hears that it is durable.
    pub(super) on_written: std::sync::Mutex<Option<OnWritten>>,
}

impl MutationLog for WalMutationLog<'_> {
    type Ticket = DurableTicket;

    fn record(&self, mutation: &CatalogMutation) -> Result<(Lsn, DurableTicket), CatalogError> {
        let body = WalRecordRef::Catalog(mutation).encode()?;
        let (sender, receiver) = oneshot::channel();
        let in_doubt = Arc::clone(self.in_doubt);
        let on_written = self
            .on_written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let lsn = self.wal.append(
            body,
            Box::new(move |lsn, result| {
                if result.is_err() {
                    // Before any later record completes: a snapshot taken
                    // after this sees the flag.
                    in_doubt.store(true, Ordering::SeqCst);
                } else if let Some(on_written) = on_written {
                    on_written(lsn);
                }
                let _ = sender.send(result);
            }),
        )?;
        Ok((lsn, receiver))
    }
}

impl Engine {
    /// Waits until a catalog change is durable. When the WAL refused it,
    /// the catalog is rolled back to what is durable before the error is
    /// returned.
    pub(super) async fn wait_durable(
        &self,
        ticket: Option<DurableTicket>,
    ) -> Result<(), EngineError> {
        let Some(ticket) = ticket else {
            return Ok(());
        };
        match ticket.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                // Rare and short (one snapshot and the WAL since it): done
                // in place.
                if let Err(rollback) = self.roll_back_catalog() {
                    tracing::error!(%rollback, "the catalog could not be rolled back to its durable state; snapshots stay off until it is");
                }
                Err(error.into())
            }
            Err(_) => Err(EngineError::ShuttingDown),
        }
    }

    /// Rebuilds the catalog from the newest snapshot and the WAL's catalog
    /// records, dropping changes the WAL refused. Blocking.
    pub(super) fn roll_back_catalog(&self) -> Result<(), EngineError> {
        let _checkpoint = self
            .checkpoint_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.catalog.rebuild_with(|current| {
            if !self.catalog_in_doubt.load(Ordering::SeqCst) {
                return Ok(None); // Another caller rolled back already.
            }
            // No catalog change can be sequenced while the write lock is
            // held; wait for the WAL to finish those sequenced before.
            let upto = self.wal.last_assigned_lsn();
            let deadline = Instant::now() + ROLLBACK_WAIT;
            while self.wal.processed_lsn() < upto {
                if Instant::now() >= deadline {
                    return Err(EngineError::Task(format!(
                        "the WAL did not finish records up to {upto} within {ROLLBACK_WAIT:?}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let data_dir = &self.config.data_dir;
            // A damaged copy is left where it is: the next start moves it.
            let mut state = snapshot::load_latest(&data_dir.join(CATALOG_DIR))?
                .map(|loaded| loaded.state)
                .unwrap_or_else(|| CatalogState::new(self.catalog.artifact_root(), now_millis()));
            let mut dropped = 0u64;
            wal::read_live(&data_dir.join(WAL_DIR), upto, |lsn, body| {
                if lsn <= state.applied_lsn || !WalRecord::is_catalog(body) {
                    return Ok(());
                }
                if let WalRecord::Catalog(mutation) = WalRecord::decode(lsn, body)? {
                    state.applied_lsn = lsn;
                    mutation.apply(&mut state);
                }
                Ok(())
            })?;
            if current.applied_lsn > state.applied_lsn {
                dropped = current.applied_lsn - state.applied_lsn;
            }
            self.catalog_in_doubt.store(false, Ordering::SeqCst);
            tracing::warn!(
                durable_lsn = state.applied_lsn,
                refused_after = dropped,
                "catalog rolled back to its durable state after the WAL refused a change"
            );
            Ok(Some(state))
        })
    }
}
