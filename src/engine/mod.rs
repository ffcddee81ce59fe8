//! The engine: the one value that owns the catalog, the WAL, the ingester
//! and the background maintenance, and that the HTTP layer, the CLI and the
//! tests talk to.
//!
//! Writes follow one path: validate, append to the WAL, wait until durable,
//! apply (catalog in memory, or points into the run's buffer), answer. Reads
//! see every acknowledged write.
//!
//! This file holds the engine value, its errors, start-up and the catalog
//! calls; `metric_writes` the metric write path, `catalog_log` the
//! catalog's WAL log and its rollback, `operations` health, telemetry,
//! checkpoints and shutdown, `recovery` start-up from disk, `key_budget`
//! the per-run key caps, `maintenance` the background checkpoint thread.

mod catalog_log;
pub mod continuity;
mod forks;
mod key_budget;
mod lineage;
mod maintenance;
mod metric_writes;
mod operations;
mod recovery;
pub mod replica;
pub mod retention;
pub(crate) mod run_files;
mod store_start;
pub mod wal_record;

pub use lineage::ArtifactFilter;
pub use operations::TelemetrySnapshot;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::auth::{AccessDenied, AuthError, Principal, TokenStore};
use crate::catalog::CatalogState;
use crate::catalog::receipts::IngestReceipts;
use crate::catalog::{Catalog, CatalogError, NewExperiment, NewRun, RunUpdate, snapshot};
use crate::durable_fs::FileIo;
use crate::error_kind::{Classify, ErrorKind};
use crate::ingest::{
    DormantRun, IngestConfig, IngestError, Ingester, KeyNames, KeySet, RunLoader, RunPoints,
    RunSelection, RunSummaries, StartingRuns,
};
use crate::model::{
    DatasetInput, Experiment, ExperimentId, KeySummary, LifecycleStage, Run, RunId,
    ValidationError, now_millis,
};
use crate::storage::dormant_log::{self, DormantLog, DormantRecord};
use crate::storage::{MetricsLayout, ReadCache, SharedByFiles, StorageError, Uploader};
use crate::wal::{SyncPolicy, Wal, WalConfig, WalError};
use catalog_log::WalMutationLog;

/// Settings of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// When the WAL syncs.
    pub wal_sync: SyncPolicy,
    /// Size at which a WAL segment is closed.
    pub wal_segment_bytes: u64,
    /// Ingester settings.
    pub ingest: IngestConfig,
    /// How long a metric write waits for room when buffers fill their
    /// budget before it is refused (503).
    pub overload_wait: Duration,
    /// How often maintenance checkpoints (removes persisted WAL segments).
    pub checkpoint_interval: Duration,
    /// Least time between two catalog snapshots.
    pub snapshot_interval: Duration,
    /// Root of experiments' artifact locations; `file://<data-dir>/artifacts`
    /// when absent.
    pub artifact_root: Option<String>,
    /// Open for reading only (`stepstore sql --data-dir`): recovery runs as
    /// usual, but writes are refused, no maintenance runs, and shutdown
    /// leaves buffers to the WAL instead of writing files.
    pub read_only: bool,
    /// Distinct metric keys one run may have (`--max-keys-per-run`).
    pub max_keys_per_run: usize,
    /// The file operations of every write path (WAL, metric files,
    /// compaction, catalog snapshots); tests inject faults through it.
    pub file_io: FileIo,
    /// Memory for cached metric file footers, in bytes (`--footer-cache-mb`).
    pub footer_cache_bytes: u64,
    /// The object store metric files are uploaded to (`--store`); `None`
    /// keeps them on the local disk only.
    pub store: Option<crate::storage::MetricStore>,
    /// Where the local cache of the object store lives (`--cache-dir`);
    /// `<data-dir>/cache` when absent.
    pub cache_dir: Option<PathBuf>,
    /// Local disk for uploaded files' copies and ranges read from the
    /// store, in bytes (`--cache-mb`).
    pub cache_bytes: u64,
    /// A read replica of `store` (`--read-only` with `--store`): implies
    /// `read_only`.
    pub replica: Option<replica::ReplicaSettings>,
}

impl EngineConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let ingest = IngestConfig::default();
        EngineConfig {
            data_dir: data_dir.into(),
            wal_sync: SyncPolicy::Always,
            wal_segment_bytes: 64 << 20,
            overload_wait: Duration::from_secs(10),
            ingest,
            checkpoint_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(30),
            artifact_root: None,
            read_only: false,
            max_keys_per_run: 100_000,
            file_io: FileIo::default(),
            footer_cache_bytes: crate::storage::footer_cache::DEFAULT_FOOTER_CACHE_BYTES,
            store: None,
            cache_dir: None,
            cache_bytes: crate::storage::cache::DEFAULT_CACHE_MB << 20,
            replica: None,
        }
    }
}

/// Errors of the engine.
#[derive(Debug, Error)]
pub enum EngineError {
    /// Bad input.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A catalog operation failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The WAL failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The ingester failed.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// Metric file storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] crate::storage::StoreError),
    /// The token store failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The caller's token may not touch this.
    #[error(transparent)]
    AccessDenied(#[from] AccessDenied),
    /// Buffers are over the reject threshold.
    #[error(
        "the server is over its metric buffer limit ({buffered} bytes buffered, limit {limit}); \
         retry shortly"
    )]
    Overloaded {
        /// Bytes buffered or in flight.
        buffered: u64,
        /// The limit.
        limit: u64,
    },
    /// One request's points need more buffer memory than the whole budget:
    /// retrying cannot help.
    #[error(
        "the request's {points} points need about {bytes} bytes of buffer memory, more than the \
         whole buffer budget of {limit} bytes (--buffer-budget-mb); send fewer points per request"
    )]
    LargerThanBudget {
        /// Points in the request.
        points: usize,
        /// Buffer memory they need.
        bytes: u64,
        /// The budget.
        limit: u64,
    },
    /// A batch would give its run more distinct metric keys than allowed.
    #[error(
        "run {run_id} has {have} metric keys and this request adds {adding} more, past the \
         limit of {limit} per run (--max-keys-per-run)"
    )]
    TooManyKeys {
        /// The run.
        run_id: RunId,
        /// Keys it has (or has in flight).
        have: usize,
        /// New keys in the request.
        adding: usize,
        /// The limit.
        limit: usize,
    },
    /// The engine is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The engine was opened read-only.
    #[error("the data directory is open for reading only")]
    ReadOnly,
    /// The server is a read replica.
    #[error(
        "this server is a read replica of {store}: it serves reads only; send writes to the \
         writer{}", writer.as_ref().map(|url| format!(" at {url}")).unwrap_or_default()
    )]
    Replica {
        /// The store it reads.
        store: String,
        /// Where writes go, when configured (`--writer-url`).
        writer: Option<String>,
    },
    /// Another process holds the data directory.
    #[error("the data directory {0} is in use by another stepstore process")]
    DataDirInUse(String),
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
    /// A background task failed.
    #[error("background task failed: {0}")]
    Task(String),
    /// The request is not valid (what is wrong is said).
    #[error("{0}")]
    InvalidRequest(String),
    /// The answer could not be settled now; retry.
    #[error("{0}")]
    Busy(String),
}

impl EngineError {
    pub(crate) fn io(operation: &'static str, path: &Path, source: std::io::Error) -> Self {
        EngineError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl Classify for EngineError {
    fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Invalid(_) => ErrorKind::InvalidParameter,
            EngineError::Catalog(error) => error.kind(),
            EngineError::Ingest(error) => error.kind(),
            EngineError::Storage(error) => error.kind(),
            EngineError::Auth(error) => error.kind(),
            EngineError::AccessDenied(error) => error.kind(),
            EngineError::Overloaded { .. } | EngineError::ShuttingDown => ErrorKind::Overloaded,
            EngineError::LargerThanBudget { .. } => ErrorKind::TooLarge,
            EngineError::TooManyKeys { .. } => ErrorKind::InvalidParameter,
            EngineError::ReadOnly | EngineError::InvalidRequest(_) => ErrorKind::InvalidParameter,
            EngineError::Replica { .. } => ErrorKind::ReadOnlyReplica,
            EngineError::Busy(_) => ErrorKind::Overloaded,
            EngineError::Wal(error) => error.kind(),
            EngineError::DataDirInUse(_)
            | EngineError::Io { .. }
            | EngineError::Task(_)
            | EngineError::Store(_) => ErrorKind::Internal,
        }
    }
}

/// Which experiments or runs a listing includes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ViewType {
    /// Only active ones (the default).
    #[default]
    ActiveOnly,
    /// Only soft-deleted ones.
    DeletedOnly,
    /// Both.
    All,
}

impl ViewType {
    /// Whether an entity in `stage` is included.
    pub fn includes(self, stage: LifecycleStage) -> bool {
        match self {
            ViewType::ActiveOnly => stage == LifecycleStage::Active,
            ViewType::DeletedOnly => stage == LifecycleStage::Deleted,
            ViewType::All => true,
        }
    }
}

/// The engine.
pub struct Engine {
    config: EngineConfig,
    catalog: Catalog,
    wal: Wal,
    ingester: Arc<Ingester>,
    in_flight_bytes: Arc<AtomicU64>,
    key_budgets: Arc<key_budget::KeyBudgets>,
    /// Receipts of keyed bulk requests (`Idempotency-Key`).
    receipts: Arc<IngestReceipts>,
    snapshot_lsn: AtomicU64,
    last_snapshot: Mutex<Instant>,
    accepting: AtomicBool,
    shut_down: AtomicBool,
    maintenance: Mutex<Option<maintenance::MaintenanceHandle>>,
    /// A read replica's state; `None` for a writer.
    replica: Option<replica::Replica>,
    replica_thread: Mutex<Option<maintenance::MaintenanceHandle>>,
    tokens: TokenStore,
    /// Damaged metric files moved to quarantine at start.
    quarantined_files: u64,
    /// Runs whose files the start took from their manifests.
    runs_from_manifests: u64,
    /// Runs the start held dormant from the dormant-run log.
    runs_from_dormant_log: u64,
    /// The metric files' footer cache and damaged-read count (the
    /// layout's).
    files_shared: Arc<SharedByFiles>,
    /// Set when a catalog change could not be made durable, until the
    /// catalog is rebuilt without it (see [`catalog_log`]).
    catalog_in_doubt: Arc<AtomicBool>,
    /// Held by a checkpoint (snapshot and WAL segment removal) and by a
    /// catalog rollback, which reads the snapshot and the WAL.
    checkpoint_lock: Mutex<()>,
    /// Summaries of rewound runs' points before their newest rewind.
    rewound_summaries: continuity::RewoundSummaryCache,
    /// Rewinds made since start (for `/metrics`).
    rewinds_applied: AtomicU64,
    /// Runs forked since start (for `/metrics`).
    forks_made: AtomicU64,
    /// Runs removed for good by gc since start (for `/metrics`).
    runs_purged: AtomicU64,
    _lock: File,
}

/// What the dormant-run log held at start: the runs whose last record is
/// `Dormant`.
struct LoggedDormant {
    logged: std::collections::HashMap<RunId, DormantRun>,
    /// Their key names.
    names: KeyNames,
    /// Records the log held.
    records: u64,
}

/// Opens the dormant-run log of the metrics tree `metrics_dir`, keeping
/// the runs whose last record is `Dormant`. Needs nothing of the catalog,
/// so a start reads it while the catalog loads.
fn open_dormant_log(
    metrics_dir: &std::path::Path,
) -> Result<(DormantLog, LoggedDormant), EngineError> {
    let mut names = KeyNames::default();
    let mut logged: std::collections::HashMap<RunId, DormantRun> = std::collections::HashMap::new();
    let (log, contents) = DormantLog::open(metrics_dir, |record| match record {
        DormantRecord::Dormant(entry) => {
            let run_id = entry.run_id;
            logged.insert(run_id, DormantRun::from_entry(entry, &mut names));
        }
        DormantRecord::Awake(run_id) => {
            logged.remove(&run_id);
        }
    })?;
    if contents.discarded {
        logged.clear();
    }
    Ok((
        log,
        LoggedDormant {
            logged,
            names,
            records: contents.records,
        },
    ))
}

/// Brings the dormant-run log up to date with the runs a start holds
/// dormant: appends the runs taken from their manifests, or, once the log
/// holds far more records than dormant runs (runs woken, purged, or gone
/// dormant many times), writes it anew with just those. A failure is
/// logged: the log is only a cache.
fn record_dormant_at_start(log: &DormantLog, files: &recovery::LoadedFiles, records: u64) {
    let dormant = files.dormant.len() + files.dormant_logged.len();
    let outcome = if records > 2 * dormant as u64 + 1024 {
        let all = files.dormant.iter().chain(&files.dormant_logged);
        log.rewrite(all.map(|(run_id, run)| run.entry(*run_id)))
    } else if !files.dormant.is_empty() {
        log.record_dormant(files.dormant.iter().map(|(run_id, run)| run.entry(*run_id)))
    } else {
        Ok(())
    };
    if let Err(error) = outcome {
        tracing::warn!(%error, "cannot bring the dormant-run log up to date; the next start opens more run directories");
    }
}

impl Engine {
    /// Opens (or creates) the data directory, recovers its state and starts
    /// the background threads.
    pub fn open(mut config: EngineConfig) -> Result<Arc<Engine>, EngineError> {
        let started = Instant::now();
        let lock = recovery::lock_data_dir(&config.data_dir)?;
        config.store = store_start::resolve_store(&config.data_dir, config.store.take())?;
        if config.replica.is_some() {
            if config.store.is_none() {
                return Err(EngineError::InvalidRequest(
                    "a read replica needs the writer's object store (--store)".into(),
                ));
            }
            config.read_only = true;
        }
        let is_replica = config.replica.is_some();
        let data_dir = config.data_dir.clone();
        let artifact_root = config.artifact_root.clone().unwrap_or_else(|| {
            let absolute = std::path::absolute(&data_dir).unwrap_or_else(|_| data_dir.clone());
            format!("file://{}", absolute.join("artifacts").display())
        });
        let layout =
            MetricsLayout::with_io(data_dir.join(recovery::METRICS_DIR), config.file_io.clone())
                .with_footer_cache(config.footer_cache_bytes);
        let files_shared = layout.shared();
        if let Some(store) = config.store.clone() {
            let cache_dir = config
                .cache_dir
                .clone()
                .unwrap_or_else(|| data_dir.join(recovery::CACHE_DIR));
            layout.set_cache(ReadCache::open(
                store.clone(),
                cache_dir.clone(),
                layout.root().to_path_buf(),
                config.cache_bytes,
            )?);
            if !config.read_only {
                tracing::info!(
                    store = store.url(),
                    cache_dir = %cache_dir.display(),
                    cache_mb = config.cache_bytes >> 20,
                    "metric files are uploaded to the object store"
                );
                layout.set_uploader(Uploader::start(store, layout.root().to_path_buf()));
            }
        }
        let catalog_dir = data_dir.join(recovery::CATALOG_DIR);
        store_start::fetch_catalog(&layout, &data_dir, is_replica)?;
        // Settled runs go dormant (held by their summaries, their files
        // loaded again when needed) on a writer that keeps its files on
        // the local disk only: a replica refreshes its runs' files from
        // the store, and a writer with a store tracks uploads and local
        // copies per loaded file.
        let dormancy =
            !config.read_only && config.store.is_none() && config.ingest.idle_run_after.is_some();
        // The log is read on a thread of its own while the catalog loads
        // (at a million runs, each takes seconds).
        let log_reader = dormancy.then(|| {
            let metrics_dir = layout.root().to_path_buf();
            std::thread::Builder::new()
                .name("dormant-log".to_string())
                .spawn(move || open_dormant_log(&metrics_dir))
        });
        let loaded_catalog = recovery::load_catalog(
            &data_dir,
            &data_dir.join(recovery::QUARANTINE_DIR),
            &artifact_root,
        )?;
        let catalog_state = loaded_catalog.state;
        let catalog_loaded = started.elapsed();
        let listing = store_start::list_store(&layout);
        let stored = store_start::stored_files(&layout, listing.as_ref(), is_replica)?;
        let wal_dir = data_dir.join(recovery::WAL_DIR);
        let ended = |run_id: RunId| {
            catalog_state
                .run(run_id)
                .is_some_and(|run| run.status.is_terminal())
        };
        let (dormant_log, dormant_start) = if let Some(reader) = log_reader {
            let opened = match reader {
                Ok(thread) => thread.join().unwrap_or_else(|_| {
                    Err(EngineError::Task(
                        "the thread reading the dormant-run log panicked".to_string(),
                    ))
                }),
                // No thread to be had: read it here.
                Err(_) => open_dormant_log(layout.root()),
            };
            match opened {
                Ok((log, logged)) => (Some(Arc::new(log)), Some(logged)),
                Err(error) => {
                    tracing::warn!(%error, "cannot read the dormant-run log; it is removed and finished runs are loaded from their directories");
                    dormant_log::remove(layout.root())?;
                    (None, None)
                }
            }
        } else {
            // A writer that does not keep the log up to date (an offline
            // tool, runs kept loaded) must not leave it to a later start.
            if !config.read_only {
                dormant_log::remove(layout.root())?;
            }
            (None, None)
        };
        let dormant_log_records = dormant_start.as_ref().map_or(0, |start| start.records);
        let dormant_start = dormant_start.map(|logged| recovery::DormantStart {
            ended: &ended,
            logged: logged.logged,
            names: logged.names,
        });
        let mut files = recovery::load_metric_files(
            &layout,
            &data_dir.join(recovery::QUARANTINE_DIR),
            catalog_state.continuity(),
            &stored,
            recovery::wal_floor(&wal_dir)?,
            dormant_start,
        )?;
        let runs_from_dormant_log = files.dormant_logged.len();
        if let Some(log) = &dormant_log {
            record_dormant_at_start(log, &files, dormant_log_records);
        }
        files.dormant_names = KeyNames::default();
        store_start::reconcile_store(&layout, &files, listing.as_ref());
        let files_loaded = started.elapsed();
        let receipts = Arc::new(IngestReceipts::new(loaded_catalog.receipts, now_millis()));
        let quarantined_files = files.quarantined + loaded_catalog.quarantined;
        let runs_from_manifests = files.from_manifests;
        let snapshot_lsn = catalog_state.applied_lsn;
        if snapshot_lsn == 0 {
            // A new data directory: fix the Default experiment's creation time.
            snapshot::write(&catalog_dir, &catalog_state, &config.file_io)?;
        }
        let catalog = Catalog::new(catalog_state, artifact_root);
        let tokens = TokenStore::open(&data_dir.join(recovery::AUTH_DIR))?;
        let file_count: usize = files.runs.iter().map(|run| run.files.len()).sum();
        let replica_state = config.replica.clone().map(|settings| replica::Replica {
            settings,
            layout: layout.clone(),
            files: replica::ReplicaFiles::from_start(
                &files.runs,
                listing.as_ref(),
                catalog.read().continuity(),
            ),
            stats: replica::ReplicaStats::default(),
        });
        if let Some(replica) = &replica_state {
            replica.stats.started();
        }
        let dormant_runs = files.dormant.len() + runs_from_dormant_log;
        let mut dormant = files.dormant;
        dormant.append(&mut files.dormant_logged);
        let starting = StartingRuns {
            loaded: files.runs,
            dormant,
            loader: dormancy.then(|| {
                Arc::new(run_files::DiskRunLoader::new(layout.clone())) as Arc<dyn RunLoader>
            }),
            log: dormant_log,
        };
        let mut ingest_config = config.ingest.clone();
        if ingest_config.spill_dir.is_none() && replica_state.is_none() {
            ingest_config.spill_dir = Some(data_dir.join(recovery::SPILL_DIR));
        }
        let ingester = Arc::new(Ingester::start_recovering_with(
            ingest_config,
            layout,
            starting,
        )?);
        let replayed =
            recovery::replay_wal(&wal_dir, &catalog, &receipts, &ingester, &files.covered)?;
        let wal_replayed = started.elapsed();
        // Files of a run the catalog does not know (a gc's record is behind
        // the snapshot, and the server stopped before the files went; or a
        // catalog that lost runs) are kept, never served: `stepstore gc`
        // lists and removes them.
        let unknown = files
            .covered
            .keys()
            .filter(|run_id| catalog.read().run(**run_id).is_none())
            .count();
        if unknown > 0 {
            tracing::warn!(
                runs = unknown,
                "metric files of runs the catalog does not know are kept; stepstore gc removes them"
            );
        }
        // Read-only (a replica, `stepstore sql --data-dir`): never compact,
        // so nothing is written.
        if !config.read_only {
            ingester.finish_recovery();
        }
        let last_lsn = replayed
            .last_lsn
            .max(files.max_lsn)
            .max(catalog.read().applied_lsn)
            .max(receipts.max_lsn());
        // Runs that ended before the restart still get compacted.
        let ended: Vec<RunId> = catalog
            .read()
            .runs()
            .filter(|run| run.status.is_terminal())
            .map(|run| run.run_id)
            .collect();
        for run_id in ended.into_iter().filter(|_| !config.read_only) {
            ingester.run_ended(run_id);
        }
        let wal = Wal::open_continuing(
            WalConfig {
                dir: wal_dir,
                sync: config.wal_sync,
                segment_bytes: config.wal_segment_bytes,
                io: config.file_io.clone(),
            },
            replayed.last_lsn,
            last_lsn,
        )?;
        tracing::info!(
            data_dir = %data_dir.display(),
            metric_files = file_count,
            runs = catalog.read().run_count(),
            wal_catalog_records = replayed.catalog_records,
            wal_metric_records = replayed.metric_records,
            wal_records_already_persisted = replayed.skipped_metric_records,
            wal_torn_bytes = replayed.truncated_bytes,
            quarantined_files,
            runs_from_manifests,
            runs_from_dormant_log,
            dormant_runs,
            last_lsn,
            catalog_ms = catalog_loaded.as_millis() as u64,
            metric_files_ms = (files_loaded - catalog_loaded).as_millis() as u64,
            wal_replay_ms = (wal_replayed - files_loaded).as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered"
        );
        let key_budgets = key_budget::KeyBudgets::new(config.max_keys_per_run.max(1));
        let engine = Arc::new(Engine {
            config,
            catalog,
            wal,
            ingester,
            in_flight_bytes: Arc::new(AtomicU64::new(0)),
            key_budgets,
            receipts,
            snapshot_lsn: AtomicU64::new(snapshot_lsn),
            last_snapshot: Mutex::new(Instant::now()),
            accepting: AtomicBool::new(true),
            shut_down: AtomicBool::new(false),
            maintenance: Mutex::new(None),
            replica: replica_state,
            replica_thread: Mutex::new(None),
            tokens,
            quarantined_files,
            runs_from_manifests,
            runs_from_dormant_log: runs_from_dormant_log as u64,
            files_shared,
            catalog_in_doubt: Arc::default(),
            checkpoint_lock: Mutex::new(()),
            rewound_summaries: continuity::RewoundSummaryCache::default(),
            rewinds_applied: AtomicU64::new(0),
            forks_made: AtomicU64::new(0),
            runs_purged: AtomicU64::new(0),
            _lock: lock,
        });
        if let Some(replica) = &engine.replica {
            let handle = replica::start(Arc::downgrade(&engine), replica.settings.refresh)?;
            *engine
                .replica_thread
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handle);
        }
        if engine.config.read_only {
            return Ok(engine);
        }
        let handle =
            maintenance::start(Arc::downgrade(&engine), engine.config.checkpoint_interval)?;
        *engine
            .maintenance
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handle);
        Ok(engine)
    }

    /// The settings it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The access tokens of this data directory.
    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    /// What the metric files share: their footer cache, and with an object
    /// store its uploader and local cache.
    pub fn metric_files(&self) -> &SharedByFiles {
        &self.files_shared
    }

    fn log(&self) -> WalMutationLog<'_> {
        WalMutationLog {
            wal: &self.wal,
            in_doubt: &self.catalog_in_doubt,
            on_written: std::sync::Mutex::new(None),
        }
    }

    fn ensure_accepting(&self) -> Result<(), EngineError> {
        if let Some(replica) = &self.replica {
            Err(EngineError::Replica {
                store: self
                    .config
                    .store
                    .as_ref()
                    .map(|store| store.url().to_string())
                    .unwrap_or_default(),
                writer: replica.settings.writer.clone(),
            })
        } else if self.config.read_only {
            Err(EngineError::ReadOnly)
        } else if self.accepting.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(EngineError::ShuttingDown)
        }
    }

    // ---- experiments -------------------------------------------------

    /// Creates an experiment.
    pub async fn create_experiment(
        &self,
        request: NewExperiment,
    ) -> Result<ExperimentId, EngineError> {
        self.ensure_accepting()?;
        let (id, ticket) = self
            .catalog
            .create_experiment(&self.log(), request, now_millis())?;
        self.wait_durable(ticket).await?;
        Ok(id)
    }

    /// An experiment by id.
    pub fn experiment(&self, experiment_id: ExperimentId) -> Result<Experiment, EngineError> {
        Ok(self.catalog.experiment(experiment_id)?)
    }

    /// An experiment by name.
    pub fn experiment_by_name(&self, name: &str) -> Result<Experiment, EngineError> {
        Ok(self.catalog.experiment_by_name(name)?)
    }

    /// An experiment `principal` may see (403 before 404, so a limited
    /// token learns nothing of other experiments).
    pub fn experiment_for(
        &self,
        principal: &Principal,
        experiment_id: ExperimentId,
    ) -> Result<Experiment, EngineError> {
        principal.check_experiment(experiment_id)?;
        self.experiment(experiment_id)
    }

    /// An experiment by name, if `principal` may see it.
    pub fn experiment_by_name_for(
        &self,
        principal: &Principal,
        name: &str,
    ) -> Result<Experiment, EngineError> {
        let experiment = self.experiment_by_name(name)?;
        principal.check_experiment(experiment.experiment_id)?;
        Ok(experiment)
    }

    /// Experiments in the view, by id.
    pub fn experiments(&self, view: ViewType) -> Vec<Experiment> {
        self.catalog
            .read()
            .experiments()
            .filter(|experiment| view.includes(experiment.lifecycle_stage))
            .cloned()
            .collect()
    }

    /// Renames an experiment.
    pub async fn rename_experiment(
        &self,
        experiment_id: ExperimentId,
        name: String,
    ) -> Result<(), EngineError> {
        self.ensure_accepting()?;
        let ((), ticket) =
            self.catalog
                .rename_experiment(&self.log(), experiment_id, name, now_millis())?;
        self.wait_durable(ticket).await
    }

    /// Soft-deletes or restores an experiment.
    pub async fn set_experiment_lifecycle(
        &self,
        experiment_id: ExperimentId,
        stage: LifecycleStage,
    ) -> Result<(), EngineError> {
        self.ensure_accepting()?;
        let ((), ticket) = self.catalog.set_experiment_lifecycle(
            &self.log(),
            experiment_id,
            stage,
            now_millis(),
        )?;
        self.wait_durable(ticket).await
    }

    /// Sets experiment tags.
    pub async fn set_experiment_tags(
        &self,
        experiment_id: ExperimentId,
        tags: Vec<(String, String)>,
    ) -> Result<(), EngineError> {
        self.ensure_accepting()?;
        let ((), ticket) =
            self.catalog
                .set_experiment_tags(&self.log(), experiment_id, tags, now_millis())?;
        self.wait_durable(ticket).await
    }

    /// Deletes an experiment tag.
    pub async fn delete_experiment_tag(
        &self,
        experiment_id: ExperimentId,
        key: String,
    ) -> Result<(), EngineError> {
        self.ensure_accepting()?;
        let ((), ticket) =
            self.catalog
                .delete_experiment_tag(&self.log(), experiment_id, key, now_millis())?;
        self.wait_durable(ticket).await
    }

    // ---- runs --------------------------------------------------------

    /// Creates a run.
    pub async fn create_run(&self, request: NewRun) -> Result<Run, EngineError> {
        self.ensure_accepting()?;
        let (run, ticket) = self.catalog.create_run(&self.log(), request)?;
        self.wait_durable(ticket).await?;
        Ok(run)
    }

    /// A run by id.
    pub fn run(&self, run_id: RunId) -> Result<Run, EngineError> {
        Ok(self.catalog.run(run_id)?)
    }

    /// A run whose experiment `principal` may see.
    pub fn run_for(&self, principal: &Principal, run_id: RunId) -> Result<Run, EngineError> {
        let run = self.run(run_id)?;
        principal.check_experiment(run.experiment_id)?;
        Ok(run)
    }

    /// Fails when `principal` may not touch run `run_id`. Free for an
    /// unlimited principal (the write path pays nothing); for a limited
    /// one, an unknown run is `NotFound`.
    pub fn check_run_access(
        &self,
        principal: &Principal,
        run_id: RunId,
    ) -> Result<(), EngineError> {
        if !principal.is_limited() {
            return Ok(());
        }
        let experiment_id = self
            .catalog
            .read()
            .run(run_id)
            .map(|run| run.experiment_id)
            .ok_or(CatalogError::RunNotFound(run_id))?;
        Ok(principal.check_experiment(experiment_id)?)
    }

    /// Runs of an experiment in the view, newest first.
    pub fn runs_of_experiment(&self, experiment_id: ExperimentId, view: ViewType) -> Vec<Arc<Run>> {
        let mut runs: Vec<Arc<Run>> = self
            .catalog
            .read()
            .runs_of(experiment_id)
            .filter(|run| view.includes(run.lifecycle_stage))
            .cloned()
            .collect();
        runs.sort_by(|a, b| {
            b.start_time
                .cmp(&a.start_time)
                .then(a.run_id.cmp(&b.run_id))
        });
        runs
    }

    /// The summary (latest value, min, max, count, step range) of every
    /// metric key of a run, in key order.
    pub async fn run_metric_summaries(
        &self,
        run_id: RunId,
    ) -> Result<Vec<(String, KeySummary)>, EngineError> {
        self.catalog.run(run_id)?;
        Ok(self
            .runs_metric_summaries(&[run_id])
            .await?
            .pop()
            .unwrap_or_default())
    }

    /// The metric summaries of many runs, in the order given (runs are not
    /// checked for existence: an unknown run has no keys).
    pub async fn runs_metric_summaries(
        &self,
        run_ids: &[RunId],
    ) -> Result<Vec<Vec<(String, KeySummary)>>, EngineError> {
        let views = self.ingester.shown_summaries(run_ids).await?;
        self.shown_summaries(run_ids, views).await
    }

    /// [`Engine::runs_metric_summaries`] limited to `keys`: what a search
    /// that filters or orders on those metrics needs of every candidate.
    pub async fn runs_metric_summaries_of(
        &self,
        run_ids: &[RunId],
        keys: KeySet,
    ) -> Result<Vec<Vec<(String, KeySummary)>>, EngineError> {
        let views = self
            .ingester
            .shown_summaries_of(run_ids, Some(Arc::clone(&keys)))
            .await?;
        let mut shown = self.shown_summaries(run_ids, views).await?;
        for summaries in &mut shown {
            summaries.retain(|(key, _)| keys.contains(key));
        }
        Ok(shown)
    }

    /// Runs in the given experiments (all experiments when empty) in the
    /// view, in no particular order.
    pub fn runs_in(&self, experiment_ids: &[ExperimentId], view: ViewType) -> Vec<Arc<Run>> {
        self.runs_in_matching(experiment_ids, view, |_| true)
    }

    /// The runs of [`Engine::runs_in`] that `keep` accepts. Only the named
    /// experiments' runs are looked at, and runs are shared, not copied.
    pub fn runs_in_matching(
        &self,
        experiment_ids: &[ExperimentId],
        view: ViewType,
        keep: impl Fn(&Run) -> bool,
    ) -> Vec<Arc<Run>> {
        let catalog = self.catalog.read();
        let wanted = |run: &&Arc<Run>| view.includes(run.lifecycle_stage) && keep(run);
        if experiment_ids.is_empty() {
            return catalog.runs().filter(wanted).cloned().collect();
        }
        let mut distinct = experiment_ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        // Over most of the history, one pass over every run touches memory
        // in order; the per-experiment index would jump about.
        let named: usize = distinct
            .iter()
            .map(|experiment_id| catalog.run_count_of(*experiment_id))
            .sum();
        if named > catalog.run_count() / 2 {
            let distinct: std::collections::HashSet<ExperimentId> = distinct.into_iter().collect();
            return catalog
                .runs()
                .filter(|run| distinct.contains(&run.experiment_id))
                .filter(wanted)
                .cloned()
                .collect();
        }
        distinct
            .into_iter()
            .flat_map(|experiment_id| catalog.runs_of(experiment_id).filter(wanted).cloned())
            .collect()
    }

    /// Changes a run's status, end time or name. A run that reaches a
    /// terminal status without an end time gets the current time; its
    /// buffers are persisted and its files compacted.
    pub async fn update_run(
        &self,
        run_id: RunId,
        mut update: RunUpdate,
    ) -> Result<Run, EngineError> {
        self.ensure_accepting()?;
        let ends = update.status.is_some_and(|status| status.is_terminal());
        if ends && update.end_time.is_none() {
            update.end_time = Some(now_millis());
        }
        let (run, ticket) = self.catalog.update_run(&self.log(), run_id, update)?;
        self.wait_durable(ticket).await?;
        if ends {
            self.ingester.run_ended(run_id);
            self.key_budgets.forget(run_id);
            self.ingester.live().publish_end(run_id, run.status);
        }
        Ok(run)
    }

    /// Soft-deletes or restores a run.
    pub async fn set_run_lifecycle(
        &self,
        run_id: RunId,
        stage: LifecycleStage,
    ) -> Result<(), EngineError> {
        self.ensure_accepting()?;
        let ((), ticket) =
            self.catalog
                .set_run_lifecycle(&self.log(), run_id, stage, now_millis())?;
        self.wait_durable(ticket).await
    }

    /// Logs params (immutable: a different value for a logged key is refused).
    pub async fn log_params(
        &self,
        run_id: RunId,
        params: Vec<(String, String)>,
    ) -> Result<(), EngineError> {
        self.ensure_accepting()?;
        let ((), ticket) = self.catalog.log_params(&self.log(), run_id, params)?;
        self.wait_durable(ticket).await
    }

    /// Sets run tags.
    pub async fn set_run_tags(
        &self,
        run_id: RunId,
        tags: Vec<(String, String)>,
    ) -> Result<(), EngineError> {
        self.apply_rewind_tag(run_id, &tags).await?;
        self.record_run_tags(run_id, tags).await
    }

    /// Rewinds the run when `tags` hold [`continuity::REWIND_TAG`] (the
    /// MLflow client's way to rewind); `log-batch` calls it before it logs
    /// the batch's metrics, so that they come after the rewind.
    pub async fn apply_rewind_tag(
        &self,
        run_id: RunId,
        tags: &[(String, String)],
    ) -> Result<(), EngineError> {
        if let Some(step) = continuity::rewind_step_in(tags) {
            self.rewind_run(run_id, step?).await?;
        }
        Ok(())
    }

    /// Sets run tags as they are (a rewind tag is only recorded: see
    /// [`Self::apply_rewind_tag`]).
    pub async fn record_run_tags(
        &self,
        run_id: RunId,
        tags: Vec<(String, String)>,
    ) -> Result<(), EngineError> {
        self.ensure_accepting()?;
        let ((), ticket) = self.catalog.set_run_tags(&self.log(), run_id, tags)?;
        self.wait_durable(ticket).await
    }

    /// Records datasets a run used.
    pub async fn log_inputs(
        &self,
        run_id: RunId,
        inputs: Vec<DatasetInput>,
    ) -> Result<(), EngineError> {
        self.ensure_accepting()?;
        let ((), ticket) = self
            .catalog
            .log_inputs(&self.log(), run_id, inputs, now_millis())?;
        self.wait_durable(ticket).await
    }

    /// Deletes a run tag.
    pub async fn delete_run_tag(&self, run_id: RunId, key: String) -> Result<(), EngineError> {
        self.ensure_accepting()?;
        let ((), ticket) = self.catalog.delete_run_tag(&self.log(), run_id, key)?;
        self.wait_durable(ticket).await
    }

    // ---- snapshots for queries ----------------------------------------

    /// A copy of the whole catalog (experiments, runs, params, tags) as of
    /// now.
    pub fn catalog_state(&self) -> CatalogState {
        self.catalog.read().clone()
    }

    /// Every metric point of the selected runs (all runs when `None`),
    /// captured so that each acknowledged point appears exactly once: in a
    /// file or in a copy of a buffer (see [`RunPoints`]).
    pub async fn metric_points(&self, runs: RunSelection) -> Result<Vec<RunPoints>, EngineError> {
        let points = self.ingester.points_snapshot(runs.clone()).await?;
        self.gather_points(&runs, points).await
    }

    /// The key summaries (latest value, min, max, count) of the selected
    /// runs (all runs when `None`) that have metrics.
    pub async fn metric_summaries(
        &self,
        runs: RunSelection,
    ) -> Result<Vec<RunSummaries>, EngineError> {
        let snapshot = self.ingester.summaries_snapshot(runs.clone()).await?;
        let snapshot = self.with_forked_runs(&runs, snapshot);
        let run_ids: Vec<RunId> = snapshot.iter().map(|run| run.run_id).collect();
        let experiments: Vec<ExperimentId> = snapshot.iter().map(|run| run.experiment_id).collect();
        let views = snapshot.into_iter().map(|run| run.view).collect();
        let keys = self.shown_summaries(&run_ids, views).await?;
        Ok(run_ids
            .into_iter()
            .zip(experiments)
            .zip(keys)
            .map(|((run_id, experiment_id), keys)| RunSummaries {
                run_id,
                experiment_id,
                keys,
            })
            .collect())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.shut_down.load(Ordering::SeqCst)
            && let Err(error) = self.shutdown()
        {
            tracing::error!(%error, "shutdown on drop failed");
        }
    }
}
