//! What the webhook deliverer keeps: the events (`webhook_events`), one delivery per
//! event and endpoint (`webhook_deliveries`, the truth about whether it is owed) and
//! every attempt (`webhook_attempts`).
//!
//! An event is recorded in the transaction that hands out its conversation's next `seq`
//! (the conversation's row is locked until it commits), so the events of a conversation
//! commit in `seq` order: a delivery that finds no earlier one still owed may go.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::guard;
use super::text_column::text_column;
use crate::error::Result;
use crate::ids::{ClientId, ConversationId};
use crate::webhooks::EventType;

/// Which of an endpoint's events an operator means (`chatfleet webhooks`): recorded at
/// or after `since`, and of one type or with one id when given.
#[derive(Debug, Clone, Copy)]
pub struct EventSelector {
    pub since: DateTime<Utc>,
    pub kind: Option<EventType>,
    pub id: Option<Uuid>,
}

impl EventSelector {
    /// Whether an event (or an attempt at it, made at `at`) is chosen.
    pub fn matches(&self, id: Uuid, kind: &str, at: DateTime<Utc>) -> bool {
        at >= self.since
            && self.kind.is_none_or(|k| k.as_str() == kind)
            && self.id.is_none_or(|i| i == id)
    }
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub id: Uuid,
    pub kind: EventType,
    pub conversation_id: Option<ConversationId>,
    /// The event's JSON as first made (`data.seq` is added when it is sent).
    pub body: String,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Given up (the schedule ran out, or the endpoint was disabled or removed).
    Dead,
}

text_column!(DeliveryState, "webhook delivery state", {
    Pending => "pending",
    Delivered => "delivered",
    Dead => "dead",
});

/// A delivery with its event, as the deliverer needs it.
#[derive(Debug, Clone)]
pub struct OwedDelivery {
    pub event_type: String,
    pub body: String,
    pub conversation_id: Option<ConversationId>,
    pub seq: u64,
    pub state: DeliveryState,
    /// The last attempt claimed.
    pub attempts: u32,
    /// When the event was recorded.
    pub created_at: DateTime<Utc>,
}

/// A delivery joined with its event; a query appends its `WHERE`.
const DELIVERY_COLUMNS: &str = "SELECT d.event_id, e.type, e.body, e.created_at, \
     d.conversation_id, d.seq, d.state, d.attempts \
     FROM webhook_deliveries d JOIN webhook_events e \
       ON e.client_id = d.client_id AND e.id = d.event_id";

fn owed_of(r: &sqlx::mysql::MySqlRow) -> Result<OwedDelivery> {
    let conversation: Option<u64> = r.try_get("conversation_id")?;
    Ok(OwedDelivery {
        event_type: r.try_get("type")?,
        body: r.try_get("body")?,
        conversation_id: conversation.map(ConversationId::new),
        seq: r.try_get("seq")?,
        state: r.try_get("state")?,
        attempts: r.try_get("attempts")?,
        created_at: r.try_get("created_at")?,
    })
}

/// One attempt, as listed.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub attempt: u32,
    pub response_status: Option<u16>,
    pub duration_ms: u32,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// An attempt to record.
#[derive(Debug, Clone)]
pub struct NewAttempt<'a> {
    pub webhook_id: u64,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub attempt: u32,
    pub response_status: Option<u16>,
    pub duration_ms: u32,
    pub error: Option<&'a str>,
}

#[derive(Debug)]
pub struct WebhookLog<'a> {
    pool: crate::db::Placed<'a>,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

impl<'a> WebhookLog<'a> {
    pub(super) fn new(pool: crate::db::Placed<'a>, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }

    /// Records the event with a delivery for each endpoint; the endpoints whose first
    /// attempt is owed: all of them for a new event, for one recorded before those
    /// never tried (the emitter that recorded it may have died before queueing them).
    pub async fn record(&self, event: &RecordedEvent, webhook_ids: &[u64]) -> Result<Vec<u64>> {
        let client_id = self.client_id;
        let mut tx = self.pool.get().await?.begin().await?;
        let seq = match event.conversation_id {
            Some(conversation) => {
                let done = guard::query(
                    "UPDATE conversations SET event_seq = LAST_INSERT_ID(event_seq + 1) \
                     WHERE client_id = ? AND id = ?",
                )?
                .bind(client_id.get())
                .bind(conversation.get())
                .execute(&mut *tx)
                .await?;
                done.last_insert_id()
            }
            None => 0,
        };
        let inserted = guard::query(
            "INSERT IGNORE INTO webhook_events (client_id, id, type, conversation_id, seq, body) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )?
        .bind(client_id.get())
        .bind(event.id)
        .bind(event.kind.as_str())
        .bind(event.conversation_id.map(|c| c.get()))
        .bind(seq)
        .bind(&event.body)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // Recorded before: the sequence number just taken is given back.
            tx.rollback().await?;
            return guard::query_scalar(
                "SELECT webhook_id FROM webhook_deliveries \
                 WHERE client_id = ? AND event_id = ? AND state = 'pending' AND attempts = 0",
            )?
            .bind(client_id.get())
            .bind(event.id)
            .fetch_all(self.pool.get().await?)
            .await
            .map_err(Into::into);
        }
        for webhook_id in webhook_ids {
            guard::query(
                "INSERT IGNORE INTO webhook_deliveries \
                 (client_id, webhook_id, event_id, conversation_id, seq) VALUES (?, ?, ?, ?, ?)",
            )?
            .bind(client_id.get())
            .bind(webhook_id)
            .bind(event.id)
            .bind(event.conversation_id.map(|c| c.get()))
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(webhook_ids.to_vec())
    }

    /// A delivery with its event; `None` when there is none (the endpoint was removed).
    pub async fn delivery(&self, webhook_id: u64, event_id: Uuid) -> Result<Option<OwedDelivery>> {
        let client_id = self.client_id;
        let row = guard::query(&format!(
            "{DELIVERY_COLUMNS} WHERE d.client_id = ? AND d.webhook_id = ? AND d.event_id = ?"
        ))?
        .bind(client_id.get())
        .bind(webhook_id)
        .bind(event_id)
        .fetch_optional(self.pool.get().await?)
        .await?;
        row.as_ref().map(owed_of).transpose()
    }

    /// Every delivery of the endpoint with its event id, by conversation and `seq` (what
    /// `chatfleet chaos` checks against what its receiver got).
    pub async fn deliveries(&self, webhook_id: u64) -> Result<Vec<(Uuid, OwedDelivery)>> {
        let client_id = self.client_id;
        let rows = guard::query(&format!(
            "{DELIVERY_COLUMNS} WHERE d.client_id = ? AND d.webhook_id = ? \
             ORDER BY d.conversation_id, d.seq"
        ))?
        .bind(client_id.get())
        .bind(webhook_id)
        .fetch_all(self.pool.get().await?)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("event_id")?, owed_of(r)?)))
            .collect()
    }

    /// Whether an earlier event of the conversation is still owed to the endpoint.
    pub async fn earlier_owed(
        &self,
        webhook_id: u64,
        conversation_id: ConversationId,
        seq: u64,
    ) -> Result<bool> {
        let client_id = self.client_id;
        let found: Option<u64> = guard::query_scalar(
            "SELECT seq FROM webhook_deliveries WHERE client_id = ? AND webhook_id = ? \
             AND conversation_id = ? AND state = 'pending' AND seq < ? LIMIT 1",
        )?
        .bind(client_id.get())
        .bind(webhook_id)
        .bind(conversation_id.get())
        .bind(seq)
        .fetch_optional(self.pool.get().await?)
        .await?;
        Ok(found.is_some())
    }

    /// Claims attempt `attempt` of a pending delivery: true for exactly one claimant (a
    /// duplicated job finds it claimed).
    pub async fn claim(&self, webhook_id: u64, event_id: Uuid, attempt: u32) -> Result<bool> {
        let client_id = self.client_id;
        let done = guard::query(
            "UPDATE webhook_deliveries SET attempts = ? WHERE client_id = ? AND webhook_id = ? \
             AND event_id = ? AND state = 'pending' AND attempts = ?",
        )?
        .bind(attempt)
        .bind(client_id.get())
        .bind(webhook_id)
        .bind(event_id)
        .bind(attempt.saturating_sub(1))
        .execute(self.pool.get().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Settles a delivery (delivered, or dead).
    pub async fn settle(
        &self,
        webhook_id: u64,
        event_id: Uuid,
        state: DeliveryState,
    ) -> Result<()> {
        let client_id = self.client_id;
        guard::query(
            "UPDATE webhook_deliveries SET state = ?, done_at = NOW(6) \
             WHERE client_id = ? AND webhook_id = ? AND event_id = ?",
        )?
        .bind(state)
        .bind(client_id.get())
        .bind(webhook_id)
        .bind(event_id)
        .execute(self.pool.get().await?)
        .await?;
        Ok(())
    }

    /// Gives up every delivery still owed to a disabled endpoint.
    pub async fn abandon(&self, webhook_id: u64) -> Result<u64> {
        let client_id = self.client_id;
        let done = guard::query(
            "UPDATE webhook_deliveries SET state = 'dead', done_at = NOW(6) \
             WHERE client_id = ? AND webhook_id = ? AND state = 'pending'",
        )?
        .bind(client_id.get())
        .bind(webhook_id)
        .execute(self.pool.get().await?)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn record_attempt(&self, attempt: &NewAttempt<'_>) -> Result<()> {
        let client_id = self.client_id;
        guard::query(
            "INSERT INTO webhook_attempts (client_id, webhook_id, event_id, event_type, attempt, \
             response_status, duration_ms, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .bind(client_id.get())
        .bind(attempt.webhook_id)
        .bind(attempt.event_id)
        .bind(attempt.event_type)
        .bind(attempt.attempt)
        .bind(attempt.response_status)
        .bind(attempt.duration_ms)
        .bind(attempt.error.map(|e| crate::text::prefix_within(e, 500)))
        .execute(self.pool.get().await?)
        .await?;
        Ok(())
    }

    /// The endpoint's attempts after attempt id `after`, oldest first, at most `limit`.
    pub async fn attempts(&self, webhook_id: u64, after: u64, limit: u32) -> Result<Vec<Attempt>> {
        let client_id = self.client_id;
        let rows = guard::query(
            "SELECT id, event_id, event_type, attempt, response_status, duration_ms, error, \
             created_at FROM webhook_attempts WHERE client_id = ? AND webhook_id = ? AND id > ? \
             ORDER BY id LIMIT ?",
        )?
        .bind(client_id.get())
        .bind(webhook_id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool.get().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Attempt {
                    id: r.try_get("id")?,
                    event_id: r.try_get("event_id")?,
                    event_type: r.try_get("event_type")?,
                    attempt: r.try_get("attempt")?,
                    response_status: r.try_get("response_status")?,
                    duration_ms: r.try_get("duration_ms")?,
                    error: r.try_get("error")?,
                    at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Makes the endpoint's deliveries of the chosen events owed again from their first
    /// attempt; their event ids, oldest first.
    pub async fn reopen(&self, webhook_id: u64, chosen: &EventSelector) -> Result<Vec<Uuid>> {
        let client_id = self.client_id;
        let mut tx = self.pool.get().await?.begin().await?;
        let ids: Vec<Uuid> = guard::query_scalar(
            "SELECT d.event_id FROM webhook_deliveries d JOIN webhook_events e \
               ON e.client_id = d.client_id AND e.id = d.event_id \
             WHERE d.client_id = ? AND d.webhook_id = ? AND e.created_at >= ? \
               AND (? IS NULL OR e.type = ?) AND (? IS NULL OR e.id = ?) \
             ORDER BY e.created_at, d.seq FOR UPDATE",
        )?
        .bind(client_id.get())
        .bind(webhook_id)
        .bind(chosen.since)
        .bind(chosen.kind.map(EventType::as_str))
        .bind(chosen.kind.map(EventType::as_str))
        .bind(chosen.id)
        .bind(chosen.id)
        .fetch_all(&mut *tx)
        .await?;
        for id in &ids {
            guard::query(
                "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, done_at = NULL \
                 WHERE client_id = ? AND webhook_id = ? AND event_id = ?",
            )?
            .bind(client_id.get())
            .bind(webhook_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(ids)
    }
}
