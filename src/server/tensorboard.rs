//! TensorBoard-shaped read endpoints, so tools written against
//! TensorBoard's HTTP API can read stepstore. Runs are named by run id and
//! tags are metric keys.
//!
//! - `GET /data/runs`: run ids with metrics, oldest first;
//! - `GET /data/plugin/scalars/tags[?experiment_id=E]`:
//!   `{run_id: {tag: {"displayName", "description"}}}`;
//! - `GET /data/plugin/scalars/scalars?run=R&tag=T[&max_points=N]`:
//!   `[[wall_time_seconds, step, value], ...]`, downsampled like the scalar
//!   API (1,000 points by default, spikes kept; `max_points=0` for all),
//!   with NaN and infinities as the strings TensorBoard uses.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::Access;
use super::error::ApiError;
use super::extract::{experiment_id, run_id};
use super::scalars::parse_query;
use crate::engine::{Engine, ViewType};
use crate::model::float_json::JsonF64;
use crate::scalars::DEFAULT_MAX_POINTS;
use crate::scalars::query::{self, SeriesParams};

type ApiResult<T> = Result<T, ApiError>;
type EngineState = State<Arc<Engine>>;

/// The TensorBoard-shaped routes.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/data/runs", get(list_runs))
        .route("/data/plugin/scalars/tags", get(list_tags))
        .route("/data/plugin/scalars/scalars", get(get_scalars))
}

/// TensorBoard clients may send parameters stepstore does not use
/// (`experiment`), so unknown ones are ignored here.
#[derive(Deserialize, Default)]
struct TagsQuery {
    experiment_id: Option<String>,
}

/// Active runs (of one experiment when given) with their metric keys,
/// oldest first.
async fn runs_with_keys(
    engine: &Engine,
    access: &Access,
    query: &TagsQuery,
) -> ApiResult<Vec<(String, Vec<String>)>> {
    let experiments = match query.experiment_id.as_deref() {
        Some(id) => {
            let id = experiment_id(id)?;
            engine.experiment_for(access, id)?;
            vec![id]
        }
        None => Vec::new(),
    };
    let mut runs = engine.runs_in(&experiments, ViewType::ActiveOnly);
    runs.retain(|run| access.can_see(run.experiment_id));
    runs.sort_by(|a, b| {
        a.start_time
            .cmp(&b.start_time)
            .then(a.run_id.cmp(&b.run_id))
    });
    let ids: Vec<_> = runs.iter().map(|run| run.run_id).collect();
    let summaries = engine.runs_metric_summaries(&ids).await?;
    Ok(ids
        .iter()
        .zip(summaries)
        .filter(|(_, keys)| !keys.is_empty())
        .map(|(id, keys)| {
            (
                id.to_string(),
                keys.into_iter().map(|(key, _)| key).collect(),
            )
        })
        .collect())
}

async fn list_runs(
    State(engine): EngineState,
    access: Access,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let query: TagsQuery = parse_query(query.as_deref())?;
    let runs: Vec<String> = runs_with_keys(&engine, &access, &query)
        .await?
        .into_iter()
        .map(|(run, _)| run)
        .collect();
    Ok(axum::Json(runs).into_response())
}

#[derive(Serialize)]
struct TagInfo {
    #[serde(rename = "displayName")]
    display_name: String,
    description: String,
}

async fn list_tags(
    State(engine): EngineState,
    access: Access,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let query: TagsQuery = parse_query(query.as_deref())?;
    let mut tags: BTreeMap<String, BTreeMap<String, TagInfo>> = BTreeMap::new();
    for (run, keys) in runs_with_keys(&engine, &access, &query).await? {
        let run_tags = keys
            .into_iter()
            .map(|key| {
                (
                    key.clone(),
                    TagInfo {
                        display_name: key,
                        description: String::new(),
                    },
                )
            })
            .collect();
        tags.insert(run, run_tags);
    }
    Ok(axum::Json(tags).into_response())
}

#[derive(Deserialize, Default)]
struct ScalarsQuery {
    run: Option<String>,
    tag: Option<String>,
    max_points: Option<String>,
    format: Option<String>,
}

async fn get_scalars(
    State(engine): EngineState,
    access: Access,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let query: ScalarsQuery = parse_query(query.as_deref())?;
    let (Some(run), Some(tag)) = (query.run.as_deref(), query.tag.as_deref()) else {
        return Err(ApiError::invalid("both run and tag are required"));
    };
    if query
        .format
        .as_deref()
        .is_some_and(|format| format != "json")
    {
        return Err(ApiError::invalid("only format=json is supported"));
    }
    let run_id = run_id(run)?;
    engine.check_run_access(&access, run_id)?;
    let max_points = match query.max_points.as_deref() {
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| ApiError::invalid(format!("max_points '{text}' is not a valid number")))?,
        None => DEFAULT_MAX_POINTS,
    };
    let params = SeriesParams {
        max_points,
        ..SeriesParams::default()
    };
    let series = query::read_series(&engine, run_id, tag, &params).await?;
    if series.total_points == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "RESOURCE_DOES_NOT_EXIST",
            format!("no scalar data for run={run}, tag={tag}"),
        ));
    }
    let rows: Vec<(f64, i64, JsonF64)> = series
        .timestamps
        .iter()
        .zip(&series.steps)
        .zip(&series.values)
        .map(|((&timestamp, &step), &value)| (timestamp as f64 / 1000.0, step, JsonF64(value)))
        .collect();
    Ok(axum::Json(json!(rows)).into_response())
}
