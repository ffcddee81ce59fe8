//! Start-up: lock the data directory, load the metric files and the latest
//! catalog snapshot, then replay the WAL on top so that every acknowledged
//! write is back exactly once.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::EngineError;
use super::wal_record::WalRecord;
use crate::catalog::{Catalog, CatalogState, snapshot};
use crate::ingest::{Ingester, LoadedRun};
use crate::model::{KeySummary, RunId, now_millis};
use crate::storage::file_meta::{normalise_ranges, ranges_contain};
use crate::storage::{MetricsLayout, PersistedFile};
use crate::wal::{self, Lsn};

/// Names of the data directory's parts.
pub(crate) const WAL_DIR: &str = "wal";
pub(crate) const CATALOG_DIR: &str = "catalog";
pub(crate) const METRICS_DIR: &str = "metrics";
pub(crate) const AUTH_DIR: &str = "auth";
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

/// The metric files found on disk, per run.
pub(crate) struct LoadedFiles {
    pub(crate) runs: Vec<LoadedRun>,
    /// Per run: the WAL ranges its files cover.
    pub(crate) covered: HashMap<RunId, Vec<(Lsn, Lsn)>>,
    /// Highest LSN any file covers.
    pub(crate) max_lsn: Lsn,
}

/// Opens every metric file, removing those a compaction already replaced.
pub(crate) fn load_metric_files(layout: &MetricsLayout) -> Result<LoadedFiles, EngineError> {
    let mut loaded = LoadedFiles {
        runs: Vec::new(),
        covered: HashMap::new(),
        max_lsn: 0,
    };
    for directory in layout.scan()? {
        let mut opened = Vec::with_capacity(directory.files.len());
        for (seq, path) in &directory.files {
            opened.push(PersistedFile::open(*seq, path)?);
        }
        let replaced: Vec<u64> = opened
            .iter()
            .flat_map(|(_, metadata)| metadata.compacted_from.iter().copied())
            .collect();
        let mut files = Vec::new();
        let mut summaries: BTreeMap<String, KeySummary> = BTreeMap::new();
        let mut ranges = Vec::new();
        for (file, metadata) in opened {
            if replaced.contains(&file.seq()) {
                tracing::info!(path = %file.path().display(), "removing a file that compaction replaced");
                file.mark_obsolete();
                continue;
            }
            for (key, summary) in metadata.keys {
                summaries
                    .entry(key)
                    .and_modify(|existing| existing.merge_newer(&summary))
                    .or_insert(summary);
            }
            ranges.extend(metadata.lsn_ranges);
            files.push(Arc::new(file));
        }
        let ranges = normalise_ranges(ranges);
        if let Some(&(_, end)) = ranges.last() {
            loaded.max_lsn = loaded.max_lsn.max(end);
        }
        loaded.covered.insert(directory.run_id, ranges);
        loaded.runs.push(LoadedRun {
            run_id: directory.run_id,
            experiment_id: directory.experiment_id,
            files,
            summaries: summaries.into_iter().collect(),
        });
    }
    Ok(loaded)
}

/// Loads the newest catalog snapshot, or a fresh catalog.
pub(crate) fn load_catalog(dir: &Path, artifact_root: &str) -> Result<CatalogState, EngineError> {
    Ok(snapshot::load_latest(dir)?
        .unwrap_or_else(|| CatalogState::new(artifact_root, now_millis())))
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
/// metric batches not covered by a file go back into the buffers.
pub(crate) fn replay_wal(
    wal_dir: &Path,
    catalog: &Catalog,
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
            }
            WalRecord::Metrics(runs) => {
                for (run_id, batch) in runs {
                    // Coverage is per run: a record of several runs may be
                    // in one run's files and still only in another's WAL.
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
        }
        Ok(())
    })?;
    outcome.last_lsn = summary.last_lsn;
    outcome.truncated_bytes = summary.truncated_bytes;
    Ok(outcome)
}
