//! Ingress errors: each has an HTTP status and a stable snake_case code, rendered as
//! [`ErrorBody`] (`{ "error": { "code", "message" } }`), the shape the OpenAPI document
//! shows. Whose fault it is decides the status: the caller's input is 400/413/422 with a
//! message that says what to fix; chatfleet's own fault (a broken invariant, a stored
//! procedure's refusal) is 500 `internal`, and a dependency that is down is 503 — both
//! with a generic message, the cause and its source chain logged, never returned.

use std::fmt::Write as _;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds to send as `Retry-After`.
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// This ingress holds as much as it may (requests, long-polls): retry shortly.
    pub fn overloaded(message: impl Into<String>, retry_after_s: u64) -> Self {
        Self {
            retry_after: Some(retry_after_s),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
    }
    /// The caller is over one of the edge's limits: retry after `retry_after_s`.
    pub fn rate_limited(message: impl Into<String>, retry_after_s: u64) -> Self {
        Self {
            retry_after: Some(retry_after_s),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    /// The caller's input breaks a rule (422 `validation_failed`): the message names the
    /// field and what it must be.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
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
    /// A dependency (database, broker, Redis…) failed in a way a retry may mend; the
    /// cause is logged here and not shown.
    pub fn unavailable(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %chain(cause), "dependency unavailable; answering 503");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "a dependency is unavailable; retry later",
        )
    }
    /// Chatfleet's own fault (a broken invariant); the cause is logged here and not shown.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %chain(cause), "internal error; answering 500");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }
    pub fn status(&self) -> StatusCode {
        self.status
    }
    pub fn code(&self) -> &'static str {
        self.code
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// An error and its sources, outermost first (`a: b: c`). A source an error's own
/// message already shows (shared's errors show their library's) is not repeated.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
        source = cause.source();
    }
    out
}

impl From<shared::Error> for ApiError {
    fn from(e: shared::Error) -> Self {
        match e {
            shared::Error::Invalid(msg) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", msg)
            }
            shared::Error::Conflict(msg) => Self::new(StatusCode::CONFLICT, "conflict", msg),
            shared::Error::NotFound(msg) => Self::not_found(msg),
            other if other.is_transient() => Self::unavailable(&other),
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

/// The error shape of every endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code.
    pub code: &'static str,
    /// What went wrong, for people; for the caller's own mistakes, what to fix.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whose fault decides the answer: the caller's input is 422 with its message; a
    /// broken invariant (a stored procedure's refusal arrives as `Internal`) is 500
    /// with a generic message, never the caller's 422; a dependency is 503.
    #[test]
    fn errors_say_whose_fault() {
        let invalid = ApiError::from(shared::Error::Invalid("text is empty".into()));
        assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(invalid.message, "text is empty");

        let procedure = ApiError::from(shared::Error::Internal(
            "the conversation is not the tenant's".into(),
        ));
        assert_eq!(procedure.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(procedure.code(), "internal");
        assert!(
            !procedure.message.contains("tenant"),
            "{}",
            procedure.message
        );

        let down = ApiError::from(shared::Error::broker_gone("the consumer ended"));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        let decode = ApiError::from(shared::Error::Unscoped("SELECT 1".into()));
        assert_eq!(decode.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn the_chain_names_every_source() {
        let io = std::io::Error::other("connection reset");
        let outer = shared::Error::broker("publish", io);
        // Logged by `Display` elsewhere: the library's error is in the message itself,
        // and the chain does not repeat it.
        assert_eq!(outer.to_string(), "broker: publish: connection reset");
        assert_eq!(chain(&outer), "broker: publish: connection reset");

        /// An error whose message leaves its source out.
        #[derive(Debug)]
        struct Terse(std::io::Error);
        impl std::fmt::Display for Terse {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("terse")
            }
        }
        impl std::error::Error for Terse {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let terse = Terse(std::io::Error::other("connection reset"));
        assert_eq!(chain(&terse), "terse: connection reset");
    }

    #[tokio::test]
    async fn errors_render_as_the_documented_body() {
        let response = ApiError::bad_request("malformed_json", "not JSON").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(
            body,
            serde_json::json!({ "error": { "code": "malformed_json", "message": "not JSON" } })
        );
    }
}
