//! Catalog mutations: the deterministic changes the WAL records and replay
//! re-applies. A mutation is built only after validation succeeded against
//! the current state, so applying it cannot fail.

use serde::{Deserialize, Serialize};

use super::state::CatalogState;
use crate::model::lineage::{Artifact, LineageEvent};
use crate::model::{
    DatasetInput, Experiment, ExperimentId, LifecycleStage, RUN_NAME_TAG, Run, RunId, RunStatus,
};

/// One change to experiments, runs, params or tags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CatalogMutation {
    /// A new experiment.
    CreateExperiment(Experiment),
    /// A new name for an experiment.
    RenameExperiment {
        /// The experiment.
        experiment_id: ExperimentId,
        /// Its new name.
        name: String,
        /// When, ms since the epoch.
        time: i64,
    },
    /// Soft-delete or restore an experiment.
    SetExperimentLifecycle {
        /// The experiment.
        experiment_id: ExperimentId,
        /// The new stage.
        stage: LifecycleStage,
        /// When, ms since the epoch.
        time: i64,
    },
    /// Set experiment tags.
    SetExperimentTags {
        /// The experiment.
        experiment_id: ExperimentId,
        /// Tags to set.
        tags: Vec<(String, String)>,
        /// When, ms since the epoch.
        time: i64,
    },
    /// Delete an experiment tag.
    DeleteExperimentTag {
        /// The experiment.
        experiment_id: ExperimentId,
        /// The tag key.
        key: String,
        /// When, ms since the epoch.
        time: i64,
    },
    /// A new run.
    CreateRun(Box<Run>),
    /// Change a run's status, end time or name.
    UpdateRun {
        /// The run.
        run_id: RunId,
        /// New status.
        status: Option<RunStatus>,
        /// New end time.
        end_time: Option<i64>,
        /// New name.
        run_name: Option<String>,
    },
    /// Soft-delete or restore a run.
    SetRunLifecycle {
        /// The run.
        run_id: RunId,
        /// The new stage.
        stage: LifecycleStage,
        /// When, ms since the epoch.
        time: i64,
    },
    /// Log params (only keys not yet present).
    LogParams {
        /// The run.
        run_id: RunId,
        /// New params.
        params: Vec<(String, String)>,
    },
    /// Set run tags.
    SetRunTags {
        /// The run.
        run_id: RunId,
        /// Tags to set.
        tags: Vec<(String, String)>,
    },
    /// Record datasets a run used (only ones not yet recorded).
    LogInputs {
        /// The run.
        run_id: RunId,
        /// The new inputs.
        inputs: Vec<DatasetInput>,
    },
    /// Delete a run tag.
    DeleteRunTag {
        /// The run.
        run_id: RunId,
        /// The tag key.
        key: String,
    },
    /// New artifacts and lineage events (artifacts first: events may name
    /// them).
    RecordLineage {
        /// Artifacts created, with their ids.
        artifacts: Vec<Artifact>,
        /// Events recorded.
        events: Vec<LineageEvent>,
    },
    /// MLflow dataset inputs of a run, which also become `dataset`
    /// artifacts with INPUT events at `time` (`LogInputs`, written before
    /// lineage existed, uses the run's start time).
    LogInputsAt {
        /// The run.
        run_id: RunId,
        /// The new inputs.
        inputs: Vec<DatasetInput>,
        /// When, ms since the epoch.
        time: i64,
    },
    /// Rewind a run to a step: its points logged before this record with a
    /// greater step are hidden from reads (appended variant: older WALs
    /// still decode).
    RewindRun {
        /// The run.
        run_id: RunId,
        /// The step rewound to.
        step: i64,
        /// When, ms since the epoch.
        time: i64,
    },
    /// A run forked from another: it reads the parent's points logged
    /// before this record with a step up to `step` (appended variant).
    ForkRun {
        /// The new run, with the params and tags it took from its parent.
        run: Box<Run>,
        /// The run it was forked from.
        parent: RunId,
        /// The parent's step it starts after.
        step: i64,
        /// When, ms since the epoch.
        time: i64,
        /// The checkpoint artifact, when it is new.
        artifacts: Vec<Artifact>,
        /// The checkpoint's events: the parent's OUTPUT (when new) and the
        /// fork's INPUT.
        events: Vec<LineageEvent>,
    },
    /// Runs and experiments removed for good by `stepstore gc` (appended
    /// variant).
    Purge(super::retention::Purge),
}

impl CatalogMutation {
    /// Applies the mutation. Entities it names are expected to exist (the
    /// mutation was validated); a missing one is logged and skipped so that
    /// replay never stops on it.
    pub fn apply(&self, state: &mut CatalogState) {
        match self {
            CatalogMutation::CreateExperiment(experiment) => {
                state.insert_experiment(experiment.clone());
            }
            CatalogMutation::RenameExperiment {
                experiment_id,
                name,
                time,
            } => state.rename_experiment(*experiment_id, name, *time),
            CatalogMutation::SetExperimentLifecycle {
                experiment_id,
                stage,
                time,
            } => {
                let Some(experiment) = experiment_mut(state, *experiment_id) else {
                    return;
                };
                let deleted_at = experiment.last_update_time;
                experiment.lifecycle_stage = *stage;
                experiment.last_update_time = *time;
                // As MLflow does: deleting an experiment deletes its live runs;
                // restoring it restores the runs deleted with it (at or after
                // the experiment's deletion), not ones deleted before.
                state.for_each_run_of(*experiment_id, |run| match stage {
                    LifecycleStage::Deleted if run.lifecycle_stage == LifecycleStage::Active => {
                        run.lifecycle_stage = LifecycleStage::Deleted;
                        run.deleted_time = Some(*time);
                    }
                    LifecycleStage::Active
                        if run.lifecycle_stage == LifecycleStage::Deleted
                            && run.deleted_time.is_none_or(|deleted| deleted >= deleted_at) =>
                    {
                        run.lifecycle_stage = LifecycleStage::Active;
                        run.deleted_time = None;
                    }
                    _ => {}
                });
            }
            CatalogMutation::SetExperimentTags {
                experiment_id,
                tags,
                time,
            } => {
                if let Some(experiment) = experiment_mut(state, *experiment_id) {
                    for (key, value) in tags {
                        experiment.tags.insert(key.clone(), value.clone());
                    }
                    experiment.last_update_time = *time;
                }
            }
            CatalogMutation::DeleteExperimentTag {
                experiment_id,
                key,
                time,
            } => {
                if let Some(experiment) = experiment_mut(state, *experiment_id) {
                    experiment.tags.remove(key);
                    experiment.last_update_time = *time;
                }
            }
            CatalogMutation::CreateRun(run) => state.insert_run(run.as_ref().clone()),
            CatalogMutation::UpdateRun {
                run_id,
                status,
                end_time,
                run_name,
            } => {
                if let Some(run) = run_mut(state, *run_id) {
                    apply_run_update(run, *status, *end_time, run_name.as_deref());
                }
            }
            CatalogMutation::SetRunLifecycle {
                run_id,
                stage,
                time,
            } => {
                if let Some(run) = run_mut(state, *run_id) {
                    run.lifecycle_stage = *stage;
                    run.deleted_time = (*stage == LifecycleStage::Deleted).then_some(*time);
                }
            }
            CatalogMutation::LogParams { run_id, params } => {
                if let Some(run) = run_mut(state, *run_id) {
                    // A logged param keeps its first value.
                    let mut fresh: Vec<(&str, &str)> = Vec::new();
                    for (key, value) in params {
                        if !run.params.contains_key(key)
                            && !fresh.iter().any(|(known, _)| known == key)
                        {
                            fresh.push((key, value));
                        }
                    }
                    run.params.extend(fresh);
                }
            }
            CatalogMutation::SetRunTags { run_id, tags } => {
                if let Some(run) = run_mut(state, *run_id) {
                    for (key, value) in tags {
                        if key == RUN_NAME_TAG {
                            run.run_name = value.clone();
                        }
                    }
                    run.tags
                        .extend(tags.iter().map(|(key, value)| (key, value)));
                }
            }
            CatalogMutation::LogInputs { run_id, inputs } => {
                if let Some(run) = run_mut(state, *run_id) {
                    run.inputs.extend(inputs.iter().cloned());
                    let start_time = run.start_time;
                    state
                        .lineage
                        .record_dataset_inputs(*run_id, inputs, start_time);
                }
            }
            CatalogMutation::LogInputsAt {
                run_id,
                inputs,
                time,
            } => {
                if let Some(run) = run_mut(state, *run_id) {
                    run.inputs.extend(inputs.iter().cloned());
                    state.lineage.record_dataset_inputs(*run_id, inputs, *time);
                }
            }
            CatalogMutation::RecordLineage { artifacts, events } => {
                for artifact in artifacts {
                    state.lineage.insert_artifact(artifact.clone());
                }
                for event in events {
                    state.lineage.push_event(event.clone());
                }
            }
            CatalogMutation::DeleteRunTag { run_id, key } => {
                if let Some(run) = run_mut(state, *run_id) {
                    run.tags.remove(key);
                }
            }
            CatalogMutation::RewindRun { run_id, step, time } => {
                // The record's LSN: set before a mutation is applied.
                let lsn = state.applied_lsn;
                if run_mut(state, *run_id).is_some() {
                    state.continuity.push_rewind(
                        *run_id,
                        super::continuity::Rewind {
                            lsn,
                            step: *step,
                            time: *time,
                        },
                    );
                }
            }
            CatalogMutation::ForkRun {
                run,
                parent,
                step,
                time,
                artifacts,
                events,
            } => {
                // The record's LSN: set before a mutation is applied.
                let lsn = state.applied_lsn;
                let run_id = run.run_id;
                state.insert_run(run.as_ref().clone());
                for artifact in artifacts {
                    state.lineage.insert_artifact(artifact.clone());
                }
                for event in events {
                    state.lineage.push_event(event.clone());
                }
                state.continuity.record_fork(
                    run_id,
                    super::continuity::Fork {
                        parent: *parent,
                        step: *step,
                        lsn,
                        time: *time,
                    },
                );
            }
            CatalogMutation::Purge(purge) => state.remove(&purge.runs, &purge.experiments),
        }
    }
}

/// Applies a status, end time or name change to a run (the name also goes
/// to the `mlflow.runName` tag).
pub(crate) fn apply_run_update(
    run: &mut Run,
    status: Option<RunStatus>,
    end_time: Option<i64>,
    run_name: Option<&str>,
) {
    if let Some(status) = status {
        run.status = status;
    }
    if let Some(end_time) = end_time {
        run.end_time = Some(end_time);
    }
    if let Some(name) = run_name {
        run.run_name = name.to_string();
        run.tags.insert(RUN_NAME_TAG, name);
    }
}

fn experiment_mut(state: &mut CatalogState, id: ExperimentId) -> Option<&mut Experiment> {
    let found = state.experiment_mut(id);
    if found.is_none() {
        tracing::warn!(experiment_id = %id, "catalog mutation names an unknown experiment; skipped");
    }
    found
}

fn run_mut(state: &mut CatalogState, id: RunId) -> Option<&mut Run> {
    let found = state.run_mut(id);
    if found.is_none() {
        tracing::warn!(run_id = %id, "catalog mutation names an unknown run; skipped");
    }
    found
}
