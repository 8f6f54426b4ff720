//! Conversations: one per tenant, channel and channel-side key (`external_id`).

use sqlx::mysql::MySqlPool;

use super::guard;
use crate::error::Result;
use crate::ids::{Channel, ClientId, ConversationId};

/// Who answers a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationMode {
    Bot,
    Human,
}

#[derive(Debug)]
pub struct Conversations<'a> {
    pool: &'a MySqlPool,
}

impl<'a> Conversations<'a> {
    pub(super) fn new(pool: &'a MySqlPool) -> Self {
        Self { pool }
    }

    /// The conversation for this key, created on first use. Safe under concurrency: the
    /// unique key decides, and `LAST_INSERT_ID(id)` returns the existing row's id.
    pub async fn get_or_create(
        &self,
        client_id: ClientId,
        channel: Channel,
        external_id: &str,
    ) -> Result<ConversationId> {
        let done = guard::query(
            "INSERT INTO conversations (client_id, channel, external_id) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
        )?
        .bind(client_id.get())
        .bind(channel.as_str())
        .bind(external_id)
        .execute(self.pool)
        .await?;
        Ok(ConversationId::new(done.last_insert_id()))
    }

    /// The conversation for this key, if it exists yet.
    pub async fn find(
        &self,
        client_id: ClientId,
        channel: Channel,
        external_id: &str,
    ) -> Result<Option<ConversationId>> {
        let id: Option<u64> = guard::query_scalar(
            "SELECT id FROM conversations WHERE client_id = ? AND channel = ? AND external_id = ?",
        )?
        .bind(client_id.get())
        .bind(channel.as_str())
        .bind(external_id)
        .fetch_optional(self.pool)
        .await?;
        Ok(id.map(ConversationId::new))
    }

    pub async fn mode(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
    ) -> Result<ConversationMode> {
        let mode: Option<String> =
            guard::query_scalar("SELECT mode FROM conversations WHERE client_id = ? AND id = ?")?
                .bind(client_id.get())
                .bind(conversation_id.get())
                .fetch_optional(self.pool)
                .await?;
        Ok(match mode.as_deref() {
            Some("human") => ConversationMode::Human,
            _ => ConversationMode::Bot,
        })
    }
}
