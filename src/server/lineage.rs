//! Lineage over HTTP: artifacts (`/api/v1/artifacts`), the inputs and
//! outputs of a run (`/api/v1/runs/{id}/inputs`, `/outputs`) and the
//! subgraph query (`GET /api/v1/lineage`, shaped as Vertex AI's
//! `queryArtifactLineageSubgraph`: `{artifacts, runs, events}`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Access;
use super::error::ApiError;
use super::extract::{json_body, run_id};
use crate::catalog::lineage::{ArtifactRef, Direction, LineageStart, Subgraph};
use crate::engine::{ArtifactFilter, Engine};
use crate::model::lineage::{Artifact, ArtifactId, EventKind, LineageEvent, NewArtifact};
use crate::model::{PARENT_RUN_TAG, Run};

type ApiResult<T> = Result<T, ApiError>;
type EngineState = State<Arc<Engine>>;

/// Hops a lineage query walks when `max_hops` is not given.
const DEFAULT_MAX_HOPS: usize = 10;

/// The lineage routes.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route(
            "/api/v1/artifacts",
            post(create_artifact).get(list_artifacts),
        )
        .route("/api/v1/artifacts/{artifact_id}", get(get_artifact))
        .route("/api/v1/runs/{run_id}/inputs", post(record_inputs))
        .route("/api/v1/runs/{run_id}/outputs", post(record_outputs))
        .route("/api/v1/lineage", get(lineage))
}

/// An artifact as JSON.
pub fn artifact_json(artifact: &Artifact) -> Value {
    json!({
        "artifact_id": artifact.artifact_id.to_string(),
        "type": artifact.artifact_type,
        "name": artifact.name,
        "uri": artifact.uri,
        "digest": artifact.digest,
        "properties": artifact.properties,
        "creation_time": artifact.creation_time,
    })
}

/// An event as JSON.
pub fn event_json(event: &LineageEvent) -> Value {
    json!({
        "artifact_id": event.artifact_id.to_string(),
        "run_id": event.run_id.to_string(),
        "type": event.kind.as_str(),
        "step": event.step,
        "time": event.time,
    })
}

/// A run as a lineage node: identity, context (experiment, parent run) and
/// state.
fn run_node_json(run: &Run) -> Value {
    json!({
        "run_id": run.run_id.to_string(),
        "run_name": run.run_name,
        "experiment_id": run.experiment_id.to_string(),
        "parent_run_id": run.tags.get(PARENT_RUN_TAG),
        "status": run.status,
        "start_time": run.start_time,
        "end_time": run.end_time,
        "lifecycle_stage": run.lifecycle_stage,
    })
}

fn subgraph_json(graph: &Subgraph) -> Value {
    json!({
        "artifacts": graph.artifacts.iter().map(artifact_json).collect::<Vec<_>>(),
        "runs": graph.runs.iter().map(run_node_json).collect::<Vec<_>>(),
        "events": graph.events.iter().map(event_json).collect::<Vec<_>>(),
    })
}

/// An artifact described in a request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactBody {
    #[serde(default)]
    artifact_id: Option<String>,
    #[serde(default, rename = "type")]
    artifact_type: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, Value>,
}

impl ArtifactBody {
    fn described(self) -> NewArtifact {
        NewArtifact {
            artifact_type: self.artifact_type.unwrap_or_default(),
            name: self.name.unwrap_or_default(),
            uri: self.uri.unwrap_or_default(),
            digest: self.digest.unwrap_or_default(),
            properties: self
                .properties
                .into_iter()
                .map(|(key, value)| {
                    let text = match value {
                        Value::String(text) => text,
                        other => other.to_string(),
                    };
                    (key, text)
                })
                .collect(),
        }
    }

    /// By id (and nothing else), or described.
    fn reference(self) -> ApiResult<ArtifactRef> {
        match &self.artifact_id {
            Some(id) => {
                let described = self.artifact_type.is_some()
                    || self.name.is_some()
                    || self.uri.is_some()
                    || self.digest.is_some()
                    || !self.properties.is_empty();
                if described {
                    return Err(ApiError::invalid(
                        "name an artifact either by artifact_id or by type, uri, name, digest \
                         and properties, not both",
                    ));
                }
                Ok(ArtifactRef::Id(parse_artifact_id(id)?))
            }
            None => Ok(ArtifactRef::Described(self.described())),
        }
    }
}

fn parse_artifact_id(text: &str) -> ApiResult<ArtifactId> {
    text.parse::<ArtifactId>()
        .map_err(|error| ApiError::invalid(error.to_string()))
}

async fn create_artifact(
    State(engine): EngineState,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let body: ArtifactBody = json_body(body)?;
    if body.artifact_id.is_some() {
        return Err(ApiError::invalid(
            "artifact ids are given by the server: leave artifact_id out",
        ));
    }
    let (artifact, created) = engine.create_artifact(body.described()).await?;
    Ok(Json(
        json!({ "artifact": artifact_json(&artifact), "created": created }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactQuery {
    #[serde(default, rename = "type")]
    artifact_type: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    uri: Option<String>,
}

async fn list_artifacts(
    State(engine): EngineState,
    access: Access,
    Query(query): Query<ArtifactQuery>,
) -> ApiResult<Json<Value>> {
    let filter = ArtifactFilter {
        artifact_type: query.artifact_type,
        name: query.name,
        digest: query.digest,
        uri: query.uri,
    };
    let artifacts = engine.artifacts(&access, &filter);
    Ok(Json(json!({
        "artifacts": artifacts.iter().map(artifact_json).collect::<Vec<_>>(),
    })))
}

async fn get_artifact(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (artifact, events) = engine.artifact(&access, parse_artifact_id(&id)?)?;
    Ok(Json(json!({
        "artifact": artifact_json(&artifact),
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsBody {
    artifacts: Vec<ArtifactBody>,
    #[serde(default)]
    step: Option<i64>,
}

async fn record(
    engine: &Engine,
    access: &Access,
    id: &str,
    kind: EventKind,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let run_id = run_id(id)?;
    let body: EventsBody = json_body(body)?;
    let references = body
        .artifacts
        .into_iter()
        .map(ArtifactBody::reference)
        .collect::<ApiResult<Vec<_>>>()?;
    let events = engine
        .record_lineage_events(access, run_id, kind, references, body.step)
        .await?;
    Ok(Json(json!({
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
    })))
}

async fn record_inputs(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    record(&engine, &access, &id, EventKind::Input, body).await
}

async fn record_outputs(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    record(&engine, &access, &id, EventKind::Output, body).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineageQuery {
    #[serde(default)]
    artifact: Option<String>,
    #[serde(default)]
    run: Option<String>,
    #[serde(default)]
    direction: Option<String>,
    #[serde(default)]
    max_hops: Option<usize>,
}

async fn lineage(
    State(engine): EngineState,
    access: Access,
    Query(query): Query<LineageQuery>,
) -> ApiResult<Json<Value>> {
    let start = match (&query.artifact, &query.run) {
        (Some(artifact), None) => LineageStart::Artifact(parse_artifact_id(artifact)?),
        (None, Some(run)) => LineageStart::Run(run_id(run)?),
        _ => {
            return Err(ApiError::invalid(
                "give one of artifact=ID or run=ID to start the lineage from",
            ));
        }
    };
    let direction = match query.direction.as_deref().unwrap_or("both") {
        "upstream" => Direction::Upstream,
        "downstream" => Direction::Downstream,
        "both" => Direction::Both,
        other => {
            return Err(ApiError::invalid(format!(
                "direction must be upstream, downstream or both, not '{other}'"
            )));
        }
    };
    let max_hops = query.max_hops.unwrap_or(DEFAULT_MAX_HOPS);
    let graph = engine.lineage(&access, start, direction, max_hops)?;
    Ok(Json(subgraph_json(&graph)))
}
