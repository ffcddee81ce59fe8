//! The WAL writer thread: group commit, syncing and segment rotation.

use std::fs::File;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::frame::{body_checksum, encode_frame};
use super::segment::segment_path;
use super::{
    AppendRequest, Lsn, SegmentState, SyncPolicy, WalConfig, WalError, WalShared, WriterCommand,
};
use crate::durable_fs::FileIo;

/// A group is written as soon as it holds this many bytes.
const MAX_GROUP_BYTES: usize = 16 << 20;

/// The segment new records go to.
pub(crate) struct ActiveSegment {
    file: File,
    bytes: u64,
    path: std::path::PathBuf,
}

impl ActiveSegment {
    /// Creates the segment that starts at `first_lsn` and registers it.
    pub(crate) fn create(
        dir: &Path,
        first_lsn: Lsn,
        shared: &WalShared,
        io: &FileIo,
    ) -> Result<Self, WalError> {
        let path = segment_path(dir, first_lsn);
        let file = io
            .open_append(&path)
            .map_err(|source| WalError::io("create segment", &path, source))?;
        let bytes = file
            .metadata()
            .map_err(|source| WalError::io("stat", &path, source))?
            .len();
        io.sync_dir(dir)
            .map_err(|source| WalError::io("sync directory", dir, source))?;
        let mut segments = shared.segments();
        if !segments.iter().any(|segment| segment.path == path) {
            segments.push(SegmentState {
                first_lsn,
                last_lsn: None,
                bytes,
                path: path.clone(),
            });
        }
        Ok(ActiveSegment { file, bytes, path })
    }
}

struct Writer {
    shared: Arc<WalShared>,
    config: WalConfig,
    active: ActiveSegment,
    /// Highest LSN written to the active segment or any before it.
    written_lsn: Lsn,
    unsynced: bool,
    last_sync: Instant,
    frames: Vec<u8>,
    /// LSNs of failed groups not yet written as empty frames.
    skipped: Option<RangeInclusive<Lsn>>,
}

/// The writer thread's loop; returns when every sender is gone.
pub(crate) fn run(
    receiver: Receiver<WriterCommand>,
    shared: Arc<WalShared>,
    config: WalConfig,
    active: ActiveSegment,
    skipped: Option<RangeInclusive<Lsn>>,
) {
    let written_lsn = match &skipped {
        Some(skipped) => skipped.start() - 1,
        None => shared.completed_lsn.load(Ordering::SeqCst),
    };
    let mut writer = Writer {
        shared,
        config,
        active,
        written_lsn,
        unsynced: false,
        last_sync: Instant::now(),
        frames: Vec::with_capacity(1 << 20),
        skipped,
    };
    let mut group: Vec<AppendRequest> = Vec::new();
    loop {
        let command = match receiver.recv_timeout(writer.idle_timeout()) {
            Ok(command) => command,
            Err(RecvTimeoutError::Timeout) => {
                writer.sync_if_due(true);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut deferred = None;
        match command {
            WriterCommand::Append(request) => {
                let mut group_bytes = request.body.len();
                group.push(request);
                while group_bytes < MAX_GROUP_BYTES {
                    match receiver.try_recv() {
                        Ok(WriterCommand::Append(request)) => {
                            group_bytes += request.body.len();
                            group.push(request);
                        }
                        Ok(WriterCommand::Rotate(reply)) => {
                            deferred = Some(reply);
                            break;
                        }
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                writer.commit(&mut group);
            }
            WriterCommand::Rotate(reply) => deferred = Some(reply),
        }
        if let Some(reply) = deferred {
            let _ = reply.send(writer.rotate());
        }
    }
    writer.sync_if_due(true);
}

impl Writer {
    fn idle_timeout(&self) -> Duration {
        match self.config.sync {
            SyncPolicy::Interval(period) if self.unsynced => {
                period.saturating_sub(self.last_sync.elapsed())
            }
            _ => Duration::from_secs(3600),
        }
    }

    /// Writes one group of records, syncs per policy, then completes them.
    /// A group that cannot be written or synced fails (its records are not
    /// acknowledged) without stopping the log: the segment is cut back to
    /// its last whole frame, the group's LSNs are remembered as skipped,
    /// and the next group writes an empty frame for each of them before
    /// its own, so the LSNs on disk stay continuous. Every new group is the
    /// probe: once the disk takes writes again, the log is healthy again.
    fn commit(&mut self, group: &mut Vec<AppendRequest>) {
        let result = self.write_group(group);
        match &result {
            Ok(()) => self.shared.set_degraded(None),
            Err(error) => self.on_failed_group(group, error),
        }
        let mut last = self.written_lsn;
        for request in group.drain(..) {
            last = request.lsn;
            (request.on_complete)(request.lsn, result.clone());
        }
        if result.is_ok() {
            self.shared.completed_lsn.store(last, Ordering::SeqCst);
        }
        self.shared.processed_lsn.fetch_max(last, Ordering::SeqCst);
    }

    fn on_failed_group(&mut self, group: &[AppendRequest], error: &WalError) {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return;
        }
        // Under the interval and off policies, records written earlier
        // were acknowledged before their sync: after a failed sync they
        // cannot be vouched for (a later sync may report success for pages
        // the kernel dropped), so the log stops as before. A failed write
        // leaves them intact, and cutting back syncs them.
        let failed_sync = matches!(
            error,
            WalError::Io {
                operation: "sync",
                ..
            }
        );
        let cut = if failed_sync && self.config.sync != SyncPolicy::Always {
            Err(WalError::Poisoned(
                "a sync failed with acknowledged records unsynced".into(),
            ))
        } else {
            self.cut_back()
        };
        if let Err(cut_error) = cut {
            tracing::error!(%error, %cut_error, "WAL write failed and the segment could not be cut back; refusing further writes");
            self.shared.poison(error.to_string());
            return;
        }
        if let (Some(first), Some(last)) = (group.first(), group.last()) {
            let skipped = self.skipped.get_or_insert(first.lsn..=last.lsn);
            *skipped = *skipped.start()..=last.lsn;
        }
        tracing::error!(
            %error,
            records = group.len(),
            "WAL write failed; the records are refused and the log keeps taking writes"
        );
        self.shared.set_degraded(Some(error.to_string()));
    }

    /// Cuts the active segment back to its last whole, synced frame.
    fn cut_back(&mut self) -> Result<(), WalError> {
        self.active
            .file
            .set_len(self.active.bytes)
            .and_then(|()| {
                self.config
                    .io
                    .sync_all(&self.active.file, &self.active.path)
            })
            .map_err(|source| WalError::io("cut back", &self.active.path, source))?;
        self.unsynced = false;
        Ok(())
    }

    fn write_group(&mut self, group: &[AppendRequest]) -> Result<(), WalError> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(self.shared.poison_error());
        }
        if self.active.bytes >= self.config.segment_bytes {
            self.rotate()?;
        }
        self.frames.clear();
        // The first frame after a sync starts a sync group: replay knows
        // that damage before a later group's start is not a torn tail.
        let mut starts_group = !self.unsynced;
        // Skipped LSNs first: an empty frame each, which replay passes over.
        let skipped = self.skipped.clone();
        for lsn in skipped.clone().into_iter().flatten() {
            encode_frame(&mut self.frames, lsn, &[], body_checksum(&[]), starts_group);
            starts_group = false;
        }
        for request in group {
            encode_frame(
                &mut self.frames,
                request.lsn,
                &request.body,
                request.body_crc,
                starts_group,
            );
            starts_group = false;
        }
        self.config
            .io
            .write_all(&mut self.active.file, &self.active.path, &self.frames)
            .map_err(|source| WalError::io("write", &self.active.path, source))?;
        self.unsynced = true;
        match self.config.sync {
            SyncPolicy::Always => self.sync()?,
            SyncPolicy::Interval(_) => self.sync_if_due(false),
            SyncPolicy::Off => {}
        }
        let written = self.frames.len() as u64;
        self.active.bytes += written;
        self.shared
            .bytes_written
            .fetch_add(written, Ordering::Relaxed);
        if let Some(skipped) = skipped {
            self.written_lsn = *skipped.end();
            self.skipped = None;
        }
        if let Some(last) = group.last() {
            self.written_lsn = last.lsn;
        }
        let mut segments = self.shared.segments();
        if let Some(active) = segments.last_mut() {
            active.bytes = self.active.bytes;
            active.last_lsn = Some(self.written_lsn);
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), WalError> {
        self.config
            .io
            .sync_data(&self.active.file, &self.active.path)
            .map_err(|source| WalError::io("sync", &self.active.path, source))?;
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Syncs when the interval policy's period has passed (or `force`).
    fn sync_if_due(&mut self, force: bool) {
        if !self.unsynced {
            return;
        }
        let due = match self.config.sync {
            SyncPolicy::Interval(period) => force || self.last_sync.elapsed() >= period,
            SyncPolicy::Always => true,
            SyncPolicy::Off => force,
        };
        if due && let Err(error) = self.sync() {
            tracing::error!(%error, "WAL sync failed; refusing further writes");
            self.shared.poison(error.to_string());
        }
    }

    /// Syncs and closes the active segment and starts the next one.
    fn rotate(&mut self) -> Result<(), WalError> {
        if self.active.bytes == 0 {
            return Ok(());
        }
        if self.unsynced {
            self.sync()?;
        }
        self.active = ActiveSegment::create(
            &self.config.dir,
            self.written_lsn + 1,
            &self.shared,
            &self.config.io,
        )?;
        Ok(())
    }
}
