//! The maintenance thread: checkpoints periodically (snapshot the catalog
//! when due, remove WAL segments that are persisted elsewhere).

use std::sync::Weak;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender, bounded};

use super::{Engine, EngineError};

/// Stops the maintenance thread when asked.
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
        if self.thread.join().is_err() {
            tracing::error!("the maintenance thread panicked");
        }
    }
}

/// Starts the thread; it holds the engine weakly so it never keeps it alive.
pub(crate) fn start(
    engine: Weak<Engine>,
    interval: Duration,
) -> Result<MaintenanceHandle, EngineError> {
    let (stop, stopped) = bounded::<()>(1);
    let thread = std::thread::Builder::new()
        .name("stepstore-maintenance".to_string())
        .spawn(move || {
            // Stops on a message or when the handle is dropped.
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                let Some(engine) = engine.upgrade() else {
                    break;
                };
                if let Err(error) = engine.checkpoint(false) {
                    tracing::warn!(%error, "checkpoint failed; retrying later");
                }
            }
        })
        .map_err(|error| EngineError::Task(error.to_string()))?;
    Ok(MaintenanceHandle { stop, thread })
}
