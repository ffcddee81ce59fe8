//! The catalog's runs: a table that a copy costs almost nothing to take,
//! and that finds an experiment's runs without looking at the others.
//!
//! Runs are held as `Arc<Run>` in [`SHARDS`] maps chosen by run id, each
//! behind an `Arc`: a copy of the table (what every SQL query and catalog
//! snapshot takes) shares every shard and every run. A change to the
//! original copies only the shard it touches, and only the run it changes,
//! and only while a copy still shares them (`Arc::make_mut`). An index of
//! run ids per experiment, shared the same way, answers "the runs of
//! experiment E" in time proportional to E's runs, not to the history.
//!
//! Serialised as the map from run id to run that catalog snapshots have
//! always held.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{ExperimentId, Run, RunId};

/// Number of shards of the run map: a change while a copy is held copies
/// one shard, about 1/64 of the map.
const SHARDS: usize = 64;

/// One shard: runs by id.
type Shard = HashMap<RunId, Arc<Run>>;

/// Every run of the catalog, by id and by experiment.
#[derive(Clone)]
pub(crate) struct RunTable {
    shards: Box<[Arc<Shard>]>,
    /// The ids of each experiment's runs, in id order.
    by_experiment: BTreeMap<ExperimentId, Arc<BTreeSet<RunId>>>,
    len: usize,
}

impl Default for RunTable {
    fn default() -> Self {
        RunTable {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::new())).collect(),
            by_experiment: BTreeMap::new(),
            len: 0,
        }
    }
}

impl fmt::Debug for RunTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunTable")
            .field("runs", &self.len)
            .field("experiments", &self.by_experiment.len())
            .finish_non_exhaustive()
    }
}

impl RunTable {
    fn shard_of(run_id: RunId) -> usize {
        run_id.shard(SHARDS)
    }

    /// A run by id.
    pub(crate) fn get(&self, run_id: RunId) -> Option<&Arc<Run>> {
        self.shards[Self::shard_of(run_id)].get(&run_id)
    }

    /// A run to change (copied first if a copy of the table shares it).
    /// Its `experiment_id` must not be changed.
    pub(crate) fn get_mut(&mut self, run_id: RunId) -> Option<&mut Run> {
        let shard = &mut self.shards[Self::shard_of(run_id)];
        if !shard.contains_key(&run_id) {
            return None;
        }
        Arc::make_mut(shard).get_mut(&run_id).map(Arc::make_mut)
    }

    /// Adds a run, or replaces the run with its id.
    pub(crate) fn insert(&mut self, run: Run) {
        let run_id = run.run_id;
        let experiment_id = run.experiment_id;
        let shard = Arc::make_mut(&mut self.shards[Self::shard_of(run_id)]);
        match shard.insert(run_id, Arc::new(run)) {
            Some(old) if old.experiment_id != experiment_id => {
                self.unindex(old.experiment_id, run_id);
            }
            Some(_) => return,
            None => self.len += 1,
        }
        Arc::make_mut(self.by_experiment.entry(experiment_id).or_default()).insert(run_id);
    }

    /// Removes a run; returns it if it was there.
    pub(crate) fn remove(&mut self, run_id: RunId) -> Option<Arc<Run>> {
        let shard = &mut self.shards[Self::shard_of(run_id)];
        if !shard.contains_key(&run_id) {
            return None;
        }
        let run = Arc::make_mut(shard).remove(&run_id)?;
        self.len -= 1;
        self.unindex(run.experiment_id, run_id);
        Some(run)
    }

    fn unindex(&mut self, experiment_id: ExperimentId, run_id: RunId) {
        if let Some(ids) = self.by_experiment.get_mut(&experiment_id) {
            Arc::make_mut(ids).remove(&run_id);
            if ids.is_empty() {
                self.by_experiment.remove(&experiment_id);
            }
        }
    }

    /// Number of runs.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every run, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Run>> {
        self.shards.iter().flat_map(|shard| shard.values())
    }

    /// The runs of one experiment, in run id order.
    pub(crate) fn of_experiment(
        &self,
        experiment_id: ExperimentId,
    ) -> impl Iterator<Item = &Arc<Run>> {
        self.by_experiment
            .get(&experiment_id)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|run_id| self.get(*run_id))
    }

    /// The ids of one experiment's runs, in id order.
    pub(crate) fn ids_of_experiment(
        &self,
        experiment_id: ExperimentId,
    ) -> impl Iterator<Item = RunId> + '_ {
        self.by_experiment
            .get(&experiment_id)
            .into_iter()
            .flat_map(|ids| ids.iter().copied())
    }

    /// Number of runs of one experiment.
    pub(crate) fn count_of(&self, experiment_id: ExperimentId) -> usize {
        self.by_experiment
            .get(&experiment_id)
            .map_or(0, |ids| ids.len())
    }

    /// The experiments that have runs, in id order.
    pub(crate) fn experiments(&self) -> impl Iterator<Item = ExperimentId> + '_ {
        self.by_experiment.keys().copied()
    }

    /// Calls `change` on every run of an experiment.
    pub(crate) fn for_each_of_experiment(
        &mut self,
        experiment_id: ExperimentId,
        mut change: impl FnMut(&mut Run),
    ) {
        let ids: Vec<RunId> = self.ids_of_experiment(experiment_id).collect();
        for run_id in ids {
            if let Some(run) = self.get_mut(run_id) {
                change(run);
            }
        }
    }

    /// A table holding only the runs of `keep`'s experiments (shared with
    /// this one).
    pub(crate) fn restricted_to(&self, keep: impl Fn(ExperimentId) -> bool) -> RunTable {
        let mut table = RunTable::default();
        for (experiment_id, ids) in &self.by_experiment {
            if !keep(*experiment_id) {
                continue;
            }
            for run_id in ids.iter() {
                if let Some(run) = self.get(*run_id) {
                    Arc::make_mut(&mut table.shards[Self::shard_of(*run_id)])
                        .insert(*run_id, Arc::clone(run));
                    table.len += 1;
                }
            }
            table.by_experiment.insert(*experiment_id, Arc::clone(ids));
        }
        table
    }
}

impl Serialize for RunTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for run in self.iter() {
            map.serialize_entry(&run.run_id, run.as_ref())?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for RunTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RunsVisitor;

        impl<'de> Visitor<'de> for RunsVisitor {
            type Value = RunTable;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a map from run id to run")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<RunTable, A::Error> {
                // Built in bulk: each experiment's ids are gathered, then
                // made into its index at once (sorted, not inserted one by
                // one).
                let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::new()).collect();
                let mut ids: BTreeMap<ExperimentId, Vec<RunId>> = BTreeMap::new();
                while let Some((run_id, run)) = entries.next_entry::<RunId, Run>()? {
                    if run_id != run.run_id {
                        return Err(serde::de::Error::custom(format!(
                            "run {} stored under id {run_id}",
                            run.run_id
                        )));
                    }
                    // A run stored twice keeps its last copy, as a map would.
                    let experiment_id = run.experiment_id;
                    let replaced = shards[RunTable::shard_of(run_id)].insert(run_id, Arc::new(run));
                    if let Some(listed) = replaced.and_then(|old| ids.get_mut(&old.experiment_id)) {
                        listed.retain(|listed| *listed != run_id);
                    }
                    ids.entry(experiment_id).or_default().push(run_id);
                }
                let len = shards.iter().map(HashMap::len).sum();
                Ok(RunTable {
                    shards: shards.into_iter().map(Arc::new).collect(),
                    by_experiment: ids
                        .into_iter()
                        .filter(|(_, ids)| !ids.is_empty())
                        .map(|(experiment_id, ids)| {
                            (experiment_id, Arc::new(ids.into_iter().collect()))
                        })
                        .collect(),
                    len,
                })
            }
        }

        deserializer.deserialize_map(RunsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(experiment: u64, name: &str) -> Run {
        Run::for_test(RunId::new_random(), ExperimentId::new(experiment), name, 1)
    }

    #[test]
    fn a_copy_keeps_what_it_saw_while_the_original_changes() {
        let mut table = RunTable::default();
        let runs: Vec<Run> = (0..300).map(|n| run(n % 3, &format!("r{n}"))).collect();
        for run in &runs {
            table.insert(run.clone());
        }
        let copy = table.clone();
        let changed = runs[0].run_id;
        table.get_mut(changed).unwrap().run_name = "renamed".to_string();
        let removed = runs[1].run_id;
        assert!(table.remove(removed).is_some());
        let added = run(1, "new");
        table.insert(added.clone());

        assert_eq!(copy.len(), 300);
        assert_eq!(copy.get(changed).unwrap().run_name, "r0");
        assert!(copy.get(removed).is_some());
        assert!(copy.get(added.run_id).is_none());
        assert_eq!(table.len(), 300);
        assert_eq!(table.get(changed).unwrap().run_name, "renamed");
        assert!(table.get(removed).is_none());
        // The runs nobody changed are shared, not copied.
        assert!(Arc::ptr_eq(
            copy.get(runs[2].run_id).unwrap(),
            table.get(runs[2].run_id).unwrap()
        ));

        for experiment in 0..3 {
            let id = ExperimentId::new(experiment);
            let mut expected: Vec<RunId> = table
                .iter()
                .filter(|run| run.experiment_id == id)
                .map(|run| run.run_id)
                .collect();
            expected.sort();
            let found: Vec<RunId> = table.of_experiment(id).map(|run| run.run_id).collect();
            assert_eq!(found, expected);
            assert_eq!(table.ids_of_experiment(id).collect::<Vec<_>>(), expected);
        }
        assert_eq!(copy.of_experiment(ExperimentId::new(1)).count(), 100);
        assert_eq!(table.of_experiment(ExperimentId::new(1)).count(), 100);
    }

    #[test]
    fn restriction_and_removal_keep_the_index_true() {
        let mut table = RunTable::default();
        let kept = run(7, "kept");
        let other = run(8, "other");
        table.insert(kept.clone());
        table.insert(other.clone());
        let restricted = table.restricted_to(|id| id == ExperimentId::new(7));
        assert_eq!(restricted.len(), 1);
        assert!(restricted.get(other.run_id).is_none());
        assert_eq!(
            restricted.experiments().collect::<Vec<_>>(),
            vec![ExperimentId::new(7)]
        );

        table.remove(kept.run_id);
        assert_eq!(
            table.experiments().collect::<Vec<_>>(),
            vec![ExperimentId::new(8)]
        );
        table.for_each_of_experiment(ExperimentId::new(8), |run| run.run_name = "x".into());
        assert_eq!(table.get(other.run_id).unwrap().run_name, "x");
        assert_eq!(restricted.len(), 1);
    }

    #[test]
    fn encodes_as_the_map_snapshots_always_held() {
        let mut table = RunTable::default();
        let mut plain = HashMap::new();
        for n in 0..5 {
            let run = run(n, "r");
            plain.insert(run.run_id, run.clone());
            table.insert(run);
        }
        let config = bincode::config::standard();
        let encoded = bincode::serde::encode_to_vec(&table, config).unwrap();
        let (from_table, _): (HashMap<RunId, Run>, usize) =
            bincode::serde::decode_from_slice(&encoded, config).unwrap();
        assert_eq!(from_table, plain);
        let encoded_plain = bincode::serde::encode_to_vec(&plain, config).unwrap();
        let (decoded, _): (RunTable, usize) =
            bincode::serde::decode_from_slice(&encoded_plain, config).unwrap();
        assert_eq!(decoded.len(), 5);
        for run in plain.values() {
            assert_eq!(decoded.get(run.run_id).unwrap().as_ref(), run);
        }

        // A run stored twice keeps its last copy (bincode writes a map as
        // its length and its pairs, as it writes a list of pairs).
        let first = run(1, "first");
        let mut again = first.clone();
        again.experiment_id = ExperimentId::new(2);
        let twice = vec![(first.run_id, first.clone()), (first.run_id, again.clone())];
        let encoded = bincode::serde::encode_to_vec(&twice, config).unwrap();
        let (decoded, _): (RunTable, usize) =
            bincode::serde::decode_from_slice(&encoded, config).unwrap();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded.get(first.run_id).unwrap().as_ref(), &again);
        assert_eq!(
            decoded.experiments().collect::<Vec<_>>(),
            vec![ExperimentId::new(2)]
        );
        assert_eq!(decoded.ids_of_experiment(ExperimentId::new(2)).count(), 1);

        // A run under another run's id is refused.
        let other = run(1, "other");
        let misfiled = vec![(first.run_id, other)];
        let encoded = bincode::serde::encode_to_vec(&misfiled, config).unwrap();
        assert!(bincode::serde::decode_from_slice::<RunTable, _>(&encoded, config).is_err());
    }
}
