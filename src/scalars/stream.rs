//! Streaming reads of one key's points, in `(step, timestamp)` order, with
//! memory bounded by one decoded batch per source.
//!
//! A key's points of one run sit in several places: persisted Parquet files
//! (each sorted by `(key, step, timestamp)`, so the key's rows in a file are
//! one sorted run), frozen chunks and the active buffer (in logged order;
//! only the requested key's points are copied out and sorted, bounded by the
//! buffer size, not by the series length). Step ranges of these sources may
//! overlap (points logged out of order), so the reader does a k-way merge of
//! the sorted sources: every file is read row group by row group (row groups
//! whose key or step statistics rule them out are skipped; a row group
//! holding only the requested key is read without its key column), and the
//! merge hands the sink maximal slices that are already in order, so the
//! common case (files covering consecutive step ranges) copies nothing.
//!
//! Ties on `(step, timestamp)` come out files first (in sequence order),
//! then buffered points, exactly as [`crate::ingest::SeriesSources::collect`]
//! orders them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use parquet::file::statistics::Statistics;

use super::ScalarError;
use crate::model::MetricSeries;
use crate::storage::PersistedFile;

/// Rows decoded per Parquet batch: bounds a file source's memory.
const BATCH_ROWS: usize = 32 * 1024;

/// Takes ordered slices of steps, timestamps and values; returns `false`
/// to stop the read.
pub type SliceSink<'a> = dyn FnMut(&[i64], &[i64], &[f64]) -> Result<bool, ScalarError> + 'a;

/// Inclusive step bounds applied while reading (`None`: unbounded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepBounds {
    /// Smallest step wanted.
    pub lower: Option<i64>,
    /// Greatest step wanted.
    pub upper: Option<i64>,
}

impl StepBounds {
    fn excludes_range(&self, min: i64, max: i64) -> bool {
        self.lower.is_some_and(|lower| max < lower) || self.upper.is_some_and(|upper| min > upper)
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

    fn slice(&self, offset: usize, len: usize) -> Block {
        Block {
            steps: self.steps.slice(offset, len),
            timestamps: self.timestamps.slice(offset, len),
            values: self.values.slice(offset, len),
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

/// Something that yields sorted blocks of one key's points.
trait BlockSource: Send {
    fn next_block(&mut self) -> Result<Option<Block>, ScalarError>;
}

/// The buffered points of the key (frozen chunks and active buffer).
struct BufferSource {
    block: Option<Block>,
}

impl BlockSource for BufferSource {
    fn next_block(&mut self) -> Result<Option<Block>, ScalarError> {
        Ok(self.block.take())
    }
}

/// One Parquet file, read row group by row group.
struct FileSource {
    path: PathBuf,
    footer: ArrowReaderMetadata,
    key: String,
    bounds: StepBounds,
    /// Candidate row groups not yet opened, and whether each holds only
    /// the requested key (then its key column is not read).
    row_groups: std::vec::IntoIter<(usize, bool)>,
    reader: Option<(ParquetRecordBatchReader, bool)>,
    done: bool,
    /// Keeps a compacted-away file on disk while it is read.
    _file: Arc<PersistedFile>,
}

impl FileSource {
    fn new(
        file: Arc<PersistedFile>,
        key: &str,
        bounds: StepBounds,
    ) -> Result<FileSource, ScalarError> {
        let footer = file.footer().map_err(|error| ScalarError::InvalidFile {
            path: file.path().to_path_buf(),
            reason: error.to_string(),
        })?;
        let wanted = key.as_bytes();
        let row_groups: Vec<(usize, bool)> = footer
            .metadata()
            .row_groups()
            .iter()
            .enumerate()
            .filter_map(|(index, row_group)| {
                let key_stats = row_group.column(0).statistics();
                let may_hold_key = key_stats.is_none_or(|statistics| {
                    statistics.min_bytes_opt().is_none_or(|min| min <= wanted)
                        && statistics.max_bytes_opt().is_none_or(|max| wanted <= max)
                });
                if !may_hold_key {
                    return None;
                }
                if let Some(Statistics::Int64(steps)) = row_group.column(1).statistics()
                    && let (Some(&min), Some(&max)) = (steps.min_opt(), steps.max_opt())
                    && bounds.excludes_range(min, max)
                {
                    return None;
                }
                let only_key = key_stats.is_some_and(|statistics| {
                    statistics.min_is_exact()
                        && statistics.max_is_exact()
                        && statistics.min_bytes_opt() == Some(wanted)
                        && statistics.max_bytes_opt() == Some(wanted)
                        && statistics.null_count_opt().unwrap_or(1) == 0
                });
                Some((index, only_key))
            })
            .collect();
        Ok(FileSource {
            path: file.path().to_path_buf(),
            footer,
            key: key.to_string(),
            bounds,
            row_groups: row_groups.into_iter(),
            reader: None,
            done: false,
            _file: file,
        })
    }

    fn open_row_group(
        &self,
        row_group: usize,
        only_key: bool,
    ) -> Result<ParquetRecordBatchReader, ScalarError> {
        let file = File::open(&self.path).map_err(|source| ScalarError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut builder =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.footer.clone())
                .with_row_groups(vec![row_group])
                .with_batch_size(BATCH_ROWS);
        if only_key {
            let mask = ProjectionMask::roots(
                self.footer.metadata().file_metadata().schema_descr(),
                [1, 2, 3],
            );
            builder = builder.with_projection(mask);
        }
        builder
            .build()
            .map_err(|error| parquet_error(&self.path, error))
    }

    /// The key's rows of a decoded batch, as one block.
    fn key_rows(&self, batch: &RecordBatch, only_key: bool) -> Result<Option<Block>, ScalarError> {
        let invalid = |reason: &str| ScalarError::InvalidFile {
            path: self.path.clone(),
            reason: reason.to_string(),
        };
        let first = if only_key { 0 } else { 1 };
        if batch.num_columns() != first + 3
            || batch.columns().iter().any(|column| column.null_count() > 0)
        {
            return Err(invalid("unexpected columns or nulls in a metric file"));
        }
        let steps = batch
            .column(first)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| invalid("step column is not int64"))?
            .values()
            .clone();
        let timestamps = batch
            .column(first + 1)
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| invalid("timestamp column is not a millisecond timestamp"))?
            .values()
            .clone();
        let values = batch
            .column(first + 2)
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| invalid("value column is not float64"))?
            .values()
            .clone();
        let block = Block {
            steps,
            timestamps,
            values,
        };
        if only_key {
            return Ok(Some(block));
        }
        let matches: Vec<bool> = {
            let column = batch.column(0);
            if let Some(dictionary) = column.as_dictionary_opt::<Int32Type>() {
                let names = dictionary
                    .values()
                    .as_string_opt::<i32>()
                    .ok_or_else(|| invalid("key dictionary is not UTF-8"))?;
                let Some(wanted) = (0..names.len()).find(|&index| names.value(index) == self.key)
                else {
                    return Ok(None);
                };
                let wanted = wanted as i32;
                dictionary
                    .keys()
                    .values()
                    .iter()
                    .map(|&index| index == wanted)
                    .collect()
            } else {
                let names = column
                    .as_string_opt::<i32>()
                    .ok_or_else(|| invalid("key column is not UTF-8"))?;
                (0..names.len())
                    .map(|row| names.value(row) == self.key)
                    .collect()
            }
        };
        Ok(select_rows(&block, &matches))
    }
}

/// The rows of `block` where `matches` is set: a zero-copy slice when they
/// are contiguous (always, in a file sorted by key), else a copy.
fn select_rows(block: &Block, matches: &[bool]) -> Option<Block> {
    let start = matches.iter().position(|&hit| hit)?;
    let run = matches[start..].iter().take_while(|&&hit| hit).count();
    let end = start + run;
    if !matches[end..].iter().any(|&hit| hit) {
        return Some(block.slice(start, run));
    }
    let mut series = MetricSeries::default();
    for (row, _) in matches.iter().enumerate().filter(|(_, hit)| **hit) {
        series.push(block.steps[row], block.timestamps[row], block.values[row]);
    }
    Some(Block::from_series(series))
}

impl BlockSource for FileSource {
    fn next_block(&mut self) -> Result<Option<Block>, ScalarError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let Some((reader, only_key)) = &mut self.reader else {
                match self.row_groups.next() {
                    Some((row_group, only_key)) => {
                        let reader = self.open_row_group(row_group, only_key)?;
                        self.reader = Some((reader, only_key));
                        continue;
                    }
                    None => return Ok(None),
                }
            };
            let only_key = *only_key;
            let Some(batch) = reader.next() else {
                self.reader = None;
                continue;
            };
            let batch = batch.map_err(|error| ScalarError::InvalidFile {
                path: self.path.clone(),
                reason: error.to_string(),
            })?;
            let Some(block) = self.key_rows(&batch, only_key)? else {
                continue;
            };
            let (block, past_upper) = block.sorted().trim(self.bounds);
            if past_upper {
                self.done = true;
            }
            if let Some(block) = block {
                return Ok(Some(block));
            }
        }
    }
}

fn parquet_error(path: &Path, error: parquet::errors::ParquetError) -> ScalarError {
    ScalarError::InvalidFile {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

/// Everything a series read needs, taken from a consistent snapshot of the
/// run's shard: the files (held open against compaction) and a sorted copy
/// of the key's buffered points.
#[derive(Clone)]
pub struct SeriesSnapshot {
    key: String,
    files: Vec<Arc<PersistedFile>>,
    buffered: Block,
}

impl SeriesSnapshot {
    /// A snapshot of `key` from its files (in sequence order) and its
    /// buffered points (frozen chunks first, then the active buffer).
    pub fn new(key: &str, files: Vec<Arc<PersistedFile>>, mut buffered: MetricSeries) -> Self {
        buffered.sort_by_step_and_time();
        SeriesSnapshot {
            key: key.to_string(),
            files,
            buffered: Block::from_series(buffered),
        }
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Number of buffered points.
    pub fn buffered_points(&self) -> usize {
        self.buffered.len()
    }

    /// Streams the points within `bounds` in `(step, timestamp)` order to
    /// `sink` as slices of steps, timestamps and values. The sink returns
    /// `false` to stop early. Blocking.
    pub fn for_each_slice(
        &self,
        bounds: StepBounds,
        sink: &mut SliceSink<'_>,
    ) -> Result<(), ScalarError> {
        let mut sources: Vec<Box<dyn BlockSource>> = self
            .files
            .iter()
            .map(|file| {
                FileSource::new(Arc::clone(file), &self.key, bounds)
                    .map(|source| Box::new(source) as Box<dyn BlockSource>)
            })
            .collect::<Result<_, _>>()?;
        if let (Some(block), _) = self.buffered.clone().trim(bounds) {
            sources.push(Box::new(BufferSource { block: Some(block) }));
        }
        merge(sources, sink)
    }
}

/// k-way merge of sorted sources; ties go to the lower source index.
fn merge(
    mut sources: Vec<Box<dyn BlockSource>>,
    sink: &mut SliceSink<'_>,
) -> Result<(), ScalarError> {
    let mut heads: Vec<Option<Block>> = Vec::with_capacity(sources.len());
    for source in &mut sources {
        heads.push(source.next_block()?);
    }
    loop {
        // The source with the smallest head, and the smallest head among
        // the others (the bound up to which the first can be emitted).
        let mut best: Option<(usize, (i64, i64))> = None;
        let mut second: Option<(usize, (i64, i64))> = None;
        for (index, head) in heads.iter().enumerate() {
            let Some(block) = head else { continue };
            let key = block.head();
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
        let Some(block) = heads[index].take() else {
            return Ok(());
        };
        let take = match second {
            None => block.len(),
            Some((other, bound)) => {
                // Sources before `other` win ties with it.
                let steps = &block.steps;
                let times = &block.timestamps;
                let mut low = 0;
                let mut high = block.len();
                while low < high {
                    let middle = (low + high) / 2;
                    let point = (steps[middle], times[middle]);
                    let before = point < bound || (point == bound && index < other);
                    if before {
                        low = middle + 1;
                    } else {
                        high = middle;
                    }
                }
                low.max(1)
            }
        };
        let keep_going = sink(
            &block.steps[..take],
            &block.timestamps[..take],
            &block.values[..take],
        )?;
        if !keep_going {
            return Ok(());
        }
        heads[index] = if take < block.len() {
            Some(block.slice(take, block.len() - take))
        } else {
            sources[index].next_block()?
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MetricFileWriter, SortedColumns};

    fn write_file(dir: &Path, seq: u64, points: &[(&str, i64, i64, f64)]) -> Arc<PersistedFile> {
        let mut dictionary: Vec<String> = points.iter().map(|p| p.0.to_string()).collect();
        dictionary.sort();
        dictionary.dedup();
        let key_ids: Vec<u32> = points
            .iter()
            .map(|p| dictionary.iter().position(|k| k == p.0).unwrap() as u32)
            .collect();
        let steps: Vec<i64> = points.iter().map(|p| p.1).collect();
        let times: Vec<i64> = points.iter().map(|p| p.2).collect();
        let values: Vec<f64> = points.iter().map(|p| p.3).collect();
        let columns =
            SortedColumns::from_logged_order(&dictionary, &key_ids, &steps, &times, &values);
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

    #[test]
    fn select_rows_slices_contiguous_rows_and_copies_scattered_ones() {
        let block = Block::from_series(MetricSeries {
            steps: vec![0, 1, 2, 3],
            timestamps: vec![0, 0, 0, 0],
            values: vec![0.0, 1.0, 2.0, 3.0],
        });
        let slice = select_rows(&block, &[false, true, true, false]).unwrap();
        assert_eq!(slice.steps.to_vec(), vec![1, 2]);
        let copy = select_rows(&block, &[true, false, true, false]).unwrap();
        assert_eq!(copy.steps.to_vec(), vec![0, 2]);
        assert!(select_rows(&block, &[false; 4]).is_none());
    }
}
