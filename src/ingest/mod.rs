//! The metric ingester: shard threads that own per-run Arrow buffers, and a
//! persister pool that turns frozen buffers into Parquet files and compacts
//! finished runs.
//!
//! Runs are sharded by run id; each shard thread owns its runs' buffers and
//! file lists without locks. Metric batches arrive (in WAL order) on a
//! bounded data channel, so a slow shard pushes back on the WAL writer and
//! from there on clients; reads and persister replies use an unbounded
//! control channel so they never wait behind a full data channel.

pub(crate) mod buffer;
pub(crate) mod dormant;
pub mod forks;
pub mod live;
mod persister;
pub mod rewinds;
mod run_state;
mod shard;
mod views;

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, bounded, unbounded};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::error_kind::{Classify, ErrorKind};
use crate::model::{ExperimentId, KeySummary, MetricBatch, RunId};
use crate::storage::spill::{SpillDir, SpillStats};
use crate::storage::{MetricsLayout, PersistedFile, StorageError};
use crate::wal::{Lsn, WalError};

pub use buffer::{BYTES_PER_POINT, BufferedPoints, FrozenChunk, Segment, SegmentBlock};
pub(crate) use dormant::{DormantRun, KeyNames, RunLoader, StartingRuns, WakeError};
pub use live::{LiveEvent, LiveHub, LiveSubscription};
pub use views::{BufferedKey, RunPoints, RunSummaries, RunSummaryView, SeriesSources, SummaryView};

/// A set of metric keys that summaries are limited to.
pub type KeySet = Arc<std::collections::BTreeSet<String>>;

/// Runs per summary request to one shard (see [`Ingester::shown_summaries`]).
const SUMMARY_CHUNK_RUNS: usize = 4096;

/// Errors of the ingester.
#[derive(Debug, Error)]
pub enum IngestError {
    /// The ingester is stopping or stopped.
    #[error("the ingester is shut down")]
    ShutDown,
    /// The WAL could not make the batch durable.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// Reading or writing a metric file failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A thread could not be started.
    #[error("cannot start ingester thread: {0}")]
    Spawn(String),
    /// Buffers could not all be persisted.
    #[error("persisting buffers failed: {0}")]
    Flush(String),
}

impl Classify for IngestError {
    fn kind(&self) -> ErrorKind {
        match self {
            IngestError::ShutDown => ErrorKind::Overloaded,
            IngestError::Wal(error) => error.kind(),
            IngestError::Storage(_) | IngestError::Spawn(_) | IngestError::Flush(_) => {
                ErrorKind::Internal
            }
        }
    }
}

/// Settings of the ingester.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Number of shard threads.
    pub shards: usize,
    /// Number of persister threads.
    pub persist_threads: usize,
    /// A run's active buffer is persisted once it holds this many points.
    pub flush_rows: usize,
    /// ... or once its oldest point is this old.
    pub flush_age: Duration,
    /// Memory all buffers (active and frozen, as allocated) may hold.
    /// From three quarters of it the largest buffers are persisted first;
    /// at it, metric writes wait for room.
    pub buffer_budget_bytes: u64,
    /// A running run with this many files is compacted.
    pub compact_after_files: usize,
    /// Capacity, in messages, of each shard's data channel.
    pub channel_capacity: usize,
    /// How often shards check buffer ages and retry failed writes.
    pub tick: Duration,
    /// A settled run neither read point by point nor written for this
    /// long goes dormant: only its key summaries stay in memory, its files
    /// are loaded again when needed. `None`: runs stay loaded.
    pub idle_run_after: Option<Duration>,
    /// Where the small buffers of many runs are spilled together under
    /// memory pressure ([`crate::storage::spill`]); emptied at start.
    /// `None`: each buffer is written to its run's own file instead.
    pub spill_dir: Option<std::path::PathBuf>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            shards: 2,
            persist_threads: 4,
            flush_rows: 1_000_000,
            flush_age: Duration::from_secs(300),
            buffer_budget_bytes: 512 << 20,
            compact_after_files: 16,
            channel_capacity: 256,
            tick: Duration::from_millis(200),
            idle_run_after: None,
            spill_dir: None,
        }
    }
}

/// Counters of the ingester, for `/metrics`.
#[derive(Debug, Default)]
pub struct IngestStats {
    points_ingested: AtomicU64,
    buffer_bytes: AtomicU64,
    buffer_bytes_peak: AtomicU64,
    bytes_persisted: AtomicU64,
    files_persisted: AtomicU64,
    compactions: AtomicU64,
    manifests_written: AtomicU64,
    runs_dormant: AtomicI64,
    run_wakes: AtomicU64,
    run_wake_failures: AtomicU64,
    persist_failures: AtomicU64,
    /// The error of the last file write, while none has succeeded since.
    persist_failing: Mutex<Option<String>>,
    /// Panics contained in persister and shard threads.
    thread_panics: AtomicU64,
    memory_freed: tokio::sync::Notify,
}

impl IngestStats {
    /// Points applied to buffers since start (replayed ones included).
    pub fn points_ingested(&self) -> u64 {
        self.points_ingested.load(Ordering::Relaxed)
    }
    /// Bytes of points in buffers (active and frozen).
    pub fn buffer_bytes(&self) -> u64 {
        self.buffer_bytes.load(Ordering::Relaxed)
    }
    /// The most bytes buffers have held since start.
    pub fn buffer_bytes_peak(&self) -> u64 {
        self.buffer_bytes_peak.load(Ordering::Relaxed)
    }
    /// Adds `bytes` of buffer growth, keeping the peak.
    fn add_buffer_bytes(&self, bytes: u64) {
        let held = self.buffer_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.buffer_bytes_peak.fetch_max(held, Ordering::Relaxed);
    }
    /// Bytes of metric files written since start (compaction included).
    pub fn bytes_persisted(&self) -> u64 {
        self.bytes_persisted.load(Ordering::Relaxed)
    }
    /// Metric files written since start (compaction included).
    pub fn files_persisted(&self) -> u64 {
        self.files_persisted.load(Ordering::Relaxed)
    }
    /// Compactions completed since start.
    pub fn compactions(&self) -> u64 {
        self.compactions.load(Ordering::Relaxed)
    }
    /// Run manifests written since start.
    pub fn manifests_written(&self) -> u64 {
        self.manifests_written.load(Ordering::Relaxed)
    }
    fn count_manifest(&self) {
        self.manifests_written.fetch_add(1, Ordering::Relaxed);
    }
    /// Runs held only by their summaries now.
    pub fn runs_dormant(&self) -> u64 {
        self.runs_dormant.load(Ordering::Relaxed).max(0) as u64
    }
    fn add_dormant(&self, runs: i64) {
        self.runs_dormant.fetch_add(runs, Ordering::Relaxed);
    }
    /// Dormant runs loaded again since start.
    pub fn run_wakes(&self) -> u64 {
        self.run_wakes.load(Ordering::Relaxed)
    }
    /// Dormant runs whose files could not be loaded again, since start.
    pub fn run_wake_failures(&self) -> u64 {
        self.run_wake_failures.load(Ordering::Relaxed)
    }
    fn count_wake(&self, loaded: bool) {
        let counter = if loaded {
            &self.run_wakes
        } else {
            &self.run_wake_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    /// Failed file writes since start (each is retried).
    pub fn persist_failures(&self) -> u64 {
        self.persist_failures.load(Ordering::Relaxed)
    }
    /// Panics contained in persister and shard threads since start.
    pub fn thread_panics(&self) -> u64 {
        self.thread_panics.load(Ordering::Relaxed)
    }
    /// Counts a contained panic.
    pub(crate) fn count_panic(&self) {
        self.thread_panics.fetch_add(1, Ordering::Relaxed);
    }
    /// Why file writes fail, while the last one failed (it is retried).
    pub fn persist_failing(&self) -> Option<String> {
        self.persist_failing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
    /// Records the outcome of a file write.
    fn set_persist_failing(&self, reason: Option<String>) {
        let mut failing = self
            .persist_failing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if failing.is_some() || reason.is_some() {
            *failing = reason;
        }
    }
    /// Notified (`notify_waiters`) each time written buffers give their
    /// memory back, for writers waiting for room under the budget.
    pub fn memory_freed(&self) -> &tokio::sync::Notify {
        &self.memory_freed
    }
}

/// What a shard reports once it applied a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Points applied.
    pub points: usize,
    /// Distinct metric keys the run has now.
    pub run_keys: usize,
}

/// Tells a writer its points are applied (or why not).
pub type AppliedSignal = oneshot::Sender<Result<Applied, IngestError>>;

/// A run's persisted state found at start.
pub struct LoadedRun {
    /// The run.
    pub run_id: RunId,
    /// Its experiment.
    pub experiment_id: ExperimentId,
    /// Its files, in sequence order.
    pub files: Vec<Arc<PersistedFile>>,
    /// Key summaries merged from the files' footers.
    pub summaries: Vec<(String, KeySummary)>,
    /// The run's rewinds known at start.
    pub rewinds: rewinds::RewindMarks,
    /// Key summaries of the files written after the newest rewind.
    pub since_rewind: Vec<(String, KeySummary)>,
    /// The LSNs of the forks made from the run.
    pub fork_points: Vec<Lsn>,
    /// Whether the run's manifest describes exactly these files (it was
    /// loaded from it), so none need be written.
    pub manifest_current: bool,
}

/// Which runs a snapshot covers: every run, or only these.
pub type RunSelection = Option<Arc<HashSet<RunId>>>;

/// Messages in WAL order, on the bounded data channel.
pub(crate) enum DataMessage {
    Apply {
        run_id: RunId,
        experiment_id: ExperimentId,
        lsn: Lsn,
        batch: MetricBatch,
        applied: Option<AppliedSignal>,
    },
    /// A rewind, in WAL order with the points around it.
    Rewind {
        run_id: RunId,
        experiment_id: ExperimentId,
        lsn: Lsn,
        step: i64,
    },
    /// A run was forked from this one, in WAL order with the points
    /// around it.
    Fork {
        run_id: RunId,
        lsn: Lsn,
    },
    /// A run removed for good, in WAL order.
    Purge {
        run_id: RunId,
    },
    /// The WAL replay is over: compaction may start.
    Recovered,
    /// A read replica's new view of a run's files: replaces what the
    /// shard held of the run.
    ReplaceRun(Box<LoadedRun>),
    /// A read replica's run the writer purged: forgotten (its files are
    /// not deleted; they are the writer's).
    DropRun {
        run_id: RunId,
    },
    Checkpoint(Sender<Option<Lsn>>),
    FlushAll(Sender<Result<(), String>>),
}

/// Reads, notices and persister replies, on the unbounded control channel.
/// A shard applies the data messages queued when a control message arrives
/// before handling it, so a control message sent after a data message sees
/// its effect.
pub(crate) enum ControlMessage {
    ReadSeries {
        run_id: RunId,
        key: String,
        reply: oneshot::Sender<SeriesSources>,
    },
    RunSummaries {
        run_id: RunId,
        reply: oneshot::Sender<Vec<(String, KeySummary)>>,
    },
    /// A key's sources a fork of the run inherits.
    ReadInherited {
        run_id: RunId,
        key: String,
        before: Lsn,
        bound: i64,
        reply: oneshot::Sender<SeriesSources>,
    },
    /// Every point a fork of the run inherits, as the fork's.
    InheritedPoints {
        parent: RunId,
        child: RunId,
        before: Lsn,
        bound: i64,
        reply: oneshot::Sender<Option<RunPoints>>,
    },
    /// The views of many runs of one shard, in the order asked.
    ShownSummaries {
        run_ids: Vec<RunId>,
        keys: Option<KeySet>,
        reply: oneshot::Sender<Vec<SummaryView>>,
    },
    SnapshotPoints {
        runs: RunSelection,
        reply: oneshot::Sender<Vec<RunPoints>>,
    },
    SnapshotSummaries {
        runs: RunSelection,
        reply: oneshot::Sender<Vec<RunSummaryView>>,
    },
    RunEnded(RunId),
    /// A file write of a run's chunks ended.
    Persisted {
        run_id: RunId,
        job_id: u64,
        outcome: Result<Arc<PersistedFile>, StorageError>,
    },
    /// A spill of chunks ended (on success each chunk now reads from
    /// its spill file).
    Spilled {
        job_id: u64,
        outcome: Result<(), StorageError>,
    },
    Compacted {
        run_id: RunId,
        replaced: Vec<u64>,
        outcome: Result<Arc<PersistedFile>, StorageError>,
    },
    Shutdown,
}

struct ShardHandle {
    data: Sender<DataMessage>,
    control: Sender<ControlMessage>,
}

/// The ingester handle.
pub struct Ingester {
    shards: Vec<ShardHandle>,
    persist_jobs: Mutex<Option<Sender<persister::PersistJob>>>,
    /// Counters of the spill files (`None`: buffers are not spilled).
    spill_stats: Option<Arc<SpillStats>>,
    stats: Arc<IngestStats>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    live: Arc<LiveHub>,
}

impl Ingester {
    /// Starts shard and persister threads with the runs found on disk.
    pub fn start(
        config: IngestConfig,
        layout: MetricsLayout,
        loaded: Vec<LoadedRun>,
    ) -> Result<Ingester, IngestError> {
        let runs = StartingRuns {
            loaded,
            ..StartingRuns::default()
        };
        Ingester::start_with(config, layout, runs, false)
    }

    /// Starts the ingester for a replay of the WAL: no file is compacted
    /// until [`Self::finish_recovery`] (a rewind still to be replayed must
    /// not find its files merged across it).
    pub fn start_recovering(
        config: IngestConfig,
        layout: MetricsLayout,
        loaded: Vec<LoadedRun>,
    ) -> Result<Ingester, IngestError> {
        let runs = StartingRuns {
            loaded,
            ..StartingRuns::default()
        };
        Ingester::start_with(config, layout, runs, true)
    }

    /// Starts the ingester for a replay of the WAL like
    /// [`Self::start_recovering`], with dormant runs among `runs` and the
    /// loader that brings them back.
    pub(crate) fn start_recovering_with(
        config: IngestConfig,
        layout: MetricsLayout,
        runs: StartingRuns,
    ) -> Result<Ingester, IngestError> {
        Ingester::start_with(config, layout, runs, true)
    }

    /// Ends the replay begun with [`Self::start_recovering`]: compaction
    /// starts once every record handed over before is applied.
    pub fn finish_recovery(&self) {
        for shard in &self.shards {
            let _ = shard.data.send(DataMessage::Recovered);
        }
    }

    fn start_with(
        config: IngestConfig,
        layout: MetricsLayout,
        runs: StartingRuns,
        recovering: bool,
    ) -> Result<Ingester, IngestError> {
        let shard_count = config.shards.max(1);
        let stats = Arc::new(IngestStats::default());
        let live = Arc::new(LiveHub::default());
        let (job_sender, job_receiver) = unbounded();
        let mut threads = Vec::new();
        for index in 0..config.persist_threads.max(1) {
            let jobs = job_receiver.clone();
            let layout = layout.clone();
            let persister_stats = Arc::clone(&stats);
            threads.push(spawn(format!("stepstore-persist-{index}"), move || {
                persister::run(jobs, layout, persister_stats)
            })?);
        }
        // The removers end once every shard (each holding a sender) has.
        // One per shard: removals run as parallel as they did on the
        // shards' threads.
        let (removal_sender, removal_receiver) = unbounded();
        for index in 0..shard_count {
            let removals = removal_receiver.clone();
            threads.push(spawn(format!("stepstore-remove-{index}"), move || {
                persister::remove_runs(removals)
            })?);
        }
        drop(removal_receiver);
        let StartingRuns {
            loaded,
            dormant,
            loader,
            log,
        } = runs;
        let mut per_shard: Vec<Vec<LoadedRun>> = (0..shard_count).map(|_| Vec::new()).collect();
        for run in loaded {
            per_shard[run.run_id.shard(shard_count)].push(run);
        }
        let mut dormant_per_shard: Vec<Vec<_>> = (0..shard_count).map(|_| Vec::new()).collect();
        for (run_id, run) in dormant {
            dormant_per_shard[run_id.shard(shard_count)].push((run_id, run));
        }
        let spill = match &config.spill_dir {
            Some(dir) => {
                Some(SpillDir::open(dir, layout.io().clone()).map_err(IngestError::Storage)?)
            }
            None => None,
        };
        let mut shards = Vec::with_capacity(shard_count);
        for (index, (runs, dormant)) in per_shard.into_iter().zip(dormant_per_shard).enumerate() {
            let (data_sender, data_receiver) = bounded(config.channel_capacity.max(1));
            let (control_sender, control_receiver) = unbounded();
            let shard = shard::Shard::new(
                index,
                shard_count,
                config.clone(),
                Arc::clone(&stats),
                job_sender.clone(),
                control_sender.clone(),
                runs,
            )
            .with_live(Arc::clone(&live))
            .with_removals(removal_sender.clone())
            .with_dormant(dormant, loader.clone(), log.clone())
            .with_spill(spill.clone())
            .recovering(recovering);
            threads.push(spawn(format!("stepstore-shard-{index}"), move || {
                shard.run(data_receiver, control_receiver)
            })?);
            shards.push(ShardHandle {
                data: data_sender,
                control: control_sender,
            });
        }
        Ok(Ingester {
            shards,
            persist_jobs: Mutex::new(Some(job_sender)),
            spill_stats: spill.map(|spill| Arc::clone(spill.stats())),
            stats,
            threads: Mutex::new(threads),
            live,
        })
    }

    fn shard_of(&self, run_id: RunId) -> &ShardHandle {
        &self.shards[run_id.shard(self.shards.len())]
    }

    /// Hands the points of WAL record `lsn` to the run's shard. Blocks while
    /// the shard's data channel is full. `applied` is told when the points
    /// are in the buffer (visible to reads).
    pub fn apply(
        &self,
        run_id: RunId,
        experiment_id: ExperimentId,
        lsn: Lsn,
        batch: MetricBatch,
        applied: Option<AppliedSignal>,
    ) {
        let message = DataMessage::Apply {
            run_id,
            experiment_id,
            lsn,
            batch,
            applied,
        };
        if let Err(crossbeam_channel::SendError(DataMessage::Apply {
            applied: Some(applied),
            ..
        })) = self.shard_of(run_id).data.send(message)
        {
            let _ = applied.send(Err(IngestError::ShutDown));
        }
    }

    /// Rewinds a run at WAL record `lsn` (sent in WAL order, like
    /// [`Self::apply`]): its shard freezes the run's buffer, so that the
    /// points before the rewind and those after it never share a source.
    pub fn rewind(&self, run_id: RunId, experiment_id: ExperimentId, lsn: Lsn, step: i64) {
        let _ = self.shard_of(run_id).data.send(DataMessage::Rewind {
            run_id,
            experiment_id,
            lsn,
            step,
        });
    }

    /// Forgets a run removed for good (sent in WAL order, like
    /// [`Self::apply`]): its buffers are dropped and its files deleted once
    /// no reader holds them.
    pub fn purge(&self, run_id: RunId) {
        let _ = self
            .shard_of(run_id)
            .data
            .send(DataMessage::Purge { run_id });
    }

    /// Replaces what the ingester holds of a run with `run` (a read
    /// replica's refresh; the run has no buffers there).
    pub fn replace_run(&self, run: LoadedRun) {
        let _ = self
            .shard_of(run.run_id)
            .data
            .send(DataMessage::ReplaceRun(Box::new(run)));
    }

    /// Forgets a run without touching its files (a read replica's run the
    /// writer purged).
    pub fn drop_run(&self, run_id: RunId) {
        let _ = self
            .shard_of(run_id)
            .data
            .send(DataMessage::DropRun { run_id });
    }

    /// Where the points of `key` of a run are.
    pub async fn series_sources(
        &self,
        run_id: RunId,
        key: &str,
    ) -> Result<SeriesSources, IngestError> {
        let (reply, response) = oneshot::channel();
        self.shard_of(run_id)
            .control
            .send(ControlMessage::ReadSeries {
                run_id,
                key: key.to_string(),
                reply,
            })
            .map_err(|_| IngestError::ShutDown)?;
        response.await.map_err(|_| IngestError::ShutDown)
    }

    /// The summary of every key of a run, in key order.
    pub async fn run_summaries(
        &self,
        run_id: RunId,
    ) -> Result<Vec<(String, KeySummary)>, IngestError> {
        let response = self.request_run_summaries(run_id)?;
        response.await.map_err(|_| IngestError::ShutDown)
    }

    /// What reads show of the summaries of many runs, in the order given.
    /// Every request is sent before any answer is awaited, so the shards
    /// work in parallel.
    pub async fn shown_summaries(
        &self,
        run_ids: &[RunId],
    ) -> Result<Vec<SummaryView>, IngestError> {
        self.shown_summaries_of(run_ids, None).await
    }

    /// [`Ingester::shown_summaries`] limited to `keys` (every key when
    /// `None`): a search that filters on one metric of a million runs
    /// copies one summary per run, not all of them.
    pub async fn shown_summaries_of(
        &self,
        run_ids: &[RunId],
        keys: Option<KeySet>,
    ) -> Result<Vec<SummaryView>, IngestError> {
        // One request per shard and chunk of runs, not per run: a search
        // over a million runs sends a few hundred messages. Chunks keep a
        // shard's turn short, so writes between them are not held up.
        let mut per_shard: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for (index, run_id) in run_ids.iter().enumerate() {
            per_shard[run_id.shard(self.shards.len())].push(index);
        }
        let mut responses = Vec::new();
        for (shard, indexes) in self.shards.iter().zip(&per_shard) {
            for chunk in indexes.chunks(SUMMARY_CHUNK_RUNS) {
                let (reply, response) = oneshot::channel();
                shard
                    .control
                    .send(ControlMessage::ShownSummaries {
                        run_ids: chunk.iter().map(|&index| run_ids[index]).collect(),
                        keys: keys.clone(),
                        reply,
                    })
                    .map_err(|_| IngestError::ShutDown)?;
                responses.push((chunk, response));
            }
        }
        let mut views: Vec<Option<SummaryView>> = (0..run_ids.len()).map(|_| None).collect();
        for (chunk, response) in responses {
            let answered = response.await.map_err(|_| IngestError::ShutDown)?;
            for (&index, view) in chunk.iter().zip(answered) {
                views[index] = Some(view);
            }
        }
        let views = views
            .into_iter()
            .map(|view| view.unwrap_or(SummaryView::Complete(Vec::new())))
            .collect();
        Ok(views)
    }

    fn request_run_summaries(
        &self,
        run_id: RunId,
    ) -> Result<oneshot::Receiver<Vec<(String, KeySummary)>>, IngestError> {
        let (reply, response) = oneshot::channel();
        self.shard_of(run_id)
            .control
            .send(ControlMessage::RunSummaries { run_id, reply })
            .map_err(|_| IngestError::ShutDown)?;
        Ok(response)
    }

    /// The shards that own the selected runs.
    fn shards_for(&self, runs: &RunSelection) -> Vec<&ShardHandle> {
        match runs {
            None => self.shards.iter().collect(),
            Some(runs) => {
                let mut wanted = vec![false; self.shards.len()];
                for run_id in runs.iter() {
                    wanted[run_id.shard(self.shards.len())] = true;
                }
                self.shards
                    .iter()
                    .zip(wanted)
                    .filter_map(|(shard, wanted)| wanted.then_some(shard))
                    .collect()
            }
        }
    }

    /// Every point of the selected runs, each exactly once (see
    /// [`RunPoints`]). Points acknowledged before the call are included.
    pub async fn points_snapshot(&self, runs: RunSelection) -> Result<Vec<RunPoints>, IngestError> {
        self.gather(&runs, |runs, reply| ControlMessage::SnapshotPoints {
            runs,
            reply,
        })
        .await
    }

    /// What reads show of the key summaries of the selected runs that
    /// have metrics.
    pub async fn summaries_snapshot(
        &self,
        runs: RunSelection,
    ) -> Result<Vec<RunSummaryView>, IngestError> {
        self.gather(&runs, |runs, reply| ControlMessage::SnapshotSummaries {
            runs,
            reply,
        })
        .await
    }

    /// Asks every shard holding some of `runs` (all requests sent before
    /// any answer is awaited) and concatenates the answers.
    async fn gather<T>(
        &self,
        runs: &RunSelection,
        message: impl Fn(RunSelection, oneshot::Sender<Vec<T>>) -> ControlMessage,
    ) -> Result<Vec<T>, IngestError> {
        let mut responses = Vec::new();
        for shard in self.shards_for(runs) {
            let (reply, response) = oneshot::channel();
            shard
                .control
                .send(message(runs.clone(), reply))
                .map_err(|_| IngestError::ShutDown)?;
            responses.push(response);
        }
        let mut all = Vec::new();
        for response in responses {
            all.extend(response.await.map_err(|_| IngestError::ShutDown)?);
        }
        Ok(all)
    }

    /// Tells the run's shard it ended: its buffer is persisted and its files
    /// compacted into one.
    pub fn run_ended(&self, run_id: RunId) {
        let _ = self
            .shard_of(run_id)
            .control
            .send(ControlMessage::RunEnded(run_id));
    }

    /// The oldest LSN some buffer still needs, counting every record handed
    /// to [`Self::apply`] before this call; `None` when nothing is buffered.
    /// Blocking.
    pub fn oldest_unpersisted_lsn(&self) -> Result<Option<Lsn>, IngestError> {
        let mut replies = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let (reply, response) = bounded(1);
            shard
                .data
                .send(DataMessage::Checkpoint(reply))
                .map_err(|_| IngestError::ShutDown)?;
            replies.push(response);
        }
        let mut oldest: Option<Lsn> = None;
        for response in replies {
            let shard_oldest = response.recv().map_err(|_| IngestError::ShutDown)?;
            oldest = match (oldest, shard_oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(oldest)
    }

    /// Persists every buffer and waits until all are written. Blocking.
    pub fn flush_all(&self) -> Result<(), IngestError> {
        let mut replies = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let (reply, response) = bounded(1);
            shard
                .data
                .send(DataMessage::FlushAll(reply))
                .map_err(|_| IngestError::ShutDown)?;
            replies.push(response);
        }
        for response in replies {
            response
                .recv()
                .map_err(|_| IngestError::ShutDown)?
                .map_err(IngestError::Flush)?;
        }
        Ok(())
    }

    /// Counters of the spill files; `None` when buffers are not spilled.
    pub fn spill_stats(&self) -> Option<&SpillStats> {
        self.spill_stats.as_deref()
    }

    /// Counters.
    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }

    /// Live notifications of applied points, per run.
    pub fn live(&self) -> &Arc<LiveHub> {
        &self.live
    }

    /// Stops every thread (buffers are not persisted: call
    /// [`Self::flush_all`] first). Blocking.
    pub fn shutdown(&self) {
        for shard in &self.shards {
            let _ = shard.control.send(ControlMessage::Shutdown);
        }
        self.persist_jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let threads = std::mem::take(
            &mut *self
                .threads
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("an ingester thread panicked");
            }
        }
    }
}

impl Drop for Ingester {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn<F: FnOnce() + Send + 'static>(
    name: String,
    body: F,
) -> Result<JoinHandle<()>, IngestError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(body)
        .map_err(|error| IngestError::Spawn(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MetricBatchBuilder;
    use crate::model::MetricSeries;
    use std::time::Instant;

    fn batch(key: &str, steps: std::ops::Range<i64>) -> MetricBatch {
        let mut builder = MetricBatchBuilder::new();
        for step in steps {
            builder.push(key, step, step * 10, step as f64);
        }
        builder.finish()
    }

    fn start(dir: &std::path::Path, config: IngestConfig) -> Ingester {
        Ingester::start(config, MetricsLayout::new(dir.join("metrics")), Vec::new()).unwrap()
    }

    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    async fn read(ingester: &Ingester, run_id: RunId, key: &str) -> MetricSeries {
        ingester
            .series_sources(run_id, key)
            .await
            .unwrap()
            .collect(key)
            .unwrap()
    }

    #[tokio::test]
    async fn old_buffers_are_persisted_and_reads_stay_complete() {
        let dir = tempfile::tempdir().unwrap();
        let config = IngestConfig {
            flush_age: Duration::from_millis(100),
            tick: Duration::from_millis(10),
            ..IngestConfig::default()
        };
        let ingester = start(dir.path(), config);
        let run_id = RunId::new_random();
        ingester.apply(run_id, ExperimentId::DEFAULT, 1, batch("loss", 0..50), None);
        assert_eq!(read(&ingester, run_id, "loss").await.len(), 50);
        wait_until("the age flush", || ingester.stats().files_persisted() == 1);
        ingester.apply(
            run_id,
            ExperimentId::DEFAULT,
            2,
            batch("loss", 50..80),
            None,
        );
        let series = read(&ingester, run_id, "loss").await;
        assert_eq!(
            series.steps,
            (0..80).collect::<Vec<_>>(),
            "file and buffer, nothing missing or doubled"
        );
        assert_eq!(ingester.oldest_unpersisted_lsn().unwrap(), Some(2));
        ingester.flush_all().unwrap();
        assert_eq!(ingester.oldest_unpersisted_lsn().unwrap(), None);
        assert_eq!(ingester.stats().buffer_bytes(), 0);
        let summaries = ingester.run_summaries(run_id).await.unwrap();
        assert_eq!(summaries[0].1.count, 80);
        assert_eq!(summaries[0].1.latest_step, 79);
        ingester.shutdown();
    }

    /// Two keys, `loss` (the step) and `acc` (minus the step), each step's
    /// timestamp ten times it.
    fn two_keys(steps: std::ops::Range<i64>) -> MetricBatch {
        let mut builder = MetricBatchBuilder::new();
        for step in steps {
            builder.push("loss", step, step * 10, step as f64);
            builder.push("acc", step, step * 10, -(step as f64));
        }
        builder.finish()
    }

    #[tokio::test]
    async fn small_buffers_of_many_runs_spill_together_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let spill_dir = dir.path().join("spill");
        let config = IngestConfig {
            shards: 1,
            tick: Duration::from_millis(10),
            buffer_budget_bytes: 2 << 20,
            spill_dir: Some(spill_dir.clone()),
            ..IngestConfig::default()
        };
        let ingester = start(dir.path(), config);
        let runs: Vec<RunId> = (0..200).map(|_| RunId::new_random()).collect();
        let experiment = ExperimentId::DEFAULT;
        // 100,000 points (about 3 MB buffered) through a 2 MiB budget: a
        // few spills, each run in a few of them.
        let mut lsn = 0;
        for round in 0..5 {
            for &run_id in &runs {
                lsn += 1;
                let (applied, outcome) = oneshot::channel();
                ingester.apply(
                    run_id,
                    experiment,
                    lsn,
                    two_keys(round * 50..(round + 1) * 50),
                    Some(applied),
                );
                outcome.await.unwrap().unwrap();
            }
        }
        let spill = ingester.spill_stats().unwrap();
        wait_until("spills", || spill.files_written() > 0);
        assert_eq!(
            ingester.stats().files_persisted(),
            0,
            "small buffers are spilled, not written to files of their own"
        );
        let every_step: Vec<i64> = (0..250).collect();
        let check = |series: MetricSeries, sign: f64| {
            assert_eq!(series.steps, every_step);
            assert_eq!(
                series.timestamps,
                every_step.iter().map(|step| step * 10).collect::<Vec<_>>()
            );
            assert_eq!(
                series.values,
                every_step
                    .iter()
                    .map(|&step| sign * step as f64)
                    .collect::<Vec<_>>()
            );
        };
        for &run_id in &runs {
            check(read(&ingester, run_id, "loss").await, 1.0);
            check(read(&ingester, run_id, "acc").await, -1.0);
        }
        assert!(spill.member_reads() > 0, "reads read spilled chunks back");
        assert_eq!(
            ingester.oldest_unpersisted_lsn().unwrap(),
            Some(1),
            "the WAL keeps what is spilled"
        );

        // A flush writes each run's chunks, spilled or not, as one file;
        // the spill files go with their last chunk.
        ingester.flush_all().unwrap();
        assert_eq!(ingester.stats().files_persisted(), runs.len() as u64);
        assert_eq!(ingester.oldest_unpersisted_lsn().unwrap(), None);
        assert_eq!(ingester.stats().buffer_bytes(), 0);
        wait_until("the spill files to go", || spill.files_live() == 0);
        assert_eq!(std::fs::read_dir(&spill_dir).unwrap().count(), 0);
        for &run_id in &runs {
            check(read(&ingester, run_id, "loss").await, 1.0);
            check(read(&ingester, run_id, "acc").await, -1.0);
            let summaries = ingester.run_summaries(run_id).await.unwrap();
            assert_eq!(summaries[1].1.count, 250);
        }
        ingester.shutdown();
    }

    #[tokio::test]
    async fn spilled_chunks_never_share_a_file_across_a_rewind() {
        // The same writes and rewinds go to a server that spills under a
        // small budget and to one that never needs to: both show the same
        // points, before and after every buffer is written.
        let dir = tempfile::tempdir().unwrap();
        let spilling = start(
            &dir.path().join("a"),
            IngestConfig {
                shards: 1,
                tick: Duration::from_millis(10),
                buffer_budget_bytes: 2 << 20,
                spill_dir: Some(dir.path().join("a/spill")),
                ..IngestConfig::default()
            },
        );
        let reference = start(&dir.path().join("b"), IngestConfig::default());
        let runs: Vec<RunId> = (0..200).map(|_| RunId::new_random()).collect();
        let experiment = ExperimentId::DEFAULT;
        let mut lsn = 0;
        let write = |lsn: Lsn, run_id: RunId, steps: std::ops::Range<i64>, bump: f64| {
            let mut builder = MetricBatchBuilder::new();
            for step in steps {
                builder.push("loss", step, step * 10, step as f64 + bump);
            }
            let batch = builder.finish();
            let (applied, outcome) = oneshot::channel();
            spilling.apply(run_id, experiment, lsn, batch.clone(), Some(applied));
            reference.apply(run_id, experiment, lsn, batch, None);
            outcome
        };
        for round in 0..3 {
            for &run_id in &runs {
                lsn += 1;
                write(lsn, run_id, round * 100..(round + 1) * 100, 0.0)
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
        for &run_id in &runs {
            lsn += 1;
            spilling.rewind(run_id, experiment, lsn, 120);
            reference.rewind(run_id, experiment, lsn, 120);
        }
        for round in 0..3 {
            for &run_id in &runs {
                lsn += 1;
                let steps = 120 + round * 100..120 + (round + 1) * 100;
                write(lsn, run_id, steps, 0.5).await.unwrap().unwrap();
            }
        }
        let spill = spilling.spill_stats().unwrap();
        wait_until("spills", || spill.files_written() > 0);
        for &run_id in &runs {
            assert_eq!(
                read(&spilling, run_id, "loss").await,
                read(&reference, run_id, "loss").await
            );
        }
        spilling.flush_all().unwrap();
        reference.flush_all().unwrap();
        for &run_id in &runs {
            let shown = read(&spilling, run_id, "loss").await;
            assert_eq!(shown, read(&reference, run_id, "loss").await);
            assert_eq!(
                shown.len(),
                421,
                "steps 0..=120 before the rewind, 120..420 after"
            );
        }
        assert!(
            spilling.stats().files_persisted() >= 2 * runs.len() as u64,
            "a file on each side of every rewind"
        );
        spilling.shutdown();
        reference.shutdown();
    }

    #[tokio::test]
    async fn an_idle_finished_run_goes_dormant_and_is_recorded_awake_before_a_write() {
        use crate::storage::dormant_log::{DormantLog, dormant_runs_in};
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics");
        std::fs::create_dir_all(&metrics).unwrap();
        let layout = MetricsLayout::new(metrics.clone());
        let (log, _) = DormantLog::open(&metrics, |_| {}).unwrap();
        let config = IngestConfig {
            shards: 1,
            tick: Duration::from_millis(10),
            idle_run_after: Some(Duration::from_millis(50)),
            ..IngestConfig::default()
        };
        let loader = crate::engine::run_files::DiskRunLoader::new(layout.clone());
        let runs = StartingRuns {
            loader: Some(Arc::new(loader)),
            log: Some(Arc::new(log)),
            ..StartingRuns::default()
        };
        let ingester = Ingester::start_with(config, layout, runs, false).unwrap();
        let run_id = RunId::new_random();
        let experiment = ExperimentId::DEFAULT;
        ingester.apply(run_id, experiment, 1, batch("loss", 0..50), None);
        ingester.run_ended(run_id);
        wait_until("the run to go dormant", || {
            ingester.stats().runs_dormant() == 1
        });
        let (dormant, records) = dormant_runs_in(&metrics);
        assert_eq!((dormant, records), (vec![run_id], 1));
        let summaries = ingester.run_summaries(run_id).await.unwrap();
        assert_eq!(summaries[0].1.count, 50);
        assert_eq!(ingester.stats().run_wakes(), 0, "summaries need no loading");

        // Read point by point: loaded again; idle, dormant again, and its
        // record in the log still stands.
        assert_eq!(
            read(&ingester, run_id, "loss").await.steps,
            (0..50).collect::<Vec<_>>()
        );
        assert_eq!(ingester.stats().run_wakes(), 1);
        wait_until("the run to go dormant again", || {
            ingester.stats().runs_dormant() == 1
        });
        assert_eq!(dormant_runs_in(&metrics), (vec![run_id], 1));

        // Written to: recorded awake (synced) before the points apply.
        let (applied, outcome) = oneshot::channel();
        ingester.apply(run_id, experiment, 2, batch("loss", 50..60), Some(applied));
        outcome.await.unwrap().unwrap();
        assert_eq!(dormant_runs_in(&metrics), (Vec::new(), 2));
        let series = read(&ingester, run_id, "loss").await;
        assert_eq!(series.steps, (0..60).collect::<Vec<_>>());
        let summaries = ingester.run_summaries(run_id).await.unwrap();
        assert_eq!((summaries[0].1.count, summaries[0].1.latest_step), (60, 59));
        assert_eq!(ingester.stats().run_wake_failures(), 0);
        ingester.shutdown();
    }

    #[tokio::test]
    async fn over_the_budget_the_largest_buffer_goes_first() {
        let dir = tempfile::tempdir().unwrap();
        let config = IngestConfig {
            shards: 1,
            buffer_budget_bytes: 2 << 20,
            ..IngestConfig::default()
        };
        let ingester = start(dir.path(), config);
        let (large, small) = (RunId::new_random(), RunId::new_random());
        ingester.apply(small, ExperimentId::DEFAULT, 1, batch("a", 0..10_000), None);
        ingester.apply(
            large,
            ExperimentId::DEFAULT,
            2,
            batch("a", 0..100_000),
            None,
        );
        ingester.apply(
            small,
            ExperimentId::DEFAULT,
            3,
            batch("a", 10_000..20_000),
            None,
        );
        wait_until("the large buffer to be persisted", || {
            ingester.stats().files_persisted() == 1
        });
        let layout = MetricsLayout::new(dir.path().join("metrics"));
        let runs = layout.scan().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].run_id, large, "the largest buffer was persisted");
        assert!(ingester.stats().buffer_bytes() <= 2 << 20);
        assert_eq!(read(&ingester, small, "a").await.len(), 20_000);
        assert_eq!(read(&ingester, large, "a").await.len(), 100_000);
        ingester.shutdown();
    }

    #[tokio::test]
    async fn many_small_buffers_are_shed_together() {
        // 400 runs of 500 points: no buffer is large, all together pass the
        // budget; several must go at once or memory would never come back.
        let dir = tempfile::tempdir().unwrap();
        let config = IngestConfig {
            shards: 1,
            buffer_budget_bytes: 4 << 20,
            ..IngestConfig::default()
        };
        let ingester = start(dir.path(), config);
        let runs: Vec<RunId> = (0..400).map(|_| RunId::new_random()).collect();
        for (index, run_id) in runs.iter().enumerate() {
            ingester.apply(
                *run_id,
                ExperimentId::DEFAULT,
                index as u64 + 1,
                batch("a", 0..500),
                None,
            );
        }
        wait_until("buffers to drop under the budget", || {
            ingester.stats().buffer_bytes() <= 4 << 20 && ingester.stats().files_persisted() > 1
        });
        for run_id in runs.iter().step_by(37) {
            assert_eq!(read(&ingester, *run_id, "a").await.len(), 500);
        }
        ingester.shutdown();
    }

    #[tokio::test]
    async fn ended_runs_are_compacted_into_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = IngestConfig {
            flush_rows: 1000,
            ..IngestConfig::default()
        };
        let ingester = start(dir.path(), config);
        let run_id = RunId::new_random();
        for part in 0..5 {
            ingester.apply(
                run_id,
                ExperimentId::DEFAULT,
                part + 1,
                batch("k", (part as i64 * 1000)..(part as i64 + 1) * 1000),
                None,
            );
        }
        ingester.apply(
            run_id,
            ExperimentId::DEFAULT,
            9,
            batch("k", 5000..5010),
            None,
        );
        ingester.run_ended(run_id);
        wait_until("compaction", || ingester.stats().compactions() == 1);
        let layout = MetricsLayout::new(dir.path().join("metrics"));
        wait_until("old files to go", || {
            layout.scan().unwrap()[0].files.len() == 1
        });
        let series = read(&ingester, run_id, "k").await;
        assert_eq!(series.steps, (0..5010).collect::<Vec<_>>());
        ingester.shutdown();
    }

    #[tokio::test]
    async fn reads_and_run_ends_come_after_the_data_sent_before_them() {
        // `select!` over the two channels picks at random: without the
        // shard applying queued data first, a read sent right after an
        // apply could miss it (as after replay, whose applies wait for
        // nothing).
        let dir = tempfile::tempdir().unwrap();
        let config = IngestConfig {
            shards: 1,
            ..IngestConfig::default()
        };
        let ingester = start(dir.path(), config);
        for round in 0..200i64 {
            let run_id = RunId::new_random();
            for part in 0..4 {
                let first = part * 10;
                ingester.apply(
                    run_id,
                    ExperimentId::DEFAULT,
                    (round * 4 + part + 1) as Lsn,
                    batch("k", first..first + 10),
                    None,
                );
            }
            assert_eq!(
                read(&ingester, run_id, "k").await.len(),
                40,
                "round {round}"
            );
            let summaries = ingester.run_summaries(run_id).await.unwrap();
            assert_eq!(summaries[0].1.count, 40, "round {round}");
        }
        ingester.shutdown();
    }
}
