//! Receipts of bulk ingest requests sent with an `Idempotency-Key`: what
//! lets a client send a batch again after losing the answer (a timeout, a
//! dropped connection, a server restart) without the server storing its
//! points twice.
//!
//! A receipt is written in the same WAL record as the request's points, so
//! the two are durable together; catalog snapshots carry the receipts, so
//! the WAL can go once a snapshot holds them. The window is bounded by age
//! and count: a key older than [`RECEIPT_MAX_AGE_MS`], or pushed out by
//! [`MAX_RECEIPTS`] newer ones, is forgotten, and the same key is then a
//! new request.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::wal::Lsn;

/// How long a receipt is kept: a day, as Stripe and the IETF draft's
/// examples do.
pub const RECEIPT_MAX_AGE_MS: i64 = 24 * 3600 * 1000;
/// Most receipts kept (about 100 bytes each).
pub const MAX_RECEIPTS: usize = 100_000;
/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// What the server answered to one keyed request, and what identifies its
/// body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestReceipt {
    /// The client's `Idempotency-Key`.
    pub key: String,
    /// CRC32C of the request body.
    pub body_crc: u32,
    /// Length of the request body in bytes.
    pub body_len: u64,
    /// Points accepted.
    pub points: u64,
    /// Runs the request wrote to.
    pub runs: u64,
    /// When it was accepted, ms since the epoch.
    pub time: i64,
}

impl IngestReceipt {
    /// Whether `fingerprint` is the body this receipt was given for.
    pub fn matches(&self, fingerprint: BodyFingerprint) -> bool {
        self.body_crc == fingerprint.crc && self.body_len == fingerprint.len
    }
}

/// CRC32C and length of a request body, fed chunk by chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyFingerprint {
    /// CRC32C of the bytes so far.
    pub crc: u32,
    /// Bytes so far.
    pub len: u64,
}

impl BodyFingerprint {
    /// Adds the next bytes of the body.
    pub fn update(&mut self, bytes: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.len += bytes.len() as u64;
    }

    /// The fingerprint of a whole body.
    pub fn of(bytes: &[u8]) -> Self {
        let mut fingerprint = BodyFingerprint::default();
        fingerprint.update(bytes);
        fingerprint
    }
}

/// Whether a keyed request is new, a repeat of an accepted one, or in the
/// way of one in progress.
#[derive(Debug)]
pub enum KeyState {
    /// Not seen (or forgotten): the caller owns the key until the guard
    /// drops or the receipt is recorded.
    New(KeyClaim),
    /// Accepted before, with the same body: answer as then.
    Accepted(IngestReceipt),
    /// Accepted before with another body: the key was reused by mistake.
    Mismatch(IngestReceipt),
    /// A request with this key is still being written.
    InProgress,
}

/// A key claimed by a request in progress; released on drop unless the
/// request's receipt was recorded.
#[derive(Debug)]
pub struct KeyClaim {
    receipts: std::sync::Weak<IngestReceipts>,
    key: String,
}

impl Drop for KeyClaim {
    fn drop(&mut self) {
        if let Some(receipts) = self.receipts.upgrade() {
            receipts.lock().in_progress.remove(&self.key);
        }
    }
}

#[derive(Debug, Default)]
struct Window {
    /// Accepted receipts by key, with the LSN of their record.
    by_key: HashMap<String, (IngestReceipt, Lsn)>,
    /// Keys in the order they were accepted (oldest first).
    order: VecDeque<String>,
    /// Keys claimed by requests in progress.
    in_progress: BTreeSet<String>,
    /// LSNs of receipts no snapshot holds yet.
    unsnapshotted: BTreeSet<Lsn>,
    /// Highest LSN of any receipt recorded.
    max_lsn: Lsn,
}

impl Window {
    /// Keeps `receipt` unless it is too old; `durable_elsewhere` when a
    /// snapshot holds it already.
    fn insert(&mut self, receipt: IngestReceipt, lsn: Lsn, now: i64, durable_elsewhere: bool) {
        self.max_lsn = self.max_lsn.max(lsn);
        if now.saturating_sub(receipt.time) > RECEIPT_MAX_AGE_MS {
            return;
        }
        let key = receipt.key.clone();
        if self.by_key.insert(key.clone(), (receipt, lsn)).is_none() {
            self.order.push_back(key);
        }
        if !durable_elsewhere {
            self.unsnapshotted.insert(lsn);
        }
        self.evict(now);
    }

    fn evict(&mut self, now: i64) {
        while let Some(oldest) = self.order.front() {
            let expired = self
                .by_key
                .get(oldest)
                .is_none_or(|(receipt, _)| now.saturating_sub(receipt.time) > RECEIPT_MAX_AGE_MS);
            if !expired && self.order.len() <= MAX_RECEIPTS {
                break;
            }
            if let Some(key) = self.order.pop_front()
                && let Some((_, lsn)) = self.by_key.remove(&key)
            {
                // Forgotten: the WAL need not keep its record any more.
                self.unsnapshotted.remove(&lsn);
            }
        }
    }
}

/// The receipts window, owned by the engine.
#[derive(Debug, Default)]
pub struct IngestReceipts {
    window: Mutex<Window>,
    replays: AtomicU64,
    conflicts: AtomicU64,
}

/// The receipts a snapshot holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReceiptsSnapshot {
    /// Receipts and the LSNs of their records, oldest first.
    pub receipts: Vec<(IngestReceipt, Lsn)>,
    /// Highest LSN of any receipt recorded when it was taken.
    pub max_lsn: Lsn,
}

impl IngestReceipts {
    /// A window holding `loaded` (from a snapshot).
    pub fn new(loaded: ReceiptsSnapshot, now: i64) -> Self {
        let mut window = Window {
            max_lsn: loaded.max_lsn,
            ..Window::default()
        };
        for (receipt, lsn) in loaded.receipts {
            window.insert(receipt, lsn, now, true);
        }
        IngestReceipts {
            window: Mutex::new(window),
            ..IngestReceipts::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Looks `key` up for a request whose body is `fingerprint`; claims it
    /// when it is new.
    pub fn begin(
        self: &std::sync::Arc<Self>,
        key: &str,
        fingerprint: BodyFingerprint,
        now: i64,
    ) -> KeyState {
        let mut window = self.lock();
        window.evict(now);
        if let Some((receipt, _)) = window.by_key.get(key) {
            return if receipt.matches(fingerprint) {
                self.replays.fetch_add(1, Ordering::Relaxed);
                KeyState::Accepted(receipt.clone())
            } else {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
                KeyState::Mismatch(receipt.clone())
            };
        }
        if !window.in_progress.insert(key.to_string()) {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            return KeyState::InProgress;
        }
        KeyState::New(KeyClaim {
            receipts: std::sync::Arc::downgrade(self),
            key: key.to_string(),
        })
    }

    /// Records the receipt of a request whose record is durable at `lsn`
    /// (called before the record counts as complete, so a checkpoint that
    /// sees the record also sees the receipt).
    pub fn record(&self, receipt: IngestReceipt, lsn: Lsn) {
        let mut window = self.lock();
        window.in_progress.remove(&receipt.key);
        window.insert(receipt, lsn, crate::model::now_millis(), false);
    }

    /// Records a receipt read back from the WAL at start (already durable
    /// there; a snapshot will hold it once the WAL goes).
    pub fn replay(&self, receipt: IngestReceipt, lsn: Lsn) {
        self.record(receipt, lsn);
    }

    /// A copy for a snapshot, and the LSNs of the receipts in it that no
    /// snapshot held before: they stop holding back the WAL once
    /// [`Self::snapshotted`] is called with them.
    pub fn for_snapshot(&self) -> (ReceiptsSnapshot, Vec<Lsn>) {
        let window = self.lock();
        let snapshot = ReceiptsSnapshot {
            receipts: window
                .order
                .iter()
                .filter_map(|key| window.by_key.get(key).cloned())
                .collect(),
            max_lsn: window.max_lsn,
        };
        (snapshot, window.unsnapshotted.iter().copied().collect())
    }

    /// Marks the receipts of `lsns` as held by a durable snapshot.
    pub fn snapshotted(&self, lsns: &[Lsn]) {
        let mut window = self.lock();
        for lsn in lsns {
            window.unsnapshotted.remove(lsn);
        }
    }

    /// LSN of the oldest receipt no snapshot holds yet: the WAL must keep
    /// its record.
    pub fn oldest_unsnapshotted(&self) -> Option<Lsn> {
        self.lock().unsnapshotted.first().copied()
    }

    /// Highest LSN of any receipt recorded.
    pub fn max_lsn(&self) -> Lsn {
        self.lock().max_lsn
    }

    /// Requests answered from a receipt since start.
    pub fn replays(&self) -> u64 {
        self.replays.load(Ordering::Relaxed)
    }

    /// Requests refused for a key in progress or used with another body.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// Receipts kept.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn receipt(key: &str, body: &[u8], time: i64) -> IngestReceipt {
        let fingerprint = BodyFingerprint::of(body);
        IngestReceipt {
            key: key.to_string(),
            body_crc: fingerprint.crc,
            body_len: fingerprint.len,
            points: 3,
            runs: 1,
            time,
        }
    }

    #[test]
    fn a_key_is_new_then_in_progress_then_accepted() {
        let receipts = Arc::new(IngestReceipts::default());
        let now = crate::model::now_millis();
        let body = BodyFingerprint::of(b"abc");
        let KeyState::New(claim) = receipts.begin("k1", body, now) else {
            panic!("a fresh key is new");
        };
        assert!(matches!(
            receipts.begin("k1", body, now),
            KeyState::InProgress
        ));
        receipts.record(receipt("k1", b"abc", now), 7);
        drop(claim);
        match receipts.begin("k1", body, now) {
            KeyState::Accepted(found) => assert_eq!(found.points, 3),
            other => panic!("expected the receipt, got {other:?}"),
        }
        assert!(matches!(
            receipts.begin("k1", BodyFingerprint::of(b"abd"), now),
            KeyState::Mismatch(_)
        ));
        assert_eq!(receipts.oldest_unsnapshotted(), Some(7));
        let (snapshot, pending) = receipts.for_snapshot();
        assert_eq!(pending, [7]);
        receipts.record(receipt("k2", b"abc", now), 9);
        receipts.snapshotted(&pending);
        assert_eq!(snapshot.receipts.len(), 1);
        assert_eq!(receipts.oldest_unsnapshotted(), Some(9));
    }

    #[test]
    fn an_abandoned_claim_frees_the_key() {
        let receipts = Arc::new(IngestReceipts::default());
        let now = crate::model::now_millis();
        let body = BodyFingerprint::of(b"x");
        let claim = receipts.begin("k", body, now);
        drop(claim);
        assert!(matches!(receipts.begin("k", body, now), KeyState::New(_)));
    }

    #[test]
    fn old_receipts_and_receipts_past_the_count_are_forgotten() {
        let now = crate::model::now_millis();
        let old = receipt("old", b"a", now - RECEIPT_MAX_AGE_MS - 1);
        let fresh = receipt("fresh", b"a", now);
        let receipts = Arc::new(IngestReceipts::new(
            ReceiptsSnapshot {
                receipts: vec![(old, 1), (fresh, 2)],
                max_lsn: 2,
            },
            now,
        ));
        assert_eq!(receipts.len(), 1);
        assert!(matches!(
            receipts.begin("old", BodyFingerprint::of(b"a"), now),
            KeyState::New(_)
        ));
        for index in 0..MAX_RECEIPTS as u64 {
            receipts.record(receipt(&format!("k{index}"), b"a", now), 10 + index);
        }
        assert_eq!(receipts.len(), MAX_RECEIPTS);
        assert!(matches!(
            receipts.begin("fresh", BodyFingerprint::of(b"a"), now),
            KeyState::New(_)
        ));
        let (snapshot, pending) = receipts.for_snapshot();
        assert_eq!(
            pending.len(),
            MAX_RECEIPTS,
            "forgotten receipts hold no WAL back"
        );
        assert_eq!(snapshot.receipts.len(), MAX_RECEIPTS);
        assert_eq!(snapshot.receipts[0].0.key, "k0");
        assert_eq!(snapshot.max_lsn, 10 + MAX_RECEIPTS as u64 - 1);
    }
}
