//! The messages of a conversation: user turns (keyed by envelope id: the idempotency key),
//! the replies that answer them, and the mailbox that long-polls read. One file per
//! concern: [`accept`] (recording user turns), [`reads`] (what a turn reads),
//! [`replies`] (storing replies, the outbox, closing turns), [`delivery`] (what the
//! channels report) and [`mailbox`] (what long-polls and the admin API read).
//!
//! Two orders exist and must not be confused:
//! - the prompt order (`id`): the order the worker recorded turns in, which is the order
//!   of the conversation because a conversation's turns are processed one at a time;
//! - the mailbox order (`seq`): the order a channel's reader sees, handed out under the
//!   conversation row's lock at commit time, so a reader that saw position N has seen
//!   every position below N (no gaps, no duplicates across polls).
//!
//! The message path's statements name their index (`FORCE INDEX`): the table has nine,
//! MariaDB's range optimizer would otherwise estimate each usable one on every execution
//! by diving into it, and the plan cannot change under load.

mod accept;
mod delivery;
mod mailbox;
mod reads;
mod replies;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::mysql::MySqlRow;

use super::text_column::text_column;
use crate::envelope::ReplyKind;
use crate::error::{Error, Result};
use crate::ids::{ClientId, ReplyId};

pub use accept::NewUserMessage;
pub use mailbox::{MailboxItem, StoredMessage};
pub use reads::{OpenTurn, Pending, PendingTurn};
pub use replies::{ClosedAs, KeyOwner, NewReply, ReplyAccounting, StoreOutcome};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    Agent,
    System,
}

text_column!(Role, "message role", {
    User => "user",
    Assistant => "assistant",
    Agent => "agent",
    System => "system",
});

/// Where a message stands: a user turn is pending until it is answered, failed or
/// ignored; a reply or an agent's message is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// A user turn recorded, not answered yet.
    Pending,
    /// A user turn answered by a stored reply.
    Answered,
    /// A user turn given up on (dead-lettered).
    Failed,
    /// A user turn deliberately not answered (suspended tenant, human mode, reaction…).
    Ignored,
    /// A reply or an agent's message.
    Stored,
}

text_column!(MessageState, "message state", {
    Pending => "pending",
    Answered => "answered",
    Failed => "failed",
    Ignored => "ignored",
    Stored => "stored",
});

text_column!(ReplyKind, "reply kind", {
    Bot => "bot",
    Agent => "agent",
    HandoffNotice => "handoff_notice",
    Fallback => "fallback",
    Typing => "typing",
});

/// What a channel reported of a reply it was given. Statuses only move forward (sent →
/// delivered → read); failed can come at any point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Sent,
    Delivered,
    Read,
    Failed,
    /// Held: WhatsApp's 24-hour window was closed; it goes when the user writes again.
    AwaitingWindow,
    /// Held longer than `whatsapp.hold_max_days`: given up.
    Expired,
}

text_column!(DeliveryStatus, "delivery status", {
    Sent => "sent",
    Delivered => "delivered",
    Read => "read",
    Failed => "failed",
    AwaitingWindow => "awaiting_window",
    Expired => "expired",
});

/// The outcome of recording a user turn.
#[derive(Debug, Clone)]
pub struct RecordedUser {
    /// The row id (the prompt order).
    pub message_id: u64,
    /// False when this envelope had been recorded before (a redelivery or retried request).
    pub newly_recorded: bool,
    pub state: MessageState,
    /// The reply that answered it, when it was answered.
    pub reply: Option<StoredReply>,
}

/// A reply as stored, enough to publish it again.
#[derive(Debug, Clone)]
pub struct StoredReply {
    pub id: ReplyId,
    pub kind: ReplyKind,
    pub text: String,
    pub config_version: u64,
    pub created_at: DateTime<Utc>,
    /// The choices it offers (read where the outbox relays it).
    pub choices: Vec<String>,
}

/// A previous turn, for the prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryTurn {
    pub role: Role,
    pub content: String,
}

/// The messages of one tenant's conversations.
#[derive(Debug)]
pub struct Messages<'a> {
    /// The tenant's shard: its pools, the message path's single statements among them.
    pool: crate::db::Placed<'a>,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

impl<'a> Messages<'a> {
    pub(in crate::db) fn new(pool: crate::db::Placed<'a>, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }
}

fn history_turn(row: &MySqlRow) -> Result<HistoryTurn> {
    Ok(HistoryTurn {
        role: row.try_get("role")?,
        content: row.try_get("content")?,
    })
}

/// A reply row (`envelope_id`, `reply_kind`, `content`, `config_version`, `created_at`)
/// as a [`StoredReply`].
fn stored_reply(row: &MySqlRow) -> Result<StoredReply> {
    Ok(StoredReply {
        id: ReplyId::from_uuid(row.try_get("envelope_id")?),
        kind: row
            .try_get::<Option<ReplyKind>, _>("reply_kind")?
            .unwrap_or(ReplyKind::Bot),
        text: row.try_get("content")?,
        config_version: row
            .try_get::<Option<u64>, _>("config_version")?
            .unwrap_or_default(),
        created_at: row.try_get("created_at")?,
        choices: Vec::new(),
    })
}

/// The one row a write procedure ends with; anything else is the procedure's fault.
fn single<T>(rows: Vec<T>, procedure: &str) -> Result<T> {
    let mut rows = rows.into_iter();
    match (rows.next(), rows.next()) {
        (Some(row), None) => Ok(row),
        _ => Err(Error::Internal(format!(
            "{procedure} did not answer with exactly one row"
        ))),
    }
}

/// A write procedure's refusal (SQLSTATE 45000: a conversation that is not the
/// tenant's, which no caller's input can cause: conversation ids come from the tenant's
/// own rows) as the broken invariant it is; any other failure as it came.
fn signalled(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("45000") => {
            Error::Internal(db.message().to_owned())
        }
        _ => Error::Database(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every word a closed set stores reads back as the value that wrote it, and an
    /// unknown word is refused with the set's name.
    #[test]
    fn stored_words_round_trip() {
        for role in [Role::User, Role::Assistant, Role::Agent, Role::System] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        for state in [
            MessageState::Pending,
            MessageState::Answered,
            MessageState::Failed,
            MessageState::Ignored,
            MessageState::Stored,
        ] {
            assert_eq!(state.as_str().parse::<MessageState>(), Ok(state));
        }
        for kind in [
            ReplyKind::Bot,
            ReplyKind::Agent,
            ReplyKind::HandoffNotice,
            ReplyKind::Fallback,
        ] {
            assert_eq!(kind.as_str().parse::<ReplyKind>(), Ok(kind));
        }
        let unknown = "seen".parse::<DeliveryStatus>().expect_err("unknown");
        assert_eq!(unknown.to_string(), "unknown delivery status \"seen\"");
    }
}
