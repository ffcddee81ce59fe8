//! The official MLflow Python client (mlflow-skinny, from the virtual
//! environment the test command prepares), unchanged, against the server's
//! MLflow tracking REST API: runs `tests/python/test_mlflow_client.py` with
//! pytest, `MLFLOW_TRACKING_URI` pointing at a freshly started server.
//!
//! `STEPSTORE_PYTEST_ARGS` (split on whitespace) is appended to the pytest
//! command line, e.g. `-k search` to run a subset while developing.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;

/// The longest the whole pytest session may take before it is killed.
const PYTEST_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// The Python interpreter with mlflow-skinny and pytest, set up by
/// `scripts/test.sh`.
fn python() -> PathBuf {
    match std::env::var_os("STEPSTORE_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "STEPSTORE_PYTHON is not set: run the tests with ./scripts/test.sh, which prepares \
             a virtual environment with mlflow-skinny and pytest"
        ),
    }
}

/// Reads a child's pipe to the end on its own thread.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[test]
fn official_mlflow_client_works_against_the_tracking_api() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let extra_args: Vec<String> = std::env::var("STEPSTORE_PYTEST_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();

    let mut child = Command::new(&python)
        .current_dir(&root)
        .args(["-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider"])
        .arg("tests/python/test_mlflow_client.py")
        .args(&extra_args)
        .env("MLFLOW_TRACKING_URI", &server.base_url)
        // Fail fast instead of retrying for minutes on a 5xx answer.
        .env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        .env("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        .env_remove("MLFLOW_ENABLE_ASYNC_LOGGING")
        .env_remove("MLFLOW_EXPERIMENT_NAME")
        .env_remove("MLFLOW_EXPERIMENT_ID")
        .env_remove("MLFLOW_RUN_ID")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("GIT_PYTHON_REFRESH", "quiet")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", python.display()));
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > PYTEST_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    // Shown even if stopping the server fails below.
    eprintln!("{stdout}\n{stderr}");
    let server_log = tail(&server.stop(), 200);

    match status {
        None => panic!(
            "pytest did not finish within {PYTEST_DEADLINE:?}:\n{stdout}\n{stderr}\n\
             --- server log (last lines) ---\n{server_log}"
        ),
        Some(status) if !status.success() => panic!(
            "the MLflow client tests failed ({status}):\n{stdout}\n{stderr}\n\
             --- server log (last lines) ---\n{server_log}"
        ),
        Some(_) => assert!(stdout.contains(" passed"), "{stdout}"),
    }
}

/// The last `lines` lines of a log.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
