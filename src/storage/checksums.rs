//! Checksums of a metric file's data pages, and the one way readers get
//! at a metric file's bytes: [`DataFile`], which checks them.
//!
//! Parquet pages can carry a CRC, but arrow-rs does not write one, and a
//! flipped bit in a page that still decodes would be served as a wrong
//! value. So the writer computes a CRC32C of every [`BLOCK_BYTES`] block of
//! the file as its bytes go out (`ChecksumWrite`), up to the end of the
//! last data page, and stores the table in the footer under
//! [`CHECKSUMS_KEY`] (base64 of a little-endian table, itself
//! CRC32C-checked). Readers open files as a [`DataFile`], a Parquet
//! `ChunkReader` that reads whole blocks and checks them before handing
//! out any byte of them: a damaged page is an error naming the file and
//! the byte range, for the run that reads it, never a silent wrong value.
//! Files written before the table existed are read unchecked. Other
//! Parquet readers ignore the entry.

use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use bytes::Bytes;
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::reader::{ChunkReader, Length};

use super::StorageError;
use super::source::{ByteSource, LocalFile, coalesce};

/// Footer key of the checksum table.
pub const CHECKSUMS_KEY: &str = "stepstore.checksums";

/// Bytes per checksummed block: 4 KiB, so a read of one page reads at most
/// 8 KiB more than it needs (whole blocks are checked), and the table
/// costs 4 bytes per 4 KiB of data (0.1%).
pub const BLOCK_BYTES: u64 = 4 << 10;

/// Version of the table's layout.
const TABLE_VERSION: u32 = 1;

/// Bytes read ahead by a streaming read ([`ChunkReader::get_read`]).
const STREAM_WINDOW: u64 = 4 * BLOCK_BYTES;

/// The CRC32C of each [`BLOCK_BYTES`] block of a file's first `covered`
/// bytes (the last block may be shorter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChecksums {
    covered: u64,
    crcs: Vec<u32>,
}

impl FileChecksums {
    /// Bytes from the start of the file the table covers.
    pub fn covered(&self) -> u64 {
        self.covered
    }

    /// The table as a footer entry.
    pub fn to_key_value(&self) -> KeyValue {
        let mut table = Vec::with_capacity(24 + self.crcs.len() * 4);
        table.extend_from_slice(&TABLE_VERSION.to_le_bytes());
        table.extend_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
        table.extend_from_slice(&self.covered.to_le_bytes());
        table.extend_from_slice(&(self.crcs.len() as u32).to_le_bytes());
        for crc in &self.crcs {
            table.extend_from_slice(&crc.to_le_bytes());
        }
        let check = crc32c::crc32c(&table);
        table.extend_from_slice(&check.to_le_bytes());
        KeyValue::new(
            CHECKSUMS_KEY.to_string(),
            base64::engine::general_purpose::STANDARD.encode(table),
        )
    }

    /// The table in a footer's key-value entries: `None` when there is none
    /// (a file from before checksums), an error when it does not check out.
    pub fn from_key_values(entries: Option<&Vec<KeyValue>>) -> Result<Option<Self>, String> {
        let Some(value) = entries
            .into_iter()
            .flatten()
            .find(|entry| entry.key == CHECKSUMS_KEY)
            .and_then(|entry| entry.value.as_deref())
        else {
            return Ok(None);
        };
        let table = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|error| format!("checksum table is not base64: {error}"))?;
        let (body, check) = table
            .split_last_chunk::<4>()
            .ok_or("checksum table too short")?;
        if crc32c::crc32c(body) != u32::from_le_bytes(*check) {
            return Err("checksum table fails its own checksum".into());
        }
        let u32_at = |at: usize| -> Result<u32, String> {
            body.get(at..at + 4)
                .and_then(|bytes| bytes.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| "checksum table cut short".to_string())
        };
        if u32_at(0)? != TABLE_VERSION || u64::from(u32_at(4)?) != BLOCK_BYTES {
            return Err("checksum table of an unknown layout".into());
        }
        let covered = body
            .get(8..16)
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or("checksum table cut short")?;
        let count = u32_at(16)? as usize;
        if count as u64 != covered.div_ceil(BLOCK_BYTES) || body.len() != 20 + count * 4 {
            return Err(format!(
                "checksum table holds {count} blocks for {covered} bytes"
            ));
        }
        let crcs = (0..count)
            .map(|index| u32_at(20 + index * 4))
            .collect::<Result<_, _>>()?;
        Ok(Some(FileChecksums { covered, crcs }))
    }

    /// Checks `bytes`, read from offset `start` (a block boundary); the
    /// range of the first block that fails, if any.
    fn check(&self, start: u64, bytes: &[u8]) -> Result<(), std::ops::Range<u64>> {
        let first = start / BLOCK_BYTES;
        for (index, block) in bytes.chunks(BLOCK_BYTES as usize).enumerate() {
            let number = first + index as u64;
            let block_start = number * BLOCK_BYTES;
            if block_start >= self.covered {
                break;
            }
            let length = (self.covered - block_start).min(BLOCK_BYTES) as usize;
            let expected = self.crcs.get(number as usize).copied();
            if block.len() < length || expected != Some(crc32c::crc32c(&block[..length])) {
                return Err(block_start..block_start + length as u64);
            }
        }
        Ok(())
    }
}

/// Passes bytes to `inner` and computes the checksum of every block on
/// the way (see [`FileChecksums`]).
pub(crate) struct ChecksumWrite<W> {
    inner: W,
    written: u64,
    crcs: Vec<u32>,
    /// CRC of the current block so far.
    current: u32,
}

impl<W> ChecksumWrite<W> {
    /// Wraps `inner`, which must be at the start of the file.
    pub(crate) fn new(inner: W) -> Self {
        ChecksumWrite {
            inner,
            written: 0,
            crcs: Vec::new(),
            current: 0,
        }
    }

    /// The wrapped writer.
    pub(crate) fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The checksums of everything written so far.
    pub(crate) fn checksums(&self) -> FileChecksums {
        let mut crcs = self.crcs.clone();
        if !self.written.is_multiple_of(BLOCK_BYTES) {
            crcs.push(self.current);
        }
        FileChecksums {
            covered: self.written,
            crcs,
        }
    }
}

impl<W: Write> Write for ChecksumWrite<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        let mut rest = &bytes[..written];
        while !rest.is_empty() {
            let room = (BLOCK_BYTES - self.written % BLOCK_BYTES) as usize;
            let (head, tail) = rest.split_at(room.min(rest.len()));
            self.current = crc32c::crc32c_append(self.current, head);
            self.written += head.len() as u64;
            if self.written.is_multiple_of(BLOCK_BYTES) {
                self.crcs.push(self.current);
                self.current = 0;
            }
            rest = tail;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A metric file opened for reading, over any [`ByteSource`]: every byte
/// it hands out from the checksummed part was checked first. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct DataFile {
    source: Arc<dyn ByteSource>,
    path: Arc<PathBuf>,
    length: u64,
    checksums: Option<Arc<FileChecksums>>,
    /// Counts reads that found damage (the engine's
    /// `stepstore_damaged_file_reads_total`).
    damaged_reads: Option<Arc<AtomicU64>>,
}

impl DataFile {
    /// Opens `path`, `length` bytes long (metric files never change once
    /// written), checking what is read against `checksums` (none for a file
    /// written before checksums).
    pub fn open(
        path: &Path,
        length: u64,
        checksums: Option<Arc<FileChecksums>>,
    ) -> Result<Self, StorageError> {
        let file =
            LocalFile::open(path).map_err(|source| StorageError::io("open", path, source))?;
        Ok(DataFile::over(Arc::new(file), path, length, checksums))
    }

    /// The file `path`, `length` bytes long, read from `source`, checking
    /// what is read against `checksums`.
    pub fn over(
        source: Arc<dyn ByteSource>,
        path: &Path,
        length: u64,
        checksums: Option<Arc<FileChecksums>>,
    ) -> Self {
        DataFile {
            source,
            path: Arc::new(path.to_path_buf()),
            length,
            checksums,
            damaged_reads: None,
        }
    }

    /// Counts each read that finds damage in `counter`.
    pub fn counting_damage_in(mut self, counter: Arc<AtomicU64>) -> Self {
        self.damaged_reads = Some(counter);
        self
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads `length` bytes at `start`. Within the checksummed part the
    /// whole blocks around them are read and checked first.
    pub fn read_at(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        let range = self.checked_range(start, length)?;
        let widened = self.widened(&range);
        let bytes = self
            .source
            .read_range(widened.clone())
            .map_err(|error| self.read_error(error))?;
        self.check(&widened, &bytes)?;
        let from = (range.start - widened.start) as usize;
        Ok(bytes.slice(from..from + length))
    }

    /// Gets `ranges` ready for the reads that follow (see
    /// [`ByteSource::prefetch`]): the source fetches what it lacks, widened
    /// to the checked blocks the reads will ask for.
    pub fn prefetch(&self, ranges: &[Range<u64>]) -> Result<(), ParquetError> {
        let widened = coalesce(ranges.iter().map(|range| self.widened(range)).collect());
        self.source
            .prefetch(&widened)
            .map_err(|error| self.read_error(error))
    }

    /// Reads each of `ranges` (in any order, possibly overlapping), checked
    /// like [`DataFile::read_at`], in as few reads of the source as the
    /// ranges allow: ranges whose checked blocks touch are read as one,
    /// and the reads go to the source together (a remote source fetches
    /// them concurrently). The bytes come back in the order of `ranges`.
    pub fn read_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<Bytes>, ParquetError> {
        let mut wanted = Vec::with_capacity(ranges.len());
        for range in ranges {
            let length = usize::try_from(range.end.saturating_sub(range.start))
                .map_err(|_| ParquetError::General("range too large".into()))?;
            wanted.push(self.checked_range(range.start, length)?);
        }
        let merged = coalesce(wanted.iter().map(|range| self.widened(range)).collect());
        let pieces = self
            .source
            .read_ranges(&merged)
            .map_err(|error| self.read_error(error))?;
        for (read, bytes) in merged.iter().zip(&pieces) {
            self.check(read, bytes)?;
        }
        wanted
            .iter()
            .map(|range| {
                if range.is_empty() {
                    return Ok(Bytes::new());
                }
                let index = merged.partition_point(|read| read.start <= range.start) - 1;
                let from = (range.start - merged[index].start) as usize;
                let to = from + (range.end - range.start) as usize;
                Ok(pieces[index].slice(from..to))
            })
            .collect()
    }

    /// `length` bytes at `start`, when the file holds them.
    fn checked_range(&self, start: u64, length: usize) -> Result<Range<u64>, ParquetError> {
        let end = start
            .checked_add(length as u64)
            .filter(|&end| end <= self.length)
            .ok_or_else(|| {
                ParquetError::EOF(format!(
                    "{} ends before byte {}",
                    self.path.display(),
                    start.saturating_add(length as u64)
                ))
            })?;
        Ok(start..end)
    }

    /// The bytes to read for `range`: within the checksummed part, the
    /// whole blocks around it.
    fn widened(&self, range: &Range<u64>) -> Range<u64> {
        let Some(checksums) = self
            .checksums
            .as_ref()
            .filter(|checksums| range.start < checksums.covered && !range.is_empty())
        else {
            return range.clone();
        };
        let read_start = range.start - range.start % BLOCK_BYTES;
        let covered_end = range
            .end
            .min(checksums.covered)
            .div_ceil(BLOCK_BYTES)
            .saturating_mul(BLOCK_BYTES)
            .min(checksums.covered);
        read_start..range.end.max(covered_end)
    }

    /// Checks `bytes`, read for `read` (a widened range), against the
    /// checksums; damage is counted, logged and an error naming the bytes.
    fn check(&self, read: &Range<u64>, bytes: &[u8]) -> Result<(), ParquetError> {
        let Some(checksums) = self
            .checksums
            .as_ref()
            .filter(|checksums| read.start < checksums.covered && !read.is_empty())
        else {
            return Ok(());
        };
        let Err(block) = checksums.check(read.start, bytes) else {
            return Ok(());
        };
        if let Some(counter) = &self.damaged_reads {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        tracing::error!(path = %self.path.display(), bytes = ?block, "a metric file's data fails its checksum");
        Err(ParquetError::General(format!(
            "{} is damaged: bytes {}..{} fail their checksum",
            self.path.display(),
            block.start,
            block.end
        )))
    }

    fn read_error(&self, error: io::Error) -> ParquetError {
        ParquetError::External(Box::new(StorageError::io("read", &self.path, error)))
    }
}

impl Length for DataFile {
    fn len(&self) -> u64 {
        self.length
    }
}

impl ChunkReader for DataFile {
    type T = DataReader;

    fn get_read(&self, start: u64) -> Result<DataReader, ParquetError> {
        Ok(DataReader {
            file: self.clone(),
            position: start,
            buffered: Bytes::new(),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        self.read_at(start, length)
    }
}

/// A checked sequential read from some offset of a [`DataFile`], a window
/// of a few blocks at a time.
pub struct DataReader {
    file: DataFile,
    position: u64,
    buffered: Bytes,
}

impl Read for DataReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buffered.is_empty() {
            let remaining = self.file.length.saturating_sub(self.position);
            if remaining == 0 || out.is_empty() {
                return Ok(0);
            }
            let window_end = (self.position / STREAM_WINDOW + 1) * STREAM_WINDOW;
            let length = (window_end - self.position).min(remaining);
            self.buffered = self
                .file
                .read_at(self.position, length as usize)
                .map_err(io::Error::other)?;
            self.position += length;
        }
        let count = out.len().min(self.buffered.len());
        out[..count].copy_from_slice(&self.buffered[..count]);
        self.buffered = self.buffered.slice(count..);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    /// Writes `content` through a [`ChecksumWrite`] in uneven pieces;
    /// returns the file and its table.
    fn written(dir: &Path, content: &[u8], covered: usize) -> (PathBuf, FileChecksums) {
        let path = dir.join("file");
        let mut writer = ChecksumWrite::new(File::create(&path).unwrap());
        for piece in content[..covered].chunks(1_000 + covered % 7) {
            writer.write_all(piece).unwrap();
        }
        let checksums = writer.checksums();
        writer.write_all(&content[covered..]).unwrap();
        (path, checksums)
    }

    fn content(length: usize) -> Vec<u8> {
        (0..length).map(|index| (index * 31 % 251) as u8).collect()
    }

    #[test]
    fn the_table_round_trips_and_refuses_damage_to_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (_, checksums) = written(dir.path(), &content(100_000), 90_000);
        assert_eq!(checksums.covered(), 90_000);
        assert_eq!(
            checksums.crcs.len(),
            90_000usize.div_ceil(BLOCK_BYTES as usize)
        );
        let entry = checksums.to_key_value();
        let back = FileChecksums::from_key_values(Some(&vec![entry.clone()])).unwrap();
        assert_eq!(back, Some(checksums));
        assert_eq!(FileChecksums::from_key_values(None).unwrap(), None);
        let mut damaged = entry;
        let mut text = damaged.value.take().unwrap().into_bytes();
        text[10] = if text[10] == b'A' { b'B' } else { b'A' };
        damaged.value = Some(String::from_utf8(text).unwrap());
        assert!(FileChecksums::from_key_values(Some(&vec![damaged])).is_err());
    }

    #[test]
    fn every_range_reads_back_whole_and_damage_is_found_wherever_read() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = content(70_000);
        let covered = 60_001;
        let (path, checksums) = written(dir.path(), &bytes, covered);
        let checksums = Arc::new(checksums);
        let file = DataFile::open(&path, 70_000, Some(Arc::clone(&checksums))).unwrap();
        for (start, length) in [
            (0, 1),
            (5, 16_384),
            (16_383, 2),
            (40_000, 20_001),
            (60_000, 1),
            (59_990, 10_010),
            (65_000, 5_000),
            (0, 70_000),
        ] {
            let read = file.get_bytes(start, length).unwrap();
            assert_eq!(&read[..], &bytes[start as usize..start as usize + length]);
        }
        let mut streamed = Vec::new();
        file.get_read(3)
            .unwrap()
            .read_to_end(&mut streamed)
            .unwrap();
        assert_eq!(&streamed[..], &bytes[3..]);
        assert!(file.get_bytes(69_999, 2).is_err(), "past the end");

        // One flipped byte: any read touching its block fails, naming the
        // file and the block; others still work.
        let mut damaged = bytes.clone();
        damaged[20_000] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let file = DataFile::open(&path, 70_000, Some(checksums))
            .unwrap()
            .counting_damage_in(Arc::clone(&counter));
        let error = file.get_bytes(19_000, 10).unwrap_err().to_string();
        assert_eq!(counter.load(Ordering::Relaxed), 1);
        let block = 20_000 / BLOCK_BYTES * BLOCK_BYTES;
        let expected = format!(
            "is damaged: bytes {block}..{} fail their checksum",
            block + BLOCK_BYTES
        );
        assert!(
            error.contains(&expected) && error.contains(&path.display().to_string()),
            "{error}"
        );
        assert!(
            file.get_bytes(16_000, 1_000).is_err(),
            "reads the whole block"
        );
        assert!(
            file.get_read(0)
                .unwrap()
                .read_to_end(&mut Vec::new())
                .is_err()
        );
        assert_eq!(&file.get_bytes(0, 1_000).unwrap()[..], &bytes[..1_000]);
        assert_eq!(
            &file.get_bytes(40_000, 100).unwrap()[..],
            &bytes[40_000..40_100]
        );
        // Past the checksummed part (the footer), bytes are not checked.
        damaged[65_000] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        assert_eq!(file.get_bytes(65_000, 1).unwrap()[0], damaged[65_000]);
        // Without a table (an older file), nothing is checked.
        let unchecked = DataFile::open(&path, 70_000, None).unwrap();
        assert_eq!(unchecked.get_bytes(20_000, 1).unwrap()[0], damaged[20_000]);
    }
}
