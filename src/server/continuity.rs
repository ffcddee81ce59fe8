//! Run continuity over HTTP: `POST /api/v1/runs/{id}/rewind {"step": N}`
//! hides the points the run logged so far with a step past `N` (MLflow
//! clients do the same by setting the tag `stepstore.rewind_to_step`);
//! the JSON of forks (`POST /api/v1/runs` with `fork_from` is in
//! [`super::native`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::auth::Access;
use super::error::ApiError;
use super::extract::{json_body, run_id};
use crate::catalog::continuity::{FORK_RUN_TAG, FORK_STEP_TAG, Fork, Rewind};
use crate::engine::Engine;
use crate::model::RunId;

type ApiResult<T> = Result<T, ApiError>;
type EngineState = State<Arc<Engine>>;

/// The continuity routes.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new().route("/api/v1/runs/{run_id}/rewind", post(rewind_run))
}

/// A rewind as JSON.
#[derive(Serialize)]
pub struct RewindJson {
    /// The step rewound to.
    pub step: i64,
    /// When, ms since the epoch.
    pub time: i64,
}

impl From<&Rewind> for RewindJson {
    fn from(rewind: &Rewind) -> Self {
        RewindJson {
            step: rewind.step,
            time: rewind.time,
        }
    }
}

/// Where a new run is forked from (`fork_from` of `POST /api/v1/runs`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkFrom {
    /// The parent run.
    pub run_id: String,
    /// The parent's step the fork starts after.
    pub step: i64,
}

/// How a run was forked, as JSON.
#[derive(Serialize)]
pub struct ForkJson {
    /// The parent run.
    pub run_id: String,
    /// The parent's step the fork starts after.
    pub step: i64,
    /// When, ms since the epoch.
    pub time: i64,
}

impl From<&Fork> for ForkJson {
    fn from(fork: &Fork) -> Self {
        ForkJson {
            run_id: fork.parent.to_string(),
            step: fork.step,
            time: fork.time,
        }
    }
}

/// The fork that the tags of an MLflow `runs/create` ask for
/// ([`FORK_RUN_TAG`] and [`FORK_STEP_TAG`]), if they ask for one.
pub fn fork_from_tags<'a>(
    mut tags: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<Option<(RunId, i64)>, ApiError> {
    let (mut parent, mut step) = (None, None);
    for (key, value) in tags.by_ref() {
        match key {
            FORK_RUN_TAG => parent = Some(value),
            FORK_STEP_TAG => step = Some(value),
            _ => {}
        }
    }
    match (parent, step) {
        (None, None) => Ok(None),
        (Some(parent), Some(step)) => {
            let step = step.trim().parse::<i64>().map_err(|_| {
                ApiError::invalid(format!(
                    "tag {FORK_STEP_TAG} must be a whole step number, got {step:?}"
                ))
            })?;
            Ok(Some((run_id(parent.trim())?, step)))
        }
        _ => Err(ApiError::invalid(format!(
            "a fork needs both tags {FORK_RUN_TAG} and {FORK_STEP_TAG}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RewindRequest {
    step: i64,
}

#[derive(Serialize)]
struct RewindResponse {
    run_id: String,
    rewinds: Vec<RewindJson>,
}

async fn rewind_run(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<RewindResponse>> {
    let id = run_id(&id)?;
    engine.check_run_access(&access, id)?;
    let request: RewindRequest = json_body(body)?;
    let rewinds = engine.rewind_run(id, request.step).await?;
    Ok(Json(RewindResponse {
        run_id: id.to_string(),
        rewinds: rewinds.iter().map(RewindJson::from).collect(),
    }))
}
