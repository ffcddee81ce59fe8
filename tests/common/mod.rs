//! Shared helpers for end-to-end tests: start the real `stepstore` binary
//! on a free loopback port with a temporary data directory, talk HTTP to
//! it, stop it cleanly (SIGTERM) or kill it (SIGKILL).

#![allow(dead_code)]

pub mod ledger;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running server process.
pub struct TestServer {
    child: Option<Child>,
    pub base_url: String,
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    client: reqwest::blocking::Client,
    stderr: Option<std::thread::JoinHandle<String>>,
    stdout_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// How a server process ended.
pub struct Exit {
    pub success: bool,
    pub stderr: String,
}

impl TestServer {
    /// Starts a server on `data_dir` with extra CLI arguments.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> TestServer {
        TestServer::start_with_env(data_dir, extra_args, &[])
    }

    /// Starts a server on `data_dir` with extra CLI arguments and extra
    /// environment variables.
    pub fn start_with_env(
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> TestServer {
        TestServer::try_start_with_env(data_dir, extra_args, env)
            .unwrap_or_else(|exit| panic!("server did not start:\n{}", exit.stderr))
    }

    /// Starts a server like [`TestServer::start_with_env`]; when it does
    /// not start, returns how it exited.
    pub fn try_start_with_env(
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<TestServer, Exit> {
        let extra_args: Vec<String> = extra_args.iter().map(|arg| arg.to_string()).collect();
        let mut server = TestServer {
            child: None,
            base_url: String::new(),
            data_dir: data_dir.to_path_buf(),
            extra_args,
            env: env
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
            stderr: None,
            stdout_lines: Default::default(),
        };
        server.launch()?;
        Ok(server)
    }

    /// Starts the binary and waits for its "listening" line. On failure,
    /// returns how it exited.
    fn launch(&mut self) -> Result<(), Exit> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stepstore"))
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stepstore");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        self.stderr = Some(std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        }));
        let (sender, receiver) = mpsc::channel();
        let lines = std::sync::Arc::clone(&self.stdout_lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("stepstore listening on ") {
                    let _ = sender.send(url.trim().to_string());
                }
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        match receiver.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => {
                self.base_url = url;
                self.child = Some(child);
                Ok(())
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().expect("wait");
                Err(Exit {
                    success: status.success(),
                    stderr: self
                        .stderr
                        .take()
                        .map(|h| h.join().unwrap_or_default())
                        .unwrap_or_default(),
                })
            }
        }
    }

    /// Runs the binary on the data directory expecting it to fail to start.
    pub fn start_expecting_failure(data_dir: &Path, extra_args: &[&str]) -> Exit {
        TestServer::start_expecting_failure_with_env(data_dir, extra_args, &[])
    }

    /// Runs the binary with extra environment variables expecting it to
    /// fail to start.
    pub fn start_expecting_failure_with_env(
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Exit {
        let mut server = TestServer {
            child: None,
            base_url: String::new(),
            data_dir: data_dir.to_path_buf(),
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            env: env
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            client: reqwest::blocking::Client::new(),
            stderr: None,
            stdout_lines: Default::default(),
        };
        match server.launch() {
            Ok(()) => {
                server.kill();
                panic!("the server started but was expected to refuse");
            }
            Err(exit) => exit,
        }
    }

    /// What the server printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `host:port` the server listens on.
    pub fn address(&self) -> String {
        self.base_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    }

    /// A raw connection to the server whose reads give up after 60 s.
    pub fn connect_raw(&self) -> std::net::TcpStream {
        let stream = std::net::TcpStream::connect(self.address()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        stream
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Sends SIGTERM and waits for a clean exit; returns its stderr.
    pub fn stop(&mut self) -> String {
        let exit = self.terminate();
        assert!(
            exit.success,
            "server exited with a failure:\n{}",
            exit.stderr
        );
        exit.stderr
    }

    /// Sends SIGTERM and waits (at most 120 s) for the process to end,
    /// however it ends.
    pub fn terminate(&mut self) -> Exit {
        let Some(mut child) = self.child.take() else {
            return Exit {
                success: true,
                stderr: String::new(),
            };
        };
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(120);
        let exit = loop {
            if let Some(exit) = child.try_wait().expect("try_wait") {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Exit {
            success: exit.success(),
            stderr,
        }
    }

    /// The server process's peak resident memory so far (`VmHWM`), in
    /// bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let line = status
            .lines()
            .find(|line| line.starts_with("VmHWM:"))
            .expect("VmHWM");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|value| value.parse().ok())
            .expect("VmHWM value");
        kib * 1024
    }

    /// Kills the process with SIGKILL (no shutdown work at all).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("wait");
        }
        if let Some(handle) = self.stderr.take() {
            let _ = handle.join();
        }
    }

    /// Stops (cleanly) and starts again on the same data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch()
            .unwrap_or_else(|exit| panic!("restart failed:\n{}", exit.stderr));
    }

    /// Starts again after a kill.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.launch()
            .unwrap_or_else(|exit| panic!("restart failed:\n{}", exit.stderr));
    }

    /// Sends a request and returns (status, JSON body).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().expect("request");
        let status = response.status().as_u16();
        let text = response.text().expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Sends raw bytes as the body.
    pub fn request_raw(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = self
            .client
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("request");
        let status = response.status().as_u16();
        let text = response.text().expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.request("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub fn post(&self, path: &str, body: &Value) -> Value {
        let (status, response) = self.request("POST", path, Some(body));
        assert_eq!(status, 200, "POST {path}: {response}");
        response
    }

    /// Creates a run in the experiment named `experiment`; returns its id.
    pub fn create_run(&self, experiment: &str, name: &str) -> String {
        let run = self.post(
            "/api/v1/runs",
            &json!({"experiment_name": experiment, "run_name": name}),
        );
        run["run_id"].as_str().expect("run_id").to_string()
    }

    /// Reads one whole series as (steps, timestamps, values)
    /// (`max_points=0`: every point, no downsampling).
    pub fn series(&self, run_id: &str, key: &str) -> (Vec<i64>, Vec<i64>, Vec<f64>) {
        let body = self.get(&format!("/api/v1/runs/{run_id}/metrics/{key}?max_points=0"));
        let steps = body["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|v| v.as_i64().expect("i64"))
            .collect();
        let timestamps = body["timestamps"]
            .as_array()
            .expect("timestamps")
            .iter()
            .map(|v| v.as_i64().expect("i64"))
            .collect();
        let values = body["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(json_to_f64)
            .collect();
        (steps, timestamps, values)
    }

    /// The value of a counter or gauge on `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let response = self
            .client
            .get(self.url("/metrics"))
            .send()
            .expect("metrics");
        let text = response.text().expect("text");
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Python interpreter of the test virtual environment that
/// `scripts/test.sh` prepares (`STEPSTORE_PYTHON`), or `None` after
/// printing why `test` is skipped: plain `cargo test` runs without it.
pub fn python_or_skip(test: &str) -> Option<PathBuf> {
    match std::env::var_os("STEPSTORE_PYTHON") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            eprintln!(
                "SKIPPED {test}: STEPSTORE_PYTHON is not set. Run the tests with \
                 ./scripts/test.sh, which prepares the Python virtual environment they need."
            );
            None
        }
    }
}

/// Decodes a value written as a number or as "NaN"/"Infinity"/"-Infinity".
pub fn json_to_f64(value: &Value) -> f64 {
    match value {
        Value::Number(number) => number.as_f64().expect("f64"),
        Value::String(text) => match text.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            other => panic!("unexpected value {other}"),
        },
        other => panic!("unexpected value {other}"),
    }
}

/// Encodes a value the way the API expects non-finite values.
pub fn f64_to_json(value: f64) -> Value {
    if value.is_nan() {
        json!("NaN")
    } else if value == f64::INFINITY {
        json!("Infinity")
    } else if value == f64::NEG_INFINITY {
        json!("-Infinity")
    } else {
        json!(value)
    }
}

/// Bitwise equality that treats every NaN as equal.
pub fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

/// The newest WAL segment with content.
pub fn newest_wal_segment(data_dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(data_dir.join("wal"))
        .expect("wal dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .filter(|path| {
            std::fs::metadata(path)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
        })
        .collect();
    segments.sort();
    segments.pop().expect("a non-empty WAL segment")
}

/// Every Parquet file under the data directory's metrics tree.
pub fn parquet_files(data_dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "parquet") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&data_dir.join("metrics"), &mut files);
    files.sort();
    files
}

/// Runs `stepstore bench --json` with `args` and returns its report,
/// failing the test (with its output) if it fails.
pub fn run_bench(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_stepstore"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run stepstore bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stepstore bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{error}: {stdout}"))
}

/// The Python interpreter and a browser for the browser tests, or `None`
/// after printing why `test` is skipped: they need `STEPSTORE_PYTHON`
/// (with Selenium) and Debian's chromium and chromedriver
/// (`STEPSTORE_CHROMIUM`, `STEPSTORE_CHROMEDRIVER` to use others), which
/// `./scripts/test.sh` installs.
pub fn browser_or_skip(test: &str) -> Option<PathBuf> {
    let python = python_or_skip(test)?;
    for (variable, default) in [
        ("STEPSTORE_CHROMIUM", "/usr/bin/chromium"),
        ("STEPSTORE_CHROMEDRIVER", "/usr/bin/chromedriver"),
    ] {
        let path = std::env::var(variable).unwrap_or_else(|_| default.to_string());
        if !Path::new(&path).exists() {
            eprintln!(
                "SKIPPED {test}: {path} is missing (apt-get install chromium chromium-driver, \
                 or ./scripts/test.sh)"
            );
            return None;
        }
    }
    Some(python)
}

/// Fails the test with pytest's output unless every test passed.
pub fn assert_pytest_passed(run: &PytestRun, what: &str, server_log: &str) {
    match run.status {
        None => panic!(
            "{what} did not finish in time:\n{}\n{}\n--- server log (last lines) ---\n{server_log}",
            run.stdout, run.stderr
        ),
        Some(status) if !run.passed() => panic!(
            "{what} failed ({status}):\n{}\n{}\n--- server log (last lines) ---\n{server_log}",
            run.stdout, run.stderr
        ),
        Some(_) => {}
    }
}

/// How a pytest session ended.
pub struct PytestRun {
    /// The exit status; `None` when it was killed at the deadline.
    pub status: Option<std::process::ExitStatus>,
    /// What it printed.
    pub stdout: String,
    /// Its error output.
    pub stderr: String,
}

impl PytestRun {
    /// Whether every test passed (pytest exited 0 and reported passes).
    pub fn passed(&self) -> bool {
        self.status.is_some_and(|status| status.success()) && self.stdout.contains(" passed")
    }
}

/// Runs `python -m pytest <script>` from the repository root with `env`
/// added (and `STEPSTORE_PYTEST_ARGS`, split on whitespace, appended),
/// killing it past `deadline`. Prints its output as it returns.
pub fn run_pytest(
    python: &Path,
    script: &str,
    env: &[(&str, &str)],
    deadline: Duration,
) -> PytestRun {
    fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }
    let extra_args: Vec<String> = std::env::var("STEPSTORE_PYTEST_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut child = Command::new(python)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider"])
        .arg(script)
        .args(&extra_args)
        .envs(env.iter().copied())
        // Fail fast instead of retrying for minutes on a 5xx answer.
        .env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        .env("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        .env_remove("MLFLOW_ENABLE_ASYNC_LOGGING")
        .env_remove("MLFLOW_EXPERIMENT_NAME")
        .env_remove("MLFLOW_EXPERIMENT_ID")
        .env_remove("MLFLOW_RUN_ID")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("GIT_PYTHON_REFRESH", "quiet")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", python.display()));
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let run = PytestRun {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    eprintln!("{}\n{}", run.stdout, run.stderr);
    run
}

/// The last `lines` lines of a log.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An Arrow IPC stream of one record batch of points of one run and key,
/// as `POST /api/v1/ingest` takes it: columns `run_id`, `key`, `step`,
/// `value` (no timestamps: the server uses now).
pub fn arrow_points(run: &str, key: &str, steps: &[i64], values: &[f64]) -> Vec<u8> {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    assert_eq!(steps.len(), values.len(), "one value per step");
    let schema = Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("step", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
    ]));
    let rows = steps.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![run; rows])),
        Arc::new(StringArray::from(vec![key; rows])),
        Arc::new(Int64Array::from(steps.to_vec())),
        Arc::new(Float64Array::from(values.to_vec())),
    ];
    let mut out = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).unwrap();
    writer
        .write(&RecordBatch::try_new(schema, columns).unwrap())
        .unwrap();
    writer.finish().unwrap();
    drop(writer);
    out
}
