//! `/graphql`: the GraphQL endpoint the MLflow UI's run page and charts
//! call (`mlflowGetRun`, `mlflowSearchRuns`, `mlflowGetExperiment`,
//! `mlflowGetMetricHistoryBulkInterval`, ...), answered as MLflow's server
//! answers it: each root field takes an `input` object (the REST request
//! in camelCase) and resolves to the REST answer, shaped by the selection
//! set. `{"data", "errors"}` where `errors` is `null` or a list of
//! messages, as MLflow writes it. MLflow's bounds apply: depth 10, 1,000
//! selections, 10 root fields.

mod document;
mod lexer;
mod schema;
mod selection;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::Uri;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json, json};

use super::request::{MlflowResult, body, invalid, query};
use super::{artifacts, experiments, metrics, runs};
use crate::auth::Principal;
use crate::engine::Engine;
use crate::model::ExperimentId;
use crate::server::auth::Access;
use document::{OperationKind, parse};
use schema::object_type;
use selection::{Context, ValidationError};

type EngineState = State<Arc<Engine>>;

/// Most root fields one request may select (MLflow's limit).
pub const MAX_ROOT_FIELDS: usize = 10;

/// A GraphQL request (POST body, or GET query string with `variables` as
/// JSON text).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct GraphqlRequest {
    query: Option<String>,
    #[serde(default)]
    variables: Option<Json>,
    operation_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct GraphqlQueryString {
    query: Option<String>,
    variables: Option<String>,
    operation_name: Option<String>,
}

/// `POST /graphql`.
pub(super) async fn post(
    State(engine): EngineState,
    access: Access,
    request: Result<Bytes, BytesRejection>,
) -> MlflowResult<axum::Json<Json>> {
    let request: GraphqlRequest = body(request)?;
    Ok(axum::Json(execute(&engine, &access, request).await))
}

/// `GET /graphql?query=...&variables=...&operationName=...`.
pub(super) async fn get(
    State(engine): EngineState,
    access: Access,
    uri: Uri,
) -> MlflowResult<axum::Json<Json>> {
    let request: GraphqlQueryString = query(&uri)?;
    let variables = match request.variables.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            serde_json::from_str(text)
                .map_err(|error| invalid(format!("variables is not JSON: {error}")))?,
        ),
    };
    let request = GraphqlRequest {
        query: request.query,
        variables,
        operation_name: request.operation_name,
    };
    Ok(axum::Json(execute(&engine, &access, request).await))
}

fn failure(message: impl Into<String>) -> Json {
    json!({ "data": null, "errors": [message.into()] })
}

/// Runs one request; every outcome is a `{"data", "errors"}` answer.
pub(super) async fn execute(
    engine: &Arc<Engine>,
    principal: &Principal,
    request: GraphqlRequest,
) -> Json {
    let Some(text) = request.query.filter(|text| !text.trim().is_empty()) else {
        return failure("Must provide query string.");
    };
    let document = match parse(&text) {
        Ok(document) => document,
        Err(error) => return failure(error.to_string()),
    };
    let operation = match request.operation_name.as_deref() {
        Some(name) if !name.is_empty() => document
            .operations
            .iter()
            .find(|operation| operation.name.as_deref() == Some(name)),
        _ if document.operations.len() == 1 => document.operations.first(),
        _ => {
            return failure("Must provide operation name if query contains multiple operations.");
        }
    };
    let Some(operation) = operation else {
        return failure(format!(
            "Unknown operation named '{}'.",
            request.operation_name.unwrap_or_default()
        ));
    };
    let root_type = match operation.kind {
        OperationKind::Query => "Query",
        OperationKind::Mutation => "Mutation",
        OperationKind::Subscription => {
            return failure("Schema is not configured to execute subscription operation.");
        }
    };
    let provided = match request.variables {
        Some(Json::Object(map)) => map,
        None | Some(Json::Null) => Map::new(),
        Some(_) => return failure("Variables must be provided as an Object."),
    };
    let mut variables = Map::new();
    for definition in &operation.variables {
        match provided.get(&definition.name) {
            Some(value) if !value.is_null() || !definition.required => {
                variables.insert(definition.name.clone(), value.clone());
            }
            _ => {
                let context = Context {
                    fragments: &document.fragments,
                    variables: &Map::new(),
                };
                match &definition.default {
                    Some(default) => {
                        variables.insert(definition.name.clone(), context.input(default));
                    }
                    None if definition.required => {
                        return failure(format!(
                            "Variable '${}' of required type was not provided.",
                            definition.name
                        ));
                    }
                    None => {}
                }
            }
        }
    }
    let context = Context {
        fragments: &document.fragments,
        variables: &variables,
    };
    match run_operation(engine, principal, &context, root_type, &operation.selection).await {
        Ok((data, errors)) => {
            let errors = if errors.is_empty() {
                Json::Null
            } else {
                json!(errors)
            };
            json!({ "data": data, "errors": errors })
        }
        Err(error) => failure(error.0),
    }
}

/// A root field: what it returns and how it is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RootField {
    GetExperiment,
    GetMetricHistoryBulkInterval,
    GetRun,
    ListArtifacts,
    SearchModelVersions,
    SearchRuns,
    SearchDatasets,
    Test,
    TestMutation,
}

impl RootField {
    fn of(root_type: &str, name: &str) -> Option<RootField> {
        Some(match (root_type, name) {
            ("Query", "mlflowGetExperiment") => RootField::GetExperiment,
            ("Query", "mlflowGetMetricHistoryBulkInterval") => {
                RootField::GetMetricHistoryBulkInterval
            }
            ("Query", "mlflowGetRun") => RootField::GetRun,
            ("Query", "mlflowListArtifacts") => RootField::ListArtifacts,
            ("Query", "mlflowSearchModelVersions") => RootField::SearchModelVersions,
            ("Query" | "Mutation", "mlflowSearchRuns") => RootField::SearchRuns,
            ("Mutation", "mlflowSearchDatasets") => RootField::SearchDatasets,
            ("Query", "test") => RootField::Test,
            ("Mutation", "testMutation") => RootField::TestMutation,
            _ => return None,
        })
    }

    /// The type it resolves to.
    fn type_name(self) -> &'static str {
        match self {
            RootField::GetExperiment => "MlflowGetExperimentResponse",
            RootField::GetMetricHistoryBulkInterval => "MlflowGetMetricHistoryBulkIntervalResponse",
            RootField::GetRun => "MlflowGetRunResponse",
            RootField::ListArtifacts => "MlflowListArtifactsResponse",
            RootField::SearchModelVersions => "MlflowSearchModelVersionsResponse",
            RootField::SearchRuns => "MlflowSearchRunsResponse",
            RootField::SearchDatasets => "MlflowSearchDatasetsResponse",
            RootField::Test => "Test",
            RootField::TestMutation => "TestMutation",
        }
    }

    /// The name of its one argument.
    fn argument(self) -> &'static str {
        match self {
            RootField::Test | RootField::TestMutation => "inputString",
            _ => "input",
        }
    }
}

/// Validates the whole operation, then resolves its root fields in order.
/// Returns the data and the field errors (messages); a validation error
/// fails the whole request.
async fn run_operation(
    engine: &Arc<Engine>,
    principal: &Principal,
    context: &Context<'_>,
    root_type: &str,
    selection: &[document::Selection],
) -> Result<(Json, Vec<String>), ValidationError> {
    let fields = context.collect(root_type, selection)?;
    if fields.len() > MAX_ROOT_FIELDS {
        return Err(ValidationError(format!(
            "GraphQL queries should have at most {MAX_ROOT_FIELDS} root fields, got {} root \
             fields.",
            fields.len()
        )));
    }
    let mut roots = Vec::with_capacity(fields.len());
    let mut count = 0;
    for field in &fields {
        if field.name == "__typename" {
            roots.push(None);
            continue;
        }
        let root = RootField::of(root_type, field.name).ok_or_else(|| {
            ValidationError(format!(
                "Cannot query field '{}' on type '{root_type}'.",
                field.name
            ))
        })?;
        let object = object_type(root.type_name())
            .ok_or_else(|| ValidationError(format!("Unknown type '{}'.", root.type_name())))?;
        if !field.selections.iter().any(|s| !s.is_empty()) {
            return Err(ValidationError(format!(
                "Field '{}' of type '{}' must have a selection of subfields.",
                field.name, object.name
            )));
        }
        if let Some((name, _)) = field
            .arguments
            .iter()
            .find(|(name, _)| name != root.argument())
        {
            return Err(ValidationError(format!(
                "Unknown argument '{name}' on field '{root_type}.{}'.",
                field.name
            )));
        }
        context.validate(object, &field.selections, 2, &mut count)?;
        roots.push(Some((root, object)));
    }
    let mut data = Map::new();
    let mut errors = Vec::new();
    for (field, root) in fields.iter().zip(roots) {
        let Some((root, object)) = root else {
            data.insert(field.response_key.to_string(), json!(root_type));
            continue;
        };
        let input = field
            .arguments
            .iter()
            .find(|(name, _)| name == root.argument())
            .map(|(_, value)| context.input(value))
            .unwrap_or(Json::Null);
        let value = match resolve(engine, principal, root, input).await {
            Ok(source) => context.complete_object(object, &source, &field.selections)?,
            Err(error) => {
                errors.push(error.0.message);
                Json::Null
            }
        };
        data.insert(field.response_key.to_string(), value);
    }
    Ok((Json::Object(data), errors))
}

/// `{"runId": ...}` -> `{"run_id": ...}`: an input object as the REST
/// request it stands for.
fn rest_request<T: DeserializeOwned>(input: Json) -> MlflowResult<T> {
    let object = match input {
        Json::Null => Map::new(),
        Json::Object(object) => object,
        other => {
            return Err(invalid(format!("Expected an input object, found {other}")));
        }
    };
    let snake: Map<String, Json> = object
        .into_iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| (schema::snake_case(&key), value))
        .collect();
    serde_json::from_value(Json::Object(snake))
        .map_err(|error| invalid(format!("Invalid input: {error}")))
}

/// Resolves one root field to the REST answer it stands for.
async fn resolve(
    engine: &Arc<Engine>,
    principal: &Principal,
    root: RootField,
    input: Json,
) -> MlflowResult<Json> {
    match root {
        RootField::GetExperiment => {
            experiments::get_experiment(engine, principal, rest_request(input)?)
        }
        RootField::GetRun => {
            let mut answer = runs::get_run(engine, principal, rest_request(input)?).await?;
            if let Some(run) = answer.get_mut("run") {
                add_experiments(engine, std::slice::from_mut(run));
            }
            Ok(answer)
        }
        RootField::SearchRuns => {
            let mut answer = runs::search_runs(engine, principal, rest_request(input)?).await?;
            if let Some(Json::Array(runs)) = answer.get_mut("runs") {
                add_experiments(engine, runs);
            }
            Ok(answer)
        }
        RootField::GetMetricHistoryBulkInterval => {
            let read = metrics::read_bulk_interval(engine, principal, rest_request(input)?).await?;
            let mut points = Vec::new();
            for (run_id, series) in &read.runs {
                let run_id = run_id.to_string();
                for index in 0..series.values.len() {
                    points.push(json!({
                        "key": read.key,
                        "value": crate::model::float_json::JsonF64(series.values[index]),
                        "timestamp": series.timestamps[index],
                        "step": series.steps[index],
                        "run_id": run_id,
                    }));
                }
            }
            Ok(json!({ "metrics": points }))
        }
        RootField::ListArtifacts => artifacts::list(engine, principal, rest_request(input)?),
        RootField::SearchModelVersions => Ok(json!({})),
        RootField::SearchDatasets => {
            experiments::search_datasets(engine, principal, rest_request(input)?)
        }
        RootField::Test | RootField::TestMutation => Ok(json!({ "output": input })),
    }
}

/// Adds each run's experiment (`MlflowRunExtension.experiment`).
fn add_experiments(engine: &Engine, runs: &mut [Json]) {
    let mut experiments: HashMap<String, Json> = HashMap::new();
    for run in runs {
        let Some(id) = run
            .pointer("/info/experiment_id")
            .and_then(Json::as_str)
            .map(str::to_string)
        else {
            continue;
        };
        let experiment = experiments.entry(id.clone()).or_insert_with(|| {
            ExperimentId::parse(&id)
                .ok()
                .and_then(|id| engine.experiment(id).ok())
                .and_then(|experiment| {
                    serde_json::to_value(super::wire::ExperimentJson::from(&experiment)).ok()
                })
                .unwrap_or(Json::Null)
        });
        if let Json::Object(run) = run {
            run.insert("experiment".to_string(), experiment.clone());
        }
    }
}
