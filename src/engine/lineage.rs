//! The engine's lineage calls: artifacts, the INPUT/OUTPUT events of runs
//! and the subgraph query, each durable through the WAL like any catalog
//! change and limited to what the caller's token may see.

use super::{Engine, EngineError};
use crate::auth::Principal;
use crate::catalog::CatalogState;
use crate::catalog::lineage::{self, ArtifactRef, Direction, LineageStart, Subgraph};
use crate::model::lineage::{Artifact, ArtifactId, EventKind, LineageEvent, NewArtifact};
use crate::model::{RunId, now_millis};

/// Which artifacts a listing returns.
#[derive(Clone, Debug, Default)]
pub struct ArtifactFilter {
    /// Only this type.
    pub artifact_type: Option<String>,
    /// Only this name.
    pub name: Option<String>,
    /// Only this digest.
    pub digest: Option<String>,
    /// Only this uri.
    pub uri: Option<String>,
}

impl ArtifactFilter {
    fn matches(&self, artifact: &Artifact) -> bool {
        let same =
            |wanted: &Option<String>, value: &str| wanted.as_deref().is_none_or(|w| w == value);
        same(&self.artifact_type, &artifact.artifact_type)
            && same(&self.name, &artifact.name)
            && same(&self.digest, &artifact.digest)
            && same(&self.uri, &artifact.uri)
    }
}

impl Engine {
    /// The catalog as `principal` may see it: whole, or restricted to its
    /// experiments (and the lineage of their runs).
    fn catalog_seen_by(&self, principal: &Principal) -> Option<CatalogState> {
        principal
            .experiments
            .as_ref()
            .map(|allowed| self.catalog.read().restricted_to(allowed))
    }

    /// Creates an artifact, or finds the one with the same type, name and
    /// digest; the flag tells whether it was created.
    pub async fn create_artifact(
        &self,
        described: NewArtifact,
    ) -> Result<(Artifact, bool), EngineError> {
        self.ensure_accepting()?;
        let (created, ticket) =
            self.catalog
                .create_artifact(&self.log(), described, now_millis())?;
        self.wait_durable(ticket).await?;
        Ok(created)
    }

    /// Records that a run consumed or produced artifacts (by id, or
    /// described: found or created), at `step` when given.
    pub async fn record_lineage_events(
        &self,
        principal: &Principal,
        run_id: RunId,
        kind: EventKind,
        artifacts: Vec<ArtifactRef>,
        step: Option<i64>,
    ) -> Result<Vec<LineageEvent>, EngineError> {
        self.ensure_accepting()?;
        self.check_run_access(principal, run_id)?;
        let (events, ticket) =
            self.catalog
                .record_events(&self.log(), run_id, kind, artifacts, step, now_millis())?;
        self.wait_durable(ticket).await?;
        Ok(events)
    }

    /// An artifact and its events, as `principal` may see them.
    pub fn artifact(
        &self,
        principal: &Principal,
        artifact_id: ArtifactId,
    ) -> Result<(Artifact, Vec<LineageEvent>), EngineError> {
        let restricted = self.catalog_seen_by(principal);
        let guard;
        let state = match &restricted {
            Some(state) => state,
            None => {
                guard = self.catalog.read();
                &*guard
            }
        };
        let artifact = state
            .lineage()
            .artifact(artifact_id)
            .cloned()
            .ok_or_else(|| {
                crate::catalog::CatalogError::ArtifactNotFound(artifact_id.to_string())
            })?;
        let events = state
            .lineage()
            .events_of_artifact(artifact_id)
            .cloned()
            .collect();
        Ok((artifact, events))
    }

    /// Artifacts matching `filter`, by id, as `principal` may see them.
    pub fn artifacts(&self, principal: &Principal, filter: &ArtifactFilter) -> Vec<Artifact> {
        let collect = |state: &CatalogState| {
            state
                .lineage()
                .artifacts()
                .filter(|artifact| filter.matches(artifact))
                .cloned()
                .collect()
        };
        match self.catalog_seen_by(principal) {
            Some(state) => collect(&state),
            None => collect(&self.catalog.read()),
        }
    }

    /// The lineage subgraph around an artifact or a run.
    pub fn lineage(
        &self,
        principal: &Principal,
        start: LineageStart,
        direction: Direction,
        max_hops: usize,
    ) -> Result<Subgraph, EngineError> {
        let graph = match self.catalog_seen_by(principal) {
            Some(state) => lineage::subgraph(&state, start, direction, max_hops),
            None => lineage::subgraph(&self.catalog.read(), start, direction, max_hops),
        };
        Ok(graph?)
    }
}
