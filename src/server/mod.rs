//! The HTTP server (axum): routes, operational endpoints, and serving with
//! graceful shutdown. Handlers only translate requests for the engine.

pub mod auth;
pub mod connection;
pub(crate) mod continuity;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod hygiene;
pub mod ingest;
pub(crate) mod lineage;
pub mod mlflow;
pub mod mlflow_ui;
pub mod native;
mod retention;
pub mod scalars;
pub mod sql;
pub mod static_files;
pub mod tensorboard;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;

use crate::engine::Engine;
use crate::query::{QueryConfig, QueryService};
use error::ApiError;

/// Server settings that are not the engine's.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest request body accepted, in bytes.
    pub max_request_bytes: usize,
    /// Limits of SQL queries (`POST /api/v1/sql`).
    pub sql: QueryConfig,
    /// The MLflow UI build served at `/` (`--mlflow-ui`), if any.
    pub mlflow_ui: Option<Arc<mlflow_ui::MlflowUi>>,
    /// Whether and how requests authenticate.
    pub auth: auth::AuthSettings,
    /// Allowed host names, CORS origins.
    pub hygiene: hygiene::HygieneSettings,
    /// Open connections and HTTP timeouts.
    pub connections: connection::ConnectionLimits,
    /// Live streams open at once (`--max-streams`).
    pub max_streams: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_request_bytes: 64 << 20,
            sql: QueryConfig::default(),
            mlflow_ui: None,
            auth: auth::AuthSettings::default(),
            hygiene: hygiene::HygieneSettings::default(),
            connections: connection::ConnectionLimits::default(),
            max_streams: 256,
        }
    }
}

/// Counters of the HTTP layer, shown on `/metrics`.
#[derive(Debug)]
pub struct ServerCounters {
    /// Refused credentials and scopes.
    pub auth: Arc<auth::AuthCounters>,
    /// Connections and timeouts.
    pub connections: Arc<connection::ConnectionCounters>,
    /// Live streams.
    pub streams: Arc<scalars::StreamSlots>,
}

impl ServerCounters {
    fn new(config: &ServerConfig) -> Self {
        ServerCounters {
            auth: Arc::default(),
            connections: Arc::default(),
            streams: Arc::new(scalars::StreamSlots::new(config.max_streams.max(1))),
        }
    }
}

/// Every route of the server, behind the hygiene and auth layers.
pub fn router(engine: Arc<Engine>, config: &ServerConfig) -> Router {
    router_with_counters(engine, config, Arc::new(ServerCounters::new(config)))
}

fn router_with_counters(
    engine: Arc<Engine>,
    config: &ServerConfig,
    counters: Arc<ServerCounters>,
) -> Router {
    let metrics_counters = Arc::clone(&counters);
    let mut routes = Router::new()
        .route("/health", get(health))
        .route(
            "/metrics",
            get(move |State(engine): State<Arc<Engine>>| {
                prometheus_metrics(engine, Arc::clone(&metrics_counters))
            }),
        )
        .merge(native::routes())
        .merge(ingest::routes())
        .merge(lineage::routes())
        .merge(continuity::routes())
        .merge(retention::routes())
        .merge(mlflow::routes())
        .merge(scalars::routes(Arc::clone(&counters.streams)))
        .merge(tensorboard::routes())
        .merge(tokens::routes());
    match QueryService::new(Arc::clone(&engine), config.sql.clone()) {
        Ok(service) => routes = routes.merge(sql::routes(Arc::new(service))),
        Err(error) => tracing::error!(%error, "SQL is unavailable: cannot start the query service"),
    }
    routes = routes.merge(dashboard::routes(dashboard::DashboardFiles::from_env()));
    if let Some(ui) = &config.mlflow_ui {
        routes = routes.merge(mlflow_ui::routes(Arc::clone(ui)));
    }
    let auth_state = auth::AuthLayerState {
        engine: Arc::clone(&engine),
        settings: config.auth,
        counters: Arc::clone(&counters.auth),
    };
    routes
        .fallback(unknown_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_request_bytes))
        .layer(axum::middleware::from_fn_with_state(
            auth_state,
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(config.hygiene.clone()),
            hygiene::check,
        ))
        .with_state(engine)
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish
/// (within the connection limits' grace period).
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let counters = Arc::new(ServerCounters::new(&config));
    let live = Arc::clone(engine.live());
    let routes = router_with_counters(engine, &config, Arc::clone(&counters));
    // Live streams never end by themselves: told first, they send their
    // last event and close, so the grace period is not spent on them.
    let shutdown = async move {
        shutdown.await;
        live.close();
    };
    connection::serve(
        listener,
        routes,
        config.connections,
        Arc::clone(&counters.connections),
        shutdown,
    )
    .await
}

/// `GET /health`: `{"status": "ok"}`, or `{"status": "degraded",
/// "problems": [...]}` while writes cannot be made durable (reads are still
/// served, so the status stays 200).
async fn health(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    let problems = engine.health_problems();
    if problems.is_empty() {
        axum::Json(json!({ "status": "ok" }))
    } else {
        axum::Json(json!({ "status": "degraded", "problems": problems }))
    }
}

async fn prometheus_metrics(engine: Arc<Engine>, counters: Arc<ServerCounters>) -> Response {
    let connections = &counters.connections;
    let streams = &counters.streams;
    let extra = [
        (
            "auth_unauthenticated",
            "Requests refused for missing or invalid credentials (401)",
            counters.auth.unauthenticated.load(Ordering::Relaxed),
        ),
        (
            "auth_forbidden",
            "Requests refused because the token lacks the scope or experiment (403)",
            counters.auth.forbidden.load(Ordering::Relaxed),
        ),
        (
            "connections_accepted",
            "Connections accepted and served",
            connections.accepted.load(Ordering::Relaxed),
        ),
        (
            "connections_refused",
            "Connections refused with 503 because --max-connections were open",
            connections.refused.load(Ordering::Relaxed),
        ),
        (
            "header_timeouts",
            "Connections closed because request headers did not arrive within --header-timeout",
            connections.header_timeouts.load(Ordering::Relaxed),
        ),
        (
            "body_timeouts",
            "Requests answered 408 because their body paused longer than --body-timeout",
            connections.body_timeouts.load(Ordering::Relaxed),
        ),
        (
            "write_timeouts",
            "Connections closed because the client read nothing of an answer for --body-timeout",
            connections.write_timeouts.load(Ordering::Relaxed),
        ),
        (
            "streams_opened",
            "Live streams (/api/v1/runs/{id}/stream) opened",
            streams.opened.load(Ordering::Relaxed),
        ),
        (
            "streams_refused",
            "Live streams refused with 503 because --max-streams were open",
            streams.refused.load(Ordering::Relaxed),
        ),
    ];
    let gauges = [
        (
            "connections_open",
            "HTTP connections open now",
            connections.open.load(Ordering::Relaxed),
        ),
        (
            "streams_open",
            "Live streams open now",
            streams.open() as u64,
        ),
    ];
    match crate::observability::render(engine.telemetry(), &extra, &gauges) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "cannot render metrics",
        )
        .into_response(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "ENDPOINT_NOT_FOUND",
        format!("{} does not accept {method}", uri.path()),
    )
}

async fn unknown_endpoint(uri: Uri) -> ApiError {
    ApiError::endpoint_not_found(format!("no endpoint at {}", uri.path()))
}
