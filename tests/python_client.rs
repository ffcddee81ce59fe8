//! The Python client (`clients/python`, the checked-out source) against a
//! freshly started server: runs its pytest suite with `STEPSTORE_URL`
//! pointing at the server and `STEPSTORE_BINARY` at the built binary (for
//! the tests that stop and restart a server of their own).
//!
//! The suite runs twice: with the test virtual environment
//! (`STEPSTORE_PYTHON`: pyarrow, numpy, Hydra) and with a bare interpreter
//! (`STEPSTORE_PYTHON_BARE`, prepared by `scripts/test.sh`: the oldest
//! supported Python when available, no pyarrow, so the columnar JSON
//! transport), skipped with a message when either is not set.
//!
//! `STEPSTORE_PYTEST_ARGS` (split on whitespace) is appended to the pytest
//! command line, e.g. `-k spool` to run a subset while developing.

mod common;

use std::time::Duration;

use common::{TestServer, assert_pytest_passed, python_or_skip, run_pytest, tail};

/// The longest the whole pytest session may take before it is killed.
const PYTEST_DEADLINE: Duration = Duration::from_secs(10 * 60);

#[test]
fn python_client_logs_retries_spools_and_syncs() {
    let Some(python) = python_or_skip("python_client_logs_retries_spools_and_syncs") else {
        return;
    };
    run_client_tests(&python, "the Python client tests");
}

#[test]
fn python_client_works_without_its_optional_packages() {
    let Some(python) = std::env::var_os("STEPSTORE_PYTHON_BARE") else {
        eprintln!(
            "skipping python_client_works_without_its_optional_packages: STEPSTORE_PYTHON_BARE is \
             not set (./scripts/test.sh prepares a bare interpreter)"
        );
        return;
    };
    run_client_tests(
        std::path::Path::new(&python),
        "the Python client tests without pyarrow",
    );
}

fn run_client_tests(python: &std::path::Path, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
    let run = run_pytest(
        python,
        "clients/python/tests",
        &[
            ("STEPSTORE_URL", &server.base_url),
            ("STEPSTORE_BINARY", env!("CARGO_BIN_EXE_stepstore")),
            ("PYTHONPATH", source),
        ],
        PYTEST_DEADLINE,
    );
    assert_pytest_passed(&run, what, &tail(&server.stop(), 200));
}
