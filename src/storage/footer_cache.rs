//! The cache of metric file footers (schema, row groups, statistics, page
//! index, and the block aggregates and checksums parsed from them), least
//! recently used dropped first, within a memory budget. A footer is tens of
//! KiB in memory even for a small file, so keeping one per file for the
//! life of the process would grow memory with the number of files
//! (thousands of runs) instead of the work at hand. Each engine owns one,
//! through its [`super::MetricsLayout`] and the [`super::SharedByFiles`]
//! its files hold.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::StorageError;
use super::aggregates::FileAggregates;
use super::checksums::FileChecksums;

/// Memory the cached footers may take by default, in bytes.
pub const DEFAULT_FOOTER_CACHE_BYTES: u64 = 32 << 20;

/// A file's footer and its parsed block aggregates (`None`: the file has
/// none, or none that check out).
#[derive(Clone, Debug)]
pub struct FileFooter {
    /// The Parquet footer.
    pub metadata: ArrowReaderMetadata,
    /// The block aggregates stored in it.
    pub aggregates: Option<Arc<FileAggregates>>,
    /// The checksums of its data pages (`None`: a file from before them,
    /// or a table that does not check out).
    pub checksums: Option<Arc<FileChecksums>>,
}

/// A footer and the memory it takes.
#[derive(Clone)]
struct CachedFooter {
    footer: FileFooter,
    bytes: u64,
}

/// Weighs a cached footer by its memory.
#[derive(Clone)]
struct FooterWeight;

impl Weighter<PathBuf, CachedFooter> for FooterWeight {
    fn weight(&self, path: &PathBuf, cached: &CachedFooter) -> u64 {
        cached.bytes + path.as_os_str().len() as u64
    }
}

/// Footers by file path.
pub struct FooterCache {
    footers: Cache<PathBuf, CachedFooter, FooterWeight>,
    loads: AtomicU64,
}

impl std::fmt::Debug for FooterCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FooterCache")
            .field("bytes", &self.bytes())
            .field("loads", &self.loads())
            .finish()
    }
}

impl Default for FooterCache {
    fn default() -> Self {
        FooterCache::new(DEFAULT_FOOTER_CACHE_BYTES)
    }
}

impl FooterCache {
    /// An empty cache holding at most `bytes` of footers.
    pub fn new(bytes: u64) -> Self {
        FooterCache {
            footers: Cache::with_weighter(1024, bytes, FooterWeight),
            loads: AtomicU64::new(0),
        }
    }

    /// The footer of the file at `path`, loaded with `load` (and kept) when
    /// it is not cached.
    pub fn get_or_load(
        &self,
        path: &Path,
        load: impl FnOnce() -> Result<FileFooter, StorageError>,
    ) -> Result<FileFooter, StorageError> {
        self.footers
            .get_or_insert_with(path, || {
                self.loads.fetch_add(1, Ordering::Relaxed);
                load().map(cached)
            })
            .map(|cached| cached.footer)
    }

    /// Keeps `footer` as the footer of `path` (a file just written or
    /// opened), replacing any earlier one.
    pub fn insert(&self, path: &Path, footer: FileFooter) {
        self.footers.insert(path.to_path_buf(), cached(footer));
    }

    /// Forgets every footer (benchmarks: a cold cache).
    pub fn clear(&self) {
        self.footers.clear();
    }

    /// Forgets the footer of a deleted file.
    pub fn remove(&self, path: &Path) {
        self.footers.remove(path);
    }

    /// Memory the cached footers take, in bytes.
    pub fn bytes(&self) -> u64 {
        self.footers.weight()
    }

    /// Footers loaded from disk because they were not cached.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }
}

fn cached(footer: FileFooter) -> CachedFooter {
    let metadata = &footer.metadata;
    let schema_bytes: u64 = metadata
        .schema()
        .metadata()
        .iter()
        .map(|(key, value)| (key.len() + value.len()) as u64)
        .sum();
    let aggregate_bytes: u64 = footer
        .aggregates
        .iter()
        .flat_map(|file| &file.keys)
        .map(|key| {
            (key.key.len()
                + std::mem::size_of_val(key)
                + key.blocks.len() * std::mem::size_of::<super::BlockAggregate>())
                as u64
        })
        .sum();
    let checksum_bytes = footer.checksums.as_ref().map_or(0, |checksums| {
        (checksums.covered() / super::checksums::BLOCK_BYTES + 1) * 4
    });
    let bytes =
        metadata.metadata().memory_size() as u64 + schema_bytes + aggregate_bytes + checksum_bytes;
    CachedFooter { footer, bytes }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::ArrowReaderOptions;

    use super::*;

    fn write_file(path: &Path, rows: i64) -> FileFooter {
        let batch = RecordBatch::try_from_iter([(
            "step",
            Arc::new(Int64Array::from_iter_values(0..rows)) as _,
        )])
        .unwrap();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        load(path).unwrap()
    }

    fn load(path: &Path) -> Result<FileFooter, StorageError> {
        let file =
            std::fs::File::open(path).map_err(|source| StorageError::io("open", path, source))?;
        let metadata = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
            .map_err(|error| StorageError::parquet(path, error))?;
        Ok(FileFooter {
            metadata,
            aggregates: None,
            checksums: None,
        })
    }

    #[test]
    fn footers_stay_within_the_budget_and_reload_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..64)
            .map(|index| dir.path().join(format!("{index}.parquet")))
            .collect();
        let one = cached(write_file(&paths[0], 10)).bytes;
        let cache = FooterCache::new(one * 8);
        for path in &paths {
            let footer = write_file(path, 10);
            cache.insert(path, footer);
            assert!(cache.bytes() <= one * 8 + 4096, "{} bytes", cache.bytes());
        }
        // Every footer is still there to be had: from memory or the file.
        for path in &paths {
            let footer = cache.get_or_load(path, || load(path)).unwrap();
            assert_eq!(footer.metadata.metadata().file_metadata().num_rows(), 10);
        }
        assert!(cache.loads() > 0, "old footers were dropped and read again");
        assert!(cache.bytes() <= one * 8 + 4096);
    }

    #[test]
    fn a_cached_footer_is_not_read_again_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.parquet");
        let cache = FooterCache::new(1 << 20);
        cache.insert(&path, write_file(&path, 5));
        cache.get_or_load(&path, || load(&path)).unwrap();
        assert_eq!(cache.loads(), 0, "an inserted footer comes from memory");
        cache.remove(&path);
        assert_eq!(cache.bytes(), 0);
        let footer = cache.get_or_load(&path, || load(&path)).unwrap();
        assert_eq!(footer.metadata.metadata().file_metadata().num_rows(), 5);
        assert_eq!(cache.loads(), 1, "a removed footer is read again");
    }

    #[test]
    fn a_failed_load_is_an_error_and_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.parquet");
        let cache = FooterCache::new(1 << 20);
        assert!(cache.get_or_load(&missing, || load(&missing)).is_err());
        assert_eq!(cache.bytes(), 0);
    }
}
