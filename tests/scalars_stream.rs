//! The live stream (server-sent events): a follower gets stored points
//! after `after_step`, then every acknowledged point exactly once; a
//! reconnect with `after_step` or `Last-Event-ID` misses none and repeats
//! none; the run's end closes it.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use common::TestServer;
use serde_json::{Value, json};

/// One server-sent event.
#[derive(Debug)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: Value,
}

/// Opens the stream and forwards its events to a channel from a thread;
/// the channel closes when the server ends the stream.
fn subscribe(server: &TestServer, path: &str) -> mpsc::Receiver<SseEvent> {
    subscribe_from(server, path, None)
}

/// `subscribe`, sending `Last-Event-ID` as a reconnecting browser does.
fn subscribe_from(
    server: &TestServer,
    path: &str,
    last_event_id: Option<&str>,
) -> mpsc::Receiver<SseEvent> {
    let client = reqwest::blocking::Client::builder()
        .timeout(None::<Duration>)
        .build()
        .expect("client");
    let mut request = client.get(server.url(path));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().expect("stream");
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let reader = BufReader::new(response);
        let (mut event, mut id, mut data) = (String::new(), None, String::new());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if line.is_empty() {
                if !data.is_empty() {
                    let parsed = serde_json::from_str(&data).expect("JSON data");
                    let message = SseEvent {
                        event: std::mem::take(&mut event),
                        id: id.take(),
                        data: parsed,
                    };
                    if sender.send(message).is_err() {
                        return;
                    }
                }
                data.clear();
            } else if let Some(rest) = line.strip_prefix("event:") {
                event = rest.trim().to_string();
            } else if let Some(rest) = line.strip_prefix("id:") {
                id = Some(rest.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("data:") {
                data.push_str(rest.trim_start());
            }
        }
    });
    receiver
}

fn log(server: &TestServer, run_id: &str, steps: std::ops::Range<i64>) {
    let points: Vec<Value> = steps
        .flat_map(|step| {
            [
                json!({"key": "loss", "step": step, "value": step as f64 / 2.0}),
                json!({"key": "other", "step": step, "value": 1}),
            ]
        })
        .collect();
    server.post(
        &format!("/api/v1/runs/{run_id}/metrics"),
        &json!({ "points": points }),
    );
}

/// Receives `points` events until every step in `wanted` arrived; returns
/// how often each step arrived and the last event id.
fn receive_steps(
    events: &mpsc::Receiver<SseEvent>,
    wanted: std::ops::Range<i64>,
    seen: &mut BTreeMap<i64, usize>,
) -> Option<String> {
    let mut last_id = None;
    while !wanted.clone().all(|step| seen.contains_key(&step)) {
        let event = events
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("timed out; seen {} steps", seen.len()));
        assert_eq!(event.event, "points", "{event:?}");
        for point in event.data["points"].as_array().unwrap() {
            assert_eq!(point["key"], "loss", "only the requested key");
            let step = point["step"].as_i64().unwrap();
            assert_eq!(point["value"].as_f64().unwrap(), step as f64 / 2.0);
            *seen.entry(step).or_default() += 1;
        }
        last_id = event.id.clone();
    }
    last_id
}

#[test]
fn followers_get_every_point_once_and_resume_after_a_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    // Small files, so stored points come from files and buffers.
    let server = TestServer::start(dir.path(), &["--flush-rows", "150"]);
    let run_id = server.create_run("live", "training");
    log(&server, &run_id, 0..100);

    // Stored points after step 49, then live ones.
    let events = subscribe(
        &server,
        &format!("/api/v1/runs/{run_id}/stream?keys=loss&after_step=49"),
    );
    let mut seen = BTreeMap::new();
    receive_steps(&events, 50..100, &mut seen);
    for first in (100..300).step_by(20) {
        log(&server, &run_id, first..first + 20);
    }
    let last_id = receive_steps(&events, 50..300, &mut seen);
    assert_eq!(last_id.as_deref(), Some("299"), "the id is the last step");
    assert!(seen.values().all(|&count| count == 1), "each point once");
    assert_eq!(seen.len(), 250);
    drop(events);

    // Points logged while disconnected come back after a reconnect.
    log(&server, &run_id, 300..350);
    let events = subscribe(
        &server,
        &format!("/api/v1/runs/{run_id}/stream?keys=loss&after_step=299"),
    );
    let mut resumed = BTreeMap::new();
    receive_steps(&events, 300..350, &mut resumed);
    // While stored points are being sent, more arrive live.
    let writer = {
        let base_url = server.base_url.clone();
        let run_id = run_id.clone();
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            for first in (350..450).step_by(10) {
                let points: Vec<Value> = (first..first + 10)
                    .map(|step| json!({"key": "loss", "step": step, "value": step as f64 / 2.0}))
                    .collect();
                let response = client
                    .post(format!("{base_url}/api/v1/runs/{run_id}/metrics"))
                    .json(&json!({ "points": points }))
                    .send()
                    .unwrap();
                assert!(response.status().is_success());
            }
        })
    };
    receive_steps(&events, 300..450, &mut resumed);
    writer.join().unwrap();
    assert!(resumed.values().all(|&count| count == 1), "{resumed:?}");
    assert_eq!(resumed.len(), 150);

    // The run's end closes the stream with an `end` event.
    let (status, _) = server.request(
        "PATCH",
        &format!("/api/v1/runs/{run_id}"),
        Some(&json!({"status": "FINISHED"})),
    );
    assert_eq!(status, 200);
    let end = events
        .recv_timeout(Duration::from_secs(30))
        .expect("end event");
    assert_eq!(end.event, "end");
    assert_eq!(end.data["status"], "FINISHED");
    assert!(
        events.recv_timeout(Duration::from_secs(30)).is_err(),
        "the stream closes after the end"
    );

    // Following a finished run replays what is asked and ends at once.
    let events = subscribe(
        &server,
        &format!("/api/v1/runs/{run_id}/stream?keys=loss&after_step=439"),
    );
    let mut tail = BTreeMap::new();
    receive_steps(&events, 440..450, &mut tail);
    assert_eq!(
        events.recv_timeout(Duration::from_secs(30)).unwrap().event,
        "end"
    );

    // Bad requests.
    let (status, body) = server.request(
        "GET",
        &format!("/api/v1/runs/{run_id}/stream?after_step=abc"),
        None,
    );
    assert_eq!(
        (status, body["error_code"].clone()),
        (400, json!("INVALID_PARAMETER_VALUE"))
    );
    let (status, _) = server.request(
        "GET",
        "/api/v1/runs/0123456789abcdef0123456789abcdef/stream",
        None,
    );
    assert_eq!(status, 404);
}

#[test]
fn a_browser_reconnect_resumes_at_its_last_event_id_not_at_the_urls_after_step() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let run_id = server.create_run("live", "reconnect");
    log(&server, &run_id, 0..100);
    let path = format!("/api/v1/runs/{run_id}/stream?keys=loss&after_step=19");
    let events = subscribe(&server, &path);
    let mut seen = BTreeMap::new();
    let last_id = receive_steps(&events, 20..100, &mut seen).expect("an id");
    assert_eq!(last_id, "99");
    drop(events);

    // Logged while the browser was away; it reopens the same URL with the
    // id it reached, and gets exactly the points after it.
    log(&server, &run_id, 100..130);
    let events = subscribe_from(&server, &path, Some(&last_id));
    let mut resumed = BTreeMap::new();
    receive_steps(&events, 100..130, &mut resumed);
    assert_eq!(
        resumed.keys().next(),
        Some(&100),
        "nothing before the id again"
    );
    assert!(resumed.values().all(|&count| count == 1), "{resumed:?}");
    assert_eq!(resumed.len(), 30);

    let client = reqwest::blocking::Client::new();
    let response = client
        .get(server.url(&path))
        .header("last-event-id", "not-a-step")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

#[test]
fn a_rewind_reaches_followers_and_a_reconnect_resumes_after_the_rewound_step() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--flush-rows", "40"]);
    let run_id = server.create_run("live", "preempted");
    log(&server, &run_id, 0..100);
    let events = subscribe(
        &server,
        &format!("/api/v1/runs/{run_id}/stream?keys=loss&after_step=-1"),
    );
    let mut seen = BTreeMap::new();
    receive_steps(&events, 0..100, &mut seen);
    // Preempted after step 99; the checkpoint was at step 80.
    server.post(
        &format!("/api/v1/runs/{run_id}/rewind"),
        &json!({"step": 80}),
    );
    let rewind = events
        .recv_timeout(Duration::from_secs(30))
        .expect("a rewind event");
    assert_eq!(rewind.event, "rewind", "{rewind:?}");
    assert_eq!(rewind.data["step"], 80);
    assert_eq!(
        rewind.id.as_deref(),
        Some("80"),
        "a reconnect resumes after step 80"
    );
    // The steps after 80 come again, once each, as the replacement points.
    log(&server, &run_id, 81..120);
    let mut again = BTreeMap::new();
    let last_id = receive_steps(&events, 81..120, &mut again);
    assert!(again.values().all(|&count| count == 1), "{again:?}");
    assert_eq!(last_id.as_deref(), Some("119"));
    // A follower that connects now sees each step once: the hidden points
    // of steps 81..99 are not sent.
    let fresh = subscribe(
        &server,
        &format!("/api/v1/runs/{run_id}/stream?keys=loss&after_step=-1"),
    );
    let mut once = BTreeMap::new();
    receive_steps(&fresh, 0..120, &mut once);
    assert!(once.values().all(|&count| count == 1), "{once:?}");
}
