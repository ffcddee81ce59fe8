//! The cache's writer thread: chunks fetched from the store are written to
//! the cache behind the read that fetched them, which goes on with the
//! bytes in memory; until a chunk is written, reads get it from memory
//! ([`super::index::Index::unwritten`]).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, Weak};

use super::ReadCache;

/// The queue of chunks to write; `None` when the thread could not start
/// (chunks are then written by the reads that fetch them).
#[derive(Debug)]
pub(super) struct ChunkWriter {
    queue: Mutex<Option<Sender<(PathBuf, u64)>>>,
}

impl ChunkWriter {
    /// Starts the thread writing chunks for `cache`; it stops when the
    /// cache is dropped.
    pub(super) fn start(cache: Weak<ReadCache>) -> ChunkWriter {
        let (sender, receiver) = channel::<(PathBuf, u64)>();
        let spawned = std::thread::Builder::new()
            .name("stepstore-cache-writer".into())
            .spawn(move || {
                while let Ok((relative, chunk)) = receiver.recv() {
                    let Some(cache) = cache.upgrade() else {
                        return;
                    };
                    cache.write_chunk(&relative, chunk);
                }
            });
        let queue = match spawned {
            Ok(_) => Some(sender),
            Err(error) => {
                tracing::warn!(%error, "could not start the cache's writer thread; reads write the chunks they fetch");
                None
            }
        };
        ChunkWriter {
            queue: Mutex::new(queue),
        }
    }

    /// Queues chunk `chunk` of `relative` (held unwritten) for writing;
    /// false when there is no writer thread.
    pub(super) fn queue(&self, relative: &Path, chunk: u64) -> bool {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        queue
            .as_ref()
            .is_some_and(|sender| sender.send((relative.to_path_buf(), chunk)).is_ok())
    }
}
