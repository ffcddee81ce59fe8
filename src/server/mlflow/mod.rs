//! The MLflow tracking REST API 2.0, under `/api/2.0/mlflow/` and
//! `/ajax-api/2.0/mlflow/`, so the official `mlflow` client works against
//! stepstore unchanged. Endpoints of MLflow's other services (model
//! registry, artifacts, traces, logged models, ...) answer a clear
//! `ENDPOINT_NOT_FOUND`.

mod experiments;
mod metrics;
mod request;
mod runs;
pub mod wire;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::Uri;
use axum::routing::{any, get, post};
use serde_json::{Value, json};

use crate::engine::{Engine, ViewType};
use crate::server::error::ApiError;
use request::{MlflowResult, invalid};

/// The prefixes the API is served under.
pub const PREFIXES: [&str; 2] = ["/api/2.0/mlflow", "/ajax-api/2.0/mlflow"];

/// Families of MLflow endpoints stepstore does not serve, with the reason
/// given to clients.
pub const UNSUPPORTED: [(&str, &str); 9] = [
    ("registered-models", "the model registry"),
    ("model-versions", "the model registry"),
    ("artifacts", "artifact storage"),
    ("traces", "tracing"),
    ("logged-models", "logged models"),
    ("gateway-proxy", "the AI gateway"),
    ("scorers", "GenAI scorers"),
    ("datasets", "evaluation datasets"),
    ("webhooks", "webhooks"),
];

/// The MLflow routes under every prefix.
pub fn routes() -> Router<Arc<Engine>> {
    let mut router = Router::new();
    for prefix in PREFIXES {
        router = router.nest(prefix, api());
    }
    router.route("/api/2.0/mlflow-artifacts/{*rest}", any(unsupported))
}

fn api() -> Router<Arc<Engine>> {
    let mut router = Router::new()
        .route("/experiments/create", post(experiments::create))
        .route("/experiments/get", get(experiments::get))
        .route("/experiments/get-by-name", get(experiments::get_by_name))
        .route(
            "/experiments/search",
            post(experiments::search_post).get(experiments::search_get),
        )
        .route("/experiments/update", post(experiments::update))
        .route("/experiments/delete", post(experiments::delete))
        .route("/experiments/restore", post(experiments::restore))
        .route(
            "/experiments/set-experiment-tag",
            post(experiments::set_tag),
        )
        .route(
            "/experiments/delete-experiment-tag",
            post(experiments::delete_tag),
        )
        .route("/runs/create", post(runs::create))
        .route("/runs/get", get(runs::get))
        .route("/runs/update", post(runs::update))
        .route("/runs/delete", post(runs::delete))
        .route("/runs/restore", post(runs::restore))
        .route("/runs/search", post(runs::search))
        .route("/runs/set-tag", post(runs::set_tag))
        .route("/runs/delete-tag", post(runs::delete_tag))
        .route("/runs/log-metric", post(runs::log_metric))
        .route("/runs/log-parameter", post(runs::log_parameter))
        .route("/runs/log-batch", post(runs::log_batch))
        .route("/runs/log-inputs", post(runs::log_inputs))
        .route("/metrics/get-history", get(metrics::get_history))
        .route("/metrics/get-history-bulk", get(metrics::get_history_bulk))
        .route(
            "/metrics/get-history-bulk-interval",
            get(metrics::get_history_bulk_interval),
        );
    for (family, _) in UNSUPPORTED {
        router = router
            .route(&format!("/{family}"), any(unsupported))
            .route(&format!("/{family}/{{*rest}}"), any(unsupported));
    }
    router
        .route("/runs/log-model", any(unsupported))
        .route("/runs/outputs", any(unsupported))
        .fallback(unknown)
}

/// A paged response: `{"<field>": [...], "next_page_token": "..."}`, with
/// the empty list and the absent token left out as protobuf JSON does.
fn page_response<T: serde::Serialize>(
    field: &str,
    items: &[T],
    next_page_token: Option<String>,
) -> Json<Value> {
    let mut response = serde_json::Map::new();
    if !items.is_empty() {
        response.insert(field.to_string(), json!(items));
    }
    if let Some(token) = next_page_token {
        response.insert("next_page_token".to_string(), json!(token));
    }
    Json(Value::Object(response))
}

/// The empty response message `{}`.
fn empty() -> Json<Value> {
    Json(json!({}))
}

/// Parses MLflow's `ViewType` (`ACTIVE_ONLY`, `DELETED_ONLY`, `ALL`).
fn view_type(text: Option<&str>, default: ViewType) -> MlflowResult<ViewType> {
    match text {
        None | Some("") => Ok(default),
        Some("ACTIVE_ONLY") | Some("1") => Ok(ViewType::ActiveOnly),
        Some("DELETED_ONLY") | Some("2") => Ok(ViewType::DeletedOnly),
        Some("ALL") | Some("3") => Ok(ViewType::All),
        Some(other) => Err(invalid(format!(
            "Invalid view type '{other}': expected one of ACTIVE_ONLY, DELETED_ONLY, ALL"
        ))),
    }
}

async fn unsupported(uri: Uri) -> ApiError {
    let path = uri.path();
    let what = UNSUPPORTED
        .iter()
        .find(|(family, _)| path.contains(&format!("/{family}")))
        .map_or("this MLflow endpoint", |(_, what)| what);
    ApiError::endpoint_not_found(format!(
        "stepstore does not implement {what} ({path}); it serves MLflow's tracking API for \
         experiments, runs, params, tags, inputs and metrics"
    ))
}

async fn unknown(uri: Uri) -> ApiError {
    ApiError::endpoint_not_found(format!(
        "no MLflow endpoint at {} (or not with this method)",
        uri.path()
    ))
}
