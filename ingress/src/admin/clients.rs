//! `/admin/v1/clients`: create, list, get (by id or slug), update.

use axum::body::Body;
use axum::extract::State;

use crate::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::db::NewClient;

use super::{Page, audited, body, noted, resolve};
use crate::AppState;
use crate::error::Result;
use crate::wire::{ClientOut, ClientPatchIn, Plan};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/clients", get(list).post(create))
        .route("/admin/v1/clients/{id}", get(get_one).patch(update))
        .route(
            "/admin/v1/clients/{id}/sessions/revoke",
            post(revoke_sessions),
        )
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SessionsRevoked {
    /// Widget and mobile sessions issued before this instant no longer work.
    sessions_revoked_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewClientBody {
    /// The public handle: 2-64 of a-z, 0-9 and '-', not starting or ending with '-'.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}[a-z0-9]$")]
    slug: String,
    #[schema(min_length = 1, max_length = 255)]
    name: String,
    timezone: Option<String>,
    locale: Option<String>,
    plan: Option<Plan>,
    /// The database shard (a name from `database.shards`) to place the tenant on;
    /// absent: the shard holding the fewest tenants.
    shard: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ClientPage {
    clients: Vec<ClientOut>,
    /// Pass as `after` for the next page; absent on the last page.
    next_after: Option<u64>,
}

/// Create a client (tenant) with the default configuration.
#[utoipa::path(post, path = "/admin/v1/clients", request_body = NewClientBody, security(("admin_token" = [])),
    responses((status = 201, body = ClientOut), (status = 409, description = "slug taken", body = crate::error::ErrorBody),
        (status = 422, description = "invalid field", body = crate::error::ErrorBody)))]
pub(crate) async fn create(State(state): State<AppState>, raw: Body) -> Result<Response> {
    let req: NewClientBody = body(raw).await?;
    let plan = req.plan.unwrap_or(Plan::Starter);
    let mut new = NewClient::new(&req.slug, &req.name, plan.into())?;
    if let Some(tz) = req.timezone {
        new.timezone = tz;
    }
    if let Some(locale) = req.locale {
        new.locale = locale;
    }
    let id = state
        .db()
        .clients()
        .create_on(&new, req.shard.as_deref())
        .await?;
    let client = ClientOut::from(resolve(&state, &id.to_string()).await?);
    let after = audited(&client);
    Ok(noted((StatusCode::CREATED, Json(client)), id, None, after))
}

/// List clients by ascending id.
#[utoipa::path(get, path = "/admin/v1/clients", params(Page), security(("admin_token" = [])),
    responses((status = 200, body = ClientPage)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> Result<Json<ClientPage>> {
    let (after, limit) = page.bounds()?;
    let clients = state.db().clients().list(after, limit).await?;
    let next_after = (clients.len() == limit as usize)
        .then(|| clients.last().map(|c| c.id.get()))
        .flatten();
    Ok(Json(ClientPage {
        clients: clients.into_iter().map(Into::into).collect(),
        next_after,
    }))
}

/// One client, by numeric id or slug.
#[utoipa::path(get, path = "/admin/v1/clients/{id}", params(("id" = String, Path, description = "client id or slug")),
    security(("admin_token" = [])), responses((status = 200, body = ClientOut), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ClientOut>> {
    Ok(Json(resolve(&state, &id).await?.into()))
}

/// Change a client's name, timezone, locale, plan or status. Suspending or cancelling
/// stops LLM calls for it on every worker from the next message on.
#[utoipa::path(patch, path = "/admin/v1/clients/{id}", params(("id" = String, Path, description = "client id or slug")),
    request_body = ClientPatchIn, security(("admin_token" = [])),
    responses((status = 200, body = ClientOut), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let before = audited(ClientOut::from(client.clone()));
    let patch: ClientPatchIn = body(raw).await?;
    let updated = state
        .db()
        .clients()
        .update(client.id, &patch.into())
        .await?
        .ok_or_else(|| crate::error::ApiError::not_found(format!("no client {id:?}")))?;
    state.configs().refresh(client.id).await?;
    let updated = ClientOut::from(updated);
    let after = audited(&updated);
    Ok(noted(Json(updated), client.id, before, after))
}

/// End every widget and mobile session of a client (within a second on every replica);
/// its users open new sessions (a mobile device with its device secret).
#[utoipa::path(post, path = "/admin/v1/clients/{id}/sessions/revoke", params(("id" = String, Path, description = "client id or slug")),
    security(("admin_token" = [])),
    responses((status = 200, body = SessionsRevoked), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn revoke_sessions(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionsRevoked>> {
    let client = resolve(&state, &id).await?;
    let at = chrono::Utc::now();
    if !state.db().clients().revoke_sessions(client.id, at).await? {
        return Err(crate::error::ApiError::not_found(format!(
            "no client {id:?}"
        )));
    }
    state.configs().refresh(client.id).await?;
    tracing::info!(client_id = %client.id, "sessions revoked");
    Ok(Json(SessionsRevoked {
        sessions_revoked_at: at,
    }))
}
