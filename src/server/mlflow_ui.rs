//! The official MLflow web UI, served from the user's installed `mlflow`
//! wheel (`mlflow/server/js/build/`), as MLflow's own server serves it:
//! `index.html` at `/`, the build's files under `/static-files/` with a
//! 28-day cache lifetime (their names carry content hashes). The files are
//! never copied into stepstore; `--mlflow-ui auto` finds them through
//! `python3`, or the build directory is named.

use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;
use super::static_files::{self, Asset, CachePolicy, IMMUTABLE_MAX_AGE_SECS};

/// Where the MLflow UI's build comes from (`--mlflow-ui auto|PATH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MlflowUiSource {
    /// The `mlflow` package that `python3` on the `PATH` imports.
    Auto,
    /// A build directory (the one holding `index.html` and `static/`).
    Path(PathBuf),
}

impl std::str::FromStr for MlflowUiSource {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(if text == "auto" {
            MlflowUiSource::Auto
        } else {
            MlflowUiSource::Path(PathBuf::from(text))
        })
    }
}

/// Why the MLflow UI cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MlflowUiError {
    /// `python3` could not be run.
    #[error("--mlflow-ui auto runs python3 to find the mlflow package, and it cannot be run")]
    NoPython(#[source] std::io::Error),
    /// `python3` runs but finds no `mlflow` package.
    #[error(
        "--mlflow-ui auto: python3 finds no mlflow package. Install the UI with `pip install \
         mlflow` (the full package: mlflow-skinny ships without it) for the python3 on the \
         PATH, or give the build directory: --mlflow-ui /path/to/site-packages/mlflow/server/js/build"
    )]
    NoPackage,
    /// The package is there but has no UI build (`mlflow-skinny`).
    #[error(
        "the mlflow package at {package} has no UI build ({build} has no index.html; \
         mlflow-skinny ships without it): `pip install mlflow` installs the full package"
    )]
    NoBuildInPackage {
        /// The package directory.
        package: PathBuf,
        /// Where the build was looked for.
        build: PathBuf,
    },
    /// A named directory that is not an MLflow UI build.
    #[error(
        "--mlflow-ui {0}: not an MLflow UI build (no index.html there); give the \
         mlflow/server/js/build directory of an installed mlflow package, or `auto`"
    )]
    NotABuild(PathBuf),
    /// The build directory cannot be read.
    #[error("cannot read the MLflow UI build at {path}")]
    Unreadable {
        /// The build directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// A located MLflow UI build.
#[derive(Debug)]
pub struct MlflowUi {
    /// The build directory, canonical.
    root: PathBuf,
    /// The version of the `mlflow` package it belongs to, when known.
    version: Option<String>,
}

/// The script `auto` runs: prints the `mlflow` package's directory
/// without importing the package (which would need its dependencies).
const FIND_PACKAGE: &str = "import importlib.util\n\
spec = importlib.util.find_spec('mlflow')\n\
locations = list(spec.submodule_search_locations or []) if spec else []\n\
print(locations[0] if locations else '')\n";

impl MlflowUi {
    /// Finds the build `source` names and checks that it is one.
    pub fn locate(source: &MlflowUiSource) -> Result<MlflowUi, MlflowUiError> {
        match source {
            MlflowUiSource::Auto => {
                let output = Command::new("python3")
                    .args(["-c", FIND_PACKAGE])
                    .output()
                    .map_err(MlflowUiError::NoPython)?;
                let package = String::from_utf8_lossy(&output.stdout).trim().to_string();
                if !output.status.success() || package.is_empty() {
                    return Err(MlflowUiError::NoPackage);
                }
                let package = PathBuf::from(package);
                let build = package.join("server").join("js").join("build");
                if !build.join("index.html").is_file() {
                    return Err(MlflowUiError::NoBuildInPackage { package, build });
                }
                MlflowUi::at(&build)
            }
            MlflowUiSource::Path(path) => {
                if !path.join("index.html").is_file() {
                    return Err(MlflowUiError::NotABuild(path.clone()));
                }
                MlflowUi::at(path)
            }
        }
    }

    fn at(build: &Path) -> Result<MlflowUi, MlflowUiError> {
        let root = build
            .canonicalize()
            .map_err(|source| MlflowUiError::Unreadable {
                path: build.to_path_buf(),
                source,
            })?;
        let version = root
            .ancestors()
            .nth(3)
            .and_then(|package| std::fs::read_to_string(package.join("version.py")).ok())
            .and_then(|text| parse_version(&text));
        Ok(MlflowUi { root, version })
    }

    /// The build directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `mlflow` version the build ships with, when it can be read.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The file a `/static-files/` path names, if it stays inside the
    /// build.
    fn file(&self, relative: &str) -> Option<PathBuf> {
        let relative = Path::new(relative);
        if relative.as_os_str().is_empty()
            || !relative
                .components()
                .all(|component| matches!(component, Component::Normal(_)))
        {
            return None;
        }
        let path = self.root.join(relative).canonicalize().ok()?;
        path.starts_with(&self.root).then_some(path)
    }
}

/// `VERSION = "3.18.0"` in `mlflow/version.py`.
fn parse_version(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("VERSION")?.trim_start();
        let value = value.strip_prefix('=')?.trim();
        Some(value.trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

/// The UI's routes: `/` and `/static-files/*`.
pub fn routes<S>(ui: Arc<MlflowUi>) -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/static-files/{*path}", get(static_file))
        .with_state(ui)
}

async fn index(State(ui): State<Arc<MlflowUi>>, method: Method, headers: HeaderMap) -> Response {
    let path = ui.root.join("index.html");
    serve_file(
        &path,
        "index.html",
        CachePolicy::Revalidate,
        method,
        &headers,
    )
    .await
}

async fn static_file(
    State(ui): State<Arc<MlflowUi>>,
    UrlPath(relative): UrlPath<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match ui.file(&relative) {
        Some(path) => {
            serve_file(
                &path,
                &relative,
                CachePolicy::MaxAge(IMMUTABLE_MAX_AGE_SECS),
                method,
                &headers,
            )
            .await
        }
        None => not_found(&relative),
    }
}

fn not_found(relative: &str) -> Response {
    ApiError::endpoint_not_found(format!("the MLflow UI build has no file {relative}"))
        .into_response()
}

async fn serve_file(
    path: &Path,
    name: &str,
    cache: CachePolicy,
    method: Method,
    headers: &HeaderMap,
) -> Response {
    let head_only = method == Method::HEAD;
    let file = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let metadata = std::fs::metadata(&file)?;
        if !metadata.is_file() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        let bytes = if head_only {
            Vec::new()
        } else {
            std::fs::read(&file)?
        };
        Ok((static_files::etag_of_metadata(&metadata), bytes))
    })
    .await;
    let (etag, bytes) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(error)) => {
            tracing::debug!(path = %path.display(), %error, "cannot read an MLflow UI file");
            return not_found(name);
        }
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "reading an MLflow UI file failed");
            return not_found(name);
        }
    };
    let asset = Asset {
        body: Body::from(bytes),
        content_type: static_files::content_type(&path.to_string_lossy()),
        etag,
        cache,
    };
    static_files::respond(headers, head_only, asset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> (tempfile::TempDir, MlflowUi) {
        let dir = tempfile::tempdir().unwrap();
        let package = dir.path().join("mlflow");
        let build = package.join("server/js/build");
        std::fs::create_dir_all(build.join("static/js")).unwrap();
        std::fs::write(build.join("index.html"), "<html></html>").unwrap();
        std::fs::write(build.join("static/js/main.1.js"), "1").unwrap();
        std::fs::write(
            package.join("version.py"),
            "import re\n\nVERSION = \"3.18.0\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("secret"), "no").unwrap();
        let ui = MlflowUi::locate(&MlflowUiSource::Path(build)).unwrap();
        (dir, ui)
    }

    #[test]
    fn a_build_directory_is_found_with_its_version() {
        let (_dir, ui) = build();
        assert_eq!(ui.version(), Some("3.18.0"));
        assert!(ui.file("static/js/main.1.js").is_some());
    }

    #[test]
    fn paths_outside_the_build_are_refused() {
        let (_dir, ui) = build();
        for path in [
            "../../../../secret",
            "/etc/passwd",
            "static/../../x",
            "",
            "static/js/none.js",
        ] {
            assert!(ui.file(path).is_none(), "{path}");
        }
    }

    #[test]
    fn a_directory_without_index_html_is_not_a_build() {
        let dir = tempfile::tempdir().unwrap();
        let error = MlflowUi::locate(&MlflowUiSource::Path(dir.path().to_path_buf())).unwrap_err();
        assert!(matches!(error, MlflowUiError::NotABuild(_)), "{error}");
        assert!(error.to_string().contains("index.html"));
    }

    #[test]
    fn versions_are_read_from_version_py() {
        assert_eq!(parse_version("VERSION = '2.22.4'\n"), Some("2.22.4".into()));
        assert_eq!(parse_version("x = 1\n"), None);
    }
}
