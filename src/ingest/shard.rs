//! A shard thread: applies metric batches to the buffers of the runs it
//! owns, decides when buffers are frozen and persisted (row threshold, age,
//! run end, memory budget) and when runs are compacted, and answers reads
//! with a consistent view of buffers and files.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::buffer::FrozenChunk;
use super::dormant::{DormantRun, KeyNames, RunLoader};
use super::live::LiveHub;
use super::persister::{PersistJob, RunRemoval};
use super::rewinds::RewindMarks;
use super::run_state::RunState;
use super::{
    ControlMessage, DataMessage, IngestConfig, IngestStats, LoadedRun, RunSelection,
    RunSummaryView, SeriesSources,
};
use crate::model::RunId;
use crate::storage::dormant_log::DormantLog;
use crate::storage::spill::SpillDir;
use crate::storage::{PersistedFile, StorageError};

/// How long a failed file write or compaction waits before it is retried.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Under memory pressure, at least this much is kept frozen and on its way
/// to files.
const MIN_SHED_BYTES: u64 = 1 << 20;
/// Buffers start to be persisted, largest first, once all of them together
/// hold this share (in percent) of the budget, so that writes seldom find
/// the budget full and have to wait.
const SHED_FROM_PERCENT: u64 = 75;

/// Frozen chunks of one run handed to the persister as one file and not
/// yet reported written.
struct PendingWrite {
    run_id: RunId,
    seq: u64,
    /// The chunks, in logged order.
    chunk_ids: Vec<u64>,
    /// Bytes of those still in memory (given back once written).
    bytes: u64,
    failed_at: Option<Instant>,
}

/// A chunk handed to the persister to be spilled.
struct SpillingChunk {
    run_id: RunId,
    chunk_id: u64,
    bytes: u64,
}

/// Under memory pressure, a run's buffer is spilled (with other runs')
/// rather than written to a file of its own while the run's unwritten
/// points stay under this many: a file of fewer is mostly footer.
const SPILL_BELOW_ROWS: usize = 64 * 1024;

/// ... and while it has fewer than this many chunks spilled (each is a
/// read of the spill file for a read of the run).
const MAX_SPILLED_CHUNKS: usize = 8;

/// A compaction of a running run merges at least this many of its newest
/// files, so that the file count always comes down.
const MIN_RUNNING_COMPACTION_INPUTS: usize = 4;

/// A running run's full-size files (at least `flush_rows` each) are merged
/// only once this many times `compact_after_files` of them pile up: they
/// are already good files, and merging them every `compact_after_files`
/// flushes would rewrite nearly every point of a fast run once more while
/// it still logs (measured: a quarter of the server's CPU under bulk load).
const FULL_FILE_FANOUT_FACTOR: usize = 4;

/// The files (in sequence order) a compaction merges: every one once the
/// run has ended. While it runs, the newest files by size tier: going back
/// from the newest, an older file joins only while it holds no more rows
/// than the newer ones together, so a long run's large early files are not
/// rewritten each time a few small ones pile up (each point is rewritten a
/// logarithmic number of times, not once per compaction). A tier that
/// holds full-size files (`full_rows` or more) merges only once it has
/// `full_fanout` files; until then only the small files after the newest
/// full one merge. Always a suffix: the merged file takes a new, later
/// sequence number, which keeps logged order for points with equal step
/// and time. Empty when nothing is worth merging yet.
fn compaction_inputs(
    files: &[Arc<PersistedFile>],
    finished: bool,
    full_rows: u64,
    full_fanout: usize,
) -> &[Arc<PersistedFile>] {
    if finished {
        return files;
    }
    let rows: Vec<u64> = files.iter().map(|file| file.rows()).collect();
    &files[running_compaction_start(&rows, full_rows, full_fanout)..]
}

/// Where the suffix of [`compaction_inputs`] for a running run starts,
/// given the files' row counts in sequence order (`rows.len()` when none).
fn running_compaction_start(rows: &[u64], full_rows: u64, full_fanout: usize) -> usize {
    let mut start = tiered_suffix_start(rows);
    let holds_full_files = rows[start..].iter().any(|&count| count >= full_rows);
    if holds_full_files && rows.len() - start < full_fanout {
        let after_newest_full = rows
            .iter()
            .rposition(|&count| count >= full_rows)
            .map_or(0, |index| index + 1);
        start = start.max(after_newest_full);
    }
    if rows.len() - start < MIN_RUNNING_COMPACTION_INPUTS {
        return rows.len();
    }
    start
}

/// Where the size-tiered suffix of [`compaction_inputs`] starts, given the
/// files' row counts in sequence order.
fn tiered_suffix_start(rows: &[u64]) -> usize {
    let mut start = rows.len();
    let mut newer_rows = 0u64;
    while start > 0 {
        let older_rows = rows[start - 1];
        if rows.len() - start >= MIN_RUNNING_COMPACTION_INPUTS && older_rows > newer_rows {
            break;
        }
        newer_rows += older_rows;
        start -= 1;
    }
    start
}

/// A run the shard meets first in a write: no file, never rewound.
fn new_run(experiment_id: crate::model::ExperimentId) -> RunState {
    RunState::new(
        experiment_id,
        Vec::new(),
        Vec::new(),
        RewindMarks::default(),
        Vec::new(),
        Vec::new(),
    )
}

/// Whether a run is in a selection.
fn selected_runs(runs: &RunSelection) -> impl Fn(&RunId) -> bool + '_ {
    move |run_id| runs.as_ref().is_none_or(|runs| runs.contains(run_id))
}

/// Why a dormant run is loaded again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// To read its points: on failure it stays dormant.
    ForRead,
    /// To write to it: on failure it goes on without its files.
    ForWrite,
}

/// State owned by one shard thread.
pub(crate) struct Shard {
    index: usize,
    config: IngestConfig,
    stats: Arc<IngestStats>,
    jobs: Sender<PersistJob>,
    /// Where purged runs' files go to be removed (`None`: removed on this
    /// thread).
    removals: Option<Sender<RunRemoval>>,
    replies: Sender<ControlMessage>,
    runs: HashMap<RunId, RunState>,
    /// Settled runs let go of, held by their summaries (never also in
    /// `runs`).
    dormant: HashMap<RunId, DormantRun>,
    /// Key names of dormant runs, each kept once.
    dormant_names: KeyNames,
    /// Loads dormant runs again; without one no run goes dormant.
    loader: Option<Arc<dyn RunLoader>>,
    /// Records runs going dormant and dormant runs written to again.
    dormant_log: Option<Arc<DormantLog>>,
    /// File writes in flight, by job id.
    pending: HashMap<u64, PendingWrite>,
    /// Spills in flight, by job id.
    spilling: HashMap<u64, Vec<SpillingChunk>>,
    /// Per run: its chunks in spills in flight. A file write of the run
    /// waits for them (its chunks go to files in logged order).
    spilling_runs: HashMap<RunId, usize>,
    /// Runs whose file write waits for a spill.
    file_wanted: HashSet<RunId>,
    /// Chunks in a file write or a spill in flight.
    busy: HashSet<u64>,
    /// Where small buffers are spilled together (`None`: never).
    spill: Option<SpillDir>,
    /// Bytes of this shard's frozen chunks still in memory and not yet
    /// written or spilled.
    frozen_bytes: u64,
    next_chunk_id: u64,
    next_job_id: u64,
    flush_waiters: Vec<Sender<Result<(), String>>>,
    last_tick: Instant,
    live: Arc<LiveHub>,
    /// Set while the WAL is replayed: nothing is compacted meanwhile.
    recovering: bool,
}

impl Shard {
    pub(crate) fn new(
        index: usize,
        _shard_count: usize,
        config: IngestConfig,
        stats: Arc<IngestStats>,
        jobs: Sender<PersistJob>,
        replies: Sender<ControlMessage>,
        loaded: Vec<LoadedRun>,
    ) -> Self {
        let runs = loaded
            .into_iter()
            .map(|run| (run.run_id, RunState::loaded(run)))
            .collect();
        Shard {
            index,
            config,
            stats,
            jobs,
            removals: None,
            replies,
            runs,
            dormant: HashMap::new(),
            dormant_names: KeyNames::default(),
            loader: None,
            dormant_log: None,
            pending: HashMap::new(),
            spilling: HashMap::new(),
            spilling_runs: HashMap::new(),
            file_wanted: HashSet::new(),
            busy: HashSet::new(),
            spill: None,
            frozen_bytes: 0,
            next_chunk_id: 1,
            next_job_id: 1,
            flush_waiters: Vec::new(),
            last_tick: Instant::now(),
            live: Arc::default(),
            recovering: false,
        }
    }

    /// Publishes applied batches to `live`'s followers.
    pub(crate) fn with_live(mut self, live: Arc<LiveHub>) -> Self {
        self.live = live;
        self
    }

    /// Hands purged runs' files to `removals` to be removed.
    pub(crate) fn with_removals(mut self, removals: Sender<RunRemoval>) -> Self {
        self.removals = Some(removals);
        self
    }

    /// Starts with `dormant` runs (each recorded in `log`), and lets idle
    /// settled runs go dormant (after `IngestConfig::idle_run_after`),
    /// loading them again with `loader`.
    pub(crate) fn with_dormant(
        mut self,
        dormant: Vec<(RunId, DormantRun)>,
        loader: Option<Arc<dyn RunLoader>>,
        log: Option<Arc<DormantLog>>,
    ) -> Self {
        self.stats.add_dormant(dormant.len() as i64);
        self.dormant.extend(dormant);
        self.loader = loader;
        self.dormant_log = log;
        self
    }

    /// Spills small buffers of many runs together into `spill` under
    /// memory pressure.
    pub(crate) fn with_spill(mut self, spill: Option<SpillDir>) -> Self {
        self.spill = spill;
        self
    }

    /// Holds compaction until [`DataMessage::Recovered`] when `recovering`.
    pub(crate) fn recovering(mut self, recovering: bool) -> Self {
        self.recovering = recovering;
        self
    }

    /// The shard loop; returns on `Shutdown`.
    pub(crate) fn run(mut self, data: Receiver<DataMessage>, control: Receiver<ControlMessage>) {
        tracing::debug!(
            shard = self.index,
            runs = self.runs.len(),
            dormant = self.dormant.len(),
            "shard started"
        );
        loop {
            crossbeam_channel::select! {
                recv(control) -> message => {
                    // `select!` picks among ready channels at random: the
                    // data already queued when a control message arrives
                    // is applied first, so a read or a run end sent after
                    // an apply (by one thread, or after replay) sees it.
                    self.apply_queued(&data);
                    match message {
                        Ok(ControlMessage::Shutdown) | Err(_) => break,
                        Ok(message) => self.contained("a control message", |shard| shard.on_control(message)),
                    }
                },
                recv(data) -> message => match message {
                    Ok(message) => self.contained("a data message", |shard| shard.on_data(message)),
                    Err(_) => break,
                },
                default(self.config.tick) => {}
            }
            if self.last_tick.elapsed() >= self.config.tick {
                self.contained("a tick", Shard::on_tick);
            }
        }
        tracing::debug!(shard = self.index, "shard stopped");
    }

    /// Handles one message or tick, containing a panic: the thread and its
    /// runs live on (the message's requester sees its reply channel closed,
    /// an error), and the panic is logged and counted.
    fn contained(&mut self, what: &'static str, handle: impl FnOnce(&mut Self)) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(self)));
        if let Err(payload) = outcome {
            self.stats.count_panic();
            tracing::error!(
                shard = self.index,
                what,
                message = %super::persister::panic_message(payload.as_ref()),
                "a shard thread panicked handling a message; it was contained and the shard goes on"
            );
        }
    }

    /// Applies the data messages queued now (not those sent meanwhile, so
    /// a steady writer cannot hold control messages back).
    fn apply_queued(&mut self, data: &Receiver<DataMessage>) {
        for _ in 0..data.len() {
            match data.try_recv() {
                Ok(message) => self.contained("a data message", |shard| shard.on_data(message)),
                Err(_) => break,
            }
        }
    }

    fn on_data(&mut self, message: DataMessage) {
        match message {
            DataMessage::Apply {
                run_id,
                experiment_id,
                lsn,
                batch,
                applied,
            } => {
                let points = batch.len();
                self.before_write(run_id);
                let run = self
                    .runs
                    .entry(run_id)
                    .or_insert_with(|| new_run(experiment_id));
                // The tick's time: idleness is counted in ticks, and a
                // clock read per batch is not needed for it.
                run.last_used = self.last_tick;
                let held_before = run.active.bytes();
                run.apply(lsn, &batch);
                let grown = run.active.bytes().saturating_sub(held_before);
                let full = run.active.rows() >= self.config.flush_rows;
                self.stats
                    .points_ingested
                    .fetch_add(points as u64, Ordering::Relaxed);
                self.stats.add_buffer_bytes(grown);
                if let Some(applied) = applied {
                    let _ = applied.send(Ok(super::Applied {
                        points,
                        run_keys: run.key_count(),
                    }));
                }
                self.live.publish_points(run_id, lsn, &batch);
                if full {
                    self.write_run_file(run_id);
                }
                self.shed_if_over_budget();
            }
            DataMessage::Rewind {
                run_id,
                experiment_id,
                lsn,
                step,
            } => {
                self.before_write(run_id);
                let run = self
                    .runs
                    .entry(run_id)
                    .or_insert_with(|| new_run(experiment_id));
                let known = run.rewinds.last_lsn().is_some_and(|last| last >= lsn);
                // The points before the rewind go to a chunk of their own,
                // also when the rewind is replayed and was known from the
                // snapshot: the WAL replays the points around it.
                self.write_run_file(run_id);
                if known {
                    return;
                }
                if let Some(run) = self.runs.get_mut(&run_id)
                    && run.rewind(lsn, step)
                {
                    tracing::debug!(%run_id, lsn, step, "rewind applied: the run's buffer was frozen at it");
                    self.live.publish_rewind(run_id, lsn, step);
                }
            }
            DataMessage::Fork { run_id, lsn } => {
                self.before_write(run_id);
                // A run without points or files has nothing to hand down.
                if !self.runs.contains_key(&run_id) {
                    return;
                }
                // The points before the fork go to a chunk of their own
                // (also when replayed: the WAL replays the points around
                // it).
                self.write_run_file(run_id);
                if let Some(run) = self.runs.get_mut(&run_id)
                    && run.add_fork_point(lsn)
                {
                    tracing::debug!(%run_id, lsn, "fork point applied: the run's buffer was frozen at it");
                }
            }
            DataMessage::Purge { run_id } => self.purge(run_id),
            DataMessage::ReplaceRun(run) => {
                let run = *run;
                self.forget_dormant(run.run_id);
                self.runs.insert(run.run_id, RunState::loaded(run));
            }
            DataMessage::DropRun { run_id } => {
                self.forget_dormant(run_id);
                self.runs.remove(&run_id);
            }
            DataMessage::Recovered => self.recovering = false,
            DataMessage::Checkpoint(reply) => {
                let oldest = self
                    .runs
                    .values()
                    .filter_map(RunState::min_unpersisted_lsn)
                    .min();
                let _ = reply.send(oldest);
            }
            DataMessage::FlushAll(reply) => {
                let run_ids: Vec<RunId> = self.runs.keys().copied().collect();
                for run_id in run_ids {
                    self.write_run_file(run_id);
                }
                self.flush_waiters.push(reply);
                self.answer_flush_waiters(None);
            }
        }
    }

    fn on_control(&mut self, message: ControlMessage) {
        match message {
            ControlMessage::ReadSeries { run_id, key, reply } => {
                let sources = match self.awake(run_id) {
                    Some(run) => run.sources_for(&key),
                    None => SeriesSources::empty(),
                };
                let _ = reply.send(sources);
            }
            ControlMessage::ReadInherited {
                run_id,
                key,
                before,
                bound,
                reply,
            } => {
                let sources = match self.awake(run_id) {
                    Some(run) => run.inherited_sources_for(&key, before, bound),
                    None => SeriesSources::empty(),
                };
                let _ = reply.send(sources);
            }
            ControlMessage::InheritedPoints {
                parent,
                child,
                before,
                bound,
                reply,
            } => {
                let points = self
                    .awake(parent)
                    .map(|run| run.inherited_points(child, before, bound));
                let _ = reply.send(points);
            }
            ControlMessage::RunSummaries { run_id, reply } => {
                let summaries = match (self.runs.get(&run_id), self.dormant.get(&run_id)) {
                    (Some(run), _) => run.summaries(),
                    (None, Some(dormant)) => dormant.summaries(),
                    (None, None) => Vec::new(),
                };
                let _ = reply.send(summaries);
            }
            ControlMessage::ShownSummaries {
                run_ids,
                keys,
                reply,
            } => {
                let keys = keys.as_deref();
                let views = run_ids
                    .iter()
                    .map(
                        |run_id| match (self.runs.get(run_id), self.dormant.get(run_id)) {
                            (Some(run), _) => run.summary_view_of(keys),
                            (None, Some(dormant)) => dormant.summary_view_of(keys),
                            (None, None) => super::SummaryView::Complete(Vec::new()),
                        },
                    )
                    .collect();
                let _ = reply.send(views);
            }
            ControlMessage::SnapshotPoints { runs, reply } => {
                let selected = selected_runs(&runs);
                let sleeping: Vec<RunId> = self
                    .dormant
                    .keys()
                    .filter(|run_id| selected(run_id))
                    .copied()
                    .collect();
                for run_id in sleeping {
                    self.awake(run_id);
                }
                let snapshot = self
                    .runs
                    .iter_mut()
                    .filter(|(run_id, _)| selected(run_id))
                    .map(|(run_id, run)| run.points_snapshot(*run_id))
                    .collect();
                let _ = reply.send(snapshot);
            }
            ControlMessage::SnapshotSummaries { runs, reply } => {
                let selected = selected_runs(&runs);
                let snapshot = self
                    .runs
                    .iter()
                    .filter(|(run_id, _)| selected(run_id))
                    .map(|(run_id, run)| RunSummaryView {
                        run_id: *run_id,
                        experiment_id: run.experiment_id,
                        view: run.summary_view(),
                    })
                    .chain(
                        self.dormant
                            .iter()
                            .filter(|(run_id, _)| selected(run_id))
                            .map(|(run_id, dormant)| RunSummaryView {
                                run_id: *run_id,
                                experiment_id: dormant.experiment_id(),
                                view: dormant.summary_view(),
                            }),
                    )
                    .collect();
                let _ = reply.send(snapshot);
            }
            ControlMessage::RunEnded(run_id) => {
                if let Some(run) = self.runs.get_mut(&run_id) {
                    run.ended = true;
                    self.write_run_file(run_id);
                    self.maybe_compact(run_id);
                    self.write_manifest_if_settled(run_id);
                }
            }
            ControlMessage::Persisted {
                run_id,
                job_id,
                outcome,
            } => self.on_persisted(run_id, job_id, outcome),
            ControlMessage::Spilled { job_id, outcome } => self.on_spilled(job_id, outcome),
            ControlMessage::Compacted {
                run_id,
                replaced,
                outcome,
            } => self.on_compacted(run_id, replaced, outcome),
            ControlMessage::Shutdown => {}
        }
    }

    fn on_tick(&mut self) {
        self.last_tick = Instant::now();
        let flush_age = self.config.flush_age;
        let busy = &self.busy;
        let due: Vec<RunId> = self
            .runs
            .iter()
            .filter(|(_, run)| {
                let due = |opened: Instant| run.ended || opened.elapsed() >= flush_age;
                run.active.opened_at().is_some_and(due)
                    || run
                        .frozen
                        .iter()
                        .any(|chunk| !busy.contains(&chunk.id()) && due(chunk.opened_at()))
            })
            .map(|(run_id, _)| *run_id)
            .collect();
        for run_id in due {
            self.write_run_file(run_id);
        }
        let retries: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, pending)| {
                pending
                    .failed_at
                    .is_some_and(|at| at.elapsed() >= RETRY_AFTER)
            })
            .map(|(job_id, _)| *job_id)
            .collect();
        for job_id in retries {
            self.submit_write(job_id);
        }
        let compactable: Vec<RunId> = self
            .runs
            .iter()
            .filter(|(_, run)| {
                !run.compacting
                    && run.frozen.is_empty()
                    && run.files.len() > run.first_file_after_boundaries() + 1
            })
            .map(|(run_id, _)| *run_id)
            .collect();
        for run_id in compactable {
            self.maybe_compact(run_id);
        }
        self.shed_if_over_budget();
        self.let_idle_runs_go_dormant();
    }

    /// Lets go of the settled runs idle for `IngestConfig::idle_run_after`
    /// (see [`RunState::can_go_dormant`]).
    fn let_idle_runs_go_dormant(&mut self) {
        let Some(idle_after) = self.config.idle_run_after else {
            return;
        };
        if self.loader.is_none() || self.recovering {
            return;
        }
        let now = Instant::now();
        let idle: Vec<RunId> = self
            .runs
            .iter()
            .filter(|(_, run)| {
                now.saturating_duration_since(run.last_used) >= idle_after && run.can_go_dormant()
            })
            .map(|(run_id, _)| *run_id)
            .collect();
        if idle.is_empty() {
            return;
        }
        let mut unlogged = Vec::new();
        for run_id in &idle {
            if let Some(run) = self.runs.remove(run_id) {
                let logged = run.logged_dormant;
                let dormant = run.into_dormant(&mut self.dormant_names);
                if !logged {
                    unlogged.push(dormant.entry(*run_id));
                }
                self.dormant.insert(*run_id, dormant);
            }
        }
        if let Some(log) = &self.dormant_log
            && !unlogged.is_empty()
        {
            // A failure is logged, and the log no longer used.
            let _ = log.record_dormant(unlogged);
        }
        self.stats.add_dormant(idle.len() as i64);
        tracing::debug!(
            shard = self.index,
            runs = idle.len(),
            "idle settled runs went dormant"
        );
    }

    /// The loaded state of a run, loading it again if it was dormant (a
    /// run that cannot be loaded stays dormant: `None`).
    fn awake(&mut self, run_id: RunId) -> Option<&mut RunState> {
        self.wake(run_id, Wake::ForRead);
        let run = self.runs.get_mut(&run_id)?;
        run.last_used = Instant::now();
        Some(run)
    }

    /// Loads a dormant run again (nothing when it is not dormant). When
    /// its files cannot be loaded (the error is logged and counted), a
    /// read leaves it dormant, and a write has it go on without them: its
    /// new files take later sequence numbers, so none is written over,
    /// and the next start finds them all.
    fn wake(&mut self, run_id: RunId, purpose: Wake) {
        let Some(dormant) = self.dormant.remove(&run_id) else {
            return;
        };
        let loaded = match &self.loader {
            Some(loader) => loader.load(dormant.experiment_id(), run_id),
            None => Err("no loader for dormant runs".into()),
        };
        // The log's record of it stands while it is only read.
        let logged = self.dormant_log.is_some();
        let mut run = match loaded {
            Ok(loaded) => {
                self.stats.count_wake(true);
                tracing::debug!(%run_id, files = loaded.files.len(), "a dormant run was loaded again");
                RunState::loaded(loaded)
            }
            Err(error) => {
                self.stats.count_wake(false);
                tracing::error!(%run_id, %error, "a dormant run's files could not be loaded again; reads of its points find none until they can be");
                if purpose == Wake::ForRead {
                    self.dormant.insert(run_id, dormant);
                    return;
                }
                RunState::new(
                    dormant.experiment_id(),
                    Vec::new(),
                    dormant.summaries(),
                    RewindMarks::default(),
                    Vec::new(),
                    Vec::new(),
                )
            }
        };
        self.stats.add_dormant(-1);
        run.logged_dormant = logged;
        run.ended = true;
        run.next_seq = run.next_seq.max(dormant.next_seq());
        self.runs.insert(run_id, run);
    }

    /// Loads the run again if it was dormant, and records in the
    /// dormant-run log, synced, that it is written to (before the write is
    /// applied): the next start must not take the run for dormant as it
    /// was.
    fn before_write(&mut self, run_id: RunId) {
        self.wake(run_id, Wake::ForWrite);
        let Some(run) = self.runs.get_mut(&run_id) else {
            return;
        };
        if !run.logged_dormant {
            return;
        }
        run.logged_dormant = false;
        if let Some(log) = &self.dormant_log {
            // A failure removes the log (and is logged): no stale record
            // of the run is left either way.
            let _ = log.wake(run_id);
        }
    }

    /// Forgets a dormant run (its files stay).
    fn forget_dormant(&mut self, run_id: RunId) {
        if self.dormant.remove(&run_id).is_some() {
            self.stats.add_dormant(-1);
            self.shrink_maps();
        }
    }

    /// Gives back the memory of the run maps once most of their slots are
    /// empty (a gc of most runs): a map keeps its capacity otherwise.
    fn shrink_maps(&mut self) {
        const MIN_CAPACITY: usize = 1024;
        if self.runs.capacity() > MIN_CAPACITY && self.runs.len() < self.runs.capacity() / 4 {
            self.runs.shrink_to_fit();
        }
        if self.dormant.capacity() > MIN_CAPACITY
            && self.dormant.len() < self.dormant.capacity() / 4
        {
            self.dormant.shrink_to_fit();
        }
    }

    /// Freezes the run's active buffer (if it holds points) into a chunk
    /// that waits, in memory, to be written or spilled.
    fn freeze_only(&mut self, run_id: RunId) -> Option<Arc<FrozenChunk>> {
        let run = self.runs.get_mut(&run_id)?;
        if run.active.rows() == 0 {
            return None;
        }
        let chunk_id = self.next_chunk_id;
        let names = run.key_names();
        let chunk = Arc::new(run.active.freeze(chunk_id, names)?);
        self.next_chunk_id += 1;
        self.frozen_bytes += chunk.bytes();
        run.frozen.push(Arc::clone(&chunk));
        Some(chunk)
    }

    /// Freezes the run's active buffer and hands every chunk of the run
    /// not yet on its way (in memory or spilled) to the persister, in
    /// logged order, as one file (one per stretch between rewinds and
    /// forks). While a spill of the run's chunks is in flight, the write
    /// waits for it.
    fn write_run_file(&mut self, run_id: RunId) {
        self.freeze_only(run_id);
        if self.spilling_runs.contains_key(&run_id) {
            self.file_wanted.insert(run_id);
            return;
        }
        let Some(run) = self.runs.get_mut(&run_id) else {
            return;
        };
        let waiting: Vec<&Arc<FrozenChunk>> = run
            .frozen
            .iter()
            .filter(|chunk| !self.busy.contains(&chunk.id()))
            .collect();
        let mut groups: Vec<Vec<Arc<FrozenChunk>>> = Vec::new();
        for chunk in waiting {
            let joins = groups
                .last()
                .and_then(|group| group.last())
                .is_some_and(|last| !run.boundary_within(last.lsn_range().1, chunk.lsn_range().1));
            if joins && let Some(group) = groups.last_mut() {
                group.push(Arc::clone(chunk));
            } else {
                groups.push(vec![Arc::clone(chunk)]);
            }
        }
        let numbered: Vec<(u64, Vec<Arc<FrozenChunk>>)> = groups
            .into_iter()
            .map(|group| {
                run.next_seq += 1;
                (run.next_seq - 1, group)
            })
            .collect();
        for (seq, group) in numbered {
            let job_id = self.next_job_id;
            self.next_job_id += 1;
            let bytes = group
                .iter()
                .filter(|chunk| !chunk.is_spilled())
                .map(|chunk| chunk.bytes())
                .sum();
            self.busy.extend(group.iter().map(|chunk| chunk.id()));
            self.pending.insert(
                job_id,
                PendingWrite {
                    run_id,
                    seq,
                    chunk_ids: group.iter().map(|chunk| chunk.id()).collect(),
                    bytes,
                    failed_at: None,
                },
            );
            self.submit_write(job_id);
        }
    }

    fn submit_write(&mut self, job_id: u64) {
        let Some(pending) = self.pending.get_mut(&job_id) else {
            return;
        };
        pending.failed_at = None;
        let Some(run) = self.runs.get(&pending.run_id) else {
            return;
        };
        let chunks: Vec<Arc<FrozenChunk>> = run
            .frozen
            .iter()
            .filter(|chunk| pending.chunk_ids.contains(&chunk.id()))
            .cloned()
            .collect();
        let job = PersistJob::Chunks {
            job_id,
            run_id: pending.run_id,
            experiment_id: run.experiment_id,
            seq: pending.seq,
            chunks,
            reply: self.replies.clone(),
        };
        if self.jobs.send(job).is_err() {
            tracing::error!(
                shard = self.index,
                "persister pool is gone; buffer not persisted"
            );
        }
    }

    /// Hands `chunks` (just frozen, in memory) to the persister to be
    /// spilled together into one file.
    fn submit_spill(&mut self, chunks: Vec<(RunId, Arc<FrozenChunk>)>) {
        let Some(spill) = &self.spill else {
            return;
        };
        let job_id = self.next_job_id;
        self.next_job_id += 1;
        let mut spilling = Vec::with_capacity(chunks.len());
        for (run_id, chunk) in &chunks {
            self.busy.insert(chunk.id());
            *self.spilling_runs.entry(*run_id).or_default() += 1;
            spilling.push(SpillingChunk {
                run_id: *run_id,
                chunk_id: chunk.id(),
                bytes: chunk.bytes(),
            });
        }
        self.spilling.insert(job_id, spilling);
        let job = PersistJob::Spill {
            job_id,
            spill: spill.clone(),
            chunks: chunks.into_iter().map(|(_, chunk)| chunk).collect(),
            reply: self.replies.clone(),
        };
        if self.jobs.send(job).is_err() {
            tracing::error!(
                shard = self.index,
                "persister pool is gone; buffers not spilled"
            );
        }
    }

    /// A spill ended: its chunks' memory comes back (on failure they stay
    /// in memory and go to their runs' files), and the file writes that
    /// waited for it go.
    fn on_spilled(&mut self, job_id: u64, outcome: Result<(), StorageError>) {
        let Some(chunks) = self.spilling.remove(&job_id) else {
            return;
        };
        let failed = outcome.is_err();
        let mut released = 0;
        let mut runs = Vec::new();
        for chunk in &chunks {
            self.busy.remove(&chunk.chunk_id);
            if let Some(count) = self.spilling_runs.get_mut(&chunk.run_id) {
                *count -= 1;
                if *count == 0 {
                    self.spilling_runs.remove(&chunk.run_id);
                }
            }
            if !failed {
                released += chunk.bytes;
            }
            if runs.last() != Some(&chunk.run_id) {
                runs.push(chunk.run_id);
            }
        }
        if failed {
            self.stats.persist_failures.fetch_add(1, Ordering::Relaxed);
        }
        self.frozen_bytes = self.frozen_bytes.saturating_sub(released);
        self.stats
            .buffer_bytes
            .fetch_sub(released.min(self.stats.buffer_bytes()), Ordering::Relaxed);
        self.stats.memory_freed.notify_waiters();
        for run_id in runs {
            let wanted =
                self.file_wanted.contains(&run_id) && !self.spilling_runs.contains_key(&run_id);
            if failed || wanted {
                self.file_wanted.remove(&run_id);
                if self.runs.contains_key(&run_id) {
                    self.write_run_file(run_id);
                }
            }
        }
        self.answer_flush_waiters(None);
        self.shed_if_over_budget();
    }

    fn on_persisted(
        &mut self,
        run_id: RunId,
        job_id: u64,
        outcome: Result<Arc<PersistedFile>, StorageError>,
    ) {
        match outcome {
            Ok(file) => {
                self.stats.set_persist_failing(None);
                let written = self.pending.remove(&job_id);
                if let Some(pending) = &written {
                    self.frozen_bytes = self.frozen_bytes.saturating_sub(pending.bytes);
                    self.stats.buffer_bytes.fetch_sub(
                        pending.bytes.min(self.stats.buffer_bytes()),
                        Ordering::Relaxed,
                    );
                    self.stats.memory_freed.notify_waiters();
                    for chunk_id in &pending.chunk_ids {
                        self.busy.remove(chunk_id);
                    }
                }
                match (self.runs.get_mut(&run_id), written) {
                    (Some(run), Some(pending)) => {
                        run.frozen
                            .retain(|chunk| !pending.chunk_ids.contains(&chunk.id()));
                        self.stats.files_persisted.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .bytes_persisted
                            .fetch_add(file.bytes(), Ordering::Relaxed);
                        tracing::debug!(%run_id, seq = file.seq(), rows = file.rows(), bytes = file.bytes(), chunks = pending.chunk_ids.len(), "persisted buffer");
                        run.add_file(file);
                    }
                    // The run was purged while its buffer was written.
                    _ => file.mark_obsolete(),
                }
                self.maybe_compact(run_id);
                self.write_manifest_if_settled(run_id);
                self.answer_flush_waiters(None);
                self.shed_if_over_budget();
            }
            Err(error) => {
                self.stats.persist_failures.fetch_add(1, Ordering::Relaxed);
                self.stats.set_persist_failing(Some(error.to_string()));
                if let Some(pending) = self.pending.get_mut(&job_id) {
                    pending.failed_at = Some(Instant::now());
                }
                self.answer_flush_waiters(Some(error.to_string()));
            }
        }
    }

    /// Forgets a run removed for good: its buffers are released and its
    /// files deleted once no reader holds them.
    fn purge(&mut self, run_id: RunId) {
        self.wake(run_id, Wake::ForRead);
        if self.dormant.contains_key(&run_id) {
            // Its files could not be listed: they stay, unknown to the
            // catalog, until `stepstore gc` removes them.
            self.forget_dormant(run_id);
            tracing::warn!(%run_id, "a purged run's files could not be listed; stepstore gc removes them");
            return;
        }
        let Some(run) = self.runs.remove(&run_id) else {
            return;
        };
        self.shrink_maps();
        let jobs: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.run_id == run_id)
            .map(|(job_id, _)| *job_id)
            .collect();
        let mut released = run.active.bytes();
        for job_id in jobs {
            if let Some(pending) = self.pending.remove(&job_id) {
                self.frozen_bytes = self.frozen_bytes.saturating_sub(pending.bytes);
                released += pending.bytes;
                for chunk_id in &pending.chunk_ids {
                    self.busy.remove(chunk_id);
                }
            }
        }
        // Chunks waiting in memory go now; those in a spill in flight are
        // counted back when it ends; spilled ones hold no memory.
        for chunk in &run.frozen {
            if !self.busy.contains(&chunk.id()) && !chunk.is_spilled() {
                self.frozen_bytes = self.frozen_bytes.saturating_sub(chunk.bytes());
                released += chunk.bytes();
            }
        }
        self.file_wanted.remove(&run_id);
        self.stats
            .buffer_bytes
            .fetch_sub(released.min(self.stats.buffer_bytes()), Ordering::Relaxed);
        self.stats.memory_freed.notify_waiters();
        for file in &run.files {
            file.mark_obsolete();
        }
        let directory = run
            .files
            .first()
            .and_then(|file| file.path().parent().map(std::path::Path::to_path_buf));
        tracing::debug!(%run_id, files = run.files.len(), "run purged");
        let removal = RunRemoval {
            run_id,
            run_dir: directory,
            files: run.files.clone(),
        };
        drop(run);
        match &self.removals {
            Some(removals) => {
                if let Err(unsent) = removals.send(removal) {
                    // No remover (shutting down): removed here.
                    unsent.into_inner().remove();
                }
            }
            None => removal.remove(),
        }
        self.answer_flush_waiters(None);
    }

    fn on_compacted(
        &mut self,
        run_id: RunId,
        replaced: Vec<u64>,
        outcome: Result<Arc<PersistedFile>, StorageError>,
    ) {
        let Some(run) = self.runs.get_mut(&run_id) else {
            // Purged meanwhile: its merged file goes too.
            if let Ok(file) = outcome {
                file.mark_obsolete();
            }
            return;
        };
        run.compacting = false;
        match outcome {
            Ok(file) => {
                run.files.retain(|existing| {
                    let gone = replaced.contains(&existing.seq());
                    if gone {
                        existing.mark_obsolete();
                    }
                    !gone
                });
                self.stats.compactions.fetch_add(1, Ordering::Relaxed);
                self.stats.files_persisted.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes_persisted
                    .fetch_add(file.bytes(), Ordering::Relaxed);
                run.add_file(file);
            }
            Err(_) => {
                run.compaction_retry_at = Some(Instant::now() + RETRY_AFTER);
            }
        }
        self.write_manifest_if_settled(run_id);
    }

    /// Has the persisters write the manifest of a run whose files have
    /// settled (see [`RunState::is_settled`]) and changed since the last
    /// one, so that the next start reads it instead of their footers.
    fn write_manifest_if_settled(&mut self, run_id: RunId) {
        let Some(run) = self.runs.get_mut(&run_id) else {
            return;
        };
        if self.recovering || run.manifest_current || !run.is_settled() {
            return;
        }
        let Some(run_dir) = run
            .files
            .first()
            .and_then(|file| file.path().parent().map(std::path::Path::to_path_buf))
        else {
            return;
        };
        let job = PersistJob::Manifest {
            run_id,
            run_dir,
            files: run.files.clone(),
        };
        if self.jobs.send(job).is_ok() {
            run.manifest_current = true;
        }
    }

    /// Compacts a run's files when it has ended (into one file) or when a
    /// running run has accumulated many.
    fn maybe_compact(&mut self, run_id: RunId) {
        let Some(run) = self.runs.get_mut(&run_id) else {
            return;
        };
        if self.recovering || run.compacting || !run.frozen.is_empty() || run.files.len() < 2 {
            return;
        }
        if run
            .compaction_retry_at
            .is_some_and(|retry_at| Instant::now() < retry_at)
        {
            return;
        }
        let finished = run.ended && run.active.rows() == 0;
        // Files logged before a rewind or a fork are never merged with
        // later ones (their caps differ; a fork reads only the earlier
        // ones); only the files after the newest of them are.
        let files = &run.files[run.first_file_after_boundaries()..];
        if files.len() < 2 || (!finished && files.len() < self.config.compact_after_files) {
            return;
        }
        let inputs = compaction_inputs(
            files,
            finished,
            self.config.flush_rows as u64,
            self.config.compact_after_files * FULL_FILE_FANOUT_FACTOR,
        )
        .to_vec();
        if inputs.len() < 2 {
            return;
        }
        let seq = run.next_seq;
        run.next_seq += 1;
        run.compacting = true;
        let job = PersistJob::Compact {
            run_id,
            experiment_id: run.experiment_id,
            seq,
            inputs,
            reply: self.replies.clone(),
        };
        if self.jobs.send(job).is_err() {
            run.compacting = false;
        }
    }

    /// Once buffers fill [`SHED_FROM_PERCENT`] of the memory budget, keeps
    /// this shard's share of frozen chunks on their way out of memory:
    /// freezes its largest active buffers, largest first, until a quarter
    /// of its share of the budget is frozen (with many small runs no
    /// single buffer is large, so several go at once). A run with few
    /// unwritten points is spilled, together with the others
    /// ([`SPILL_BELOW_ROWS`]); a larger one is written to its own file.
    /// Memory only comes back once a chunk is written or spilled, so
    /// freezing more than the persisters can take would only make smaller
    /// writes.
    fn shed_if_over_budget(&mut self) {
        let budget = self.config.buffer_budget_bytes;
        if self.stats.buffer_bytes.load(Ordering::Relaxed) <= budget / 100 * SHED_FROM_PERCENT {
            return;
        }
        let in_flight_share = (budget / (4 * self.config.shards.max(1) as u64)).max(MIN_SHED_BYTES);
        if self.frozen_bytes >= in_flight_share {
            return;
        }
        let target = in_flight_share - self.frozen_bytes;
        let mut candidates: Vec<(u64, RunId)> = self
            .runs
            .iter()
            .map(|(run_id, run)| (run.active.bytes(), *run_id))
            .filter(|(bytes, _)| *bytes > 0)
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let mut freed = 0;
        let mut written = 0;
        let mut to_spill = Vec::new();
        for (bytes, run_id) in candidates {
            if freed >= target {
                break;
            }
            freed += bytes;
            if self.spills(run_id) {
                if let Some(chunk) = self.freeze_only(run_id) {
                    to_spill.push((run_id, chunk));
                }
            } else {
                self.write_run_file(run_id);
                written += 1;
            }
        }
        let spilled = to_spill.len();
        if spilled > 0 {
            self.submit_spill(to_spill);
        }
        if spilled + written > 0 {
            tracing::debug!(
                shard = self.index,
                spilled,
                written,
                freed,
                "over the buffer budget: spilling or persisting the largest buffers"
            );
        }
    }

    /// Whether the run's buffer goes to a spill file under memory
    /// pressure rather than to a file of its own.
    fn spills(&self, run_id: RunId) -> bool {
        let Some(run) = self.runs.get(&run_id) else {
            return false;
        };
        let unwritten: usize =
            run.active.rows() + run.frozen.iter().map(|chunk| chunk.rows()).sum::<usize>();
        self.spill.is_some()
            && unwritten < SPILL_BELOW_ROWS
            && run.frozen.len() < MAX_SPILLED_CHUNKS
            && !self.file_wanted.contains(&run_id)
    }

    /// Answers `FlushAll` waiters once nothing is pending (or with the
    /// failure that stopped a write).
    fn answer_flush_waiters(&mut self, failure: Option<String>) {
        if self.flush_waiters.is_empty() {
            return;
        }
        let result = match failure {
            Some(message) => Err(message),
            None if self.pending.is_empty()
                && self.spilling.is_empty()
                && self.file_wanted.is_empty() =>
            {
                Ok(())
            }
            None => return,
        };
        for waiter in self.flush_waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_runs_compact_their_newest_files_by_size_tier() {
        // Fifteen fresh buffers after one large merged file: only they merge.
        let mut rows = vec![16_000_000];
        rows.extend([1_000_000; 15]);
        assert_eq!(tiered_suffix_start(&rows), 1);
        // Once the newer files together outweigh an older one, it joins.
        assert_eq!(tiered_suffix_start(&[12, 5, 1, 1, 1, 1, 1]), 1);
        assert_eq!(tiered_suffix_start(&[10, 5, 1, 1, 1, 1, 1]), 0);
        // At least a few files always merge, whatever their sizes.
        assert_eq!(tiered_suffix_start(&[100, 90, 1, 1, 1]), 1);
        assert_eq!(tiered_suffix_start(&[7, 7]), 0);
        assert_eq!(tiered_suffix_start(&[]), 0);
    }

    #[test]
    fn full_size_files_wait_for_a_larger_tier_while_small_ones_merge() {
        let full = 1_000;
        // Sixteen full files: not merged yet (fan-out 64).
        assert_eq!(running_compaction_start(&[full; 16], full, 64), 16);
        // Small files after them merge on their own once there are a few.
        let mut rows = vec![full; 16];
        rows.extend([10, 10, 10]);
        assert_eq!(running_compaction_start(&rows, full, 64), 19);
        rows.push(10);
        assert_eq!(running_compaction_start(&rows, full, 64), 16);
        // Small files before a full one wait (the merge must be a suffix).
        let mut rows = vec![10; 6];
        rows.push(full);
        assert_eq!(running_compaction_start(&rows, full, 64), 7);
        // At the fan-out, the full files merge.
        assert_eq!(running_compaction_start(&[full; 64], full, 64), 0);
        // Only small files: the size tiers as before.
        assert_eq!(
            running_compaction_start(&[12, 5, 1, 1, 1, 1, 1], full, 64),
            1
        );
    }

    #[test]
    fn a_fast_run_rewrites_few_points_while_it_logs() {
        // 300 full-size flushes with compaction checked at every flush.
        let (mut files, mut rewritten) = (Vec::<u64>::new(), 0u64);
        for _ in 0..300 {
            files.push(1);
            if files.len() >= 16 {
                let start = running_compaction_start(&files, 1, 64);
                if start < files.len() {
                    let merged: u64 = files[start..].iter().sum();
                    rewritten += merged;
                    files.truncate(start);
                    files.push(merged);
                }
            }
            assert!(files.len() <= 64 + 64);
        }
        // The first 64 flushes are rewritten only once 64 have piled up.
        assert!(rewritten <= 300 * 2, "{rewritten} rows rewritten for 300");
    }

    #[test]
    fn a_long_run_rewrites_each_point_a_few_times_not_once_per_compaction() {
        // Simulate 300 flushes of one size with compaction at 16 files.
        let (mut files, mut rewritten) = (Vec::<u64>::new(), 0u64);
        for _ in 0..300 {
            files.push(1);
            if files.len() >= 16 {
                let start = tiered_suffix_start(&files);
                let merged: u64 = files[start..].iter().sum();
                rewritten += merged;
                files.truncate(start);
                files.push(merged);
            }
            assert!(files.len() < 16 + MIN_RUNNING_COMPACTION_INPUTS);
        }
        // Merging everything each time would rewrite about 300 * 300 / 30.
        assert!(rewritten < 300 * 4, "{rewritten} rows rewritten for 300");
    }
}
