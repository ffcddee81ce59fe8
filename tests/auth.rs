//! Authentication end to end: the safe default of `--auth`, tokens made
//! by the CLI (offline and through a server) and by the admin API, the
//! scopes of each route family, Bearer and Basic credentials, 401 with a
//! challenge and 403, revocation, `/health` and `/metrics`, and the
//! client commands' `--token`.

mod common;

use std::process::Command;

use common::{TestServer, assert_pytest_passed, browser_or_skip, python_or_skip, run_pytest};
use serde_json::{Value, json};

fn stepstore(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stepstore"))
        .args(args)
        .output()
        .expect("run stepstore")
}

/// `stepstore token create` offline; returns the token printed.
fn create_token(data_dir: &std::path::Path, name: &str, scope: &str) -> String {
    let output = stepstore(&[
        "token",
        "create",
        "--name",
        name,
        "--scope",
        scope,
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

struct Caller<'a> {
    server: &'a TestServer,
    client: reqwest::blocking::Client,
}

impl Caller<'_> {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self.client.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            self.server.url(path),
        );
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        )
    }
}

#[test]
fn a_server_off_loopback_must_say_how_it_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let output = stepstore(&[
        "serve",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--auth required"), "{stderr}");
    assert!(stderr.contains("--auth off"), "{stderr}");
    // On loopback, off is the default: no token needed.
    let server = TestServer::start(dir.path(), &[]);
    assert_eq!(
        server.get("/api/v1/experiments")["experiments"][0]["name"],
        "Default"
    );
}

#[test]
fn scopes_guard_every_route_family() {
    let dir = tempfile::tempdir().unwrap();
    let admin = create_token(dir.path(), "root", "admin");
    let writer = create_token(dir.path(), "ci", "write");
    let reader = create_token(dir.path(), "viewer", "read");
    let mut server = TestServer::start(dir.path(), &["--auth", "required"]);
    let caller = Caller {
        server: &server,
        client: reqwest::blocking::Client::new(),
    };

    // No credentials, or bad ones: 401 with a challenge browsers act on.
    for token in [None, Some("stepstore_000000000000_nope"), Some("garbage")] {
        let (status, body, headers) = caller.call("GET", "/api/v1/experiments", token, None);
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error_code"], "UNAUTHENTICATED");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic realm=")
        );
    }
    // /health stays open; /metrics needs read.
    assert_eq!(caller.call("GET", "/health", None, None).0, 200);
    assert_eq!(caller.call("GET", "/metrics", None, None).0, 401);
    assert_eq!(caller.call("GET", "/metrics", Some(&reader), None).0, 200);

    // Write: a reader is refused (403), a writer is served.
    let create = json!({"experiment_name": "mnist", "run_name": "base"});
    let (status, body, _) =
        caller.call("POST", "/api/v1/runs", Some(&reader), Some(create.clone()));
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error_code"], "PERMISSION_DENIED");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("needs scope write"),
        "{body}"
    );
    let (status, run, _) = caller.call("POST", "/api/v1/runs", Some(&writer), Some(create));
    assert_eq!(status, 200, "{run}");
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let points = json!({"step": 1, "values": {"loss": 0.5}});
    assert_eq!(
        caller
            .call(
                "POST",
                &format!("/api/v1/runs/{run_id}/metrics"),
                Some(&writer),
                Some(points)
            )
            .0,
        200
    );
    // Reads, including POSTs that only read, with a read token.
    let sql = json!({"query": "SELECT count(*) AS n FROM metrics"});
    let (status, answer, _) = caller.call("POST", "/api/v1/sql", Some(&reader), Some(sql));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rows"][0]["n"], 1);
    let search = json!({"experiment_ids": [run["experiment_id"]]});
    assert_eq!(
        caller
            .call(
                "POST",
                "/api/2.0/mlflow/runs/search",
                Some(&reader),
                Some(search)
            )
            .0,
        200
    );
    // Delete and restore need admin.
    let delete = format!("/api/v1/runs/{run_id}");
    assert_eq!(caller.call("DELETE", &delete, Some(&writer), None).0, 403);
    assert_eq!(caller.call("DELETE", &delete, Some(&admin), None).0, 200);
    let restore = json!({"run_id": run_id});
    assert_eq!(
        caller
            .call(
                "POST",
                "/api/2.0/mlflow/runs/restore",
                Some(&writer),
                Some(restore.clone())
            )
            .0,
        403
    );
    assert_eq!(
        caller
            .call(
                "POST",
                "/api/2.0/mlflow/runs/restore",
                Some(&admin),
                Some(restore)
            )
            .0,
        200
    );

    // Basic credentials: any user name, the token as password.
    let response = caller
        .client
        .get(server.url("/api/v1/experiments"))
        .basic_auth("anyone", Some(&reader))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);

    // The admin API: only admin tokens; a new token works at once, a
    // revoked one stops at once; secrets are never listed.
    assert_eq!(
        caller.call("GET", "/api/v1/tokens", Some(&writer), None).0,
        403
    );
    let (status, made, _) = caller.call(
        "POST",
        "/api/v1/tokens",
        Some(&admin),
        Some(json!({"name": "dashboard", "scope": "read"})),
    );
    assert_eq!(status, 200, "{made}");
    let fresh = made["token"].as_str().unwrap().to_string();
    assert_eq!(
        caller
            .call("GET", "/api/v1/experiments", Some(&fresh), None)
            .0,
        200
    );
    let (_, listed, _) = caller.call("GET", "/api/v1/tokens", Some(&admin), None);
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["root", "ci", "viewer", "dashboard"]);
    assert!(!listed.to_string().contains(&fresh[20..]));
    assert_eq!(
        caller
            .call(
                "POST",
                "/api/v1/tokens",
                Some(&admin),
                Some(json!({"name": "dashboard", "scope": "read"}))
            )
            .0,
        409
    );
    assert_eq!(
        caller
            .call("DELETE", "/api/v1/tokens/dashboard", Some(&admin), None)
            .0,
        200
    );
    assert_eq!(
        caller
            .call("GET", "/api/v1/experiments", Some(&fresh), None)
            .0,
        401
    );

    // Refusals are counted.
    let (_, metrics, _) = caller.call("GET", "/metrics", Some(&reader), None);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("stepstore_auth_forbidden_total 4"),
        "{metrics}"
    );

    // Tokens never reach the log.
    let log = server.stop();
    for token in [&admin, &writer, &reader, &fresh] {
        assert!(!log.contains(token.as_str()), "a token is in the log");
    }
}

#[test]
fn the_cli_manages_tokens_offline_and_through_a_server_and_clients_send_them() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    // The first start with auth required and no token makes an admin token.
    let mut server = TestServer::start(dir.path(), &["--auth", "required"]);
    let lines = server.stdout_lines();
    let admin = lines
        .iter()
        .find(|line| line.starts_with("stepstore_"))
        .unwrap_or_else(|| panic!("no first admin token printed: {lines:?}"))
        .clone();
    // Through the server.
    let output = stepstore(&[
        "token",
        "create",
        "--name",
        "bench",
        "--scope",
        "write",
        "--server",
        &server.base_url,
        "--token",
        &admin,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let writer = String::from_utf8(output.stdout).unwrap().trim().to_string();
    // The data directory is the server's: the offline CLI says to use it.
    let output = stepstore(&["token", "list", "--data-dir", data_dir]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--server"));

    // Client commands take --token.
    let report = common::run_bench(&[
        "--target",
        &server.base_url,
        "--protocol",
        "columnar",
        "--runs",
        "2",
        "--keys",
        "5",
        "--concurrency",
        "1",
        "--duration",
        "1s",
        "--token",
        &writer,
    ]);
    assert!(report["points"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let output = stepstore(&[
        "sql",
        "--server",
        &server.base_url,
        "--token",
        &writer,
        "--format",
        "json",
        "SELECT count(*) AS n FROM runs",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = stepstore(&["sql", "--server", &server.base_url, "SELECT 1"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));

    // Offline, with the server stopped: list and revoke.
    server.stop();
    let output = stepstore(&["token", "list", "--data-dir", data_dir]);
    let listed = String::from_utf8(output.stdout).unwrap();
    assert!(
        listed.contains("admin") && listed.contains("bench"),
        "{listed}"
    );
    assert!(!listed.contains(&writer));
    let output = stepstore(&["token", "revoke", "bench", "--data-dir", data_dir]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.start_again();
    let response = reqwest::blocking::Client::new()
        .get(server.url("/api/v1/experiments"))
        .bearer_auth(&writer)
        .send()
        .unwrap();
    assert_eq!(response.status(), 401);
    // The first admin token was made once: no new one on later starts.
    assert_eq!(
        server
            .stdout_lines()
            .iter()
            .filter(|line| line.starts_with("stepstore_"))
            .count(),
        1
    );
}

#[test]
fn the_mlflow_client_authenticates_with_its_own_settings() {
    let Some(python) = python_or_skip("the_mlflow_client_authenticates_with_its_own_settings")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let writer = create_token(dir.path(), "trainer", "write");
    let reader = create_token(dir.path(), "viewer", "read");
    let mut server = TestServer::start(dir.path(), &["--auth", "required"]);
    let run = run_pytest(
        &python,
        "tests/python/test_mlflow_auth.py",
        &[
            ("STEPSTORE_URL", &server.base_url),
            ("MLFLOW_TRACKING_URI", &server.base_url),
            ("STEPSTORE_WRITE_TOKEN", &writer),
            ("STEPSTORE_READ_TOKEN", &reader),
        ],
        std::time::Duration::from_secs(300),
    );
    assert_pytest_passed(&run, "pytest", &common::tail(&server.stop(), 100));
}

#[test]
fn the_web_pages_work_with_auth_required() {
    let Some(python) = browser_or_skip("the_web_pages_work_with_auth_required") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let reader = create_token(dir.path(), "browser", "read");
    let writer = create_token(dir.path(), "seed", "write");
    // The MLflow UI too, when the test command installed a build of it.
    let build = std::env::var("STEPSTORE_MLFLOW_UI_ROOTS")
        .ok()
        .and_then(|roots| roots.split(':').next().map(str::to_string))
        .filter(|root| !root.is_empty())
        .map(|root| format!("{root}/mlflow/server/js/build"));
    let mut args = vec!["--auth", "required"];
    if let Some(build) = &build {
        args.extend(["--mlflow-ui", build.as_str()]);
    }
    let mut server = TestServer::start(dir.path(), &args);
    let response = reqwest::blocking::Client::new()
        .post(server.url("/api/v1/runs"))
        .bearer_auth(&writer)
        .json(&json!({"experiment_name": "secured-experiment", "run_name": "r"}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("web-auth")
        .display()
        .to_string();
    let run = run_pytest(
        &python,
        "tests/python/test_web_auth.py",
        &[
            ("STEPSTORE_URL", &server.base_url),
            ("MLFLOW_TRACKING_URI", &server.base_url),
            ("STEPSTORE_TOKEN", &reader),
            ("STEPSTORE_EXPERIMENT", "secured-experiment"),
            ("STEPSTORE_SHOTS", &shots),
            (
                "STEPSTORE_MLFLOW_UI",
                if build.is_some() { "1" } else { "0" },
            ),
        ],
        std::time::Duration::from_secs(300),
    );
    assert_pytest_passed(&run, "pytest", &common::tail(&server.stop(), 100));
}
