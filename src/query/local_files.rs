//! Reads the byte ranges of local metric files for DataFusion's Parquet
//! scan.
//!
//! DataFusion reads files through the `object_store` crate, whose local
//! file system store opens the file again for every request, zero-fills a
//! buffer and hands the read to tokio's blocking thread pool. A query over
//! 1,000 files makes thousands of such requests; together they cost about a
//! tenth of a full scan. [`LocalFileReaderFactory`] keeps one open handle
//! per file and reads each range straight into an uninitialised buffer on
//! the query thread (metric files are read from the page cache in the
//! common case; a cold read blocks one query thread, which only ever runs
//! queries). Footers still come from DataFusion's reader, so they are
//! cached across queries as before.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::common::Result as DfResult;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::object_store::path::Path as StorePath;
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, Label, MetricBuilder, MetricCategory, MetricType,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;

/// Creates readers for the files of one scan: byte ranges from local
/// files, footers from `footers` (DataFusion's caching reader).
#[derive(Debug)]
pub(crate) struct LocalFileReaderFactory {
    /// The file system path of each file of the scan, by its location.
    paths: HashMap<StorePath, PathBuf>,
    /// Reads (and caches) footers.
    footers: Arc<dyn ParquetFileReaderFactory>,
}

impl LocalFileReaderFactory {
    /// A factory for files at `paths` (location in the scan, path on
    /// disk); footers are read by `footers`.
    pub(crate) fn new(
        paths: HashMap<StorePath, PathBuf>,
        footers: Arc<dyn ParquetFileReaderFactory>,
    ) -> Self {
        LocalFileReaderFactory { paths, footers }
    }
}

impl ParquetFileReaderFactory for LocalFileReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> DfResult<Box<dyn AsyncFileReader + Send>> {
        let location = partitioned_file.object_meta.location.clone();
        let footers = self.footers.create_reader(
            partition_index,
            partitioned_file,
            metadata_size_hint,
            metrics,
        )?;
        // A location this factory does not know is read by DataFusion's
        // reader alone.
        let Some(path) = self.paths.get(&location) else {
            return Ok(footers);
        };
        let bytes_scanned = MetricBuilder::new(metrics)
            .with_label(Label::new("filename", location.to_string()))
            .with_type(MetricType::Summary)
            .with_category(MetricCategory::Bytes)
            .counter("bytes_scanned", partition_index);
        Ok(Box::new(LocalFileReader {
            path: path.clone(),
            file: None,
            footers,
            bytes_scanned,
        }))
    }
}

/// Reads one local file: byte ranges directly, the footer through
/// DataFusion's reader.
struct LocalFileReader {
    path: PathBuf,
    /// Opened on the first read.
    file: Option<File>,
    footers: Box<dyn AsyncFileReader + Send>,
    bytes_scanned: Count,
}

impl LocalFileReader {
    fn read_range(&mut self, range: Range<u64>) -> Result<Bytes, ParquetError> {
        let path = &self.path;
        let failed = |action: &str, error: std::io::Error| {
            ParquetError::General(format!("cannot {action} {}: {error}", path.display()))
        };
        let length = range
            .end
            .checked_sub(range.start)
            .and_then(|length| usize::try_from(length).ok())
            .ok_or_else(|| {
                ParquetError::General(format!(
                    "invalid byte range {range:?} of {}",
                    path.display()
                ))
            })?;
        let file = match &mut self.file {
            Some(file) => file,
            None => self
                .file
                .insert(File::open(path).map_err(|error| failed("open", error))?),
        };
        file.seek(SeekFrom::Start(range.start))
            .map_err(|error| failed("seek in", error))?;
        // `read_to_end` fills the spare capacity without zeroing it first.
        let mut buffer = Vec::with_capacity(length);
        Read::by_ref(file)
            .take(range.end - range.start)
            .read_to_end(&mut buffer)
            .map_err(|error| failed("read", error))?;
        if buffer.len() != length {
            return Err(ParquetError::EOF(format!(
                "{} ends before byte {}",
                path.display(),
                range.end
            )));
        }
        self.bytes_scanned.add(length);
        Ok(Bytes::from(buffer))
    }
}

impl AsyncFileReader for LocalFileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, ParquetError>> {
        let result = self.read_range(range);
        futures::future::ready(result).boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<Bytes>, ParquetError>> {
        let result = ranges
            .into_iter()
            .map(|range| self.read_range(range))
            .collect();
        futures::future::ready(result).boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>, ParquetError>> {
        self.footers.get_metadata(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(path: PathBuf) -> LocalFileReader {
        let metrics = ExecutionPlanMetricsSet::new();
        LocalFileReader {
            path,
            file: None,
            footers: Box::new(NoFooter),
            bytes_scanned: MetricBuilder::new(&metrics).counter("bytes_scanned", 0),
        }
    }

    /// A footer reader that is never asked.
    struct NoFooter;

    impl AsyncFileReader for NoFooter {
        fn get_bytes(&mut self, _: Range<u64>) -> BoxFuture<'_, Result<Bytes, ParquetError>> {
            futures::future::ready(Err(ParquetError::General("no bytes".into()))).boxed()
        }

        fn get_metadata<'a>(
            &'a mut self,
            _: Option<&'a ArrowReaderOptions>,
        ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>, ParquetError>> {
            futures::future::ready(Err(ParquetError::General("no footer".into()))).boxed()
        }
    }

    #[test]
    fn reads_ranges_in_any_order_and_refuses_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let content: Vec<u8> = (0..=255).collect();
        std::fs::write(&path, &content).unwrap();
        let mut reader = reader(path);
        let ranges = futures::executor::block_on(reader.get_byte_ranges(vec![
            200..256,
            0..10,
            10..10,
            100..150,
        ]))
        .unwrap();
        assert_eq!(&ranges[0][..], &content[200..256]);
        assert_eq!(&ranges[1][..], &content[0..10]);
        assert!(ranges[2].is_empty());
        assert_eq!(&ranges[3][..], &content[100..150]);
        assert_eq!(reader.bytes_scanned.value(), 56 + 10 + 50);
        let past_end = futures::executor::block_on(reader.get_bytes(250..260));
        assert!(
            matches!(past_end, Err(ParquetError::EOF(_))),
            "{past_end:?}"
        );
        let backwards = futures::executor::block_on(reader.get_bytes(Range { start: 20, end: 10 }));
        assert!(backwards.is_err());
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.parquet");
        let mut reader = reader(path);
        let Err(error) = futures::executor::block_on(reader.get_bytes(0..4)) else {
            panic!("read a missing file");
        };
        assert!(error.to_string().contains("gone.parquet"), "{error}");
    }
}
