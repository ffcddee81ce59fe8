//! MLflow run endpoints: create, get, update, delete, restore, search, tags,
//! and the logging calls (`log-metric`, `log-parameter`, `log-batch`,
//! `log-inputs`).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::Uri;
use serde::Deserialize;
use serde_json::{Value, json};

use super::request::{
    MlflowResult, body, body_bytes, invalid, missing, off_async, parse_body, parse_experiment_id,
    query, required, required_run_id,
};
use super::wire::{self, DatasetInputJson, KeyValue, RunInfoJson, RunJson, optional_i64};
use super::{empty, page_response, view_type};
use crate::auth::Principal;
use crate::catalog::continuity::NewFork;
use crate::catalog::{NewRun, RunUpdate};
use crate::engine::{Engine, ViewType};
use crate::model::float_json::JsonF64;
use crate::model::validation::{KeyKind, MAX_PARAM_VALUE_LENGTH, MAX_TAG_VALUE_LENGTH};
use crate::model::{
    ExperimentId, KeySummary, LifecycleStage, MetricBatchBuilder, Run, RunId, RunStatus, USER_TAG,
    now_millis,
};
use crate::search::runs::{
    RunComparison, RunField, SearchableRun, matches_run, metric_keys, parse_run_filter,
    parse_run_order, select_runs,
};
use crate::search::{page_size, paginate};
use crate::server::auth::Access;

type EngineState = State<Arc<Engine>>;

/// Most metrics one `log-batch` request may carry (MLflow's limit).
pub const MAX_BATCH_METRICS: usize = 1000;
/// Most experiments one `runs/search` may name.
pub const MAX_SEARCH_EXPERIMENTS: usize = 1000;
/// Most params one `log-batch` request may carry.
pub const MAX_BATCH_PARAMS: usize = 100;
/// Most tags one `log-batch` request may carry.
pub const MAX_BATCH_TAGS: usize = 100;
/// Most entities (metrics + params + tags) in one `log-batch` request.
pub const MAX_BATCH_ENTITIES: usize = 1000;

/// MLflow's server cuts param and tag values that are over its limits
/// (with a warning) instead of refusing them (`MLFLOW_TRUNCATE_LONG_VALUES`,
/// on by default), so a script that works against MLflow works here: the
/// MLflow endpoints do the same. The native API refuses them instead.
fn truncated(kind: KeyKind, key: &str, mut value: String) -> String {
    let limit = match kind {
        KeyKind::Param => MAX_PARAM_VALUE_LENGTH,
        _ => MAX_TAG_VALUE_LENGTH,
    };
    if let Some((cut, _)) = value.char_indices().nth(limit) {
        tracing::warn!(
            key,
            limit,
            kind = ?kind,
            "value over MLflow's length limit truncated, as MLflow's server does"
        );
        value.truncate(cut);
    }
    value
}

fn truncated_tags(tags: Vec<KeyValue>) -> Vec<(String, String)> {
    tags.into_iter()
        .map(|tag| {
            let value = truncated(KeyKind::Tag, &tag.key, tag.value);
            (tag.key, value)
        })
        .collect()
}

async fn run_json(engine: &Engine, run: &Run) -> MlflowResult<RunJson> {
    let summaries = engine.run_metric_summaries(run.run_id).await?;
    Ok(RunJson::new(run, &summaries))
}

#[derive(Deserialize)]
pub(super) struct CreateRun {
    experiment_id: Option<String>,
    user_id: Option<String>,
    run_name: Option<String>,
    #[serde(default, deserialize_with = "optional_i64")]
    start_time: Option<i64>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

pub(super) async fn create(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    let request: CreateRun = body(request)?;
    let experiment_id = match request.experiment_id.as_deref() {
        None | Some("") => ExperimentId::DEFAULT,
        Some(text) => parse_experiment_id(text)?,
    };
    let mut user_id = request.user_id.unwrap_or_default();
    if user_id.is_empty()
        && let Some(tag) = request.tags.iter().find(|tag| tag.key == USER_TAG)
    {
        user_id = tag.value.clone();
    }
    access.check_experiment(experiment_id)?;
    let fork = crate::server::continuity::fork_from_tags(
        request
            .tags
            .iter()
            .map(|tag| (tag.key.as_str(), tag.value.as_str())),
    )?;
    let new_run = NewRun {
        experiment_id,
        run_name: request.run_name.filter(|name| !name.is_empty()),
        user_id,
        start_time: request.start_time.unwrap_or_else(now_millis),
        params: Vec::new(),
        tags: truncated_tags(request.tags),
    };
    let run = match fork {
        None => engine.create_run(new_run).await?,
        Some((parent, step)) => {
            engine.check_run_access(&access, parent)?;
            engine
                .fork_run(NewFork {
                    parent,
                    step,
                    run: new_run,
                    time: now_millis(),
                })
                .await?
        }
    };
    Ok(Json(json!({ "run": RunJson::new(&run, &[]) })))
}

#[derive(Deserialize)]
pub(super) struct GetRun {
    run_id: Option<String>,
    run_uuid: Option<String>,
}

pub(super) async fn get(
    State(engine): EngineState,
    access: Access,
    uri: Uri,
) -> MlflowResult<Json<Value>> {
    Ok(Json(get_run(&engine, &access, query(&uri)?).await?))
}

/// `runs/get`'s answer: `{"run": Run}`.
pub(super) async fn get_run(
    engine: &Engine,
    principal: &Principal,
    request: GetRun,
) -> MlflowResult<Value> {
    let run_id = required_run_id(&request.run_id, &request.run_uuid)?;
    let run = engine.run_for(principal, run_id)?;
    Ok(json!({ "run": run_json(engine, &run).await? }))
}

#[derive(Deserialize)]
pub(super) struct UpdateRun {
    run_id: Option<String>,
    run_uuid: Option<String>,
    #[serde(default, deserialize_with = "wire::run_status")]
    status: Option<String>,
    #[serde(default, deserialize_with = "optional_i64")]
    end_time: Option<i64>,
    run_name: Option<String>,
}

pub(super) async fn update(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    let request: UpdateRun = body(request)?;
    let run_id = required_run_id(&request.run_id, &request.run_uuid)?;
    engine.check_run_access(&access, run_id)?;
    let status = request
        .status
        .as_deref()
        .filter(|status| !status.is_empty())
        .map(str::parse::<RunStatus>)
        .transpose()?;
    let run = engine
        .update_run(
            run_id,
            RunUpdate {
                status,
                end_time: request.end_time,
                run_name: request.run_name.filter(|name| !name.is_empty()),
            },
        )
        .await?;
    Ok(Json(json!({ "run_info": RunInfoJson::from(&run) })))
}

#[derive(Deserialize)]
pub(super) struct RunIdOnly {
    run_id: Option<String>,
    run_uuid: Option<String>,
}

async fn set_lifecycle(
    engine: &Engine,
    access: &Access,
    request: Result<Bytes, BytesRejection>,
    stage: LifecycleStage,
) -> MlflowResult<Json<Value>> {
    let request: RunIdOnly = body(request)?;
    let run_id = required_run_id(&request.run_id, &request.run_uuid)?;
    engine.check_run_access(access, run_id)?;
    engine.set_run_lifecycle(run_id, stage).await?;
    Ok(empty())
}

pub(super) async fn delete(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    set_lifecycle(&engine, &access, request, LifecycleStage::Deleted).await
}

pub(super) async fn restore(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    set_lifecycle(&engine, &access, request, LifecycleStage::Active).await
}

#[derive(Deserialize)]
pub(super) struct SetTag {
    run_id: Option<String>,
    run_uuid: Option<String>,
    key: Option<String>,
    #[serde(default)]
    value: String,
}

pub(super) async fn set_tag(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    let request: SetTag = body(request)?;
    let run_id = required_run_id(&request.run_id, &request.run_uuid)?;
    engine.check_run_access(&access, run_id)?;
    let key = required(&request.key, "key")?.to_string();
    let value = truncated(KeyKind::Tag, &key, request.value);
    engine.set_run_tags(run_id, vec![(key, value)]).await?;
    Ok(empty())
}

pub(super) async fn delete_tag(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    let request: SetTag = body(request)?;
    let run_id = required_run_id(&request.run_id, &request.run_uuid)?;
    engine.check_run_access(&access, run_id)?;
    let key = required(&request.key, "key")?.to_string();
    engine.delete_run_tag(run_id, key).await?;
    Ok(empty())
}

#[derive(Deserialize)]
pub(super) struct LogParam {
    run_id: Option<String>,
    run_uuid: Option<String>,
    key: Option<String>,
    value: Option<String>,
}

pub(super) async fn log_parameter(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    let request: LogParam = body(request)?;
    let run_id = required_run_id(&request.run_id, &request.run_uuid)?;
    engine.check_run_access(&access, run_id)?;
    let key = required(&request.key, "key")?.to_string();
    let value = truncated(
        KeyKind::Param,
        &key,
        request.value.ok_or_else(|| missing("value"))?,
    );
    engine.log_params(run_id, vec![(key, value)]).await?;
    Ok(empty())
}

/// A metric point as MLflow sends it (the key borrowed from the body).
#[derive(Deserialize)]
pub(super) struct MetricIn<'a> {
    #[serde(borrow)]
    key: Option<Cow<'a, str>>,
    value: Option<JsonF64>,
    #[serde(default, deserialize_with = "optional_i64")]
    timestamp: Option<i64>,
    #[serde(default, deserialize_with = "optional_i64")]
    step: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct LogMetric<'a> {
    run_id: Option<String>,
    run_uuid: Option<String>,
    #[serde(borrow, flatten)]
    metric: MetricIn<'a>,
}

fn push_metric(builder: &mut MetricBatchBuilder, metric: &MetricIn<'_>) -> MlflowResult<()> {
    let key = metric
        .key
        .as_deref()
        .filter(|key| !key.is_empty())
        .ok_or_else(|| missing("key"))?;
    let value = metric.value.ok_or_else(|| missing("value"))?;
    let timestamp = metric.timestamp.ok_or_else(|| missing("timestamp"))?;
    if timestamp < 0 {
        return Err(invalid(format!(
            "Invalid value {timestamp} for parameter 'timestamp' supplied: metric '{key}' \
             (value={}). Timestamp must be a nonnegative long (64-bit integer)",
            value.0
        )));
    }
    builder.push(key, metric.step.unwrap_or(0), timestamp, value.0);
    Ok(())
}

pub(super) async fn log_metric(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    let bytes = body_bytes(request)?;
    let (run_id, batch) = {
        let request: LogMetric<'_> = parse_body(&bytes)?;
        let run_id = required_run_id(&request.run_id, &request.run_uuid)?;
        let mut builder = MetricBatchBuilder::with_capacity(1);
        push_metric(&mut builder, &request.metric)?;
        (run_id, builder.finish())
    };
    engine.check_run_access(&access, run_id)?;
    engine.log_metrics(run_id, batch).await?;
    Ok(empty())
}

#[derive(Deserialize)]
pub(super) struct LogBatch<'a> {
    run_id: Option<String>,
    #[serde(default, borrow)]
    metrics: Vec<MetricIn<'a>>,
    #[serde(default)]
    params: Vec<KeyValue>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

fn check_batch_limits(request: &LogBatch<'_>) -> MlflowResult<()> {
    let limits = [
        ("metrics", request.metrics.len(), MAX_BATCH_METRICS),
        ("params", request.params.len(), MAX_BATCH_PARAMS),
        ("tags", request.tags.len(), MAX_BATCH_TAGS),
    ];
    for (what, count, limit) in limits {
        if count > limit {
            return Err(invalid(format!(
                "A batch logging request can contain at most {limit} {what}. Got {count} \
                 {what}. Please split up {what} across multiple requests and try again."
            )));
        }
    }
    let total = request.metrics.len() + request.params.len() + request.tags.len();
    if total > MAX_BATCH_ENTITIES {
        return Err(invalid(format!(
            "A batch logging request can contain at most {MAX_BATCH_ENTITIES} metrics, params, \
             and tags in total. Got {total} entities. Please split up entities across multiple \
             requests and try again."
        )));
    }
    Ok(())
}

/// Params of one batch: a key given twice must have one value.
fn batch_params(params: Vec<KeyValue>) -> MlflowResult<Vec<(String, String)>> {
    let mut seen: HashMap<String, String> = HashMap::with_capacity(params.len());
    let mut unique = Vec::with_capacity(params.len());
    for mut param in params {
        param.value = truncated(KeyKind::Param, &param.key, param.value);
        match seen.get(&param.key) {
            Some(value) if *value != param.value => {
                return Err(invalid(format!(
                    "Duplicate parameter keys have been submitted: ['{}']. Please ensure the \
                     request contains only one param value per param key.",
                    param.key
                )));
            }
            Some(_) => {}
            None => {
                seen.insert(param.key.clone(), param.value.clone());
                unique.push((param.key, param.value));
            }
        }
    }
    Ok(unique)
}

pub(super) async fn log_batch(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    let bytes = body_bytes(request)?;
    let (run_id, batch, params, tags) = {
        let request: LogBatch<'_> = parse_body(&bytes)?;
        let run_id = required_run_id(&request.run_id, &None)?;
        check_batch_limits(&request)?;
        let mut builder = MetricBatchBuilder::with_capacity(request.metrics.len());
        for metric in &request.metrics {
            push_metric(&mut builder, metric)?;
        }
        let batch = builder.finish();
        // Everything is validated before anything is written: a bad metric
        // key or a changed param leaves the run as it was.
        batch.validate()?;
        let params = batch_params(request.params)?;
        (run_id, batch, params, truncated_tags(request.tags))
    };
    engine.run_for(&access, run_id)?;
    // MLflow's order: params (where a conflict stops the request), then
    // metrics, then tags; a rewind tag rewinds before the metrics, which
    // then take the place of the hidden points.
    if !params.is_empty() {
        engine.log_params(run_id, params).await?;
    }
    engine.apply_rewind_tag(run_id, &tags).await?;
    if !batch.is_empty() {
        engine.log_metrics(run_id, batch).await?;
    }
    if !tags.is_empty() {
        engine.record_run_tags(run_id, tags).await?;
    }
    Ok(empty())
}

#[derive(Deserialize)]
pub(super) struct LogInputs {
    run_id: Option<String>,
    #[serde(default)]
    datasets: Vec<DatasetInputJson>,
}

pub(super) async fn log_inputs(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    let request: LogInputs = body(request)?;
    let run_id = required_run_id(&request.run_id, &None)?;
    let inputs = request
        .datasets
        .into_iter()
        .map(|input| input.into_model().ok_or_else(|| missing("dataset")))
        .collect::<Result<Vec<_>, _>>()?;
    engine.run_for(&access, run_id)?;
    if !inputs.is_empty() {
        engine.log_inputs(run_id, inputs).await?;
    }
    Ok(empty())
}

#[derive(Deserialize)]
pub(super) struct SearchRuns {
    #[serde(default)]
    experiment_ids: Vec<String>,
    filter: Option<String>,
    #[serde(default, deserialize_with = "wire::view_type")]
    run_view_type: Option<String>,
    #[serde(default, deserialize_with = "optional_i64")]
    max_results: Option<i64>,
    #[serde(default)]
    order_by: Vec<String>,
    page_token: Option<String>,
}

pub(super) async fn search(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    Ok(Json(search_runs(&engine, &access, body(request)?).await?))
}

/// `runs/search`'s answer: `{"runs": [...], "next_page_token": ...}`.
pub(super) async fn search_runs(
    engine: &Arc<Engine>,
    principal: &Principal,
    request: SearchRuns,
) -> MlflowResult<Value> {
    let size = page_size(request.max_results)?;
    let filter = parse_run_filter(request.filter.as_deref().unwrap_or(""))?;
    let order = parse_run_order(&request.order_by)?;
    let view = view_type(request.run_view_type.as_deref(), ViewType::ActiveOnly)?;
    if request.experiment_ids.len() > MAX_SEARCH_EXPERIMENTS {
        return Err(invalid(format!(
            "experiment_ids may name at most {MAX_SEARCH_EXPERIMENTS} experiments, not {}",
            request.experiment_ids.len()
        )));
    }
    let experiment_ids = request
        .experiment_ids
        .iter()
        .map(|text| parse_experiment_id(text))
        .collect::<Result<Vec<_>, _>>()?;
    if experiment_ids.is_empty() {
        return Ok(json!({}));
    }
    for &id in &experiment_ids {
        principal.check_experiment(id)?;
    }
    // Listing, filtering, sorting and rendering are linear in the
    // experiments' runs (or n log n): they run off the async threads. The
    // comparisons that need no metric go first, before a run is copied or
    // its metrics gathered.
    let runs = {
        let engine = Arc::clone(engine);
        let on_runs: Vec<RunComparison> = filter
            .iter()
            .filter(|comparison| !matches!(comparison.field, RunField::Metric(_)))
            .cloned()
            .collect();
        off_async(move || {
            Ok(engine.runs_in_matching(&experiment_ids, view, |run| {
                on_runs
                    .iter()
                    .all(|comparison| matches_run(run, comparison) == Some(true))
            }))
        })
        .await?
    };
    // Every candidate's summaries of the metrics a filter or the order
    // names (none when they name none); the page's runs get all of theirs
    // after.
    let needed: BTreeSet<String> = metric_keys(&filter, &order)
        .into_iter()
        .map(str::to_string)
        .collect();
    let candidate_summaries = if needed.is_empty() {
        None
    } else {
        let run_ids: Vec<_> = runs.iter().map(|run| run.run_id).collect();
        let keys = Arc::new(needed);
        Some(engine.runs_metric_summaries_of(&run_ids, keys).await?)
    };
    let page = off_async(move || {
        let candidates: Vec<SearchableRun> = match candidate_summaries {
            None => runs
                .into_iter()
                .map(|run| SearchableRun {
                    run,
                    latest_metrics: BTreeMap::new(),
                })
                .collect(),
            Some(summaries) => runs
                .into_iter()
                .zip(summaries)
                .map(|(run, summaries)| SearchableRun {
                    run,
                    latest_metrics: summaries
                        .into_iter()
                        .map(|(key, summary)| (key, summary.latest_value))
                        .collect(),
                })
                .collect(),
        };
        let selected = select_runs(candidates, &filter, &order);
        Ok(paginate(selected, request.page_token.as_deref(), size)?)
    })
    .await?;
    let page_ids: Vec<RunId> = page
        .items
        .iter()
        .map(|candidate| candidate.run.run_id)
        .collect();
    let summary_of: HashMap<RunId, Vec<(String, KeySummary)>> = page_ids
        .iter()
        .copied()
        .zip(engine.runs_metric_summaries(&page_ids).await?)
        .collect();
    off_async(move || {
        let runs: Vec<RunJson> = page
            .items
            .iter()
            .map(|candidate| {
                let summaries = summary_of
                    .get(&candidate.run.run_id)
                    .map(|summaries| summaries.as_slice())
                    .unwrap_or(&[]);
                RunJson::new(&candidate.run, summaries)
            })
            .collect();
        Ok(page_response("runs", &runs, page.next_page_token).0)
    })
    .await
}
