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
        let capped = |cap: SourceCap| cap.rewound_below(floor);
        let mut files = inherited.files;
        files.append(&mut self.files);
        self.files = files;
        let mut caps: Vec<SourceCap> = inherited.file_caps.into_iter().map(capped).collect();
        caps.append(&mut self.file_caps);
        self.file_caps = caps;
        let mut frozen = inherited.frozen;
        for source in &mut frozen {
            source.cap = capped(source.cap);
        }
        frozen.append(&mut self.frozen);
        self.frozen = frozen;
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
        let capped = |cap: SourceCap| cap.rewound_below(floor);
        let mut files = inherited.files;
        files.append(&mut self.files);
        self.files = files;
        let mut caps: Vec<SourceCap> = inherited.file_caps.into_iter().map(capped).collect();
        caps.append(&mut self.file_caps);
        self.file_caps = caps;
        let mut frozen = inherited.frozen;
        frozen.append(&mut self.frozen);
        self.frozen = frozen;
        let mut frozen_caps: Vec<SourceCap> =
            inherited.frozen_caps.into_iter().map(capped).collect();
        frozen_caps.append(&mut self.frozen_caps);
        self.frozen_caps = frozen_caps;
    }
}
