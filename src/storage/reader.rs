//! The one reader of metric files, part one: footers, and the rows a plan
//! ([`super::row_plan`]) selects in the columns a read wants
//! ([`SelectedRows`], through the Arrow reader). Reads of keys build on it
//! in [`super::key_reader`]. Every byte comes through a checked
//! [`DataFile`] over a [`super::ByteSource`]; the byte spans a selection
//! needs are fetched up front, together.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::error::ArrowError;
use bytes::Bytes;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder, RowFilter,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::reader::{ChunkReader, Length};

use super::StorageError;
use super::checksums::DataFile;
use super::file_meta::FileMetadata;
use super::persisted::PersistedFile;
use super::row_plan::{RowGroupSelection, page_spans};
use super::source::coalesce;

/// Rows decoded per batch: bounds the memory of a read to a batch per
/// file.
pub(super) const BATCH_ROWS: usize = 32 * 1024;

/// Loads the footer of the local file at `path` (see [`load_footer_from`]).
pub fn load_footer(path: &Path) -> Result<(ArrowReaderMetadata, FileMetadata), StorageError> {
    let length = std::fs::metadata(path)
        .map_err(|source| StorageError::io("stat", path, source))?
        .len();
    load_footer_from(&DataFile::open(path, length, None)?)
}

/// Loads a file's footer (schema, row groups, statistics, and the offset
/// index when the file has one, so a row selection skips whole pages
/// unread) and stepstore's metadata from it.
pub fn load_footer_from(
    data: &DataFile,
) -> Result<(ArrowReaderMetadata, FileMetadata), StorageError> {
    let path = data.path();
    let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
    let reader_metadata = ArrowReaderMetadata::load(data, options)
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

/// A test of the steps of a decoded batch of the step column alone: which
/// rows to keep.
pub(crate) type StepFilter =
    Arc<dyn Fn(&ArrayRef) -> Result<BooleanArray, ArrowError> + Send + Sync>;

/// What a [`SelectedRows`] read reads.
pub(crate) struct RowRequest {
    /// The file rows, sorted and disjoint.
    pub ranges: Vec<Range<u64>>,
    /// The columns to decode, by name, in any order (a batch holds them in
    /// file order).
    pub columns: Vec<&'static str>,
    /// Rows whose step fails it are dropped while decoding (the step
    /// column is decoded first, the others only for the rows that pass).
    pub step_filter: Option<StepFilter>,
    /// Rows per batch.
    pub batch_size: usize,
}

/// Decoded batches of the selected rows and columns of one file.
pub(crate) struct SelectedRows {
    reader: ParquetRecordBatchReader,
    path: PathBuf,
    /// Bytes fetched up front for it.
    pub prefetched_bytes: usize,
}

impl Iterator for SelectedRows {
    type Item = Result<RecordBatch, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.reader.next()?;
        Some(batch.map_err(|source| StorageError::Parquet {
            path: self.path.clone(),
            message: source.to_string(),
        }))
    }
}

impl PersistedFile {
    /// Reads the rows and columns `request` asks for; `None` when it asks
    /// for no row.
    pub(crate) fn read_rows(
        &self,
        request: RowRequest,
    ) -> Result<Option<SelectedRows>, StorageError> {
        let (footer, data) = self.open_data()?;
        select_rows(footer, data, request)
    }
}

pub(super) fn select_rows(
    footer: ArrowReaderMetadata,
    data: DataFile,
    request: RowRequest,
) -> Result<Option<SelectedRows>, StorageError> {
    let path = data.path().to_path_buf();
    let metadata = Arc::clone(footer.metadata());
    let plan = RowGroupSelection::of(&metadata, &request.ranges);
    if plan.selected_rows == 0 {
        return Ok(None);
    }
    let schema = metadata.file_metadata().schema_descr();
    let leaf_of = |name: &str| {
        (0..schema.num_columns())
            .find(|&leaf| schema.column(leaf).name() == name)
            .ok_or_else(|| StorageError::Metadata {
                path: path.clone(),
                reason: format!("no column {name}"),
            })
    };
    let leaves = request
        .columns
        .iter()
        .map(|name| leaf_of(name))
        .collect::<Result<Vec<usize>, _>>()?;
    let step_leaf = match &request.step_filter {
        Some(_) => Some(leaf_of(super::schema::STEP_COLUMN)?),
        None => None,
    };
    let mut spans = Vec::new();
    for (&group, rows) in plan.row_groups.iter().zip(&plan.rows_in_group) {
        for &leaf in leaves.iter().chain(&step_leaf) {
            spans.extend(page_spans(&metadata, group, leaf, rows));
        }
    }
    let chunks =
        Prefetched::read(data, spans).map_err(|source| StorageError::parquet(&path, source))?;
    let prefetched_bytes = chunks.loaded_bytes();
    let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(chunks, footer)
        .with_row_groups(plan.row_groups)
        .with_projection(ProjectionMask::leaves(schema, leaves))
        .with_batch_size(request.batch_size);
    if let Some(selection) = plan.selection {
        builder = builder.with_row_selection(selection);
    }
    if let (Some(step_leaf), Some(filter)) = (step_leaf, request.step_filter) {
        let predicate = ArrowPredicateFn::new(
            ProjectionMask::leaves(schema, [step_leaf]),
            move |batch: RecordBatch| filter(batch.column(0)),
        );
        builder = builder.with_row_filter(RowFilter::new(vec![Box::new(predicate)]));
    }
    let reader = builder
        .build()
        .map_err(|source| StorageError::parquet(&path, source))?;
    Ok(Some(SelectedRows {
        reader,
        path,
        prefetched_bytes,
    }))
}

/// A file for the Parquet reader whose byte spans a read will need were
/// fetched (and checked) up front, together; anything else is read when
/// asked for.
struct Prefetched {
    data: DataFile,
    /// Fetched spans, by start offset, disjoint.
    loaded: Vec<(u64, Bytes)>,
}

impl Prefetched {
    fn read(data: DataFile, spans: Vec<Range<u64>>) -> Result<Self, ParquetError> {
        let merged = coalesce(spans);
        let pieces = data.read_ranges(&merged)?;
        let loaded = merged.iter().map(|span| span.start).zip(pieces).collect();
        Ok(Prefetched { data, loaded })
    }

    fn loaded_bytes(&self) -> usize {
        self.loaded.iter().map(|(_, bytes)| bytes.len()).sum()
    }

    /// The fetched span holding `start`, and `start`'s offset in it.
    fn span_of(&self, start: u64) -> Option<(&Bytes, usize)> {
        let index = self.loaded.partition_point(|(offset, _)| *offset <= start);
        let (offset, bytes) = &self.loaded[index.checked_sub(1)?];
        let from = usize::try_from(start - offset).ok()?;
        (from < bytes.len()).then_some((bytes, from))
    }
}

impl Length for Prefetched {
    fn len(&self) -> u64 {
        self.data.len()
    }
}

impl ChunkReader for Prefetched {
    type T = std::io::Cursor<Bytes>;

    fn get_read(&self, start: u64) -> Result<Self::T, ParquetError> {
        // The rest of the fetched span holding `start`, else of the file.
        if let Some((bytes, from)) = self.span_of(start) {
            return Ok(std::io::Cursor::new(bytes.slice(from..)));
        }
        let length = usize::try_from(self.data.len().saturating_sub(start)).unwrap_or(usize::MAX);
        Ok(std::io::Cursor::new(self.data.read_at(start, length)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        if let Some((bytes, from)) = self.span_of(start)
            && from + length <= bytes.len()
        {
            return Ok(bytes.slice(from..from + length));
        }
        self.data.read_at(start, length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::written_file;
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, Int64Type};

    #[test]
    fn a_selection_prefetches_only_the_pages_of_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000001.parquet");
        // Values that do not compress, so pages are of a size.
        let value = |step: i64| (step * 2_654_435_761 % 1_000_003) as f64 / 7.0;
        let points: Vec<(&str, i64, i64, f64)> = (0..200_000)
            .map(|step| ("loss", step, step, value(step)))
            .collect();
        let file = written_file(&path, &points);
        let request = |ranges: Vec<Range<u64>>| RowRequest {
            ranges,
            columns: vec![super::super::schema::VALUE_COLUMN],
            step_filter: Some(Arc::new(|steps: &ArrayRef| {
                let steps = steps.as_primitive::<Int64Type>();
                Ok(steps
                    .iter()
                    .map(|step| step.map(|step| step % 2 == 0))
                    .collect())
            })),
            batch_size: 1_000,
        };
        let rows = file
            .read_rows(request(vec![10..20, 150_000..150_004]))
            .unwrap()
            .unwrap();
        let small = rows.prefetched_bytes;
        let values: Vec<f64> = rows
            .flat_map(|batch| {
                let batch = batch.unwrap();
                assert_eq!(batch.num_columns(), 1);
                batch
                    .column(0)
                    .as_primitive::<Float64Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(
            values,
            [10, 12, 14, 16, 18, 150_000, 150_002].map(value).to_vec(),
            "the step filter keeps even steps"
        );
        let everything = file
            .read_rows(request(std::iter::once(0..200_000).collect()))
            .unwrap()
            .unwrap();
        assert!(
            small * 10 < everything.prefetched_bytes,
            "{small} bytes for a few pages, {} for all",
            everything.prefetched_bytes
        );
        assert!(file.read_rows(request(vec![])).unwrap().is_none());
    }
}
