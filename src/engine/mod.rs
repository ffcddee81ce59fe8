//! The engine: the one value that owns the catalog, the WAL, the ingester
//! and the background maintenance, and that the HTTP layer, the CLI and the
//! tests talk to.
//!
//! Writes follow one path: validate, append to the WAL, wait until durable,
//! apply (catalog in memory, or points into the run's buffer), answer. Reads
//! see every acknowledged write.

mod catalog_log;
mod key_budget;
mod maintenance;
mod recovery;
pub mod wal_record;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::oneshot;

use crate::auth::{AccessDenied, AuthError, Principal, TokenStore};
use crate::catalog::CatalogState;
use crate::catalog::{
    Catalog, CatalogError, NewExperiment, NewRun, RunUpdate, ensure_run_active, snapshot,
};
use crate::error_kind::{Classify, ErrorKind};
use crate::ingest::{
    BYTES_PER_POINT, IngestConfig, IngestError, Ingester, LiveHub, RunPoints, RunSelection,
    RunSummaries, SeriesSources,
};
use crate::model::validation::{KeyKind, validate_key};
use crate::model::{
    DatasetInput, Experiment, ExperimentId, KeySummary, LifecycleStage, MetricBatch, MetricSeries,
    Run, RunId, ValidationError, now_millis,
};
use crate::storage::{MetricsLayout, StorageError};
use crate::wal::{Lsn, SyncPolicy, Wal, WalConfig, WalError};
use catalog_log::WalMutationLog;
use wal_record::WalRecordRef;

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
            EngineError::ReadOnly => ErrorKind::InvalidParameter,
            EngineError::Wal(error) => error.kind(),
            EngineError::DataDirInUse(_) | EngineError::Io { .. } | EngineError::Task(_) => {
                ErrorKind::Internal
            }
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

/// Values for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TelemetrySnapshot {
    /// Points applied to buffers since start.
    pub points_ingested: u64,
    /// Bytes of buffered points.
    pub buffer_bytes: u64,
    /// The most `buffer_bytes` has been since start.
    pub buffer_bytes_peak: u64,
    /// The buffer budget.
    pub buffer_budget_bytes: u64,
    /// Bytes of points accepted by the WAL but not yet buffered.
    pub in_flight_bytes: u64,
    /// Bytes of metric files written since start.
    pub bytes_persisted: u64,
    /// Metric files written since start.
    pub files_persisted: u64,
    /// Compactions since start.
    pub compactions: u64,
    /// Failed file writes since start.
    pub persist_failures: u64,
    /// Bytes of WAL segments still needed or not yet removed.
    pub wal_unpersisted_bytes: u64,
    /// WAL segment files on disk.
    pub wal_segments: u64,
    /// WAL syncs since start.
    pub wal_fsyncs: u64,
    /// WAL bytes written since start.
    pub wal_bytes_written: u64,
    /// Experiments in the catalog.
    pub experiments: u64,
    /// Runs in the catalog.
    pub runs: u64,
    /// Damaged metric files moved to quarantine at start.
    pub quarantined_files: u64,
    /// Panics contained in persister and shard threads since start.
    pub thread_panics: u64,
}

/// Subtracts in-flight bytes when a metric write completes or is abandoned.
struct InFlightGuard {
    counter: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::Relaxed);
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
    snapshot_lsn: AtomicU64,
    last_snapshot: Mutex<Instant>,
    accepting: AtomicBool,
    shut_down: AtomicBool,
    maintenance: Mutex<Option<maintenance::MaintenanceHandle>>,
    tokens: TokenStore,
    /// Damaged metric files moved to quarantine at start.
    quarantined_files: u64,
    /// Set when a catalog change could not be made durable, until the
    /// catalog is rebuilt without it (see [`catalog_log`]).
    catalog_in_doubt: Arc<AtomicBool>,
    /// Held by a checkpoint (snapshot and WAL segment removal) and by a
    /// catalog rollback, which reads the snapshot and the WAL.
    checkpoint_lock: Mutex<()>,
    _lock: File,
}

impl Engine {
    /// Opens (or creates) the data directory, recovers its state and starts
    /// the background threads.
    pub fn open(config: EngineConfig) -> Result<Arc<Engine>, EngineError> {
        let started = Instant::now();
        let lock = recovery::lock_data_dir(&config.data_dir)?;
        let data_dir = config.data_dir.clone();
        let artifact_root = config.artifact_root.clone().unwrap_or_else(|| {
            let absolute = std::path::absolute(&data_dir).unwrap_or_else(|_| data_dir.clone());
            format!("file://{}", absolute.join("artifacts").display())
        });
        let layout = MetricsLayout::new(data_dir.join(recovery::METRICS_DIR));
        let files = recovery::load_metric_files(&layout, &data_dir.join(recovery::QUARANTINE_DIR))?;
        let quarantined_files = files.quarantined;
        let catalog_dir = data_dir.join(recovery::CATALOG_DIR);
        let catalog_state = recovery::load_catalog(&catalog_dir, &artifact_root)?;
        let snapshot_lsn = catalog_state.applied_lsn;
        if snapshot_lsn == 0 {
            // A new data directory: fix the Default experiment's creation time.
            snapshot::write(&catalog_dir, &catalog_state)?;
        }
        let catalog = Catalog::new(catalog_state, artifact_root);
        let tokens = TokenStore::open(&data_dir.join(recovery::AUTH_DIR))?;
        let file_count: usize = files.runs.iter().map(|run| run.files.len()).sum();
        let ingester = Arc::new(Ingester::start(config.ingest.clone(), layout, files.runs)?);
        let wal_dir = data_dir.join(recovery::WAL_DIR);
        let replayed = recovery::replay_wal(&wal_dir, &catalog, &ingester, &files.covered)?;
        let last_lsn = replayed
            .last_lsn
            .max(files.max_lsn)
            .max(catalog.read().applied_lsn);
        // Runs that ended before the restart still get compacted.
        let ended: Vec<RunId> = catalog
            .read()
            .runs()
            .filter(|run| run.status.is_terminal())
            .map(|run| run.run_id)
            .collect();
        for run_id in ended {
            ingester.run_ended(run_id);
        }
        let wal = Wal::open_continuing(
            WalConfig {
                dir: wal_dir,
                sync: config.wal_sync,
                segment_bytes: config.wal_segment_bytes,
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
            last_lsn,
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
            snapshot_lsn: AtomicU64::new(snapshot_lsn),
            last_snapshot: Mutex::new(Instant::now()),
            accepting: AtomicBool::new(true),
            shut_down: AtomicBool::new(false),
            maintenance: Mutex::new(None),
            tokens,
            quarantined_files,
            catalog_in_doubt: Arc::default(),
            checkpoint_lock: Mutex::new(()),
            _lock: lock,
        });
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

    fn log(&self) -> WalMutationLog<'_> {
        WalMutationLog {
            wal: &self.wal,
            in_doubt: &self.catalog_in_doubt,
        }
    }

    fn ensure_accepting(&self) -> Result<(), EngineError> {
        if self.config.read_only {
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
    pub fn runs_of_experiment(&self, experiment_id: ExperimentId, view: ViewType) -> Vec<Run> {
        let mut runs: Vec<Run> = self
            .catalog
            .read()
            .runs()
            .filter(|run| run.experiment_id == experiment_id && view.includes(run.lifecycle_stage))
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
        Ok(self.ingester.run_summaries(run_id).await?)
    }

    /// The metric summaries of many runs, in the order given (runs are not
    /// checked for existence: an unknown run has no keys).
    pub async fn runs_metric_summaries(
        &self,
        run_ids: &[RunId],
    ) -> Result<Vec<Vec<(String, KeySummary)>>, EngineError> {
        Ok(self.ingester.runs_summaries(run_ids).await?)
    }

    /// Runs in the given experiments (all experiments when empty) in the
    /// view, in no particular order.
    pub fn runs_in(&self, experiment_ids: &[ExperimentId], view: ViewType) -> Vec<Run> {
        self.catalog
            .read()
            .runs()
            .filter(|run| {
                (experiment_ids.is_empty() || experiment_ids.contains(&run.experiment_id))
                    && view.includes(run.lifecycle_stage)
            })
            .cloned()
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
        let ((), ticket) = self.catalog.log_inputs(&self.log(), run_id, inputs)?;
        self.wait_durable(ticket).await
    }

    /// Deletes a run tag.
    pub async fn delete_run_tag(&self, run_id: RunId, key: String) -> Result<(), EngineError> {
        self.ensure_accepting()?;
        let ((), ticket) = self.catalog.delete_run_tag(&self.log(), run_id, key)?;
        self.wait_durable(ticket).await
    }

    // ---- metrics -----------------------------------------------------

    /// Logs metric points; returns once they are durable and visible to
    /// reads. Refused with `Overloaded` while buffers are over the limit.
    pub async fn log_metrics(
        &self,
        run_id: RunId,
        batch: MetricBatch,
    ) -> Result<usize, EngineError> {
        self.log_metric_batches(vec![(run_id, batch)]).await
    }

    /// Logs metric points of several runs as one durable write (one WAL
    /// record): every run must exist and be active and every batch be
    /// valid, or nothing is written. Returns the number of points once all
    /// are durable and visible to reads.
    pub async fn log_metric_batches(
        &self,
        batches: Vec<(RunId, MetricBatch)>,
    ) -> Result<usize, EngineError> {
        self.ensure_accepting()?;
        let mut experiments = Vec::with_capacity(batches.len());
        {
            let state = self.catalog.read();
            for (run_id, batch) in &batches {
                batch.validate()?;
                let run = state
                    .run(*run_id)
                    .ok_or(CatalogError::RunNotFound(*run_id))?;
                ensure_run_active(run)?;
                experiments.push(run.experiment_id);
            }
        }
        let mut routed: Vec<(RunId, MetricBatch)> = Vec::with_capacity(batches.len());
        let mut experiment_ids = Vec::with_capacity(batches.len());
        for ((run_id, batch), experiment_id) in batches.into_iter().zip(experiments) {
            if !batch.is_empty() {
                routed.push((run_id, batch));
                experiment_ids.push(experiment_id);
            }
        }
        let points: usize = routed.iter().map(|(_, batch)| batch.len()).sum();
        if points == 0 {
            return Ok(0);
        }
        let key_reservations = self.reserve_keys(&routed).await?;
        let bytes = points as u64 * BYTES_PER_POINT;
        let limit = self.config.ingest.buffer_budget_bytes;
        if bytes > limit {
            return Err(EngineError::LargerThanBudget {
                points,
                bytes,
                limit,
            });
        }
        let _guard = self.reserve_buffer_room(bytes).await?;
        // Refused here, before it is acknowledged, if its WAL frame would be
        // over the frame limit (replay would refuse it).
        let body = WalRecordRef::Metrics(&routed).encode()?;
        let mut signals = Vec::with_capacity(routed.len());
        let mut responses = Vec::with_capacity(routed.len());
        for _ in 0..routed.len() {
            let (applied, response) = oneshot::channel();
            signals.push(applied);
            responses.push(response);
        }
        let ingester = Arc::clone(&self.ingester);
        self.wal.append(
            body,
            Box::new(move |lsn, result| match result {
                Ok(()) => {
                    for (((run_id, batch), experiment_id), applied) in
                        routed.into_iter().zip(experiment_ids).zip(signals)
                    {
                        ingester.apply(run_id, experiment_id, lsn, batch, Some(applied));
                    }
                }
                Err(error) => {
                    for applied in signals {
                        let _ = applied.send(Err(IngestError::Wal(error.clone())));
                    }
                }
            }),
        )?;
        let mut accepted = 0;
        for (response, reservation) in responses.into_iter().zip(key_reservations) {
            let applied = response.await.map_err(|_| EngineError::ShuttingDown)??;
            self.key_budgets.settle(reservation, applied.run_keys);
            accepted += applied.points;
        }
        Ok(accepted)
    }

    /// Reserves room for the batches' new metric keys under
    /// `--max-keys-per-run`, or refuses the request before anything is
    /// written.
    async fn reserve_keys(
        &self,
        batches: &[(RunId, MetricBatch)],
    ) -> Result<Vec<key_budget::KeyReservation>, EngineError> {
        let mut reservations = Vec::with_capacity(batches.len());
        for (run_id, batch) in batches {
            let run_id = *run_id;
            let mut loaded = false;
            loop {
                match self.key_budgets.try_reserve(run_id, batch.keys.len()) {
                    key_budget::Quick::Reserved(reservation) => {
                        reservations.push(reservation);
                        break;
                    }
                    key_budget::Quick::Unknown if !loaded => {
                        let known = self.ingester.run_summaries(run_id).await?.len();
                        self.key_budgets.load(run_id, known);
                        loaded = true;
                    }
                    key_budget::Quick::Unknown | key_budget::Quick::Tight => {
                        let summaries = self.ingester.run_summaries(run_id).await?;
                        let existing: std::collections::HashSet<&str> =
                            summaries.iter().map(|(key, _)| key.as_str()).collect();
                        let new_keys = batch
                            .keys
                            .iter()
                            .filter(|key| !existing.contains(key.as_str()))
                            .count();
                        let reservation = self
                            .key_budgets
                            .reserve_exact(run_id, new_keys, existing.len())
                            .map_err(|refused| EngineError::TooManyKeys {
                                run_id,
                                have: refused.have,
                                adding: refused.adding,
                                limit: refused.limit,
                            })?;
                        reservations.push(reservation);
                        break;
                    }
                }
            }
        }
        Ok(reservations)
    }

    /// Reserves `bytes` of the buffer budget for a write on its way to the
    /// buffers (released when the guard drops, by then the points are
    /// buffered and counted there). While the budget is full, waits for
    /// written buffers to give memory back, up to `overload_wait`; a write
    /// that waited in vain is `Overloaded` (one that can never fit was
    /// refused before, as `LargerThanBudget`).
    async fn reserve_buffer_room(&self, bytes: u64) -> Result<InFlightGuard, EngineError> {
        let limit = self.config.ingest.buffer_budget_bytes;
        let stats = self.ingester.stats();
        let deadline = tokio::time::Instant::now() + self.config.overload_wait;
        loop {
            let freed = stats.memory_freed().notified();
            let in_flight = self.in_flight_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
            let guard = InFlightGuard {
                counter: Arc::clone(&self.in_flight_bytes),
                bytes,
            };
            let buffered = stats.buffer_bytes() + in_flight;
            if buffered <= limit {
                return Ok(guard);
            }
            drop(guard);
            if tokio::time::Instant::now() >= deadline {
                return Err(EngineError::Overloaded {
                    buffered: buffered - bytes,
                    limit,
                });
            }
            let _ = tokio::time::timeout_at(deadline, freed).await;
        }
    }

    /// The full series of one key of a run, in step order, buffered points
    /// included.
    pub async fn metric_series(
        &self,
        run_id: RunId,
        key: &str,
    ) -> Result<MetricSeries, EngineError> {
        validate_key(KeyKind::Metric, key)?;
        self.catalog.run(run_id)?;
        let sources = self.ingester.series_sources(run_id, key).await?;
        let key = key.to_string();
        tokio::task::spawn_blocking(move || sources.collect(&key))
            .await
            .map_err(|error| EngineError::Task(error.to_string()))?
            .map_err(EngineError::from)
    }

    /// Where the points of one key of a run are (files, frozen chunks and
    /// a copy of the key's points in the active buffer), captured
    /// atomically, for readers that stream them.
    pub async fn series_sources(
        &self,
        run_id: RunId,
        key: &str,
    ) -> Result<SeriesSources, EngineError> {
        validate_key(KeyKind::Metric, key)?;
        self.catalog.run(run_id)?;
        Ok(self.ingester.series_sources(run_id, key).await?)
    }

    /// Live notifications of acknowledged points and run ends, per run.
    pub fn live(&self) -> &Arc<LiveHub> {
        self.ingester.live()
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
        Ok(self.ingester.points_snapshot(runs).await?)
    }

    /// The key summaries (latest value, min, max, count) of the selected
    /// runs (all runs when `None`) that have metrics.
    pub async fn metric_summaries(
        &self,
        runs: RunSelection,
    ) -> Result<Vec<RunSummaries>, EngineError> {
        Ok(self.ingester.summaries_snapshot(runs).await?)
    }

    // ---- operations --------------------------------------------------

    /// What keeps the server from taking writes durably now (a full disk,
    /// an I/O error), one line each; empty when healthy. Reads are served
    /// either way.
    pub fn health_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(reason) = self.wal.degraded() {
            problems.push(format!("writes are refused (507): {reason}"));
        }
        let panics = self.ingester.stats().thread_panics();
        if panics > 0 {
            problems.push(format!(
                "{panics} panic(s) in persister or shard threads were contained since start (see \
                 the log; the work is retried)"
            ));
        }
        if let Some(reason) = self.ingester.stats().persist_failing() {
            problems.push(format!(
                "buffers cannot be written to metric files (retried; the WAL keeps them): {reason}"
            ));
        }
        problems
    }

    /// Values for `/metrics`.
    pub fn telemetry(&self) -> TelemetrySnapshot {
        let ingest = self.ingester.stats();
        let wal = self.wal.stats();
        let state = self.catalog.read();
        TelemetrySnapshot {
            points_ingested: ingest.points_ingested(),
            buffer_bytes: ingest.buffer_bytes(),
            buffer_bytes_peak: ingest.buffer_bytes_peak(),
            buffer_budget_bytes: self.config.ingest.buffer_budget_bytes,
            in_flight_bytes: self.in_flight_bytes.load(Ordering::Relaxed),
            bytes_persisted: ingest.bytes_persisted(),
            files_persisted: ingest.files_persisted(),
            compactions: ingest.compactions(),
            persist_failures: ingest.persist_failures(),
            wal_unpersisted_bytes: wal.live_bytes,
            wal_segments: wal.segments as u64,
            wal_fsyncs: wal.fsyncs,
            wal_bytes_written: wal.bytes_written,
            experiments: state.experiments().count() as u64,
            runs: state.run_count() as u64,
            quarantined_files: self.quarantined_files,
            thread_panics: ingest.thread_panics(),
        }
    }

    /// Removes WAL segments whose records are all persisted elsewhere,
    /// writing a catalog snapshot first when one is due (or `force`d).
    /// Blocking.
    pub fn checkpoint(&self, force_snapshot: bool) -> Result<(), EngineError> {
        let _checkpoint = self
            .checkpoint_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Read first: every record up to it has been handed to a shard or
        // applied to the catalog by the time the bounds below are taken.
        let completed = self.wal.completed_lsn();
        let oldest_buffered = self.ingester.oldest_unpersisted_lsn()?;
        let oldest_catalog = self.snapshot_catalog_if_due(force_snapshot)?;
        let min_needed = [Some(completed + 1), oldest_buffered, oldest_catalog]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(completed + 1);
        let removed = self.wal.remove_segments_before(min_needed)?;
        if removed > 0 {
            tracing::debug!(removed, min_needed, "removed persisted WAL segments");
        }
        Ok(())
    }

    /// Writes a catalog snapshot when the catalog changed since the last one
    /// and the snapshot interval passed (or `force`). Returns the oldest LSN
    /// of a catalog record the newest snapshot lacks, if any.
    fn snapshot_catalog_if_due(&self, force: bool) -> Result<Option<Lsn>, EngineError> {
        let mut last = self
            .last_snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = self.catalog.read();
        let current = self.snapshot_lsn.load(Ordering::SeqCst);
        if state.applied_lsn == current {
            return Ok(None);
        }
        // Only a durable state is snapshotted: not one holding changes
        // still on their way to the WAL, nor one that failed and waits to
        // be rolled back.
        if state.applied_lsn > self.wal.completed_lsn()
            || self.catalog_in_doubt.load(Ordering::SeqCst)
        {
            return Ok(Some(current + 1));
        }
        if !force && last.elapsed() < self.config.snapshot_interval {
            return Ok(Some(current + 1));
        }
        // The lock is held only to copy the state (as every SQL query
        // does): encoding, writing and syncing the file under it would
        // stall every change to the catalog meanwhile.
        let copy = state.clone();
        drop(state);
        let encoded = snapshot::encode(&copy)?;
        drop(copy);
        let lsn = encoded.lsn();
        let bytes = encoded.write(&self.config.data_dir.join(recovery::CATALOG_DIR))?;
        self.snapshot_lsn.store(lsn, Ordering::SeqCst);
        *last = Instant::now();
        tracing::debug!(lsn, bytes, "wrote catalog snapshot");
        Ok(None)
    }

    /// Persists every buffered point to Parquet files and waits for it.
    /// Blocking.
    pub fn flush_buffers(&self) -> Result<(), EngineError> {
        // Once rotation returns, every queued record has been handed on.
        self.wal.rotate()?;
        Ok(self.ingester.flush_all()?)
    }

    /// Stops taking writes, persists every buffer, snapshots the catalog,
    /// removes the WAL segments that are no longer needed and stops the
    /// background threads. Blocking; safe to call more than once.
    pub fn shutdown(&self) -> Result<(), EngineError> {
        self.accepting.store(false, Ordering::SeqCst);
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let started = Instant::now();
        if let Some(handle) = self
            .maintenance
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            handle.stop();
        }
        let outcome = if self.config.read_only {
            Ok(())
        } else {
            self.flush_buffers().and_then(|()| self.checkpoint(true))
        };
        self.wal.shutdown();
        self.ingester.shutdown();
        match &outcome {
            Ok(()) => tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "engine stopped; buffers persisted"
            ),
            Err(error) => {
                tracing::error!(%error, "engine stopped without persisting everything; the WAL keeps it")
            }
        }
        outcome
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
