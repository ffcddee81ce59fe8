//! `POST /api/v1/ingest` in each encoding (columnar JSON, NDJSON, Arrow
//! IPC): points of several runs come back exactly, and a request with one
//! bad row is refused whole, naming the row, with nothing stored.

mod common;

use std::sync::Arc;

use arrow::array::{ArrayRef, DictionaryArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use arrow::ipc::writer::StreamWriter;
use common::{TestServer, f64_to_json, same_value};
use serde_json::{Value, json};

const KEYS: [&str; 3] = ["train/loss", "train/acc", "lr"];
const STEPS: i64 = 500;

/// The value of `key` at `step` of run number `run`: includes non-finite ones.
fn value(run: usize, key: usize, step: i64) -> f64 {
    match (run + key + step as usize) % 97 {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        _ => (run * 1000 + key) as f64 + step as f64 / 7.0,
    }
}

fn timestamp(step: i64) -> i64 {
    1_700_000_000_000 + step * 13
}

fn post(server: &TestServer, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(server.url("/api/v1/ingest"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .expect("request");
    let status = response.status().as_u16();
    let text = response.text().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn columnar_body(runs: &[String]) -> Vec<u8> {
    let batches: Vec<Value> = runs
        .iter()
        .enumerate()
        .map(|(run, run_id)| {
            let values: serde_json::Map<String, Value> = KEYS
                .iter()
                .enumerate()
                .map(|(key, name)| {
                    let column: Vec<Value> = (0..STEPS)
                        .map(|step| f64_to_json(value(run, key, step)))
                        .collect();
                    (name.to_string(), Value::Array(column))
                })
                .collect();
            json!({
                "run_id": run_id,
                "steps": (0..STEPS).collect::<Vec<_>>(),
                "timestamps": (0..STEPS).map(timestamp).collect::<Vec<_>>(),
                "values": values,
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "batches": batches })).unwrap()
}

fn ndjson_body(runs: &[String]) -> Vec<u8> {
    let mut text = String::new();
    // Interleave runs and keys, as many trainers writing one stream would.
    for step in 0..STEPS {
        for (run, run_id) in runs.iter().enumerate() {
            for (key, name) in KEYS.iter().enumerate() {
                let point = json!({"run_id": run_id, "key": name, "step": step,
                                   "value": f64_to_json(value(run, key, step)),
                                   "timestamp": timestamp(step)});
                text.push_str(&point.to_string());
                text.push('\n');
            }
        }
    }
    text.into_bytes()
}

fn arrow_body(runs: &[String]) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "run_id",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        ),
        Field::new("key", DataType::Utf8, false),
        Field::new("step", DataType::Int64, false),
        Field::new("timestamp", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
    ]));
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &schema).unwrap();
    // One record batch per run, to cover several batches in one stream.
    for (run, run_id) in runs.iter().enumerate() {
        let (mut keys, mut steps, mut timestamps, mut values) = (vec![], vec![], vec![], vec![]);
        for (key, name) in KEYS.iter().enumerate() {
            for step in 0..STEPS {
                keys.push(*name);
                steps.push(step);
                timestamps.push(timestamp(step));
                values.push(value(run, key, step));
            }
        }
        let rows = keys.len();
        let run_ids: DictionaryArray<Int32Type> =
            std::iter::repeat_n(run_id.as_str(), rows).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(run_ids),
            Arc::new(StringArray::from(keys)),
            Arc::new(Int64Array::from(steps)),
            Arc::new(Int64Array::from(timestamps)),
            Arc::new(Float64Array::from(values)),
        ];
        writer
            .write(&RecordBatch::try_new(Arc::clone(&schema), columns).unwrap())
            .unwrap();
    }
    writer.finish().unwrap();
    drop(writer);
    out
}

fn check_runs(server: &TestServer, runs: &[String]) {
    for (run, run_id) in runs.iter().enumerate() {
        for (key, name) in KEYS.iter().enumerate() {
            let (steps, timestamps, values) = server.series(run_id, name);
            assert_eq!(steps, (0..STEPS).collect::<Vec<_>>(), "{run_id} {name}");
            assert_eq!(timestamps, (0..STEPS).map(timestamp).collect::<Vec<_>>());
            for (step, actual) in values.iter().enumerate() {
                let expected = value(run, key, step as i64);
                assert!(
                    same_value(*actual, expected),
                    "{run_id} {name} step {step}: {actual} != {expected}"
                );
            }
        }
    }
}

#[test]
fn every_encoding_round_trips_points_of_many_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    type Encoder = fn(&[String]) -> Vec<u8>;
    let encodings: [(&str, Encoder); 3] = [
        ("application/json", columnar_body),
        ("application/x-ndjson", ndjson_body),
        ("application/vnd.apache.arrow.stream", arrow_body),
    ];
    let mut all_runs = Vec::new();
    for (content_type, encode) in encodings {
        let runs: Vec<String> = (0..4)
            .map(|index| server.create_run("bulk", &format!("{content_type}-{index}")))
            .collect();
        let (status, response) = post(&server, content_type, encode(&runs));
        assert_eq!(status, 200, "{content_type}: {response}");
        assert_eq!(response["accepted"], 4 * KEYS.len() as i64 * STEPS);
        assert_eq!(response["runs"], 4);
        check_runs(&server, &runs);
        all_runs.push(runs);
    }
    server.restart();
    for runs in &all_runs {
        check_runs(&server, runs);
    }
}

#[test]
fn a_bad_row_refuses_the_whole_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let good = server.create_run("bulk-errors", "good");
    let run_path = |key: &str| format!("/api/v1/runs/{good}/metrics/{key}");

    let columnar = json!({"batches": [
        {"run_id": good, "steps": [1, 2], "values": {"loss": [0.5, 0.25]}},
        {"run_id": good, "steps": [3], "values": {"loss": [0.5, 0.1]}}
    ]});
    let (status, body) = post(
        &server,
        "application/json",
        columnar.to_string().into_bytes(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("batches[1]"),
        "{body}"
    );

    let ndjson = format!(
        "{{\"run_id\": \"{good}\", \"key\": \"loss\", \"step\": 1, \"value\": 1}}\n\
         {{\"run_id\": \"{good}\", \"key\": \"loss\", \"step\": 2, \"value\": \"high\"}}\n"
    );
    let (status, body) = post(&server, "application/x-ndjson", ndjson.into_bytes());
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("line 2:"),
        "{body}"
    );

    let unknown_run = "0123456789abcdef0123456789abcdef";
    let ndjson = format!(
        "{{\"run_id\": \"{good}\", \"key\": \"loss\", \"step\": 1, \"value\": 1}}\n\
         {{\"run_id\": \"{unknown_run}\", \"key\": \"loss\", \"step\": 2, \"value\": 2}}\n"
    );
    let (status, body) = post(&server, "application/x-ndjson", ndjson.into_bytes());
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error_code"], "RESOURCE_DOES_NOT_EXIST");

    let (status, body) = post(
        &server,
        "application/vnd.apache.arrow.stream",
        b"garbage".to_vec(),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_code"], "MALFORMED_REQUEST");

    let (status, body) = post(&server, "text/plain", b"x".to_vec());
    assert_eq!(status, 415, "{body}");

    // Nothing from the refused requests was stored.
    let (status, body) = server.request("GET", &run_path("loss"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["steps"], json!([]), "{body}");
}
