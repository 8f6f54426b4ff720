//! Ingress errors: each has an HTTP status and a stable snake_case code, rendered as
//! `{ "error": { "code", "message" } }`. Internal causes are logged, never returned.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }
    /// The broker could not confirm: the caller should retry (nothing was accepted).
    pub fn broker_unavailable(cause: &shared::Error) -> Self {
        tracing::error!(error = %cause, "publish not confirmed; answering 503");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            "the message could not be accepted right now; retry later",
        )
    }
    /// An internal failure; the cause is logged here and not shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "a dependency is unavailable; retry later",
        )
    }
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<shared::Error> for ApiError {
    fn from(e: shared::Error) -> Self {
        match e {
            shared::Error::Invalid(msg) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", msg)
            }
            shared::Error::Conflict(msg) => Self::new(StatusCode::CONFLICT, "conflict", msg),
            shared::Error::NotFound(msg) => Self::not_found(msg),
            other => Self::internal(&other),
        }
    }
}

/// Parses a JSON body into `T`: syntax errors are 400 `malformed_json`; a well-formed
/// body with a missing, unknown or mistyped field is 422 `validation_failed` (serde's
/// message names the field).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            e.to_string(),
        ),
        _ => ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}")),
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": { "code": self.code, "message": self.message } })),
        )
            .into_response()
    }
}
