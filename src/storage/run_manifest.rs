//! A run's manifest: what start-up needs of each of a run's metric files
//! (its length, rows, and stepstore's metadata: WAL ranges, key summaries,
//! the files it replaced), kept in the run's directory so that a start
//! reads one small file per run instead of every file's footer.
//!
//! The manifest is a cache of the footers, never the truth: it names the
//! files it describes, and a start that finds other files in the directory
//! (or a manifest it cannot read, or one that fails its checksum) reads
//! their footers as before. It is written without a sync, once a run's
//! files settle (the run ended and nothing of it is buffered, being
//! written or being compacted), and since a file never changes once
//! written, two manifests naming the same files say the same thing.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::file_meta::FileMetadata;
use crate::model::RunId;

/// The manifest's name in a run's directory. The leading `_` keeps readers
/// of the tree in place (pyarrow datasets, Spark, Hive) from taking it for
/// a data file, as they skip `_SUCCESS`.
pub(crate) const MANIFEST_FILE: &str = "_files.manifest";
/// The manifest being written, renamed into place when complete.
const MANIFEST_TEMP_FILE: &str = "_files.manifest.tmp";
/// The first word of a manifest.
const MAGIC: &str = "stepstore-run-manifest";
/// The version of the layout below.
const VERSION: u32 = 1;

/// What the manifest records of one file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ManifestFile {
    /// Its sequence number in the run.
    pub(crate) seq: u64,
    /// Its length in bytes.
    pub(crate) bytes: u64,
    /// Its rows.
    pub(crate) rows: u64,
    /// Stepstore's metadata from its footer.
    pub(crate) metadata: FileMetadata,
}

/// What a manifest holds: whose files, and what of each.
#[derive(Serialize, Deserialize)]
struct RunManifest<F> {
    /// The run (a manifest copied into another run's directory is not
    /// used there).
    run_id: String,
    files: F,
}

/// The manifest of a run's directory `run_dir`.
pub(crate) fn path_in(run_dir: &Path) -> PathBuf {
    run_dir.join(MANIFEST_FILE)
}

/// Writes the manifest of run `run_id`'s `files` (in sequence order) into
/// its directory `run_dir`, through a temporary file renamed into place.
/// Not synced: a manifest lost or torn by a crash is not read (its
/// checksum fails) and the start reads the footers.
pub(crate) fn write(
    run_dir: &Path,
    run_id: RunId,
    files: &[ManifestFile],
) -> Result<(), StorageError> {
    let manifest = RunManifest {
        run_id: run_id.to_string(),
        files,
    };
    let body = serde_json::to_vec(&manifest).map_err(|source| StorageError::Metadata {
        path: path_in(run_dir),
        reason: format!("cannot encode the run manifest: {source}"),
    })?;
    let mut text = format!("{MAGIC} {VERSION} {:08x}\n", crc32c::crc32c(&body)).into_bytes();
    text.extend_from_slice(&body);
    let temporary = run_dir.join(MANIFEST_TEMP_FILE);
    fs::write(&temporary, &text).map_err(|source| StorageError::io("write", &temporary, source))?;
    let path = path_in(run_dir);
    fs::rename(&temporary, &path).map_err(|source| StorageError::io("rename", &path, source))
}

/// Why a manifest was not used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ManifestError {
    /// The directory has none (a run that has not settled since manifests
    /// were introduced, or one still running).
    #[error("no manifest")]
    Missing,
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The manifest.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// It is torn, damaged or of another version.
    #[error("{path} is not a readable run manifest: {reason}")]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads the manifest of run `run_id`'s directory `run_dir`.
pub(crate) fn read(run_dir: &Path, run_id: RunId) -> Result<Vec<ManifestFile>, ManifestError> {
    let path = path_in(run_dir);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(ManifestError::Missing);
        }
        Err(source) => return Err(ManifestError::Io { path, source }),
    };
    let invalid = |reason: &str| ManifestError::Invalid {
        path: path.clone(),
        reason: reason.to_string(),
    };
    let newline = text
        .iter()
        .position(|&byte| byte == b'\n')
        .ok_or_else(|| invalid("no header line"))?;
    let header = std::str::from_utf8(&text[..newline]).map_err(|_| invalid("a binary header"))?;
    let body = &text[newline + 1..];
    let mut words = header.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(invalid("not a manifest"));
    }
    if words.next() != Some(VERSION.to_string().as_str()) {
        return Err(invalid("another version"));
    }
    let checksum = words
        .next()
        .and_then(|word| u32::from_str_radix(word, 16).ok())
        .ok_or_else(|| invalid("no checksum"))?;
    if crc32c::crc32c(body) != checksum {
        return Err(invalid("the checksum does not match (torn or damaged)"));
    }
    let manifest: RunManifest<Vec<ManifestFile>> =
        serde_json::from_slice(body).map_err(|error| invalid(&error.to_string()))?;
    if manifest.run_id != run_id.to_string() {
        return Err(invalid("it is another run's"));
    }
    Ok(manifest.files)
}

/// Removes the manifest of `run_dir` (its run is gone, or its files
/// changed), if there is one.
pub(crate) fn remove(run_dir: &Path) {
    for name in [MANIFEST_FILE, MANIFEST_TEMP_FILE] {
        let path = run_dir.join(name);
        if let Err(error) = fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), %error, "could not remove a run manifest");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KeySummary;

    fn files() -> Vec<ManifestFile> {
        let mut summary = KeySummary::of_point(3, 30, 0.5);
        summary.add_point(4, 40, f64::NAN);
        vec![
            ManifestFile {
                seq: 1,
                bytes: 1234,
                rows: 2,
                metadata: FileMetadata {
                    format_version: 1,
                    lsn_ranges: vec![(5, 9), (12, 12)],
                    keys: vec![("loss".into(), summary)],
                    compacted_from: vec![],
                },
            },
            ManifestFile {
                seq: 4,
                bytes: 99,
                rows: 1,
                metadata: FileMetadata {
                    format_version: 1,
                    lsn_ranges: vec![(20, 20)],
                    keys: vec![("acc".into(), KeySummary::of_point(0, 1, f64::INFINITY))],
                    compacted_from: vec![2, 3],
                },
            },
        ]
    }

    fn same(left: &[ManifestFile], right: &[ManifestFile]) -> bool {
        // NaN is not equal to itself: compare the JSON.
        serde_json::to_string(left).unwrap() == serde_json::to_string(right).unwrap()
    }

    #[test]
    fn a_written_manifest_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunId::new_random();
        assert!(matches!(read(dir.path(), run), Err(ManifestError::Missing)));
        write(dir.path(), run, &files()).unwrap();
        let back = read(dir.path(), run).unwrap();
        assert!(same(&back, &files()));
        assert!(back[0].metadata.keys[0].1.max_value == 0.5);
        assert!(!dir.path().join(MANIFEST_TEMP_FILE).exists());
        assert!(
            matches!(
                read(dir.path(), RunId::new_random()),
                Err(ManifestError::Invalid { .. })
            ),
            "another run's manifest"
        );
        remove(dir.path());
        assert!(matches!(read(dir.path(), run), Err(ManifestError::Missing)));
    }

    #[test]
    fn a_torn_or_damaged_manifest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunId::new_random();
        write(dir.path(), run, &files()).unwrap();
        let path = path_in(dir.path());
        let text = fs::read(&path).unwrap();
        // Cut anywhere: refused.
        for cut in [0, 10, text.len() / 2, text.len() - 1] {
            fs::write(&path, &text[..cut]).unwrap();
            assert!(
                matches!(read(dir.path(), run), Err(ManifestError::Invalid { .. })),
                "cut at {cut}"
            );
        }
        // A digit changed in a summary: the JSON still parses, the
        // checksum does not match.
        let mut damaged = text.clone();
        let at = damaged.len() - 20;
        damaged[at] = if damaged[at] == b'1' { b'2' } else { b'1' };
        fs::write(&path, &damaged).unwrap();
        assert!(matches!(
            read(dir.path(), run),
            Err(ManifestError::Invalid { .. })
        ));
        let other_version = String::from_utf8(text.clone()).unwrap().replacen(
            &format!("{MAGIC} {VERSION} "),
            &format!("{MAGIC} 99 "),
            1,
        );
        fs::write(&path, other_version).unwrap();
        assert!(matches!(
            read(dir.path(), run),
            Err(ManifestError::Invalid { .. })
        ));
    }
}
