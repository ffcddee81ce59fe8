//! `POST /api/v1/ingest` with an `Idempotency-Key`: a batch sent again
//! (its answer lost) is answered as the first time and stored once, in
//! every encoding, after a SIGKILL and after a clean restart (when the
//! catalog snapshot, not the WAL, holds the key); a key reused with
//! another body is refused.

mod common;

use common::TestServer;
use serde_json::{Value, json};

struct Answer {
    status: u16,
    replayed: bool,
    body: Value,
}

fn post(server: &TestServer, content_type: &str, key: Option<&str>, body: &[u8]) -> Answer {
    let mut request = reqwest::blocking::Client::new()
        .post(server.url("/api/v1/ingest"))
        .header("content-type", content_type)
        .body(body.to_vec());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().expect("request");
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true");
    let text = response.text().expect("body");
    Answer {
        status,
        replayed,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn columnar(run_id: &str, first_step: i64) -> Vec<u8> {
    let steps: Vec<i64> = (first_step..first_step + 10).collect();
    let loss: Vec<f64> = steps.iter().map(|step| *step as f64 / 10.0).collect();
    json!({"batches": [{"run_id": run_id, "steps": steps, "values": {"loss": loss, "acc": loss}}]})
        .to_string()
        .into_bytes()
}

fn ndjson(run_id: &str, first_step: i64) -> Vec<u8> {
    (first_step..first_step + 10)
        .map(|step| {
            json!({"run_id": run_id, "key": "loss", "step": step, "value": 1.0}).to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

fn arrow(run_id: &str, first_step: i64) -> Vec<u8> {
    let steps: Vec<i64> = (first_step..first_step + 10).collect();
    common::arrow_points(run_id, "loss", &steps, &[2.0; 10])
}

/// A request body of 10 steps of a run from a first step.
type BodyOf = fn(&str, i64) -> Vec<u8>;

/// Points stored for `key` of a run.
fn count(server: &TestServer, run_id: &str, key: &str) -> u64 {
    let run = server.get(&format!("/api/v1/runs/{run_id}"));
    run["metrics"][key]["count"].as_u64().unwrap_or(0)
}

#[test]
fn a_batch_sent_again_is_stored_once_in_every_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let encodings: [(&str, BodyOf, u64); 3] = [
        ("application/json", columnar, 20),
        ("application/x-ndjson", ndjson, 10),
        ("application/vnd.apache.arrow.stream", arrow, 10),
    ];
    for (content_type, body, points) in encodings {
        let run_id = server.create_run("idempotent", content_type);
        // Keys are global: each client makes its own unique ones.
        let (key1, key2) = (
            format!("{content_type}/batch-1"),
            format!("{content_type}/batch-2"),
        );
        let (key1, key2) = (Some(key1.as_str()), Some(key2.as_str()));
        let first = post(&server, content_type, key1, &body(&run_id, 0));
        assert_eq!(first.status, 200, "{content_type}: {}", first.body);
        assert!(!first.replayed);
        assert_eq!(first.body, json!({"accepted": points, "runs": 1}));
        let again = post(&server, content_type, key1, &body(&run_id, 0));
        assert_eq!(again.status, 200, "{content_type}: {}", again.body);
        assert!(
            again.replayed,
            "{content_type}: the answer says it is a repeat"
        );
        assert_eq!(again.body, first.body, "{content_type}: the first answer");
        assert_eq!(count(&server, &run_id, "loss"), 10, "{content_type}");
        // The same key with another body is a client bug: refused, nothing
        // written.
        let other = post(&server, content_type, key1, &body(&run_id, 10));
        assert_eq!(other.status, 422, "{content_type}: {}", other.body);
        assert_eq!(other.body["error_code"], "INVALID_PARAMETER_VALUE");
        assert!(
            other.body["message"]
                .as_str()
                .unwrap()
                .contains("another request body"),
            "{}",
            other.body
        );
        assert_eq!(count(&server, &run_id, "loss"), 10, "{content_type}");
        // Without a key, a repeat is a new request (MLflow's behaviour).
        post(&server, content_type, None, &body(&run_id, 0));
        post(&server, content_type, None, &body(&run_id, 0));
        assert_eq!(count(&server, &run_id, "loss"), 30, "{content_type}");
        // A refused request leaves its key free for the corrected batch.
        let bad = post(&server, content_type, key2, b"{not a batch");
        assert_eq!(bad.status, 400, "{content_type}: {}", bad.body);
        let good = post(&server, content_type, key2, &body(&run_id, 20));
        assert_eq!(good.status, 200, "{content_type}: {}", good.body);
        assert!(!good.replayed);
    }
    assert_eq!(server.metric("stepstore_idempotent_replays_total"), 3.0);
    assert_eq!(server.metric("stepstore_idempotency_conflicts_total"), 3.0);
    assert_eq!(server.metric("stepstore_ingest_receipts"), 6.0);
}

#[test]
fn bad_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let run_id = server.create_run("idempotent", "bad-keys");
    let long = "k".repeat(256);
    for key in ["", "has space", long.as_str(), "\"\""] {
        let answer = post(
            &server,
            "application/json",
            Some(key),
            &columnar(&run_id, 0),
        );
        assert_eq!(answer.status, 400, "{key:?}: {}", answer.body);
        assert!(
            answer.body["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{}",
            answer.body
        );
    }
    assert_eq!(count(&server, &run_id, "loss"), 0);
    // A structured-field string: the quotes are not part of the key.
    let quoted = post(
        &server,
        "application/json",
        Some("\"k-1\""),
        &columnar(&run_id, 0),
    );
    assert_eq!(quoted.status, 200, "{}", quoted.body);
    let plain = post(
        &server,
        "application/json",
        Some("k-1"),
        &columnar(&run_id, 0),
    );
    assert!(plain.replayed);
}

#[test]
fn keys_survive_a_sigkill_and_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshots as soon as checkpoints run, so a receipt can move from the
    // WAL to a snapshot while the server runs.
    let mut server = TestServer::start(dir.path(), &["--snapshot-interval", "0s"]);
    let run_id = server.create_run("idempotent", "restarts");
    let keys: Vec<String> = (0..20)
        .map(|index| format!("trainer-7/batch-{index}"))
        .collect();
    for (index, key) in keys.iter().enumerate() {
        let answer = post(
            &server,
            "application/json",
            Some(key),
            &columnar(&run_id, index as i64 * 10),
        );
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let resend_all = |server: &TestServer, round: &str| {
        for (index, key) in keys.iter().enumerate() {
            let answer = post(
                server,
                "application/json",
                Some(key),
                &columnar(&run_id, index as i64 * 10),
            );
            assert_eq!(answer.status, 200, "{round}: {}", answer.body);
            assert!(answer.replayed, "{round}: {key} is recognised");
            assert_eq!(answer.body, json!({"accepted": 20, "runs": 1}), "{round}");
        }
        assert_eq!(count(server, &run_id, "loss"), 200, "{round}");
    };
    // Acknowledged, then killed: the WAL (or a snapshot) holds the keys.
    server.kill();
    server.start_again();
    resend_all(&server, "after SIGKILL");
    // A clean stop persists every buffer and snapshots the catalog, after
    // which the WAL is removed: only the snapshot holds the keys now.
    server.restart();
    let wal_records: u64 = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        wal_records < 4096,
        "the WAL was emptied by the clean stop ({wal_records} bytes left)"
    );
    resend_all(&server, "after a clean restart");
    server.kill();
    server.start_again();
    resend_all(&server, "after a second SIGKILL");
}
