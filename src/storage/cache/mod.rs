//! The local cache of a data directory whose metric files live in an
//! object store (`--store`, sized by `--cache-mb`, under `--cache-dir`).
//!
//! With a store, the store holds every metric file and local disk holds a
//! bounded working set:
//! - files written here and already uploaded stay local while they are
//!   recently read ("local copies");
//! - byte ranges read from the store are kept in 1 MiB chunks
//!   (`<cache-dir>/ranges/<file>.<chunk>`).
//!
//! Both count against one budget; the least recently used entry goes first.
//! Files moved to the store are read through it as
//! [`super::stored_file::StoredFile`]s.
//! Evicting a local copy first saves the file's footer and page index
//! (`<cache-dir>/footers/<file>`), then deletes the copy: from then on the
//! file is read from the store through the chunks. Footer copies are not
//! evicted (they are about 1% of a file): a restart finds every file it
//! moved to the store without asking the store, and opens them without
//! fetching a footer.

mod chunk_writer;
mod index;
#[cfg(test)]
pub(crate) mod testing;

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::StorageError;
use super::persisted::PersistedFile;
use super::source::ByteSource;
use super::store::MetricStore;
use super::stored_file::StoredFile;
use chunk_writer::ChunkWriter;
use index::{Entry, Index, Slot};

/// The cache's budget when `--cache-mb` is not given, in MiB.
pub const DEFAULT_CACHE_MB: u64 = 1024;

/// Size of one cached range of a stored file (the last one of a file is
/// shorter).
pub(crate) const CHUNK_BYTES: u64 = 1 << 20;

/// Fetched chunks held in memory for the writer thread, at most; past it,
/// reads write the chunks they fetch themselves.
const MAX_UNWRITTEN_BYTES: u64 = 256 << 20;

const FOOTERS_DIR: &str = "footers";
const RANGES_DIR: &str = "ranges";
/// Starts a footer copy: magic, file length, offset of the copied tail.
const FOOTER_MAGIC: &[u8; 8] = b"SSFOOT01";
pub(super) const FOOTER_HEADER_BYTES: u64 = 24;

/// What the cache has done since start, for `/metrics`.
#[derive(Debug, Default)]
struct CacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
    fetches: AtomicU64,
    fetched_bytes: AtomicU64,
    evicted_chunks: AtomicU64,
    evicted_local_files: AtomicU64,
}

/// The cache's figures at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheSnapshot {
    /// Bytes of local copies and chunks held.
    pub bytes: u64,
    /// The budget.
    pub budget: u64,
    /// Chunks read from the cache.
    pub hits: u64,
    /// Chunks fetched from the store.
    pub misses: u64,
    /// Fetches from the store for reads (each gets the missing chunks of
    /// one read, concurrently).
    pub fetches: u64,
    /// Bytes fetched from the store for reads.
    pub fetched_bytes: u64,
    /// Chunks evicted.
    pub evicted_chunks: u64,
    /// Local copies of uploaded files evicted (those files are read from
    /// the store since).
    pub evicted_local_files: u64,
}

/// The cache of one data directory.
#[derive(Debug)]
pub struct ReadCache {
    store: MetricStore,
    dir: PathBuf,
    /// The local metrics tree: files are named by their path under it.
    metrics_root: PathBuf,
    budget: AtomicU64,
    index: Mutex<Index>,
    /// Signalled when a held chunk is written or dropped.
    written: Condvar,
    writer: ChunkWriter,
    stats: CacheStats,
    /// The cache itself, for the stored files it hands out.
    me: Weak<ReadCache>,
}

/// A chunk the cache has: written to its file, or still in memory.
pub(super) enum CachedChunk {
    File(File),
    Unwritten(Bytes),
}

impl ReadCache {
    /// The cache in `dir` for files of the local tree `metrics_root` stored
    /// in `store`, holding at most `budget` bytes of local copies and
    /// chunks. Chunks left by an earlier run are kept (oldest first out).
    pub fn open(
        store: MetricStore,
        dir: PathBuf,
        metrics_root: PathBuf,
        budget: u64,
    ) -> Result<Arc<ReadCache>, StorageError> {
        for sub in [FOOTERS_DIR, RANGES_DIR] {
            let path = dir.join(sub);
            fs::create_dir_all(&path)
                .map_err(|source| StorageError::io("create", &path, source))?;
        }
        let cache = Arc::new_cyclic(|me| ReadCache {
            store,
            dir,
            metrics_root,
            budget: AtomicU64::new(budget),
            index: Mutex::default(),
            written: Condvar::new(),
            writer: ChunkWriter::start(me.clone()),
            stats: CacheStats::default(),
            me: me.clone(),
        });
        let ranges = cache.dir.join(RANGES_DIR);
        let mut chunks = Vec::new();
        for path in files_under(&ranges)? {
            if path.extension().is_some_and(|extension| extension == "tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some((relative, chunk)) = chunk_of(&ranges, &path) else {
                continue;
            };
            let metadata =
                fs::metadata(&path).map_err(|source| StorageError::io("stat", &path, source))?;
            let used = metadata.modified().ok();
            chunks.push((used, relative, chunk, metadata.len()));
        }
        chunks.sort_by_key(|(used, ..)| *used);
        {
            let mut index = cache.lock();
            for (_, relative, chunk, bytes) in chunks {
                index.insert(Entry::Chunk(relative, chunk), bytes, None);
            }
        }
        cache.evict();
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes the budget (tests size it by the files they write).
    #[cfg(test)]
    fn set_budget(&self, budget: u64) {
        self.budget.store(budget, Ordering::Relaxed);
        self.evict();
    }

    /// The store the files are in.
    pub fn store(&self) -> &MetricStore {
        &self.store
    }

    /// The path of `local` under the metrics tree.
    pub(crate) fn relative(&self, local: &Path) -> Option<PathBuf> {
        local
            .strip_prefix(&self.metrics_root)
            .ok()
            .map(Path::to_path_buf)
    }

    /// The files whose local copies were evicted (their footer copies), as
    /// `(path relative to the metrics tree, file length)`.
    pub fn moved_files(&self) -> Result<Vec<(PathBuf, u64)>, StorageError> {
        let footers = self.dir.join(FOOTERS_DIR);
        let mut moved = Vec::new();
        for path in files_under(&footers)? {
            if path.extension().is_some_and(|extension| extension == "tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Ok(relative) = path.strip_prefix(&footers) else {
                continue;
            };
            match read_footer_header(&path) {
                Ok((length, _)) => moved.push((relative.to_path_buf(), length)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring a damaged footer copy; the store's listing names the file");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(moved)
    }

    /// Counts the local copy of `file`, just uploaded, against the budget
    /// (evicting what no longer fits).
    pub(crate) fn adopt_local(&self, file: &Arc<PersistedFile>) {
        let Some(relative) = self.relative(file.path()) else {
            return;
        };
        self.lock().insert(
            Entry::Local(relative),
            file.bytes(),
            Some(Arc::downgrade(file)),
        );
        self.evict();
    }

    /// Moves every uploaded file with a local copy to the store for
    /// reading (benchmarks; an operator's way to free the disk now).
    pub fn evict_local_copies(&self) {
        self.evict_where(|entry| matches!(entry, Entry::Local(_)));
    }

    /// Drops every cached range (benchmarks: a cold cache).
    pub fn clear_ranges(&self) {
        self.evict_where(|entry| matches!(entry, Entry::Chunk(..)));
    }

    /// Evicts every entry `chosen` picks.
    fn evict_where(&self, chosen: impl Fn(&Entry) -> bool) {
        let mut index = self.lock();
        let picked: Vec<Entry> = index
            .entries
            .keys()
            .filter(|entry| chosen(entry))
            .cloned()
            .collect();
        let victims: Vec<(Entry, Slot)> = picked
            .into_iter()
            .filter_map(|entry| Some((entry.clone(), index.remove(&entry)?)))
            .collect();
        let unwritten: Vec<(PathBuf, u64)> = index
            .unwritten
            .keys()
            .filter(|(relative, chunk)| chosen(&Entry::Chunk(relative.clone(), *chunk)))
            .cloned()
            .collect();
        for (relative, chunk) in unwritten {
            index.drop_unwritten(&relative, chunk);
        }
        drop(index);
        self.written.notify_all();
        self.evict_entries(victims);
    }

    /// Stops counting the local copy of `local` (deleted: the file is read
    /// from the store).
    pub(crate) fn release_local(&self, local: &Path) {
        if let Some(relative) = self.relative(local) {
            self.lock().remove(&Entry::Local(relative));
        }
    }

    /// Marks the local copy of `local` as just read.
    pub(crate) fn touch_local(&self, local: &Path) {
        if let Some(relative) = self.relative(local) {
            self.lock().touch(&Entry::Local(relative));
        }
    }

    /// Forgets everything cached of the file `local` (deleted for good).
    pub(crate) fn forget(&self, local: &Path, length: u64) {
        let Some(relative) = self.relative(local) else {
            return;
        };
        let chunks = length.div_ceil(CHUNK_BYTES);
        {
            let mut index = self.lock();
            index.remove(&Entry::Local(relative.clone()));
            for chunk in 0..chunks {
                index.remove(&Entry::Chunk(relative.clone(), chunk));
                index.drop_unwritten(&relative, chunk);
            }
            // A chunk being written is deleted by its writer: wait for it.
            while index.writing.iter().any(|(file, _)| *file == relative) {
                index = match self.written.wait(index) {
                    Ok(index) => index,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
        }
        self.written.notify_all();
        for chunk in 0..chunks {
            let _ = fs::remove_file(self.chunk_path(&relative, chunk));
        }
        let _ = fs::remove_file(self.footer_path(&relative));
    }

    /// Evicts the least recently used entries until the rest fit.
    fn evict(&self) {
        let victims = self.lock().over(self.budget.load(Ordering::Relaxed));
        self.evict_entries(victims);
    }

    /// Removes entries already taken out of the index: deletes chunks,
    /// moves local copies' files to the store.
    fn evict_entries(&self, victims: Vec<(Entry, Slot)>) {
        for (entry, slot) in victims {
            match entry {
                Entry::Chunk(relative, chunk) => {
                    let _ = fs::remove_file(self.chunk_path(&relative, chunk));
                    self.stats.evicted_chunks.fetch_add(1, Ordering::Relaxed);
                }
                Entry::Local(relative) => {
                    let Some(file) = slot.file.and_then(|file| file.upgrade()) else {
                        continue;
                    };
                    if file.is_obsolete() {
                        continue;
                    }
                    match file.move_to_store(self) {
                        Ok(()) => {
                            self.stats
                                .evicted_local_files
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(path = %relative.display(), "evicted the local copy of a stored metric file");
                        }
                        Err(error) => {
                            tracing::warn!(path = %relative.display(), %error, "could not evict the local copy of a stored metric file; it stays");
                        }
                    }
                }
            }
        }
    }

    fn chunk_path(&self, relative: &Path, chunk: u64) -> PathBuf {
        let mut name = relative.as_os_str().to_os_string();
        name.push(format!(".{chunk:06}"));
        self.dir.join(RANGES_DIR).join(name)
    }

    fn footer_path(&self, relative: &Path) -> PathBuf {
        self.dir.join(FOOTERS_DIR).join(relative)
    }

    /// Saves the tail of the file `local` (`length` bytes), from `start`
    /// (where its page index begins) to its end, read from `source`, so the
    /// file's footer can be read without the store. Durable when it
    /// returns.
    pub(crate) fn keep_footer(
        &self,
        local: &Path,
        length: u64,
        start: u64,
        source: &dyn ByteSource,
    ) -> Result<(), StorageError> {
        let Some(relative) = self.relative(local) else {
            return Ok(());
        };
        let path = self.footer_path(&relative);
        let tail = source
            .read_range(start..length)
            .map_err(|source| StorageError::io("read the footer of", local, source))?;
        let temp = path.with_extension("tmp");
        let write = || -> io::Result<()> {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let mut file = File::create(&temp)?;
            file.write_all(FOOTER_MAGIC)?;
            file.write_all(&length.to_le_bytes())?;
            file.write_all(&start.to_le_bytes())?;
            file.write_all(&tail)?;
            file.sync_all()?;
            fs::rename(&temp, &path)?;
            if let Some(parent) = path.parent() {
                File::open(parent)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|source| StorageError::io("write a footer copy", &path, source))
    }

    /// The stored file `local`, `length` bytes long, read through the
    /// cache.
    pub(crate) fn stored_file(&self, local: &Path, length: u64) -> Option<StoredFile> {
        let cache = self.me.upgrade()?;
        let relative = self.relative(local).unwrap_or_else(|| local.to_path_buf());
        let footer_path = self.footer_path(&relative);
        let footer_start = read_footer_header(&footer_path)
            .ok()
            .filter(|(stored_length, _)| *stored_length == length)
            .map(|(_, start)| start);
        Some(StoredFile::new(
            self.store.open_file(&relative),
            cache,
            relative,
            length,
            footer_path,
            footer_start,
        ))
    }

    /// The cache's figures now.
    pub fn snapshot(&self) -> CacheSnapshot {
        let bytes = self.lock().bytes;
        let stats = &self.stats;
        CacheSnapshot {
            bytes,
            budget: self.budget.load(Ordering::Relaxed),
            hits: stats.hits.load(Ordering::Relaxed),
            misses: stats.misses.load(Ordering::Relaxed),
            fetches: stats.fetches.load(Ordering::Relaxed),
            fetched_bytes: stats.fetched_bytes.load(Ordering::Relaxed),
            evicted_chunks: stats.evicted_chunks.load(Ordering::Relaxed),
            evicted_local_files: stats.evicted_local_files.load(Ordering::Relaxed),
        }
    }

    /// Counts a chunk read from the cache.
    pub(super) fn count_hit(&self) {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a fetch from the store of `chunks` chunks, `bytes` in all.
    pub(super) fn count_fetch(&self, chunks: u64, bytes: u64) {
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        self.stats.misses.fetch_add(chunks, Ordering::Relaxed);
        self.stats.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Whether chunk `chunk` of `relative` is cached (marked as used).
    pub(super) fn has_chunk(&self, relative: &Path, chunk: u64) -> bool {
        let mut index = self.lock();
        index.touch(&Entry::Chunk(relative.to_path_buf(), chunk))
            || index
                .unwritten
                .contains_key(&(relative.to_path_buf(), chunk))
    }

    /// Chunk `chunk` of `relative` in the cache, when it is there whole
    /// (`expected` bytes): opened for reading, or in memory while it waits
    /// to be written.
    pub(super) fn cached_chunk(
        &self,
        relative: &Path,
        chunk: u64,
        expected: u64,
    ) -> Option<CachedChunk> {
        let entry = Entry::Chunk(relative.to_path_buf(), chunk);
        {
            let mut index = self.lock();
            if !index.touch(&entry) {
                return index
                    .unwritten
                    .get(&(relative.to_path_buf(), chunk))
                    .filter(|bytes| bytes.len() as u64 == expected)
                    .map(|bytes| CachedChunk::Unwritten(bytes.clone()));
            }
        }
        let path = self.chunk_path(relative, chunk);
        let opened = File::open(&path).and_then(|file| Ok((file.metadata()?.len(), file)));
        match opened {
            Ok((length, file)) if length == expected => Some(CachedChunk::File(file)),
            _ => {
                // Evicted meanwhile, or cut short by a crash: fetch again.
                self.lock().remove(&entry);
                None
            }
        }
    }

    /// Keeps `chunks` of `relative`, just fetched: held in memory and
    /// written by the writer thread (by this thread when there is none or
    /// too much is waiting).
    pub(super) fn keep_chunks(&self, relative: &Path, chunks: &[(u64, Bytes)]) {
        let total: u64 = chunks.iter().map(|(_, bytes)| bytes.len() as u64).sum();
        let behind = {
            let mut index = self.lock();
            let behind = index.unwritten_bytes + total <= MAX_UNWRITTEN_BYTES;
            for (chunk, bytes) in chunks {
                index.hold_unwritten(relative, *chunk, bytes.clone());
            }
            behind
        };
        for (chunk, _) in chunks {
            if !(behind && self.writer.queue(relative, *chunk)) {
                self.write_chunk(relative, *chunk);
            }
        }
    }

    /// Writes chunk `chunk` of `relative` from memory to its file and
    /// counts it; nothing when it is no longer held (written already, or
    /// its file deleted or the ranges cleared meanwhile).
    fn write_chunk(&self, relative: &Path, chunk: u64) {
        let key = (relative.to_path_buf(), chunk);
        let bytes = {
            let mut index = self.lock();
            let Some(bytes) = index.unwritten.get(&key).cloned() else {
                return;
            };
            index.writing.push(key.clone());
            bytes
        };
        let path = self.chunk_path(relative, chunk);
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let temp = path.with_extension(format!(
            "{}.{}.tmp",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        let written = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&temp, &bytes))
            .and_then(|()| fs::rename(&temp, &path));
        {
            let mut index = self.lock();
            if let Some(at) = index.writing.iter().position(|writing| *writing == key) {
                index.writing.swap_remove(at);
            }
            let held = index.drop_unwritten(relative, chunk);
            match written {
                Ok(()) if held => {
                    index.insert(
                        Entry::Chunk(relative.to_path_buf(), chunk),
                        bytes.len() as u64,
                        None,
                    );
                }
                Ok(()) => {
                    // Dropped while it was written: the file goes too.
                    let _ = fs::remove_file(&path);
                }
                Err(error) => {
                    let _ = fs::remove_file(&temp);
                    tracing::warn!(path = %path.display(), %error, "could not cache a range of a stored metric file");
                }
            }
        }
        self.written.notify_all();
        self.evict();
    }

    /// Waits until every chunk fetched so far is written (or dropped), at
    /// most `timeout`; whether they all were.
    pub fn wait_for_writes(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut index = self.lock();
        while !index.unwritten.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            index = match self.written.wait_timeout(index, left) {
                Ok((index, _)) => index,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }
}

/// A footer copy's file length and the offset its copied tail starts at.
fn read_footer_header(path: &Path) -> io::Result<(u64, u64)> {
    let file = File::open(path)?;
    let mut header = [0u8; FOOTER_HEADER_BYTES as usize];
    file.read_exact_at(&mut header, 0)?;
    let invalid = |reason: &str| io::Error::new(io::ErrorKind::InvalidData, reason.to_string());
    if &header[..8] != FOOTER_MAGIC {
        return Err(invalid("not a footer copy"));
    }
    let number = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let (length, start) = (number(8), number(16));
    let size = file.metadata()?.len();
    if start > length || size != FOOTER_HEADER_BYTES + (length - start) {
        return Err(invalid("the copy is cut short"));
    }
    Ok((length, start))
}

/// The stored file and chunk index a chunk path under `ranges` names.
fn chunk_of(ranges: &Path, path: &Path) -> Option<(PathBuf, u64)> {
    let relative = path.strip_prefix(ranges).ok()?;
    let name = relative.file_name()?.to_str()?;
    let (file, chunk) = name.rsplit_once('.')?;
    let chunk = chunk.parse().ok()?;
    Some((relative.with_file_name(file), chunk))
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let entries = match fs::read_dir(&next) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(StorageError::io("list", &next, source)),
        };
        for entry in entries {
            let entry = entry.map_err(|source| StorageError::io("list", &next, source))?;
            let kind = entry
                .file_type()
                .map_err(|source| StorageError::io("stat", &entry.path(), source))?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::testing::{Setup, setup, upload, write};
    use super::*;
    use crate::model::MetricSeries;
    use crate::storage::SharedByFiles;

    /// Waits until the chunks fetched so far are written to the cache.
    fn settle(setup: &Setup) {
        assert!(
            setup.cache.wait_for_writes(Duration::from_secs(30)),
            "the chunks were not written"
        );
    }

    /// The chunk files in `setup`'s cache and their bytes.
    fn chunk_files(setup: &Setup) -> (usize, u64) {
        let files = files_under(&setup.dir.path().join("cache").join(RANGES_DIR)).unwrap();
        let bytes = files
            .iter()
            .map(|path| fs::metadata(path).unwrap().len())
            .sum();
        (files.len(), bytes)
    }

    fn read(file: &PersistedFile) -> MetricSeries {
        let mut series = MetricSeries::default();
        file.read_key("k", &mut series).unwrap();
        series
    }

    #[test]
    fn an_evicted_local_copy_is_read_from_the_store_through_cached_chunks() {
        let setup = setup(64 << 20);
        let first = write(&setup, 1, 300_000);
        let expected = read(&first);
        assert_eq!(expected.steps.len(), 300_000);
        assert!(first.bytes() > 2 << 20, "a file of several chunks");
        // Room for one file: the second upload evicts the first's copy.
        setup.cache.set_budget(first.bytes() * 3 / 2);
        upload(&setup, &first);
        assert!(!first.is_stored_only(), "it fits: the copy stays");
        let second = write(&setup, 2, 300_000);
        upload(&setup, &second);
        assert!(first.is_stored_only(), "the older copy was evicted");
        assert!(!first.path().exists());
        assert!(second.path().exists());
        assert_eq!(
            setup.cache.moved_files().unwrap(),
            vec![(
                PathBuf::from("experiment_id=0/run_id=r/00000001.parquet"),
                first.bytes()
            )]
        );
        // The footer is still cached in memory; drop it so it comes from
        // the footer copy, not the store.
        setup.shared.footers().remove(first.path());
        let before = setup.cache.snapshot();
        first.footer().unwrap();
        assert_eq!(
            setup.cache.snapshot(),
            before,
            "the footer came from its copy"
        );
        assert_eq!(read(&first), expected);
        let cold = setup.cache.snapshot();
        let chunks = first.bytes().div_ceil(CHUNK_BYTES);
        assert_eq!(cold.misses - before.misses, chunks, "{cold:?}");
        assert_eq!(cold.fetched_bytes - before.fetched_bytes, first.bytes());
        // Read again: from the cached chunks, nothing fetched.
        assert_eq!(read(&first), expected);
        let warm = setup.cache.snapshot();
        assert_eq!(warm.misses, cold.misses);
        assert_eq!(warm.fetched_bytes, cold.fetched_bytes);
        assert!(warm.hits > cold.hits);
        assert!(warm.bytes <= warm.budget, "{warm:?}");
    }

    #[test]
    fn a_file_known_only_from_the_store_opens_with_a_footer_fetched_once() {
        let setup = setup(64 << 20);
        let file = write(&setup, 1, 50_000);
        let expected = read(&file);
        upload(&setup, &file);
        let (path, bytes) = (file.path().to_path_buf(), file.bytes());
        // A new disk: no local copy, no footer copy.
        drop(file);
        fs::remove_file(&path).unwrap();
        let (opened, metadata) =
            PersistedFile::open_stored(1, &path, bytes, Arc::clone(&setup.shared)).unwrap();
        assert_eq!(metadata.keys.len(), 1);
        assert!(opened.is_stored_only() && opened.is_uploaded());
        assert_eq!(read(&opened), expected);
        // Its footer was kept: a second open needs nothing from the store.
        settle(&setup);
        let fetched = setup.cache.snapshot().fetched_bytes;
        assert_eq!(setup.cache.moved_files().unwrap().len(), 1);
        let shared = Arc::new(SharedByFiles::new(1 << 20));
        let cache = ReadCache::open(
            setup.store.clone(),
            setup.dir.path().join("cache"),
            setup.root.clone(),
            64 << 20,
        )
        .unwrap();
        shared.set_cache(Arc::clone(&cache));
        let (again, _) = PersistedFile::open_stored(1, &path, bytes, shared).unwrap();
        assert_eq!(read(&again), expected);
        assert_eq!(cache.snapshot().fetched_bytes, 0, "chunks kept on disk");
        assert!(cache.snapshot().hits > 0);
        assert_eq!(setup.cache.snapshot().fetched_bytes, fetched);
    }

    #[test]
    fn a_reopened_cache_keeps_its_chunks_within_a_smaller_budget() {
        let setup = setup(64 << 20);
        let file = write(&setup, 1, 300_000);
        upload(&setup, &file);
        file.move_to_store(&setup.cache).unwrap();
        read(&file);
        settle(&setup);
        let held = setup.cache.snapshot().bytes;
        assert!(held > 2 << 20, "{held}");
        let smaller = ReadCache::open(
            setup.store.clone(),
            setup.dir.path().join("cache"),
            setup.root.clone(),
            1 << 20,
        )
        .unwrap();
        let snapshot = smaller.snapshot();
        assert!(
            snapshot.bytes <= 1 << 20 && snapshot.bytes > 0,
            "{snapshot:?}"
        );
        assert!(snapshot.evicted_chunks >= 2);
        let on_disk: u64 = files_under(&setup.dir.path().join("cache").join(RANGES_DIR))
            .unwrap()
            .iter()
            .map(|path| fs::metadata(path).unwrap().len())
            .sum();
        assert_eq!(on_disk, snapshot.bytes);
    }

    #[test]
    fn a_deleted_file_leaves_nothing_in_the_cache() {
        let setup = setup(64 << 20);
        let file = write(&setup, 1, 100_000);
        upload(&setup, &file);
        file.move_to_store(&setup.cache).unwrap();
        read(&file);
        settle(&setup);
        assert!(setup.cache.snapshot().bytes > 0);
        file.mark_obsolete();
        drop(file);
        assert_eq!(setup.cache.snapshot().bytes, 0);
        assert!(setup.cache.moved_files().unwrap().is_empty());
        assert!(
            files_under(&setup.dir.path().join("cache").join(RANGES_DIR))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn fetched_chunks_are_read_from_memory_until_written_behind_the_read() {
        let setup = setup(64 << 20);
        let file = write(&setup, 1, 300_000);
        let expected = read(&file);
        upload(&setup, &file);
        file.move_to_store(&setup.cache).unwrap();
        assert_eq!(read(&file), expected);
        let chunks = file.bytes().div_ceil(CHUNK_BYTES);
        let fetched = setup.cache.snapshot();
        assert_eq!(fetched.misses, chunks);
        // Read again before or while they are written: nothing fetched.
        assert_eq!(read(&file), expected);
        assert_eq!(setup.cache.snapshot().fetched_bytes, fetched.fetched_bytes);
        settle(&setup);
        let written = setup.cache.snapshot();
        assert_eq!(chunk_files(&setup), (chunks as usize, file.bytes()));
        assert_eq!(written.bytes, file.bytes());
        assert_eq!(read(&file), expected);
        assert_eq!(setup.cache.snapshot().fetched_bytes, fetched.fetched_bytes);
    }

    #[test]
    fn a_file_deleted_while_its_chunks_are_written_leaves_nothing() {
        for _ in 0..5 {
            let setup = setup(64 << 20);
            let file = write(&setup, 1, 300_000);
            upload(&setup, &file);
            file.move_to_store(&setup.cache).unwrap();
            read(&file);
            // Deleted at once: before, while or after its chunks are
            // written, whichever the writer thread has reached.
            file.mark_obsolete();
            drop(file);
            settle(&setup);
            assert_eq!(chunk_files(&setup), (0, 0));
            assert_eq!(setup.cache.snapshot().bytes, 0);
        }
    }

    #[test]
    fn a_prefetch_fetches_the_missing_chunks_in_one_request() {
        let setup = setup(64 << 20);
        let file = write(&setup, 1, 300_000);
        upload(&setup, &file);
        let stored = setup.cache.stored_file(file.path(), file.bytes()).unwrap();
        let local = Bytes::from(fs::read(file.path()).unwrap());
        // A range in the first chunk, then ranges across the rest.
        stored.read_range(10..20).unwrap();
        let ranges = [
            100..200,
            CHUNK_BYTES + 5..CHUNK_BYTES + 9,
            2 * CHUNK_BYTES..2 * CHUNK_BYTES + 1,
        ];
        stored.prefetch(&ranges).unwrap();
        let after = setup.cache.snapshot();
        assert_eq!(
            after.fetches, 2,
            "one fetch for the first read, one for the rest"
        );
        assert_eq!(after.misses, 3);
        for range in ranges {
            let bytes = stored.read_range(range.clone()).unwrap();
            assert_eq!(bytes, local.slice(range.start as usize..range.end as usize));
        }
        assert_eq!(
            setup.cache.snapshot().fetches,
            2,
            "the reads found the chunks cached"
        );
    }

    #[test]
    fn reads_past_the_end_of_a_stored_file_are_refused() {
        let setup = setup(64 << 20);
        let file = write(&setup, 1, 1_000);
        upload(&setup, &file);
        let stored = setup.cache.stored_file(file.path(), file.bytes()).unwrap();
        let error = stored.read_range(0..file.bytes() + 1).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let all = stored.read_range(0..file.bytes()).unwrap();
        assert_eq!(all, Bytes::from(fs::read(file.path()).unwrap()));
    }
}
