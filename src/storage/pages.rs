//! Reads the step, timestamp and value columns of a metric file straight
//! from their data pages, for reads that want a few row ranges of a file
//! (the scalar API's planned reads).
//!
//! The writer ([`super::schema::writer_properties`]) encodes `step` and
//! `timestamp` as `DELTA_BINARY_PACKED` and `value` as `BYTE_STREAM_SPLIT`,
//! in pages of [`super::aggregates::BLOCK_ROWS`] rows with an offset index.
//! The Parquet library's generic decoders spend most of a downsampled read
//! on these encodings (its byte-stream split joins one byte at a time); the
//! decoders here are written for the two encodings (and `PLAIN`), and hand
//! out a page's rows without copying when a wanted range lies inside one
//! page. The library still parses the page headers and decompresses, and
//! every byte is read through the file's checksums ([`DataFile`]).
//!
//! [`PageRowReader::open`] says `None` for a file it cannot read this way
//! (no offset index, other encodings, another schema); the caller reads
//! such a file with the Arrow reader.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use arrow::buffer::ScalarBuffer;
use arrow::datatypes::ArrowNativeType;
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::page_index::offset_index::PageLocation;
use parquet::file::serialized_reader::SerializedPageReader;

use super::StorageError;
use super::checksums::DataFile;
use super::row_plan::{STEP_LEAF, TIMESTAMP_LEAF, VALUE_LEAF};

/// Rows of a metric file's numeric columns.
#[derive(Clone, Debug)]
pub struct ColumnRows {
    /// The steps.
    pub steps: ScalarBuffer<i64>,
    /// The timestamps, ms since the epoch.
    pub timestamps: ScalarBuffer<i64>,
    /// The values.
    pub values: ScalarBuffer<f64>,
}

impl ColumnRows {
    /// No rows.
    pub fn empty() -> ColumnRows {
        ColumnRows {
            steps: ScalarBuffer::from(Vec::<i64>::new()),
            timestamps: ScalarBuffer::from(Vec::<i64>::new()),
            values: ScalarBuffer::from(Vec::<f64>::new()),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// `length` rows from `offset`, sharing the buffers.
    pub fn slice(&self, offset: usize, length: usize) -> ColumnRows {
        ColumnRows {
            steps: self.steps.slice(offset, length),
            timestamps: self.timestamps.slice(offset, length),
            values: self.values.slice(offset, length),
        }
    }

    /// The rows `rows` (in range), copied.
    pub fn take(&self, rows: &[usize]) -> ColumnRows {
        ColumnRows {
            steps: rows.iter().map(|&row| self.steps[row]).collect(),
            timestamps: rows.iter().map(|&row| self.timestamps[row]).collect(),
            values: rows.iter().map(|&row| self.values[row]).collect(),
        }
    }
}

/// Reads row ranges of a metric file, in ascending order, page by page.
pub struct PageRowReader {
    steps: ColumnCursor<i64>,
    timestamps: ColumnCursor<i64>,
    values: ColumnCursor<f64>,
}

impl PageRowReader {
    /// A reader of `data`, whose footer is `metadata`; `None` when the file
    /// is not laid out as this reader expects (the Arrow reader reads it).
    pub fn open(data: DataFile, metadata: Arc<ParquetMetaData>) -> Option<PageRowReader> {
        if !readable(&metadata) {
            return None;
        }
        let data = Arc::new(data);
        let mut group_starts = Vec::with_capacity(metadata.num_row_groups() + 1);
        let mut start = 0u64;
        for group in metadata.row_groups() {
            group_starts.push(start);
            start += u64::try_from(group.num_rows()).ok()?;
        }
        group_starts.push(start);
        let groups: Arc<[u64]> = group_starts.into();
        Some(PageRowReader {
            steps: ColumnCursor::new(&data, &metadata, &groups, STEP_LEAF),
            timestamps: ColumnCursor::new(&data, &metadata, &groups, TIMESTAMP_LEAF),
            values: ColumnCursor::new(&data, &metadata, &groups, VALUE_LEAF),
        })
    }

    /// The file rows `rows` (file row numbers, counted across row groups).
    /// Blocking. Reads are quickest in ascending order: a page is decoded
    /// once while the reads stay in it.
    pub fn read(&mut self, rows: Range<u64>) -> Result<ColumnRows, StorageError> {
        Ok(ColumnRows {
            steps: self.steps.rows(rows.clone())?,
            timestamps: self.timestamps.rows(rows.clone())?,
            values: self.values.rows(rows)?,
        })
    }
}

/// Whether every row group has an offset index and the numeric columns
/// this reader decodes: required, not repeated, no dictionary, and only
/// encodings it knows.
fn readable(metadata: &ParquetMetaData) -> bool {
    let schema = metadata.file_metadata().schema_descr();
    if schema.num_columns() <= VALUE_LEAF {
        return false;
    }
    let leaves = [
        (STEP_LEAF, PhysicalType::INT64),
        (TIMESTAMP_LEAF, PhysicalType::INT64),
        (VALUE_LEAF, PhysicalType::DOUBLE),
    ];
    let flat = leaves.iter().all(|&(leaf, physical)| {
        let column = schema.column(leaf);
        column.max_def_level() == 0
            && column.max_rep_level() == 0
            && column.physical_type() == physical
    });
    flat && metadata
        .offset_index()
        .is_some_and(|offsets| offsets.len() == metadata.num_row_groups())
        && metadata
            .row_groups()
            .iter()
            .enumerate()
            .all(|(index, group)| {
                leaves.iter().all(|&(leaf, physical)| {
                    let column = group.column(leaf);
                    let known = column.encodings().all(|encoding| {
                        matches!(encoding, Encoding::PLAIN | Encoding::RLE)
                            || encoding == writer_encoding(physical)
                    });
                    column.dictionary_page_offset().is_none()
                        && known
                        && page_locations(metadata, index, leaf).is_some()
                })
            })
}

/// A type a column's pages decode to.
trait PageValue: ArrowNativeType {
    /// Decodes `count` values encoded as `encoding`.
    fn decode(encoding: Encoding, bytes: &[u8], count: usize) -> Result<Vec<Self>, String>;
}

/// The encoding the writer gives a numeric column of type `physical`.
fn writer_encoding(physical: PhysicalType) -> Encoding {
    if physical == PhysicalType::DOUBLE {
        Encoding::BYTE_STREAM_SPLIT
    } else {
        Encoding::DELTA_BINARY_PACKED
    }
}

impl PageValue for i64 {
    fn decode(encoding: Encoding, bytes: &[u8], count: usize) -> Result<Vec<i64>, String> {
        match encoding {
            Encoding::PLAIN => plain(bytes, count, i64::from_le_bytes),
            Encoding::DELTA_BINARY_PACKED => decode_delta(bytes, count),
            other => Err(format!("an int64 page encoded as {other}")),
        }
    }
}

impl PageValue for f64 {
    fn decode(encoding: Encoding, bytes: &[u8], count: usize) -> Result<Vec<f64>, String> {
        match encoding {
            Encoding::PLAIN => plain(bytes, count, f64::from_le_bytes),
            Encoding::BYTE_STREAM_SPLIT => decode_split(bytes, count),
            other => Err(format!("a double page encoded as {other}")),
        }
    }
}

/// The page reader of one column chunk, and where it stands.
struct OpenChunk {
    group: usize,
    reader: SerializedPageReader<DataFile>,
    /// The page `reader` gives next.
    next_page: usize,
}

/// One column of a file, read page by page.
struct ColumnCursor<T: PageValue> {
    data: Arc<DataFile>,
    metadata: Arc<ParquetMetaData>,
    /// The first file row of every row group, and the file's row count.
    group_starts: Arc<[u64]>,
    leaf: usize,
    open: Option<OpenChunk>,
    /// The decoded page: its file rows and values.
    page: Option<(Range<u64>, ScalarBuffer<T>)>,
}

impl<T: PageValue> ColumnCursor<T> {
    fn new(
        data: &Arc<DataFile>,
        metadata: &Arc<ParquetMetaData>,
        group_starts: &Arc<[u64]>,
        leaf: usize,
    ) -> Self {
        ColumnCursor {
            data: Arc::clone(data),
            metadata: Arc::clone(metadata),
            group_starts: Arc::clone(group_starts),
            leaf,
            open: None,
            page: None,
        }
    }

    fn path(&self) -> &Path {
        self.data.path()
    }

    fn invalid(&self, reason: String) -> StorageError {
        StorageError::Metadata {
            path: self.path().to_path_buf(),
            reason,
        }
    }

    /// The values of file rows `rows`: a slice of one decoded page when
    /// the rows lie in one, else a copy.
    fn rows(&mut self, rows: Range<u64>) -> Result<ScalarBuffer<T>, StorageError> {
        let mut copied: Option<Vec<T>> = None;
        let mut row = rows.start;
        while row < rows.end {
            let (page_rows, values) = self.page_holding(row)?;
            let start = (row - page_rows.start) as usize;
            let end = (rows.end.min(page_rows.end) - page_rows.start) as usize;
            if copied.is_none() && rows.end <= page_rows.end {
                return Ok(values.slice(start, end - start));
            }
            copied
                .get_or_insert_with(|| Vec::with_capacity((rows.end - rows.start) as usize))
                .extend_from_slice(&values[start..end]);
            row = page_rows.end;
        }
        Ok(ScalarBuffer::from(copied.unwrap_or_default()))
    }

    /// The decoded page holding file row `row`.
    fn page_holding(&mut self, row: u64) -> Result<(Range<u64>, ScalarBuffer<T>), StorageError> {
        if let Some((rows, values)) = &self.page
            && rows.contains(&row)
        {
            return Ok((rows.clone(), values.clone()));
        }
        let total = self.group_starts.last().copied().unwrap_or(0);
        if row >= total {
            return Err(self.invalid(format!("row {row} is past the file's {total} rows")));
        }
        let group = self.group_starts.partition_point(|&start| start <= row) - 1;
        let group_start = self.group_starts[group];
        let group_end = self.group_starts[group + 1];
        let metadata = Arc::clone(&self.metadata);
        let locations = page_locations(&metadata, group, self.leaf)
            .ok_or_else(|| self.invalid(format!("row group {group} has no offset index")))?;
        let within = (row - group_start) as i64;
        let page = locations
            .partition_point(|location| location.first_row_index <= within)
            .saturating_sub(1);
        let first = group_start + u64::try_from(locations[page].first_row_index).unwrap_or(0);
        let end = locations.get(page + 1).map_or(group_end, |next| {
            group_start + u64::try_from(next.first_row_index).unwrap_or(0)
        });
        // The chunk's reader, unless the read moved to another row group or
        // went back: then the chunk is started again.
        let mut open = match self.open.take() {
            Some(open) if open.group == group && open.next_page <= page => open,
            _ => self.open_chunk(group, locations.to_vec())?,
        };
        let parquet = |source| StorageError::parquet(self.data.path(), source);
        while open.next_page < page {
            open.reader.skip_next_page().map_err(parquet)?;
            open.next_page += 1;
        }
        let page_data = open.reader.get_next_page().map_err(parquet)?;
        open.next_page += 1;
        self.open = Some(open);
        if first > row || end <= row || end > group_end {
            return Err(self.invalid(format!(
                "the offset index of column {} puts row {row} in rows {first}..{end}",
                self.leaf
            )));
        }
        let expected = (end - first) as usize;
        let (buffer, encoding, count) = match page_data {
            Some(Page::DataPage {
                buf,
                num_values,
                encoding,
                ..
            }) => (buf, encoding, num_values as usize),
            Some(Page::DataPageV2 {
                buf,
                num_values,
                encoding,
                def_levels_byte_len,
                rep_levels_byte_len,
                ..
            }) => {
                let levels = (def_levels_byte_len + rep_levels_byte_len) as usize;
                if levels > buf.len() {
                    return Err(self.invalid("a data page's levels pass its end".into()));
                }
                (buf.slice(levels..), encoding, num_values as usize)
            }
            Some(Page::DictionaryPage { .. }) | None => {
                return Err(self.invalid(format!(
                    "column {} has no data page where its offset index puts one",
                    self.leaf
                )));
            }
        };
        if count != expected {
            return Err(self.invalid(format!(
                "a page of column {} holds {count} values, its offset index says {expected} rows",
                self.leaf
            )));
        }
        let values = T::decode(encoding, &buffer, count)
            .map_err(|reason| self.invalid(format!("a page of column {}: {reason}", self.leaf)))?;
        let values = ScalarBuffer::from(values);
        self.page = Some((first..end, values.clone()));
        Ok((first..end, values))
    }

    fn open_chunk(
        &self,
        group: usize,
        locations: Vec<PageLocation>,
    ) -> Result<OpenChunk, StorageError> {
        let column = self.metadata.row_group(group).column(self.leaf);
        let rows = self.group_starts[group + 1] - self.group_starts[group];
        let reader = SerializedPageReader::new(
            Arc::clone(&self.data),
            column,
            rows as usize,
            Some(locations),
        )
        .map_err(|source| StorageError::parquet(self.path(), source))?;
        Ok(OpenChunk {
            group,
            reader,
            next_page: 0,
        })
    }
}

/// The offset index of leaf column `leaf` in row group `group`, when it
/// has one.
fn page_locations(
    metadata: &ParquetMetaData,
    group: usize,
    leaf: usize,
) -> Option<&[PageLocation]> {
    metadata
        .offset_index()?
        .get(group)?
        .get(leaf)
        .map(|index| index.page_locations().as_slice())
        .filter(|locations| !locations.is_empty())
}

/// `count` fixed-width little-endian values.
fn plain<T, const N: usize>(
    bytes: &[u8],
    count: usize,
    from_bytes: fn([u8; N]) -> T,
) -> Result<Vec<T>, String> {
    let needed = count
        .checked_mul(N)
        .ok_or_else(|| "too many values".to_string())?;
    let bytes = bytes.get(..needed).ok_or_else(|| {
        format!(
            "{count} plain values need {needed} bytes, the page has {}",
            bytes.len()
        )
    })?;
    Ok(bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut word = [0u8; N];
            word.copy_from_slice(chunk);
            from_bytes(word)
        })
        .collect())
}

/// `count` doubles in `BYTE_STREAM_SPLIT`: byte `k` of every value in
/// stream `k`, each stream `count` bytes long.
fn decode_split(bytes: &[u8], count: usize) -> Result<Vec<f64>, String> {
    if bytes.len() != count.saturating_mul(8) {
        return Err(format!(
            "{count} byte-stream-split doubles need {} bytes, the page has {}",
            count.saturating_mul(8),
            bytes.len()
        ));
    }
    let streams: [&[u8]; 8] =
        std::array::from_fn(|stream| &bytes[stream * count..(stream + 1) * count]);
    let mut out = vec![0f64; count];
    let mut chunks = out.chunks_exact_mut(8);
    for (index, chunk) in chunks.by_ref().enumerate() {
        // Eight bytes of each stream form an 8 x 8 byte matrix whose
        // transpose is eight values.
        let start = index * 8;
        let mut rows = [0u64; 8];
        for (row, stream) in rows.iter_mut().zip(streams) {
            let mut word = [0u8; 8];
            word.copy_from_slice(&stream[start..start + 8]);
            *row = u64::from_le_bytes(word);
        }
        transpose_bytes(&mut rows);
        for (slot, row) in chunk.iter_mut().zip(rows) {
            *slot = f64::from_bits(row);
        }
    }
    let whole = count - count % 8;
    for (offset, slot) in chunks.into_remainder().iter_mut().enumerate() {
        *slot = f64::from_le_bytes(streams.map(|stream| stream[whole + offset]));
    }
    Ok(out)
}

/// Transposes the 8 x 8 byte matrix whose row `k` is `rows[k]` (byte `j`
/// of a row is column `j`): swaps off-diagonal blocks of 4, 2, then 1
/// bytes.
fn transpose_bytes(rows: &mut [u64; 8]) {
    const MASKS: [(usize, u32, u64); 3] = [
        (4, 32, 0x0000_0000_FFFF_FFFF),
        (2, 16, 0x0000_FFFF_0000_FFFF),
        (1, 8, 0x00FF_00FF_00FF_00FF),
    ];
    for (distance, shift, mask) in MASKS {
        for block in (0..8).step_by(2 * distance) {
            for row in block..block + distance {
                let swap = ((rows[row] >> shift) ^ rows[row + distance]) & mask;
                rows[row] ^= swap << shift;
                rows[row + distance] ^= swap;
            }
        }
    }
}

/// A cursor over the varints of a `DELTA_BINARY_PACKED` page.
struct Varints<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Varints<'_> {
    fn unsigned(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.position)
                .ok_or_else(|| "a delta page ends inside a number".to_string())?;
            self.position += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a delta page holds an overlong number".into())
    }

    fn signed(&mut self) -> Result<i64, String> {
        let zigzag = self.unsigned()?;
        Ok((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64))
    }
}

/// The most values a `DELTA_BINARY_PACKED` block may hold here.
const MAX_BLOCK_VALUES: usize = 1 << 20;

/// `count` int64 values in `DELTA_BINARY_PACKED`: a header (values per
/// block, miniblocks per block, value count, first value), then blocks of
/// a minimum delta, one bit width per miniblock, and the miniblocks'
/// deltas from the minimum, bit-packed least significant bit first.
fn decode_delta(bytes: &[u8], count: usize) -> Result<Vec<i64>, String> {
    let mut input = Varints { bytes, position: 0 };
    let block_values = usize::try_from(input.unsigned()?).map_err(|_| "block too large")?;
    let miniblocks = usize::try_from(input.unsigned()?).map_err(|_| "too many miniblocks")?;
    let total = input.unsigned()?;
    let first = input.signed()?;
    if total != count as u64 {
        return Err(format!(
            "a delta page holds {total} values where {count} were expected"
        ));
    }
    // Writers use blocks of 128 to a few thousand values; a larger header
    // is damage (and would overflow the sizes computed from it).
    if block_values > MAX_BLOCK_VALUES {
        return Err(format!("a delta page has blocks of {block_values} values"));
    }
    if miniblocks == 0 || block_values == 0 || block_values % miniblocks != 0 {
        return Err(format!(
            "a delta page has {miniblocks} miniblocks in blocks of {block_values} values"
        ));
    }
    let miniblock_values = block_values / miniblocks;
    if miniblock_values % 32 != 0 {
        return Err(format!(
            "a delta page has miniblocks of {miniblock_values} values"
        ));
    }
    let mut out = vec![0i64; count];
    let Some(head) = out.first_mut() else {
        return Ok(out);
    };
    *head = first;
    let mut last = first;
    let mut filled = 1;
    let mut remaining = count - 1;
    let mut deltas = [0u64; 32];
    while remaining > 0 {
        let min_delta = input.signed()?;
        let widths_at = input.position;
        input.position = input.position.saturating_add(miniblocks);
        if input.position > bytes.len() {
            return Err("a delta page ends inside a block header".into());
        }
        for miniblock in 0..miniblocks {
            if remaining == 0 {
                break;
            }
            let width = usize::from(bytes[widths_at + miniblock]);
            if width > 64 {
                return Err(format!("a delta page has a bit width of {width}"));
            }
            let packed_at = input.position;
            input.position = input.position.saturating_add(miniblock_values / 8 * width);
            for index in 0..miniblock_values / 32 {
                if remaining == 0 {
                    break;
                }
                let wanted = remaining.min(32);
                if width == 0 {
                    // No packed bytes: every delta is the minimum.
                    for slot in &mut out[filled..filled + wanted] {
                        last = last.wrapping_add(min_delta);
                        *slot = last;
                    }
                } else {
                    let start = packed_at.saturating_add(index * 4 * width);
                    let available = bytes.len().saturating_sub(start).min(4 * width);
                    if available * 8 < wanted * width {
                        return Err("a delta page ends inside a miniblock".into());
                    }
                    unpack32(bytes, start, width, &mut deltas);
                    for (slot, delta) in out[filled..filled + wanted].iter_mut().zip(deltas) {
                        last = last.wrapping_add(min_delta).wrapping_add(delta as i64);
                        *slot = last;
                    }
                }
                filled += wanted;
                remaining -= wanted;
            }
        }
    }
    Ok(out)
}

/// Unpacks the 32 values of `width` (1 to 64) bits packed least
/// significant bit first at `bytes[start..]` (bytes past the end read as
/// zero).
fn unpack32(bytes: &[u8], start: usize, width: usize, out: &mut [u64; 32]) {
    // Each value is read as a word of 8 (or, past 56 bits, 16) bytes from
    // the byte holding its first bit: the group and 16 bytes more.
    let reach = 4 * width + 16;
    if let Some(source) = bytes.get(start..start.saturating_add(reach)) {
        unpack_words(source, width, out);
    } else {
        let mut padded = [0u8; 4 * 64 + 16];
        let tail = bytes.get(start..).unwrap_or_default();
        let length = tail.len().min(4 * width);
        padded[..length].copy_from_slice(&tail[..length]);
        unpack_words(&padded, width, out);
    }
}

/// [`unpack32`] from `source`, which holds at least `4 * width + 16` bytes.
fn unpack_words(source: &[u8], width: usize, out: &mut [u64; 32]) {
    let mask = if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    if width <= 56 {
        for (index, slot) in out.iter_mut().enumerate() {
            let bit = index * width;
            let mut word = [0u8; 8];
            word.copy_from_slice(&source[bit / 8..bit / 8 + 8]);
            *slot = (u64::from_le_bytes(word) >> (bit % 8)) & mask;
        }
    } else {
        for (index, slot) in out.iter_mut().enumerate() {
            let bit = index * width;
            let mut word = [0u8; 16];
            word.copy_from_slice(&source[bit / 8..bit / 8 + 16]);
            *slot = (u128::from_le_bytes(word) >> (bit % 8)) as u64 & mask;
        }
    }
}

#[cfg(test)]
mod tests {

    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::storage::{PersistedFile, written_file as write};

    /// Every row of the numeric columns, read by the Arrow reader.
    fn arrow_rows(file: &PersistedFile) -> (Vec<i64>, Vec<i64>, Vec<f64>) {
        let (footer, data) = file.open_data().unwrap();
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(data, footer)
            .build()
            .unwrap();
        let (mut steps, mut timestamps, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for batch in reader {
            let batch = batch.unwrap();
            steps.extend(batch.column(1).as_primitive::<Int64Type>().values());
            timestamps.extend(
                batch
                    .column(2)
                    .as_primitive::<TimestampMillisecondType>()
                    .values(),
            );
            values.extend(batch.column(3).as_primitive::<Float64Type>().values());
        }
        (steps, timestamps, values)
    }

    fn page_reader(file: &PersistedFile) -> PageRowReader {
        let (footer, data) = file.open_data().unwrap();
        PageRowReader::open(data, Arc::clone(footer.metadata())).expect("a file stepstore wrote")
    }

    fn same_values(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// Random points of a few keys: steps with runs, gaps, repeats and
    /// jumps across the whole i64 range (64-bit deltas), timestamps with
    /// jitter, values with NaN, infinities and -0.0.
    fn random_points(
        rng: &mut SmallRng,
        keys: &[&'static str],
        rows: usize,
    ) -> Vec<(&'static str, i64, i64, f64)> {
        let mut step = rng.random_range(-1000..1000i64);
        let mut time = 1_700_000_000_000i64;
        (0..rows)
            .map(|_| {
                step = match rng.random_range(0..100) {
                    0 => i64::MIN + rng.random_range(0..10),
                    1 => i64::MAX - rng.random_range(0..10),
                    2..=5 => step,
                    6..=9 => step.wrapping_add(rng.random_range(2..1_000_000)),
                    _ => step.wrapping_add(1),
                };
                time += rng.random_range(-5..200);
                let value = match rng.random_range(0..50) {
                    0 => f64::NAN,
                    1 => f64::INFINITY,
                    2 => f64::NEG_INFINITY,
                    3 => -0.0,
                    _ => rng.random_range(-1e6..1e6),
                };
                (keys[rng.random_range(0..keys.len())], step, time, value)
            })
            .collect()
    }

    #[test]
    fn ranges_read_from_the_pages_match_the_arrow_reader() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        // Past one row group (256 Ki rows), so ranges cross row groups too.
        let points = random_points(&mut rng, &["a", "b/loss", "c"], 300_000);
        let file = write(&dir.path().join("00000001.parquet"), &points);
        let (steps, timestamps, values) = arrow_rows(&file);
        let total = steps.len() as u64;
        let mut reader = page_reader(&file);
        let mut start = 0u64;
        let mut checked = 0;
        while start < total {
            let length = match rng.random_range(0..4) {
                0 => rng.random_range(1..10),
                1 => rng.random_range(1..5_000),
                2 => 4096 - start % 4096,
                _ => rng.random_range(1..40_000),
            };
            let end = (start + length).min(total);
            let rows = reader.read(start..end).unwrap();
            let range = start as usize..end as usize;
            assert_eq!(&rows.steps[..], &steps[range.clone()], "steps {range:?}");
            assert_eq!(
                &rows.timestamps[..],
                &timestamps[range.clone()],
                "timestamps {range:?}"
            );
            assert!(
                same_values(&rows.values, &values[range.clone()]),
                "values {range:?}"
            );
            checked += 1;
            // Skip ahead now and then (pages unread), and sometimes go back.
            start = match rng.random_range(0..10) {
                0 => end + rng.random_range(0..50_000),
                1 => start / 2,
                _ => end,
            };
        }
        assert!(checked > 20);
        // Reading past the end is an error, not a panic.
        let error = reader.read(total..total + 1).unwrap_err().to_string();
        assert!(error.contains("past the file"), "{error}");
    }

    #[test]
    fn constant_and_extreme_columns_decode() {
        let dir = tempfile::tempdir().unwrap();
        // Dense steps and regular timestamps (bit width 0), then steps
        // swinging between the ends of i64 (bit width 64).
        let mut points: Vec<(&str, i64, i64, f64)> = (0..10_000)
            .map(|step| ("k", step, 1000 + step * 10, step as f64))
            .collect();
        points.extend((0..100).map(|index| {
            let step = if index % 2 == 0 { i64::MIN } else { i64::MAX };
            ("z", step, index, f64::MAX)
        }));
        let file = write(&dir.path().join("00000001.parquet"), &points);
        let (steps, timestamps, values) = arrow_rows(&file);
        let rows = page_reader(&file).read(0..steps.len() as u64).unwrap();
        assert_eq!(&rows.steps[..], &steps[..]);
        assert_eq!(&rows.timestamps[..], &timestamps[..]);
        assert!(same_values(&rows.values, &values));
    }

    #[test]
    fn byte_stream_split_matches_a_byte_by_byte_join() {
        let mut rng = SmallRng::seed_from_u64(5);
        for count in [0, 1, 7, 8, 9, 63, 64, 65, 4096, 4099] {
            let bytes: Vec<u8> = (0..count * 8).map(|_| rng.random()).collect();
            let expected: Vec<u64> = (0..count)
                .map(|index| {
                    let word: [u8; 8] = std::array::from_fn(|stream| bytes[stream * count + index]);
                    u64::from_le_bytes(word)
                })
                .collect();
            let decoded: Vec<u64> = decode_split(&bytes, count)
                .unwrap()
                .iter()
                .map(|value| value.to_bits())
                .collect();
            assert_eq!(decoded, expected, "{count} values");
        }
    }

    #[test]
    fn bit_unpacking_matches_a_bit_by_bit_reading() {
        let mut rng = SmallRng::seed_from_u64(9);
        for width in 1..=64usize {
            let bytes: Vec<u8> = (0..4 * width + 3).map(|_| rng.random()).collect();
            let bit = |index: usize| u64::from(bytes[index / 8] >> (index % 8) & 1);
            let expected: Vec<u64> = (0..32)
                .map(|value| (0..width).map(|b| bit(value * width + b) << b).sum())
                .collect();
            // From a long buffer, and from one that ends with the group.
            for source in [&bytes[..], &bytes[..4 * width]] {
                let mut out = [0u64; 32];
                unpack32(source, 0, width, &mut out);
                assert_eq!(out.to_vec(), expected, "width {width}");
            }
        }
    }

    #[test]
    fn damaged_delta_pages_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = SmallRng::seed_from_u64(3);
        let points = random_points(&mut rng, &["k"], 5_000);
        let file = write(&dir.path().join("00000001.parquet"), &points);
        let (footer, data) = file.open_data().unwrap();
        let metadata = footer.metadata();
        let column = metadata.row_group(0).column(STEP_LEAF);
        let mut pages = SerializedPageReader::new(Arc::new(data), column, 5_000, None).unwrap();
        let Some(Page::DataPage {
            buf,
            num_values,
            encoding,
            ..
        }) = pages.get_next_page().unwrap()
        else {
            panic!("a v1 data page first");
        };
        assert_eq!(encoding, Encoding::DELTA_BINARY_PACKED);
        let count = num_values as usize;
        let whole = decode_delta(&buf, count).unwrap();
        assert_eq!(whole.len(), count);
        // Every cut of the page is refused, except cuts in the last
        // miniblock's padding, which lose nothing; random damage is refused
        // or decodes to as many values. Nothing panics.
        let mut refused = 0;
        for cut in 0..buf.len() {
            match decode_delta(&buf[..cut], count) {
                Ok(decoded) => assert_eq!(decoded, whole, "cut at {cut}"),
                Err(_) => refused += 1,
            }
        }
        assert!(
            refused > buf.len() * 9 / 10,
            "{refused} of {} cuts refused",
            buf.len()
        );
        for _ in 0..2_000 {
            let mut damaged = buf.to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..damaged.len());
                damaged[at] = rng.random();
            }
            if let Ok(decoded) = decode_delta(&damaged, count) {
                assert_eq!(decoded.len(), count);
            }
        }
        assert!(decode_delta(&buf, count + 1).is_err());
        // A header claiming blocks of 2^63 values is refused, not overflowed.
        let mut huge = vec![0x80u8; 9];
        huge.push(0x01);
        huge.extend_from_slice(&[0x04, 0x01, 0x00]);
        let error = decode_delta(&huge, 1).unwrap_err();
        assert!(error.contains("blocks of"), "{error}");
        assert!(decode_split(&[0; 15], 2).is_err());
        assert!(decode_split(&[0; 16], 1).is_err());
        assert!(plain(&[0u8; 15], 2, i64::from_le_bytes).is_err());
    }
}
