//! Reads metric files: their footers, one key's series (skipping row groups
//! whose key statistics rule the key out), and every key in order as a
//! stream of per-key segments (for compaction).

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::file::metadata::PageIndexPolicy;

use super::StorageError;
use super::checksums::DataFile;
use super::file_meta::FileMetadata;
use crate::model::MetricSeries;

/// Rows decoded per batch.
const BATCH_ROWS: usize = 64 * 1024;

/// Loads a file's footer (schema, row groups, statistics, and the offset
/// index when the file has one, so a row selection skips whole pages
/// unread) and stepstore's metadata from it.
pub fn load_footer(path: &Path) -> Result<(ArrowReaderMetadata, FileMetadata), StorageError> {
    let file = File::open(path).map_err(|source| StorageError::io("open", path, source))?;
    let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
    let reader_metadata = ArrowReaderMetadata::load(&file, options)
        .map_err(|source| StorageError::parquet(path, source))?;
    let file_metadata = FileMetadata::from_key_values(
        reader_metadata
            .metadata()
            .file_metadata()
            .key_value_metadata(),
    )
    .map_err(|reason| StorageError::Metadata {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok((reader_metadata, file_metadata))
}

/// Appends the points of `key` in `data` to `out`, in file order.
pub fn read_key(
    data: DataFile,
    footer: &ArrowReaderMetadata,
    key: &str,
    out: &mut MetricSeries,
) -> Result<(), StorageError> {
    let row_groups: Vec<usize> = footer
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, row_group)| {
            row_group.column(0).statistics().is_none_or(|statistics| {
                let above_min = statistics
                    .min_bytes_opt()
                    .is_none_or(|min| min <= key.as_bytes());
                let below_max = statistics
                    .max_bytes_opt()
                    .is_none_or(|max| key.as_bytes() <= max);
                above_min && below_max
            })
        })
        .map(|(index, _)| index)
        .collect();
    if row_groups.is_empty() {
        return Ok(());
    }
    let path = data.path().to_path_buf();
    let path = path.as_path();
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(data, footer.clone())
        .with_row_groups(row_groups)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|source| StorageError::parquet(path, source))?;
    for batch in reader {
        let batch = batch.map_err(|source| StorageError::Arrow(source.to_string()))?;
        let columns = BatchColumns::of(&batch, path)?;
        match &columns.keys {
            KeyColumn::Dictionary { indices, values } => {
                let Some(wanted) = (0..values.len()).find(|&index| values.value(index) == key)
                else {
                    continue;
                };
                let wanted = wanted as i32;
                for (row, &index) in indices.iter().enumerate() {
                    if index == wanted {
                        columns.push_row(row, out);
                    }
                }
            }
            KeyColumn::Plain(values) => {
                for row in 0..values.len() {
                    if values.value(row) == key {
                        columns.push_row(row, out);
                    }
                }
            }
        }
    }
    Ok(())
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

    fn push_row(&self, row: usize, out: &mut MetricSeries) {
        out.push(self.steps[row], self.timestamps[row], self.values[row]);
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
