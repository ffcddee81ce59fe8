//! MLflow endpoints for what stepstore does not keep (the model registry,
//! logged models, traces, artifacts, the AI gateway, GenAI evaluation,
//! accounts, ...), answered as an MLflow server that holds none of them
//! answers: searches and lists are empty (`{}`, protobuf's JSON of an
//! empty answer), so the MLflow UI renders its empty states instead of
//! error banners; anything else (a get of one object, a write) is a clear
//! `ENDPOINT_NOT_FOUND` naming the feature. Also the server descriptions
//! the UI reads at start (`server-info`, `ui-telemetry`, the assistant's
//! configuration, the current user).

use axum::Json;
use axum::extract::{OriginalUri, RawQuery};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::server::error::ApiError;

/// Families of MLflow endpoints stepstore does not serve, with the feature
/// named to clients.
pub const FAMILIES: [(&str, &str); 24] = [
    ("registered-models", "the model registry"),
    ("model-versions", "the model registry"),
    ("artifacts", "artifact storage"),
    ("get-trace-artifact", "tracing"),
    ("traces", "tracing"),
    ("logged-models", "logged models"),
    ("gateway-proxy", "the AI gateway"),
    ("gateway", "the AI gateway"),
    ("scorers", "GenAI scorers"),
    ("scorer", "GenAI scorers"),
    ("datasets", "evaluation datasets"),
    ("genai", "GenAI evaluation"),
    ("issues", "GenAI issue detection"),
    ("label-schemas", "GenAI labeling"),
    ("review-queues", "GenAI labeling"),
    ("webhooks", "webhooks"),
    ("jobs", "server jobs"),
    ("skills", "skills"),
    ("mcp-servers", "MCP servers"),
    ("assistant", "the MLflow assistant"),
    ("workspaces", "workspaces"),
    ("roles", "user roles"),
    ("users", "user accounts"),
    ("prompt-optimization", "prompt optimization"),
];

/// Last path segments of endpoints that search or list: an empty server
/// answers them with nothing found.
const EMPTY_LISTINGS: [&str; 5] = ["search", "list", "metrics", "batchGet", "batchGetInfos"];

/// Collections that a `GET` of the family's own path lists.
const LISTED_COLLECTIONS: [&str; 8] = [
    "traces",
    "logged-models",
    "webhooks",
    "workspaces",
    "mcp-servers",
    "review-queues",
    "label-schemas",
    "skills",
];

/// The feature an endpoint path belongs to, if it is one stepstore does
/// not keep.
fn feature_of(path: &str) -> Option<(&'static str, &'static str)> {
    let after = path.split("/mlflow/").nth(1)?;
    let family = after.split('/').next()?;
    FAMILIES.iter().copied().find(|(name, _)| *name == family)
}

/// The answer to any endpoint of a family stepstore does not keep.
pub async fn answer(
    method: Method,
    OriginalUri(uri): OriginalUri,
    RawQuery(query): RawQuery,
) -> Response {
    let path = uri.path();
    let (family, feature) = feature_of(path).unwrap_or(("", "this MLflow endpoint"));
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let reads = method == Method::GET || method == Method::POST;
    if family == "gateway-proxy"
        && method == Method::GET
        && query
            .as_deref()
            .is_some_and(|query| query.contains("endpoints"))
    {
        // The gateway's endpoint list, which the runs page reads.
        return Json(json!({ "endpoints": [] })).into_response();
    }
    if reads && EMPTY_LISTINGS.contains(&last) && family != "users" {
        return Json(json!({})).into_response();
    }
    if method == Method::GET && last == family && LISTED_COLLECTIONS.contains(&family) {
        return Json(json!({})).into_response();
    }
    ApiError::endpoint_not_found(format!(
        "stepstore does not implement {feature} ({path}); it serves MLflow's tracking API for \
         experiments, runs, params, tags, inputs and metrics"
    ))
    .into_response()
}

/// `GET ajax-api/3.0/mlflow/server-info`: what kind of store serves the
/// UI. Not a file store (whose deprecation banner the UI would show), and
/// the gateway is off.
pub async fn server_info() -> Json<Value> {
    Json(json!({
        "store_type": "stepstore",
        "workspaces_enabled": false,
        "trace_archival_enabled": false,
        "multipart_uploads_enabled": false,
        "multipart_downloads_enabled": false,
        "features_enabled": { "gateway": false },
    }))
}

/// `GET ajax-api/3.0/mlflow/ui-telemetry`: the UI sends no telemetry.
pub async fn ui_telemetry_config() -> Json<Value> {
    Json(json!({
        "disable_ui_events": [],
        "disable_ui_telemetry": true,
        "ui_rollout_percentage": 0,
    }))
}

/// `POST ajax-api/3.0/mlflow/ui-telemetry`: accepted and dropped.
pub async fn ui_telemetry_events() -> Json<Value> {
    Json(json!({}))
}

/// `GET ajax-api/3.0/mlflow/assistant/config`: no assistant configured.
pub async fn assistant_config() -> Json<Value> {
    Json(json!({ "providers": {}, "projects": {}, "remote_access_allowed": false }))
}

/// `GET ajax-api/3.0/mlflow/assistant/providers`: no provider available.
pub async fn assistant_providers() -> Json<Value> {
    Json(json!({ "providers": [] }))
}

/// `GET ajax-api/2.0/mlflow/users/current`: no signed-in user (the UI then
/// shows no account menu, as with MLflow without its auth app).
pub async fn current_user() -> Json<Value> {
    Json(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use axum::http::Uri;

    async fn call(method: Method, path_and_query: &str) -> (u16, Value) {
        let uri: Uri = path_and_query.parse().unwrap();
        let query = uri.query().map(str::to_string);
        let response = answer(method, OriginalUri(uri), RawQuery(query)).await;
        let status = response.status().as_u16();
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn searches_and_lists_are_empty_and_the_rest_is_not_found() {
        for (method, path) in [
            (Method::GET, "/ajax-api/2.0/mlflow/registered-models/search"),
            (Method::POST, "/ajax-api/2.0/mlflow/logged-models/search"),
            (Method::POST, "/ajax-api/3.0/mlflow/traces/metrics"),
            (
                Method::GET,
                "/ajax-api/3.0/mlflow/scorers/list?experiment_id=1",
            ),
            (Method::GET, "/ajax-api/2.0/mlflow/webhooks"),
            (
                Method::GET,
                "/ajax-api/2.0/mlflow/traces?experiment_ids=1&max_results=1",
            ),
        ] {
            assert_eq!(
                call(method.clone(), path).await,
                (200, json!({})),
                "{method} {path}"
            );
        }
        let (status, body) = call(
            Method::GET,
            "/ajax-api/2.0/mlflow/gateway-proxy?gateway_path=api%2F2.0%2Fendpoints%2F",
        )
        .await;
        assert_eq!((status, body), (200, json!({"endpoints": []})));
        for (method, path) in [
            (Method::POST, "/api/2.0/mlflow/model-versions/create"),
            (Method::GET, "/api/2.0/mlflow/registered-models/get?name=x"),
            (Method::DELETE, "/ajax-api/2.0/mlflow/webhooks/1"),
            (Method::GET, "/ajax-api/2.0/mlflow/users/list"),
        ] {
            let (status, body) = call(method.clone(), path).await;
            assert_eq!(status, 404, "{method} {path}");
            assert_eq!(body["error_code"], "ENDPOINT_NOT_FOUND");
        }
        let (_, body) = call(Method::GET, "/api/2.0/mlflow/registered-models/get").await;
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("the model registry"),
            "{body}"
        );
    }
}
