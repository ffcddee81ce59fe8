//! The dashboard at `/ui` in a real browser: starts the server on a
//! temporary data directory and runs `tests/python/test_dashboard.py`
//! (Selenium driving Debian's headless chromium) against it. The Python
//! side loads its data through the server's APIs and checks every feature
//! of the page: the runs table, curves that keep a spike of a
//! million-point series, zoom that refetches, smoothing, NaN and infinity
//! markers, live growth over the event stream with a resumed connection,
//! the SQL console, the run page, deep links and the API token.
//! Screenshots go to `<CARGO_TARGET_TMPDIR>/dashboard`.
//!
//! Skipped (with a message, not a failure) when `STEPSTORE_PYTHON` is not
//! set or chromium / chromedriver are missing: `./scripts/test.sh` sets up
//! both. `STEPSTORE_PYTEST_ARGS` (split on whitespace) is appended to the
//! pytest command line, e.g. `-k live`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{TestServer, assert_pytest_passed, browser_or_skip, run_pytest, tail};

/// The longest the browser tests may take before they are stopped.
const DEADLINE: Duration = Duration::from_secs(10 * 60);

#[test]
fn the_dashboard_works_in_a_browser() {
    let Some(python) = browser_or_skip("the_dashboard_works_in_a_browser") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let shots = shots.display().to_string();
    let started = std::time::Instant::now();
    let run = run_pytest(
        &python,
        "tests/python/test_dashboard.py",
        &[
            ("STEPSTORE_URL", &server.base_url),
            ("MLFLOW_TRACKING_URI", &server.base_url),
            ("STEPSTORE_SHOTS", &shots),
        ],
        DEADLINE,
    );
    eprintln!("screenshots in {shots} ({:.0?})", started.elapsed());
    assert_pytest_passed(
        &run,
        "the dashboard browser tests",
        &tail(&server.stop(), 200),
    );
}
