//! A run's files as its manifest describes them: at start (runs taken
//! from their manifests, and settled runs held dormant by their summaries)
//! and when a dormant run is loaded again ([`DiskRunLoader`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::recovery::{assemble_run, is_damage, replaced_files};
use crate::catalog::continuity::ContinuityState;
use crate::ingest::{DormantRun, KeyNames, LoadedRun, RunLoader, WakeError};
use crate::model::{ExperimentId, KeySummary, RunId};
use crate::storage::file_meta::FileMetadata;
use crate::storage::layout::RunDirectory;
use crate::storage::run_manifest::{self, ManifestError, ManifestFile};
use crate::storage::{MetricsLayout, PersistedFile};
use crate::wal::Lsn;

/// The run's manifest, when it names exactly the files of `directory`,
/// with their lengths, and none of them holds a record the WAL still has
/// (at or past `wal_floor`). `None` sends the caller to the footers.
pub(crate) fn current_manifest(
    run_dir: &Path,
    directory: &RunDirectory,
    wal_floor: Lsn,
) -> Option<Vec<ManifestFile>> {
    let manifest = match run_manifest::read(run_dir, directory.run_id) {
        Ok(manifest) => manifest,
        Err(ManifestError::Missing) => return None,
        Err(error) => {
            tracing::warn!(%error, "reading the run's file footers instead of its manifest");
            return None;
        }
    };
    // Each file with the length the manifest gives: a file cut short
    // (the usual damage) is then opened, and found damaged, as before.
    let same_files = manifest.len() == directory.files.len()
        && manifest
            .iter()
            .zip(&directory.files)
            .all(|(entry, (seq, path))| {
                let bytes = match directory.stored_only.get(seq) {
                    Some(&bytes) => Some(bytes),
                    None => fs::metadata(path).ok().map(|metadata| metadata.len()),
                };
                entry.seq == *seq && bytes == Some(entry.bytes)
            });
    if !same_files {
        tracing::debug!(run_dir = %run_dir.display(), "the run's manifest names other files; reading their footers");
        return None;
    }
    if max_lsn(&manifest) >= wal_floor {
        // A damaged file is then found now, and rebuilt from the WAL.
        tracing::debug!(run_dir = %run_dir.display(), "the WAL still holds records of the run's files; reading their footers");
        return None;
    }
    Some(manifest)
}

/// The newest LSN the files of a manifest hold (0 for none).
pub(crate) fn max_lsn(manifest: &[ManifestFile]) -> Lsn {
    manifest
        .iter()
        .flat_map(|entry| entry.metadata.lsn_ranges.iter().map(|&(_, end)| end))
        .max()
        .unwrap_or(0)
}

/// The files of `directory` as its current `manifest` describes them: no
/// footer is read. `None` (logged) when one cannot be described.
pub(crate) fn described_files(
    layout: &MetricsLayout,
    directory: &RunDirectory,
    manifest: Vec<ManifestFile>,
) -> Option<Vec<(Arc<PersistedFile>, FileMetadata)>> {
    let mut opened = Vec::with_capacity(manifest.len());
    for (entry, (seq, path)) in manifest.into_iter().zip(&directory.files) {
        let stored_only = directory.stored_only.contains_key(seq);
        match layout.described_file(path, &entry, stored_only) {
            Ok(file) => opened.push((Arc::new(file), entry.metadata)),
            Err(error) => {
                tracing::warn!(%error, "reading the run's file footers instead of its manifest");
                return None;
            }
        }
    }
    Some(opened)
}

/// The settled run a current `manifest` describes, held by its summaries:
/// `None` when a file in it replaces another (a manifest is written from
/// the files a run shows, so this is not expected; the run is then loaded
/// as usual, which removes the replaced file).
pub(crate) fn dormant_run(
    experiment_id: ExperimentId,
    manifest: &[ManifestFile],
    names: &mut KeyNames,
) -> Option<DormantRun> {
    let seqs: Vec<u64> = manifest.iter().map(|entry| entry.seq).collect();
    let replaces_one = manifest.iter().any(|entry| {
        entry
            .metadata
            .compacted_from
            .iter()
            .any(|input| seqs.contains(input))
    });
    if replaces_one {
        return None;
    }
    let mut summaries: BTreeMap<&str, KeySummary> = BTreeMap::new();
    for entry in manifest {
        for (key, summary) in &entry.metadata.keys {
            summaries
                .entry(key.as_str())
                .and_modify(|existing| existing.merge_newer(summary))
                .or_insert(*summary);
        }
    }
    let next_seq = seqs.iter().max().map_or(1, |seq| seq + 1);
    Some(DormantRun::new(
        experiment_id,
        next_seq,
        max_lsn(manifest),
        summaries
            .into_iter()
            .map(|(key, summary)| (key.to_string(), summary)),
        names,
    ))
}

/// Loads dormant runs again from their directories on the local disk.
pub(crate) struct DiskRunLoader {
    layout: MetricsLayout,
}

impl DiskRunLoader {
    /// A loader of the runs of `layout`'s tree.
    pub(crate) fn new(layout: MetricsLayout) -> Self {
        DiskRunLoader { layout }
    }
}

impl RunLoader for DiskRunLoader {
    /// The run from its manifest when it still names exactly the run's
    /// files, else from their footers. A damaged file is left out (and
    /// logged): it is quarantined at the next start, not here, where the
    /// WAL no longer holds its points.
    fn load(&self, experiment_id: ExperimentId, run_id: RunId) -> Result<LoadedRun, WakeError> {
        let directory = self.layout.scan_run(experiment_id, run_id)?;
        let run_dir = self.layout.run_dir(experiment_id, run_id);
        let described = current_manifest(&run_dir, &directory, Lsn::MAX)
            .and_then(|manifest| described_files(&self.layout, &directory, manifest));
        let manifest_current = described.is_some();
        let opened = match described {
            Some(opened) => opened,
            None => {
                let mut opened = Vec::with_capacity(directory.files.len());
                for (seq, path) in &directory.files {
                    match self.layout.open_file(*seq, path) {
                        Ok((file, metadata)) => opened.push((Arc::new(file), metadata)),
                        Err(error) if is_damage(&error) => {
                            tracing::error!(path = %path.display(), %run_id, %error, "a damaged metric file of a dormant run is left out; the next start quarantines it");
                        }
                        Err(error) => return Err(Box::new(error)),
                    }
                }
                opened
            }
        };
        let replaced = replaced_files(&opened);
        // Never rewound nor forked from while dormant: a rewind or fork
        // loads the run first, then applies itself.
        let assembled = assemble_run(
            experiment_id,
            run_id,
            opened,
            &replaced,
            &ContinuityState::default(),
            Vec::new(),
        );
        for file in &assembled.replaced {
            tracing::info!(path = %file.path().display(), "removing a file that compaction replaced");
            file.mark_obsolete();
        }
        let mut run = assembled.run;
        run.manifest_current = manifest_current;
        Ok(run)
    }
}
