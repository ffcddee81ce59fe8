//! Catalog snapshots: the whole catalog state written atomically (temp file,
//! fsync, rename, directory fsync) so that the WAL before it can go.
//!
//! File layout: magic `STEPCAT2`, u32 LE CRC32C of the body, bincode body.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::CatalogError;
use super::state::CatalogState;
use crate::wal::Lsn;

const MAGIC: &[u8; 8] = b"STEPCAT2";
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".bin";

fn snapshot_path(dir: &Path, lsn: Lsn) -> PathBuf {
    dir.join(format!("{PREFIX}{lsn:020}{SUFFIX}"))
}

fn list_snapshots(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, CatalogError> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|source| CatalogError::io("list", dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| CatalogError::io("list", dir, source))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            // Left by a crash mid-write: never renamed, so never valid.
            let _ = fs::remove_file(entry.path());
            continue;
        }
        let lsn = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_suffix(SUFFIX))
            .and_then(|digits| digits.parse::<Lsn>().ok());
        if let Some(lsn) = lsn {
            found.push((lsn, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Loads the newest snapshot in `dir`, or `None` when there is none. A
/// damaged newest snapshot is an error: the WAL before it may be gone.
pub fn load_latest(dir: &Path) -> Result<Option<CatalogState>, CatalogError> {
    crate::durable_fs::create_dir_synced(dir)
        .map_err(|source| CatalogError::io("create", dir, source))?;
    let Some((lsn, path)) = list_snapshots(dir)?.pop() else {
        return Ok(None);
    };
    let bytes = fs::read(&path).map_err(|source| CatalogError::io("read", &path, source))?;
    let corrupt = |reason: String| CatalogError::CorruptSnapshot {
        path: path.clone(),
        reason,
    };
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(corrupt("bad magic".to_string()));
    }
    let stored_crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let body = &bytes[12..];
    if crc32c::crc32c(body) != stored_crc {
        return Err(corrupt("checksum mismatch".to_string()));
    }
    let (mut state, _): (CatalogState, usize) =
        crate::bounded_decode::decode(body).map_err(|error| corrupt(error.to_string()))?;
    if state.applied_lsn != lsn {
        return Err(corrupt(format!(
            "names LSN {lsn} but holds state at LSN {}",
            state.applied_lsn
        )));
    }
    state.rebuild_indexes();
    Ok(Some(state))
}

/// A catalog state encoded for a snapshot, not yet written: encoding needs
/// the catalog's read lock, writing and syncing do not.
pub struct EncodedSnapshot {
    lsn: Lsn,
    body: Vec<u8>,
}

/// Encodes `state` (the caller holds its lock only for this).
pub fn encode(state: &CatalogState) -> Result<EncodedSnapshot, CatalogError> {
    let body = bincode::serde::encode_to_vec(state, bincode::config::standard())
        .map_err(|error| CatalogError::Encode(error.to_string()))?;
    Ok(EncodedSnapshot {
        lsn: state.applied_lsn,
        body,
    })
}

impl EncodedSnapshot {
    /// The LSN of the last change the snapshot holds.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// Writes the snapshot as the newest one (temporary file, sync, rename,
    /// directory sync) and removes older ones. Returns its size in bytes.
    pub fn write(self, dir: &Path) -> Result<u64, CatalogError> {
        let EncodedSnapshot { lsn, body } = self;
        let path = snapshot_path(dir, lsn);
        let temp = path.with_extension("bin.tmp");
        {
            let mut file =
                File::create(&temp).map_err(|source| CatalogError::io("create", &temp, source))?;
            file.write_all(MAGIC)
                .and_then(|()| file.write_all(&crc32c::crc32c(&body).to_le_bytes()))
                .and_then(|()| file.write_all(&body))
                .and_then(|()| file.sync_all())
                .map_err(|source| CatalogError::io("write", &temp, source))?;
        }
        fs::rename(&temp, &path).map_err(|source| CatalogError::io("rename", &temp, source))?;
        File::open(dir)
            .and_then(|handle| handle.sync_all())
            .map_err(|source| CatalogError::io("sync directory", dir, source))?;
        for (older, old) in list_snapshots(dir)? {
            if older < lsn {
                fs::remove_file(&old).map_err(|source| CatalogError::io("remove", &old, source))?;
            }
        }
        Ok(body.len() as u64 + 12)
    }
}

/// Writes `state` as the newest snapshot and removes older ones. Returns
/// the snapshot's size in bytes.
pub fn write(dir: &Path, state: &CatalogState) -> Result<u64, CatalogError> {
    encode(state)?.write(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_and_replaces_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_latest(dir.path()).unwrap().is_none());
        let mut state = CatalogState::new("file:///tmp/artifacts", 1);
        state.applied_lsn = 5;
        write(dir.path(), &state).unwrap();
        state.applied_lsn = 9;
        write(dir.path(), &state).unwrap();
        let loaded = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.applied_lsn, 9);
        assert_eq!(
            loaded.experiment_by_name("Default").unwrap().name,
            "Default"
        );
        assert_eq!(list_snapshots(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn damaged_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = CatalogState::new("file:///a", 1);
        state.applied_lsn = 3;
        write(dir.path(), &state).unwrap();
        let path = snapshot_path(dir.path(), 3);
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(
            load_latest(dir.path()),
            Err(CatalogError::CorruptSnapshot { .. })
        ));
    }
}
