//! The REST API channel: tenants' own backends send messages with an API key and read
//! replies by long-polling the conversation (or, in a later issue, by signed callbacks).
//!
//! - `POST /api/v1/messages` `{ conversation_id, text, metadata? }` with an optional
//!   `Idempotency-Key` → 202 `{ message_id, conversation_id }` once the broker confirmed.
//!   The same key always maps to the same message id, so a retried request is one turn.
//! - `GET /api/v1/conversations/{conversation_id}/messages?after=&wait=` → the mailbox.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;

use crate::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use shared::cache::MailboxKey;
use shared::envelope::{Envelope, MessageContent, Trace};
use shared::ids::{Channel, ClientId, EnvelopeId};
use shared::metric;
use shared::pii::Pii;

use super::body::{self, Accepted, ApiMessageIn, Field, message_text};
use super::{bearer, read_body, record_and_publish, request_id, traceparent};
use crate::AppState;
use crate::error::{ApiError, Result};
use crate::longpoll::{self, PollParams};

/// Longest conversation id (the `conversations.external_id` column).
const MAX_CONVERSATION_ID: usize = 191;
/// Longest `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Largest `metadata` object, serialised.
const MAX_METADATA_BYTES: usize = 4096;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/messages", post(send))
        .route(
            "/api/v1/conversations/{conversation_id}/messages",
            get(poll),
        )
        .route(
            "/api/v1/conversations/{conversation_id}/stream",
            get(stream),
        )
}

/// Resolves the tenant from the bearer API key.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<ClientId> {
    let key = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_api_key",
            "send the API key as Authorization: Bearer <key>",
        )
    })?;
    let client_id = state.api_keys().authenticate(key).await?.ok_or_else(|| {
        ApiError::unauthorized("invalid_api_key", "the API key is unknown or revoked")
    })?;
    tracing::Span::current().record("client_id", tracing::field::display(client_id));
    Ok(client_id)
}

/// Send a message into a conversation (202 once the broker confirmed it).
#[utoipa::path(post, path = "/api/v1/messages", security(("api_key" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "the same key is the same message")),
    request_body = ApiMessageIn,
    responses((status = 202, body = Accepted),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 413, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub(crate) async fn send(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let client_id = authenticate(&state, &headers).await?;
    let max_text = state.api().max_text_bytes;
    // Room for the JSON around a maximal text and its metadata; a larger body is refused
    // before it is buffered.
    let bytes = read_body(body, max_text * 2 + MAX_METADATA_BYTES + 1024).await?;
    let request: ApiMessageIn = body::parse(&bytes)?;

    let conversation_id = match request.conversation_id {
        Field::Given(s) if !s.trim().is_empty() && s.len() <= MAX_CONVERSATION_ID => s,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_conversation_id",
                format!(
                    "conversation_id must be a non-empty string of at most {MAX_CONVERSATION_ID} bytes"
                ),
            ));
        }
    };
    let text = message_text(request.text, max_text)?;
    let metadata = match request.metadata {
        Field::Absent | Field::Null => None,
        Field::Given(map) => {
            let value = Value::Object(map);
            if value.to_string().len() > MAX_METADATA_BYTES {
                return Err(ApiError::too_large(
                    "metadata_too_large",
                    format!("metadata must serialise to at most {MAX_METADATA_BYTES} bytes"),
                ));
            }
            Some(Pii::new(value))
        }
        Field::Mistyped => {
            return Err(ApiError::bad_request(
                "invalid_metadata",
                "metadata must be a JSON object",
            ));
        }
    };
    let id = match headers.get("idempotency-key") {
        None => EnvelopeId::random(),
        Some(raw) => {
            let key = raw
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
                    )
                })?;
            EnvelopeId::deterministic(client_id, Channel::Api, key)
        }
    };

    let envelope = Envelope {
        metadata,
        ..Envelope::inbound(
            id,
            client_id,
            Channel::Api,
            conversation_id.clone(),
            MessageContent::text(text),
            Trace {
                request_id: request_id(&headers),
                traceparent: traceparent(&headers),
            },
        )
    };
    // The conversation exists from the first accepted message on, so a poll can tell an
    // unknown conversation (404) from one whose reply is still coming.
    let conversation = state
        .conversations()
        .get_or_create(client_id, Channel::Api, &conversation_id)
        .await?;
    record_and_publish(&state, conversation, &envelope).await?;
    tracing::info!(envelope_id = %envelope.id, "accepted");
    metrics::counter!(metric::INBOUND_ACCEPTED, "channel" => "api").increment(1);
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            message_id: *envelope.id.as_uuid(),
            conversation_id: Some(conversation_id),
        }),
    )
        .into_response())
}

/// Long-poll a conversation's messages after a cursor.
#[utoipa::path(get, path = "/api/v1/conversations/{conversation_id}/messages", security(("api_key" = [])),
    params(("conversation_id" = String, Path), ("after" = Option<String>, Query, description = "cursor"),
        ("wait" = Option<u64>, Query, maximum = 30, description = "seconds to wait, 0-30")),
    responses((status = 200, body = crate::wire::PolledMessages),
        (status = 204, description = "nothing new within `wait`"), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn poll(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(conversation_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    let (client_id, conversation) = conversation_of(&state, &headers, &conversation_id).await?;
    let params = PollParams::parse(
        query.get("after").map(String::as_str),
        query.get("wait").map(String::as_str),
        state.api().max_wait.as_secs(),
    )?;
    let key = MailboxKey::new(client_id, Channel::Api, &conversation_id);
    let polled = longpoll::wait_for(&state, &key, client_id, conversation, params, None).await?;
    Ok(longpoll::answer(polled, |seq| seq.to_string()))
}

/// The caller's tenant (from its API key) and its conversation `conversation_id`: 400
/// for a malformed id, 404 when the tenant has no such conversation (another tenant's
/// is no different).
async fn conversation_of(
    state: &AppState,
    headers: &HeaderMap,
    conversation_id: &str,
) -> Result<(ClientId, shared::ids::ConversationId)> {
    let client_id = authenticate(state, headers).await?;
    if conversation_id.is_empty() || conversation_id.len() > MAX_CONVERSATION_ID {
        return Err(ApiError::bad_request(
            "invalid_conversation_id",
            "conversation_id is malformed",
        ));
    }
    let conversation = state
        .conversations()
        .find(client_id, Channel::Api, conversation_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such conversation"))?;
    Ok((client_id, conversation))
}

/// Stream a conversation as server-sent events: every stored message after the cursor
/// (`message`, its cursor as the event id; `Last-Event-ID` resumes), and the turns'
/// `typing`, `delta` and `discard` as they happen.
#[utoipa::path(get, path = "/api/v1/conversations/{conversation_id}/stream", security(("api_key" = [])),
    params(("conversation_id" = String, Path),
        ("after" = Option<String>, Query, description = "cursor (event id) to resume after; Last-Event-ID wins")),
    responses((status = 200, description = "text/event-stream of the conversation", content_type = "text/event-stream"),
        (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
        (status = 503, body = crate::error::ErrorBody)))]
pub(crate) async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(conversation_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    let (client_id, conversation) = conversation_of(&state, &headers, &conversation_id).await?;
    let after = crate::stream::resume_from(&headers, query.get("after").map(String::as_str));
    let after = PollParams::parse(after, None, 0)?.after;
    crate::stream::open(
        &state,
        crate::stream::StreamOf {
            key: MailboxKey::new(client_id, Channel::Api, &conversation_id),
            client_id,
            conversation_id: conversation,
            after,
            cursor: std::sync::Arc::new(|seq: u64| seq.to_string()),
            session: None,
        },
    )
}
