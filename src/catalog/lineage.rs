//! The catalog's lineage: artifacts and the INPUT/OUTPUT events that tie
//! them to runs (see [`crate::model::lineage`]), the changes that record
//! them, and the subgraph query (`GET /api/v1/lineage`).
//!
//! Lineage is kept beside the rest of the catalog state and snapshotted as
//! its own section, so snapshots written before lineage existed still load
//! (their runs' MLflow dataset inputs are turned into `dataset` artifacts
//! and INPUT events then, as new `log-inputs` calls are).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError, CatalogMutation, CatalogState, MutationLog, find_run};
use crate::catalog::ensure_run_active;
use crate::model::lineage::{
    Artifact, ArtifactId, ArtifactIdentity, DATASET_TYPE, EventKind, LineageEvent, NewArtifact,
};
use crate::model::{DatasetInput, Run, RunId};

/// Most artifacts one request may name.
pub const MAX_ARTIFACTS_PER_REQUEST: usize = 1_000;
/// Most nodes (artifacts and runs) a lineage answer may hold.
pub const MAX_LINEAGE_NODES: usize = 1_000;

/// Artifacts and events, with their indexes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LineageState {
    next_artifact_id: u64,
    artifacts: BTreeMap<ArtifactId, Artifact>,
    events: Vec<LineageEvent>,
    #[serde(skip)]
    by_identity: HashMap<ArtifactIdentity, ArtifactId>,
    #[serde(skip)]
    events_of_run: HashMap<RunId, Vec<usize>>,
    #[serde(skip)]
    events_of_artifact: HashMap<ArtifactId, Vec<usize>>,
}

impl LineageState {
    /// Drops the events of `runs` (their artifacts stay: other runs may
    /// name them).
    pub(crate) fn remove_runs(&mut self, runs: &std::collections::HashSet<RunId>) {
        let before = self.events.len();
        self.events.retain(|event| !runs.contains(&event.run_id));
        if self.events.len() != before {
            self.rebuild_indexes();
        }
    }

    /// Rebuilds the indexes after deserialisation.
    pub(crate) fn rebuild_indexes(&mut self) {
        self.by_identity = self
            .artifacts
            .values()
            .map(|artifact| (artifact.identity(), artifact.artifact_id))
            .collect();
        self.events_of_run.clear();
        self.events_of_artifact.clear();
        for index in 0..self.events.len() {
            self.index_event(index);
        }
    }

    /// Adds event `index` to the per-run and per-artifact indexes.
    fn index_event(&mut self, index: usize) {
        let event = &self.events[index];
        self.events_of_run
            .entry(event.run_id)
            .or_default()
            .push(index);
        self.events_of_artifact
            .entry(event.artifact_id)
            .or_default()
            .push(index);
    }

    /// An artifact by id.
    pub fn artifact(&self, artifact_id: ArtifactId) -> Option<&Artifact> {
        self.artifacts.get(&artifact_id)
    }

    /// The artifact with this identity, if any.
    pub fn find(&self, identity: &ArtifactIdentity) -> Option<&Artifact> {
        self.by_identity
            .get(identity)
            .and_then(|id| self.artifacts.get(id))
    }

    /// Every artifact, by id.
    pub fn artifacts(&self) -> impl Iterator<Item = &Artifact> {
        self.artifacts.values()
    }

    /// Every event, in the order recorded.
    pub fn events(&self) -> &[LineageEvent] {
        &self.events
    }

    /// The events of a run.
    pub fn events_of_run(&self, run_id: RunId) -> impl Iterator<Item = &LineageEvent> {
        self.events_of_run
            .get(&run_id)
            .into_iter()
            .flatten()
            .map(|&index| &self.events[index])
    }

    /// The events of an artifact.
    pub fn events_of_artifact(
        &self,
        artifact_id: ArtifactId,
    ) -> impl Iterator<Item = &LineageEvent> {
        self.events_of_artifact
            .get(&artifact_id)
            .into_iter()
            .flatten()
            .map(|&index| &self.events[index])
    }

    /// The id the next new artifact gets.
    pub(crate) fn next_id(&self) -> ArtifactId {
        ArtifactId(self.next_artifact_id.max(1))
    }

    pub(crate) fn insert_artifact(&mut self, artifact: Artifact) {
        self.next_artifact_id = self.next_artifact_id.max(artifact.artifact_id.0 + 1);
        self.by_identity
            .insert(artifact.identity(), artifact.artifact_id);
        self.artifacts.insert(artifact.artifact_id, artifact);
    }

    /// Adds an event unless the same one (artifact, run, kind, step) is
    /// there already.
    pub(crate) fn push_event(&mut self, event: LineageEvent) {
        let known = self.events_of_run(event.run_id).any(|existing| {
            existing.artifact_id == event.artifact_id
                && existing.kind == event.kind
                && existing.step == event.step
        });
        if known {
            return;
        }
        self.events.push(event);
        self.index_event(self.events.len() - 1);
    }

    /// Records MLflow dataset inputs of a run: each becomes (or is found
    /// as) a `dataset` artifact named and digested as the dataset, with an
    /// INPUT event at `time`.
    pub(crate) fn record_dataset_inputs(
        &mut self,
        run_id: RunId,
        inputs: &[DatasetInput],
        time: i64,
    ) {
        for input in inputs {
            let described = dataset_artifact(input);
            let artifact_id = match self.find(&described.identity()) {
                Some(existing) => existing.artifact_id,
                None => {
                    let artifact_id = self.next_id();
                    self.insert_artifact(described.into_artifact(artifact_id, time));
                    artifact_id
                }
            };
            self.push_event(LineageEvent {
                artifact_id,
                run_id,
                kind: EventKind::Input,
                step: None,
                time,
            });
        }
    }

    /// Lineage of a snapshot written before lineage existed: every run's
    /// dataset inputs, runs in start order.
    pub(crate) fn from_dataset_inputs<'a>(runs: impl Iterator<Item = &'a Run>) -> Self {
        let mut lineage = LineageState::default();
        let mut runs: Vec<&Run> = runs.filter(|run| !run.inputs.is_empty()).collect();
        runs.sort_by_key(|run| (run.start_time, run.run_id));
        for run in runs {
            lineage.record_dataset_inputs(run.run_id, &run.inputs, run.start_time);
        }
        lineage
    }

    /// The part a token limited to some runs may see: their events and the
    /// artifacts those name.
    pub(crate) fn restricted_to(&self, visible: impl Fn(RunId) -> bool) -> Self {
        let events: Vec<LineageEvent> = self
            .events
            .iter()
            .filter(|event| visible(event.run_id))
            .cloned()
            .collect();
        let named: BTreeSet<ArtifactId> = events.iter().map(|event| event.artifact_id).collect();
        let mut restricted = LineageState {
            next_artifact_id: self.next_artifact_id,
            artifacts: self
                .artifacts
                .iter()
                .filter(|(id, _)| named.contains(id))
                .map(|(id, artifact)| (*id, artifact.clone()))
                .collect(),
            events,
            ..LineageState::default()
        };
        restricted.rebuild_indexes();
        restricted
    }
}

/// The artifact an MLflow dataset input stands for.
fn dataset_artifact(input: &DatasetInput) -> NewArtifact {
    let dataset = &input.dataset;
    let mut properties = BTreeMap::from([("source_type".to_string(), dataset.source_type.clone())]);
    if let Some(context) = input.tags.get("mlflow.data.context") {
        properties.insert("context".to_string(), context.clone());
    }
    NewArtifact {
        artifact_type: DATASET_TYPE.to_string(),
        name: dataset.name.clone(),
        uri: dataset_uri(&dataset.source),
        digest: dataset.digest.clone(),
        properties,
    }
}

/// The uri in an MLflow dataset source document (`{"uri": ...}`, or
/// `{"url": ...}`, `{"path": ...}`), else the document itself.
fn dataset_uri(source: &str) -> String {
    serde_json::from_str::<serde_json::Value>(source)
        .ok()
        .and_then(|document| {
            ["uri", "url", "path", "location"]
                .iter()
                .find_map(|field| document.get(field)?.as_str().map(str::to_string))
        })
        .unwrap_or_else(|| source.to_string())
}

/// An artifact, and whether this call created it (`false`: it was found
/// by identity).
pub type FoundOrCreated = (Artifact, bool);

/// An artifact named by id or described (found by identity, or created).
#[derive(Clone, Debug)]
pub enum ArtifactRef {
    /// An existing artifact.
    Id(ArtifactId),
    /// An artifact described by type, name, uri, digest and properties.
    Described(NewArtifact),
}

/// Which way a lineage query walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Toward what produced the start (its inputs, their producers...).
    Upstream,
    /// Toward what consumed the start (its outputs, their consumers...).
    Downstream,
    /// Both.
    Both,
}

/// Where a lineage query starts.
#[derive(Clone, Copy, Debug)]
pub enum LineageStart {
    /// An artifact.
    Artifact(ArtifactId),
    /// A run.
    Run(RunId),
}

/// A lineage subgraph: the nodes reached and the events between them.
#[derive(Clone, Debug, Default)]
pub struct Subgraph {
    /// Artifacts, by id.
    pub artifacts: Vec<Artifact>,
    /// Runs, by id.
    pub runs: Vec<Run>,
    /// Events whose artifact and run are both in the subgraph.
    pub events: Vec<LineageEvent>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Artifact(ArtifactId),
    Run(RunId),
}

/// The subgraph reached from `start` within `max_hops` events (one hop:
/// artifact to run or run to artifact). Upstream walks from a run to its
/// INPUT artifacts and from an artifact to the runs that OUTPUT it;
/// downstream the other way. More than `MAX_LINEAGE_NODES` nodes is an
/// error (lower `max_hops`).
pub fn subgraph(
    state: &CatalogState,
    start: LineageStart,
    direction: Direction,
    max_hops: usize,
) -> Result<Subgraph, CatalogError> {
    let lineage = &state.lineage;
    let first = match start {
        LineageStart::Artifact(id) => {
            lineage
                .artifact(id)
                .ok_or_else(|| CatalogError::ArtifactNotFound(id.to_string()))?;
            Node::Artifact(id)
        }
        LineageStart::Run(run_id) => {
            find_run(state, run_id)?;
            Node::Run(run_id)
        }
    };
    let mut seen: BTreeSet<Node> = BTreeSet::from([first]);
    let mut queue: VecDeque<(Node, usize)> = VecDeque::from([(first, 0)]);
    let walks: &[Direction] = match direction {
        Direction::Both => &[Direction::Upstream, Direction::Downstream],
        Direction::Upstream => &[Direction::Upstream],
        Direction::Downstream => &[Direction::Downstream],
    };
    while let Some((node, hops)) = queue.pop_front() {
        if hops >= max_hops {
            continue;
        }
        for &walk in walks {
            // Upstream from a run: its inputs; from an artifact: its
            // producers. Downstream: outputs, consumers.
            let wanted = |kind: EventKind, from_run: bool| match (walk, from_run) {
                (Direction::Upstream, true) | (Direction::Downstream, false) => {
                    kind == EventKind::Input
                }
                _ => kind == EventKind::Output,
            };
            let next: Vec<Node> = match node {
                Node::Run(run_id) => lineage
                    .events_of_run(run_id)
                    .filter(|event| wanted(event.kind, true))
                    .map(|event| Node::Artifact(event.artifact_id))
                    .collect(),
                Node::Artifact(id) => lineage
                    .events_of_artifact(id)
                    .filter(|event| wanted(event.kind, false))
                    .filter(|event| state.run(event.run_id).is_some())
                    .map(|event| Node::Run(event.run_id))
                    .collect(),
            };
            for neighbour in next {
                if seen.insert(neighbour) {
                    if seen.len() > MAX_LINEAGE_NODES {
                        return Err(CatalogError::LineageTooLarge(format!(
                            "the lineage subgraph has more than {MAX_LINEAGE_NODES} artifacts and \
                             runs within {max_hops} hops; ask for fewer hops (max_hops) or one \
                             direction"
                        )));
                    }
                    queue.push_back((neighbour, hops + 1));
                }
            }
        }
    }
    let mut graph = Subgraph::default();
    for node in &seen {
        match node {
            Node::Artifact(id) => graph.artifacts.extend(lineage.artifact(*id).cloned()),
            Node::Run(run_id) => graph.runs.extend(state.run(*run_id).cloned()),
        }
    }
    let mut events: Vec<&LineageEvent> = Vec::new();
    for node in &seen {
        if let Node::Run(run_id) = node {
            events.extend(
                lineage
                    .events_of_run(*run_id)
                    .filter(|event| seen.contains(&Node::Artifact(event.artifact_id))),
            );
        }
    }
    graph.events = events.into_iter().cloned().collect();
    Ok(graph)
}

impl Catalog {
    /// Creates an artifact, or returns the one with the same type, name and
    /// digest. The flag tells whether it was created.
    pub fn create_artifact<L: MutationLog>(
        &self,
        log: &L,
        described: NewArtifact,
        time: i64,
    ) -> Result<(FoundOrCreated, Option<L::Ticket>), CatalogError> {
        let described = described.validated()?;
        self.commit(log, |state| {
            if let Some(existing) = state.lineage.find(&described.identity()) {
                return Ok(((existing.clone(), false), None));
            }
            let artifact = described.into_artifact(state.lineage.next_id(), time);
            Ok((
                (artifact.clone(), true),
                Some(CatalogMutation::RecordLineage {
                    artifacts: vec![artifact],
                    events: Vec::new(),
                }),
            ))
        })
    }

    /// Records that run `run_id` consumed (`Input`) or produced (`Output`)
    /// the artifacts, at `step` when given. Described artifacts are found
    /// by identity or created. Returns the events.
    pub fn record_events<L: MutationLog>(
        &self,
        log: &L,
        run_id: RunId,
        kind: EventKind,
        artifacts: Vec<ArtifactRef>,
        step: Option<i64>,
        time: i64,
    ) -> Result<(Vec<LineageEvent>, Option<L::Ticket>), CatalogError> {
        if artifacts.is_empty() {
            return Err(CatalogError::Invalid(
                crate::model::ValidationError::InvalidField {
                    field: "artifacts",
                    reason: "name at least one artifact".to_string(),
                },
            ));
        }
        if artifacts.len() > MAX_ARTIFACTS_PER_REQUEST {
            return Err(CatalogError::TooManyPerRun {
                what: "artifacts in one request",
                count: artifacts.len(),
                limit: MAX_ARTIFACTS_PER_REQUEST,
            });
        }
        let artifacts = artifacts
            .into_iter()
            .map(|reference| match reference {
                ArtifactRef::Described(described) => {
                    described.validated().map(ArtifactRef::Described)
                }
                id => Ok(id),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.commit(log, |state| {
            let run = find_run(state, run_id)?;
            ensure_run_active(run)?;
            let mut created: Vec<Artifact> = Vec::new();
            let mut events = Vec::with_capacity(artifacts.len());
            let mut next = state.lineage.next_id().0;
            for reference in artifacts {
                let artifact_id = match reference {
                    ArtifactRef::Id(id) => {
                        state
                            .lineage
                            .artifact(id)
                            .ok_or_else(|| CatalogError::ArtifactNotFound(id.to_string()))?;
                        id
                    }
                    ArtifactRef::Described(described) => {
                        let identity = described.identity();
                        if let Some(existing) = state.lineage.find(&identity) {
                            existing.artifact_id
                        } else if let Some(pending) = created
                            .iter()
                            .find(|artifact| artifact.identity() == identity)
                        {
                            pending.artifact_id
                        } else {
                            let artifact_id = ArtifactId(next);
                            next += 1;
                            created.push(described.into_artifact(artifact_id, time));
                            artifact_id
                        }
                    }
                };
                events.push(LineageEvent {
                    artifact_id,
                    run_id,
                    kind,
                    step,
                    time,
                });
            }
            Ok((
                events.clone(),
                Some(CatalogMutation::RecordLineage {
                    artifacts: created,
                    events,
                }),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lineage::NewArtifact;

    fn state_with_runs(count: usize) -> (CatalogState, Vec<RunId>) {
        let mut state = CatalogState::new("file:///a", 1);
        let mut runs = Vec::new();
        for index in 0..count {
            let run_id = RunId::new_random();
            let run = Run {
                run_id,
                experiment_id: crate::model::ExperimentId::DEFAULT,
                run_name: format!("r{index}"),
                user_id: String::new(),
                status: crate::model::RunStatus::Running,
                start_time: index as i64,
                end_time: None,
                lifecycle_stage: crate::model::LifecycleStage::Active,
                deleted_time: None,
                artifact_uri: String::new(),
                params: Default::default(),
                tags: Default::default(),
                inputs: Vec::new(),
            };
            CatalogMutation::CreateRun(Box::new(run)).apply(&mut state);
            runs.push(run_id);
        }
        (state, runs)
    }

    fn artifact(state: &mut CatalogState, name: &str) -> ArtifactId {
        let id = state.lineage.next_id();
        CatalogMutation::RecordLineage {
            artifacts: vec![Artifact {
                artifact_id: id,
                artifact_type: "dataset".into(),
                name: name.into(),
                uri: format!("s3://b/{name}"),
                digest: "d".into(),
                properties: BTreeMap::new(),
                creation_time: 1,
            }],
            events: Vec::new(),
        }
        .apply(state);
        id
    }

    fn event(state: &mut CatalogState, artifact_id: ArtifactId, run_id: RunId, kind: EventKind) {
        CatalogMutation::RecordLineage {
            artifacts: Vec::new(),
            events: vec![LineageEvent {
                artifact_id,
                run_id,
                kind,
                step: None,
                time: 2,
            }],
        }
        .apply(state);
    }

    #[test]
    fn a_pipeline_is_walked_both_ways_within_the_hops() {
        // raw -> [prepare] -> clean -> [train] -> model -> [evaluate]
        let (mut state, runs) = state_with_runs(3);
        let (prepare, train, evaluate) = (runs[0], runs[1], runs[2]);
        let raw = artifact(&mut state, "raw");
        let clean = artifact(&mut state, "clean");
        let model = artifact(&mut state, "model");
        event(&mut state, raw, prepare, EventKind::Input);
        event(&mut state, clean, prepare, EventKind::Output);
        event(&mut state, clean, train, EventKind::Input);
        event(&mut state, model, train, EventKind::Output);
        event(&mut state, model, evaluate, EventKind::Input);
        // The same event again is not recorded twice.
        event(&mut state, model, evaluate, EventKind::Input);
        assert_eq!(state.lineage.events().len(), 5);

        let names = |graph: &Subgraph| {
            let mut names: Vec<String> = graph.artifacts.iter().map(|a| a.name.clone()).collect();
            names.extend(graph.runs.iter().map(|run| run.run_name.clone()));
            names.sort();
            names
        };
        let up = subgraph(
            &state,
            LineageStart::Artifact(model),
            Direction::Upstream,
            10,
        )
        .unwrap();
        assert_eq!(names(&up), ["clean", "model", "r0", "r1", "raw"]);
        assert_eq!(up.events.len(), 4);
        let down = subgraph(
            &state,
            LineageStart::Artifact(raw),
            Direction::Downstream,
            10,
        )
        .unwrap();
        assert_eq!(names(&down), ["clean", "model", "r0", "r1", "r2", "raw"]);
        let near = subgraph(&state, LineageStart::Run(train), Direction::Both, 1).unwrap();
        assert_eq!(names(&near), ["clean", "model", "r1"]);
        let two = subgraph(&state, LineageStart::Run(train), Direction::Upstream, 2).unwrap();
        assert_eq!(names(&two), ["clean", "r0", "r1"]);
        assert!(matches!(
            subgraph(
                &state,
                LineageStart::Artifact(ArtifactId(99)),
                Direction::Both,
                3
            ),
            Err(CatalogError::ArtifactNotFound(_))
        ));
    }

    #[test]
    fn a_subgraph_past_the_node_cap_is_refused() {
        let (mut state, runs) = state_with_runs(MAX_LINEAGE_NODES + 1);
        let shared = artifact(&mut state, "shared");
        for run_id in &runs {
            event(&mut state, shared, *run_id, EventKind::Input);
        }
        let error = subgraph(
            &state,
            LineageStart::Artifact(shared),
            Direction::Downstream,
            1,
        )
        .unwrap_err();
        assert!(error.to_string().contains("max_hops"), "{error}");
    }

    #[test]
    fn dataset_inputs_become_deduplicated_dataset_artifacts() {
        let (mut state, runs) = state_with_runs(2);
        let input = DatasetInput {
            dataset: crate::model::Dataset {
                name: "mnist".into(),
                digest: "abc".into(),
                source_type: "s3".into(),
                source: r#"{"uri": "s3://data/mnist"}"#.into(),
                schema: None,
                profile: None,
            },
            tags: BTreeMap::from([("mlflow.data.context".into(), "training".into())]),
        };
        state
            .lineage
            .record_dataset_inputs(runs[0], std::slice::from_ref(&input), 5);
        state.lineage.record_dataset_inputs(runs[1], &[input], 6);
        let artifacts: Vec<&Artifact> = state.lineage.artifacts().collect();
        assert_eq!(artifacts.len(), 1);
        assert_eq!(artifacts[0].uri, "s3://data/mnist");
        assert_eq!(artifacts[0].artifact_type, DATASET_TYPE);
        assert_eq!(artifacts[0].properties["context"], "training");
        assert_eq!(state.lineage.events().len(), 2);
        // Restricted to one run: its event and the artifact it names.
        let only = state.lineage.restricted_to(|run_id| run_id == runs[1]);
        assert_eq!(only.events().len(), 1);
        assert_eq!(only.artifacts().count(), 1);
        let none = state.lineage.restricted_to(|_| false);
        assert_eq!(none.artifacts().count(), 0);
        let described = NewArtifact {
            artifact_type: DATASET_TYPE.into(),
            name: "mnist".into(),
            uri: "elsewhere".into(),
            digest: "abc".into(),
            ..NewArtifact::default()
        };
        assert!(state.lineage.find(&described.identity()).is_some());
    }
}
