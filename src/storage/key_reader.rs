//! The one reader of metric files, part two: reads of keys. The numeric
//! columns of ascending row ranges ([`NumericRows`]: straight from the
//! pages for files as stepstore writes them, through
//! [`super::reader::SelectedRows`] otherwise), one key's rows
//! ([`KeyRowsReader`], wherever the footer says they are), and every key
//! in order ([`KeySegments`], for compaction).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReader;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};

use super::StorageError;
use super::checksums::DataFile;
use super::pages::{ColumnRows, PageRowReader};
use super::persisted::PersistedFile;
use super::reader::{BATCH_ROWS, RowRequest, SelectedRows, select_rows};
use super::row_plan::{
    FooterTrust, KeyRows, RowGroupSelection, STEP_LEAF, StepBounds, TIMESTAMP_LEAF, VALUE_LEAF,
    page_spans,
};
use crate::model::MetricSeries;

impl PersistedFile {
    /// Appends the points of `key` to `out`, in file order.
    pub fn read_key(&self, key: &str, out: &mut MetricSeries) -> Result<(), StorageError> {
        let Some(mut reader) =
            KeyRowsReader::open(self, key, StepBounds::default(), FooterTrust::Summaries)?
        else {
            return Ok(());
        };
        while let Some(rows) = reader.next_rows()? {
            out.steps.extend_from_slice(&rows.steps);
            out.timestamps.extend_from_slice(&rows.timestamps);
            out.values.extend_from_slice(&rows.values);
        }
        Ok(())
    }
}

/// The step, timestamp and value columns of a decoded batch whose first
/// `first` columns are others (the key).
pub(crate) fn numeric_columns(
    batch: &RecordBatch,
    first: usize,
    path: &Path,
) -> Result<ColumnRows, StorageError> {
    let invalid = |reason: &str| StorageError::Metadata {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if batch.num_columns() != first + 3
        || batch.columns().iter().any(|column| column.null_count() > 0)
    {
        return Err(invalid("unexpected columns or nulls in a metric file"));
    }
    Ok(ColumnRows {
        steps: batch
            .column(first)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| invalid("step column is not int64"))?
            .values()
            .clone(),
        timestamps: batch
            .column(first + 1)
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| invalid("timestamp column is not a millisecond timestamp"))?
            .values()
            .clone(),
        values: batch
            .column(first + 2)
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| invalid("value column is not float64"))?
            .values()
            .clone(),
    })
}

/// The numeric columns of ascending row ranges of one file: straight from
/// the pages when the file is laid out as stepstore writes it, else
/// through the Arrow reader and one selection of the ranges.
pub(crate) struct NumericRows {
    reader: NumericReader,
    path: PathBuf,
}

enum NumericReader {
    Pages(Box<PageRowReader>),
    Arrow {
        batches: Option<SelectedRows>,
        /// Decoded rows not yet handed out.
        pending: Option<ColumnRows>,
    },
}

impl NumericRows {
    /// A reader of `file` that will be asked for `ranges` (sorted and
    /// disjoint) or parts of them, in order.
    pub(crate) fn open(
        file: &PersistedFile,
        ranges: Vec<Range<u64>>,
    ) -> Result<NumericRows, StorageError> {
        let path = file.path().to_path_buf();
        let (footer, data) = file.open_data()?;
        if let Some(pages) = PageRowReader::open(data.clone(), Arc::clone(footer.metadata())) {
            if file.is_stored_only() {
                // The page reader reads one page at a time: a file in the
                // object store fetches every page it will need first, in
                // one round of requests, so its reads find them cached.
                let plan = RowGroupSelection::of(footer.metadata(), &ranges);
                let mut spans = Vec::new();
                for (&group, rows) in plan.row_groups.iter().zip(&plan.rows_in_group) {
                    for leaf in [STEP_LEAF, TIMESTAMP_LEAF, VALUE_LEAF] {
                        spans.extend(page_spans(footer.metadata(), group, leaf, rows));
                    }
                }
                data.prefetch(&spans)
                    .map_err(|source| StorageError::parquet(&path, source))?;
            }
            return Ok(NumericRows {
                reader: NumericReader::Pages(Box::new(pages)),
                path,
            });
        }
        let request = RowRequest {
            ranges,
            columns: numeric_column_names(),
            step_filter: None,
            batch_size: BATCH_ROWS,
        };
        Ok(NumericRows {
            reader: NumericReader::Arrow {
                batches: select_rows(footer, data, request)?,
                pending: None,
            },
            path,
        })
    }

    /// The rows of `rows` from its start on: all of them (pages), or as
    /// many as one decoded batch holds (Arrow). Empty when the file has no
    /// more rows than that.
    pub(crate) fn read(&mut self, rows: Range<u64>) -> Result<ColumnRows, StorageError> {
        match &mut self.reader {
            NumericReader::Pages(pages) => pages.read(rows),
            NumericReader::Arrow { batches, pending } => {
                let wanted = usize::try_from(rows.end - rows.start).unwrap_or(usize::MAX);
                let decoded = match pending.take() {
                    Some(decoded) => decoded,
                    None => match batches.as_mut().and_then(Iterator::next) {
                        Some(batch) => numeric_columns(&batch?, 0, &self.path)?,
                        None => return Ok(ColumnRows::empty()),
                    },
                };
                if decoded.len() <= wanted {
                    return Ok(decoded);
                }
                *pending = Some(decoded.slice(wanted, decoded.len() - wanted));
                Ok(decoded.slice(0, wanted))
            }
        }
    }
}

/// The names of the step, timestamp and value columns.
fn numeric_column_names() -> Vec<&'static str> {
    use super::schema::{STEP_COLUMN, TIMESTAMP_COLUMN, VALUE_COLUMN};
    const { assert!(STEP_LEAF < TIMESTAMP_LEAF && TIMESTAMP_LEAF < VALUE_LEAF) };
    vec![STEP_COLUMN, TIMESTAMP_COLUMN, VALUE_COLUMN]
}

/// One key's rows of one file in file order, from the rows its footer
/// points to ([`KeyRows`]). Rows outside the step bounds may come too
/// (blocks and row groups are not cut): the caller trims.
pub(crate) struct KeyRowsReader {
    source: KeySource,
    key: String,
    path: PathBuf,
}

enum KeySource {
    /// The key's row ranges, read through [`NumericRows`].
    Ranges {
        rows: NumericRows,
        ranges: std::vec::IntoIter<Range<u64>>,
        current: Option<Range<u64>>,
    },
    /// Row groups that may hold the key, decoded with the key column.
    Checked(SelectedRows),
}

impl KeyRowsReader {
    /// A reader of `key`'s rows of `file` within `bounds`, planned trusting
    /// `trust`; `None` when the footer rules every row out.
    pub(crate) fn open(
        file: &PersistedFile,
        key: &str,
        bounds: StepBounds,
        trust: FooterTrust,
    ) -> Result<Option<KeyRowsReader>, StorageError> {
        let footer = file.cached_footer()?;
        let Some(plan) = KeyRows::plan(&footer, key, bounds, trust) else {
            return Ok(None);
        };
        let source = match plan {
            KeyRows::RowGroups { rows: ranges, .. } => {
                let mut columns = vec![super::schema::KEY_COLUMN];
                columns.extend(numeric_column_names());
                let request = RowRequest {
                    ranges,
                    columns,
                    step_filter: None,
                    batch_size: BATCH_ROWS,
                };
                match file.read_rows(request)? {
                    Some(rows) => KeySource::Checked(rows),
                    None => return Ok(None),
                }
            }
            plan => {
                // Reads of a block each (blocks start pages), else of at
                // most a batch: memory stays bounded whatever the key's
                // length.
                let reads: Vec<Range<u64>> = match &plan {
                    KeyRows::Blocks(blocks) => blocks
                        .iter()
                        .map(|(first_row, block)| *first_row..first_row + u64::from(block.rows))
                        .collect(),
                    _ => plan
                        .ranges()
                        .into_iter()
                        .flat_map(|range| {
                            (range.start..range.end)
                                .step_by(BATCH_ROWS)
                                .map(move |start| start..(start + BATCH_ROWS as u64).min(range.end))
                        })
                        .collect(),
                };
                KeySource::Ranges {
                    rows: NumericRows::open(file, plan.ranges())?,
                    ranges: reads.into_iter(),
                    current: None,
                }
            }
        };
        Ok(Some(KeyRowsReader {
            source,
            key: key.to_string(),
            path: file.path().to_path_buf(),
        }))
    }

    /// The next rows of the key, or `None` at the end.
    pub(crate) fn next_rows(&mut self) -> Result<Option<ColumnRows>, StorageError> {
        match &mut self.source {
            KeySource::Ranges {
                rows,
                ranges,
                current,
            } => {
                let Some(range) = current.take().or_else(|| ranges.next()) else {
                    return Ok(None);
                };
                let read = rows.read(range.clone())?;
                if read.is_empty() {
                    return Err(StorageError::Metadata {
                        path: self.path.clone(),
                        reason: "the file holds fewer rows than its footer says".into(),
                    });
                }
                let next_start = range.start + read.len() as u64;
                if next_start < range.end {
                    *current = Some(next_start..range.end);
                }
                Ok(Some(read))
            }
            KeySource::Checked(batches) => {
                for batch in batches.by_ref() {
                    let batch = batch?;
                    let columns = BatchColumns::of(&batch, &self.path)?;
                    let Some(rows) = columns.rows_of(&self.key) else {
                        continue;
                    };
                    let numeric = numeric_columns(&batch, 1, &self.path)?;
                    return Ok(Some(match rows {
                        KeyMatch::Run(range) => numeric.slice(range.start, range.len()),
                        KeyMatch::Scattered(rows) => numeric.take(&rows),
                    }));
                }
                Ok(None)
            }
        }
    }
}

/// The rows of a batch holding one key.
enum KeyMatch {
    /// One run of rows (always, in a file sorted by key).
    Run(Range<usize>),
    /// Rows here and there.
    Scattered(Vec<usize>),
}

/// The columns of a decoded batch, borrowed.
struct BatchColumns<'a> {
    keys: KeyColumn<'a>,
    steps: &'a [i64],
    timestamps: &'a [i64],
    values: &'a [f64],
}

enum KeyColumn<'a> {
    Dictionary {
        indices: &'a [i32],
        values: &'a StringArray,
    },
    Plain(&'a StringArray),
}

impl<'a> BatchColumns<'a> {
    fn of(batch: &'a RecordBatch, path: &Path) -> Result<Self, StorageError> {
        let invalid = |reason: &str| StorageError::Metadata {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if batch.num_columns() != 4 || batch.columns().iter().any(|column| column.null_count() > 0)
        {
            return Err(invalid("unexpected columns or nulls in a metric file"));
        }
        let key_column = batch.column(0);
        let keys = if let Some(dictionary) = key_column.as_dictionary_opt::<Int32Type>() {
            KeyColumn::Dictionary {
                indices: dictionary.keys().values(),
                values: dictionary
                    .values()
                    .as_string_opt::<i32>()
                    .ok_or_else(|| invalid("key dictionary is not UTF-8"))?,
            }
        } else {
            KeyColumn::Plain(
                key_column
                    .as_string_opt::<i32>()
                    .ok_or_else(|| invalid("key column is not UTF-8"))?,
            )
        };
        Ok(BatchColumns {
            keys,
            steps: batch
                .column(1)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| invalid("step column is not int64"))?
                .values(),
            timestamps: batch
                .column(2)
                .as_primitive_opt::<TimestampMillisecondType>()
                .ok_or_else(|| invalid("timestamp column is not a millisecond timestamp"))?
                .values(),
            values: batch
                .column(3)
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(|| invalid("value column is not float64"))?
                .values(),
        })
    }

    fn len(&self) -> usize {
        self.steps.len()
    }

    /// The rows holding `key`; `None` for none.
    fn rows_of(&self, key: &str) -> Option<KeyMatch> {
        let rows: Vec<usize> = match &self.keys {
            KeyColumn::Dictionary { indices, values } => {
                let wanted = (0..values.len()).find(|&index| values.value(index) == key)? as i32;
                (0..indices.len())
                    .filter(|&row| indices[row] == wanted)
                    .collect()
            }
            KeyColumn::Plain(values) => (0..values.len())
                .filter(|&row| values.value(row) == key)
                .collect(),
        };
        let (&first, &last) = (rows.first()?, rows.last()?);
        Some(if last - first + 1 == rows.len() {
            KeyMatch::Run(first..last + 1)
        } else {
            KeyMatch::Scattered(rows)
        })
    }

    fn key_at(&self, row: usize) -> &'a str {
        match &self.keys {
            KeyColumn::Dictionary { indices, values } => values.value(indices[row] as usize),
            KeyColumn::Plain(values) => values.value(row),
        }
    }

    /// End of the run of rows from `start` that share its key.
    fn same_key_end(&self, start: usize) -> usize {
        match &self.keys {
            KeyColumn::Dictionary { indices, .. } => {
                let id = indices[start];
                start + indices[start..].partition_point(|&other| other == id)
            }
            KeyColumn::Plain(values) => {
                let key = values.value(start);
                (start..values.len())
                    .find(|&row| values.value(row) != key)
                    .unwrap_or(values.len())
            }
        }
    }
}

/// Reads a sorted metric file key by key.
pub struct KeySegments {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    pending: Option<(RecordBatch, usize)>,
}

impl KeySegments {
    /// Opens a file with its already loaded footer.
    pub fn open(data: DataFile, footer: &ArrowReaderMetadata) -> Result<Self, StorageError> {
        let path = data.path().to_path_buf();
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(data, footer.clone())
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|source| StorageError::parquet(&path, source))?;
        Ok(KeySegments {
            path,
            reader,
            pending: None,
        })
    }

    /// The next key and all of its points, or `None` at the end.
    pub fn next_segment(&mut self) -> Result<Option<(String, MetricSeries)>, StorageError> {
        let mut key: Option<String> = None;
        let mut series = MetricSeries::default();
        loop {
            let (batch, offset) = match self.pending.take() {
                Some(pending) => pending,
                None => match self.reader.next() {
                    Some(batch) => (
                        batch.map_err(|source| StorageError::Arrow(source.to_string()))?,
                        0,
                    ),
                    None => break,
                },
            };
            let columns = BatchColumns::of(&batch, &self.path)?;
            if offset >= columns.len() {
                continue;
            }
            let row_key = columns.key_at(offset);
            match &key {
                None => key = Some(row_key.to_string()),
                Some(current) if current != row_key => {
                    self.pending = Some((batch.clone(), offset));
                    break;
                }
                Some(_) => {}
            }
            let end = columns.same_key_end(offset);
            series.steps.extend_from_slice(&columns.steps[offset..end]);
            series
                .timestamps
                .extend_from_slice(&columns.timestamps[offset..end]);
            series
                .values
                .extend_from_slice(&columns.values[offset..end]);
            if end < columns.len() {
                self.pending = Some((batch.clone(), end));
                break;
            }
        }
        Ok(key.map(|key| (key, series)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KeySummary;
    use crate::storage::FileMetadata;
    use crate::storage::schema::metric_file_schema;
    use crate::storage::written_file;
    use arrow::array::{DictionaryArray, Float64Array, Int64Array, TimestampMillisecondArray};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    /// A metric file as another tool might write it: rows not sorted by
    /// key, no block aggregates, no checksums, and key summaries that do
    /// not add up (so no reader may trust them).
    fn foreign_file(path: &Path, rows: &[(&str, i64, f64)]) {
        let keys: DictionaryArray<Int32Type> = rows.iter().map(|row| row.0).collect();
        let batch = RecordBatch::try_new(
            metric_file_schema(),
            vec![
                Arc::new(keys),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|row| row.1))),
                Arc::new(
                    TimestampMillisecondArray::from_iter_values(rows.iter().map(|row| row.1))
                        .with_timezone(super::super::schema::TIMEZONE),
                ),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|row| row.2))),
            ],
        )
        .unwrap();
        let metadata = FileMetadata {
            format_version: super::super::file_meta::FORMAT_VERSION,
            lsn_ranges: vec![(1, 1)],
            keys: vec![("a".into(), KeySummary::of_point(0, 0, 2.0))],
            compacted_from: vec![],
        };
        let properties = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![metadata.to_key_value().unwrap()]))
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut writer =
            ArrowWriter::try_new(file, metric_file_schema(), Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    fn series(file: &PersistedFile, key: &str) -> MetricSeries {
        let mut series = MetricSeries::default();
        file.read_key(key, &mut series).unwrap();
        series
    }

    #[test]
    fn a_key_scattered_through_an_unsorted_file_is_found_row_by_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000001.parquet");
        foreign_file(
            &path,
            &[("b", 0, 1.0), ("a", 0, 2.0), ("b", 1, 3.0), ("c", 0, 4.0)],
        );
        let (file, _) = PersistedFile::open(1, &path).unwrap();
        assert!(file.aggregates().is_none());
        let footer = file.cached_footer().unwrap();
        assert!(matches!(
            KeyRows::plan(&footer, "b", StepBounds::default(), FooterTrust::Summaries),
            Some(KeyRows::RowGroups { .. })
        ));
        assert_eq!(series(&file, "b").values, vec![1.0, 3.0]);
        assert_eq!(series(&file, "a").values, vec![2.0]);
        assert_eq!(series(&file, "c").steps, vec![0]);
        assert!(series(&file, "d").is_empty());
    }

    #[test]
    fn a_long_key_is_read_in_bounded_pieces_through_either_plan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000001.parquet");
        let points: Vec<(&str, i64, i64, f64)> = (0..100_000)
            .map(|step| ("loss", step, step, step as f64))
            .chain((0..10).map(|step| ("acc", step, step, 0.5)))
            .collect();
        let file = written_file(&path, &points);
        for trust in [FooterTrust::Summaries, FooterTrust::StatisticsOnly] {
            let mut reader = KeyRowsReader::open(&file, "loss", StepBounds::default(), trust)
                .unwrap()
                .unwrap();
            let mut steps = Vec::new();
            while let Some(rows) = reader.next_rows().unwrap() {
                assert!(
                    rows.len() <= BATCH_ROWS,
                    "{trust:?}: {} rows at once",
                    rows.len()
                );
                steps.extend_from_slice(&rows.steps);
            }
            assert_eq!(steps, (0..100_000).collect::<Vec<i64>>(), "{trust:?}");
        }
        let late = StepBounds {
            lower: Some(99_990),
            upper: None,
        };
        let mut reader = KeyRowsReader::open(&file, "loss", late, FooterTrust::Summaries)
            .unwrap()
            .unwrap();
        let rows = reader.next_rows().unwrap().unwrap();
        assert!(
            rows.len() < 4_096 && rows.steps.contains(&99_995),
            "one block"
        );
    }
}
