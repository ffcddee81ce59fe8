//! Where metric files live:
//! `<data-dir>/metrics/experiment_id=<e>/run_id=<r>/<seq>.parquet`
//! (Hive partitioning, so Spark, DuckDB or DataFusion read it in place).
//! All file paths are built here from validated ids; this is the one module
//! to change to move storage to object stores.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::StorageError;
use super::file_meta::FileMetadata;
use super::persisted::{PersistedFile, SharedByFiles};
use crate::durable_fs::{FileIo, create_dir_synced};
use crate::model::{ExperimentId, RunId};

const EXPERIMENT_PREFIX: &str = "experiment_id=";
const RUN_PREFIX: &str = "run_id=";
const FILE_SUFFIX: &str = ".parquet";
const TEMP_SUFFIX: &str = ".parquet.tmp";

/// The metric files of one run found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDirectory {
    /// The experiment directory it is under.
    pub experiment_id: ExperimentId,
    /// The run.
    pub run_id: RunId,
    /// Its files as `(sequence number, path)`, in sequence order.
    pub files: Vec<(u64, PathBuf)>,
    /// The lengths of those of its files that are only in the object
    /// store, by sequence number (their paths say where a local copy
    /// would be).
    pub stored_only: HashMap<u64, u64>,
}

/// The metrics directory tree.
#[derive(Clone, Debug)]
pub struct MetricsLayout {
    root: PathBuf,
    /// Held while a run directory is created and its entries synced, so
    /// that no writer finds a directory whose entry is not durable yet.
    creating_dirs: Arc<Mutex<()>>,
    /// The file operations its files are written with.
    io: FileIo,
    /// The footer cache and damaged-read count its files share.
    shared: Arc<SharedByFiles>,
}

impl MetricsLayout {
    /// The tree under `root` (normally `<data-dir>/metrics`).
    pub fn new(root: PathBuf) -> Self {
        MetricsLayout::with_io(root, FileIo::default())
    }

    /// The tree under `root`, its files written through `io`.
    pub fn with_io(root: PathBuf, io: FileIo) -> Self {
        MetricsLayout {
            root,
            creating_dirs: Arc::default(),
            io,
            shared: Arc::default(),
        }
    }

    /// The same tree, its files' footers cached within `bytes` of memory.
    pub fn with_footer_cache(self, bytes: u64) -> Self {
        MetricsLayout {
            shared: Arc::new(SharedByFiles::new(bytes)),
            ..self
        }
    }

    /// Reads the tree's files that are only in the object store through
    /// `cache`, and counts uploaded local copies against it.
    pub fn set_cache(&self, cache: Arc<super::cache::ReadCache>) {
        self.shared.set_cache(cache);
    }

    /// Opens file `seq` of the tree, `bytes` long, whose only copy is in
    /// the object store ([`PersistedFile::open_stored`]).
    pub fn open_stored_file(
        &self,
        seq: u64,
        path: &Path,
        bytes: u64,
    ) -> Result<(PersistedFile, FileMetadata), StorageError> {
        PersistedFile::open_stored(seq, path, bytes, Arc::clone(&self.shared))
    }

    /// Sends the files of the tree to `uploader` from now on.
    pub fn set_uploader(&self, uploader: Arc<super::upload::Uploader>) {
        self.shared.set_uploader(uploader);
    }

    /// Queues a newly written file for upload, when the tree has an
    /// object store.
    pub fn publish(&self, file: &Arc<PersistedFile>) {
        if let Some(uploads) = self.shared.uploads() {
            uploads.upload(file);
        }
    }

    /// Opens file `seq` of the tree at `path`, its footer kept in the
    /// tree's cache and its damaged reads counted
    /// ([`MetricsLayout::shared`]).
    pub fn open_file(
        &self,
        seq: u64,
        path: &Path,
    ) -> Result<(PersistedFile, FileMetadata), StorageError> {
        PersistedFile::open_shared(seq, path, Arc::clone(&self.shared))
    }

    /// File `seq` of the tree at `path` as its run's manifest describes it
    /// ([`PersistedFile::described`]): no footer is read.
    pub(crate) fn described_file(
        &self,
        path: &Path,
        file: &super::run_manifest::ManifestFile,
        stored_only: bool,
    ) -> Result<PersistedFile, StorageError> {
        PersistedFile::described(
            file.seq,
            path,
            file.bytes,
            file.rows,
            file.metadata.lsn_ranges.clone(),
            stored_only,
            Arc::clone(&self.shared),
        )
    }

    /// What the tree's files share: their footer cache and the count of
    /// reads that found damage.
    pub fn shared(&self) -> Arc<SharedByFiles> {
        Arc::clone(&self.shared)
    }

    /// The file operations its files are written with.
    pub fn io(&self) -> &FileIo {
        &self.io
    }

    /// Makes sure the directory a file of the tree goes in exists and that
    /// its entry (and its parents' entries) are durable, before a file in
    /// it counts as persisted.
    pub fn prepare_dir_of(&self, file: &Path) -> Result<(), StorageError> {
        let Some(dir) = file.parent() else {
            return Ok(());
        };
        let _creating = self
            .creating_dirs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.io
            .create_dir_synced(dir)
            .map(|_| ())
            .map_err(|source| StorageError::io("create directory", dir, source))
    }

    /// Its root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of one run's files.
    pub fn run_dir(&self, experiment_id: ExperimentId, run_id: RunId) -> PathBuf {
        self.root
            .join(format!("{EXPERIMENT_PREFIX}{experiment_id}"))
            .join(format!("{RUN_PREFIX}{run_id}"))
    }

    /// The path of file `seq` of a run.
    pub fn file_path(&self, experiment_id: ExperimentId, run_id: RunId, seq: u64) -> PathBuf {
        self.run_dir(experiment_id, run_id)
            .join(format!("{seq:08}{FILE_SUFFIX}"))
    }

    /// Where a file is written before it is renamed into place.
    pub fn temp_path(final_path: &Path) -> PathBuf {
        final_path.with_extension("parquet.tmp")
    }

    /// Lists every run directory and its files. Leftover temporary files
    /// (from a crash mid-write) are removed; unknown names are ignored.
    pub fn scan(&self) -> Result<Vec<RunDirectory>, StorageError> {
        self.scan_with_stored(&[])
    }

    /// Lists every run and its files like [`MetricsLayout::scan`], adding
    /// the files of `stored` (`(path under the tree, length)`: the object
    /// store's) that have no local copy.
    pub fn scan_with_stored(
        &self,
        stored: &[(PathBuf, u64)],
    ) -> Result<Vec<RunDirectory>, StorageError> {
        let mut found: BTreeMap<(ExperimentId, RunId), RunDirectory> = self
            .scan_local()?
            .into_iter()
            .map(|directory| ((directory.experiment_id, directory.run_id), directory))
            .collect();
        for (relative, bytes) in stored {
            let Some((experiment_id, run_id, seq)) = parse_relative(relative) else {
                continue;
            };
            let path = self.file_path(experiment_id, run_id, seq);
            let directory = found
                .entry((experiment_id, run_id))
                .or_insert_with(|| RunDirectory {
                    experiment_id,
                    run_id,
                    files: Vec::new(),
                    stored_only: HashMap::new(),
                });
            if directory.files.iter().any(|(local, _)| *local == seq) {
                continue;
            }
            directory.files.push((seq, path));
            directory.stored_only.insert(seq, *bytes);
        }
        Ok(found
            .into_values()
            .map(|mut directory| {
                directory.files.sort();
                directory
            })
            .collect())
    }

    /// The run directories and files on the local disk.
    fn scan_local(&self) -> Result<Vec<RunDirectory>, StorageError> {
        self.list_runs()?
            .into_iter()
            .map(|(experiment_id, run_id)| {
                Ok(RunDirectory {
                    experiment_id,
                    run_id,
                    files: metric_files_in(&self.run_dir(experiment_id, run_id))?,
                    stored_only: HashMap::new(),
                })
            })
            .collect()
    }

    /// The runs with a directory on the local disk, without listing their
    /// files: one directory read per experiment.
    pub(crate) fn list_runs(&self) -> Result<Vec<(ExperimentId, RunId)>, StorageError> {
        create_dir_synced(&self.root)
            .map_err(|source| StorageError::io("create", &self.root, source))?;
        let mut found = Vec::new();
        for experiment_dir in read_dir_paths(&self.root)? {
            let Some(experiment_id) = parse_component(&experiment_dir, EXPERIMENT_PREFIX)
                .and_then(|text| ExperimentId::parse(&text).ok())
            else {
                continue;
            };
            // Names only, unsorted: at a million runs, building and sorting
            // a path per run took over a second of the start.
            let entries = fs::read_dir(&experiment_dir)
                .map_err(|source| StorageError::io("list", &experiment_dir, source))?;
            for entry in entries {
                let entry =
                    entry.map_err(|source| StorageError::io("list", &experiment_dir, source))?;
                let name = entry.file_name();
                if let Some(run_id) = name
                    .to_str()
                    .and_then(|name| name.strip_prefix(RUN_PREFIX))
                    .and_then(|text| RunId::parse(text).ok())
                {
                    found.push((experiment_id, run_id));
                }
            }
        }
        found.sort_unstable();
        Ok(found)
    }
}

/// The metric files of one run's directory as `(sequence number, path)`,
/// in sequence order. Unfinished files (a write cut short) are removed.
fn metric_files_in(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut files = Vec::new();
    for file in read_dir_paths(run_dir)? {
        let Some(name) = file.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if name.ends_with(TEMP_SUFFIX) {
            tracing::info!(path = %file.display(), "removing unfinished metric file");
            fs::remove_file(&file).map_err(|source| StorageError::io("remove", &file, source))?;
            continue;
        }
        let seq = name
            .strip_suffix(FILE_SUFFIX)
            .filter(|stem| stem.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(seq) = seq {
            files.push((seq, file));
        }
    }
    files.sort();
    Ok(files)
}

impl MetricsLayout {
    /// One run's directory and local files, like an entry of
    /// [`MetricsLayout::scan`] (no directory: no files).
    pub(crate) fn scan_run(
        &self,
        experiment_id: ExperimentId,
        run_id: RunId,
    ) -> Result<RunDirectory, StorageError> {
        let run_dir = self.run_dir(experiment_id, run_id);
        let files = if run_dir.exists() {
            metric_files_in(&run_dir)?
        } else {
            Vec::new()
        };
        Ok(RunDirectory {
            experiment_id,
            run_id,
            files,
            stored_only: HashMap::new(),
        })
    }
}

impl MetricsLayout {
    /// The experiment, run and sequence number a path under the tree names
    /// (`experiment_id=<e>/run_id=<r>/<seq>.parquet`).
    pub fn parse_relative(relative: &Path) -> Option<(ExperimentId, RunId, u64)> {
        parse_relative(relative)
    }
}

/// The experiment, run and sequence number a path under the tree names
/// (`experiment_id=<e>/run_id=<r>/<seq>.parquet`).
fn parse_relative(relative: &Path) -> Option<(ExperimentId, RunId, u64)> {
    let mut parts = relative.components().map(|component| match component {
        Component::Normal(part) => part.to_str(),
        _ => None,
    });
    let experiment = parts.next()??.strip_prefix(EXPERIMENT_PREFIX)?;
    let run = parts.next()??.strip_prefix(RUN_PREFIX)?;
    let name = parts.next()??;
    if parts.next().is_some() {
        return None;
    }
    let seq = name
        .strip_suffix(FILE_SUFFIX)
        .filter(|stem| !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()?;
    Some((
        ExperimentId::parse(experiment).ok()?,
        RunId::parse(run).ok()?,
        seq,
    ))
}

fn parse_component(path: &Path, prefix: &str) -> Option<String> {
    path.file_name()?
        .to_str()?
        .strip_prefix(prefix)
        .map(str::to_string)
}

fn read_dir_paths(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let entries = fs::read_dir(dir).map_err(|source| StorageError::io("list", dir, source))?;
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(
            entry
                .map_err(|source| StorageError::io("list", dir, source))?
                .path(),
        );
    }
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_hive_partitioned_and_scan_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let layout = MetricsLayout::new(dir.path().join("metrics"));
        let run = RunId::new_random();
        let experiment = ExperimentId::new(3);
        let path = layout.file_path(experiment, run, 7);
        assert!(path.ends_with(format!("experiment_id=3/run_id={run}/00000007.parquet")));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"x").unwrap();
        let temp = MetricsLayout::temp_path(&layout.file_path(experiment, run, 8));
        fs::write(&temp, b"partial").unwrap();
        fs::write(path.parent().unwrap().join("README"), b"ignored").unwrap();
        fs::create_dir_all(layout.root().join("experiment_id=x/run_id=bad")).unwrap();

        let runs = layout.scan().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].run_id, run);
        assert_eq!(runs[0].experiment_id, experiment);
        assert_eq!(runs[0].files, vec![(7, path)]);
        assert!(!temp.exists(), "leftover temp file removed");
    }

    #[test]
    fn directories_are_created_with_their_parents_once() {
        let dir = tempfile::tempdir().unwrap();
        let layout = MetricsLayout::new(dir.path().join("metrics"));
        let file = layout.file_path(ExperimentId::DEFAULT, RunId::new_random(), 1);
        assert!(!file.parent().unwrap().exists());
        layout.prepare_dir_of(&file).unwrap();
        assert!(file.parent().unwrap().is_dir());
        // A second call finds it and creates nothing.
        layout.prepare_dir_of(&file).unwrap();
        assert!(!create_dir_synced(file.parent().unwrap()).unwrap());
    }

    #[test]
    fn each_layout_keeps_its_files_footers_within_its_own_budget() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, keys: usize| {
            let path = dir.path().join(name);
            let names: Vec<String> = (0..keys).map(|key| format!("key-{key:04}")).collect();
            let columns = crate::storage::SortedColumns::from_points(
                names.iter().map(|key| (key.as_str(), 0, 0, 1.0)),
            );
            let mut writer = crate::storage::MetricFileWriter::create(&path).unwrap();
            writer.write(columns).unwrap();
            writer.finish(vec![(1, 1)], vec![]).unwrap();
            path
        };
        let files: Vec<PathBuf> = (0..6)
            .map(|index| write(&format!("{index:08}.parquet"), 200))
            .collect();
        let small = MetricsLayout::new(dir.path().to_path_buf()).with_footer_cache(64 << 10);
        let large = MetricsLayout::new(dir.path().to_path_buf()).with_footer_cache(64 << 20);
        let opened: Vec<PersistedFile> = files
            .iter()
            .enumerate()
            .map(|(seq, path)| large.open_file(seq as u64, path).unwrap().0)
            .collect();
        let footers = large.shared();
        assert!(
            footers.footers().bytes() > 64 << 10,
            "six footers of 200 keys are kept"
        );
        assert_eq!(
            footers.footers().loads(),
            0,
            "opening a file caches its footer"
        );
        // Another layout (another engine) shares nothing with this one.
        assert_eq!(small.shared().footers().bytes(), 0);
        let first = small.open_file(1, &files[0]).unwrap().0;
        assert!(small.shared().footers().bytes() <= 64 << 10);
        // Reads come back to the cache; a footer dropped for room is read again.
        for file in &opened {
            assert!(file.aggregates().is_some());
        }
        assert_eq!(footers.footers().loads(), 0);
        for (seq, path) in files.iter().enumerate().skip(1) {
            small.open_file(seq as u64 + 1, path).unwrap();
        }
        assert!(small.shared().footers().bytes() <= 64 << 10);
        assert!(first.aggregates().is_some());
        assert!(
            small.shared().footers().loads() >= 1,
            "the first footer was read again"
        );
    }
}
