//! Per-block pre-aggregates of a metric file, kept in its footer so that a
//! downsampled read need not decode the blocks that fall wholly inside one
//! bucket.
//!
//! Each key's rows in a file (one sorted run) are cut into blocks at the
//! key's edges and at every multiple of [`BLOCK_ROWS`] file rows, which is
//! also the writer's data page size, so a block lies inside one data page
//! and decoding a block decodes one page per column. For every block the
//! footer keeps its row count, its count of NaN and infinite values, its
//! smallest and greatest timestamp, and the points a downsampling bucket
//! keeps: the first and last row (the block is sorted by step and
//! timestamp), the first row with the smallest and with the greatest value
//! (NaN ignored) and the first NaN row. Points carry their offset in the
//! block, so a reader can number them exactly as a full scan would.
//!
//! The aggregates are a binary table (little-endian, CRC32C-checked),
//! base64-encoded under the footer key [`AGGREGATES_KEY`]; about 160 bytes
//! per block. A file without them (written before they existed), or with
//! an entry that does not check out, is read by the full scan.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use parquet::file::metadata::KeyValue;

use crate::model::KeySummary;

/// Footer key holding the aggregates.
pub const AGGREGATES_KEY: &str = "stepstore.aggregates";
/// Rows per block (and per data page): blocks end at multiples of this many
/// file rows and at key edges.
pub const BLOCK_ROWS: usize = 4096;

const MAGIC: &[u8; 4] = b"SSAG";
const VERSION: u8 = 1;
const NO_POINT: u32 = u32::MAX;

/// One point of a block, with its offset in the block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockPoint {
    /// Row offset within the block.
    pub offset: u32,
    /// The step.
    pub step: i64,
    /// The timestamp, ms since the epoch.
    pub timestamp: i64,
    /// The value.
    pub value: f64,
}

impl BlockPoint {
    fn shifted(self, by: u32) -> BlockPoint {
        BlockPoint {
            offset: self.offset + by,
            ..self
        }
    }

    /// The `(step, timestamp)` position of the point.
    pub fn position(&self) -> (i64, i64) {
        (self.step, self.timestamp)
    }
}

/// What a downsampler needs of a block of consecutive rows sorted by
/// `(step, timestamp)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockAggregate {
    /// Rows in the block (at least one).
    pub rows: u32,
    /// NaN or infinite values.
    pub non_finite: u32,
    /// Smallest timestamp.
    pub min_timestamp: i64,
    /// Greatest timestamp.
    pub max_timestamp: i64,
    /// The first row.
    pub first: BlockPoint,
    /// The last row.
    pub last: BlockPoint,
    /// The first row holding the smallest value, NaN ignored (`None` when
    /// every value is NaN).
    pub min: Option<BlockPoint>,
    /// The first row holding the greatest value, NaN ignored.
    pub max: Option<BlockPoint>,
    /// The first NaN row.
    pub nan: Option<BlockPoint>,
}

impl BlockAggregate {
    /// The aggregate of rows in `(step, timestamp)` order; `None` when
    /// there are none. The slices must be equally long.
    pub fn of(steps: &[i64], timestamps: &[i64], values: &[f64]) -> Option<BlockAggregate> {
        let rows = steps.len().min(timestamps.len()).min(values.len());
        if rows == 0 || rows >= NO_POINT as usize {
            return None;
        }
        let point = |row: usize| BlockPoint {
            offset: row as u32,
            step: steps[row],
            timestamp: timestamps[row],
            value: values[row],
        };
        let mut aggregate = BlockAggregate {
            rows: rows as u32,
            non_finite: 0,
            min_timestamp: i64::MAX,
            max_timestamp: i64::MIN,
            first: point(0),
            last: point(rows - 1),
            min: None,
            max: None,
            nan: None,
        };
        let (mut min_row, mut max_row) = (usize::MAX, usize::MAX);
        let (mut min_value, mut max_value) = (f64::NAN, f64::NAN);
        for row in 0..rows {
            let value = values[row];
            let timestamp = timestamps[row];
            aggregate.min_timestamp = aggregate.min_timestamp.min(timestamp);
            aggregate.max_timestamp = aggregate.max_timestamp.max(timestamp);
            if !value.is_finite() {
                aggregate.non_finite += 1;
            }
            if value.is_nan() {
                if aggregate.nan.is_none() {
                    aggregate.nan = Some(point(row));
                }
                continue;
            }
            // Strictly smaller or greater replaces: ties keep the first row,
            // as a downsampling bucket does.
            if min_row == usize::MAX || value < min_value {
                min_row = row;
                min_value = value;
            }
            if max_row == usize::MAX || value > max_value {
                max_row = row;
                max_value = value;
            }
        }
        if min_row != usize::MAX {
            aggregate.min = Some(point(min_row));
            aggregate.max = Some(point(max_row));
        }
        Some(aggregate)
    }

    /// Extends the block with the rows of `next`, which follow it.
    pub fn append(&mut self, next: &BlockAggregate) {
        let by = self.rows;
        self.rows += next.rows;
        self.non_finite += next.non_finite;
        self.min_timestamp = self.min_timestamp.min(next.min_timestamp);
        self.max_timestamp = self.max_timestamp.max(next.max_timestamp);
        self.last = next.last.shifted(by);
        if let Some(candidate) = next.min
            && self.min.is_none_or(|min| candidate.value < min.value)
        {
            self.min = Some(candidate.shifted(by));
        }
        if let Some(candidate) = next.max
            && self.max.is_none_or(|max| candidate.value > max.value)
        {
            self.max = Some(candidate.shifted(by));
        }
        if self.nan.is_none() {
            self.nan = next.nan.map(|nan| nan.shifted(by));
        }
    }

    /// Whether the fields agree with each other (a check of data read from
    /// disk).
    fn is_consistent(&self) -> bool {
        let inside = |point: &BlockPoint| point.offset < self.rows;
        self.rows > 0
            && self.non_finite <= self.rows
            && self.first.offset == 0
            && self.last.offset == self.rows - 1
            && self.first.position() <= self.last.position()
            && self.min_timestamp <= self.max_timestamp
            && [self.min, self.max, self.nan].iter().flatten().all(inside)
            && self.min.is_some() == self.max.is_some()
            && self.nan.is_none_or(|nan| nan.value.is_nan())
            && self.min.is_none_or(|min| !min.value.is_nan())
            && self.max.is_none_or(|max| !max.value.is_nan())
    }
}

/// The blocks of one key in a file.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyAggregates {
    /// The key.
    pub key: String,
    /// File row of the key's first row.
    pub first_row: u64,
    /// Rows of the key.
    pub rows: u64,
    /// Its blocks, in row order.
    pub blocks: Vec<BlockAggregate>,
}

impl KeyAggregates {
    /// File row where each block starts, in block order.
    pub fn block_starts(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.iter().scan(self.first_row, |row, block| {
            let start = *row;
            *row += u64::from(block.rows);
            Some(start)
        })
    }
}

/// The aggregates of a whole file, in key order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileAggregates {
    /// Every key of the file, in key (and row) order.
    pub keys: Vec<KeyAggregates>,
}

impl FileAggregates {
    /// Adds rows of `key` that start at file row `first_row` and continue
    /// the file (a key may continue the previous call's key). Blocks end at
    /// multiples of [`BLOCK_ROWS`] file rows.
    pub fn add_rows(
        &mut self,
        key: &str,
        first_row: u64,
        steps: &[i64],
        timestamps: &[i64],
        values: &[f64],
    ) {
        if steps.is_empty() {
            return;
        }
        let continues = self
            .keys
            .last()
            .is_some_and(|last| last.key == key && last.first_row + last.rows == first_row);
        if !continues {
            self.keys.push(KeyAggregates {
                key: key.to_string(),
                first_row,
                rows: 0,
                blocks: Vec::new(),
            });
        }
        let Some(entry) = self.keys.last_mut() else {
            return;
        };
        let block_rows = BLOCK_ROWS as u64;
        let mut start = 0usize;
        while start < steps.len() {
            let row = first_row + start as u64;
            let to_edge = (block_rows - row % block_rows) as usize;
            let end = (start + to_edge).min(steps.len());
            let Some(aggregate) = BlockAggregate::of(
                &steps[start..end],
                &timestamps[start..end],
                &values[start..end],
            ) else {
                return;
            };
            // The open block of a continued key is filled up first.
            let open = entry.rows > 0 && !row.is_multiple_of(block_rows);
            match entry.blocks.last_mut() {
                Some(last) if open => last.append(&aggregate),
                _ => entry.blocks.push(aggregate),
            }
            entry.rows += (end - start) as u64;
            start = end;
        }
    }

    /// The aggregates of `key`, if the file holds it.
    pub fn key(&self, key: &str) -> Option<&KeyAggregates> {
        self.keys
            .binary_search_by(|entry| entry.key.as_str().cmp(key))
            .ok()
            .map(|index| &self.keys[index])
    }

    /// The footer entry.
    pub fn to_key_value(&self) -> KeyValue {
        KeyValue::new(AGGREGATES_KEY.to_string(), STANDARD.encode(self.encode()))
    }

    /// Reads the entry back from a file's key-value metadata, checking it
    /// against the file: `Ok(None)` when the file has no entry (written
    /// before aggregates existed), an error when the entry is damaged or
    /// disagrees with the file's rows and key summaries.
    pub fn from_key_values(
        entries: Option<&Vec<KeyValue>>,
        file_rows: u64,
        summaries: &[(String, KeySummary)],
    ) -> Result<Option<FileAggregates>, String> {
        let Some(entry) = entries
            .into_iter()
            .flatten()
            .find(|entry| entry.key == AGGREGATES_KEY)
        else {
            return Ok(None);
        };
        let text = entry
            .value
            .as_deref()
            .ok_or_else(|| format!("empty '{AGGREGATES_KEY}' entry"))?;
        let bytes = STANDARD
            .decode(text)
            .map_err(|error| format!("'{AGGREGATES_KEY}' is not base64: {error}"))?;
        let aggregates = FileAggregates::decode(&bytes)?;
        aggregates.check(file_rows, summaries)?;
        Ok(Some(aggregates))
    }

    fn check(&self, file_rows: u64, summaries: &[(String, KeySummary)]) -> Result<(), String> {
        if self.keys.len() != summaries.len() {
            return Err(format!(
                "aggregates name {} keys, the file {}",
                self.keys.len(),
                summaries.len()
            ));
        }
        let mut next_row = 0u64;
        for (entry, (key, summary)) in self.keys.iter().zip(summaries) {
            let block_rows: u64 = entry.blocks.iter().map(|block| u64::from(block.rows)).sum();
            if entry.key != *key
                || entry.first_row != next_row
                || entry.rows != summary.count
                || block_rows != entry.rows
            {
                return Err(format!(
                    "aggregates of key '{}' disagree with the file",
                    key
                ));
            }
            if !entry.blocks.iter().all(BlockAggregate::is_consistent)
                || entry
                    .blocks
                    .windows(2)
                    .any(|pair| pair[0].last.position() > pair[1].first.position())
            {
                return Err(format!("aggregates of key '{key}' are not consistent"));
            }
            next_row += entry.rows;
        }
        if next_row != file_rows {
            return Err(format!(
                "aggregates cover {next_row} rows, the file has {file_rows}"
            ));
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let blocks: usize = self.keys.iter().map(|key| key.blocks.len()).sum();
        let mut out = Vec::with_capacity(16 + self.keys.len() * 64 + blocks * 160);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(BLOCK_ROWS as u32).to_le_bytes());
        out.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        for key in &self.keys {
            out.extend_from_slice(&(key.key.len() as u32).to_le_bytes());
            out.extend_from_slice(key.key.as_bytes());
            out.extend_from_slice(&key.first_row.to_le_bytes());
            out.extend_from_slice(&(key.blocks.len() as u32).to_le_bytes());
            for block in &key.blocks {
                for word in [block.rows, block.non_finite] {
                    out.extend_from_slice(&word.to_le_bytes());
                }
                for word in [block.min_timestamp, block.max_timestamp] {
                    out.extend_from_slice(&word.to_le_bytes());
                }
                for point in [block.first, block.last] {
                    put_point(&mut out, &point);
                }
                for point in [block.min, block.max, block.nan] {
                    match point {
                        Some(point) => {
                            out.extend_from_slice(&point.offset.to_le_bytes());
                            put_point(&mut out, &point);
                        }
                        None => out.extend_from_slice(&NO_POINT.to_le_bytes()),
                    }
                }
            }
        }
        let checksum = crc32c::crc32c(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<FileAggregates, String> {
        let Some((body, checksum)) = bytes.split_last_chunk::<4>() else {
            return Err("aggregates are cut short".into());
        };
        if crc32c::crc32c(body) != u32::from_le_bytes(*checksum) {
            return Err("aggregates checksum mismatch".into());
        }
        let mut cursor = Cursor { bytes: body };
        if cursor.take(4)? != MAGIC || cursor.take(1)? != [VERSION] {
            return Err("unknown aggregates layout".into());
        }
        let _block_rows = cursor.u32()?;
        let key_count = cursor.u32()? as usize;
        let mut keys = Vec::with_capacity(key_count.min(body.len()));
        for _ in 0..key_count {
            let length = cursor.u32()? as usize;
            let key = std::str::from_utf8(cursor.take(length)?)
                .map_err(|_| "a key in the aggregates is not UTF-8".to_string())?
                .to_string();
            let first_row = cursor.u64()?;
            let block_count = cursor.u32()? as usize;
            let mut blocks = Vec::with_capacity(block_count.min(body.len() / 64));
            for _ in 0..block_count {
                let rows = cursor.u32()?;
                let non_finite = cursor.u32()?;
                let min_timestamp = cursor.i64()?;
                let max_timestamp = cursor.i64()?;
                let first = cursor.point(0)?;
                let last = cursor.point(rows.saturating_sub(1))?;
                let min = cursor.optional_point()?;
                let max = cursor.optional_point()?;
                let nan = cursor.optional_point()?;
                blocks.push(BlockAggregate {
                    rows,
                    non_finite,
                    min_timestamp,
                    max_timestamp,
                    first,
                    last,
                    min,
                    max,
                    nan,
                });
            }
            let rows = blocks.iter().map(|block| u64::from(block.rows)).sum();
            keys.push(KeyAggregates {
                key,
                first_row,
                rows,
                blocks,
            });
        }
        if !cursor.bytes.is_empty() {
            return Err("trailing bytes after the aggregates".into());
        }
        Ok(FileAggregates { keys })
    }
}

fn put_point(out: &mut Vec<u8>, point: &BlockPoint) {
    out.extend_from_slice(&point.step.to_le_bytes());
    out.extend_from_slice(&point.timestamp.to_le_bytes());
    out.extend_from_slice(&point.value.to_le_bytes());
}

/// Bounds-checked little-endian reads.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < length {
            return Err("aggregates are cut short".into());
        }
        let (head, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn point(&mut self, offset: u32) -> Result<BlockPoint, String> {
        Ok(BlockPoint {
            offset,
            step: self.i64()?,
            timestamp: self.i64()?,
            value: f64::from_le_bytes(self.array()?),
        })
    }

    fn optional_point(&mut self) -> Result<Option<BlockPoint>, String> {
        match self.u32()? {
            NO_POINT => Ok(None),
            offset => self.point(offset).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary_of(steps: &[i64], timestamps: &[i64], values: &[f64]) -> KeySummary {
        let mut summary = KeySummary::of_point(steps[0], timestamps[0], values[0]);
        for row in 1..steps.len() {
            summary.add_point(steps[row], timestamps[row], values[row]);
        }
        summary
    }

    #[test]
    fn a_block_keeps_first_last_extremes_and_the_first_nan() {
        let steps = [1, 2, 3, 4, 5, 6];
        let times = [10, 9, 30, 40, 50, 60];
        let values = [2.0, f64::NAN, -1.0, 7.0, -1.0, f64::INFINITY];
        let block = BlockAggregate::of(&steps, &times, &values).unwrap();
        assert_eq!((block.rows, block.non_finite), (6, 2));
        assert_eq!((block.min_timestamp, block.max_timestamp), (9, 60));
        assert_eq!(block.first.offset, 0);
        assert_eq!(block.last.offset, 5);
        assert_eq!(block.min.unwrap().offset, 2, "ties keep the first row");
        assert_eq!(block.max.unwrap().value, f64::INFINITY);
        assert_eq!(block.nan.unwrap().offset, 1);
        let all_nan = BlockAggregate::of(&[1], &[1], &[f64::NAN]).unwrap();
        assert!(all_nan.min.is_none() && all_nan.max.is_none());
        assert!(BlockAggregate::of(&[], &[], &[]).is_none());
    }

    #[test]
    fn appending_blocks_equals_aggregating_the_rows_at_once() {
        let steps: Vec<i64> = (0..50).collect();
        let times: Vec<i64> = steps.iter().map(|step| 1000 - step).collect();
        let values: Vec<f64> = steps
            .iter()
            .map(|&step| match step % 7 {
                0 => f64::NAN,
                3 => 5.0,
                _ => (step % 5) as f64 - 2.0,
            })
            .collect();
        let whole = BlockAggregate::of(&steps, &times, &values).unwrap();
        for split in [1, 13, 49] {
            let mut joined =
                BlockAggregate::of(&steps[..split], &times[..split], &values[..split]).unwrap();
            joined.append(
                &BlockAggregate::of(&steps[split..], &times[split..], &values[split..]).unwrap(),
            );
            assert_eq!(format!("{joined:?}"), format!("{whole:?}"), "split {split}");
        }
    }

    #[test]
    fn blocks_end_at_block_rows_multiples_and_key_edges_and_round_trip() {
        let n = BLOCK_ROWS * 2 + 100;
        let steps: Vec<i64> = (0..n as i64).collect();
        let times = steps.clone();
        let values: Vec<f64> = steps.iter().map(|&step| step as f64).collect();
        let mut aggregates = FileAggregates::default();
        // "a" has 10 rows, then "b" continues over two calls.
        aggregates.add_rows("a", 0, &steps[..10], &times[..10], &values[..10]);
        aggregates.add_rows("b", 10, &steps[..50], &times[..50], &values[..50]);
        aggregates.add_rows("b", 60, &steps[50..], &times[50..], &values[50..]);
        let b = aggregates.key("b").unwrap();
        let sizes: Vec<u32> = b.blocks.iter().map(|block| block.rows).collect();
        assert_eq!(
            sizes,
            vec![BLOCK_ROWS as u32 - 10, BLOCK_ROWS as u32, 110],
            "cut at file rows {BLOCK_ROWS} and {}",
            2 * BLOCK_ROWS
        );
        let starts: Vec<u64> = b.block_starts().collect();
        assert_eq!(starts, vec![10, BLOCK_ROWS as u64, 2 * BLOCK_ROWS as u64]);
        assert!(aggregates.key("c").is_none());

        let summaries = vec![
            ("a".to_string(), summary_of(&steps[..10], &times, &values)),
            ("b".to_string(), summary_of(&steps, &times, &values)),
        ];
        let entry = aggregates.to_key_value();
        let rows = (n + 10) as u64;
        let back = FileAggregates::from_key_values(Some(&vec![entry.clone()]), rows, &summaries)
            .unwrap()
            .unwrap();
        assert_eq!(back, aggregates);
        assert_eq!(
            FileAggregates::from_key_values(None, rows, &summaries),
            Ok(None)
        );
        // Disagreeing with the file, or damaged, is an error (never a panic).
        assert!(
            FileAggregates::from_key_values(Some(&vec![entry.clone()]), rows + 1, &summaries)
                .is_err()
        );
        let text = entry.value.clone().unwrap();
        for cut in [0, 5, text.len() / 2, text.len() - 4] {
            let damaged = KeyValue::new(AGGREGATES_KEY.to_string(), text[..cut].to_string());
            assert!(
                FileAggregates::from_key_values(Some(&vec![damaged]), rows, &summaries).is_err()
            );
        }
        let mut bytes = STANDARD.decode(&text).unwrap();
        bytes[40] ^= 1;
        let flipped = KeyValue::new(AGGREGATES_KEY.to_string(), STANDARD.encode(&bytes));
        assert!(FileAggregates::from_key_values(Some(&vec![flipped]), rows, &summaries).is_err());
    }
}
