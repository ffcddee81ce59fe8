//! The context store: experiments, runs, params and tags, held in memory and
//! rebuilt at start from the latest snapshot plus the WAL.
//!
//! Every change is validated against the current state, turned into a
//! [`CatalogMutation`], handed to a [`MutationLog`] (the WAL) and applied,
//! all under one write lock, so the log order is the apply order.

pub mod continuity;
pub mod lineage;
mod mutation;
pub mod receipts;
pub mod retention;
mod run_names;
mod run_table;
pub mod snapshot;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use thiserror::Error;

use crate::error_kind::{Classify, ErrorKind};
use crate::model::validation::{
    self, KeyKind, validate_experiment_name, validate_key, validate_param_value, validate_tag_value,
};
use crate::model::{
    DatasetInput, Experiment, ExperimentId, LifecycleStage, RUN_NAME_TAG, Run, RunId, RunStatus,
    USER_TAG, ValidationError,
};
use crate::wal::{Lsn, WalError};

pub use mutation::CatalogMutation;
pub use state::CatalogState;

/// Errors of the context store.
#[derive(Debug, Error)]
pub enum CatalogError {
    /// Bad input.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No experiment with this id or name.
    #[error("{0}")]
    ExperimentNotFound(String),
    /// No run with this id.
    #[error("Run with id={0} not found")]
    RunNotFound(RunId),
    /// No artifact with this id.
    #[error("no artifact with id {0}")]
    ArtifactNotFound(String),
    /// A lineage answer would be larger than allowed.
    #[error("{0}")]
    LineageTooLarge(String),
    /// No tag with this key.
    #[error("no tag '{key}' on {owner}")]
    TagNotFound {
        /// The tag key.
        key: String,
        /// The run or experiment.
        owner: String,
    },
    /// The experiment name is taken.
    #[error("Experiment(name={name}) already exists{state}")]
    ExperimentNameTaken {
        /// The name.
        name: String,
        /// " (deleted)" when the holder is soft-deleted.
        state: &'static str,
    },
    /// A param was logged again with another value.
    #[error(
        "Changing param values is not allowed. Param with key='{key}' was already logged with \
         value='{old}' for run ID='{run_id}'. Attempted logging new value '{new}'."
    )]
    ParamConflict {
        /// The run.
        run_id: RunId,
        /// The param key.
        key: String,
        /// The stored value.
        old: String,
        /// The refused value.
        new: String,
    },
    /// The operation needs an active entity (or a deleted one, to restore).
    #[error("{0}")]
    InvalidState(String),
    /// A run would hold more params, tags or dataset inputs than allowed.
    #[error("a run may have at most {limit} {what}; this request would make {count}")]
    TooManyPerRun {
        /// What is counted.
        what: &'static str,
        /// How many the run would have.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The WAL refused the mutation.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A snapshot could not be encoded.
    #[error("cannot encode catalog snapshot: {0}")]
    Encode(String),
    /// A snapshot is damaged.
    #[error("catalog snapshot {path} is corrupt: {reason}")]
    CorruptSnapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file operation failed.
    #[error("catalog {operation} failed for {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl CatalogError {
    pub(crate) fn io(operation: &'static str, path: &Path, source: std::io::Error) -> Self {
        CatalogError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl Classify for CatalogError {
    fn kind(&self) -> ErrorKind {
        match self {
            CatalogError::Invalid(_)
            | CatalogError::InvalidState(_)
            | CatalogError::LineageTooLarge(_)
            | CatalogError::TooManyPerRun { .. } => ErrorKind::InvalidParameter,
            CatalogError::ExperimentNotFound(_)
            | CatalogError::RunNotFound(_)
            | CatalogError::ArtifactNotFound(_)
            | CatalogError::TagNotFound { .. } => ErrorKind::NotFound,
            CatalogError::ExperimentNameTaken { .. } => ErrorKind::AlreadyExists,
            CatalogError::ParamConflict { .. } => ErrorKind::ParamConflict,
            CatalogError::Wal(error) => error.kind(),
            CatalogError::Encode(_)
            | CatalogError::CorruptSnapshot { .. }
            | CatalogError::Io { .. } => ErrorKind::Internal,
        }
    }
}

/// Where mutations are recorded before they are applied (the WAL).
pub trait MutationLog {
    /// What the caller waits on for durability.
    type Ticket;
    /// Records `mutation`; returns its LSN and a ticket for its durability.
    fn record(&self, mutation: &CatalogMutation) -> Result<(Lsn, Self::Ticket), CatalogError>;
}

/// A request to create an experiment.
#[derive(Clone, Debug, Default)]
pub struct NewExperiment {
    /// Its unique name.
    pub name: String,
    /// Where artifacts of its runs go; derived from the artifact root if absent.
    pub artifact_location: Option<String>,
    /// Its tags.
    pub tags: Vec<(String, String)>,
}

/// A request to create a run.
#[derive(Clone, Debug)]
pub struct NewRun {
    /// The experiment it belongs to.
    pub experiment_id: ExperimentId,
    /// Its name; a random one is chosen when absent (as MLflow does).
    pub run_name: Option<String>,
    /// Who started it.
    pub user_id: String,
    /// Start time, ms since the epoch.
    pub start_time: i64,
    /// Initial params.
    pub params: Vec<(String, String)>,
    /// Initial tags.
    pub tags: Vec<(String, String)>,
}

/// A new run checked against the limits, ready to be built in a commit.
pub(crate) struct PreparedRun {
    run_id: RunId,
    experiment_id: ExperimentId,
    run_name: String,
    user_id: String,
    start_time: i64,
    params: BTreeMap<String, String>,
    tags: BTreeMap<String, String>,
}

impl PreparedRun {
    /// Validates a request: params, tags, name and their limits.
    pub(crate) fn new(request: NewRun) -> Result<Self, CatalogError> {
        let params = validated_params(request.params)?;
        let mut tags: BTreeMap<String, String> =
            validated_tags(request.tags)?.into_iter().collect();
        let run_name = match (request.run_name, tags.get(RUN_NAME_TAG)) {
            (Some(name), Some(tagged)) if !name.is_empty() && name != *tagged => {
                return Err(CatalogError::InvalidState(format!(
                    "both a run name ('{name}') and an '{RUN_NAME_TAG}' tag ('{tagged}') were \
                     given, with different values"
                )));
            }
            (Some(name), _) if !name.is_empty() => name,
            (_, Some(tagged)) => tagged.clone(),
            _ => run_names::random_run_name(),
        };
        validate_tag_value(RUN_NAME_TAG, &run_name)?;
        tags.insert(RUN_NAME_TAG.to_string(), run_name.clone());
        if !request.user_id.is_empty() {
            tags.entry(USER_TAG.to_string())
                .or_insert_with(|| request.user_id.clone());
        }
        room_for("params", params.len(), 0, MAX_PARAMS_PER_RUN)?;
        room_for("tags", tags.len(), 0, MAX_TAGS_PER_RUN)?;
        let mut param_map = BTreeMap::new();
        let run_id = RunId::new_random();
        for (key, value) in params {
            if let Some(old) = param_map.insert(key.clone(), value.clone())
                && old != value
            {
                return Err(CatalogError::ParamConflict {
                    run_id,
                    key,
                    old,
                    new: value,
                });
            }
        }
        Ok(PreparedRun {
            run_id,
            experiment_id: request.experiment_id,
            run_name,
            user_id: request.user_id,
            start_time: request.start_time,
            params: param_map,
            tags,
        })
    }

    /// The run, in `state`'s experiment (which must be active).
    pub(crate) fn build(&self, state: &CatalogState) -> Result<Run, CatalogError> {
        let experiment = find_experiment(state, self.experiment_id)?;
        if experiment.lifecycle_stage != LifecycleStage::Active {
            return Err(CatalogError::InvalidState(format!(
                "The experiment {} must be in the 'active' state. Current state is deleted.",
                self.experiment_id
            )));
        }
        let run_id = self.run_id;
        Ok(Run {
            run_id,
            experiment_id: self.experiment_id,
            run_name: self.run_name.clone(),
            user_id: self.user_id.clone(),
            status: RunStatus::Running,
            start_time: self.start_time,
            end_time: None,
            lifecycle_stage: LifecycleStage::Active,
            deleted_time: None,
            artifact_uri: format!("{}/{run_id}/artifacts", experiment.artifact_location),
            params: self.params.iter().collect(),
            tags: self.tags.iter().collect(),
            inputs: Vec::new(),
        })
    }
}

/// A change of a run's status, end time or name.
#[derive(Clone, Debug, Default)]
pub struct RunUpdate {
    /// New status.
    pub status: Option<RunStatus>,
    /// New end time, ms since the epoch.
    pub end_time: Option<i64>,
    /// New name.
    pub run_name: Option<String>,
}

/// The context store.
pub struct Catalog {
    state: RwLock<CatalogState>,
    artifact_root: String,
}

impl Catalog {
    /// A catalog over `state`; new experiments' artifacts go under
    /// `artifact_root`.
    pub fn new(state: CatalogState, artifact_root: String) -> Self {
        Catalog {
            state: RwLock::new(state),
            artifact_root,
        }
    }

    /// Read access to the whole state.
    pub fn read(&self) -> RwLockReadGuard<'_, CatalogState> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, CatalogState> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where new experiments' artifacts go.
    pub fn artifact_root(&self) -> &str {
        &self.artifact_root
    }

    /// Replaces the state with what `rebuild` makes of it, under the write
    /// lock (no change can be made meanwhile); `None` keeps it.
    pub fn rebuild_with<E>(
        &self,
        rebuild: impl FnOnce(&CatalogState) -> Result<Option<CatalogState>, E>,
    ) -> Result<(), E> {
        let mut state = self.write();
        if let Some(rebuilt) = rebuild(&state)? {
            *state = rebuilt;
        }
        Ok(())
    }

    /// Re-applies a mutation read back from the WAL.
    pub fn replay(&self, lsn: Lsn, mutation: &CatalogMutation) {
        let mut state = self.write();
        if lsn <= state.applied_lsn {
            return;
        }
        // Before applying: a mutation may record its own LSN.
        state.applied_lsn = lsn;
        mutation.apply(&mut state);
    }

    /// Validates with `build` under the write lock, records the resulting
    /// mutation (if any) and applies it.
    fn commit<L, T, F>(&self, log: &L, build: F) -> Result<(T, Option<L::Ticket>), CatalogError>
    where
        L: MutationLog,
        F: FnOnce(&CatalogState) -> Result<(T, Option<CatalogMutation>), CatalogError>,
    {
        let mut state = self.write();
        let (result, mutation) = build(&state)?;
        let Some(mutation) = mutation else {
            return Ok((result, None));
        };
        let (lsn, ticket) = log.record(&mutation)?;
        state.applied_lsn = lsn;
        mutation.apply(&mut state);
        Ok((result, Some(ticket)))
    }

    /// Creates an experiment.
    pub fn create_experiment<L: MutationLog>(
        &self,
        log: &L,
        request: NewExperiment,
        now: i64,
    ) -> Result<(ExperimentId, Option<L::Ticket>), CatalogError> {
        validate_experiment_name(&request.name)?;
        let tags = validated_tags(request.tags)?;
        self.commit(log, |state| {
            ensure_name_free(state, &request.name)?;
            let experiment_id = state.next_experiment_id();
            let artifact_location = request
                .artifact_location
                .filter(|location| !location.is_empty())
                .unwrap_or_else(|| format!("{}/{experiment_id}", self.artifact_root));
            let experiment = Experiment {
                experiment_id,
                name: request.name,
                artifact_location,
                lifecycle_stage: LifecycleStage::Active,
                creation_time: now,
                last_update_time: now,
                tags: tags.into_iter().collect(),
            };
            Ok((
                experiment_id,
                Some(CatalogMutation::CreateExperiment(experiment)),
            ))
        })
    }

    /// Renames an active experiment.
    pub fn rename_experiment<L: MutationLog>(
        &self,
        log: &L,
        experiment_id: ExperimentId,
        name: String,
        now: i64,
    ) -> Result<((), Option<L::Ticket>), CatalogError> {
        validate_experiment_name(&name)?;
        self.commit(log, |state| {
            let experiment = find_experiment(state, experiment_id)?;
            if experiment.lifecycle_stage != LifecycleStage::Active {
                return Err(CatalogError::InvalidState(format!(
                    "cannot rename experiment {experiment_id}: it is deleted"
                )));
            }
            if experiment.name == name {
                return Ok(((), None));
            }
            ensure_name_free(state, &name)?;
            Ok((
                (),
                Some(CatalogMutation::RenameExperiment {
                    experiment_id,
                    name,
                    time: now,
                }),
            ))
        })
    }

    /// Soft-deletes (`Deleted`) or restores (`Active`) an experiment.
    pub fn set_experiment_lifecycle<L: MutationLog>(
        &self,
        log: &L,
        experiment_id: ExperimentId,
        stage: LifecycleStage,
        now: i64,
    ) -> Result<((), Option<L::Ticket>), CatalogError> {
        self.commit(log, |state| {
            let experiment = find_experiment(state, experiment_id)?;
            if stage == LifecycleStage::Deleted && experiment_id == ExperimentId::DEFAULT {
                return Err(CatalogError::InvalidState(
                    "cannot delete the Default experiment '0'".to_string(),
                ));
            }
            if experiment.lifecycle_stage == stage {
                return Err(CatalogError::InvalidState(format!(
                    "experiment {experiment_id} is already {}",
                    stage.as_str()
                )));
            }
            Ok((
                (),
                Some(CatalogMutation::SetExperimentLifecycle {
                    experiment_id,
                    stage,
                    time: now,
                }),
            ))
        })
    }

    /// Sets tags on an experiment.
    pub fn set_experiment_tags<L: MutationLog>(
        &self,
        log: &L,
        experiment_id: ExperimentId,
        tags: Vec<(String, String)>,
        now: i64,
    ) -> Result<((), Option<L::Ticket>), CatalogError> {
        let tags = validated_tags(tags)?;
        self.commit(log, |state| {
            let experiment = find_experiment(state, experiment_id)?;
            ensure_experiment_active(experiment)?;
            Ok((
                (),
                Some(CatalogMutation::SetExperimentTags {
                    experiment_id,
                    tags,
                    time: now,
                }),
            ))
        })
    }

    /// Deletes an experiment tag.
    pub fn delete_experiment_tag<L: MutationLog>(
        &self,
        log: &L,
        experiment_id: ExperimentId,
        key: String,
        now: i64,
    ) -> Result<((), Option<L::Ticket>), CatalogError> {
        self.commit(log, |state| {
            let experiment = find_experiment(state, experiment_id)?;
            ensure_experiment_active(experiment)?;
            if !experiment.tags.contains_key(&key) {
                return Err(CatalogError::TagNotFound {
                    key,
                    owner: format!("experiment {experiment_id}"),
                });
            }
            Ok((
                (),
                Some(CatalogMutation::DeleteExperimentTag {
                    experiment_id,
                    key,
                    time: now,
                }),
            ))
        })
    }

    /// Creates a run in an active experiment.
    pub fn create_run<L: MutationLog>(
        &self,
        log: &L,
        request: NewRun,
    ) -> Result<(Run, Option<L::Ticket>), CatalogError> {
        let prepared = PreparedRun::new(request)?;
        self.commit(log, |state| {
            let run = prepared.build(state)?;
            Ok((run.clone(), Some(CatalogMutation::CreateRun(Box::new(run)))))
        })
    }

    /// Changes a run's status, end time or name. Returns the updated run.
    pub fn update_run<L: MutationLog>(
        &self,
        log: &L,
        run_id: RunId,
        update: RunUpdate,
    ) -> Result<(Run, Option<L::Ticket>), CatalogError> {
        if let Some(name) = &update.run_name {
            validate_tag_value(RUN_NAME_TAG, name)?;
        }
        let run_name = update.run_name.filter(|name| !name.is_empty());
        self.commit(log, |state| {
            let mut run = find_run(state, run_id)?.clone();
            ensure_run_active(&run)?;
            mutation::apply_run_update(
                &mut run,
                update.status,
                update.end_time,
                run_name.as_deref(),
            );
            let mutation = CatalogMutation::UpdateRun {
                run_id,
                status: update.status,
                end_time: update.end_time,
                run_name,
            };
            Ok((run, Some(mutation)))
        })
    }

    /// Soft-deletes (`Deleted`) or restores (`Active`) a run.
    pub fn set_run_lifecycle<L: MutationLog>(
        &self,
        log: &L,
        run_id: RunId,
        stage: LifecycleStage,
        now: i64,
    ) -> Result<((), Option<L::Ticket>), CatalogError> {
        self.commit(log, |state| {
            let run = find_run(state, run_id)?;
            if run.lifecycle_stage == stage {
                return Ok(((), None));
            }
            Ok((
                (),
                Some(CatalogMutation::SetRunLifecycle {
                    run_id,
                    stage,
                    time: now,
                }),
            ))
        })
    }

    /// Logs params. The same value again is accepted; a different value for
    /// a logged key refuses the whole request.
    pub fn log_params<L: MutationLog>(
        &self,
        log: &L,
        run_id: RunId,
        params: Vec<(String, String)>,
    ) -> Result<((), Option<L::Ticket>), CatalogError> {
        let params = validated_params(params)?;
        self.commit(log, |state| {
            let run = find_run(state, run_id)?;
            ensure_run_active(run)?;
            let mut fresh: HashMap<&str, &str> = HashMap::new();
            let mut new_params = Vec::new();
            for (key, value) in &params {
                let existing = run
                    .params
                    .get(key)
                    .or_else(|| fresh.get(key.as_str()).copied());
                match existing {
                    Some(old) if old != value => {
                        return Err(CatalogError::ParamConflict {
                            run_id,
                            key: key.clone(),
                            old: old.to_string(),
                            new: value.clone(),
                        });
                    }
                    Some(_) => {}
                    None => {
                        fresh.insert(key, value);
                        new_params.push((key.clone(), value.clone()));
                    }
                }
            }
            if new_params.is_empty() {
                return Ok(((), None));
            }
            room_for(
                "params",
                new_params.len(),
                run.params.len(),
                MAX_PARAMS_PER_RUN,
            )?;
            Ok((
                (),
                Some(CatalogMutation::LogParams {
                    run_id,
                    params: new_params,
                }),
            ))
        })
    }

    /// Sets run tags (`mlflow.runName` renames the run).
    pub fn set_run_tags<L: MutationLog>(
        &self,
        log: &L,
        run_id: RunId,
        tags: Vec<(String, String)>,
    ) -> Result<((), Option<L::Ticket>), CatalogError> {
        let tags = validated_tags(tags)?;
        self.commit(log, |state| {
            let run = find_run(state, run_id)?;
            ensure_run_active(run)?;
            if tags.is_empty() {
                return Ok(((), None));
            }
            let new_keys: std::collections::HashSet<&str> = tags
                .iter()
                .map(|(key, _)| key.as_str())
                .filter(|key| !run.tags.contains_key(key))
                .collect();
            room_for("tags", new_keys.len(), run.tags.len(), MAX_TAGS_PER_RUN)?;
            Ok(((), Some(CatalogMutation::SetRunTags { run_id, tags })))
        })
    }

    /// Records datasets a run used. A dataset already recorded for the run
    /// (same name and digest) is kept as it was, as MLflow does.
    pub fn log_inputs<L: MutationLog>(
        &self,
        log: &L,
        run_id: RunId,
        inputs: Vec<DatasetInput>,
        time: i64,
    ) -> Result<((), Option<L::Ticket>), CatalogError> {
        for input in &inputs {
            validation::validate_dataset_input(input)?;
        }
        self.commit(log, |state| {
            let run = find_run(state, run_id)?;
            ensure_run_active(run)?;
            let mut fresh: Vec<DatasetInput> = Vec::new();
            for input in inputs {
                let known = |existing: &DatasetInput| {
                    existing.dataset.name == input.dataset.name
                        && existing.dataset.digest == input.dataset.digest
                };
                if !run.inputs.iter().any(known) && !fresh.iter().any(known) {
                    fresh.push(input);
                }
            }
            if fresh.is_empty() {
                return Ok(((), None));
            }
            room_for(
                "dataset inputs",
                fresh.len(),
                run.inputs.len(),
                MAX_INPUTS_PER_RUN,
            )?;
            Ok((
                (),
                Some(CatalogMutation::LogInputsAt {
                    run_id,
                    inputs: fresh,
                    time,
                }),
            ))
        })
    }

    /// Deletes a run tag; an unknown key is `NotFound`.
    pub fn delete_run_tag<L: MutationLog>(
        &self,
        log: &L,
        run_id: RunId,
        key: String,
    ) -> Result<((), Option<L::Ticket>), CatalogError> {
        self.commit(log, |state| {
            let run = find_run(state, run_id)?;
            ensure_run_active(run)?;
            if !run.tags.contains_key(&key) {
                return Err(CatalogError::TagNotFound {
                    key,
                    owner: format!("run {run_id}"),
                });
            }
            Ok(((), Some(CatalogMutation::DeleteRunTag { run_id, key })))
        })
    }

    /// A copy of a run, or `RunNotFound`.
    pub fn run(&self, run_id: RunId) -> Result<Run, CatalogError> {
        self.read()
            .run(run_id)
            .cloned()
            .ok_or(CatalogError::RunNotFound(run_id))
    }

    /// A copy of an experiment, or `ExperimentNotFound`.
    pub fn experiment(&self, experiment_id: ExperimentId) -> Result<Experiment, CatalogError> {
        self.read()
            .experiment(experiment_id)
            .cloned()
            .ok_or_else(|| {
                CatalogError::ExperimentNotFound(format!(
                    "No Experiment with id={experiment_id} exists"
                ))
            })
    }

    /// A copy of an experiment found by name, or `ExperimentNotFound`.
    pub fn experiment_by_name(&self, name: &str) -> Result<Experiment, CatalogError> {
        self.read()
            .experiment_by_name(name)
            .cloned()
            .ok_or_else(|| {
                CatalogError::ExperimentNotFound(format!(
                    "Could not find experiment with name '{}'",
                    crate::model::ids::truncate_for_message(name)
                ))
            })
    }
}

fn find_experiment(state: &CatalogState, id: ExperimentId) -> Result<&Experiment, CatalogError> {
    state.experiment(id).ok_or_else(|| {
        CatalogError::ExperimentNotFound(format!("No Experiment with id={id} exists"))
    })
}

fn find_run(state: &CatalogState, id: RunId) -> Result<&Run, CatalogError> {
    state.run(id).ok_or(CatalogError::RunNotFound(id))
}

fn ensure_name_free(state: &CatalogState, name: &str) -> Result<(), CatalogError> {
    match state.experiment_by_name(name) {
        Some(existing) => Err(CatalogError::ExperimentNameTaken {
            name: name.to_string(),
            state: if existing.lifecycle_stage == LifecycleStage::Deleted {
                " (in deleted state: restore it or choose another name)"
            } else {
                ""
            },
        }),
        None => Ok(()),
    }
}

fn ensure_experiment_active(experiment: &Experiment) -> Result<(), CatalogError> {
    if experiment.lifecycle_stage != LifecycleStage::Active {
        return Err(CatalogError::InvalidState(format!(
            "The experiment {} must be in the 'active' state. Current state is deleted.",
            experiment.experiment_id
        )));
    }
    Ok(())
}

/// Runs take writes only while active (MLflow's rule).
pub fn ensure_run_active(run: &Run) -> Result<(), CatalogError> {
    if run.lifecycle_stage != LifecycleStage::Active {
        return Err(CatalogError::InvalidState(format!(
            "The run {} must be in the 'active' state. Current state is deleted.",
            run.run_id
        )));
    }
    Ok(())
}

/// Params one run may have.
pub const MAX_PARAMS_PER_RUN: usize = 10_000;
/// Tags one run may have.
pub const MAX_TAGS_PER_RUN: usize = 10_000;
/// Dataset inputs one run may have.
pub const MAX_INPUTS_PER_RUN: usize = 10_000;

/// Refuses adding `adding` to `existing` past `limit`.
fn room_for(
    what: &'static str,
    adding: usize,
    existing: usize,
    limit: usize,
) -> Result<(), CatalogError> {
    let count = existing + adding;
    if count > limit {
        return Err(CatalogError::TooManyPerRun { what, count, limit });
    }
    Ok(())
}

fn validated_params(params: Vec<(String, String)>) -> Result<Vec<(String, String)>, CatalogError> {
    for (key, value) in &params {
        validate_key(KeyKind::Param, key)?;
        validate_param_value(key, value)?;
    }
    Ok(params)
}

fn validated_tags(tags: Vec<(String, String)>) -> Result<Vec<(String, String)>, CatalogError> {
    for (key, value) in &tags {
        validation::validate_key(KeyKind::Tag, key)?;
        validate_tag_value(key, value)?;
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A log that keeps mutations in memory.
    #[derive(Default)]
    pub(super) struct MemoryLog {
        records: RefCell<Vec<(Lsn, CatalogMutation)>>,
    }

    impl MutationLog for MemoryLog {
        type Ticket = Lsn;
        fn record(&self, mutation: &CatalogMutation) -> Result<(Lsn, Lsn), CatalogError> {
            let mut records = self.records.borrow_mut();
            let lsn = records.len() as Lsn + 1;
            records.push((lsn, mutation.clone()));
            Ok((lsn, lsn))
        }
    }

    pub(super) fn catalog() -> Catalog {
        Catalog::new(
            CatalogState::new("file:///art", 0),
            "file:///art".to_string(),
        )
    }

    pub(super) fn new_run(experiment_id: ExperimentId) -> NewRun {
        NewRun {
            experiment_id,
            run_name: None,
            user_id: "alice".to_string(),
            start_time: 5,
            params: vec![("lr".to_string(), "0.1".to_string())],
            tags: vec![],
        }
    }

    #[test]
    fn experiment_names_are_unique_and_default_exists() {
        let log = MemoryLog::default();
        let catalog = catalog();
        assert_eq!(
            catalog.experiment_by_name("Default").unwrap().experiment_id,
            ExperimentId::DEFAULT
        );
        let (id, _) = catalog
            .create_experiment(
                &log,
                NewExperiment {
                    name: "mnist".into(),
                    ..Default::default()
                },
                1,
            )
            .unwrap();
        assert_eq!(id, ExperimentId::new(1));
        let duplicate = catalog
            .create_experiment(
                &log,
                NewExperiment {
                    name: "mnist".into(),
                    ..Default::default()
                },
                2,
            )
            .unwrap_err();
        assert_eq!(duplicate.kind(), ErrorKind::AlreadyExists);
        assert_eq!(log.records.borrow().len(), 1);
        catalog
            .rename_experiment(&log, id, "mnist-v2".into(), 3)
            .unwrap();
        assert!(catalog.experiment_by_name("mnist").is_err());
        assert_eq!(
            catalog
                .experiment_by_name("mnist-v2")
                .unwrap()
                .experiment_id,
            id
        );
        catalog
            .set_experiment_lifecycle(&log, id, LifecycleStage::Deleted, 4)
            .unwrap();
        assert!(catalog.create_run(&log, new_run(id)).is_err());
        assert!(
            catalog
                .set_experiment_lifecycle(&log, ExperimentId::DEFAULT, LifecycleStage::Deleted, 4)
                .is_err()
        );
    }

    #[test]
    fn params_are_immutable_and_conflicts_change_nothing() {
        let log = MemoryLog::default();
        let catalog = catalog();
        let (run, _) = catalog
            .create_run(&log, new_run(ExperimentId::DEFAULT))
            .unwrap();
        assert!(!run.run_name.is_empty());
        assert_eq!(run.tags.get(RUN_NAME_TAG), Some(run.run_name.as_str()));
        let same = catalog
            .log_params(&log, run.run_id, vec![("lr".into(), "0.1".into())])
            .unwrap();
        assert!(same.1.is_none(), "same value again writes nothing");
        let conflict = catalog
            .log_params(
                &log,
                run.run_id,
                vec![("batch".into(), "32".into()), ("lr".into(), "0.2".into())],
            )
            .unwrap_err();
        assert_eq!(conflict.kind(), ErrorKind::ParamConflict);
        let stored = catalog.run(run.run_id).unwrap();
        assert_eq!(stored.params.len(), 1, "the batch was refused whole");
        assert_eq!(&stored.params["lr"], "0.1");
    }

    #[test]
    fn tags_are_mutable_and_run_name_follows_its_tag() {
        let log = MemoryLog::default();
        let catalog = catalog();
        let (run, _) = catalog
            .create_run(&log, new_run(ExperimentId::DEFAULT))
            .unwrap();
        catalog
            .set_run_tags(
                &log,
                run.run_id,
                vec![(RUN_NAME_TAG.into(), "renamed".into())],
            )
            .unwrap();
        assert_eq!(catalog.run(run.run_id).unwrap().run_name, "renamed");
        catalog
            .set_run_tags(&log, run.run_id, vec![("team".into(), "a".into())])
            .unwrap();
        catalog
            .set_run_tags(&log, run.run_id, vec![("team".into(), "b".into())])
            .unwrap();
        assert_eq!(&catalog.run(run.run_id).unwrap().tags["team"], "b");
        catalog
            .delete_run_tag(&log, run.run_id, "team".into())
            .unwrap();
        assert_eq!(
            catalog
                .delete_run_tag(&log, run.run_id, "team".into())
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
        let (updated, _) = catalog
            .update_run(
                &log,
                run.run_id,
                RunUpdate {
                    status: Some(RunStatus::Finished),
                    end_time: Some(9),
                    run_name: Some("final".into()),
                },
            )
            .unwrap();
        assert_eq!(updated.status, RunStatus::Finished);
        assert_eq!(&updated.tags[RUN_NAME_TAG], "final");
        assert_eq!(catalog.run(run.run_id).unwrap(), updated);
    }

    #[test]
    fn replaying_the_log_rebuilds_the_same_state() {
        let log = MemoryLog::default();
        let catalog = catalog();
        let (experiment, _) = catalog
            .create_experiment(
                &log,
                NewExperiment {
                    name: "e".into(),
                    tags: vec![("k".into(), "v".into())],
                    ..Default::default()
                },
                1,
            )
            .unwrap();
        let (run, _) = catalog.create_run(&log, new_run(experiment)).unwrap();
        catalog
            .set_run_lifecycle(&log, run.run_id, LifecycleStage::Deleted, 5)
            .unwrap();
        assert!(
            catalog
                .log_params(&log, run.run_id, vec![("x".into(), "1".into())])
                .is_err()
        );
        catalog
            .set_run_lifecycle(&log, run.run_id, LifecycleStage::Active, 6)
            .unwrap();

        let rebuilt = catalog_from(&log);
        assert_eq!(
            rebuilt.run(run.run_id).unwrap(),
            catalog.run(run.run_id).unwrap()
        );
        assert_eq!(
            rebuilt.experiment(experiment).unwrap(),
            catalog.experiment(experiment).unwrap()
        );
        assert_eq!(rebuilt.read().applied_lsn, catalog.read().applied_lsn);
    }

    fn catalog_from(log: &MemoryLog) -> Catalog {
        let rebuilt = catalog();
        for (lsn, mutation) in log.records.borrow().iter() {
            rebuilt.replay(*lsn, mutation);
        }
        rebuilt
    }

    #[test]
    fn invalid_input_is_refused_before_logging() {
        let log = MemoryLog::default();
        let catalog = catalog();
        let mut request = new_run(ExperimentId::DEFAULT);
        request.params.push(("bad/../key".into(), "v".into()));
        assert_eq!(
            catalog.create_run(&log, request).unwrap_err().kind(),
            ErrorKind::InvalidParameter
        );
        let mut request = new_run(ExperimentId::new(77));
        request.params.clear();
        assert_eq!(
            catalog.create_run(&log, request).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert!(log.records.borrow().is_empty());
    }
}
