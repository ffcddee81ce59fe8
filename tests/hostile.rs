//! The hostile suite: one real server holds data, then is attacked with
//! every bound at once (slow clients holding connections while the others
//! run), and must still answer `/health` quickly with the data intact,
//! before and after a restart.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use common::TestServer;
use serde_json::{Value, json};

/// Sends raw bytes and reads whatever comes back until the server closes
/// or 20 s pass.
fn raw(server: &TestServer, bytes: &[u8]) -> String {
    let mut stream = server.connect_raw();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).to_string()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn post_typed(server: &TestServer, path: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
    let response = reqwest::blocking::Client::new()
        .post(server.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .expect("request");
    (
        response.status().as_u16(),
        response.text().unwrap_or_default(),
    )
}

/// What the server holds before the attack, as the API returns it.
fn snapshot(server: &TestServer, run: &str) -> (Value, Vec<i64>, Vec<f64>) {
    let run_json = server.get(&format!("/api/v1/runs/{run}"));
    let (steps, _, values) = server.series(run, "loss");
    (run_json["params"].clone(), steps, values)
}

fn median_health_ms(server: &TestServer) -> f64 {
    let client = reqwest::blocking::Client::new();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let response = client.get(server.url("/health")).send().expect("health");
            assert_eq!(response.status().as_u16(), 200);
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

#[test]
fn the_server_survives_every_attack_with_its_data_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(
        dir.path(),
        &[
            "--max-request-mb",
            "4",
            "--header-timeout",
            "2s",
            "--body-timeout",
            "2s",
            "--max-connections",
            "64",
            "--max-streams",
            "4",
            "--max-keys-per-run",
            "1000",
            "--sql-memory-mb",
            "256",
            "--sql-max-result-mb",
            "16",
            "--sql-timeout-secs",
            "5",
        ],
    );
    // Data logged before the attack.
    let run = server.create_run("precious", "baseline");
    server.post(
        &format!("/api/v1/runs/{run}/params"),
        &json!({"lr": "0.001", "optimizer": {"name": "adam"}}),
    );
    let points: Vec<Value> = (0..1000)
        .map(|step| json!({"key": "loss", "step": step, "value": 1.0 / (step as f64 + 1.0)}))
        .collect();
    server.post(
        &format!("/api/v1/runs/{run}/metrics"),
        &json!({"points": points}),
    );
    let before = snapshot(&server, &run);
    let experiment = server.get(&format!("/api/v1/runs/{run}"))["experiment_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Slow clients hold connections for the whole attack.
    let slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = server.connect_raw();
            stream
                .write_all(b"POST /api/v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .unwrap();
            stream
        })
        .collect();

    // Cross-site request and DNS rebinding.
    let (status, _) = post_typed(
        &server,
        "/api/2.0/mlflow/experiments/delete",
        "text/plain",
        json!({"experiment_id": experiment})
            .to_string()
            .into_bytes(),
    );
    assert_eq!(status, 415);
    let answer = raw(
        &server,
        format!(
            "POST /api/2.0/mlflow/experiments/delete HTTP/1.1\r\nHost: evil.example.com\r\n\
             Content-Type: application/json\r\nContent-Length: 20\r\nConnection: close\r\n\r\n\
             {{\"experiment_id\":\"{experiment}\"}}"
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&answer), 403, "{answer}");

    // Garbage on the wire, a stalled upload, a body over the limit.
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        &b"GET / HTTP/9.9\r\n\r\n"[..],
        &b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n"[..],
        &b"\r\n\r\n\r\n"[..],
    ] {
        let answer = raw(&server, garbage);
        assert!(answer.is_empty() || status_of(&answer) >= 400, "{answer}");
    }
    let answer = raw(
        &server,
        format!(
            "POST /api/v1/runs/{run}/metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"points\": ["
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&answer), 408, "{answer}");
    let (status, _) = post_typed(
        &server,
        &format!("/api/v1/runs/{run}/metrics"),
        "application/json",
        vec![b' '; 5 << 20],
    );
    assert_eq!(status, 413);
    // Hostile bodies: deep nesting, a huge NDJSON line, streamed past the limit.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, _) = post_typed(
        &server,
        "/api/2.0/mlflow/runs/log-batch",
        "application/json",
        deep.into_bytes(),
    );
    assert_eq!(status, 400);
    let mut line = vec![b' '; 200_000];
    line.push(b'\n');
    let (status, _) = post_typed(&server, "/api/v1/ingest", "application/x-ndjson", line);
    assert_eq!(status, 413);
    let lines: String = (0..100_000)
        .map(|step| {
            format!(
                "{{\"run_id\":\"{run}\",\"key\":\"loss\",\"step\":{},\"value\":0}}\n",
                step + 5000
            )
        })
        .collect();
    let (status, _) = post_typed(
        &server,
        "/api/v1/ingest",
        "application/x-ndjson",
        lines.into_bytes(),
    );
    assert_eq!(status, 413);

    // SQL that would take the server's memory or time.
    for query in [
        "SELECT value FROM generate_series(1, 100000000)",
        "SELECT repeat('x', 2000000000) AS r",
        "SELECT range(1, 1000000000) AS r",
        "SELECT count(*) FROM generate_series(1, 100000000000) AS t(v) WHERE v % 7 = 3",
        "SELECT a.value FROM generate_series(1, 100000) a, generate_series(1, 100000) b ORDER BY random()",
        "DROP TABLE runs",
        "COPY runs TO '/tmp/x.csv'",
    ] {
        let (status, body) = server.request("POST", "/api/v1/sql", Some(&json!({"query": query})));
        assert_eq!(status, 400, "{query}: {body}");
    }

    // Key floods, stream floods, deep GraphQL, hostile filters.
    let keys: serde_json::Map<String, Value> = (0..2000)
        .map(|index| (format!("flood/{index}"), json!(1.0)))
        .collect();
    let (status, _) = server.request(
        "POST",
        &format!("/api/v1/runs/{run}/metrics"),
        Some(&json!({"step": 1, "values": keys})),
    );
    assert_eq!(status, 400);
    let streams: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut stream = server.connect_raw();
            write!(
                stream,
                "GET /api/v1/runs/{run}/stream?keys=loss HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )
            .unwrap();
            stream
        })
        .collect();
    let deep_query = format!(
        "{{{}}}",
        "mlflowSearchRuns(input: {}) { runs { info { runId ".repeat(30)
    );
    let (status, _) = server.request("POST", "/graphql", Some(&json!({"query": deep_query})));
    assert!(status == 200 || status == 400, "{status}");
    let (status, _) = server.request(
        "POST",
        "/api/2.0/mlflow/runs/search",
        Some(&json!({"experiment_ids": [experiment], "filter": format!("params.lr LIKE '{}x'", "%0".repeat(4000))})),
    );
    assert_eq!(status, 200);

    // After the attack: quick health, and the data as it was.
    drop(streams);
    drop(slow);
    let health = median_health_ms(&server);
    assert!(health < 100.0, "/health took {health:.1} ms (median of 5)");
    assert_eq!(snapshot(&server, &run), before);
    let keys = server.get(&format!("/api/v1/runs/{run}/metrics"))["metrics"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(keys, 1, "no key of a refused request was stored");
    server.restart();
    assert_eq!(snapshot(&server, &run), before);
    server.stop();
}
