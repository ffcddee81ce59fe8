//! Writes one metric file: sorted columns in, a complete Parquet file out,
//! made durable and renamed into place only when whole.
//!
//! Rows reach Parquet in multiples of [`BLOCK_ROWS`] (a remainder waits for
//! the next call), so data pages start at multiples of it, and the footer
//! gets the per-block aggregates ([`super::aggregates`]) beside stepstore's
//! metadata.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow::compute::concat_batches;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;

use super::StorageError;
use super::aggregates::{BLOCK_ROWS, FileAggregates};
use super::checksums::ChecksumWrite;
use super::columns::SortedColumns;
use super::file_meta::{FORMAT_VERSION, FileMetadata, normalise_ranges};
use super::layout::MetricsLayout;
use super::schema::{metric_file_schema, writer_properties};
use crate::durable_fs::{CheckedWrite, FileIo};
use crate::model::KeySummary;
use crate::wal::Lsn;

/// A metric file that was written and renamed into place.
#[derive(Clone, Debug)]
pub struct WrittenFile {
    /// Its final path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Rows it holds.
    pub rows: u64,
    /// Its footer metadata.
    pub metadata: FileMetadata,
}

/// Streams sorted columns into a temporary file; [`Self::finish`] seals it.
pub struct MetricFileWriter {
    writer: ArrowWriter<ChecksumWrite<CheckedWrite<File>>>,
    io: FileIo,
    final_path: PathBuf,
    temp_path: PathBuf,
    rows: u64,
    keys: Vec<(String, KeySummary)>,
    aggregates: FileAggregates,
    /// Rows not yet handed to Parquet (fewer than [`BLOCK_ROWS`]).
    carry: Option<RecordBatch>,
}

impl MetricFileWriter {
    /// Starts the file that will end up at `final_path`, writing straight
    /// to the file system.
    pub fn create(final_path: &Path) -> Result<Self, StorageError> {
        MetricFileWriter::create_with(final_path, &FileIo::default())
    }

    /// Starts the file that will end up at `final_path`, with every file
    /// operation going through `io`.
    pub(crate) fn create_with(final_path: &Path, io: &FileIo) -> Result<Self, StorageError> {
        if let Some(parent) = final_path.parent() {
            io.create_dir_synced(parent)
                .map_err(|source| StorageError::io("create directory", parent, source))?;
        }
        let temp_path = MetricsLayout::temp_path(final_path);
        let file = io
            .create(&temp_path)
            .map_err(|source| StorageError::io("create", &temp_path, source))?;
        let writer = ArrowWriter::try_new(
            ChecksumWrite::new(io.writer(file, &temp_path)),
            metric_file_schema(),
            Some(writer_properties()),
        )
        .map_err(|source| StorageError::parquet(&temp_path, source))?;
        Ok(MetricFileWriter {
            writer,
            io: io.clone(),
            final_path: final_path.to_path_buf(),
            temp_path,
            rows: 0,
            keys: Vec::new(),
            aggregates: FileAggregates::default(),
            carry: None,
        })
    }

    /// Appends rows. Across calls, rows must continue the file's
    /// `(key, step, timestamp)` order.
    pub fn write(&mut self, columns: SortedColumns) -> Result<(), StorageError> {
        if columns.is_empty() {
            return Ok(());
        }
        for (id, range) in columns.key_ranges() {
            self.aggregates.add_rows(
                &columns.keys[id],
                self.rows + range.start as u64,
                &columns.steps[range.clone()],
                &columns.timestamps[range.clone()],
                &columns.values[range],
            );
        }
        self.rows += columns.len() as u64;
        for (key, summary) in columns.summaries() {
            match self.keys.last_mut() {
                Some((last_key, last)) if *last_key == key => last.merge_newer(&summary),
                _ => self.keys.push((key, summary)),
            }
        }
        let batch = columns
            .into_record_batch()
            .map_err(|source| StorageError::Arrow(source.to_string()))?;
        self.write_aligned(batch)
    }

    /// Hands Parquet whole multiples of [`BLOCK_ROWS`] rows, keeping the
    /// remainder (copied, so the rest of the batch is freed) for later.
    fn write_aligned(&mut self, batch: RecordBatch) -> Result<(), StorageError> {
        let mut rest = batch;
        if let Some(carry) = self.carry.take() {
            let need = (BLOCK_ROWS - carry.num_rows()).min(rest.num_rows());
            let head = concat_batches(&carry.schema(), [&carry, &rest.slice(0, need)])
                .map_err(|source| StorageError::Arrow(source.to_string()))?;
            rest = rest.slice(need, rest.num_rows() - need);
            if head.num_rows() < BLOCK_ROWS {
                self.carry = Some(head);
                return Ok(());
            }
            self.write_batch(&head)?;
        }
        let aligned = rest.num_rows() - rest.num_rows() % BLOCK_ROWS;
        if aligned > 0 {
            self.write_batch(&rest.slice(0, aligned))?;
        }
        if aligned < rest.num_rows() {
            let tail = rest.slice(aligned, rest.num_rows() - aligned);
            let copy = concat_batches(&tail.schema(), [&tail])
                .map_err(|source| StorageError::Arrow(source.to_string()))?;
            self.carry = Some(copy);
        }
        Ok(())
    }

    fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), StorageError> {
        self.writer
            .write(batch)
            .map_err(|source| StorageError::parquet(&self.temp_path, source))
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes the footer with `lsn_ranges` and `compacted_from`, syncs the
    /// file, renames it into place and syncs the directory.
    pub fn finish(
        mut self,
        lsn_ranges: Vec<(Lsn, Lsn)>,
        compacted_from: Vec<u64>,
    ) -> Result<WrittenFile, StorageError> {
        if let Some(carry) = self.carry.take() {
            self.write_batch(&carry)?;
        }
        // Every data page out, through the checksums, before the footer
        // that records them.
        self.writer
            .flush()
            .map_err(|source| StorageError::parquet(&self.temp_path, source))?;
        self.writer
            .sync()
            .map_err(|source| StorageError::io("write", &self.temp_path, source))?;
        let checksums = self.writer.inner().checksums();
        self.writer
            .append_key_value_metadata(checksums.to_key_value());
        let metadata = FileMetadata {
            format_version: FORMAT_VERSION,
            lsn_ranges: normalise_ranges(lsn_ranges),
            keys: std::mem::take(&mut self.keys),
            compacted_from,
        };
        let entry = metadata
            .to_key_value()
            .map_err(|error| StorageError::Metadata {
                path: self.temp_path.clone(),
                reason: error.to_string(),
            })?;
        self.writer.append_key_value_metadata(entry);
        self.writer
            .append_key_value_metadata(self.aggregates.to_key_value());
        self.writer
            .finish()
            .map_err(|source| StorageError::parquet(&self.temp_path, source))?;
        self.writer
            .sync()
            .and_then(|()| {
                self.io
                    .sync_all(self.writer.inner().get_ref().get_ref(), &self.temp_path)
            })
            .map_err(|source| StorageError::io("sync", &self.temp_path, source))?;
        let bytes = self
            .writer
            .inner()
            .get_ref()
            .get_ref()
            .metadata()
            .map_err(|source| StorageError::io("stat", &self.temp_path, source))?
            .len();
        self.io
            .rename(&self.temp_path, &self.final_path)
            .map_err(|source| StorageError::io("rename", &self.temp_path, source))?;
        if let Some(parent) = self.final_path.parent() {
            self.io
                .sync_dir(parent)
                .map_err(|source| StorageError::io("sync directory", parent, source))?;
        }
        Ok(WrittenFile {
            path: self.final_path.clone(),
            bytes,
            rows: self.rows,
            metadata,
        })
    }
}

impl Drop for MetricFileWriter {
    fn drop(&mut self) {
        // An unfinished file never gets its final name; remove the remains.
        if self.temp_path.exists() {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}
