//! `/admin/v1/clients/{id}/conversations`: what the bot said, with token counts and the
//! `config_version` each reply was produced with.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use shared::db::{ConversationSummary, StoredMessage};
use shared::ids::ConversationId;

use super::{Page, resolve};
use crate::AppState;
use crate::error::{ApiError, Result};

/// Most messages shown with one conversation.
const MESSAGES: u32 = 500;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/clients/{id}/conversations", get(list))
        .route(
            "/admin/v1/clients/{id}/conversations/{conversation_id}",
            get(get_one),
        )
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ConversationPage {
    conversations: Vec<ConversationSummary>,
    next_after: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ConversationDetail {
    #[serde(flatten)]
    conversation: ConversationSummary,
    /// The last 500 messages, oldest first.
    messages: Vec<StoredMessage>,
}

/// The client's conversations by ascending id.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/conversations", params(("id" = String, Path, description = "client id or slug"), Page),
    security(("admin_token" = [])), responses((status = 200, body = ConversationPage)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<ConversationPage>> {
    let client = resolve(&state, &id).await?;
    let (after, limit) = page.bounds()?;
    let conversations = state
        .db()
        .conversations()
        .list(client.id, after, limit)
        .await?;
    let next_after = (conversations.len() == limit as usize)
        .then(|| conversations.last().map(|c| c.id.get()))
        .flatten();
    Ok(Json(ConversationPage {
        conversations,
        next_after,
    }))
}

/// One conversation with its messages.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/conversations/{conversation_id}",
    params(("id" = String, Path, description = "client id or slug"), ("conversation_id" = u64, Path)),
    security(("admin_token" = [])), responses((status = 200, body = ConversationDetail), (status = 404, body = super::ErrorBody)))]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    Path((id, conversation)): Path<(String, u64)>,
) -> Result<Json<ConversationDetail>> {
    let client = resolve(&state, &id).await?;
    let conversation_id = ConversationId::new(conversation);
    let summary = state
        .db()
        .conversations()
        .get(client.id, conversation_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no conversation {conversation}")))?;
    let messages = state
        .db()
        .messages()
        .in_conversation(client.id, conversation_id, MESSAGES)
        .await?;
    Ok(Json(ConversationDetail {
        conversation: summary,
        messages,
    }))
}
