//! The cap on distinct metric keys per run (`--max-keys-per-run`), checked
//! before a batch is written to the WAL, so a refused batch is never
//! acknowledged.
//!
//! The shards own each run's key dictionary; the engine keeps, per run
//! that logs in this process, the number of keys the shard last reported
//! (`known`) and the keys batches in flight may add (`reserved`). A batch
//! whose keys all fit even if every one were new passes with one lock; only
//! near the cap does the engine ask the shard which keys are really new.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::model::RunId;

const SHARDS: usize = 16;

/// What a run may still add.
#[derive(Debug, Default)]
struct Budget {
    /// Distinct keys the run's shard last reported.
    known: usize,
    /// Keys that batches in flight may add.
    reserved: usize,
}

/// Per-run key counts, sharded by run.
#[derive(Debug)]
pub(crate) struct KeyBudgets {
    limit: usize,
    shards: Vec<Mutex<HashMap<RunId, Budget>>>,
}

/// The outcome of a quick reservation.
pub(crate) enum Quick {
    /// Reserved.
    Reserved(KeyReservation),
    /// The run's count is not loaded yet: load it, then try again.
    Unknown,
    /// The keys might not fit: count the new ones exactly.
    Tight,
}

/// Keys a batch in flight may add; given back when dropped.
#[derive(Debug)]
pub(crate) struct KeyReservation {
    budgets: Arc<KeyBudgets>,
    run_id: RunId,
    keys: usize,
}

impl Drop for KeyReservation {
    fn drop(&mut self) {
        if self.keys == 0 {
            return;
        }
        let mut shard = self.budgets.shard(self.run_id);
        if let Some(budget) = shard.get_mut(&self.run_id) {
            budget.reserved = budget.reserved.saturating_sub(self.keys);
        }
    }
}

/// A batch would take its run past the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyKeys {
    /// Distinct keys the run has (or has in flight).
    pub have: usize,
    /// New keys the batch brings.
    pub adding: usize,
    /// The cap.
    pub limit: usize,
}

impl KeyBudgets {
    /// Budgets capping every run at `limit` distinct keys.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(KeyBudgets {
            limit,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    fn shard(&self, run_id: RunId) -> MutexGuard<'_, HashMap<RunId, Budget>> {
        let index = usize::from(run_id.as_bytes()[15]) % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserves `batch_keys` (the batch's distinct keys, counted as if all
    /// were new) when they fit for sure.
    pub(crate) fn try_reserve(self: &Arc<Self>, run_id: RunId, batch_keys: usize) -> Quick {
        let mut shard = self.shard(run_id);
        let Some(budget) = shard.get_mut(&run_id) else {
            return Quick::Unknown;
        };
        if budget.known + budget.reserved + batch_keys > self.limit {
            return Quick::Tight;
        }
        budget.reserved += batch_keys;
        Quick::Reserved(KeyReservation {
            budgets: Arc::clone(self),
            run_id,
            keys: batch_keys,
        })
    }

    /// Records the run's key count read from its shard (the first time it
    /// logs in this process).
    pub(crate) fn load(&self, run_id: RunId, known: usize) {
        let mut shard = self.shard(run_id);
        let budget = shard.entry(run_id).or_default();
        budget.known = budget.known.max(known);
    }

    /// Reserves `new_keys`, the keys of a batch that the run does not have
    /// yet (counted by the caller), or refuses them.
    pub(crate) fn reserve_exact(
        self: &Arc<Self>,
        run_id: RunId,
        new_keys: usize,
        known: usize,
    ) -> Result<KeyReservation, TooManyKeys> {
        let mut shard = self.shard(run_id);
        let budget = shard.entry(run_id).or_default();
        budget.known = budget.known.max(known);
        let have = budget.known + budget.reserved;
        if new_keys > 0 && have + new_keys > self.limit {
            return Err(TooManyKeys {
                have,
                adding: new_keys,
                limit: self.limit,
            });
        }
        budget.reserved += new_keys;
        Ok(KeyReservation {
            budgets: Arc::clone(self),
            run_id,
            keys: new_keys,
        })
    }

    /// The run's shard applied the batch of `reservation`: the run now has
    /// `distinct` keys, and the batch's keys are no longer in flight (one
    /// step, so they are never counted twice by this batch).
    pub(crate) fn settle(&self, mut reservation: KeyReservation, distinct: usize) {
        let mut shard = self.shard(reservation.run_id);
        if let Some(budget) = shard.get_mut(&reservation.run_id) {
            budget.known = budget.known.max(distinct);
            budget.reserved = budget.reserved.saturating_sub(reservation.keys);
        }
        reservation.keys = 0;
    }

    /// Forgets an ended run (loaded again if it logs once more).
    pub(crate) fn forget(&self, run_id: RunId) {
        self.shard(run_id).remove(&run_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved(quick: Quick) -> KeyReservation {
        match quick {
            Quick::Reserved(reservation) => reservation,
            Quick::Unknown => panic!("unknown"),
            Quick::Tight => panic!("tight"),
        }
    }

    #[test]
    fn batches_fit_until_the_cap_and_reservations_come_back() {
        let budgets = KeyBudgets::new(10);
        let run = RunId::new_random();
        assert!(matches!(budgets.try_reserve(run, 3), Quick::Unknown));
        budgets.load(run, 4);
        let first = reserved(budgets.try_reserve(run, 3));
        // 4 known + 3 in flight: 4 more might not fit.
        assert!(matches!(budgets.try_reserve(run, 4), Quick::Tight));
        // Counted exactly, 3 new keys fit; a fourth does not.
        let second = budgets.reserve_exact(run, 3, 4).unwrap();
        assert_eq!(
            budgets.reserve_exact(run, 1, 4).unwrap_err(),
            TooManyKeys {
                have: 10,
                adding: 1,
                limit: 10
            }
        );
        // A batch of keys the run already has always fits.
        drop(budgets.reserve_exact(run, 0, 4).unwrap());
        // The shard applied both: 10 keys, nothing in flight.
        budgets.settle(first, 7);
        budgets.settle(second, 10);
        assert!(matches!(budgets.try_reserve(run, 1), Quick::Tight));
        assert!(budgets.reserve_exact(run, 1, 10).is_err());
        budgets.forget(run);
        assert!(matches!(budgets.try_reserve(run, 1), Quick::Unknown));
    }
}
