//! MLflow metric reads: `get-history` (paged), `get-history-bulk` and
//! `get-history-bulk-interval` (the downsampled multi-run read the MLflow
//! UI draws charts from).

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::request::{
    MlflowResult, invalid, missing, parse_run_id, query, required, required_run_id,
};
use super::wire::{self, MetricJson, optional_i64};
use crate::auth::Principal;
use crate::engine::Engine;
use crate::model::validation::{KeyKind, validate_key};
use crate::model::{MetricSeries, RunId};
use crate::scalars::{self, KeyPattern, ScalarSeries, SeriesParams, XAxis};
use crate::search::page::{decode_offset, encode_offset};
use crate::server::auth::Access;

type EngineState = State<Arc<Engine>>;

/// Most runs one bulk read may name (MLflow's limit).
pub const MAX_BULK_RUNS: usize = 100;
/// Most points per run a bulk-interval read returns (MLflow's limit).
pub const MAX_BULK_INTERVAL_RESULTS: i64 = 2500;
/// Most points per run a bulk read returns (MLflow's limit).
pub const MAX_BULK_RESULTS_PER_RUN: i64 = 25_000;

/// The points of a series as MLflow `Metric`s.
fn points(series: &MetricSeries, key: &str, run_id: Option<RunId>) -> Vec<MetricJson> {
    let run_id = run_id.map(|id| id.to_string());
    (0..series.len())
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

/// Most points one `get-history` answer carries.
pub const MAX_HISTORY_PAGE: usize = 1_000_000;

/// Points encoded per chunk of a streamed `get-history` answer.
const HISTORY_CHUNK_POINTS: usize = 8_192;

/// `GET metrics/get-history`: every point of one key of one run, ordered
/// by timestamp, then step, then value (as MLflow's SQL store orders it);
/// paged when `max_results` is given. The order is found and the JSON
/// written off the async threads, straight from the series' columns, and
/// streamed in chunks, so the answer is never held whole beside the
/// series.
pub(super) async fn get_history(
    State(engine): EngineState,
    access: Access,
    uri: Uri,
) -> MlflowResult<Response> {
    let request: GetHistory = query(&uri)?;
    let run_id = required_run_id(&request.run_id, &request.run_uuid)?;
    let key = required(&request.metric_key, "metric_key")?.to_string();
    let page_token = request
        .page_token
        .as_deref()
        .filter(|token| !token.is_empty());
    let offset = page_token.map(decode_offset).transpose()?.unwrap_or(0);
    // One answer carries at most MAX_HISTORY_PAGE points; the rest follow
    // through `next_page_token`, which the MLflow client follows.
    let size = match request.max_results {
        None => MAX_HISTORY_PAGE,
        Some(value) if value > 0 => (value as usize).min(MAX_HISTORY_PAGE),
        Some(value) => {
            return Err(invalid(format!(
                "Invalid value {value} for parameter 'max_results' supplied. It must be a \
                 positive integer."
            )));
        }
    };
    engine.run_for(&access, run_id)?;
    let series = engine.metric_series(run_id, &key).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(2);
    tokio::task::spawn_blocking(move || {
        let order = history_order(&series);
        let end = offset.saturating_add(size).min(series.len());
        let start = offset.min(end);
        let next_page_token = (end < series.len()).then(|| encode_offset(end));
        let key_json = wire::json_string(&key);
        let mut chunk = Vec::with_capacity(HISTORY_CHUNK_POINTS.min(end - start) * 80 + 64);
        chunk.push(b'{');
        if start < end {
            chunk.extend_from_slice(b"\"metrics\":[");
        }
        for position in start..end {
            let index = order.as_ref().map_or(position, |order| order[position]);
            if position > start {
                chunk.push(b',');
            }
            wire::write_metric(
                &mut chunk,
                &key_json,
                series.values[index],
                series.timestamps[index],
                series.steps[index],
                None,
            );
            if chunk.len() >= HISTORY_CHUNK_POINTS * 64 {
                let full =
                    std::mem::replace(&mut chunk, Vec::with_capacity(HISTORY_CHUNK_POINTS * 80));
                if sender.blocking_send(Bytes::from(full)).is_err() {
                    return; // The client went away.
                }
            }
        }
        if start < end {
            chunk.push(b']');
        }
        if let Some(token) = next_page_token {
            if start < end {
                chunk.push(b',');
            }
            chunk.extend_from_slice(b"\"next_page_token\":");
            chunk.extend_from_slice(&wire::json_string(&token));
        }
        chunk.push(b'}');
        let _ = sender.blocking_send(Bytes::from(chunk));
    });
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|bytes| (Ok::<_, std::convert::Infallible>(bytes), receiver))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

/// The permutation that orders a series by (timestamp, step, value), or
/// `None` when it already is in that order (the common case: timestamps
/// grow with steps).
fn history_order(series: &MetricSeries) -> Option<Vec<usize>> {
    let compare = |a: usize, b: usize| {
        series.timestamps[a]
            .cmp(&series.timestamps[b])
            .then(series.steps[a].cmp(&series.steps[b]))
            .then(series.values[a].total_cmp(&series.values[b]))
    };
    let sorted = (1..series.len()).all(|index| compare(index - 1, index).is_le());
    if sorted {
        return None;
    }
    let mut order: Vec<usize> = (0..series.len()).collect();
    order.sort_by(|&a, &b| compare(a, b));
    Some(order)
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
    principal: &Principal,
    run_ids: &[RunId],
    key: &str,
) -> MlflowResult<Vec<MetricSeries>> {
    let mut all = Vec::with_capacity(run_ids.len());
    for &run_id in run_ids {
        engine.run_for(principal, run_id)?;
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
    access: Access,
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
        .zip(series_of_runs(&engine, &access, &run_ids, key).await?)
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

/// The points a bulk-interval read answers: for each run that has the key
/// (in the order asked), its downsampled series.
pub(super) struct IntervalSeries {
    /// The key read.
    pub key: String,
    /// Per run, its points in step order.
    pub runs: Vec<(RunId, ScalarSeries)>,
}

/// Reads `metrics/get-history-bulk-interval` with stepstore's spike-keeping
/// downsampling instead of MLflow's evenly spaced sampling: the step range
/// is cut into `max_results / 4` buckets and each keeps its first, last,
/// smallest and greatest point, so spikes and dips survive. At most
/// `max_results` points per run; the first and last point of the range are
/// always in.
pub(super) async fn read_bulk_interval(
    engine: &Arc<Engine>,
    principal: &Principal,
    request: GetHistoryBulkInterval,
) -> MlflowResult<IntervalSeries> {
    let run_ids = run_ids_of(&request.run_ids)?;
    for &run_id in &run_ids {
        engine.check_run_access(principal, run_id)?;
    }
    let key = required(&request.metric_key, "metric_key")?.to_string();
    let max_results = request.max_results.unwrap_or(MAX_BULK_INTERVAL_RESULTS);
    if max_results <= 0 || max_results > MAX_BULK_INTERVAL_RESULTS {
        return Err(invalid(format!(
            "max_results must be between 1 and {MAX_BULK_INTERVAL_RESULTS}."
        )));
    }
    let (start, end) = match (request.start_step, request.end_step) {
        (None, None) => (None, None),
        (Some(start), Some(end)) if start > end => {
            return Err(invalid(format!(
                "end_step must be greater than start_step. Found start_step={start} and \
                 end_step={end}."
            )));
        }
        (Some(start), Some(end)) => (Some(start as f64), Some(end as f64)),
        _ => {
            return Err(invalid(
                "If either start step or end step are specified, both must be specified.",
            ));
        }
    };
    let budget = max_results as usize;
    let mut params = SeriesParams {
        x: XAxis::Step,
        start,
        end,
        max_points: budget.max(4),
        smoothing: None,
    };
    // An exact key, never a glob (`*` is not a key character).
    validate_key(KeyKind::Metric, &key).map_err(|error| invalid(error.to_string()))?;
    let pattern = KeyPattern::Exact(key.clone());
    let mut results =
        scalars::query::query(engine, &run_ids, std::slice::from_ref(&pattern), &params).await?;
    // A bucket holding a NaN keeps one more point, so a NaN-heavy series
    // can exceed the budget: read those again with fewer buckets.
    for result in &mut results {
        while result.series.values.len() > budget && params.max_points > 4 {
            params.max_points = (params.max_points * 4 / 5).max(4);
            result.series =
                scalars::query::read_series(engine, result.run_id, &key, &params).await?;
        }
        fit_budget(&mut result.series, budget);
        params.max_points = budget.max(4);
    }
    Ok(IntervalSeries {
        key,
        runs: results
            .into_iter()
            .map(|result| (result.run_id, result.series))
            .collect(),
    })
}

/// Cuts a series still over `budget` points (a budget under 4, or NaN in
/// every bucket): first the NaN points between the ends, then, if still
/// over, all but the first and last points (the last alone for a budget of
/// 1), as MLflow always keeps those.
fn fit_budget(series: &mut ScalarSeries, budget: usize) {
    let len = series.values.len();
    if len <= budget {
        return;
    }
    let mut kept: Vec<usize> = (0..len)
        .filter(|&index| index == 0 || index == len - 1 || !series.values[index].is_nan())
        .collect();
    if kept.len() > budget {
        kept = if budget == 1 {
            vec![len - 1]
        } else {
            vec![0, len - 1]
        };
    }
    series.steps = kept.iter().map(|&index| series.steps[index]).collect();
    series.timestamps = kept.iter().map(|&index| series.timestamps[index]).collect();
    series.values = kept.iter().map(|&index| series.values[index]).collect();
}

/// `GET metrics/get-history-bulk-interval`: for several runs, up to
/// `max_results` points per run of one key, downsampled so spikes survive
/// (see [`read_bulk_interval`]), ordered by run as requested, then step.
pub(super) async fn get_history_bulk_interval(
    State(engine): EngineState,
    access: Access,
    uri: Uri,
) -> MlflowResult<Response> {
    let read = read_bulk_interval(&engine, &access, query(&uri)?).await?;
    let points: usize = read
        .runs
        .iter()
        .map(|(_, series)| series.values.len())
        .sum();
    let key_json = wire::json_string(&read.key);
    let mut body = Vec::with_capacity(points * 120 + 16);
    body.push(b'{');
    if points > 0 {
        body.extend_from_slice(b"\"metrics\":[");
        let mut first = true;
        for (run_id, series) in &read.runs {
            let run_json = wire::json_string(&run_id.to_string());
            for index in 0..series.values.len() {
                if !first {
                    body.push(b',');
                }
                first = false;
                wire::write_metric(
                    &mut body,
                    &key_json,
                    series.values[index],
                    series.timestamps[index],
                    series.steps[index],
                    Some(&run_json),
                );
            }
        }
        body.push(b']');
    }
    body.push(b'}');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_order_is_by_timestamp_then_step_then_value() {
        let in_order = MetricSeries {
            steps: vec![0, 1, 1, 2],
            timestamps: vec![10, 20, 20, 30],
            values: vec![1.0, 0.5, 0.7, 0.1],
        };
        assert_eq!(history_order(&in_order), None);
        let out_of_order = MetricSeries {
            steps: vec![0, 1, 2, 3],
            timestamps: vec![10, 40, 20, 20],
            values: vec![1.0, 0.5, f64::NAN, 0.1],
        };
        assert_eq!(history_order(&out_of_order), Some(vec![0, 2, 3, 1]));
    }

    #[test]
    fn series_over_the_budget_lose_nan_markers_then_all_but_their_ends() {
        let mut series = ScalarSeries {
            steps: vec![1, 2, 3, 4, 5],
            timestamps: vec![10, 20, 30, 40, 50],
            values: vec![0.1, f64::NAN, 9.0, 0.3, 0.4],
            ..ScalarSeries::default()
        };
        fit_budget(&mut series, 4);
        assert_eq!(series.steps, [1, 3, 4, 5]);
        fit_budget(&mut series, 2);
        assert_eq!(series.steps, [1, 5]);
        fit_budget(&mut series, 1);
        assert_eq!(series.steps, [5]);
        assert_eq!(series.values, [0.4]);
    }
}
