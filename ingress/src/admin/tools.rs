//! `/admin/v1/clients/{id}/tools`: the HTTP endpoints of a tenant's own that its bot may
//! call through the model's function calling. A definition is part of the tenant's
//! behaviour: every change bumps `config_version` and reaches every process before the
//! call returns. Credentials are sealed on the way in and never come out.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use shared::db::{Tool, ToolAuthKind, ToolMethod};
use shared::ids::ClientId;
use shared::secrets::ToolCredential;

use super::{audited, body, noted, resolve};
use crate::AppState;
use crate::error::{ApiError, Result};
use crate::extract::Path;
use crate::wire::{ToolAuthIn, ToolIn, ToolOut, ToolPatchIn};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/admin/v1/clients/{id}/tools",
            get(list_tools).post(create_tool),
        )
        .route(
            "/admin/v1/clients/{id}/tools/{name}",
            get(get_tool).patch(update_tool).delete(delete_tool),
        )
}

/// Default time a call may take.
const DEFAULT_TIMEOUT_MS: u32 = 5_000;

/// Seals a credential for the tool; the kind and the sealed bytes.
fn sealed(
    state: &AppState,
    client_id: ClientId,
    tool: &str,
    auth: ToolAuthIn,
) -> Result<(ToolAuthKind, Vec<u8>)> {
    let credential = ToolCredential::try_from(auth).map_err(ApiError::invalid)?;
    let kind = match credential {
        ToolCredential::Bearer { .. } => ToolAuthKind::Bearer,
        ToolCredential::Header { .. } => ToolAuthKind::Header,
        ToolCredential::Basic { .. } => ToolAuthKind::Basic,
    };
    Ok((kind, credential.seal(state.secrets(), client_id, tool)?))
}

/// Refuses `http://` unless the operator allows it (`tools.allow_http`); the rest of a
/// definition is checked by the data layer.
fn check_scheme(state: &AppState, tool: &Tool) -> Result<()> {
    if tool.url.starts_with("http://") && !state.tools().allow_http {
        return Err(ApiError::invalid(
            "url must be https:// (this platform does not allow http:// tools)",
        ));
    }
    Ok(())
}

async fn find(state: &AppState, client_id: ClientId, name: &str) -> Result<Tool> {
    state
        .db()
        .tenant(client_id)
        .tools()
        .get(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no tool {name:?}")))
}

/// Every tool of the client, by name.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/tools", params(("id" = String, Path, description = "client id or slug")),
    security(("admin_token" = [])), responses((status = 200, body = Vec<ToolOut>), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn list_tools(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<ToolOut>>> {
    let client = resolve(&state, &id).await?;
    let tools = state.db().tenant(client.id).tools().list().await?;
    Ok(Json(tools.into_iter().map(Into::into).collect()))
}

/// Add a tool.
#[utoipa::path(post, path = "/admin/v1/clients/{id}/tools", params(("id" = String, Path, description = "client id or slug")),
    request_body = ToolIn, security(("admin_token" = [])),
    responses((status = 201, body = ToolOut), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn create_tool(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let new: ToolIn = body(raw).await?;
    let method = ToolMethod::from(new.method);
    let (auth_kind, auth_sealed) = match new.auth {
        Some(auth) => {
            let (kind, sealed) = sealed(&state, client.id, &new.name, auth)?;
            (Some(kind), Some(sealed))
        }
        None => (None, None),
    };
    let tool = Tool {
        name: new.name,
        description: new.description,
        parameters: new.parameters,
        method,
        url: new.url,
        auth_kind,
        auth_sealed,
        timeout_ms: new.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
        side_effects: new.side_effects.unwrap_or(method == ToolMethod::Post),
        is_active: new.is_active.unwrap_or(true),
    };
    check_scheme(&state, &tool)?;
    state
        .db()
        .tenant(client.id)
        .tools()
        .create(&tool, state.tools().max_per_tenant)
        .await?;
    state.configs().refresh(client.id).await?;
    let created = ToolOut::from(tool);
    let after = audited(&created);
    Ok(noted(
        (StatusCode::CREATED, Json(created)),
        client.id,
        None,
        after,
    ))
}

/// One tool.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/tools/{name}",
    params(("id" = String, Path, description = "client id or slug"), ("name" = String, Path)),
    security(("admin_token" = [])), responses((status = 200, body = ToolOut), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn get_tool(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<ToolOut>> {
    let client = resolve(&state, &id).await?;
    Ok(Json(find(&state, client.id, &name).await?.into()))
}

/// Change any subset of a tool's fields.
#[utoipa::path(patch, path = "/admin/v1/clients/{id}/tools/{name}",
    params(("id" = String, Path, description = "client id or slug"), ("name" = String, Path)),
    request_body = ToolPatchIn, security(("admin_token" = [])),
    responses((status = 200, body = ToolOut), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn update_tool(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let patch: ToolPatchIn = body(raw).await?;
    let old = find(&state, client.id, &name).await?;
    let mut tool = old.clone();
    if let Some(description) = patch.description {
        tool.description = description;
    }
    if let Some(parameters) = patch.parameters {
        tool.parameters = parameters;
    }
    if let Some(method) = patch.method {
        tool.method = method.into();
    }
    if let Some(url) = patch.url {
        tool.url = url;
    }
    match patch.auth {
        Some(Some(auth)) => {
            let (kind, sealed) = sealed(&state, client.id, &name, auth)?;
            tool.auth_kind = Some(kind);
            tool.auth_sealed = Some(sealed);
        }
        Some(None) => {
            tool.auth_kind = None;
            tool.auth_sealed = None;
        }
        None => {}
    }
    if let Some(timeout_ms) = patch.timeout_ms {
        tool.timeout_ms = timeout_ms;
    }
    if let Some(side_effects) = patch.side_effects {
        tool.side_effects = side_effects;
    }
    if let Some(is_active) = patch.is_active {
        tool.is_active = is_active;
    }
    check_scheme(&state, &tool)?;
    state
        .db()
        .tenant(client.id)
        .tools()
        .replace(&tool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no tool {name:?}")))?;
    state.configs().refresh(client.id).await?;
    let (before, after) = (ToolOut::from(old), ToolOut::from(tool));
    let (before, noted_after) = (audited(&before), audited(&after));
    Ok(noted(Json(after), client.id, before, noted_after))
}

/// Remove a tool.
#[utoipa::path(delete, path = "/admin/v1/clients/{id}/tools/{name}",
    params(("id" = String, Path, description = "client id or slug"), ("name" = String, Path)),
    security(("admin_token" = [])), responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn delete_tool(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let before = audited(ToolOut::from(find(&state, client.id, &name).await?));
    state
        .db()
        .tenant(client.id)
        .tools()
        .delete(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no tool {name:?}")))?;
    state.configs().refresh(client.id).await?;
    Ok(noted(StatusCode::NO_CONTENT, client.id, before, None))
}
