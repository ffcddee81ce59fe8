//! The write-ahead log: every mutation (a catalog change or a metric batch)
//! becomes one checksummed frame in an append-only segment file before it is
//! acknowledged.
//!
//! [`Wal::append`] gives each record the next LSN and queues it for the
//! single writer thread, which group-commits: it writes every record that
//! arrived meanwhile with one `write` and, under [`SyncPolicy::Always`], one
//! `fdatasync`, then runs each record's completion callback in LSN order.
//! Segments are removed by [`Wal::remove_segments_before`] once the engine
//! has persisted everything in them elsewhere.

mod frame;
pub mod segment;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, bounded, unbounded};
use thiserror::Error;

use crate::error_kind::{Classify, ErrorKind};

pub use segment::{ReplaySummary, read_live, replay};

/// A log sequence number: the position of a record in the log, from 1.
pub type Lsn = u64;

/// Runs once a record is durable (or failed to be), on the writer thread,
/// in LSN order, with the record's LSN. It must not block for long.
pub type CompletionCallback = Box<dyn FnOnce(Lsn, Result<(), WalError>) + Send>;

/// Errors of the write-ahead log.
#[derive(Debug, Error, Clone)]
pub enum WalError {
    /// A file operation failed.
    #[error("WAL {operation} failed for {path}: {message}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// A segment is damaged somewhere other than a torn final frame.
    #[error(
        "WAL segment {path} is corrupt at byte {offset}: {reason}. Refusing to start rather \
         than skip acknowledged data; move the damaged segment aside to start anyway"
    )]
    Corrupt {
        /// The damaged segment.
        path: PathBuf,
        /// Offset of the damaged frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The log's LSNs are not continuous: a middle segment is missing, or
    /// segments were renamed or restored out of order.
    #[error(
        "WAL records are missing: {path} at byte {offset} holds LSN {found} where LSN {expected} \
         should follow. A segment between was removed, renamed or restored out of order; \
         refusing to start rather than skip acknowledged data. Restore the missing segment; \
         moving {path} and every later segment aside starts without their records"
    )]
    Gap {
        /// The segment where the gap shows.
        path: PathBuf,
        /// Offset of the frame after the gap.
        offset: u64,
        /// The LSN that should have come next.
        expected: Lsn,
        /// The LSN found instead.
        found: Lsn,
    },
    /// A record's payload could not be decoded.
    #[error("WAL record {lsn} cannot be decoded: {message}")]
    Decode {
        /// The record.
        lsn: Lsn,
        /// The decoder's message.
        message: String,
    },
    /// An earlier write or sync failed; the log accepts nothing more.
    #[error("the WAL stopped accepting writes after an I/O error: {0}")]
    Poisoned(String),
    /// The log was shut down.
    #[error("the WAL is shut down")]
    ShutDown,
    /// A record is larger than one frame may be; nothing was written.
    #[error(
        "the request makes a WAL record of {bytes} bytes, more than the frame limit of {limit} \
         bytes; send it in smaller requests"
    )]
    RecordTooLarge {
        /// The record's size.
        bytes: usize,
        /// The frame limit.
        limit: usize,
    },
}

impl Classify for WalError {
    fn kind(&self) -> ErrorKind {
        match self {
            // A write or sync that failed: nothing acknowledged, and the
            // log takes writes again once the disk does.
            WalError::Io { .. } | WalError::Poisoned(_) => ErrorKind::InsufficientStorage,
            WalError::RecordTooLarge { .. } => ErrorKind::TooLarge,
            WalError::ShutDown => ErrorKind::Overloaded,
            WalError::Corrupt { .. } | WalError::Gap { .. } | WalError::Decode { .. } => {
                ErrorKind::Internal
            }
        }
    }
}

impl WalError {
    pub(crate) fn io(operation: &'static str, path: &Path, source: std::io::Error) -> Self {
        WalError::Io {
            operation,
            path: path.to_path_buf(),
            message: source.to_string(),
        }
    }
}

/// When the writer calls `fdatasync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every group commit is synced before it is acknowledged (the default):
    /// an acknowledged write survives a crash or power loss.
    Always,
    /// Writes are acknowledged once written to the OS and synced at most this
    /// long after: a power loss may lose that window, a process crash not.
    Interval(Duration),
    /// Never synced by the writer: for throwaway data.
    Off,
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncPolicy::Always => formatter.write_str("always"),
            SyncPolicy::Interval(period) => write!(formatter, "interval:{}ms", period.as_millis()),
            SyncPolicy::Off => formatter.write_str("off"),
        }
    }
}

impl FromStr for SyncPolicy {
    type Err = String;

    /// Parses `always`, `off`, `interval` (100 ms) or `interval:<N>ms`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "always" => Ok(SyncPolicy::Always),
            "off" => Ok(SyncPolicy::Off),
            "interval" => Ok(SyncPolicy::Interval(Duration::from_millis(100))),
            other => other
                .strip_prefix("interval:")
                .and_then(|rest| rest.strip_suffix("ms"))
                .and_then(|millis| millis.parse::<u64>().ok())
                .filter(|&millis| millis > 0)
                .map(|millis| SyncPolicy::Interval(Duration::from_millis(millis)))
                .ok_or_else(|| {
                    format!("'{other}' is not a sync policy: use always, interval, interval:<N>ms or off")
                }),
        }
    }
}

/// Settings of the log.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Directory of the segment files.
    pub dir: PathBuf,
    /// When to sync.
    pub sync: SyncPolicy,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// The file operations segments are written with.
    pub io: crate::durable_fs::FileIo,
}

/// Book-keeping of one segment on disk.
#[derive(Clone, Debug)]
pub(crate) struct SegmentState {
    first_lsn: Lsn,
    last_lsn: Option<Lsn>,
    bytes: u64,
    path: PathBuf,
}

/// State shared by the handle and the writer thread.
pub(crate) struct WalShared {
    segments: Mutex<Vec<SegmentState>>,
    /// Highest LSN whose completion callback has run with success.
    completed_lsn: AtomicU64,
    /// Highest LSN whose completion callback has run, with success or not.
    processed_lsn: AtomicU64,
    poisoned: AtomicBool,
    poison_message: Mutex<String>,
    /// Why the last group failed, while no group has succeeded since.
    degraded: Mutex<Option<String>>,
    fsyncs: AtomicU64,
    bytes_written: AtomicU64,
}

impl WalShared {
    fn segments(&self) -> MutexGuard<'_, Vec<SegmentState>> {
        self.segments
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records why the last group failed, or that the last group was
    /// written (`None`).
    fn set_degraded(&self, reason: Option<String>) {
        let mut degraded = self
            .degraded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if degraded.is_some() || reason.is_some() {
            if reason.is_none() {
                tracing::info!("WAL writes succeed again");
            }
            *degraded = reason;
        }
    }

    fn poison(&self, message: String) {
        *self
            .poison_message
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = message;
        self.poisoned.store(true, Ordering::SeqCst);
    }

    fn poison_error(&self) -> WalError {
        WalError::Poisoned(
            self.poison_message
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        )
    }
}

/// A command for the writer thread.
pub(crate) enum WriterCommand {
    Append(AppendRequest),
    Rotate(Sender<Result<(), WalError>>),
}

/// One record queued for writing.
pub(crate) struct AppendRequest {
    lsn: Lsn,
    body: Vec<u8>,
    body_crc: u32,
    on_complete: CompletionCallback,
}

struct Sequencer {
    next_lsn: Lsn,
    sender: Option<Sender<WriterCommand>>,
}

/// Counters of the log, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Bytes in segment files still on disk.
    pub live_bytes: u64,
    /// Segment files on disk.
    pub segments: usize,
    /// `fdatasync` calls so far.
    pub fsyncs: u64,
    /// Bytes written so far.
    pub bytes_written: u64,
}

/// The write-ahead log handle. Cheap to share behind an `Arc`.
pub struct Wal {
    sequencer: Mutex<Sequencer>,
    shared: Arc<WalShared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Wal {
    /// Opens the log for writing after replay found `last_lsn` as its
    /// highest record: existing segments are kept (until their content is
    /// persisted) and a new segment is started for new records.
    pub fn open(config: WalConfig, last_lsn: Lsn) -> Result<Wal, WalError> {
        Wal::open_continuing(config, last_lsn, last_lsn)
    }

    /// Opens the log after replay found `log_last_lsn` as its highest
    /// record while other stores (metric files, the catalog snapshot) have
    /// seen LSNs up to `last_lsn`: new records continue after `last_lsn`,
    /// and when the log holds records, the LSNs between are written as
    /// empty frames first, so the LSNs on disk stay continuous.
    pub fn open_continuing(
        config: WalConfig,
        log_last_lsn: Lsn,
        last_lsn: Lsn,
    ) -> Result<Wal, WalError> {
        let last_lsn = last_lsn.max(log_last_lsn);
        config
            .io
            .create_dir_synced(&config.dir)
            .map_err(|source| WalError::io("create directory", &config.dir, source))?;
        let mut segments = Vec::new();
        for existing in segment::list_segments(&config.dir)? {
            let bytes = std::fs::metadata(&existing.path)
                .map_err(|source| WalError::io("stat", &existing.path, source))?
                .len();
            if bytes == 0 {
                std::fs::remove_file(&existing.path).map_err(|source| {
                    WalError::io("remove empty segment", &existing.path, source)
                })?;
                continue;
            }
            segments.push(SegmentState {
                first_lsn: existing.first_lsn,
                // Replay read every record: all of an old segment is <= last_lsn.
                last_lsn: Some(last_lsn),
                bytes,
                path: existing.path,
            });
        }
        let has_records = !segments.is_empty();
        // Older segments' true last LSN is the next one's first minus one.
        for index in 0..segments.len().saturating_sub(1) {
            let next_first = segments[index + 1].first_lsn;
            segments[index].last_lsn = Some(next_first.saturating_sub(1));
        }
        let shared = Arc::new(WalShared {
            segments: Mutex::new(segments),
            completed_lsn: AtomicU64::new(last_lsn),
            processed_lsn: AtomicU64::new(last_lsn),
            poisoned: AtomicBool::new(false),
            poison_message: Mutex::new(String::new()),
            degraded: Mutex::new(None),
            fsyncs: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
        });
        let skipped = (has_records && log_last_lsn < last_lsn).then(|| log_last_lsn + 1..=last_lsn);
        let first_new = skipped
            .as_ref()
            .map_or(last_lsn + 1, |skipped| *skipped.start());
        let active = writer::ActiveSegment::create(&config.dir, first_new, &shared, &config.io)?;
        let (sender, receiver) = unbounded();
        let thread_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("stepstore-wal".to_string())
            .spawn(move || writer::run(receiver, thread_shared, config, active, skipped))
            .map_err(|source| WalError::io("spawn writer thread", Path::new("."), source))?;
        Ok(Wal {
            sequencer: Mutex::new(Sequencer {
                next_lsn: last_lsn + 1,
                sender: Some(sender),
            }),
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }

    fn sequencer(&self) -> MutexGuard<'_, Sequencer> {
        self.sequencer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `body` as the next record and returns its LSN. `on_complete`
    /// runs on the writer thread once the record is durable under the sync
    /// policy, after the callbacks of every earlier record.
    pub fn append(&self, body: Vec<u8>, on_complete: CompletionCallback) -> Result<Lsn, WalError> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(self.shared.poison_error());
        }
        if body.len() > frame::MAX_BODY_LEN {
            return Err(WalError::RecordTooLarge {
                bytes: body.len(),
                limit: frame::MAX_BODY_LEN,
            });
        }
        let body_crc = frame::body_checksum(&body);
        let mut sequencer = self.sequencer();
        let lsn = sequencer.next_lsn;
        let sender = sequencer.sender.as_ref().ok_or(WalError::ShutDown)?;
        sender
            .send(WriterCommand::Append(AppendRequest {
                lsn,
                body,
                body_crc,
                on_complete,
            }))
            .map_err(|_| WalError::ShutDown)?;
        sequencer.next_lsn += 1;
        Ok(lsn)
    }

    /// The LSN the next record will get, minus one.
    pub fn last_assigned_lsn(&self) -> Lsn {
        self.sequencer().next_lsn - 1
    }

    /// Highest LSN whose completion callback has run: every record up to it
    /// has been handed on.
    pub fn completed_lsn(&self) -> Lsn {
        self.shared.completed_lsn.load(Ordering::SeqCst)
    }

    /// Closes the active segment (if it holds records) and starts a new one.
    pub fn rotate(&self) -> Result<(), WalError> {
        let (reply, response) = bounded(1);
        {
            let sequencer = self.sequencer();
            let sender = sequencer.sender.as_ref().ok_or(WalError::ShutDown)?;
            sender
                .send(WriterCommand::Rotate(reply))
                .map_err(|_| WalError::ShutDown)?;
        }
        response.recv().map_err(|_| WalError::ShutDown)?
    }

    /// Deletes every closed segment whose records all have an LSN below
    /// `min_needed_lsn`. When the active segment is entirely below it too,
    /// it is rotated first so that it can go as well. Returns the number of
    /// segments removed.
    pub fn remove_segments_before(&self, min_needed_lsn: Lsn) -> Result<usize, WalError> {
        let active_is_obsolete = {
            let segments = self.shared.segments();
            segments.last().is_some_and(|active| {
                active.bytes > 0 && active.last_lsn.is_some_and(|last| last < min_needed_lsn)
            })
        };
        if active_is_obsolete {
            self.rotate()?;
        }
        let mut removed = 0;
        let mut segments = self.shared.segments();
        let closed = segments.len().saturating_sub(1);
        let mut index = 0;
        let mut remaining = closed;
        while remaining > 0 {
            remaining -= 1;
            let obsolete = match segments[index].last_lsn {
                Some(last) => last < min_needed_lsn,
                None => true,
            };
            if obsolete {
                let segment = segments.remove(index);
                std::fs::remove_file(&segment.path)
                    .map_err(|source| WalError::io("remove segment", &segment.path, source))?;
                tracing::debug!(path = %segment.path.display(), bytes = segment.bytes, "removed persisted WAL segment");
                removed += 1;
            } else {
                index += 1;
            }
        }
        Ok(removed)
    }

    /// The highest LSN whose record was written or refused: every record
    /// up to it has had its completion callback.
    pub fn processed_lsn(&self) -> Lsn {
        self.shared.processed_lsn.load(Ordering::SeqCst)
    }

    /// Why writes fail, while they do: the last write or sync failed (a
    /// full disk, an I/O error) and none has succeeded since, or the log
    /// stopped for good. `None` when healthy.
    pub fn degraded(&self) -> Option<String> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Some(self.shared.poison_error().to_string());
        }
        self.shared
            .degraded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> WalStats {
        let segments = self.shared.segments();
        WalStats {
            live_bytes: segments.iter().map(|segment| segment.bytes).sum(),
            segments: segments.len(),
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
            bytes_written: self.shared.bytes_written.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting records, lets the writer finish (and sync) what is
    /// queued, and joins it.
    pub fn shutdown(&self) {
        self.sequencer().sender = None;
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the WAL writer thread panicked");
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn config(dir: &Path, sync: SyncPolicy, segment_bytes: u64) -> WalConfig {
        WalConfig {
            dir: dir.to_path_buf(),
            sync,
            segment_bytes,
            io: Default::default(),
        }
    }

    fn append_and_wait(wal: &Wal, body: &[u8]) -> Lsn {
        let (sender, receiver) = mpsc::channel();
        let lsn = wal
            .append(
                body.to_vec(),
                Box::new(move |_, result| {
                    let _ = sender.send(result);
                }),
            )
            .unwrap();
        receiver.recv().unwrap().unwrap();
        lsn
    }

    fn read_all(dir: &Path) -> Vec<(Lsn, Vec<u8>)> {
        let mut records = Vec::new();
        replay(dir, |lsn, body| {
            records.push((lsn, body.to_vec()));
            Ok(())
        })
        .unwrap();
        records
    }

    #[test]
    fn sync_policy_parses() {
        assert_eq!("always".parse::<SyncPolicy>().unwrap(), SyncPolicy::Always);
        assert_eq!("off".parse::<SyncPolicy>().unwrap(), SyncPolicy::Off);
        assert_eq!(
            "interval:250ms".parse::<SyncPolicy>().unwrap(),
            SyncPolicy::Interval(Duration::from_millis(250))
        );
        assert!("sometimes".parse::<SyncPolicy>().is_err());
        assert!("interval:0ms".parse::<SyncPolicy>().is_err());
    }

    #[test]
    fn a_record_over_the_frame_limit_is_refused_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(config(dir.path(), SyncPolicy::Always, 1 << 20), 0).unwrap();
        // Zeroed pages are only mapped, never touched: the check comes
        // before the checksum.
        let body = vec![0u8; frame::MAX_BODY_LEN + 1];
        let error = wal
            .append(body, Box::new(|_, _| panic!("a refused record completed")))
            .unwrap_err();
        assert!(
            matches!(error, WalError::RecordTooLarge { bytes, limit }
                if bytes == frame::MAX_BODY_LEN + 1 && limit == frame::MAX_BODY_LEN),
            "{error}"
        );
        // Nothing was written and the LSN was not used.
        assert_eq!(append_and_wait(&wal, b"next"), 1);
        wal.shutdown();
        assert_eq!(read_all(dir.path()), vec![(1, b"next".to_vec())]);
    }

    #[test]
    fn appended_records_replay_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(config(dir.path(), SyncPolicy::Always, 1 << 20), 0).unwrap();
        for index in 0..10u8 {
            assert_eq!(append_and_wait(&wal, &[index; 3]), index as u64 + 1);
        }
        wal.shutdown();
        let records = read_all(dir.path());
        assert_eq!(records.len(), 10);
        assert_eq!(records[9], (10, vec![9u8; 3]));

        let reopened = Wal::open(config(dir.path(), SyncPolicy::Off, 1 << 20), 10).unwrap();
        assert_eq!(append_and_wait(&reopened, b"next"), 11);
        reopened.shutdown();
        assert_eq!(read_all(dir.path()).len(), 11);
    }

    #[test]
    fn lsns_seen_beyond_the_log_are_written_as_empty_frames() {
        // The log ends at 3 but a snapshot or file has seen 7: new records
        // start at 8, and 4..=7 are written as empty frames first, so the
        // next replay finds no gap.
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(config(dir.path(), SyncPolicy::Always, 1 << 20), 0).unwrap();
        for body in [b"a", b"b", b"c"] {
            append_and_wait(&wal, body);
        }
        wal.shutdown();
        let config = config(dir.path(), SyncPolicy::Always, 1 << 20);
        let reopened = Wal::open_continuing(config.clone(), 3, 7).unwrap();
        assert_eq!(append_and_wait(&reopened, b"h"), 8);
        reopened.shutdown();
        let records = read_all(dir.path());
        let lsns: Vec<Lsn> = records.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(lsns, [1, 2, 3, 8], "empty frames are passed over");
        // Reopened again without a write in between: still continuous.
        let again = Wal::open_continuing(config.clone(), 8, 8).unwrap();
        again.shutdown();
        let empty_log = tempfile::tempdir().unwrap();
        let fresh = Wal::open_continuing(
            WalConfig {
                dir: empty_log.path().to_path_buf(),
                ..config
            },
            0,
            41,
        )
        .unwrap();
        assert_eq!(append_and_wait(&fresh, b"x"), 42);
        fresh.shutdown();
        assert_eq!(read_all(empty_log.path()), vec![(42, b"x".to_vec())]);
        assert_eq!(read_all(dir.path()).len(), 4);
    }

    #[test]
    fn concurrent_appends_complete_in_lsn_order() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(
            Wal::open(
                config(
                    dir.path(),
                    SyncPolicy::Interval(Duration::from_millis(5)),
                    4096,
                ),
                0,
            )
            .unwrap(),
        );
        let completions = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for thread in 0..4u8 {
            let wal = Arc::clone(&wal);
            let completions = Arc::clone(&completions);
            threads.push(std::thread::spawn(move || {
                for index in 0..200u8 {
                    let completions = Arc::clone(&completions);
                    let (sender, receiver) = mpsc::channel();
                    let lsn = wal
                        .append(
                            vec![thread, index],
                            Box::new(move |lsn, result| {
                                result.unwrap();
                                completions.lock().unwrap().push(lsn);
                                let _ = sender.send(lsn);
                            }),
                        )
                        .unwrap();
                    assert_eq!(receiver.recv().unwrap(), lsn);
                }
            }));
        }
        for thread in threads {
            thread.join().unwrap();
        }
        let stats = wal.stats();
        assert!(stats.segments > 1, "small segments rotate");
        wal.shutdown();
        let records = read_all(dir.path());
        assert_eq!(records.len(), 800);
        let lsns: Vec<Lsn> = records.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(lsns, (1..=800).collect::<Vec<_>>());
        let completed = completions.lock().unwrap().clone();
        assert_eq!(
            completed,
            (1..=800).collect::<Vec<_>>(),
            "callbacks run in LSN order"
        );
    }

    #[test]
    fn segments_below_the_needed_lsn_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(config(dir.path(), SyncPolicy::Off, 64), 0).unwrap();
        for index in 0..20u8 {
            append_and_wait(&wal, &[index; 40]);
        }
        let before = wal.stats().segments;
        assert!(before >= 10);
        wal.remove_segments_before(11).unwrap();
        let kept: Vec<Lsn> = read_all(dir.path()).iter().map(|(lsn, _)| *lsn).collect();
        assert!(
            (11..=20).all(|lsn| kept.contains(&lsn)),
            "needed records stay: {kept:?}"
        );
        assert!(kept.len() < 20, "older segments went: {kept:?}");
        // Everything persisted: only an empty active segment stays.
        wal.remove_segments_before(21).unwrap();
        assert!(read_all(dir.path()).is_empty());
        assert_eq!(wal.stats().live_bytes, 0);
        assert_eq!(append_and_wait(&wal, b"after"), 21);
    }
}
