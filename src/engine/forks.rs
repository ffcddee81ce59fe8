//! Forked runs in the engine: forking (a catalog record that the parent's
//! shard also applies, in WAL order with the points around it; see
//! [`crate::ingest::forks`]), and what a read of a forked run gathers: its
//! own sources and those of each ancestor up its line of descent, with the
//! bounds the forks and the ancestors' rewinds put on them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::{Engine, EngineError};
use crate::catalog::continuity::{Fork, NewFork};
use crate::ingest::forks::Inheritance;
use crate::ingest::{RunPoints, RunSelection, RunSummaryView, SeriesSources, SummaryView};
use crate::model::{KeySummary, Run, RunId};
use crate::wal::Lsn;

impl Engine {
    /// Forks a run (see [`crate::catalog::Catalog::fork_run`]): the new
    /// run reads its parent's points up to the fork's step, as they were
    /// when it was forked, then its own.
    pub async fn fork_run(&self, fork: NewFork) -> Result<Run, EngineError> {
        self.ensure_accepting()?;
        let (parent, step) = (fork.parent, fork.step);
        let ingester = Arc::clone(&self.ingester);
        let log = self.log();
        *log.on_written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(Box::new(move |lsn| ingester.fork_point(parent, lsn)));
        let (run, ticket) = self.catalog.fork_run(&log, fork)?;
        drop(log);
        self.wait_durable(ticket).await?;
        self.forks_made
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(run_id = %run.run_id, %parent, step, "run forked");
        Ok(run)
    }

    /// How a run was forked, if it was.
    pub fn run_fork(&self, run_id: RunId) -> Option<Fork> {
        self.catalog.read().continuity().fork_of(run_id).copied()
    }

    /// What a run inherits, nearest ancestor first (empty when it was
    /// never forked). An ancestor's sources are bounded by every fork step
    /// below it and by the rewinds each run in between made before its
    /// own child was forked from it.
    pub(super) fn ancestry(&self, run_id: RunId) -> Vec<Inheritance> {
        let state = self.catalog.read();
        let continuity = state.continuity();
        let mut ancestry = Vec::new();
        let mut bound = i64::MAX;
        for fork in continuity.line_of_descent(run_id) {
            bound = bound.min(fork.step);
            ancestry.push(Inheritance {
                ancestor: fork.parent,
                before: fork.lsn,
                bound,
            });
            if let Some(floor) = continuity
                .rewinds(fork.parent)
                .iter()
                .filter(|rewind| rewind.lsn < fork.lsn)
                .map(|rewind| rewind.step)
                .min()
            {
                bound = bound.min(floor);
            }
        }
        ancestry
    }

    /// Where the points of `key` of a run are, the ones it inherits
    /// included (the run is not checked).
    pub(super) async fn gathered_sources(
        &self,
        run_id: RunId,
        key: &str,
    ) -> Result<SeriesSources, EngineError> {
        let ancestry = self.ancestry(run_id);
        if ancestry.is_empty() {
            return Ok(self.ingester.series_sources(run_id, key).await?);
        }
        Ok(self
            .ingester
            .series_sources_with_ancestry(run_id, key, &ancestry)
            .await?)
    }

    /// The keys a run has or inherits (from any point of its ancestors:
    /// a key only logged after a fork has no inherited points).
    pub(super) async fn gathered_keys(&self, run_id: RunId) -> Result<Vec<String>, EngineError> {
        let mut keys: BTreeSet<String> = self
            .ingester
            .run_summaries(run_id)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        for link in self.ancestry(run_id) {
            keys.extend(
                self.ingester
                    .run_summaries(link.ancestor)
                    .await?
                    .into_iter()
                    .map(|(key, _)| key),
            );
        }
        Ok(keys.into_iter().collect())
    }

    /// The LSN of each run's fork (`None` for a run never forked), under
    /// one look at the catalog.
    pub(super) fn fork_lsns(&self, run_ids: &[RunId]) -> Vec<Option<Lsn>> {
        let state = self.catalog.read();
        let continuity = state.continuity();
        if continuity.all_forks().next().is_none() {
            return vec![None; run_ids.len()];
        }
        run_ids
            .iter()
            .map(|&run_id| continuity.fork_of(run_id).map(|fork| fork.lsn))
            .collect()
    }

    /// The shard's view of a run's summaries as reads need it: a forked
    /// run never rewound is summarised by its shard after its fork (at
    /// `fork_lsn`) only; the inherited points are read, once per fork.
    pub(super) fn with_fork_boundary(fork_lsn: Option<Lsn>, view: SummaryView) -> SummaryView {
        match (view, fork_lsn) {
            (SummaryView::Complete(keys), Some(lsn)) => SummaryView::SinceRewind {
                last_rewind: lsn,
                keys,
            },
            (view, _) => view,
        }
    }

    /// The newest boundary of a run's sources: its newest rewind, else its
    /// fork.
    pub(super) fn boundary_of(&self, run_id: RunId, sources: &SeriesSources) -> Option<Lsn> {
        sources
            .last_rewind()
            .or_else(|| self.run_fork(run_id).map(|fork| fork.lsn))
    }

    /// Every point of the selected runs with the points forked runs
    /// inherit (a forked run without points of its own is there too).
    pub(super) async fn gather_points(
        &self,
        runs: &RunSelection,
        points: Vec<RunPoints>,
    ) -> Result<Vec<RunPoints>, EngineError> {
        let forked = self.selected_forked_runs(runs);
        if forked.is_empty() {
            return Ok(points);
        }
        let forked_ids: HashSet<RunId> = forked.iter().map(|(run_id, _)| *run_id).collect();
        let (own, mut points): (Vec<RunPoints>, Vec<RunPoints>) = points
            .into_iter()
            .partition(|run| forked_ids.contains(&run.run_id));
        let mut own: HashMap<RunId, RunPoints> =
            own.into_iter().map(|run| (run.run_id, run)).collect();
        for (run_id, experiment_id) in forked {
            let ancestry = self.ancestry(run_id);
            points.push(
                self.ingester
                    .points_with_ancestry(own.remove(&run_id), run_id, experiment_id, &ancestry)
                    .await?,
            );
        }
        Ok(points)
    }

    /// The summary views of the selected runs, with an empty one for each
    /// forked run its shard does not know (it inherits points).
    pub(super) fn with_forked_runs(
        &self,
        runs: &RunSelection,
        mut views: Vec<RunSummaryView>,
    ) -> Vec<RunSummaryView> {
        let known: HashSet<RunId> = views.iter().map(|view| view.run_id).collect();
        for (run_id, experiment_id) in self.selected_forked_runs(runs) {
            if !known.contains(&run_id) {
                views.push(RunSummaryView {
                    run_id,
                    experiment_id,
                    view: SummaryView::Complete(Vec::new()),
                });
            }
        }
        views
    }

    /// The forked runs in a selection, with their experiments.
    fn selected_forked_runs(
        &self,
        runs: &RunSelection,
    ) -> Vec<(RunId, crate::model::ExperimentId)> {
        let state = self.catalog.read();
        state
            .continuity()
            .all_forks()
            .filter(|(run_id, _)| runs.as_ref().is_none_or(|runs| runs.contains(run_id)))
            .filter_map(|(run_id, _)| state.run(run_id).map(|run| (run_id, run.experiment_id)))
            .collect()
    }
}

/// The summary of a key with the hidden points included: the shown
/// summary widened by the summary of every point the run logged itself
/// and by the steps of the inherited points its rewinds hid. Its step
/// range covers every point such a read returns (its count and latest
/// value are those of the shown points and the run's own).
pub(super) fn including_rewound(
    shown: Option<KeySummary>,
    own: Option<KeySummary>,
    inherited_hidden: Option<(i64, i64)>,
) -> Option<KeySummary> {
    let mut summary = match (shown, own) {
        (Some(mut shown), Some(own)) => {
            shown.merge_newer(&own);
            Some(shown)
        }
        (shown, own) => shown.or(own),
    };
    if let Some((low, high)) = inherited_hidden {
        let widened = summary.get_or_insert_with(|| {
            let mut empty = KeySummary::of_point(low, 0, f64::NAN);
            empty.count = 0;
            empty
        });
        widened.min_step = widened.min_step.min(low);
        widened.max_step = widened.max_step.max(high);
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_with_rewound_points_covers_the_inherited_hidden_steps() {
        let shown = KeySummary::of_point(5, 1, 0.5);
        let own = KeySummary::of_point(8, 2, 0.25);
        let summary = including_rewound(Some(shown), Some(own), Some((3, 40))).unwrap();
        assert_eq!((summary.min_step, summary.max_step), (3, 40));
        assert_eq!(summary.latest_value, 0.25);
        let only_hidden = including_rewound(None, None, Some((10, 20))).unwrap();
        assert_eq!((only_hidden.min_step, only_hidden.max_step), (10, 20));
        assert!(including_rewound(None, None, None).is_none());
    }
}
