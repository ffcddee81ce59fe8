//! Request hygiene end to end: cross-site bodies (415), the Host check
//! (403), CORS, the HTTP timeouts and the connection cap, against the real
//! binary.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{Value, json};

/// Sends one raw HTTP/1.1 request and reads the whole answer (the
/// request asks the server to close the connection).
fn raw_request(server: &TestServer, request: &str) -> (u16, String) {
    let mut stream = server.connect_raw();
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    parse_answer(&answer)
}

fn parse_answer(answer: &str) -> (u16, String) {
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    (status, answer.to_string())
}

fn post_with_type(
    server: &TestServer,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let client = reqwest::blocking::Client::new();
    let mut request = client.post(server.url(path)).body(body.to_string());
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().expect("request");
    let status = response.status().as_u16();
    let text = response.text().expect("text");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn bodies_not_declared_json_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let created = server.post("/api/v1/experiments", &json!({"name": "kept"}));
    let id = created["experiment_id"].as_str().unwrap().to_string();
    let delete = json!({"experiment_id": id}).to_string();
    // What a form or a fetch() on another site can send without a
    // preflight: text/plain, form encodings, or no type.
    for content_type in [
        Some("text/plain"),
        Some("text/plain; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let (status, body) = post_with_type(
            &server,
            "/api/2.0/mlflow/experiments/delete",
            content_type,
            &delete,
        );
        assert_eq!(status, 415, "{content_type:?}: {body}");
        assert_eq!(body["error_code"], "INVALID_PARAMETER_VALUE", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{body}"
        );
    }
    let (status, _) = post_with_type(
        &server,
        "/api/v1/ingest",
        Some("text/plain"),
        r#"{"batches": []}"#,
    );
    assert_eq!(status, 415);
    let experiment = server.get(&format!("/api/v1/experiments/{id}"));
    assert_eq!(experiment["lifecycle_stage"], "active", "{experiment}");
    // Declared JSON goes through; a DELETE without a body needs no type.
    let (status, body) = post_with_type(
        &server,
        "/api/2.0/mlflow/experiments/delete",
        Some("application/json; charset=utf-8"),
        &delete,
    );
    assert_eq!(status, 200, "{body}");
    let run = server.create_run("other", "r");
    let (status, body) = server.request("DELETE", &format!("/api/v1/runs/{run}"), None);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn host_names_are_checked_against_the_allowed_list() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let port = server.address().rsplit(':').next().unwrap().to_string();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "LOCALHOST".into(),
    ] {
        let (status, answer) = raw_request(
            &server,
            &format!(
                "GET /api/v1/experiments HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(status, 200, "{host}: {answer}");
    }
    // A name rebound to this address by an attacker's DNS.
    let (status, answer) = raw_request(
        &server,
        &format!(
            "GET /api/v1/experiments HTTP/1.1\r\nHost: attacker.example.com:{port}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("--allowed-hosts"), "{answer}");
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--allowed-hosts", "tracking.example.com"]);
    let (status, answer) = raw_request(
        &server,
        "GET /health HTTP/1.1\r\nHost: tracking.example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = raw_request(
        &server,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 403, "{answer}");
}

#[test]
fn cors_is_off_unless_origins_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let client = reqwest::blocking::Client::new();
    let response = client
        .get(server.url("/api/v1/experiments"))
        .header("origin", "https://notebooks.example.com")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let preflight = client
        .request(reqwest::Method::OPTIONS, server.url("/api/v1/experiments"))
        .header("origin", "https://notebooks.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .unwrap();
    assert!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert_ne!(preflight.status().as_u16(), 204);
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &["--cors-origin", "https://notebooks.example.com"],
    );
    let preflight = client
        .request(reqwest::Method::OPTIONS, server.url("/api/v1/experiments"))
        .header("origin", "https://notebooks.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 204);
    let headers = preflight.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://notebooks.example.com"
    );
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("content-type")
    );
    let created = client
        .post(server.url("/api/v1/experiments"))
        .header("origin", "https://notebooks.example.com")
        .json(&json!({"name": "from-a-notebook"}))
        .send()
        .unwrap();
    assert_eq!(created.status().as_u16(), 200);
    assert_eq!(
        created.headers()["access-control-allow-origin"],
        "https://notebooks.example.com"
    );
    let other = client
        .get(server.url("/api/v1/experiments"))
        .header("origin", "https://evil.example.com")
        .send()
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[test]
fn slow_headers_and_stalled_bodies_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &["--header-timeout", "1s", "--body-timeout", "1s"],
    );
    let run = server.create_run("slow", "r");
    // Headers that never finish: the server closes the connection.
    let mut stream = server.connect_raw();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let started = Instant::now();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the connection stayed open"
    );
    // An idle keep-alive connection is closed too.
    let mut stream = server.connect_raw();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A body that stops halfway: 408, and the points are not logged.
    let body = json!({"step": 1, "values": {"loss": 0.5}}).to_string();
    let mut stream = server.connect_raw();
    write!(
        stream,
        "POST /api/v1/runs/{run}/metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..body.len() / 2]
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let (status, answer) = parse_answer(&String::from_utf8_lossy(&answer));
    assert_eq!(status, 408, "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
    assert!(answer.contains("--body-timeout"), "{answer}");
    // Streamed NDJSON bodies too.
    let mut stream = server.connect_raw();
    let line =
        format!("{{\"run_id\": \"{run}\", \"key\": \"loss\", \"step\": 2, \"value\": 1.0}}\n");
    write!(
        stream,
        "POST /api/v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{line}\r\n",
        line.len()
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let (status, answer) = parse_answer(&String::from_utf8_lossy(&answer));
    assert_eq!(status, 408, "{answer}");
    let (steps, _, _) = server.series(&run, "loss");
    assert!(steps.is_empty(), "a refused body logged {steps:?}");
    assert!(server.metric("stepstore_header_timeouts_total") >= 2.0);
    assert_eq!(server.metric("stepstore_body_timeouts_total"), 2.0);
}

#[test]
fn connections_past_the_cap_get_503_and_slots_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &["--max-connections", "2"]);
    // Two keep-alive connections, each with one answered request, hold
    // both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = server.connect_raw();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut buffer = [0u8; 1024];
        let read = stream.read(&mut buffer).unwrap();
        assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let (status, answer) = raw_request(
        &server,
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("--max-connections"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // Closing one frees its slot (once the server has seen the close).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, answer) = raw_request(
            &server,
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        );
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{answer}");
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.request("GET", "/health", None).0 != 200 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.metric("stepstore_connections_refused_total") >= 1.0);
    server.stop();
}

#[test]
fn shutdown_does_not_wait_forever_for_a_live_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let run = server.create_run("live", "r");
    server.post(
        &format!("/api/v1/runs/{run}/metrics"),
        &json!({"step": 1, "values": {"loss": 0.5}}),
    );
    // Buffered points of other runs, which shutdown persists.
    for name in ["a", "b", "c"] {
        let other = server.create_run("live", name);
        let steps: Vec<i64> = (0..50_000).collect();
        server.post(
            "/api/v1/ingest",
            &json!({"batches": [{"run_id": other, "steps": steps, "values": {"x": steps}}]}),
        );
    }
    // Followers that keep their streams open.
    let mut followers = Vec::new();
    for _ in 0..8 {
        let mut stream = server.connect_raw();
        write!(
            stream,
            "GET /api/v1/runs/{run}/stream?keys=loss&after_step=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        .unwrap();
        let mut buffer = [0u8; 4096];
        let read = stream.read(&mut buffer).unwrap();
        let head = String::from_utf8_lossy(&buffer[..read]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        followers.push((stream, head));
    }
    // SIGTERM: every follower gets a last event saying where to resume,
    // its stream closes, and the server exits cleanly, within the 10 s an
    // orchestrator gives before SIGKILL, with the points kept.
    let started = std::time::Instant::now();
    server.stop();
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "SIGTERM took {took:?}"
    );
    for (mut stream, head) in followers {
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        let rest = head + &String::from_utf8_lossy(&rest);
        assert!(rest.contains("SERVER_SHUTTING_DOWN"), "{rest}");
        assert!(rest.contains("\"resume_after_step\":1"), "{rest}");
    }
    // The buffers were written to metric files, not left to the WAL.
    assert!(common::parquet_files(dir.path()).len() >= 4);
    let mut server = TestServer::start(dir.path(), &[]);
    let (steps, _, _) = server.series(&run, "loss");
    assert_eq!(steps, vec![1]);
    let count = server.post(
        "/api/v1/sql",
        &json!({"query": "SELECT count(*) AS n FROM metrics"}),
    );
    assert_eq!(count["rows"][0]["n"], 150_001, "{count}");
    server.stop();
}
