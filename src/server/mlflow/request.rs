//! Reading MLflow requests: JSON bodies for POST endpoints, query strings
//! for GET endpoints (repeated keys for lists), and MLflow's errors for
//! missing or malformed fields.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error_kind::Classify;
use crate::model::{ExperimentId, RunId};
use crate::server::error::ApiError;
use crate::server::extract;

/// An error answered in MLflow's format and with MLflow's statuses.
#[derive(Debug)]
pub struct MlflowError(pub ApiError);

impl<E: Classify + std::fmt::Display> From<E> for MlflowError {
    fn from(error: E) -> Self {
        MlflowError(ApiError::mlflow(&error))
    }
}

impl From<ApiError> for MlflowError {
    fn from(error: ApiError) -> Self {
        MlflowError(error)
    }
}

impl IntoResponse for MlflowError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

/// The result of an MLflow handler.
pub type MlflowResult<T> = Result<T, MlflowError>;

/// Runs CPU work of a request (filtering, sorting, encoding) on the
/// blocking pool, so that a large search never stalls the async threads
/// that serve every other request.
pub async fn off_async<T: Send + 'static>(
    work: impl FnOnce() -> MlflowResult<T> + Send + 'static,
) -> MlflowResult<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => {
            tracing::error!(%error, "request work failed off the async threads");
            Err(MlflowError(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                format!("the request's work failed: {error}"),
            )))
        }
    }
}

/// 400 `INVALID_PARAMETER_VALUE` with a message.
pub fn invalid(message: impl Into<String>) -> MlflowError {
    MlflowError(ApiError::invalid(message))
}

/// The error for a required field that is absent or empty.
pub fn missing(field: &str) -> MlflowError {
    invalid(format!(
        "Missing value for required parameter '{field}'. See the API docs for more information \
         about request parameters."
    ))
}

/// Parses a POST body (protobuf JSON; unknown fields are ignored). An empty
/// body is an empty message.
pub fn body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> MlflowResult<T> {
    parse_body(&body_bytes(body)?)
}

/// The bytes of a POST body.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> MlflowResult<Bytes> {
    Ok(body.map_err(|rejection| {
        let error = extract::body_error(rejection);
        if error.status == StatusCode::PAYLOAD_TOO_LARGE {
            error
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", error.message)
        }
    })?)
}

/// Parses a POST body that may borrow from `bytes` (an empty body is an
/// empty message).
pub fn parse_body<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> MlflowResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return extract::parse_json(b"{}").map_err(MlflowError);
    }
    extract::parse_json(bytes).map_err(MlflowError)
}

/// Parses a GET request's query string (lists as repeated keys).
pub fn query<T: DeserializeOwned>(uri: &Uri) -> MlflowResult<T> {
    serde_html_form::from_str(uri.query().unwrap_or(""))
        .map_err(|error| invalid(format!("invalid query parameters: {error}")))
}

/// A required run id (from `run_id`, or the deprecated `run_uuid`).
pub fn required_run_id(run_id: &Option<String>, run_uuid: &Option<String>) -> MlflowResult<RunId> {
    let text = run_id
        .as_deref()
        .filter(|text| !text.is_empty())
        .or(run_uuid.as_deref().filter(|text| !text.is_empty()))
        .ok_or_else(|| missing("run_id"))?;
    parse_run_id(text)
}

/// Parses a run id; a malformed one names no run, as in MLflow.
pub fn parse_run_id(text: &str) -> MlflowResult<RunId> {
    RunId::parse(text).map_err(|_| {
        MlflowError(ApiError::new(
            StatusCode::NOT_FOUND,
            "RESOURCE_DOES_NOT_EXIST",
            format!(
                "Run with id={} not found",
                crate::model::ids::truncate_for_message(text)
            ),
        ))
    })
}

/// A required experiment id.
pub fn required_experiment_id(experiment_id: &Option<String>) -> MlflowResult<ExperimentId> {
    let text = experiment_id
        .as_deref()
        .filter(|text| !text.is_empty())
        .ok_or_else(|| missing("experiment_id"))?;
    parse_experiment_id(text)
}

/// Parses an experiment id (MLflow's ids are integers).
pub fn parse_experiment_id(text: &str) -> MlflowResult<ExperimentId> {
    ExperimentId::parse(text).map_err(|_| {
        invalid(format!(
            "Invalid experiment ID '{}'. Experiment ID must be a valid integer.",
            crate::model::ids::truncate_for_message(text)
        ))
    })
}

/// A required, non-empty string field.
pub fn required<'a>(value: &'a Option<String>, field: &str) -> MlflowResult<&'a str> {
    value
        .as_deref()
        .filter(|text| !text.is_empty())
        .ok_or_else(|| missing(field))
}
