//! Reading a conversation as its readers see it: a long-poll's mailbox entries after a
//! position, and the admin API's messages with their bookkeeping. Reads only.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::mysql::MySqlRow;
use uuid::Uuid;

use super::{DeliveryStatus, MessageState, Messages, Role};
use crate::db::guard;
use crate::envelope::ReplyKind;
use crate::error::Result;
use crate::ids::ConversationId;

/// A stored message with its bookkeeping (what the admin API shows).
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub id: u64,
    pub envelope_id: Uuid,
    pub role: Role,
    pub content: String,
    pub state: MessageState,
    pub reply_kind: Option<ReplyKind>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub estimated_prompt_tokens: Option<u32>,
    pub config_version: Option<u64>,
    pub seq: Option<u64>,
    pub delivery_status: Option<DeliveryStatus>,
    /// The channel's id of the message (WhatsApp wamid), when it has one.
    pub channel_message_id: Option<String>,
    /// For an answered user message: the id of the reply that answered it.
    pub answered_by: Option<u64>,
    /// The choices a reply offers (`offer_choices`); empty: none.
    pub choices: Vec<String>,
    /// For a reply: who answered, what it cost, why a fallback answered (`day` unset).
    pub accounting: super::ReplyAccounting,
    pub created_at: DateTime<Utc>,
}

/// One mailbox entry, as a long-poll returns it.
#[derive(Debug, Clone)]
pub struct MailboxItem {
    /// Its position in the mailbox (the long-poll's cursor).
    pub seq: u64,
    pub id: Uuid,
    pub role: Role,
    pub text: String,
    /// The choices a reply offers (`offer_choices`); empty: none.
    pub choices: Vec<String>,
    pub created_at: DateTime<Utc>,
}

impl Messages<'_> {
    /// The last `limit` messages of a conversation, oldest first.
    pub async fn in_conversation(
        &self,
        conversation_id: ConversationId,
        limit: u32,
    ) -> Result<Vec<StoredMessage>> {
        let client_id = self.client_id;
        let rows = guard::query(
            "SELECT id, envelope_id, role, content, state, reply_kind, prompt_tokens, \
             completion_tokens, estimated_prompt_tokens, config_version, seq, delivery_status, \
             channel_message_id, reply_message_id, choices, llm_provider, llm_model, \
             key_owner, cost_micros, fallback_reason, created_at FROM messages \
             WHERE client_id = ? AND conversation_id = ? \
             ORDER BY id DESC LIMIT ?",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(limit)
        .fetch_all(self.pool.get().await?)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(StoredMessage {
                    id: r.try_get("id")?,
                    envelope_id: r.try_get("envelope_id")?,
                    role: r.try_get("role")?,
                    content: r.try_get("content")?,
                    state: r.try_get("state")?,
                    reply_kind: r.try_get("reply_kind")?,
                    prompt_tokens: r.try_get("prompt_tokens")?,
                    completion_tokens: r.try_get("completion_tokens")?,
                    estimated_prompt_tokens: r.try_get("estimated_prompt_tokens")?,
                    config_version: r.try_get("config_version")?,
                    answered_by: r.try_get("reply_message_id")?,
                    seq: r.try_get("seq")?,
                    delivery_status: r.try_get("delivery_status")?,
                    channel_message_id: r.try_get("channel_message_id")?,
                    choices: choices(r)?,
                    accounting: {
                        let provider: Option<String> = r.try_get("llm_provider")?;
                        let cost_micros: Option<u64> = r.try_get("cost_micros")?;
                        super::ReplyAccounting {
                            day: None,
                            unpriced: provider.is_some() && cost_micros.is_none(),
                            provider,
                            model: r.try_get("llm_model")?,
                            key_owner: r.try_get("key_owner")?,
                            cost_micros,
                            fallback_reason: r.try_get("fallback_reason")?,
                        }
                    },
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    /// Mailbox entries after position `after`, ascending, at most `limit`.
    pub async fn mailbox_after(
        &self,
        conversation_id: ConversationId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<MailboxItem>> {
        let client_id = self.client_id;
        let rows = guard::query(
            "SELECT seq, envelope_id, role, content, choices, created_at \
             FROM messages FORCE INDEX (uq_messages_seq) \
             WHERE client_id = ? AND conversation_id = ? AND seq > ? ORDER BY seq ASC LIMIT ?",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(after)
        .bind(limit);
        let rows = self
            .pool
            .direct()
            .await?
            .run(async move |conn| rows.fetch_all(conn).await)
            .await?;
        rows.iter().map(mailbox_item).collect()
    }
}

fn mailbox_item(row: &MySqlRow) -> Result<MailboxItem> {
    Ok(MailboxItem {
        seq: row.try_get("seq")?,
        id: row.try_get("envelope_id")?,
        role: row.try_get("role")?,
        text: row.try_get("content")?,
        choices: choices(row)?,
        created_at: row.try_get("created_at")?,
    })
}

/// The `choices` column: a JSON array of strings, or NULL.
pub(super) fn choices(row: &MySqlRow) -> Result<Vec<String>> {
    let stored: Option<String> = row.try_get("choices")?;
    stored
        .map(|c| {
            serde_json::from_str(&c)
                .map_err(|e| crate::Error::Internal(format!("stored choices are not JSON: {e}")))
        })
        .transpose()
        .map(Option::unwrap_or_default)
}
