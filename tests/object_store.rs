//! Metric files in an object store, end to end, against a real
//! S3-compatible server (moto in server mode, from the test virtual
//! environment): files reach the store under the same Hive tree, pyarrow's
//! own S3 filesystem reads them there (row counts and values), compacted
//! inputs leave the store; a store that is down delays nothing the client
//! sees, shows in `/health` and `/metrics`, and the files go up once it is
//! back (after a restart too); a SIGKILL after the uploads loses and
//! duplicates nothing.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{Value, json};

/// The bucket the tests use.
const BUCKET: &str = "stepstore";

/// A moto S3 server on a free loopback port, stopped on drop.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    /// Starts moto with `python` and creates [`BUCKET`]; `None` (after
    /// saying why the test is skipped) when moto is not installed.
    fn start(python: &Path, test: &str) -> Option<Moto> {
        let installed = Command::new(python)
            .args(["-c", "import moto.server"])
            .output()
            .is_ok_and(|output| output.status.success());
        if !installed {
            eprintln!(
                "SKIPPED {test}: moto[server] is not installed in {} (./scripts/test.sh installs it)",
                python.display()
            );
            return None;
        }
        let port = free_port();
        let child = Command::new(python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.put(format!("{}/{BUCKET}", moto.endpoint)).send() {
                Ok(response) if response.status().is_success() => return Some(moto),
                _ if Instant::now() > deadline => panic!("moto did not start"),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// The test Python and moto's server started with it; `None` (after
/// saying why `test` is skipped) without them.
fn python_and_moto(test: &str) -> Option<(std::path::PathBuf, Moto)> {
    let python = common::python_or_skip(test)?;
    let moto = Moto::start(&python, test)?;
    Some((python, moto))
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// The credentials moto takes (any), as the standard AWS variables.
const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];

fn serve(data_dir: &Path, endpoint: &str) -> TestServer {
    serve_with(data_dir, endpoint, &[])
}

fn serve_with(data_dir: &Path, endpoint: &str, extra: &[&str]) -> TestServer {
    let store = format!("s3://{BUCKET}/team/runs");
    let mut args = vec![
        "--store",
        &store,
        "--store-endpoint",
        endpoint,
        "--flush-rows",
        "100",
        "--wal-segment-mb",
        "1",
        "--snapshot-interval",
        "0s",
    ];
    args.extend_from_slice(extra);
    TestServer::start_with_env(data_dir, &args, &AWS_ENV)
}

/// The run's points of `key` as SQL counts them: (rows, sum of values).
fn sql_count_and_sum(server: &TestServer, run: &str, key: &str) -> (f64, f64) {
    let body = server.post(
        "/api/v1/sql",
        &json!({
            "query": format!(
                "SELECT count(*) AS n, sum(value) AS total FROM metrics \
                 WHERE run_id = '{run}' AND key = '{key}'"
            )
        }),
    );
    let row = &body["rows"][0];
    (
        common::json_to_f64(&row["n"]),
        common::json_to_f64(&row["total"]),
    )
}

/// Waits until the WAL is down to `segments` segment files.
fn wait_for_wal_segments(server: &TestServer, segments: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("stepstore_wal_segments") > segments {
        assert!(Instant::now() < deadline, "the WAL was not released");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log(server: &TestServer, run: &str, steps: std::ops::Range<i64>) {
    let points: Vec<Value> = steps
        .flat_map(|step| {
            [
                json!({"key": "loss", "step": step, "value": 1.0 / (step + 1) as f64}),
                json!({"key": "acc", "step": step, "value": step as f64 / 1000.0}),
            ]
        })
        .collect();
    server.post(
        &format!("/api/v1/runs/{run}/metrics"),
        &json!({ "points": points }),
    );
}

/// Waits until no upload or delete is waiting and `uploaded` files went
/// up in all.
fn wait_for_uploads(server: &TestServer, uploaded: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = server.metric("stepstore_store_pending_files");
        let done = server.metric("stepstore_store_uploaded_files_total");
        if pending == 0.0 && done >= uploaded {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "uploads did not finish: {pending} pending, {done} uploaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What pyarrow's own S3 filesystem reads from the store's tree: per run,
/// the rows, the sum of values and the number of files.
fn read_with_pyarrow(python: &Path, endpoint: &str) -> Value {
    let script = r#"
import json, sys
import pyarrow.dataset as ds
import pyarrow.fs as fs
s3 = fs.S3FileSystem(endpoint_override=sys.argv[1], scheme="http", access_key="test",
                     secret_key="test", region="us-east-1")
dataset = ds.dataset("stepstore/team/runs/metrics", filesystem=s3, format="parquet",
                     partitioning="hive")
table = dataset.to_table()
runs = {}
for row in table.select(["run_id", "value"]).to_pylist():
    run = runs.setdefault(str(row["run_id"]), {"rows": 0, "sum": 0.0})
    run["rows"] += 1
    run["sum"] += row["value"]
for path in dataset.files:
    run = [part for part in path.split("/") if part.startswith("run_id=")][0][7:]
    runs[run]["files"] = runs[run].get("files", 0) + 1
print(json.dumps(runs))
"#;
    let output = Command::new(python)
        .args(["-c", script, endpoint])
        .output()
        .expect("run pyarrow");
    assert!(
        output.status.success(),
        "pyarrow failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("pyarrow's JSON")
}

/// The expected sum of the values of a run that logged `steps`.
fn expected_sum(steps: std::ops::Range<i64>) -> f64 {
    steps
        .map(|step| 1.0 / (step + 1) as f64 + step as f64 / 1000.0)
        .sum()
}

fn finish(server: &TestServer, run: &str) {
    let (status, body) = server.request(
        "PATCH",
        &format!("/api/v1/runs/{run}"),
        Some(&json!({"status": "FINISHED"})),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn metric_files_reach_the_store_and_pyarrow_reads_them_there() {
    let test = "metric_files_reach_the_store_and_pyarrow_reads_them_there";
    let Some((python, moto)) = python_and_moto(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &moto.endpoint);
    let finished = server.create_run("store", "finished");
    let running = server.create_run("store", "running");
    for chunk in 0..3 {
        for run in [&finished, &running] {
            log(&server, run, chunk * 100..(chunk + 1) * 100);
        }
    }
    // An ended run's files are merged into one; its inputs leave the store.
    finish(&server, &finished);
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::parquet_files(dir.path())
        .iter()
        .filter(|path| path.to_string_lossy().contains(&finished))
        .count()
        != 1
    {
        assert!(
            Instant::now() < deadline,
            "the finished run was not compacted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The running run's three files and the compacted one (its inputs may
    // have been replaced before their turn came).
    wait_for_uploads(&server, 4.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("stepstore_store_deleted_files_total") < 3.0 {
        assert!(
            Instant::now() < deadline,
            "compacted inputs stayed in the store"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let stored = read_with_pyarrow(&python, &moto.endpoint);
    for run in [&finished, &running] {
        assert_eq!(stored[run]["rows"], 600, "{stored}");
        let sum = stored[run]["sum"].as_f64().unwrap();
        assert!((sum - expected_sum(0..300)).abs() < 1e-9, "{sum}");
    }
    assert_eq!(
        stored[&finished]["files"], 1,
        "only the compacted file: {stored}"
    );
    assert_eq!(stored[&running]["files"], 3, "{stored}");
    let health = server.get("/health");
    assert_eq!(health["status"], "ok", "{health}");
}

#[test]
fn a_store_that_is_down_delays_nothing_and_catches_up_after_a_restart() {
    let test = "a_store_that_is_down_delays_nothing_and_catches_up_after_a_restart";
    let Some(python) = common::python_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port yet.
    let port = free_port();
    let down = format!("http://127.0.0.1:{port}");
    let mut server = serve(dir.path(), &down);
    let run = server.create_run("store", "down");
    let started = Instant::now();
    // Enough points for several 1 MiB WAL segments.
    for chunk in 0..8 {
        log(&server, &run, chunk * 10_000..(chunk + 1) * 10_000);
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "writes waited for the store"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = server.get("/health");
        if health["status"] == "degraded" {
            let problems = health["problems"].to_string();
            assert!(problems.contains("cannot be uploaded"), "{problems}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failing store never showed: {health}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.metric("stepstore_store_pending_files") >= 8.0);
    assert!(server.metric("stepstore_store_failed_requests_total") >= 1.0);
    assert_eq!(
        server.series(&run, "loss").0.len(),
        80_000,
        "reads do not wait"
    );
    // Checkpoints run every second, but the WAL keeps what is not in the
    // store.
    std::thread::sleep(Duration::from_secs(3));
    let segments = server.metric("stepstore_wal_segments");
    assert!(
        segments >= 2.0,
        "{segments} WAL segments for {} bytes written",
        server.metric("stepstore_wal_bytes_written_total")
    );
    // After a SIGKILL and a restart against a store that now answers,
    // every point is there once, the files go up and the WAL is released.
    server.kill();
    drop(server);
    let Some(moto) = Moto::start(&python, test) else {
        return;
    };
    let server = serve(dir.path(), &moto.endpoint);
    wait_for_uploads(&server, 8.0);
    wait_for_wal_segments(&server, 1.0);
    let (steps, _, values) = server.series(&run, "loss");
    assert_eq!(steps, (0..80_000).collect::<Vec<i64>>());
    assert_eq!(values[5], 1.0 / 6.0);
    let stored = read_with_pyarrow(&python, &moto.endpoint);
    assert_eq!(stored[&run]["rows"], 160_000, "{stored}");
    let sum = stored[&run]["sum"].as_f64().unwrap();
    assert!((sum - expected_sum(0..80_000)).abs() < 1e-6, "{sum}");
    assert_eq!(server.get("/health")["status"], "ok");
}

#[test]
fn a_sigkill_after_the_uploads_neither_loses_nor_duplicates_points() {
    let test = "a_sigkill_after_the_uploads_neither_loses_nor_duplicates_points";
    let Some((python, moto)) = python_and_moto(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &moto.endpoint);
    let run = server.create_run("store", "killed");
    for chunk in 0..4 {
        log(&server, &run, chunk * 100..(chunk + 1) * 100);
    }
    wait_for_uploads(&server, 4.0);
    // Killed before a checkpoint could release the WAL, or after: the
    // restart sees the stored files as uploaded and replays nothing twice.
    server.kill();
    server.start_again();
    wait_for_uploads(&server, 0.0);
    assert_eq!(
        server.metric("stepstore_store_uploaded_files_total"),
        0.0,
        "the stored files were recognised, not uploaded again"
    );
    let (steps, _, _) = server.series(&run, "acc");
    assert_eq!(steps, (0..400).collect::<Vec<i64>>());
    let stored = read_with_pyarrow(&python, &moto.endpoint);
    assert_eq!(stored[&run]["rows"], 800, "{stored}");
}

#[test]
fn with_no_room_in_the_cache_reads_come_from_the_store_and_a_new_disk_finds_everything() {
    let test =
        "with_no_room_in_the_cache_reads_come_from_the_store_and_a_new_disk_finds_everything";
    let Some((_python, moto)) = python_and_moto(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve_with(dir.path(), &moto.endpoint, &["--cache-mb", "0"]);
    let run = server.create_run("store", "evicted");
    for chunk in 0..5 {
        log(&server, &run, chunk * 100..(chunk + 1) * 100);
    }
    finish(&server, &run);
    // The run is compacted into one file, which goes up; with no room
    // for local copies, every uploaded file leaves the local disk.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !common::parquet_files(dir.path()).is_empty()
        || server.metric("stepstore_store_pending_files") > 0.0
    {
        assert!(
            Instant::now() < deadline,
            "local copies stayed: {:?}",
            common::parquet_files(dir.path())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.metric("stepstore_store_evicted_local_files_total") >= 1.0);
    let expected: Vec<i64> = (0..500).collect();
    let (steps, _, values) = server.series(&run, "acc");
    assert_eq!(steps, expected);
    assert!(common::same_value(values[499], 0.499));
    assert!(server.metric("stepstore_store_fetched_bytes_total") > 0.0);
    let (rows, sum) = sql_count_and_sum(&server, &run, "loss");
    assert_eq!(rows, 500.0);
    let loss_sum: f64 = (0..500).map(|step| 1.0 / (step + 1) as f64).sum();
    assert!((sum - loss_sum).abs() < 1e-9, "{sum} != {loss_sum}");
    // A restart finds the file from its footer copy, reads it from the
    // store, and keeps nothing local but the cache.
    server.restart();
    assert_eq!(server.series(&run, "acc").0, expected);
    assert_eq!(sql_count_and_sum(&server, &run, "loss").0, 500.0);
    assert!(common::parquet_files(dir.path()).is_empty());
    server.stop();
    // A new disk with the same store: the catalog snapshot and the metric
    // files come from the store.
    let fresh = tempfile::tempdir().unwrap();
    let mut replacement = serve_with(fresh.path(), &moto.endpoint, &["--cache-mb", "0"]);
    let fetched = replacement.get(&format!("/api/2.0/mlflow/runs/get?run_id={run}"));
    assert_eq!(fetched["run"]["info"]["status"], "FINISHED", "{fetched}");
    assert_eq!(fetched["run"]["info"]["run_name"], "evicted");
    let (steps, _, values) = replacement.series(&run, "loss");
    assert_eq!(steps, expected);
    assert!(common::same_value(values[0], 1.0));
    assert_eq!(sql_count_and_sum(&replacement, &run, "loss"), (rows, sum));
    // Started without --store, the data directory still names its store.
    replacement.stop();
    let mut without_flag = TestServer::start_with_env(fresh.path(), &[], &AWS_ENV);
    assert_eq!(without_flag.series(&run, "acc").0, expected);
    without_flag.stop();
    // Another store is refused: this directory's files are not there.
    let refused = TestServer::start_expecting_failure_with_env(
        fresh.path(),
        &[
            "--store",
            "s3://elsewhere/x",
            "--store-endpoint",
            &moto.endpoint,
        ],
        &AWS_ENV,
    );
    assert!(
        refused
            .stderr
            .contains("keeps its metric files in s3://stepstore/team/runs"),
        "{}",
        refused.stderr
    );
}

/// Waits until `check` holds on the replica, at most 60 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "the replica never saw {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_read_replica_serves_what_the_writer_stores_and_refuses_writes() {
    let test = "a_read_replica_serves_what_the_writer_stores_and_refuses_writes";
    let Some((python, moto)) = python_and_moto(test) else {
        return;
    };
    let writer_dir = tempfile::tempdir().unwrap();
    let mut writer = serve(writer_dir.path(), &moto.endpoint);
    let run = writer.create_run("store", "replicated");
    for chunk in 0..3 {
        log(&writer, &run, chunk * 100..(chunk + 1) * 100);
    }
    wait_for_uploads(&writer, 1.0);
    let replica_dir = tempfile::tempdir().unwrap();
    let mut replica = serve_with(
        replica_dir.path(),
        &moto.endpoint,
        &[
            "--read-only",
            "--refresh-secs",
            "1",
            "--writer-url",
            "http://writer.example:5000",
        ],
    );
    let run_path = format!("/api/2.0/mlflow/runs/get?run_id={run}");
    eventually("the run", || {
        replica.request("GET", &run_path, None).0 == 200
    });
    eventually("the first 300 steps", || {
        replica.series(&run, "acc").0 == (0..300).collect::<Vec<i64>>()
    });
    // Writes are refused, naming the writer.
    let (status, body) = replica.request(
        "POST",
        "/api/2.0/mlflow/runs/create",
        Some(&json!({"experiment_id": "0"})),
    );
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["error_code"], "FEATURE_DISABLED");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("read replica") && message.contains("http://writer.example:5000"),
        "{message}"
    );
    let (status, _) = replica.request(
        "POST",
        &format!("/api/v1/runs/{run}/metrics"),
        Some(&json!({"points": [{"key": "acc", "step": 1000, "value": 1.0}]})),
    );
    assert_eq!(status, 405);
    // The writer goes on and finishes the run: its files are compacted
    // into one and the inputs leave the store; the replica follows, and
    // shows every point once.
    for chunk in 3..5 {
        log(&writer, &run, chunk * 100..(chunk + 1) * 100);
    }
    finish(&writer, &run);
    let expected: Vec<i64> = (0..500).collect();
    eventually("the finished run", || {
        replica.get(&run_path)["run"]["info"]["status"] == "FINISHED"
            && replica.series(&run, "acc").0 == expected
            && sql_count_and_sum(&replica, &run, "loss").0 == 500.0
    });
    let stored = read_with_pyarrow(&python, &moto.endpoint);
    eventually("the compacted run", || {
        read_with_pyarrow(&python, &moto.endpoint)[&run]["files"] == 1
    });
    assert_eq!(stored[&run]["rows"], 1000, "{stored}");
    // Give the replica one more refresh after the inputs left the store.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(replica.series(&run, "loss").0, expected);
    let (rows, sum) = sql_count_and_sum(&replica, &run, "loss");
    let loss_sum: f64 = (0..500).map(|step| 1.0 / (step + 1) as f64).sum();
    assert_eq!(rows, 500.0);
    assert!((sum - loss_sum).abs() < 1e-9, "{sum} != {loss_sum}");
    assert!(replica.metric("stepstore_replica_refreshes_total") >= 1.0);
    assert!(replica.metric("stepstore_replica_run_updates_total") >= 1.0);
    assert!(
        replica.metric("stepstore_replica_catalog_updates_total") >= 1.0,
        "the run's end came in a newer catalog snapshot"
    );
    replica.stop();
    writer.stop();
}

#[test]
fn the_mlflow_client_tests_pass_with_the_files_read_from_the_store() {
    let test = "the_mlflow_client_tests_pass_with_the_files_read_from_the_store";
    let Some((python, moto)) = python_and_moto(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // No room for local copies: once uploaded, every file is read from
    // the store.
    let mut server = serve_with(dir.path(), &moto.endpoint, &["--cache-mb", "0"]);
    let run = common::run_pytest(
        &python,
        "tests/python/test_mlflow_client.py",
        &[("MLFLOW_TRACKING_URI", &server.base_url)],
        Duration::from_secs(20 * 60),
    );
    let evicted = server.metric("stepstore_store_evicted_local_files_total");
    let fetched = server.metric("stepstore_store_fetched_bytes_total");
    common::assert_pytest_passed(
        &run,
        "the MLflow client tests over the store",
        &common::tail(&server.stop(), 200),
    );
    assert!(evicted >= 1.0, "no file was read from the store");
    assert!(fetched > 0.0, "nothing was fetched from the store");
}
