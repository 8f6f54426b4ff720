//! `/admin/v1/clients/{id}/webhooks`: the endpoints a tenant's events are POSTed to.
//! Which events an endpoint wants travels in the cached tenant configuration, so every
//! change reaches every process before the call returns. A signing secret is shown once
//! (creation, rotation) and stored sealed. An API channel account's callback
//! (`settings.callback_url`) is an endpoint too, owned by the account.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use shared::db::{EventFilter, NewWebhook, Webhook};
use shared::ids::ClientId;
use shared::webhooks::signature;

use super::{Page, audited, body, noted, resolve};
use crate::AppState;
use crate::error::{ApiError, Result};
use crate::extract::{Path, Query};
use crate::wire::{
    AttemptPage, CreatedWebhook, RotatedSecret, WebhookIn, WebhookOut, WebhookPatchIn,
};

/// How long the secret before a rotation keeps signing.
const ROTATION_OVERLAP: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// Longest description.
const MAX_DESCRIPTION: usize = 500;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/admin/v1/clients/{id}/webhooks",
            get(list_webhooks).post(create_webhook),
        )
        .route(
            "/admin/v1/clients/{id}/webhooks/{webhook_id}",
            get(get_webhook)
                .patch(update_webhook)
                .delete(delete_webhook),
        )
        .route(
            "/admin/v1/clients/{id}/webhooks/{webhook_id}/rotate-secret",
            post(rotate_secret),
        )
        .route(
            "/admin/v1/clients/{id}/webhooks/{webhook_id}/attempts",
            get(list_attempts),
        )
}

/// Checks an endpoint URL: a URL, `https://` unless the operator allows `http://`, a
/// host and no credentials, not a literal address outside the allowed networks (names
/// are checked after DNS on every attempt).
pub(super) fn check_url(state: &AppState, url: &str) -> Result<()> {
    if url.len() > 2048 {
        return Err(ApiError::invalid("url must be at most 2048 characters"));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::invalid(format!("url is not a URL: {e}")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::invalid("url must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::invalid("url must not hold credentials"));
    }
    let settings = state.webhook_settings();
    shared::net::check_target(&parsed, settings.allow_http, &settings.allowed_networks()).map_err(
        |reason| {
            ApiError::invalid(if settings.allow_http {
                format!("url: {reason}")
            } else {
                format!("url: {reason} (https:// only on this platform, to a public address)")
            })
        },
    )
}

fn events(words: &[String]) -> Result<EventFilter> {
    if words.is_empty() {
        return Err(ApiError::invalid(
            "events must name at least one event type, or \"*\" for all",
        ));
    }
    EventFilter::parse(words).map_err(|word| {
        ApiError::invalid(format!(
            "events: unknown event type {word:?} (known: {})",
            shared::webhooks::EventType::ALL
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

fn description(text: Option<String>) -> Result<String> {
    let text = text.unwrap_or_default();
    if text.len() > MAX_DESCRIPTION {
        return Err(ApiError::invalid(format!(
            "description must be at most {MAX_DESCRIPTION} bytes"
        )));
    }
    Ok(text)
}

async fn find(state: &AppState, client_id: ClientId, id: u64) -> Result<Webhook> {
    state
        .db()
        .tenant(client_id)
        .webhooks()
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no webhook {id}")))
}

/// Refuses to change an account's callback here.
fn not_managed(webhook: &Webhook) -> Result<()> {
    match webhook.channel_account_id {
        Some(account) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "managed_by_channel_account",
            format!(
                "webhook {} is the callback of channel account {account}: change its settings.callback_url",
                webhook.id
            ),
        )),
        None => Ok(()),
    }
}

/// Creates an endpoint with a new secret; the endpoint and the secret.
async fn create(
    state: &AppState,
    client_id: ClientId,
    new: &NewWebhook,
) -> Result<(Webhook, String)> {
    let secret = signature::new_secret();
    let id = state
        .db()
        .tenant(client_id)
        .webhooks()
        .create(new, state.webhook_settings().max_per_tenant, |id| {
            state
                .secrets()
                .seal_webhook_secret(client_id, id, secret.as_bytes())
        })
        .await?;
    state.configs().refresh(client_id).await?;
    Ok((find(state, client_id, id).await?, secret))
}

/// Every endpoint of the client.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/webhooks", params(("id" = String, Path, description = "client id or slug")),
    security(("admin_token" = [])), responses((status = 200, body = Vec<WebhookOut>), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn list_webhooks(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<WebhookOut>>> {
    let client = resolve(&state, &id).await?;
    let webhooks = state.db().tenant(client.id).webhooks().list().await?;
    Ok(Json(webhooks.into_iter().map(Into::into).collect()))
}

/// Add an endpoint; its signing secret is in this response only.
#[utoipa::path(post, path = "/admin/v1/clients/{id}/webhooks", params(("id" = String, Path, description = "client id or slug")),
    request_body = WebhookIn, security(("admin_token" = [])),
    responses((status = 201, body = CreatedWebhook), (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn create_webhook(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let new: WebhookIn = body(raw).await?;
    check_url(&state, &new.url)?;
    let webhook = NewWebhook {
        events: events(&new.events)?,
        url: new.url,
        description: description(new.description)?,
        include_text: new.include_text.unwrap_or(true),
        channel_account_id: None,
    };
    let (created, secret) = create(&state, client.id, &webhook).await?;
    let out = WebhookOut::from(created);
    let after = audited(&out);
    Ok(noted(
        (
            StatusCode::CREATED,
            Json(CreatedWebhook {
                webhook: out,
                secret,
            }),
        ),
        client.id,
        None,
        after,
    ))
}

/// One endpoint.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/webhooks/{webhook_id}",
    params(("id" = String, Path, description = "client id or slug"), ("webhook_id" = u64, Path)),
    security(("admin_token" = [])), responses((status = 200, body = WebhookOut), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn get_webhook(
    State(state): State<AppState>,
    Path((id, webhook)): Path<(String, u64)>,
) -> Result<Json<WebhookOut>> {
    let client = resolve(&state, &id).await?;
    Ok(Json(find(&state, client.id, webhook).await?.into()))
}

/// Change any subset of an endpoint's fields.
#[utoipa::path(patch, path = "/admin/v1/clients/{id}/webhooks/{webhook_id}",
    params(("id" = String, Path, description = "client id or slug"), ("webhook_id" = u64, Path)),
    request_body = WebhookPatchIn, security(("admin_token" = [])),
    responses((status = 200, body = WebhookOut), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn update_webhook(
    State(state): State<AppState>,
    Path((id, webhook_id)): Path<(String, u64)>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let patch: WebhookPatchIn = body(raw).await?;
    let old = find(&state, client.id, webhook_id).await?;
    not_managed(&old)?;
    let mut webhook = old.clone();
    if let Some(url) = patch.url {
        check_url(&state, &url)?;
        webhook.url = url;
    }
    if let Some(words) = patch.events {
        webhook.events = events(&words)?;
    }
    if patch.description.is_some() {
        webhook.description = description(patch.description)?;
    }
    if let Some(include_text) = patch.include_text {
        webhook.include_text = include_text;
    }
    if let Some(enabled) = patch.enabled {
        webhook.enabled = enabled;
    }
    if !state
        .db()
        .tenant(client.id)
        .webhooks()
        .update(&webhook)
        .await?
    {
        return Err(ApiError::not_found(format!("no webhook {webhook_id}")));
    }
    state.configs().refresh(client.id).await?;
    let (before, after) = (
        WebhookOut::from(old),
        WebhookOut::from(find(&state, client.id, webhook_id).await?),
    );
    let (before, noted_after) = (audited(&before), audited(&after));
    Ok(noted(Json(after), client.id, before, noted_after))
}

/// Remove an endpoint (what it was still owed is not sent).
#[utoipa::path(delete, path = "/admin/v1/clients/{id}/webhooks/{webhook_id}",
    params(("id" = String, Path, description = "client id or slug"), ("webhook_id" = u64, Path)),
    security(("admin_token" = [])), responses((status = 204), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn delete_webhook(
    State(state): State<AppState>,
    Path((id, webhook_id)): Path<(String, u64)>,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let old = find(&state, client.id, webhook_id).await?;
    not_managed(&old)?;
    let before = audited(WebhookOut::from(old));
    if !state
        .db()
        .tenant(client.id)
        .webhooks()
        .delete(webhook_id)
        .await?
    {
        return Err(ApiError::not_found(format!("no webhook {webhook_id}")));
    }
    state.configs().refresh(client.id).await?;
    Ok(noted(StatusCode::NO_CONTENT, client.id, before, None))
}

/// A new signing secret (shown here only); the old one keeps signing beside it for 24 h.
#[utoipa::path(post, path = "/admin/v1/clients/{id}/webhooks/{webhook_id}/rotate-secret",
    params(("id" = String, Path, description = "client id or slug"), ("webhook_id" = u64, Path)),
    security(("admin_token" = [])), responses((status = 200, body = RotatedSecret), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn rotate_secret(
    State(state): State<AppState>,
    Path((id, webhook_id)): Path<(String, u64)>,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    find(&state, client.id, webhook_id).await?;
    let secret = signature::new_secret();
    let sealed = state
        .secrets()
        .seal_webhook_secret(client.id, webhook_id, secret.as_bytes())?;
    let until = Utc::now() + ROTATION_OVERLAP;
    if !state
        .db()
        .tenant(client.id)
        .webhooks()
        .rotate(webhook_id, &sealed, until)
        .await?
    {
        return Err(ApiError::not_found(format!("no webhook {webhook_id}")));
    }
    let after = audited(serde_json::json!({ "id": webhook_id, "secret": "rotated" }));
    Ok(noted(
        Json(RotatedSecret {
            id: webhook_id,
            secret,
            previous_secret_until: until,
        }),
        client.id,
        None,
        after,
    ))
}

/// The endpoint's delivery attempts, oldest first.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/webhooks/{webhook_id}/attempts",
    params(("id" = String, Path, description = "client id or slug"), ("webhook_id" = u64, Path), Page),
    security(("admin_token" = [])), responses((status = 200, body = AttemptPage), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn list_attempts(
    State(state): State<AppState>,
    Path((id, webhook_id)): Path<(String, u64)>,
    Query(page): Query<Page>,
) -> Result<Json<AttemptPage>> {
    let client = resolve(&state, &id).await?;
    find(&state, client.id, webhook_id).await?;
    let (after, limit) = page.bounds()?;
    let attempts = state
        .db()
        .tenant(client.id)
        .webhook_log()
        .attempts(webhook_id, after, limit)
        .await?;
    let next_after = (attempts.len() == limit as usize)
        .then(|| attempts.last().map(|a| a.id))
        .flatten();
    Ok(Json(AttemptPage {
        attempts: attempts.into_iter().map(Into::into).collect(),
        next_after,
    }))
}

/// The callback URL an API channel account's settings name, if any.
#[derive(Debug, Deserialize)]
struct CallbackSettings {
    #[serde(default)]
    callback_url: Option<String>,
}

/// The callback URL an API channel account's settings name, checked like any endpoint's
/// (`None` for other channels and for no URL). Called before the account is written, so
/// a bad URL changes nothing.
pub(super) fn callback_url(
    state: &AppState,
    channel: shared::ids::Channel,
    settings: &serde_json::Value,
) -> Result<Option<String>> {
    if channel != shared::ids::Channel::Api {
        return Ok(None);
    }
    let wanted = serde_json::from_value::<CallbackSettings>(settings.clone())
        .map_err(|_| ApiError::invalid("settings.callback_url must be a string"))?
        .callback_url
        .filter(|u| !u.is_empty());
    if let Some(url) = &wanted {
        check_url(state, url)
            .map_err(|e| ApiError::invalid(format!("settings.callback_{}", e.message())))?;
    }
    Ok(wanted)
}

/// Makes an API channel account's callback endpoint match its checked `callback_url`
/// ([`callback_url`]): created (with a new secret, returned) when it appears, moved when
/// it changes, removed when it goes.
pub(super) async fn sync_callback(
    state: &AppState,
    client_id: ClientId,
    account_id: u64,
    wanted: Option<String>,
) -> Result<Option<String>> {
    let webhooks = state.db().tenant(client_id).webhooks();
    let existing = webhooks.of_account(account_id).await?;
    let secret = match (existing, wanted) {
        (None, None) => return Ok(None),
        (Some(old), None) => {
            webhooks.delete(old.id).await?;
            None
        }
        (Some(mut old), Some(url)) => {
            if old.url == url {
                return Ok(None);
            }
            old.url = url;
            webhooks.update(&old).await?;
            None
        }
        (None, Some(url)) => {
            let new = NewWebhook {
                url,
                events: EventFilter::Only(vec![shared::webhooks::EventType::MessageReplied]),
                description: format!("callback of API channel account {account_id}"),
                include_text: true,
                channel_account_id: Some(account_id),
            };
            Some(create(state, client_id, &new).await?.1)
        }
    };
    state.configs().refresh(client_id).await?;
    Ok(secret)
}
