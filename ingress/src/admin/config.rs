//! `/admin/v1/clients/{id}/config` and `/admin/v1/clients/{id}/modes`: everything that
//! shapes a tenant's bot. Every change bumps `config_version` and reaches every process
//! before the call returns.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use serde_json::Value;
use shared::db::{AgentMode, ClientConfig, ConfigUpdate, ModePatch};
use shared::ids::ClientId;

use super::{body, resolve};
use crate::AppState;
use crate::error::{ApiError, Result};

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
        .configs()
        .get(client_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("client {client_id} has no configuration")))
}

async fn apply(
    state: &AppState,
    client_id: ClientId,
    update: &ConfigUpdate,
) -> Result<Json<ClientConfig>> {
    state.db().configs().update(client_id, update).await?;
    state.configs().refresh(client_id).await?;
    Ok(Json(current(state, client_id).await?))
}

/// The client's configuration.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/config", params(("id" = String, Path, description = "client id or slug")),
    security(("admin_token" = [])), responses((status = 200, body = ClientConfig), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn get_config(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ClientConfig>> {
    let client = resolve(&state, &id).await?;
    Ok(Json(current(&state, client.id).await?))
}

/// Replace the whole configuration (every field of `client_configs` but the version).
#[utoipa::path(put, path = "/admin/v1/clients/{id}/config", params(("id" = String, Path, description = "client id or slug")),
    request_body = ConfigUpdate, security(("admin_token" = [])),
    responses((status = 200, body = ClientConfig), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn put_config(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Json<ClientConfig>> {
    let client = resolve(&state, &id).await?;
    let update: ConfigUpdate = body(raw).await?;
    apply(&state, client.id, &update).await
}

/// Change any subset of the configuration's fields.
#[utoipa::path(patch, path = "/admin/v1/clients/{id}/config", params(("id" = String, Path, description = "client id or slug")),
    request_body = Object, security(("admin_token" = [])),
    responses((status = 200, body = ClientConfig), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn patch_config(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Json<ClientConfig>> {
    let client = resolve(&state, &id).await?;
    let changes: serde_json::Map<String, Value> = body(raw).await?;
    let mut merged = serde_json::to_value(ConfigUpdate::from(current(&state, client.id).await?))
        .map_err(|e| ApiError::internal(&e))?;
    for (key, value) in changes {
        match merged.get_mut(&key) {
            Some(slot) => *slot = value,
            None => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    format!("unknown or read-only field `{key}`"),
                ));
            }
        }
    }
    let update: ConfigUpdate = serde_json::from_value(merged).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            e.to_string(),
        )
    })?;
    apply(&state, client.id, &update).await
}

/// Every agent mode, active or not, highest priority (lowest number) first.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/modes", params(("id" = String, Path, description = "client id or slug")),
    security(("admin_token" = [])), responses((status = 200, body = Vec<AgentMode>)))]
pub(crate) async fn list_modes(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<AgentMode>>> {
    let client = resolve(&state, &id).await?;
    Ok(Json(state.db().configs().list_modes(client.id).await?))
}

/// Add an agent mode.
#[utoipa::path(post, path = "/admin/v1/clients/{id}/modes", params(("id" = String, Path, description = "client id or slug")),
    request_body = AgentMode, security(("admin_token" = [])),
    responses((status = 201, body = AgentMode), (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn create_mode(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let mode: AgentMode = body(raw).await?;
    state.db().configs().create_mode(client.id, &mode).await?;
    state.configs().refresh(client.id).await?;
    Ok((StatusCode::CREATED, Json(mode)).into_response())
}

/// Change a mode's fragment, activity or priority.
#[utoipa::path(patch, path = "/admin/v1/clients/{id}/modes/{module_key}",
    params(("id" = String, Path, description = "client id or slug"), ("module_key" = String, Path)),
    request_body = ModePatch, security(("admin_token" = [])),
    responses((status = 200, body = AgentMode), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn update_mode(
    State(state): State<AppState>,
    Path((id, key)): Path<(String, String)>,
    raw: Body,
) -> Result<Json<AgentMode>> {
    let client = resolve(&state, &id).await?;
    let patch: ModePatch = body(raw).await?;
    state
        .db()
        .configs()
        .update_mode(client.id, &key, &patch)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no agent mode {key:?}")))?;
    state.configs().refresh(client.id).await?;
    let modes = state.db().configs().list_modes(client.id).await?;
    modes
        .into_iter()
        .find(|m| m.module_key == key)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no agent mode {key:?}")))
}

/// Remove an agent mode.
#[utoipa::path(delete, path = "/admin/v1/clients/{id}/modes/{module_key}",
    params(("id" = String, Path, description = "client id or slug"), ("module_key" = String, Path)),
    security(("admin_token" = [])), responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn delete_mode(
    State(state): State<AppState>,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode> {
    let client = resolve(&state, &id).await?;
    state
        .db()
        .configs()
        .delete_mode(client.id, &key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no agent mode {key:?}")))?;
    state.configs().refresh(client.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
