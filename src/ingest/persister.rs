//! Persister threads: write frozen chunks to Parquet files and compact runs,
//! then report back to the owning shard; write settled runs' manifests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::buffer::FrozenChunk;
use super::{ControlMessage, IngestStats};
use crate::model::{ExperimentId, RunId};
use crate::storage::compaction::{compact_files, remove_output};
use crate::storage::run_manifest::{self, ManifestFile};
use crate::storage::spill::SpillDir;
use crate::storage::{MetricFileWriter, MetricsLayout, PersistedFile, StorageError};

/// Work for a persister thread.
pub(crate) enum PersistJob {
    /// Write frozen chunks of one run (in logged order; in memory or
    /// spilled) as file `seq` of the run.
    Chunks {
        job_id: u64,
        run_id: RunId,
        experiment_id: ExperimentId,
        seq: u64,
        chunks: Vec<Arc<FrozenChunk>>,
        reply: Sender<ControlMessage>,
    },
    /// Move in-memory frozen chunks of many runs to one spill file.
    Spill {
        job_id: u64,
        spill: SpillDir,
        chunks: Vec<Arc<FrozenChunk>>,
        reply: Sender<ControlMessage>,
    },
    /// Merge `inputs` into file `seq` of the run.
    Compact {
        run_id: RunId,
        experiment_id: ExperimentId,
        seq: u64,
        inputs: Vec<Arc<PersistedFile>>,
        reply: Sender<ControlMessage>,
    },
    /// Write the manifest of a settled run's files (see
    /// [`crate::storage::run_manifest`]).
    Manifest {
        run_id: RunId,
        run_dir: PathBuf,
        files: Vec<Arc<PersistedFile>>,
    },
}

/// A purged run whose files (marked obsolete: each goes once no reader
/// holds it), manifest and directory are to be removed.
pub(crate) struct RunRemoval {
    pub(crate) run_id: RunId,
    /// Its directory, when it had files.
    pub(crate) run_dir: Option<PathBuf>,
    pub(crate) files: Vec<Arc<PersistedFile>>,
}

impl RunRemoval {
    /// Removes what is left of the run.
    pub(crate) fn remove(self) {
        let count = self.files.len();
        drop(self.files);
        // Empty once no reader holds a file (else the next start removes
        // what is left).
        if let Some(run_dir) = &self.run_dir {
            crate::storage::run_manifest::remove(run_dir);
            let _ = std::fs::remove_dir(run_dir);
        }
        tracing::debug!(run_id = %self.run_id, files = count, "purged run's files removed");
    }
}

/// The remover loop: purged runs' files go here, off the shards' and the
/// persisters' threads (a gc of a hundred thousand runs is tens of seconds
/// of file-system work, which must hold up neither writes nor flushes).
/// Returns when every sender is gone.
pub(crate) fn remove_runs(removals: Receiver<RunRemoval>) {
    for removal in removals {
        removal.remove();
    }
}

/// Runs `work`, turning a panic into an error (counted in `stats`), so that
/// one bad job cannot take the thread, and every job after it, down: the
/// shard retries a failed job as it retries any failed write.
fn contained<T>(
    what: &'static str,
    stats: &IngestStats,
    work: impl FnOnce() -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        stats.count_panic();
        Err(StorageError::Panicked {
            what,
            message: panic_message(payload.as_ref()),
        })
    })
}

/// The message a panic was raised with.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|message| message.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// The persister loop; returns when every job sender is gone.
pub(crate) fn run(jobs: Receiver<PersistJob>, layout: MetricsLayout, stats: Arc<IngestStats>) {
    for job in jobs {
        match job {
            PersistJob::Chunks {
                job_id,
                run_id,
                experiment_id,
                seq,
                chunks,
                reply,
            } => {
                let path = layout.file_path(experiment_id, run_id, seq);
                let outcome = contained("writing a metric file", &stats, || {
                    layout
                        .prepare_dir_of(&path)
                        .and_then(|()| write_chunks(&chunks, &path, seq, &layout))
                });
                match &outcome {
                    Ok(file) => layout.publish(file),
                    Err(error) => {
                        tracing::error!(%run_id, seq, %error, "persisting a buffer failed; it stays in memory and is retried");
                    }
                }
                let _ = reply.send(ControlMessage::Persisted {
                    run_id,
                    job_id,
                    outcome,
                });
            }
            PersistJob::Spill {
                job_id,
                spill,
                chunks,
                reply,
            } => {
                let outcome = contained("writing a spill file", &stats, || {
                    spill_chunks(&spill, &chunks)
                });
                if let Err(error) = &outcome {
                    tracing::error!(chunks = chunks.len(), %error, "spilling buffers failed; they stay in memory and go to their runs' files");
                }
                drop(chunks);
                let _ = reply.send(ControlMessage::Spilled { job_id, outcome });
            }
            PersistJob::Compact {
                run_id,
                experiment_id,
                seq,
                inputs,
                reply,
            } => {
                let path = layout.file_path(experiment_id, run_id, seq);
                let started = std::time::Instant::now();
                let outcome = contained("compacting a run", &stats, || {
                    compact_files(&inputs, &path, layout.io())
                        .and_then(|written| {
                            layout.open_file(seq, &written.path).inspect_err(|_| {
                                if let Err(error) = remove_output(&written.path, layout.io()) {
                                    tracing::error!(%error, "a compaction output that cannot be opened could not be removed");
                                }
                            })
                        })
                        .map(|(file, _)| Arc::new(file))
                });
                match &outcome {
                    Ok(file) => {
                        layout.publish(file);
                        tracing::info!(
                        %run_id,
                        inputs = inputs.len(),
                        rows = file.rows(),
                        bytes = file.bytes(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "compacted run files"
                        )
                    }
                    Err(error) => {
                        tracing::error!(%run_id, %error, "compaction failed; the input files stay")
                    }
                }
                let replaced = inputs.iter().map(|input| input.seq()).collect();
                drop(inputs);
                let _ = reply.send(ControlMessage::Compacted {
                    run_id,
                    replaced,
                    outcome,
                });
            }
            PersistJob::Manifest {
                run_id,
                run_dir,
                files,
            } => {
                let outcome = contained("writing a run manifest", &stats, || {
                    write_manifest(&run_dir, run_id, &files)
                });
                match outcome {
                    Ok(true) => stats.count_manifest(),
                    // A file was replaced meanwhile: a later manifest
                    // names the new ones.
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%run_id, %error, "could not write a run manifest; the next start reads the run's footers")
                    }
                }
            }
        }
    }
}

/// Writes the manifest of `files` into `run_dir`, their metadata taken
/// from their footers (cached, as they were opened lately). `false` when
/// one of them was replaced meanwhile: nothing is written.
fn write_manifest(
    run_dir: &Path,
    run_id: RunId,
    files: &[Arc<PersistedFile>],
) -> Result<bool, StorageError> {
    if files.iter().any(|file| file.is_obsolete()) {
        return Ok(false);
    }
    let entries = files
        .iter()
        .map(|file| {
            Ok(ManifestFile {
                seq: file.seq(),
                bytes: file.bytes(),
                rows: file.rows(),
                metadata: file.metadata()?,
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    run_manifest::write(run_dir, run_id, &entries)?;
    Ok(true)
}

/// Writes the in-memory rows of `chunks` into one spill file and has each
/// chunk read from it from then on. A chunk already spilled is left.
fn spill_chunks(spill: &SpillDir, chunks: &[Arc<FrozenChunk>]) -> Result<(), StorageError> {
    let held: Vec<(usize, Arc<[Arc<crate::ingest::Segment>]>)> = chunks
        .iter()
        .enumerate()
        .filter_map(|(index, chunk)| chunk.in_memory_segments().map(|segments| (index, segments)))
        .collect();
    let members: Vec<Vec<crate::storage::LoggedRows<'_>>> = held
        .iter()
        .map(|(_, segments)| {
            segments
                .iter()
                .map(|segment| segment.logged_rows())
                .collect()
        })
        .collect();
    let written = spill.write(&members)?;
    for ((index, _), member) in held.iter().zip(written) {
        chunks[*index].spilled_to(member);
    }
    Ok(())
}

/// Writes `chunks` (one run's, in logged order) as one metric file.
fn write_chunks(
    chunks: &[Arc<FrozenChunk>],
    path: &std::path::Path,
    seq: u64,
    layout: &MetricsLayout,
) -> Result<Arc<PersistedFile>, StorageError> {
    let columns = FrozenChunk::sorted_columns_of(chunks)?;
    let mut writer = MetricFileWriter::create_with(path, layout.io())?;
    writer.write(columns)?;
    let ranges = chunks.iter().map(|chunk| chunk.lsn_range()).collect();
    let written = writer.finish(ranges, Vec::new())?;
    let (file, _) = layout.open_file(seq, &written.path)?;
    Ok(Arc::new(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_job_is_an_error_and_is_counted() {
        let stats = IngestStats::default();
        let outcome: Result<(), StorageError> =
            contained("writing a metric file", &stats, || panic!("disk on fire"));
        match outcome {
            Err(StorageError::Panicked { what, message }) => {
                assert_eq!(what, "writing a metric file");
                assert_eq!(message, "disk on fire");
            }
            other => panic!("expected a contained panic, got {other:?}"),
        }
        assert_eq!(stats.thread_panics(), 1);
        let fine = contained("compacting a run", &stats, || Ok(7));
        assert_eq!(fine.unwrap(), 7);
        assert_eq!(stats.thread_panics(), 1);
    }
}
