//! A metric file whose only copy is in the object store, read through the
//! local cache ([`super::cache::ReadCache`]): its footer and page index
//! from the cache's footer copy, everything else in cached 1 MiB chunks,
//! the missing ones fetched from the store together.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::cache::{CHUNK_BYTES, CachedChunk, FOOTER_HEADER_BYTES, ReadCache};
use super::source::ByteSource;
use super::store::ObjectFile;

/// One chunk a read needs: in memory (just fetched, or not yet written to
/// the cache), or in the cache's file.
enum Chunk {
    Fetched(Bytes),
    Cached(File),
}

/// A stored metric file read through the cache: its footer and page index
/// from the footer copy when there is one, everything else in cached
/// chunks, fetched from the store (several at once) when missing.
#[derive(Debug)]
pub(crate) struct StoredFile {
    object: ObjectFile,
    cache: Arc<ReadCache>,
    relative: PathBuf,
    length: u64,
    footer_path: PathBuf,
    /// Where the footer copy begins in the file, when there is one.
    footer_start: Option<u64>,
}

impl StoredFile {
    /// The file `relative` (under the metrics tree), `length` bytes long,
    /// stored as `object`, read through `cache`; its footer copy at
    /// `footer_path` covers the file from `footer_start`.
    pub(crate) fn new(
        object: ObjectFile,
        cache: Arc<ReadCache>,
        relative: PathBuf,
        length: u64,
        footer_path: PathBuf,
        footer_start: Option<u64>,
    ) -> Self {
        StoredFile {
            object,
            cache,
            relative,
            length,
            footer_path,
            footer_start,
        }
    }
}

impl StoredFile {
    /// Whether the cache holds a copy of the file's footer.
    pub(crate) fn has_footer_copy(&self) -> bool {
        self.footer_start.is_some()
    }

    /// Bytes `range` of the chunks `chunks` (by index): only the part
    /// asked for is read from a cached chunk's file.
    fn slice_chunks(&self, range: &Range<u64>, chunks: &HashMap<u64, Chunk>) -> io::Result<Bytes> {
        let first = range.start / CHUNK_BYTES;
        let last = (range.end - 1) / CHUNK_BYTES;
        let piece = |chunk: u64| -> io::Result<Bytes> {
            let held = chunks
                .get(&chunk)
                .ok_or_else(|| io::Error::other("a chunk was not fetched"))?;
            let span = self.chunk_span(chunk);
            let from = range.start.max(span.start) - span.start;
            let to = range.end.min(span.end) - span.start;
            if to < from {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "a chunk is shorter than the file",
                ));
            }
            match held {
                Chunk::Fetched(bytes) if to as usize <= bytes.len() => {
                    Ok(bytes.slice(from as usize..to as usize))
                }
                Chunk::Fetched(_) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "a chunk is shorter than the file",
                )),
                Chunk::Cached(file) => {
                    let mut buffer = vec![0u8; (to - from) as usize];
                    file.read_exact_at(&mut buffer, from)?;
                    Ok(Bytes::from(buffer))
                }
            }
        };
        if first == last {
            return piece(first);
        }
        let mut joined = BytesMut::with_capacity((range.end - range.start) as usize);
        for chunk in first..=last {
            joined.extend_from_slice(&piece(chunk)?);
        }
        Ok(joined.freeze())
    }

    /// Bytes `range` (within the footer copy) from the footer copy.
    fn read_footer_copy(&self, range: &Range<u64>, start: u64) -> io::Result<Bytes> {
        let file = File::open(&self.footer_path)?;
        let mut buffer = vec![0u8; (range.end - range.start) as usize];
        file.read_exact_at(&mut buffer, FOOTER_HEADER_BYTES + range.start - start)?;
        Ok(Bytes::from(buffer))
    }

    /// The chunks covering `ranges`, sorted.
    fn chunks_of(ranges: &[Range<u64>]) -> Vec<u64> {
        let mut wanted: Vec<u64> = ranges
            .iter()
            .filter(|range| range.end > range.start)
            .flat_map(|range| range.start / CHUNK_BYTES..=(range.end - 1) / CHUNK_BYTES)
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        wanted
    }

    /// Fetches `missing` chunks together and keeps them.
    fn fetch(&self, missing: Vec<(u64, Range<u64>)>) -> io::Result<Vec<(u64, Bytes)>> {
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let spans: Vec<Range<u64>> = missing.iter().map(|(_, span)| span.clone()).collect();
        let fetched = self.object.read_ranges(&spans)?;
        self.cache.count_fetch(
            missing.len() as u64,
            fetched.iter().map(|bytes| bytes.len() as u64).sum(),
        );
        let chunks: Vec<(u64, Bytes)> = missing
            .into_iter()
            .map(|(chunk, _)| chunk)
            .zip(fetched)
            .collect();
        self.cache.keep_chunks(&self.relative, &chunks);
        Ok(chunks)
    }

    /// The chunks covering `ranges`: from the cache, the rest fetched
    /// together and kept.
    fn chunks_for(&self, ranges: &[Range<u64>]) -> io::Result<HashMap<u64, Chunk>> {
        let wanted = StoredFile::chunks_of(ranges);
        let mut chunks = HashMap::with_capacity(wanted.len());
        let mut missing = Vec::new();
        for chunk in wanted {
            let span = self.chunk_span(chunk);
            match self
                .cache
                .cached_chunk(&self.relative, chunk, span.end - span.start)
            {
                Some(CachedChunk::File(file)) => {
                    self.cache.count_hit();
                    chunks.insert(chunk, Chunk::Cached(file));
                }
                Some(CachedChunk::Unwritten(bytes)) => {
                    self.cache.count_hit();
                    chunks.insert(chunk, Chunk::Fetched(bytes));
                }
                None => missing.push((chunk, span)),
            }
        }
        for (chunk, bytes) in self.fetch(missing)? {
            chunks.insert(chunk, Chunk::Fetched(bytes));
        }
        Ok(chunks)
    }

    /// The bytes chunk `chunk` covers.
    fn chunk_span(&self, chunk: u64) -> Range<u64> {
        let start = chunk * CHUNK_BYTES;
        start..(start + CHUNK_BYTES).min(self.length)
    }
}

impl ByteSource for StoredFile {
    fn prefetch(&self, ranges: &[Range<u64>]) -> io::Result<()> {
        let footer_start = self.footer_start.unwrap_or(self.length);
        let before_footer: Vec<Range<u64>> = ranges
            .iter()
            .map(|range| range.start.min(self.length)..range.end.min(footer_start))
            .collect();
        let missing = StoredFile::chunks_of(&before_footer)
            .into_iter()
            .filter(|&chunk| !self.cache.has_chunk(&self.relative, chunk))
            .map(|chunk| (chunk, self.chunk_span(chunk)))
            .collect();
        self.fetch(missing).map(|_| ())
    }

    fn read_range(&self, range: Range<u64>) -> io::Result<Bytes> {
        let mut pieces = self.read_ranges(std::slice::from_ref(&range))?;
        pieces
            .pop()
            .ok_or_else(|| io::Error::other("a read returned nothing"))
    }

    fn read_ranges(&self, ranges: &[Range<u64>]) -> io::Result<Vec<Bytes>> {
        if let Some(range) = ranges.iter().find(|range| range.end > self.length) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} is {} bytes long; {}..{} was asked for",
                    self.relative.display(),
                    self.length,
                    range.start,
                    range.end
                ),
            ));
        }
        let footer_start = self.footer_start.unwrap_or(self.length);
        let before_footer: Vec<Range<u64>> = ranges
            .iter()
            .map(|range| range.start..range.end.min(footer_start))
            .collect();
        let chunks = self.chunks_for(&before_footer)?;
        ranges
            .iter()
            .zip(&before_footer)
            .map(|(range, head)| {
                let head = (head.end > head.start)
                    .then(|| self.slice_chunks(head, &chunks))
                    .transpose()?;
                let tail_range = range.start.max(footer_start)..range.end;
                let tail = (tail_range.end > tail_range.start)
                    .then(|| self.read_footer_copy(&tail_range, footer_start))
                    .transpose()?;
                Ok(match (head, tail) {
                    (Some(head), Some(tail)) => {
                        let mut joined = BytesMut::with_capacity(head.len() + tail.len());
                        joined.extend_from_slice(&head);
                        joined.extend_from_slice(&tail);
                        joined.freeze()
                    }
                    (Some(only), None) | (None, Some(only)) => only,
                    (None, None) => Bytes::new(),
                })
            })
            .collect()
    }
}
