//! Conversations' data keys (crypto-shredding, see `crate::sealed`), in
//! `conversation_keys`: read, created once (the first writer wins), listed and replaced
//! for a re-seal. An erased conversation (its `external_id` begins with `erased:`) has
//! none, and reads as erased whatever a writer racing the erasure left behind.

use sqlx::Row;

use super::Conversations;
use super::guard;
use crate::error::Result;
use crate::ids::ConversationId;

/// A conversation's data key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredDataKey {
    /// Sealed under the key ring (`SecretBox::open_data_key`).
    Sealed(Vec<u8>),
    /// Not made yet (a conversation from before data keys).
    Missing,
    /// The conversation was erased, and its key with it.
    Erased,
    /// The tenant has no such conversation.
    Unknown,
}

impl Conversations<'_> {
    /// The conversation's data key.
    pub async fn data_key(&self, conversation_id: ConversationId) -> Result<StoredDataKey> {
        let row = guard::query(
            "SELECT k.data_key, c.external_id LIKE 'erased:%' AS erased FROM conversations c \
             LEFT JOIN conversation_keys k ON k.conversation_id = c.id AND k.client_id = c.client_id \
             WHERE c.client_id = ? AND c.id = ?",
        )?
        .bind(self.client_id.get())
        .bind(conversation_id.get())
        .fetch_optional(self.pool.get().await?)
        .await?;
        let Some(row) = row else {
            return Ok(StoredDataKey::Unknown);
        };
        let key: Option<Vec<u8>> = row.try_get("data_key")?;
        let erased: bool = row.try_get("erased")?;
        Ok(match (key, erased) {
            (_, true) => StoredDataKey::Erased,
            (Some(key), false) => StoredDataKey::Sealed(key),
            (None, false) => StoredDataKey::Missing,
        })
    }

    /// Stores `sealed` as the conversation's data key unless it has one, was erased or
    /// does not exist; whether it was stored (one statement: a new conversation's key
    /// costs no read first). Whoever loses a race reads the winner's.
    pub async fn create_data_key(
        &self,
        conversation_id: ConversationId,
        sealed: &[u8],
    ) -> Result<bool> {
        let done = guard::query(
            "INSERT IGNORE INTO conversation_keys (client_id, conversation_id, data_key) \
             SELECT c.client_id, c.id, ? FROM conversations c \
             WHERE c.client_id = ? AND c.id = ? AND c.external_id NOT LIKE 'erased:%'",
        )?
        .bind(sealed)
        .bind(self.client_id.get())
        .bind(conversation_id.get())
        .execute(self.pool.get().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sealed data keys of conversations by ascending id after `after_id`, at most
    /// `limit` (for `chatfleet secrets reseal`).
    pub async fn sealed_data_keys(
        &self,
        after_id: u64,
        limit: u32,
    ) -> Result<Vec<(ConversationId, Vec<u8>)>> {
        let rows = guard::query(
            "SELECT conversation_id AS id, data_key FROM conversation_keys \
             WHERE client_id = ? AND conversation_id > ? ORDER BY conversation_id ASC LIMIT ?",
        )?
        .bind(self.client_id.get())
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.pool.get().await?)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    ConversationId::new(row.try_get("id")?),
                    row.try_get("data_key")?,
                ))
            })
            .collect()
    }

    /// Replaces a data key re-sealed under the ring's first key, unless it changed
    /// meanwhile (erased); whether it was replaced.
    pub async fn replace_data_key(
        &self,
        conversation_id: ConversationId,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool> {
        let done = guard::query(
            "UPDATE conversation_keys SET data_key = ? WHERE client_id = ? \
             AND conversation_id = ? AND data_key = ?",
        )?
        .bind(new)
        .bind(self.client_id.get())
        .bind(conversation_id.get())
        .bind(old)
        .execute(self.pool.get().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
