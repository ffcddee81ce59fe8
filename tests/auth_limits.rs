//! Tokens limited to experiments, end to end: such a token sees and
//! changes only its experiments through every family of endpoints (the
//! native API, bulk ingest, the scalar API and streams, SQL, the
//! TensorBoard endpoints, MLflow's REST API and `/graphql`), may not make
//! experiments or manage tokens, and a refused request changes nothing.

mod common;

use common::TestServer;
use serde_json::{Value, json};

struct Client {
    base: String,
    http: reqwest::blocking::Client,
}

impl Client {
    fn call(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", self.base),
            )
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn ok(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(token, method, path, body);
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer
    }

    fn denied(&self, token: &str, method: &str, path: &str, body: Option<Value>) {
        let (status, answer) = self.call(token, method, path, body);
        assert_eq!(status, 403, "{method} {path} should be refused: {answer}");
        assert_eq!(answer["error_code"], "PERMISSION_DENIED", "{answer}");
    }
}

fn token(client: &Client, admin: &str, name: &str, scope: &str, experiments: &[&str]) -> String {
    let made = client.ok(
        admin,
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": name, "scope": scope, "experiments": experiments})),
    );
    made["token"].as_str().unwrap().to_string()
}

#[test]
fn a_limited_token_sees_and_changes_only_its_experiments() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--auth", "required"]);
    let admin = server
        .stdout_lines()
        .into_iter()
        .find(|line| line.starts_with("stepstore_"))
        .expect("first admin token");
    let client = Client {
        base: server.base_url.clone(),
        http: reqwest::blocking::Client::new(),
    };
    // Two experiments with a run each, params, tags and points.
    let mut runs = Vec::new();
    for name in ["mine", "theirs"] {
        let run = client.ok(
            &admin,
            "POST",
            "/api/v1/runs",
            Some(
                json!({"experiment_name": name, "run_name": format!("{name}-run"),
                        "params": {"lr": 0.1}, "tags": {"owner": name}}),
            ),
        );
        let run_id = run["run_id"].as_str().unwrap().to_string();
        client.ok(
            &admin,
            "POST",
            &format!("/api/v1/runs/{run_id}/metrics"),
            Some(json!({"points": [{"key": "loss", "value": 0.5, "step": 1},
                                   {"key": "loss", "value": 0.4, "step": 2}]})),
        );
        runs.push((run["experiment_id"].as_str().unwrap().to_string(), run_id));
    }
    let (mine_exp, mine_run) = runs[0].clone();
    let (theirs_exp, theirs_run) = runs[1].clone();
    let reader = token(&client, &admin, "reader", "read", &[&mine_exp]);
    let writer = token(&client, &admin, "writer", "write", &[&mine_exp]);
    let limited_admin = token(&client, &admin, "boss", "admin", &[&mine_exp]);

    // Native API.
    let listed = client.ok(&reader, "GET", "/api/v1/experiments", None);
    let names: Vec<&str> = listed["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mine"]);
    client.ok(
        &reader,
        "GET",
        &format!("/api/v1/experiments/{mine_exp}"),
        None,
    );
    client.denied(
        &reader,
        "GET",
        &format!("/api/v1/experiments/{theirs_exp}"),
        None,
    );
    client.denied(
        &reader,
        "GET",
        &format!("/api/v1/experiments/{theirs_exp}/runs"),
        None,
    );
    client.ok(&reader, "GET", &format!("/api/v1/runs/{mine_run}"), None);
    client.denied(&reader, "GET", &format!("/api/v1/runs/{theirs_run}"), None);
    let point = json!({"step": 3, "values": {"loss": 0.3}});
    client.ok(
        &writer,
        "POST",
        &format!("/api/v1/runs/{mine_run}/metrics"),
        Some(point.clone()),
    );
    client.denied(
        &writer,
        "POST",
        &format!("/api/v1/runs/{theirs_run}/metrics"),
        Some(point),
    );
    client.denied(
        &writer,
        "POST",
        &format!("/api/v1/runs/{theirs_run}/tags"),
        Some(json!({"x": "y"})),
    );
    client.denied(
        &writer,
        "PATCH",
        &format!("/api/v1/experiments/{theirs_exp}"),
        Some(json!({"name": "stolen"})),
    );
    client.denied(
        &writer,
        "POST",
        "/api/v1/experiments",
        Some(json!({"name": "new"})),
    );
    client.denied(
        &writer,
        "POST",
        "/api/v1/runs",
        Some(json!({"experiment_name": "theirs"})),
    );
    client.denied(
        &writer,
        "POST",
        "/api/v1/runs",
        Some(json!({"experiment_name": "brand-new"})),
    );
    client.ok(
        &writer,
        "POST",
        "/api/v1/runs",
        Some(json!({"experiment_id": mine_exp, "run_name": "more"})),
    );
    client.denied(
        &limited_admin,
        "DELETE",
        &format!("/api/v1/runs/{theirs_run}"),
        None,
    );
    client.denied(&limited_admin, "GET", "/api/v1/tokens", None);
    client.denied(
        &limited_admin,
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": "escalate", "scope": "admin"})),
    );

    // Bulk ingest: one forbidden run refuses the whole request.
    let bulk = json!({"batches": [
        {"run_id": mine_run, "steps": [10], "values": {"loss": [0.1]}},
        {"run_id": theirs_run, "steps": [10], "values": {"loss": [0.1]}}]});
    client.denied(&writer, "POST", "/api/v1/ingest", Some(bulk));
    let series = client.ok(
        &admin,
        "GET",
        &format!("/api/v1/runs/{mine_run}/metrics/loss?max_points=0"),
        None,
    );
    assert_eq!(
        series["steps"],
        json!([1, 2, 3]),
        "nothing of the refused request was written"
    );

    // Scalar API and streams.
    client.ok(
        &reader,
        "GET",
        &format!("/api/v1/runs/{mine_run}/metrics/loss"),
        None,
    );
    client.denied(
        &reader,
        "GET",
        &format!("/api/v1/runs/{theirs_run}/metrics/loss"),
        None,
    );
    client.denied(
        &reader,
        "GET",
        &format!("/api/v1/runs/{theirs_run}/metrics"),
        None,
    );
    client.denied(
        &reader,
        "POST",
        "/api/v1/scalars",
        Some(json!({"runs": [mine_run, theirs_run], "keys": ["loss"]})),
    );
    client.denied(
        &reader,
        "GET",
        &format!("/api/v1/runs/{theirs_run}/stream"),
        None,
    );

    // SQL: every table holds only the token's experiments, whatever the
    // query asks.
    for (query, expected) in [
        ("SELECT count(*) AS n FROM metrics", 3),
        (
            &*format!("SELECT count(*) AS n FROM metrics WHERE experiment_id = '{theirs_exp}'"),
            0,
        ),
        (
            &*format!("SELECT count(*) AS n FROM metrics WHERE run_id = '{theirs_run}'"),
            0,
        ),
        ("SELECT count(*) AS n FROM experiments", 1),
        ("SELECT count(*) AS n FROM runs", 2),
        ("SELECT count(*) AS n FROM params", 1),
        ("SELECT count(*) AS n FROM tags WHERE key = 'owner'", 1),
        ("SELECT count(*) AS n FROM latest_metrics", 1),
        ("SELECT count(*) AS n FROM experiment_tags", 0),
    ] {
        let answer = client.ok(
            &reader,
            "POST",
            "/api/v1/sql",
            Some(json!({"query": query})),
        );
        assert_eq!(answer["rows"][0]["n"], expected, "{query}: {answer}");
    }
    let all = client.ok(
        &admin,
        "POST",
        "/api/v1/sql",
        Some(json!({"query": "SELECT count(*) AS n FROM metrics"})),
    );
    assert_eq!(all["rows"][0]["n"], 5);

    // TensorBoard endpoints.
    let tb_runs = client.ok(&reader, "GET", "/data/runs", None);
    assert_eq!(tb_runs, json!([mine_run]));
    let tags = client.ok(&reader, "GET", "/data/plugin/scalars/tags", None);
    assert!(tags.get(&theirs_run).is_none(), "{tags}");
    client.denied(
        &reader,
        "GET",
        &format!("/data/plugin/scalars/scalars?run={theirs_run}&tag=loss"),
        None,
    );
    client.denied(
        &reader,
        "GET",
        &format!("/data/plugin/scalars/tags?experiment_id={theirs_exp}"),
        None,
    );

    // Lineage: events only on the token's runs; artifacts and subgraphs
    // hold only what its runs touch.
    let shared = json!({"type": "dataset", "name": "shared", "uri": "s3://d/shared"});
    let secret = json!({"type": "dataset", "name": "secret", "uri": "s3://d/secret"});
    client.ok(
        &admin,
        "POST",
        &format!("/api/v1/runs/{theirs_run}/inputs"),
        Some(json!({"artifacts": [shared.clone(), secret]})),
    );
    client.ok(
        &writer,
        "POST",
        &format!("/api/v1/runs/{mine_run}/inputs"),
        Some(json!({"artifacts": [shared]})),
    );
    client.denied(
        &writer,
        "POST",
        &format!("/api/v1/runs/{theirs_run}/outputs"),
        Some(json!({"artifacts": [{"type": "model", "uri": "s3://m"}]})),
    );
    let seen = client.ok(&reader, "GET", "/api/v1/artifacts", None);
    let seen: Vec<&str> = seen["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|artifact| artifact["name"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["shared"]);
    let all_artifacts = client.ok(&admin, "GET", "/api/v1/artifacts", None);
    assert_eq!(all_artifacts["artifacts"].as_array().unwrap().len(), 2);
    let shared_id = all_artifacts["artifacts"][0]["artifact_id"]
        .as_str()
        .unwrap()
        .to_string();
    let graph = client.ok(
        &reader,
        "GET",
        &format!("/api/v1/lineage?artifact={shared_id}&direction=downstream"),
        None,
    );
    assert_eq!(graph["runs"].as_array().unwrap().len(), 1, "{graph}");
    assert_eq!(graph["runs"][0]["run_id"], mine_run.as_str());
    let (status, _) = client.call(
        &reader,
        "GET",
        &format!("/api/v1/lineage?run={theirs_run}"),
        None,
    );
    assert_eq!(status, 404, "their run is not there for this token");
    let events = client.ok(
        &reader,
        "POST",
        "/api/v1/sql",
        Some(json!({"query": "SELECT count(*) AS n FROM events"})),
    );
    assert_eq!(events["rows"][0]["n"], 1);

    // MLflow's REST API.
    let api = "/api/2.0/mlflow";
    let found = client.ok(
        &reader,
        "POST",
        &format!("{api}/experiments/search"),
        Some(json!({})),
    );
    assert_eq!(found["experiments"].as_array().unwrap().len(), 1, "{found}");
    client.denied(
        &reader,
        "GET",
        &format!("{api}/experiments/get?experiment_id={theirs_exp}"),
        None,
    );
    client.denied(
        &reader,
        "GET",
        &format!("{api}/experiments/get-by-name?experiment_name=theirs"),
        None,
    );
    client.denied(
        &reader,
        "GET",
        &format!("{api}/runs/get?run_id={theirs_run}"),
        None,
    );
    client.denied(
        &reader,
        "POST",
        &format!("{api}/runs/search"),
        Some(json!({"experiment_ids": [mine_exp, theirs_exp]})),
    );
    client.ok(
        &reader,
        "POST",
        &format!("{api}/runs/search"),
        Some(json!({"experiment_ids": [mine_exp]})),
    );
    client.denied(
        &reader,
        "GET",
        &format!("{api}/metrics/get-history?run_id={theirs_run}&metric_key=loss"),
        None,
    );
    client.denied(
        &reader,
        "GET",
        &format!("{api}/metrics/get-history-bulk-interval?run_ids={mine_run}&run_ids={theirs_run}&metric_key=loss"),
        None,
    );
    client.denied(
        &reader,
        "GET",
        &format!("{api}/artifacts/list?run_id={theirs_run}"),
        None,
    );
    client.denied(
        &writer,
        "POST",
        &format!("{api}/runs/log-batch"),
        Some(json!({"run_id": theirs_run, "metrics": [{"key": "loss", "value": 1, "timestamp": 1, "step": 9}]})),
    );
    client.denied(
        &writer,
        "POST",
        &format!("{api}/experiments/create"),
        Some(json!({"name": "x"})),
    );
    client.denied(
        &writer,
        "POST",
        &format!("{api}/runs/create"),
        Some(json!({"experiment_id": theirs_exp})),
    );
    client.denied(
        &limited_admin,
        "POST",
        &format!("{api}/experiments/delete"),
        Some(json!({"experiment_id": theirs_exp})),
    );
    let datasets = client.ok(
        &reader,
        "POST",
        &format!("{api}/experiments/search-datasets"),
        Some(json!({"experiment_ids": [mine_exp]})),
    );
    assert_eq!(datasets, json!({}));

    // GraphQL: the same checks through the same resolvers.
    let get_run = "query($data: MlflowGetRunInput!) { mlflowGetRun(input: $data) { run { info { runName } } } }";
    let answer = client.ok(
        &reader,
        "POST",
        "/graphql",
        Some(json!({"query": get_run, "variables": {"data": {"runId": theirs_run}}})),
    );
    assert_eq!(answer["data"]["mlflowGetRun"], Value::Null, "{answer}");
    assert!(
        answer["errors"][0]
            .as_str()
            .unwrap()
            .contains("not allowed"),
        "{answer}"
    );
    let answer = client.ok(
        &reader,
        "POST",
        "/graphql",
        Some(json!({"query": get_run, "variables": {"data": {"runId": mine_run}}})),
    );
    assert_eq!(
        answer["data"]["mlflowGetRun"]["run"]["info"]["runName"],
        "mine-run"
    );

    // Nothing the refusals touched changed.
    let theirs = client.ok(&admin, "GET", &format!("/api/v1/runs/{theirs_run}"), None);
    assert_eq!(theirs["run"]["tags"].get("x"), None, "{theirs}");
    assert_eq!(theirs["metrics"]["loss"]["count"], 2, "{theirs}");
    let experiment = client.ok(
        &admin,
        "GET",
        &format!("/api/v1/experiments/{theirs_exp}"),
        None,
    );
    assert_eq!(experiment["name"], "theirs");
}
