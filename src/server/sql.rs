//! `POST /api/v1/sql`: runs one read-only SQL statement.
//!
//! The body is `{"query": "...", "format": "json|csv|arrow|table"}`
//! (`format` optional). Without `format`, the `Accept` header decides:
//! `application/vnd.apache.arrow.stream` gives an Arrow IPC stream,
//! `text/csv` CSV, anything else JSON rows. A bad or refused query is a
//! 400 with DataFusion's (or the safety check's) message; a query over its
//! memory or time limit is a 400 naming the limit, and the server keeps
//! serving.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Extension;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use super::auth::Access;
use super::error::ApiError;
use super::extract::json_body;
use crate::engine::Engine;
use crate::query::output::OutputFormat;
use crate::query::{QueryError, QueryService};

/// The SQL route, served by `service`.
pub fn routes(service: Arc<QueryService>) -> Router<Arc<Engine>> {
    Router::new()
        .route("/api/v1/sql", post(run_sql))
        .layer(Extension(service))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    query: String,
    #[serde(default)]
    format: Option<String>,
}

async fn run_sql(
    Extension(service): Extension<Arc<QueryService>>,
    access: Access,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: SqlRequest = json_body(body)?;
    let format = match &request.format {
        Some(name) => name.parse::<OutputFormat>().map_err(ApiError::invalid)?,
        None => OutputFormat::from_accept(
            headers
                .get(header::ACCEPT)
                .and_then(|value| value.to_str().ok())
                .unwrap_or(""),
        ),
    };
    // A token limited to experiments queries tables holding only those.
    let encoded = service
        .execute_encoded(&request.query, access.experiments.clone(), format)
        .await
        .map_err(sql_error)?;
    Ok(([(header::CONTENT_TYPE, format.media_type())], encoded).into_response())
}

/// The HTTP error for a failed query.
pub fn sql_error(error: QueryError) -> ApiError {
    match &error {
        QueryError::Refused(_) | QueryError::Invalid(_) => ApiError::invalid(error.to_string()),
        QueryError::MemoryLimit { .. } | QueryError::ResultTooLarge { .. } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "RESOURCE_EXHAUSTED",
            error.to_string(),
        ),
        QueryError::TimeLimit(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "DEADLINE_EXCEEDED",
            error.to_string(),
        ),
        _ => ApiError::native(&error),
    }
}
