//! Channel adapters: one module per channel. Each authenticates its requests, resolves
//! the tenant, validates the payload and publishes envelopes. Raw channel payloads stay
//! inside these modules.

pub(crate) mod accepting;
pub(crate) mod api;
pub(crate) mod body;
mod chat;
pub(crate) mod mobile;
pub(crate) mod session;
pub(crate) mod whatsapp;
pub(crate) mod widget;

use axum::body::{Body, Bytes};

use crate::error::{ApiError, Result};

/// Reads a request body of at most `limit` bytes (413 with a JSON error beyond it).
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::too_large(
            "payload_too_large",
            format!("the request body must be at most {limit} bytes"),
        )
    })
}

/// Records an accepted user message and publishes its envelope with a confirm (503
/// unless the broker confirmed). Recording gives the message its place in the
/// conversation at acceptance: whichever worker runs the next turn finds every earlier
/// message in the database, in the order the client's requests were accepted, even while
/// their deliveries are still in flight (or on a worker that just died).
///
/// The record is committed (one round trip) before the envelope is published, so a
/// worker never holds a delivery whose message is not in the database yet. The envelope
/// id is the idempotency key: a retried request records nothing new. When the database
/// fails, nothing is published (503). When the broker cannot confirm, a message this
/// request recorded is withdrawn again (unless a turn already answered it): the 503
/// means "not accepted", and nothing of it stays.
pub(crate) async fn record_and_publish(
    state: &crate::AppState,
    conversation_id: shared::ids::ConversationId,
    envelope: &shared::envelope::Envelope,
) -> Result<()> {
    let recorded = state
        .acceptor()
        .accept(
            envelope.client_id,
            conversation_id,
            envelope.id,
            envelope.message.as_prompt_text(),
            envelope.channel_message_id.clone(),
        )
        .await?;
    if let Err(e) = state.publisher().publish_envelope(envelope).await {
        if recorded.newly_recorded
            && let Err(withdraw) = state
                .db()
                .tenant(envelope.client_id)
                .messages()
                .withdraw(envelope.id)
                .await
        {
            // It stays pending and is answered with the conversation's next turn.
            tracing::warn!(error = %withdraw, "could not withdraw an unconfirmed message");
        }
        return Err(ApiError::broker_unavailable(&e));
    }
    Ok(())
}

/// The bearer token of the `Authorization` header.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The request id set by the request-id layer.
pub(crate) fn request_id(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(&crate::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(shared::telemetry::new_request_id)
}

/// The W3C trace context, when the caller sent one.
pub(crate) fn traceparent(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map(str::to_owned)
}
