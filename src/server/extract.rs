//! Request parsing: JSON bodies and path ids, with errors in the API's
//! format (400 for bad JSON, 413 for bodies over the limit).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::model::{ExperimentId, RunId};

/// Maps a body that could not be read (too large, stalled, or broken) to
/// an error.
pub fn body_error(rejection: BytesRejection) -> ApiError {
    if super::connection::is_body_stall(&rejection) {
        body_stalled(&rejection)
    } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        body_too_large()
    } else {
        ApiError::malformed(format!("cannot read the request body: {rejection}"))
    }
}

/// Maps an error met while streaming a body to an error (408 for a stall,
/// else 400).
pub fn body_stream_error(error: axum::Error) -> ApiError {
    if super::connection::is_body_stall(&error) {
        body_stalled(&error)
    } else if is_over_length_limit(&error) {
        body_too_large()
    } else {
        ApiError::malformed(format!("cannot read the request body: {error}"))
    }
}

fn body_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "REQUEST_LIMIT_EXCEEDED",
        "the request body is larger than the server's limit (see --max-request-mb)",
    )
}

/// Whether a streamed body passed the body limit.
fn is_over_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = error.source();
    }
    false
}

fn body_stalled(error: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "REQUEST_TIMEOUT",
        format!("cannot read the request body: {error}"),
    )
}

/// Parses a JSON body; syntax errors are `MALFORMED_REQUEST`, wrong types
/// or missing fields `INVALID_PARAMETER_VALUE`.
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::malformed(format!("the request body is not valid JSON: {error}"))
            }
            Category::Data => ApiError::invalid(format!("invalid request: {error}")),
        }
    })
}

/// Reads the body (if the extractor succeeded) and parses it.
pub fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(body_error)?;
    parse_json(&body)
}

/// Parses a run id from a path or field.
pub fn run_id(text: &str) -> Result<RunId, ApiError> {
    RunId::parse(text).map_err(|error| ApiError::invalid(error.to_string()))
}

/// Parses an experiment id from a path or field.
pub fn experiment_id(text: &str) -> Result<ExperimentId, ApiError> {
    ExperimentId::parse(text).map_err(|error| ApiError::invalid(error.to_string()))
}
