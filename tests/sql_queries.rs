//! SQL over a generated sweep (two experiments, six runs, params with one
//! missing, two keys) logged over HTTP, with part of every run persisted
//! and part still buffered. Every answer is computed by the test from what
//! it logged. Also: output formats, EXPLAIN pruning, query errors.

mod common;
mod sql_support;

use std::collections::BTreeMap;

use common::TestServer;
use serde_json::{Value, json};
use sql_support::{assert_close, check_answers, f, i, log_sweep, rows, s, sql, sql_failure};

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

/// The run tables and `latest_metrics` are built for the runs that run
/// filters choose and drop rows that other filters reject as they are
/// built: every such query answers as the history says.
#[test]
fn filtered_catalog_and_latest_tables_answer_as_logged() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--flush-rows", "500"]);
    let history = log_sweep(&server, |run| 20 + run as i64);
    let experiment_ids: BTreeMap<String, String> =
        rows(&server, "SELECT name, experiment_id FROM experiments")
            .iter()
            .map(|row| (s(row, "name"), s(row, "experiment_id")))
            .collect();
    let runs_of = |name: &str| -> Vec<String> {
        history
            .runs
            .iter()
            .filter(|(_, (experiment, _))| experiment == name)
            .map(|(run_id, _)| run_id.clone())
            .collect()
    };
    let params_of = |runs: &[String], key: Option<&str>| -> Vec<(String, String, String)> {
        let mut expected: Vec<(String, String, String)> = runs
            .iter()
            .flat_map(|run_id| {
                history.params[run_id]
                    .iter()
                    .filter(|(name, _)| key.is_none_or(|key| key == name.as_str()))
                    .map(move |(name, value)| (run_id.clone(), name.clone(), value.clone()))
            })
            .collect();
        expected.sort();
        expected
    };
    let found_params = |query: &str| -> Vec<(String, String, String)> {
        rows(&server, query)
            .iter()
            .map(|row| (s(row, "run_id"), s(row, "key"), s(row, "value")))
            .collect()
    };
    let all_runs: Vec<String> = history.runs.keys().cloned().collect();

    for name in ["sweep-a", "sweep-b"] {
        let id = &experiment_ids[name];
        assert_eq!(
            found_params(&format!(
                "SELECT run_id, key, value FROM params WHERE experiment_id = '{id}' \
                 ORDER BY run_id, key"
            )),
            params_of(&runs_of(name), None),
            "params of {name}"
        );
    }
    assert_eq!(
        found_params(
            "SELECT run_id, key, value FROM params WHERE key = 'batch_size' ORDER BY run_id"
        ),
        params_of(&all_runs, Some("batch_size"))
    );
    // A filter on a run column and a row column together (not a run
    // filter): applied row by row.
    let a = &experiment_ids["sweep-a"];
    let either = rows(
        &server,
        &format!("SELECT count(*) AS n FROM params WHERE key = 'lr' OR experiment_id = '{a}'"),
    );
    let expected = params_of(&all_runs, Some("lr")).len()
        + params_of(&runs_of("sweep-a"), Some("batch_size")).len();
    assert_eq!(i(&either[0], "n"), expected as i64);

    // Named runs, in and out of the experiment filter.
    let (first, second) = (&all_runs[0], &all_runs[1]);
    let named = rows(
        &server,
        &format!(
            "SELECT run_id, run_name FROM runs WHERE run_id IN ('{first}', '{second}', 'nope') \
             ORDER BY run_id"
        ),
    );
    let names: Vec<(String, String)> = named
        .iter()
        .map(|row| (s(row, "run_id"), s(row, "run_name")))
        .collect();
    assert_eq!(
        names,
        vec![
            (first.clone(), history.runs[first].1.clone()),
            (second.clone(), history.runs[second].1.clone())
        ]
    );
    let other = if history.runs[first].0 == "sweep-a" {
        "sweep-b"
    } else {
        "sweep-a"
    };
    let crossed = rows(
        &server,
        &format!(
            "SELECT run_id FROM runs WHERE run_id = '{first}' AND experiment_id = '{}'",
            experiment_ids[other]
        ),
    );
    assert!(crossed.is_empty(), "{crossed:?}");

    // A join that filters each side on its own columns.
    let b = &experiment_ids["sweep-b"];
    let joined = rows(
        &server,
        &format!(
            "SELECT p.run_id, p.value FROM params p JOIN runs r ON r.run_id = p.run_id \
             WHERE p.key = 'lr' AND r.experiment_id = '{b}' AND r.run_name LIKE '%run1'"
        ),
    );
    let target = runs_of("sweep-b")
        .into_iter()
        .find(|run_id| history.runs[run_id].1 == "sweep-b-run1")
        .unwrap();
    assert_eq!(joined.len(), 1);
    assert_eq!(s(&joined[0], "run_id"), target);
    assert_eq!(s(&joined[0], "value"), history.params[&target]["lr"]);

    // Tags, and latest values with a key and value filter.
    let names = rows(
        &server,
        &format!("SELECT value FROM tags WHERE key = 'mlflow.runName' AND run_id = '{first}'"),
    );
    assert_eq!(names.len(), 1);
    assert_eq!(s(&names[0], "value"), history.runs[first].1);
    let latest = rows(
        &server,
        &format!(
            "SELECT run_id, value FROM latest_metrics WHERE key = 'loss' \
             AND experiment_id = '{a}' AND value < 10 ORDER BY run_id"
        ),
    );
    let mut expected: Vec<(String, f64)> = runs_of("sweep-a")
        .into_iter()
        .map(|run_id| {
            let value = history.latest(&run_id, "loss").value;
            (run_id, value)
        })
        .collect();
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    let found: Vec<(String, f64)> = latest
        .iter()
        .map(|row| (s(row, "run_id"), f(row, "value")))
        .collect();
    assert_eq!(found.len(), expected.len());
    for ((run, value), (expected_run, expected_value)) in found.iter().zip(&expected) {
        assert_eq!(run, expected_run);
        assert_close(*value, *expected_value, "latest loss");
    }
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
