//! Per-run metric buffers: the active buffer (Arrow builders that take new
//! points) and frozen chunks (its finished arrays, immutable, waiting to be
//! persisted). Key ids are the run's own dictionary ids.
//!
//! The active buffer seals its rows into an immutable [`Segment`] every
//! [`SEGMENT_ROWS`] rows, so a reader shares them instead of copying: only
//! the unsealed tail is copied for a read. The first read of a segment
//! cuts each key's points in it into blocks of up to
//! [`BLOCK_ROWS`] points and keeps their aggregates
//! ([`crate::storage::aggregates`]), as a file's footer does, so that a
//! downsampled read need not visit every buffered point.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arrow::array::{
    ArrayBuilder, ArrayRef, DictionaryArray, Float64Array, Float64Builder, Int32Array, Int64Array,
    Int64Builder, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Builder,
};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::Int32Type;
use arrow::error::ArrowError;

use crate::model::MetricSeries;
use crate::storage::aggregates::BLOCK_ROWS;
use crate::storage::schema::{TIMEZONE, metric_file_schema};
use crate::storage::spill::SpillMember;
use crate::storage::{BlockAggregate, LoggedRows, SortedColumns, StorageError};
use crate::wal::Lsn;

/// Bytes one buffered point takes at least (key id, step, timestamp,
/// value); buffers count what their columns really hold allocated.
pub const BYTES_PER_POINT: u64 = 4 + 8 + 8 + 8;

/// Rows after which the active buffer seals its rows into a segment.
pub const SEGMENT_ROWS: usize = 64 * 1024;

/// Immutable buffered rows, in logged order.
#[derive(Debug)]
pub struct Segment {
    key_ids: ScalarBuffer<u32>,
    steps: ScalarBuffer<i64>,
    timestamps: ScalarBuffer<i64>,
    values: ScalarBuffer<f64>,
    blocks: OnceLock<HashMap<u32, Vec<SegmentBlock>>>,
}

/// Up to [`BLOCK_ROWS`] consecutive points of one key in a segment.
#[derive(Clone, Copy, Debug)]
pub struct SegmentBlock {
    /// First segment row of the block.
    pub start: u32,
    /// One past its last segment row (other keys' rows may lie between).
    pub end: u32,
    /// Points of the key in it.
    pub points: u32,
    /// Their aggregate, when they are in `(step, timestamp)` order.
    pub aggregate: Option<BlockAggregate>,
}

impl Segment {
    fn new(
        key_ids: ScalarBuffer<u32>,
        steps: ScalarBuffer<i64>,
        timestamps: ScalarBuffer<i64>,
        values: ScalarBuffer<f64>,
    ) -> Segment {
        Segment {
            key_ids,
            steps,
            timestamps,
            values,
            blocks: OnceLock::new(),
        }
    }

    /// Rows in the segment.
    pub fn rows(&self) -> usize {
        self.steps.len()
    }

    /// Its rows, column by column.
    pub fn logged_rows(&self) -> LoggedRows<'_> {
        LoggedRows {
            key_ids: &self.key_ids,
            steps: &self.steps,
            timestamps: &self.timestamps,
            values: &self.values,
        }
    }

    /// Copies the points of run key `key_id` into `out`.
    pub fn collect_key(&self, key_id: u32, out: &mut MetricSeries) {
        collect_rows(
            &self.key_ids,
            &self.steps,
            &self.timestamps,
            &self.values,
            key_id,
            out,
        );
    }

    /// The blocks of run key `key_id`, in logged order (computed for every
    /// key by the first call, then kept).
    pub fn key_blocks(&self, key_id: u32) -> &[SegmentBlock] {
        self.blocks
            .get_or_init(|| self.compute_blocks())
            .get(&key_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The points of `key_id` in a block's rows: `(steps, timestamps,
    /// values)`, shared when the block's rows hold no other key, else
    /// copied.
    pub fn block_points(
        &self,
        key_id: u32,
        block: &SegmentBlock,
    ) -> (ScalarBuffer<i64>, ScalarBuffer<i64>, ScalarBuffer<f64>) {
        let (start, end) = (block.start as usize, block.end as usize);
        if end - start == block.points as usize {
            return (
                self.steps.slice(start, end - start),
                self.timestamps.slice(start, end - start),
                self.values.slice(start, end - start),
            );
        }
        let mut series = MetricSeries::default();
        collect_rows(
            &self.key_ids[start..end],
            &self.steps[start..end],
            &self.timestamps[start..end],
            &self.values[start..end],
            key_id,
            &mut series,
        );
        (
            ScalarBuffer::from(series.steps),
            ScalarBuffer::from(series.timestamps),
            ScalarBuffer::from(series.values),
        )
    }

    fn compute_blocks(&self) -> HashMap<u32, Vec<SegmentBlock>> {
        let ids: &[u32] = &self.key_ids;
        let mut blocks: HashMap<u32, Vec<SegmentBlock>> = HashMap::new();
        let Some(&first_id) = ids.first() else {
            return blocks;
        };
        if ids.iter().all(|&id| id == first_id) {
            // One key: blocks are row ranges, nothing to gather.
            let mut list = Vec::with_capacity(ids.len().div_ceil(BLOCK_ROWS));
            for start in (0..ids.len()).step_by(BLOCK_ROWS) {
                let end = (start + BLOCK_ROWS).min(ids.len());
                list.push(self.block_of(start, end, None));
            }
            blocks.insert(first_id, list);
            return blocks;
        }
        let mut rows_by_key: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut last: Option<(u32, Vec<u32>)> = None;
        for (row, &id) in ids.iter().enumerate() {
            match &mut last {
                Some((last_id, rows)) if *last_id == id => rows.push(row as u32),
                _ => {
                    if let Some((last_id, rows)) = last.take() {
                        rows_by_key.insert(last_id, rows);
                    }
                    let mut rows = rows_by_key.remove(&id).unwrap_or_default();
                    rows.push(row as u32);
                    last = Some((id, rows));
                }
            }
        }
        if let Some((last_id, rows)) = last {
            rows_by_key.insert(last_id, rows);
        }
        for (id, rows) in rows_by_key {
            let list = rows
                .chunks(BLOCK_ROWS)
                .map(|chunk| {
                    let start = chunk[0] as usize;
                    let end = chunk[chunk.len() - 1] as usize + 1;
                    self.block_of(start, end, Some(chunk))
                })
                .collect();
            blocks.insert(id, list);
        }
        blocks
    }

    /// The block of segment rows `rows` within `[start, end)` (`None`:
    /// all of them).
    fn block_of(&self, start: usize, end: usize, rows: Option<&[u32]>) -> SegmentBlock {
        let (points, aggregate) = match rows {
            Some(rows) if rows.len() != end - start => {
                let pick = |column: &[i64]| -> Vec<i64> {
                    rows.iter().map(|&row| column[row as usize]).collect()
                };
                let values: Vec<f64> = rows.iter().map(|&row| self.values[row as usize]).collect();
                (
                    rows.len(),
                    sorted_aggregate(&pick(&self.steps), &pick(&self.timestamps), &values),
                )
            }
            _ => (
                end - start,
                sorted_aggregate(
                    &self.steps[start..end],
                    &self.timestamps[start..end],
                    &self.values[start..end],
                ),
            ),
        };
        SegmentBlock {
            start: start as u32,
            end: end as u32,
            points: points as u32,
            aggregate,
        }
    }
}

/// The aggregate of rows that are in `(step, timestamp)` order; `None`
/// when they are not.
fn sorted_aggregate(steps: &[i64], timestamps: &[i64], values: &[f64]) -> Option<BlockAggregate> {
    let sorted = steps
        .windows(2)
        .zip(timestamps.windows(2))
        .all(|(step, time)| (step[0], time[0]) <= (step[1], time[1]));
    if !sorted {
        return None;
    }
    BlockAggregate::of(steps, timestamps, values)
}

/// Appends the rows of `key_id` to `out`, reserving exactly.
fn collect_rows(
    ids: &[u32],
    steps: &[i64],
    timestamps: &[i64],
    values: &[f64],
    key_id: u32,
    out: &mut MetricSeries,
) {
    let count = ids.iter().filter(|&&id| id == key_id).count();
    out.steps.reserve(count);
    out.timestamps.reserve(count);
    out.values.reserve(count);
    for (row, &id) in ids.iter().enumerate() {
        if id == key_id {
            out.push(steps[row], timestamps[row], values[row]);
        }
    }
}

/// The buffer new points of a run go to: sealed segments and an unsealed
/// tail of builders.
pub struct ActiveBuffer {
    /// The unsealed tail's columns; `None` while the buffer is empty, so
    /// that an idle run keeps a pointer instead of four column builders.
    tail: Option<Box<Tail>>,
    sealed: Vec<Arc<Segment>>,
    sealed_rows: usize,
    sealed_bytes: u64,
    first_lsn: Option<Lsn>,
    last_lsn: Lsn,
    opened_at: Option<Instant>,
}

/// The columns of an active buffer's unsealed tail.
struct Tail {
    key_ids: UInt32Builder,
    steps: Int64Builder,
    timestamps: Int64Builder,
    values: Float64Builder,
}

impl Tail {
    fn with_capacity(capacity: usize) -> Box<Tail> {
        Box::new(Tail {
            key_ids: UInt32Builder::with_capacity(capacity),
            steps: Int64Builder::with_capacity(capacity),
            timestamps: Int64Builder::with_capacity(capacity),
            values: Float64Builder::with_capacity(capacity),
        })
    }

    /// Bytes the columns hold allocated.
    fn bytes(&self) -> u64 {
        (self.key_ids.capacity() * 4
            + self.steps.capacity() * 8
            + self.timestamps.capacity() * 8
            + self.values.capacity() * 8) as u64
    }
}

impl Default for ActiveBuffer {
    /// An empty buffer that allocates nothing until its first point (a
    /// builder's default capacity, 1,024 rows per column, would cost 28 KiB
    /// for each of thousands of idle runs, and the four empty builders
    /// themselves about 500 bytes).
    fn default() -> Self {
        ActiveBuffer {
            tail: None,
            sealed: Vec::new(),
            sealed_rows: 0,
            sealed_bytes: 0,
            first_lsn: None,
            last_lsn: 0,
            opened_at: None,
        }
    }
}

impl ActiveBuffer {
    /// Appends the points of WAL record `lsn`; `key_ids` are run key ids.
    pub fn append(
        &mut self,
        lsn: Lsn,
        key_ids: &[u32],
        steps: &[i64],
        timestamps: &[i64],
        values: &[f64],
    ) {
        if self.first_lsn.is_none() {
            self.first_lsn = Some(lsn);
            self.opened_at = Some(Instant::now());
        }
        self.last_lsn = lsn;
        let tail = self.tail.get_or_insert_with(|| Tail::with_capacity(0));
        tail.key_ids.append_slice(key_ids);
        tail.steps.append_slice(steps);
        tail.timestamps.append_slice(timestamps);
        tail.values.append_slice(values);
        if tail.steps.len() >= SEGMENT_ROWS {
            self.seal(SEGMENT_ROWS);
        }
    }

    /// Moves the tail into a sealed segment; `capacity` is what the next
    /// tail reserves (none at 0: the tail goes).
    fn seal(&mut self, capacity: usize) {
        let Some(mut tail) = self.tail.take() else {
            return;
        };
        if tail.steps.is_empty() {
            self.tail = (capacity > 0).then_some(tail);
            return;
        }
        let rows = tail.steps.len();
        let bytes = tail.bytes();
        let key_ids = tail.key_ids.finish();
        let steps = tail.steps.finish();
        let timestamps = tail.timestamps.finish();
        let values = tail.values.finish();
        if capacity > 0 {
            self.tail = Some(Tail::with_capacity(capacity));
        }
        self.sealed.push(Arc::new(Segment::new(
            key_ids.values().clone(),
            steps.values().clone(),
            timestamps.values().clone(),
            values.values().clone(),
        )));
        self.sealed_rows += rows;
        self.sealed_bytes += bytes;
    }

    /// Bytes the unsealed tail's columns hold allocated.
    fn tail_bytes(&self) -> u64 {
        self.tail.as_ref().map_or(0, |tail| tail.bytes())
    }

    /// Buffered points.
    pub fn rows(&self) -> usize {
        self.sealed_rows + self.tail.as_ref().map_or(0, |tail| tail.steps.len())
    }

    /// The sealed segments, oldest first.
    pub fn sealed(&self) -> &[Arc<Segment>] {
        &self.sealed
    }

    /// Bytes the columns hold allocated (sealed segments and the tail's
    /// capacity, not just the rows used: builders grow by doubling).
    pub fn bytes(&self) -> u64 {
        self.sealed_bytes + self.tail_bytes()
    }

    /// LSN of the oldest record buffered, if any.
    pub fn first_lsn(&self) -> Option<Lsn> {
        self.first_lsn
    }

    /// When the first buffered point arrived.
    pub fn opened_at(&self) -> Option<Instant> {
        self.opened_at
    }

    /// Copies the points of run key `key_id` in the unsealed tail into
    /// `out` (the sealed segments are shared, see [`Self::sealed`]).
    pub fn collect_tail_key(&self, key_id: u32, out: &mut MetricSeries) {
        if let Some(tail) = &self.tail {
            collect_rows(
                tail.key_ids.values_slice(),
                tail.steps.values_slice(),
                tail.timestamps.values_slice(),
                tail.values.values_slice(),
                key_id,
                out,
            );
        }
    }

    /// A copy of every buffered point, for a read that must see them all.
    pub fn copy_points(&self, key_names: Arc<Vec<String>>) -> BufferedPoints {
        let rows = self.rows();
        let mut copy = BufferedPoints {
            key_names,
            key_ids: Vec::with_capacity(rows),
            steps: Vec::with_capacity(rows),
            timestamps: Vec::with_capacity(rows),
            values: Vec::with_capacity(rows),
        };
        let parts = self
            .sealed
            .iter()
            .map(|segment| {
                (
                    &segment.key_ids[..],
                    &segment.steps[..],
                    &segment.timestamps[..],
                    &segment.values[..],
                )
            })
            .chain(self.tail.iter().map(|tail| {
                (
                    tail.key_ids.values_slice(),
                    tail.steps.values_slice(),
                    tail.timestamps.values_slice(),
                    tail.values.values_slice(),
                )
            }));
        for (key_ids, steps, timestamps, values) in parts {
            copy.key_ids.extend_from_slice(key_ids);
            copy.steps.extend_from_slice(steps);
            copy.timestamps.extend_from_slice(timestamps);
            copy.values.extend_from_slice(values);
        }
        copy
    }

    /// Seals the tail and moves every segment into an immutable chunk,
    /// emptying the buffer. `key_names` is the run's dictionary at this
    /// moment.
    pub fn freeze(&mut self, chunk_id: u64, key_names: Arc<Vec<String>>) -> Option<FrozenChunk> {
        let first_lsn = self.first_lsn.take()?;
        let opened_at = self.opened_at.take();
        // The chunk carries the memory count of everything the buffer held,
        // including room an empty tail had reserved, which goes now (an
        // idle run would otherwise keep it, counted, for good).
        let bytes = self.bytes();
        self.seal(0);
        let rows = std::mem::take(&mut self.sealed_rows);
        self.sealed_bytes = 0;
        self.tail = None;
        let segments: Arc<[Arc<Segment>]> = std::mem::take(&mut self.sealed).into();
        Some(FrozenChunk {
            id: chunk_id,
            bytes,
            key_names,
            rows,
            lsn_range: (first_lsn, self.last_lsn),
            opened_at: opened_at.unwrap_or_else(Instant::now),
            data: Mutex::new(ChunkData::Memory(segments)),
        })
    }
}

/// A frozen buffer: immutable segments waiting to be written to a file,
/// in memory or moved to a spill file ([`crate::storage::spill`]) until
/// then.
#[derive(Debug)]
pub struct FrozenChunk {
    id: u64,
    bytes: u64,
    key_names: Arc<Vec<String>>,
    rows: usize,
    lsn_range: (Lsn, Lsn),
    opened_at: Instant,
    data: Mutex<ChunkData>,
}

/// Where a frozen chunk's rows are.
#[derive(Debug)]
enum ChunkData {
    /// In memory.
    Memory(Arc<[Arc<Segment>]>),
    /// In a spill file, read back for each use.
    Spilled(SpillMember),
}

impl FrozenChunk {
    /// Its id within the shard.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Number of points.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes its columns hold allocated (what the active buffer held when
    /// it was frozen), in memory until the chunk is spilled.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// First and last LSN of the records it holds.
    pub fn lsn_range(&self) -> (Lsn, Lsn) {
        self.lsn_range
    }

    /// When its oldest point arrived.
    pub fn opened_at(&self) -> Instant {
        self.opened_at
    }

    fn data(&self) -> std::sync::MutexGuard<'_, ChunkData> {
        // The lock guards a swap of two values, which cannot panic halfway.
        self.data
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether its rows are in a spill file, not in memory.
    pub fn is_spilled(&self) -> bool {
        matches!(*self.data(), ChunkData::Spilled(_))
    }

    /// Its segments when they are in memory.
    pub fn in_memory_segments(&self) -> Option<Arc<[Arc<Segment>]>> {
        match &*self.data() {
            ChunkData::Memory(segments) => Some(Arc::clone(segments)),
            ChunkData::Spilled(_) => None,
        }
    }

    /// Lets go of the in-memory rows: from now on they are read from
    /// `member`, which holds them (a reader that took the segments before
    /// keeps its copy).
    pub fn spilled_to(&self, member: SpillMember) {
        *self.data() = ChunkData::Spilled(member);
    }

    /// Its segments, oldest first: shared when in memory, read back from
    /// the spill file otherwise. Blocking.
    pub fn segments(&self) -> Result<Vec<Arc<Segment>>, StorageError> {
        let member = match &*self.data() {
            ChunkData::Memory(segments) => return Ok(segments.to_vec()),
            ChunkData::Spilled(member) => member.clone(),
        };
        let rows = member.read()?;
        let count = rows.steps.len();
        let key_ids = ScalarBuffer::from(rows.key_ids);
        let steps = ScalarBuffer::from(rows.steps);
        let timestamps = ScalarBuffer::from(rows.timestamps);
        let values = ScalarBuffer::from(rows.values);
        Ok((0..count)
            .step_by(SEGMENT_ROWS)
            .map(|start| {
                let length = SEGMENT_ROWS.min(count - start);
                Arc::new(Segment::new(
                    key_ids.slice(start, length),
                    steps.slice(start, length),
                    timestamps.slice(start, length),
                    values.slice(start, length),
                ))
            })
            .collect())
    }

    /// Copies the points of run key `key_id` into `out`. Blocking.
    pub fn collect_key(&self, key_id: u32, out: &mut MetricSeries) -> Result<(), StorageError> {
        for segment in self.segments()? {
            segment.collect_key(key_id, out);
        }
        Ok(())
    }

    /// The points, in logged order, as batches in the metric file schema
    /// ([`metric_file_schema`]), one per segment. Shares the chunk's step
    /// and value buffers. Blocking.
    pub fn to_record_batches(&self) -> Result<Vec<RecordBatch>, StorageError> {
        self.segments()?
            .iter()
            .map(|segment| {
                points_batch(
                    &self.key_names,
                    &segment.key_ids,
                    segment.steps.clone(),
                    segment.timestamps.clone(),
                    segment.values.clone(),
                )
                .map_err(|error| StorageError::Arrow(error.to_string()))
            })
            .collect()
    }

    /// The points of `chunks` (in logged order, of one run, with no rewind
    /// or fork between them) in file order, keyed by the newest chunk's
    /// dictionary (a run's dictionary only grows). Blocking.
    pub fn sorted_columns_of(chunks: &[Arc<FrozenChunk>]) -> Result<SortedColumns, StorageError> {
        let Some(newest) = chunks.last() else {
            return Ok(SortedColumns::default());
        };
        let mut segments = Vec::new();
        for chunk in chunks {
            segments.extend(chunk.segments()?);
        }
        let rows: Vec<LoggedRows<'_>> = segments
            .iter()
            .map(|segment| segment.logged_rows())
            .collect();
        Ok(SortedColumns::from_logged_segments(
            &newest.key_names,
            &rows,
        ))
    }
}

/// A copy of an active buffer's points, taken on its shard thread.
#[derive(Debug)]
pub struct BufferedPoints {
    key_names: Arc<Vec<String>>,
    key_ids: Vec<u32>,
    steps: Vec<i64>,
    timestamps: Vec<i64>,
    values: Vec<f64>,
}

impl BufferedPoints {
    /// Number of points.
    pub fn rows(&self) -> usize {
        self.steps.len()
    }

    /// The points, in logged order, as a batch in the metric file schema.
    pub fn into_record_batch(self) -> Result<RecordBatch, ArrowError> {
        points_batch(
            &self.key_names,
            &self.key_ids,
            ScalarBuffer::from(self.steps),
            ScalarBuffer::from(self.timestamps),
            ScalarBuffer::from(self.values),
        )
    }
}

/// Builds a batch in the metric file schema from run key ids and the run's
/// key dictionary.
fn points_batch(
    key_names: &[String],
    key_ids: &[u32],
    steps: ScalarBuffer<i64>,
    timestamps: ScalarBuffer<i64>,
    values: ScalarBuffer<f64>,
) -> Result<RecordBatch, ArrowError> {
    let mut keys = Vec::with_capacity(key_ids.len());
    for &id in key_ids {
        keys.push(i32::try_from(id).map_err(|_| {
            ArrowError::InvalidArgumentError(format!("key id {id} does not fit a dictionary"))
        })?);
    }
    let dictionary = StringArray::from_iter_values(key_names.iter());
    let key: ArrayRef = Arc::new(DictionaryArray::<Int32Type>::try_new(
        Int32Array::from(keys),
        Arc::new(dictionary),
    )?);
    let columns: Vec<ArrayRef> = vec![
        key,
        Arc::new(Int64Array::new(steps, None)),
        Arc::new(TimestampMillisecondArray::new(timestamps, None).with_timezone(TIMEZONE)),
        Arc::new(Float64Array::new(values, None)),
    ];
    RecordBatch::try_new(metric_file_schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_tails_seal_into_shared_segments_with_per_key_blocks() {
        let mut buffer = ActiveBuffer::default();
        let rows = SEGMENT_ROWS + 10;
        // Key 0 on even rows, key 1 on odd rows (key 1 out of order).
        let ids: Vec<u32> = (0..rows).map(|row| (row % 2) as u32).collect();
        let steps: Vec<i64> = (0..rows as i64)
            .map(|row| if row % 2 == 0 { row } else { -row })
            .collect();
        let values: Vec<f64> = steps.iter().map(|&step| step as f64).collect();
        buffer.append(1, &ids, &steps, &steps, &values);
        assert_eq!(buffer.sealed().len(), 1);
        assert_eq!(buffer.rows(), rows);
        let segment = Arc::clone(&buffer.sealed()[0]);
        assert_eq!(segment.rows(), rows);
        let even = segment.key_blocks(0);
        assert_eq!(even.len(), (rows / 2).div_ceil(BLOCK_ROWS));
        assert!(even.iter().all(|block| block.aggregate.is_some()));
        assert_eq!(even[1].start, 2 * BLOCK_ROWS as u32);
        let (block_steps, _, _) = segment.block_points(0, &even[1]);
        assert_eq!(block_steps.len(), BLOCK_ROWS);
        assert_eq!(block_steps[0], 2 * BLOCK_ROWS as i64);
        assert!(
            segment
                .key_blocks(1)
                .iter()
                .all(|block| block.aggregate.is_none()),
            "unsorted blocks have no aggregate"
        );
        assert!(segment.key_blocks(7).is_empty());
        let mut all = MetricSeries::default();
        segment.collect_key(0, &mut all);
        assert_eq!(all.len(), rows.div_ceil(2));
        let mut tail = MetricSeries::default();
        buffer.collect_tail_key(0, &mut tail);
        assert!(tail.is_empty(), "everything was sealed");
        buffer.append(2, &[0], &[1], &[1], &[1.0]);
        let chunk = Arc::new(
            buffer
                .freeze(1, Arc::new(vec!["a".into(), "b".into()]))
                .unwrap(),
        );
        assert_eq!(chunk.segments().unwrap().len(), 2);
        assert_eq!(chunk.rows(), rows + 1);
        let sorted = FrozenChunk::sorted_columns_of(std::slice::from_ref(&chunk)).unwrap();
        assert_eq!(sorted.len(), rows + 1);
        assert_eq!(chunk.to_record_batches().unwrap().len(), 2);
    }

    #[test]
    fn an_empty_buffer_allocates_nothing() {
        let mut buffer = ActiveBuffer::default();
        assert_eq!(buffer.bytes(), 0);
        buffer.append(1, &[0; 100], &[1; 100], &[2; 100], &[0.5; 100]);
        assert!(buffer.bytes() >= 100 * BYTES_PER_POINT);
        assert!(buffer.bytes() <= 2 * 128 * BYTES_PER_POINT);
    }

    #[test]
    fn sealing_keeps_the_memory_count() {
        let mut buffer = ActiveBuffer::default();
        let rows = SEGMENT_ROWS + 10;
        let ids = vec![0u32; rows];
        let steps: Vec<i64> = (0..rows as i64).collect();
        let values = vec![0.5; rows];
        buffer.append(1, &ids, &steps, &steps, &values);
        assert_eq!(buffer.sealed().len(), 1);
        let held = buffer.bytes();
        assert!(held >= rows as u64 * BYTES_PER_POINT);
        let chunk = buffer.freeze(1, Arc::new(vec!["a".into()])).unwrap();
        assert_eq!(chunk.bytes(), held);
        assert_eq!(buffer.bytes(), 0);
    }

    #[test]
    fn freeze_moves_points_into_a_chunk_and_empties_the_buffer() {
        let mut buffer = ActiveBuffer::default();
        buffer.append(7, &[0, 1], &[1, 1], &[10, 10], &[0.5, 0.25]);
        buffer.append(9, &[0], &[0], &[11], &[f64::NAN]);
        assert_eq!(buffer.rows(), 3);
        assert_eq!(buffer.first_lsn(), Some(7));
        let mut loss = MetricSeries::default();
        buffer.collect_tail_key(0, &mut loss);
        assert_eq!(loss.steps, vec![1, 0]);
        let copy = buffer.copy_points(Arc::new(vec!["loss".to_string(), "acc".to_string()]));
        assert_eq!(copy.rows(), 3);
        let copied = copy.into_record_batch().unwrap();
        assert_eq!(copied.num_rows(), 3);
        assert_eq!(buffer.rows(), 3, "copying leaves the buffer as it was");

        let names = Arc::new(vec!["loss".to_string(), "acc".to_string()]);
        let held = buffer.bytes();
        assert!(held >= 3 * BYTES_PER_POINT, "{held} bytes for 3 points");
        let chunk = Arc::new(buffer.freeze(1, names).unwrap());
        assert_eq!(buffer.rows(), 0);
        assert_eq!(buffer.bytes(), 0, "a frozen buffer gives up its columns");
        assert_eq!(buffer.first_lsn(), None);
        assert!(buffer.freeze(2, Arc::new(vec![])).is_none());
        assert_eq!(chunk.lsn_range(), (7, 9));
        assert_eq!(chunk.bytes(), held, "the chunk takes over the memory");
        let batches = chunk.to_record_batches().unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].num_rows(), 3);
        assert_eq!(batches[0].schema(), metric_file_schema());
        let sorted = FrozenChunk::sorted_columns_of(&[chunk]).unwrap();
        assert_eq!(sorted.keys, vec!["acc", "loss"]);
        assert_eq!(sorted.steps, vec![1, 0, 1]);
    }
}
