//! Run continuity in the catalog: the rewinds of each run and the forks
//! (the history a read shows is derived from them, see
//! [`crate::ingest::rewinds`] and [`crate::ingest::forks`]). Snapshotted
//! as sections of their own ([`super::snapshot`]).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{
    Catalog, CatalogError, CatalogMutation, MutationLog, NewRun, PreparedRun, ensure_run_active,
    find_run, room_for,
};
use crate::model::lineage::{Artifact, EventKind, LineageEvent};
use crate::model::{ExperimentId, RUN_NAME_TAG, Run, RunId};
use crate::wal::Lsn;

/// The tag that rewinds a run when set through the MLflow API (`set-tag`,
/// `log-batch`): its value is the step.
pub const REWIND_TAG: &str = "stepstore.rewind_to_step";

/// With [`FORK_STEP_TAG`], the tags that fork a new run from another when
/// given to MLflow `runs/create`: the parent's run id.
pub const FORK_RUN_TAG: &str = "stepstore.fork_from_run_id";

/// The parent's step a run created with [`FORK_RUN_TAG`] starts after.
pub const FORK_STEP_TAG: &str = "stepstore.fork_from_step";

/// Runs forked from one run: each keeps the parent's files before it from
/// being merged with those after it.
pub const MAX_FORKS_PER_RUN: usize = 1_000;

/// Forks of forks in one line of descent: a read of a run asks each
/// ancestor for its points.
pub const MAX_FORK_DEPTH: usize = 100;

/// The artifact type of the checkpoint a fork starts from.
pub const CHECKPOINT_TYPE: &str = "checkpoint";

/// How a run was forked from another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    /// The run it was forked from.
    pub parent: RunId,
    /// The parent's step it starts after: it inherits the parent's points
    /// up to it.
    pub step: i64,
    /// The WAL record of the fork: it inherits the points the parent
    /// logged before it.
    pub lsn: Lsn,
    /// When, ms since the epoch.
    pub time: i64,
}

/// Rewinds one run may have: each one keeps the files before it from
/// being merged with those after it until `stepstore gc`.
pub const MAX_REWINDS_PER_RUN: usize = 1_000;

/// One rewind of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewind {
    /// The WAL record of the rewind: points logged before it are the ones
    /// it may hide.
    pub lsn: Lsn,
    /// The step rewound to: earlier points past it are hidden.
    pub step: i64,
    /// When, ms since the epoch.
    pub time: i64,
}

/// The rewinds of every run that has some, and the forks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContinuityState {
    rewinds: HashMap<RunId, Vec<Rewind>>,
    /// Per forked run, its fork (a snapshot section of its own: older
    /// snapshots have none).
    #[serde(skip)]
    forks: ForkTable,
}

/// The forks, by forked run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ForkTable {
    forks: HashMap<RunId, Fork>,
}

impl ContinuityState {
    /// The rewinds of `run_id`, oldest first (empty when none).
    pub fn rewinds(&self, run_id: RunId) -> &[Rewind] {
        self.rewinds.get(&run_id).map_or(&[], Vec::as_slice)
    }

    /// Every run's rewinds.
    pub fn all_rewinds(&self) -> impl Iterator<Item = (RunId, &[Rewind])> {
        self.rewinds
            .iter()
            .map(|(run_id, rewinds)| (*run_id, rewinds.as_slice()))
    }

    /// How `run_id` was forked, if it was.
    pub fn fork_of(&self, run_id: RunId) -> Option<&Fork> {
        self.forks.forks.get(&run_id)
    }

    /// Every forked run and its fork.
    pub fn all_forks(&self) -> impl Iterator<Item = (RunId, &Fork)> {
        self.forks
            .forks
            .iter()
            .map(|(run_id, fork)| (*run_id, fork))
    }

    /// The LSNs of the forks made from `parent`, in order.
    pub fn fork_points_of(&self, parent: RunId) -> Vec<Lsn> {
        let mut points: Vec<Lsn> = self
            .forks
            .forks
            .values()
            .filter(|fork| fork.parent == parent)
            .map(|fork| fork.lsn)
            .collect();
        points.sort_unstable();
        points
    }

    /// The forks from `run_id` up its line of descent: its own fork, its
    /// parent's, and so on.
    pub fn line_of_descent(&self, run_id: RunId) -> Vec<Fork> {
        let mut line = Vec::new();
        let mut current = run_id;
        while let Some(fork) = self.fork_of(current) {
            if line.len() > MAX_FORK_DEPTH {
                break;
            }
            line.push(*fork);
            current = fork.parent;
        }
        line
    }

    /// The forks, for the snapshot.
    pub(crate) fn fork_table(&self) -> &ForkTable {
        &self.forks
    }

    /// Sets the forks read from a snapshot.
    pub(crate) fn set_fork_table(&mut self, forks: ForkTable) {
        self.forks = forks;
    }

    /// Drops the rewinds and forks of `runs`.
    pub(crate) fn remove_runs(&mut self, runs: &std::collections::HashSet<RunId>) {
        self.rewinds.retain(|run_id, _| !runs.contains(run_id));
        self.forks.forks.retain(|run_id, _| !runs.contains(run_id));
    }

    /// Records a fork (a record replayed twice is recorded once).
    pub(crate) fn record_fork(&mut self, run_id: RunId, fork: Fork) {
        self.forks.forks.entry(run_id).or_insert(fork);
    }

    /// Records a rewind (a record replayed twice is recorded once).
    pub(crate) fn push_rewind(&mut self, run_id: RunId, rewind: Rewind) {
        let rewinds = self.rewinds.entry(run_id).or_default();
        if rewinds.last().is_none_or(|last| last.lsn < rewind.lsn) {
            rewinds.push(rewind);
        }
    }

    /// A copy holding the runs `keep` accepts.
    pub(crate) fn restricted_to(&self, keep: impl Fn(RunId) -> bool) -> Self {
        ContinuityState {
            rewinds: self
                .rewinds
                .iter()
                .filter(|(run_id, _)| keep(**run_id))
                .map(|(run_id, rewinds)| (*run_id, rewinds.clone()))
                .collect(),
            forks: ForkTable {
                forks: self
                    .forks
                    .forks
                    .iter()
                    .filter(|(run_id, _)| keep(**run_id))
                    .map(|(run_id, fork)| (*run_id, *fork))
                    .collect(),
            },
        }
    }
}

impl Catalog {
    /// Rewinds an active run to `step` at `time`; returns the run's
    /// experiment. The rewind's LSN is that of its WAL record.
    pub fn rewind_run<L: MutationLog>(
        &self,
        log: &L,
        run_id: RunId,
        step: i64,
        time: i64,
    ) -> Result<(ExperimentId, Option<L::Ticket>), CatalogError> {
        self.commit(log, |state| {
            let run = find_run(state, run_id)?;
            ensure_run_active(run)?;
            let rewinds = state.continuity.rewinds(run_id).len();
            room_for("rewinds", 1, rewinds, MAX_REWINDS_PER_RUN)?;
            Ok((
                run.experiment_id,
                Some(CatalogMutation::RewindRun { run_id, step, time }),
            ))
        })
    }
}

/// A request to fork a run.
pub struct NewFork {
    /// The run to fork.
    pub parent: RunId,
    /// The parent's step the fork starts after.
    pub step: i64,
    /// The new run (its experiment must be the parent's); its params and
    /// tags are added to the parent's, replacing those of the same key.
    pub run: NewRun,
    /// When, ms since the epoch.
    pub time: i64,
}

/// Tags a fork does not take from its parent: its own name, the parent's
/// rewinds and the parent's own fork.
const NOT_INHERITED_TAGS: [&str; 4] = [RUN_NAME_TAG, REWIND_TAG, FORK_RUN_TAG, FORK_STEP_TAG];

impl Catalog {
    /// Forks a run: a new run in the parent's experiment with the parent's
    /// params and tags (those of the request win) whose series start with
    /// the parent's points up to `step`. The lineage records the parent's
    /// checkpoint at `step` as an OUTPUT of the parent and an INPUT of the
    /// new run.
    pub fn fork_run<L: MutationLog>(
        &self,
        log: &L,
        fork: NewFork,
    ) -> Result<(Run, Option<L::Ticket>), CatalogError> {
        let NewFork {
            parent,
            step,
            mut run,
            time,
        } = fork;
        {
            let state = self.read();
            let parent_run = find_run(&state, parent)?;
            ensure_run_active(parent_run)?;
            if run.experiment_id != parent_run.experiment_id {
                return Err(CatalogError::InvalidState(format!(
                    "a fork is made in its parent's experiment ({}), not in {}",
                    parent_run.experiment_id, run.experiment_id
                )));
            }
            let mut params: BTreeMap<String, String> = parent_run
                .params
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect();
            params.extend(run.params.drain(..));
            run.params = params.into_iter().collect();
            let mut tags: BTreeMap<String, String> = parent_run
                .tags
                .iter()
                .filter(|(key, _)| !NOT_INHERITED_TAGS.contains(key))
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect();
            tags.extend(run.tags.drain(..));
            run.tags = tags.into_iter().collect();
        }
        let prepared = PreparedRun::new(run)?;
        self.commit(log, |state| {
            let parent_run = find_run(state, parent)?;
            ensure_run_active(parent_run)?;
            let continuity = &state.continuity;
            let depth = continuity.line_of_descent(parent).len() + 1;
            room_for("forks of forks in a line", 1, depth - 1, MAX_FORK_DEPTH)?;
            let forks = continuity.fork_points_of(parent).len();
            room_for("forks", 1, forks, MAX_FORKS_PER_RUN)?;
            let child = prepared.build(state)?;
            let (artifacts, events) = fork_lineage(state, parent, child.run_id, step, time);
            Ok((
                child.clone(),
                Some(CatalogMutation::ForkRun {
                    run: Box::new(child),
                    parent,
                    step,
                    time,
                    artifacts,
                    events,
                }),
            ))
        })
    }
}

/// The lineage of a fork: the parent's checkpoint at `step` (an OUTPUT of
/// the parent there, found or created) and an INPUT of the child.
fn fork_lineage(
    state: &super::CatalogState,
    parent: RunId,
    child: RunId,
    step: i64,
    time: i64,
) -> (Vec<Artifact>, Vec<LineageEvent>) {
    let lineage = &state.lineage;
    // A checkpoint the parent recorded at that step is the one.
    let recorded = lineage
        .events_of_run(parent)
        .filter(|event| event.kind == EventKind::Output && event.step == Some(step))
        .filter_map(|event| lineage.artifact(event.artifact_id))
        .find(|artifact| artifact.artifact_type == CHECKPOINT_TYPE)
        .map(|artifact| artifact.artifact_id);
    let mut artifacts = Vec::new();
    let mut events = Vec::new();
    let artifact_id = match recorded {
        Some(id) => id,
        None => {
            let artifact = Artifact {
                artifact_id: lineage.next_id(),
                artifact_type: CHECKPOINT_TYPE.to_string(),
                name: format!("run {parent} at step {step}"),
                uri: format!("stepstore:/runs/{parent}/steps/{step}"),
                digest: String::new(),
                properties: BTreeMap::from([
                    ("run_id".to_string(), parent.to_string()),
                    ("step".to_string(), step.to_string()),
                ]),
                creation_time: time,
            };
            let id = match lineage.find(&artifact.identity()) {
                Some(existing) => existing.artifact_id,
                None => {
                    let id = artifact.artifact_id;
                    artifacts.push(artifact);
                    id
                }
            };
            events.push(LineageEvent {
                artifact_id: id,
                run_id: parent,
                kind: EventKind::Output,
                step: Some(step),
                time,
            });
            id
        }
    };
    events.push(LineageEvent {
        artifact_id,
        run_id: child,
        kind: EventKind::Input,
        step: Some(step),
        time,
    });
    (artifacts, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::{MemoryLog, catalog, new_run};
    use crate::model::LifecycleStage;

    #[test]
    fn a_fork_takes_its_parents_params_and_tags_and_records_the_checkpoint() {
        let log = MemoryLog::default();
        let catalog = catalog();
        let mut request = new_run(ExperimentId::DEFAULT);
        request.params.push(("depth".into(), "4".into()));
        request.tags = vec![("team".into(), "a".into()), (REWIND_TAG.into(), "3".into())];
        let (parent, _) = catalog.create_run(&log, request).unwrap();
        let fork = |step: i64, params: Vec<(String, String)>| NewFork {
            parent: parent.run_id,
            step,
            run: NewRun {
                params,
                tags: vec![("note".into(), "x".into())],
                ..new_run(ExperimentId::DEFAULT)
            },
            time: 9,
        };
        let (child, _) = catalog
            .fork_run(&log, fork(7, vec![("lr".into(), "0.01".into())]))
            .unwrap();
        assert_eq!(&child.params["lr"], "0.01", "the fork's own params win");
        assert_eq!(&child.params["depth"], "4");
        assert_eq!(&child.tags["team"], "a");
        assert_eq!(&child.tags["note"], "x");
        assert!(!child.tags.contains_key(REWIND_TAG));
        assert_eq!(child.tags[RUN_NAME_TAG], child.run_name);
        let (second, _) = catalog.fork_run(&log, fork(7, Vec::new())).unwrap();
        let (grandchild, _) = catalog
            .fork_run(
                &log,
                NewFork {
                    parent: child.run_id,
                    ..fork(20, Vec::new())
                },
            )
            .unwrap();
        {
            let state = catalog.read();
            let continuity = state.continuity();
            let recorded = continuity.fork_of(child.run_id).unwrap();
            assert_eq!(
                (recorded.parent, recorded.step, recorded.time),
                (parent.run_id, 7, 9)
            );
            assert_eq!(continuity.fork_points_of(parent.run_id).len(), 2);
            let line = continuity.line_of_descent(grandchild.run_id);
            assert_eq!(line.len(), 2);
            assert_eq!(
                (line[0].parent, line[1].parent),
                (child.run_id, parent.run_id)
            );
            // One checkpoint of the parent at step 7, the input of both forks.
            let outputs: Vec<&LineageEvent> = state
                .lineage
                .events_of_run(parent.run_id)
                .filter(|event| event.kind == EventKind::Output)
                .collect();
            assert_eq!(outputs.len(), 1);
            assert_eq!(outputs[0].step, Some(7));
            let checkpoint = state.lineage.artifact(outputs[0].artifact_id).unwrap();
            assert_eq!(checkpoint.artifact_type, CHECKPOINT_TYPE);
            for run in [child.run_id, second.run_id] {
                let inputs: Vec<&LineageEvent> = state
                    .lineage
                    .events_of_run(run)
                    .filter(|event| event.kind == EventKind::Input)
                    .collect();
                assert_eq!(inputs.len(), 1);
                assert_eq!(inputs[0].artifact_id, checkpoint.artifact_id);
            }
        }
        // Refused: another experiment, a deleted parent, an unknown one.
        let (other, _) = catalog
            .create_experiment(
                &log,
                super::super::NewExperiment {
                    name: "other".into(),
                    ..Default::default()
                },
                1,
            )
            .unwrap();
        let mut elsewhere = fork(1, Vec::new());
        elsewhere.run.experiment_id = other;
        assert!(matches!(
            catalog.fork_run(&log, elsewhere),
            Err(CatalogError::InvalidState(_))
        ));
        catalog
            .set_run_lifecycle(&log, parent.run_id, LifecycleStage::Deleted, 3)
            .unwrap();
        assert!(catalog.fork_run(&log, fork(1, Vec::new())).is_err());
        let mut unknown = fork(1, Vec::new());
        unknown.parent = RunId::new_random();
        assert!(matches!(
            catalog.fork_run(&log, unknown),
            Err(CatalogError::RunNotFound(_))
        ));
    }

    #[test]
    fn rewinds_are_kept_in_order_and_a_replayed_one_once() {
        let mut state = ContinuityState::default();
        let run = RunId::new_random();
        let rewind = |lsn, step| Rewind { lsn, step, time: 0 };
        state.push_rewind(run, rewind(5, 10));
        state.push_rewind(run, rewind(5, 10));
        state.push_rewind(run, rewind(9, 3));
        assert_eq!(state.rewinds(run), &[rewind(5, 10), rewind(9, 3)]);
        assert!(state.rewinds(RunId::new_random()).is_empty());
        assert!(state.restricted_to(|_| false).rewinds(run).is_empty());
    }
}
