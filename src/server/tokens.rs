//! The token admin API (admin scope, enforced by the auth layer):
//! - `GET /api/v1/tokens`: every token (name, scope, experiments, id,
//!   creation time; never a secret);
//! - `POST /api/v1/tokens` `{"name", "scope", "experiments": [ids]}`:
//!   makes a token and answers it once, in `token`;
//! - `DELETE /api/v1/tokens/{name}`: revokes it at once.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::routing::{delete, get};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::auth::Access;
use super::error::ApiError;
use super::extract::{experiment_id, json_body};
use crate::auth::{Scope, TokenRecord};
use crate::engine::Engine;

type ApiResult<T> = Result<T, ApiError>;

/// The token routes.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{name}", delete(revoke))
}

/// A token as the API shows it.
#[derive(Serialize)]
struct TokenView {
    name: String,
    id: String,
    scope: Scope,
    /// Empty: every experiment.
    experiments: Vec<String>,
    created: i64,
}

impl From<&TokenRecord> for TokenView {
    fn from(record: &TokenRecord) -> Self {
        TokenView {
            name: record.name.clone(),
            id: record.id.clone(),
            scope: record.scope,
            experiments: record.experiments.iter().map(ToString::to_string).collect(),
            created: record.created,
        }
    }
}

async fn list(State(engine): State<Arc<Engine>>, access: Access) -> ApiResult<Json<Value>> {
    access.check_unlimited("manage tokens")?;
    let tokens: Vec<TokenView> = engine.tokens().list().iter().map(TokenView::from).collect();
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(Deserialize)]
struct CreateToken {
    name: String,
    scope: String,
    #[serde(default)]
    experiments: Vec<String>,
}

async fn create(
    State(engine): State<Arc<Engine>>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    access.check_unlimited("manage tokens")?;
    let request: CreateToken = json_body(body)?;
    let scope: Scope = request
        .scope
        .parse()
        .map_err(|error| ApiError::native(&error))?;
    let mut experiments = Vec::with_capacity(request.experiments.len());
    for text in &request.experiments {
        let id = experiment_id(text)?;
        engine.experiment(id)?;
        experiments.push(id);
    }
    let (record, token) = engine
        .tokens()
        .create(&request.name, scope, experiments)
        .map_err(|error| ApiError::native(&error))?;
    tracing::info!(name = %record.name, scope = %record.scope, "token created");
    let mut answer = serde_json::to_value(TokenView::from(&record)).unwrap_or_else(|_| json!({}));
    answer["token"] = json!(token);
    Ok(Json(answer))
}

async fn revoke(
    State(engine): State<Arc<Engine>>,
    access: Access,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    access.check_unlimited("manage tokens")?;
    let record = engine
        .tokens()
        .revoke(&name)
        .map_err(|error| ApiError::native(&error))?;
    tracing::info!(name = %record.name, "token revoked");
    Ok(Json(json!({ "revoked": record.name })))
}
