//! Erasing a conversation (an end user's right to erasure): its messages go (texts,
//! transcripts, channel message ids), its tool calls keep only their count (the usage of
//! the day they were made), its webhook events and their deliveries go, a mobile
//! device's push token goes, and the conversation row keeps its id and counters but no
//! longer the end user's identifier (`external_id` becomes `erased:<id>`) nor its data key
//! (the archive's and the dead-letter queue's sealed copies can no longer be opened). Usage counts
//! (`usage_daily`) stay. One transaction, under the conversation row's lock, which the
//! reply procedure takes too: a turn in flight finds its messages gone and stores nothing.
//! Erasing again changes nothing.

use sqlx::Row;

use super::Conversations;
use super::guard;
use crate::error::Result;
use crate::ids::{Channel, ConversationId};

/// What an erased conversation was (for the caches that knew it by its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    pub conversation_id: ConversationId,
    pub channel: Channel,
    /// The end user's identifier as it was (for the callers' caches, never logged).
    pub external_id: String,
}

/// The prefix of an erased conversation's `external_id`.
pub const ERASED_PREFIX: &str = "erased:";

impl Conversations<'_> {
    /// Erases the conversation; `None` when the tenant has no such conversation.
    pub async fn erase(&self, conversation_id: ConversationId) -> Result<Option<Erased>> {
        let client_id = self.client_id.get();
        let id = conversation_id.get();
        let mut tx = self.pool.get().await?.begin().await?;
        let Some(row) = guard::query(
            "SELECT channel, external_id FROM conversations WHERE client_id = ? AND id = ? \
             FOR UPDATE",
        )?
        .bind(client_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let channel: String = row.try_get("channel")?;
        let channel: Channel = channel
            .parse()
            .map_err(|e: crate::ids::UnknownChannel| crate::Error::Invalid(e.to_string()))?;
        // A binary column (utf8mb4_bin): read as bytes.
        let external_id: Vec<u8> = row.try_get("external_id")?;
        let external_id = String::from_utf8_lossy(&external_id).into_owned();
        for statement in [
            "DELETE FROM messages WHERE client_id = ? AND conversation_id = ?",
            "UPDATE tool_calls SET arguments = '', result = '' \
             WHERE client_id = ? AND conversation_id = ?",
            "DELETE FROM webhook_deliveries WHERE client_id = ? AND conversation_id = ?",
            "DELETE FROM webhook_events WHERE client_id = ? AND conversation_id = ?",
            "DELETE FROM conversation_keys WHERE client_id = ? AND conversation_id = ?",
        ] {
            guard::query(statement)?
                .bind(client_id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if channel == Channel::Mobile && !external_id.starts_with(ERASED_PREFIX) {
            guard::query("DELETE FROM mobile_devices WHERE client_id = ? AND device_id = ?")?
                .bind(client_id)
                .bind(&external_id)
                .execute(&mut *tx)
                .await?;
        }
        guard::query(
            "UPDATE conversations SET external_id = CONCAT('erased:', id), \
             channel_account = NULL, user_last_at = NULL, reengaged_for = NULL, \
             mode = 'bot', status = 'closed' WHERE client_id = ? AND id = ?",
        )?
        .bind(client_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(Erased {
            conversation_id,
            channel,
            external_id,
        }))
    }

    /// Conversations whose last message is older than `before`, not erased yet, at most
    /// `limit`, oldest first (what retention erases).
    pub async fn older_than(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<Vec<ConversationId>> {
        let ids: Vec<u64> = guard::query_scalar(
            "SELECT id FROM conversations WHERE client_id = ? \
             AND COALESCE(last_message_at, created_at) < ? AND external_id NOT LIKE 'erased:%' \
             ORDER BY id ASC LIMIT ?",
        )?
        .bind(self.client_id.get())
        .bind(before)
        .bind(limit)
        .fetch_all(self.pool.get().await?)
        .await?;
        Ok(ids.into_iter().map(ConversationId::new).collect())
    }
}
