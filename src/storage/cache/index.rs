//! The cache's bookkeeping: its entries by last use, within one budget,
//! and the chunks fetched but not yet written.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Weak;

use bytes::Bytes;

use crate::storage::persisted::PersistedFile;

/// One entry of the cache's budget.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Entry {
    /// Chunk `.1` of the stored file `.0` (relative to the metrics tree).
    Chunk(PathBuf, u64),
    /// The local copy of an uploaded file (relative to the metrics tree).
    Local(PathBuf),
}

/// An entry's size, last use, and for a local copy the file it belongs
/// to.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) bytes: u64,
    used: u64,
    pub(super) file: Option<Weak<PersistedFile>>,
}

/// Entries by last use.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) entries: HashMap<Entry, Slot>,
    by_use: BTreeMap<u64, Entry>,
    pub(super) bytes: u64,
    tick: u64,
    /// Chunks fetched and not yet written to the cache (by the chunk
    /// writer), with their bytes.
    pub(super) unwritten: HashMap<(PathBuf, u64), Bytes>,
    /// Their bytes in all.
    pub(super) unwritten_bytes: u64,
    /// Chunks being written now.
    pub(super) writing: Vec<(PathBuf, u64)>,
}

impl Index {
    /// Marks `entry` as just used; false when it is not cached.
    pub(super) fn touch(&mut self, entry: &Entry) -> bool {
        let Some(slot) = self.entries.get_mut(entry) else {
            return false;
        };
        self.by_use.remove(&slot.used);
        self.tick += 1;
        slot.used = self.tick;
        self.by_use.insert(self.tick, entry.clone());
        true
    }

    /// Adds `entry` (or marks it used when it is there).
    pub(super) fn insert(&mut self, entry: Entry, bytes: u64, file: Option<Weak<PersistedFile>>) {
        if self.touch(&entry) {
            return;
        }
        self.tick += 1;
        self.by_use.insert(self.tick, entry.clone());
        self.entries.insert(
            entry,
            Slot {
                bytes,
                used: self.tick,
                file,
            },
        );
        self.bytes += bytes;
    }

    pub(super) fn remove(&mut self, entry: &Entry) -> Option<Slot> {
        let slot = self.entries.remove(entry)?;
        self.by_use.remove(&slot.used);
        self.bytes -= slot.bytes;
        Some(slot)
    }

    /// Takes the least recently used entries out until the rest fit in
    /// `budget`.
    pub(super) fn over(&mut self, budget: u64) -> Vec<(Entry, Slot)> {
        let mut victims = Vec::new();
        while self.bytes > budget {
            let Some((_, entry)) = self.by_use.pop_first() else {
                break;
            };
            if let Some(slot) = self.entries.remove(&entry) {
                self.bytes -= slot.bytes;
                victims.push((entry, slot));
            }
        }
        victims
    }

    /// Holds `bytes`, chunk `chunk` of `relative`, until it is written.
    pub(super) fn hold_unwritten(&mut self, relative: &Path, chunk: u64, bytes: Bytes) {
        let added = bytes.len() as u64;
        if let Some(before) = self
            .unwritten
            .insert((relative.to_path_buf(), chunk), bytes)
        {
            self.unwritten_bytes -= before.len() as u64;
        }
        self.unwritten_bytes += added;
    }

    /// Stops holding chunk `chunk` of `relative`; whether it was held.
    pub(super) fn drop_unwritten(&mut self, relative: &Path, chunk: u64) -> bool {
        match self.unwritten.remove(&(relative.to_path_buf(), chunk)) {
            Some(bytes) => {
                self.unwritten_bytes -= bytes.len() as u64;
                true
            }
            None => false,
        }
    }
}
