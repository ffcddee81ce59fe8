//! SQL over a generated sweep (two experiments, six runs, params with one
//! missing, two keys) logged over HTTP, with part of every run persisted
//! and part still buffered. Every answer is computed by the test from what
//! it logged. Also: output formats, EXPLAIN pruning, query errors.

mod common;
mod sql_support;

use common::TestServer;
use serde_json::{Value, json};
use sql_support::{check_answers, i, log_sweep, rows, s, sql, sql_failure};

#[test]
fn answers_match_the_logged_history_across_files_and_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--flush-rows", "500"]);
    let history = log_sweep(&server, |run| 300 + run as i64 * 50);
    check_answers(&server, &history, "files and buffers");

    // Empty results keep their columns.
    let empty = sql(
        &server,
        "SELECT run_id, value FROM metrics WHERE key = 'missing'",
    );
    assert_eq!(empty["row_count"], 0);
    assert_eq!(empty["columns"][1]["name"], "value");
    assert_eq!(empty["columns"][1]["type"], "Float64");

    // Catalog tables.
    let experiments = rows(
        &server,
        "SELECT name FROM experiments ORDER BY experiment_id",
    );
    let names: Vec<String> = experiments.iter().map(|row| s(row, "name")).collect();
    assert_eq!(names, ["Default", "sweep-a", "sweep-b"]);
    let statuses = rows(
        &server,
        "SELECT status, count(*) AS n FROM runs GROUP BY status",
    );
    assert_eq!(statuses.len(), 1);
    assert_eq!(s(&statuses[0], "status"), "RUNNING");
    assert_eq!(i(&statuses[0], "n"), 6);
}

#[test]
fn formats_follow_the_accept_header_and_errors_are_400() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let run_id = server.create_run("formats", "r");
    server.post(
        &format!("/api/v1/runs/{run_id}/metrics"),
        &json!({"points": [
            {"key": "loss", "step": 1, "timestamp": 1_700_000_000_000i64, "value": 0.5},
            {"key": "loss", "step": 2, "timestamp": 1_700_000_000_100i64, "value": "NaN"},
        ]}),
    );
    let query = "SELECT step, value FROM metrics ORDER BY step";

    let json_rows = rows(&server, query);
    assert_eq!(json_rows[0]["value"], 0.5);
    assert_eq!(
        json_rows[1]["value"], "NaN",
        "NaN round-trips as in the rest of the API"
    );

    let client = reqwest::blocking::Client::new();
    let csv = client
        .post(server.url("/api/v1/sql"))
        .header("accept", "text/csv")
        .json(&json!({ "query": query }))
        .send()
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert_eq!(csv.text().unwrap(), "step,value\r\n1,0.5\r\n2,NaN\r\n");

    let arrow = client
        .post(server.url("/api/v1/sql"))
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&json!({ "query": query }))
        .send()
        .unwrap();
    assert_eq!(arrow.status(), 200);
    let bytes = arrow.bytes().unwrap();
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .expect("an Arrow IPC stream");
    let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    assert_eq!(batches[0].schema().field(0).name(), "step");

    // The body can name the format too.
    let (status, table) = server.request(
        "POST",
        "/api/v1/sql",
        Some(&json!({"query": "SELECT 1 AS one", "format": "table"})),
    );
    assert_eq!(status, 200);
    assert!(table.as_str().unwrap().contains("| one |"), "{table}");

    // Query errors: 400 with DataFusion's message.
    let (status, body) = sql_failure(&server, "SELEC 1");
    assert_eq!(status, 400);
    assert_eq!(body["error_code"], "INVALID_PARAMETER_VALUE");
    assert!(
        body["message"].as_str().unwrap().contains("SELEC"),
        "{body}"
    );
    let (status, body) = sql_failure(&server, "SELECT * FROM no_such_table");
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("no_such_table"),
        "{body}"
    );
    let (status, body) = sql_failure(&server, "SELECT no_such_column FROM metrics");
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("no_such_column"),
        "{body}"
    );
    let (status, _) = server.request("POST", "/api/v1/sql", Some(&json!({"sql": "SELECT 1"})));
    assert_eq!(status, 400, "the body needs a query");
    let (status, _) = server.request_raw("POST", "/api/v1/sql", b"{not json".to_vec());
    assert_eq!(status, 400);
}

#[test]
fn explain_shows_directory_and_page_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let mut run_ids = Vec::new();
    for run in 0..3 {
        let run_id = server.create_run("pruning", &format!("r{run}"));
        for first in (0..20_000i64).step_by(5_000) {
            let mut points = Vec::new();
            for step in first..first + 5_000 {
                for key in ["a", "b", "c", "d"] {
                    points.push(
                        json!({"key": key, "step": step, "timestamp": step, "value": step as f64}),
                    );
                }
            }
            server.post(
                &format!("/api/v1/runs/{run_id}/metrics"),
                &json!({ "points": points }),
            );
        }
        run_ids.push(run_id);
    }
    for run_id in &run_ids {
        server.request(
            "PATCH",
            &format!("/api/v1/runs/{run_id}"),
            Some(&json!({"status": "FINISHED"})),
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while common::parquet_files(dir.path()).len() != 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "runs were not persisted"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let target = &run_ids[1];
    let query = format!(
        "SELECT step, value FROM metrics WHERE run_id = '{target}' AND key = 'c' \
         AND step >= 1000 AND step < 1010"
    );
    let plan = rows(&server, &format!("EXPLAIN {query}"));
    let text: String = plan
        .iter()
        .map(|row| s(row, "plan"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains(&format!("run_id={target}")), "{text}");
    for other in [&run_ids[0], &run_ids[2]] {
        assert!(
            !text.contains(other.as_str()),
            "other runs' directories are pruned: {text}"
        );
    }
    assert!(text.contains("pruning_predicate"), "{text}");

    let analyzed = rows(&server, &format!("EXPLAIN ANALYZE {query}"));
    let text: String = analyzed
        .iter()
        .map(|row| s(row, "plan"))
        .collect::<Vec<_>>()
        .join("\n");
    // Rows of other keys and of blocks outside the step range are pruned
    // from the footer before anything is decoded.
    assert!(text.contains("rows_pruned"), "{text}");
    let answer = rows(&server, &format!("{query} ORDER BY step"));
    assert_eq!(answer.len(), 10);
    assert_eq!(i(&answer[0], "step"), 1000);

    // LIMIT without ORDER BY stops early and still returns rows.
    let limited = rows(&server, "SELECT * FROM metrics LIMIT 7");
    assert_eq!(limited.len(), 7);
    let _: &Value = &limited[0]["run_id"];
}
