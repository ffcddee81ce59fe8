//! Every MLflow endpoint's JSON, successes and errors, checked against the
//! message shapes of MLflow's `service.proto`: no unknown fields, int64
//! fields as JSON numbers, doubles as numbers or `"NaN"`/`"Infinity"`,
//! enums by name, and MLflow's error codes with MLflow's HTTP statuses.

mod common;

use common::TestServer;
use serde_json::{Value, json};

/// The JSON type of a proto field.
#[derive(Clone, Copy)]
enum Field {
    Str,
    I64,
    F64,
    Enum(&'static [&'static str]),
    Message(&'static str),
    Repeated(&'static Field),
}

const RUN_STATUS: &[&str] = &["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"];
const LIFECYCLE: &[&str] = &["active", "deleted"];
const TAG: Field = Field::Message("Tag");
const METRIC: Field = Field::Message("Metric");
const EXPERIMENT: Field = Field::Message("Experiment");
const RUN: Field = Field::Message("Run");
const DATASET_INPUT: Field = Field::Message("DatasetInput");
const METRIC_WITH_RUN_ID: Field = Field::Message("MetricWithRunId");
const DATASET_SUMMARY: Field = Field::Message("DatasetSummary");

/// The fields of each message (from `mlflow/protos/service.proto`), and
/// which of them stepstore always sets.
fn message(name: &str) -> (Vec<(&'static str, Field)>, Vec<&'static str>) {
    match name {
        "Tag" => (
            vec![("key", Field::Str), ("value", Field::Str)],
            vec!["key"],
        ),
        "Experiment" => (
            vec![
                ("experiment_id", Field::Str),
                ("name", Field::Str),
                ("artifact_location", Field::Str),
                ("lifecycle_stage", Field::Enum(LIFECYCLE)),
                ("last_update_time", Field::I64),
                ("creation_time", Field::I64),
                ("tags", Field::Repeated(&TAG)),
            ],
            vec![
                "experiment_id",
                "name",
                "lifecycle_stage",
                "creation_time",
                "last_update_time",
            ],
        ),
        "RunInfo" => (
            vec![
                ("run_id", Field::Str),
                ("run_uuid", Field::Str),
                ("run_name", Field::Str),
                ("experiment_id", Field::Str),
                ("user_id", Field::Str),
                ("status", Field::Enum(RUN_STATUS)),
                ("start_time", Field::I64),
                ("end_time", Field::I64),
                ("artifact_uri", Field::Str),
                ("lifecycle_stage", Field::Enum(LIFECYCLE)),
            ],
            vec![
                "run_id",
                "run_uuid",
                "run_name",
                "experiment_id",
                "status",
                "start_time",
                "lifecycle_stage",
            ],
        ),
        "Metric" => (
            vec![
                ("key", Field::Str),
                ("value", Field::F64),
                ("timestamp", Field::I64),
                ("step", Field::I64),
            ],
            vec!["key", "value", "timestamp", "step"],
        ),
        "MetricWithRunId" => (
            vec![
                ("key", Field::Str),
                ("value", Field::F64),
                ("timestamp", Field::I64),
                ("step", Field::I64),
                ("run_id", Field::Str),
            ],
            vec!["key", "value", "timestamp", "step", "run_id"],
        ),
        "RunData" => (
            vec![
                ("metrics", Field::Repeated(&METRIC)),
                ("params", Field::Repeated(&TAG)),
                ("tags", Field::Repeated(&TAG)),
            ],
            vec![],
        ),
        "RunInputs" => (
            vec![("dataset_inputs", Field::Repeated(&DATASET_INPUT))],
            vec![],
        ),
        "DatasetInput" => (
            vec![
                ("tags", Field::Repeated(&TAG)),
                ("dataset", Field::Message("Dataset")),
            ],
            vec!["dataset"],
        ),
        "Dataset" => (
            vec![
                ("name", Field::Str),
                ("digest", Field::Str),
                ("source_type", Field::Str),
                ("source", Field::Str),
                ("schema", Field::Str),
                ("profile", Field::Str),
            ],
            vec!["name", "digest", "source_type", "source"],
        ),
        "Run" => (
            vec![
                ("info", Field::Message("RunInfo")),
                ("data", Field::Message("RunData")),
                ("inputs", Field::Message("RunInputs")),
            ],
            vec!["info", "data"],
        ),
        "CreateExperiment.Response" => (vec![("experiment_id", Field::Str)], vec!["experiment_id"]),
        "GetExperiment.Response" => (vec![("experiment", EXPERIMENT)], vec!["experiment"]),
        "SearchExperiments.Response" => (
            vec![
                ("experiments", Field::Repeated(&EXPERIMENT)),
                ("next_page_token", Field::Str),
            ],
            vec![],
        ),
        "Run.Response" => (vec![("run", RUN)], vec!["run"]),
        "UpdateRun.Response" => (
            vec![("run_info", Field::Message("RunInfo"))],
            vec!["run_info"],
        ),
        "SearchRuns.Response" => (
            vec![
                ("runs", Field::Repeated(&RUN)),
                ("next_page_token", Field::Str),
            ],
            vec![],
        ),
        "GetMetricHistory.Response" => (
            vec![
                ("metrics", Field::Repeated(&METRIC)),
                ("next_page_token", Field::Str),
            ],
            vec![],
        ),
        "GetMetricHistoryBulkInterval.Response" => (
            vec![("metrics", Field::Repeated(&METRIC_WITH_RUN_ID))],
            vec![],
        ),
        "DatasetSummary" => (
            vec![
                ("experiment_id", Field::Str),
                ("name", Field::Str),
                ("digest", Field::Str),
                ("context", Field::Str),
            ],
            vec!["experiment_id", "name", "digest"],
        ),
        "SearchDatasets.Response" => (
            vec![("dataset_summaries", Field::Repeated(&DATASET_SUMMARY))],
            vec![],
        ),
        "ListArtifacts.Response" => (
            vec![
                ("root_uri", Field::Str),
                ("files", Field::Repeated(&Field::Message("FileInfo"))),
                ("next_page_token", Field::Str),
            ],
            vec!["root_uri"],
        ),
        "Empty" => (vec![], vec![]),
        other => panic!("no shape for {other}"),
    }
}

/// Checks `value` against message `name`; panics with the path on mismatch.
fn check(value: &Value, name: &str, path: &str) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{path}: {name} must be an object, got {value}"));
    let (fields, required) = message(name);
    for key in required {
        assert!(
            object.contains_key(key),
            "{path}: {name} lacks '{key}': {value}"
        );
    }
    for (key, field_value) in object {
        let field = fields
            .iter()
            .find(|(field_name, _)| field_name == key)
            .map(|(_, field)| *field)
            .unwrap_or_else(|| panic!("{path}: {name} has no field '{key}': {value}"));
        check_field(field_value, field, &format!("{path}.{key}"));
    }
}

fn check_field(value: &Value, field: Field, path: &str) {
    match field {
        Field::Str => assert!(value.is_string(), "{path}: expected a string, got {value}"),
        Field::I64 => assert!(
            value.is_i64(),
            "{path}: int64 must be a JSON number, got {value}"
        ),
        Field::F64 => assert!(
            value.is_number() || matches!(value.as_str(), Some("NaN" | "Infinity" | "-Infinity")),
            "{path}: double must be a number or NaN/Infinity/-Infinity, got {value}"
        ),
        Field::Enum(names) => assert!(
            value.as_str().is_some_and(|text| names.contains(&text)),
            "{path}: expected one of {names:?}, got {value}"
        ),
        Field::Message(name) => check(value, name, path),
        Field::Repeated(inner) => {
            let items = value
                .as_array()
                .unwrap_or_else(|| panic!("{path}: expected a list, got {value}"));
            assert!(!items.is_empty(), "{path}: empty lists are left out");
            for (index, item) in items.iter().enumerate() {
                check_field(item, *inner, &format!("{path}[{index}]"));
            }
        }
    }
}

const API: &str = "/api/2.0/mlflow";

struct Client {
    server: TestServer,
}

impl Client {
    fn post(&self, endpoint: &str, body: Value, shape: &str) -> Value {
        let (status, response) =
            self.server
                .request("POST", &format!("{API}/{endpoint}"), Some(&body));
        assert_eq!(status, 200, "POST {endpoint} {body}: {response}");
        check(&response, shape, endpoint);
        response
    }

    fn get(&self, endpoint: &str, query: &str, shape: &str) -> Value {
        let (status, response) =
            self.server
                .request("GET", &format!("{API}/{endpoint}?{query}"), None);
        assert_eq!(status, 200, "GET {endpoint}?{query}: {response}");
        check(&response, shape, endpoint);
        response
    }

    fn error(&self, method: &str, endpoint: &str, body: Option<Value>, status: u16, code: &str) {
        let (actual, response) = self.server.request(method, endpoint, body.as_ref());
        assert_eq!(actual, status, "{method} {endpoint}: {response}");
        let object = response
            .as_object()
            .unwrap_or_else(|| panic!("{endpoint}: error body must be JSON: {response}"));
        assert_eq!(object["error_code"], code, "{endpoint}: {response}");
        assert!(
            object["message"]
                .as_str()
                .is_some_and(|text| !text.is_empty()),
            "{endpoint}: {response}"
        );
    }
}

#[test]
fn every_endpoint_answers_in_mlflow_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client {
        server: TestServer::start(dir.path(), &[]),
    };

    // Experiments.
    let created = client.post(
        "experiments/create",
        json!({"name": "shapes", "tags": [{"key": "team", "value": "cv"}]}),
        "CreateExperiment.Response",
    );
    let experiment_id = created["experiment_id"].as_str().unwrap().to_string();
    let experiment = client.get(
        "experiments/get",
        &format!("experiment_id={experiment_id}"),
        "GetExperiment.Response",
    );
    assert_eq!(experiment["experiment"]["name"], "shapes");
    assert_eq!(experiment["experiment"]["tags"][0]["value"], "cv");
    let by_name = client.get(
        "experiments/get-by-name",
        "experiment_name=shapes",
        "GetExperiment.Response",
    );
    assert_eq!(
        by_name["experiment"]["experiment_id"],
        experiment_id.as_str()
    );
    client.post(
        "experiments/set-experiment-tag",
        json!({"experiment_id": experiment_id, "key": "stage", "value": "dev"}),
        "Empty",
    );
    client.post(
        "experiments/delete-experiment-tag",
        json!({"experiment_id": experiment_id, "key": "stage"}),
        "Empty",
    );
    client.post(
        "experiments/update",
        json!({"experiment_id": experiment_id, "new_name": "shapes-renamed"}),
        "Empty",
    );
    let searched = client.post(
        "experiments/search",
        json!({"filter": "name LIKE 'shapes%'", "max_results": 10, "order_by": ["name DESC"]}),
        "SearchExperiments.Response",
    );
    assert_eq!(searched["experiments"][0]["name"], "shapes-renamed");
    let searched_get = client.get(
        "experiments/search",
        "filter=tags.team%20%3D%20%27cv%27&max_results=5",
        "SearchExperiments.Response",
    );
    assert_eq!(searched_get["experiments"].as_array().unwrap().len(), 1);

    // Runs.
    let run = client.post(
        "runs/create",
        json!({
            "experiment_id": experiment_id,
            "user_id": "alice",
            "run_name": "first",
            "start_time": 1_700_000_000_000i64,
            "tags": [{"key": "mlflow.source.type", "value": "LOCAL"}]
        }),
        "Run.Response",
    );
    let run_id = run["run"]["info"]["run_id"].as_str().unwrap().to_string();
    assert_eq!(run["run"]["info"]["run_name"], "first");
    assert_eq!(run["run"]["info"]["status"], "RUNNING");
    client.post(
        "runs/log-metric",
        json!({"run_id": run_id, "key": "loss", "value": "NaN", "timestamp": 5, "step": 0}),
        "Empty",
    );
    client.post(
        "runs/log-metric",
        json!({"run_id": run_id, "key": "loss", "value": 0.5, "timestamp": 6, "step": 1}),
        "Empty",
    );
    client.post(
        "runs/log-parameter",
        json!({"run_id": run_id, "key": "lr", "value": "0.01"}),
        "Empty",
    );
    client.post(
        "runs/set-tag",
        json!({"run_id": run_id, "key": "note", "value": "x"}),
        "Empty",
    );
    client.post(
        "runs/log-batch",
        json!({
            "run_id": run_id,
            "metrics": [
                {"key": "acc", "value": "Infinity", "timestamp": 7, "step": 2},
                {"key": "acc", "value": 0.75, "timestamp": 8, "step": 3}
            ],
            "params": [{"key": "batch", "value": "32"}],
            "tags": [{"key": "gone", "value": "soon"}]
        }),
        "Empty",
    );
    client.post(
        "runs/delete-tag",
        json!({"run_id": run_id, "key": "gone"}),
        "Empty",
    );
    client.post(
        "runs/log-inputs",
        json!({"run_id": run_id, "datasets": [{
            "tags": [{"key": "mlflow.data.context", "value": "training"}],
            "dataset": {"name": "mnist", "digest": "abc123", "source_type": "local",
                        "source": "{\"uri\": \"/data\"}", "schema": "{}"}
        }]}),
        "Empty",
    );
    let datasets = client.post(
        "experiments/search-datasets",
        json!({"experiment_ids": [experiment_id]}),
        "SearchDatasets.Response",
    );
    assert_eq!(
        datasets["dataset_summaries"],
        json!([{"experiment_id": experiment_id, "name": "mnist", "digest": "abc123",
                "context": "training"}])
    );
    let artifacts = client.get(
        "artifacts/list",
        &format!("run_id={run_id}"),
        "ListArtifacts.Response",
    );
    assert!(
        artifacts["root_uri"]
            .as_str()
            .is_some_and(|uri| uri.contains(&run_id)),
        "{artifacts}"
    );
    let fetched = client.get("runs/get", &format!("run_id={run_id}"), "Run.Response");
    let data = &fetched["run"]["data"];
    let metric = |key: &str| {
        data["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|metric| metric["key"] == key)
            .cloned()
            .unwrap()
    };
    assert_eq!(metric("loss")["value"], 0.5);
    assert_eq!(metric("acc")["step"], 3);
    assert_eq!(
        fetched["run"]["inputs"]["dataset_inputs"][0]["dataset"]["name"],
        "mnist"
    );
    let updated = client.post(
        "runs/update",
        json!({"run_id": run_id, "status": "FINISHED", "end_time": 1_700_000_001_000i64}),
        "UpdateRun.Response",
    );
    assert_eq!(updated["run_info"]["status"], "FINISHED");
    assert_eq!(updated["run_info"]["end_time"], 1_700_000_001_000i64);
    let history = client.get(
        "metrics/get-history",
        &format!("run_id={run_id}&metric_key=loss"),
        "GetMetricHistory.Response",
    );
    assert_eq!(history["metrics"][0]["value"], "NaN");
    assert_eq!(history["metrics"][1]["value"], 0.5);
    let paged = client.get(
        "metrics/get-history",
        &format!("run_id={run_id}&metric_key=loss&max_results=1"),
        "GetMetricHistory.Response",
    );
    assert_eq!(paged["metrics"].as_array().unwrap().len(), 1);
    assert!(paged["next_page_token"].is_string());
    let bulk = client.get(
        "metrics/get-history-bulk-interval",
        &format!("run_ids={run_id}&metric_key=acc&max_results=10"),
        "GetMetricHistoryBulkInterval.Response",
    );
    assert_eq!(bulk["metrics"][0]["value"], "Infinity");
    assert_eq!(bulk["metrics"][0]["run_id"], run_id.as_str());
    let found = client.post(
        "runs/search",
        json!({"experiment_ids": [experiment_id], "filter": "metrics.loss < 1 and params.lr = '0.01'",
               "run_view_type": "ACTIVE_ONLY", "max_results": 10, "order_by": ["attributes.start_time DESC"]}),
        "SearchRuns.Response",
    );
    assert_eq!(found["runs"][0]["info"]["run_id"], run_id.as_str());
    let none = client.post(
        "runs/search",
        json!({"experiment_ids": [experiment_id], "filter": "metrics.loss > 1"}),
        "SearchRuns.Response",
    );
    assert_eq!(none, json!({}));
    client.post("runs/delete", json!({"run_id": run_id}), "Empty");
    client.post("runs/restore", json!({"run_id": run_id}), "Empty");
    client.post(
        "experiments/delete",
        json!({"experiment_id": experiment_id}),
        "Empty",
    );
    client.post(
        "experiments/restore",
        json!({"experiment_id": experiment_id}),
        "Empty",
    );

    // The same routes answer under /ajax-api.
    let (status, ajax) = client.server.request(
        "GET",
        &format!("/ajax-api/2.0/mlflow/runs/get?run_id={run_id}"),
        None,
    );
    assert_eq!(status, 200, "{ajax}");
    check(&ajax, "Run.Response", "ajax runs/get");

    // Errors: MLflow's codes with MLflow's statuses.
    let post = |endpoint: &str, body: Value, status: u16, code: &str| {
        client.error(
            "POST",
            &format!("{API}/{endpoint}"),
            Some(body),
            status,
            code,
        )
    };
    post(
        "experiments/create",
        json!({"name": "shapes-renamed"}),
        400,
        "RESOURCE_ALREADY_EXISTS",
    );
    post(
        "experiments/create",
        json!({}),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    post(
        "runs/log-parameter",
        json!({"run_id": run_id, "key": "lr", "value": "0.1"}),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    post(
        "runs/log-metric",
        json!({"run_id": run_id, "key": "bad/../key", "value": 1.0, "timestamp": 1}),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    post(
        "runs/log-metric",
        json!({"run_id": run_id, "key": "loss", "value": 1.0}),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    post(
        "runs/log-batch",
        json!({"run_id": run_id, "params": (0..101).map(|i| json!({"key": format!("p{i}"), "value": "v"})).collect::<Vec<_>>()}),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    post(
        "runs/update",
        json!({"run_id": "0123456789abcdef0123456789abcdef", "status": "FINISHED"}),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    );
    post(
        "runs/search",
        json!({"experiment_ids": [experiment_id], "filter": "metrics.loss LIKE 'x'"}),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    post(
        "runs/search",
        json!({"experiment_ids": [experiment_id], "max_results": 50001}),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    let get = |endpoint: &str, status: u16, code: &str| {
        client.error("GET", &format!("{API}/{endpoint}"), None, status, code)
    };
    get(
        "experiments/get-by-name?experiment_name=nope",
        404,
        "RESOURCE_DOES_NOT_EXIST",
    );
    get(
        "experiments/get?experiment_id=999",
        404,
        "RESOURCE_DOES_NOT_EXIST",
    );
    get(
        "experiments/get?experiment_id=abc",
        400,
        "INVALID_PARAMETER_VALUE",
    );
    get("runs/get", 400, "INVALID_PARAMETER_VALUE");
    get(
        "metrics/get-history-bulk-interval?metric_key=acc",
        400,
        "INVALID_PARAMETER_VALUE",
    );
    get(
        &format!(
            "metrics/get-history-bulk-interval?run_ids={run_id}&metric_key=acc&max_results=2501"
        ),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    get("registered-models/get?name=x", 404, "ENDPOINT_NOT_FOUND");
    get(
        "artifacts/list?run_id=0123456789abcdef0123456789abcdef",
        404,
        "RESOURCE_DOES_NOT_EXIST",
    );
    get("no-such-endpoint", 404, "ENDPOINT_NOT_FOUND");
    client.error(
        "POST",
        &format!("{API}/model-versions/create"),
        Some(json!({})),
        404,
        "ENDPOINT_NOT_FOUND",
    );
    client.error(
        "GET",
        "/api/2.0/mlflow-artifacts/artifacts/x",
        None,
        404,
        "ENDPOINT_NOT_FOUND",
    );
    client.error(
        "GET",
        &format!("{API}/runs/create"),
        None,
        405,
        "ENDPOINT_NOT_FOUND",
    );

    // Nothing the refused requests touched changed.
    let after = client.get("runs/get", &format!("run_id={run_id}"), "Run.Response");
    let params = after["run"]["data"]["params"].as_array().unwrap();
    assert_eq!(params.len(), 2, "{after}");
    assert!(params.contains(&json!({"key": "lr", "value": "0.01"})));
    assert_eq!(after["run"]["data"]["metrics"], data["metrics"]);
}

#[test]
fn native_and_mlflow_apis_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let native_run = server.post(
        "/api/v1/runs",
        &json!({"experiment_name": "shared", "run_name": "native", "params": {"opt": {"lr": 0.1}}}),
    );
    let native_id = native_run["run_id"].as_str().unwrap().to_string();
    server.post(
        &format!("/api/v1/runs/{native_id}/metrics"),
        &json!({"step": 3, "values": {"acc": 0.9}}),
    );
    let experiment = server.get(&format!(
        "{API}/experiments/get-by-name?experiment_name=shared"
    ));
    let experiment_id = experiment["experiment"]["experiment_id"].as_str().unwrap();
    let found = server.post(
        &format!("{API}/runs/search"),
        &json!({"experiment_ids": [experiment_id], "filter": "params.`opt.lr` = '0.1' AND metrics.acc >= 0.9"}),
    );
    assert_eq!(found["runs"][0]["info"]["run_id"], native_id.as_str());

    let mlflow_run = server.post(
        &format!("{API}/runs/create"),
        &json!({"experiment_id": experiment_id, "run_name": "from-mlflow", "start_time": 5}),
    );
    let mlflow_id = mlflow_run["run"]["info"]["run_id"].as_str().unwrap();
    server.post(
        &format!("{API}/runs/log-metric"),
        &json!({"run_id": mlflow_id, "key": "loss", "value": 0.25, "timestamp": 10, "step": 7}),
    );
    let native_view = server.get(&format!("/api/v1/runs/{mlflow_id}"));
    assert_eq!(native_view["run_name"], "from-mlflow");
    assert_eq!(native_view["metrics"]["loss"]["value"], 0.25);
    assert_eq!(native_view["metrics"]["loss"]["step"], 7);
}

#[test]
fn long_values_are_truncated_and_enums_accepted_by_number_as_mlflow_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let run = server.post(
        &format!("{API}/runs/create"),
        &json!({"experiment_id": "0", "start_time": 1}),
    );
    let run_id = run["run"]["info"]["run_id"].as_str().unwrap().to_string();
    server.post(
        &format!("{API}/runs/log-parameter"),
        &json!({"run_id": run_id, "key": "long", "value": "p".repeat(6001)}),
    );
    server.post(
        &format!("{API}/runs/set-tag"),
        &json!({"run_id": run_id, "key": "long", "value": "t".repeat(8001)}),
    );
    let updated = server.post(
        &format!("{API}/runs/update"),
        &json!({"run_id": run_id, "status": 4}),
    );
    assert_eq!(updated["run_info"]["status"], "FAILED");
    let fetched = server.get(&format!("{API}/runs/get?run_id={run_id}"));
    let value_of = |list: &str, key: &str| {
        fetched["run"]["data"][list]
            .as_array()
            .unwrap()
            .iter()
            .find(|pair| pair["key"] == key)
            .map(|pair| pair["value"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(value_of("params", "long"), "p".repeat(6000));
    assert_eq!(value_of("tags", "long"), "t".repeat(8000));
    // The native API refuses what is over the limit instead.
    let (status, _) = server.request(
        "POST",
        &format!("/api/v1/runs/{run_id}/params"),
        Some(&json!({"other": "p".repeat(6001)})),
    );
    assert_eq!(status, 400);
    let found = server.post(
        &format!("{API}/runs/search"),
        &json!({"experiment_ids": ["0"], "run_view_type": 3, "filter": "attributes.status = 'FAILED'"}),
    );
    assert_eq!(found["runs"][0]["info"]["run_id"], run_id.as_str());
}
