//! Lineage over HTTP: artifacts created and found by identity, the inputs
//! and outputs of the runs of a small pipeline (a checkpoint at a step),
//! MLflow `log-inputs` datasets as artifacts, the subgraph query in each
//! direction, the SQL tables, bad requests, and all of it again after a
//! SIGKILL (the WAL) and after a clean restart (the snapshot).

mod common;

use common::TestServer;
use serde_json::{Value, json};

fn post(server: &TestServer, path: &str, body: Value) -> Value {
    let (status, answer) = server.request("POST", path, Some(&body));
    assert_eq!(status, 200, "POST {path} {body}: {answer}");
    answer
}

fn id_of(answer: &Value) -> String {
    answer["artifact"]["artifact_id"]
        .as_str()
        .expect("artifact_id")
        .to_string()
}

/// Names of the artifacts and runs of a lineage answer, sorted.
fn names(graph: &Value) -> Vec<String> {
    let mut names: Vec<String> = graph["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|artifact| artifact["name"].as_str().unwrap().to_string())
        .chain(
            graph["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|run| run["run_name"].as_str().unwrap().to_string()),
        )
        .collect();
    names.sort();
    names
}

fn sql_rows(server: &TestServer, query: &str) -> Vec<Value> {
    let answer = post(server, "/api/v1/sql", json!({ "query": query }));
    answer["rows"].as_array().unwrap().clone()
}

struct Pipeline {
    raw: String,
    model: String,
    checkpoint: String,
    train: String,
}

/// raw -> [prepare] -> clean -> [train] -> checkpoint@200, model -> [evaluate]
fn build_pipeline(server: &TestServer) -> Pipeline {
    let prepare = server.create_run("pipeline", "prepare");
    let train = server.create_run("pipeline", "train");
    let evaluate = server.create_run("pipeline", "evaluate");
    let raw_body = json!({"type": "dataset", "name": "raw", "uri": "s3://data/raw",
                          "digest": "md5:1", "properties": {"rows": 1000}});
    let raw = post(server, "/api/v1/artifacts", raw_body.clone());
    assert_eq!(raw["created"], true);
    assert_eq!(raw["artifact"]["properties"]["rows"], "1000");
    let again = post(server, "/api/v1/artifacts", raw_body);
    assert_eq!(again["created"], false, "the same type, name and digest");
    assert_eq!(id_of(&again), id_of(&raw));
    let raw = id_of(&raw);
    post(
        server,
        &format!("/api/v1/runs/{prepare}/inputs"),
        json!({"artifacts": [{"artifact_id": raw}]}),
    );
    let clean = json!({"type": "dataset", "name": "clean", "uri": "s3://data/clean",
                       "digest": "md5:2"});
    let output = post(
        server,
        &format!("/api/v1/runs/{prepare}/outputs"),
        json!({"artifacts": [clean.clone()]}),
    );
    let clean_id = output["events"][0]["artifact_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Described again by train: found by identity, not created twice.
    let input = post(
        server,
        &format!("/api/v1/runs/{train}/inputs"),
        json!({"artifacts": [clean]}),
    );
    assert_eq!(input["events"][0]["artifact_id"], clean_id.as_str());
    assert_eq!(input["events"][0]["type"], "INPUT");
    let checkpoint = post(
        server,
        &format!("/api/v1/runs/{train}/outputs"),
        json!({"step": 200, "artifacts": [{"type": "checkpoint", "uri": "s3://ckpt/200",
                                            "digest": "sha:200"}]}),
    );
    assert_eq!(checkpoint["events"][0]["step"], 200);
    let checkpoint = checkpoint["events"][0]["artifact_id"]
        .as_str()
        .unwrap()
        .to_string();
    let model = post(
        server,
        &format!("/api/v1/runs/{train}/outputs"),
        json!({"artifacts": [{"type": "model", "name": "model", "uri": "s3://models/1",
                              "digest": "sha:m1"}]}),
    );
    let model = model["events"][0]["artifact_id"]
        .as_str()
        .unwrap()
        .to_string();
    post(
        server,
        &format!("/api/v1/runs/{evaluate}/inputs"),
        json!({"artifacts": [{"artifact_id": model}]}),
    );
    Pipeline {
        raw,
        model,
        checkpoint,
        train,
    }
}

fn check_pipeline(server: &TestServer, pipeline: &Pipeline) {
    let up = server.get(&format!(
        "/api/v1/lineage?artifact={}&direction=upstream",
        pipeline.model
    ));
    assert_eq!(names(&up), ["clean", "model", "prepare", "raw", "train"]);
    assert_eq!(up["events"].as_array().unwrap().len(), 4, "{up}");
    let down = server.get(&format!(
        "/api/v1/lineage?artifact={}&direction=downstream",
        pipeline.raw
    ));
    assert_eq!(
        names(&down),
        [
            "clean",
            "evaluate",
            "model",
            "prepare",
            "raw",
            "s3://ckpt/200",
            "train"
        ]
    );
    let near = server.get(&format!(
        "/api/v1/lineage?run={}&max_hops=1",
        pipeline.train
    ));
    assert_eq!(names(&near), ["clean", "model", "s3://ckpt/200", "train"]);
    let run = &near["runs"][0];
    assert_eq!(run["run_id"], pipeline.train.as_str());
    assert!(run["experiment_id"].is_string() && run["status"] == "RUNNING");
    let artifact = server.get(&format!("/api/v1/artifacts/{}", pipeline.checkpoint));
    assert_eq!(artifact["artifact"]["type"], "checkpoint");
    assert_eq!(artifact["events"][0]["step"], 200);
    assert_eq!(artifact["events"][0]["type"], "OUTPUT");
    let models = server.get("/api/v1/artifacts?type=model");
    assert_eq!(models["artifacts"].as_array().unwrap().len(), 1);
    // SQL: who consumed what, joined with runs.
    let rows = sql_rows(
        server,
        "SELECT r.run_name, a.name, e.type, e.step FROM events e \
         JOIN runs r ON r.run_id = e.run_id JOIN artifacts a ON a.artifact_id = e.artifact_id \
         WHERE a.type <> 'dataset' OR r.run_name = 'prepare' ORDER BY r.run_name, a.name",
    );
    let text: Vec<String> = rows
        .iter()
        .map(|row| {
            format!(
                "{} {} {} {}",
                row["run_name"].as_str().unwrap(),
                row["name"].as_str().unwrap(),
                row["type"].as_str().unwrap(),
                row["step"]
            )
        })
        .collect();
    assert_eq!(
        text,
        [
            "evaluate model INPUT null",
            "prepare clean OUTPUT null",
            "prepare raw INPUT null",
            "train model OUTPUT null",
            "train s3://ckpt/200 OUTPUT 200",
        ]
    );
    let properties = sql_rows(
        server,
        "SELECT key, value FROM artifact_properties WHERE key = 'rows'",
    );
    assert_eq!(properties, [json!({"key": "rows", "value": "1000"})]);
}

#[test]
fn a_pipeline_lineage_is_recorded_queried_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let pipeline = build_pipeline(&server);
    check_pipeline(&server, &pipeline);
    server.kill();
    server.start_again();
    check_pipeline(&server, &pipeline);
    server.restart();
    check_pipeline(&server, &pipeline);
}

#[test]
fn mlflow_datasets_become_dataset_artifacts_joinable_with_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let mut runs = Vec::new();
    for (name, accuracy) in [("a", 0.91), ("b", 0.87)] {
        let run = server.create_run("datasets", name);
        post(
            &server,
            "/api/2.0/mlflow/runs/log-inputs",
            json!({"run_id": run, "datasets": [{
                "dataset": {"name": "mnist", "digest": "d41d8", "source_type": "s3",
                            "source": "{\"uri\": \"s3://data/mnist\"}"},
                "tags": [{"key": "mlflow.data.context", "value": "training"}]}]}),
        );
        post(
            &server,
            &format!("/api/v1/runs/{run}/metrics"),
            json!({"step": 10, "values": {"accuracy": accuracy}}),
        );
        runs.push(run);
    }
    let datasets = server.get("/api/v1/artifacts?type=dataset&digest=d41d8");
    let list = datasets["artifacts"].as_array().unwrap();
    assert_eq!(list.len(), 1, "one artifact for both runs: {datasets}");
    assert_eq!(list[0]["uri"], "s3://data/mnist");
    assert_eq!(list[0]["properties"]["context"], "training");
    // The issue's example: every run that consumed dataset digest X, with
    // its final accuracy.
    let query = "SELECT r.run_name, m.value AS accuracy FROM artifacts a \
                 JOIN events e ON e.artifact_id = a.artifact_id AND e.type = 'INPUT' \
                 JOIN runs r ON r.run_id = e.run_id \
                 JOIN latest_metrics m ON m.run_id = r.run_id AND m.key = 'accuracy' \
                 WHERE a.digest = 'd41d8' ORDER BY r.run_name";
    let expected = [
        json!({"run_name": "a", "accuracy": 0.91}),
        json!({"run_name": "b", "accuracy": 0.87}),
    ];
    assert_eq!(sql_rows(&server, query), expected);
    server.kill();
    server.start_again();
    assert_eq!(sql_rows(&server, query), expected);
}

#[test]
fn bad_lineage_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let run = server.create_run("errors", "r");
    let cases = [
        (
            "POST",
            "/api/v1/artifacts".to_string(),
            Some(json!({"uri": "s3://x"})),
            400,
            "type",
        ),
        (
            "POST",
            "/api/v1/artifacts".to_string(),
            Some(json!({"type": "model"})),
            400,
            "uri",
        ),
        (
            "POST",
            "/api/v1/artifacts".to_string(),
            Some(json!({"type": "model", "uri": "u", "artifact_id": "3"})),
            400,
            "given by the server",
        ),
        (
            "POST",
            format!("/api/v1/runs/{run}/inputs"),
            Some(json!({"artifacts": [{"artifact_id": "99"}]})),
            404,
            "no artifact with id 99",
        ),
        (
            "POST",
            format!("/api/v1/runs/{run}/inputs"),
            Some(json!({"artifacts": []})),
            400,
            "at least one",
        ),
        (
            "POST",
            format!("/api/v1/runs/{run}/outputs"),
            Some(json!({"artifacts": [{"artifact_id": "1", "uri": "u"}]})),
            400,
            "not both",
        ),
        (
            "POST",
            "/api/v1/runs/0123456789abcdef0123456789abcdef/inputs".to_string(),
            Some(json!({"artifacts": [{"type": "t", "uri": "u"}]})),
            404,
            "not found",
        ),
        (
            "GET",
            "/api/v1/lineage".to_string(),
            None,
            400,
            "artifact=ID or run=ID",
        ),
        (
            "GET",
            format!("/api/v1/lineage?run={run}&direction=sideways"),
            None,
            400,
            "direction",
        ),
        (
            "GET",
            "/api/v1/lineage?artifact=5".to_string(),
            None,
            404,
            "no artifact",
        ),
        (
            "GET",
            "/api/v1/artifacts/abc".to_string(),
            None,
            400,
            "not an artifact id",
        ),
    ];
    for (method, path, body, status, message) in cases {
        let (got, answer) = server.request(method, &path, body.as_ref());
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert!(answer["error_code"].is_string(), "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(message),
            "{method} {path}: {answer}"
        );
    }
    // Nothing was created by the refused requests.
    assert_eq!(server.get("/api/v1/artifacts")["artifacts"], json!([]));
}
