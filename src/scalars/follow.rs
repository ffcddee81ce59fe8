//! Following a running run: stored points after a step, then every newly
//! acknowledged point, then the run's end.
//!
//! Order of work, so that nothing is missed or doubled across the switch
//! from storage to live: subscribe to the run's live channel first; then,
//! per selected key, capture the key's sources and the highest WAL record
//! applied to the run at that moment (`applied_lsn`) and send the stored
//! points with a step after `after_step`; then send live batches, skipping
//! for each key the batches at or below its captured `applied_lsn` (those
//! points were in the stored read). The shard applies a run's batches in
//! WAL order and publishes each right after applying it, so a batch is in
//! the captured sources exactly when its LSN is at most `applied_lsn`.
//!
//! A follower that falls too far behind the live channel gets a
//! [`FollowEvent::Lagged`] with the step to resume after, and the stream
//! ends: it never silently skips points.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;

use super::stream::{SeriesSnapshot, StepBounds};
use super::{KeyPattern, ScalarError, any_matches};
use crate::engine::Engine;
use crate::ingest::LiveEvent;
use crate::model::{RunId, RunStatus};
use crate::wal::Lsn;

/// Stored points sent per event.
pub const STORED_POINTS_PER_EVENT: usize = 10_000;

/// How long a follower waits for room in its event queue before it takes
/// the reader as gone (a reader that does not read must not hold a thread
/// or a task forever).
pub const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Queues an event, waiting at most [`SEND_TIMEOUT`]; false when the
/// reader is gone or stalled.
async fn send(events: &mpsc::Sender<FollowEvent>, event: FollowEvent) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, events.send(event)).await,
        Ok(Ok(()))
    )
}

/// One point sent to a follower.
#[derive(Clone, Debug, PartialEq)]
pub struct FollowPoint {
    /// The key.
    pub key: String,
    /// The step.
    pub step: i64,
    /// The timestamp, ms since the epoch.
    pub timestamp: i64,
    /// The value.
    pub value: f64,
}

/// What a follower receives.
#[derive(Clone, Debug, PartialEq)]
pub enum FollowEvent {
    /// Points: stored ones (one key at a time, in step order) or one
    /// acknowledged batch.
    Points(Vec<FollowPoint>),
    /// The run was rewound to this step: drop the points already received
    /// with a greater step; the points that take their place follow.
    Rewound(i64),
    /// The run ended with this status; nothing follows.
    End(RunStatus),
    /// The follower fell behind; reconnect with `after_step`.
    Lagged {
        /// The greatest step sent so far (or the requested `after_step`).
        resume_after_step: Option<i64>,
    },
    /// Reading failed; nothing follows.
    Failed(String),
    /// The server is shutting down; reconnect with `after_step` once it is
    /// back. Nothing follows.
    Closing {
        /// The greatest step sent so far (or the requested `after_step`).
        resume_after_step: Option<i64>,
    },
}

/// What to follow.
#[derive(Clone, Debug)]
pub struct FollowRequest {
    /// The run.
    pub run_id: RunId,
    /// Keys to send (empty: every key).
    pub keys: Vec<KeyPattern>,
    /// Send stored points with a greater step first; without it, only new
    /// points are sent.
    pub after_step: Option<i64>,
}

/// Sends the run's points to `events` until the run ends, the receiver is
/// dropped, or the follower lags.
pub async fn follow(
    engine: Arc<Engine>,
    request: FollowRequest,
    events: mpsc::Sender<FollowEvent>,
) {
    if let Err(error) = follow_inner(&engine, &request, &events).await {
        send(&events, FollowEvent::Failed(error.to_string())).await;
    }
}

/// Resolves once the server is closing (never, if the hub is gone).
async fn server_closing(closing: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        let closed = *closing.borrow_and_update();
        if closed {
            return;
        }
        if closing.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn follow_inner(
    engine: &Arc<Engine>,
    request: &FollowRequest,
    events: &mpsc::Sender<FollowEvent>,
) -> Result<(), ScalarError> {
    let run_id = request.run_id;
    let mut subscription = engine.live().subscribe(run_id);
    let mut closing = engine.live().closing();
    let mut thresholds: HashMap<String, Lsn> = HashMap::new();
    let mut max_step = request.after_step;
    if let Some(after_step) = request.after_step {
        let summaries = engine.run_metric_summaries(run_id).await?;
        for (key, _) in summaries {
            if !any_matches(&request.keys, &key) {
                continue;
            }
            let sources = engine.series_sources(run_id, &key).await?;
            thresholds.insert(key.clone(), sources.applied_lsn());
            let Some(lower) = after_step.checked_add(1) else {
                continue;
            };
            let sender = events.clone();
            let runtime = tokio::runtime::Handle::current();
            let (sent_max, open) = tokio::task::spawn_blocking(move || {
                let (files, caps, buffered) = sources.into_parts()?;
                let snapshot = SeriesSnapshot::new(&key, files, buffered).with_file_caps(caps);
                send_stored(&snapshot, lower, &|event| {
                    runtime.block_on(send(&sender, event))
                })
            })
            .await
            .map_err(|error| ScalarError::Task(error.to_string()))??;
            max_step = max_step.max(sent_max);
            if !open {
                return Ok(());
            }
        }
    }
    let run = engine.run(run_id)?;
    let ended = run.status.is_terminal().then_some(run.status);
    loop {
        let received = match ended {
            // Already over: deliver what is queued, then the end.
            Some(status) => match subscription.receiver.try_recv() {
                Ok(event) => Ok(event),
                Err(TryRecvError::Lagged(count)) => Err(RecvError::Lagged(count)),
                Err(TryRecvError::Empty | TryRecvError::Closed) => {
                    send(events, FollowEvent::End(status)).await;
                    return Ok(());
                }
            },
            None => tokio::select! {
                () = events.closed() => return Ok(()),
                () = server_closing(&mut closing) => {
                    send(events, FollowEvent::Closing { resume_after_step: max_step }).await;
                    return Ok(());
                }
                received = subscription.receiver.recv() => received,
            },
        };
        match received {
            Ok(event) => match event.as_ref() {
                LiveEvent::Points { lsn, batch } => {
                    let selected: Vec<bool> = batch
                        .keys
                        .iter()
                        .map(|key| {
                            any_matches(&request.keys, key)
                                && thresholds
                                    .get(key)
                                    .is_none_or(|&threshold| *lsn > threshold)
                        })
                        .collect();
                    let points: Vec<FollowPoint> = (0..batch.len())
                        .filter(|&point| selected[batch.key_indices[point] as usize])
                        .map(|point| FollowPoint {
                            key: batch.key_of(point).to_string(),
                            step: batch.steps[point],
                            timestamp: batch.timestamps[point],
                            value: batch.values[point],
                        })
                        .collect();
                    if points.is_empty() {
                        continue;
                    }
                    max_step = max_step.max(points.iter().map(|point| point.step).max());
                    if !send(events, FollowEvent::Points(points)).await {
                        return Ok(());
                    }
                }
                LiveEvent::Rewound { step, .. } => {
                    max_step = max_step.map(|max| max.min(*step));
                    if !send(events, FollowEvent::Rewound(*step)).await {
                        return Ok(());
                    }
                }
                LiveEvent::Ended(status) => {
                    send(events, FollowEvent::End(*status)).await;
                    return Ok(());
                }
            },
            Err(RecvError::Lagged(_)) => {
                send(
                    events,
                    FollowEvent::Lagged {
                        resume_after_step: max_step,
                    },
                )
                .await;
                return Ok(());
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// Sends the stored points with a step of at least `lower` through `send`
/// (false: the reader is gone or stalled); returns the greatest step sent
/// and whether the reader is still there. Blocking.
fn send_stored(
    snapshot: &SeriesSnapshot,
    lower: i64,
    send: &dyn Fn(FollowEvent) -> bool,
) -> Result<(Option<i64>, bool), ScalarError> {
    let mut chunk: Vec<FollowPoint> = Vec::new();
    let mut max_step = None;
    let mut open = true;
    let bounds = StepBounds {
        lower: Some(lower),
        upper: None,
    };
    snapshot.for_each_slice(bounds, &mut |steps, timestamps, values| {
        for ((&step, &timestamp), &value) in steps.iter().zip(timestamps).zip(values) {
            chunk.push(FollowPoint {
                key: snapshot.key().to_string(),
                step,
                timestamp,
                value,
            });
            max_step = max_step.max(Some(step));
            if chunk.len() >= STORED_POINTS_PER_EVENT
                && !send(FollowEvent::Points(std::mem::take(&mut chunk)))
            {
                open = false;
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    if open && !chunk.is_empty() && !send(FollowEvent::Points(chunk)) {
        open = false;
    }
    Ok((max_step, open))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::NewRun;
    use crate::engine::EngineConfig;
    use crate::ingest::live::CHANNEL_CAPACITY;
    use crate::model::{ExperimentId, MetricBatchBuilder};
    use crate::wal::SyncPolicy;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_that_falls_behind_is_told_where_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path());
        config.wal_sync = SyncPolicy::Off;
        let engine = Engine::open(config).unwrap();
        let run = engine
            .create_run(NewRun {
                experiment_id: ExperimentId::DEFAULT,
                run_name: None,
                user_id: String::new(),
                start_time: 0,
                params: Vec::new(),
                tags: Vec::new(),
            })
            .await
            .unwrap();
        // A receiver that is not read: the follower blocks, then lags.
        let (sender, mut receiver) = mpsc::channel(1);
        let request = FollowRequest {
            run_id: run.run_id,
            keys: Vec::new(),
            after_step: None,
        };
        let task = tokio::spawn(follow(Arc::clone(&engine), request, sender));
        while engine.live().followers() == 0 {
            tokio::task::yield_now().await;
        }
        for step in 0..(CHANNEL_CAPACITY as i64 + 100) {
            let mut builder = MetricBatchBuilder::new();
            builder.push("loss", step, step, step as f64);
            engine
                .log_metrics(run.run_id, builder.finish())
                .await
                .unwrap();
        }
        let mut steps = Vec::new();
        let resume = loop {
            match receiver.recv().await {
                Some(FollowEvent::Points(points)) => {
                    steps.extend(points.iter().map(|point| point.step))
                }
                Some(FollowEvent::Lagged { resume_after_step }) => break resume_after_step,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert!(!steps.is_empty());
        assert_eq!(
            steps,
            (0..steps.len() as i64).collect::<Vec<_>>(),
            "no gap before the notice"
        );
        assert_eq!(
            resume,
            steps.last().copied(),
            "resume after the last step sent"
        );
        assert!(receiver.recv().await.is_none(), "the stream ends");
        task.await.unwrap();
        assert_eq!(engine.live().followers(), 0);
        engine.shutdown().unwrap();
    }
}
