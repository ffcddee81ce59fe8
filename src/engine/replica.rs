//! Read replicas: `stepstore serve --read-only --store …` serves every read
//! API from the object store a writer uploads to, with no WAL of its own.
//! At start it takes the store's newest catalog snapshot and every metric
//! file the store lists; then, every `--refresh-secs`, a thread here takes
//! a newer catalog snapshot when there is one and applies the changes of
//! the listing run by run (new files, compaction outputs replacing their
//! inputs, runs purged), reusing the files it has open. Writes are refused
//! with an error naming the writer ([`super::EngineError::Replica`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::maintenance::MaintenanceHandle;
use super::recovery::{self, CATALOG_DIR};
use super::store_start;
use super::{Engine, EngineError};
use crate::catalog::continuity::ContinuityState;
use crate::catalog::snapshot;
use crate::ingest::LoadedRun;
use crate::model::{ExperimentId, RunId};
use crate::storage::{FileMetadata, MetricsLayout, PersistedFile};
use crate::wal::Lsn;

/// How a replica runs.
#[derive(Clone, Debug)]
pub struct ReplicaSettings {
    /// How often it looks for new catalog snapshots and files
    /// (`--refresh-secs`).
    pub refresh: Duration,
    /// Where writes go, named in the error a write gets (`--writer-url`).
    pub writer: Option<String>,
}

/// What a replica has done, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ReplicaStats {
    refreshes: AtomicU64,
    failed_refreshes: AtomicU64,
    /// Milliseconds since the epoch of the last refresh that succeeded.
    last_refresh_ms: AtomicU64,
    catalog_updates: AtomicU64,
    run_updates: AtomicU64,
}

/// A replica's figures at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaSnapshot {
    /// Refreshes that succeeded since start.
    pub refreshes: u64,
    /// Refreshes that failed (the store did not answer; retried).
    pub failed_refreshes: u64,
    /// Seconds since the last refresh that succeeded.
    pub staleness_secs: u64,
    /// Newer catalog snapshots taken since start.
    pub catalog_updates: u64,
    /// Runs whose files changed, applied since start.
    pub run_updates: u64,
}

impl ReplicaStats {
    pub(crate) fn snapshot(&self) -> ReplicaSnapshot {
        let last = self.last_refresh_ms.load(Ordering::Relaxed);
        ReplicaSnapshot {
            refreshes: self.refreshes.load(Ordering::Relaxed),
            failed_refreshes: self.failed_refreshes.load(Ordering::Relaxed),
            staleness_secs: crate::model::now_millis()
                .saturating_sub(last as i64)
                .max(0) as u64
                / 1000,
            catalog_updates: self.catalog_updates.load(Ordering::Relaxed),
            run_updates: self.run_updates.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn started(&self) {
        self.last_refresh_ms
            .store(crate::model::now_millis().max(0) as u64, Ordering::Relaxed);
    }
}

/// The files of a run as the replica last applied them.
#[derive(Debug)]
struct KnownRun {
    /// The store's files of the run: sequence number to length.
    listed: BTreeMap<u64, u64>,
    /// Those it has open, with their metadata.
    files: BTreeMap<u64, (Arc<PersistedFile>, FileMetadata)>,
    /// The run's rewinds and fork points it was put together with (from
    /// the catalog).
    continuity: RunContinuity,
}

/// A run's rewinds `(lsn, step)` and the LSNs of the forks made from it.
type RunContinuity = (Vec<(Lsn, i64)>, Vec<Lsn>);

/// `run_id`'s rewinds in `continuity`, and `forks` (its fork points).
fn run_continuity(continuity: &ContinuityState, run_id: RunId, forks: &[Lsn]) -> RunContinuity {
    (
        continuity
            .rewinds(run_id)
            .iter()
            .map(|rewind| (rewind.lsn, rewind.step))
            .collect(),
        forks.to_vec(),
    )
}

/// What the replica has applied, run by run.
#[derive(Debug, Default)]
pub(crate) struct ReplicaFiles {
    runs: Mutex<HashMap<RunId, (ExperimentId, KnownRun)>>,
}

impl ReplicaFiles {
    /// What start loaded: `runs` (opened from `listing`, the store's
    /// files by path under the tree, when the store answered).
    pub(crate) fn from_start(
        runs: &[LoadedRun],
        listing: Option<&HashMap<PathBuf, u64>>,
        continuity: &ContinuityState,
    ) -> Self {
        let mut listed: HashMap<RunId, BTreeMap<u64, u64>> = HashMap::new();
        for (relative, bytes) in listing.into_iter().flatten() {
            if let Some((_, run_id, seq)) = MetricsLayout::parse_relative(relative) {
                listed.entry(run_id).or_default().insert(seq, *bytes);
            }
        }
        let mut known = HashMap::new();
        for run in runs {
            let mut files = BTreeMap::new();
            for file in &run.files {
                if let Ok(metadata) = file.metadata() {
                    files.insert(file.seq(), (Arc::clone(file), metadata));
                }
            }
            known.insert(
                run.run_id,
                (
                    run.experiment_id,
                    KnownRun {
                        listed: listed.remove(&run.run_id).unwrap_or_default(),
                        files,
                        continuity: run_continuity(continuity, run.run_id, &run.fork_points),
                    },
                ),
            );
        }
        ReplicaFiles {
            runs: Mutex::new(known),
        }
    }
}

/// Starts the refresh thread: a refresh every `every`.
pub(crate) fn start(
    engine: Weak<Engine>,
    every: Duration,
) -> Result<MaintenanceHandle, EngineError> {
    super::maintenance::start_periodic("stepstore-replica", engine, every, |engine| {
        engine.refresh_replica()
    })
}

impl Engine {
    /// Takes a newer catalog snapshot and the changes of the store's
    /// listing (a replica's refresh); failures are counted and logged, and
    /// the next refresh tries again.
    pub fn refresh_replica(&self) {
        let Some(replica) = self.replica.as_ref() else {
            return;
        };
        let started = Instant::now();
        match self.refresh_once() {
            Ok((catalog, runs)) => {
                replica.stats.refreshes.fetch_add(1, Ordering::Relaxed);
                replica.stats.started();
                if catalog || runs > 0 {
                    tracing::info!(
                        catalog_updated = catalog,
                        runs_updated = runs,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "replica refreshed from the object store"
                    );
                }
            }
            Err(error) => {
                replica
                    .stats
                    .failed_refreshes
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "a replica refresh failed; retrying at the next one");
            }
        }
    }

    /// One refresh: whether the catalog was replaced, and how many runs
    /// changed.
    fn refresh_once(&self) -> Result<(bool, usize), EngineError> {
        let Some(replica) = self.replica.as_ref() else {
            return Ok((false, 0));
        };
        let Some(cache) = self.files_shared.cache() else {
            return Ok((false, 0));
        };
        let store = cache.store().clone();
        let catalog_dir = self.config.data_dir.join(CATALOG_DIR);
        let current = self.catalog.read().applied_lsn;
        let catalog_updated = match store_start::fetch_newer_catalog(&store, &catalog_dir, current)?
        {
            Some(lsn) => {
                let loaded = snapshot::load_latest(&catalog_dir)?.ok_or_else(|| {
                    EngineError::InvalidRequest(format!(
                        "the catalog snapshot at {lsn} went missing after its download"
                    ))
                })?;
                self.catalog
                    .rebuild_with(|_| Ok::<_, EngineError>(Some(loaded.state)))?;
                replica
                    .stats
                    .catalog_updates
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        };
        let listing = store.list_metric_files()?;
        let mut listed: HashMap<RunId, (ExperimentId, BTreeMap<u64, u64>)> = HashMap::new();
        for (relative, bytes) in &listing {
            if let Some((experiment_id, run_id, seq)) = MetricsLayout::parse_relative(relative) {
                listed
                    .entry(run_id)
                    .or_insert_with(|| (experiment_id, BTreeMap::new()))
                    .1
                    .insert(seq, *bytes);
            }
        }
        let state = self.catalog.read();
        let continuity = state.continuity().clone();
        drop(state);
        let mut fork_points: HashMap<RunId, Vec<Lsn>> = HashMap::new();
        for (_, fork) in continuity.all_forks() {
            fork_points.entry(fork.parent).or_default().push(fork.lsn);
        }
        let layout = &replica.layout;
        let mut known = replica
            .files
            .runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut changed = 0;
        for (run_id, (experiment_id, files)) in listed.iter() {
            let previous = known.get(run_id);
            let forks = fork_points.remove(run_id).unwrap_or_default();
            let run_continuity = run_continuity(&continuity, *run_id, &forks);
            if previous.is_some_and(|(_, previous)| {
                previous.listed == *files && previous.continuity == run_continuity
            }) {
                continue;
            }
            let mut opened = Vec::with_capacity(files.len());
            for (&seq, &bytes) in files {
                let reused = previous
                    .and_then(|(_, previous)| previous.files.get(&seq))
                    .filter(|(file, _)| file.bytes() == bytes)
                    .cloned();
                let entry = match reused {
                    Some(entry) => entry,
                    None => {
                        let path = layout.file_path(*experiment_id, *run_id, seq);
                        let (file, metadata) = layout.open_stored_file(seq, &path, bytes)?;
                        (Arc::new(file), metadata)
                    }
                };
                opened.push(entry);
            }
            let kept: BTreeMap<u64, (Arc<PersistedFile>, FileMetadata)> = opened
                .iter()
                .map(|(file, metadata)| (file.seq(), (Arc::clone(file), metadata.clone())))
                .collect();
            let replaced = recovery::replaced_files(&opened);
            let assembled = recovery::assemble_run(
                *experiment_id,
                *run_id,
                opened,
                &replaced,
                &continuity,
                forks,
            );
            self.ingester.replace_run(assembled.run);
            known.insert(
                *run_id,
                (
                    *experiment_id,
                    KnownRun {
                        listed: files.clone(),
                        files: kept,
                        continuity: run_continuity,
                    },
                ),
            );
            changed += 1;
        }
        let gone: Vec<RunId> = known
            .keys()
            .filter(|run_id| !listed.contains_key(run_id))
            .copied()
            .collect();
        for run_id in gone {
            if let Some((_, run)) = known.remove(&run_id) {
                for (file, _) in run.files.values() {
                    // Purged by the writer: nothing of it is kept here.
                    file.forget_cached();
                }
            }
            self.ingester.drop_run(run_id);
            changed += 1;
        }
        replica
            .stats
            .run_updates
            .fetch_add(changed as u64, Ordering::Relaxed);
        Ok((catalog_updated, changed))
    }
}

/// A replica's state, owned by the engine.
pub(crate) struct Replica {
    pub(crate) settings: ReplicaSettings,
    /// The metrics tree the stored files are opened in.
    pub(crate) layout: MetricsLayout,
    pub(crate) files: ReplicaFiles,
    pub(crate) stats: ReplicaStats,
}
