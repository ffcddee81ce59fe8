//! `stepstore bench`: a closed-loop load generator for any MLflow-compatible
//! tracking server (through `runs/log-batch`) and for stepstore's bulk
//! ingest paths. It creates an experiment and runs, drives `concurrency`
//! connections for a duration, and reports points/s, requests/s, latency
//! percentiles, errors and, when the target is stepstore, the server's
//! `/metrics` deltas. `--dry-run` only generates bodies, to show how fast
//! the generator itself can go.

pub mod payload;
pub mod report;
pub mod target;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use thiserror::Error;

use crate::model::now_millis;
use payload::PayloadGenerator;
pub use report::BenchReport;

/// How points are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// MLflow's `runs/log-batch` (any MLflow-compatible server).
    Mlflow,
    /// stepstore's columnar JSON bulk ingest.
    Columnar,
    /// stepstore's NDJSON bulk ingest.
    Ndjson,
    /// stepstore's Arrow IPC bulk ingest.
    Arrow,
}

impl FromStr for Protocol {
    type Err = BenchError;
    fn from_str(text: &str) -> Result<Self, BenchError> {
        match text {
            "mlflow" => Ok(Protocol::Mlflow),
            "columnar" => Ok(Protocol::Columnar),
            "ndjson" => Ok(Protocol::Ndjson),
            "arrow" => Ok(Protocol::Arrow),
            other => Err(BenchError::Config(format!(
                "unknown protocol '{other}': use mlflow, columnar, ndjson or arrow"
            ))),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Protocol::Mlflow => "mlflow",
            Protocol::Columnar => "columnar",
            Protocol::Ndjson => "ndjson",
            Protocol::Arrow => "arrow",
        })
    }
}

/// What to run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchConfig {
    /// Base URL of the server (`http://127.0.0.1:5000`).
    pub target: String,
    /// How points are sent.
    pub protocol: Protocol,
    /// Runs logged to (spread over the connections).
    pub runs: usize,
    /// Metric keys per run.
    pub keys: usize,
    /// Consecutive steps of every key in one request (per run).
    pub steps_per_request: usize,
    /// Runs in one request (bulk protocols only).
    pub runs_per_request: usize,
    /// Connections sending at once (each waits for its answer).
    pub concurrency: usize,
    /// How long to send.
    #[serde(serialize_with = "report::serialize_seconds")]
    pub duration: Duration,
    /// Only generate bodies, send nothing.
    pub dry_run: bool,
    /// Send every bulk request with its own `Idempotency-Key` (what the
    /// Python client does), to measure what the receipts cost.
    pub idempotency_keys: bool,
    /// Token sent as `Authorization: Bearer` (never in the report).
    #[serde(skip)]
    pub token: Option<String>,
}

impl BenchConfig {
    /// Checks the settings against each other and the protocol's limits.
    pub fn validate(&self) -> Result<(), BenchError> {
        let positive = [
            ("runs", self.runs),
            ("keys", self.keys),
            ("steps-per-request", self.steps_per_request),
            ("runs-per-request", self.runs_per_request),
            ("concurrency", self.concurrency),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(BenchError::Config(format!("--{name} must be at least 1")));
            }
        }
        if self.runs < self.concurrency {
            return Err(BenchError::Config(format!(
                "--runs ({}) must be at least --concurrency ({}): each connection logs to its \
                 own runs",
                self.runs, self.concurrency
            )));
        }
        if self.protocol == Protocol::Mlflow {
            if self.idempotency_keys {
                return Err(BenchError::Config(
                    "--idempotency-keys is for the bulk protocols: MLflow's log-batch has no such \
                     header"
                        .to_string(),
                ));
            }
            if self.runs_per_request != 1 {
                return Err(BenchError::Config(
                    "MLflow's log-batch takes one run per request: --runs-per-request must be 1"
                        .to_string(),
                ));
            }
            if self.keys * self.steps_per_request > 1000 {
                return Err(BenchError::Config(format!(
                    "MLflow's log-batch takes at most 1000 metrics: --keys x --steps-per-request \
                     is {}",
                    self.keys * self.steps_per_request
                )));
            }
        }
        Ok(())
    }
}

/// Errors of the load generator.
#[derive(Debug, Error)]
pub enum BenchError {
    /// Inconsistent settings.
    #[error("{0}")]
    Config(String),
    /// Setting up the experiment and runs failed.
    #[error("setting up the target failed: {0}")]
    Setup(String),
    /// A request body could not be encoded.
    #[error("cannot encode a request: {0}")]
    Encode(String),
}

/// Counters the workers update and the progress display reads.
#[derive(Default)]
pub struct Progress {
    /// Points acknowledged (or generated, in a dry run).
    pub points: AtomicU64,
    /// Requests answered with success.
    pub requests: AtomicU64,
    /// Requests that failed.
    pub errors: AtomicU64,
    /// Request body bytes sent.
    pub bytes: AtomicU64,
}

struct WorkerOutcome {
    latencies: Histogram<u64>,
    errors: Vec<String>,
}

/// Runs the benchmark; `on_tick` is called about once a second with the
/// counters and the elapsed time.
pub async fn run(
    config: BenchConfig,
    on_tick: impl Fn(&Progress, Duration) + Send + 'static,
) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let keys: Vec<String> = (0..config.keys)
        .map(|index| format!("bench/key_{index:04}"))
        .collect();
    let client = target::client(config.concurrency, config.token.as_deref())?;
    let (experiment, runs) = if config.dry_run {
        let runs = (0..config.runs)
            .map(|_| crate::model::RunId::new_random().to_string())
            .collect();
        (String::new(), runs)
    } else {
        target::create_runs(&client, &config.target, config.runs).await?
    };
    let before = if config.dry_run {
        None
    } else {
        target::scrape_metrics(&client, &config.target).await
    };

    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(config.concurrency);
    for worker in 0..config.concurrency {
        let share: Vec<String> = runs
            .iter()
            .skip(worker)
            .step_by(config.concurrency)
            .cloned()
            .collect();
        let generator = PayloadGenerator::new(
            config.protocol,
            share,
            keys.clone(),
            config.steps_per_request,
            config.runs_per_request,
            worker as u64 + 1,
        );
        let worker_run = worker_loop(
            client.clone(),
            config.target.clone(),
            generator,
            Arc::clone(&progress),
            Arc::clone(&stop),
            config.dry_run,
            config
                .idempotency_keys
                .then(|| format!("bench-{}-{worker}", now_millis())),
        );
        workers.push(tokio::spawn(worker_run));
    }
    let ticker = {
        let progress = Arc::clone(&progress);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            interval.tick().await;
            while !stop.load(Ordering::Relaxed) {
                interval.tick().await;
                on_tick(&progress, started.elapsed());
            }
        })
    };
    tokio::time::sleep(config.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies =
        Histogram::<u64>::new(3).map_err(|error| BenchError::Setup(error.to_string()))?;
    let mut error_samples = Vec::new();
    for worker in workers {
        match worker.await {
            Ok(Ok(outcome)) => {
                let _ = latencies.add(&outcome.latencies);
                error_samples.extend(outcome.errors);
            }
            Ok(Err(error)) => return Err(error),
            Err(error) => return Err(BenchError::Setup(format!("a worker failed: {error}"))),
        }
    }
    let elapsed = started.elapsed();
    ticker.abort();
    let after = if config.dry_run {
        None
    } else {
        target::scrape_metrics(&client, &config.target).await
    };
    Ok(BenchReport::new(
        config,
        experiment,
        &progress,
        elapsed,
        &latencies,
        error_samples,
        before,
        after,
    ))
}

async fn worker_loop(
    client: reqwest::Client,
    target: String,
    mut generator: PayloadGenerator,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    dry_run: bool,
    key_prefix: Option<String>,
) -> Result<WorkerOutcome, BenchError> {
    let mut sent_requests = 0u64;
    let mut latencies =
        Histogram::<u64>::new(3).map_err(|error| BenchError::Setup(error.to_string()))?;
    let mut errors = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let payload = generator.next(now_millis())?;
        let size = payload.body.len() as u64;
        if dry_run {
            progress.points.fetch_add(payload.points, Ordering::Relaxed);
            progress.requests.fetch_add(1, Ordering::Relaxed);
            progress.bytes.fetch_add(size, Ordering::Relaxed);
            // Let the timer and the ticker run on a busy runtime.
            tokio::task::yield_now().await;
            continue;
        }
        let sent = Instant::now();
        let mut request = client
            .post(format!("{target}{}", payload.path))
            .header("content-type", payload.content_type);
        if let Some(prefix) = &key_prefix {
            sent_requests += 1;
            request = request.header("idempotency-key", format!("{prefix}-{sent_requests}"));
        }
        let outcome = request.body(payload.body).send().await;
        let failure = match outcome {
            Ok(response) if response.status().is_success() => {
                // Read the answer so the connection can be reused.
                match response.bytes().await {
                    Ok(_) => None,
                    Err(error) => Some(format!("reading the answer: {error}")),
                }
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                Some(format!(
                    "HTTP {status}: {}",
                    text.chars().take(300).collect::<String>()
                ))
            }
            Err(error) => Some(format!("request failed: {error}")),
        };
        let micros = sent.elapsed().as_micros().min(u64::MAX as u128) as u64;
        let _ = latencies.record(micros.max(1));
        match failure {
            None => {
                progress.points.fetch_add(payload.points, Ordering::Relaxed);
                progress.requests.fetch_add(1, Ordering::Relaxed);
                progress.bytes.fetch_add(size, Ordering::Relaxed);
            }
            Some(message) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                if errors.len() < 5 {
                    errors.push(message);
                }
            }
        }
    }
    Ok(WorkerOutcome { latencies, errors })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(protocol: Protocol) -> BenchConfig {
        BenchConfig {
            target: "http://127.0.0.1:1".to_string(),
            protocol,
            runs: 4,
            keys: 100,
            steps_per_request: 10,
            runs_per_request: 1,
            concurrency: 4,
            duration: Duration::from_millis(300),
            dry_run: true,
            idempotency_keys: false,
            token: None,
        }
    }

    #[test]
    fn settings_are_checked() {
        config(Protocol::Mlflow).validate().unwrap();
        let mut too_many = config(Protocol::Mlflow);
        too_many.steps_per_request = 11;
        assert!(too_many.validate().is_err());
        let mut few_runs = config(Protocol::Arrow);
        few_runs.runs = 2;
        assert!(few_runs.validate().is_err());
        assert!("grpc".parse::<Protocol>().is_err());
        assert_eq!("ndjson".parse::<Protocol>().unwrap(), Protocol::Ndjson);
    }

    #[test]
    fn a_dry_run_generates_and_counts() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let report = runtime
            .block_on(run(config(Protocol::Columnar), |_, _| {}))
            .unwrap();
        assert!(report.points > 0);
        assert_eq!(report.points % 1000, 0);
        assert_eq!(report.errors, 0);
    }
}
