//! The official MLflow web UI served by stepstore (`serve --mlflow-ui`),
//! in headless Chromium: for every MLflow version `scripts/test.sh`
//! prepared (`STEPSTORE_MLFLOW_UI_ROOTS`: directories the `mlflow` wheel
//! was installed into, without its dependencies), a server is started on
//! that UI build and `tests/python/test_mlflow_ui.py` walks the flows an
//! MLflow user goes through (see there). The first version is found with
//! `--mlflow-ui auto` (through `python3` and `PYTHONPATH`), the others by
//! path. Screenshots go to `$CARGO_TARGET_TMPDIR/mlflow-ui/<version>/`.
//!
//! Also: how `--mlflow-ui` fails when there is no UI to serve, and the
//! headers the UI's files are served with.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestServer, assert_pytest_passed, browser_or_skip, run_pytest, tail};

/// The longest one version's browser session may take.
const PYTEST_DEADLINE: Duration = Duration::from_secs(10 * 60);

/// The `mlflow` package roots prepared by `scripts/test.sh`, or `None`
/// after printing why the test is skipped.
fn ui_roots(test: &str) -> Option<Vec<PathBuf>> {
    let roots: Vec<PathBuf> = std::env::var("STEPSTORE_MLFLOW_UI_ROOTS")
        .unwrap_or_default()
        .split(':')
        .filter(|root| !root.is_empty())
        .map(PathBuf::from)
        .collect();
    if roots.is_empty() {
        eprintln!(
            "SKIPPED {test}: STEPSTORE_MLFLOW_UI_ROOTS is not set. Run the tests with \
             ./scripts/test.sh, which installs the MLflow UI builds they serve."
        );
        return None;
    }
    Some(roots)
}

fn build_of(root: &Path) -> PathBuf {
    root.join("mlflow/server/js/build")
}

/// The version `pip install --target` recorded for the wheel under `root`.
fn version_of(root: &Path) -> String {
    std::fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .find_map(|name| {
            name.strip_prefix("mlflow-")?
                .strip_suffix(".dist-info")
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string())
}

#[test]
fn the_mlflow_ui_works_on_stepstore_in_a_real_browser() {
    let test = "the_mlflow_ui_works_on_stepstore_in_a_real_browser";
    let Some(python) = browser_or_skip(test) else {
        return;
    };
    let Some(roots) = ui_roots(test) else {
        return;
    };
    for (index, root) in roots.iter().enumerate() {
        let version = version_of(root);
        let dir = tempfile::tempdir().unwrap();
        let python_path = root.display().to_string();
        let build = build_of(root).display().to_string();
        let mut server = if index == 0 {
            // `auto` finds the package through python3, here on PYTHONPATH.
            TestServer::start_with_env(
                dir.path(),
                &["--mlflow-ui", "auto"],
                &[("PYTHONPATH", &python_path)],
            )
        } else {
            TestServer::start(dir.path(), &["--mlflow-ui", &build])
        };
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("mlflow-ui")
            .join(&version);
        let _ = std::fs::remove_dir_all(&shots);
        let shots = shots.display().to_string();
        eprintln!("MLflow UI {version}: screenshots in {shots}");
        let run = run_pytest(
            &python,
            "tests/python/test_mlflow_ui.py",
            &[
                ("STEPSTORE_URL", &server.base_url),
                ("MLFLOW_TRACKING_URI", &server.base_url),
                ("MLFLOW_UI_VERSION", &version),
                ("STEPSTORE_SHOTS", &shots),
            ],
            PYTEST_DEADLINE,
        );
        let server_log = tail(&server.stop(), 100);
        assert!(
            server_log.contains(&format!("version=\"{version}\"")),
            "the server did not serve MLflow UI {version}:\n{server_log}"
        );
        assert_pytest_passed(&run, &format!("the MLflow UI {version} flows"), &server_log);
    }
}

#[test]
fn the_ui_is_served_as_mlflow_serves_it() {
    let test = "the_ui_is_served_as_mlflow_serves_it";
    let Some(roots) = ui_roots(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let build = build_of(&roots[0]).display().to_string();
    let server = TestServer::start(dir.path(), &["--mlflow-ui", &build]);
    let client = reqwest::blocking::Client::new();
    let index = client.get(server.url("/")).send().unwrap();
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
    let etag = index.headers()["etag"].to_str().unwrap().to_string();
    let html = index.text().unwrap();
    let script = html
        .split("src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("index.html names its script");
    assert!(script.starts_with("static-files/"), "{script}");
    let again = client
        .get(server.url("/"))
        .header("if-none-match", &etag)
        .send()
        .unwrap();
    assert_eq!(again.status(), 304);

    let file = client
        .get(server.url(&format!("/{script}")))
        .send()
        .unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(file.headers()["cache-control"], "public, max-age=2419200");
    assert_eq!(
        file.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    for escape in [
        "/static-files/../../../../etc/passwd",
        "/static-files/%2e%2e/%2e%2e/version.py",
        "/static-files/static/js/no-such-file.js",
    ] {
        let (status, body) = server.request("GET", escape, None);
        assert_eq!(status, 404, "{escape}: {body}");
        assert_eq!(body["error_code"], "ENDPOINT_NOT_FOUND");
    }
    // The tracking API and the dashboard stay where they were.
    assert_eq!(server.get("/health")["status"], "ok");
}

#[test]
fn without_a_ui_to_serve_the_server_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-build-here");
    let exit = TestServer::start_expecting_failure(
        dir.path(),
        &["--mlflow-ui", missing.to_str().unwrap()],
    );
    assert!(!exit.success);
    assert!(
        exit.stderr.contains("not an MLflow UI build"),
        "{}",
        exit.stderr
    );

    // A package without the UI (as mlflow-skinny installs it).
    let skinny = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(skinny.path().join("mlflow")).unwrap();
    std::fs::write(skinny.path().join("mlflow/__init__.py"), "").unwrap();
    let exit = TestServer::start_expecting_failure_with_env(
        dir.path(),
        &["--mlflow-ui", "auto"],
        &[("PYTHONPATH", skinny.path().to_str().unwrap())],
    );
    assert!(exit.stderr.contains("has no UI build"), "{}", exit.stderr);
    assert!(
        exit.stderr.contains("pip install mlflow"),
        "{}",
        exit.stderr
    );

    // No mlflow package at all: a python3 that finds nothing.
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("python3");
    std::fs::write(&fake, "#!/bin/sh\necho\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exit = TestServer::start_expecting_failure_with_env(
        dir.path(),
        &["--mlflow-ui", "auto"],
        &[("PATH", bin.path().to_str().unwrap())],
    );
    assert!(
        exit.stderr.contains("finds no mlflow package"),
        "{}",
        exit.stderr
    );
    assert!(
        exit.stderr.contains("pip install mlflow"),
        "{}",
        exit.stderr
    );

    // Without the flag, / answers as before: no page there.
    let server = TestServer::start(dir.path(), &[]);
    let (status, body) = server.request("GET", "/", None);
    assert_eq!(status, 404, "{body}");
}
