//! A metric file on disk as the engine tracks it: its sequence number, row
//! count, the WAL ranges it covers and its block aggregates; its footer
//! goes through the bounded footer cache of the engine that opened it
//! ([`SharedByFiles`]). Readers hold it by `Arc`; a file replaced by
//! compaction is deleted when the last holder lets go.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parquet::arrow::arrow_reader::ArrowReaderMetadata;

use super::StorageError;
use super::aggregates::FileAggregates;
use super::cache::ReadCache;
use super::checksums::{DataFile, FileChecksums};
use super::file_meta::FileMetadata;
use super::footer_cache::{FileFooter, FooterCache};
use super::reader;
use super::source::{ByteSource, LocalFile};
use super::stored_file::StoredFile;
use super::upload::Uploader;
use crate::wal::Lsn;

/// What the metric files of one engine share: the bounded cache of their
/// footers, the count of reads that found damage, and with an object store
/// the uploader to it and the local cache of what is read from it. The engine's [`super::MetricsLayout`]
/// owns it and hands it to every file it opens.
#[derive(Debug, Default)]
pub struct SharedByFiles {
    footers: FooterCache,
    damaged_reads: Arc<AtomicU64>,
    uploads: OnceLock<Arc<Uploader>>,
    cache: OnceLock<Arc<ReadCache>>,
}

impl SharedByFiles {
    /// A footer cache of at most `footer_cache_bytes`, and no damaged read
    /// counted yet.
    pub fn new(footer_cache_bytes: u64) -> Self {
        SharedByFiles {
            footers: FooterCache::new(footer_cache_bytes),
            damaged_reads: Arc::default(),
            uploads: OnceLock::new(),
            cache: OnceLock::new(),
        }
    }

    /// The local cache of the object store, when the files are stored in
    /// one.
    pub fn cache(&self) -> Option<&Arc<ReadCache>> {
        self.cache.get()
    }

    /// Reads the files moved to the object store through `cache`, and
    /// counts uploaded local copies against it (once; a second cache is
    /// ignored).
    pub(crate) fn set_cache(&self, cache: Arc<ReadCache>) {
        let _ = self.cache.set(cache);
    }

    /// The uploader of the files, when they go to an object store.
    pub fn uploads(&self) -> Option<&Arc<Uploader>> {
        self.uploads.get()
    }

    /// Sends every file opened from now on to `uploader` (once; a second
    /// uploader is ignored).
    pub(crate) fn set_uploader(&self, uploader: Arc<Uploader>) {
        let _ = self.uploads.set(uploader);
    }

    /// The footers of the files.
    pub fn footers(&self) -> &FooterCache {
        &self.footers
    }

    /// Reads of the files that found damage (a data page failing its
    /// checksum) since start.
    pub fn damaged_reads(&self) -> u64 {
        self.damaged_reads.load(Ordering::Relaxed)
    }
}

/// One persisted metric file of a run.
#[derive(Debug)]
pub struct PersistedFile {
    seq: u64,
    path: PathBuf,
    rows: u64,
    bytes: u64,
    lsn_ranges: Vec<(Lsn, Lsn)>,
    obsolete: AtomicBool,
    /// In the object store (always, without one): until then the WAL
    /// keeps the records the file holds.
    uploaded: AtomicBool,
    /// Set once the local copy is gone: the file is read from the object
    /// store, through the cache.
    stored: OnceLock<Arc<StoredFile>>,
    /// The footer cache and damage count of the files it was opened with.
    shared: Arc<SharedByFiles>,
}

impl PersistedFile {
    /// Opens file `seq` at `path`, reading its footer. Returns the file and
    /// stepstore's metadata from the footer. Block aggregates that are
    /// missing (older files) or do not check out (logged) are left out:
    /// such a file is read by the full scan.
    ///
    /// The file gets a footer cache of its own (tools and tests); the
    /// engine's files share one ([`PersistedFile::open_shared`]).
    pub fn open(seq: u64, path: &Path) -> Result<(PersistedFile, FileMetadata), StorageError> {
        PersistedFile::open_shared(seq, path, Arc::default())
    }

    /// Opens file `seq` at `path` like [`PersistedFile::open`], its footer
    /// kept in `shared`'s cache and its damaged reads counted there.
    pub fn open_shared(
        seq: u64,
        path: &Path,
        shared: Arc<SharedByFiles>,
    ) -> Result<(PersistedFile, FileMetadata), StorageError> {
        let bytes = std::fs::metadata(path)
            .map_err(|source| StorageError::io("stat", path, source))?
            .len();
        let local =
            LocalFile::open(path).map_err(|source| StorageError::io("open", path, source))?;
        let (footer, metadata) = load(&DataFile::over(Arc::new(local), path, bytes, None))?;
        let uploaded = shared.uploads().is_none();
        Ok(PersistedFile::opened(
            seq, path, bytes, footer, metadata, uploaded, shared,
        ))
    }

    /// Opens file `seq` of the tree, `bytes` long, whose only copy is in
    /// the object store behind `shared`'s cache (its local copy was
    /// evicted, or it was written by another machine): its footer comes
    /// from the cache's footer copy, or from the store.
    pub fn open_stored(
        seq: u64,
        path: &Path,
        bytes: u64,
        shared: Arc<SharedByFiles>,
    ) -> Result<(PersistedFile, FileMetadata), StorageError> {
        let cache = shared
            .cache()
            .cloned()
            .ok_or_else(|| StorageError::Metadata {
                path: path.to_path_buf(),
                reason: "the file is only in the object store, and no store is configured".into(),
            })?;
        let stored =
            Arc::new(
                cache
                    .stored_file(path, bytes)
                    .ok_or_else(|| StorageError::Metadata {
                        path: path.to_path_buf(),
                        reason: "the object store's cache was closed".into(),
                    })?,
            );
        let source: Arc<dyn ByteSource> = stored.clone();
        let (footer, metadata) = load(&DataFile::over(source, path, bytes, None))?;
        if !stored.has_footer_copy() {
            // Keep the footer so the next start needs no request for it.
            let start = footer_copy_start(path, &footer.metadata, bytes, stored.as_ref());
            if let Err(error) =
                start.and_then(|start| cache.keep_footer(path, bytes, start, stored.as_ref()))
            {
                tracing::warn!(path = %path.display(), %error, "could not keep a copy of a stored file's footer");
            }
        }
        let opened = PersistedFile::opened(seq, path, bytes, footer, metadata, true, shared);
        let _ = opened.0.stored.set(stored);
        Ok(opened)
    }

    /// File `seq` at `path` as its run's manifest describes it (see
    /// [`super::run_manifest`]): nothing is read, its footer is loaded on
    /// first use. `stored_only`: its only copy is in the object store.
    pub(crate) fn described(
        seq: u64,
        path: &Path,
        bytes: u64,
        rows: u64,
        lsn_ranges: Vec<(Lsn, Lsn)>,
        stored_only: bool,
        shared: Arc<SharedByFiles>,
    ) -> Result<PersistedFile, StorageError> {
        let stored = if stored_only {
            let stored = shared
                .cache()
                .and_then(|cache| cache.stored_file(path, bytes))
                .ok_or_else(|| StorageError::Metadata {
                    path: path.to_path_buf(),
                    reason: "the file is only in the object store, and no store is open".into(),
                })?;
            Some(Arc::new(stored))
        } else {
            None
        };
        let file = PersistedFile {
            seq,
            path: path.to_path_buf(),
            rows,
            bytes,
            lsn_ranges,
            obsolete: AtomicBool::new(false),
            // As when the file is opened: a local copy counts as uploaded
            // once the start has checked the store's listing.
            uploaded: AtomicBool::new(stored_only || shared.uploads().is_none()),
            stored: OnceLock::new(),
            shared,
        };
        if let Some(stored) = stored {
            let _ = file.stored.set(stored);
        }
        Ok(file)
    }

    /// The file `seq` at `path`, its footer just loaded.
    fn opened(
        seq: u64,
        path: &Path,
        bytes: u64,
        footer: FileFooter,
        metadata: FileMetadata,
        uploaded: bool,
        shared: Arc<SharedByFiles>,
    ) -> (PersistedFile, FileMetadata) {
        let rows = footer.metadata.metadata().file_metadata().num_rows().max(0) as u64;
        shared.footers.insert(path, footer);
        (
            PersistedFile {
                seq,
                path: path.to_path_buf(),
                rows,
                bytes,
                lsn_ranges: metadata.lsn_ranges.clone(),
                obsolete: AtomicBool::new(false),
                uploaded: AtomicBool::new(uploaded),
                stored: OnceLock::new(),
                shared,
            },
            metadata,
        )
    }

    /// Whether the file is read from the object store (its local copy is
    /// gone).
    pub fn is_stored_only(&self) -> bool {
        self.stored.get().is_some()
    }

    /// Moves the file to the object store for reading: keeps its footer in
    /// `cache`, then deletes the local copy. The file must be uploaded.
    pub(crate) fn move_to_store(&self, cache: &ReadCache) -> Result<(), StorageError> {
        if !self.is_uploaded() || self.is_stored_only() {
            return Ok(());
        }
        let footer = self.cached_footer()?;
        let local = LocalFile::open(&self.path)
            .map_err(|source| StorageError::io("open", &self.path, source))?;
        let start = footer_copy_start(&self.path, &footer.metadata, self.bytes, &local)?;
        cache.keep_footer(&self.path, self.bytes, start, &local)?;
        let Some(stored) = cache.stored_file(&self.path, self.bytes) else {
            return Ok(());
        };
        let _ = self.stored.set(Arc::new(stored));
        cache.release_local(&self.path);
        std::fs::remove_file(&self.path)
            .map_err(|source| StorageError::io("remove the local copy of", &self.path, source))
    }

    /// Sequence number within the run (file name).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Path on disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows in the file.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// WAL ranges whose points the file holds.
    pub fn lsn_ranges(&self) -> &[(Lsn, Lsn)] {
        &self.lsn_ranges
    }

    /// The newest WAL record whose points the file holds (0 for none).
    pub fn newest_lsn(&self) -> Lsn {
        self.lsn_ranges
            .iter()
            .map(|&(_, end)| end)
            .max()
            .unwrap_or(0)
    }

    /// Stepstore's metadata of the file (WAL ranges, key summaries, the
    /// files it replaced), from its footer.
    pub fn metadata(&self) -> Result<FileMetadata, StorageError> {
        let footer = self.cached_footer()?;
        FileMetadata::from_key_values(
            footer
                .metadata
                .metadata()
                .file_metadata()
                .key_value_metadata(),
        )
        .map_err(|reason| StorageError::Metadata {
            path: self.path.clone(),
            reason,
        })
    }

    /// Drops what the local cache of the object store holds of the file
    /// (a replica's file the writer purged).
    pub(crate) fn forget_cached(&self) {
        self.shared.footers.remove(&self.path);
        if let Some(cache) = self.shared.cache() {
            cache.forget(&self.path, self.bytes);
        }
    }

    /// The footer, from the cache or read again from the file.
    pub fn footer(&self) -> Result<ArrowReaderMetadata, StorageError> {
        self.cached_footer().map(|footer| footer.metadata)
    }

    /// The file's block aggregates, when it has valid ones (from the
    /// footer cache). A footer that cannot be read again gives `None`: the
    /// file is then read in full, which reports the error.
    pub fn aggregates(&self) -> Option<Arc<FileAggregates>> {
        self.cached_footer().ok()?.aggregates
    }

    /// The footer cache the file goes through.
    #[cfg(test)]
    pub(crate) fn footer_cache(&self) -> &FooterCache {
        &self.shared.footers
    }

    /// The footer with its parsed aggregates and checksums, from the cache
    /// or read again from the file.
    pub(crate) fn cached_footer(&self) -> Result<FileFooter, StorageError> {
        self.shared.footers.get_or_load(&self.path, || {
            load(&self.data_file(None)?).map(|(footer, _)| footer)
        })
    }

    /// The footer and the file opened for reading, every byte read from
    /// it checked against the footer's checksums.
    pub fn open_data(&self) -> Result<(ArrowReaderMetadata, DataFile), StorageError> {
        let footer = self.cached_footer()?;
        let data = self
            .data_file(footer.checksums)?
            .counting_damage_in(Arc::clone(&self.shared.damaged_reads));
        Ok((footer.metadata, data))
    }

    /// The file's bytes, checked against `checksums`: the local copy while
    /// there is one, else the object store through the cache.
    fn data_file(&self, checksums: Option<Arc<FileChecksums>>) -> Result<DataFile, StorageError> {
        let stored = |stored: &Arc<StoredFile>| {
            let source: Arc<dyn ByteSource> = stored.clone();
            DataFile::over(source, &self.path, self.bytes, checksums.clone())
        };
        if let Some(remote) = self.stored.get() {
            return Ok(stored(remote));
        }
        match LocalFile::open(&self.path) {
            Ok(local) => {
                if let Some(cache) = self.shared.cache() {
                    cache.touch_local(&self.path);
                }
                Ok(DataFile::over(
                    Arc::new(local),
                    &self.path,
                    self.bytes,
                    checksums.clone(),
                ))
            }
            // Evicted between the two checks.
            Err(source) => match self.stored.get() {
                Some(remote) if source.kind() == std::io::ErrorKind::NotFound => Ok(stored(remote)),
                _ => Err(StorageError::io("open", &self.path, source)),
            },
        }
    }

    /// Marks the file as replaced: it is deleted once no one holds it.
    pub fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::SeqCst);
    }

    /// Whether the file was replaced.
    pub fn is_obsolete(&self) -> bool {
        self.obsolete.load(Ordering::SeqCst)
    }

    /// Whether the object store holds the file (always true without a
    /// store).
    pub fn is_uploaded(&self) -> bool {
        self.uploaded.load(Ordering::SeqCst)
    }

    /// Records that the object store holds the file; its local copy now
    /// counts against the store's local cache.
    pub fn mark_uploaded(self: &Arc<Self>) {
        self.uploaded.store(true, Ordering::SeqCst);
        if let Some(cache) = self.shared.cache() {
            cache.adopt_local(self);
        }
    }

    /// The oldest WAL record whose points the file holds, while the
    /// object store does not hold it yet.
    pub fn oldest_unuploaded_lsn(&self) -> Option<Lsn> {
        if self.is_uploaded() {
            return None;
        }
        self.lsn_ranges.iter().map(|&(start, _)| start).min()
    }
}

/// Where a footer copy of the file (`length` bytes) starts: at its page
/// index, written before the footer, or at the footer itself.
fn footer_copy_start(
    path: &Path,
    footer: &ArrowReaderMetadata,
    length: u64,
    source: &dyn ByteSource,
) -> Result<u64, StorageError> {
    let metadata_length = |bytes: &[u8]| -> Option<u64> {
        let mut length = [0u8; 4];
        length.copy_from_slice(bytes.get(..4)?);
        Some(u64::from(u32::from_le_bytes(length)))
    };
    let last = source
        .read_range(length.saturating_sub(8)..length)
        .map_err(|source| StorageError::io("read the footer length of", path, source))?;
    let footer_start = metadata_length(&last)
        .and_then(|metadata| length.checked_sub(8 + metadata))
        .ok_or_else(|| StorageError::Metadata {
            path: path.to_path_buf(),
            reason: "the footer length does not fit the file".into(),
        })?;
    let index_start = footer
        .metadata()
        .row_groups()
        .iter()
        .flat_map(|group| group.columns())
        .flat_map(|column| [column.column_index_offset(), column.offset_index_offset()])
        .flatten()
        .filter_map(|offset| u64::try_from(offset).ok())
        .min();
    Ok(index_start.map_or(footer_start, |start| start.min(footer_start)))
}

/// Reads a file's footer and parses its block aggregates. Aggregates that
/// are missing (older files) or do not check out (logged) are left out:
/// such a file is read by the full scan.
fn load(data: &DataFile) -> Result<(FileFooter, FileMetadata), StorageError> {
    let path = data.path();
    let (footer, metadata) = reader::load_footer_from(data)?;
    let rows = footer.metadata().file_metadata().num_rows().max(0) as u64;
    let aggregates = match FileAggregates::from_key_values(
        footer.metadata().file_metadata().key_value_metadata(),
        rows,
        &metadata.keys,
    ) {
        Ok(aggregates) => aggregates.map(Arc::new),
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "ignoring a metric file's block aggregates; it is read in full");
            None
        }
    };
    let checksums = match FileChecksums::from_key_values(
        footer.metadata().file_metadata().key_value_metadata(),
    ) {
        Ok(checksums) => checksums.map(Arc::new),
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "ignoring a metric file's checksum table; its data is read unchecked");
            None
        }
    };
    Ok((
        FileFooter {
            metadata: footer,
            aggregates,
            checksums,
        },
        metadata,
    ))
}

impl Drop for PersistedFile {
    fn drop(&mut self) {
        if !self.obsolete.load(Ordering::SeqCst) {
            return;
        }
        self.shared.footers.remove(&self.path);
        if let Some(cache) = self.shared.cache() {
            cache.forget(&self.path, self.bytes);
        }
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove a compacted-away metric file");
        }
        if let Some(uploads) = self.shared.uploads() {
            uploads.delete(&self.path);
        }
    }
}
