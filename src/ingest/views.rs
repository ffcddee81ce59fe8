//! What a shard hands readers: where one key's points of a run are
//! ([`SeriesSources`]), every point of a run ([`RunPoints`]) and the key
//! summaries reads show ([`SummaryView`]), each captured atomically by the
//! run's shard, with the caps a rewind puts on the sources (see
//! [`super::rewinds`]); a forked run's also hold the sources it inherits
//! (see [`super::forks`]).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::error::ArrowError;

use super::buffer::{BufferedPoints, FrozenChunk, Segment};
use super::rewinds::{self, SourceCap};
use crate::model::{ExperimentId, KeySummary, MetricSeries, RunId};
use crate::storage::{PersistedFile, StorageError};
use crate::wal::Lsn;

/// The key summaries of a run as its shard knows them, for what reads
/// show.
#[derive(Clone, Debug)]
pub enum SummaryView {
    /// The run was never rewound: the summaries of every point.
    Complete(Vec<(String, KeySummary)>),
    /// The summaries of the points logged after the newest rewind (at
    /// `last_rewind`); the shown points before it are summarised by
    /// reading them.
    SinceRewind {
        /// The LSN of the newest rewind.
        last_rewind: Lsn,
        /// Summaries per key, in key order.
        keys: Vec<(String, KeySummary)>,
    },
    /// The run is rewound and its summaries must all be read from its
    /// points (a rare state after replay).
    Unknown {
        /// The LSN of the newest rewind.
        last_rewind: Lsn,
    },
}

/// The [`SummaryView`] of one run, in a snapshot of many.
#[derive(Clone, Debug)]
pub struct RunSummaryView {
    /// The run.
    pub run_id: RunId,
    /// Its experiment.
    pub experiment_id: ExperimentId,
    /// Its summaries.
    pub view: SummaryView,
}

/// Where one key's points of one run are, captured atomically by its shard.
///
/// Files and frozen chunks logged before a rewind of the run carry a cap
/// (see [`rewinds`]): their points past it are hidden unless the read asks
/// for them ([`SeriesSources::include_rewound`]). The active buffer holds
/// only points logged after the newest rewind.
pub struct SeriesSources {
    /// Files, oldest first (inherited ones before the run's own).
    pub(super) files: Vec<Arc<PersistedFile>>,
    /// Per file: what it shows.
    pub(super) file_caps: Vec<SourceCap>,
    /// Frozen chunks, oldest first.
    pub(super) frozen: Vec<FrozenSource>,
    /// The key's id in the run's active buffer.
    pub(super) key_id: Option<u32>,
    /// The active buffer's sealed segments (shared).
    pub(super) sealed: Vec<Arc<Segment>>,
    /// The key's points in the active buffer's unsealed tail (copied).
    pub(super) active: MetricSeries,
    pub(super) applied_lsn: Lsn,
    pub(super) summary: Option<KeySummary>,
    /// The LSN of the run's newest rewind the shard had applied.
    pub(super) last_rewind: Option<Lsn>,
    /// The smallest step of the run's rewinds: it caps the sources the
    /// run inherits.
    pub(super) rewind_floor: Option<i64>,
    /// Whether some sources come from the run's fork parents.
    pub(super) inherited: bool,
}

/// A frozen chunk among a key's sources.
pub(super) struct FrozenSource {
    pub(super) chunk: Arc<FrozenChunk>,
    /// The key's id in the chunk (a fork parent's chunk has its own).
    pub(super) key_id: u32,
    pub(super) cap: SourceCap,
}

impl SeriesSources {
    /// Sources of a run the shard does not know: no point.
    pub(crate) fn empty() -> Self {
        SeriesSources {
            files: Vec::new(),
            file_caps: Vec::new(),
            frozen: Vec::new(),
            key_id: None,
            sealed: Vec::new(),
            active: MetricSeries::default(),
            applied_lsn: 0,
            summary: None,
            last_rewind: None,
            rewind_floor: None,
            inherited: false,
        }
    }

    /// The LSN of the run's newest rewind when the sources were captured.
    pub fn last_rewind(&self) -> Option<Lsn> {
        self.last_rewind
    }

    /// Whether some of the sources come from the run's fork parents.
    pub fn is_inherited(&self) -> bool {
        self.inherited
    }

    /// The shown points logged before the run's newest rewind, or before
    /// its fork when it was never rewound (the files and frozen chunks
    /// with a cap), in step order. Blocking.
    pub fn collect_before_last_rewind(mut self, key: &str) -> Result<MetricSeries, StorageError> {
        // Only the sources with a cap were logged before the newest rewind
        // (or inherited).
        let (files, file_caps) = self
            .files
            .into_iter()
            .zip(self.file_caps)
            .filter(|(_, cap)| cap.shown.is_some())
            .unzip();
        (self.files, self.file_caps) = (files, file_caps);
        self.frozen.retain(|source| source.cap.shown.is_some());
        self.sealed.clear();
        self.active = MetricSeries::default();
        self.collect(key)
    }

    /// The same sources read with the points a rewind hid.
    pub fn include_rewound(mut self) -> Self {
        let uncap = |cap: &mut SourceCap| cap.shown = cap.bound;
        self.file_caps.iter_mut().for_each(uncap);
        self.frozen
            .iter_mut()
            .for_each(|source| uncap(&mut source.cap));
        self
    }

    /// Whether a rewind hides some of the sources' points.
    pub fn has_hidden_points(&self) -> bool {
        self.file_caps
            .iter()
            .chain(self.frozen.iter().map(|source| &source.cap))
            .any(|cap| cap.hides_points())
    }

    /// The greatest step each file shows (`None`: every step).
    fn shown_caps(&self) -> Vec<Option<i64>> {
        self.file_caps.iter().map(|cap| cap.shown).collect()
    }

    /// Reads every source (files, then frozen chunks, then the active
    /// buffer: oldest first) and returns the shown series in step order.
    /// Blocking.
    pub fn collect(self, key: &str) -> Result<MetricSeries, StorageError> {
        let mut series = MetricSeries::default();
        for (file, cap) in self.files.iter().zip(&self.file_caps) {
            let from = series.len();
            file.read_key(key, &mut series)?;
            if let Some(cap) = cap.shown {
                series.retain_steps_from(from, i64::MIN, cap);
            }
        }
        let (parts, tail) = self.buffered_parts()?;
        for part in &parts {
            series.extend(part);
        }
        series.extend(&tail);
        series.sort_by_step_and_time();
        Ok(series)
    }

    /// The frozen chunks' and sealed segments' points of the key as copies
    /// (the chunks' hidden points dropped), in logged order, then the
    /// unsealed tail.
    fn buffered_parts(self) -> Result<(Vec<MetricSeries>, MetricSeries), StorageError> {
        let mut parts = Vec::new();
        for source in &self.frozen {
            let mut points = MetricSeries::default();
            source.chunk.collect_key(source.key_id, &mut points)?;
            if let Some(cap) = source.cap.shown {
                points.retain_steps_from(0, i64::MIN, cap);
            }
            parts.push(points);
        }
        if let Some(id) = self.key_id {
            for segment in &self.sealed {
                let mut points = MetricSeries::default();
                segment.collect_key(id, &mut points);
                parts.push(points);
            }
        }
        Ok((parts, self.active))
    }

    /// The highest WAL record applied to the run when the sources were
    /// captured: every point of a record up to it is in the sources, none
    /// of a later one.
    pub fn applied_lsn(&self) -> Lsn {
        self.applied_lsn
    }

    /// The key's summary (count, step range, ...) at capture time: it
    /// covers exactly the captured points. `None` when the run has no
    /// point of the key. A run with hidden points summarises them too: use
    /// the engine's summaries for what reads show.
    pub fn summary(&self) -> Option<KeySummary> {
        self.summary
    }

    /// The files (in sequence order) with their caps, and a copy of the
    /// key's buffered points that are shown (frozen chunks, then the
    /// active buffer; in logged order), for readers that stream the files
    /// themselves. Blocking (a spilled chunk is read back).
    pub fn into_parts(self) -> Result<SourceParts<MetricSeries>, StorageError> {
        let files = self.files.clone();
        let caps = self.shown_caps();
        let (parts, tail) = self.buffered_parts()?;
        let mut buffered = MetricSeries::default();
        for part in &parts {
            buffered.extend(part);
        }
        if buffered.is_empty() {
            buffered = tail;
        } else {
            buffered.extend(&tail);
        }
        Ok((files, caps, buffered))
    }

    /// The files (in sequence order) with their caps, and the key's
    /// buffered points as shared segments plus a copy of the unsealed
    /// tail, without copying the segments (when a frozen chunk has hidden
    /// points or is inherited, every buffered point is copied into the
    /// tail instead). Blocking (a spilled chunk is read back).
    pub fn into_shared(self) -> Result<SourceParts<BufferedKey>, StorageError> {
        if self
            .frozen
            .iter()
            .any(|source| source.cap.shown.is_some() || Some(source.key_id) != self.key_id)
        {
            let key_id = self.key_id.unwrap_or(0);
            let (files, caps, tail) = self.into_parts()?;
            return Ok((
                files,
                caps,
                BufferedKey {
                    key_id,
                    segments: Vec::new(),
                    tail,
                },
            ));
        }
        let caps = self.shown_caps();
        let mut segments = Vec::new();
        if self.key_id.is_some() {
            for source in &self.frozen {
                segments.extend(source.chunk.segments()?);
            }
            segments.extend(self.sealed);
        }
        Ok((
            self.files,
            caps,
            BufferedKey {
                key_id: self.key_id.unwrap_or(0),
                segments,
                tail: self.active,
            },
        ))
    }
}

/// A key's sources taken apart: the files (in sequence order), the
/// greatest step each shows (`None`: every step) and the buffered points.
pub type SourceParts<B> = (Vec<Arc<PersistedFile>>, Vec<Option<i64>>, B);

/// One key's buffered points: shared segments (oldest first; they hold
/// other keys' rows too) and the key's points in the active buffer's
/// unsealed tail, all in logged order.
#[derive(Debug, Default)]
pub struct BufferedKey {
    /// The run key id of the key in the segments.
    pub key_id: u32,
    /// Segments that may hold points of the key, oldest first.
    pub segments: Vec<Arc<Segment>>,
    /// The key's points after the segments.
    pub tail: MetricSeries,
}

/// Every point of one run, captured atomically by its shard: the persisted
/// files, the frozen chunks not yet written and a copy of the active
/// buffer. Each acknowledged point is in exactly one of them. Holding it
/// keeps the files on disk (compaction deletes a replaced file only once
/// no one holds it).
#[derive(Debug)]
pub struct RunPoints {
    /// The run.
    pub run_id: RunId,
    /// Its experiment.
    pub experiment_id: ExperimentId,
    /// Its files, oldest first (inherited ones before the run's own).
    pub files: Vec<Arc<PersistedFile>>,
    /// Per file: what it shows.
    pub file_caps: Vec<SourceCap>,
    pub(super) frozen: Vec<Arc<FrozenChunk>>,
    pub(super) frozen_caps: Vec<SourceCap>,
    pub(super) active: Option<BufferedPoints>,
    /// The smallest step of the run's rewinds.
    pub(super) rewind_floor: Option<i64>,
}

impl RunPoints {
    /// Points in memory (frozen chunks and the active buffer).
    pub fn buffered_rows(&self) -> usize {
        self.frozen.iter().map(|chunk| chunk.rows()).sum::<usize>()
            + self.active.as_ref().map_or(0, BufferedPoints::rows)
    }

    /// Moves the in-memory points `rewound` selects out as batches in the
    /// metric file schema ([`crate::storage::schema::metric_file_schema`]),
    /// oldest first.
    pub fn take_buffered_batches(
        &mut self,
        rewound: rewinds::RewoundPoints,
    ) -> Result<Vec<RecordBatch>, StorageError> {
        let mut batches = Vec::with_capacity(self.frozen.len() + 1);
        let caps = std::mem::take(&mut self.frozen_caps);
        for (chunk, cap) in self.frozen.drain(..).zip(caps) {
            let Some((low, high)) = rewound.steps(cap) else {
                continue;
            };
            if chunk.rows() > 0 {
                for batch in chunk.to_record_batches()? {
                    batches.push(
                        keep_steps(batch, low, high)
                            .map_err(|error| StorageError::Arrow(error.to_string()))?,
                    );
                }
            }
        }
        if let Some(active) = self.active.take()
            && active.rows() > 0
            && rewound.steps(SourceCap::default()).is_some()
        {
            batches.push(
                active
                    .into_record_batch()
                    .map_err(|error| StorageError::Arrow(error.to_string()))?,
            );
        }
        Ok(batches)
    }
}

/// The rows of a batch in the metric file schema whose step lies in
/// `low..=high`.
fn keep_steps(batch: RecordBatch, low: i64, high: i64) -> Result<RecordBatch, ArrowError> {
    if (low, high) == (i64::MIN, i64::MAX) {
        return Ok(batch);
    }
    let index = batch
        .schema()
        .index_of(crate::storage::schema::STEP_COLUMN)?;
    let steps = batch
        .column(index)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .ok_or_else(|| ArrowError::InvalidArgumentError("step column is not Int64".into()))?;
    let keep: arrow::array::BooleanArray = steps
        .values()
        .iter()
        .map(|step| Some((low..=high).contains(step)))
        .collect();
    arrow::compute::filter_record_batch(&batch, &keep)
}

/// The per-key summaries of one run (every point, buffered or persisted).
#[derive(Clone, Debug)]
pub struct RunSummaries {
    /// The run.
    pub run_id: RunId,
    /// Its experiment.
    pub experiment_id: ExperimentId,
    /// Summary per key, in key order.
    pub keys: Vec<(String, KeySummary)>,
}
