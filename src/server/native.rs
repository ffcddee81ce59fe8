//! The native JSON API under `/api/v1`: experiments, runs, params, tags,
//! metric ingest and series reads.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};

use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::auth::Access;
use super::error::ApiError;
use super::extract::{body_error, experiment_id, json_body, parse_json, run_id};
use crate::catalog::continuity::NewFork;
use crate::catalog::{NewExperiment, NewRun, RunUpdate};
use crate::engine::{Engine, ViewType};
use crate::error_kind::{Classify, ErrorKind};
use crate::model::float_json::{self, JsonF64};
use crate::model::{
    Experiment, ExperimentId, KeySummary, LifecycleStage, MetricBatchBuilder, Run, RunStatus,
    now_millis,
};

type ApiResult<T> = Result<T, ApiError>;
type EngineState = State<Arc<Engine>>;

/// The `/api/v1` routes.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route(
            "/api/v1/experiments",
            post(create_experiment).get(list_experiments),
        )
        .route(
            "/api/v1/experiments/{experiment_id}",
            get(get_experiment)
                .patch(rename_experiment)
                .delete(delete_experiment),
        )
        .route(
            "/api/v1/experiments/{experiment_id}/restore",
            post(restore_experiment),
        )
        .route(
            "/api/v1/experiments/{experiment_id}/tags",
            post(set_experiment_tags),
        )
        .route(
            "/api/v1/experiments/{experiment_id}/tags/{*key}",
            delete(delete_experiment_tag),
        )
        .route("/api/v1/experiments/{experiment_id}/runs", get(list_runs))
        .route("/api/v1/runs", post(create_run))
        .route(
            "/api/v1/runs/{run_id}",
            get(get_run).patch(update_run).delete(delete_run),
        )
        .route("/api/v1/runs/{run_id}/restore", post(restore_run))
        .route("/api/v1/runs/{run_id}/params", post(log_params))
        .route("/api/v1/runs/{run_id}/tags", post(set_run_tags))
        .route("/api/v1/runs/{run_id}/tags/{*key}", delete(delete_run_tag))
        .route("/api/v1/runs/{run_id}/metrics", post(log_metrics))
    // GET .../metrics and .../metrics/{*key}: server::scalars.
}

// ---- shapes -----------------------------------------------------------

#[derive(Deserialize, Default)]
struct ViewQuery {
    view_type: Option<String>,
}

fn parse_view(query: &ViewQuery) -> ApiResult<ViewType> {
    match query.view_type.as_deref() {
        None | Some("ACTIVE_ONLY") | Some("active") | Some("active_only") => {
            Ok(ViewType::ActiveOnly)
        }
        Some("DELETED_ONLY") | Some("deleted") | Some("deleted_only") => Ok(ViewType::DeletedOnly),
        Some("ALL") | Some("all") => Ok(ViewType::All),
        Some(other) => Err(ApiError::invalid(format!(
            "view_type '{other}' is not one of ACTIVE_ONLY, DELETED_ONLY, ALL"
        ))),
    }
}

/// The latest point and statistics of one metric key.
#[derive(Serialize)]
struct MetricSummaryJson {
    #[serde(serialize_with = "float_json::serialize")]
    value: f64,
    step: i64,
    timestamp: i64,
    #[serde(serialize_with = "float_json::serialize")]
    min: f64,
    #[serde(serialize_with = "float_json::serialize")]
    max: f64,
    count: u64,
    first_step: i64,
    last_step: i64,
}

impl From<&KeySummary> for MetricSummaryJson {
    fn from(summary: &KeySummary) -> Self {
        MetricSummaryJson {
            value: summary.latest_value,
            step: summary.latest_step,
            timestamp: summary.latest_timestamp,
            min: summary.min_value,
            max: summary.max_value,
            count: summary.count,
            first_step: summary.min_step,
            last_step: summary.max_step,
        }
    }
}

#[derive(Serialize)]
struct RunWithMetrics {
    #[serde(flatten)]
    run: Run,
    metrics: BTreeMap<String, MetricSummaryJson>,
    /// The run's rewinds, oldest first.
    rewinds: Vec<super::continuity::RewindJson>,
    /// The run it was forked from, if it was.
    forked_from: Option<super::continuity::ForkJson>,
}

/// A run as `POST /api/v1/runs` answers it.
#[derive(Serialize)]
struct CreatedRun {
    #[serde(flatten)]
    run: Run,
    /// The run it was forked from, for a fork.
    #[serde(skip_serializing_if = "Option::is_none")]
    forked_from: Option<super::continuity::ForkJson>,
}

/// Turns a JSON scalar into the string MLflow would store.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Flattens a (possibly nested) JSON object into dotted keys:
/// `{"optimizer": {"lr": 0.1}}` becomes `optimizer.lr = "0.1"`.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, nested) in map {
                let full = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&full, nested, out);
            }
        }
        other => out.push((prefix.to_string(), scalar_text(other))),
    }
}

fn object_pairs(
    value: Option<Value>,
    what: &str,
    nested: bool,
) -> ApiResult<Vec<(String, String)>> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => {
            let mut pairs = Vec::with_capacity(map.len());
            if nested {
                flatten("", &Value::Object(map), &mut pairs);
            } else {
                for (key, value) in map {
                    if value.is_object() {
                        return Err(ApiError::invalid(format!(
                            "{what} '{key}' has an object value; {what} values must be scalars"
                        )));
                    }
                    pairs.push((key, scalar_text(&value)));
                }
            }
            Ok(pairs)
        }
        Some(_) => Err(ApiError::invalid(format!("{what} must be a JSON object"))),
    }
}

fn ok() -> Json<Value> {
    Json(json!({}))
}

// ---- experiments ------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateExperimentRequest {
    name: String,
    #[serde(default)]
    tags: Option<Value>,
    #[serde(default)]
    artifact_location: Option<String>,
}

async fn create_experiment(
    State(engine): EngineState,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    access.check_unlimited("create experiments")?;
    let request: CreateExperimentRequest = json_body(body)?;
    let tags = object_pairs(request.tags, "tags", false)?;
    let id = engine
        .create_experiment(NewExperiment {
            name: request.name,
            artifact_location: request.artifact_location,
            tags,
        })
        .await?;
    Ok(Json(json!({ "experiment_id": id.to_string() })))
}

async fn list_experiments(
    State(engine): EngineState,
    access: Access,
    Query(query): Query<ViewQuery>,
) -> ApiResult<Json<Value>> {
    let mut experiments = engine.experiments(parse_view(&query)?);
    experiments.retain(|experiment| access.can_see(experiment.experiment_id));
    Ok(Json(json!({ "experiments": experiments })))
}

async fn get_experiment(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
) -> ApiResult<Json<Experiment>> {
    Ok(Json(engine.experiment_for(&access, experiment_id(&id)?)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameExperimentRequest {
    name: String,
}

async fn rename_experiment(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Experiment>> {
    let id = experiment_id(&id)?;
    access.check_experiment(id)?;
    let request: RenameExperimentRequest = json_body(body)?;
    engine.rename_experiment(id, request.name).await?;
    Ok(Json(engine.experiment(id)?))
}

async fn delete_experiment(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = experiment_id(&id)?;
    access.check_experiment(id)?;
    engine
        .set_experiment_lifecycle(id, LifecycleStage::Deleted)
        .await?;
    Ok(ok())
}

async fn restore_experiment(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = experiment_id(&id)?;
    access.check_experiment(id)?;
    engine
        .set_experiment_lifecycle(id, LifecycleStage::Active)
        .await?;
    Ok(ok())
}

async fn set_experiment_tags(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let id = experiment_id(&id)?;
    access.check_experiment(id)?;
    let tags = object_pairs(Some(json_body::<Value>(body)?), "tags", false)?;
    engine.set_experiment_tags(id, tags).await?;
    Ok(ok())
}

async fn delete_experiment_tag(
    State(engine): EngineState,
    access: Access,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id = experiment_id(&id)?;
    access.check_experiment(id)?;
    engine.delete_experiment_tag(id, key).await?;
    Ok(ok())
}

async fn list_runs(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
    Query(query): Query<ViewQuery>,
) -> ApiResult<Json<Value>> {
    let id = experiment_id(&id)?;
    engine.experiment_for(&access, id)?;
    let runs = engine.runs_of_experiment(id, parse_view(&query)?);
    Ok(Json(json!({ "runs": runs })))
}

// ---- runs -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRunRequest {
    experiment_id: Option<String>,
    experiment_name: Option<String>,
    run_name: Option<String>,
    user_id: Option<String>,
    start_time: Option<i64>,
    params: Option<Value>,
    tags: Option<Value>,
    /// Fork this run from another at a step.
    fork_from: Option<super::continuity::ForkFrom>,
}

/// Finds the experiment a new run goes to: by id, by name (created when
/// missing, as `mlflow.set_experiment` does), or the Default experiment.
async fn resolve_experiment(
    engine: &Engine,
    access: &Access,
    request: &CreateRunRequest,
) -> ApiResult<ExperimentId> {
    let id = match (&request.experiment_id, &request.experiment_name) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "give either experiment_id or experiment_name, not both",
            ));
        }
        (Some(id), None) => experiment_id(id)?,
        (None, Some(name)) => match engine.experiment_by_name(name) {
            Ok(experiment) => experiment.experiment_id,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                access.check_unlimited("create experiments")?;
                match engine
                    .create_experiment(NewExperiment {
                        name: name.clone(),
                        ..NewExperiment::default()
                    })
                    .await
                {
                    Ok(id) => id,
                    // Created concurrently by another request: use it.
                    Err(error) if error.kind() == ErrorKind::AlreadyExists => {
                        engine.experiment_by_name(name)?.experiment_id
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            Err(error) => return Err(error.into()),
        },
        (None, None) => ExperimentId::DEFAULT,
    };
    access.check_experiment(id)?;
    Ok(id)
}

async fn create_run(
    State(engine): EngineState,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<CreatedRun>> {
    let request: CreateRunRequest = json_body(body)?;
    // A fork goes to its parent's experiment unless told otherwise.
    let parent = match &request.fork_from {
        Some(fork) => Some(engine.run_for(&access, run_id(&fork.run_id)?)?),
        None => None,
    };
    let experiment_id = match &parent {
        Some(parent) if request.experiment_id.is_none() && request.experiment_name.is_none() => {
            parent.experiment_id
        }
        _ => resolve_experiment(&engine, &access, &request).await?,
    };
    let params = object_pairs(request.params, "params", true)?;
    let tags = object_pairs(request.tags, "tags", false)?;
    let new_run = NewRun {
        experiment_id,
        run_name: request.run_name,
        user_id: request.user_id.unwrap_or_default(),
        start_time: request.start_time.unwrap_or_else(now_millis),
        params,
        tags,
    };
    let (Some(parent), Some(fork)) = (parent, request.fork_from) else {
        let run = engine.create_run(new_run).await?;
        return Ok(Json(CreatedRun {
            run,
            forked_from: None,
        }));
    };
    let run = engine
        .fork_run(NewFork {
            parent: parent.run_id,
            step: fork.step,
            run: new_run,
            time: now_millis(),
        })
        .await?;
    let forked_from = engine
        .run_fork(run.run_id)
        .as_ref()
        .map(super::continuity::ForkJson::from);
    Ok(Json(CreatedRun { run, forked_from }))
}

async fn get_run(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
) -> ApiResult<Json<RunWithMetrics>> {
    let id = run_id(&id)?;
    let run = engine.run_for(&access, id)?;
    let metrics = engine
        .run_metric_summaries(id)
        .await?
        .iter()
        .map(|(key, summary)| (key.clone(), MetricSummaryJson::from(summary)))
        .collect();
    let rewinds = engine
        .run_rewinds(id)
        .iter()
        .map(super::continuity::RewindJson::from)
        .collect();
    let forked_from = engine
        .run_fork(id)
        .as_ref()
        .map(super::continuity::ForkJson::from);
    Ok(Json(RunWithMetrics {
        run,
        metrics,
        rewinds,
        forked_from,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRunRequest {
    status: Option<String>,
    end_time: Option<i64>,
    run_name: Option<String>,
}

async fn update_run(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Run>> {
    let id = run_id(&id)?;
    engine.check_run_access(&access, id)?;
    let request: UpdateRunRequest = json_body(body)?;
    let status = request
        .status
        .as_deref()
        .map(str::parse::<RunStatus>)
        .transpose()
        .map_err(|error| ApiError::invalid(error.to_string()))?;
    let run = engine
        .update_run(
            id,
            RunUpdate {
                status,
                end_time: request.end_time,
                run_name: request.run_name,
            },
        )
        .await?;
    Ok(Json(run))
}

async fn delete_run(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = run_id(&id)?;
    engine.check_run_access(&access, id)?;
    engine
        .set_run_lifecycle(id, LifecycleStage::Deleted)
        .await?;
    Ok(ok())
}

async fn restore_run(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = run_id(&id)?;
    engine.check_run_access(&access, id)?;
    engine.set_run_lifecycle(id, LifecycleStage::Active).await?;
    Ok(ok())
}

async fn log_params(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let id = run_id(&id)?;
    engine.check_run_access(&access, id)?;
    let params = object_pairs(Some(json_body::<Value>(body)?), "params", true)?;
    engine.log_params(id, params).await?;
    Ok(ok())
}

async fn set_run_tags(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let id = run_id(&id)?;
    engine.check_run_access(&access, id)?;
    let tags = object_pairs(Some(json_body::<Value>(body)?), "tags", false)?;
    engine.set_run_tags(id, tags).await?;
    Ok(ok())
}

async fn delete_run_tag(
    State(engine): EngineState,
    access: Access,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id = run_id(&id)?;
    engine.check_run_access(&access, id)?;
    engine.delete_run_tag(id, key).await?;
    Ok(ok())
}

// ---- metrics ----------------------------------------------------------

/// One point of the `points` form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PointIn<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    value: JsonF64,
    #[serde(default)]
    step: i64,
    timestamp: Option<i64>,
}

/// Either `{"points": [...]}` or `{"step", "timestamp"?, "values": {...}}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogMetricsRequest<'a> {
    #[serde(borrow)]
    points: Option<Vec<PointIn<'a>>>,
    step: Option<i64>,
    timestamp: Option<i64>,
    #[serde(borrow)]
    values: Option<BTreeMap<Cow<'a, str>, JsonF64>>,
}

async fn log_metrics(
    State(engine): EngineState,
    access: Access,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let id = run_id(&id)?;
    engine.check_run_access(&access, id)?;
    let body = body.map_err(body_error)?;
    let batch = {
        let request: LogMetricsRequest<'_> = parse_json(&body)?;
        let now = now_millis();
        match (request.points, request.values) {
            (Some(points), None) => {
                if request.step.is_some() || request.timestamp.is_some() {
                    return Err(ApiError::invalid(
                        "'step' and 'timestamp' belong inside each point of 'points'",
                    ));
                }
                let mut builder = MetricBatchBuilder::with_capacity(points.len());
                for point in &points {
                    builder.push(
                        &point.key,
                        point.step,
                        point.timestamp.unwrap_or(now),
                        point.value.0,
                    );
                }
                builder.finish()
            }
            (None, Some(values)) => {
                let step = request.step.unwrap_or(0);
                let timestamp = request.timestamp.unwrap_or(now);
                let mut builder = MetricBatchBuilder::with_capacity(values.len());
                for (key, value) in &values {
                    builder.push(key, step, timestamp, value.0);
                }
                builder.finish()
            }
            _ => {
                return Err(ApiError::invalid(
                    "give either 'points' (a list of {key, value, step, timestamp}) or \
                     'values' (an object of key: value, with 'step' and 'timestamp')",
                ));
            }
        }
    };
    let accepted = engine.log_metrics(id, batch).await?;
    Ok(Json(json!({ "accepted": accepted })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_params_flatten_to_dotted_keys() {
        let mut out = Vec::new();
        flatten(
            "",
            &json!({"optimizer": {"lr": 0.01, "betas": [0.9, 0.99]}, "seed": 7, "name": "x", "flag": true}),
            &mut out,
        );
        out.sort();
        assert_eq!(
            out,
            vec![
                ("flag".to_string(), "true".to_string()),
                ("name".to_string(), "x".to_string()),
                ("optimizer.betas".to_string(), "[0.9,0.99]".to_string()),
                ("optimizer.lr".to_string(), "0.01".to_string()),
                ("seed".to_string(), "7".to_string()),
            ]
        );
    }

    #[test]
    fn views_parse_mlflow_and_short_names() {
        let view = |text: &str| {
            parse_view(&ViewQuery {
                view_type: Some(text.to_string()),
            })
        };
        assert_eq!(view("ALL").unwrap(), ViewType::All);
        assert_eq!(view("deleted").unwrap(), ViewType::DeletedOnly);
        assert!(view("some").is_err());
        assert_eq!(
            parse_view(&ViewQuery::default()).unwrap(),
            ViewType::ActiveOnly
        );
    }
}
