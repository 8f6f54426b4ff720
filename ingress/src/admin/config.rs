//! `/admin/v1/clients/{id}/config` and `/admin/v1/clients/{id}/modes`: everything that
//! shapes a tenant's bot. Every change bumps `config_version` and reaches every process
//! before the call returns.

use axum::body::Body;
use axum::extract::State;

use crate::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, patch};
use axum::{Json, Router};
use shared::db::{ClientConfig, ConfigUpdate};
use shared::ids::ClientId;

use super::{audited, body, noted, resolve};
use crate::AppState;
use crate::error::{ApiError, Result};
use crate::wire::{AgentModeIn, AgentModeOut, ConfigIn, ConfigOut, ConfigPatch, ModePatchIn};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/admin/v1/clients/{id}/config",
            get(get_config).put(put_config).patch(patch_config),
        )
        .route(
            "/admin/v1/clients/{id}/modes",
            get(list_modes).post(create_mode),
        )
        .route(
            "/admin/v1/clients/{id}/modes/{module_key}",
            patch(update_mode).delete(delete_mode),
        )
}

async fn current(state: &AppState, client_id: ClientId) -> Result<ClientConfig> {
    state
        .db()
        .tenant(client_id)
        .configs()
        .get()
        .await?
        .ok_or_else(|| ApiError::not_found(format!("client {client_id} has no configuration")))
}

async fn apply(state: &AppState, client_id: ClientId, update: &ConfigUpdate) -> Result<ConfigOut> {
    state
        .db()
        .tenant(client_id)
        .configs()
        .update(update)
        .await?;
    state.configs().refresh(client_id).await?;
    Ok(current(state, client_id).await?.into())
}

/// The client's configuration.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/config", params(("id" = String, Path, description = "client id or slug")),
    security(("admin_token" = [])), responses((status = 200, body = ConfigOut), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn get_config(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ConfigOut>> {
    let client = resolve(&state, &id).await?;
    Ok(Json(current(&state, client.id).await?.into()))
}

/// Replace the whole configuration (every field of `client_configs` but the version).
#[utoipa::path(put, path = "/admin/v1/clients/{id}/config", params(("id" = String, Path, description = "client id or slug")),
    request_body = ConfigIn, security(("admin_token" = [])),
    responses((status = 200, body = ConfigOut), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn put_config(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let update: ConfigIn = body(raw).await?;
    let before = audited(ConfigOut::from(current(&state, client.id).await?));
    let after = apply(&state, client.id, &update.into()).await?;
    Ok(noted(Json(&after), client.id, before, audited(&after)))
}

/// Change any subset of the configuration's fields.
#[utoipa::path(patch, path = "/admin/v1/clients/{id}/config", params(("id" = String, Path, description = "client id or slug")),
    request_body = ConfigPatch, security(("admin_token" = [])),
    responses((status = 200, body = ConfigOut), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn patch_config(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let patch: ConfigPatch = body(raw).await?;
    let old = current(&state, client.id).await?;
    let before = audited(ConfigOut::from(old.clone()));
    let after = apply(&state, client.id, &patch.apply(ConfigUpdate::from(old))).await?;
    Ok(noted(Json(&after), client.id, before, audited(&after)))
}

/// Every agent mode, active or not, highest priority (lowest number) first.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/modes", params(("id" = String, Path, description = "client id or slug")),
    security(("admin_token" = [])), responses((status = 200, body = Vec<AgentModeOut>)))]
pub(crate) async fn list_modes(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<AgentModeOut>>> {
    let client = resolve(&state, &id).await?;
    let modes = state.db().tenant(client.id).configs().list_modes().await?;
    Ok(Json(modes.into_iter().map(Into::into).collect()))
}

/// Add an agent mode.
#[utoipa::path(post, path = "/admin/v1/clients/{id}/modes", params(("id" = String, Path, description = "client id or slug")),
    request_body = AgentModeIn, security(("admin_token" = [])),
    responses((status = 201, body = AgentModeOut), (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn create_mode(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let mode: AgentModeIn = body(raw).await?;
    let mode = mode.into();
    state
        .db()
        .tenant(client.id)
        .configs()
        .create_mode(&mode)
        .await?;
    state.configs().refresh(client.id).await?;
    let created = AgentModeOut::from(mode);
    let after = audited(&created);
    Ok(noted(
        (StatusCode::CREATED, Json(created)),
        client.id,
        None,
        after,
    ))
}

/// Change a mode's fragment, activity or priority.
#[utoipa::path(patch, path = "/admin/v1/clients/{id}/modes/{module_key}",
    params(("id" = String, Path, description = "client id or slug"), ("module_key" = String, Path)),
    request_body = ModePatchIn, security(("admin_token" = [])),
    responses((status = 200, body = AgentModeOut), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn update_mode(
    State(state): State<AppState>,
    Path((id, key)): Path<(String, String)>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let patch: ModePatchIn = body(raw).await?;
    let before = mode(&state, client.id, &key).await?;
    state
        .db()
        .tenant(client.id)
        .configs()
        .update_mode(&key, &patch.into())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no agent mode {key:?}")))?;
    state.configs().refresh(client.id).await?;
    let after = mode(&state, client.id, &key).await?;
    let (before, noted_after) = (audited(&before), audited(&after));
    Ok(noted(Json(after), client.id, before, noted_after))
}

/// One agent mode of the tenant, as the API shows it.
async fn mode(state: &AppState, client_id: ClientId, key: &str) -> Result<AgentModeOut> {
    let modes = state.db().tenant(client_id).configs().list_modes().await?;
    modes
        .into_iter()
        .find(|m| m.module_key == key)
        .map(Into::into)
        .ok_or_else(|| ApiError::not_found(format!("no agent mode {key:?}")))
}

/// Remove an agent mode.
#[utoipa::path(delete, path = "/admin/v1/clients/{id}/modes/{module_key}",
    params(("id" = String, Path, description = "client id or slug"), ("module_key" = String, Path)),
    security(("admin_token" = [])), responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn delete_mode(
    State(state): State<AppState>,
    Path((id, key)): Path<(String, String)>,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let before = audited(mode(&state, client.id, &key).await?);
    state
        .db()
        .tenant(client.id)
        .configs()
        .delete_mode(&key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no agent mode {key:?}")))?;
    state.configs().refresh(client.id).await?;
    Ok(noted(StatusCode::NO_CONTENT, client.id, before, None))
}
