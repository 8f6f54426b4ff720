//! `/admin/v1/clients/{id}/channels` and `/api-keys`: how a tenant's channels reach
//! chatfleet. Channel credentials are sealed before they are stored and never returned;
//! an API key's secret is shown once, in the creation response.

use axum::body::Body;
use axum::extract::State;

use crate::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::ids::Channel;

use super::{audited, body, masked, noted, resolve};
use crate::AppState;
use crate::error::{ApiError, Result};
use crate::wire::{ApiKeyOut, ChannelAccountOut};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/admin/v1/clients/{id}/channels",
            get(list_channels).post(create_channel),
        )
        .route(
            "/admin/v1/clients/{id}/channels/{channel_account_id}",
            delete(delete_channel).patch(update_channel),
        )
        .route(
            "/admin/v1/clients/{id}/api-keys",
            get(list_keys).post(create_key),
        )
        .route(
            "/admin/v1/clients/{id}/api-keys/{key_id}",
            delete(revoke_key),
        )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewChannelBody {
    /// whatsapp | widget | mobile | api
    #[schema(value_type = String, example = "whatsapp")]
    channel: Channel,
    /// The account on the channel's side (WhatsApp `phone_number_id`, widget or app id).
    external_account_id: String,
    /// Secrets (WhatsApp `access_token`, `app_secret`, `verify_token`…): encrypted at rest,
    /// never returned.
    #[serde(default)]
    credentials: Option<serde_json::Map<String, Value>>,
    /// Non-secret settings (`allowed_origins`, `callback_url`…).
    #[serde(default)]
    settings: Option<serde_json::Map<String, Value>>,
}

/// A channel account's new settings (credentials are replaced by registering anew).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelPatchBody {
    /// Replaces the account's non-secret settings (`allowed_origins`, `callback_url`…).
    settings: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKeyBody {
    name: String,
}

/// A new API key: `key` is shown here and never again.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedKey {
    id: u64,
    prefix: String,
    key: String,
}

/// The client's channel accounts (credentials are never shown).
#[utoipa::path(get, path = "/admin/v1/clients/{id}/channels", params(("id" = String, Path, description = "client id or slug")),
    security(("admin_token" = [])), responses((status = 200, body = Vec<ChannelAccountOut>)))]
pub(crate) async fn list_channels(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<ChannelAccountOut>>> {
    let client = resolve(&state, &id).await?;
    let accounts = state
        .db()
        .tenant(client.id)
        .channel_accounts()
        .list()
        .await?;
    Ok(Json(accounts.into_iter().map(Into::into).collect()))
}

/// Register a channel account.
#[utoipa::path(post, path = "/admin/v1/clients/{id}/channels", params(("id" = String, Path, description = "client id or slug")),
    request_body = NewChannelBody, security(("admin_token" = [])),
    responses((status = 201, body = ChannelAccountOut), (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn create_channel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let req: NewChannelBody = body(raw).await?;
    let external = req.external_account_id.trim();
    if external.is_empty() || external.len() > 191 {
        return Err(ApiError::invalid(
            "external_account_id must be 1-191 characters",
        ));
    }
    let sealed = match &req.credentials {
        Some(creds) if !creds.is_empty() => {
            let plain = Value::Object(creds.clone()).to_string();
            Some(
                state
                    .secrets()
                    .seal(client.id, req.channel, plain.as_bytes())?,
            )
        }
        _ => None,
    };
    let settings = Value::Object(req.settings.unwrap_or_default());
    let callback_url = super::webhooks::callback_url(&state, req.channel, &settings)?;
    let account_id = state
        .db()
        .tenant(client.id)
        .channel_accounts()
        .create(req.channel, external, sealed.as_deref(), &settings)
        .await?;
    let created = state
        .db()
        .tenant(client.id)
        .channel_accounts()
        .list()
        .await?
        .into_iter()
        .find(|a| a.id == account_id)
        .ok_or_else(|| {
            ApiError::internal(&shared::Error::Internal(
                "a created channel account vanished".into(),
            ))
        })?;
    state.owners().changed().await?;
    let callback_secret =
        super::webhooks::sync_callback(&state, client.id, account_id, callback_url).await?;
    tracing::info!(client_id = %client.id, channel = %req.channel, "channel account registered");
    let mut created = ChannelAccountOut::from(created);
    let mut after = audited(&created);
    created.callback_secret = callback_secret;
    if let (Some(Value::Object(fields)), Some(creds)) = (after.as_mut(), &req.credentials) {
        fields.insert("credentials".into(), masked(creds));
    }
    Ok(noted(
        (StatusCode::CREATED, Json(created)),
        client.id,
        None,
        after,
    ))
}

/// Replace a channel account's settings. Removing a widget origin from
/// `allowed_origins` ends the sessions opened from it on every replica.
#[utoipa::path(patch, path = "/admin/v1/clients/{id}/channels/{channel_account_id}",
    params(("id" = String, Path, description = "client id or slug"), ("channel_account_id" = u64, Path)),
    request_body = ChannelPatchBody, security(("admin_token" = [])),
    responses((status = 200, body = ChannelAccountOut), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn update_channel(
    State(state): State<AppState>,
    Path((id, account)): Path<(String, u64)>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let req: ChannelPatchBody = body(raw).await?;
    let old = account_out(&state, client.id, account).await?;
    let before = audited(&old);
    let settings = Value::Object(req.settings);
    let channel: Channel = old.channel.parse().map_err(|_| {
        ApiError::internal(&shared::Error::Internal(
            "a stored channel is unknown".into(),
        ))
    })?;
    let callback_url = super::webhooks::callback_url(&state, channel, &settings)?;
    let accounts = state.db().tenant(client.id).channel_accounts();
    if !accounts.update_settings(account, &settings).await? {
        return Err(ApiError::not_found(format!("no channel account {account}")));
    }
    state.owners().changed().await?;
    let callback_secret =
        super::webhooks::sync_callback(&state, client.id, account, callback_url).await?;
    let mut updated = account_out(&state, client.id, account).await?;
    let after = audited(&updated);
    updated.callback_secret = callback_secret;
    Ok(noted(Json(updated), client.id, before, after))
}

/// One channel account of the tenant, as the API shows it (404 when there is none).
async fn account_out(
    state: &AppState,
    client_id: shared::ids::ClientId,
    account: u64,
) -> Result<ChannelAccountOut> {
    let accounts = state
        .db()
        .tenant(client_id)
        .channel_accounts()
        .list()
        .await?;
    accounts
        .into_iter()
        .find(|a| a.id == account)
        .map(Into::into)
        .ok_or_else(|| ApiError::not_found(format!("no channel account {account}")))
}

/// Remove a channel account.
#[utoipa::path(delete, path = "/admin/v1/clients/{id}/channels/{channel_account_id}",
    params(("id" = String, Path, description = "client id or slug"), ("channel_account_id" = u64, Path)),
    security(("admin_token" = [])), responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn delete_channel(
    State(state): State<AppState>,
    Path((id, account)): Path<(String, u64)>,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let before = audited(account_out(&state, client.id, account).await?);
    if state
        .db()
        .tenant(client.id)
        .channel_accounts()
        .delete(account)
        .await?
    {
        state.owners().changed().await?;
        // Its callback endpoint went with it (a foreign key).
        state.configs().refresh(client.id).await?;
        Ok(noted(StatusCode::NO_CONTENT, client.id, before, None))
    } else {
        Err(ApiError::not_found(format!("no channel account {account}")))
    }
}

/// The client's API keys (never their secrets).
#[utoipa::path(get, path = "/admin/v1/clients/{id}/api-keys", params(("id" = String, Path, description = "client id or slug")),
    security(("admin_token" = [])), responses((status = 200, body = Vec<ApiKeyOut>)))]
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<ApiKeyOut>>> {
    let client = resolve(&state, &id).await?;
    let keys = state.db().tenant(client.id).api_keys().list().await?;
    Ok(Json(keys.into_iter().map(Into::into).collect()))
}

/// Create an API key; the response is the only time its secret is shown.
#[utoipa::path(post, path = "/admin/v1/clients/{id}/api-keys", params(("id" = String, Path, description = "client id or slug")),
    request_body = NewKeyBody, security(("admin_token" = [])), responses((status = 201, body = CreatedKey)))]
pub(crate) async fn create_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let req: NewKeyBody = body(raw).await?;
    let name = req.name.trim().to_owned();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::invalid("name must be 1-100 characters"));
    }
    let key = state
        .db()
        .tenant(client.id)
        .api_keys()
        .create(&name)
        .await?;
    let created = CreatedKey {
        id: key.id,
        prefix: key.prefix.clone(),
        key: key.key.expose().clone(),
    };
    let after = audited(serde_json::json!({ "id": key.id, "prefix": key.prefix, "name": name }));
    Ok(noted(
        (StatusCode::CREATED, Json(created)),
        client.id,
        None,
        after,
    ))
}

/// Revoke an API key (immediately refused everywhere).
#[utoipa::path(delete, path = "/admin/v1/clients/{id}/api-keys/{key_id}",
    params(("id" = String, Path, description = "client id or slug"), ("key_id" = u64, Path)),
    security(("admin_token" = [])), responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    Path((id, key_id)): Path<(String, u64)>,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    if state.api_keys().revoke(client.id, key_id).await? {
        let before = audited(serde_json::json!({ "id": key_id, "revoked": false }));
        let after = audited(serde_json::json!({ "id": key_id, "revoked": true }));
        Ok(noted(StatusCode::NO_CONTENT, client.id, before, after))
    } else {
        Err(ApiError::not_found(format!("no active API key {key_id}")))
    }
}
