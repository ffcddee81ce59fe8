//! Start-up with an object store: which store the data directory uses
//! (its `STORE` record), the catalog snapshot from the store when the
//! local disk has none (or a replica's is older), the files to read from
//! the store (footer copies, the store's listing), and which local files
//! still need uploading.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::EngineError;
use super::recovery::{CATALOG_DIR, LoadedFiles};
use crate::catalog::snapshot;
use crate::storage::{FileMetadata, MetricStore, MetricsLayout, PersistedFile};
use crate::wal::Lsn;

/// Names the object store a data directory's metric files are kept in
/// (its URL, and its endpoint on a second line when it has one).
const STORE_FILE: &str = "STORE";

/// The object store of the data directory: the one configured (`--store`),
/// recorded in the directory on first use; without one, the store the
/// directory recorded, so tools opening it (`stepstore sql --data-dir`,
/// `stepstore gc --data-dir`) or a start without the flag still find the
/// files that are only there. A configured store other than the recorded
/// one is refused: the files would not be found.
pub(crate) fn resolve_store(
    data_dir: &Path,
    configured: Option<MetricStore>,
) -> Result<Option<MetricStore>, EngineError> {
    let path = data_dir.join(STORE_FILE);
    let recorded = match fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(EngineError::io("read", &path, source)),
    };
    let recorded = recorded.map(|text| {
        let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
        (
            lines.next().unwrap_or_default().to_string(),
            lines.next().map(str::to_string),
        )
    });
    match (configured, recorded) {
        (Some(store), Some((url, _))) if store.url() != url => {
            Err(EngineError::InvalidRequest(format!(
                "the data directory {} keeps its metric files in {url}, not {}; start with --store                  {url} (to move to another store, copy the store's objects there and edit {})",
                data_dir.display(),
                store.url(),
                path.display()
            )))
        }
        (Some(store), Some(_)) => Ok(Some(store)),
        (Some(store), None) => {
            let mut text = format!("{}\n", store.url());
            if let Some(endpoint) = store.endpoint() {
                text.push_str(endpoint);
                text.push('\n');
            }
            let temp = path.with_extension("tmp");
            fs::write(&temp, text)
                .and_then(|()| File::open(&temp)?.sync_all())
                .and_then(|()| fs::rename(&temp, &path))
                .and_then(|()| File::open(data_dir)?.sync_all())
                .map_err(|source| EngineError::io("write", &path, source))?;
            Ok(Some(store))
        }
        (None, Some((url, endpoint))) => {
            tracing::info!(store = %url, "the data directory keeps its metric files in an object store (its STORE file)");
            Ok(Some(MetricStore::open(&url, endpoint.as_deref())?))
        }
        (None, None) => Ok(None),
    }
}

/// The object store's metric files as `(path under the tree, size)`, when
/// there is a store and it answers. A store that cannot be listed does not
/// stop the start: the files moved there from this data directory are
/// known from the cache's footer copies, and local files are uploaded
/// again ([`reconcile_store`]).
pub(crate) fn list_store(layout: &MetricsLayout) -> Option<HashMap<PathBuf, u64>> {
    let shared = layout.shared();
    let store = shared.cache().map(|cache| cache.store().clone())?;
    match store.list_metric_files() {
        Ok(listing) => Some(listing.into_iter().collect()),
        Err(error) => {
            tracing::warn!(store = store.url(), %error, "cannot list the object store; files are found from the local cache's footer copies");
            None
        }
    }
}

/// The metric files to read from the object store: those whose local
/// copies were evicted (the cache's footer copies) and those the store's
/// `listing` names (written before the local disk was replaced, for one).
/// Files with a local copy are left out later.
pub(crate) fn stored_files(
    layout: &MetricsLayout,
    listing: Option<&HashMap<PathBuf, u64>>,
    replica: bool,
) -> Result<Vec<(PathBuf, u64)>, EngineError> {
    let shared = layout.shared();
    let Some(cache) = shared.cache() else {
        return Ok(Vec::new());
    };
    if let (true, Some(listing)) = (replica, listing) {
        // A replica reads what the writer has in the store now, not what
        // it cached before.
        return Ok(listing
            .iter()
            .map(|(path, bytes)| (path.clone(), *bytes))
            .collect());
    }
    let mut stored: BTreeMap<PathBuf, u64> = cache.moved_files()?.into_iter().collect();
    if let Some(listing) = listing {
        for (relative, bytes) in stored.clone() {
            if listing.get(&relative) != Some(&bytes) {
                tracing::warn!(path = %relative.display(), "a file whose local copy was evicted is not in the object store's listing; reading it may fail");
            }
        }
        stored.extend(listing.iter().map(|(path, bytes)| (path.clone(), *bytes)));
    }
    Ok(stored.into_iter().collect())
}

/// With an object store: marks the loaded local files the store already
/// holds (same path, same size, in `listing`) as uploaded and queues the
/// others, so a file written before a crash or while the store was down
/// goes up now (the WAL keeps its records until it does). Without a
/// listing every local file is queued, and the uploads retry.
pub(crate) fn reconcile_store(
    layout: &MetricsLayout,
    loaded: &LoadedFiles,
    listing: Option<&HashMap<PathBuf, u64>>,
) {
    let Some(uploads) = layout.shared().uploads().cloned() else {
        return;
    };
    let (mut present, mut queued) = (0u64, 0u64);
    for file in loaded.runs.iter().flat_map(|run| &run.files) {
        if file.is_stored_only() {
            present += 1;
            continue;
        }
        let relative = file.path().strip_prefix(layout.root()).ok();
        if relative.and_then(|relative| listing?.get(relative)) == Some(&file.bytes()) {
            file.mark_uploaded();
            present += 1;
        } else {
            layout.publish(file);
            queued += 1;
        }
    }
    tracing::info!(
        store = uploads.store().url(),
        present,
        queued,
        "metric files checked against the object store"
    );
}

/// Opens a file that is only in the object store, trying three times.
pub(crate) fn open_stored(
    layout: &MetricsLayout,
    seq: u64,
    path: &Path,
    bytes: u64,
) -> Result<(PersistedFile, FileMetadata), EngineError> {
    let mut attempt = 0;
    loop {
        match layout.open_stored_file(seq, path, bytes) {
            Ok(opened) => return Ok(opened),
            Err(error) if attempt < 2 => {
                attempt += 1;
                tracing::warn!(path = %path.display(), %error, attempt, "could not open a metric file from the object store; trying again");
                std::thread::sleep(crate::storage::store::backoff(attempt * 3));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// With an object store and no catalog snapshot on the local disk (a new
/// data directory for a store in use: a replaced disk, a new machine), or
/// for a read replica (`replica`) whose snapshot is older than the store's:
/// downloads the store's newest snapshot, so the catalog comes back with
/// the metric files. The WAL records after it were on the lost disk (a
/// replica has none).
pub(crate) fn fetch_catalog(
    layout: &MetricsLayout,
    data_dir: &Path,
    replica: bool,
) -> Result<(), EngineError> {
    let shared = layout.shared();
    let Some(store) = shared.cache().map(|cache| cache.store().clone()) else {
        return Ok(());
    };
    let dir = data_dir.join(CATALOG_DIR);
    crate::durable_fs::create_dir_synced(&dir)
        .map_err(|source| EngineError::io("create", &dir, source))?;
    let mut newest_local = None;
    let local = fs::read_dir(&dir).map_err(|source| EngineError::io("list", &dir, source))?;
    for entry in local {
        let entry = entry.map_err(|source| EngineError::io("list", &dir, source))?;
        let lsn = entry.file_name().to_str().and_then(snapshot::lsn_of);
        newest_local = newest_local.max(lsn);
    }
    if newest_local.is_some() && !replica {
        return Ok(());
    }
    match fetch_newer_catalog(&store, &dir, newest_local.unwrap_or(0)) {
        Ok(_) => Ok(()),
        Err(EngineError::Store(error)) => {
            tracing::warn!(store = store.url(), %error, "cannot fetch the object store's catalog snapshots; starting with the local catalog");
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Downloads the store's newest catalog snapshot into `dir` when it is
/// newer than `current` (or `current` is 0: none), removing the older ones
/// there; its LSN when it did.
pub(crate) fn fetch_newer_catalog(
    store: &MetricStore,
    dir: &Path,
    current: Lsn,
) -> Result<Option<Lsn>, EngineError> {
    let listing = store.list_catalog()?;
    let Some((lsn, name)) = listing
        .iter()
        .filter_map(|(name, _)| Some((snapshot::lsn_of(name)?, name)))
        .max()
    else {
        return Ok(None);
    };
    if lsn <= current && current > 0 {
        return Ok(None);
    }
    let path = snapshot::file_path(dir, lsn);
    let bytes = store.download_catalog(name, &path)?;
    for entry in fs::read_dir(dir).map_err(|source| EngineError::io("list", dir, source))? {
        let entry = entry.map_err(|source| EngineError::io("list", dir, source))?;
        let older = entry
            .file_name()
            .to_str()
            .and_then(snapshot::lsn_of)
            .is_some_and(|other| other < lsn);
        if older {
            let _ = fs::remove_file(entry.path());
        }
    }
    tracing::info!(
        store = store.url(),
        lsn,
        bytes,
        "took the catalog snapshot from the object store"
    );
    Ok(Some(lsn))
}
