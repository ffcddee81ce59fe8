//! Uploads of metric files to the object store, and deletes of the files
//! compaction and gc replace. A file is written locally first (the local
//! `metrics` tree is the staging area), then queued here; it counts as
//! uploaded ([`PersistedFile::is_uploaded`]) only once the store confirmed
//! it, and until then the WAL keeps the records it holds. So a slow or
//! failing store never delays an acknowledgement: it delays the release
//! of WAL segments, and the upload lag shows in `/metrics` and `/health`.
//!
//! Uploads run a few at a time and retry with backoff (100 ms doubling to
//! 30 s) until they succeed. A delete waits for every upload queued
//! before it, so a compacted file's inputs leave the store only once the
//! file replacing them is there. A file that became obsolete before its
//! upload started is not uploaded (what replaced it is).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinSet;

use super::persisted::PersistedFile;
use super::store::{MetricStore, StoreError, backoff};

/// Uploads and deletes in flight at once.
const CONCURRENCY: usize = 8;

/// The uploader of one data directory's metric files.
#[derive(Debug)]
pub struct Uploader {
    store: MetricStore,
    /// The local `metrics` tree the files are under.
    root: PathBuf,
    jobs: UnboundedSender<Job>,
    next_order: AtomicU64,
    stats: Arc<UploadStats>,
}

/// Work for the upload loop, in queue order.
#[derive(Debug)]
enum Job {
    Upload {
        order: u64,
        file: Weak<PersistedFile>,
        relative: PathBuf,
    },
    Delete {
        order: u64,
        relative: PathBuf,
    },
    /// A catalog snapshot file, `name` in the store's `catalog` folder;
    /// older snapshots there are deleted once it is up.
    Catalog {
        local: PathBuf,
        name: String,
    },
}

/// What the uploader has done, for `/metrics` and `/health`.
#[derive(Debug, Default)]
struct UploadStats {
    uploaded_files: AtomicU64,
    uploaded_bytes: AtomicU64,
    failed_attempts: AtomicU64,
    deleted_files: AtomicU64,
    catalog_uploads: AtomicU64,
    /// Uploads queued or running: when each was queued and its bytes.
    pending: Mutex<BTreeMap<u64, (Instant, u64)>>,
    /// Deletes queued or running.
    pending_deletes: AtomicU64,
    /// Catalog snapshot uploads queued or running.
    pending_catalogs: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Set while the store holds a newer catalog snapshot than this
    /// server's (cleared when a snapshot goes up).
    catalog_conflict: Mutex<Option<String>>,
}

/// The uploader's figures at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UploadSnapshot {
    /// Files uploaded since start.
    pub uploaded_files: u64,
    /// Bytes uploaded since start.
    pub uploaded_bytes: u64,
    /// Upload and delete attempts that failed (each is retried).
    pub failed_attempts: u64,
    /// Replaced files deleted from the store since start.
    pub deleted_files: u64,
    /// Catalog snapshots uploaded since start.
    pub catalog_uploads: u64,
    /// Files waiting to be uploaded.
    pub pending_files: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Deletes waiting.
    pub pending_deletes: u64,
    /// How long the oldest waiting upload has waited.
    pub lag: Duration,
}

impl Uploader {
    /// Starts uploading files under the local tree `root` to `store`.
    pub fn start(store: MetricStore, root: PathBuf) -> Arc<Uploader> {
        let (jobs, queue) = unbounded_channel();
        let stats = Arc::new(UploadStats::default());
        store
            .io()
            .spawn(run(store.clone(), queue, Arc::clone(&stats)));
        Arc::new(Uploader {
            store,
            root,
            jobs,
            next_order: AtomicU64::new(1),
            stats,
        })
    }

    /// The store files go to.
    pub fn store(&self) -> &MetricStore {
        &self.store
    }

    /// The path of `local` under the `metrics` tree; `None` for a file
    /// outside it.
    fn relative(&self, local: &Path) -> Option<PathBuf> {
        local.strip_prefix(&self.root).ok().map(Path::to_path_buf)
    }

    /// Queues `file` for upload.
    pub fn upload(&self, file: &Arc<PersistedFile>) {
        let Some(relative) = self.relative(file.path()) else {
            tracing::error!(path = %file.path().display(), "a metric file outside the metrics tree is not uploaded");
            return;
        };
        let order = self.next_order.fetch_add(1, Ordering::Relaxed);
        self.stats
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(order, (Instant::now(), file.bytes()));
        let job = Job::Upload {
            order,
            file: Arc::downgrade(file),
            relative,
        };
        if self.jobs.send(job).is_err() {
            tracing::error!("the upload loop stopped; a file stays local");
        }
    }

    /// Queues the delete of the stored copy of the local file `local`,
    /// after every upload queued before it.
    pub fn delete(&self, local: &Path) {
        let Some(relative) = self.relative(local) else {
            return;
        };
        let order = self.next_order.fetch_add(1, Ordering::Relaxed);
        self.stats.pending_deletes.fetch_add(1, Ordering::Relaxed);
        if self.jobs.send(Job::Delete { order, relative }).is_err() {
            tracing::error!("the upload loop stopped; a replaced file stays in the store");
        }
    }

    /// Queues the upload of the catalog snapshot file `local`; once it is
    /// in the store, older snapshots there are deleted. A snapshot replaced
    /// locally before its upload started is skipped (the newer one is
    /// queued too).
    pub fn upload_catalog(&self, local: &Path) {
        let Some(name) = local.file_name().and_then(|name| name.to_str()) else {
            return;
        };
        let job = Job::Catalog {
            local: local.to_path_buf(),
            name: name.to_string(),
        };
        self.stats.pending_catalogs.fetch_add(1, Ordering::Relaxed);
        if self.jobs.send(job).is_err() {
            tracing::error!("the upload loop stopped; a catalog snapshot stays local");
        }
    }

    /// Waits until nothing is queued or running, at most `timeout`;
    /// whether it got there.
    pub fn wait_until_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let snapshot = self.snapshot();
            let catalogs = self.stats.pending_catalogs.load(Ordering::Relaxed);
            if snapshot.pending_files == 0 && snapshot.pending_deletes == 0 && catalogs == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The uploader's figures now.
    pub fn snapshot(&self) -> UploadSnapshot {
        let stats = &self.stats;
        let pending = stats
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        UploadSnapshot {
            uploaded_files: stats.uploaded_files.load(Ordering::Relaxed),
            uploaded_bytes: stats.uploaded_bytes.load(Ordering::Relaxed),
            failed_attempts: stats.failed_attempts.load(Ordering::Relaxed),
            deleted_files: stats.deleted_files.load(Ordering::Relaxed),
            catalog_uploads: stats.catalog_uploads.load(Ordering::Relaxed),
            pending_files: pending.len() as u64,
            pending_bytes: pending.values().map(|(_, bytes)| bytes).sum(),
            pending_deletes: stats.pending_deletes.load(Ordering::Relaxed),
            lag: pending
                .values()
                .map(|(queued, _)| queued.elapsed())
                .max()
                .unwrap_or_default(),
        }
    }

    /// The newest failure, while the last attempt of an upload or delete
    /// failed.
    pub fn last_error(&self) -> Option<String> {
        let conflict = self
            .stats
            .catalog_conflict
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        conflict.or_else(|| {
            self.stats
                .last_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone()
        })
    }
}

/// What a finished task did.
enum Done {
    Uploaded(u64),
    /// A delete or a catalog upload.
    Other,
}

/// The upload loop: runs until every [`Uploader`] handle is gone and the
/// queue is empty.
async fn run(store: MetricStore, mut queue: UnboundedReceiver<Job>, stats: Arc<UploadStats>) {
    let mut running: JoinSet<Done> = JoinSet::new();
    // The upload each running task carries out, by task.
    let mut task_orders: HashMap<tokio::task::Id, u64> = HashMap::new();
    // Uploads queued but not finished, by order.
    let mut unfinished: BTreeSet<u64> = BTreeSet::new();
    let mut deletes: VecDeque<(u64, PathBuf)> = VecDeque::new();
    let mut open = true;
    loop {
        // Start the deletes no earlier upload holds back.
        while running.len() < CONCURRENCY {
            let Some(&(order, _)) = deletes.front() else {
                break;
            };
            if unfinished.first().is_some_and(|&first| first < order) {
                break;
            }
            if let Some((_, relative)) = deletes.pop_front() {
                let work = delete_until_done(store.clone(), relative, Arc::clone(&stats));
                running.spawn(async move {
                    work.await;
                    Done::Other
                });
            }
        }
        if !open && running.is_empty() && deletes.is_empty() {
            return;
        }
        tokio::select! {
            job = queue.recv(), if open && running.len() < CONCURRENCY => match job {
                None => open = false,
                Some(Job::Upload { order, file, relative }) => {
                    unfinished.insert(order);
                    let work = upload_until_done(store.clone(), order, file, relative, Arc::clone(&stats));
                    let task = running.spawn(async move {
                        work.await;
                        Done::Uploaded(order)
                    });
                    task_orders.insert(task.id(), order);
                }
                Some(Job::Delete { order, relative }) => deletes.push_back((order, relative)),
                Some(Job::Catalog { local, name }) => {
                    let work = catalog_until_done(store.clone(), local, name, Arc::clone(&stats));
                    running.spawn(async move {
                        work.await;
                        Done::Other
                    });
                }
            },
            Some(finished) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, order) = match finished {
                    Ok((id, Done::Uploaded(order))) => (id, Some(order)),
                    Ok((id, Done::Other)) => (id, None),
                    Err(error) => {
                        tracing::error!(%error, "an upload task failed");
                        (error.id(), None)
                    }
                };
                if let Some(order) = task_orders.remove(&id).or(order) {
                    unfinished.remove(&order);
                    stats.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&order);
                }
            },
        }
    }
}

/// Uploads `file` as `relative`, retrying until the store takes it; a
/// file that is gone or replaced first is skipped.
async fn upload_until_done(
    store: MetricStore,
    order: u64,
    file: Weak<PersistedFile>,
    relative: PathBuf,
    stats: Arc<UploadStats>,
) {
    let mut attempt = 0u32;
    loop {
        let Some(held) = file.upgrade().filter(|held| !held.is_obsolete()) else {
            tracing::debug!(order, path = %relative.display(), "a replaced file is not uploaded");
            return;
        };
        let started = Instant::now();
        match store
            .clone()
            .put_file(held.path().to_path_buf(), relative.clone())
            .await
        {
            Ok(bytes) => {
                held.mark_uploaded();
                stats.uploaded_files.fetch_add(1, Ordering::Relaxed);
                stats.uploaded_bytes.fetch_add(bytes, Ordering::Relaxed);
                *stats
                    .last_error
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
                tracing::debug!(path = %relative.display(), bytes, elapsed_ms = started.elapsed().as_millis() as u64, "uploaded a metric file");
                return;
            }
            Err(error) => {
                drop(held);
                attempt = attempt.saturating_add(1);
                failed(&stats, &error, attempt, "uploading");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
}

/// Uploads the catalog snapshot `local` as `name`, then deletes the older
/// snapshots in the store, retrying until done; skipped when the local
/// file is gone (a newer snapshot replaced it, and is queued).
async fn catalog_until_done(
    store: MetricStore,
    local: PathBuf,
    name: String,
    stats: Arc<UploadStats>,
) {
    let mut attempt = 0u32;
    let done = || stats.pending_catalogs.fetch_sub(1, Ordering::Relaxed);
    loop {
        if !local.exists() {
            tracing::debug!(name, "a replaced catalog snapshot is not uploaded");
            done();
            return;
        }
        let outcome = match list_catalog(&store).await {
            Ok(listing) => match listing.iter().max().filter(|theirs| **theirs > name) {
                Some(theirs) => {
                    let error = StoreError::NewerCatalog {
                        ours: name.clone(),
                        theirs: theirs.clone(),
                    };
                    stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    *stats
                        .catalog_conflict
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error.to_string());
                    tracing::error!(%error, "a catalog snapshot was not uploaded");
                    done();
                    return;
                }
                None => {
                    let uploaded = store
                        .clone()
                        .put_object(local.clone(), store.catalog_path(&name))
                        .await;
                    match uploaded {
                        Ok(_) => prune_catalog(&store, &name, &listing).await,
                        Err(error) => Err(error),
                    }
                }
            },
            Err(error) => Err(error),
        };
        match outcome {
            Ok(()) => {
                stats.catalog_uploads.fetch_add(1, Ordering::Relaxed);
                *stats
                    .catalog_conflict
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
                tracing::debug!(name, "uploaded a catalog snapshot");
                done();
                return;
            }
            Err(error) => {
                attempt = attempt.saturating_add(1);
                failed(&stats, &error, attempt, "uploading a catalog snapshot");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
}

/// The names of the catalog snapshots in the store.
async fn list_catalog(store: &MetricStore) -> Result<Vec<String>, StoreError> {
    let store = store.clone();
    let listing = tokio::task::spawn_blocking(move || store.list_catalog())
        .await
        .map_err(|error| StoreError::Runtime(std::io::Error::other(error)))??;
    Ok(listing
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("snapshot-"))
        .collect())
}

/// Deletes the catalog snapshots of `listing` older than `newest` (their
/// names sort by LSN).
async fn prune_catalog(
    store: &MetricStore,
    newest: &str,
    listing: &[String],
) -> Result<(), StoreError> {
    for name in listing {
        if name.as_str() < newest {
            store
                .clone()
                .delete_object(store.catalog_path(name))
                .await?;
        }
    }
    Ok(())
}

/// Deletes the stored `relative`, retrying until the store answers.
async fn delete_until_done(store: MetricStore, relative: PathBuf, stats: Arc<UploadStats>) {
    let mut attempt = 0u32;
    loop {
        match store.clone().delete_file(relative.clone()).await {
            Ok(()) => {
                stats.deleted_files.fetch_add(1, Ordering::Relaxed);
                stats.pending_deletes.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            Err(error) => {
                attempt = attempt.saturating_add(1);
                failed(&stats, &error, attempt, "deleting");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
}

/// Counts and logs a failed attempt.
fn failed(stats: &UploadStats, error: &StoreError, attempt: u32, what: &'static str) {
    stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
    *stats
        .last_error
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error.to_string());
    let retry_in_ms = backoff(attempt).as_millis() as u64;
    tracing::warn!(%error, attempt, retry_in_ms, what, "an object store request failed; retrying");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::written_file;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    /// Waits until nothing is waiting or running.
    fn settle(uploader: &Uploader) -> UploadSnapshot {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let snapshot = uploader.snapshot();
            if snapshot.pending_files == 0 && snapshot.pending_deletes == 0 {
                return snapshot;
            }
            assert!(
                Instant::now() < deadline,
                "uploads did not settle: {snapshot:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stored(uploader: &Uploader) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = uploader
            .store()
            .list_metric_files()
            .unwrap()
            .into_iter()
            .map(|(path, _)| path)
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn files_go_up_and_replaced_ones_come_down_after_what_replaced_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("metrics");
        let store = MetricStore::over(Arc::new(InMemory::new()), "team", "memory://").unwrap();
        let uploader = Uploader::start(store, root.clone());
        let shared = Arc::new(crate::storage::SharedByFiles::new(1 << 20));
        shared.set_uploader(Arc::clone(&uploader));
        let open = |seq: u64| {
            let path = root.join(format!("run_id=r/{seq:08}.parquet"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            written_file(&path, &[("loss", seq as i64, 0, 1.0)]);
            let (file, _) = PersistedFile::open_shared(seq, &path, Arc::clone(&shared)).unwrap();
            Arc::new(file)
        };
        let first = open(1);
        let second = open(2);
        assert!(!first.is_uploaded() && first.oldest_unuploaded_lsn() == Some(1));
        uploader.upload(&first);
        uploader.upload(&second);
        settle(&uploader);
        assert!(first.is_uploaded() && second.is_uploaded());
        assert_eq!(first.oldest_unuploaded_lsn(), None);
        // A compaction: the output goes up, then the inputs come down.
        let merged = open(3);
        uploader.upload(&merged);
        for input in [first, second] {
            input.mark_obsolete();
        }
        let snapshot = settle(&uploader);
        assert_eq!(
            stored(&uploader),
            vec![PathBuf::from("run_id=r/00000003.parquet")]
        );
        assert_eq!(snapshot.uploaded_files, 3);
        assert_eq!(snapshot.deleted_files, 2);
        assert_eq!(uploader.last_error(), None);
        // A file replaced before its turn: whether or not it went up, it
        // is not left in the store.
        let short_lived = open(4);
        uploader.upload(&short_lived);
        short_lived.mark_obsolete();
        drop(short_lived);
        settle(&uploader);
        assert_eq!(
            stored(&uploader),
            vec![PathBuf::from("run_id=r/00000003.parquet")]
        );
    }

    #[test]
    fn a_failing_store_is_retried_until_it_takes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("metrics");
        // The store's directory is a plain file at first: every upload
        // fails until it becomes a directory.
        let store_dir = dir.path().join("store");
        std::fs::write(&store_dir, b"not a directory").unwrap();
        let local = object_store::local::LocalFileSystem::new();
        let prefix = store_dir
            .strip_prefix("/")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let store = MetricStore::over(Arc::new(local), &prefix, "file://").unwrap();
        let uploader = Uploader::start(store, root.clone());
        let path = root.join("run_id=r/00000001.parquet");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = Arc::new(written_file(&path, &[("loss", 0, 0, 1.0)]));
        uploader.upload(&file);
        let deadline = Instant::now() + Duration::from_secs(30);
        while uploader.snapshot().failed_attempts < 2 {
            assert!(Instant::now() < deadline, "{:?}", uploader.snapshot());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(uploader.snapshot().pending_files, 1);
        assert!(uploader.last_error().is_some());
        std::fs::remove_file(&store_dir).unwrap();
        std::fs::create_dir(&store_dir).unwrap();
        let snapshot = settle(&uploader);
        assert_eq!(snapshot.uploaded_files, 1);
        assert_eq!(uploader.last_error(), None);
        assert!(store_dir.join("metrics/run_id=r/00000001.parquet").exists());
    }

    #[test]
    fn catalog_snapshots_replace_older_ones_and_never_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricStore::over(Arc::new(InMemory::new()), "team", "memory://").unwrap();
        let uploader = Uploader::start(store.clone(), dir.path().join("metrics"));
        let snapshot = |lsn: u64| {
            let path = dir.path().join(format!("snapshot-{lsn:020}.bin"));
            std::fs::write(&path, format!("catalog at {lsn}")).unwrap();
            path
        };
        let names = || {
            let mut names: Vec<String> = store
                .list_catalog()
                .unwrap()
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            names.sort();
            names
        };
        for lsn in [5, 7] {
            uploader.upload_catalog(&snapshot(lsn));
            assert!(uploader.wait_until_idle(Duration::from_secs(30)));
        }
        assert_eq!(names(), vec![format!("snapshot-{:020}.bin", 7)]);
        assert_eq!(uploader.snapshot().catalog_uploads, 2);
        // A snapshot replaced locally before its turn is skipped.
        let gone = snapshot(8);
        std::fs::remove_file(&gone).unwrap();
        uploader.upload_catalog(&gone);
        assert!(uploader.wait_until_idle(Duration::from_secs(30)));
        assert_eq!(names(), vec![format!("snapshot-{:020}.bin", 7)]);
        // Another writer's newer snapshot is left alone, and the conflict
        // shows until a snapshot goes up again.
        let theirs = format!("snapshot-{:020}.bin", 100);
        store
            .io()
            .block_on({
                let store = store.clone();
                let location = store.catalog_path(&theirs);
                async move { store.object_store().put(&location, "theirs".into()).await }
            })
            .unwrap()
            .unwrap();
        uploader.upload_catalog(&snapshot(9));
        assert!(uploader.wait_until_idle(Duration::from_secs(30)));
        assert_eq!(
            names(),
            vec![format!("snapshot-{:020}.bin", 7), theirs.clone()]
        );
        let error = uploader.last_error().unwrap();
        assert!(error.contains("newer catalog snapshot"), "{error}");
        uploader.upload_catalog(&snapshot(101));
        assert!(uploader.wait_until_idle(Duration::from_secs(30)));
        assert_eq!(names(), vec![format!("snapshot-{:020}.bin", 101)]);
        assert_eq!(uploader.last_error(), None);
    }
}
