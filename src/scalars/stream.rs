//! Streaming reads of one key's points, in `(step, timestamp)` order, with
//! memory bounded by one decoded batch per source.
//!
//! A key's points of one run sit in several places: persisted Parquet files
//! (each sorted by `(key, step, timestamp)`, so the key's rows in a file are
//! one sorted run), frozen chunks and the active buffer (in logged order;
//! their sealed segments are shared and read in place when the key's points
//! are in step order, else the key's points are copied out and sorted,
//! bounded by the buffer size, not by the series length). Step ranges of
//! these sources may
//! overlap (points logged out of order), so the reader does a k-way merge of
//! the sorted sources, and the merge hands the sink maximal slices that are
//! already in order, so the common case (files covering consecutive step
//! ranges) copies nothing. A file with block aggregates
//! ([`crate::storage::aggregates`]) is read block by block through the page
//! reader (`storage::pages`), the aggregates saying which rows hold
//! the key; an older file is read row group by row group (row groups whose
//! key or step statistics rule them out are skipped; a row group holding
//! only the requested key is read without its key column).
//!
//! Ties on `(step, timestamp)` come out files first (in sequence order),
//! then buffered points, exactly as [`crate::ingest::SeriesSources::collect`]
//! orders them.
//!
//! A planned read ([`SeriesSnapshot::plan_step_read`]) uses the files'
//! block aggregates ([`crate::storage::aggregates`]): a block that lies
//! wholly inside one downsampling bucket, and whose `(step, timestamp)`
//! span no other source's point falls into (so its rows are consecutive in
//! the merged order), reaches the sink as its aggregate, undecoded; the
//! other blocks in range are decoded from their pages alone. A decoded
//! block is checked against its aggregate; a disagreement is
//! [`ScalarError::Aggregates`], on which the caller falls back to the full
//! scan, and the full scan carries on without the aggregates.

use std::ops::Range;
use std::sync::Arc;

use arrow::buffer::ScalarBuffer;

use super::ScalarError;
use crate::ingest::{BufferedKey, Segment, SegmentBlock};
use crate::model::MetricSeries;
pub use crate::storage::StepBounds;
use crate::storage::{
    BlockAggregate, ColumnRows, FooterTrust, KeyRows, KeyRowsReader, NumericRows, PersistedFile,
};

/// Takes ordered slices of steps, timestamps and values; returns `false`
/// to stop the read.
pub type SliceSink<'a> = dyn FnMut(&[i64], &[i64], &[f64]) -> Result<bool, ScalarError> + 'a;

/// Takes a series in `(step, timestamp)` order: decoded slices, and (in a
/// planned read) whole blocks as aggregates. Each call returns `false` to
/// stop the read.
pub trait PointSink {
    /// Ordered rows.
    fn slice(
        &mut self,
        steps: &[i64],
        timestamps: &[i64],
        values: &[f64],
    ) -> Result<bool, ScalarError>;

    /// A block of consecutive rows (in the merged order), undecoded.
    fn block(&mut self, block: &BlockAggregate) -> Result<bool, ScalarError>;
}

/// A slice closure as a sink that takes no aggregates.
struct SlicesOnly<'s, 'a>(&'s mut SliceSink<'a>);

impl PointSink for SlicesOnly<'_, '_> {
    fn slice(
        &mut self,
        steps: &[i64],
        timestamps: &[i64],
        values: &[f64],
    ) -> Result<bool, ScalarError> {
        (self.0)(steps, timestamps, values)
    }

    fn block(&mut self, _: &BlockAggregate) -> Result<bool, ScalarError> {
        Err(ScalarError::Aggregates(
            "a block aggregate reached a reader that wants every point".into(),
        ))
    }
}

/// A sorted run of points: slices of shared column buffers.
#[derive(Clone, Debug)]
struct Block {
    steps: ScalarBuffer<i64>,
    timestamps: ScalarBuffer<i64>,
    values: ScalarBuffer<f64>,
}

impl Block {
    fn len(&self) -> usize {
        self.steps.len()
    }

    fn head(&self) -> (i64, i64) {
        (self.steps[0], self.timestamps[0])
    }

    fn position(&self, row: usize) -> (i64, i64) {
        (self.steps[row], self.timestamps[row])
    }

    /// Index of the first row at or after `position`.
    fn lower_bound(&self, position: (i64, i64)) -> usize {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = (low + high) / 2;
            if self.position(middle) < position {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    fn slice(&self, offset: usize, len: usize) -> Block {
        Block {
            steps: self.steps.slice(offset, len),
            timestamps: self.timestamps.slice(offset, len),
            values: self.values.slice(offset, len),
        }
    }

    fn from_rows(rows: ColumnRows) -> Block {
        Block {
            steps: rows.steps,
            timestamps: rows.timestamps,
            values: rows.values,
        }
    }

    fn from_series(series: MetricSeries) -> Block {
        Block {
            steps: ScalarBuffer::from(series.steps),
            timestamps: ScalarBuffer::from(series.timestamps),
            values: ScalarBuffer::from(series.values),
        }
    }

    fn is_sorted(&self) -> bool {
        self.steps
            .windows(2)
            .zip(self.timestamps.windows(2))
            .all(|(step, time)| (step[0], time[0]) <= (step[1], time[1]))
    }

    /// Sorts a block that is not in order (a safety net: files are written
    /// sorted).
    fn sorted(self) -> Block {
        if self.is_sorted() {
            return self;
        }
        let mut series = MetricSeries {
            steps: self.steps.to_vec(),
            timestamps: self.timestamps.to_vec(),
            values: self.values.to_vec(),
        };
        series.sort_by_step_and_time();
        Block::from_series(series)
    }

    /// Keeps the points inside `bounds`; `None` when none is left. The
    /// second value tells whether points past the upper bound were cut
    /// (the source has nothing more to give).
    fn trim(self, bounds: StepBounds) -> (Option<Block>, bool) {
        let start = bounds
            .lower
            .map_or(0, |lower| self.steps.partition_point(|&step| step < lower));
        let end = bounds.upper.map_or(self.len(), |upper| {
            self.steps.partition_point(|&step| step <= upper)
        });
        let past_upper = end < self.len();
        if start >= end {
            (None, past_upper)
        } else if start == 0 && end == self.len() {
            (Some(self), past_upper)
        } else {
            (Some(self.slice(start, end - start)), past_upper)
        }
    }
}

/// What a source yields next: decoded rows, or a block as its aggregate.
enum Item {
    Rows(Block),
    Summary(BlockAggregate),
}

impl Item {
    fn head(&self) -> (i64, i64) {
        match self {
            Item::Rows(block) => block.head(),
            Item::Summary(aggregate) => aggregate.first.position(),
        }
    }
}

/// Something that yields sorted items of one key's points.
trait BlockSource: Send {
    fn next_item(&mut self) -> Result<Option<Item>, ScalarError>;
}

/// The buffered points of the key (frozen chunks and active buffer).
struct BufferSource {
    block: Option<Block>,
}

impl BlockSource for BufferSource {
    fn next_item(&mut self) -> Result<Option<Item>, ScalarError> {
        Ok(self.block.take().map(Item::Rows))
    }
}

/// One file's rows of the key, from the storage reader, in order and
/// within the bounds.
struct FileSource {
    rows: Option<KeyRowsReader>,
    bounds: StepBounds,
    /// The file (which stays on disk while it is read, even once
    /// compacted away).
    _file: Arc<PersistedFile>,
}

impl FileSource {
    /// The key's rows of `file` within `bounds`, planned trusting `trust`.
    fn new(
        file: Arc<PersistedFile>,
        key: &str,
        bounds: StepBounds,
        trust: FooterTrust,
    ) -> Result<FileSource, ScalarError> {
        Ok(FileSource {
            rows: KeyRowsReader::open(&file, key, bounds, trust)?,
            bounds,
            _file: file,
        })
    }
}

impl BlockSource for FileSource {
    fn next_item(&mut self) -> Result<Option<Item>, ScalarError> {
        while let Some(reader) = &mut self.rows {
            let Some(rows) = reader.next_rows()? else {
                self.rows = None;
                break;
            };
            let (block, past_upper) = Block::from_rows(rows).sorted().trim(self.bounds);
            if past_upper {
                self.rows = None;
            }
            if let Some(block) = block {
                return Ok(Some(Item::Rows(block)));
            }
        }
        Ok(None)
    }
}

/// Everything a series read needs, taken from a consistent snapshot of the
/// run's shard: the files (held open against compaction) and the key's
/// buffered points.
#[derive(Clone)]
pub struct SeriesSnapshot {
    key: String,
    files: Vec<Arc<PersistedFile>>,
    /// Per file: the greatest step a read shows (a rewind hides the rest;
    /// empty or `None`: every step).
    caps: Vec<Option<i64>>,
    buffered: Buffered,
}

/// A key's buffered points as a read sees them.
#[derive(Clone)]
enum Buffered {
    /// A sorted copy.
    Sorted(Block),
    /// Blocks of shared segments, in `(step, timestamp)` order and with
    /// aggregates, then the sorted points of the unsealed tail.
    Blocks {
        key_id: u32,
        blocks: Vec<BufferBlock>,
        tail: Block,
    },
}

/// A block of a shared buffer segment.
#[derive(Clone)]
struct BufferBlock {
    segment: Arc<Segment>,
    block: SegmentBlock,
    aggregate: BlockAggregate,
}

impl BufferBlock {
    fn span(&self) -> Span {
        Span {
            start: self.aggregate.first.position(),
            end: self.aggregate.last.position(),
        }
    }

    fn decode(&self, key_id: u32) -> Block {
        let (steps, timestamps, values) = self.segment.block_points(key_id, &self.block);
        Block {
            steps,
            timestamps,
            values,
        }
    }
}

impl Buffered {
    fn points(&self) -> usize {
        match self {
            Buffered::Sorted(block) => block.len(),
            Buffered::Blocks { blocks, tail, .. } => {
                blocks
                    .iter()
                    .map(|block| block.block.points as usize)
                    .sum::<usize>()
                    + tail.len()
            }
        }
    }

    /// Points with a step in `[lo, hi]`, or a lower bound of them (blocks
    /// that straddle an edge are not counted).
    fn known_in_range(&self, lo: i64, hi: i64) -> u64 {
        let rows_in = |block: &Block| {
            let start = block.steps.partition_point(|&step| step < lo);
            let end = block.steps.partition_point(|&step| step <= hi);
            end.saturating_sub(start) as u64
        };
        match self {
            Buffered::Sorted(block) => rows_in(block),
            Buffered::Blocks { blocks, tail, .. } => {
                blocks
                    .iter()
                    .filter(|block| {
                        lo <= block.aggregate.first.step && block.aggregate.last.step <= hi
                    })
                    .map(|block| u64::from(block.aggregate.rows))
                    .sum::<u64>()
                    + rows_in(tail)
            }
        }
    }

    /// Whether a buffered point falls in `span`.
    fn meets(&self, span: &Span) -> bool {
        match self {
            Buffered::Sorted(block) => span.meets_rows(block),
            Buffered::Blocks { blocks, tail, .. } => {
                let first = blocks.partition_point(|block| block.span().end < span.start);
                blocks
                    .get(first)
                    .is_some_and(|block| block.span().start <= span.end)
                    || span.meets_rows(tail)
            }
        }
    }

    /// A source of the points within `bounds`; `summarise` tells which
    /// blocks go out as their aggregates.
    fn source(
        &self,
        bounds: StepBounds,
        summarise: &dyn Fn(&BlockAggregate) -> bool,
    ) -> Option<Box<dyn BlockSource>> {
        match self {
            Buffered::Sorted(block) => match block.clone().trim(bounds) {
                (Some(block), _) => Some(Box::new(BufferSource { block: Some(block) })),
                (None, _) => None,
            },
            Buffered::Blocks {
                key_id,
                blocks,
                tail,
            } => {
                let planned: Vec<(BufferBlock, bool)> = blocks
                    .iter()
                    .filter(|block| {
                        !bounds
                            .excludes_range(block.aggregate.first.step, block.aggregate.last.step)
                    })
                    .map(|block| (block.clone(), summarise(&block.aggregate)))
                    .collect();
                Some(Box::new(BufferBlocksSource {
                    key_id: *key_id,
                    blocks: planned.into_iter(),
                    tail: Some(tail.clone()),
                    bounds,
                }))
            }
        }
    }
}

/// Buffered blocks, then the unsealed tail.
struct BufferBlocksSource {
    key_id: u32,
    blocks: std::vec::IntoIter<(BufferBlock, bool)>,
    tail: Option<Block>,
    bounds: StepBounds,
}

impl BlockSource for BufferBlocksSource {
    fn next_item(&mut self) -> Result<Option<Item>, ScalarError> {
        for (block, summarise) in self.blocks.by_ref() {
            if summarise {
                return Ok(Some(Item::Summary(block.aggregate)));
            }
            if let (Some(rows), _) = block.decode(self.key_id).trim(self.bounds) {
                return Ok(Some(Item::Rows(rows)));
            }
        }
        Ok(self
            .tail
            .take()
            .and_then(|tail| tail.trim(self.bounds).0)
            .map(Item::Rows))
    }
}

impl SeriesSnapshot {
    /// A snapshot of `key` from its files (in sequence order) and its
    /// buffered points (frozen chunks first, then the active buffer).
    pub fn new(key: &str, files: Vec<Arc<PersistedFile>>, mut buffered: MetricSeries) -> Self {
        buffered.sort_by_step_and_time();
        SeriesSnapshot {
            key: key.to_string(),
            files,
            caps: Vec::new(),
            buffered: Buffered::Sorted(Block::from_series(buffered)),
        }
    }

    /// The same snapshot showing, of each file, only the steps up to its
    /// cap (`caps[i]` for `files[i]`, from
    /// [`crate::ingest::SeriesSources`]): what a rewind leaves shown.
    pub fn with_file_caps(mut self, caps: Vec<Option<i64>>) -> Self {
        self.caps = caps;
        self
    }

    /// File `index`'s cap.
    fn cap(&self, index: usize) -> Option<i64> {
        self.caps.get(index).copied().flatten()
    }

    /// `bounds` narrowed to what file `index` shows; `None` when it shows
    /// nothing of them.
    fn file_bounds(&self, index: usize, bounds: StepBounds) -> Option<StepBounds> {
        let Some(cap) = self.cap(index) else {
            return Some(bounds);
        };
        let upper = bounds.upper.map_or(cap, |upper| upper.min(cap));
        if bounds.lower.is_some_and(|lower| lower > upper) {
            return None;
        }
        Some(StepBounds {
            lower: bounds.lower,
            upper: Some(upper),
        })
    }

    /// A snapshot of `key` that shares the buffer's segments: when the
    /// key's buffered points are in `(step, timestamp)` order (trainers log
    /// steps in order), the segments' blocks are read in place and their
    /// aggregates can stand for them; otherwise the points are copied and
    /// sorted as by [`Self::new`]. Blocking (the first read of a segment
    /// computes its blocks).
    pub fn shared(key: &str, files: Vec<Arc<PersistedFile>>, buffered: BufferedKey) -> Self {
        let key_id = buffered.key_id;
        let mut blocks = Vec::new();
        let mut last: Option<(i64, i64)> = None;
        let mut ordered = true;
        'segments: for segment in &buffered.segments {
            for block in segment.key_blocks(key_id) {
                match block.aggregate {
                    Some(aggregate)
                        if last.is_none_or(|last| last <= aggregate.first.position()) =>
                    {
                        last = Some(aggregate.last.position());
                        blocks.push(BufferBlock {
                            segment: Arc::clone(segment),
                            block: *block,
                            aggregate,
                        });
                    }
                    _ => {
                        ordered = false;
                        break 'segments;
                    }
                }
            }
        }
        let tail = Block::from_series(buffered.tail);
        ordered = ordered
            && tail.is_sorted()
            && (tail.len() == 0 || last.is_none_or(|last| last <= tail.head()));
        if !ordered {
            let mut series = MetricSeries::default();
            for segment in &buffered.segments {
                segment.collect_key(key_id, &mut series);
            }
            series.steps.extend_from_slice(&tail.steps);
            series.timestamps.extend_from_slice(&tail.timestamps);
            series.values.extend_from_slice(&tail.values);
            return SeriesSnapshot::new(key, files, series);
        }
        SeriesSnapshot {
            key: key.to_string(),
            files,
            caps: Vec::new(),
            buffered: Buffered::Blocks {
                key_id,
                blocks,
                tail,
            },
        }
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Number of buffered points.
    pub fn buffered_points(&self) -> usize {
        self.buffered.points()
    }

    /// Streams every point within `bounds` to `sink` in `(step,
    /// timestamp)` order, as slices. Blocking. Files with block
    /// aggregates are read block by block through the page reader; should
    /// a block disagree with its aggregate, the read goes on without the
    /// aggregates from the point it had reached (the order of the points
    /// is the same either way), so the sink sees each point once. The sink
    /// returns `false` to stop early.
    pub fn for_each_slice(
        &self,
        bounds: StepBounds,
        sink: &mut SliceSink<'_>,
    ) -> Result<(), ScalarError> {
        let mut delivered = 0usize;
        let first = self.merge_slices(bounds, true, &mut |steps, timestamps, values| {
            let more = sink(steps, timestamps, values)?;
            delivered += steps.len();
            Ok(more)
        });
        let Err(ScalarError::Aggregates(reason)) = first else {
            return first;
        };
        tracing::warn!(key = %self.key, %reason, delivered, "block aggregates unusable; reading the rest without them");
        let mut skip = delivered;
        self.merge_slices(bounds, false, &mut |steps, timestamps, values| {
            if skip >= steps.len() {
                skip -= steps.len();
                return Ok(true);
            }
            let from = std::mem::take(&mut skip);
            sink(&steps[from..], &timestamps[from..], &values[from..])
        })
    }

    /// [`SeriesSnapshot::for_each_slice`] with the files' aggregates
    /// (`with_aggregates`) or without.
    fn merge_slices(
        &self,
        bounds: StepBounds,
        with_aggregates: bool,
        sink: &mut SliceSink<'_>,
    ) -> Result<(), ScalarError> {
        let mut sources: Vec<Box<dyn BlockSource>> = Vec::with_capacity(self.files.len() + 1);
        for (index, file) in self.files.iter().enumerate() {
            let Some(bounds) = self.file_bounds(index, bounds) else {
                continue;
            };
            if with_aggregates {
                sources.extend(full_file_source(file, &self.key, bounds)?);
            } else {
                sources.push(Box::new(FileSource::new(
                    Arc::clone(file),
                    &self.key,
                    bounds,
                    FooterTrust::StatisticsOnly,
                )?));
            }
        }
        sources.extend(self.buffered.source(bounds, &|_| false));
        merge(sources, &mut SlicesOnly(sink))
    }

    /// Every point within `bounds`, read with the files' aggregates or
    /// without (for tests that compare the two).
    #[cfg(test)]
    pub(crate) fn collect_merged(&self, bounds: StepBounds, with_aggregates: bool) -> MetricSeries {
        let mut out = MetricSeries::default();
        self.merge_slices(bounds, with_aggregates, &mut |steps, times, values| {
            out.steps.extend_from_slice(steps);
            out.timestamps.extend_from_slice(times);
            out.values.extend_from_slice(values);
            Ok(true)
        })
        .expect("a test read");
        out
    }

    /// The smallest and greatest timestamp of the series (`None` when it
    /// is empty): from the files' block aggregates where they have them,
    /// else by reading. Blocking.
    pub fn timestamp_range(&self) -> Result<Option<(i64, i64)>, ScalarError> {
        let mut range: Option<(i64, i64)> = None;
        let mut widen = |low: i64, high: i64| {
            let (old_low, old_high) = range.unwrap_or((low, high));
            range = Some((old_low.min(low), old_high.max(high)));
        };
        for (index, file) in self.files.iter().enumerate() {
            // A capped file's blocks may hold hidden rows: it is read.
            if let Some(aggregates) = file.aggregates().filter(|_| self.cap(index).is_none()) {
                for block in aggregates.key(&self.key).iter().flat_map(|key| &key.blocks) {
                    widen(block.min_timestamp, block.max_timestamp);
                }
                continue;
            }
            let Some(bounds) = self.file_bounds(index, StepBounds::default()) else {
                continue;
            };
            let mut source =
                FileSource::new(Arc::clone(file), &self.key, bounds, FooterTrust::Summaries)?;
            while let Some(item) = source.next_item()? {
                if let Item::Rows(block) = item {
                    fold_timestamps(&block.timestamps, &mut widen);
                }
            }
        }
        match &self.buffered {
            Buffered::Sorted(block) => fold_timestamps(&block.timestamps, &mut widen),
            Buffered::Blocks { blocks, tail, .. } => {
                for block in blocks {
                    widen(block.aggregate.min_timestamp, block.aggregate.max_timestamp);
                }
                fold_timestamps(&tail.timestamps, &mut widen);
            }
        }
        Ok(range)
    }

    /// Plans a read of steps `[lo, hi]` for a downsampler keeping
    /// `max_points` points, where `same_bucket(a, b)` tells whether steps
    /// `a` and `b` fall in one of its buckets. `None` when no file has
    /// block aggregates for the key (the full scan is as good). Blocking
    /// only in that it reads nothing: files are opened when the plan runs.
    pub fn plan_step_read(
        &self,
        lo: i64,
        hi: i64,
        max_points: usize,
        same_bucket: &dyn Fn(i64, i64) -> bool,
    ) -> Option<StepPlan> {
        let bounds = StepBounds {
            lower: Some(lo),
            upper: Some(hi),
        };
        let mut any_aggregates = matches!(self.buffered, Buffered::Blocks { .. });
        // Per file: its blocks of the key (with their first file row), or
        // `None` for a file without aggregates; the spans of its points
        // other sources are checked against; and the bounds it shows (a
        // rewind may cap them), `None` when it shows nothing of the range.
        let mut files: Vec<PlannedFile> = Vec::new();
        for (index, file) in self.files.iter().enumerate() {
            let Some(file_bounds) = self.file_bounds(index, bounds) else {
                files.push((Some(Vec::new()), Vec::new(), None));
                continue;
            };
            let cap = self.cap(index);
            match file.aggregates() {
                Some(aggregates) => {
                    any_aggregates = true;
                    let blocks: Vec<StartedBlock> = match aggregates.key(&self.key) {
                        Some(key) => key
                            .block_starts()
                            .zip(key.blocks.iter().copied())
                            .filter(|(_, block)| cap.is_none_or(|cap| block.first.step <= cap))
                            .collect(),
                        None => Vec::new(),
                    };
                    // A block a rewind cuts shows nothing past the cap.
                    let spans = blocks
                        .iter()
                        .map(|(_, block)| Span {
                            start: block.first.position(),
                            end: cap.map_or(block.last.position(), |cap| {
                                block.last.position().min((cap, i64::MAX))
                            }),
                        })
                        .collect();
                    files.push((Some(blocks), spans, Some(file_bounds)));
                }
                None => {
                    // One span over the steps the key's rows may hold (a
                    // row group's step statistics cover its other keys
                    // too). A footer that cannot be read sends the read
                    // to the full scan, which reports it.
                    let footer = file.cached_footer().ok()?;
                    let spans =
                        KeyRows::plan(&footer, &self.key, file_bounds, FooterTrust::Summaries)
                            .map(|rows| rows.steps().unwrap_or((i64::MIN, i64::MAX)))
                            .map(|(min, max)| Span {
                                start: (min, i64::MIN),
                                end: (max, i64::MAX),
                            })
                            .into_iter()
                            .collect();
                    files.push((None, spans, Some(file_bounds)));
                }
            }
        }
        if !any_aggregates {
            return None;
        }
        let buffered_in_range = self.buffered.known_in_range(lo, hi);
        let inside = |block: &BlockAggregate| lo <= block.first.step && block.last.step <= hi;
        // Inside the range a file shows (its upper bound is at most `hi`).
        let inside_file = |block: &BlockAggregate, shown: &StepBounds| {
            inside(block) && shown.upper.is_none_or(|upper| block.last.step <= upper)
        };
        let known_in_range: u64 = files
            .iter()
            .filter_map(|(blocks, _, shown)| Some((blocks.as_ref()?, shown.as_ref()?)))
            .flat_map(|(blocks, shown)| blocks.iter().map(move |(_, block)| (block, shown)))
            .filter(|(block, shown)| inside_file(block, shown))
            .map(|(block, _)| u64::from(block.rows))
            .sum::<u64>()
            + buffered_in_range;
        // Aggregates only when the downsampler is sure to bucket: a range
        // that fits the budget comes back point by point.
        let summarise = max_points > 0 && known_in_range > max_points as u64;
        let mut sources: Vec<Box<dyn BlockSource>> = Vec::with_capacity(files.len() + 1);
        let mut summarised = 0usize;
        for (index, (file, (blocks, _, shown))) in self.files.iter().zip(&files).enumerate() {
            let Some(shown) = *shown else {
                continue;
            };
            let Some(blocks) = blocks else {
                sources.push(Box::new(
                    FileSource::new(Arc::clone(file), &self.key, shown, FooterTrust::Summaries)
                        .ok()?,
                ));
                continue;
            };
            let shown_hi = shown.upper.unwrap_or(hi);
            let mut planned = Vec::new();
            for &(first_row, block) in blocks {
                if block.last.step < lo || block.first.step > shown_hi {
                    continue;
                }
                let span = Span {
                    start: block.first.position(),
                    end: block.last.position(),
                };
                let alone = files
                    .iter()
                    .enumerate()
                    .all(|(other, (_, spans, _))| other == index || !span.meets_any(spans))
                    && !self.buffered.meets(&span);
                let whole = summarise
                    && alone
                    && inside_file(&block, &shown)
                    && same_bucket(block.first.step, block.last.step);
                summarised += usize::from(whole);
                planned.push(PlannedBlock {
                    first_row,
                    block,
                    summarise: whole,
                });
            }
            if !planned.is_empty() {
                sources.push(Box::new(PlannedFileSource::new(
                    Arc::clone(file),
                    planned,
                    shown,
                )));
            }
        }
        let all_spans: Vec<&[Span]> = files.iter().map(|(_, spans, _)| spans.as_slice()).collect();
        let summarise_buffered = |block: &BlockAggregate| {
            let span = Span {
                start: block.first.position(),
                end: block.last.position(),
            };
            summarise
                && inside(block)
                && same_bucket(block.first.step, block.last.step)
                && all_spans.iter().all(|spans| !span.meets_any(spans))
        };
        let counted = std::cell::Cell::new(0usize);
        let counting = |block: &BlockAggregate| {
            let whole = summarise_buffered(block);
            counted.set(counted.get() + usize::from(whole));
            whole
        };
        sources.extend(self.buffered.source(bounds, &counting));
        summarised += counted.get();
        Some(StepPlan {
            sources,
            summarise,
            summarised,
        })
    }
}

fn fold_timestamps(timestamps: &[i64], widen: &mut impl FnMut(i64, i64)) {
    if let (Some(&low), Some(&high)) = (timestamps.iter().min(), timestamps.iter().max()) {
        widen(low, high);
    }
}

/// Every point of `key` in `file` within `bounds`: block by block when the
/// file has block aggregates (they give the key's rows exactly, and each
/// decoded block is checked against its aggregate), else as the storage
/// reader finds the key's rows. `None` when the file holds no point of
/// the key in range.
fn full_file_source(
    file: &Arc<PersistedFile>,
    key: &str,
    bounds: StepBounds,
) -> Result<Option<Box<dyn BlockSource>>, ScalarError> {
    let Some(aggregates) = file.aggregates() else {
        return Ok(Some(Box::new(FileSource::new(
            Arc::clone(file),
            key,
            bounds,
            FooterTrust::Summaries,
        )?)));
    };
    let Some(entry) = aggregates.key(key) else {
        return Ok(None);
    };
    let blocks: Vec<PlannedBlock> = entry
        .block_starts()
        .zip(entry.blocks.iter().copied())
        .filter(|(_, block)| !bounds.excludes_range(block.first.step, block.last.step))
        .map(|(first_row, block)| PlannedBlock {
            first_row,
            block,
            summarise: false,
        })
        .collect();
    if blocks.is_empty() {
        return Ok(None);
    }
    Ok(Some(Box::new(PlannedFileSource::new(
        Arc::clone(file),
        blocks,
        bounds,
    ))))
}

/// A file block and the file row it starts at.
type StartedBlock = (u64, BlockAggregate);

/// A file in a read plan: its blocks of the key (`None` without
/// aggregates), the spans of its points, and the bounds it shows.
type PlannedFile = (Option<Vec<StartedBlock>>, Vec<Span>, Option<StepBounds>);

/// A closed span of `(step, timestamp)` positions.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: (i64, i64),
    end: (i64, i64),
}

impl Span {
    /// Whether the span meets any of `spans` (sorted, with ends in order).
    fn meets_any(&self, spans: &[Span]) -> bool {
        let first = spans.partition_point(|span| span.end < self.start);
        spans.get(first).is_some_and(|span| span.start <= self.end)
    }

    /// Whether a row of the sorted `block` falls in the span.
    fn meets_rows(&self, block: &Block) -> bool {
        let first = block.lower_bound(self.start);
        first < block.len() && block.position(first) <= self.end
    }
}

/// A planned read: run it with [`StepPlan::run`].
pub struct StepPlan {
    sources: Vec<Box<dyn BlockSource>>,
    summarise: bool,
    summarised: usize,
}

impl StepPlan {
    /// Whether blocks reach the sink as aggregates: the range holds more
    /// points than the budget, so the downsampler must bucket from the
    /// start.
    pub fn summarises(&self) -> bool {
        self.summarise
    }

    /// How many blocks reach the sink as aggregates.
    pub fn summarised_blocks(&self) -> usize {
        self.summarised
    }

    /// Streams the planned points and blocks to `sink` in order. Blocking.
    pub fn run(self, sink: &mut dyn PointSink) -> Result<(), ScalarError> {
        merge(self.sources, sink)
    }
}

/// A block of a planned file read.
#[derive(Clone, Copy, Debug)]
struct PlannedBlock {
    first_row: u64,
    block: BlockAggregate,
    summarise: bool,
}

/// One file read block by block: summarised blocks come out as their
/// aggregates; the others are decoded (only they are read).
struct PlannedFileSource {
    file: Arc<PersistedFile>,
    blocks: std::vec::IntoIter<PlannedBlock>,
    decode: Vec<Range<u64>>,
    bounds: StepBounds,
    rows: Option<NumericRows>,
    /// The block being decoded and the rows of it already handed out.
    current: Option<(PlannedBlock, u32)>,
}

impl PlannedFileSource {
    fn new(file: Arc<PersistedFile>, blocks: Vec<PlannedBlock>, bounds: StepBounds) -> Self {
        let mut decode: Vec<Range<u64>> = Vec::new();
        for planned in blocks.iter().filter(|planned| !planned.summarise) {
            let range = planned.first_row..planned.first_row + u64::from(planned.block.rows);
            match decode.last_mut() {
                Some(last) if last.end == range.start => last.end = range.end,
                _ => decode.push(range),
            }
        }
        PlannedFileSource {
            file,
            blocks: blocks.into_iter(),
            decode,
            bounds,
            rows: None,
            current: None,
        }
    }

    /// Decoded rows of `planned` from its row `done` on (at least one).
    fn take_rows(&mut self, planned: &PlannedBlock, done: u32) -> Result<Block, ScalarError> {
        let rows = match &mut self.rows {
            Some(rows) => rows,
            None => self.rows.insert(NumericRows::open(
                &self.file,
                std::mem::take(&mut self.decode),
            )?),
        };
        let start = planned.first_row + u64::from(done);
        let end = planned.first_row + u64::from(planned.block.rows);
        let read = rows.read(start..end)?;
        if read.is_empty() {
            return Err(ScalarError::Aggregates(format!(
                "{} has fewer rows than its aggregates say",
                self.file.path().display()
            )));
        }
        Ok(Block::from_rows(read))
    }
}

impl BlockSource for PlannedFileSource {
    fn next_item(&mut self) -> Result<Option<Item>, ScalarError> {
        loop {
            if let Some((planned, done)) = self.current {
                let aggregate = planned.block;
                let rows = self.take_rows(&planned, done)?;
                let done_now = done + rows.len() as u32;
                let agrees = rows.is_sorted()
                    && (done > 0 || rows.head() == aggregate.first.position())
                    && (done_now < aggregate.rows
                        || rows.position(rows.len() - 1) == aggregate.last.position());
                if !agrees {
                    return Err(ScalarError::Aggregates(format!(
                        "a block of {} disagrees with its aggregate",
                        self.file.path().display()
                    )));
                }
                self.current = (done_now < aggregate.rows).then_some((planned, done_now));
                if let (Some(rows), _) = rows.trim(self.bounds) {
                    return Ok(Some(Item::Rows(rows)));
                }
                continue;
            }
            let Some(planned) = self.blocks.next() else {
                return Ok(None);
            };
            if planned.summarise {
                return Ok(Some(Item::Summary(planned.block)));
            }
            self.current = Some((planned, 0));
        }
    }
}

/// k-way merge of sorted sources; ties go to the lower source index. An
/// aggregate whose rows another source's point falls between is
/// [`ScalarError::Aggregates`] (planning rules it out).
fn merge(
    mut sources: Vec<Box<dyn BlockSource>>,
    sink: &mut dyn PointSink,
) -> Result<(), ScalarError> {
    let mut heads: Vec<Option<Item>> = Vec::with_capacity(sources.len());
    for source in &mut sources {
        heads.push(source.next_item()?);
    }
    loop {
        // The source with the smallest head, and the smallest head among
        // the others (the bound up to which the first can be emitted).
        let mut best: Option<(usize, (i64, i64))> = None;
        let mut second: Option<(usize, (i64, i64))> = None;
        for (index, head) in heads.iter().enumerate() {
            let Some(item) = head else { continue };
            let key = item.head();
            match best {
                Some((_, best_key)) if key >= best_key => {
                    if second.is_none_or(|(_, second_key)| key < second_key) {
                        second = Some((index, key));
                    }
                }
                _ => {
                    second = best;
                    best = Some((index, key));
                }
            }
        }
        let Some((index, _)) = best else {
            return Ok(());
        };
        // Whether `point` of source `index` comes before every other head.
        let before_second = |point: (i64, i64)| match second {
            None => true,
            Some((other, bound)) => point < bound || (point == bound && index < other),
        };
        let block = match heads[index].take() {
            None => return Ok(()),
            Some(Item::Summary(aggregate)) => {
                if !before_second(aggregate.last.position()) {
                    return Err(ScalarError::Aggregates(
                        "a summarised block overlaps another source".into(),
                    ));
                }
                if !sink.block(&aggregate)? {
                    return Ok(());
                }
                heads[index] = sources[index].next_item()?;
                continue;
            }
            Some(Item::Rows(block)) => block,
        };
        let take = if second.is_none() {
            block.len()
        } else {
            let mut low = 0;
            let mut high = block.len();
            while low < high {
                let middle = (low + high) / 2;
                if before_second(block.position(middle)) {
                    low = middle + 1;
                } else {
                    high = middle;
                }
            }
            low.max(1)
        };
        let keep_going = sink.slice(
            &block.steps[..take],
            &block.timestamps[..take],
            &block.values[..take],
        )?;
        if !keep_going {
            return Ok(());
        }
        heads[index] = if take < block.len() {
            Some(Item::Rows(block.slice(take, block.len() - take)))
        } else {
            sources[index].next_item()?
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MetricFileWriter, SortedColumns};
    use std::path::Path;

    fn write_file(dir: &Path, seq: u64, points: &[(&str, i64, i64, f64)]) -> Arc<PersistedFile> {
        let columns = SortedColumns::from_points(points.iter().copied());
        let path = dir.join(format!("{seq:08}.parquet"));
        let mut writer = MetricFileWriter::create(&path).unwrap();
        writer.write(columns).unwrap();
        writer.finish(vec![(seq, seq)], vec![]).unwrap();
        Arc::new(PersistedFile::open(seq, &path).unwrap().0)
    }

    fn read_all(snapshot: &SeriesSnapshot, bounds: StepBounds) -> MetricSeries {
        let mut out = MetricSeries::default();
        snapshot
            .for_each_slice(bounds, &mut |steps, times, values| {
                out.steps.extend_from_slice(steps);
                out.timestamps.extend_from_slice(times);
                out.values.extend_from_slice(values);
                Ok(true)
            })
            .unwrap();
        out
    }

    #[test]
    fn a_block_that_disagrees_with_its_aggregate_is_read_without_them_from_where_the_read_was() {
        let dir = tempfile::tempdir().unwrap();
        let mut points: Vec<(&str, i64, i64, f64)> =
            (0..5_000).map(|step| ("a", step, step, 0.0)).collect();
        points.extend((0..12_000).map(|step| ("k", step, 1_000 + step, step as f64)));
        let file = write_file(dir.path(), 1, &points);
        let snapshot = SeriesSnapshot::new("k", vec![Arc::clone(&file)], MetricSeries::default());
        let expected = read_all(&snapshot, StepBounds::default());
        assert_eq!(expected.steps, (0..12_000).collect::<Vec<i64>>());
        // The same points without the aggregates.
        assert_eq!(
            snapshot.collect_merged(StepBounds::default(), false),
            expected
        );
        // The key's second block (its rows from file row 8,192) now claims
        // a first point the file does not have: reading it fails once the
        // first block (3,192 points) has reached the sink.
        let cache = file.footer_cache();
        let mut footer = cache
            .get_or_load(file.path(), || {
                panic!("the footer was cached when the file was opened")
            })
            .unwrap();
        let mut aggregates = (*footer.aggregates.clone().unwrap()).clone();
        let key = aggregates
            .keys
            .iter_mut()
            .find(|key| key.key == "k")
            .unwrap();
        assert!(key.blocks.len() >= 3);
        key.blocks[1].first.timestamp += 1;
        footer.aggregates = Some(Arc::new(aggregates));
        cache.insert(file.path(), footer);
        let mut slices = 0;
        let mut read = MetricSeries::default();
        snapshot
            .for_each_slice(StepBounds::default(), &mut |steps, times, values| {
                slices += 1;
                read.steps.extend_from_slice(steps);
                read.timestamps.extend_from_slice(times);
                read.values.extend_from_slice(values);
                Ok(true)
            })
            .unwrap();
        assert_eq!(read, expected, "every point once, in order");
        assert!(slices >= 2, "the first block came through the aggregates");
        // A planned read refuses the file, so its caller reads in full.
        let error = snapshot
            .plan_step_read(0, 11_999, 4, &|_, _| false)
            .unwrap()
            .run(&mut SlicesOnly(&mut |_, _, _| Ok(true)))
            .unwrap_err();
        assert!(matches!(error, ScalarError::Aggregates(_)), "{error}");
    }

    #[test]
    fn overlapping_files_and_buffers_merge_in_order_without_loss_or_doubles() {
        let dir = tempfile::tempdir().unwrap();
        // Steps 0..300 spread over three files and the buffer, overlapping:
        // file 1 has even steps, file 2 odd steps below 200, file 3 odd
        // steps from 200, the buffer a few late points logged out of order.
        let mut first = Vec::new();
        let mut second = Vec::new();
        let mut third = Vec::new();
        for step in 0..300i64 {
            let point = ("loss", step, 1000 + step, step as f64);
            if step % 2 == 0 && step != 100 {
                first.push(point);
                first.push(("other", step, 1000 + step, -1.0));
            } else if step < 200 && step != 100 {
                second.push(point);
            } else if step != 100 {
                third.push(point);
            }
        }
        let files = vec![
            write_file(dir.path(), 1, &first),
            write_file(dir.path(), 2, &second),
            write_file(dir.path(), 3, &third),
        ];
        let mut buffered = MetricSeries::default();
        buffered.push(300, 1300, 300.0);
        buffered.push(100, 1100, 100.0);
        let snapshot = SeriesSnapshot::new("loss", files, buffered);
        let all = read_all(&snapshot, StepBounds::default());
        assert_eq!(all.steps, (0..=300).collect::<Vec<_>>());
        assert_eq!(all.values, (0..=300).map(|s| s as f64).collect::<Vec<_>>());
        let middle = read_all(
            &snapshot,
            StepBounds {
                lower: Some(95),
                upper: Some(205),
            },
        );
        assert_eq!(middle.steps, (95..=205).collect::<Vec<_>>());
        assert!(
            read_all(
                &snapshot,
                StepBounds {
                    lower: Some(400),
                    upper: None
                }
            )
            .is_empty()
        );
    }

    #[test]
    fn ties_keep_file_then_buffer_order() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![
            write_file(dir.path(), 1, &[("k", 1, 5, 1.0), ("k", 2, 5, 2.0)]),
            write_file(dir.path(), 2, &[("k", 1, 5, 3.0)]),
        ];
        let mut buffered = MetricSeries::default();
        buffered.push(1, 5, 4.0);
        let snapshot = SeriesSnapshot::new("k", files, buffered);
        let merged = read_all(&snapshot, StepBounds::default());
        assert_eq!(merged.steps, vec![1, 1, 1, 2]);
        assert_eq!(
            merged.values,
            vec![1.0, 3.0, 4.0, 2.0],
            "files in order, then the buffer"
        );
    }
}
