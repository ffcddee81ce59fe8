//! The object store a data directory's metric files are uploaded to
//! (`--store s3://bucket/prefix`, also `gs://`, `az://` and `file://`):
//! opening it from its URL with the credentials of each cloud's standard
//! environment variables, the paths of the files in it (the same Hive tree
//! as under `<data-dir>/metrics`), uploads (multipart for large files),
//! deletes and listings, and [`ObjectFile`], a [`ByteSource`] over one
//! stored file.
//!
//! Requests run on a small runtime of their own ([`IoRuntime`]), so that
//! the blocking readers and the persister threads can wait for them from
//! any thread, inside the server's runtime or not.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use thiserror::Error;

use super::source::ByteSource;

/// Files at least this large are uploaded in parts.
const MULTIPART_BYTES: u64 = 16 << 20;
/// The size of each part of a multipart upload.
const PART_BYTES: usize = 8 << 20;
/// Threads of the request runtime.
const IO_THREADS: usize = 2;
/// Where catalog snapshots go under the store's prefix (metric files go
/// under `metrics`).
const CATALOG_PREFIX: &str = "catalog";

/// Errors of the object store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The store URL is not one stepstore can use.
    #[error("--store {url}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store client could not be built (bad bucket name, credentials
    /// in the wrong form, ...).
    #[error("--store {url}: {source}")]
    Open {
        /// The URL given.
        url: String,
        /// The client's error.
        source: object_store::Error,
    },
    /// A request to the store failed (after the client's own retries).
    #[error("{operation} {path} in the object store failed: {source}")]
    Request {
        /// What was being done.
        operation: &'static str,
        /// The object.
        path: String,
        /// The client's error.
        source: object_store::Error,
    },
    /// A local file to upload could not be read.
    #[error("reading {path} to upload it failed: {source}")]
    Local {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The request runtime could not start, or stopped.
    #[error("the object store's request runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The store holds a newer catalog snapshot than the one to upload:
    /// another writer uses the prefix, or this data directory started
    /// without the store's catalog. Nothing is overwritten.
    #[error(
        "the object store holds a newer catalog snapshot ({theirs}) than this server's \
         ({ours}): another server writes to this prefix, or this data directory started \
         while the store was unreachable; the store's catalog is left as it is"
    )]
    NewerCatalog {
        /// This server's snapshot.
        ours: String,
        /// The store's newest.
        theirs: String,
    },
}

/// A small multi-threaded runtime that runs store requests for callers on
/// any thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct IoRuntime {
    handle: tokio::runtime::Handle,
    /// Keeps the runtime alive while a clone is.
    _runtime: Arc<RuntimeOwner>,
}

/// Owns the runtime; shuts it down without waiting when the last
/// [`IoRuntime`] goes (dropping a runtime inside another one's worker
/// would panic).
#[derive(Debug)]
struct RuntimeOwner(Option<tokio::runtime::Runtime>);

impl Drop for RuntimeOwner {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl IoRuntime {
    /// Starts the runtime.
    pub fn start() -> Result<IoRuntime, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(IO_THREADS)
            .thread_name("stepstore-store")
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        Ok(IoRuntime {
            handle: runtime.handle().clone(),
            _runtime: Arc::new(RuntimeOwner(Some(runtime))),
        })
    }

    /// Runs `work` on the runtime and waits for it, blocking the calling
    /// thread.
    pub fn block_on<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, outcome) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = done.send(work.await);
        });
        outcome
            .recv()
            .map_err(|_| StoreError::Runtime(io::Error::other("the request task stopped")))
    }

    /// Runs `work` on the runtime in the background.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(work);
    }
}

/// An object store holding a copy of the `metrics` tree under a prefix.
#[derive(Clone, Debug)]
pub struct MetricStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    endpoint: Option<String>,
    io: IoRuntime,
}

impl MetricStore {
    /// Opens the store at `url`: `s3://bucket/prefix` (credentials and
    /// region from `AWS_*` variables; `endpoint` for an S3-compatible
    /// server), `gs://bucket/prefix` (`GOOGLE_*`), `az://container/prefix`
    /// (`AZURE_*`) or `file:///absolute/path`.
    pub fn open(url: &str, endpoint: Option<&str>) -> Result<MetricStore, StoreError> {
        let bad = |reason: &str| StoreError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let opened = |source| StoreError::Open {
            url: url.to_string(),
            source,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://bucket/prefix, such as s3://bucket/runs"))?;
        if endpoint.is_some() && scheme != "s3" {
            return Err(bad("--store-endpoint applies to s3:// stores only"));
        }
        let (store, prefix): (Arc<dyn ObjectStore>, &str) = match scheme {
            "s3" | "gs" | "az" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("the URL names no bucket"));
                }
                let root = format!("{scheme}://{bucket}");
                let store: Arc<dyn ObjectStore> = match scheme {
                    "s3" => {
                        let mut builder = object_store::aws::AmazonS3Builder::from_env()
                            .with_url(root)
                            .with_retry(request_retries());
                        if let Some(endpoint) = endpoint {
                            builder = builder
                                .with_endpoint(endpoint)
                                .with_allow_http(endpoint.starts_with("http://"));
                        }
                        Arc::new(builder.build().map_err(opened)?)
                    }
                    "gs" => Arc::new(
                        object_store::gcp::GoogleCloudStorageBuilder::from_env()
                            .with_url(root)
                            .with_retry(request_retries())
                            .build()
                            .map_err(opened)?,
                    ),
                    _ => Arc::new(
                        object_store::azure::MicrosoftAzureBuilder::from_env()
                            .with_url(root)
                            .with_retry(request_retries())
                            .build()
                            .map_err(opened)?,
                    ),
                };
                (store, prefix)
            }
            "file" => {
                let directory = Path::new(rest);
                if !directory.is_absolute() {
                    return Err(bad("a file:// store needs an absolute path"));
                }
                std::fs::create_dir_all(directory).map_err(|source| StoreError::Local {
                    path: directory.to_path_buf(),
                    source,
                })?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(directory)
                    .map_err(opened)?;
                (Arc::new(store), "")
            }
            _ => return Err(bad("the scheme must be s3, gs, az or file")),
        };
        let prefix = ObjectPath::parse(prefix.trim_matches('/'))
            .map_err(|error| bad(&format!("the prefix is not a valid object path: {error}")))?;
        Ok(MetricStore {
            store,
            prefix,
            url: url.to_string(),
            endpoint: endpoint.map(str::to_string),
            io: IoRuntime::start()?,
        })
    }

    /// A store over `store` itself (tests, and stores built elsewhere).
    pub fn over(store: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> Result<Self, StoreError> {
        Ok(MetricStore {
            store,
            prefix: ObjectPath::from(prefix),
            url: url.to_string(),
            endpoint: None,
            io: IoRuntime::start()?,
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The endpoint it was opened with (`--store-endpoint`).
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The object store client itself (tests).
    #[cfg(test)]
    pub(crate) fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The runtime its requests run on.
    pub fn io(&self) -> &IoRuntime {
        &self.io
    }

    /// The object holding the file at `relative` (a path under the
    /// `metrics` directory, such as `experiment_id=1/run_id=…/00000001.parquet`).
    pub fn object_path(&self, relative: &Path) -> ObjectPath {
        let parts = relative
            .components()
            .filter_map(|component| match component {
                Component::Normal(part) => part.to_str(),
                _ => None,
            });
        let mut path = self.prefix.clone();
        for part in std::iter::once("metrics").chain(parts) {
            path = path.join(part);
        }
        path
    }

    /// The object holding the catalog snapshot file `name`.
    pub fn catalog_path(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join(CATALOG_PREFIX).join(name)
    }

    /// The catalog snapshot files in the store, as `(name, size)`.
    /// Blocking.
    pub fn list_catalog(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let root = self.prefix.clone().join(CATALOG_PREFIX);
        Ok(self
            .list_under(root)?
            .into_iter()
            .filter_map(|(mut parts, size)| {
                let name = parts.pop()?;
                parts.is_empty().then_some((name, size))
            })
            .collect())
    }

    /// Downloads the catalog snapshot file `name` to `local` (written to a
    /// temporary file, synced, then renamed). Blocking.
    pub fn download_catalog(&self, name: &str, local: &Path) -> Result<u64, StoreError> {
        let location = self.catalog_path(name);
        let store = Arc::clone(&self.store);
        let fetched = location.clone();
        let bytes = self
            .io
            .block_on(async move { store.get(&fetched).await?.bytes().await })?
            .map_err(|source| StoreError::Request {
                operation: "downloading",
                path: location.to_string(),
                source,
            })?;
        let local_error = |source| StoreError::Local {
            path: local.to_path_buf(),
            source,
        };
        let temp = local.with_extension("download.tmp");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temp).map_err(local_error)?;
            file.write_all(&bytes).map_err(local_error)?;
            file.sync_all().map_err(local_error)?;
        }
        std::fs::rename(&temp, local).map_err(local_error)?;
        Ok(bytes.len() as u64)
    }

    /// Uploads the local file `local` as `relative`, in parts when it is
    /// large; returns its size. Blocking.
    pub fn upload(&self, local: &Path, relative: &Path) -> Result<u64, StoreError> {
        self.io.block_on(
            self.clone()
                .put_file(local.to_path_buf(), relative.to_path_buf()),
        )?
    }

    /// Uploads the local file `local` as `relative`: in one request when
    /// it is small, else in parts read from the file one at a time.
    pub(crate) async fn put_file(
        self,
        local: std::path::PathBuf,
        relative: std::path::PathBuf,
    ) -> Result<u64, StoreError> {
        let location = self.object_path(&relative);
        self.put_object(local, location).await
    }

    /// Uploads the local file `local` as the object `location`: in one
    /// request when it is small, else in parts read from the file one at a
    /// time.
    pub(crate) async fn put_object(
        self,
        local: std::path::PathBuf,
        location: ObjectPath,
    ) -> Result<u64, StoreError> {
        let request = |source| StoreError::Request {
            operation: "uploading",
            path: location.to_string(),
            source,
        };
        let local_error = |source| StoreError::Local {
            path: local.clone(),
            source,
        };
        let length = std::fs::metadata(&local).map_err(local_error)?.len();
        if length < MULTIPART_BYTES {
            let bytes = read_part(local.clone(), 0, length as usize)
                .await
                .map_err(local_error)?;
            self.store
                .put(&location, PutPayload::from(bytes))
                .await
                .map_err(request)?;
            return Ok(length);
        }
        let upload = self.store.put_multipart(&location).await.map_err(request)?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut offset = 0u64;
        while offset < length {
            let size = (length - offset).min(PART_BYTES as u64) as usize;
            let bytes = match read_part(local.clone(), offset, size).await {
                Ok(bytes) => bytes,
                Err(source) => {
                    let _ = parts.abort().await;
                    return Err(local_error(source));
                }
            };
            parts.wait_for_capacity(2).await.map_err(request)?;
            parts.put(bytes);
            offset += size as u64;
        }
        parts.finish().await.map_err(request)?;
        Ok(length)
    }

    /// Deletes the object of `relative`; one that is not there is fine.
    /// Blocking.
    pub fn delete(&self, relative: &Path) -> Result<(), StoreError> {
        self.io
            .block_on(self.clone().delete_file(relative.to_path_buf()))?
    }

    /// Deletes the object of `relative`; one that is not there is fine.
    pub(crate) async fn delete_file(self, relative: std::path::PathBuf) -> Result<(), StoreError> {
        let location = self.object_path(&relative);
        self.delete_object(location).await
    }

    /// Deletes the object `location`; one that is not there is fine.
    pub(crate) async fn delete_object(self, location: ObjectPath) -> Result<(), StoreError> {
        match self.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StoreError::Request {
                operation: "deleting",
                path: location.to_string(),
                source,
            }),
        }
    }

    /// Every object under the store's `metrics` tree, as `(path relative
    /// to the tree, size)`. Blocking.
    pub fn list_metric_files(&self) -> Result<Vec<(std::path::PathBuf, u64)>, StoreError> {
        let root = self.prefix.clone().join("metrics");
        Ok(self
            .list_under(root)?
            .into_iter()
            .map(|(parts, size)| (parts.into_iter().collect(), size))
            .collect())
    }

    /// Every object under `root`, as `(path parts below it, size)`.
    /// Blocking.
    fn list_under(&self, root: ObjectPath) -> Result<Vec<(Vec<String>, u64)>, StoreError> {
        let store = Arc::clone(&self.store);
        let listing_root = root.clone();
        let objects = self
            .io
            .block_on(async move {
                store
                    .list(Some(&listing_root))
                    .try_collect::<Vec<_>>()
                    .await
            })?
            .map_err(|source| StoreError::Request {
                operation: "listing",
                path: root.to_string(),
                source,
            })?;
        Ok(objects
            .into_iter()
            .filter_map(|object| {
                let parts: Vec<String> = object
                    .location
                    .prefix_match(&root)?
                    .map(|part| part.as_ref().to_string())
                    .collect();
                Some((parts, object.size))
            })
            .collect())
    }

    /// The stored file `relative`, `length` bytes long, for reading.
    pub fn open_file(&self, relative: &Path) -> ObjectFile {
        ObjectFile {
            store: Arc::clone(&self.store),
            location: self.object_path(relative),
            io: self.io.clone(),
        }
    }
}

/// One stored file, read by byte ranges (several at once for a
/// prefetch).
#[derive(Debug)]
pub struct ObjectFile {
    store: Arc<dyn ObjectStore>,
    location: ObjectPath,
    io: IoRuntime,
}

impl ObjectFile {
    fn request<T: Send + 'static>(
        &self,
        work: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> io::Result<T> {
        let outcome = self.io.block_on(work).map_err(io::Error::other)?;
        outcome.map_err(|source| match source {
            object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, source),
            source => io::Error::other(source),
        })
    }
}

impl ByteSource for ObjectFile {
    fn read_range(&self, range: Range<u64>) -> io::Result<Bytes> {
        let store = Arc::clone(&self.store);
        let location = self.location.clone();
        let expected = range.end - range.start;
        let bytes = self.request(async move { store.get_range(&location, range).await })?;
        if bytes.len() as u64 != expected {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends early", self.location),
            ));
        }
        Ok(bytes)
    }

    fn read_ranges(&self, ranges: &[Range<u64>]) -> io::Result<Vec<Bytes>> {
        let store = Arc::clone(&self.store);
        let location = self.location.clone();
        let wanted = ranges.to_vec();
        let pieces = self.request(async move { store.get_ranges(&location, &wanted).await })?;
        if pieces.len() != ranges.len()
            || pieces
                .iter()
                .zip(ranges)
                .any(|(bytes, range)| bytes.len() as u64 != range.end - range.start)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends early", self.location),
            ));
        }
        Ok(pieces)
    }
}

/// The client's own retries of one request: a few, within 10 s. Uploads
/// retry on top of them for as long as it takes; a read fails soon enough
/// to be reported.
fn request_retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
        ..object_store::RetryConfig::default()
    }
}

/// `length` bytes of the local file `path` from `offset`, read on a
/// blocking thread.
async fn read_part(path: std::path::PathBuf, offset: u64, length: usize) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&path)?;
        let mut buffer = vec![0u8; length];
        file.read_exact_at(&mut buffer, offset)?;
        Ok(Bytes::from(buffer))
    })
    .await
    .map_err(io::Error::other)?
}

/// How long to wait before attempt `attempt` (1 for the first retry) of
/// an upload: doubling from 100 ms, at most 30 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let millis = 100u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    Duration::from_millis(millis.min(30_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[test]
    fn urls_name_their_store_or_are_refused_clearly() {
        let refused = |url: &str, endpoint: Option<&str>| match MetricStore::open(url, endpoint) {
            Err(StoreError::Url { reason, .. }) => reason,
            other => panic!("{url}: expected a URL error, got {other:?}"),
        };
        assert!(refused("bucket/prefix", None).contains("scheme"));
        assert!(refused("ftp://host/x", None).contains("s3, gs, az or file"));
        assert!(refused("s3:///prefix", None).contains("no bucket"));
        assert!(refused("file://relative/dir", None).contains("absolute"));
        assert!(refused("gs://bucket/x", Some("http://127.0.0.1:1")).contains("s3://"));
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("store").display());
        let store = MetricStore::open(&url, None).unwrap();
        assert_eq!(
            store
                .object_path(Path::new("experiment_id=1/run_id=ab/00000001.parquet"))
                .as_ref(),
            "metrics/experiment_id=1/run_id=ab/00000001.parquet"
        );
        let s3 = MetricStore::open("s3://bucket/team/runs/", Some("http://127.0.0.1:9")).unwrap();
        assert_eq!(
            s3.object_path(Path::new("a/b.parquet")).as_ref(),
            "team/runs/metrics/a/b.parquet"
        );
    }

    #[test]
    fn files_upload_read_back_by_ranges_list_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("file.parquet");
        let content: Vec<u8> = (0..100_000u32).map(|index| (index % 251) as u8).collect();
        std::fs::write(&local, &content).unwrap();
        let store = MetricStore::over(Arc::new(InMemory::new()), "prefix", "memory://").unwrap();
        let relative = Path::new("experiment_id=1/run_id=r/00000001.parquet");
        assert_eq!(store.upload(&local, relative).unwrap(), 100_000);
        let file = store.open_file(relative);
        assert_eq!(&file.read_range(10..20).unwrap()[..], &content[10..20]);
        let pieces = file.read_ranges(&[0..5, 99_990..100_000]).unwrap();
        assert_eq!(&pieces[1][..], &content[99_990..]);
        assert!(
            file.read_range(99_990..100_010).is_err(),
            "a read past the end"
        );
        assert_eq!(
            store.list_metric_files().unwrap(),
            vec![(relative.to_path_buf(), 100_000)]
        );
        store.delete(relative).unwrap();
        store.delete(relative).unwrap();
        assert!(store.list_metric_files().unwrap().is_empty());
        let gone = store.open_file(relative).read_range(0..1).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn large_files_upload_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("big.parquet");
        let content: Vec<u8> = (0..(MULTIPART_BYTES + 12_345))
            .map(|index| (index % 253) as u8)
            .collect();
        std::fs::write(&local, &content).unwrap();
        let store = MetricStore::over(Arc::new(InMemory::new()), "", "memory://").unwrap();
        let relative = Path::new("big.parquet");
        store.upload(&local, relative).unwrap();
        let file = store.open_file(relative);
        let end = content.len() as u64;
        assert_eq!(
            &file.read_range(end - 10..end).unwrap()[..],
            &content[content.len() - 10..]
        );
        assert_eq!(file.read_range(0..3).unwrap()[..], content[..3]);
    }

    #[test]
    fn retries_back_off_up_to_thirty_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(12), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
    }
}
