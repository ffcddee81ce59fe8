//! Metric files: layout on disk, schema and encodings, writing, reading and
//! compaction. Every file access of the metric data goes through here.

pub mod aggregates;
pub mod cache;
pub mod checksums;
pub mod columns;
pub mod compaction;
pub(crate) mod dormant_log;
pub mod file_meta;
pub mod footer_cache;
pub(crate) mod key_reader;
pub mod layout;
pub(crate) mod pages;
pub mod persisted;
pub mod reader;
pub(crate) mod row_plan;
pub(crate) mod run_manifest;
pub mod schema;
pub mod source;
pub mod spill;
pub mod store;
pub(crate) mod stored_file;
pub mod upload;
pub mod writer;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::error_kind::{Classify, ErrorKind};

pub use aggregates::{BlockAggregate, BlockPoint, FileAggregates, KeyAggregates};
pub use cache::{CacheSnapshot, ReadCache};
pub use checksums::{DataFile, FileChecksums};
pub use columns::{LoggedRows, SortedColumns};
pub use file_meta::FileMetadata;
pub(crate) use key_reader::{KeyRowsReader, NumericRows};
pub use layout::{MetricsLayout, RunDirectory};
pub(crate) use pages::ColumnRows;
pub use persisted::{PersistedFile, SharedByFiles};
pub(crate) use reader::{RowRequest, SelectedRows, StepFilter};
pub use row_plan::StepBounds;
pub(crate) use row_plan::{FooterTrust, KeyRows, SummaryRows};
pub use source::{ByteSource, LocalFile};
pub use store::{MetricStore, StoreError};
pub use upload::{UploadSnapshot, Uploader};
pub use writer::{MetricFileWriter, WrittenFile};

/// Errors of metric file storage.
#[derive(Debug, Error)]
pub enum StorageError {
    /// A file operation failed.
    #[error("{operation} failed for {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Parquet library refused to read or write.
    #[error("parquet error in {path}: {message}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The library's message.
        message: String,
    },
    /// Arrow refused a batch.
    #[error("arrow error: {0}")]
    Arrow(String),
    /// The code writing or compacting a file panicked; the panic was
    /// contained and the work is retried.
    #[error("{what} panicked: {message}")]
    Panicked {
        /// What was being done.
        what: &'static str,
        /// The panic's message.
        message: String,
    },
    /// A member of a spill file cannot be written or read back.
    #[error("spill file {path} at byte {offset}: {reason}")]
    Spill {
        /// The spill file.
        path: PathBuf,
        /// Where the member starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A file's contents are not what stepstore writes.
    #[error("metric file {path} is not valid: {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl StorageError {
    pub(crate) fn io(operation: &'static str, path: &Path, source: std::io::Error) -> Self {
        StorageError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn parquet(path: &Path, source: parquet::errors::ParquetError) -> Self {
        StorageError::Parquet {
            path: path.to_path_buf(),
            message: source.to_string(),
        }
    }
}

impl Classify for StorageError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

/// Writes `points` as metric file 1 at `path`, covering WAL record 1, and
/// opens it (for tests).
#[cfg(test)]
pub(crate) fn written_file(path: &Path, points: &[(&str, i64, i64, f64)]) -> PersistedFile {
    let mut writer = MetricFileWriter::create(path).unwrap();
    writer
        .write(SortedColumns::from_points(points.iter().copied()))
        .unwrap();
    writer.finish(vec![(1, 1)], vec![]).unwrap();
    PersistedFile::open(1, path).unwrap().0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MetricSeries;
    use std::sync::Arc;

    fn write_file(path: &Path, points: &[(&str, i64, i64, f64)], lsn: (u64, u64)) -> WrittenFile {
        let columns = SortedColumns::from_points(points.iter().copied());
        let mut writer = MetricFileWriter::create(path).unwrap();
        writer.write(columns).unwrap();
        writer.finish(vec![lsn], vec![]).unwrap()
    }

    fn series_of(file: &PersistedFile, key: &str) -> MetricSeries {
        let mut series = MetricSeries::default();
        file.read_key(key, &mut series).unwrap();
        series
    }

    #[test]
    fn written_files_read_back_per_key_with_footer_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/00000001.parquet");
        let written = write_file(
            &path,
            &[
                ("loss", 1, 10, 0.5),
                ("acc", 0, 10, f64::NAN),
                ("loss", 0, 9, f64::INFINITY),
                ("acc", 1, 11, 0.75),
            ],
            (4, 7),
        );
        assert_eq!(written.rows, 4);
        assert!(path.exists());
        assert!(!MetricsLayout::temp_path(&path).exists());
        let (file, metadata) = PersistedFile::open(1, &path).unwrap();
        assert_eq!(metadata.lsn_ranges, vec![(4, 7)]);
        assert_eq!(metadata.keys.len(), 2);
        assert_eq!(metadata.keys[1].0, "loss");
        assert_eq!(metadata.keys[1].1.latest_value, 0.5);
        let loss = series_of(&file, "loss");
        assert_eq!(loss.steps, vec![0, 1]);
        assert_eq!(loss.values[0], f64::INFINITY);
        let acc = series_of(&file, "acc");
        assert!(acc.values[0].is_nan());
        assert!(series_of(&file, "missing").is_empty());
    }

    #[test]
    fn files_carry_block_aggregates_and_pages_start_at_block_edges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000001.parquet");
        let mut points: Vec<(&str, i64, i64, f64)> = (0..10_000)
            .map(|step| ("loss", step, step, step as f64))
            .collect();
        points.extend((0..100).map(|step| ("acc", step, step, 1.0)));
        write_file(&path, &points, (1, 1));
        let (file, _) = PersistedFile::open(1, &path).unwrap();
        let aggregates = file.aggregates().expect("aggregates in the footer");
        let acc = aggregates.key("acc").unwrap();
        let loss = aggregates.key("loss").unwrap();
        assert_eq!((acc.first_row, acc.rows), (0, 100));
        let sizes: Vec<u32> = loss.blocks.iter().map(|block| block.rows).collect();
        let first = aggregates::BLOCK_ROWS as u32 - 100;
        assert_eq!(
            sizes,
            vec![
                first,
                aggregates::BLOCK_ROWS as u32,
                10_000 - first - aggregates::BLOCK_ROWS as u32
            ]
        );
        assert_eq!(loss.blocks[0].first.step, 0);
        assert_eq!(loss.blocks[1].first.step, i64::from(first));
        let footer = file.footer().unwrap();
        let offsets = footer.metadata().offset_index().expect("offset index");
        for column in &offsets[0] {
            let starts: Vec<i64> = column
                .page_locations()
                .iter()
                .map(|page| page.first_row_index)
                .collect();
            assert!(
                starts
                    .iter()
                    .all(|&row| row % aggregates::BLOCK_ROWS as i64 == 0),
                "pages start at block edges: {starts:?}"
            );
        }
    }

    #[test]
    fn compaction_merges_files_and_obsolete_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("00000001.parquet");
        let second = dir.path().join("00000002.parquet");
        write_file(
            &first,
            &[("a", 0, 0, 1.0), ("b", 5, 0, 2.0), ("a", 2, 0, 3.0)],
            (1, 3),
        );
        write_file(
            &second,
            &[("a", 1, 0, 4.0), ("c", 0, 0, 5.0), ("a", 2, 0, 6.0)],
            (8, 9),
        );
        let inputs: Vec<Arc<PersistedFile>> = [(1, &first), (2, &second)]
            .into_iter()
            .map(|(seq, path)| Arc::new(PersistedFile::open(seq, path).unwrap().0))
            .collect();
        let output = dir.path().join("00000003.parquet");
        let written =
            compaction::compact_files(&inputs, &output, &crate::durable_fs::FileIo::default())
                .unwrap();
        assert_eq!(written.rows, 6);
        assert_eq!(written.metadata.compacted_from, vec![1, 2]);
        assert_eq!(written.metadata.lsn_ranges, vec![(1, 3), (8, 9)]);
        let (merged, _) = PersistedFile::open(3, &output).unwrap();
        let aggregates = merged.aggregates().expect("compaction writes aggregates");
        assert_eq!(aggregates.key("a").unwrap().rows, 4);
        let a = series_of(&merged, "a");
        assert_eq!(a.steps, vec![0, 1, 2, 2]);
        assert_eq!(a.values, vec![1.0, 4.0, 3.0, 6.0], "ties keep file order");
        assert_eq!(series_of(&merged, "c").values, vec![5.0]);
        let latest_a = &written.metadata.keys[0].1;
        assert_eq!(latest_a.latest_value, 6.0);

        for input in &inputs {
            input.mark_obsolete();
        }
        drop(inputs);
        assert!(!first.exists() && !second.exists());
        assert!(output.exists());
    }
}
