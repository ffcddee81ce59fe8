//! Request parsing: JSON bodies and path ids, with errors in the API's
//! format (400 for bad JSON, 413 for bodies over the limit).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::model::{ExperimentId, RunId};

/// Maps a body that could not be read (too large, or broken) to an error.
pub fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "REQUEST_LIMIT_EXCEEDED",
            "the request body is larger than the server's limit (see --max-request-mb)",
        )
    } else {
        ApiError::malformed(format!("cannot read the request body: {rejection}"))
    }
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
