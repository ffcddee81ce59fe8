//! MLflow metric reads: `get-history` (paged), `get-history-bulk` and
//! `get-history-bulk-interval` (the downsampled multi-run read the MLflow
//! UI draws charts from).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use serde::Deserialize;
use serde_json::{Value, json};

use super::page_response;
use super::request::{
    MlflowResult, invalid, missing, parse_run_id, query, required, required_run_id,
};
use super::wire::{MetricJson, optional_i64};
use crate::engine::Engine;
use crate::model::{MetricSeries, RunId};
use crate::search::paginate;

type EngineState = State<Arc<Engine>>;

/// Most runs one bulk read may name (MLflow's limit).
pub const MAX_BULK_RUNS: usize = 100;
/// Most steps a bulk-interval read returns per request (MLflow's limit).
pub const MAX_BULK_INTERVAL_RESULTS: i64 = 2500;
/// Most points per run a bulk read returns (MLflow's limit).
pub const MAX_BULK_RESULTS_PER_RUN: i64 = 25_000;

fn points(series: &MetricSeries, key: &str, run_id: Option<RunId>) -> Vec<MetricJson> {
    points_at(series, key, run_id, 0..series.steps.len())
}

fn points_at(
    series: &MetricSeries,
    key: &str,
    run_id: Option<RunId>,
    indexes: impl IntoIterator<Item = usize>,
) -> Vec<MetricJson> {
    let run_id = run_id.map(|id| id.to_string());
    indexes
        .into_iter()
        .map(|index| MetricJson {
            key: key.to_string(),
            value: series.values[index],
            timestamp: series.timestamps[index],
            step: series.steps[index],
            run_id: run_id.clone(),
        })
        .collect()
}

#[derive(Deserialize)]
pub(super) struct GetHistory {
    run_id: Option<String>,
    run_uuid: Option<String>,
    metric_key: Option<String>,
    page_token: Option<String>,
    #[serde(default, deserialize_with = "optional_i64")]
    max_results: Option<i64>,
}

/// `GET metrics/get-history`: every point of one key of one run, ordered
/// by timestamp, then step, then value (as MLflow's SQL store orders it);
/// paged when `max_results` is given.
pub(super) async fn get_history(State(engine): EngineState, uri: Uri) -> MlflowResult<Json<Value>> {
    let request: GetHistory = query(&uri)?;
    let run_id = required_run_id(&request.run_id, &request.run_uuid)?;
    let key = required(&request.metric_key, "metric_key")?;
    engine.run(run_id)?;
    let series = engine.metric_series(run_id, key).await?;
    let mut order: Vec<usize> = (0..series.steps.len()).collect();
    order.sort_by(|&a, &b| {
        series.timestamps[a]
            .cmp(&series.timestamps[b])
            .then(series.steps[a].cmp(&series.steps[b]))
            .then(series.values[a].total_cmp(&series.values[b]))
    });
    let all = points_at(&series, key, None, order);
    let page_token = request
        .page_token
        .as_deref()
        .filter(|token| !token.is_empty());
    let page = match request.max_results {
        None if page_token.is_none() => crate::search::Page {
            items: all,
            next_page_token: None,
        },
        max_results => {
            let size = match max_results {
                Some(value) if value > 0 => value as usize,
                Some(value) => {
                    return Err(invalid(format!(
                        "Invalid value {value} for parameter 'max_results' supplied. It must be \
                         a positive integer."
                    )));
                }
                None => usize::MAX,
            };
            paginate(all, page_token, size)?
        }
    };
    Ok(page_response("metrics", &page.items, page.next_page_token))
}

fn run_ids_of(texts: &[String]) -> MlflowResult<Vec<RunId>> {
    if texts.is_empty() {
        return Err(missing("run_ids"));
    }
    if texts.len() > MAX_BULK_RUNS {
        return Err(invalid(format!(
            "GetMetricHistoryBulkInterval request must specify at most {MAX_BULK_RUNS} run_ids. \
             Received {} run_ids.",
            texts.len()
        )));
    }
    texts.iter().map(|text| parse_run_id(text)).collect()
}

async fn series_of_runs(
    engine: &Engine,
    run_ids: &[RunId],
    key: &str,
) -> MlflowResult<Vec<MetricSeries>> {
    let mut all = Vec::with_capacity(run_ids.len());
    for &run_id in run_ids {
        engine.run(run_id)?;
        all.push(engine.metric_series(run_id, key).await?);
    }
    Ok(all)
}

#[derive(Deserialize)]
pub(super) struct GetHistoryBulk {
    #[serde(default)]
    run_id: Vec<String>,
    #[serde(default)]
    run_ids: Vec<String>,
    metric_key: Option<String>,
    #[serde(default, deserialize_with = "optional_i64")]
    max_results: Option<i64>,
}

/// `GET metrics/get-history-bulk`: the first `max_results` points of one
/// key for each of several runs.
pub(super) async fn get_history_bulk(
    State(engine): EngineState,
    uri: Uri,
) -> MlflowResult<Json<Value>> {
    let mut request: GetHistoryBulk = query(&uri)?;
    request.run_ids.append(&mut request.run_id);
    let run_ids = run_ids_of(&request.run_ids)?;
    let key = required(&request.metric_key, "metric_key")?;
    let limit = request.max_results.unwrap_or(MAX_BULK_RESULTS_PER_RUN);
    if limit <= 0 || limit > MAX_BULK_RESULTS_PER_RUN {
        return Err(invalid(format!(
            "max_results must be between 1 and {MAX_BULK_RESULTS_PER_RUN}, got {limit}"
        )));
    }
    let mut metrics = Vec::new();
    for (run_id, series) in run_ids
        .iter()
        .zip(series_of_runs(&engine, &run_ids, key).await?)
    {
        let mut run_points = points(&series, key, Some(*run_id));
        run_points.truncate(limit as usize);
        metrics.extend(run_points);
    }
    Ok(Json(json!({ "metrics": metrics })))
}

#[derive(Deserialize)]
pub(super) struct GetHistoryBulkInterval {
    #[serde(default)]
    run_ids: Vec<String>,
    metric_key: Option<String>,
    #[serde(default, deserialize_with = "optional_i64")]
    start_step: Option<i64>,
    #[serde(default, deserialize_with = "optional_i64")]
    end_step: Option<i64>,
    #[serde(default, deserialize_with = "optional_i64")]
    max_results: Option<i64>,
}

/// The points of one run a bulk-interval read keeps, as MLflow's SQL
/// store picks them: the run's points within `[start, end]` in (step,
/// timestamp, value) order are split into `max_results` buckets (`NTILE`:
/// the first `len % max_results` buckets one longer), the first point of
/// each bucket is kept, and the last point always is (it replaces the last
/// kept one when the budget is full). Returns indexes into the series.
pub fn sample_run(series: &MetricSeries, start: i64, end: i64, max_results: usize) -> Vec<usize> {
    let mut in_range: Vec<usize> = (0..series.steps.len())
        .filter(|&index| (start..=end).contains(&series.steps[index]))
        .collect();
    in_range.sort_by(|&a, &b| {
        series.steps[a]
            .cmp(&series.steps[b])
            .then(series.timestamps[a].cmp(&series.timestamps[b]))
            .then(series.values[a].total_cmp(&series.values[b]))
    });
    let total = in_range.len();
    if total <= max_results || max_results == 0 {
        return in_range;
    }
    let (base, longer) = (total / max_results, total % max_results);
    let mut kept = Vec::with_capacity(max_results + 1);
    let mut position = 0;
    for bucket in 0..max_results {
        kept.push(in_range[position]);
        position += base + usize::from(bucket < longer);
    }
    let last = in_range[total - 1];
    if kept.last() != Some(&last) {
        if kept.len() >= max_results {
            kept.pop();
        }
        kept.push(last);
    }
    kept
}

/// `GET metrics/get-history-bulk-interval`: for several runs, up to
/// `max_results` points per run of one key, spread over the step range
/// (first and last always included), ordered by run as requested, then
/// step.
pub(super) async fn get_history_bulk_interval(
    State(engine): EngineState,
    uri: Uri,
) -> MlflowResult<Json<Value>> {
    let request: GetHistoryBulkInterval = query(&uri)?;
    let run_ids = run_ids_of(&request.run_ids)?;
    let key = required(&request.metric_key, "metric_key")?;
    let max_results = request.max_results.unwrap_or(MAX_BULK_INTERVAL_RESULTS);
    if max_results <= 0 || max_results > MAX_BULK_INTERVAL_RESULTS {
        return Err(invalid(format!(
            "max_results must be between 1 and {MAX_BULK_INTERVAL_RESULTS}."
        )));
    }
    let (start, end) = match (request.start_step, request.end_step) {
        (None, None) => (i64::MIN, i64::MAX),
        (Some(start), Some(end)) if start > end => {
            return Err(invalid(format!(
                "end_step must be greater than start_step. Found start_step={start} and \
                 end_step={end}."
            )));
        }
        (Some(start), Some(end)) => (start, end),
        _ => {
            return Err(invalid(
                "If either start step or end step are specified, both must be specified.",
            ));
        }
    };
    let all_series = series_of_runs(&engine, &run_ids, key).await?;
    let mut metrics = Vec::new();
    for (run_id, series) in run_ids.iter().zip(&all_series) {
        let kept = sample_run(series, start, end, max_results as usize);
        metrics.extend(points_at(series, key, Some(*run_id), kept));
    }
    Ok(page_response("metrics", &metrics, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(steps: impl IntoIterator<Item = i64>) -> MetricSeries {
        let steps: Vec<i64> = steps.into_iter().collect();
        MetricSeries {
            timestamps: steps.iter().map(|step| step * 10).collect(),
            values: steps.iter().map(|&step| step as f64).collect(),
            steps,
        }
    }

    fn kept_steps(series: &MetricSeries, start: i64, end: i64, budget: usize) -> Vec<i64> {
        sample_run(series, start, end, budget)
            .into_iter()
            .map(|index| series.steps[index])
            .collect()
    }

    #[test]
    fn sampling_keeps_first_and_last_and_respects_the_budget() {
        let long = series(0..1000);
        let kept = kept_steps(&long, i64::MIN, i64::MAX, 10);
        assert_eq!(kept.len(), 10);
        assert_eq!(kept.first(), Some(&0));
        assert_eq!(kept.last(), Some(&999));
        assert!(kept.windows(2).all(|pair| pair[0] < pair[1]));
        // NTILE(3) over 10 rows: buckets of 4, 3, 3 starting at 0, 4, 7;
        // the last row (9) replaces the last bucket's first row.
        assert_eq!(kept_steps(&series(0..10), i64::MIN, i64::MAX, 3), [0, 4, 9]);
        let window = kept_steps(&long, 100, 200, 5);
        assert_eq!(window.first(), Some(&100));
        assert_eq!(window.last(), Some(&200));
        assert_eq!(kept_steps(&series([1, 5, 9]), 0, 10, 10), [1, 5, 9]);
        assert!(kept_steps(&long, 2000, 3000, 10).is_empty());
        assert_eq!(kept_steps(&long, i64::MIN, i64::MAX, 1), [999]);
    }
}
