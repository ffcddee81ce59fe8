//! The data model: experiments, runs, params, tags and metric points, with
//! the identifiers and validation rules that every layer shares.

pub mod float_json;
pub mod ids;
pub mod key_summary;
pub mod lineage;
pub mod metric_batch;
pub mod series;
pub mod string_map;
pub mod validation;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use ids::{ExperimentId, RunId};
pub use key_summary::KeySummary;
pub use metric_batch::{MetricBatch, MetricBatchBuilder};
pub use series::MetricSeries;
pub use string_map::StringMap;
pub use validation::{KeyKind, ValidationError};

/// The tag MLflow uses to hold a run's name.
pub const RUN_NAME_TAG: &str = "mlflow.runName";
/// The tag MLflow uses to hold the user who started a run.
pub const USER_TAG: &str = "mlflow.user";
/// The tag MLflow uses to link a nested run to its parent.
pub const PARENT_RUN_TAG: &str = "mlflow.parentRunId";
/// The name of the experiment that always exists, with id `"0"`.
pub const DEFAULT_EXPERIMENT_NAME: &str = "Default";

/// Whether an experiment or run is live or soft-deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LifecycleStage {
    /// Live.
    Active,
    /// Soft-deleted: kept, and restorable.
    Deleted,
}

impl LifecycleStage {
    /// The MLflow wire name (`active` or `deleted`).
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleStage::Active => "active",
            LifecycleStage::Deleted => "deleted",
        }
    }
}

impl fmt::Display for LifecycleStage {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The status of a run, as MLflow names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RunStatus {
    /// Still logging.
    Running,
    /// Created but not started.
    Scheduled,
    /// Ended normally.
    Finished,
    /// Ended with an error.
    Failed,
    /// Stopped by the user.
    Killed,
}

impl RunStatus {
    /// The MLflow wire name (`RUNNING`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Scheduled => "SCHEDULED",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }

    /// Whether the run has ended (its buffers are flushed and compacted).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Finished | RunStatus::Failed | RunStatus::Killed
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = ValidationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "RUNNING" => Ok(RunStatus::Running),
            "SCHEDULED" => Ok(RunStatus::Scheduled),
            "FINISHED" => Ok(RunStatus::Finished),
            "FAILED" => Ok(RunStatus::Failed),
            "KILLED" => Ok(RunStatus::Killed),
            other => Err(ValidationError::InvalidField {
                field: "status",
                reason: format!(
                    "'{}' is not one of RUNNING, SCHEDULED, FINISHED, FAILED, KILLED",
                    ids::truncate_for_message(other)
                ),
            }),
        }
    }
}

/// An experiment: a named group of runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// Its id.
    pub experiment_id: ExperimentId,
    /// Its unique name.
    pub name: String,
    /// Where artifacts of its runs would live.
    pub artifact_location: String,
    /// Live or soft-deleted.
    pub lifecycle_stage: LifecycleStage,
    /// Creation time, ms since the epoch.
    pub creation_time: i64,
    /// Time of the last change, ms since the epoch.
    pub last_update_time: i64,
    /// Experiment tags.
    pub tags: BTreeMap<String, String>,
}

/// A run: one training job, with its params, tags and metric series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Its id.
    pub run_id: RunId,
    /// The experiment it belongs to (never changes).
    pub experiment_id: ExperimentId,
    /// Its display name (kept equal to the `mlflow.runName` tag).
    pub run_name: String,
    /// Who started it.
    pub user_id: String,
    /// Its status.
    pub status: RunStatus,
    /// Start time, ms since the epoch.
    pub start_time: i64,
    /// End time, ms since the epoch, once it has ended.
    pub end_time: Option<i64>,
    /// Live or soft-deleted.
    pub lifecycle_stage: LifecycleStage,
    /// When it was soft-deleted, ms since the epoch (restoring an
    /// experiment restores the runs deleted with it).
    pub deleted_time: Option<i64>,
    /// Where its artifacts would live.
    pub artifact_uri: String,
    /// Params: immutable once logged.
    pub params: StringMap,
    /// Tags: mutable and deletable.
    pub tags: StringMap,
    /// Datasets the run used (MLflow's `log_inputs`), in logging order.
    pub inputs: Vec<DatasetInput>,
}

/// A dataset as MLflow describes it: identity (`name`, `digest`), where it
/// came from, and optional schema and profile documents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    /// Its name.
    pub name: String,
    /// A short fingerprint of its content.
    pub digest: String,
    /// The kind of source (`local`, `s3`, `hugging_face`, ...).
    pub source_type: String,
    /// The source, as a JSON document.
    pub source: String,
    /// Its schema, as a JSON document.
    pub schema: Option<String>,
    /// Its profile (row counts and the like), as a JSON document.
    pub profile: Option<String>,
}

/// A dataset used by a run, with the input's own tags (such as
/// `mlflow.data.context = training`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInput {
    /// The dataset.
    pub dataset: Dataset,
    /// Tags of this use of the dataset.
    pub tags: BTreeMap<String, String>,
}

/// The current time in milliseconds since the epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
impl Run {
    /// A running, active run named `name` with no params, tags or inputs
    /// (for tests).
    pub(crate) fn for_test(
        run_id: RunId,
        experiment_id: ExperimentId,
        name: &str,
        start_time: i64,
    ) -> Run {
        Run {
            run_id,
            experiment_id,
            run_name: name.to_string(),
            user_id: String::new(),
            status: RunStatus::Running,
            start_time,
            end_time: None,
            lifecycle_stage: LifecycleStage::Active,
            deleted_time: None,
            artifact_uri: String::new(),
            params: StringMap::default(),
            tags: StringMap::default(),
            inputs: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_their_wire_names() {
        for status in [
            RunStatus::Running,
            RunStatus::Scheduled,
            RunStatus::Finished,
            RunStatus::Failed,
            RunStatus::Killed,
        ] {
            assert_eq!(status.as_str().parse::<RunStatus>().unwrap(), status);
        }
        assert!("running".parse::<RunStatus>().is_err());
        assert!(RunStatus::Killed.is_terminal());
        assert!(!RunStatus::Scheduled.is_terminal());
    }
}
