//! Artifact endpoints, answered as an MLflow server whose runs have no
//! artifacts answers them: stepstore keeps metrics, params and tags, not
//! files. `artifacts/list` of a run gives its root URI and no files (so
//! the UI's artifact pane shows an empty tree, not an error); uploads and
//! downloads stay `ENDPOINT_NOT_FOUND`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use serde::Deserialize;
use serde_json::{Value, json};

use super::request::{MlflowResult, query, required_run_id};
use crate::auth::Principal;
use crate::engine::Engine;
use crate::server::auth::Access;

#[derive(Deserialize, Default)]
pub(super) struct ListArtifacts {
    run_id: Option<String>,
    run_uuid: Option<String>,
}

/// `GET artifacts/list`.
pub(super) async fn list_get(
    State(engine): State<Arc<Engine>>,
    access: Access,
    uri: Uri,
) -> MlflowResult<Json<Value>> {
    Ok(Json(list(&engine, &access, query(&uri)?)?))
}

/// `artifacts/list`'s answer for a run: its root URI, no files.
pub(super) fn list(
    engine: &Engine,
    principal: &Principal,
    request: ListArtifacts,
) -> MlflowResult<Value> {
    let run_id = required_run_id(&request.run_id, &request.run_uuid)?;
    let run = engine.run_for(principal, run_id)?;
    Ok(json!({ "root_uri": run.artifact_uri }))
}
