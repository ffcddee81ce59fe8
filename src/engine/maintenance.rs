//! The engine's periodic threads: the maintenance thread checkpoints
//! (snapshot the catalog when due, remove WAL segments that are persisted
//! elsewhere); a read replica's thread refreshes it from the store
//! ([`super::replica`]). Both run through [`start_periodic`].

use std::sync::Weak;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender, bounded};

use super::{Engine, EngineError};

/// Stops a periodic thread when asked.
pub(crate) struct MaintenanceHandle {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl MaintenanceHandle {
    /// Stops the thread and waits for it.
    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.thread().id() == std::thread::current().id() {
            // The engine was dropped by the maintenance thread itself.
            return;
        }
        let name = self
            .thread
            .thread()
            .name()
            .unwrap_or("a periodic thread")
            .to_string();
        if self.thread.join().is_err() {
            tracing::error!(thread = %name, "the thread panicked");
        }
    }
}

/// Starts the maintenance thread: a checkpoint every `interval`.
pub(crate) fn start(
    engine: Weak<Engine>,
    interval: Duration,
) -> Result<MaintenanceHandle, EngineError> {
    start_periodic("stepstore-maintenance", engine, interval, |engine| {
        if let Err(error) = engine.checkpoint(false) {
            tracing::warn!(%error, "checkpoint failed; retrying later");
        }
    })
}

/// Starts a thread named `name` that runs `work` every `interval` until it
/// is stopped or the engine is gone; it holds the engine weakly so it never
/// keeps it alive.
pub(crate) fn start_periodic(
    name: &str,
    engine: Weak<Engine>,
    interval: Duration,
    work: impl Fn(&Engine) + Send + 'static,
) -> Result<MaintenanceHandle, EngineError> {
    let (stop, stopped) = bounded::<()>(1);
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // Stops on a message or when the handle is dropped.
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                let Some(engine) = engine.upgrade() else {
                    break;
                };
                work(&engine);
            }
        })
        .map_err(|error| EngineError::Task(error.to_string()))?;
    Ok(MaintenanceHandle { stop, thread })
}
