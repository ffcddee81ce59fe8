//! The scalar API under `/api/v1`: a run's keys with their summaries,
//! downsampled (and optionally smoothed) series of one or many runs and
//! keys, and a server-sent event stream that follows a running run.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use super::auth::Access;
use super::error::ApiError;
use super::extract::{json_body, run_id};
use crate::engine::Engine;
use crate::ingest::rewinds::RewoundPoints;
use crate::model::RunId;
use crate::model::float_json;
use crate::scalars::follow::{FollowEvent, FollowPoint, FollowRequest, follow};
use crate::scalars::query::{self, ScalarSeries, SeriesParams, XAxis};
use crate::scalars::{DEFAULT_MAX_POINTS, KeyPattern};

type ApiResult<T> = Result<T, ApiError>;
type EngineState = State<Arc<Engine>>;

/// The scalar routes (the single-series read is
/// [`get_metric_series`], routed with the native API); `streams` bounds
/// the live streams open at once.
pub fn routes(streams: Arc<StreamSlots>) -> Router<Arc<Engine>> {
    Router::new()
        .route("/api/v1/runs/{run_id}/metrics", get(list_metric_keys))
        .route(
            "/api/v1/runs/{run_id}/metrics/{*key}",
            get(get_metric_series),
        )
        .route("/api/v1/scalars", post(query_scalars))
        .route(
            "/api/v1/runs/{run_id}/stream",
            get(stream_run).layer(axum::Extension(streams)),
        )
}

/// The live streams (`/api/v1/runs/{id}/stream`) that may be open at once
/// (`--max-streams`), and the counts `/metrics` shows.
#[derive(Debug)]
pub struct StreamSlots {
    slots: Arc<tokio::sync::Semaphore>,
    max: usize,
    /// Streams refused because `max` were open.
    pub refused: std::sync::atomic::AtomicU64,
    /// Streams opened since start.
    pub opened: std::sync::atomic::AtomicU64,
}

impl StreamSlots {
    /// Room for `max` streams.
    pub fn new(max: usize) -> Self {
        StreamSlots {
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            refused: Default::default(),
            opened: Default::default(),
        }
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }
}

/// Parses a query string into `T`; unknown or malformed parameters are
/// `INVALID_PARAMETER_VALUE`.
pub(crate) fn parse_query<T: DeserializeOwned>(query: Option<&str>) -> ApiResult<T> {
    serde_html_form::from_str(query.unwrap_or(""))
        .map_err(|error| ApiError::invalid(format!("invalid query parameters: {error}")))
}

fn parse_number<T: std::str::FromStr>(name: &str, text: Option<&str>) -> ApiResult<Option<T>> {
    text.map(|text| {
        text.trim()
            .parse::<T>()
            .map_err(|_| ApiError::invalid(format!("{name} '{text}' is not a valid number")))
    })
    .transpose()
}

// ---- shapes ------------------------------------------------------------

/// One key of a run: count, step range, latest value, min and max.
#[derive(Serialize)]
struct KeyJson<'a> {
    key: &'a str,
    count: u64,
    first_step: i64,
    last_step: i64,
    #[serde(serialize_with = "float_json::serialize")]
    last_value: f64,
    last_timestamp: i64,
    #[serde(serialize_with = "float_json::serialize")]
    min: f64,
    #[serde(serialize_with = "float_json::serialize")]
    max: f64,
}

fn serialize_optional_slice<S: serde::Serializer>(
    values: &Option<Vec<f64>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match values {
        Some(values) => float_json::serialize_slice(values, serializer),
        None => serializer.serialize_none(),
    }
}

/// A series as the API returns it.
#[derive(Serialize)]
struct SeriesJson<'a> {
    run_id: String,
    key: &'a str,
    x: &'static str,
    steps: &'a [i64],
    timestamps: &'a [i64],
    #[serde(serialize_with = "float_json::serialize_slice")]
    values: &'a [f64],
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_optional_slice"
    )]
    smoothed: &'a Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relative_times: &'a Option<Vec<f64>>,
    total_points: u64,
    downsampled: bool,
    non_finite_points: u64,
}

impl<'a> SeriesJson<'a> {
    fn new(run_id: RunId, key: &'a str, x: XAxis, series: &'a ScalarSeries) -> Self {
        SeriesJson {
            run_id: run_id.to_string(),
            key,
            x: x.as_str(),
            steps: &series.steps,
            timestamps: &series.timestamps,
            values: &series.values,
            smoothed: &series.smoothed,
            relative_times: &series.relative_times,
            total_points: series.total_points,
            downsampled: series.downsampled,
            non_finite_points: series.non_finite_points,
        }
    }
}

fn json_response(value: &impl Serialize) -> ApiResult<Response> {
    let body = serde_json::to_vec(value).map_err(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            error.to_string(),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

// ---- handlers ----------------------------------------------------------

async fn list_metric_keys(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = run_id(&id)?;
    engine.check_run_access(&access, id)?;
    let summaries = engine.run_metric_summaries(id).await?;
    let metrics: Vec<KeyJson<'_>> = summaries
        .iter()
        .map(|(key, summary)| KeyJson {
            key,
            count: summary.count,
            first_step: summary.min_step,
            last_step: summary.max_step,
            last_value: summary.latest_value,
            last_timestamp: summary.latest_timestamp,
            min: summary.min_value,
            max: summary.max_value,
        })
        .collect();
    json_response(&json!({ "run_id": id.to_string(), "metrics": metrics }))
}

/// Series parameters as query parameters.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    x: Option<String>,
    start: Option<String>,
    end: Option<String>,
    max_points: Option<String>,
    smoothing: Option<String>,
    include_rewound: Option<String>,
}

/// `include_rewound`: whether a read returns the points a rewind hid.
fn rewound_points(include: Option<bool>) -> RewoundPoints {
    if include.unwrap_or(false) {
        RewoundPoints::Included
    } else {
        RewoundPoints::Hidden
    }
}

/// Parses a boolean query parameter (`true` or `false`).
fn parse_flag(name: &str, text: Option<&str>) -> ApiResult<Option<bool>> {
    match text {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(ApiError::invalid(format!(
            "{name} must be true or false, got {other:?}"
        ))),
    }
}

impl SeriesQuery {
    fn params(&self) -> ApiResult<SeriesParams> {
        let params = SeriesParams {
            x: self
                .x
                .as_deref()
                .map(XAxis::parse)
                .transpose()?
                .unwrap_or_default(),
            start: parse_number("start", self.start.as_deref())?,
            end: parse_number("end", self.end.as_deref())?,
            max_points: parse_number("max_points", self.max_points.as_deref())?
                .unwrap_or(DEFAULT_MAX_POINTS),
            smoothing: parse_number("smoothing", self.smoothing.as_deref())?,
            rewound: rewound_points(parse_flag(
                "include_rewound",
                self.include_rewound.as_deref(),
            )?),
        };
        params.validate()?;
        Ok(params)
    }
}

/// `GET /api/v1/runs/{run_id}/metrics/{key}`: one series, with the same
/// parameters as `POST /api/v1/scalars` as query parameters
/// (`max_points=0` returns every point).
pub async fn get_metric_series(
    State(engine): EngineState,
    access: Access,
    Path((id, key)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let id = run_id(&id)?;
    engine.check_run_access(&access, id)?;
    let params = parse_query::<SeriesQuery>(query.as_deref())?.params()?;
    let series = query::read_series(&engine, id, &key, &params).await?;
    json_response(&SeriesJson::new(id, &key, params.x, &series))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScalarsRequest {
    runs: Vec<String>,
    keys: Vec<String>,
    x: Option<String>,
    start: Option<f64>,
    end: Option<f64>,
    max_points: Option<usize>,
    smoothing: Option<f64>,
    include_rewound: Option<bool>,
}

async fn query_scalars(
    State(engine): EngineState,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: ScalarsRequest = json_body(body)?;
    let params = SeriesParams {
        x: request
            .x
            .as_deref()
            .map(XAxis::parse)
            .transpose()?
            .unwrap_or_default(),
        start: request.start,
        end: request.end,
        max_points: request.max_points.unwrap_or(DEFAULT_MAX_POINTS),
        smoothing: request.smoothing,
        rewound: rewound_points(request.include_rewound),
    };
    let runs = request
        .runs
        .iter()
        .map(|text| run_id(text))
        .collect::<ApiResult<Vec<RunId>>>()?;
    for &run in &runs {
        engine.check_run_access(&access, run)?;
    }
    let keys = request
        .keys
        .iter()
        .map(|text| KeyPattern::parse(text))
        .collect::<Result<Vec<_>, _>>()?;
    let results = query::query(&engine, &runs, &keys, &params).await?;
    let series: Vec<SeriesJson<'_>> = results
        .iter()
        .map(|result| SeriesJson::new(result.run_id, &result.key, params.x, &result.series))
        .collect();
    json_response(&json!({ "series": series }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    keys: Option<String>,
    after_step: Option<String>,
}

#[derive(Serialize)]
struct PointJson<'a> {
    key: &'a str,
    step: i64,
    timestamp: i64,
    #[serde(serialize_with = "float_json::serialize")]
    value: f64,
}

fn points_event(points: &[FollowPoint], last_id: Option<i64>) -> Event {
    let points: Vec<PointJson<'_>> = points
        .iter()
        .map(|point| PointJson {
            key: &point.key,
            step: point.step,
            timestamp: point.timestamp,
            value: point.value,
        })
        .collect();
    let data = serde_json::to_string(&json!({ "points": points }))
        .unwrap_or_else(|_| "{\"points\":[]}".to_string());
    let event = Event::default().event("points").data(data);
    match last_id {
        Some(step) => event.id(step.to_string()),
        None => event,
    }
}

fn to_sse(event: &FollowEvent, last_id: Option<i64>) -> Event {
    match event {
        FollowEvent::Points(points) => points_event(points, last_id),
        FollowEvent::Rewound(step) => {
            let event = Event::default()
                .event("rewind")
                .data(json!({ "step": step }).to_string());
            match last_id {
                Some(last) => event.id(last.to_string()),
                None => event,
            }
        }
        FollowEvent::End(status) => Event::default()
            .event("end")
            .data(json!({ "status": status.as_str() }).to_string()),
        FollowEvent::Lagged { resume_after_step } => Event::default().event("error").data(
            json!({
                "error_code": "STREAM_LAGGED",
                "message": "the stream fell behind the run's writes; reconnect with after_step",
                "resume_after_step": resume_after_step,
            })
            .to_string(),
        ),
        FollowEvent::Closing { resume_after_step } => Event::default().event("error").data(
            json!({
                "error_code": "SERVER_SHUTTING_DOWN",
                "message": "the server is shutting down; reconnect with after_step once it is back",
                "resume_after_step": resume_after_step,
            })
            .to_string(),
        ),
        FollowEvent::Failed(message) => Event::default()
            .event("error")
            .data(json!({ "error_code": "INTERNAL_ERROR", "message": message }).to_string()),
    }
}

/// `GET /api/v1/runs/{run_id}/stream?keys=a,train/*&after_step=N`:
/// server-sent events. `points` events carry acknowledged points (stored
/// ones after `after_step` first, then each new batch) and have the
/// greatest step sent so far as their id, so a browser's `EventSource`
/// resumes by itself (`Last-Event-ID` is taken as `after_step`, and wins
/// over the `after_step` of the URL it reconnects to); `rewind` tells
/// that the run was rewound to `step` (drop the points received past it;
/// its id lowers the resume point to it); `end`
/// closes the stream when the run ends; `error` reports a follower that
/// fell behind (`resume_after_step`) or a failed read.
async fn stream_run(
    State(engine): EngineState,
    axum::Extension(streams): axum::Extension<Arc<StreamSlots>>,
    access: Access,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = run_id(&id)?;
    let query: StreamQuery = parse_query(query.as_deref())?;
    engine.run_for(&access, id)?;
    let Ok(slot) = Arc::clone(&streams.slots).try_acquire_owned() else {
        streams
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "TEMPORARILY_UNAVAILABLE",
            format!(
                "{} live streams are open, the server's limit (--max-streams); retry later",
                streams.max
            ),
        ));
    };
    streams
        .opened
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let keys = query
        .keys
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(KeyPattern::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if keys.len() > query::MAX_KEY_PATTERNS {
        return Err(ApiError::invalid(format!(
            "at most {} keys or patterns per stream, not {}",
            query::MAX_KEY_PATTERNS,
            keys.len()
        )));
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    // A reconnecting `EventSource` repeats the URL it first opened (with
    // its `after_step`) and adds `Last-Event-ID`: the step it reached wins.
    let after_step = match (last_event_id.as_deref(), query.after_step.as_deref()) {
        (Some(text), _) => parse_number::<i64>("Last-Event-ID", Some(text))?,
        (None, Some(text)) => parse_number::<i64>("after_step", Some(text))?,
        (None, None) => None,
    };
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(follow(
        Arc::clone(&engine),
        FollowRequest {
            run_id: id,
            keys,
            after_step,
        },
        sender,
    ));
    // The slot is held as long as the response body lives.
    let events = futures_util::stream::unfold(
        (receiver, after_step, slot),
        |(mut receiver, mut last_id, slot)| async move {
            let event = receiver.recv().await?;
            match &event {
                FollowEvent::Points(points) => {
                    last_id = last_id.max(points.iter().map(|point| point.step).max());
                }
                // A reconnect resumes after the step rewound to.
                FollowEvent::Rewound(step) => last_id = last_id.map(|last| last.min(*step)),
                _ => {}
            }
            let sse = to_sse(&event, last_id);
            Some((Ok::<Event, Infallible>(sse), (receiver, last_id, slot)))
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
