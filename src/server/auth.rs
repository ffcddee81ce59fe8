//! The trust boundary: one axum layer, in front of every route, that
//! decides what scope a request needs ([`requirement`]), reads its
//! credentials (`Authorization: Bearer <token>`, or Basic with the token
//! as password, as the MLflow client and browsers send them), and either
//! answers 401 `UNAUTHENTICATED` (with a `WWW-Authenticate` challenge, so
//! a browser shows its sign-in prompt) or 403 `PERMISSION_DENIED`, or
//! hands the request on with its [`Principal`] in the extensions. Tokens
//! are never logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::error::ApiError;
use crate::auth::{AuthMode, Principal, Scope, TokenStore};
use crate::engine::Engine;

/// The principal a request acts as, for handlers: the auth layer puts it
/// in every routed request (unrestricted when auth is off).
#[derive(Clone, Debug)]
pub struct Access(pub Principal);

impl std::ops::Deref for Access {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Access)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL_ERROR",
                    "the request reached a handler without passing the auth layer",
                )
            })
    }
}

/// The realm browsers show in their sign-in prompt.
const REALM: &str = "Basic realm=\"stepstore\", charset=\"UTF-8\"";

/// Authentication settings of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthSettings {
    /// Whether requests must authenticate.
    pub mode: AuthMode,
    /// Whether `/metrics` is served without a token.
    pub metrics_public: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            mode: AuthMode::Off,
            metrics_public: false,
        }
    }
}

/// Counters of refused requests, for `/metrics`.
#[derive(Debug, Default)]
pub struct AuthCounters {
    /// Requests without valid credentials (401).
    pub unauthenticated: AtomicU64,
    /// Requests whose token lacks the scope or the experiment (403).
    pub forbidden: AtomicU64,
}

/// What a request needs to be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Nothing: served to anyone.
    Open,
    /// A token with this scope (or a wider one).
    Scope(Scope),
}

/// MLflow endpoints that delete or restore (admin).
const MLFLOW_ADMIN: [&str; 4] = [
    "experiments/delete",
    "experiments/restore",
    "runs/delete",
    "runs/restore",
];

/// POST endpoints that only read (read scope): searches and queries.
const READ_POSTS: [&str; 4] = [
    "/api/v1/sql",
    "/api/v1/scalars",
    "/graphql",
    "/ui-telemetry",
];

/// The scope a request needs, from its method and path alone.
pub fn requirement(method: &Method, path: &str, metrics_public: bool) -> Requirement {
    if path == "/health" {
        return Requirement::Open;
    }
    if path == "/metrics" && metrics_public {
        return Requirement::Open;
    }
    // The dashboard's own files hold no data (they are in the binary);
    // the page asks for a token itself and sends it with every API call.
    if path == "/ui" || path.starts_with("/ui/") {
        return Requirement::Open;
    }
    if path == "/api/v1/tokens" || path.starts_with("/api/v1/tokens/") {
        return Requirement::Scope(Scope::Admin);
    }
    if path.starts_with("/api/v1/admin/") {
        return Requirement::Scope(Scope::Admin);
    }
    if let Some((_, endpoint)) = path.split_once("/mlflow/") {
        if MLFLOW_ADMIN.contains(&endpoint) {
            return Requirement::Scope(Scope::Admin);
        }
        if method == Method::POST && is_mlflow_read(endpoint) {
            return Requirement::Scope(Scope::Read);
        }
    }
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        let segments: Vec<&str> = rest.split('/').collect();
        let whole_resource = matches!(segments.as_slice(), ["experiments" | "runs", _]);
        let restore = matches!(segments.as_slice(), ["experiments" | "runs", _, "restore"]);
        if (method == Method::DELETE && whole_resource) || (method == Method::POST && restore) {
            return Requirement::Scope(Scope::Admin);
        }
    }
    if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
        return Requirement::Scope(Scope::Read);
    }
    if method == Method::POST && READ_POSTS.iter().any(|read| path.ends_with(read)) {
        return Requirement::Scope(Scope::Read);
    }
    Requirement::Scope(Scope::Write)
}

/// MLflow POST endpoints that only read.
fn is_mlflow_read(endpoint: &str) -> bool {
    let last = endpoint.rsplit('/').next().unwrap_or("");
    matches!(
        last,
        "search" | "search-datasets" | "list" | "metrics" | "batchGet" | "batchGetInfos"
    ) || endpoint == "ui-telemetry"
}

/// The token a request presents: `Bearer <token>`, or Basic with the token
/// as the password (any user name).
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (kind, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    if kind.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_string());
    }
    if kind.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD.decode(credentials).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

/// State of the auth layer.
#[derive(Clone)]
pub struct AuthLayerState {
    /// The engine (its token store).
    pub engine: Arc<Engine>,
    /// The settings.
    pub settings: AuthSettings,
    /// Refusal counters.
    pub counters: Arc<AuthCounters>,
}

impl AuthLayerState {
    fn tokens(&self) -> &TokenStore {
        self.engine.tokens()
    }
}

fn unauthenticated(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
    response
}

/// The layer: checks the request and passes it on with its principal.
pub async fn authenticate(
    State(state): State<AuthLayerState>,
    mut request: Request,
    next: Next,
) -> Response {
    if state.settings.mode == AuthMode::Off {
        request.extensions_mut().insert(Principal::unrestricted());
        return next.run(request).await;
    }
    let needed = requirement(
        request.method(),
        request.uri().path(),
        state.settings.metrics_public,
    );
    let Requirement::Scope(scope) = needed else {
        return next.run(request).await;
    };
    let principal = match presented_token(request.headers()) {
        None => {
            state
                .counters
                .unauthenticated
                .fetch_add(1, Ordering::Relaxed);
            return unauthenticated(
                "This server requires a token: send `Authorization: Bearer <token>` (the MLflow \
                 client sends MLFLOW_TRACKING_TOKEN so), or Basic credentials with the token as \
                 the password",
            );
        }
        Some(token) => match state.tokens().verify(&token) {
            Some(principal) => principal,
            None => {
                state
                    .counters
                    .unauthenticated
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    path = request.uri().path(),
                    "refused a request with an unknown or revoked token"
                );
                return unauthenticated("The token is not valid (unknown or revoked)");
            }
        },
    };
    if !principal.allows(scope) {
        state.counters.forbidden.fetch_add(1, Ordering::Relaxed);
        tracing::info!(token = %principal.name, needed = %scope, path = request.uri().path(), "refused a request beyond its token's scope");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            format!(
                "Token '{}' has scope {}; {} {} needs scope {scope}",
                principal.name,
                principal.scope,
                request.method(),
                request.uri().path()
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(method: Method, path: &str) -> Requirement {
        requirement(&method, path, false)
    }

    #[test]
    fn every_route_family_needs_the_scope_the_issue_gives_it() {
        use Requirement::{Open, Scope as S};
        let cases = [
            (Method::GET, "/health", Open),
            (Method::GET, "/metrics", S(Scope::Read)),
            (Method::GET, "/api/v1/runs/abc", S(Scope::Read)),
            (Method::POST, "/api/v1/sql", S(Scope::Read)),
            (Method::POST, "/api/v1/scalars", S(Scope::Read)),
            (Method::POST, "/graphql", S(Scope::Read)),
            (Method::POST, "/api/2.0/mlflow/runs/search", S(Scope::Read)),
            (
                Method::POST,
                "/ajax-api/2.0/mlflow/experiments/search",
                S(Scope::Read),
            ),
            (
                Method::POST,
                "/ajax-api/2.0/mlflow/logged-models/search",
                S(Scope::Read),
            ),
            (
                Method::POST,
                "/ajax-api/3.0/mlflow/ui-telemetry",
                S(Scope::Read),
            ),
            (
                Method::POST,
                "/api/2.0/mlflow/runs/log-batch",
                S(Scope::Write),
            ),
            (
                Method::POST,
                "/api/2.0/mlflow/experiments/create",
                S(Scope::Write),
            ),
            (Method::POST, "/api/v1/ingest", S(Scope::Write)),
            (Method::POST, "/api/v1/runs/abc/metrics", S(Scope::Write)),
            (Method::PATCH, "/api/v1/runs/abc", S(Scope::Write)),
            (Method::DELETE, "/api/v1/runs/abc/tags/x", S(Scope::Write)),
            (
                Method::DELETE,
                "/api/v1/experiments/1/tags/x",
                S(Scope::Write),
            ),
            (Method::DELETE, "/api/v1/runs/abc", S(Scope::Admin)),
            (Method::DELETE, "/api/v1/experiments/1", S(Scope::Admin)),
            (Method::POST, "/api/v1/runs/abc/restore", S(Scope::Admin)),
            (
                Method::POST,
                "/api/2.0/mlflow/experiments/delete",
                S(Scope::Admin),
            ),
            (
                Method::POST,
                "/ajax-api/2.0/mlflow/runs/restore",
                S(Scope::Admin),
            ),
            (Method::GET, "/api/v1/tokens", S(Scope::Admin)),
            (Method::POST, "/api/v1/admin/gc", S(Scope::Admin)),
            (Method::DELETE, "/api/v1/tokens/ci", S(Scope::Admin)),
            (Method::GET, "/", S(Scope::Read)),
            (
                Method::GET,
                "/static-files/static/js/main.js",
                S(Scope::Read),
            ),
            (Method::GET, "/ui/", Open),
            (Method::GET, "/ui/js/main.js", Open),
        ];
        for (method, path, expected) in cases {
            assert_eq!(needs(method.clone(), path), expected, "{method} {path}");
        }
        assert_eq!(requirement(&Method::GET, "/metrics", true), Open);
    }

    #[test]
    fn bearer_and_basic_credentials_are_read() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(presented_token(&headers).as_deref(), Some("abc"));
        let basic = format!("Basic {}", STANDARD.encode("anyone:secret:with:colons"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&basic).unwrap(),
        );
        assert_eq!(
            presented_token(&headers).as_deref(),
            Some("secret:with:colons")
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert_eq!(presented_token(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Digest x"));
        assert_eq!(presented_token(&headers), None);
    }
}
