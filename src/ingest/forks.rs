//! Forked runs in the ingester. A run forked from another at step `N` (a
//! catalog record at some LSN `F`) reads, besides its own points, the
//! points its parent had logged before `F` with a step up to `N`, without
//! copying them. When the fork is applied, the parent's shard freezes the
//! parent's buffer ([`Ingester::fork_point`]), so every source of the
//! parent holds points from one side of `F` only, and compaction never
//! merges files across it: the child's read takes the parent's sources
//! older than `F`, bounded by `N` and by the parent's rewinds before `F`
//! ([`super::rewinds::SourceCap::bound`]), and caps them further by the
//! child's own rewinds. A fork of a fork reads each ancestor the same way.

use tokio::sync::oneshot;

use super::rewinds::SourceCap;
use super::{ControlMessage, DataMessage, IngestError, Ingester, RunPoints, SeriesSources};
use crate::model::{ExperimentId, RunId};
use crate::wal::Lsn;

/// What a run inherits from one ancestor: that ancestor's sources logged
/// before `before`, with steps up to `bound`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inheritance {
    /// The ancestor.
    pub ancestor: RunId,
    /// The LSN of the fork that cut the ancestor's history (the fork of
    /// the ancestor's child on the way to the run).
    pub before: Lsn,
    /// The greatest step inherited: the smallest fork step on the way,
    /// and the smallest step of the rewinds of the runs in between made
    /// before their forks.
    pub bound: i64,
}

impl Ingester {
    /// Tells the shard of `parent` that a run was forked from it at WAL
    /// record `lsn` (sent in WAL order, like [`Self::apply`]).
    pub fn fork_point(&self, parent: RunId, lsn: Lsn) {
        let _ = self.shard_of(parent).data.send(DataMessage::Fork {
            run_id: parent,
            lsn,
        });
    }

    /// Where the points of `key` of a run are, its inherited sources
    /// (`ancestry`, nearest ancestor first) before its own. Every request
    /// is sent before any answer is awaited.
    pub async fn series_sources_with_ancestry(
        &self,
        run_id: RunId,
        key: &str,
        ancestry: &[Inheritance],
    ) -> Result<SeriesSources, IngestError> {
        let mut responses = Vec::with_capacity(ancestry.len());
        for link in ancestry {
            let (reply, response) = oneshot::channel();
            self.shard_of(link.ancestor)
                .control
                .send(ControlMessage::ReadInherited {
                    run_id: link.ancestor,
                    key: key.to_string(),
                    before: link.before,
                    bound: link.bound,
                    reply,
                })
                .map_err(|_| IngestError::ShutDown)?;
            responses.push(response);
        }
        let mut sources = self.series_sources(run_id, key).await?;
        for response in responses {
            sources.inherit(response.await.map_err(|_| IngestError::ShutDown)?);
        }
        Ok(sources)
    }

    /// Every point of a run (its own, `own`, when its shard has any) with
    /// the points it inherits (`ancestry`, nearest ancestor first), as
    /// the run's.
    pub async fn points_with_ancestry(
        &self,
        own: Option<RunPoints>,
        run_id: RunId,
        experiment_id: ExperimentId,
        ancestry: &[Inheritance],
    ) -> Result<RunPoints, IngestError> {
        let mut responses = Vec::with_capacity(ancestry.len());
        for link in ancestry {
            let (reply, response) = oneshot::channel();
            self.shard_of(link.ancestor)
                .control
                .send(ControlMessage::InheritedPoints {
                    parent: link.ancestor,
                    child: run_id,
                    before: link.before,
                    bound: link.bound,
                    reply,
                })
                .map_err(|_| IngestError::ShutDown)?;
            responses.push(response);
        }
        let mut points = own.unwrap_or_else(|| RunPoints::empty(run_id, experiment_id));
        for response in responses {
            if let Some(inherited) = response.await.map_err(|_| IngestError::ShutDown)? {
                points.inherit(inherited);
            }
        }
        Ok(points)
    }
}

impl SeriesSources {
    /// Puts `inherited` (an ancestor's sources, older than every source
    /// already here) first, capped by this run's rewinds.
    pub(super) fn inherit(&mut self, inherited: SeriesSources) {
        let floor = self.rewind_floor;
        prepend(&mut self.files, inherited.files);
        prepend(&mut self.file_caps, capped(inherited.file_caps, floor));
        let mut frozen = inherited.frozen;
        for source in &mut frozen {
            source.cap = source.cap.rewound_below(floor);
        }
        prepend(&mut self.frozen, frozen);
        self.inherited = true;
    }

    /// The step range of the inherited points the run's rewinds hide
    /// (`None` when they hide none).
    pub fn inherited_hidden_steps(&self) -> Option<(i64, i64)> {
        self.file_caps
            .iter()
            .chain(self.frozen.iter().map(|source| &source.cap))
            .filter_map(|cap| match (cap.shown, cap.bound) {
                (Some(shown), Some(bound)) if shown < bound => Some((shown + 1, bound)),
                _ => None,
            })
            .reduce(|(low, high), (other_low, other_high)| {
                (low.min(other_low), high.max(other_high))
            })
    }
}

impl RunPoints {
    /// A run without points of its own.
    pub(crate) fn empty(run_id: RunId, experiment_id: ExperimentId) -> Self {
        RunPoints {
            run_id,
            experiment_id,
            files: Vec::new(),
            file_caps: Vec::new(),
            frozen: Vec::new(),
            frozen_caps: Vec::new(),
            active: None,
            rewind_floor: None,
        }
    }

    /// Puts `inherited` (an ancestor's points, older than every source
    /// already here) first, capped by this run's rewinds.
    pub(super) fn inherit(&mut self, inherited: RunPoints) {
        let floor = self.rewind_floor;
        prepend(&mut self.files, inherited.files);
        prepend(&mut self.file_caps, capped(inherited.file_caps, floor));
        prepend(&mut self.frozen, inherited.frozen);
        prepend(&mut self.frozen_caps, capped(inherited.frozen_caps, floor));
    }
}

/// Puts `older` before `items`.
fn prepend<T>(items: &mut Vec<T>, mut older: Vec<T>) {
    older.append(items);
    *items = older;
}

/// Inherited caps further capped by the inheriting run's rewinds (whose
/// smallest step is `floor`).
fn capped(caps: Vec<SourceCap>, floor: Option<i64>) -> Vec<SourceCap> {
    caps.into_iter()
        .map(|cap| cap.rewound_below(floor))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::IngestConfig;
    use crate::model::{MetricBatch, MetricBatchBuilder};
    use crate::storage::MetricsLayout;

    fn batch(steps: std::ops::Range<i64>, value: f64) -> MetricBatch {
        let mut builder = MetricBatchBuilder::new();
        for step in steps {
            builder.push("k", step, step, value);
        }
        builder.finish()
    }

    async fn steps(
        ingester: &Ingester,
        run_id: RunId,
        ancestry: &[Inheritance],
        include_rewound: bool,
    ) -> Vec<(i64, f64)> {
        let mut sources = ingester
            .series_sources_with_ancestry(run_id, "k", ancestry)
            .await
            .unwrap();
        if include_rewound {
            sources = sources.include_rewound();
        }
        let series = sources.collect("k").unwrap();
        series.steps.into_iter().zip(series.values).collect()
    }

    #[tokio::test]
    async fn a_fork_reads_its_parents_points_before_the_fork_up_to_its_step() {
        let dir = tempfile::tempdir().unwrap();
        let ingester = Ingester::start(
            IngestConfig::default(),
            MetricsLayout::new(dir.path().join("metrics")),
            Vec::new(),
        )
        .unwrap();
        let experiment = ExperimentId::DEFAULT;
        let (parent, child) = (RunId::new_random(), RunId::new_random());
        ingester.apply(parent, experiment, 1, batch(0..10, 1.0), None);
        ingester.apply(parent, experiment, 2, batch(10..20, 1.0), None);
        // The parent rewinds to 15 and logs 16..24 again, then is forked
        // at step 18, then logs on.
        ingester.rewind(parent, experiment, 3, 15);
        ingester.apply(parent, experiment, 4, batch(16..25, 2.0), None);
        ingester.fork_point(parent, 5);
        ingester.apply(parent, experiment, 6, batch(25..30, 3.0), None);
        ingester.apply(child, experiment, 7, batch(19..22, 4.0), None);
        let ancestry = [Inheritance {
            ancestor: parent,
            before: 5,
            bound: 18,
        }];
        let expected: Vec<(i64, f64)> = (0..=15)
            .map(|step| (step, 1.0))
            .chain((16..=18).map(|step| (step, 2.0)))
            .chain((19..22).map(|step| (step, 4.0)))
            .collect();
        assert_eq!(steps(&ingester, child, &ancestry, false).await, expected);
        // Persisted, the same.
        ingester.flush_all().unwrap();
        assert_eq!(steps(&ingester, child, &ancestry, false).await, expected);
        // The fork rewinds below its fork step: inherited points past it
        // are hidden like its own, and shown with the rewound ones.
        ingester.rewind(child, experiment, 8, 10);
        ingester.apply(child, experiment, 9, batch(11..13, 5.0), None);
        let shown: Vec<(i64, f64)> = (0..=10)
            .map(|step| (step, 1.0))
            .chain((11..13).map(|step| (step, 5.0)))
            .collect();
        assert_eq!(steps(&ingester, child, &ancestry, false).await, shown);
        let mut all = expected.clone();
        all.extend((11..13).map(|step| (step, 5.0)));
        all.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut included = steps(&ingester, child, &ancestry, true).await;
        included.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        assert_eq!(included, all);
        let sources = ingester
            .series_sources_with_ancestry(child, "k", &ancestry)
            .await
            .unwrap();
        assert!(sources.is_inherited() && sources.has_hidden_points());
        assert_eq!(sources.inherited_hidden_steps(), Some((11, 18)));
        // Every point of the fork, as SQL reads it: the inherited files
        // under the fork, with their caps.
        let own = ingester
            .points_snapshot(Some(std::sync::Arc::new([child].into())))
            .await
            .unwrap()
            .pop();
        let points = ingester
            .points_with_ancestry(own, child, experiment, &ancestry)
            .await
            .unwrap();
        assert_eq!(points.run_id, child);
        let inherited_caps: Vec<SourceCap> = points
            .file_caps
            .iter()
            .copied()
            .filter(|cap| cap.bound.is_some())
            .collect();
        assert_eq!(
            inherited_caps,
            vec![
                SourceCap {
                    shown: Some(10),
                    bound: Some(15)
                },
                SourceCap {
                    shown: Some(10),
                    bound: Some(18)
                }
            ]
        );
        ingester.shutdown();
    }
}
