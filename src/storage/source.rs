//! Where a metric file's bytes come from: the [`ByteSource`] trait, the one
//! seam between the readers of metric files and the medium that holds
//! them. Every read of a metric file (footer, pages, prefetched spans)
//! goes through a source, wrapped in a [`super::DataFile`] that checks the
//! bytes against the file's checksums. [`LocalFile`] reads a file on the
//! local disk with positioned reads.

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

/// Reads byte ranges of one immutable file. Blocking: callers run on
/// blocking threads (or accept blocking a worker for a local read).
pub trait ByteSource: Debug + Send + Sync {
    /// The bytes of `range`, all of them (a short file is an error).
    fn read_range(&self, range: Range<u64>) -> io::Result<Bytes>;

    /// The bytes of each of `ranges` (sorted and disjoint), in order. A
    /// remote source fetches them concurrently; the default reads them one
    /// after the other.
    fn read_ranges(&self, ranges: &[Range<u64>]) -> io::Result<Vec<Bytes>> {
        ranges
            .iter()
            .map(|range| self.read_range(range.clone()))
            .collect()
    }

    /// Gets `ranges` ready for the reads that follow, one range at a time
    /// (a remote source fetches what it has not cached, in one round of
    /// requests); nothing for a local file.
    fn prefetch(&self, _ranges: &[Range<u64>]) -> io::Result<()> {
        Ok(())
    }
}

/// `ranges` sorted and merged where they overlap or touch; empty ranges
/// dropped.
pub(crate) fn coalesce(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_by_key(|range| range.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges.into_iter().filter(|range| range.end > range.start) {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// A file on the local disk.
#[derive(Debug)]
pub struct LocalFile {
    file: File,
}

impl LocalFile {
    /// Opens the file at `path` for reading.
    pub fn open(path: &Path) -> io::Result<LocalFile> {
        Ok(LocalFile {
            file: File::open(path)?,
        })
    }
}

impl ByteSource for LocalFile {
    fn read_range(&self, range: Range<u64>) -> io::Result<Bytes> {
        let length = usize::try_from(range.end.saturating_sub(range.start))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
        let mut buffer = vec![0u8; length];
        self.file.read_exact_at(&mut buffer, range.start)?;
        Ok(Bytes::from(buffer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_file_reads_ranges_and_refuses_reads_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = LocalFile::open(&path).unwrap();
        assert_eq!(&file.read_range(2..5).unwrap()[..], b"234");
        let pieces = file.read_ranges(&[0..1, 8..10]).unwrap();
        assert_eq!(
            pieces.iter().map(|bytes| &bytes[..]).collect::<Vec<_>>(),
            vec![&b"0"[..], &b"89"[..]]
        );
        let error = file.read_range(8..12).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn ranges_coalesce_where_they_overlap_or_touch() {
        assert_eq!(
            coalesce(vec![8..9, 0..2, 2..3, 5..5, 1..2, 7..8]),
            vec![0..3, 7..9]
        );
    }
}
