//! Resource bounds end to end: each test sends what a bound refuses, then
//! checks the answer names the limit, nothing was stored, and the server
//! still serves.

mod common;

use common::TestServer;
use serde_json::{Value, json};

fn post_ndjson(server: &TestServer, body: Vec<u8>) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(server.url("/api/v1/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .expect("request");
    let status = response.status().as_u16();
    let text = response.text().expect("text");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn ndjson_lines(run: &str, steps: std::ops::Range<i64>) -> Vec<u8> {
    steps
        .map(|step| {
            format!("{{\"run_id\":\"{run}\",\"key\":\"loss\",\"step\":{step},\"value\":0.5}}\n")
        })
        .collect::<String>()
        .into_bytes()
}

#[test]
fn streamed_ndjson_bodies_obey_the_body_limit_and_the_line_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &["--max-request-mb", "1"]);
    let run = server.create_run("limits", "ndjson");
    let (status, body) = post_ndjson(&server, ndjson_lines(&run, 0..10));
    assert_eq!(status, 200, "{body}");
    // About 1.6 MB of valid lines: past the 1 MiB limit although streamed.
    let (status, body) = post_ndjson(&server, ndjson_lines(&run, 10..20_010));
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error_code"], "REQUEST_LIMIT_EXCEEDED", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("--max-request-mb"),
        "{body}"
    );
    // One line longer than a point can be.
    let mut long = ndjson_lines(&run, 20_010..20_012);
    long.extend(std::iter::repeat_n(b' ', 100_000));
    long.extend_from_slice(b"{}\n");
    let (status, body) = post_ndjson(&server, long);
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        body["message"], "line 3 is longer than the limit of 65536 bytes for one point",
        "{body}"
    );
    // Neither refused request stored a point.
    assert_eq!(server.series(&run, "loss").0, (0..10).collect::<Vec<i64>>());
    server.stop();
}

#[test]
fn keys_are_limited_in_bytes_as_well_as_characters() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let run = server.create_run("limits", "keys");
    let wide = "語".repeat(250);
    let (status, body) = server.request(
        "POST",
        &format!("/api/v1/runs/{run}/metrics"),
        Some(&json!({"step": 1, "values": {wide.clone(): 1.0}})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("750 bytes"),
        "{body}"
    );
    let (status, body) = server.request(
        "POST",
        "/api/2.0/mlflow/runs/log-parameter",
        Some(&json!({"run_id": run, "key": wide, "value": "x"})),
    );
    assert_eq!(status, 400, "{body}");
    let narrow = "é".repeat(250);
    server.post(
        &format!("/api/v1/runs/{run}/metrics"),
        &json!({"step": 1, "values": {narrow.clone(): 1.0}}),
    );
    assert_eq!(server.series(&run, &narrow).0, vec![1]);
    server.stop();
}

fn sql(server: &TestServer, query: &str, format: &str) -> (u16, Value) {
    server.request(
        "POST",
        "/api/v1/sql",
        Some(&json!({"query": query, "format": format})),
    )
}

#[test]
fn sql_results_and_growing_functions_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(
        dir.path(),
        &["--sql-memory-mb", "256", "--sql-max-result-mb", "32"],
    );
    let run = server.create_run("limits", "sql");
    server.post(
        &format!("/api/v1/runs/{run}/metrics"),
        &json!({"step": 1, "values": {"loss": 0.5}}),
    );
    // A result far past --sql-max-result-mb, in every format: 400 before
    // anything is sent, while the rows stream through the encoder.
    for format in ["json", "csv", "arrow"] {
        let (status, body) = sql(
            &server,
            "SELECT value FROM generate_series(1, 100000000)",
            format,
        );
        assert_eq!(status, 400, "{format}: {body}");
        assert_eq!(body["error_code"], "RESOURCE_EXHAUSTED", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("--sql-max-result-mb"),
            "{body}"
        );
    }
    // Functions that would allocate gigabytes outside the memory pool.
    for query in [
        "SELECT repeat('x', 2000000000) AS r",
        "SELECT repeat(repeat('x', 1000), 1000000) AS r",
        "SELECT lpad('x', 2000000000) AS r",
        "SELECT rpad('x', 2000000000, 'yz') AS r",
        "SELECT range(1, 1000000000) AS r",
        "SELECT generate_series(1, 1000000000) AS r",
        "SELECT range(DATE '1900-01-01', DATE '2100-01-01', INTERVAL '1 second') AS r",
        "SELECT array_repeat(1, 1000000000) AS r",
        "SELECT replace(repeat('x', 1000000), 'x', repeat('y', 1000)) AS r",
        "SELECT regexp_replace(repeat('x', 100000), '', repeat('y', 10000), 'g') AS r",
        "SELECT repeat(key, 100000000) FROM metrics",
    ] {
        let (status, body) = sql(&server, query, "json");
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("limit of 64 MiB for one call"),
            "{query}: {body}"
        );
    }
    // Within the limits they work as before.
    let (status, body) = sql(
        &server,
        "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p",
        "json",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["r"], "ababab");
    assert_eq!(body["rows"][0]["p"], "007");
    let (status, body) = sql(&server, "SELECT cardinality(range(1, 1001)) AS n", "json");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["n"], 1000);
    let (status, body) = sql(
        &server,
        "SELECT count(*) AS n FROM generate_series(1, 1000000)",
        "json",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["n"], 1_000_000);
    // The server stayed within its limits and still serves.
    let peak = server.peak_rss_bytes();
    assert!(peak < 700 << 20, "peak RSS {} MiB", peak >> 20);
    assert_eq!(server.get("/health")["status"], "ok");
    assert_eq!(server.series(&run, "loss").0, vec![1]);
    server.stop();
}

/// Opens a live stream on a raw connection and reads its response head.
fn open_stream(server: &TestServer, run: &str, query: &str) -> (std::net::TcpStream, String) {
    use std::io::{Read, Write};
    let mut stream = server.connect_raw();
    write!(
        stream,
        "GET /api/v1/runs/{run}/stream?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 2048];
    let read = stream.read(&mut head).expect("read");
    (stream, String::from_utf8_lossy(&head[..read]).to_string())
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn live_streams_are_capped_and_a_follower_that_stops_reading_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &["--max-streams", "1", "--body-timeout", "1s"]);
    let run = server.create_run("limits", "live");
    // Enough stored points that their events fill every socket buffer.
    let steps: Vec<i64> = (0..1_000_000).collect();
    let values: Vec<f64> = steps.iter().map(|&step| step as f64 * 0.5).collect();
    let (status, body) = server.request(
        "POST",
        "/api/v1/ingest",
        Some(&json!({"batches": [{"run_id": run, "steps": steps, "values": {"loss": values}}]})),
    );
    assert_eq!(status, 200, "{body}");

    // A follower that never reads past the response head.
    let (stalled, head) = open_stream(&server, &run, "keys=loss&after_step=-1");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The only slot is taken: the next stream is refused, clearly.
    let (_, refused) = open_stream(&server, &run, "keys=loss");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("--max-streams"), "{refused}");
    // The server gives up on the stalled reader (its socket stays full for
    // --body-timeout), closes it and frees the slot.
    wait_for("the stalled follower to be dropped", || {
        server.metric("stepstore_write_timeouts_total") >= 1.0
            && server.metric("stepstore_streams_open") == 0.0
    });
    drop(stalled);
    let (reader, head) = open_stream(&server, &run, "keys=loss");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(reader);
    assert!(server.metric("stepstore_streams_refused_total") >= 1.0);
    assert_eq!(server.get("/health")["status"], "ok");
    assert_eq!(server.series(&run, "loss").0.len(), 1_000_000);
    server.stop();
}

#[test]
fn a_run_may_not_pass_its_key_param_and_tag_caps() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &["--max-keys-per-run", "50"]);
    let run = server.create_run("limits", "keys");
    let path = format!("/api/v1/runs/{run}/metrics");
    // Eight writers race to add new keys, three per request.
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for writer in 0..8 {
            let (server, path, accepted) = (&server, &path, &accepted);
            scope.spawn(move || {
                for request in 0..10 {
                    let values: serde_json::Map<String, Value> = (0..3)
                        .map(|index| (format!("w{writer}/r{request}/k{index}"), json!(1.0)))
                        .collect();
                    let (status, body) =
                        server.request("POST", path, Some(&json!({"step": 1, "values": values})));
                    match status {
                        200 => {
                            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        400 => assert!(
                            body["message"]
                                .as_str()
                                .unwrap()
                                .contains("--max-keys-per-run"),
                            "{body}"
                        ),
                        other => panic!("{other}: {body}"),
                    }
                }
            });
        }
    });
    let accepted = accepted.into_inner();
    let keys = server.get(&path)["metrics"].as_array().unwrap().len();
    assert_eq!(
        keys,
        accepted * 3,
        "every accepted request's keys, and no other"
    );
    assert!(keys <= 50, "{keys} keys");
    // Without racing requests the cap is reached exactly.
    for index in keys..50 {
        server.post(
            &path,
            &json!({"step": 1, "values": {format!("fill/{index}"): 1.0}}),
        );
    }
    let (status, body) = server.request(
        "POST",
        &path,
        Some(&json!({"step": 1, "values": {"one/too/many": 1.0}})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("limit of 50 per run"),
        "{body}"
    );
    assert_eq!(server.get(&path)["metrics"].as_array().unwrap().len(), 50);
    // Keys the run has are always accepted.
    let first = server.get(&path)["metrics"][0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    server.post(&path, &json!({"step": 2, "values": {first: 2.0}}));
    // Params and tags: a request past 10,000 per run changes nothing.
    let params: serde_json::Map<String, Value> = (0..10_001)
        .map(|index| (format!("p{index}"), json!("x")))
        .collect();
    let (status, body) = server.request(
        "POST",
        &format!("/api/v1/runs/{run}/params"),
        Some(&Value::Object(params)),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("at most 10000 params"),
        "{body}"
    );
    let tags: serde_json::Map<String, Value> = (0..10_001)
        .map(|index| (format!("t{index}"), json!("x")))
        .collect();
    let (status, body) = server.request(
        "POST",
        &format!("/api/v1/runs/{run}/tags"),
        Some(&Value::Object(tags)),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("at most 10000 tags"),
        "{body}"
    );
    let stored = server.get(&format!("/api/v1/runs/{run}"));
    assert_eq!(stored["params"].as_object().unwrap().len(), 0, "{stored}");
    // After a restart the cap still holds (counts come from storage).
    server.restart();
    let (status, body) = server.request(
        "POST",
        &path,
        Some(&json!({"step": 3, "values": {"new/a": 1.0, "new/b": 1.0, "new/c": 1.0}})),
    );
    assert_eq!(status, 400, "{body}");
    server.stop();
}

#[test]
fn reads_are_bounded_per_answer_and_requests_per_list() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let run = server.create_run("limits", "reads");
    let steps: Vec<i64> = (0..1_000_001).collect();
    let values: Vec<f64> = steps.iter().map(|&step| step as f64).collect();
    let acc: Vec<Value> = steps
        .iter()
        .map(|&step| if step < 10 { json!(0.5) } else { Value::Null })
        .collect();
    let (status, body) = server.request(
        "POST",
        "/api/v1/ingest",
        Some(&json!({"batches": [{"run_id": run, "steps": steps, "values": {"loss": values, "acc": acc}}]})),
    );
    assert_eq!(status, 200, "{body}");
    // Every point of a series past the limit: refused, naming it.
    let (status, body) = server.request(
        "GET",
        &format!("/api/v1/runs/{run}/metrics/loss?max_points=0"),
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("1000000 points"),
        "{body}"
    );
    // ... unless a range narrows it, or the answer is downsampled.
    let (status, body) = server.request(
        "GET",
        &format!("/api/v1/runs/{run}/metrics/loss?max_points=0&start=10&end=19"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["steps"].as_array().unwrap().len(), 10);
    let (status, body) = server.request(
        "POST",
        "/api/v1/scalars",
        Some(&json!({"runs": [run], "keys": ["loss", "acc"], "max_points": 0})),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.request(
        "GET",
        &format!("/data/plugin/scalars/scalars?run={run}&tag=loss&max_points=0"),
        None,
    );
    assert_eq!(status, 400, "{body}");
    // MLflow's get-history pages at 1,000,000 points; the client follows
    // next_page_token.
    let history = server.get(&format!(
        "/api/2.0/mlflow/metrics/get-history?run_id={run}&metric_key=loss"
    ));
    assert_eq!(history["metrics"].as_array().unwrap().len(), 1_000_000);
    let token = history["next_page_token"]
        .as_str()
        .expect("a next page")
        .to_string();
    let rest = server.get(&format!(
        "/api/2.0/mlflow/metrics/get-history?run_id={run}&metric_key=loss&page_token={token}"
    ));
    assert_eq!(rest["metrics"].as_array().unwrap().len(), 1);
    assert!(
        rest.get("next_page_token").is_none(),
        "{}",
        rest["next_page_token"]
    );
    // Lists in one request are capped.
    let patterns: Vec<String> = (0..101).map(|index| format!("k{index}/*")).collect();
    let (status, body) = server.request(
        "POST",
        "/api/v1/scalars",
        Some(&json!({"runs": [run], "keys": patterns})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("at most 100"),
        "{body}"
    );
    let experiments: Vec<String> = (0..1001).map(|index| index.to_string()).collect();
    let (status, body) = server.request(
        "POST",
        "/api/2.0/mlflow/runs/search",
        Some(&json!({"experiment_ids": experiments})),
    );
    assert_eq!(status, 400, "{body}");
    let long_pattern = format!("params.x LIKE '{}'", "%a".repeat(6000));
    let (status, body) = server.request(
        "POST",
        "/api/2.0/mlflow/runs/search",
        Some(&json!({"experiment_ids": ["0"], "filter": long_pattern})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("at most 10000 characters"),
        "{body}"
    );
    let long_filter = format!("params.x = '{}'", "a".repeat(200_000));
    let (status, body) = server.request(
        "POST",
        "/api/2.0/mlflow/runs/search",
        Some(&json!({"experiment_ids": ["0"], "filter": long_filter})),
    );
    assert_eq!(status, 400, "{body}");
    // An adversarial pattern within the limits answers (linear matching).
    server.post(
        &format!("/api/v1/runs/{run}/params"),
        &json!({"x": "a".repeat(6000)}),
    );
    let experiment = server.get(&format!("/api/v1/runs/{run}"))["experiment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = server.request(
        "POST",
        "/api/2.0/mlflow/runs/search",
        Some(&json!({"experiment_ids": [experiment], "filter": format!("params.x LIKE '{}b'", "%a".repeat(4000))})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get("/health")["status"], "ok");
    server.stop();
}

#[test]
fn history_pages_follow_mlflow_order_and_bulk_reads_stop_at_their_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let backwards = server.create_run("history", "clock-goes-back");
    let forwards = server.create_run("history", "clock-goes-forward");
    // Steps 0..6 at times 100.., then steps 6..12 at times 50..: MLflow
    // orders a history by timestamp first.
    for (steps, first_time) in [(0..6i64, 100i64), (6..12, 50)] {
        let steps: Vec<i64> = steps.collect();
        let times: Vec<i64> = (0..steps.len() as i64).map(|i| first_time + i).collect();
        let values: Vec<f64> = steps.iter().map(|&step| step as f64).collect();
        server.post(
            "/api/v1/ingest",
            &json!({"batches": [
                {"run_id": backwards, "steps": steps, "timestamps": times, "values": {"loss": values}},
                {"run_id": forwards, "steps": steps, "timestamps": steps.iter().map(|s| 1_000 + s).collect::<Vec<_>>(), "values": {"loss": values}}
            ]}),
        );
    }
    let mut paged = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = format!(
            "/api/2.0/mlflow/metrics/get-history?run_id={backwards}&metric_key=loss&max_results=5"
        );
        if let Some(token) = &token {
            path.push_str(&format!("&page_token={token}"));
        }
        let page = server.get(&path);
        let metrics = page["metrics"].as_array().unwrap();
        assert!(metrics.len() <= 5, "{page}");
        paged.extend(
            metrics
                .iter()
                .map(|metric| metric["step"].as_i64().unwrap()),
        );
        match page["next_page_token"].as_str() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(paged, [6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]);
    // get-history-bulk: the first max_results points of each run, in the
    // order the runs were named, each point naming its run.
    let bulk = server.get(&format!(
        "/api/2.0/mlflow/metrics/get-history-bulk?run_id={forwards}&run_id={backwards}\
         &metric_key=loss&max_results=3"
    ));
    let points: Vec<(String, i64)> = bulk["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|metric| {
            (
                metric["run_id"].as_str().unwrap().to_string(),
                metric["step"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = [(&forwards, 0), (&forwards, 1), (&forwards, 2)]
        .into_iter()
        .chain([(&backwards, 6), (&backwards, 7), (&backwards, 8)])
        .map(|(run, step)| (run.clone(), step))
        .collect();
    assert_eq!(points, expected);
    // A key no run has: an empty answer. An unknown run: an error, no
    // partial answer.
    let empty = server.get(&format!(
        "/api/2.0/mlflow/metrics/get-history-bulk?run_id={forwards}&metric_key=absent"
    ));
    assert_eq!(empty, json!({}));
    let (status, body) = server.request(
        "GET",
        &format!(
            "/api/2.0/mlflow/metrics/get-history-bulk?run_id={forwards}\
             &run_id=0123456789abcdef0123456789abcdef&metric_key=loss"
        ),
        None,
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error_code"], "RESOURCE_DOES_NOT_EXIST", "{body}");
    let (status, body) = server.request(
        "GET",
        &format!(
            "/api/2.0/mlflow/metrics/get-history-bulk?run_id={forwards}&metric_key=loss\
             &max_results=25001"
        ),
        None,
    );
    assert_eq!(status, 400, "{body}");
    server.stop();
}
