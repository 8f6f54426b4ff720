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

/// A conversation a human answers, as the operators' handoff inbox lists it.
#[derive(Debug, Clone)]
pub struct WaitingConversation {
    pub client_id: ClientId,
    pub conversation: ConversationSummary,
    /// When a human took it over (its mode's last change).
    pub waiting_since: Option<DateTime<Utc>>,
}

/// A conversation's side of WhatsApp's 24-hour window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserWindow {
    /// When the user last wrote (`None`: not known, for conversations older than this).
    pub user_last_at: Option<DateTime<Utc>>,
    /// The number the user writes to (WhatsApp's phone_number_id).
    pub channel_account: Option<String>,
}

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
    pub(super) pool: crate::db::Placed<'a>,
    /// The tenant every statement is bound to.
    pub(super) client_id: ClientId,
}

impl<'a> Conversations<'a> {
    pub(super) fn new(pool: crate::db::Placed<'a>, client_id: ClientId) -> Self {
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
        .execute(self.pool.get().await?)
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
        .fetch_optional(self.pool.get().await?)
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
        .fetch_all(self.pool.get().await?)
        .await?;
        rows.iter().map(summary).collect()
    }

    /// The newest conversations first (by id) before `before_id`, at most `limit`, only
    /// those on `channel` and in `mode` when given.
    pub async fn newest(
        &self,
        before_id: u64,
        limit: u32,
        channel: Option<Channel>,
        mode: Option<ConversationMode>,
    ) -> Result<Vec<ConversationSummary>> {
        let client_id = self.client_id;
        let rows = guard::query(&format!(
            "SELECT {SUMMARY} WHERE client_id = ? AND id < ? \
             AND (? IS NULL OR channel = ?) AND (? IS NULL OR mode = ?) \
             ORDER BY id DESC LIMIT ?"
        ))?
        .bind(client_id.get())
        .bind(before_id)
        .bind(channel.map(Channel::as_str))
        .bind(channel.map(Channel::as_str))
        .bind(mode)
        .bind(mode)
        .bind(limit)
        .fetch_all(self.pool.get().await?)
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
            .fetch_optional(self.pool.get().await?)
            .await?;
        row.as_ref().map(summary).transpose()
    }

    /// Notes that the user wrote at `at` (the latest time wins) through `channel_account`
    /// (WhatsApp's phone_number_id): the 24-hour window runs from it.
    pub async fn touch_user(
        &self,
        conversation_id: ConversationId,
        at: DateTime<Utc>,
        channel_account: Option<&str>,
    ) -> Result<()> {
        let client_id = self.client_id;
        guard::query(
            "UPDATE conversations SET user_last_at = GREATEST(COALESCE(user_last_at, ?), ?), \
             channel_account = COALESCE(?, channel_account) WHERE client_id = ? AND id = ?",
        )?
        .bind(at)
        .bind(at)
        .bind(channel_account)
        .bind(client_id.get())
        .bind(conversation_id.get())
        .execute(self.pool.get().await?)
        .await?;
        Ok(())
    }

    /// When the user last wrote and through which number; `None` for no conversation.
    pub async fn window(&self, conversation_id: ConversationId) -> Result<Option<UserWindow>> {
        let client_id = self.client_id;
        let row = guard::query(
            "SELECT user_last_at, channel_account FROM conversations WHERE client_id = ? AND id = ?",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .fetch_optional(self.pool.get().await?)
        .await?;
        row.map(|r| {
            Ok(UserWindow {
                user_last_at: r.try_get("user_last_at")?,
                channel_account: r.try_get("channel_account")?,
            })
        })
        .transpose()
    }

    /// Claims the re-engagement of the conversation's closed window (the one after the
    /// user's last message): true once per window, for whoever sends the template.
    pub async fn claim_reengagement(&self, conversation_id: ConversationId) -> Result<bool> {
        let client_id = self.client_id;
        let done = guard::query(
            "UPDATE conversations SET reengaged_for = COALESCE(user_last_at, '1970-01-01') \
             WHERE client_id = ? AND id = ? AND (reengaged_for IS NULL \
               OR reengaged_for <> COALESCE(user_last_at, '1970-01-01'))",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .execute(self.pool.get().await?)
        .await?;
        Ok(done.rows_affected() == 1)
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
            "UPDATE conversations SET mode = ?, mode_since = CURRENT_TIMESTAMP(6) \
             WHERE client_id = ? AND id = ? AND mode <> ?",
        )?
        .bind(mode)
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(mode)
        .execute(self.pool.get().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// The conversations a human answers on one shard, longest waiting first, at most
/// `limit` (every tenant's: see [`crate::db::Db::waiting_for_humans`]).
pub(super) async fn waiting_for_humans(
    pool: &MySqlPool,
    limit: u32,
) -> Result<Vec<WaitingConversation>> {
    let sql = format!(
        "SELECT client_id, mode_since, {SUMMARY} WHERE mode = 'human' \
         ORDER BY mode_since ASC, id ASC LIMIT ?"
    );
    let rows = guard::tenant_lookup(
        &sql,
        "the operators' handoff inbox lists the conversations of every tenant that wait for a human",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(WaitingConversation {
                client_id: ClientId::new(r.try_get("client_id")?),
                waiting_since: r.try_get("mode_since")?,
                conversation: summary(r)?,
            })
        })
        .collect()
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
