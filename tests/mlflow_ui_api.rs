//! What the MLflow web UI calls besides the tracking API, over HTTP
//! without a browser: `/graphql` with the UI's own queries, MLflow 3's
//! server description endpoints, the empty answers for features stepstore
//! does not keep, and `get-history-bulk-interval`'s spike-keeping
//! downsampling (what the UI's charts draw).

mod common;

use common::TestServer;
use serde_json::{Value, json};

/// The run page's query, as MLflow 3's UI sends it.
const GET_RUN: &str = r#"query GetRun($data: MlflowGetRunInput!) @component(name: "MLflow.ExperimentRunTracking") {
    mlflowGetRun(input: $data) {
      apiError { helpUrl code message }
      run {
        info { runName status runUuid experimentId artifactUri endTime lifecycleStage startTime userId __typename }
        experiment { experimentId name tags { key value } artifactLocation lifecycleStage lastUpdateTime }
        modelVersions { status version name source }
        data { metrics { key value step timestamp } params { key value } tags { key value } }
        inputs { datasetInputs { dataset { digest name profile schema source sourceType } tags { key value } } modelInputs { modelId } }
        outputs { modelOutputs { modelId step } }
        __typename
      }
      __typename
    }
  }"#;

const GET_EXPERIMENT: &str = r#"query MlflowGetExperimentQuery($input: MlflowGetExperimentInput!) @component(name: "MLflow.ExperimentRunTracking") {
    mlflowGetExperiment(input: $input) {
      apiError { code message }
      experiment { artifactLocation creationTime effectiveTraceArchivalRetention experimentId lastUpdateTime lifecycleStage name tags { key value } }
    }
  }"#;

const BULK_INTERVAL: &str = r#"query GetMetricHistoryBulkInterval($data: MlflowGetMetricHistoryBulkIntervalInput!)
  @component(name: "MLflow.ExperimentRunTracking") {
    mlflowGetMetricHistoryBulkInterval(input: $data) {
      __typename
      metrics { timestamp step runId key value }
      apiError { code message }
    }
  }"#;

const SEARCH_RUNS: &str = r#"query SearchRuns($data: MlflowSearchRunsInput!) {
    mlflowSearchRuns(input: $data) {
      apiError { helpUrl code message }
      runs { info { runName status runUuid } experiment { name } data { metrics { key value } } }
      nextPageToken
    }
  }"#;

fn graphql(server: &TestServer, query: &str, variables: Value) -> Value {
    server.post(
        "/graphql",
        &json!({"query": query, "variables": variables, "operationName": null}),
    )
}

/// A run of experiment `spikes` with `loss` over `steps` steps (a
/// decaying curve, one spike at `spike_at`, a NaN at step 5), logged
/// through the bulk API.
fn spiky_run(server: &TestServer, name: &str, steps: i64, spike_at: i64) -> String {
    let run_id = server.create_run("spikes", name);
    for first in (0..steps).step_by(100_000) {
        let last = (first + 100_000).min(steps);
        let step_list: Vec<i64> = (first..last).collect();
        let values: Vec<Value> = step_list
            .iter()
            .map(|&step| match step {
                5 => json!("NaN"),
                _ if step == spike_at => json!(1000.0),
                _ => json!(1.0 / (1.0 + step as f64 / 1000.0)),
            })
            .collect();
        server.post(
            "/api/v1/ingest",
            &json!({"batches": [{"run_id": run_id, "steps": step_list, "values": {"loss": values}}]}),
        );
    }
    run_id
}

#[test]
fn the_ui_queries_of_graphql_answer_like_mlflow() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let run_id = server.create_run("graphs", "base");
    server.post(
        &format!("/api/v1/runs/{run_id}/metrics"),
        &json!({"points": [{"key": "loss", "value": "NaN", "step": 1, "timestamp": 10},
                           {"key": "acc", "value": 0.5, "step": 2, "timestamp": 11}]}),
    );
    server.post(
        &format!("/api/v1/runs/{run_id}/params"),
        &json!({"lr": 0.1}),
    );
    let run = server.get(&format!("/api/v1/runs/{run_id}"));
    let experiment_id = run["experiment_id"].as_str().unwrap().to_string();

    let answer = graphql(&server, GET_RUN, json!({"data": {"runId": run_id}}));
    assert_eq!(answer["errors"], Value::Null, "{answer}");
    let got = &answer["data"]["mlflowGetRun"];
    assert_eq!(got["__typename"], "MlflowGetRunResponse");
    assert_eq!(got["apiError"], Value::Null);
    let info = &got["run"]["info"];
    assert_eq!(info["runName"], "base");
    assert_eq!(info["status"], "RUNNING");
    assert_eq!(info["runUuid"], run_id.as_str());
    // int64 as strings (LongString); an unset end time is proto's 0.
    assert_eq!(info["endTime"], "0");
    assert!(info["startTime"].as_str().unwrap().parse::<i64>().is_ok());
    assert_eq!(info["__typename"], "MlflowRunInfo");
    assert_eq!(got["run"]["experiment"]["name"], "graphs");
    assert_eq!(
        got["run"]["experiment"]["experimentId"],
        experiment_id.as_str()
    );
    assert_eq!(got["run"]["modelVersions"], json!([]));
    assert_eq!(
        got["run"]["inputs"],
        json!({"datasetInputs": [], "modelInputs": []})
    );
    assert_eq!(got["run"]["outputs"], json!({"modelOutputs": []}));
    let metrics = got["run"]["data"]["metrics"].as_array().unwrap();
    let loss = metrics.iter().find(|m| m["key"] == "loss").unwrap();
    // NaN is not a GraphQL Float: null, as MLflow answers it.
    assert_eq!(loss["value"], Value::Null);
    assert_eq!(loss["step"], "1");
    let acc = metrics.iter().find(|m| m["key"] == "acc").unwrap();
    assert_eq!(acc["value"], 0.5);
    assert_eq!(
        got["run"]["data"]["params"],
        json!([{"key": "lr", "value": "0.1"}])
    );
    // Only what was selected comes back.
    assert!(got["run"]["info"].get("runId").is_none());

    let answer = graphql(
        &server,
        GET_EXPERIMENT,
        json!({"input": {"experimentId": experiment_id}}),
    );
    let experiment = &answer["data"]["mlflowGetExperiment"]["experiment"];
    assert_eq!(experiment["name"], "graphs");
    assert_eq!(experiment["tags"], json!([]));

    let answer = graphql(
        &server,
        SEARCH_RUNS,
        json!({"data": {"experimentIds": [experiment_id], "filter": "metrics.acc > 0.4", "maxResults": 10}}),
    );
    let runs = answer["data"]["mlflowSearchRuns"]["runs"]
        .as_array()
        .unwrap();
    assert_eq!(runs.len(), 1, "{answer}");
    assert_eq!(runs[0]["experiment"]["name"], "graphs");

    // Errors as MLflow writes them: a failed field is null with its
    // message in "errors"; a query that does not fit the schema fails
    // whole.
    let missing = graphql(
        &server,
        GET_RUN,
        json!({"data": {"runId": "0123456789abcdef0123456789abcdef"}}),
    );
    assert_eq!(missing["data"]["mlflowGetRun"], Value::Null);
    assert!(
        missing["errors"][0].as_str().unwrap().contains("not found"),
        "{missing}"
    );
    let bad = graphql(
        &server,
        "{ mlflowGetRun(input: {runId: \"x\"}) { nope } }",
        json!({}),
    );
    assert_eq!(bad["data"], Value::Null);
    assert_eq!(
        bad["errors"][0],
        "Cannot query field 'nope' on type 'MlflowGetRunResponse'."
    );
    let unset = graphql(&server, GET_RUN, json!({}));
    assert_eq!(unset["data"], Value::Null);
    assert!(
        unset["errors"][0].as_str().unwrap().contains("$data"),
        "{unset}"
    );
    let syntax = graphql(&server, "{ mlflowGetRun(", json!({}));
    assert!(
        syntax["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("Syntax Error"),
        "{syntax}"
    );
    let wide = format!(
        "{{ {} }}",
        (0..11)
            .map(|i| format!("a{i}: test(inputString: \"x\") {{ output }}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let too_many = graphql(&server, &wide, json!({}));
    assert!(
        too_many["errors"][0]
            .as_str()
            .unwrap()
            .contains("at most 10 root fields"),
        "{too_many}"
    );
    // GET works too.
    let (status, echoed) = server.request(
        "GET",
        "/graphql?query=%7B%20test(inputString%3A%20%22hi%22)%20%7B%20output%20%7D%20%7D",
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(echoed["data"]["test"]["output"], "hi");
}

#[test]
fn bulk_interval_keeps_the_spike_and_the_ends_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--flush-rows", "150000"]);
    let steps = 400_000;
    let spike_at = 271_828;
    let spiky = spiky_run(&server, "long", steps, spike_at);
    let short = spiky_run(&server, "short", 30, 10);
    for max_results in [320, 100, 7, 4, 3, 1] {
        let answer = server.get(&format!(
            "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval?run_ids={spiky}&run_ids={short}\
             &metric_key=loss&max_results={max_results}"
        ));
        let points = answer["metrics"].as_array().unwrap();
        for (run_id, total, spike) in [(&spiky, steps, spike_at), (&short, 30, 10)] {
            let run_points: Vec<&Value> = points
                .iter()
                .filter(|p| p["run_id"] == run_id.as_str())
                .collect();
            let steps_of: Vec<i64> = run_points
                .iter()
                .map(|p| p["step"].as_i64().unwrap())
                .collect();
            assert!(
                run_points.len() <= max_results,
                "{} points for max_results={max_results}",
                run_points.len()
            );
            assert!(steps_of.windows(2).all(|w| w[0] < w[1]), "steps in order");
            assert_eq!(steps_of.last(), Some(&(total - 1)), "the last step is kept");
            if max_results > 1 {
                assert_eq!(steps_of.first(), Some(&0), "the first step is kept");
            }
            if max_results >= 4 {
                let peak = run_points.iter().find(|p| p["step"] == spike).unwrap_or_else(|| {
                    panic!("max_results={max_results}: the spike at {spike} was dropped: {steps_of:?}")
                });
                assert_eq!(peak["value"], 1000.0);
            }
            if total <= max_results as i64 {
                assert_eq!(
                    run_points.len() as i64,
                    total,
                    "short series come back whole"
                );
            }
        }
    }
    // A zoom (start_step..end_step) keeps the spike too.
    let zoom = server.get(&format!(
        "/api/2.0/mlflow/metrics/get-history-bulk-interval?run_ids={spiky}&metric_key=loss\
         &max_results=100&start_step=200000&end_step=300000"
    ));
    let zoomed = zoom["metrics"].as_array().unwrap();
    assert_eq!(zoomed.first().unwrap()["step"], 200_000);
    assert_eq!(zoomed.last().unwrap()["step"], 300_000);
    assert!(zoomed.iter().any(|p| p["step"] == spike_at));
    // The same points through GraphQL (values as numbers or null).
    let answer = graphql(
        &server,
        BULK_INTERVAL,
        json!({"data": {"runIds": [short], "metricKey": "loss", "maxResults": 320}}),
    );
    let points = answer["data"]["mlflowGetMetricHistoryBulkInterval"]["metrics"]
        .as_array()
        .unwrap();
    assert_eq!(points.len(), 30);
    assert_eq!(points[5]["value"], Value::Null, "NaN is null in GraphQL");
    assert_eq!(points[10]["value"], 1000.0);
    assert_eq!(points[10]["step"], "10");
    assert_eq!(points[0]["runId"], short.as_str());
}

#[test]
fn get_history_streams_every_point_in_mlflow_order_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let run_id = spiky_run(&server, "history", 140_000, 70_000);
    // Out-of-order timestamps: a later step logged with an older time.
    server.post(
        &format!("/api/v1/runs/{run_id}/metrics"),
        &json!({"points": [{"key": "loss", "value": 0.25, "step": 140_000, "timestamp": 1}]}),
    );
    let all = server.get(&format!(
        "/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=loss"
    ));
    let points = all["metrics"].as_array().unwrap();
    assert_eq!(points.len(), 140_001);
    assert!(all.get("next_page_token").is_none());
    // Ordered by timestamp, then step: the point logged at time 1 first.
    assert_eq!(points[0]["step"], 140_000);
    assert_eq!(points[0]["timestamp"], 1);
    assert_eq!(points[6]["value"], "NaN");
    assert_eq!(points[70_001]["value"], 1000.0);
    let mut token: Option<String> = None;
    let mut paged = 0;
    loop {
        let query = match &token {
            Some(token) => format!("&page_token={token}"),
            None => String::new(),
        };
        let page = server.get(&format!(
            "/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=loss&max_results=50000{query}"
        ));
        paged += page["metrics"].as_array().unwrap().len();
        match page["next_page_token"].as_str() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(paged, 140_001);
    let empty = server.get(&format!(
        "/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=never"
    ));
    assert_eq!(empty, json!({}));
}

#[test]
fn what_stepstore_does_not_keep_answers_as_an_empty_mlflow_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let info = server.get("/ajax-api/3.0/mlflow/server-info");
    assert_eq!(info["store_type"], "stepstore");
    assert_eq!(info["features_enabled"]["gateway"], false);
    let telemetry = server.get("/ajax-api/3.0/mlflow/ui-telemetry");
    assert_eq!(telemetry["disable_ui_telemetry"], true);
    server.post("/ajax-api/3.0/mlflow/ui-telemetry", &json!({"records": []}));
    assert_eq!(server.get("/ajax-api/2.0/mlflow/users/current"), json!({}));
    assert_eq!(
        server.get("/ajax-api/3.0/mlflow/assistant/providers"),
        json!({"providers": []})
    );
    for path in [
        "/ajax-api/2.0/mlflow/registered-models/search",
        "/ajax-api/2.0/mlflow/model-versions/search?filter=run_id%3D%27x%27",
        "/ajax-api/2.0/mlflow/traces?experiment_ids=1&max_results=1",
        "/ajax-api/3.0/mlflow/scorers/list?experiment_id=1",
    ] {
        assert_eq!(server.get(path), json!({}), "{path}");
    }
    for path in [
        "/ajax-api/2.0/mlflow/logged-models/search",
        "/ajax-api/3.0/mlflow/traces/search",
        "/ajax-api/3.0/mlflow/traces/metrics",
    ] {
        assert_eq!(
            server.post(path, &json!({"experiment_ids": ["0"]})),
            json!({}),
            "{path}"
        );
    }
    assert_eq!(
        server.get("/ajax-api/2.0/mlflow/gateway-proxy?gateway_path=api%2F2.0%2Fendpoints%2F"),
        json!({"endpoints": []})
    );
    for (method, path) in [
        ("POST", "/api/2.0/mlflow/registered-models/create"),
        ("GET", "/api/2.0/mlflow/registered-models/get?name=x"),
        ("POST", "/ajax-api/3.0/mlflow/traces/delete-traces"),
        ("GET", "/api/2.0/mlflow-artifacts/artifacts/x"),
    ] {
        let (status, body) =
            server.request(method, path, Some(&json!({})).filter(|_| method == "POST"));
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["error_code"], "ENDPOINT_NOT_FOUND");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("does not implement"),
            "{body}"
        );
    }
}
