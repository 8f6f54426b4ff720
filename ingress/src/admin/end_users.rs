//! An end user's rights over what a tenant's bot holds of them: erasure
//! (`DELETE …/conversations/{conversation_id}`, `DELETE …/end-users?channel=&external_id=`)
//! and access (`GET …/end-users/export?channel=&external_id=`). Erasure goes through
//! [`shared::erasure::erase_conversation`]: the database, every replica's cached ids, the
//! tenant's `end_user.erased` event.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::ids::{Channel, ClientId, ConversationId};

use super::conversations::{ConversationDetail, detail};
use super::{noted, resolve};
use crate::AppState;
use crate::error::{ApiError, Result};
use crate::extract::{Path, Query};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/admin/v1/clients/{id}/conversations/{conversation_id}",
            delete(erase_conversation),
        )
        .route("/admin/v1/clients/{id}/end-users", delete(erase_end_user))
        .route("/admin/v1/clients/{id}/end-users/export", get(export))
}

/// An end user by channel and the channel's id of them (phone number, visitor id,
/// device id, the API's conversation id).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct EndUser {
    /// whatsapp | widget | mobile | api
    channel: String,
    external_id: String,
}

impl EndUser {
    fn channel(&self) -> Result<Channel> {
        super::channel_param(&self.channel)
    }

    /// The end user's conversation on the channel, if there is one. A widget
    /// conversation is keyed by the visitor id's hash, as the widget keys it.
    async fn conversation(
        &self,
        state: &AppState,
        client_id: ClientId,
    ) -> Result<Option<ConversationId>> {
        let channel = self.channel()?;
        let key = match channel {
            Channel::Widget => shared::secrets::visitor_key(&self.external_id),
            _ => self.external_id.clone(),
        };
        Ok(state
            .db()
            .tenant(client_id)
            .conversations()
            .find(channel, &key)
            .await?)
    }
}

/// What an erasure of an end user did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ErasedOut {
    /// Conversations erased (0: nothing was held).
    erased_conversations: u32,
}

/// Everything held of one end user on one channel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EndUserExport {
    channel: String,
    external_id: String,
    /// With every message (and its delivery status) and tool call.
    conversations: Vec<ConversationDetail>,
}

async fn erase(state: &AppState, client_id: ClientId, id: ConversationId) -> Result<bool> {
    let erased = shared::erasure::erase_conversation(
        state.db(),
        state.conversations(),
        state.webhooks(),
        client_id,
        id,
        "request",
    )
    .await?;
    Ok(erased.is_some())
}

/// Erase a conversation: its messages, transcripts, tool call records, the end user's
/// identifier and push token; usage counts stay. Idempotent.
#[utoipa::path(delete, path = "/admin/v1/clients/{id}/conversations/{conversation_id}",
    params(("id" = String, Path, description = "client id or slug"), ("conversation_id" = u64, Path)),
    security(("admin_token" = [])),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn erase_conversation(
    State(state): State<AppState>,
    Path((id, conversation)): Path<(String, u64)>,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    if !erase(&state, client.id, ConversationId::new(conversation)).await? {
        return Err(ApiError::not_found(format!(
            "no conversation {conversation}"
        )));
    }
    Ok(noted(
        StatusCode::NO_CONTENT,
        client.id,
        Some(serde_json::json!({ "conversation_id": conversation })),
        Some(serde_json::json!({ "erased": true })),
    ))
}

/// Erase everything of one end user on one channel. Idempotent: an end user of whom
/// nothing is held is `erased_conversations: 0`.
#[utoipa::path(delete, path = "/admin/v1/clients/{id}/end-users",
    params(("id" = String, Path, description = "client id or slug"), EndUser),
    security(("admin_token" = [])),
    responses((status = 200, body = ErasedOut), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn erase_end_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(user): Query<EndUser>,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let mut erased = 0;
    if let Some(conversation) = user.conversation(&state, client.id).await?
        && erase(&state, client.id, conversation).await?
    {
        erased += 1;
    }
    Ok(noted(
        Json(ErasedOut {
            erased_conversations: erased,
        }),
        client.id,
        Some(serde_json::json!({ "channel": user.channel })),
        Some(serde_json::json!({ "erased_conversations": erased })),
    ))
}

/// Everything held of one end user on one channel: conversations, messages with their
/// delivery status, tool calls. Nothing held: an empty list.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/end-users/export",
    params(("id" = String, Path, description = "client id or slug"), EndUser),
    security(("admin_token" = [])),
    responses((status = 200, body = EndUserExport), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn export(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(user): Query<EndUser>,
) -> Result<Json<EndUserExport>> {
    let client = resolve(&state, &id).await?;
    let mut conversations = Vec::new();
    if let Some(conversation) = user.conversation(&state, client.id).await?
        && let Some(summary) = state
            .db()
            .tenant(client.id)
            .conversations()
            .get(conversation)
            .await?
    {
        conversations.push(detail(&state, client.id, summary, u32::MAX).await?);
    }
    Ok(Json(EndUserExport {
        channel: user.channel,
        external_id: user.external_id,
        conversations,
    }))
}
