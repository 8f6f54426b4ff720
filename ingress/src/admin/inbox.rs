//! `GET /admin/v1/handoffs`: the handoff inbox, every conversation a human answers across
//! the tenants, longest waiting first (read from every database shard at once; a shard
//! that cannot be read is named in the answer and the others are still listed). With
//! `wait` and the `version` of the list the caller shows, it answers once a conversation
//! is handed over or back (announced on every replica) or the wait is over.

use std::collections::HashMap;
use std::collections::hash_map::{DefaultHasher, Entry};
use std::hash::{Hash, Hasher};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::ids::ClientId;

use super::{until_changed, wait_param};
use crate::AppState;
use crate::error::{ApiError, Result};
use crate::extract::Query;
use crate::wire::ConversationOut;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/admin/v1/handoffs", get(list))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct InboxQuery {
    /// 1-500, default 200.
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Seconds (0-25) to wait for a change while the list is still `seen`.
    #[serde(default)]
    #[param(maximum = 25)]
    wait: Option<u64>,
    /// The `version` of the list the caller has.
    #[serde(default)]
    seen: Option<String>,
}

/// A conversation waiting for (or with) a human agent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct WaitingOut {
    client_id: u64,
    client_slug: String,
    client_name: String,
    conversation: ConversationOut,
    /// When the conversation was handed to a human.
    waiting_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Inbox {
    /// Longest waiting first.
    conversations: Vec<WaitingOut>,
    /// Database shards that could not be read (their conversations are missing).
    unavailable_shards: Vec<String>,
    /// Names this list: pass it as `seen` to wait for the next change.
    version: String,
}

/// Every conversation a human answers, longest waiting first; with `wait` and `seen`,
/// once the list differs from the one seen or a conversation changes hands.
#[utoipa::path(get, path = "/admin/v1/handoffs", params(InboxQuery), security(("admin_token" = [])),
    responses((status = 200, body = Inbox), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(query): Query<InboxQuery>,
) -> Result<Json<Inbox>> {
    let limit = query.limit.unwrap_or(200);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1-500"));
    }
    let wait = wait_param(query.wait)?;
    // Registered before the read: a change in between is not missed.
    let watch = state.mailboxes().watch_handoffs();
    let inbox = read(&state, limit).await?;
    let unchanged = query.seen.as_deref() == Some(inbox.version.as_str());
    if wait.is_zero() || !unchanged || !until_changed(&state, &watch, wait).await {
        return Ok(Json(inbox));
    }
    Ok(Json(read(&state, limit).await?))
}

async fn read(state: &AppState, limit: u32) -> Result<Inbox> {
    let (waiting, unavailable_shards) = state.db().waiting_for_humans(limit).await;
    let mut listed = DefaultHasher::new();
    let mut tenants: HashMap<ClientId, Option<(String, String)>> = HashMap::new();
    let mut conversations = Vec::with_capacity(waiting.len());
    for w in waiting {
        let names = match tenants.entry(w.client_id) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => {
                let client = state.db().clients().get(w.client_id).await?;
                new.insert(client.map(|c| (c.slug, c.name)))
            }
        };
        // A tenant deleted since the read: its conversations went with it.
        let Some((slug, name)) = names else {
            continue;
        };
        (w.client_id, w.conversation.id, w.waiting_since).hash(&mut listed);
        conversations.push(WaitingOut {
            client_id: w.client_id.get(),
            client_slug: slug.clone(),
            client_name: name.clone(),
            conversation: w.conversation.into(),
            waiting_since: w.waiting_since,
        });
    }
    unavailable_shards.hash(&mut listed);
    Ok(Inbox {
        conversations,
        unavailable_shards,
        version: format!("{:016x}", listed.finish()),
    })
}
