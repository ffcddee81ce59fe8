//! The dormant-run log: one file at the top of the metrics tree recording
//! which finished runs went dormant, with what the start needs to hold them
//! dormant again without opening their directories (experiment, next
//! sequence number, newest WAL record, key summaries), and which were
//! written to again since.
//!
//! Like a run's manifest, the log is a cache, never the truth: a run it
//! does not name is loaded from its directory, and a dormant run's files
//! are checked against its directory when loaded again. One thing must
//! hold for it to be trusted: a run written to after its `Dormant` record
//! has a later `Awake` record on disk before its new state can be the only
//! one (before the WAL drops the new records). [`DormantLog::wake`] syncs
//! the record for that; `Dormant` records are appended without a sync (one
//! lost in a crash only means that run is loaded from its directory).
//!
//! Records are framed as `length: u32 LE`, `crc32c: u32 LE`, then the
//! record in bincode. A record cut short or failing its checksum at the
//! end of the file is a torn append, and the file is cut back to before
//! it; a damaged record followed by good ones means the file was damaged,
//! and none of it is used (an `Awake` record may be among the lost).

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::StorageError;
use crate::model::{ExperimentId, KeySummary, RunId};
use crate::wal::Lsn;

/// The log's name in the metrics tree (the leading `_` keeps readers of
/// the tree in place from taking it for data).
pub(crate) const DORMANT_LOG_FILE: &str = "_dormant_runs.log";
/// The first bytes of the log, with its version.
const MAGIC: &[u8; 16] = b"stepstore-dorm1\n";
/// Bytes before each record: its length and checksum.
const FRAME_BYTES: usize = 8;
/// The largest record read back (a run with 100,000 keys is about 10 MB).
const MAX_RECORD_BYTES: usize = 256 << 20;

/// What the start needs to hold a run dormant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct DormantEntry {
    /// The run.
    pub(crate) run_id: RunId,
    /// Its experiment.
    pub(crate) experiment_id: ExperimentId,
    /// The sequence number its next file takes.
    pub(crate) next_seq: u64,
    /// The newest WAL record its files hold.
    pub(crate) max_lsn: Lsn,
    /// Every key's summary.
    #[serde(with = "stored_summaries")]
    pub(crate) summaries: Vec<(String, KeySummary)>,
}

/// Key summaries in the log: their fields as plain numbers (the JSON
/// mapping of `KeySummary` writes non-finite floats as strings, which a
/// binary format cannot read back).
mod stored_summaries {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::model::KeySummary;

    /// `count, min_step, max_step, min_value, max_value, latest_step,
    /// latest_timestamp, latest_value`.
    type Stored = (u64, i64, i64, f64, f64, i64, i64, f64);

    fn stored(summary: &KeySummary) -> Stored {
        (
            summary.count,
            summary.min_step,
            summary.max_step,
            summary.min_value,
            summary.max_value,
            summary.latest_step,
            summary.latest_timestamp,
            summary.latest_value,
        )
    }

    pub(super) fn serialize<S: Serializer>(
        summaries: &[(String, KeySummary)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let stored: Vec<(&str, Stored)> = summaries
            .iter()
            .map(|(key, summary)| (key.as_str(), stored(summary)))
            .collect();
        stored.serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(String, KeySummary)>, D::Error> {
        let stored: Vec<(String, Stored)> = Vec::deserialize(deserializer)?;
        Ok(stored
            .into_iter()
            .map(|(key, fields)| {
                let summary = KeySummary {
                    count: fields.0,
                    min_step: fields.1,
                    max_step: fields.2,
                    min_value: fields.3,
                    max_value: fields.4,
                    latest_step: fields.5,
                    latest_timestamp: fields.6,
                    latest_value: fields.7,
                };
                (key, summary)
            })
            .collect())
    }
}

/// One record of the log.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum DormantRecord {
    /// The run went dormant as described.
    Dormant(DormantEntry),
    /// The run was written to again: an earlier `Dormant` record of it no
    /// longer describes it.
    Awake(RunId),
}

/// What reading the log found.
#[derive(Debug, Default)]
pub(crate) struct DormantLogContents {
    /// Records read (a rewrite keeping only the dormant runs is worth it
    /// once they far outnumber them).
    pub(crate) records: u64,
    /// Whether the file was damaged and nothing of it may be used (the
    /// records handed over before it was found must be dropped too).
    pub(crate) discarded: bool,
}

/// The open log.
pub(crate) struct DormantLog {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl DormantLog {
    /// Opens (or creates) the log in `metrics_dir`, handing each record to
    /// `visit` in order (a later record of a run overrides earlier ones).
    /// A torn tail is cut off; a damaged log is started afresh
    /// (`discarded`: drop every record visited).
    pub(crate) fn open(
        metrics_dir: &Path,
        visit: impl FnMut(DormantRecord),
    ) -> Result<(DormantLog, DormantLogContents), StorageError> {
        crate::durable_fs::create_dir_synced(metrics_dir)
            .map_err(|source| StorageError::io("create", metrics_dir, source))?;
        let path = metrics_dir.join(DORMANT_LOG_FILE);
        let io = |action, source| StorageError::io(action, &path, source);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|source| io("open", source))?;
        let (contents, keep) = parse(&file, visit).map_err(|source| io("read", source))?;
        if contents.discarded {
            tracing::warn!(path = %path.display(), "the dormant-run log is damaged; finished runs are loaded from their directories and the log starts afresh");
        }
        let length = file
            .metadata()
            .map_err(|source| io("inspect", source))?
            .len();
        if keep != length || length < MAGIC.len() as u64 {
            let keep = if keep < MAGIC.len() as u64 { 0 } else { keep };
            file.set_len(keep)
                .map_err(|source| io("truncate", source))?;
            file.seek(SeekFrom::End(0))
                .map_err(|source| io("seek", source))?;
            if keep == 0 {
                file.write_all(MAGIC)
                    .map_err(|source| io("write", source))?;
            }
        }
        let log = DormantLog {
            path,
            file: Mutex::new(Some(file)),
        };
        Ok((log, contents))
    }

    /// Appends `Dormant` records, without a sync.
    pub(crate) fn record_dormant(
        &self,
        entries: impl IntoIterator<Item = DormantEntry>,
    ) -> Result<(), StorageError> {
        let mut framed = Vec::new();
        for entry in entries {
            frame(&DormantRecordRef::Dormant(&entry), &mut framed)?;
        }
        self.append(&framed, false)
    }

    /// Appends and syncs an `Awake` record: call before the run's state
    /// changes.
    pub(crate) fn wake(&self, run_id: RunId) -> Result<(), StorageError> {
        let mut framed = Vec::new();
        frame(&DormantRecordRef::Awake(run_id), &mut framed)?;
        self.append(&framed, true)
    }

    /// Replaces the log with one holding only `entries`, through a
    /// temporary file renamed into place and synced.
    pub(crate) fn rewrite(
        &self,
        entries: impl IntoIterator<Item = DormantEntry>,
    ) -> Result<(), StorageError> {
        let mut body = MAGIC.to_vec();
        for entry in entries {
            frame(&DormantRecordRef::Dormant(&entry), &mut body)?;
        }
        let temporary = self.path.with_extension("log.tmp");
        let io = |action, source| StorageError::io(action, &temporary, source);
        let mut slot = self.lock();
        {
            let mut file = File::create(&temporary).map_err(|source| io("create", source))?;
            file.write_all(&body)
                .map_err(|source| io("write", source))?;
            file.sync_all().map_err(|source| io("sync", source))?;
        }
        fs::rename(&temporary, &self.path).map_err(|source| io("rename", source))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|handle| handle.sync_all())
                .map_err(|source| io("sync the directory of", source))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|source| io("open", source))?;
        *slot = Some(file);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<File>> {
        self.file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends framed records. On failure the log is removed and no longer
    /// written (a later start loads every run from its directory): a
    /// missing `Awake` record must not let a stale `Dormant` one stand.
    fn append(&self, framed: &[u8], sync: bool) -> Result<(), StorageError> {
        let mut slot = self.lock();
        let Some(file) = slot.as_mut() else {
            return Ok(());
        };
        let written = file
            .write_all(framed)
            .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        if let Err(source) = written {
            *slot = None;
            let removed = fs::remove_file(&self.path);
            tracing::error!(path = %self.path.display(), error = %source, removed = removed.is_ok(), "cannot append to the dormant-run log; it is no longer used");
            return Err(StorageError::io("append to", &self.path, source));
        }
        Ok(())
    }
}

/// The runs the log in `metrics_dir` holds dormant, and its record count,
/// read without changing the file (tests of its writers).
#[cfg(test)]
pub(crate) fn dormant_runs_in(metrics_dir: &Path) -> (Vec<RunId>, u64) {
    let mut dormant = std::collections::HashSet::new();
    let file = File::open(metrics_dir.join(DORMANT_LOG_FILE)).expect("the dormant-run log");
    let (contents, _) = parse(file, |record| match record {
        DormantRecord::Dormant(entry) => {
            dormant.insert(entry.run_id);
        }
        DormantRecord::Awake(run_id) => {
            dormant.remove(&run_id);
        }
    })
    .expect("readable");
    assert!(!contents.discarded);
    (dormant.into_iter().collect(), contents.records)
}

/// Removes the log of `metrics_dir` (a start that will not keep it up to
/// date: without dormant runs, a run it names could be written to with no
/// `Awake` record).
pub(crate) fn remove(metrics_dir: &Path) -> Result<(), StorageError> {
    let path = metrics_dir.join(DORMANT_LOG_FILE);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StorageError::io("remove", &path, source)),
    }
}

/// A record to encode, borrowing its entry.
#[derive(Serialize)]
enum DormantRecordRef<'a> {
    Dormant(&'a DormantEntry),
    Awake(RunId),
}

/// Appends `record`, framed, to `out`.
fn frame(record: &DormantRecordRef<'_>, out: &mut Vec<u8>) -> Result<(), StorageError> {
    let body =
        bincode::serde::encode_to_vec(record, bincode::config::standard()).map_err(|error| {
            StorageError::Metadata {
                path: PathBuf::from(DORMANT_LOG_FILE),
                reason: format!("cannot encode a dormant-run record: {error}"),
            }
        })?;
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// A record at `offset` of `bytes` and where the next starts, if one is
/// whole there and passes its checksum.
fn record_at(bytes: &[u8], offset: usize) -> Option<(DormantRecord, usize)> {
    let frame = bytes.get(offset..offset + FRAME_BYTES)?;
    let length = u32::from_le_bytes(frame[..4].try_into().ok()?) as usize;
    let checksum = u32::from_le_bytes(frame[4..].try_into().ok()?);
    if length > MAX_RECORD_BYTES {
        return None;
    }
    let start = offset + FRAME_BYTES;
    let body = bytes.get(start..start + length)?;
    if crc32c::crc32c(body) != checksum {
        return None;
    }
    let (record, used) =
        bincode::serde::decode_from_slice(body, bincode::config::standard()).ok()?;
    (used == length).then_some((record, start + length))
}

/// Hands the records of a log to `visit`, reading it front to back (one
/// record in memory at a time); what was found, and how many of its bytes
/// to keep.
fn parse(
    file: impl Read,
    mut visit: impl FnMut(DormantRecord),
) -> std::io::Result<(DormantLogContents, u64)> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut contents = DormantLogContents::default();
    let mut magic = [0u8; MAGIC.len()];
    let read = read_up_to(&mut reader, &mut magic)?;
    if read < MAGIC.len() || &magic != MAGIC {
        contents.discarded = read > 0;
        return Ok((contents, 0));
    }
    let mut offset = MAGIC.len() as u64;
    let mut framed = Vec::new();
    loop {
        framed.clear();
        framed.resize(FRAME_BYTES, 0);
        let read = read_up_to(&mut reader, &mut framed)?;
        if read == 0 {
            return Ok((contents, offset));
        }
        framed.truncate(read);
        if read == FRAME_BYTES {
            let length = u32::from_le_bytes([framed[0], framed[1], framed[2], framed[3]]) as usize;
            if length <= MAX_RECORD_BYTES {
                framed.resize(FRAME_BYTES + length, 0);
                let read = read_up_to(&mut reader, &mut framed[FRAME_BYTES..])?;
                framed.truncate(FRAME_BYTES + read);
            }
        }
        let Some((record, used)) = record_at(&framed, 0) else {
            // The rest of the file, from this record on.
            reader.read_to_end(&mut framed)?;
            if damaged_before_good_records(&framed, 0) {
                return Ok((
                    DormantLogContents {
                        discarded: true,
                        ..DormantLogContents::default()
                    },
                    0,
                ));
            }
            // A torn append: cut it off.
            return Ok((contents, offset));
        };
        contents.records += 1;
        visit(record);
        offset += used as u64;
    }
}

/// Reads until `buffer` is full or the input ends; the bytes read.
fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Whether the bad record at `offset` is followed by a good one: damage
/// inside the file rather than an append cut short at its end.
fn damaged_before_good_records(bytes: &[u8], offset: usize) -> bool {
    let Some(frame) = bytes.get(offset..offset + FRAME_BYTES) else {
        return false;
    };
    let length = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let next = offset + FRAME_BYTES + length;
    if length <= MAX_RECORD_BYTES && next < bytes.len() && record_at(bytes, next).is_some() {
        return true;
    }
    // The length itself may be what was damaged: any good record further
    // on gives it away.
    (offset + 1..bytes.len().saturating_sub(FRAME_BYTES))
        .any(|start| record_at(bytes, start).is_some())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn entry(run_id: RunId, value: f64) -> DormantEntry {
        DormantEntry {
            run_id,
            experiment_id: ExperimentId::new(4),
            next_seq: 3,
            max_lsn: 17,
            summaries: vec![
                ("loss".to_string(), KeySummary::of_point(9, 10, value)),
                ("nan".to_string(), KeySummary::of_point(1, 2, f64::NAN)),
            ],
        }
    }

    fn summary_bits(entry: &DormantEntry) -> Vec<u64> {
        entry
            .summaries
            .iter()
            .map(|(_, summary)| summary.latest_value.to_bits())
            .collect()
    }

    /// Opens the log, applying its records in order.
    fn open(dir: &Path) -> (DormantLog, DormantLogContents, HashMap<RunId, DormantEntry>) {
        let mut dormant = HashMap::new();
        let (log, contents) = DormantLog::open(dir, |record| match record {
            DormantRecord::Dormant(entry) => {
                dormant.insert(entry.run_id, entry);
            }
            DormantRecord::Awake(run_id) => {
                dormant.remove(&run_id);
            }
        })
        .unwrap();
        if contents.discarded {
            dormant.clear();
        }
        (log, contents, dormant)
    }

    #[test]
    fn the_last_record_of_a_run_wins_across_reopens_and_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second, third) = (
            RunId::new_random(),
            RunId::new_random(),
            RunId::new_random(),
        );
        {
            let (log, contents, dormant) = open(dir.path());
            assert!(dormant.is_empty() && !contents.discarded);
            log.record_dormant([entry(first, 1.0), entry(second, 2.0)])
                .unwrap();
            log.wake(first).unwrap();
            log.record_dormant([entry(third, 3.0)]).unwrap();
        }
        let (log, contents, dormant) = open(dir.path());
        assert_eq!(contents.records, 4);
        let mut runs: Vec<RunId> = dormant.keys().copied().collect();
        runs.sort();
        let mut expected = vec![second, third];
        expected.sort();
        assert_eq!(runs, expected);
        let kept = &dormant[&second];
        assert_eq!(kept.next_seq, 3);
        assert_eq!(summary_bits(kept), summary_bits(&entry(second, 2.0)));
        log.rewrite(dormant.into_values()).unwrap();
        log.wake(third).unwrap();
        drop(log);
        let (_, contents, dormant) = open(dir.path());
        assert_eq!(contents.records, 3);
        assert_eq!(dormant.keys().collect::<Vec<_>>(), vec![&second]);
    }

    #[test]
    fn a_torn_append_is_cut_off_and_damage_inside_discards_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DORMANT_LOG_FILE);
        let (first, second) = (RunId::new_random(), RunId::new_random());
        {
            let (log, _, _) = open(dir.path());
            log.record_dormant([entry(first, 1.0)]).unwrap();
            log.record_dormant([entry(second, 2.0)]).unwrap();
        }
        let whole = fs::read(&path).unwrap();
        // Cut anywhere inside the last record: the first stays, and the
        // next append follows it.
        let first_end = {
            let mut framed = MAGIC.to_vec();
            frame(&DormantRecordRef::Dormant(&entry(first, 1.0)), &mut framed).unwrap();
            framed.len()
        };
        for cut in [first_end + 1, first_end + 7, whole.len() - 1] {
            fs::write(&path, &whole[..cut]).unwrap();
            let (log, contents, dormant) = open(dir.path());
            assert!(!contents.discarded, "cut at {cut}");
            assert_eq!(dormant.keys().collect::<Vec<_>>(), vec![&first]);
            assert_eq!(fs::metadata(&path).unwrap().len(), first_end as u64);
            log.wake(first).unwrap();
            drop(log);
            let (_, _, dormant) = open(dir.path());
            assert!(dormant.is_empty(), "cut at {cut}");
        }
        // A flipped bit in the first record, the second intact: nothing is
        // used (a lost record could have been an `Awake`).
        for flipped in [MAGIC.len() + 2, MAGIC.len() + 12, first_end - 1] {
            let mut damaged = whole.clone();
            damaged[flipped] ^= 0x10;
            fs::write(&path, &damaged).unwrap();
            let (_, contents, dormant) = open(dir.path());
            assert!(contents.discarded, "flipped byte {flipped}");
            assert!(dormant.is_empty());
            let (_, contents, _) = open(dir.path());
            assert!(!contents.discarded, "started afresh");
        }
        // Not a log at all.
        fs::write(&path, b"something else entirely").unwrap();
        let (_, contents, dormant) = open(dir.path());
        assert!(contents.discarded && dormant.is_empty());
    }
}
