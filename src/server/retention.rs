//! Retention over HTTP: `POST /api/v1/admin/gc` removes for good the runs
//! and experiments deleted more than `older_than` ago (see
//! [`crate::engine::retention`]). It only reports unless `dry_run` is
//! `false`. Admin tokens limited to experiments may not call it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;

use super::auth::Access;
use super::error::ApiError;
use super::extract::json_body;
use crate::engine::Engine;
use crate::engine::retention::GcReport;

/// The retention routes.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new().route("/api/v1/admin/gc", post(gc))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GcRequest {
    /// Deleted at least this long ago, e.g. `30d`, `12h` (default: any).
    older_than: Option<String>,
    /// Only report (default: true).
    dry_run: Option<bool>,
}

async fn gc(
    State(engine): State<Arc<Engine>>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<GcReport>, ApiError> {
    access.check_unlimited("run gc")?;
    let request: GcRequest = json_body(body)?;
    let older_than = match request.older_than.as_deref() {
        None => Duration::ZERO,
        Some(text) => humantime::parse_duration(text).map_err(|error| {
            ApiError::invalid(format!(
                "older_than must be a duration such as 30d or 12h, got {text:?}: {error}"
            ))
        })?,
    };
    let report = engine
        .gc(older_than, request.dry_run.unwrap_or(true))
        .await?;
    Ok(Json(report))
}
