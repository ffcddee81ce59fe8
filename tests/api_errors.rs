//! Bad input gets the right status and an MLflow-style error body, and
//! nothing already stored changes: param conflicts, bad run ids, bad keys,
//! oversized values and bodies, malformed JSON.

mod common;

use common::TestServer;
use serde_json::{Value, json};

fn assert_error(response: (u16, Value), status: u16, code: &str) {
    let (actual_status, body) = response;
    assert_eq!(actual_status, status, "{body}");
    assert_eq!(body["error_code"], code, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{body}"
    );
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &["--max-request-mb", "1"]);
    let run_id = server.create_run("errors", "victim");
    let run_path = format!("/api/v1/runs/{run_id}");
    server.post(
        &format!("{run_path}/params"),
        &json!({"lr": "0.1", "model": {"depth": 4}}),
    );
    server.post(&format!("{run_path}/tags"), &json!({"team": "vision"}));
    server.post(
        &format!("{run_path}/metrics"),
        &json!({"points": [{"key": "loss", "value": 1.5, "step": 0}, {"key": "loss", "value": 1.25, "step": 1}]}),
    );
    let run_before = server.get(&run_path);
    let series_before = server.series(&run_id, "loss");
    assert_eq!(run_before["params"]["model.depth"], "4");

    // Param conflicts: 409, and the whole request is refused.
    assert_error(
        server.request(
            "POST",
            &format!("{run_path}/params"),
            Some(&json!({"lr": "0.2"})),
        ),
        409,
        "INVALID_PARAMETER_VALUE",
    );
    assert_error(
        server.request(
            "POST",
            &format!("{run_path}/params"),
            Some(&json!({"fresh": "1", "lr": "0.3"})),
        ),
        409,
        "INVALID_PARAMETER_VALUE",
    );
    // The same value again is fine.
    server.post(&format!("{run_path}/params"), &json!({"lr": "0.1"}));

    // Run ids: malformed is 400, unknown is 404.
    assert_error(
        server.request("GET", "/api/v1/runs/not-a-run-id", None),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    assert_error(
        server.request("GET", "/api/v1/runs/..%2F..%2Fetc", None),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    let unknown = "0123456789abcdef0123456789abcdef";
    assert_error(
        server.request("GET", &format!("/api/v1/runs/{unknown}"), None),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    );
    assert_error(
        server.request(
            "POST",
            &format!("/api/v1/runs/{unknown}/metrics"),
            Some(&json!({"points": [{"key": "a", "value": 1}]})),
        ),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    );
    assert_error(
        server.request("GET", &format!("/api/v1/runs/{unknown}/metrics/loss"), None),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    );

    // Bad keys refuse the whole batch.
    for key in ["../escape", "a//b", "semi;colon", "", &"k".repeat(251)] {
        assert_error(
            server.request(
                "POST",
                &format!("{run_path}/metrics"),
                Some(&json!({"points": [{"key": "loss", "value": 9.0, "step": 7}, {"key": key, "value": 1.0, "step": 7}]})),
            ),
            400,
            "INVALID_PARAMETER_VALUE",
        );
    }
    assert_error(
        server.request(
            "POST",
            &format!("{run_path}/params"),
            Some(&json!({"bad key;": "x"})),
        ),
        400,
        "INVALID_PARAMETER_VALUE",
    );

    // Oversized values.
    assert_error(
        server.request(
            "POST",
            &format!("{run_path}/params"),
            Some(&json!({"long": "v".repeat(6001)})),
        ),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    assert_error(
        server.request(
            "POST",
            &format!("{run_path}/tags"),
            Some(&json!({"long": "v".repeat(8001)})),
        ),
        400,
        "INVALID_PARAMETER_VALUE",
    );

    // Malformed and mistyped bodies.
    assert_error(
        server.request_raw(
            "POST",
            &format!("{run_path}/metrics"),
            b"{\"points\": [".to_vec(),
        ),
        400,
        "MALFORMED_REQUEST",
    );
    assert_error(
        server.request_raw("POST", &format!("{run_path}/metrics"), b"not json".to_vec()),
        400,
        "MALFORMED_REQUEST",
    );
    assert_error(
        server.request(
            "POST",
            &format!("{run_path}/metrics"),
            Some(&json!({"points": [{"key": "loss", "value": "high", "step": 3}]})),
        ),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    assert_error(
        server.request(
            "POST",
            &format!("{run_path}/metrics"),
            Some(&json!({"points": [{"key": "loss", "value": 1.0, "step": 1.5}]})),
        ),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    assert_error(
        server.request(
            "POST",
            &format!("{run_path}/metrics"),
            Some(&json!({"rows": []})),
        ),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    assert_error(
        server.request("PATCH", &run_path, Some(&json!({"status": "DONE"}))),
        400,
        "INVALID_PARAMETER_VALUE",
    );

    // A body over the limit is 413.
    let huge: Vec<Value> = (0..40_000)
        .map(|step| json!({"key": "loss", "value": 0.5, "step": step}))
        .collect();
    assert_error(
        server.request(
            "POST",
            &format!("{run_path}/metrics"),
            Some(&json!({"points": huge})),
        ),
        413,
        "REQUEST_LIMIT_EXCEEDED",
    );

    // Duplicate experiment names and unknown endpoints.
    assert_error(
        server.request(
            "POST",
            "/api/v1/experiments",
            Some(&json!({"name": "errors"})),
        ),
        409,
        "RESOURCE_ALREADY_EXISTS",
    );
    assert_error(
        server.request("POST", "/api/v1/experiments", Some(&json!({"name": ""}))),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    assert_error(
        server.request("GET", "/api/v1/nothing-here", None),
        404,
        "ENDPOINT_NOT_FOUND",
    );

    // Nothing changed, before and after a restart.
    assert_eq!(server.get(&run_path), run_before);
    assert_eq!(server.series(&run_id, "loss"), series_before);
    server.restart();
    assert_eq!(server.get(&run_path), run_before);
    assert_eq!(server.series(&run_id, "loss"), series_before);
    server.stop();
}

#[test]
fn writes_larger_than_the_whole_buffer_budget_get_413_and_smaller_ones_still_pass() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &["--buffer-budget-mb", "1", "--overload-wait-secs", "0"],
    );
    let run_id = server.create_run("limits", "busy");
    let path = format!("/api/v1/runs/{run_id}/metrics");
    let too_many: Vec<Value> = (0..40_000)
        .map(|step| json!({"key": "loss", "value": 0.5, "step": step}))
        .collect();
    // Retrying cannot help a write that can never fit: 413, not a 503
    // that clients retry forever.
    let (status, body) = server.request("POST", &path, Some(&json!({"points": too_many})));
    assert_error((status, body.clone()), 413, "REQUEST_LIMIT_EXCEEDED");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("--buffer-budget-mb"),
        "{body}"
    );
    assert!(
        server.series(&run_id, "loss").0.is_empty(),
        "a refused write stores nothing"
    );
    let fine: Vec<Value> = (0..1000)
        .map(|step| json!({"key": "loss", "value": 0.5, "step": step}))
        .collect();
    server.post(&path, &json!({"points": fine}));
    assert_eq!(server.series(&run_id, "loss").0.len(), 1000);
}
