//! Run continuity in the engine: rewinds (a catalog record that the run's
//! shard also applies, in WAL order with the points around it; see
//! [`crate::ingest::rewinds`]) and the key summaries reads show of a
//! rewound run.
//!
//! A rewound run's shard summarises only the points logged after its
//! newest rewind. The shown points before it never change until the next
//! rewind, so their summaries are read once from the run's files and kept
//! here, per run, under the LSN of that rewind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Engine, EngineError};
use crate::catalog::continuity::Rewind;
use crate::ingest::rewinds::RewoundPoints;
use crate::ingest::{SeriesSources, SummaryView};
use crate::model::{KeySummary, MetricSeries, RunId, now_millis};
use crate::wal::Lsn;

pub use crate::catalog::continuity::REWIND_TAG;

/// Rewound runs whose summaries before the newest rewind are kept; past
/// it the cache starts over.
const MAX_CACHED_RUNS: usize = 10_000;

/// How often a summary read starts over when the run is rewound again
/// while it reads.
const MAX_ATTEMPTS: usize = 3;

/// Summaries of a run's shown points before its newest rewind.
type BaseSummaries = Arc<Vec<(String, KeySummary)>>;

/// Per rewound run: the LSN of its newest rewind and the summaries of the
/// shown points before it.
#[derive(Default)]
pub(super) struct RewoundSummaryCache {
    runs: Mutex<HashMap<RunId, (Lsn, BaseSummaries)>>,
}

impl RewoundSummaryCache {
    fn get(&self, run_id: RunId, last_rewind: Lsn) -> Option<BaseSummaries> {
        let runs = self
            .runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        runs.get(&run_id)
            .filter(|(lsn, _)| *lsn == last_rewind)
            .map(|(_, summaries)| Arc::clone(summaries))
    }

    fn insert(&self, run_id: RunId, last_rewind: Lsn, summaries: BaseSummaries) {
        let mut runs = self
            .runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if runs.len() >= MAX_CACHED_RUNS && !runs.contains_key(&run_id) {
            runs.clear();
        }
        runs.insert(run_id, (last_rewind, summaries));
    }
}

/// The parsed value of [`REWIND_TAG`] among `tags`, if it is there.
pub fn rewind_step_in(tags: &[(String, String)]) -> Option<Result<i64, EngineError>> {
    let (_, value) = tags.iter().rev().find(|(key, _)| key == REWIND_TAG)?;
    Some(value.trim().parse::<i64>().map_err(|_| {
        EngineError::InvalidRequest(format!(
            "tag {REWIND_TAG} must be a whole step number, got {value:?}"
        ))
    }))
}

impl Engine {
    /// Rewinds a run to `step`: from now on the points it logged before
    /// with a greater step are hidden from reads, and the points it logs
    /// next take their place. Returns the run's rewinds, the new one last.
    pub async fn rewind_run(&self, run_id: RunId, step: i64) -> Result<Vec<Rewind>, EngineError> {
        self.ensure_accepting()?;
        let experiment_id = self.catalog.run(run_id)?.experiment_id;
        let ingester = Arc::clone(&self.ingester);
        let log = self.log();
        *log.on_written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Box::new(move |lsn| {
            ingester.rewind(run_id, experiment_id, lsn, step)
        }));
        let (_, ticket) = self.catalog.rewind_run(&log, run_id, step, now_millis())?;
        drop(log);
        self.wait_durable(ticket).await?;
        self.rewinds_applied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%run_id, step, "run rewound");
        Ok(self.run_rewinds(run_id))
    }

    /// Where the points of one key of a run are, and the key's summary of
    /// the points the read returns: the points a rewind hid are left out
    /// unless `rewound` includes them.
    pub async fn key_sources(
        &self,
        run_id: RunId,
        key: &str,
        rewound: RewoundPoints,
    ) -> Result<(SeriesSources, Option<KeySummary>), EngineError> {
        let sources = self.series_sources(run_id, key).await?;
        if rewound == RewoundPoints::Included && !sources.is_inherited() {
            // The shard's summary covers every point, hidden ones too.
            let summary = sources.summary();
            return Ok((sources.include_rewound(), summary));
        }
        if !sources.has_hidden_points() && !sources.is_inherited() {
            let summary = sources.summary();
            return Ok((sources, summary));
        }
        let shown = self
            .run_metric_summaries(run_id)
            .await?
            .into_iter()
            .find(|(name, _)| name == key)
            .map(|(_, summary)| summary);
        if rewound == RewoundPoints::Included {
            let summary = super::forks::including_rewound(
                shown,
                sources.summary(),
                sources.inherited_hidden_steps(),
            );
            return Ok((sources.include_rewound(), summary));
        }
        Ok((sources, shown))
    }

    /// A run's rewinds, oldest first.
    pub fn run_rewinds(&self, run_id: RunId) -> Vec<Rewind> {
        self.catalog.read().continuity().rewinds(run_id).to_vec()
    }

    /// Turns the shards' summary views into what reads show, reading the
    /// shown points before the newest rewind of rewound runs (once per
    /// rewind: they are kept).
    pub(super) async fn shown_summaries(
        &self,
        run_ids: &[RunId],
        views: Vec<SummaryView>,
    ) -> Result<Vec<Vec<(String, KeySummary)>>, EngineError> {
        let mut out = Vec::with_capacity(views.len());
        let fork_lsns = self.fork_lsns(run_ids);
        for ((&run_id, view), fork_lsn) in run_ids.iter().zip(views).zip(fork_lsns) {
            out.push(match Engine::with_fork_boundary(fork_lsn, view) {
                SummaryView::Complete(keys) => keys,
                view => self.rewound_run_summaries(run_id, view).await?,
            });
        }
        Ok(out)
    }

    /// The shown summaries of a rewound run, from its view.
    async fn rewound_run_summaries(
        &self,
        run_id: RunId,
        mut view: SummaryView,
    ) -> Result<Vec<(String, KeySummary)>, EngineError> {
        for _ in 0..MAX_ATTEMPTS {
            let outcome = match &view {
                SummaryView::Complete(keys) => return Ok(keys.clone()),
                SummaryView::SinceRewind { last_rewind, keys } => self
                    .base_summaries(run_id, *last_rewind)
                    .await?
                    .map(|base| merge_newer(&base, keys)),
                SummaryView::Unknown { last_rewind } => {
                    self.read_summaries(run_id, *last_rewind, Part::Shown)
                        .await?
                }
            };
            if let Some(summaries) = outcome {
                return Ok(summaries);
            }
            // Rewound again meanwhile: start over from a fresh view.
            let fresh = self
                .ingester
                .shown_summaries(&[run_id])
                .await?
                .pop()
                .unwrap_or(SummaryView::Complete(Vec::new()));
            let fork_lsn = self.run_fork(run_id).map(|fork| fork.lsn);
            view = Engine::with_fork_boundary(fork_lsn, fresh);
        }
        Err(EngineError::Busy(format!(
            "run {run_id} was rewound while its summaries were read, {MAX_ATTEMPTS} times; try \
             again"
        )))
    }

    /// The summaries of the shown points before the run's newest rewind (at
    /// `last_rewind`), from the cache or read. `None` when the run was
    /// rewound again meanwhile.
    async fn base_summaries(
        &self,
        run_id: RunId,
        last_rewind: Lsn,
    ) -> Result<Option<BaseSummaries>, EngineError> {
        if let Some(cached) = self.rewound_summaries.get(run_id, last_rewind) {
            return Ok(Some(cached));
        }
        let Some(read) = self
            .read_summaries(run_id, last_rewind, Part::BeforeLastRewind)
            .await?
        else {
            return Ok(None);
        };
        let read = Arc::new(read);
        self.rewound_summaries
            .insert(run_id, last_rewind, Arc::clone(&read));
        Ok(Some(read))
    }

    /// Reads every key of a run and summarises `part` of its points;
    /// `None` when the run's newest rewind is no longer `last_rewind`.
    async fn read_summaries(
        &self,
        run_id: RunId,
        last_rewind: Lsn,
        part: Part,
    ) -> Result<Option<Vec<(String, KeySummary)>>, EngineError> {
        let keys = self.gathered_keys(run_id).await?;
        let mut summaries = Vec::with_capacity(keys.len());
        for key in keys {
            let sources = self.gathered_sources(run_id, &key).await?;
            if self.boundary_of(run_id, &sources) != Some(last_rewind) {
                return Ok(None);
            }
            let read_key = key.clone();
            let series = tokio::task::spawn_blocking(move || part.collect(sources, &read_key))
                .await
                .map_err(|error| EngineError::Task(error.to_string()))??;
            if let Some(summary) = summarise(&series) {
                summaries.push((key, summary));
            }
        }
        Ok(Some(summaries))
    }
}

/// Which points of a rewound run a summary read covers.
#[derive(Clone, Copy)]
enum Part {
    /// The shown points logged before the newest rewind.
    BeforeLastRewind,
    /// Every shown point.
    Shown,
}

impl Part {
    fn collect(
        self,
        sources: SeriesSources,
        key: &str,
    ) -> Result<MetricSeries, crate::storage::StorageError> {
        match self {
            Part::BeforeLastRewind => sources.collect_before_last_rewind(key),
            Part::Shown => sources.collect(key),
        }
    }
}

/// The summary of a series in `(step, timestamp)` order; `None` when empty.
fn summarise(series: &MetricSeries) -> Option<KeySummary> {
    let mut points = series
        .steps
        .iter()
        .zip(&series.timestamps)
        .zip(&series.values);
    let ((&step, &timestamp), &value) = points.next()?;
    let mut summary = KeySummary::of_point(step, timestamp, value);
    for ((&step, &timestamp), &value) in points {
        summary.add_point(step, timestamp, value);
    }
    Some(summary)
}

/// Key summaries of older points (`base`) with those of newer ones folded
/// in, both in key order; the result in key order.
fn merge_newer(
    base: &[(String, KeySummary)],
    newer: &[(String, KeySummary)],
) -> Vec<(String, KeySummary)> {
    let mut merged: std::collections::BTreeMap<String, KeySummary> = base.iter().cloned().collect();
    for (key, summary) in newer {
        merged
            .entry(key.clone())
            .and_modify(|existing| existing.merge_newer(summary))
            .or_insert(*summary);
    }
    merged.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rewind_tag_is_a_whole_step() {
        let tags = |value: &str| vec![(REWIND_TAG.to_string(), value.to_string())];
        assert!(rewind_step_in(&[("other".into(), "1".into())]).is_none());
        assert_eq!(rewind_step_in(&tags(" 200 ")).unwrap().unwrap(), 200);
        assert_eq!(rewind_step_in(&tags("-3")).unwrap().unwrap(), -3);
        for bad in ["", "2.5", "ten", "99999999999999999999"] {
            assert!(rewind_step_in(&tags(bad)).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn newer_summaries_take_the_latest_value_and_widen_the_ranges() {
        let base = vec![
            ("a".to_string(), KeySummary::of_point(5, 1, 0.5)),
            ("b".to_string(), KeySummary::of_point(3, 1, 2.0)),
        ];
        let newer = vec![("a".to_string(), KeySummary::of_point(4, 9, 0.1))];
        let merged = merge_newer(&base, &newer);
        assert_eq!(merged.len(), 2);
        let a = merged[0].1;
        assert_eq!((a.count, a.min_step, a.max_step), (2, 4, 5));
        assert_eq!(a.latest_value, 0.5, "the greatest step is the latest");
        assert_eq!(merged[1].1.latest_value, 2.0);
        let mut series = MetricSeries::default();
        series.push(1, 1, 3.0);
        series.push(2, 1, f64::NAN);
        let summary = summarise(&series).unwrap();
        assert_eq!((summary.count, summary.max_value), (2, 3.0));
        assert!(summarise(&MetricSeries::default()).is_none());
    }
}
