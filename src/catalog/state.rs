//! The in-memory catalog: experiments and runs (with their params and
//! tags), plus the indexes derived from them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::continuity::ContinuityState;
use super::lineage::LineageState;
use super::run_table::RunTable;
use crate::model::{DEFAULT_EXPERIMENT_NAME, Experiment, ExperimentId, LifecycleStage, Run, RunId};
use crate::wal::Lsn;

/// Everything the catalog knows. Serialised whole into snapshots.
///
/// A copy shares its runs with the original (see [`RunTable`]): taking one
/// costs about the same at a million runs as at ten.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CatalogState {
    /// LSN of the last mutation applied.
    pub applied_lsn: Lsn,
    next_experiment_id: u64,
    experiments: BTreeMap<ExperimentId, Experiment>,
    runs: RunTable,
    #[serde(skip)]
    experiment_names: HashMap<String, ExperimentId>,
    /// Artifacts and lineage events: snapshotted as their own section (see
    /// [`super::snapshot`]), so that this struct's encoding stays the one
    /// older snapshots have.
    #[serde(skip)]
    pub(crate) lineage: LineageState,
    /// Rewinds of runs: a snapshot section of its own, like the lineage.
    #[serde(skip)]
    pub(crate) continuity: ContinuityState,
}

impl CatalogState {
    /// A copy holding only experiments in `allowed` and their runs (what a
    /// token limited to those experiments may query).
    pub fn restricted_to(&self, allowed: &std::collections::BTreeSet<ExperimentId>) -> Self {
        let mut state = CatalogState {
            applied_lsn: self.applied_lsn,
            next_experiment_id: self.next_experiment_id,
            experiments: self
                .experiments
                .iter()
                .filter(|(id, _)| allowed.contains(id))
                .map(|(id, experiment)| (*id, experiment.clone()))
                .collect(),
            runs: self.runs.restricted_to(|id| allowed.contains(&id)),
            experiment_names: HashMap::new(),
            lineage: LineageState::default(),
            continuity: ContinuityState::default(),
        };
        let visible: std::collections::HashSet<RunId> =
            state.runs.iter().map(|run| run.run_id).collect();
        state.lineage = self
            .lineage
            .restricted_to(|run_id| visible.contains(&run_id));
        state.continuity = self
            .continuity
            .restricted_to(|run_id| visible.contains(&run_id));
        state.rebuild_indexes();
        state
    }

    /// A fresh catalog holding only the `Default` experiment.
    pub fn new(default_artifact_root: &str, creation_time: i64) -> Self {
        let mut state = CatalogState {
            applied_lsn: 0,
            next_experiment_id: 1,
            experiments: BTreeMap::new(),
            runs: RunTable::default(),
            experiment_names: HashMap::new(),
            lineage: LineageState::default(),
            continuity: ContinuityState::default(),
        };
        state.insert_experiment(Experiment {
            experiment_id: ExperimentId::DEFAULT,
            name: DEFAULT_EXPERIMENT_NAME.to_string(),
            artifact_location: format!("{default_artifact_root}/0"),
            lifecycle_stage: LifecycleStage::Active,
            creation_time,
            last_update_time: creation_time,
            tags: BTreeMap::new(),
        });
        state
    }

    /// Rebuilds derived indexes after deserialisation.
    pub(crate) fn rebuild_indexes(&mut self) {
        self.experiment_names = self
            .experiments
            .values()
            .map(|experiment| (experiment.name.clone(), experiment.experiment_id))
            .collect();
        self.lineage.rebuild_indexes();
    }

    /// Artifacts and lineage events.
    pub fn lineage(&self) -> &LineageState {
        &self.lineage
    }

    /// Rewinds of runs.
    pub fn continuity(&self) -> &ContinuityState {
        &self.continuity
    }

    /// The id the next experiment gets.
    pub fn next_experiment_id(&self) -> ExperimentId {
        ExperimentId::new(self.next_experiment_id)
    }

    /// Calls `change` on every run of an experiment.
    pub(crate) fn for_each_run_of(
        &mut self,
        experiment_id: ExperimentId,
        change: impl FnMut(&mut Run),
    ) {
        self.runs.for_each_of_experiment(experiment_id, change);
    }

    /// An experiment by id.
    pub fn experiment(&self, id: ExperimentId) -> Option<&Experiment> {
        self.experiments.get(&id)
    }

    /// An experiment by name.
    pub fn experiment_by_name(&self, name: &str) -> Option<&Experiment> {
        self.experiment_names
            .get(name)
            .and_then(|id| self.experiments.get(id))
    }

    /// Every experiment, by id.
    pub fn experiments(&self) -> impl Iterator<Item = &Experiment> {
        self.experiments.values()
    }

    /// A run by id.
    pub fn run(&self, id: RunId) -> Option<&Run> {
        self.runs.get(id).map(Arc::as_ref)
    }

    /// A run by id, shared.
    pub fn shared_run(&self, id: RunId) -> Option<&Arc<Run>> {
        self.runs.get(id)
    }

    /// Every run, in no particular order.
    pub fn runs(&self) -> impl Iterator<Item = &Arc<Run>> {
        self.runs.iter()
    }

    /// The runs of one experiment, in run id order: found without looking
    /// at other experiments' runs.
    pub fn runs_of(&self, experiment_id: ExperimentId) -> impl Iterator<Item = &Arc<Run>> {
        self.runs.of_experiment(experiment_id)
    }

    /// Number of runs of one experiment.
    pub fn run_count_of(&self, experiment_id: ExperimentId) -> usize {
        self.runs.count_of(experiment_id)
    }

    /// The experiments that have runs, in id order.
    pub fn experiments_with_runs(&self) -> impl Iterator<Item = ExperimentId> + '_ {
        self.runs.experiments()
    }

    /// Number of runs.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    pub(crate) fn experiment_mut(&mut self, id: ExperimentId) -> Option<&mut Experiment> {
        self.experiments.get_mut(&id)
    }

    pub(crate) fn run_mut(&mut self, id: RunId) -> Option<&mut Run> {
        self.runs.get_mut(id)
    }

    pub(crate) fn insert_experiment(&mut self, experiment: Experiment) {
        self.next_experiment_id = self
            .next_experiment_id
            .max(experiment.experiment_id.value() + 1);
        self.experiment_names
            .insert(experiment.name.clone(), experiment.experiment_id);
        self.experiments
            .insert(experiment.experiment_id, experiment);
    }

    pub(crate) fn rename_experiment(&mut self, id: ExperimentId, name: &str, time: i64) {
        let Some(experiment) = self.experiments.get_mut(&id) else {
            tracing::warn!(experiment_id = %id, "rename of an unknown experiment skipped");
            return;
        };
        self.experiment_names.remove(&experiment.name);
        experiment.name = name.to_string();
        experiment.last_update_time = time;
        self.experiment_names.insert(name.to_string(), id);
    }

    pub(crate) fn insert_run(&mut self, run: Run) {
        self.runs.insert(run);
    }

    /// Removes runs (with their lineage events, rewinds and forks) and
    /// experiments for good.
    pub(crate) fn remove(&mut self, runs: &[RunId], experiments: &[ExperimentId]) {
        let gone: std::collections::HashSet<RunId> = runs.iter().copied().collect();
        for run_id in runs {
            self.runs.remove(*run_id);
        }
        for experiment_id in experiments {
            if let Some(experiment) = self.experiments.remove(experiment_id) {
                self.experiment_names.remove(&experiment.name);
            }
        }
        self.lineage.remove_runs(&gone);
        self.continuity.remove_runs(&gone);
    }
}
