//! Catalog snapshots: the whole catalog state written atomically (temp file,
//! fsync, rename, directory fsync) so that the WAL before it can go.
//!
//! File layout: magic `STEPCAT6`, u32 LE CRC32C of the body, then the
//! bincode of five sections: the catalog state, the ingest receipts (see
//! [`super::receipts`]), the lineage (see [`super::lineage`]), the runs'
//! rewinds and their forks (see [`super::continuity`]). Older files are
//! still read: `STEPCAT5` (no forks), `STEPCAT4` (no rewinds), `STEPCAT3`
//! (state and receipts) and `STEPCAT2`
//! (the state alone); the lineage of the last two is rebuilt from the
//! runs' dataset inputs.

use std::fs;
use std::path::{Path, PathBuf};

use super::CatalogError;
use super::continuity::{ContinuityState, ForkTable};
use super::lineage::LineageState;
use super::receipts::ReceiptsSnapshot;
use super::state::CatalogState;
use crate::durable_fs::FileIo;
use crate::wal::Lsn;

const MAGIC: &[u8; 8] = b"STEPCAT6";
/// The format before forks: state, receipts, lineage and rewinds.
const MAGIC_WITHOUT_FORKS: &[u8; 8] = b"STEPCAT5";
/// The format before rewinds: state, receipts and lineage.
const MAGIC_WITHOUT_CONTINUITY: &[u8; 8] = b"STEPCAT4";
/// The format before lineage: the state and the receipts.
const MAGIC_WITHOUT_LINEAGE: &[u8; 8] = b"STEPCAT3";
/// The format before receipts: the state alone.
const MAGIC_WITHOUT_RECEIPTS: &[u8; 8] = b"STEPCAT2";
const PREFIX: &str = "snapshot-";
/// Suffix of a snapshot's first copy.
const SUFFIX: &str = ".bin";
/// Suffix of its second copy, read when the first is damaged.
const COPY_SUFFIX: &str = ".copy";

fn snapshot_path(dir: &Path, lsn: Lsn, suffix: &str) -> PathBuf {
    dir.join(format!("{PREFIX}{lsn:020}{suffix}"))
}

/// The first copy of the snapshot at `lsn` in `dir` (the one an object
/// store keeps).
pub fn file_path(dir: &Path, lsn: Lsn) -> PathBuf {
    snapshot_path(dir, lsn, SUFFIX)
}

/// The LSN of the snapshot file named `name` (either copy), when it is
/// one.
pub fn lsn_of(name: &str) -> Option<Lsn> {
    let rest = name.strip_prefix(PREFIX)?;
    [SUFFIX, COPY_SUFFIX]
        .into_iter()
        .find_map(|suffix| rest.strip_suffix(suffix)?.parse().ok())
}

/// One snapshot file found in the catalog directory.
struct ListedSnapshot {
    lsn: Lsn,
    path: PathBuf,
}

/// Snapshot files (both copies), oldest LSN first and the first copy
/// before the second.
fn list_snapshots(dir: &Path) -> Result<Vec<ListedSnapshot>, CatalogError> {
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
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let parsed = [(SUFFIX, 0u8), (COPY_SUFFIX, 1)]
            .into_iter()
            .find_map(|(suffix, order)| {
                rest.strip_suffix(suffix)
                    .and_then(|digits| digits.parse::<Lsn>().ok())
                    .map(|lsn| (lsn, order))
            });
        if let Some((lsn, order)) = parsed {
            found.push((lsn, order, entry.path()));
        }
    }
    found.sort();
    Ok(found
        .into_iter()
        .map(|(lsn, _, path)| ListedSnapshot { lsn, path })
        .collect())
}

/// The newest snapshot found at start.
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// Its catalog state.
    pub state: CatalogState,
    /// The ingest receipts it holds.
    pub receipts: ReceiptsSnapshot,
    /// Damaged copies of it that were passed over for a good one: the
    /// caller moves them out of the way.
    pub damaged: Vec<(PathBuf, CatalogError)>,
}

/// Loads the newest snapshot in `dir`, or `None` when there is none. Each
/// snapshot is written twice: a damaged copy is passed over (and named in
/// the answer) for the other. When every copy of the newest snapshot is
/// damaged, that is an error: the WAL before it is gone, so no older
/// snapshot can stand in.
pub fn load_latest(dir: &Path) -> Result<Option<LoadedSnapshot>, CatalogError> {
    crate::durable_fs::create_dir_synced(dir)
        .map_err(|source| CatalogError::io("create", dir, source))?;
    let listed = list_snapshots(dir)?;
    let Some(newest) = listed.last().map(|snapshot| snapshot.lsn) else {
        return Ok(None);
    };
    let mut damaged = Vec::new();
    for candidate in listed.iter().filter(|snapshot| snapshot.lsn == newest) {
        match read_snapshot(&candidate.path, newest) {
            Ok((state, receipts)) => {
                return Ok(Some(LoadedSnapshot {
                    state,
                    receipts,
                    damaged,
                }));
            }
            Err(error) => damaged.push((candidate.path.clone(), error)),
        }
    }
    let reasons: Vec<String> = damaged
        .iter()
        .map(|(path, error)| format!("{}: {error}", path.display()))
        .collect();
    Err(CatalogError::CorruptSnapshot {
        path: snapshot_path(dir, newest, SUFFIX),
        reason: format!(
            "every copy of the newest catalog snapshot is damaged ({}); restore the catalog \
             directory from a backup",
            reasons.join("; ")
        ),
    })
}

/// Reads and checks one snapshot file that should hold the state at `lsn`.
fn read_snapshot(path: &Path, lsn: Lsn) -> Result<(CatalogState, ReceiptsSnapshot), CatalogError> {
    let bytes = fs::read(path).map_err(|source| CatalogError::io("read", path, source))?;
    let corrupt = |reason: String| CatalogError::CorruptSnapshot {
        path: path.to_path_buf(),
        reason,
    };
    // How many sections after the state: receipts, lineage, rewinds,
    // forks.
    let sections = match bytes.get(..8) {
        Some(magic) if magic == MAGIC => 4,
        Some(magic) if magic == MAGIC_WITHOUT_FORKS => 3,
        Some(magic) if magic == MAGIC_WITHOUT_CONTINUITY => 2,
        Some(magic) if magic == MAGIC_WITHOUT_LINEAGE => 1,
        Some(magic) if magic == MAGIC_WITHOUT_RECEIPTS => 0,
        _ => return Err(corrupt("bad magic".to_string())),
    };
    if bytes.len() < 12 {
        return Err(corrupt("no checksum".to_string()));
    }
    let stored_crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let body = &bytes[12..];
    if crc32c::crc32c(body) != stored_crc {
        return Err(corrupt("checksum mismatch".to_string()));
    }
    let (mut state, mut used): (CatalogState, usize) =
        crate::bounded_decode::decode(body).map_err(|error| corrupt(error.to_string()))?;
    let mut receipts = ReceiptsSnapshot::default();
    if sections >= 1 {
        let (decoded, length): (ReceiptsSnapshot, usize) =
            crate::bounded_decode::decode(&body[used..])
                .map_err(|error| corrupt(error.to_string()))?;
        receipts = decoded;
        used += length;
    }
    state.lineage = if sections >= 2 {
        let (lineage, length): (LineageState, usize) = crate::bounded_decode::decode(&body[used..])
            .map_err(|error| corrupt(error.to_string()))?;
        used += length;
        lineage
    } else {
        LineageState::from_dataset_inputs(state.runs().map(std::sync::Arc::as_ref))
    };
    if sections >= 3 {
        let (continuity, length): (ContinuityState, usize) =
            crate::bounded_decode::decode(&body[used..])
                .map_err(|error| corrupt(error.to_string()))?;
        used += length;
        state.continuity = continuity;
    }
    if sections >= 4 {
        let (forks, _): (ForkTable, usize) = crate::bounded_decode::decode(&body[used..])
            .map_err(|error| corrupt(error.to_string()))?;
        state.continuity.set_fork_table(forks);
    }
    if state.applied_lsn != lsn {
        return Err(corrupt(format!(
            "names LSN {lsn} but holds state at LSN {}",
            state.applied_lsn
        )));
    }
    state.rebuild_indexes();
    Ok((state, receipts))
}

/// A catalog state encoded for a snapshot, not yet written: encoding needs
/// the catalog's read lock, writing and syncing do not.
pub struct EncodedSnapshot {
    lsn: Lsn,
    body: Vec<u8>,
}

/// Encodes `state` (its lineage included) and `receipts` (the caller holds the catalog's lock only
/// for this). The snapshot is named by `state.applied_lsn`: the caller
/// makes it at least the newest receipt's LSN.
pub fn encode(
    state: &CatalogState,
    receipts: &ReceiptsSnapshot,
) -> Result<EncodedSnapshot, CatalogError> {
    let config = bincode::config::standard();
    let mut body = bincode::serde::encode_to_vec(state, config)
        .map_err(|error| CatalogError::Encode(error.to_string()))?;
    bincode::serde::encode_into_std_write(receipts, &mut body, config)
        .map_err(|error| CatalogError::Encode(error.to_string()))?;
    bincode::serde::encode_into_std_write(&state.lineage, &mut body, config)
        .map_err(|error| CatalogError::Encode(error.to_string()))?;
    bincode::serde::encode_into_std_write(&state.continuity, &mut body, config)
        .map_err(|error| CatalogError::Encode(error.to_string()))?;
    bincode::serde::encode_into_std_write(state.continuity.fork_table(), &mut body, config)
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

    /// Writes the snapshot as the newest one, in two copies (each: temporary
    /// file, sync, rename; then one directory sync), and removes older ones.
    /// Returns the size of one copy in bytes.
    pub fn write(self, dir: &Path, io: &FileIo) -> Result<u64, CatalogError> {
        let EncodedSnapshot { lsn, body } = self;
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        for suffix in [SUFFIX, COPY_SUFFIX] {
            let path = snapshot_path(dir, lsn, suffix);
            let temp = dir.join(format!("{PREFIX}{lsn:020}{suffix}.tmp"));
            let mut file = io
                .create(&temp)
                .map_err(|source| CatalogError::io("create", &temp, source))?;
            io.write_all(&mut file, &temp, &header)
                .and_then(|()| io.write_all(&mut file, &temp, &body))
                .and_then(|()| io.sync_all(&file, &temp))
                .map_err(|source| CatalogError::io("write", &temp, source))?;
            drop(file);
            io.rename(&temp, &path)
                .map_err(|source| CatalogError::io("rename", &temp, source))?;
        }
        io.sync_dir(dir)
            .map_err(|source| CatalogError::io("sync directory", dir, source))?;
        for older in list_snapshots(dir)? {
            if older.lsn < lsn {
                fs::remove_file(&older.path)
                    .map_err(|source| CatalogError::io("remove", &older.path, source))?;
            }
        }
        Ok(body.len() as u64 + 12)
    }
}

/// Writes `state` (with no receipts) as the newest snapshot and removes
/// older ones. Returns the snapshot's size in bytes.
pub fn write(dir: &Path, state: &CatalogState, io: &FileIo) -> Result<u64, CatalogError> {
    encode(state, &ReceiptsSnapshot::default())?.write(dir, io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flip_middle_byte(path: &Path) {
        let mut bytes = fs::read(path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn snapshot_round_trips_in_two_copies_and_replaces_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_latest(dir.path()).unwrap().is_none());
        let mut state = CatalogState::new("file:///tmp/artifacts", 1);
        state.applied_lsn = 5;
        write(dir.path(), &state, &FileIo::default()).unwrap();
        state.applied_lsn = 9;
        write(dir.path(), &state, &FileIo::default()).unwrap();
        let loaded = load_latest(dir.path()).unwrap().unwrap();
        assert!(loaded.damaged.is_empty());
        assert_eq!(loaded.state.applied_lsn, 9);
        assert_eq!(
            loaded.state.experiment_by_name("Default").unwrap().name,
            "Default"
        );
        let left: Vec<PathBuf> = list_snapshots(dir.path())
            .unwrap()
            .into_iter()
            .map(|snapshot| snapshot.path)
            .collect();
        assert_eq!(
            left,
            [
                snapshot_path(dir.path(), 9, SUFFIX),
                snapshot_path(dir.path(), 9, COPY_SUFFIX)
            ]
        );
    }

    #[test]
    fn a_damaged_copy_is_passed_over_and_two_damaged_copies_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = CatalogState::new("file:///a", 1);
        state.applied_lsn = 3;
        write(dir.path(), &state, &FileIo::default()).unwrap();
        let first = snapshot_path(dir.path(), 3, SUFFIX);
        let second = snapshot_path(dir.path(), 3, COPY_SUFFIX);
        flip_middle_byte(&first);
        let loaded = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.state.applied_lsn, 3);
        assert_eq!(loaded.damaged.len(), 1);
        assert_eq!(loaded.damaged[0].0, first);
        // Only the second copy, damaged too: refused, naming both.
        fs::write(&second, b"STEPCAT2 and not much else").unwrap();
        let error = load_latest(dir.path()).unwrap_err();
        assert!(matches!(error, CatalogError::CorruptSnapshot { .. }));
        let message = error.to_string();
        assert!(
            message.contains("checksum mismatch") && message.contains(".copy"),
            "{message}"
        );
        // A snapshot from before copies existed still loads alone.
        let old = tempfile::tempdir().unwrap();
        write(old.path(), &state, &FileIo::default()).unwrap();
        fs::remove_file(snapshot_path(old.path(), 3, COPY_SUFFIX)).unwrap();
        assert_eq!(
            load_latest(old.path()).unwrap().unwrap().state.applied_lsn,
            3
        );
    }

    #[test]
    fn receipts_round_trip_and_snapshots_without_them_still_load() {
        use crate::catalog::receipts::IngestReceipt;
        let dir = tempfile::tempdir().unwrap();
        let mut state = CatalogState::new("file:///a", 1);
        state.applied_lsn = 8;
        let receipt = IngestReceipt {
            key: "batch-1".to_string(),
            body_crc: 7,
            body_len: 120,
            points: 30,
            runs: 2,
            time: 1_732_530_000_000,
        };
        let receipts = ReceiptsSnapshot {
            receipts: vec![(receipt.clone(), 8)],
            max_lsn: 8,
        };
        encode(&state, &receipts)
            .unwrap()
            .write(dir.path(), &FileIo::default())
            .unwrap();
        let loaded = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.receipts.receipts, [(receipt, 8)]);
        assert_eq!(loaded.receipts.max_lsn, 8);
        // A data directory written before receipts: magic STEPCAT2 and the
        // state alone.
        let old = tempfile::tempdir().unwrap();
        let body = bincode::serde::encode_to_vec(&state, bincode::config::standard()).unwrap();
        write_in_format(old.path(), 8, MAGIC_WITHOUT_RECEIPTS, &body);
        let loaded = load_latest(old.path()).unwrap().unwrap();
        assert_eq!(loaded.state.applied_lsn, 8);
        assert!(loaded.receipts.receipts.is_empty());
    }

    /// `state` written as a snapshot (without receipts) and loaded back.
    const BINCODE: bincode::config::Configuration = bincode::config::standard();

    /// The first three sections of a snapshot of `state`: the state, no
    /// receipts and the lineage (the `STEPCAT4` body).
    fn sections_up_to_lineage(state: &CatalogState) -> Vec<u8> {
        let mut body = bincode::serde::encode_to_vec(state, BINCODE).unwrap();
        bincode::serde::encode_into_std_write(ReceiptsSnapshot::default(), &mut body, BINCODE)
            .unwrap();
        bincode::serde::encode_into_std_write(&state.lineage, &mut body, BINCODE).unwrap();
        body
    }

    /// Writes `body` as the snapshot at `lsn` in the format of `magic`.
    fn write_in_format(dir: &Path, lsn: Lsn, magic: &[u8; 8], body: &[u8]) {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        bytes.extend_from_slice(body);
        fs::write(snapshot_path(dir, lsn, SUFFIX), bytes).unwrap();
    }

    fn round_trip(state: &CatalogState) -> CatalogState {
        let dir = tempfile::tempdir().unwrap();
        encode(state, &ReceiptsSnapshot::default())
            .unwrap()
            .write(dir.path(), &FileIo::default())
            .unwrap();
        load_latest(dir.path()).unwrap().unwrap().state
    }

    /// A running run of the Default experiment started at `start_time`.
    fn test_run(run_id: crate::model::RunId, start_time: i64) -> crate::model::Run {
        crate::model::Run::for_test(run_id, crate::model::ExperimentId::DEFAULT, "r", start_time)
    }

    #[test]
    fn rewinds_round_trip_and_snapshots_without_them_still_load() {
        use crate::catalog::CatalogMutation;
        use crate::model::RunId;
        let mut state = CatalogState::new("file:///a", 1);
        let run_id = RunId::new_random();
        CatalogMutation::CreateRun(Box::new(test_run(run_id, 1))).apply(&mut state);
        state.applied_lsn = 6;
        CatalogMutation::RewindRun {
            run_id,
            step: 200,
            time: 9,
        }
        .apply(&mut state);
        let rewinds = state.continuity().rewinds(run_id).to_vec();
        assert_eq!(rewinds.len(), 1);
        assert_eq!((rewinds[0].lsn, rewinds[0].step), (6, 200));
        let loaded = round_trip(&state);
        assert_eq!(loaded.continuity().rewinds(run_id), rewinds.as_slice());
        // Written before rewinds existed: three sections, magic STEPCAT4.
        let old = tempfile::tempdir().unwrap();
        let body = sections_up_to_lineage(&state);
        write_in_format(old.path(), 6, MAGIC_WITHOUT_CONTINUITY, &body);
        let loaded = load_latest(old.path()).unwrap().unwrap().state;
        assert!(loaded.continuity().rewinds(run_id).is_empty());
        assert!(loaded.run(run_id).is_some());
    }

    #[test]
    fn forks_round_trip_and_snapshots_without_them_still_load() {
        use crate::catalog::CatalogMutation;
        use crate::model::RunId;
        let mut state = CatalogState::new("file:///a", 1);
        let (parent, child) = (RunId::new_random(), RunId::new_random());
        CatalogMutation::CreateRun(Box::new(test_run(parent, 1))).apply(&mut state);
        state.applied_lsn = 4;
        CatalogMutation::RewindRun {
            run_id: parent,
            step: 3,
            time: 2,
        }
        .apply(&mut state);
        state.applied_lsn = 8;
        CatalogMutation::ForkRun {
            run: Box::new(test_run(child, 2)),
            parent,
            step: 50,
            time: 3,
            artifacts: Vec::new(),
            events: Vec::new(),
        }
        .apply(&mut state);
        let fork = *state.continuity().fork_of(child).unwrap();
        assert_eq!((fork.parent, fork.step, fork.lsn), (parent, 50, 8));
        let loaded = round_trip(&state);
        assert_eq!(loaded.continuity().fork_of(child), Some(&fork));
        assert!(loaded.run(child).is_some());
        // Written before forks existed: four sections, magic STEPCAT5.
        let old = tempfile::tempdir().unwrap();
        let mut body = sections_up_to_lineage(&state);
        bincode::serde::encode_into_std_write(&state.continuity, &mut body, BINCODE).unwrap();
        write_in_format(old.path(), 8, MAGIC_WITHOUT_FORKS, &body);
        let loaded = load_latest(old.path()).unwrap().unwrap().state;
        assert!(loaded.continuity().fork_of(child).is_none());
        assert_eq!(loaded.continuity().rewinds(parent).len(), 1);
    }

    #[test]
    fn lineage_round_trips_and_older_snapshots_get_it_from_dataset_inputs() {
        use std::collections::BTreeMap;

        use crate::catalog::CatalogMutation;
        use crate::model::{Dataset, DatasetInput, RunId};
        let mut state = CatalogState::new("file:///a", 1);
        let run_id = RunId::new_random();
        CatalogMutation::CreateRun(Box::new(test_run(run_id, 77))).apply(&mut state);
        // Written before lineage existed: the old mutation, then a snapshot
        // of the old format holding the state alone.
        CatalogMutation::LogInputs {
            run_id,
            inputs: vec![DatasetInput {
                dataset: Dataset {
                    name: "mnist".into(),
                    digest: "d1".into(),
                    source_type: "local".into(),
                    source: r#"{"uri": "/data/mnist"}"#.into(),
                    schema: None,
                    profile: None,
                },
                tags: BTreeMap::new(),
            }],
        }
        .apply(&mut state);
        state.applied_lsn = 4;
        let loaded = round_trip(&state);
        assert_eq!(loaded.lineage().events(), state.lineage().events());
        let artifact = loaded.lineage().artifacts().next().unwrap();
        assert_eq!(
            (artifact.uri.as_str(), artifact.creation_time),
            ("/data/mnist", 77)
        );
        let old = tempfile::tempdir().unwrap();
        let body = bincode::serde::encode_to_vec(&state, bincode::config::standard()).unwrap();
        write_in_format(old.path(), 4, MAGIC_WITHOUT_RECEIPTS, &body);
        let rebuilt = load_latest(old.path()).unwrap().unwrap().state;
        assert_eq!(rebuilt.lineage().events(), state.lineage().events());
        assert_eq!(
            rebuilt.lineage().artifacts().collect::<Vec<_>>(),
            state.lineage().artifacts().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_failed_write_leaves_the_previous_snapshot_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = CatalogState::new("file:///a", 1);
        state.applied_lsn = 3;
        write(dir.path(), &state, &FileIo::default()).unwrap();
        state.applied_lsn = 4;
        for rule in ["create:2", "write:3", "sync:1", "rename:2"] {
            let io = FileIo::with_faults(rule.parse().unwrap());
            assert!(write(dir.path(), &state, &io).is_err(), "{rule}");
            assert_eq!(io.injected_faults(), 1);
            let loaded = load_latest(dir.path()).unwrap().unwrap();
            // Either the new snapshot is whole in one copy, or the old one
            // is still there.
            assert!(loaded.damaged.is_empty(), "{rule}");
            assert!([3, 4].contains(&loaded.state.applied_lsn), "{rule}");
        }
        write(dir.path(), &state, &FileIo::default()).unwrap();
        assert_eq!(list_snapshots(dir.path()).unwrap().len(), 2);
    }
}
