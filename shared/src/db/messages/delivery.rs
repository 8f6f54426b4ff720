//! What became of the replies the channels were given: the status a provider reports
//! (sent, delivered, read, failed; only forward), the provider's message id, and a
//! reply's delivery to its mailbox (once per reply).

use super::{DeliveryStatus, Messages, StoredReply};
use crate::db::guard;
use crate::error::Result;
use crate::ids::{ConversationId, ReplyId};

impl Messages<'_> {
    /// The conversation's replies and agent messages held for a closed window, oldest
    /// first.
    pub async fn held(&self, conversation_id: ConversationId) -> Result<Vec<StoredReply>> {
        let client_id = self.client_id;
        let rows = guard::query(
            "SELECT envelope_id, reply_kind, content, config_version, created_at, choices \
             FROM messages WHERE client_id = ? AND conversation_id = ? \
               AND delivery_status = 'awaiting_window' AND role IN ('assistant', 'agent') \
             ORDER BY seq ASC, id ASC",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .fetch_all(self.pool.get().await?)
        .await?;
        rows.iter()
            .map(|r| {
                let mut reply = super::stored_reply(r)?;
                reply.choices = super::mailbox::choices(r)?;
                Ok(reply)
            })
            .collect()
    }

    /// The delivery status of a stored reply (`None`: not sent yet, or unknown reply).
    pub async fn delivery_status(&self, reply_id: ReplyId) -> Result<Option<DeliveryStatus>> {
        let client_id = self.client_id;
        let status: Option<Option<DeliveryStatus>> = guard::query_scalar(
            "SELECT delivery_status FROM messages WHERE client_id = ? AND envelope_id = ?",
        )?
        .bind(client_id.get())
        .bind(reply_id.as_uuid())
        .fetch_optional(self.pool.get().await?)
        .await?;
        Ok(status.flatten())
    }

    /// Records the outcome of sending a reply through a provider: its status (sent or
    /// failed) and the provider's id of the (last) message sent.
    pub async fn record_delivery(
        &self,
        reply_id: ReplyId,
        status: DeliveryStatus,
        channel_message_id: Option<&str>,
    ) -> Result<()> {
        let client_id = self.client_id;
        guard::query(
            "UPDATE messages SET delivery_status = ?, \
             channel_message_id = COALESCE(?, channel_message_id) \
             WHERE client_id = ? AND envelope_id = ?",
        )?
        .bind(status)
        .bind(channel_message_id)
        .bind(client_id.get())
        .bind(reply_id.as_uuid())
        .execute(self.pool.get().await?)
        .await?;
        Ok(())
    }

    /// Applies a status the channel reported for the message it knows as
    /// `channel_message_id`. Statuses only move forward (sent → delivered → read; failed
    /// at any point), since providers may report them out of order. Returns the
    /// conversation of the reply that changed, if one did.
    pub async fn apply_delivery_status(
        &self,
        channel_message_id: &str,
        status: DeliveryStatus,
    ) -> Result<Option<ConversationId>> {
        let client_id = self.client_id;
        let done = guard::query(
            "UPDATE messages SET delivery_status = ? \
             WHERE client_id = ? AND channel_message_id = ? AND role IN ('assistant', 'agent') \
               AND (delivery_status IS NULL OR ? = 'failed' \
                    OR FIELD(delivery_status, 'sent', 'delivered', 'read') \
                       < FIELD(?, 'sent', 'delivered', 'read'))",
        )?
        .bind(status)
        .bind(client_id.get())
        .bind(channel_message_id)
        .bind(status)
        .bind(status)
        .execute(self.pool.get().await?)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let conversation: Option<u64> = guard::query_scalar(
            "SELECT conversation_id FROM messages WHERE client_id = ? AND channel_message_id = ? LIMIT 1",
        )?
        .bind(client_id.get())
        .bind(channel_message_id)
        .fetch_optional(self.pool.get().await?)
        .await?;
        Ok(conversation.map(ConversationId::new))
    }

    /// Marks a stored reply delivered to its mailbox (its position was taken when it was
    /// stored). Returns the position the first time, `None` when the reply had been
    /// delivered before (a redelivered or republished reply), so a deliverer announces
    /// one reply once.
    pub async fn deliver_to_mailbox(
        &self,
        conversation_id: ConversationId,
        reply_id: ReplyId,
    ) -> Result<Option<u64>> {
        let client_id = self.client_id;
        // LAST_INSERT_ID(seq) hands the position back with the UPDATE itself.
        let done = guard::query(
            "UPDATE messages SET delivery_status = 'delivered', seq = LAST_INSERT_ID(seq) \
             WHERE client_id = ? AND conversation_id = ? AND envelope_id = ? \
               AND seq IS NOT NULL AND delivery_status IS NULL",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(reply_id.as_uuid())
        .execute(self.pool.get().await?)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None); // delivered before, or unknown
        }
        Ok(Some(done.last_insert_id()))
    }

    /// Marks a batch of one tenant's stored replies delivered to their mailboxes (a reply
    /// delivered before, or not stored, is left as it is): one statement for many
    /// deliveries, where nothing depends on which of them were new.
    pub async fn mark_delivered(&self, reply_ids: &[ReplyId]) -> Result<()> {
        self.mark_replies(
            reply_ids,
            "delivery_status = 'delivered'",
            "seq IS NOT NULL AND delivery_status IS NULL",
        )
        .await
    }
}
