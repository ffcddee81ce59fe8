//! Start-up: lock the data directory, load the metric files and the latest
//! catalog snapshot, then replay the WAL on top so that every acknowledged
//! write is back exactly once.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::EngineError;
use super::run_files;
use super::wal_record::WalRecord;
use crate::catalog::continuity::ContinuityState;
use crate::catalog::receipts::{IngestReceipts, ReceiptsSnapshot};
use crate::catalog::{Catalog, CatalogMutation, CatalogState, snapshot};
use crate::ingest::rewinds::RewindMarks;
use crate::ingest::{DormantRun, Ingester, KeyNames, LoadedRun};
use crate::model::MetricBatch;
use crate::model::{KeySummary, RunId, now_millis};
use crate::storage::file_meta::{FileMetadata, normalise_ranges, ranges_contain};
use crate::storage::layout::RunDirectory;
use crate::storage::run_manifest;
use crate::storage::{MetricsLayout, PersistedFile, StorageError};
use crate::wal::{self, Lsn};

/// Names of the data directory's parts.
pub(crate) const WAL_DIR: &str = "wal";
pub(crate) const CATALOG_DIR: &str = "catalog";
pub(crate) const METRICS_DIR: &str = "metrics";
pub(crate) const AUTH_DIR: &str = "auth";
/// The local cache of the object store, unless `--cache-dir` says
/// otherwise.
pub(crate) const CACHE_DIR: &str = "cache";
/// Where buffers of many runs are spilled together under memory pressure
/// ([`crate::storage::spill`]); emptied at start.
pub(crate) const SPILL_DIR: &str = "spill";
/// Where damaged metric files are moved at start.
pub(crate) const QUARANTINE_DIR: &str = "quarantine";
const LOCK_FILE: &str = "LOCK";
/// Takes the exclusive lock on the data directory for this process.
pub(crate) fn lock_data_dir(data_dir: &Path) -> Result<File, EngineError> {
    crate::durable_fs::create_dir_synced(data_dir)
        .map_err(|source| EngineError::io("create", data_dir, source))?;
    let path = data_dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| EngineError::io("open", &path, source))?;
    file.try_lock()
        .map_err(|_| EngineError::DataDirInUse(data_dir.display().to_string()))?;
    Ok(file)
}

/// The oldest LSN the WAL in `wal_dir` still holds (`Lsn::MAX` when it
/// holds none).
pub(crate) fn wal_floor(wal_dir: &Path) -> Result<Lsn, EngineError> {
    if !wal_dir.exists() {
        return Ok(Lsn::MAX);
    }
    Ok(wal::segment::list_segments(wal_dir)?
        .iter()
        .map(|segment| segment.first_lsn)
        .min()
        .unwrap_or(Lsn::MAX))
}

/// The metric files found on disk, per run.
#[derive(Default)]
pub(crate) struct LoadedFiles {
    pub(crate) runs: Vec<LoadedRun>,
    /// Per run: the WAL ranges its files cover.
    pub(crate) covered: HashMap<RunId, Vec<(Lsn, Lsn)>>,
    /// Highest LSN any file covers.
    pub(crate) max_lsn: Lsn,
    /// Damaged files moved to the quarantine directory.
    pub(crate) quarantined: u64,
    /// Runs whose files were taken from their manifest, no footer read.
    pub(crate) from_manifests: u64,
    /// Settled runs held by their summaries only, from their manifests
    /// (not yet in the dormant-run log).
    pub(crate) dormant: Vec<(RunId, DormantRun)>,
    /// Settled runs held by their summaries only, as the dormant-run log
    /// recorded them (their directories were not opened).
    pub(crate) dormant_logged: Vec<(RunId, DormantRun)>,
    /// The key names of dormant runs, each kept once.
    pub(crate) dormant_names: KeyNames,
}

/// What a start needs to hold finished runs dormant.
pub(crate) struct DormantStart<'a> {
    /// Whether the catalog has the run ended: only ended runs go dormant.
    pub(crate) ended: &'a dyn Fn(RunId) -> bool,
    /// The runs the dormant-run log holds dormant.
    pub(crate) logged: HashMap<RunId, DormantRun>,
    /// Their key names.
    pub(crate) names: KeyNames,
}

/// Whether an error opening a metric file means the file is damaged (as
/// opposed to the file system failing, which stops the start).
pub(super) fn is_damage(error: &StorageError) -> bool {
    match error {
        StorageError::Parquet { .. } | StorageError::Metadata { .. } | StorageError::Arrow(_) => {
            true
        }
        StorageError::Panicked { .. } | StorageError::Spill { .. } => false,
        StorageError::Io { source, .. } => matches!(
            source.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
        ),
    }
}

/// Moves a damaged file under `root` (the metrics tree, or the data
/// directory for a catalog snapshot) to the same place under `quarantine`
/// (a numbered suffix when that name is taken), syncing both directories.
/// Returns the new path.
fn quarantine(root: &Path, quarantine: &Path, path: &Path) -> Result<PathBuf, EngineError> {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let mut target = quarantine.join(relative);
    let mut attempt = 1;
    while target.exists() {
        target = quarantine.join(format!("{}.{attempt}", relative.display()));
        attempt += 1;
    }
    if let Some(parent) = target.parent() {
        crate::durable_fs::create_dir_synced(parent)
            .map_err(|source| EngineError::io("create", parent, source))?;
    }
    fs::rename(path, &target).map_err(|source| EngineError::io("quarantine", path, source))?;
    for dir in [path.parent(), target.parent()].into_iter().flatten() {
        File::open(dir)
            .and_then(|handle| handle.sync_all())
            .map_err(|source| EngineError::io("sync directory", dir, source))?;
    }
    Ok(target)
}

/// Opens every metric file, removing those a compaction already replaced:
/// a run whose manifest names exactly its files is taken from it, the
/// others' footers are read. With `dormant`, a finished run is held
/// dormant: as the dormant-run log has it (its directory not opened), else
/// from its manifest. A damaged file (its footer or stepstore's
/// metadata cannot be read) does not stop the start: it is moved to
/// `quarantine_dir`, and the run's points still in the WAL come back
/// through replay, since no file covers them any more. So that such damage
/// is found at start while the WAL can still make up for it, a manifest is
/// trusted only for runs whose files hold no record at or past
/// `wal_floor`, the oldest LSN the WAL still has.
pub(crate) fn load_metric_files(
    layout: &MetricsLayout,
    quarantine_dir: &Path,
    continuity: &ContinuityState,
    stored: &[(PathBuf, u64)],
    wal_floor: Lsn,
    dormant: Option<DormantStart<'_>>,
) -> Result<LoadedFiles, EngineError> {
    let mut fork_points: HashMap<RunId, Vec<Lsn>> = HashMap::new();
    for (_, fork) in continuity.all_forks() {
        fork_points.entry(fork.parent).or_default().push(fork.lsn);
    }
    let may_stay_dormant =
        |run_id: RunId| continuity.rewinds(run_id).is_empty() && !fork_points.contains_key(&run_id);
    let mut loaded = LoadedFiles::default();
    let mut ended: &dyn Fn(RunId) -> bool = &|_| false;
    let directories = match dormant {
        Some(DormantStart {
            ended: is_ended,
            mut logged,
            names,
        }) if stored.is_empty() => {
            ended = is_ended;
            loaded.dormant_names = names;
            let mut directories = Vec::new();
            for (experiment_id, run_id) in layout.list_runs()? {
                if let Some(run) = logged.remove(&run_id)
                    && run.experiment_id() == experiment_id
                    && run.max_lsn() < wal_floor
                    && ended(run_id)
                    && may_stay_dormant(run_id)
                {
                    loaded.max_lsn = loaded.max_lsn.max(run.max_lsn());
                    loaded.dormant_logged.push((run_id, run));
                    continue;
                }
                directories.push(layout.scan_run(experiment_id, run_id)?);
            }
            directories
        }
        _ => layout.scan_with_stored(stored)?,
    };
    // One thread: the runs' state outlives the start, and jemalloc does not
    // purge the arenas of threads that have ended (loading on two threads
    // made the same 100,000 runs take 100 MiB more resident memory).
    let loading = Loading {
        layout,
        quarantine_dir,
        continuity,
        fork_points: &fork_points,
        wal_floor,
    };
    load_directories(
        &loading,
        &directories,
        &|run_id| ended(run_id) && may_stay_dormant(run_id),
        &mut loaded,
    )?;
    Ok(loaded)
}

/// What loading run directories at start goes by.
struct Loading<'a> {
    layout: &'a MetricsLayout,
    quarantine_dir: &'a Path,
    continuity: &'a ContinuityState,
    /// The LSNs of the forks made from each run that has some.
    fork_points: &'a HashMap<RunId, Vec<Lsn>>,
    /// The oldest LSN the WAL still has.
    wal_floor: Lsn,
}

/// Loads the runs of `directories` (see [`load_metric_files`]).
fn load_directories(
    loading: &Loading<'_>,
    directories: &[RunDirectory],
    may_go_dormant: &dyn Fn(RunId) -> bool,
    loaded: &mut LoadedFiles,
) -> Result<(), EngineError> {
    let Loading {
        layout,
        quarantine_dir,
        continuity,
        fork_points,
        wal_floor,
    } = *loading;
    for directory in directories {
        let run_dir = layout.run_dir(directory.experiment_id, directory.run_id);
        if directory.files.is_empty() {
            // Left by a gc (its files went while it was removed): nothing
            // to load.
            run_manifest::remove(&run_dir);
            let _ = std::fs::remove_dir(&run_dir);
            continue;
        }
        let manifest = run_files::current_manifest(&run_dir, directory, wal_floor);
        if let Some(manifest) = &manifest
            && may_go_dormant(directory.run_id)
            && let Some(dormant) =
                run_files::dormant_run(directory.experiment_id, manifest, &mut loaded.dormant_names)
        {
            loaded.from_manifests += 1;
            loaded.max_lsn = loaded.max_lsn.max(run_files::max_lsn(manifest));
            loaded.dormant.push((directory.run_id, dormant));
            continue;
        }
        let described =
            manifest.and_then(|manifest| run_files::described_files(layout, directory, manifest));
        let manifest_current = described.is_some();
        let opened = match described {
            Some(opened) => {
                loaded.from_manifests += 1;
                opened
            }
            None => open_run_files(layout, quarantine_dir, &run_dir, directory, loaded)?,
        };
        let replaced = replaced_files(&opened);
        let mut assembled = assemble_run(
            directory.experiment_id,
            directory.run_id,
            opened,
            &replaced,
            continuity,
            fork_points
                .get(&directory.run_id)
                .cloned()
                .unwrap_or_default(),
        );
        assembled.run.manifest_current = manifest_current;
        for file in &assembled.replaced {
            tracing::info!(path = %file.path().display(), "removing a file that compaction replaced");
            file.mark_obsolete();
        }
        if let Some(&(_, end)) = assembled.ranges.last() {
            loaded.max_lsn = loaded.max_lsn.max(end);
        }
        loaded.covered.insert(directory.run_id, assembled.ranges);
        loaded.runs.push(assembled.run);
    }
    Ok(())
}

/// Opens every file of a run, reading its footer. Damaged files are moved
/// to quarantine (and counted in `loaded`), unless a compaction output
/// replaced them, when they are removed.
fn open_run_files(
    layout: &MetricsLayout,
    quarantine_dir: &Path,
    run_dir: &Path,
    directory: &RunDirectory,
    loaded: &mut LoadedFiles,
) -> Result<Vec<(Arc<PersistedFile>, FileMetadata)>, EngineError> {
    let mut opened = Vec::with_capacity(directory.files.len());
    let mut damaged = Vec::new();
    for (seq, path) in &directory.files {
        if let Some(&bytes) = directory.stored_only.get(seq) {
            // Only in the object store: a failure to read it stops
            // the start (a store that fails now may answer on the
            // next try; nothing is moved aside for it).
            let (file, metadata) = super::store_start::open_stored(layout, *seq, path, bytes)?;
            opened.push((Arc::new(file), metadata));
            continue;
        }
        match layout.open_file(*seq, path) {
            Ok((file, metadata)) => opened.push((Arc::new(file), metadata)),
            Err(error) if is_damage(&error) => damaged.push((*seq, path, error)),
            Err(error) => return Err(error.into()),
        }
    }
    let replaced = replaced_files(&opened);
    if damaged.iter().any(|(seq, _, _)| !replaced.contains(seq)) {
        // A file goes to quarantine, and its sequence number may be
        // given again: a manifest naming it would describe another file.
        run_manifest::remove(run_dir);
    }
    for (seq, path, error) in damaged {
        if replaced.contains(&seq) {
            // A compaction output holds its points: nothing is lost.
            tracing::warn!(path = %path.display(), %error, "removing a damaged metric file that compaction already replaced");
            fs::remove_file(path).map_err(|source| EngineError::io("remove", path, source))?;
            continue;
        }
        let moved = quarantine(layout.root(), quarantine_dir, path)?;
        loaded.quarantined += 1;
        tracing::error!(
            path = %path.display(),
            moved_to = %moved.display(),
            run_id = %directory.run_id,
            %error,
            "a damaged metric file was moved to quarantine; the run's points still in the WAL are rebuilt, the rest of that file is missing from the run"
        );
    }
    Ok(opened)
}

/// Folds the summary of a newer file into a key's summary.
fn merge_into(summaries: &mut BTreeMap<String, KeySummary>, key: String, summary: KeySummary) {
    summaries
        .entry(key)
        .and_modify(|existing| existing.merge_newer(&summary))
        .or_insert(summary);
}

/// The sequence numbers of a run's files that others replace: the inputs
/// a compaction output names, and compaction outputs made redundant by a
/// newer output that claims every input they claim (a compaction that was
/// done again because its first output could not be registered, or a
/// crash between the two): both hold the same points, so only the newer
/// may stay, or the run would show them twice.
pub(crate) fn replaced_files(opened: &[(Arc<PersistedFile>, FileMetadata)]) -> Vec<u64> {
    let outputs: Vec<(u64, &[u64])> = opened
        .iter()
        .filter(|(_, metadata)| !metadata.compacted_from.is_empty())
        .map(|(file, metadata)| (file.seq(), metadata.compacted_from.as_slice()))
        .collect();
    let mut replaced: Vec<u64> = outputs
        .iter()
        .flat_map(|(_, claims)| claims.iter().copied())
        .collect();
    replaced.extend(
        outputs
            .iter()
            .filter(|(seq, claims)| {
                outputs.iter().any(|(newer, newer_claims)| {
                    newer > seq && claims.iter().all(|input| newer_claims.contains(input))
                })
            })
            .map(|(seq, _)| *seq),
    );
    replaced
}

/// A run as its files describe it.
pub(crate) struct AssembledRun {
    /// The run, for the ingester.
    pub(crate) run: LoadedRun,
    /// The WAL ranges its files cover, normalised.
    pub(crate) ranges: Vec<(Lsn, Lsn)>,
    /// Its files that `replaced` named, left out of the run.
    pub(crate) replaced: Vec<Arc<PersistedFile>>,
}

/// Puts a run together from its opened files (in sequence order): the
/// files `replaced` names are left out, the key summaries are merged from
/// the others' footers (and, after the newest rewind in `continuity`,
/// kept apart too).
pub(crate) fn assemble_run(
    experiment_id: crate::model::ExperimentId,
    run_id: RunId,
    opened: Vec<(Arc<PersistedFile>, FileMetadata)>,
    replaced: &[u64],
    continuity: &ContinuityState,
    fork_points: Vec<Lsn>,
) -> AssembledRun {
    let mut files = Vec::new();
    let mut left_out = Vec::new();
    let mut summaries: BTreeMap<String, KeySummary> = BTreeMap::new();
    let mut since_rewind: BTreeMap<String, KeySummary> = BTreeMap::new();
    let mut ranges = Vec::new();
    let rewinds = RewindMarks::new(
        continuity
            .rewinds(run_id)
            .iter()
            .map(|rewind| (rewind.lsn, rewind.step))
            .collect(),
    );
    for (file, metadata) in opened {
        if replaced.contains(&file.seq()) {
            left_out.push(file);
            continue;
        }
        let after_rewinds = rewinds
            .last_lsn()
            .is_some_and(|last| file.newest_lsn() > last);
        for (key, summary) in metadata.keys {
            if after_rewinds {
                merge_into(&mut since_rewind, key.clone(), summary);
            }
            merge_into(&mut summaries, key, summary);
        }
        ranges.extend(metadata.lsn_ranges);
        files.push(file);
    }
    AssembledRun {
        run: LoadedRun {
            run_id,
            experiment_id,
            files,
            summaries: summaries.into_iter().collect(),
            rewinds,
            since_rewind: since_rewind.into_iter().collect(),
            fork_points,
            manifest_current: false,
        },
        ranges: normalise_ranges(ranges),
        replaced: left_out,
    }
}

/// The newest catalog snapshot as loaded at start.
pub(crate) struct LoadedCatalog {
    pub(crate) state: CatalogState,
    pub(crate) receipts: ReceiptsSnapshot,
    /// Damaged snapshot copies moved to quarantine.
    pub(crate) quarantined: u64,
}

/// Loads the newest catalog snapshot, or a fresh catalog. A damaged copy
/// of the snapshot (the other copy was good) is moved to `quarantine_dir`
/// and counted.
pub(crate) fn load_catalog(
    data_dir: &Path,
    quarantine_dir: &Path,
    artifact_root: &str,
) -> Result<LoadedCatalog, EngineError> {
    let Some(loaded) = snapshot::load_latest(&data_dir.join(CATALOG_DIR))? else {
        return Ok(LoadedCatalog {
            state: CatalogState::new(artifact_root, now_millis()),
            receipts: ReceiptsSnapshot::default(),
            quarantined: 0,
        });
    };
    let mut quarantined = 0;
    for (path, problem) in loaded.damaged {
        let moved = quarantine(data_dir, quarantine_dir, &path)?;
        quarantined += 1;
        tracing::error!(
            path = %path.display(),
            moved_to = %moved.display(),
            %problem,
            "a damaged copy of the catalog snapshot was moved to quarantine; its other copy was used"
        );
    }
    Ok(LoadedCatalog {
        state: loaded.state,
        receipts: loaded.receipts,
        quarantined,
    })
}

/// What replay did.
pub(crate) struct ReplayOutcome {
    pub(crate) last_lsn: Lsn,
    pub(crate) catalog_records: u64,
    pub(crate) metric_records: u64,
    pub(crate) skipped_metric_records: u64,
    pub(crate) truncated_bytes: u64,
}

/// Replays the WAL: catalog mutations newer than the snapshot are applied,
/// metric batches not covered by a file go back into the buffers, and the
/// receipts of keyed requests back into the receipts window.
pub(crate) fn replay_wal(
    wal_dir: &Path,
    catalog: &Catalog,
    receipts: &IngestReceipts,
    ingester: &Ingester,
    covered: &HashMap<RunId, Vec<(Lsn, Lsn)>>,
) -> Result<ReplayOutcome, EngineError> {
    crate::durable_fs::create_dir_synced(wal_dir)
        .map_err(|source| EngineError::io("create", wal_dir, source))?;
    let mut outcome = ReplayOutcome {
        last_lsn: 0,
        catalog_records: 0,
        metric_records: 0,
        skipped_metric_records: 0,
        truncated_bytes: 0,
    };
    let summary = wal::replay(wal_dir, |lsn, body| {
        match WalRecord::decode(lsn, body)? {
            WalRecord::Catalog(mutation) => {
                catalog.replay(lsn, &mutation);
                outcome.catalog_records += 1;
                // Every rewind still in the WAL goes to its shard, in WAL
                // order with the points around it (the shard ignores one
                // it knew from the snapshot).
                if let CatalogMutation::RewindRun { run_id, step, .. } = mutation
                    && let Some(experiment_id) =
                        catalog.read().run(run_id).map(|run| run.experiment_id)
                {
                    ingester.rewind(run_id, experiment_id, lsn, step);
                }
                // So does every fork, to its parent's shard, and every
                // purge.
                match mutation {
                    CatalogMutation::ForkRun { parent, .. } => ingester.fork_point(parent, lsn),
                    CatalogMutation::Purge(purge) => {
                        for run_id in purge.runs {
                            ingester.purge(run_id);
                        }
                    }
                    _ => {}
                }
            }
            WalRecord::Metrics(runs) => {
                replay_metrics(lsn, runs, catalog, ingester, covered, &mut outcome);
            }
            WalRecord::KeyedMetrics(receipt, runs) => {
                // Remembered even when its points are in files already.
                receipts.replay(receipt, lsn);
                replay_metrics(lsn, runs, catalog, ingester, covered, &mut outcome);
            }
        }
        Ok(())
    })?;
    outcome.last_lsn = summary.last_lsn;
    outcome.truncated_bytes = summary.truncated_bytes;
    Ok(outcome)
}

/// Puts the batches of metric record `lsn` that no file covers back into
/// the buffers.
fn replay_metrics(
    lsn: Lsn,
    runs: Vec<(RunId, MetricBatch)>,
    catalog: &Catalog,
    ingester: &Ingester,
    covered: &HashMap<RunId, Vec<(Lsn, Lsn)>>,
    outcome: &mut ReplayOutcome,
) {
    for (run_id, batch) in runs {
        // Coverage is per run: a record of several runs may be in one
        // run's files and still only in another's WAL.
        let persisted = covered
            .get(&run_id)
            .is_some_and(|ranges| ranges_contain(ranges, lsn));
        if persisted {
            outcome.skipped_metric_records += 1;
            continue;
        }
        match catalog.read().run(run_id).map(|run| run.experiment_id) {
            Some(experiment_id) => {
                ingester.apply(run_id, experiment_id, lsn, batch, None);
                outcome.metric_records += 1;
            }
            None => {
                tracing::warn!(%run_id, lsn, "WAL holds metrics of an unknown run; skipped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable_fs::FileIo;
    use crate::ingest::RunLoader;
    use crate::model::ExperimentId;
    use crate::storage::compaction::compact_files;
    use crate::storage::compaction::test_files::write_file;

    /// Writes one file per step range (sequence numbers from 1), merges
    /// the inputs each `compactions` entry names into the next sequence
    /// numbers, as an interrupted or repeated compaction leaves them, then
    /// loads the run twice (a start, then another). Returns the live files'
    /// sequence numbers and rows after each start, and the files left on
    /// disk after the second.
    fn load_after(
        ranges: &[std::ops::Range<i64>],
        compactions: &[std::ops::Range<usize>],
    ) -> (Vec<(Vec<u64>, u64)>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let layout = MetricsLayout::new(dir.path().join(METRICS_DIR));
        let quarantine = dir.path().join(QUARANTINE_DIR);
        let (experiment, run) = (ExperimentId::new(3), RunId::new_random());
        let path = |seq| layout.file_path(experiment, run, seq);
        layout.prepare_dir_of(&path(1)).unwrap();
        let inputs: Vec<_> = ranges
            .iter()
            .zip(1..)
            .map(|(steps, seq)| write_file(&path(seq), steps.clone(), seq))
            .collect();
        for (inputs_taken, seq) in compactions.iter().zip(ranges.len() as u64 + 1..) {
            compact_files(
                &inputs[inputs_taken.clone()],
                &path(seq),
                &FileIo::default(),
            )
            .unwrap();
        }
        drop(inputs);
        let starts = (0..2)
            .map(|_| {
                let loaded = load_metric_files(
                    &layout,
                    &quarantine,
                    &ContinuityState::default(),
                    &[],
                    Lsn::MAX,
                    None,
                )
                .unwrap();
                let files = &loaded.runs[0].files;
                (
                    files.iter().map(|file| file.seq()).collect(),
                    files.iter().map(|file| file.rows()).sum(),
                )
            })
            .collect();
        let on_disk = fs::read_dir(layout.run_dir(experiment, run))
            .unwrap()
            .count();
        (starts, on_disk)
    }

    #[test]
    fn a_compaction_cut_short_or_done_twice_leaves_each_point_once() {
        // File 4 (from 1 and 2) was renamed into place before a crash, its
        // inputs still there; then the compaction was done again as file 5
        // (from 1, 2 and 3). Only file 5 may stay, and a second start
        // changes nothing.
        let (starts, on_disk) = load_after(&[0..10, 10..25, 25..30], &[0..2, 0..3]);
        assert_eq!(starts, [(vec![5], 30), (vec![5], 30)]);
        assert_eq!(on_disk, 1, "the replaced files are deleted");
    }

    /// What a start loaded of a data directory's one run: its files
    /// (sequence number, rows, length, WAL ranges), its summaries as JSON
    /// (NaN is not equal to itself) and its covered WAL ranges.
    type LoadedShape = (Vec<(u64, u64, u64, Vec<(Lsn, Lsn)>)>, String, String);

    fn loaded_run(loaded: &LoadedFiles) -> LoadedShape {
        let (files, summaries) = run_shape(&loaded.runs[0]);
        (
            files,
            summaries,
            serde_json::to_string(&loaded.covered).unwrap(),
        )
    }

    /// A loaded run's files (sequence number, rows, length, WAL ranges)
    /// and summaries as JSON.
    type RunShape = (Vec<(u64, u64, u64, Vec<(Lsn, Lsn)>)>, String);

    fn run_shape(run: &LoadedRun) -> RunShape {
        (
            run.files
                .iter()
                .map(|file| {
                    (
                        file.seq(),
                        file.rows(),
                        file.bytes(),
                        file.lsn_ranges().to_vec(),
                    )
                })
                .collect(),
            serde_json::to_string(&(&run.summaries, &run.since_rewind)).unwrap(),
        )
    }

    #[test]
    fn a_run_with_a_current_manifest_loads_as_from_its_footers_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(METRICS_DIR);
        let quarantine = dir.path().join(QUARANTINE_DIR);
        let (experiment, run) = (ExperimentId::new(3), RunId::new_random());
        // A fresh layout each time, as a new process has; the WAL holds
        // nothing older than record `floor`.
        let start_above = |floor: Lsn| {
            let layout = MetricsLayout::new(root.clone());
            let loaded = load_metric_files(
                &layout,
                &quarantine,
                &ContinuityState::default(),
                &[],
                floor,
                None,
            )
            .unwrap();
            (loaded, layout)
        };
        let start = || start_above(Lsn::MAX);
        let layout = MetricsLayout::new(root.clone());
        let path = |seq| layout.file_path(experiment, run, seq);
        let run_dir = layout.run_dir(experiment, run);
        layout.prepare_dir_of(&path(1)).unwrap();
        let files: Vec<_> = [(0..10, 1), (10..25, 2), (25..30, 3)]
            .into_iter()
            .map(|(steps, seq)| write_file(&path(seq), steps, seq))
            .collect();

        let (from_footers, layout_read) = start();
        assert_eq!(from_footers.from_manifests, 0, "no manifest yet");
        assert!(
            layout_read.shared().footers().bytes() > 0,
            "the footers were read"
        );
        assert!(!from_footers.runs[0].manifest_current);
        let entries: Vec<run_manifest::ManifestFile> = files
            .iter()
            .map(|file| run_manifest::ManifestFile {
                seq: file.seq(),
                bytes: file.bytes(),
                rows: file.rows(),
                metadata: file.metadata().unwrap(),
            })
            .collect();
        run_manifest::write(&run_dir, run, &entries).unwrap();

        let (from_manifest, layout_read) = start();
        assert_eq!(from_manifest.from_manifests, 1);
        assert!(from_manifest.runs[0].manifest_current);
        assert_eq!(
            layout_read.shared().footers().bytes(),
            0,
            "no footer was read"
        );
        assert_eq!(loaded_run(&from_manifest), loaded_run(&from_footers));
        // The files read as before once opened.
        let footer = from_manifest.runs[0].files[1].metadata().unwrap();
        assert_eq!(footer, entries[1].metadata);
        // A settled run may be held dormant instead: by its summaries
        // only. Loaded again, it has the same files, from the manifest.
        let dormant_layout = MetricsLayout::new(root.clone());
        let start_dormant = |continuity: &ContinuityState| {
            let start = DormantStart {
                ended: &|_| true,
                logged: HashMap::new(),
                names: KeyNames::default(),
            };
            load_metric_files(
                &dormant_layout,
                &quarantine,
                continuity,
                &[],
                Lsn::MAX,
                Some(start),
            )
            .unwrap()
        };
        let dormant = start_dormant(&ContinuityState::default());
        assert!(dormant.runs.is_empty());
        assert_eq!(dormant.from_manifests, 1);
        assert_eq!(dormant.max_lsn, from_footers.max_lsn);
        let (dormant_id, held) = &dormant.dormant[0];
        assert_eq!((*dormant_id, held.next_seq()), (run, 4));
        assert_eq!(
            serde_json::to_string(&held.summaries()).unwrap(),
            serde_json::to_string(&from_footers.runs[0].summaries).unwrap()
        );
        let loader = run_files::DiskRunLoader::new(dormant_layout.clone());
        let woken = loader.load(experiment, run).unwrap();
        assert!(woken.manifest_current);
        assert_eq!(run_shape(&woken), run_shape(&from_footers.runs[0]));
        assert_eq!(dormant_layout.shared().footers().bytes(), 0);
        // Without its manifest, the loader reads the footers.
        let manifest_path = run_manifest::path_in(&run_dir);
        fs::rename(&manifest_path, dir.path().join("kept")).unwrap();
        let woken = loader.load(experiment, run).unwrap();
        assert!(!woken.manifest_current);
        assert_eq!(run_shape(&woken), run_shape(&from_footers.runs[0]));
        fs::rename(dir.path().join("kept"), &manifest_path).unwrap();
        // A rewound run stays loaded (what it keeps apart is not in the
        // manifest).
        let mut rewound = ContinuityState::default();
        rewound.push_rewind(
            run,
            crate::catalog::continuity::Rewind {
                lsn: 2,
                step: 5,
                time: 0,
            },
        );
        let kept = start_dormant(&rewound);
        assert!(kept.dormant.is_empty());
        assert_eq!(kept.runs.len(), 1);

        // While the WAL still holds a record of a file (file 3 holds
        // record 3), the footers are read: damage is found while the WAL
        // can make up for it.
        let (wal_holds_records, _) = start_above(3);
        assert_eq!(wal_holds_records.from_manifests, 0);
        assert_eq!(loaded_run(&wal_holds_records), loaded_run(&from_footers));
        let (wal_past_them, _) = start_above(4);
        assert_eq!(wal_past_them.from_manifests, 1);

        // A file the manifest does not name: its footers are read.
        let fourth = write_file(&path(4), 30..31, 4);
        let (with_new_file, _) = start();
        assert_eq!(with_new_file.from_manifests, 0);
        assert_eq!(with_new_file.runs[0].files.len(), 4);
        drop(fourth);

        // A damaged file goes to quarantine and takes the manifest with it
        // (its sequence number may be given again).
        let mut with_four = entries.clone();
        with_four.push(run_manifest::ManifestFile {
            seq: 4,
            bytes: 1,
            rows: 1,
            metadata: FileMetadata::default(),
        });
        fs::write(path(4), b"not parquet").unwrap();
        run_manifest::write(&run_dir, run, &with_four).unwrap();
        fs::remove_file(path(3)).unwrap();
        let (damaged, _) = start();
        assert_eq!(damaged.quarantined, 1);
        assert_eq!(damaged.from_manifests, 0);
        assert!(!run_manifest::path_in(&run_dir).exists());
        assert_eq!(damaged.runs[0].files.len(), 2);

        // A file cut short since its manifest was written no longer has the
        // length the manifest gives: it is opened, and found damaged.
        run_manifest::write(&run_dir, run, &entries[..2]).unwrap();
        let (intact, _) = start();
        assert_eq!(intact.from_manifests, 1);
        let file = fs::OpenOptions::new().write(true).open(path(2)).unwrap();
        file.set_len(entries[1].bytes - 12).unwrap();
        let (cut, _) = start();
        assert_eq!(cut.from_manifests, 0);
        assert_eq!(cut.quarantined, 1);
    }

    #[test]
    fn outputs_with_different_inputs_both_stay() {
        let (starts, on_disk) = load_after(&[0..10, 10..25, 25..30, 30..32], &[0..2, 2..4]);
        assert_eq!(starts, [(vec![5, 6], 32), (vec![5, 6], 32)]);
        assert_eq!(on_disk, 2);
    }
}
