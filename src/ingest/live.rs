//! Live notifications of acknowledged metric points, for followers of a
//! running run (the scalar API's server-sent event stream).
//!
//! Each run with followers has a `tokio::sync::broadcast` channel, created
//! on the first subscription and dropped with the last. The run's shard
//! publishes every batch right after applying it (so in WAL order, and
//! after the points became visible to reads); with nobody following, the
//! cost is one atomic load per batch. A follower that falls more than
//! [`CHANNEL_CAPACITY`] messages behind is told so by the channel
//! (`Lagged`) and must resynchronise from storage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

use crate::model::{MetricBatch, RunId, RunStatus};
use crate::wal::Lsn;

/// Messages a follower can fall behind by before it is told it lagged.
pub const CHANNEL_CAPACITY: usize = 4096;

/// What a follower of a run receives.
#[derive(Debug)]
pub enum LiveEvent {
    /// Points of WAL record `lsn` were applied (they are visible to reads).
    Points {
        /// The WAL record; per run, applied in increasing order.
        lsn: Lsn,
        /// The points.
        batch: MetricBatch,
    },
    /// The run was rewound at WAL record `lsn`: the points logged before
    /// it with a step past `step` are hidden from now on.
    Rewound {
        /// The rewind's WAL record.
        lsn: Lsn,
        /// The step rewound to.
        step: i64,
    },
    /// The run reached a terminal status.
    Ended(RunStatus),
}

/// The per-run channels.
#[derive(Debug)]
pub struct LiveHub {
    followers: AtomicUsize,
    runs: Mutex<HashMap<RunId, broadcast::Sender<Arc<LiveEvent>>>>,
    /// Becomes `true` when the server shuts down: every follower sends its
    /// last event and closes, so that shutdown does not wait for streams.
    closing: watch::Sender<bool>,
}

impl Default for LiveHub {
    fn default() -> Self {
        LiveHub {
            followers: AtomicUsize::new(0),
            runs: Mutex::default(),
            closing: watch::Sender::new(false),
        }
    }
}

/// A follower's subscription to one run; unsubscribes when dropped.
#[derive(Debug)]
pub struct LiveSubscription {
    run_id: RunId,
    hub: Arc<LiveHub>,
    /// The channel: every event published after the subscription was made.
    pub receiver: broadcast::Receiver<Arc<LiveEvent>>,
}

impl LiveHub {
    /// Follows `run_id`: every event published from now on is received.
    pub fn subscribe(self: &Arc<Self>, run_id: RunId) -> LiveSubscription {
        let mut runs = self
            .runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let receiver = runs
            .entry(run_id)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe();
        self.followers.fetch_add(1, Ordering::SeqCst);
        LiveSubscription {
            run_id,
            hub: Arc::clone(self),
            receiver,
        }
    }

    /// Tells every follower, now and to come, that the server is closing.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// A receiver that sees `true` once the server is closing.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Number of live subscriptions.
    pub fn followers(&self) -> usize {
        self.followers.load(Ordering::SeqCst)
    }

    /// Publishes applied points (a copy, only when the run has followers).
    pub fn publish_points(&self, run_id: RunId, lsn: Lsn, batch: &MetricBatch) {
        if self.followers.load(Ordering::SeqCst) == 0 {
            return;
        }
        let runs = self
            .runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sender) = runs.get(&run_id) {
            let _ = sender.send(Arc::new(LiveEvent::Points {
                lsn,
                batch: batch.clone(),
            }));
        }
    }

    /// Publishes a rewind of `run_id` (no-op without followers).
    pub fn publish_rewind(&self, run_id: RunId, lsn: Lsn, step: i64) {
        self.publish(run_id, || LiveEvent::Rewound { lsn, step });
    }

    fn publish(&self, run_id: RunId, event: impl FnOnce() -> LiveEvent) {
        if self.followers.load(Ordering::SeqCst) == 0 {
            return;
        }
        let runs = self
            .runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sender) = runs.get(&run_id) {
            let _ = sender.send(Arc::new(event()));
        }
    }

    /// Publishes the end of a run.
    pub fn publish_end(&self, run_id: RunId, status: RunStatus) {
        self.publish(run_id, || LiveEvent::Ended(status));
    }
}

impl Drop for LiveSubscription {
    fn drop(&mut self) {
        let mut runs = self
            .hub
            .runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.hub.followers.fetch_sub(1, Ordering::SeqCst);
        // This receiver still counts until it is dropped after this body.
        if runs
            .get(&self.run_id)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            runs.remove(&self.run_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MetricBatchBuilder;

    #[test]
    fn followers_get_events_of_their_run_only_and_channels_go_with_them() {
        let hub = Arc::new(LiveHub::default());
        let (run, other) = (RunId::new_random(), RunId::new_random());
        let mut builder = MetricBatchBuilder::new();
        builder.push("loss", 1, 10, 0.5);
        let batch = builder.finish();
        hub.publish_points(run, 1, &batch);
        let mut first = hub.subscribe(run);
        let mut second = hub.subscribe(run);
        hub.publish_points(other, 2, &batch);
        hub.publish_points(run, 3, &batch);
        hub.publish_end(run, RunStatus::Finished);
        for subscription in [&mut first, &mut second] {
            match subscription.receiver.try_recv().unwrap().as_ref() {
                LiveEvent::Points { lsn, batch } => assert_eq!((*lsn, batch.len()), (3, 1)),
                other => panic!("unexpected {other:?}"),
            }
            assert!(matches!(
                subscription.receiver.try_recv().unwrap().as_ref(),
                LiveEvent::Ended(RunStatus::Finished)
            ));
            assert!(subscription.receiver.try_recv().is_err());
        }
        assert_eq!(hub.followers(), 2);
        drop(first);
        assert_eq!(hub.runs.lock().unwrap().len(), 1);
        drop(second);
        assert_eq!(hub.followers(), 0);
        assert!(hub.runs.lock().unwrap().is_empty());
    }
}
