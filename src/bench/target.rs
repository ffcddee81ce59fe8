//! Talking to the benchmarked server outside the measured load: creating
//! the experiment and runs through MLflow's API (which stepstore and MLflow
//! both serve), and reading stepstore's `/metrics` before and after.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use super::BenchError;
use crate::model::now_millis;

/// An HTTP client for `concurrency` connections, sending `token` (if any)
/// as `Authorization: Bearer` with every request.
pub fn client(concurrency: usize, token: Option<&str>) -> Result<reqwest::Client, BenchError> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| BenchError::Setup("the token holds characters a header cannot".into()))?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()
        .map_err(|error| BenchError::Setup(error.to_string()))
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> Result<Value, BenchError> {
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|error| BenchError::Setup(format!("POST {url}: {error}")))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|error| BenchError::Setup(format!("POST {url}: {error}")))?;
    if !status.is_success() {
        return Err(BenchError::Setup(format!(
            "POST {url}: HTTP {status}: {text}"
        )));
    }
    serde_json::from_str(&text)
        .map_err(|error| BenchError::Setup(format!("POST {url}: not JSON ({error}): {text}")))
}

/// Run creations in flight at once while setting up.
const RUN_CREATION_CONCURRENCY: usize = 32;

/// Creates a fresh experiment and `runs` runs in it; returns the
/// experiment's name and the run ids.
pub async fn create_runs(
    client: &reqwest::Client,
    target: &str,
    runs: usize,
) -> Result<(String, Vec<String>), BenchError> {
    let name = format!(
        "stepstore-bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let api = format!("{target}/api/2.0/mlflow");
    let created = post(
        client,
        format!("{api}/experiments/create"),
        json!({"name": name}),
    )
    .await?;
    let experiment_id = created["experiment_id"]
        .as_str()
        .ok_or_else(|| BenchError::Setup(format!("no experiment_id in {created}")))?
        .to_string();
    // Runs are created concurrently (in order): each creation is a durable
    // write, and group commit makes many in flight far faster than one by
    // one (10,000 runs would take tens of seconds).
    let create = |index: usize| {
        let url = format!("{api}/runs/create");
        let body = json!({"experiment_id": experiment_id, "run_name": format!("bench-{index}"),
                          "start_time": now_millis()});
        async move {
            let run = post(client, url, body).await?;
            run["run"]["info"]["run_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| BenchError::Setup(format!("no run id in {run}")))
        }
    };
    let run_ids: Vec<String> = futures::stream::iter(0..runs)
        .map(create)
        .buffered(RUN_CREATION_CONCURRENCY)
        .try_collect()
        .await?;
    Ok((name, run_ids))
}

/// stepstore's `/metrics` as name -> value (`None` when the target does not
/// serve them, e.g. an MLflow server).
pub async fn scrape_metrics(
    client: &reqwest::Client,
    target: &str,
) -> Option<BTreeMap<String, f64>> {
    let response = client.get(format!("{target}/metrics")).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let text = response.text().await.ok()?;
    let metrics = parse_prometheus(&text);
    metrics
        .keys()
        .any(|name| name.starts_with("stepstore_"))
        .then_some(metrics)
}

/// Parses Prometheus/OpenMetrics text into sample name -> value (labels
/// are kept in the name).
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse::<f64>().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_and_skips_comments() {
        let parsed = parse_prometheus(
            "# HELP stepstore_points_ingested Points.\n\
             # TYPE stepstore_points_ingested counter\n\
             stepstore_points_ingested_total 1234\n\
             stepstore_buffer_bytes 5.5e3\n\
             # EOF\n",
        );
        assert_eq!(parsed["stepstore_points_ingested_total"], 1234.0);
        assert_eq!(parsed["stepstore_buffer_bytes"], 5500.0);
        assert_eq!(parsed.len(), 2);
    }
}
