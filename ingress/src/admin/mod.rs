//! The admin API (`/admin/v1`, an operator's bearer token on every route, see [`auth`]):
//! a tenant's whole life cycle, and the audit log of every change. JSON field names are the column names of the data model. Every write that
//! changes how a tenant's bot behaves commits first, then refreshes the tenant's cached
//! configuration everywhere ([`shared::cache::TenantConfigs::refresh`]); a write that
//! fails changes neither the database nor the cache.
//!
//! The operator console ([`crate::console`]) is served beside it, on the same listener.
//!
//! The OpenAPI document at `/openapi.json` ([`crate::openapi`]) is generated from the
//! handlers' annotations.

pub(crate) mod audit;
mod auth;
pub(crate) mod clients;
pub(crate) mod config;
pub(crate) mod conversations;
pub(crate) mod credentials;
pub(crate) mod end_users;
pub(crate) mod inbox;
pub(crate) mod knowledge;
pub(crate) mod llm_credentials;
pub(crate) mod replays;
pub(crate) mod tools;
pub(crate) mod webhooks;
pub(crate) mod whoami;

use axum::middleware;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use shared::cache::MailboxWatch;
use shared::db::Client;
use shared::ids::{Channel, UnknownChannel};

use crate::AppState;
use crate::error::{ApiError, Result};

use auth::{masked, noted};

/// A value as the audit log records it.
fn audited(value: impl serde::Serialize) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

pub(crate) fn routes(state: AppState) -> Router<AppState> {
    let admin = Router::new()
        .merge(clients::routes())
        .merge(config::routes())
        .merge(credentials::routes())
        .merge(conversations::routes())
        .merge(end_users::routes())
        .merge(knowledge::routes())
        .merge(llm_credentials::routes())
        .merge(tools::routes())
        .merge(webhooks::routes())
        .merge(audit::routes())
        .merge(inbox::routes())
        .merge(replays::routes())
        .merge(whoami::routes())
        .route_layer(middleware::from_fn_with_state(state, auth::require_admin));
    Router::new()
        .merge(admin)
        .merge(crate::console::routes())
        .route("/openapi.json", get(|| async { Json(crate::openapi()) }))
}

/// Finds a tenant by numeric id or by slug; 404 when there is none.
async fn resolve(state: &AppState, id_or_slug: &str) -> Result<Client> {
    let found = match id_or_slug.parse::<u64>() {
        Ok(id) => {
            state
                .db()
                .clients()
                .get(shared::ids::ClientId::new(id))
                .await?
        }
        Err(_) => state.db().clients().by_slug(id_or_slug).await?,
    };
    found.ok_or_else(|| ApiError::not_found(format!("no client {id_or_slug:?}")))
}

/// A `channel` field or parameter: one of the four channels, else 422 naming them.
fn channel_param(raw: &str) -> Result<Channel> {
    raw.parse()
        .map_err(|e: UnknownChannel| ApiError::invalid(format!("channel: {e}")))
}

/// Longest an admin read waits for a change (`?wait=`; inside `http.request_timeout_s`).
const MAX_WAIT_S: u64 = 25;

/// `?wait=` of an admin read that can wait for a change: 0-25 seconds.
fn wait_param(raw: Option<u64>) -> Result<std::time::Duration> {
    let wait = raw.unwrap_or(0);
    if wait > MAX_WAIT_S {
        return Err(ApiError::invalid(format!(
            "wait must be 0-{MAX_WAIT_S} seconds"
        )));
    }
    Ok(std::time::Duration::from_secs(wait))
}

/// Waits until `watch` (registered before the caller read what it shows) is woken or
/// `wait` passed; false when the ingress is shutting down instead.
async fn until_changed(state: &AppState, watch: &MailboxWatch, wait: std::time::Duration) -> bool {
    tokio::select! {
        _ = watch.changed() => true,
        _ = tokio::time::sleep(wait) => true,
        _ = state.shutdown().cancelled() => false,
    }
}

/// `?after=&limit=` of listings.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct Page {
    /// Return items after this id (the `next_after` of the previous page).
    #[serde(default)]
    after: Option<u64>,
    /// 1-200, default 50.
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

impl Page {
    fn bounds(&self) -> Result<(u64, u32)> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=200).contains(&limit) {
            return Err(ApiError::invalid("limit must be 1-200"));
        }
        Ok((self.after.unwrap_or(0), limit))
    }
}

/// Reads a JSON request body (at most 64 KiB).
async fn body<T: serde::de::DeserializeOwned>(body: axum::body::Body) -> Result<T> {
    let bytes = crate::channels::read_body(body, 64 * 1024).await?;
    crate::error::parse_json(&bytes)
}
