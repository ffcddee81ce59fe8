//! MLflow metric reads: `get-history` (paged), `get-history-bulk` and
//! `get-history-bulk-interval` (the downsampled multi-run read the MLflow
//! UI draws charts from).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::request::{
    MlflowResult, invalid, missing, parse_run_id, query, required, required_run_id,
};
use super::wire::{self, optional_i64};
use crate::auth::Principal;
use crate::engine::Engine;
use crate::ingest::rewinds::RewoundPoints;
use crate::model::RunId;
use crate::model::validation::{KeyKind, validate_key};
use crate::scalars::history::{self, History};
use crate::scalars::{self, KeyPattern, ScalarError, ScalarSeries, SeriesParams, XAxis};
use crate::search::page::{decode_offset, encode_offset};
use crate::server::auth::Access;
use futures_util::StreamExt;

type EngineState = State<Arc<Engine>>;

/// Most runs one bulk read may name (MLflow's limit).
pub const MAX_BULK_RUNS: usize = 100;
/// Most points per run a bulk-interval read returns (MLflow's limit).
pub const MAX_BULK_INTERVAL_RESULTS: i64 = 2500;
/// Most points per run a bulk read returns (MLflow's limit).
pub const MAX_BULK_RESULTS_PER_RUN: i64 = 25_000;

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

/// Bytes of JSON sent per chunk of a streamed answer.
const CHUNK_BYTES: usize = 512 * 1024;

/// A JSON answer written on a blocking thread and streamed to the client
/// chunk by chunk, so an answer of a million points is never held whole.
struct ChunkedJson {
    sender: tokio::sync::mpsc::Sender<Result<Bytes, ScalarError>>,
    chunk: Vec<u8>,
}

/// The receiving end of a [`ChunkedJson`].
type Chunks = tokio::sync::mpsc::Receiver<Result<Bytes, ScalarError>>;

impl ChunkedJson {
    /// A writer and the chunks it sends, for [`chunked_response`].
    fn new() -> (ChunkedJson, Chunks) {
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let writer = ChunkedJson {
            sender,
            chunk: Vec::with_capacity(CHUNK_BYTES + 1024),
        };
        (writer, receiver)
    }

    /// The bytes written so far, to append to.
    fn out(&mut self) -> &mut Vec<u8> {
        &mut self.chunk
    }

    /// Sends the chunk once it is full; `false` when the client went away.
    fn flush_if_full(&mut self) -> bool {
        if self.chunk.len() < CHUNK_BYTES {
            return true;
        }
        let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_BYTES + 1024));
        self.sender.blocking_send(Ok(Bytes::from(full))).is_ok()
    }

    /// Sends what is left.
    fn finish(self) {
        let _ = self.sender.blocking_send(Ok(Bytes::from(self.chunk)));
    }

    /// Ends the answer with an error: the status is already sent, so the
    /// body is cut off (no final chunk) and the client sees a failed read,
    /// never a silently short answer.
    fn fail(self, error: ScalarError, what: &'static str) {
        tracing::error!(%error, what, "read failed in the middle of an answer");
        let _ = self.sender.blocking_send(Err(error));
    }
}

/// The streamed JSON response of a [`ChunkedJson`]. The status waits for
/// its first chunk (the first 512 KiB, or the whole of a smaller answer),
/// so a read that fails before it, as a damaged file found by the first
/// pass over the series does, is a clean error status with an MLflow
/// error body; only a failure after that cuts the body.
async fn chunked_response(mut chunks: Chunks) -> MlflowResult<Response> {
    let first = match chunks.recv().await {
        Some(Ok(first)) => first,
        Some(Err(error)) => return Err(error.into()),
        None => Bytes::new(),
    };
    let rest = futures_util::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (chunk, chunks))
    });
    let body = futures_util::stream::once(async move { Ok(first) }).chain(rest);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Writes the points of one page of `history` as MLflow `Metric`s after
/// `written` earlier ones; returns how many points there are now, or
/// `None` when the client went away.
fn write_page(
    writer: &mut ChunkedJson,
    history: &History,
    (offset, limit): (usize, usize),
    key_json: &[u8],
    run_id_json: Option<&[u8]>,
    mut written: usize,
) -> Result<Option<usize>, ScalarError> {
    let mut open = true;
    history.page(offset, limit, &mut |step, timestamp, value| {
        let out = writer.out();
        out.extend_from_slice(if written == 0 { b"\"metrics\":[" } else { b"," });
        written += 1;
        wire::write_metric(out, key_json, value, timestamp, step, run_id_json);
        open = writer.flush_if_full();
        open
    })?;
    Ok(open.then_some(written))
}

/// `GET metrics/get-history`: every point of one key of one run, ordered
/// by timestamp, then step, then value (as MLflow's SQL store orders it);
/// paged when `max_results` is given. Read and written off the async
/// threads and streamed in chunks: memory stays at one decoded batch and
/// one chunk unless the series' timestamps go backwards (see
/// [`crate::scalars::history`]).
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
    let history = history::history(&engine, run_id, &key).await?;
    let (mut writer, chunks) = ChunkedJson::new();
    tokio::task::spawn_blocking(move || {
        let end = offset.saturating_add(size).min(history.len());
        let key_json = wire::json_string(&key);
        writer.out().push(b'{');
        let written = match write_page(&mut writer, &history, (offset, size), &key_json, None, 0) {
            Ok(Some(written)) => written,
            Ok(None) => return,
            Err(error) => return writer.fail(error, "get-history"),
        };
        if written > 0 {
            writer.out().push(b']');
        }
        if end < history.len() {
            let out = writer.out();
            if written > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"\"next_page_token\":");
            out.extend_from_slice(&wire::json_string(&encode_offset(end)));
        }
        writer.out().push(b'}');
        writer.finish();
    });
    chunked_response(chunks).await
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

/// `GET metrics/get-history-bulk`: for each of several runs (in the order
/// asked), the first `max_results` points of one key in MLflow's order
/// (timestamp, step, value). Runs are read one after the other and the
/// answer is streamed, so at most one run's page is in memory.
pub(super) async fn get_history_bulk(
    State(engine): EngineState,
    access: Access,
    uri: Uri,
) -> MlflowResult<Response> {
    let mut request: GetHistoryBulk = query(&uri)?;
    request.run_ids.append(&mut request.run_id);
    let run_ids = run_ids_of(&request.run_ids)?;
    let key = required(&request.metric_key, "metric_key")?.to_string();
    let limit = request.max_results.unwrap_or(MAX_BULK_RESULTS_PER_RUN);
    if limit <= 0 || limit > MAX_BULK_RESULTS_PER_RUN {
        return Err(invalid(format!(
            "max_results must be between 1 and {MAX_BULK_RESULTS_PER_RUN}, got {limit}"
        )));
    }
    // Every run's points are captured first (files and buffer segments
    // are shared, not copied), so the answer is one consistent view and a
    // run deleted meanwhile is a clean error, not a cut answer.
    let mut histories = Vec::with_capacity(run_ids.len());
    for &run_id in &run_ids {
        engine.run_for(&access, run_id)?;
        histories.push((run_id, history::history(&engine, run_id, &key).await?));
    }
    let (mut writer, chunks) = ChunkedJson::new();
    tokio::task::spawn_blocking(move || {
        let key_json = wire::json_string(&key);
        writer.out().push(b'{');
        let mut written = 0;
        for (run_id, history) in &histories {
            let run_json = wire::json_string(&run_id.to_string());
            let page = (0, limit as usize);
            match write_page(
                &mut writer,
                history,
                page,
                &key_json,
                Some(&run_json),
                written,
            ) {
                Ok(Some(now)) => written = now,
                Ok(None) => return,
                Err(error) => return writer.fail(error, "get-history-bulk"),
            }
        }
        if written > 0 {
            writer.out().push(b']');
        }
        writer.out().push(b'}');
        writer.finish();
    });
    chunked_response(chunks).await
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
        rewound: RewoundPoints::Hidden,
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
