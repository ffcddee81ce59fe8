//! HTTP errors: every failure becomes an MLflow-style JSON body
//! `{"error_code", "message"}` with the matching status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error_kind::{Classify, ErrorKind};

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// MLflow error code (`INVALID_PARAMETER_VALUE`, ...).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error_code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `INVALID_PARAMETER_VALUE`.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)
    }

    /// 400 `MALFORMED_REQUEST`.
    pub fn malformed(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "MALFORMED_REQUEST", message)
    }

    /// 404 `ENDPOINT_NOT_FOUND`.
    pub fn endpoint_not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "ENDPOINT_NOT_FOUND", message)
    }

    /// The native API's mapping of an error class to status and code.
    pub fn native(error: &(impl Classify + std::fmt::Display)) -> Self {
        let (status, code) = match error.kind() {
            ErrorKind::InvalidParameter => (StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE"),
            ErrorKind::MalformedRequest => (StatusCode::BAD_REQUEST, "MALFORMED_REQUEST"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST"),
            ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            ErrorKind::AlreadyExists => (StatusCode::CONFLICT, "RESOURCE_ALREADY_EXISTS"),
            ErrorKind::ParamConflict => (StatusCode::CONFLICT, "INVALID_PARAMETER_VALUE"),
            ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "REQUEST_LIMIT_EXCEEDED"),
            ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "TEMPORARILY_UNAVAILABLE"),
            ErrorKind::InsufficientStorage => {
                (StatusCode::INSUFFICIENT_STORAGE, "INSUFFICIENT_STORAGE")
            }
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
            ErrorKind::ReadOnlyReplica => (StatusCode::METHOD_NOT_ALLOWED, "FEATURE_DISABLED"),
        };
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(%error, "request failed");
        }
        ApiError::new(status, code, error.to_string())
    }

    /// MLflow's mapping of an error class to status and code: an existing
    /// entity and a changed param are 400s there, and a request over a
    /// limit is `INVALID_PARAMETER_VALUE`.
    pub fn mlflow(error: &(impl Classify + std::fmt::Display)) -> Self {
        let (status, code) = match error.kind() {
            ErrorKind::InvalidParameter | ErrorKind::ParamConflict | ErrorKind::TooLarge => {
                (StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE")
            }
            ErrorKind::MalformedRequest => (StatusCode::BAD_REQUEST, "MALFORMED_REQUEST"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST"),
            ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            ErrorKind::AlreadyExists => (StatusCode::BAD_REQUEST, "RESOURCE_ALREADY_EXISTS"),
            ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "TEMPORARILY_UNAVAILABLE"),
            ErrorKind::InsufficientStorage => {
                (StatusCode::INSUFFICIENT_STORAGE, "INSUFFICIENT_STORAGE")
            }
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
            ErrorKind::ReadOnlyReplica => (StatusCode::METHOD_NOT_ALLOWED, "FEATURE_DISABLED"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(%error, "request failed");
        }
        ApiError::new(status, code, error.to_string())
    }
}

impl<E: Classify + std::fmt::Display> From<E> for ApiError {
    fn from(error: E) -> Self {
        ApiError::native(&error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error_code: self.code,
                message: &self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
