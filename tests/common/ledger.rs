//! A client-side ledger of what a workload asked the server to keep, and
//! the check of a restarted server against it: every acknowledged point
//! present exactly once, nothing present that was refused or never sent,
//! and every acknowledged run, finish, param, tag and lineage event there.
//! Used by the kill harness and the I/O fault sweep.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{Value, json};

use super::TestServer;

/// How a write ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 200: it must be kept.
    Acked,
    /// Lost with the server (or refused in part): it may or may not be.
    Unknown,
    /// Refused with an error before anything was made durable: it must
    /// not be there.
    Refused,
}

impl Outcome {
    /// `Acked` for true, `Unknown` for false (a write lost with the server).
    pub fn acked_or_unknown(acked: bool) -> Outcome {
        if acked {
            Outcome::Acked
        } else {
            Outcome::Unknown
        }
    }
}

/// The steps of one (run, key) by outcome.
#[derive(Default)]
pub struct Steps {
    pub acked: BTreeSet<i64>,
    pub unknown: BTreeSet<i64>,
    pub refused: BTreeSet<i64>,
}

/// What the workload's requests did to the store, recorded once they are
/// answered (or lost with the server).
#[derive(Default)]
pub struct Ledger {
    /// Per (run, key): steps by outcome.
    pub points: HashMap<(String, String), Steps>,
    /// (run, key, value, acknowledged) of params and tags.
    pub params: Vec<(String, String, String, bool)>,
    pub tags: Vec<(String, String, String, bool)>,
    /// Runs whose creation was acknowledged.
    pub runs: HashSet<String>,
    /// Runs whose FINISHED update was acknowledged.
    pub finished: HashSet<String>,
    /// Reads answered with anything but 200 while the server was up.
    pub failed_reads: Vec<String>,
    /// Keyed bulk requests whose answer was lost with the server: (key,
    /// body, run, keys, steps), sent again after the restart as a client
    /// would.
    pub unanswered_keyed: Vec<KeyedRequest>,
    /// (run, artifact uri, step, acknowledged) of OUTPUT events.
    pub outputs: Vec<(String, String, i64, bool)>,
}

/// A keyed bulk request whose answer was lost.
pub struct KeyedRequest {
    /// Its `Idempotency-Key`.
    pub key: String,
    /// The JSON body, byte for byte.
    pub body: Vec<u8>,
    /// The run and the metric keys it wrote.
    pub run: String,
    pub metric_keys: Vec<String>,
    /// The steps it wrote.
    pub steps: Vec<i64>,
}

impl Ledger {
    /// Records points sent for (run, key).
    pub fn points(
        &mut self,
        run: &str,
        key: &str,
        steps: impl IntoIterator<Item = i64>,
        outcome: Outcome,
    ) {
        let entry = self
            .points
            .entry((run.to_string(), key.to_string()))
            .or_default();
        let set = match outcome {
            Outcome::Acked => &mut entry.acked,
            Outcome::Unknown => &mut entry.unknown,
            Outcome::Refused => &mut entry.refused,
        };
        set.extend(steps);
    }
}

/// An HTTP client that reports a dead server as `None` instead of
/// panicking.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::blocking::Client,
    pub base: String,
}

impl Client {
    /// A client of `server` whose requests give up after 30 s.
    pub fn of(server: &TestServer) -> Client {
        Client {
            http: reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("http client"),
            base: server.base_url.clone(),
        }
    }

    /// Sends a request; `None` when the server is gone.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Option<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let response = request.send().ok()?;
        let status = response.status().as_u16();
        let bytes = response.bytes().ok()?;
        Some((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Sends a JSON body with an `Idempotency-Key`.
    pub fn keyed(&self, path: &str, key: &str, body: &[u8]) -> Option<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_vec())
            .send()
            .ok()?;
        let status = response.status().as_u16();
        let bytes = response.bytes().ok()?;
        Some((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Sends a JSON body.
    pub fn json(&self, method: &str, path: &str, body: &Value) -> Option<(u16, Value)> {
        self.send(
            method,
            path,
            Some(("application/json", body.to_string().into_bytes())),
        )
    }
}

/// Checks the restarted server against the ledger for `runs` (all when
/// `None`); `round` names the check in failures.
pub fn verify(server: &TestServer, ledger: &Ledger, runs: Option<&HashSet<String>>, round: usize) {
    let wanted = |run: &str| runs.is_none_or(|runs| runs.contains(run));
    let (status, duplicates) = server.request(
        "POST",
        "/api/v1/sql",
        Some(
            &json!({"query": "SELECT run_id, key, step, count(*) AS n FROM metrics \
                               GROUP BY run_id, key, step HAVING count(*) > 1 LIMIT 10"}),
        ),
    );
    assert_eq!(status, 200, "{duplicates}");
    assert_eq!(
        duplicates["row_count"], 0,
        "round {round}: duplicated points {duplicates}"
    );
    for ((run, key), steps) in &ledger.points {
        if !wanted(run) {
            continue;
        }
        let query = format!(
            "SELECT step FROM metrics WHERE run_id = '{run}' AND key = '{key}' ORDER BY step"
        );
        let (status, answer) =
            server.request("POST", "/api/v1/sql", Some(&json!({ "query": query })));
        assert_eq!(status, 200, "{answer}");
        let present: BTreeSet<i64> = answer["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|row| row["step"].as_i64().expect("step"))
            .collect();
        let missing: Vec<_> = steps.acked.difference(&present).take(5).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {run} {key}: acknowledged steps lost, e.g. {missing:?}"
        );
        let unexplained: Vec<_> = present
            .iter()
            .filter(|step| !steps.acked.contains(step) && !steps.unknown.contains(step))
            .take(5)
            .collect();
        assert!(
            unexplained.is_empty(),
            "round {round}: {run} {key}: steps refused or never sent are present, e.g. \
             {unexplained:?} (refused: {:?})",
            steps.refused.iter().take(5).collect::<Vec<_>>()
        );
    }
    let mut shown: HashMap<String, Value> = HashMap::new();
    let mut run_of = |run: &str| -> Value {
        shown
            .entry(run.to_string())
            .or_insert_with(|| {
                server.get(&format!("/api/2.0/mlflow/runs/get?run_id={run}"))["run"].clone()
            })
            .clone()
    };
    for run in ledger.runs.iter().filter(|run| wanted(run)) {
        assert!(run_of(run).is_object(), "round {round}: run {run} lost");
    }
    for run in ledger.finished.iter().filter(|run| wanted(run)) {
        assert_eq!(
            run_of(run)["info"]["status"],
            "FINISHED",
            "round {round}: {run}"
        );
    }
    for (run, uri, step, acked) in ledger.outputs.iter().filter(|entry| wanted(&entry.0)) {
        let found = server.get(&format!("/api/v1/artifacts?uri={uri}"));
        let artifacts = found["artifacts"].as_array().expect("artifacts");
        if !acked {
            // Lost with the server: there whole (artifact and event) or not.
            if let Some(artifact) = artifacts.first() {
                let id = artifact["artifact_id"].as_str().unwrap();
                let events = server.get(&format!("/api/v1/artifacts/{id}"))["events"].clone();
                assert_eq!(
                    events.as_array().map(Vec::len),
                    Some(1),
                    "round {round}: {uri}"
                );
            }
            continue;
        }
        assert_eq!(
            artifacts.len(),
            1,
            "round {round}: output {uri} of {run} lost"
        );
        let id = artifacts[0]["artifact_id"].as_str().unwrap();
        let events = server.get(&format!("/api/v1/artifacts/{id}"))["events"].clone();
        assert_eq!(
            events,
            json!([{"artifact_id": id, "run_id": run, "type": "OUTPUT", "step": step,
                    "time": events[0]["time"]}]),
            "round {round}: the OUTPUT event of {uri}"
        );
    }
    for (field, entries) in [("params", &ledger.params), ("tags", &ledger.tags)] {
        for (run, key, value, acked) in entries.iter().filter(|entry| wanted(&entry.0)) {
            if !acked {
                continue;
            }
            let run_json = run_of(run);
            let found = run_json["data"][field]
                .as_array()
                .into_iter()
                .flatten()
                .any(|item| item["key"] == key.as_str() && item["value"] == value.as_str());
            assert!(found, "round {round}: {field} {key}={value} of {run} lost");
        }
    }
}
