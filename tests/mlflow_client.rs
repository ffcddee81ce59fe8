//! The official MLflow Python client (mlflow-skinny, from the virtual
//! environment the test command prepares), unchanged, against the server's
//! MLflow tracking REST API: runs `tests/python/test_mlflow_client.py` with
//! pytest, `MLFLOW_TRACKING_URI` pointing at a freshly started server.
//!
//! `STEPSTORE_PYTEST_ARGS` (split on whitespace) is appended to the pytest
//! command line, e.g. `-k search` to run a subset while developing.

mod common;

use std::time::Duration;

use common::{TestServer, assert_pytest_passed, python_or_skip, run_pytest, tail};

/// The longest the whole pytest session may take before it is killed.
const PYTEST_DEADLINE: Duration = Duration::from_secs(20 * 60);

#[test]
fn official_mlflow_client_works_against_the_tracking_api() {
    let Some(python) = python_or_skip("official_mlflow_client_works_against_the_tracking_api")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let run = run_pytest(
        &python,
        "tests/python/test_mlflow_client.py",
        &[("MLFLOW_TRACKING_URI", &server.base_url)],
        PYTEST_DEADLINE,
    );
    assert_pytest_passed(&run, "the MLflow client tests", &tail(&server.stop(), 200));
}
