//! Test helpers: a metrics tree whose files are uploaded to an in-memory
//! store and read back through a cache.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::memory::InMemory;

use super::ReadCache;
use crate::storage::persisted::PersistedFile;
use crate::storage::store::MetricStore;
use crate::storage::{SharedByFiles, Uploader, written_file};

/// A data directory's metrics tree, an in-memory store and a cache of
/// `budget` bytes over it, its files uploaded by an uploader.
pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) store: MetricStore,
    pub(crate) shared: Arc<SharedByFiles>,
    pub(crate) cache: Arc<ReadCache>,
}

pub(crate) fn setup(budget: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("metrics");
    let store = MetricStore::over(Arc::new(InMemory::new()), "team", "memory://").unwrap();
    let cache = ReadCache::open(
        store.clone(),
        dir.path().join("cache"),
        root.clone(),
        budget,
    )
    .unwrap();
    let shared = Arc::new(SharedByFiles::new(1 << 20));
    shared.set_cache(Arc::clone(&cache));
    shared.set_uploader(Uploader::start(store.clone(), root.clone()));
    Setup {
        dir,
        root,
        store,
        shared,
        cache,
    }
}

/// Writes a file of `points` steps of key `k` as file `seq` of run `r`
/// and opens it in `setup`'s tree.
pub(crate) fn write(setup: &Setup, seq: u64, points: i64) -> Arc<PersistedFile> {
    let path = setup
        .root
        .join(format!("experiment_id=0/run_id=r/{seq:08}.parquet"));
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let rows: Vec<(&str, i64, i64, f64)> = (0..points)
        .map(|step| ("k", step, step * 10, (step as f64).sin()))
        .collect();
    written_file(&path, &rows);
    let (file, _) = PersistedFile::open_shared(seq, &path, Arc::clone(&setup.shared)).unwrap();
    Arc::new(file)
}

/// Uploads `file` and waits until the uploader is done with it (its
/// copy adopted by the cache, and whatever that evicted, evicted).
pub(crate) fn upload(setup: &Setup, file: &Arc<PersistedFile>) {
    let uploads = setup.shared.uploads().unwrap();
    uploads.upload(file);
    assert!(
        uploads.wait_until_idle(Duration::from_secs(30)),
        "the upload did not finish"
    );
    assert!(file.is_uploaded());
}

/// Writes `points` as file `seq` of run `run` in `setup`'s tree, uploads
/// it and moves it to the store: it is read from the store from then on.
pub(crate) fn stored_file(
    setup: &Setup,
    run: &str,
    seq: u64,
    points: &[(&str, i64, i64, f64)],
) -> Arc<PersistedFile> {
    let path = setup
        .root
        .join(format!("experiment_id=0/run_id={run}/{seq:08}.parquet"));
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    written_file(&path, points);
    let (file, _) = PersistedFile::open_shared(seq, &path, Arc::clone(&setup.shared)).unwrap();
    let file = Arc::new(file);
    upload(setup, &file);
    file.move_to_store(&setup.cache).unwrap();
    assert!(file.is_stored_only());
    file
}
