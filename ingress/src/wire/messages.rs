//! A conversation's messages as the admin API shows them and as long-polls hand them out.

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::db::{DeliveryStatus, MailboxItem, MessageState, Role, StoredMessage};
use shared::envelope::ReplyKind;
use uuid::Uuid;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum MessageRole {
    User,
    Assistant,
    Agent,
    System,
}

impl From<Role> for MessageRole {
    fn from(role: Role) -> Self {
        match role {
            Role::User => Self::User,
            Role::Assistant => Self::Assistant,
            Role::Agent => Self::Agent,
            Role::System => Self::System,
        }
    }
}

/// A stored message with its bookkeeping (admin API).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MessageOut {
    pub id: u64,
    pub envelope_id: Uuid,
    pub role: MessageRole,
    pub content: String,
    /// `pending`, `answered`, `failed` or `ignored` for a user message; `stored` for a
    /// reply or an agent's message.
    #[schema(example = "answered")]
    pub state: &'static str,
    /// `bot`, `agent`, `handoff_notice` or `fallback`, for a reply.
    #[schema(example = "bot")]
    pub reply_kind: Option<&'static str>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub estimated_prompt_tokens: Option<u32>,
    pub config_version: Option<u64>,
    /// The message's position in the conversation's mailbox.
    pub seq: Option<u64>,
    /// `sent`, `delivered`, `read` or `failed`, for a reply.
    #[schema(example = "delivered")]
    pub delivery_status: Option<&'static str>,
    /// The channel's id of the message (WhatsApp wamid), when it has one.
    pub channel_message_id: Option<String>,
    /// For an answered user message: the id of the reply that answered it.
    pub answered_by: Option<u64>,
    /// The choices a reply offers the user (`offer_choices`); absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// For a reply the model wrote: the provider and model that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm_provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm_model: Option<String>,
    /// `tenant` (the client's own key) or `platform`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "platform")]
    pub key_owner: Option<&'static str>,
    /// What the turn's LLM calls cost, in the prices' currency; null with `unpriced`
    /// true when a model had no price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unpriced: bool,
    /// Why a fallback answered instead of the client's model (`budget_exceeded`,
    /// `llm.credentials_failed: …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<StoredMessage> for MessageOut {
    fn from(m: StoredMessage) -> Self {
        Self {
            id: m.id,
            envelope_id: m.envelope_id,
            role: m.role.into(),
            content: m.content,
            state: MessageState::as_str(m.state),
            reply_kind: m.reply_kind.map(ReplyKind::as_str),
            prompt_tokens: m.prompt_tokens,
            completion_tokens: m.completion_tokens,
            estimated_prompt_tokens: m.estimated_prompt_tokens,
            config_version: m.config_version,
            seq: m.seq,
            delivery_status: m.delivery_status.map(DeliveryStatus::as_str),
            channel_message_id: m.channel_message_id,
            answered_by: m.answered_by,
            choices: m.choices,
            llm_provider: m.accounting.provider,
            llm_model: m.accounting.model,
            key_owner: m.accounting.key_owner.map(|k| k.as_str()),
            cost: m.accounting.cost_micros.map(|c| c as f64 / 1e6),
            unpriced: m.accounting.unpriced,
            fallback_reason: m.accounting.fallback_reason,
            created_at: m.created_at,
        }
    }
}

/// One message a long-poll hands out.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PolledMessage {
    /// The message's id (a user message's `message_id`, a reply's id).
    pub id: Uuid,
    pub role: MessageRole,
    pub text: String,
    /// The choices a reply offers the user (`offer_choices`): show them as buttons that
    /// send the choice's text. Absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    pub created_at: DateTime<Utc>,
}

impl From<MailboxItem> for PolledMessage {
    fn from(item: MailboxItem) -> Self {
        Self {
            id: item.id,
            role: item.role.into(),
            text: item.text,
            choices: item.choices,
            created_at: item.created_at,
        }
    }
}

/// A long-poll's answer: messages after the cursor, ascending, and the cursor to send
/// as `after` next time.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PolledMessages {
    pub messages: Vec<PolledMessage>,
    pub cursor: String,
}
