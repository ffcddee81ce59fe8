//! Imports TensorBoard event files: every directory under the log
//! directory that holds `*tfevents*` files becomes a run (named by its path
//! relative to the log directory), every scalar tag a metric key (both
//! `simple_value` and rank-0 tensor scalars), every event's wall time and
//! step the points' timestamp and step.
//!
//! Tags that break stepstore's key rules have the offending characters
//! replaced by `_`. A run whose name already exists in the experiment is
//! skipped, so running the import again only adds new run directories. A
//! file that ends inside a record (its writer was stopped) is read up to
//! that record with a warning; a checksum mismatch or an undecodable
//! record stops the import with the file and offset.

pub mod event;
pub mod tfrecord;

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use thiserror::Error;

use crate::catalog::{NewExperiment, NewRun, RunUpdate};
use crate::engine::{Engine, EngineError, ViewType};
use crate::error_kind::{Classify, ErrorKind};
use crate::model::validation::{KeyKind, MAX_KEY_BYTES, MAX_KEY_LENGTH, validate_key};
use crate::model::{ExperimentId, MetricBatchBuilder, RunId, RunStatus};
use event::decode_event;
use tfrecord::{RecordReader, TfRecordError};

/// Points sent to the engine per batch.
const POINTS_PER_BATCH: usize = 20_000;

/// Errors of the TensorBoard importer.
#[derive(Debug, Error)]
pub enum ImportError {
    /// The log directory cannot be used.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An event file is damaged.
    #[error("{path}: {source}")]
    Record {
        /// The event file.
        path: PathBuf,
        /// What is wrong.
        source: TfRecordError,
    },
    /// A record is not an `Event` protobuf.
    #[error("{path}: the record at offset {offset} is not a TensorBoard event: {reason}")]
    Decode {
        /// The event file.
        path: PathBuf,
        /// Start of the record.
        offset: u64,
        /// The decoder's message.
        reason: String,
    },
    /// The engine refused a write.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Classify for ImportError {
    fn kind(&self) -> ErrorKind {
        match self {
            ImportError::Engine(error) => error.kind(),
            ImportError::NotADirectory { .. }
            | ImportError::Record { .. }
            | ImportError::Decode { .. } => ErrorKind::InvalidParameter,
            ImportError::Io { .. } => ErrorKind::Internal,
        }
    }
}

/// A run directory and its event files, in name (so time) order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDirectory {
    /// The run name: the path relative to the log directory (the log
    /// directory's own name for files directly in it).
    pub name: String,
    /// The event files.
    pub files: Vec<PathBuf>,
    /// Their total size.
    pub bytes: u64,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Runs created, by name and id.
    pub runs: Vec<(String, RunId)>,
    /// Run directories skipped because the experiment has a run of that
    /// name.
    pub skipped_existing: Vec<String>,
    /// Run directories without any scalar.
    pub without_scalars: Vec<String>,
    /// Points imported.
    pub points: u64,
    /// Event files read.
    pub files: u64,
    /// Tags renamed to follow the key rules (original, key).
    pub renamed_tags: Vec<(String, String)>,
    /// Tags skipped because no valid key could be made of them.
    pub skipped_tags: Vec<String>,
    /// Files that ended inside a record (read up to it).
    pub truncated_files: Vec<PathBuf>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Finds the run directories under `logdir`, in name order.
pub fn discover_runs(logdir: &Path) -> Result<Vec<RunDirectory>, ImportError> {
    if !logdir.is_dir() {
        return Err(ImportError::NotADirectory {
            path: logdir.to_path_buf(),
        });
    }
    let mut runs = Vec::new();
    let mut pending = vec![logdir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut files = Vec::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(io_error(&path))?;
            if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_file()
                && entry.file_name().to_string_lossy().contains("tfevents")
            {
                bytes += entry.metadata().map_err(io_error(&path))?.len();
                files.push(path);
            }
        }
        if files.is_empty() {
            continue;
        }
        files.sort();
        let name = match dir.strip_prefix(logdir) {
            Ok(relative) if !relative.as_os_str().is_empty() => {
                relative.to_string_lossy().replace('\\', "/")
            }
            _ => logdir
                .canonicalize()
                .ok()
                .and_then(|path| {
                    path.file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| ".".to_string()),
        };
        runs.push(RunDirectory { name, files, bytes });
    }
    runs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(runs)
}

/// A metric key for a TensorBoard tag: characters outside the key rules
/// become `_`, empty and `.` path segments go, `..` becomes `__`. `None`
/// when nothing valid remains.
pub fn key_for_tag(tag: &str) -> Option<String> {
    let cleaned: String = tag
        .chars()
        .map(|character| {
            if character.is_alphanumeric() || matches!(character, '_' | '/' | '.' | '-' | ' ' | ':')
            {
                character
            } else {
                '_'
            }
        })
        .collect();
    let segments: Vec<&str> = cleaned
        .split('/')
        .filter(|segment| !segment.is_empty() && *segment != ".")
        .map(|segment| if segment == ".." { "__" } else { segment })
        .collect();
    let mut key = String::new();
    for character in segments.join("/").chars().take(MAX_KEY_LENGTH) {
        if key.len() + character.len_utf8() > MAX_KEY_BYTES {
            break;
        }
        key.push(character);
    }
    // Cutting may leave a trailing `/` or `.` segment that the rules refuse.
    while key.ends_with('/') || key.ends_with("/.") || key.ends_with("/..") {
        key.pop();
    }
    validate_key(KeyKind::Metric, &key).ok().map(|()| key)
}

/// Imports every run directory under `logdir` into the experiment named
/// `experiment` (created if missing). `progress` advances by event-file
/// bytes read; its length is set here.
pub async fn import_logdir(
    engine: &Engine,
    logdir: &Path,
    experiment: &str,
    progress: &ProgressBar,
) -> Result<ImportSummary, ImportError> {
    let runs = discover_runs(logdir)?;
    progress.set_length(runs.iter().map(|run| run.bytes).sum());
    let experiment_id = match engine.experiment_by_name(experiment) {
        Ok(found) => found.experiment_id,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            engine
                .create_experiment(NewExperiment {
                    name: experiment.to_string(),
                    ..NewExperiment::default()
                })
                .await?
        }
        Err(error) => return Err(error.into()),
    };
    let existing: HashSet<String> = engine
        .runs_of_experiment(experiment_id, ViewType::All)
        .into_iter()
        .map(|run| run.run_name.clone())
        .collect();
    let mut summary = ImportSummary::default();
    let mut seen_tags = HashSet::new();
    for run in &runs {
        if existing.contains(&run.name) {
            progress.inc(run.bytes);
            progress.println(format!(
                "skipped {}: the experiment has a run of that name",
                run.name
            ));
            summary.skipped_existing.push(run.name.clone());
            continue;
        }
        progress.set_message(run.name.clone());
        import_run(
            engine,
            experiment_id,
            logdir,
            run,
            progress,
            &mut summary,
            &mut seen_tags,
        )
        .await?;
    }
    progress.finish_with_message(format!(
        "{} runs, {} points",
        summary.runs.len(),
        summary.points
    ));
    Ok(summary)
}

/// The run being written: created at its first point.
struct RunWriter {
    run_id: Option<RunId>,
    batch: MetricBatchBuilder,
    pending: usize,
    last_timestamp: i64,
}

impl RunWriter {
    async fn flush(
        &mut self,
        engine: &Engine,
        experiment_id: ExperimentId,
        run: &RunDirectory,
        logdir: &Path,
        summary: &mut ImportSummary,
    ) -> Result<(), ImportError> {
        if self.pending == 0 {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch).finish();
        let run_id = match self.run_id {
            Some(run_id) => run_id,
            None => {
                let start_time = batch.timestamps.iter().copied().min().unwrap_or(0);
                let source = logdir.join(&run.name);
                let created = engine
                    .create_run(NewRun {
                        experiment_id,
                        run_name: Some(run.name.clone()),
                        user_id: String::new(),
                        start_time,
                        params: Vec::new(),
                        tags: vec![
                            ("stepstore.import.format".into(), "tensorboard".into()),
                            (
                                "stepstore.import.source".into(),
                                source.to_string_lossy().chars().take(4000).collect(),
                            ),
                        ],
                    })
                    .await?;
                summary.runs.push((run.name.clone(), created.run_id));
                self.run_id = Some(created.run_id);
                created.run_id
            }
        };
        summary.points += engine.log_metrics(run_id, batch).await? as u64;
        self.pending = 0;
        Ok(())
    }
}

async fn import_run(
    engine: &Engine,
    experiment_id: ExperimentId,
    logdir: &Path,
    run: &RunDirectory,
    progress: &ProgressBar,
    summary: &mut ImportSummary,
    seen_tags: &mut HashSet<String>,
) -> Result<(), ImportError> {
    let mut writer = RunWriter {
        run_id: None,
        batch: MetricBatchBuilder::with_capacity(POINTS_PER_BATCH),
        pending: 0,
        last_timestamp: 0,
    };
    for path in &run.files {
        let file = File::open(path).map_err(io_error(path))?;
        let mut records = RecordReader::new(BufReader::with_capacity(1 << 20, file));
        let mut reported = 0;
        loop {
            let offset = records.offset();
            let record = match records.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(TfRecordError::Truncated { offset }) => {
                    progress.println(format!(
                        "warning: {} ends inside the record at offset {offset}; read up to it",
                        path.display()
                    ));
                    summary.truncated_files.push(path.clone());
                    break;
                }
                Err(source) => {
                    return Err(ImportError::Record {
                        path: path.clone(),
                        source,
                    });
                }
            };
            let event = decode_event(&record).map_err(|error| ImportError::Decode {
                path: path.clone(),
                offset,
                reason: error.to_string(),
            })?;
            let timestamp = if event.wall_time.is_finite() {
                (event.wall_time * 1000.0).round() as i64
            } else {
                0
            };
            for value in event.summary.iter().flat_map(|summary| &summary.value) {
                let Some(scalar) = value.scalar() else {
                    continue;
                };
                let Some(key) = key_for_tag(&value.tag) else {
                    if seen_tags.insert(value.tag.clone()) {
                        summary.skipped_tags.push(value.tag.clone());
                    }
                    continue;
                };
                if key != value.tag && seen_tags.insert(value.tag.clone()) {
                    summary.renamed_tags.push((value.tag.clone(), key.clone()));
                }
                writer.batch.push(&key, event.step, timestamp, scalar);
                writer.pending += 1;
                writer.last_timestamp = writer.last_timestamp.max(timestamp);
            }
            if writer.pending >= POINTS_PER_BATCH {
                writer
                    .flush(engine, experiment_id, run, logdir, summary)
                    .await?;
                let read = records.offset();
                progress.inc(read - reported);
                reported = read;
            }
        }
        progress.inc(
            std::fs::metadata(path)
                .map(|m| m.len())
                .unwrap_or(0)
                .saturating_sub(reported),
        );
        summary.files += 1;
    }
    writer
        .flush(engine, experiment_id, run, logdir, summary)
        .await?;
    match writer.run_id {
        Some(run_id) => {
            engine
                .update_run(
                    run_id,
                    RunUpdate {
                        status: Some(RunStatus::Finished),
                        end_time: Some(writer.last_timestamp),
                        run_name: None,
                    },
                )
                .await?;
        }
        None => summary.without_scalars.push(run.name.clone()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::wal::SyncPolicy;
    use event::{Event, Summary, SummaryValue, TensorProto, TensorShapeProto};
    use prost::Message;

    fn write_events(path: &Path, events: &[Event]) {
        let mut file = Vec::new();
        for event in events {
            tfrecord::write_record(&mut file, &event.encode_to_vec()).unwrap();
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, file).unwrap();
    }

    fn scalar_event(step: i64, tag: &str, value: f32) -> Event {
        Event {
            wall_time: 1_700_000_000.0 + step as f64,
            step,
            file_version: None,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: tag.into(),
                    simple_value: Some(value),
                    ..SummaryValue::default()
                }],
            }),
        }
    }

    #[test]
    fn tags_become_valid_keys() {
        assert_eq!(key_for_tag("train/loss").as_deref(), Some("train/loss"));
        assert_eq!(key_for_tag("loss (avg)").as_deref(), Some("loss _avg_"));
        assert_eq!(key_for_tag("a//b/./c/../d").as_deref(), Some("a/b/c/__/d"));
        assert_eq!(key_for_tag("/").as_deref(), None);
    }

    #[tokio::test]
    async fn imports_runs_with_simple_and_tensor_scalars_once() {
        let dir = tempfile::tempdir().unwrap();
        let logdir = dir.path().join("logs");
        let header = Event {
            wall_time: 1_700_000_000.0,
            file_version: Some("brain.Event:2".into()),
            ..Event::default()
        };
        let tensor_event = |step: i64, value: f64| Event {
            wall_time: 1_700_000_000.5 + step as f64,
            step,
            file_version: None,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: "eval/acc".into(),
                    tensor: Some(TensorProto {
                        dtype: 2,
                        tensor_shape: Some(TensorShapeProto::default()),
                        double_val: vec![value],
                        ..TensorProto::default()
                    }),
                    ..SummaryValue::default()
                }],
            }),
        };
        let mut first = vec![header.clone()];
        first.extend((0..100).map(|step| scalar_event(step, "train/loss", step as f32 / 2.0)));
        first.extend((0..10).map(|step| tensor_event(step * 10, step as f64 / 10.0)));
        write_events(&logdir.join("run_a/events.out.tfevents.1.host"), &first);
        // A second file of the same run, cut inside its last record.
        let mut second = Vec::new();
        for event in [
            scalar_event(100, "train/loss", 50.0),
            scalar_event(101, "train/loss", 50.5),
        ] {
            tfrecord::write_record(&mut second, &event.encode_to_vec()).unwrap();
        }
        second.truncate(second.len() - 5);
        std::fs::write(logdir.join("run_a/events.out.tfevents.2.host"), second).unwrap();
        write_events(
            &logdir.join("sweep/run_b/events.out.tfevents.1.host"),
            &[header.clone(), scalar_event(0, "loss (avg)", 1.0)],
        );
        write_events(&logdir.join("empty/events.out.tfevents.1.host"), &[header]);

        let mut config = EngineConfig::new(dir.path().join("data"));
        config.wal_sync = SyncPolicy::Off;
        let engine = Engine::open(config).unwrap();
        let progress = ProgressBar::hidden();
        let summary = import_logdir(&engine, &logdir, "imported", &progress)
            .await
            .unwrap();
        let names: Vec<&str> = summary.runs.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, vec!["run_a", "sweep/run_b"]);
        assert_eq!(summary.points, 101 + 10 + 1);
        assert_eq!(summary.without_scalars, vec!["empty".to_string()]);
        assert_eq!(summary.truncated_files.len(), 1);
        assert_eq!(
            summary.renamed_tags,
            vec![("loss (avg)".to_string(), "loss _avg_".to_string())]
        );
        let run_a = summary.runs[0].1;
        let loss = engine.metric_series(run_a, "train/loss").await.unwrap();
        assert_eq!(loss.steps, (0..=100).collect::<Vec<_>>());
        assert_eq!(loss.values[7], 3.5);
        assert_eq!(loss.timestamps[7], 1_700_000_007_000);
        let acc = engine.metric_series(run_a, "eval/acc").await.unwrap();
        assert_eq!(acc.steps, (0..10).map(|s| s * 10).collect::<Vec<_>>());
        assert_eq!(acc.values[3], 0.3);
        assert_eq!(engine.run(run_a).unwrap().status, RunStatus::Finished);

        let again = import_logdir(&engine, &logdir, "imported", &progress)
            .await
            .unwrap();
        assert!(again.runs.is_empty());
        assert_eq!(again.skipped_existing, vec!["run_a", "sweep/run_b"]);
        engine.shutdown().unwrap();
    }
}
