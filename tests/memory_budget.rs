//! Memory stays within the buffer budget while 10,000 runs log at once:
//! `stepstore bench` drives a server with a small budget, every write is
//! accepted (writes wait for room instead of failing), every acknowledged
//! point is counted by the server, and both the server's own accounting and
//! the process's peak resident memory stay within the budget (plus the
//! process's fixed cost).

mod common;

use common::{TestServer, run_bench};

const MIB: u64 = 1 << 20;
const BUDGET_MIB: u64 = 24;
const FOOTER_CACHE_MIB: u64 = 4;
const RUNS: u64 = 10_000;

#[test]
fn ten_thousand_runs_log_at_once_within_the_buffer_budget() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &[
            "--buffer-budget-mb",
            &BUDGET_MIB.to_string(),
            "--footer-cache-mb",
            &FOOTER_CACHE_MIB.to_string(),
        ],
    );
    let idle_rss = server.peak_rss_bytes();
    let runs = RUNS.to_string();
    // Enough load to pass the budget: 28 bytes a point at the least, more
    // than the budget could hold. A slow or busy machine gets there in more
    // rounds (each a new set of 10,000 runs), not in a failure.
    let enough_points = 1.5 * (BUDGET_MIB * MIB) as f64 / 28.0;
    let (mut points, mut rounds) = (0.0, 0u64);
    let mut report = serde_json::Value::Null;
    while points <= enough_points {
        assert!(rounds < 8, "too little load to test the budget: {report}");
        report = run_bench(&[
            "--target",
            &server.base_url,
            "--protocol",
            "columnar",
            "--runs",
            &runs,
            "--runs-per-request",
            "50",
            "--keys",
            "20",
            "--steps-per-request",
            "10",
            "--concurrency",
            "4",
            "--duration",
            "8s",
        ]);
        assert_eq!(report["errors"], 0, "no write refused: {report}");
        points += report["points"].as_f64().unwrap();
        rounds += 1;
    }
    assert_eq!(
        server.metric("stepstore_points_ingested_total"),
        points,
        "{report}"
    );
    // Buffers left memory: the small buffers of these runs are spilled
    // together rather than written to files of their own.
    assert!(server.metric("stepstore_points_spilled_total") > 0.0);
    assert!(server.metric("stepstore_spill_files_written_total") > 0.0);

    // The server's accounting of buffers (allocated capacity) stays within
    // the budget, but for the growth of the last buffers written to.
    let budget = (BUDGET_MIB * MIB) as f64;
    let peak_buffers = server.metric("stepstore_buffer_bytes_peak");
    assert!(
        peak_buffers <= budget * 1.25,
        "buffers peaked at {peak_buffers} bytes over a {budget}-byte budget"
    );
    // And so does the process: its peak resident memory grows by the
    // budget, the footer cache, each run's catalog entry and key summaries
    // (about 7 KiB a run with 20 keys) and the working space of file writes
    // and requests in flight; not by what was ingested.
    let allowed =
        BUDGET_MIB * MIB + FOOTER_CACHE_MIB * MIB * 5 / 4 + rounds * RUNS * 8 * 1024 + 48 * MIB;
    let grown = server.peak_rss_bytes().saturating_sub(idle_rss);
    println!(
        "peak RSS grew by {} MiB of {} MiB allowed; buffers peaked at {:.0} MiB",
        grown / MIB,
        allowed / MIB,
        peak_buffers / MIB as f64
    );
    assert!(
        grown <= allowed,
        "peak RSS grew by {} MiB, more than the {} MiB allowed ({BUDGET_MIB} MiB budget, \
         {points} points)",
        grown / MIB,
        allowed / MIB
    );
}
