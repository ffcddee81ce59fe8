//! Only reads are allowed: every refused statement kind is refused over
//! HTTP with a clear message (and no file is written or read), and queries
//! over the memory or time limit fail cleanly while the server keeps
//! serving.

mod common;
mod sql_support;

use std::time::Instant;

use common::TestServer;
use sql_support::{i, rows, sql_failure};

#[test]
fn statements_that_do_not_only_read_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let run_id = server.create_run("safety", "r");
    let outside = tempfile::tempdir().unwrap();
    let written = outside.path().join("out.csv");
    let written_text = written.to_str().unwrap();
    let cases = [
        "CREATE EXTERNAL TABLE passwd (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'"
            .to_string(),
        format!("COPY (SELECT * FROM runs) TO '{written_text}'"),
        format!("COPY metrics TO '{written_text}' STORED AS CSV"),
        "CREATE TABLE t AS SELECT * FROM runs".to_string(),
        "CREATE VIEW v AS SELECT * FROM runs".to_string(),
        "CREATE TABLE t (x INT)".to_string(),
        "DROP TABLE runs".to_string(),
        "INSERT INTO params VALUES ('0', 'x', 'k', 'v')".to_string(),
        format!("DELETE FROM runs WHERE run_id = '{run_id}'"),
        "UPDATE runs SET status = 'KILLED'".to_string(),
        "SET datafusion.execution.target_partitions = 1".to_string(),
        "RESET datafusion.execution.batch_size".to_string(),
        format!("EXPLAIN COPY (SELECT 1) TO '{written_text}'"),
        "EXPLAIN CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'".to_string(),
        "SELECT 1; SELECT 2".to_string(),
    ];
    for query in &cases {
        let (status, body) = sql_failure(&server, query);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error_code"], "INVALID_PARAMETER_VALUE", "{query}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("not allowed") || message.contains("single SQL statement"),
            "{query}: {message}"
        );
    }
    assert!(!written.exists(), "nothing was written");

    // Files cannot be read by path, and nothing was registered.
    for query in [
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM 'file:///etc/passwd'",
        "SELECT * FROM passwd",
        "SELECT * FROM t",
    ] {
        let (status, body) = sql_failure(&server, query);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            !body["message"].as_str().unwrap().contains("root:"),
            "{body}"
        );
    }
    // Reads still work, including SHOW TABLES and DESCRIBE.
    let tables = rows(&server, "SHOW TABLES");
    let names: Vec<&str> = tables
        .iter()
        .filter_map(|row| row["table_name"].as_str())
        .collect();
    for table in [
        "experiments",
        "experiment_tags",
        "runs",
        "params",
        "tags",
        "metrics",
        "latest_metrics",
        "artifacts",
        "artifact_properties",
        "events",
    ] {
        assert!(names.contains(&table), "{table} in {names:?}");
    }
    let columns = rows(&server, "DESCRIBE metrics");
    assert_eq!(columns.len(), 6);
}

#[test]
fn queries_over_their_limits_fail_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &["--sql-memory-mb", "32", "--sql-timeout-secs", "2"],
    );

    // A sort that needs ~80 MB (nothing spills to disk).
    let (status, body) = sql_failure(
        &server,
        "SELECT v FROM generate_series(1, 10000000) AS t(v) ORDER BY random()",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_code"], "RESOURCE_EXHAUSTED", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("32 MiB"),
        "{body}"
    );

    // A result larger than the limit.
    let (status, body) = sql_failure(
        &server,
        "SELECT v FROM generate_series(1, 20000000) AS t(v)",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_code"], "RESOURCE_EXHAUSTED", "{body}");

    // A query past the time limit is cancelled.
    let started = Instant::now();
    let (status, body) = sql_failure(
        &server,
        "SELECT count(*) FROM generate_series(1, 100000000000) AS t(v) WHERE v % 7 = 3",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_code"], "DEADLINE_EXCEEDED", "{body}");
    assert!(started.elapsed().as_secs() < 30, "cancelled promptly");

    // Still serving: SQL, the API and health.
    let one = rows(&server, "SELECT 1 AS one");
    assert_eq!(i(&one[0], "one"), 1);
    let run_id = server.create_run("after", "r");
    assert_eq!(run_id.len(), 32);
    assert_eq!(server.get("/health")["status"], "ok");
}
