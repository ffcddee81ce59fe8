//! Per-run metric buffers: the active buffer (Arrow builders that take new
//! points) and frozen chunks (its finished arrays, immutable, waiting to be
//! persisted). Key ids are the run's own dictionary ids.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayBuilder, ArrayRef, DictionaryArray, Float64Array, Float64Builder, Int32Array, Int64Array,
    Int64Builder, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array, UInt32Builder,
};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::Int32Type;
use arrow::error::ArrowError;

use crate::model::MetricSeries;
use crate::storage::SortedColumns;
use crate::storage::schema::{TIMEZONE, metric_file_schema};
use crate::wal::Lsn;

/// Bytes one buffered point takes at least (key id, step, timestamp,
/// value); buffers count what their columns really hold allocated.
pub const BYTES_PER_POINT: u64 = 4 + 8 + 8 + 8;

/// The buffer new points of a run go to.
pub struct ActiveBuffer {
    key_ids: UInt32Builder,
    steps: Int64Builder,
    timestamps: Int64Builder,
    values: Float64Builder,
    first_lsn: Option<Lsn>,
    last_lsn: Lsn,
    opened_at: Option<Instant>,
}

impl Default for ActiveBuffer {
    /// An empty buffer that allocates nothing until its first point (a
    /// builder's default capacity, 1,024 rows per column, would cost 28 KiB
    /// for each of thousands of idle runs).
    fn default() -> Self {
        ActiveBuffer {
            key_ids: UInt32Builder::with_capacity(0),
            steps: Int64Builder::with_capacity(0),
            timestamps: Int64Builder::with_capacity(0),
            values: Float64Builder::with_capacity(0),
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
        self.key_ids.append_slice(key_ids);
        self.steps.append_slice(steps);
        self.timestamps.append_slice(timestamps);
        self.values.append_slice(values);
    }

    /// Buffered points.
    pub fn rows(&self) -> usize {
        self.steps.len()
    }

    /// Bytes the columns hold allocated (capacity, not just the rows used:
    /// builders grow by doubling).
    pub fn bytes(&self) -> u64 {
        (self.key_ids.capacity() * 4
            + self.steps.capacity() * 8
            + self.timestamps.capacity() * 8
            + self.values.capacity() * 8) as u64
    }

    /// LSN of the oldest record buffered, if any.
    pub fn first_lsn(&self) -> Option<Lsn> {
        self.first_lsn
    }

    /// When the first buffered point arrived.
    pub fn opened_at(&self) -> Option<Instant> {
        self.opened_at
    }

    /// Copies the points of run key `key_id` into `out`.
    pub fn collect_key(&self, key_id: u32, out: &mut MetricSeries) {
        let steps = self.steps.values_slice();
        let timestamps = self.timestamps.values_slice();
        let values = self.values.values_slice();
        let ids = self.key_ids.values_slice();
        // Reserve exactly: a key of a large buffer would otherwise grow
        // its columns by doubling (twice the memory, and copies).
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

    /// A copy of every buffered point, for a read that must see them all.
    pub fn copy_points(&self, key_names: Arc<Vec<String>>) -> BufferedPoints {
        BufferedPoints {
            key_names,
            key_ids: self.key_ids.values_slice().to_vec(),
            steps: self.steps.values_slice().to_vec(),
            timestamps: self.timestamps.values_slice().to_vec(),
            values: self.values.values_slice().to_vec(),
        }
    }

    /// Finishes the builders into an immutable chunk and empties the buffer.
    /// `key_names` is the run's dictionary at this moment.
    pub fn freeze(&mut self, chunk_id: u64, key_names: Arc<Vec<String>>) -> Option<FrozenChunk> {
        let first_lsn = self.first_lsn.take()?;
        self.opened_at = None;
        let bytes = self.bytes();
        Some(FrozenChunk {
            id: chunk_id,
            bytes,
            key_names,
            key_ids: self.key_ids.finish(),
            steps: self.steps.finish(),
            timestamps: self.timestamps.finish(),
            values: self.values.finish(),
            lsn_range: (first_lsn, self.last_lsn),
        })
    }
}

/// A frozen buffer: immutable arrays waiting to be written to a file.
#[derive(Debug)]
pub struct FrozenChunk {
    id: u64,
    bytes: u64,
    key_names: Arc<Vec<String>>,
    key_ids: UInt32Array,
    steps: Int64Array,
    timestamps: Int64Array,
    values: Float64Array,
    lsn_range: (Lsn, Lsn),
}

impl FrozenChunk {
    /// Its id within the shard.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Number of points.
    pub fn rows(&self) -> usize {
        self.steps.len()
    }

    /// Bytes its columns hold allocated (what the active buffer held when
    /// it was frozen).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// First and last LSN of the records it holds.
    pub fn lsn_range(&self) -> (Lsn, Lsn) {
        self.lsn_range
    }

    /// Copies the points of run key `key_id` into `out`.
    pub fn collect_key(&self, key_id: u32, out: &mut MetricSeries) {
        let steps = self.steps.values();
        let timestamps = self.timestamps.values();
        let values = self.values.values();
        for (row, &id) in self.key_ids.values().iter().enumerate() {
            if id == key_id {
                out.push(steps[row], timestamps[row], values[row]);
            }
        }
    }

    /// The points, in logged order, as a batch in the metric file schema
    /// ([`metric_file_schema`]). Shares the chunk's step and value buffers.
    pub fn to_record_batch(&self) -> Result<RecordBatch, ArrowError> {
        points_batch(
            &self.key_names,
            self.key_ids.values(),
            self.steps.values().clone(),
            self.timestamps.values().clone(),
            self.values.values().clone(),
        )
    }

    /// The points in file order.
    pub fn to_sorted_columns(&self) -> SortedColumns {
        SortedColumns::from_logged_order(
            &self.key_names,
            self.key_ids.values(),
            self.steps.values(),
            self.timestamps.values(),
            self.values.values(),
        )
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
    fn an_empty_buffer_allocates_nothing() {
        let mut buffer = ActiveBuffer::default();
        assert_eq!(buffer.bytes(), 0);
        buffer.append(1, &[0; 100], &[1; 100], &[2; 100], &[0.5; 100]);
        assert!(buffer.bytes() >= 100 * BYTES_PER_POINT);
        assert!(buffer.bytes() <= 2 * 128 * BYTES_PER_POINT);
    }

    #[test]
    fn freeze_moves_points_into_a_chunk_and_empties_the_buffer() {
        let mut buffer = ActiveBuffer::default();
        buffer.append(7, &[0, 1], &[1, 1], &[10, 10], &[0.5, 0.25]);
        buffer.append(9, &[0], &[0], &[11], &[f64::NAN]);
        assert_eq!(buffer.rows(), 3);
        assert_eq!(buffer.first_lsn(), Some(7));
        let mut loss = MetricSeries::default();
        buffer.collect_key(0, &mut loss);
        assert_eq!(loss.steps, vec![1, 0]);
        let copy = buffer.copy_points(Arc::new(vec!["loss".to_string(), "acc".to_string()]));
        assert_eq!(copy.rows(), 3);
        let copied = copy.into_record_batch().unwrap();
        assert_eq!(copied.num_rows(), 3);
        assert_eq!(buffer.rows(), 3, "copying leaves the buffer as it was");

        let names = Arc::new(vec!["loss".to_string(), "acc".to_string()]);
        let held = buffer.bytes();
        assert!(held >= 3 * BYTES_PER_POINT, "{held} bytes for 3 points");
        let chunk = buffer.freeze(1, names).unwrap();
        assert_eq!(buffer.rows(), 0);
        assert_eq!(buffer.bytes(), 0, "a frozen buffer gives up its columns");
        assert_eq!(buffer.first_lsn(), None);
        assert!(buffer.freeze(2, Arc::new(vec![])).is_none());
        assert_eq!(chunk.lsn_range(), (7, 9));
        assert_eq!(chunk.bytes(), held, "the chunk takes over the memory");
        let batch = chunk.to_record_batch().unwrap();
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(batch.schema(), metric_file_schema());
        let sorted = chunk.to_sorted_columns();
        assert_eq!(sorted.keys, vec!["acc", "loss"]);
        assert_eq!(sorted.steps, vec![1, 0, 1]);
    }
}
