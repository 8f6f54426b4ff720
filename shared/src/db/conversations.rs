//! Conversations: one per tenant, channel and channel-side key (`external_id`).

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::mysql::{MySqlPool, MySqlRow};

use super::guard;
use super::text_column::text_column;
use crate::error::Result;
use crate::ids::{Channel, ClientId, ConversationId};

/// A conversation without its messages (what the admin API lists).
#[derive(Debug, Clone)]
pub struct ConversationSummary {
    pub id: ConversationId,
    pub channel: Channel,
    pub external_id: String,
    /// `open` or `closed`.
    pub status: String,
    pub mode: ConversationMode,
    pub created_at: DateTime<Utc>,
    pub last_message_at: Option<DateTime<Utc>>,
}

const SUMMARY: &str =
    "id, channel, external_id, status, mode, created_at, last_message_at FROM conversations";

/// Who answers a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationMode {
    Bot,
    Human,
}

text_column!(ConversationMode, "conversation mode", {
    Bot => "bot",
    Human => "human",
});

#[derive(Debug)]
pub struct Conversations<'a> {
    pool: &'a MySqlPool,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

impl<'a> Conversations<'a> {
    pub(super) fn new(pool: &'a MySqlPool, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }

    /// The conversation for this key, created on first use. Safe under concurrency: the
    /// unique key decides, and `LAST_INSERT_ID(id)` returns the existing row's id. An
    /// existing conversation (every message after the first) costs one read, not a write.
    pub async fn get_or_create(
        &self,
        channel: Channel,
        external_id: &str,
    ) -> Result<ConversationId> {
        let client_id = self.client_id;
        if let Some(found) = self.find(channel, external_id).await? {
            return Ok(found);
        }
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
        channel: Channel,
        external_id: &str,
    ) -> Result<Option<ConversationId>> {
        let client_id = self.client_id;
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

    /// Conversations by ascending id after `after_id`, at most `limit`.
    pub async fn list(&self, after_id: u64, limit: u32) -> Result<Vec<ConversationSummary>> {
        let client_id = self.client_id;
        let rows = guard::query(&format!(
            "SELECT {SUMMARY} WHERE client_id = ? AND id > ? ORDER BY id ASC LIMIT ?"
        ))?
        .bind(client_id.get())
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.pool)
        .await?;
        rows.iter().map(summary).collect()
    }

    pub async fn get(
        &self,
        conversation_id: ConversationId,
    ) -> Result<Option<ConversationSummary>> {
        let client_id = self.client_id;
        let row = guard::query(&format!("SELECT {SUMMARY} WHERE client_id = ? AND id = ?"))?
            .bind(client_id.get())
            .bind(conversation_id.get())
            .fetch_optional(self.pool)
            .await?;
        row.as_ref().map(summary).transpose()
    }

    /// Switches who answers; returns whether the mode changed. Takes the conversation
    /// row's lock, so it orders against `Messages::store_reply`.
    pub async fn set_mode(
        &self,
        conversation_id: ConversationId,
        mode: ConversationMode,
    ) -> Result<bool> {
        let client_id = self.client_id;
        let done = guard::query(
            "UPDATE conversations SET mode = ? WHERE client_id = ? AND id = ? AND mode <> ?",
        )?
        .bind(mode)
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(mode)
        .execute(self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn summary(r: &MySqlRow) -> Result<ConversationSummary> {
    let channel: String = r.try_get("channel")?;
    // A utf8mb4_bin column: the driver hands it over as bytes.
    let external: Vec<u8> = r.try_get("external_id")?;
    Ok(ConversationSummary {
        id: ConversationId::new(r.try_get("id")?),
        channel: channel
            .parse()
            .map_err(|e: crate::ids::UnknownChannel| crate::Error::Invalid(e.to_string()))?,
        external_id: String::from_utf8_lossy(&external).into_owned(),
        status: r.try_get("status")?,
        mode: r.try_get("mode")?,
        created_at: r.try_get("created_at")?,
        last_message_at: r.try_get("last_message_at")?,
    })
}
