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
use super::checksums::{DataFile, FileChecksums};
use super::file_meta::FileMetadata;
use super::footer_cache::{FileFooter, FooterCache};
use super::reader;
use super::upload::Uploader;
use crate::wal::Lsn;

/// What the metric files of one engine share: the bounded cache of their
/// footers, the count of reads that found damage, and the uploader to the
/// object store when there is one. The engine's [`super::MetricsLayout`]
/// owns it and hands it to every file it opens.
#[derive(Debug, Default)]
pub struct SharedByFiles {
    footers: FooterCache,
    damaged_reads: Arc<AtomicU64>,
    uploads: OnceLock<Arc<Uploader>>,
}

impl SharedByFiles {
    /// A footer cache of at most `footer_cache_bytes`, and no damaged read
    /// counted yet.
    pub fn new(footer_cache_bytes: u64) -> Self {
        SharedByFiles {
            footers: FooterCache::new(footer_cache_bytes),
            damaged_reads: Arc::default(),
            uploads: OnceLock::new(),
        }
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
        let (footer, metadata) = load(path)?;
        let bytes = std::fs::metadata(path)
            .map_err(|source| StorageError::io("stat", path, source))?
            .len();
        let rows = footer.metadata.metadata().file_metadata().num_rows().max(0) as u64;
        shared.footers.insert(path, footer);
        Ok((
            PersistedFile {
                seq,
                path: path.to_path_buf(),
                rows,
                bytes,
                lsn_ranges: metadata.lsn_ranges.clone(),
                obsolete: AtomicBool::new(false),
                uploaded: AtomicBool::new(shared.uploads().is_none()),
                shared,
            },
            metadata,
        ))
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
        self.shared
            .footers
            .get_or_load(&self.path, || load(&self.path).map(|(footer, _)| footer))
    }

    /// The footer and the file opened for reading, every byte read from
    /// it checked against the footer's checksums.
    pub fn open_data(&self) -> Result<(ArrowReaderMetadata, DataFile), StorageError> {
        let footer = self.cached_footer()?;
        let data = DataFile::open(&self.path, self.bytes, footer.checksums)?
            .counting_damage_in(Arc::clone(&self.shared.damaged_reads));
        Ok((footer.metadata, data))
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

    /// Records that the object store holds the file.
    pub fn mark_uploaded(&self) {
        self.uploaded.store(true, Ordering::SeqCst);
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

/// Reads a file's footer and parses its block aggregates. Aggregates that
/// are missing (older files) or do not check out (logged) are left out:
/// such a file is read by the full scan.
fn load(path: &Path) -> Result<(FileFooter, FileMetadata), StorageError> {
    let (footer, metadata) = reader::load_footer(path)?;
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
