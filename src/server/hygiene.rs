//! Request hygiene, before authentication and routing:
//! - a request that changes state (`POST`, `PUT`, `PATCH`, and `DELETE`
//!   with a body) must declare a JSON or bulk-ingest `Content-Type`, else
//!   415: a web page on another site can send `text/plain` or form bodies
//!   without the browser asking first, but not JSON;
//! - the `Host` header must name this server (`--allowed-hosts`), else
//!   403: a DNS name rebound to this address cannot drive it from a
//!   browser;
//! - CORS stays off (no cross-origin reads) unless `--cors-origin` names
//!   origins; those get the `Access-Control-Allow-*` headers, and their
//!   preflight requests are answered here.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Media types a state-changing request may declare.
pub const ACCEPTED_BODY_TYPES: [&str; 5] = [
    "application/json",
    "application/x-ndjson",
    "application/jsonl",
    "application/json-seq",
    "application/vnd.apache.arrow.stream",
];

/// Which `Host` names the server answers for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AllowedHosts {
    /// Any name (`--allowed-hosts '*'`).
    #[default]
    Any,
    /// These names, plus any IP address literal when `any_address` is set
    /// (a server listening on every interface answers on each of its
    /// addresses, which it cannot list; a rebound DNS name is never an
    /// address literal).
    Names {
        /// Lower-case host names without port.
        names: Vec<String>,
        /// Whether any IP address literal is allowed too.
        any_address: bool,
    },
}

impl AllowedHosts {
    /// The default for a server listening on `listen`: its own address,
    /// `localhost`, `127.0.0.1` and `::1`; when listening on every address
    /// (`0.0.0.0`, `::`), `localhost` and any IP address.
    pub fn default_for(listen: std::net::SocketAddr) -> Self {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|host| host.to_string())
            .collect();
        let any_address = listen.ip().is_unspecified();
        if !any_address {
            names.push(listen.ip().to_string());
        }
        AllowedHosts::Names { names, any_address }
    }

    /// The setting for `--allowed-hosts` values: empty gives the default
    /// for `listen`, `*` allows any name.
    pub fn from_flag(values: &[String], listen: std::net::SocketAddr) -> Self {
        if values.is_empty() {
            return Self::default_for(listen);
        }
        if values.iter().any(|value| value.trim() == "*") {
            return AllowedHosts::Any;
        }
        AllowedHosts::Names {
            names: values.iter().map(|value| host_name(value)).collect(),
            any_address: false,
        }
    }

    /// Whether a request naming `host` (already passed through
    /// [`host_name`]) is answered.
    fn allows(&self, host: &str) -> bool {
        match self {
            AllowedHosts::Any => true,
            AllowedHosts::Names { names, any_address } => {
                names.iter().any(|name| name == host)
                    || (*any_address && host.parse::<std::net::IpAddr>().is_ok())
            }
        }
    }
}

/// Hygiene settings of the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HygieneSettings {
    /// Host names requests may name.
    pub allowed_hosts: AllowedHosts,
    /// Origins allowed to read across origins (`*` for any).
    pub cors_origins: Vec<String>,
}

/// The host name of a `Host` header value, without port or brackets,
/// lower-cased.
fn host_name(value: &str) -> String {
    let value = value.trim();
    let name = if let Some(rest) = value.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        value.rsplit_once(':').map_or(value, |(name, port)| {
            if port.bytes().all(|byte| byte.is_ascii_digit()) {
                name
            } else {
                value
            }
        })
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a state-changing request declares an accepted body type.
fn declares_accepted_body(method: &Method, headers: &HeaderMap) -> bool {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase());
    match content_type {
        Some(media) => ACCEPTED_BODY_TYPES.contains(&media.as_str()),
        // A DELETE without a body needs no type (it cannot be sent across
        // sites without the browser's preflight anyway).
        None => {
            *method == Method::DELETE
                && headers
                    .get(header::CONTENT_LENGTH)
                    .is_none_or(|length| length == "0")
                && headers.get(header::TRANSFER_ENCODING).is_none()
        }
    }
}

fn changes_state(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The `Access-Control-Allow-Origin` value for `origin`, if allowed.
fn allowed_origin(settings: &HygieneSettings, origin: &str) -> Option<HeaderValue> {
    if settings.cors_origins.iter().any(|allowed| allowed == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    settings
        .cors_origins
        .iter()
        .any(|allowed| allowed.trim_end_matches('/') == origin)
        .then(|| HeaderValue::from_str(origin).ok())
        .flatten()
}

/// The layer.
pub async fn check(
    State(settings): State<Arc<HygieneSettings>>,
    request: Request,
    next: Next,
) -> Response {
    if settings.allowed_hosts != AllowedHosts::Any {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .map(host_name)
            .or_else(|| request.uri().host().map(host_name))
            .unwrap_or_default();
        if !settings.allowed_hosts.allows(&host) {
            tracing::info!(host = %host, "refused a request for another host name");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                format!(
                    "this server does not answer for host '{host}'; start it with \
                     --allowed-hosts {host} (or add it to the list) to allow it"
                ),
            )
            .into_response();
        }
    }
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let cors = origin
        .as_deref()
        .and_then(|origin| allowed_origin(&settings, origin));
    // A CORS preflight from an allowed origin is answered here (it carries
    // no credentials, so it must not reach the auth layer).
    if request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        && let Some(allow) = &cors
    {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow.clone());
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
        return response;
    }
    if changes_state(request.method())
        && !declares_accepted_body(request.method(), request.headers())
    {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "INVALID_PARAMETER_VALUE",
            format!(
                "{} {} needs a body declared as application/json (or, for bulk ingest, \
                 application/x-ndjson or application/vnd.apache.arrow.stream): send \
                 `Content-Type: application/json`",
                request.method(),
                request.uri().path()
            ),
        )
        .into_response();
    }
    let mut response = next.run(request).await;
    if let Some(allow) = cors {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn only_declared_json_or_bulk_bodies_change_state() {
        let json = headers(&[(header::CONTENT_TYPE, "application/json; charset=utf-8")]);
        assert!(declares_accepted_body(&Method::POST, &json));
        let arrow = headers(&[(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")]);
        assert!(declares_accepted_body(&Method::POST, &arrow));
        for refused in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            let map = headers(&[(header::CONTENT_TYPE, refused)]);
            assert!(!declares_accepted_body(&Method::POST, &map), "{refused}");
        }
        assert!(!declares_accepted_body(&Method::POST, &HeaderMap::new()));
        assert!(declares_accepted_body(&Method::DELETE, &HeaderMap::new()));
        let body = headers(&[(header::CONTENT_LENGTH, "12")]);
        assert!(!declares_accepted_body(&Method::DELETE, &body));
    }

    #[test]
    fn host_names_lose_their_port_and_brackets() {
        assert_eq!(host_name("LocalHost:5000"), "localhost");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("[::1]:5000"), "::1");
        assert_eq!(host_name("example.com."), "example.com");
    }

    #[test]
    fn default_hosts_follow_the_listen_address() {
        let listen: std::net::SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let allowed = AllowedHosts::default_for(listen);
        for host in ["10.1.2.3", "localhost", "127.0.0.1", "::1"] {
            assert!(allowed.allows(host), "{host}");
        }
        assert!(!allowed.allows("10.1.2.4"));
        assert!(!allowed.allows("attacker.example.com"));
        let everywhere = AllowedHosts::default_for("0.0.0.0:5000".parse().unwrap());
        assert!(everywhere.allows("10.9.8.7"));
        assert!(everywhere.allows("fe80::1"));
        assert!(everywhere.allows("localhost"));
        assert!(!everywhere.allows("attacker.example.com"));
        let named = AllowedHosts::from_flag(&["Tracking.Example.com:443".into()], listen);
        assert!(named.allows("tracking.example.com"));
        assert!(!named.allows("localhost"));
        assert_eq!(
            AllowedHosts::from_flag(&["*".into()], listen),
            AllowedHosts::Any
        );
        assert_eq!(AllowedHosts::from_flag(&[], listen), allowed);
    }

    #[test]
    fn only_named_origins_are_allowed() {
        let settings = HygieneSettings {
            allowed_hosts: AllowedHosts::Any,
            cors_origins: vec!["https://dash.example.com".into()],
        };
        assert!(allowed_origin(&settings, "https://dash.example.com").is_some());
        assert!(allowed_origin(&settings, "https://evil.example.com").is_none());
        assert!(allowed_origin(&HygieneSettings::default(), "https://dash.example.com").is_none());
    }
}
