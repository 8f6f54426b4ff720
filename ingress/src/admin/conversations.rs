//! `/admin/v1/clients/{id}/conversations`: what the bot said, with token counts and the
//! `config_version` each reply was produced with; human agents write into a conversation,
//! take it over and hand it back.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::cache::MailboxKey;
use shared::db::ConversationMode;
use shared::db::ConversationSummary;
use shared::envelope::{Destination, Event, EventKind, Reply, ReplyKind, Template};
use shared::ids::{Channel, ClientId, ConversationId, ReplyId};
use shared::mq::ReplyRoute;
use shared::pii::Pii;
use shared::webhooks::{EventType, NewEvent};
use uuid::Uuid;

use super::{Page, body, channel_param, resolve, until_changed, wait_param};
use crate::AppState;
use crate::error::{ApiError, Result};
use crate::extract::{Path, Query};
use crate::wire::ConversationOut;

/// Most messages shown with one conversation.
const MESSAGES: u32 = 500;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/clients/{id}/conversations", get(list))
        .route(
            "/admin/v1/clients/{id}/conversations/{conversation_id}",
            get(get_one),
        )
        .route(
            "/admin/v1/clients/{id}/conversations/{conversation_id}/messages",
            post(agent_message),
        )
        .route(
            "/admin/v1/clients/{id}/conversations/{conversation_id}/template",
            post(template_message),
        )
        .route(
            "/admin/v1/clients/{id}/conversations/{conversation_id}/handoff",
            post(hand_to_human),
        )
        .route(
            "/admin/v1/clients/{id}/conversations/{conversation_id}/resume",
            post(resume),
        )
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ConversationPage {
    conversations: Vec<ConversationOut>,
    /// Oldest first: pass as `after` for the next page; absent on the last page.
    next_after: Option<u64>,
    /// Newest first: pass as `before` for the next page; absent on the last page.
    next_before: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ConversationDetail {
    #[serde(flatten)]
    conversation: ConversationOut,
    /// The last 500 messages, oldest first.
    messages: Vec<crate::wire::MessageOut>,
    /// The last 500 tool calls its turns made, oldest first.
    tool_calls: Vec<crate::wire::ToolCallOut>,
}

/// How a tenant's conversations are listed: `?order=newest` pages back from `before`
/// (newest first); the default pages forward from `after` (oldest first).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct ListQuery {
    /// `oldest` (the default) or `newest`.
    #[serde(default)]
    order: Option<String>,
    /// With `order=newest`: return conversations before this id (the `next_before` of
    /// the previous page).
    #[serde(default)]
    before: Option<u64>,
    /// Only conversations on this channel (`api`, `widget`, `mobile`, `whatsapp`).
    #[serde(default)]
    channel: Option<String>,
    /// Only conversations in this mode (`bot` or `human`).
    #[serde(default)]
    mode: Option<String>,
}

/// The client's conversations: oldest first by default, or newest first, optionally
/// of one channel and mode.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/conversations", params(("id" = String, Path, description = "client id or slug"), Page, ListQuery),
    security(("admin_token" = [])), responses((status = 200, body = ConversationPage), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
    Query(query): Query<ListQuery>,
) -> Result<Json<ConversationPage>> {
    let client = resolve(&state, &id).await?;
    let (after, limit) = page.bounds()?;
    let channel = query.channel.as_deref().map(channel_param).transpose()?;
    let mode = query
        .mode
        .as_deref()
        .map(|m| {
            m.parse::<ConversationMode>()
                .map_err(|_| ApiError::invalid(format!("mode must be bot or human; got {m:?}")))
        })
        .transpose()?;
    let conversations = state.db().tenant(client.id).conversations();
    let newest_first = match query.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "order must be oldest or newest; got {other:?}"
            )));
        }
    };
    // A full page has a next one; its cursor is the last id read (before filtering, in
    // the oldest-first order, so a page of filtered-out rows does not end the listing).
    let cursor = |read: &[ConversationSummary]| {
        (read.len() == limit as usize)
            .then(|| read.last().map(|c| c.id.get()))
            .flatten()
    };
    let (found, next_after, next_before) = if newest_first {
        let before = query.before.unwrap_or(u64::MAX);
        let found = conversations.newest(before, limit, channel, mode).await?;
        let next = cursor(&found);
        (found, None, next)
    } else {
        if query.before.is_some() {
            return Err(ApiError::invalid("before goes with order=newest"));
        }
        let mut found = conversations.list(after, limit).await?;
        let next = cursor(&found);
        found.retain(|c| {
            channel.is_none_or(|ch| c.channel == ch) && mode.is_none_or(|m| c.mode == m)
        });
        (found, next, None)
    };
    Ok(Json(ConversationPage {
        conversations: found.into_iter().map(Into::into).collect(),
        next_after,
        next_before,
    }))
}

/// `?wait=&after_seq=` of a conversation's page: how the console follows it live.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct LiveQuery {
    /// Seconds (0-25) to wait for a message after `after_seq` before answering.
    #[serde(default)]
    #[param(maximum = 25)]
    wait: Option<u64>,
    /// The highest mailbox position (`seq`) the caller has.
    #[serde(default)]
    after_seq: Option<u64>,
}

/// One conversation with its messages. With `wait` and `after_seq` (the console's live
/// view): at once when the mailbox holds a message after `after_seq`, else when the
/// conversation changes (a reply, an agent's message, a change of mode, a user's
/// message while a human answers) or `wait` seconds passed, read anew either way.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/conversations/{conversation_id}",
    params(("id" = String, Path, description = "client id or slug"), ("conversation_id" = u64, Path), LiveQuery),
    security(("admin_token" = [])), responses((status = 200, body = ConversationDetail), (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    Path((id, conversation)): Path<(String, u64)>,
    Query(live): Query<LiveQuery>,
) -> Result<Json<ConversationDetail>> {
    let client = resolve(&state, &id).await?;
    let wait = wait_param(live.wait)?;
    let found = summary(&state, client.id, conversation).await?;
    let after_seq = match live.after_seq {
        Some(after_seq) if !wait.is_zero() => after_seq,
        _ => return Ok(Json(detail(&state, client.id, found, MESSAGES).await?)),
    };
    // Held while waiting, like a channel's long-poll.
    let _permit = crate::longpoll::permit(&state)?;
    let key = MailboxKey::new(client.id, found.channel, &found.external_id);
    // Registered before the read: nothing announced in between is missed.
    let watch = state.mailboxes().watch(&key);
    let shown = detail(&state, client.id, found, MESSAGES).await?;
    let newest = shown.messages.iter().filter_map(|m| m.seq).max();
    if newest.is_some_and(|seq| seq > after_seq) {
        return Ok(Json(shown));
    }
    // Read anew once something is announced (a reply, an agent's message, a change of
    // mode, a user's message while a human answers) or the wait is over (what changes
    // unannounced: delivery marks, a user's message before its turn).
    if !until_changed(&state, &watch, wait).await {
        return Ok(Json(shown));
    }
    let current = summary(&state, client.id, conversation).await?;
    Ok(Json(detail(&state, client.id, current, MESSAGES).await?))
}

/// Wakes whoever follows the conversation: the console's live views (and the channel's
/// long-polls, which read the mailbox again and find what they found before, or more).
async fn announce(state: &AppState, client_id: ClientId, conv: &ConversationSummary) {
    let key = MailboxKey::new(client_id, conv.channel, &conv.external_id);
    if let Err(e) = state.mailboxes().announce(&key).await {
        tracing::warn!(error = %e, "could not announce the conversation's change");
    }
}

/// A conversation with its last `limit` messages and tool calls.
pub(super) async fn detail(
    state: &AppState,
    client_id: ClientId,
    summary: ConversationSummary,
    limit: u32,
) -> Result<ConversationDetail> {
    let tenant = state.db().tenant(client_id);
    let messages = tenant.messages().in_conversation(summary.id, limit).await?;
    let tool_calls = tenant
        .tool_calls()
        .for_conversation(summary.id, limit)
        .await?;
    Ok(ConversationDetail {
        conversation: summary.into(),
        messages: messages.into_iter().map(Into::into).collect(),
        tool_calls: tool_calls.into_iter().map(Into::into).collect(),
    })
}

/// The agent's message was stored and is on its way to the user.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AgentMessageAccepted {
    /// The id the message is stored (and delivered) under.
    message_id: Uuid,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentMessageBody {
    text: String,
}

async fn summary(
    state: &AppState,
    client_id: ClientId,
    conversation: u64,
) -> Result<ConversationSummary> {
    state
        .db()
        .tenant(client_id)
        .conversations()
        .get(ConversationId::new(conversation))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no conversation {conversation}")))
}

/// Send a message as a human agent; it is delivered like a reply (role `agent`).
#[utoipa::path(post, path = "/admin/v1/clients/{id}/conversations/{conversation_id}/messages",
    params(("id" = String, Path, description = "client id or slug"), ("conversation_id" = u64, Path)),
    request_body = AgentMessageBody, security(("admin_token" = [])),
    responses((status = 202, body = AgentMessageAccepted), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn agent_message(
    State(state): State<AppState>,
    Path((id, conversation)): Path<(String, u64)>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let conv = summary(&state, client.id, conversation).await?;
    let req: AgentMessageBody = body(raw).await?;
    let text = req.text.trim().to_owned();
    if text.is_empty() || text.len() > state.api().max_text_bytes {
        return Err(ApiError::invalid("text must be 1-16384 bytes"));
    }
    send_as_agent(&state, client.id, &conv, text, None).await
}

/// A WhatsApp template message: by name and language as approved in WhatsApp Manager,
/// with its parameters in Graph's `components` form.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TemplateBody {
    #[schema(example = "order_update")]
    name: String,
    #[schema(example = "en_US")]
    language: String,
    /// Graph's `components` (header, body and button parameters), passed as given.
    #[schema(value_type = Option<Vec<Object>>)]
    components: Option<serde_json::Value>,
}

/// Send a WhatsApp template message as a human agent: it goes out even when the
/// 24-hour window is closed, and is stored as an agent message.
#[utoipa::path(post, path = "/admin/v1/clients/{id}/conversations/{conversation_id}/template",
    params(("id" = String, Path, description = "client id or slug"), ("conversation_id" = u64, Path)),
    request_body = TemplateBody, security(("admin_token" = [])),
    responses((status = 202, body = AgentMessageAccepted), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn template_message(
    State(state): State<AppState>,
    Path((id, conversation)): Path<(String, u64)>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let conv = summary(&state, client.id, conversation).await?;
    let req: TemplateBody = body(raw).await?;
    if conv.channel != Channel::Whatsapp {
        return Err(ApiError::invalid(format!(
            "templates are WhatsApp's; conversation {} is on {}",
            conv.id,
            conv.channel.as_str()
        )));
    }
    let template = Template {
        name: req.name,
        language: req.language,
        components: req.components,
    };
    if let Some(problem) = template.problem() {
        return Err(ApiError::invalid(problem));
    }
    let text = template.as_text();
    send_as_agent(&state, client.id, &conv, text, Some(template)).await
}

/// Stores a human agent's message, announces it and queues it for the channel.
async fn send_as_agent(
    state: &AppState,
    client_id: ClientId,
    conv: &ConversationSummary,
    text: String,
    template: Option<Template>,
) -> Result<Response> {
    let reply_id = ReplyId::random();
    state
        .db()
        .tenant(client_id)
        .messages()
        .store_agent_message(conv.id, reply_id, &text)
        .await?;
    let mut announced = NewEvent::about(EventType::MessageAgent, reply_id)
        .in_conversation(conv.id, conv.channel)
        .with("message_id", reply_id.to_string())
        .with("external_id", conv.external_id.clone())
        .with("text", text.clone());
    if let Some(t) = &template {
        announced = announced.with("template", serde_json::to_value(t).unwrap_or_default());
    }
    state
        .webhooks()
        .emit(client_id, announced)
        .await
        .map_err(|e| ApiError::broker_unavailable(&e))?;
    let version = state
        .db()
        .tenant(client_id)
        .configs()
        .get()
        .await?
        .map_or(0, |c| c.config_version);
    let to = Destination {
        client_id,
        channel: conv.channel,
        external_id: Pii::new(conv.external_id.clone()),
        channel_account: None,
        conversation_id: Some(conv.id),
    };
    let reply = Reply {
        id: reply_id,
        template,
        ..Reply::answering(to, Vec::new(), ReplyKind::Agent, text, version)
    };
    // Unconfirmed, it stays in the outbox: the conversation's next turn publishes it.
    state
        .publisher()
        .publish_reply(&reply, ReplyRoute::Channel, None)
        .await
        .map_err(|e| ApiError::broker_unavailable(&e))?;
    state
        .db()
        .tenant(client_id)
        .messages()
        .mark_published(&[reply_id])
        .await?;
    // In the mailbox since it was stored: other operators see it at once.
    announce(state, client_id, conv).await;
    Ok((
        StatusCode::ACCEPTED,
        Json(AgentMessageAccepted {
            message_id: *reply_id.as_uuid(),
        }),
    )
        .into_response())
}

/// Hand the conversation to a human agent: the bot stops answering it.
#[utoipa::path(post, path = "/admin/v1/clients/{id}/conversations/{conversation_id}/handoff",
    params(("id" = String, Path, description = "client id or slug"), ("conversation_id" = u64, Path)),
    security(("admin_token" = [])), responses((status = 200, body = ConversationOut), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn hand_to_human(
    State(state): State<AppState>,
    Path((id, conversation)): Path<(String, u64)>,
) -> Result<Json<ConversationOut>> {
    switch(
        &state,
        &id,
        conversation,
        ConversationMode::Human,
        EventKind::Handoff,
    )
    .await
}

/// Hand the conversation back to the bot.
#[utoipa::path(post, path = "/admin/v1/clients/{id}/conversations/{conversation_id}/resume",
    params(("id" = String, Path, description = "client id or slug"), ("conversation_id" = u64, Path)),
    security(("admin_token" = [])), responses((status = 200, body = ConversationOut), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn resume(
    State(state): State<AppState>,
    Path((id, conversation)): Path<(String, u64)>,
) -> Result<Json<ConversationOut>> {
    switch(
        &state,
        &id,
        conversation,
        ConversationMode::Bot,
        EventKind::HandedBack,
    )
    .await
}

async fn switch(
    state: &AppState,
    id: &str,
    conversation: u64,
    mode: ConversationMode,
    kind: EventKind,
) -> Result<Json<ConversationOut>> {
    let client = resolve(state, id).await?;
    let conv = summary(state, client.id, conversation).await?;
    if state
        .db()
        .tenant(client.id)
        .conversations()
        .set_mode(conv.id, mode)
        .await?
    {
        let event = Event::new(kind, client.id, conv.id, conv.channel);
        state
            .publisher()
            .publish_event(&event)
            .await
            .map_err(|e| ApiError::broker_unavailable(&e))?;
        let webhook_type = match mode {
            ConversationMode::Human => EventType::ConversationHandoff,
            ConversationMode::Bot => EventType::ConversationHandedBack,
        };
        state
            .webhooks()
            .emit(
                client.id,
                NewEvent::about(webhook_type, event.id).in_conversation(conv.id, conv.channel),
            )
            .await
            .map_err(|e| ApiError::broker_unavailable(&e))?;
        announce(state, client.id, &conv).await;
        if let Err(e) = state.mailboxes().announce_handoffs().await {
            tracing::warn!(error = %e, "could not wake the handoff inbox");
        }
    }
    Ok(Json(summary(state, client.id, conversation).await?.into()))
}
