//! Retention in the catalog: which deleted runs and experiments
//! `stepstore gc` removes for good ([`CatalogState::purgeable`]), and the
//! record that removes them ([`Catalog::purge`]), as `mlflow gc` does.
//!
//! A run is removed once it was deleted before the cutoff (a run deleted
//! with its experiment counts from the experiment's deletion), unless a
//! fork that stays reads its points. An experiment is removed once it was
//! deleted before the cutoff and every one of its runs goes too. The
//! Default experiment stays.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::state::CatalogState;
use super::{Catalog, CatalogError, CatalogMutation, MutationLog};
use crate::model::{ExperimentId, LifecycleStage, RunId};

/// What one gc removes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purge {
    /// Runs, sorted.
    pub runs: Vec<RunId>,
    /// Experiments, sorted.
    pub experiments: Vec<ExperimentId>,
}

impl Purge {
    /// Whether it removes nothing.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.experiments.is_empty()
    }
}

impl CatalogState {
    /// The deleted runs and experiments a gc with cutoff `cutoff` (ms since
    /// the epoch: deleted at or before it) removes. A run deleted before deletion
    /// times were kept counts as deleted long ago.
    pub fn purgeable(&self, cutoff: i64) -> Purge {
        let mut runs: HashSet<RunId> = self
            .runs()
            .filter(|run| {
                run.lifecycle_stage == LifecycleStage::Deleted
                    && run.deleted_time.is_none_or(|deleted| deleted <= cutoff)
            })
            .map(|run| run.run_id)
            .collect();
        // A run a kept fork reads stays, and so do its own ancestors.
        loop {
            let kept: Vec<RunId> = self
                .continuity()
                .all_forks()
                .filter(|(child, fork)| !runs.contains(child) && runs.contains(&fork.parent))
                .map(|(_, fork)| fork.parent)
                .collect();
            if kept.is_empty() {
                break;
            }
            for run_id in kept {
                runs.remove(&run_id);
            }
        }
        let experiments: Vec<ExperimentId> = self
            .experiments()
            .filter(|experiment| {
                experiment.experiment_id != ExperimentId::DEFAULT
                    && experiment.lifecycle_stage == LifecycleStage::Deleted
                    && experiment.last_update_time <= cutoff
                    && self
                        .runs_of(experiment.experiment_id)
                        .all(|run| runs.contains(&run.run_id))
            })
            .map(|experiment| experiment.experiment_id)
            .collect();
        let mut runs: Vec<RunId> = runs.into_iter().collect();
        runs.sort_unstable();
        Purge { runs, experiments }
    }
}

impl Catalog {
    /// Removes for good what [`CatalogState::purgeable`] names for
    /// `cutoff`; returns it (nothing is recorded when it is empty).
    pub fn purge<L: MutationLog>(
        &self,
        log: &L,
        cutoff: i64,
    ) -> Result<(Purge, Option<L::Ticket>), CatalogError> {
        self.commit(log, |state| {
            let purge = state.purgeable(cutoff);
            if purge.is_empty() {
                return Ok((purge, None));
            }
            Ok((purge.clone(), Some(CatalogMutation::Purge(purge))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::continuity::NewFork;
    use crate::catalog::tests::{MemoryLog, catalog, new_run};
    use crate::catalog::{NewExperiment, NewRun};

    #[test]
    fn deleted_runs_go_after_the_cutoff_unless_a_kept_fork_reads_them() {
        let log = MemoryLog::default();
        let catalog = catalog();
        let (experiment, _) = catalog
            .create_experiment(
                &log,
                NewExperiment {
                    name: "old".into(),
                    ..Default::default()
                },
                1,
            )
            .unwrap();
        let run = |experiment_id| {
            catalog
                .create_run(&log, new_run(experiment_id))
                .unwrap()
                .0
                .run_id
        };
        let (kept, deleted_late, parent) = (
            run(ExperimentId::DEFAULT),
            run(ExperimentId::DEFAULT),
            run(ExperimentId::DEFAULT),
        );
        let in_old = run(experiment);
        let (fork, _) = catalog
            .fork_run(
                &log,
                NewFork {
                    parent,
                    step: 3,
                    run: NewRun {
                        params: Vec::new(),
                        ..new_run(ExperimentId::DEFAULT)
                    },
                    time: 2,
                },
            )
            .unwrap();
        let delete = |run_id, time| {
            catalog
                .set_run_lifecycle(&log, run_id, LifecycleStage::Deleted, time)
                .unwrap();
        };
        delete(parent, 10);
        delete(deleted_late, 500);
        catalog
            .set_experiment_lifecycle(&log, experiment, LifecycleStage::Deleted, 20)
            .unwrap();
        let plan = catalog.read().purgeable(100);
        assert_eq!(plan.runs, vec![in_old], "the fork keeps its parent");
        assert_eq!(plan.experiments, vec![experiment]);
        // Once the fork is deleted too, both go.
        delete(fork.run_id, 30);
        let mut both = vec![parent, fork.run_id, in_old];
        both.sort_unstable();
        assert_eq!(catalog.read().purgeable(100).runs, both);
        let (purged, ticket) = catalog.purge(&log, 100).unwrap();
        assert!(ticket.is_some());
        assert_eq!(purged.runs, both);
        let state = catalog.read();
        assert!(state.run(parent).is_none() && state.run(in_old).is_none());
        assert!(state.experiment(experiment).is_none());
        assert!(state.experiment_by_name("old").is_none());
        assert!(state.continuity().fork_of(fork.run_id).is_none());
        assert!(state.lineage().events_of_run(parent).next().is_none());
        assert!(state.run(kept).is_some() && state.run(deleted_late).is_some());
        drop(state);
        let (again, ticket) = catalog.purge(&log, 100).unwrap();
        assert!(again.is_empty() && ticket.is_none(), "nothing left to do");
        // A run deleted at the cutoff itself goes (a gc with no minimum
        // age, in the millisecond of the delete).
        assert!(catalog.read().purgeable(499).runs.is_empty());
        assert_eq!(catalog.read().purgeable(500).runs, vec![deleted_late]);
    }
}
