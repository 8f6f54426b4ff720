//! The WhatsApp Business Cloud API channel (inbound).
//!
//! - `GET /whatsapp/webhook`: Meta's verification handshake (`hub.mode=subscribe`,
//!   `hub.verify_token`, `hub.challenge`): 200 with the raw challenge, else 403.
//! - `POST /whatsapp/webhook`: the signature (`X-Hub-Signature-256`, HMAC-SHA256 of the raw
//!   bytes with the app secret) is checked before anything is parsed (401 otherwise).
//!   Each message becomes an envelope whose id derives from its `wamid`, so Meta's retries
//!   (which come for days, concurrently, to every subscribed app) are one turn. 200 only
//!   after every envelope of the batch is confirmed by the broker (503 otherwise: Meta
//!   retries). A validly signed payload that cannot be routed — unknown
//!   `phone_number_id`, unparseable shape — is kept in the dead-letter queue and answered
//!   200, so Meta does not retry it forever. `statuses[]` update the stored reply's
//!   delivery status (forward only) and are announced as `delivery.<status>.<client_id>`.
//! - `GET/POST /whatsapp/webhook/{client_slug}`: the same with the tenant's own Meta app
//!   (`verify_token`, `app_secret` from its WhatsApp channel account); a payload signed
//!   for one tenant is never accepted for another's numbers.

mod payload;
pub mod signature;

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::extract::State;

use crate::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use serde_json::Value;
use shared::cache::TenantMetaApp;
use shared::db::DeliveryStatus;
use shared::envelope::{Envelope, Event, EventKind, Trace};
use shared::ids::{Channel, ClientId, EnvelopeId};
use shared::metric;
use shared::pii::{Pii, Secret};
use subtle::ConstantTimeEq;

use super::{read_body, request_id, traceparent};
use crate::AppState;
use crate::error::{ApiError, Result};
use payload::{ChangeValue, Webhook};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/whatsapp/webhook", get(verify).post(receive))
        .route(
            "/whatsapp/webhook/{client_slug}",
            get(verify_tenant).post(receive_tenant),
        )
}

/// Whose Meta app a request speaks for.
struct App {
    verify_token: String,
    app_secret: String,
    /// A tenant's own app may only deliver for that tenant's numbers.
    only: Option<ClientId>,
}

fn platform_app(state: &AppState) -> App {
    App {
        verify_token: state.whatsapp().verify_token.expose().clone(),
        app_secret: state.whatsapp().app_secret.expose().clone(),
        only: None,
    }
}

/// The tenant's own Meta app, from the credentials of its WhatsApp channel account:
/// from this process's cache once read (dropped on every channel-account change), so a
/// webhook's signature is checked before any database work.
async fn tenant_app(state: &AppState, slug: &str) -> Result<App> {
    let app = match state.owners().meta_app(slug) {
        Some(known) => known,
        None => {
            let read = read_tenant_app(state, slug).await?;
            state.owners().remember_meta_app(slug, read.clone());
            read
        }
    };
    let app = app.ok_or_else(|| ApiError::not_found("this client has no Meta app of its own"))?;
    Ok(App {
        verify_token: app.verify_token.expose().clone(),
        app_secret: app.app_secret.expose().clone(),
        only: Some(app.client_id),
    })
}

/// Reads the tenant's own Meta app; `None` for an unknown slug or a tenant without one.
async fn read_tenant_app(state: &AppState, slug: &str) -> Result<Option<TenantMetaApp>> {
    let Some(client) = state.db().clients().by_slug(slug).await? else {
        return Ok(None);
    };
    for sealed in state
        .db()
        .tenant(client.id)
        .channel_accounts()
        .sealed_for_channel(Channel::Whatsapp)
        .await?
    {
        let plain = state
            .secrets()
            .open(client.id, Channel::Whatsapp, &sealed)?;
        let creds: Value = serde_json::from_slice(&plain).unwrap_or(Value::Null);
        let field = |k: &str| {
            creds
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        if !field("app_secret").is_empty() {
            return Ok(Some(TenantMetaApp {
                client_id: client.id,
                verify_token: Secret::new(field("verify_token")),
                app_secret: Secret::new(field("app_secret")),
            }));
        }
    }
    Ok(None)
}

async fn verify(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    handshake(&platform_app(&state), &q)
}

async fn verify_tenant(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match tenant_app(&state, &slug).await {
        Ok(app) => handshake(&app, &q),
        Err(_) => StatusCode::FORBIDDEN.into_response(),
    }
}

fn handshake(app: &App, q: &HashMap<String, String>) -> Response {
    let token = q.get("hub.verify_token").map(String::as_str).unwrap_or("");
    let matches = !app.verify_token.is_empty()
        && bool::from(token.as_bytes().ct_eq(app.verify_token.as_bytes()));
    match (
        q.get("hub.mode").map(String::as_str),
        q.get("hub.challenge"),
    ) {
        (Some("subscribe"), Some(challenge)) if matches => {
            ([(header::CONTENT_TYPE, "text/plain")], challenge.clone()).into_response()
        }
        _ => StatusCode::FORBIDDEN.into_response(),
    }
}

async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let app = platform_app(&state);
    accept(&state, &app, &headers, body).await
}

async fn receive_tenant(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let app = tenant_app(&state, &slug)
        .await
        .map_err(|_| ApiError::unauthorized("invalid_signature", "the signature does not match"))?;
    accept(&state, &app, &headers, body).await
}

async fn accept(state: &AppState, app: &App, headers: &HeaderMap, body: Body) -> Result<Response> {
    let raw = read_body(body, state.whatsapp().max_body_bytes).await?;
    let presented = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if !signature::valid(&app.app_secret, &raw, presented) {
        metrics::counter!(metric::INBOUND_REJECTED, "channel" => "whatsapp", "reason" => "signature").increment(1);
        return Err(ApiError::unauthorized(
            "invalid_signature",
            "X-Hub-Signature-256 is missing or does not match",
        ));
    }
    let Ok(webhook) = serde_json::from_slice::<Webhook>(&raw) else {
        park(state, &raw, "unparseable webhook payload").await?;
        return Ok(StatusCode::OK.into_response());
    };
    let request_id = request_id(headers);
    let traceparent = traceparent(headers);
    let mut envelopes = Vec::new();
    for change in webhook.entry.into_iter().flat_map(|e| e.changes) {
        if change.field != "messages" {
            continue;
        }
        let raw_change = change.value.to_string();
        let Ok(value) = serde_json::from_value::<ChangeValue>(change.value) else {
            park(state, raw_change.as_bytes(), "unparseable change value").await?;
            continue;
        };
        let phone_number_id = value.metadata.phone_number_id.clone();
        let owner = state
            .owners()
            .owner(Channel::Whatsapp, &phone_number_id)
            .await?;
        let client_id = match (owner, app.only) {
            (Some((client_id, _)), None) => client_id,
            (Some((client_id, _)), Some(only)) if client_id == only => client_id,
            (Some(_), Some(_)) => {
                park(
                    state,
                    raw_change.as_bytes(),
                    "phone_number_id belongs to another tenant than the signing app",
                )
                .await?;
                continue;
            }
            (None, _) => {
                park(state, raw_change.as_bytes(), "unknown phone_number_id").await?;
                continue;
            }
        };
        for status in &value.statuses {
            apply_status(state, client_id, status).await?;
        }
        for message in &value.messages {
            let Some(inbound) = message.normalise(&value.contacts) else {
                continue;
            };
            let mut envelope = Envelope::inbound(
                EnvelopeId::deterministic(client_id, Channel::Whatsapp, &inbound.wamid),
                client_id,
                Channel::Whatsapp,
                inbound.user,
                inbound.content,
                Trace {
                    request_id: request_id.clone(),
                    traceparent: traceparent.clone(),
                },
            );
            // Named on the broker, so the envelope travels sealed under its key.
            envelope.conversation_id = Some(
                state
                    .conversations()
                    .get_or_create(client_id, Channel::Whatsapp, envelope.external_id.expose())
                    .await?,
            );
            envelope.sender.name = inbound.name.map(Pii::new);
            envelope.channel_message_id = Some(inbound.wamid);
            envelope.channel_account = Some(phone_number_id.clone());
            envelopes.push(envelope);
        }
    }
    // Confirm the whole batch (concurrently) before answering 200.
    let published = futures::future::join_all(
        envelopes
            .iter()
            .map(|e| state.publisher().publish_envelope(e)),
    )
    .await;
    if let Some(Err(e)) = published.into_iter().find(Result::is_err) {
        return Err(ApiError::broker_unavailable(&e));
    }
    metrics::counter!(metric::INBOUND_ACCEPTED, "channel" => "whatsapp")
        .increment(envelopes.len() as u64);
    Ok(StatusCode::OK.into_response())
}

/// Records a delivery status of one of our messages and announces it as
/// `delivery.<status>.<client_id>`.
async fn apply_status(
    state: &AppState,
    client_id: ClientId,
    status: &payload::WaStatus,
) -> Result<()> {
    let Ok(delivery) = status.status.parse::<DeliveryStatus>() else {
        return Ok(()); // a status chatfleet does not track (e.g. `deleted`)
    };
    let changed = state
        .db()
        .tenant(client_id)
        .messages()
        .apply_delivery_status(&status.id, delivery)
        .await?;
    tracing::debug!(status = %status.status, changed = changed.is_some(), "delivery status");
    if let Some(conversation_id) = changed {
        let mut event = Event::new(
            EventKind::Delivery,
            client_id,
            conversation_id,
            Channel::Whatsapp,
        );
        event.status = Some(delivery.as_str().to_owned());
        event.channel_message_id = Some(status.id.clone());
        state
            .publisher()
            .publish_event(&event)
            .await
            .map_err(|e| ApiError::broker_unavailable(&e))?;
        if let Some(kind) = shared::webhooks::EventType::of_delivery_status(delivery.as_str()) {
            let announced = shared::webhooks::NewEvent::about(kind, &status.id)
                .in_conversation(conversation_id, Channel::Whatsapp)
                .with("channel_message_id", status.id.clone());
            state
                .webhooks()
                .emit(client_id, announced)
                .await
                .map_err(|e| ApiError::broker_unavailable(&e))?;
        }
    }
    Ok(())
}

/// Keeps a validly signed payload that cannot be routed in the dead-letter queue.
async fn park(state: &AppState, raw: &[u8], reason: &str) -> Result<()> {
    tracing::warn!(
        reason,
        "unroutable WhatsApp webhook kept in the dead-letter queue"
    );
    metrics::counter!(metric::INBOUND_REJECTED, "channel" => "whatsapp", "reason" => "unroutable")
        .increment(1);
    state
        .publisher()
        .dead_letter_raw("whatsapp.unroutable", raw, reason)
        .await
        .map_err(|e| ApiError::broker_unavailable(&e))
}
