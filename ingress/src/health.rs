//! `/healthz` (the process is alive), `/readyz` (its broker, database and Redis answer)
//! and `/metrics` (Prometheus text format).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::AppState;

/// Liveness and readiness, on every listener.
pub(crate) fn probes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// `/metrics`: on the admin listener when there is one.
pub(crate) fn metrics_route() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// The process's metrics, in the Prometheus text format.
async fn metrics() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            shared::prometheus::CONTENT_TYPE,
        )],
        shared::prometheus::render(),
    )
        .into_response()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: database, broker and Redis reachable.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 503, description = "a dependency is unavailable")))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let (ready, body) = shared::readiness::check(state.db(), state.cache(), state.broker()).await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
