//! MLflow experiment endpoints: create, get, get-by-name, search, update,
//! delete, restore, and experiment tags.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::Uri;
use serde::Deserialize;
use serde_json::{Value, json};

use super::request::{
    MlflowResult, body, off_async, parse_experiment_id, query, required, required_experiment_id,
};
use super::wire::{self, ExperimentJson, KeyValue, optional_i64};
use super::{empty, page_response, view_type};
use crate::auth::Principal;
use crate::catalog::NewExperiment;
use crate::engine::{Engine, ViewType};
use crate::model::LifecycleStage;
use crate::search::experiments::{
    parse_experiment_filter, parse_experiment_order, select_experiments,
};
use crate::search::{page_size, paginate};
use crate::server::auth::Access;

type EngineState = State<Arc<Engine>>;

#[derive(Deserialize)]
pub(super) struct CreateExperiment {
    name: Option<String>,
    artifact_location: Option<String>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

pub(super) async fn create(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    access.check_unlimited("create experiments")?;
    let request: CreateExperiment = body(request)?;
    let name = required(&request.name, "name")?.to_string();
    let id = engine
        .create_experiment(NewExperiment {
            name,
            artifact_location: request.artifact_location.filter(|text| !text.is_empty()),
            tags: request
                .tags
                .into_iter()
                .map(|tag| (tag.key, tag.value))
                .collect(),
        })
        .await?;
    Ok(Json(json!({ "experiment_id": id.to_string() })))
}

#[derive(Deserialize)]
pub(super) struct GetExperiment {
    experiment_id: Option<String>,
}

pub(super) async fn get(
    State(engine): EngineState,
    access: Access,
    uri: Uri,
) -> MlflowResult<Json<Value>> {
    Ok(Json(get_experiment(&engine, &access, query(&uri)?)?))
}

/// `experiments/get`'s answer: `{"experiment": Experiment}`.
pub(super) fn get_experiment(
    engine: &Engine,
    principal: &Principal,
    request: GetExperiment,
) -> MlflowResult<Value> {
    let id = required_experiment_id(&request.experiment_id)?;
    let experiment = engine.experiment_for(principal, id)?;
    Ok(json!({ "experiment": ExperimentJson::from(&experiment) }))
}

#[derive(Deserialize)]
pub(super) struct GetExperimentByName {
    experiment_name: Option<String>,
}

pub(super) async fn get_by_name(
    State(engine): EngineState,
    access: Access,
    uri: Uri,
) -> MlflowResult<Json<Value>> {
    let request: GetExperimentByName = query(&uri)?;
    let name = required(&request.experiment_name, "experiment_name")?;
    let experiment = engine.experiment_by_name_for(&access, name)?;
    Ok(Json(
        json!({ "experiment": ExperimentJson::from(&experiment) }),
    ))
}

#[derive(Deserialize, Default)]
pub(super) struct SearchExperiments {
    #[serde(default, deserialize_with = "optional_i64")]
    max_results: Option<i64>,
    page_token: Option<String>,
    filter: Option<String>,
    #[serde(default)]
    order_by: Vec<String>,
    #[serde(default, deserialize_with = "wire::view_type")]
    view_type: Option<String>,
}

/// `experiments/search`: filtering, sorting and rendering run off the
/// async threads.
async fn search_experiments(
    engine: &Arc<Engine>,
    principal: &Principal,
    request: SearchExperiments,
) -> MlflowResult<Json<Value>> {
    let size = page_size(request.max_results)?;
    let filter = parse_experiment_filter(request.filter.as_deref().unwrap_or(""))?;
    let order = parse_experiment_order(&request.order_by)?;
    let view = view_type(request.view_type.as_deref(), ViewType::ActiveOnly)?;
    let engine = Arc::clone(engine);
    let principal = principal.clone();
    off_async(move || {
        let mut experiments = engine.experiments(view);
        experiments.retain(|experiment| principal.can_see(experiment.experiment_id));
        let selected = select_experiments(experiments, &filter, &order);
        let page = paginate(selected, request.page_token.as_deref(), size)?;
        let experiments: Vec<ExperimentJson> =
            page.items.iter().map(ExperimentJson::from).collect();
        Ok(page_response(
            "experiments",
            &experiments,
            page.next_page_token,
        ))
    })
    .await
}

pub(super) async fn search_post(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    search_experiments(&engine, &access, body(request)?).await
}

pub(super) async fn search_get(
    State(engine): EngineState,
    access: Access,
    uri: Uri,
) -> MlflowResult<Json<Value>> {
    search_experiments(&engine, &access, query(&uri)?).await
}

#[derive(Deserialize)]
pub(super) struct UpdateExperiment {
    experiment_id: Option<String>,
    new_name: Option<String>,
}

pub(super) async fn update(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    let request: UpdateExperiment = body(request)?;
    let id = required_experiment_id(&request.experiment_id)?;
    access.check_experiment(id)?;
    let name = required(&request.new_name, "new_name")?.to_string();
    engine.rename_experiment(id, name).await?;
    Ok(empty())
}

#[derive(Deserialize)]
pub(super) struct ExperimentIdOnly {
    experiment_id: Option<String>,
}

async fn set_lifecycle(
    engine: &Engine,
    access: &Access,
    request: Result<Bytes, BytesRejection>,
    stage: LifecycleStage,
) -> MlflowResult<Json<Value>> {
    let request: ExperimentIdOnly = body(request)?;
    let id = required_experiment_id(&request.experiment_id)?;
    access.check_experiment(id)?;
    engine.set_experiment_lifecycle(id, stage).await?;
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
pub(super) struct ExperimentTag {
    experiment_id: Option<String>,
    key: Option<String>,
    #[serde(default)]
    value: String,
}

pub(super) async fn set_tag(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    let request: ExperimentTag = body(request)?;
    let id = required_experiment_id(&request.experiment_id)?;
    access.check_experiment(id)?;
    let key = required(&request.key, "key")?.to_string();
    engine
        .set_experiment_tags(id, vec![(key, request.value)])
        .await?;
    Ok(empty())
}

pub(super) async fn delete_tag(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    let request: ExperimentTag = body(request)?;
    let id = parse_experiment_id(required(&request.experiment_id, "experiment_id")?)?;
    access.check_experiment(id)?;
    let key = required(&request.key, "key")?.to_string();
    engine.delete_experiment_tag(id, key).await?;
    Ok(empty())
}

/// Most dataset summaries one `search-datasets` answer holds (MLflow's
/// limit).
pub const MAX_DATASET_SUMMARIES: usize = 1000;

#[derive(Deserialize, Default)]
pub(super) struct SearchDatasets {
    #[serde(default)]
    experiment_ids: Vec<String>,
}

/// `POST experiments/search-datasets` (what the UI's runs table filters
/// datasets with): the distinct (experiment, name, digest, context) of the
/// datasets that runs of the experiments used, `context` being the
/// input's `mlflow.data.context` tag.
pub(super) async fn search_datasets_post(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<Json<Value>> {
    Ok(Json(search_datasets(&engine, &access, body(request)?)?))
}

/// `search-datasets`' answer: `{"dataset_summaries": [...]}`.
pub(super) fn search_datasets(
    engine: &Engine,
    principal: &Principal,
    request: SearchDatasets,
) -> MlflowResult<Value> {
    let experiment_ids = request
        .experiment_ids
        .iter()
        .map(|text| parse_experiment_id(text))
        .collect::<Result<Vec<_>, _>>()?;
    for &id in &experiment_ids {
        principal.check_experiment(id)?;
    }
    let mut summaries = std::collections::BTreeSet::new();
    let runs = engine.runs_in(&experiment_ids, ViewType::ActiveOnly);
    for run in runs
        .iter()
        .filter(|run| principal.can_see(run.experiment_id))
    {
        for input in &run.inputs {
            let context = input
                .tags
                .get(DATASET_CONTEXT_TAG)
                .cloned()
                .unwrap_or_default();
            summaries.insert((
                run.experiment_id.to_string(),
                input.dataset.name.clone(),
                input.dataset.digest.clone(),
                context,
            ));
        }
    }
    let summaries: Vec<Value> = summaries
        .into_iter()
        .take(MAX_DATASET_SUMMARIES)
        .map(|(experiment_id, name, digest, context)| {
            let mut summary = json!({
                "experiment_id": experiment_id,
                "name": name,
                "digest": digest,
            });
            if !context.is_empty() {
                summary["context"] = json!(context);
            }
            summary
        })
        .collect();
    Ok(page_response("dataset_summaries", &summaries, None).0)
}

/// The input tag that says what a dataset was used for (`training`,
/// `eval`, ...).
const DATASET_CONTEXT_TAG: &str = "mlflow.data.context";
