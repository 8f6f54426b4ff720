//! `GET /admin/v1/audit?client=&after=&limit=`: the record of admin writes, oldest
//! first, optionally of one tenant (by id or slug; a deleted tenant's entries by id).

use axum::extract::State;

use crate::extract::Query;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::ids::ClientId;

use super::{Page, resolve};
use crate::AppState;
use crate::error::Result;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/admin/v1/audit", get(list))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct AuditQuery {
    /// Only entries about this client (id or slug).
    #[serde(default)]
    client: Option<String>,
}

/// One admin write.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AuditEntryOut {
    id: u64,
    at: DateTime<Utc>,
    /// The operator's name (`bootstrap` for the settings' admin.token).
    operator: String,
    method: String,
    /// The request path.
    route: String,
    client_id: Option<u64>,
    request_id: Option<String>,
    /// The HTTP status the write was answered with.
    status: u16,
    /// `{ before, after }` of configuration, mode, channel and key changes; secrets
    /// masked.
    #[schema(value_type = Option<Object>)]
    changes: Option<Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AuditPage {
    entries: Vec<AuditEntryOut>,
    /// Pass as `after` for the next page; absent on the last page.
    next_after: Option<u64>,
}

/// The audit log: every admin write, oldest first.
#[utoipa::path(get, path = "/admin/v1/audit", params(AuditQuery, Page), security(("admin_token" = [])),
    responses((status = 200, body = AuditPage), (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
    Query(page): Query<Page>,
) -> Result<Json<AuditPage>> {
    let (after, limit) = page.bounds()?;
    let tenant = match query.client.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(id) => match id.parse::<u64>() {
            Ok(id) => Some(ClientId::new(id)),
            Err(_) => Some(resolve(&state, id).await?.id),
        },
    };
    let entries = state.db().audit().list(tenant, after, limit).await?;
    let next_after = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditPage {
        entries: entries
            .into_iter()
            .map(|e| AuditEntryOut {
                id: e.id,
                at: e.at,
                operator: e.operator,
                method: e.method,
                route: e.route,
                client_id: e.tenant.map(ClientId::get),
                request_id: e.request_id,
                status: e.status,
                changes: e.changes,
            })
            .collect(),
        next_after,
    }))
}
