//! Admission control: an ingress serves at most `http.max_in_flight` requests at once and
//! answers the next ones 503 `overloaded` at once, with `Retry-After`, instead of letting
//! them queue until their clients time out (a client that gave up may retry a message
//! that is still being accepted). Health checks are not counted. Nothing is read or
//! written for a request that is not admitted. This also bounds the accepting queue
//! (`channels/accepting.rs`): every message waiting for its round belongs to an admitted
//! request.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shared::metric;

use crate::AppState;
use crate::error::ApiError;

/// Serves the request while a permit is free; refuses it at once otherwise.
pub(crate) async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_permit) = state.in_flight().clone().try_acquire_owned() else {
        metrics::counter!(metric::INBOUND_REJECTED, "channel" => "http", "reason" => "overloaded")
            .increment(1);
        return ApiError::overloaded(
            "this ingress is serving as many requests as it may; retry",
            1,
        )
        .into_response();
    };
    next.run(request).await
}
