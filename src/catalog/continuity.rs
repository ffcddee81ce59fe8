//! Run continuity in the catalog: the rewinds of each run (the history a
//! read shows is derived from them, see [`crate::ingest::rewinds`]).
//! Snapshotted as a section of its own ([`super::snapshot`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{
    Catalog, CatalogError, CatalogMutation, MutationLog, ensure_run_active, find_run, room_for,
};
use crate::model::{ExperimentId, RunId};
use crate::wal::Lsn;

/// Rewinds one run may have: each one keeps the files before it from
/// being merged with those after it until `stepstore gc`.
pub const MAX_REWINDS_PER_RUN: usize = 1_000;

/// One rewind of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewind {
    /// The WAL record of the rewind: points logged before it are the ones
    /// it may hide.
    pub lsn: Lsn,
    /// The step rewound to: earlier points past it are hidden.
    pub step: i64,
    /// When, ms since the epoch.
    pub time: i64,
}

/// The rewinds of every run that has some.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContinuityState {
    rewinds: HashMap<RunId, Vec<Rewind>>,
}

impl ContinuityState {
    /// The rewinds of `run_id`, oldest first (empty when none).
    pub fn rewinds(&self, run_id: RunId) -> &[Rewind] {
        self.rewinds.get(&run_id).map_or(&[], Vec::as_slice)
    }

    /// Every run's rewinds.
    pub fn all_rewinds(&self) -> impl Iterator<Item = (RunId, &[Rewind])> {
        self.rewinds
            .iter()
            .map(|(run_id, rewinds)| (*run_id, rewinds.as_slice()))
    }

    /// Records a rewind (a record replayed twice is recorded once).
    pub(crate) fn push_rewind(&mut self, run_id: RunId, rewind: Rewind) {
        let rewinds = self.rewinds.entry(run_id).or_default();
        if rewinds.last().is_none_or(|last| last.lsn < rewind.lsn) {
            rewinds.push(rewind);
        }
    }

    /// A copy holding the runs `keep` accepts.
    pub(crate) fn restricted_to(&self, keep: impl Fn(RunId) -> bool) -> Self {
        ContinuityState {
            rewinds: self
                .rewinds
                .iter()
                .filter(|(run_id, _)| keep(**run_id))
                .map(|(run_id, rewinds)| (*run_id, rewinds.clone()))
                .collect(),
        }
    }
}

impl Catalog {
    /// Rewinds an active run to `step` at `time`; returns the run's
    /// experiment. The rewind's LSN is that of its WAL record.
    pub fn rewind_run<L: MutationLog>(
        &self,
        log: &L,
        run_id: RunId,
        step: i64,
        time: i64,
    ) -> Result<(ExperimentId, Option<L::Ticket>), CatalogError> {
        self.commit(log, |state| {
            let run = find_run(state, run_id)?;
            ensure_run_active(run)?;
            let rewinds = state.continuity.rewinds(run_id).len();
            room_for("rewinds", 1, rewinds, MAX_REWINDS_PER_RUN)?;
            Ok((
                run.experiment_id,
                Some(CatalogMutation::RewindRun { run_id, step, time }),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewinds_are_kept_in_order_and_a_replayed_one_once() {
        let mut state = ContinuityState::default();
        let run = RunId::new_random();
        let rewind = |lsn, step| Rewind { lsn, step, time: 0 };
        state.push_rewind(run, rewind(5, 10));
        state.push_rewind(run, rewind(5, 10));
        state.push_rewind(run, rewind(9, 3));
        assert_eq!(state.rewinds(run), &[rewind(5, 10), rewind(9, 3)]);
        assert!(state.rewinds(RunId::new_random()).is_empty());
        assert!(state.restricted_to(|_| false).rewinds(run).is_empty());
    }
}
