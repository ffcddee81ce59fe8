//! Spill files: buffered points of many runs moved out of memory together.
//!
//! With thousands of runs logging at once, the buffer budget gives each run
//! only a few hundred points; writing each run's share as its own Parquet
//! file made thousands of tiny files a second, each with its syncs, its
//! footer (larger than its points) and a compaction later. Instead, when
//! buffers must give memory back, a shard writes the small buffers of many
//! runs into one spill file here: one file, no footer, one write. Each
//! run's part (a [`SpillMember`]) is read back on demand by reads of the
//! run, and when the run's points are written to its own Parquet file
//! (enough of them, its buffer's age, its end, a flush), the member is let
//! go. A spill file is removed once no member of it is held.
//!
//! Spill files are not a durable copy: the WAL keeps every point they hold
//! until its run's Parquet file is written, and a start removes what a
//! previous process left in the spill directory.
//!
//! A member's bytes: a frame of `[u32 length][u32 CRC32C]` and a zstd block
//! of `[u32 rows]`, the key ids (`u32` each), the steps and the timestamps
//! (zig-zag varint deltas from the row before) and the values (byte-stream
//! split: the eight bytes of each value in eight planes), all little endian.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{LoggedRows, StorageError};
use crate::durable_fs::FileIo;

/// File name extension of spill files.
pub(crate) const SPILL_EXTENSION: &str = "spill";

/// zstd level of members: the fastest, as spilling is on the ingest path.
const ZSTD_LEVEL: i32 = 1;

/// Bytes of a member's frame header (length and checksum).
const FRAME_HEADER: usize = 8;

/// Counters of spill files, for `/metrics`.
#[derive(Debug, Default)]
pub struct SpillStats {
    files_written: AtomicU64,
    bytes_written: AtomicU64,
    points_spilled: AtomicU64,
    files_live: AtomicU64,
    bytes_live: AtomicU64,
    member_reads: AtomicU64,
}

impl SpillStats {
    /// Spill files written since start.
    pub fn files_written(&self) -> u64 {
        self.files_written.load(Ordering::Relaxed)
    }

    /// Bytes of spill files written since start.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Points moved to spill files since start.
    pub fn points_spilled(&self) -> u64 {
        self.points_spilled.load(Ordering::Relaxed)
    }

    /// Spill files on disk now.
    pub fn files_live(&self) -> u64 {
        self.files_live.load(Ordering::Relaxed)
    }

    /// Bytes of the spill files on disk now.
    pub fn bytes_live(&self) -> u64 {
        self.bytes_live.load(Ordering::Relaxed)
    }

    /// Members read back from spill files since start.
    pub fn member_reads(&self) -> u64 {
        self.member_reads.load(Ordering::Relaxed)
    }
}

/// The spill directory of a data directory: where spill files are written,
/// and emptied at start.
#[derive(Clone, Debug)]
pub struct SpillDir {
    dir: PathBuf,
    io: FileIo,
    next_file: Arc<AtomicU64>,
    stats: Arc<SpillStats>,
}

impl SpillDir {
    /// The spill directory `dir`, created if missing and emptied of spill
    /// files a previous process left (their points are in the WAL).
    pub fn open(dir: &Path, io: FileIo) -> Result<SpillDir, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| StorageError::io("create spill directory", dir, source))?;
        let entries = std::fs::read_dir(dir)
            .map_err(|source| StorageError::io("list spill directory", dir, source))?;
        let mut removed = 0u64;
        for entry in entries {
            let entry =
                entry.map_err(|source| StorageError::io("list spill directory", dir, source))?;
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == SPILL_EXTENSION) {
                std::fs::remove_file(&path)
                    .map_err(|source| StorageError::io("remove old spill file", &path, source))?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(dir = %dir.display(), files = removed, "removed spill files of a previous process (their points are replayed from the WAL)");
        }
        Ok(SpillDir {
            dir: dir.to_path_buf(),
            io,
            next_file: Arc::new(AtomicU64::new(1)),
            stats: Arc::new(SpillStats::default()),
        })
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<SpillStats> {
        &self.stats
    }

    /// Writes `members` (each the rows of one buffer, in logged order, as
    /// one or more segments) into a new spill file, and returns a handle to
    /// each, in order. No sync: the WAL is what makes the points durable.
    pub fn write(&self, members: &[Vec<LoggedRows<'_>>]) -> Result<Vec<SpillMember>, StorageError> {
        let number = self.next_file.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{number:010}.{SPILL_EXTENSION}"));
        let mut bytes = Vec::new();
        let mut placed = Vec::with_capacity(members.len());
        for segments in members {
            let offset = bytes.len() as u64;
            let rows = encode_member(&path, segments, &mut bytes)?;
            placed.push((offset, (bytes.len() as u64 - offset) as u32, rows));
        }
        let written = (|| {
            let mut file = self.io.create(&path)?;
            self.io.write_all(&mut file, &path, &bytes)
        })();
        if let Err(source) = written {
            let _ = std::fs::remove_file(&path);
            return Err(StorageError::io("write spill file", &path, source));
        }
        let file = File::open(&path).map_err(|source| {
            let _ = std::fs::remove_file(&path);
            StorageError::io("open spill file", &path, source)
        })?;
        let total = bytes.len() as u64;
        let rows: u64 = placed.iter().map(|&(_, _, rows)| rows as u64).sum();
        self.stats.files_written.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_written.fetch_add(total, Ordering::Relaxed);
        self.stats.points_spilled.fetch_add(rows, Ordering::Relaxed);
        self.stats.files_live.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_live.fetch_add(total, Ordering::Relaxed);
        let shared = Arc::new(SpillFile {
            path,
            file,
            bytes: total,
            stats: Arc::clone(&self.stats),
        });
        Ok(placed
            .into_iter()
            .map(|(offset, len, rows)| SpillMember {
                file: Arc::clone(&shared),
                offset,
                len,
                rows,
            })
            .collect())
    }
}

/// One spill file, open for reads; removed when the last of its members
/// goes.
#[derive(Debug)]
struct SpillFile {
    path: PathBuf,
    file: File,
    bytes: u64,
    stats: Arc<SpillStats>,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        self.stats.files_live.fetch_sub(1, Ordering::Relaxed);
        self.stats
            .bytes_live
            .fetch_sub(self.bytes, Ordering::Relaxed);
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove a spill file no longer needed (the next start removes it)");
        }
    }
}

/// One buffer's rows in a spill file.
#[derive(Clone, Debug)]
pub struct SpillMember {
    file: Arc<SpillFile>,
    offset: u64,
    len: u32,
    rows: u32,
}

/// Rows read back from a spill member, in logged order.
#[derive(Debug, Default, PartialEq)]
pub struct SpilledRows {
    /// Per row: index into the run's key dictionary.
    pub key_ids: Vec<u32>,
    /// Per row: step.
    pub steps: Vec<i64>,
    /// Per row: timestamp, ms since the epoch.
    pub timestamps: Vec<i64>,
    /// Per row: value.
    pub values: Vec<f64>,
}

impl SpillMember {
    /// Bytes the member takes in its file.
    pub fn bytes(&self) -> u64 {
        self.len as u64
    }

    /// Reads the member's rows back.
    pub fn read(&self) -> Result<SpilledRows, StorageError> {
        let path = &self.file.path;
        let mut frame = vec![0u8; self.len as usize];
        self.file
            .file
            .read_exact_at(&mut frame, self.offset)
            .map_err(|source| StorageError::io("read spill file", path, source))?;
        self.file.stats.member_reads.fetch_add(1, Ordering::Relaxed);
        let rows = decode_member(&frame).map_err(|error| match error {
            Undecodable::Invalid(reason) => StorageError::Spill {
                path: path.clone(),
                offset: self.offset,
                reason,
            },
            Undecodable::Zstd(source) => {
                StorageError::io("decompress a spill member", path, source)
            }
        })?;
        if rows.steps.len() != self.rows as usize {
            return Err(StorageError::Spill {
                path: path.clone(),
                offset: self.offset,
                reason: format!(
                    "holds {} rows where {} were written",
                    rows.steps.len(),
                    self.rows
                ),
            });
        }
        Ok(rows)
    }
}

/// Appends the framed member of `segments` to `out`; returns its rows.
fn encode_member(
    path: &Path,
    segments: &[LoggedRows<'_>],
    out: &mut Vec<u8>,
) -> Result<u32, StorageError> {
    let rows: usize = segments.iter().map(|segment| segment.steps.len()).sum();
    let rows = u32::try_from(rows).map_err(|_| StorageError::Spill {
        path: path.to_path_buf(),
        offset: out.len() as u64,
        reason: format!("{rows} rows are more than a member holds"),
    })?;
    let mut raw = Vec::with_capacity(4 + rows as usize * 16);
    raw.extend_from_slice(&rows.to_le_bytes());
    for segment in segments {
        for id in segment.key_ids {
            raw.extend_from_slice(&id.to_le_bytes());
        }
    }
    for column in [
        segments
            .iter()
            .map(|segment| segment.steps)
            .collect::<Vec<_>>(),
        segments
            .iter()
            .map(|segment| segment.timestamps)
            .collect::<Vec<_>>(),
    ] {
        let mut previous = 0i64;
        for value in column.into_iter().flatten() {
            put_varint(&mut raw, zigzag(value.wrapping_sub(previous)));
            previous = *value;
        }
    }
    let values_start = raw.len();
    raw.resize(values_start + rows as usize * 8, 0);
    let planes = &mut raw[values_start..];
    for (row, value) in segments
        .iter()
        .flat_map(|segment| segment.values.iter())
        .enumerate()
    {
        for (plane, byte) in value.to_le_bytes().into_iter().enumerate() {
            planes[plane * rows as usize + row] = byte;
        }
    }
    let compressed = zstd::bulk::compress(&raw, ZSTD_LEVEL)
        .map_err(|source| StorageError::io("compress a spill member", path, source))?;
    let body = [(raw.len() as u32).to_le_bytes().as_slice(), &compressed].concat();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(rows)
}

/// Why a member's bytes do not decode.
enum Undecodable {
    /// They are not what [`encode_member`] writes.
    Invalid(String),
    /// zstd refused them.
    Zstd(std::io::Error),
}

impl From<String> for Undecodable {
    fn from(reason: String) -> Self {
        Undecodable::Invalid(reason)
    }
}

impl From<&str> for Undecodable {
    fn from(reason: &str) -> Self {
        Undecodable::Invalid(reason.to_string())
    }
}

/// The rows of a framed member.
fn decode_member(frame: &[u8]) -> Result<SpilledRows, Undecodable> {
    let header = frame
        .get(..FRAME_HEADER)
        .ok_or("the member is shorter than its header")?;
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let checksum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let body = &frame[FRAME_HEADER..];
    if body.len() != length {
        return Err(format!(
            "the member's frame says {length} bytes, {} are there",
            body.len()
        )
        .into());
    }
    if crc32c::crc32c(body) != checksum {
        return Err("the member's checksum does not match".into());
    }
    let raw_length = u32::from_le_bytes(
        body.get(..4)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or("the member has no length")?,
    ) as usize;
    let raw = zstd::bulk::decompress(&body[4..], raw_length).map_err(Undecodable::Zstd)?;
    let mut reader = Reader { bytes: &raw, at: 0 };
    let rows = reader.u32()? as usize;
    if rows > raw.len() {
        return Err(format!("{rows} rows cannot fit in {} bytes", raw.len()).into());
    }
    let mut decoded = SpilledRows {
        key_ids: Vec::with_capacity(rows),
        steps: Vec::with_capacity(rows),
        timestamps: Vec::with_capacity(rows),
        values: Vec::with_capacity(rows),
    };
    for _ in 0..rows {
        decoded.key_ids.push(reader.u32()?);
    }
    for column in [&mut decoded.steps, &mut decoded.timestamps] {
        let mut previous = 0i64;
        for _ in 0..rows {
            previous = previous.wrapping_add(unzigzag(reader.varint()?));
            column.push(previous);
        }
    }
    let planes = reader.take(rows * 8)?;
    for row in 0..rows {
        let mut bytes = [0u8; 8];
        for (plane, byte) in bytes.iter_mut().enumerate() {
            *byte = planes[plane * rows + row];
        }
        decoded.values.push(f64::from_le_bytes(bytes));
    }
    if reader.at != raw.len() {
        return Err(format!(
            "{} bytes are left after the member's rows",
            raw.len() - reader.at
        )
        .into());
    }
    Ok(decoded)
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A cursor over a decompressed member.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(count)
            .filter(|&end| end <= self.bytes.len())
            .ok_or("the member ends early")?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.at).ok_or("the member ends early")?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err("a varint is longer than ten bytes".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_of(rows: &SpilledRows) -> LoggedRows<'_> {
        LoggedRows {
            key_ids: &rows.key_ids,
            steps: &rows.steps,
            timestamps: &rows.timestamps,
            values: &rows.values,
        }
    }

    fn rows(count: usize, seed: i64) -> SpilledRows {
        let mut rows = SpilledRows::default();
        for row in 0..count as i64 {
            rows.key_ids.push((row % 7) as u32);
            rows.steps.push(row / 7 * seed - 3);
            rows.timestamps.push(1_700_000_000_000 + row * 13 - seed);
            rows.values.push((row as f64 * 0.37).sin() * seed as f64);
        }
        rows
    }

    #[test]
    fn members_read_back_exactly_and_the_file_goes_with_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let spill = SpillDir::open(dir.path(), FileIo::default()).unwrap();
        let first = rows(1000, 3);
        let mut second = rows(10, 5);
        // Extremes, and the values a metric may hold.
        second.steps.extend([i64::MIN, i64::MAX, 0]);
        second.timestamps.extend([i64::MAX, i64::MIN, -1]);
        second
            .values
            .extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
        second.key_ids.extend([u32::MAX, 0, 1]);
        let third = rows(500, 7);
        let members = spill
            .write(&[
                vec![segment_of(&first)],
                vec![segment_of(&second), segment_of(&third)],
                vec![],
            ])
            .unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[0].read().unwrap(), first);
        let both = members[1].read().unwrap();
        assert_eq!(both.steps.len(), 513);
        assert_eq!(both.key_ids[..13], second.key_ids[..]);
        assert_eq!(both.steps[..13], second.steps[..]);
        assert_eq!(both.timestamps[13..], third.timestamps[..]);
        assert!(both.values[10].is_nan());
        assert_eq!(both.values[11], f64::INFINITY);
        assert_eq!(both.values[13..], third.values[..]);
        assert_eq!(members[2].read().unwrap(), SpilledRows::default());
        // Compact: well under the 28 bytes a buffered point takes.
        let bytes: u64 = members.iter().map(SpillMember::bytes).sum();
        assert!(bytes < 1513 * 12, "{bytes} bytes for 1513 points");
        assert_eq!(spill.stats().files_live(), 1);
        let path = members[0].file.path.clone();
        assert!(path.exists());
        drop(members);
        assert!(!path.exists(), "the file goes with its last member");
        assert_eq!(spill.stats().files_live(), 0);
        assert_eq!(spill.stats().bytes_live(), 0);
        assert_eq!(spill.stats().points_spilled(), 1513);
    }

    #[test]
    fn a_damaged_member_is_an_error_and_a_restart_clears_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let spill = SpillDir::open(dir.path(), FileIo::default()).unwrap();
        let points = rows(300, 2);
        let members = spill.write(&[vec![segment_of(&points)]]).unwrap();
        let path = members[0].file.path.clone();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        // The open file sees the new bytes (same inode).
        match members[0].read() {
            Err(StorageError::Spill { reason, .. }) => {
                assert!(reason.contains("checksum"), "{reason}")
            }
            other => panic!("expected a checksum error, got {other:?}"),
        }
        // A file a previous process left is removed when the directory
        // is opened again; other files stay.
        let stray = dir.path().join("0000000099.spill");
        std::fs::write(&stray, b"old").unwrap();
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, b"keep").unwrap();
        let _again = SpillDir::open(dir.path(), FileIo::default()).unwrap();
        assert!(!stray.exists());
        assert!(!path.exists());
        assert!(other.exists());
    }

    #[test]
    fn a_failed_write_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let io = FileIo::with_faults("write:1".parse().unwrap());
        let spill = SpillDir::open(dir.path(), io).unwrap();
        let points = rows(10, 1);
        let error = spill.write(&[vec![segment_of(&points)]]).unwrap_err();
        assert!(matches!(error, StorageError::Io { .. }), "{error:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(spill.stats().files_live(), 0);
    }
}
