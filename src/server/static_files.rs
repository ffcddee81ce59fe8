//! Responses for static web assets (the MLflow UI's files on disk and the
//! dashboard's files compiled into the binary): content types by file
//! extension, entity tags with `If-None-Match` revalidation, and cache
//! lifetimes.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// How long a browser may keep a file whose name carries its content hash
/// (28 days, as MLflow's own server serves its UI build).
pub const IMMUTABLE_MAX_AGE_SECS: u64 = 2_419_200;

/// The media type of a file, from its extension.
pub fn content_type(path: &str) -> &'static str {
    let extension = path
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "eot" => "application/vnd.ms-fontobject",
        "txt" | "md" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        "webmanifest" => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

/// How a response may be cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachePolicy {
    /// Revalidate on every use (`no-cache`): pages whose name stays the
    /// same when their content changes.
    Revalidate,
    /// Keep for this many seconds without asking.
    MaxAge(u64),
}

impl CachePolicy {
    fn header_value(self) -> HeaderValue {
        match self {
            CachePolicy::Revalidate => HeaderValue::from_static("no-cache"),
            CachePolicy::MaxAge(seconds) => {
                HeaderValue::from_str(&format!("public, max-age={seconds}"))
                    .unwrap_or_else(|_| HeaderValue::from_static("no-cache"))
            }
        }
    }
}

/// A static asset ready to be answered: its bytes, media type and entity
/// tag.
pub struct Asset {
    /// The file's bytes.
    pub body: Body,
    /// The media type (`Content-Type`).
    pub content_type: &'static str,
    /// A strong entity tag, quoted (`"..."`).
    pub etag: String,
    /// How long a browser may keep it.
    pub cache: CachePolicy,
}

/// An entity tag from a content checksum and length.
pub fn etag_of_bytes(bytes: &[u8]) -> String {
    format!("\"{:08x}-{:x}\"", crc32c::crc32c(bytes), bytes.len())
}

/// An entity tag from a file's length and modification time.
pub fn etag_of_metadata(metadata: &std::fs::Metadata) -> String {
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_nanos());
    format!("\"{:x}-{modified:x}\"", metadata.len())
}

/// Whether the request's `If-None-Match` names `etag` (or is `*`).
fn not_modified(request_headers: &HeaderMap, etag: &str) -> bool {
    request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// Answers `asset`: 304 when the request already holds this version, the
/// bytes otherwise (`HEAD` gets the headers only).
pub fn respond(request_headers: &HeaderMap, head_only: bool, asset: Asset) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, asset.cache.header_value());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if not_modified(request_headers, &asset.etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if head_only {
        return (StatusCode::OK, headers).into_response();
    }
    (StatusCode::OK, headers, asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(etag: &str) -> Asset {
        Asset {
            body: Body::from("x"),
            content_type: content_type("a.js"),
            etag: etag.to_string(),
            cache: CachePolicy::MaxAge(60),
        }
    }

    #[test]
    fn content_types_follow_extensions() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("static/js/main.1.JS"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("fonts/a.woff2"), "font/woff2");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }

    #[test]
    fn a_matching_if_none_match_gets_304_without_a_body() {
        let etag = etag_of_bytes(b"x");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"other\", W/{etag}")).unwrap(),
        );
        let response = respond(&headers, false, asset(&etag));
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], etag.as_str());
        assert!(response.headers().get(header::CONTENT_TYPE).is_none());
    }

    #[test]
    fn another_etag_gets_the_file_with_its_cache_lifetime() {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"old\""));
        let response = respond(&headers, false, asset("\"new\""));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CACHE_CONTROL],
            "public, max-age=60"
        );
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
    }

    #[test]
    fn etags_change_with_the_content() {
        assert_ne!(etag_of_bytes(b"a"), etag_of_bytes(b"b"));
        assert_eq!(etag_of_bytes(b"a"), etag_of_bytes(b"a"));
    }
}
