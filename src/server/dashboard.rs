//! stepstore's own dashboard at `/ui`: the files under `ui/` in the
//! repository, compiled into the binary (see `build.rs`), served with
//! entity tags so a browser revalidates instead of downloading again. The
//! page talks only to this server's APIs.
//!
//! For work on the dashboard itself, `STEPSTORE_UI_DIR` names a directory
//! to serve the files from instead (edits show on reload, no rebuild).

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::error::ApiError;
use super::static_files::{self, Asset, CachePolicy};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));
}

/// Where the dashboard's files come from.
#[derive(Clone, Debug)]
pub enum DashboardFiles {
    /// Compiled into the binary.
    Embedded,
    /// Read from a directory at each request (development).
    Directory(PathBuf),
}

impl DashboardFiles {
    /// The files `STEPSTORE_UI_DIR` names, or the embedded ones.
    pub fn from_env() -> DashboardFiles {
        match std::env::var_os("STEPSTORE_UI_DIR") {
            Some(dir) if !dir.is_empty() => DashboardFiles::Directory(PathBuf::from(dir)),
            _ => DashboardFiles::Embedded,
        }
    }
}

/// The embedded files' entity tags, computed once.
fn embedded_etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        embedded::ASSETS
            .iter()
            .map(|(_, bytes)| static_files::etag_of_bytes(bytes))
            .collect()
    })
}

/// Whether `relative` is a plain relative path (no `..`, no root).
fn is_plain(relative: &str) -> bool {
    !relative.is_empty()
        && Path::new(relative)
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
}

/// The dashboard's routes: `/ui` (the page) and `/ui/*` (its files).
pub fn routes<S>(files: DashboardFiles) -> Router<S> {
    Router::new()
        .route("/ui", get(to_index))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(file))
        .with_state(Arc::new(files))
}

/// `/ui` -> `/ui/` (so the page's relative URLs resolve under it), query
/// kept.
async fn to_index(RawQuery(query): RawQuery) -> Redirect {
    match query {
        Some(query) => Redirect::permanent(&format!("/ui/?{query}")),
        None => Redirect::permanent("/ui/"),
    }
}

async fn index(
    State(files): State<Arc<DashboardFiles>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    serve(&files, "index.html", &method, &headers).await
}

async fn file(
    State(files): State<Arc<DashboardFiles>>,
    UrlPath(path): UrlPath<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    serve(&files, &path, &method, &headers).await
}

async fn serve(
    files: &DashboardFiles,
    relative: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let not_found = || {
        ApiError::endpoint_not_found(format!("the dashboard has no file {relative}"))
            .into_response()
    };
    if !is_plain(relative) {
        return not_found();
    }
    let head_only = method == Method::HEAD;
    let (bytes, etag) = match files {
        DashboardFiles::Embedded => {
            let Some(index) = embedded::ASSETS
                .iter()
                .position(|(path, _)| *path == relative)
            else {
                return not_found();
            };
            let bytes = embedded::ASSETS[index].1;
            (Body::from(bytes), embedded_etags()[index].clone())
        }
        DashboardFiles::Directory(dir) => {
            let path = dir.join(relative);
            match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
                Ok(Ok(bytes)) => {
                    let etag = static_files::etag_of_bytes(&bytes);
                    (Body::from(bytes), etag)
                }
                _ => return not_found(),
            }
        }
    };
    let asset = Asset {
        body: if head_only { Body::empty() } else { bytes },
        content_type: static_files::content_type(relative),
        etag,
        cache: CachePolicy::Revalidate,
    };
    static_files::respond(headers, head_only, asset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_compiled_in() {
        assert!(
            embedded::ASSETS
                .iter()
                .any(|(path, _)| *path == "index.html"),
            "ui/index.html is not embedded"
        );
        assert_eq!(embedded_etags().len(), embedded::ASSETS.len());
    }

    #[test]
    fn only_plain_relative_paths_are_served() {
        assert!(is_plain("app.js"));
        assert!(is_plain("vendor/uPlot.iife.min.js"));
        for path in ["", "../Cargo.toml", "/etc/passwd", "a/../../b"] {
            assert!(!is_plain(path), "{path}");
        }
    }
}
