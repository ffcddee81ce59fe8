//! The MLflow tracking REST API 2.0, under `/api/2.0/mlflow/` and
//! `/ajax-api/2.0/mlflow/`, so the official `mlflow` client works against
//! stepstore unchanged, and what the MLflow web UI calls besides it:
//! `/graphql`, MLflow 3's `server-info` and `ui-telemetry`. Endpoints of
//! MLflow's other services (model registry, artifacts, traces, logged
//! models, ...) answer as an MLflow server holding none of them: empty
//! searches and lists, `ENDPOINT_NOT_FOUND` for the rest (`absent`).

mod absent;
mod artifacts;
mod experiments;
mod graphql;
mod metrics;
mod request;
mod runs;
pub mod wire;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::OriginalUri;
use axum::http::Uri;
use axum::routing::{any, get, post};
use serde_json::{Value, json};

use crate::engine::{Engine, ViewType};
use crate::server::error::ApiError;
use request::{MlflowResult, invalid};

/// The prefixes the tracking API is served under.
pub const PREFIXES: [&str; 2] = ["/api/2.0/mlflow", "/ajax-api/2.0/mlflow"];

/// The prefixes of MLflow 3's own endpoints (server description, UI
/// telemetry, and the GenAI features stepstore answers as absent).
pub const V3_PREFIXES: [&str; 2] = ["/api/3.0/mlflow", "/ajax-api/3.0/mlflow"];

/// The MLflow routes under every prefix, and `/graphql`.
pub fn routes() -> Router<Arc<Engine>> {
    let mut router = Router::new();
    for prefix in PREFIXES {
        router = router.nest(prefix, api());
    }
    for prefix in V3_PREFIXES {
        router = router.nest(prefix, api_v3());
    }
    router
        .route("/graphql", get(graphql::get).post(graphql::post))
        .route("/api/2.0/mlflow-artifacts/{*rest}", any(artifact_service))
}

/// The families of endpoints stepstore answers as an empty server would,
/// each at its own path and below it.
fn absent_families(mut router: Router<Arc<Engine>>) -> Router<Arc<Engine>> {
    for (family, _) in absent::FAMILIES {
        router = router
            .route(&format!("/{family}"), any(absent::answer))
            .route(&format!("/{family}/{{*rest}}"), any(absent::answer));
    }
    router
}

fn api_v3() -> Router<Arc<Engine>> {
    let router = Router::new()
        .route("/server-info", get(absent::server_info))
        .route(
            "/ui-telemetry",
            get(absent::ui_telemetry_config).post(absent::ui_telemetry_events),
        )
        .route("/assistant/config", get(absent::assistant_config))
        .route("/assistant/providers", get(absent::assistant_providers));
    absent_families(router).fallback(unknown)
}

fn api() -> Router<Arc<Engine>> {
    let router = Router::new()
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
        .route(
            "/experiments/search-datasets",
            post(experiments::search_datasets_post),
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
        )
        .route("/artifacts/list", get(artifacts::list_get))
        .route("/users/current", get(absent::current_user));
    absent_families(router)
        .route("/runs/log-model", any(absent::answer))
        .route("/runs/outputs", any(absent::answer))
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

/// `/api/2.0/mlflow-artifacts/*`: MLflow's artifact service.
async fn artifact_service(uri: Uri) -> ApiError {
    ApiError::endpoint_not_found(format!(
        "stepstore does not implement artifact storage ({}); it stores metrics, params and \
         tags, not files",
        uri.path()
    ))
}

async fn unknown(OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::endpoint_not_found(format!(
        "no MLflow endpoint at {} (or not with this method)",
        uri.path()
    ))
}
