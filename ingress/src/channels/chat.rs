//! What the widget and mobile channels share once a session is open: sending a message
//! and long-polling the conversation, both authenticated by the session token.
//!
//! - send `{ text, client_message_id? }` → 202 `{ message_id }` once the broker confirmed
//!   it. The same `client_message_id` in the same conversation is the same message id,
//!   so a retried send is stored and answered once.
//! - poll `?after=<cursor>&wait=<s>` → 200 `{ messages, cursor }` with everything after
//!   the cursor, or 204 after `wait` seconds (clamped to `api.max_wait_s`). One poll per
//!   session: a newer poll takes over and the older one ends with 409 `poll_superseded`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shared::cache::MailboxKey;
use shared::envelope::{Envelope, MessageContent, Trace};
use shared::ids::{Channel, EnvelopeId};
use shared::metric;
use shared::tenant::ClientStatus;

use super::body::{self, Accepted, ChatMessageIn, Field, message_text};
use super::session::SessionClaims;
use super::{bearer, read_body, record_and_publish, request_id, traceparent};
use crate::AppState;
use crate::error::{ApiError, Result};
use crate::longpoll::{self, PollParams};

/// Longest `client_message_id`.
const MAX_CLIENT_MESSAGE_ID: usize = 128;

/// The session behind the request's bearer token. A browser request from another origin
/// than the session's is refused (403); a revoked session (see [`still_valid`]) is 401.
pub(super) async fn authenticate(
    state: &AppState,
    channel: Channel,
    headers: &HeaderMap,
) -> Result<SessionClaims> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_session",
            "send the session token as Authorization: Bearer <token>",
        )
    })?;
    authenticate_token(state, channel, token, headers).await
}

/// [`authenticate`] with the token given apart from the headers (the widget's stream:
/// EventSource cannot set headers).
pub(super) async fn authenticate_token(
    state: &AppState,
    channel: Channel,
    token: &str,
    headers: &HeaderMap,
) -> Result<SessionClaims> {
    let claims = state.sessions().verify(token, channel)?;
    if let (Some(expected), Some(origin)) = (&claims.origin, headers.get(header::ORIGIN))
        && origin.as_bytes() != expected.as_bytes()
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this session belongs to another origin",
        ));
    }
    tracing::Span::current().record("client_id", tracing::field::display(claims.client_id));
    still_valid(state, &claims).await?;
    Ok(claims)
}

/// The refusal of a session for a suspended or cancelled tenant.
pub(super) fn inactive_client() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "client_inactive",
        "this client is not active; no sessions can be opened",
    )
}

/// Whether a session whose token verifies still stands: its tenant is active and has not
/// revoked its sessions since the token was issued, and the widget origin or mobile app
/// key it was opened with is still the tenant's. Every answer comes from caches that
/// every process drops when a tenant or its channel accounts change, so a revocation
/// reaches every replica as fast as a configuration change.
pub(crate) async fn still_valid(state: &AppState, claims: &SessionClaims) -> Result<()> {
    let revoked = || {
        ApiError::unauthorized(
            "session_revoked",
            "the session was revoked; open a new session",
        )
    };
    let tenant = state
        .configs()
        .get(claims.client_id)
        .await?
        .ok_or_else(revoked)?;
    let client = &tenant.client;
    if client.status != ClientStatus::Active
        || client
            .sessions_revoked_at
            .is_some_and(|at| claims.issued_ms <= at.timestamp_millis())
    {
        return Err(revoked());
    }
    let still_owned = match (&claims.origin, &claims.app_key) {
        (Some(origin), _) => {
            state
                .owners()
                .widget_origin_allowed(claims.client_id, origin)
                .await?
        }
        (None, Some(app_key)) => state
            .owners()
            .owner(Channel::Mobile, app_key)
            .await?
            .is_some_and(|(owner, _)| owner == claims.client_id),
        (None, None) => false,
    };
    if still_owned { Ok(()) } else { Err(revoked()) }
}

pub(super) async fn send(
    state: &AppState,
    channel: Channel,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let claims = authenticate(state, channel, headers).await?;
    let per_minute = state.edge().limits.sends_per_session_per_minute;
    let session = claims.session_id.simple().to_string();
    let taken = state
        .cache()
        .take_session_send(claims.client_id, &session, per_minute)
        .await;
    crate::edge::enforce("sends_per_session", taken)?;
    let max_text = state.api().max_text_bytes;
    let bytes = read_body(body, max_text * 2 + 1024).await?;
    let request: ChatMessageIn = body::parse(&bytes)?;
    let text = message_text(request.text, max_text)?;
    let id = match request.client_message_id {
        Field::Absent | Field::Null => EnvelopeId::random(),
        Field::Given(c) if !c.is_empty() && c.len() <= MAX_CLIENT_MESSAGE_ID => {
            // Scoped by conversation: two visitors' widgets may well pick the same ids.
            EnvelopeId::deterministic(
                claims.client_id,
                channel,
                &format!("{}\u{0}{c}", claims.external_id),
            )
        }
        Field::Given(_) | Field::Mistyped => {
            return Err(ApiError::bad_request(
                "invalid_client_message_id",
                format!("client_message_id must be a string of 1-{MAX_CLIENT_MESSAGE_ID} bytes"),
            ));
        }
    };
    let envelope = Envelope::inbound(
        id,
        claims.client_id,
        channel,
        claims.external_id.clone(),
        MessageContent::text(text),
        Trace {
            request_id: request_id(headers),
            traceparent: traceparent(headers),
        },
    );
    record_and_publish(state, claims.conversation_id, &envelope).await?;
    tracing::info!(envelope_id = %envelope.id, "accepted");
    metrics::counter!(metric::INBOUND_ACCEPTED, "channel" => channel.as_str()).increment(1);
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            message_id: *envelope.id.as_uuid(),
            conversation_id: None,
        }),
    )
        .into_response())
}

pub(super) async fn poll(
    state: &AppState,
    channel: Channel,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Response> {
    let claims = authenticate(state, channel, headers).await?;
    let params = PollParams {
        after: state.sessions().position(
            claims.conversation_id,
            query.get("after").map(String::as_str),
        )?,
        wait: longpoll::clamped_wait(
            query.get("wait").map(String::as_str),
            state.api().max_wait.as_secs(),
        )?,
    };
    // Only a waiting poll holds the session's slot; a quick look never ends another.
    let slot = if params.wait.is_zero() {
        None
    } else {
        Some(
            state
                .mailboxes()
                .claim_poll_slot(claims.client_id, channel, &claims.session_id.to_string())
                .await?,
        )
    };
    let key = MailboxKey::new(claims.client_id, channel, &claims.external_id);
    let polled = longpoll::wait_for(
        state,
        &key,
        claims.client_id,
        claims.conversation_id,
        params,
        slot.as_ref(),
    )
    .await?;
    // A poll can wait for half a minute: a session revoked meanwhile gets nothing more.
    still_valid(state, &claims).await?;
    let conversation = claims.conversation_id;
    Ok(longpoll::answer(polled, |seq| {
        state.sessions().cursor(conversation, seq)
    }))
}

/// Refuses (429) a session opened from an address over
/// `edge.sessions_per_ip_per_minute`.
pub(super) async fn session_limit_by_ip(
    state: &AppState,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: &HeaderMap,
) -> Result<()> {
    let peer = peer.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr);
    let Some(ip) = state.edge().client_ip(peer, headers) else {
        return Ok(());
    };
    let per_minute = state.edge().limits.sessions_per_ip_per_minute;
    let taken = state.cache().take_session_for_ip(ip, per_minute).await;
    crate::edge::enforce("sessions_per_ip", taken)
}

/// Refuses (429) a session of a tenant over its plan's `sessions_per_minute`.
pub(super) async fn session_limit_by_tenant(
    state: &AppState,
    client_id: shared::ids::ClientId,
    plan: shared::tenant::Plan,
) -> Result<()> {
    let per_minute = state.plans().limits(plan).sessions_per_minute;
    let taken = state
        .cache()
        .take_session_for_tenant(client_id, per_minute)
        .await;
    crate::edge::enforce("sessions_per_tenant", taken)
}

/// The SSE stream of a widget or mobile session's conversation (see [`crate::stream`]),
/// after `after` (or `Last-Event-ID`). A malformed cursor is 400 `invalid_cursor`; one of
/// another conversation is 404, as if there were nothing to find.
pub(super) async fn stream(
    state: &AppState,
    channel: Channel,
    claims: SessionClaims,
    headers: &HeaderMap,
    after: Option<&str>,
) -> Result<Response> {
    let after = match crate::stream::resume_from(headers, after) {
        None => 0,
        Some(raw) => {
            let well_formed = raw
                .split_once('.')
                .is_some_and(|(seq, mac)| seq.parse::<u64>().is_ok() && hex::decode(mac).is_ok());
            if !well_formed {
                return Err(ApiError::bad_request(
                    "invalid_cursor",
                    "after must be a cursor (an event id) of this stream",
                ));
            }
            state
                .sessions()
                .position(claims.conversation_id, Some(raw))
                .map_err(|_| ApiError::not_found("no such position in this conversation"))?
        }
    };
    let slot = state
        .mailboxes()
        .claim_poll_slot(claims.client_id, channel, &claims.session_id.to_string())
        .await?;
    let keys = state.sessions().clone();
    let conversation = claims.conversation_id;
    crate::stream::open(
        state,
        crate::stream::StreamOf {
            key: MailboxKey::new(claims.client_id, channel, &claims.external_id),
            client_id: claims.client_id,
            conversation_id: conversation,
            after,
            cursor: std::sync::Arc::new(move |seq| keys.cursor(conversation, seq)),
            session: Some((slot, claims)),
        },
    )
}
