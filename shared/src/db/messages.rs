//! The messages of a conversation: user turns (keyed by envelope id: the idempotency key),
//! the replies that answer them, and the mailbox that long-polls read.
//!
//! Two orders exist and must not be confused:
//! - the prompt order (`id`): the order the worker recorded turns in, which is the order
//!   of the conversation because a conversation's turns are processed one at a time;
//! - the mailbox order (`seq`): the order a channel's reader sees, handed out under the
//!   conversation row's lock at commit time, so a reader that saw position N has seen
//!   every position below N (no gaps, no duplicates across polls).
//!
//! The message path's statements name their index (`FORCE INDEX`). The table has nine,
//! and on every execution MariaDB's range optimizer estimates each usable one by diving
//! into it; naming the one that serves the statement measured 27–67 µs of server CPU
//! less per statement (of 100–220), and the plan cannot change under load.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::{MySql, Row, Transaction};
use uuid::Uuid;

use super::ConversationMode;
use super::direct::DirectPool;
use super::guard;
use super::is_duplicate_key;
use crate::envelope::ReplyKind;
use crate::error::{Error, Result};
use crate::ids::{ClientId, ConversationId, EnvelopeId, ReplyId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    Agent,
    System,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Agent => "agent",
            Self::System => "system",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        match s {
            "user" => Ok(Self::User),
            "assistant" => Ok(Self::Assistant),
            "agent" => Ok(Self::Agent),
            "system" => Ok(Self::System),
            other => Err(Error::Invalid(format!("unknown message role {other:?}"))),
        }
    }
}

/// Where a user turn stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserMessageState {
    /// Recorded, not answered yet.
    Pending,
    /// Answered by a stored reply.
    Answered,
    /// Given up on (dead-lettered).
    Failed,
    /// Deliberately not answered (suspended tenant, human mode, reaction…).
    Ignored,
}

impl UserMessageState {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(Self::Pending),
            "answered" => Ok(Self::Answered),
            "failed" => Ok(Self::Failed),
            "ignored" => Ok(Self::Ignored),
            other => Err(Error::Invalid(format!(
                "unexpected user message state {other:?}"
            ))),
        }
    }
}

/// The outcome of recording a user turn.
#[derive(Debug, Clone)]
pub struct RecordedUser {
    /// The row id (the prompt order).
    pub message_id: u64,
    /// False when this envelope had been recorded before (a redelivery or retried request).
    pub newly_recorded: bool,
    pub state: UserMessageState,
    /// The reply that answered it, when it was answered.
    pub reply: Option<StoredReply>,
}

/// A user message a channel is accepting ([`Messages::accept_users`]).
#[derive(Debug, Clone, Copy)]
pub struct NewUserMessage<'a> {
    pub conversation_id: ConversationId,
    pub envelope_id: EnvelopeId,
    pub content: &'a str,
    pub channel_message_id: Option<&'a str>,
}

/// A user turn still waiting for its answer.
#[derive(Debug, Clone)]
pub struct PendingTurn {
    pub message_id: u64,
    pub envelope_id: EnvelopeId,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// A conversation's unanswered user turns, and who has the conversation.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Who has the conversation; read only when there are turns (otherwise `Bot`).
    pub mode: ConversationMode,
    pub turns: Vec<PendingTurn>,
}

/// What a turn reads first, in one statement (see [`Messages::open_turn`]).
#[derive(Debug, Clone)]
pub struct OpenTurn {
    /// Stored replies the broker never confirmed, in mailbox order, with the envelopes
    /// each answers: the outbox to publish before anything new.
    pub unpublished: Vec<(StoredReply, Vec<EnvelopeId>)>,
    pub pending: Pending,
    /// The history before the pending messages, oldest first.
    pub history: Vec<HistoryTurn>,
}

/// A reply as stored, enough to publish it again.
#[derive(Debug, Clone)]
pub struct StoredReply {
    pub id: ReplyId,
    pub kind: ReplyKind,
    pub text: String,
    pub config_version: u64,
    pub created_at: DateTime<Utc>,
}

/// A previous turn, for the prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryTurn {
    pub role: Role,
    pub content: String,
}

/// A reply to store, answering the given user messages.
#[derive(Debug, Clone)]
pub struct NewReply {
    pub conversation_id: ConversationId,
    pub reply_id: ReplyId,
    pub kind: ReplyKind,
    pub text: String,
    pub answers: Vec<u64>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub estimated_prompt_tokens: Option<u32>,
    pub config_version: u64,
}

/// A stored message with its bookkeeping, as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoredMessage {
    pub id: u64,
    pub envelope_id: Uuid,
    #[schema(value_type = String, example = "assistant")]
    pub role: Role,
    pub content: String,
    pub state: String,
    pub reply_kind: Option<String>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub estimated_prompt_tokens: Option<u32>,
    pub config_version: Option<u64>,
    pub seq: Option<u64>,
    pub delivery_status: Option<String>,
    /// The channel's id of the message (WhatsApp wamid), when it has one.
    pub channel_message_id: Option<String>,
    /// For an answered user message: the id of the reply that answered it.
    pub answered_by: Option<u64>,
    pub created_at: DateTime<Utc>,
}

/// One mailbox entry, as a long-poll returns it.
#[derive(Debug, Clone, Serialize)]
pub struct MailboxItem {
    #[serde(skip)]
    pub seq: u64,
    pub id: Uuid,
    pub role: Role,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// How often a reply transaction runs before a deadlock is reported.
const DEADLOCK_ATTEMPTS: u32 = 3;

#[derive(Debug)]
pub struct Messages<'a> {
    pool: &'a MySqlPool,
    /// The message path's single statements (no release ping).
    direct: &'a DirectPool,
}

impl<'a> Messages<'a> {
    pub(super) fn new(pool: &'a MySqlPool, direct: &'a DirectPool) -> Self {
        Self { pool, direct }
    }

    /// Records a user turn once. A second call with the same envelope id changes nothing
    /// and reports the first recording's state (and its reply, if answered). Looks first:
    /// for a worker, whose messages were mostly recorded at acceptance already. The look
    /// is a locking read, so it waits for a recording of the envelope that is still being
    /// committed (by another delivery of the same envelope, on another worker) and then
    /// finds it, instead of missing it, taking a position under the conversation's row
    /// lock and inserting only to meet a duplicate key.
    pub async fn record_user(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        envelope_id: EnvelopeId,
        content: &str,
        channel_message_id: Option<&str>,
    ) -> Result<RecordedUser> {
        if let Some(found) = self.find_user(client_id, envelope_id).await? {
            return Ok(found);
        }
        self.accept_user(
            client_id,
            conversation_id,
            envelope_id,
            content,
            channel_message_id,
        )
        .await
    }

    /// [`Messages::record_user`] for a message that is most likely new (a channel
    /// accepting it): inserts first (at its mailbox position, committed when this
    /// returns), and looks for the earlier recording only when the envelope id turns out
    /// to be taken.
    pub async fn accept_user(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        envelope_id: EnvelopeId,
        content: &str,
        channel_message_id: Option<&str>,
    ) -> Result<RecordedUser> {
        // One round trip: the position and the insert in one transaction
        // (migrations/20261128000002_write_procedures.sql).
        let call = guard::query_scalar("CALL accept_user_message(?, ?, ?, ?, ?)")?
            .bind(client_id.get())
            .bind(conversation_id.get())
            .bind(envelope_id.as_uuid())
            .bind(content)
            .bind(channel_message_id);
        let inserted = self
            .direct
            .run(async move |conn| call.fetch_all(conn).await)
            .await;
        match inserted {
            Ok(ids) => Ok(RecordedUser {
                message_id: single(ids, "accept_user_message")?,
                newly_recorded: true,
                state: UserMessageState::Pending,
                reply: None,
            }),
            Err(e) if is_duplicate_key(&e) => {
                // Recorded before, or concurrently by another delivery of the envelope.
                self.find_user(client_id, envelope_id)
                    .await?
                    .ok_or(Error::Database(e))
            }
            Err(e) => Err(signalled(e)),
        }
    }

    /// Accepts several new user messages of one tenant in one transaction (messages of
    /// one conversation take consecutive positions in the order given), and returns
    /// their row ids in the order given. Any failure — one of the envelopes recorded
    /// before, a deadlock with another transaction — leaves nothing written; the caller
    /// then takes them one by one with [`Messages::accept_user`]
    /// (migrations/20261128000004_accept_batch.sql).
    ///
    /// The batch is written in ascending conversation order (a stable sort, so each
    /// conversation's messages keep theirs): every message locks its conversation's
    /// row until the commit, and two batches that locked the same conversations in
    /// different orders deadlocked — under load, rounds on the same conversations run
    /// at once, and each deadlock sent a whole round back to be accepted one by one.
    pub async fn accept_users(
        &self,
        client_id: ClientId,
        batch: &[NewUserMessage<'_>],
    ) -> Result<Vec<u64>> {
        /// One entry of the procedure's JSON array, borrowing the message's text (no
        /// intermediate JSON tree holding a copy of it).
        #[derive(Serialize)]
        struct Entry<'m> {
            c: u64,
            e: uuid::fmt::Simple,
            t: &'m str,
            m: Option<&'m str>,
        }
        let mut lock_order: Vec<usize> = (0..batch.len()).collect();
        lock_order.sort_by_key(|&i| batch[i].conversation_id.get());
        let entries: Vec<Entry<'_>> = lock_order
            .iter()
            .map(|&i| {
                let m = &batch[i];
                Entry {
                    c: m.conversation_id.get(),
                    e: m.envelope_id.as_uuid().simple(),
                    t: m.content,
                    m: m.channel_message_id,
                }
            })
            .collect();
        let entries = serde_json::to_string(&entries)
            .map_err(|e| Error::Invalid(format!("accept_user_messages batch: {e}")))?;
        let call = guard::query_scalar("CALL accept_user_messages(?, ?)")?
            .bind(client_id.get())
            .bind(entries);
        let ids: Vec<String> = self
            .direct
            .run(async move |conn| call.fetch_all(conn).await)
            .await
            .map_err(signalled)?;
        let ids = single(ids, "accept_user_messages")?
            .split(',')
            .map(|id| {
                id.parse::<u64>()
                    .map_err(|_| Error::Invalid(format!("accept_user_messages answered {id:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        if ids.len() != batch.len() {
            return Err(Error::Invalid(format!(
                "accept_user_messages recorded {} of {} messages",
                ids.len(),
                batch.len()
            )));
        }
        let mut in_given_order = vec![0; batch.len()];
        for (&i, id) in lock_order.iter().zip(ids) {
            in_given_order[i] = id;
        }
        Ok(in_given_order)
    }

    async fn find_user(
        &self,
        client_id: ClientId,
        envelope_id: EnvelopeId,
    ) -> Result<Option<RecordedUser>> {
        // A locking read: it waits for a transaction that inserted this envelope's
        // message and has not committed yet (another worker's delivery of the same
        // envelope), instead of missing it and meeting the duplicate key later. Outside
        // a transaction its shared locks last for this statement only.
        let row = guard::query(
            "SELECT u.id, u.state, r.envelope_id AS reply_id, r.reply_kind, r.content AS reply_text, \
             r.config_version AS reply_config_version, r.created_at AS reply_created_at \
             FROM messages u LEFT JOIN messages r \
               ON r.client_id = u.client_id AND r.id = u.reply_message_id \
             WHERE u.client_id = ? AND u.envelope_id = ? AND u.role = 'user' \
             LOCK IN SHARE MODE",
        )?
        .bind(client_id.get())
        .bind(envelope_id.as_uuid());
        let found = self
            .direct
            .run(async move |conn| row.fetch_optional(conn).await)
            .await?;
        let Some(row) = found else {
            return Ok(None);
        };
        let reply = match row.try_get::<Option<Uuid>, _>("reply_id")? {
            Some(id) => Some(StoredReply {
                id: ReplyId::from_uuid(id),
                kind: parse_kind(row.try_get::<Option<String>, _>("reply_kind")?.as_deref())?,
                text: row.try_get("reply_text")?,
                config_version: row
                    .try_get::<Option<u64>, _>("reply_config_version")?
                    .unwrap_or_default(),
                created_at: row.try_get("reply_created_at")?,
            }),
            None => None,
        };
        Ok(Some(RecordedUser {
            message_id: row.try_get("id")?,
            newly_recorded: false,
            state: UserMessageState::parse(row.try_get("state")?)?,
            reply,
        }))
    }

    /// The conversation's unanswered user turns in mailbox order, at most `limit`: what
    /// the next turn answers (several at once when they arrived while one was running);
    /// with who has the conversation, read in the same statement (when anything is
    /// pending).
    pub async fn pending(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        limit: u32,
    ) -> Result<Pending> {
        // The mode rides along on each row (a subquery on the conversation's primary
        // key): joining the conversation in instead makes MariaDB sort through a
        // temporary table, at twice the cost. With nothing pending there is no row and
        // no mode to read, and none is needed: there is no turn to answer.
        let rows = guard::query(
            "SELECT (SELECT c.mode FROM conversations c \
                     WHERE c.client_id = m.client_id AND c.id = m.conversation_id) AS mode, \
               m.id, m.envelope_id, m.content, m.created_at \
             FROM messages m FORCE INDEX (ix_messages_open) \
             WHERE m.client_id = ? AND m.conversation_id = ? AND m.role = 'user' \
               AND m.state = 'pending' ORDER BY m.seq ASC LIMIT ?",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(limit);
        let rows = self
            .direct
            .run(async move |conn| rows.fetch_all(conn).await)
            .await?;
        pending_of(&rows.iter().collect::<Vec<_>>())
    }

    /// Everything a turn reads once it holds the conversation's lock, in one statement:
    /// the outbox (stored replies the broker never confirmed), the pending messages with
    /// the mode ([`Messages::pending`], at most `pending_limit`) and the history
    /// ([`Messages::history_before`] the newest message, at most `history_limit`). Under the lock nothing else
    /// changes any of them, so reading them together is reading them in any order; one
    /// round trip and one connection checkout instead of three. The outbox leaves out the
    /// replies the caller knows were `confirmed` though their mark is not written yet
    /// (marks are written in batches, after the next turn may have started).
    pub async fn open_turn(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        pending_limit: u32,
        history_limit: u32,
        confirmed: impl Fn(ReplyId) -> bool,
    ) -> Result<OpenTurn> {
        // Each part keeps its own order and limit; `part`, `k1` and `k2` sort the rows
        // back into them (a UNION promises no order of its own). Literals in unsigned
        // columns are cast, or MariaDB widens the column to DECIMAL.
        let rows = guard::query(
            "(SELECT 'relay' AS part, m.id, m.envelope_id, m.role, m.content, m.created_at, \
                m.reply_kind, m.config_version, NULL AS mode, m.seq AS k1, \
                CAST(0 AS UNSIGNED) AS k2 FROM messages m FORCE INDEX (ix_messages_open) \
              WHERE m.client_id = ? AND m.conversation_id = ? AND m.state = 'stored' \
                AND m.published_at IS NULL) \
             UNION ALL \
             (SELECT 'pending', m.id, m.envelope_id, m.role, m.content, m.created_at, NULL, \
                CAST(NULL AS UNSIGNED), \
                (SELECT c.mode FROM conversations c \
                 WHERE c.client_id = m.client_id AND c.id = m.conversation_id), \
                m.seq, CAST(0 AS UNSIGNED) FROM messages m FORCE INDEX (ix_messages_open) \
              WHERE m.client_id = ? AND m.conversation_id = ? AND m.role = 'user' \
                AND m.state = 'pending' ORDER BY m.seq ASC LIMIT ?) \
             UNION ALL \
             (SELECT 'history', m.id, NULL, m.role, m.content, NULL, NULL, \
                CAST(NULL AS UNSIGNED), NULL, \
                m.history_seq, m.id FROM messages m FORCE INDEX (ix_messages_history) \
              WHERE m.client_id = ? AND m.conversation_id = ? AND m.history_seq IS NOT NULL \
                AND m.role IN ('user', 'assistant', 'agent') \
              ORDER BY m.history_seq DESC, m.id DESC LIMIT ?)",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(pending_limit)
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(history_limit);
        let rows = self
            .direct
            .run(async move |conn| rows.fetch_all(conn).await)
            .await?;
        let mut keyed = rows
            .iter()
            .map(|r| {
                let part: String = r.try_get("part")?;
                let key: (Option<u64>, u64) = (r.try_get("k1")?, r.try_get("k2")?);
                Ok((part, key, r))
            })
            .collect::<Result<Vec<_>>>()?;
        keyed.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let part = |name: &str| {
            keyed
                .iter()
                .filter(|(p, _, _)| p == name)
                .map(|(_, _, r)| *r)
                .collect::<Vec<_>>()
        };
        let mut unpublished = Vec::new();
        for r in part("relay") {
            let reply = stored_reply(r)?;
            if confirmed(reply.id) {
                continue;
            }
            let answers = self.answers_of(client_id, r.try_get("id")?).await?;
            unpublished.push((reply, answers));
        }
        Ok(OpenTurn {
            unpublished,
            pending: pending_of(&part("pending"))?,
            history: part("history")
                .into_iter()
                .map(history_turn)
                .collect::<Result<_>>()?,
        })
    }

    /// The last `limit` messages of the conversation recorded before user message
    /// `before_id` that are not waiting for an answer (answered or closed user messages,
    /// replies, agent messages), oldest first: the history a dry-run replay of that
    /// message sees (a turn reads its history with [`Messages::open_turn`]). Each
    /// question is placed right before its answer, even when it arrived while an earlier
    /// question was being answered (it is ordered by its reply's position:
    /// `history_seq`, kept as messages are written, so only `limit` rows are read however
    /// long the conversation).
    pub async fn history_before(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        before_id: u64,
        limit: u32,
    ) -> Result<Vec<HistoryTurn>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = guard::query(
            "SELECT role, content FROM messages FORCE INDEX (ix_messages_history) \
             WHERE client_id = ? AND conversation_id = ? AND history_seq IS NOT NULL \
               AND id < ? AND role IN ('user', 'assistant', 'agent') \
             ORDER BY history_seq DESC, id DESC LIMIT ?",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(before_id)
        .bind(limit)
        .fetch_all(self.pool)
        .await?;
        let mut turns = rows.iter().map(history_turn).collect::<Result<Vec<_>>>()?;
        turns.reverse();
        Ok(turns)
    }

    /// The row id of the user message an envelope recorded, if it was recorded.
    pub async fn user_message_id(
        &self,
        client_id: ClientId,
        envelope_id: EnvelopeId,
    ) -> Result<Option<u64>> {
        Ok(guard::query_scalar(
            "SELECT id FROM messages WHERE client_id = ? AND envelope_id = ? AND role = 'user'",
        )?
        .bind(client_id.get())
        .bind(envelope_id.as_uuid())
        .fetch_optional(self.pool)
        .await?)
    }

    /// Stores a reply and marks the user turns it answers as answered, in one
    /// transaction, and counts the usage. Returns `false` (and stores nothing) when those
    /// turns were already answered (the guard that makes one reply per turn), or when a
    /// bot or fallback reply meets a conversation handed to a human.
    pub async fn store_reply(&self, client_id: ClientId, reply: &NewReply) -> Result<bool> {
        if reply.answers.is_empty() {
            return Err(Error::Invalid(
                "a reply must answer at least one message".into(),
            ));
        }
        // A small transaction among many is InnoDB's usual deadlock victim (against the
        // batched confirm marks, say); rolled back whole, it is simply run again.
        let mut attempt = 1;
        loop {
            match self.try_store_reply(client_id, reply).await {
                Err(e) if super::is_deadlock(&e) && attempt < DEADLOCK_ATTEMPTS => {
                    tracing::debug!(attempt, "storing a reply met a deadlock; running it again");
                    metrics::counter!("chatfleet_db_deadlock_retries_total").increment(1);
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn try_store_reply(&self, client_id: ClientId, reply: &NewReply) -> Result<bool> {
        let role = match reply.kind {
            ReplyKind::Agent => "agent",
            _ => "assistant",
        };
        // The bot's own answers are only stored while the bot has the conversation: a
        // handoff that happened during the turn wins (the conversation's row lock orders
        // the two). One round trip: the mailbox position, the reply, the answered marks
        // and the usage in one transaction (migrations/20261128000002_write_procedures.sql).
        let bot_only = matches!(reply.kind, ReplyKind::Bot | ReplyKind::Fallback);
        let answers = reply
            .answers
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let call = guard::query_scalar("CALL store_reply(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")?
            .bind(client_id.get())
            .bind(reply.conversation_id.get())
            .bind(reply.reply_id.as_uuid())
            .bind(role)
            .bind(&reply.text)
            .bind(kind_str(reply.kind))
            .bind(bot_only)
            .bind(reply.prompt_tokens)
            .bind(reply.completion_tokens)
            .bind(reply.estimated_prompt_tokens)
            .bind(reply.config_version)
            .bind(answers)
            .bind(reply.conversation_id.get() % super::usage::SHARDS);
        let outcome: Vec<String> = self
            .direct
            .run(async move |conn| call.fetch_all(conn).await)
            .await
            .map_err(signalled)?;
        match single(outcome, "store_reply")?.as_str() {
            "stored" => Ok(true),
            "not_bot" | "answered_before" => Ok(false),
            other => Err(Error::Invalid(format!("store_reply answered {other:?}"))),
        }
    }

    /// Stores a human agent's message (answering no particular turn).
    pub async fn store_agent_message(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        reply_id: ReplyId,
        text: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let seq = next_seq(&mut tx, client_id, conversation_id).await?;
        guard::query(
            "INSERT INTO messages (client_id, conversation_id, envelope_id, role, content, state, \
             reply_kind, seq, history_seq) VALUES (?, ?, ?, 'agent', ?, 'stored', 'agent', ?, ?)",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(reply_id.as_uuid())
        .bind(text)
        .bind(seq)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that the broker confirmed these replies of one tenant (the outbox of
    /// [`Messages::open_turn`] leaves them out): one statement for a whole batch of
    /// confirms.
    pub async fn mark_published(&self, client_id: ClientId, reply_ids: &[ReplyId]) -> Result<()> {
        self.mark_replies(
            client_id,
            reply_ids,
            "published_at = CURRENT_TIMESTAMP(6)",
            "published_at IS NULL",
        )
        .await
    }

    /// `UPDATE messages SET {set}` for a batch of one tenant's replies, those still
    /// matching `only`: one statement for many marks.
    async fn mark_replies(
        &self,
        client_id: ClientId,
        reply_ids: &[ReplyId],
        set: &str,
        only: &str,
    ) -> Result<()> {
        if reply_ids.is_empty() {
            return Ok(());
        }
        let placeholders = vec!["?"; reply_ids.len()].join(", ");
        let sql = format!(
            "UPDATE messages FORCE INDEX (uq_messages_envelope) SET {set} \
             WHERE client_id = ? AND envelope_id IN ({placeholders}) AND {only}"
        );
        let mut update = guard::query(&sql)?.bind(client_id.get());
        for id in reply_ids {
            update = update.bind(id.as_uuid());
        }
        self.direct
            .run(async move |conn| update.execute(conn).await)
            .await?;
        Ok(())
    }

    /// The envelopes of the user messages a stored reply (row `reply_row`) answers.
    async fn answers_of(&self, client_id: ClientId, reply_row: u64) -> Result<Vec<EnvelopeId>> {
        let answers: Vec<Uuid> = guard::query_scalar(
            "SELECT envelope_id FROM messages WHERE client_id = ? AND reply_message_id = ? \
             ORDER BY seq ASC",
        )?
        .bind(client_id.get())
        .bind(reply_row)
        .fetch_all(self.pool)
        .await?;
        Ok(answers.into_iter().map(EnvelopeId::from_uuid).collect())
    }

    /// The delivery status of a stored reply (`None`: not sent yet, or unknown reply).
    pub async fn delivery_status(
        &self,
        client_id: ClientId,
        reply_id: ReplyId,
    ) -> Result<Option<String>> {
        let status: Option<Option<String>> = guard::query_scalar(
            "SELECT delivery_status FROM messages WHERE client_id = ? AND envelope_id = ?",
        )?
        .bind(client_id.get())
        .bind(reply_id.as_uuid())
        .fetch_optional(self.pool)
        .await?;
        Ok(status.flatten())
    }

    /// Records the outcome of sending a reply through a provider: its status (`sent`,
    /// `failed`) and the provider's id of the (last) message sent.
    pub async fn record_delivery(
        &self,
        client_id: ClientId,
        reply_id: ReplyId,
        status: &str,
        channel_message_id: Option<&str>,
    ) -> Result<()> {
        guard::query(
            "UPDATE messages SET delivery_status = ?, \
             channel_message_id = COALESCE(?, channel_message_id) \
             WHERE client_id = ? AND envelope_id = ?",
        )?
        .bind(status)
        .bind(channel_message_id)
        .bind(client_id.get())
        .bind(reply_id.as_uuid())
        .execute(self.pool)
        .await?;
        Ok(())
    }

    /// Applies a status the channel reported for the message it knows as
    /// `channel_message_id`. Statuses only move forward (sent → delivered → read; failed
    /// at any point), since providers may report them out of order. Returns the
    /// conversation of the reply that changed, if one did.
    pub async fn apply_delivery_status(
        &self,
        client_id: ClientId,
        channel_message_id: &str,
        status: &str,
    ) -> Result<Option<ConversationId>> {
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
        .execute(self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let conversation: Option<u64> = guard::query_scalar(
            "SELECT conversation_id FROM messages WHERE client_id = ? AND channel_message_id = ? LIMIT 1",
        )?
        .bind(client_id.get())
        .bind(channel_message_id)
        .fetch_optional(self.pool)
        .await?;
        Ok(conversation.map(ConversationId::new))
    }

    /// Removes a user message that is still unanswered (one whose acceptance failed after
    /// it was recorded). Returns whether it was removed.
    pub async fn withdraw(&self, client_id: ClientId, envelope_id: EnvelopeId) -> Result<bool> {
        let done = guard::query(
            "DELETE FROM messages \
             WHERE client_id = ? AND envelope_id = ? AND role = 'user' AND state = 'pending'",
        )?
        .bind(client_id.get())
        .bind(envelope_id.as_uuid())
        .execute(self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Makes a user message that only got the tenant's fallback message (its turn was
    /// dead-lettered after the last attempt) unanswered again, so the next turn answers it
    /// for real: what `chatfleet dlq requeue` does before putting it back on the work
    /// queue. Returns whether it was reopened.
    pub async fn reopen_after_fallback(
        &self,
        client_id: ClientId,
        envelope_id: EnvelopeId,
    ) -> Result<bool> {
        let done = guard::query(
            "UPDATE messages u JOIN messages r \
               ON r.client_id = u.client_id AND r.id = u.reply_message_id \
             SET u.state = 'pending', u.reply_message_id = NULL, u.history_seq = NULL \
             WHERE u.client_id = ? AND u.envelope_id = ? AND u.role = 'user' \
               AND u.state = 'answered' AND r.reply_kind = 'fallback'",
        )?
        .bind(client_id.get())
        .bind(envelope_id.as_uuid())
        .execute(self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Marks a still-pending user turn as failed (it was dead-lettered) or ignored.
    pub async fn close_unanswered(
        &self,
        client_id: ClientId,
        envelope_id: EnvelopeId,
        state: UserMessageState,
    ) -> Result<()> {
        let state = match state {
            UserMessageState::Failed => "failed",
            UserMessageState::Ignored => "ignored",
            other => return Err(Error::Invalid(format!("cannot close a turn as {other:?}"))),
        };
        guard::query(
            "UPDATE messages SET state = ?, history_seq = COALESCE(seq, 0) \
             WHERE client_id = ? AND envelope_id = ? AND role = 'user' AND state = 'pending'",
        )?
        .bind(state)
        .bind(client_id.get())
        .bind(envelope_id.as_uuid())
        .execute(self.pool)
        .await?;
        Ok(())
    }

    /// Marks a stored reply delivered to its mailbox (its position was taken when it was
    /// stored). Returns the position the first time, `None` when the reply had been
    /// delivered before (a redelivered or republished reply), so a deliverer announces
    /// one reply once.
    pub async fn deliver_to_mailbox(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        reply_id: ReplyId,
    ) -> Result<Option<u64>> {
        // LAST_INSERT_ID(seq) hands the position back with the UPDATE itself.
        let done = guard::query(
            "UPDATE messages SET delivery_status = 'delivered', seq = LAST_INSERT_ID(seq) \
             WHERE client_id = ? AND conversation_id = ? AND envelope_id = ? \
               AND seq IS NOT NULL AND delivery_status IS NULL",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(reply_id.as_uuid())
        .execute(self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None); // delivered before, or unknown
        }
        Ok(Some(done.last_insert_id()))
    }

    /// The last `limit` messages of a conversation, oldest first.
    pub async fn in_conversation(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        limit: u32,
    ) -> Result<Vec<StoredMessage>> {
        let rows = guard::query(
            "SELECT id, envelope_id, role, content, state, reply_kind, prompt_tokens, \
             completion_tokens, estimated_prompt_tokens, config_version, seq, delivery_status, \
             channel_message_id, reply_message_id, created_at FROM messages \
             WHERE client_id = ? AND conversation_id = ? \
             ORDER BY id DESC LIMIT ?",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(limit)
        .fetch_all(self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(StoredMessage {
                    id: r.try_get("id")?,
                    envelope_id: r.try_get("envelope_id")?,
                    role: Role::parse(r.try_get("role")?)?,
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
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    /// Marks a batch of one tenant's stored replies delivered to their mailboxes (a reply
    /// delivered before, or not stored, is left as it is): one statement for many
    /// deliveries, where nothing depends on which of them were new.
    pub async fn mark_delivered(&self, client_id: ClientId, reply_ids: &[ReplyId]) -> Result<()> {
        self.mark_replies(
            client_id,
            reply_ids,
            "delivery_status = 'delivered'",
            "seq IS NOT NULL AND delivery_status IS NULL",
        )
        .await
    }

    /// Mailbox entries after position `after`, ascending, at most `limit`.
    pub async fn mailbox_after(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<MailboxItem>> {
        let rows = guard::query(
            "SELECT seq, envelope_id, role, content, created_at \
             FROM messages FORCE INDEX (uq_messages_seq) \
             WHERE client_id = ? AND conversation_id = ? AND seq > ? ORDER BY seq ASC LIMIT ?",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(after)
        .bind(limit);
        let rows = self
            .direct
            .run(async move |conn| rows.fetch_all(conn).await)
            .await?;
        rows.iter().map(mailbox_item).collect()
    }
}

/// Takes the next mailbox position of a conversation, locking its row until the
/// transaction ends (what the write procedures do first, for a human agent's message).
async fn next_seq(
    tx: &mut Transaction<'_, MySql>,
    client_id: ClientId,
    conversation_id: ConversationId,
) -> Result<u64> {
    // LAST_INSERT_ID(expr) hands the new value back with the UPDATE itself: one round
    // trip, under the row lock the UPDATE takes.
    let done = guard::query(
        "UPDATE conversations SET last_seq = LAST_INSERT_ID(last_seq + 1), \
         last_message_at = CURRENT_TIMESTAMP(6) WHERE client_id = ? AND id = ?",
    )?
    .bind(client_id.get())
    .bind(conversation_id.get())
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::Invalid(format!(
            "conversation {conversation_id} does not belong to client {client_id}"
        )));
    }
    Ok(done.last_insert_id())
}

fn mailbox_item(row: &MySqlRow) -> Result<MailboxItem> {
    Ok(MailboxItem {
        seq: row.try_get("seq")?,
        id: row.try_get("envelope_id")?,
        role: Role::parse(row.try_get("role")?)?,
        text: row.try_get("content")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Pending rows (with the conversation's `mode` on each) as a [`Pending`].
fn pending_of(rows: &[&MySqlRow]) -> Result<Pending> {
    let mode = match rows.first() {
        Some(r) => ConversationMode::parse(r.try_get("mode")?),
        None => ConversationMode::Bot,
    };
    let turns = rows
        .iter()
        .map(|r| {
            Ok(PendingTurn {
                message_id: r.try_get("id")?,
                envelope_id: EnvelopeId::from_uuid(r.try_get("envelope_id")?),
                text: r.try_get("content")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Pending { mode, turns })
}

fn history_turn(row: &MySqlRow) -> Result<HistoryTurn> {
    Ok(HistoryTurn {
        role: Role::parse(row.try_get("role")?)?,
        content: row.try_get("content")?,
    })
}

fn stored_reply(row: &MySqlRow) -> Result<StoredReply> {
    Ok(StoredReply {
        id: ReplyId::from_uuid(row.try_get("envelope_id")?),
        kind: parse_kind(row.try_get::<Option<String>, _>("reply_kind")?.as_deref())?,
        text: row.try_get("content")?,
        config_version: row
            .try_get::<Option<u64>, _>("config_version")?
            .unwrap_or_default(),
        created_at: row.try_get("created_at")?,
    })
}

/// The one row a write procedure ends with.
fn single<T>(rows: Vec<T>, procedure: &str) -> Result<T> {
    let mut rows = rows.into_iter();
    match (rows.next(), rows.next()) {
        (Some(row), None) => Ok(row),
        _ => Err(Error::Invalid(format!(
            "{procedure} did not answer with exactly one row"
        ))),
    }
}

/// A write procedure's refusal (SQLSTATE 45000: a conversation that is not the
/// tenant's) as the invalid request it is; any other failure as it came.
fn signalled(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("45000") => {
            Error::Invalid(db.message().to_owned())
        }
        _ => Error::Database(err),
    }
}

const fn kind_str(kind: ReplyKind) -> &'static str {
    match kind {
        ReplyKind::Bot => "bot",
        ReplyKind::Agent => "agent",
        ReplyKind::HandoffNotice => "handoff_notice",
        ReplyKind::Fallback => "fallback",
    }
}

fn parse_kind(s: Option<&str>) -> Result<ReplyKind> {
    match s {
        Some("bot") | None => Ok(ReplyKind::Bot),
        Some("agent") => Ok(ReplyKind::Agent),
        Some("handoff_notice") => Ok(ReplyKind::HandoffNotice),
        Some("fallback") => Ok(ReplyKind::Fallback),
        Some(other) => Err(Error::Invalid(format!("unknown reply kind {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ids::Channel;
    use crate::testkit::{TestEnv, eventually};

    /// The statements of this test's database that wait for a lock.
    async fn waiting(pool: &MySqlPool) -> Vec<String> {
        guard::query_scalar(
            "SELECT t.trx_query FROM information_schema.INNODB_TRX t \
             JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
             WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()",
        )
        .expect("guarded")
        .fetch_all(pool)
        .await
        .expect("lock waits")
    }

    /// A worker that holds a delivery while the message is still being committed
    /// elsewhere (another delivery of the envelope) waits for that commit in its read and
    /// finds the message, instead of missing it, taking a position and inserting only to
    /// meet the duplicate key.
    #[tokio::test]
    async fn recording_waits_for_a_recording_in_flight_instead_of_racing_it() {
        let env = TestEnv::start(&[]).await;
        let t = env.tenant("in-flight").await;
        let conversation = env
            .db
            .conversations()
            .get_or_create(t.id, Channel::Api, "c")
            .await
            .expect("conversation");
        let envelope = EnvelopeId::random();
        // The other recording, inserted and not yet committed.
        let mut other = env.db.pool.begin().await.expect("begin");
        let inserted = guard::query(
            "INSERT INTO messages (client_id, conversation_id, envelope_id, role, content, \
             state, seq) VALUES (?, ?, ?, 'user', 'hello', 'pending', 1)",
        )
        .expect("guarded")
        .bind(t.id.get())
        .bind(conversation.get())
        .bind(envelope.as_uuid())
        .execute(&mut *other)
        .await
        .expect("insert")
        .last_insert_id();

        let db = env.db.clone();
        let client_id = t.id;
        let worker = tokio::spawn(async move {
            db.messages()
                .record_user(client_id, conversation, envelope, "hello", None)
                .await
        });
        let waiting = eventually(Duration::from_secs(10), "the worker to wait", || async {
            let waiting = waiting(&env.db.pool).await;
            (!waiting.is_empty()).then_some(waiting)
        })
        .await;
        assert_eq!(waiting.len(), 1, "{waiting:?}");
        assert!(
            waiting[0].trim_start().starts_with("SELECT"),
            "the worker waits in {:?}, not in its read",
            waiting[0]
        );

        other.commit().await.expect("commit");
        let recorded = worker.await.expect("worker").expect("recorded");
        assert_eq!(recorded.message_id, inserted);
        assert!(!recorded.newly_recorded);
        assert_eq!(recorded.state, UserMessageState::Pending);
        env.teardown().await;
    }

    /// A channel's batch: one transaction, positions in the batch's order per
    /// conversation, every character kept; a batch meeting a recorded envelope (or
    /// another tenant's conversation) writes nothing and takes no position.
    #[tokio::test]
    async fn a_batch_of_accepted_messages_is_written_whole_or_not_at_all() {
        let env = TestEnv::start(&[]).await;
        let t = env.tenant("batch").await;
        let other = env.tenant("batch-other").await;
        let conversations = env.db.conversations();
        let a = conversations
            .get_or_create(t.id, Channel::Api, "a")
            .await
            .expect("a");
        let b = conversations
            .get_or_create(t.id, Channel::Api, "b")
            .await
            .expect("b");
        let foreign = conversations
            .get_or_create(other.id, Channel::Api, "a")
            .await
            .expect("foreign");
        let messages = &env.db.messages();
        let text = "Grüße 👋 — 你好, O'Brien \\ \"quoted\"";
        let envelopes: Vec<EnvelopeId> = (0..3).map(|_| EnvelopeId::random()).collect();
        let batch = |conversation_id, envelope_id, content| NewUserMessage {
            conversation_id,
            envelope_id,
            content,
            channel_message_id: None,
        };
        let ids = messages
            .accept_users(
                t.id,
                &[
                    batch(a, envelopes[0], text),
                    NewUserMessage {
                        channel_message_id: Some("wamid.Ä👋"),
                        ..batch(b, envelopes[1], "to b")
                    },
                    batch(a, envelopes[2], "second to a"),
                ],
            )
            .await
            .expect("accepted");
        assert_eq!(ids.len(), 3);
        for (id, envelope) in ids.iter().zip(&envelopes) {
            assert_eq!(
                messages
                    .user_message_id(t.id, *envelope)
                    .await
                    .expect("looked up"),
                Some(*id),
                "each id is its own message's, in the order given: {ids:?}"
            );
        }
        let mailbox = |conversation| async move {
            messages
                .mailbox_after(t.id, conversation, 0, 10)
                .await
                .expect("mailbox")
                .into_iter()
                .map(|m| (m.seq, m.text))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            mailbox(a).await,
            [(1, text.to_owned()), (2, "second to a".to_owned())]
        );
        assert_eq!(mailbox(b).await, [(1, "to b".to_owned())]);
        let found = messages
            .record_user(t.id, b, envelopes[1], "ignored", None)
            .await
            .expect("found");
        assert_eq!((found.message_id, found.newly_recorded), (ids[1], false));

        // A recorded envelope in the batch: nothing of it is written.
        let fresh = EnvelopeId::random();
        let duplicate = messages
            .accept_users(
                t.id,
                &[batch(a, fresh, "new"), batch(a, envelopes[0], "again")],
            )
            .await;
        assert!(duplicate.is_err(), "{duplicate:?}");
        // Another tenant's conversation: refused, nothing written.
        let refused = messages
            .accept_users(
                t.id,
                &[
                    batch(a, fresh, "new"),
                    batch(foreign, EnvelopeId::random(), "x"),
                ],
            )
            .await;
        assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
        assert_eq!(mailbox(a).await.len(), 2, "nothing of either batch written");
        let next = messages
            .accept_user(t.id, a, fresh, "new", None)
            .await
            .expect("accepted alone");
        assert!(next.newly_recorded);
        assert_eq!(
            mailbox(a).await.last().map(|(seq, _)| *seq),
            Some(3),
            "no position was taken by the failed batches"
        );
        env.teardown().await;
    }

    /// Batches over the same conversations in opposite orders, committed at once (two
    /// accepting rounds under load): none deadlocks, since each locks its conversations
    /// in one order, and each conversation's positions stay gapless.
    #[tokio::test]
    async fn concurrent_batches_over_the_same_conversations_do_not_deadlock() {
        let env = TestEnv::start(&[]).await;
        let t = env.tenant("lock-order").await;
        let mut conversations = Vec::new();
        for key in 0..8 {
            conversations.push(
                env.db
                    .conversations()
                    .get_or_create(t.id, Channel::Api, &format!("c{key}"))
                    .await
                    .expect("conversation"),
            );
        }
        const ROUNDS: usize = 25;
        let accept_rounds = |reversed: bool| {
            let (db, mut conversations) = (env.db.clone(), conversations.clone());
            if reversed {
                conversations.reverse();
            }
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for _ in 0..ROUNDS {
                    let envelopes: Vec<EnvelopeId> =
                        conversations.iter().map(|_| EnvelopeId::random()).collect();
                    let batch: Vec<NewUserMessage<'_>> = conversations
                        .iter()
                        .zip(&envelopes)
                        .map(|(c, e)| NewUserMessage {
                            conversation_id: *c,
                            envelope_id: *e,
                            content: "hello",
                            channel_message_id: None,
                        })
                        .collect();
                    if let Err(e) = db.messages().accept_users(t.id, &batch).await {
                        failures.push(e.to_string());
                    }
                }
                failures
            })
        };
        let (forward, backward) = tokio::join!(accept_rounds(false), accept_rounds(true));
        let failures: Vec<String> = [forward, backward]
            .into_iter()
            .flat_map(|f| f.expect("joined"))
            .collect();
        assert!(failures.is_empty(), "batches failed: {failures:?}");
        for conversation in conversations {
            let seqs: Vec<u64> = env
                .db
                .messages()
                .mailbox_after(t.id, conversation, 0, 100)
                .await
                .expect("mailbox")
                .iter()
                .map(|m| m.seq)
                .collect();
            assert_eq!(seqs, (1..=2 * ROUNDS as u64).collect::<Vec<_>>());
        }
        env.teardown().await;
    }

    /// The write procedures (one round trip each) keep every character of a message,
    /// answer exactly the messages they are given, count them, and refuse what the
    /// statements they replaced refused.
    #[tokio::test]
    async fn the_write_procedures_store_exactly_what_they_are_given() {
        let env = TestEnv::start(&[]).await;
        let t = env.tenant("procedures").await;
        let other = env.tenant("procedures-other").await;
        let conversations = env.db.conversations();
        let conversation = conversations
            .get_or_create(t.id, Channel::Api, "c")
            .await
            .expect("conversation");
        let messages = env.db.messages();
        let text = "Grüße 👋 — 你好, O'Brien \\ \"quoted\"";
        let mut ids = Vec::new();
        for content in [text, "second", "third"] {
            let recorded = messages
                .accept_user(
                    t.id,
                    conversation,
                    EnvelopeId::random(),
                    content,
                    Some("wamid.Ä👋"),
                )
                .await
                .expect("accepted");
            assert!(recorded.newly_recorded);
            ids.push(recorded.message_id);
        }
        let mailbox = messages
            .mailbox_after(t.id, conversation, 0, 10)
            .await
            .expect("mailbox");
        assert_eq!(mailbox.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(mailbox[0].text, text, "every character kept");

        // Answers the first and the third: the second stays pending.
        let reply = |kind, answers: Vec<u64>| NewReply {
            conversation_id: conversation,
            reply_id: ReplyId::random(),
            kind,
            text: format!("re: {text}"),
            answers,
            prompt_tokens: Some(7),
            completion_tokens: None,
            estimated_prompt_tokens: Some(9),
            config_version: 3,
        };
        assert!(
            messages
                .store_reply(t.id, &reply(ReplyKind::Bot, vec![ids[0], ids[2]]))
                .await
                .expect("stored")
        );
        let pending = messages
            .pending(t.id, conversation, 10)
            .await
            .expect("pending");
        assert_eq!(
            pending
                .turns
                .iter()
                .map(|p| p.message_id)
                .collect::<Vec<_>>(),
            [ids[1]]
        );
        let history = messages
            .open_turn(t.id, conversation, 0, 10, |_| false)
            .await
            .expect("history")
            .history;
        assert_eq!(
            history.last().map(|h| h.content.as_str()),
            Some(&*format!("re: {text}"))
        );
        let today = Utc::now().date_naive();
        let usage = env
            .db
            .usage()
            .days(t.id, today, today)
            .await
            .expect("usage");
        assert_eq!(
            usage
                .iter()
                .map(|d| (d.messages, d.prompt_tokens))
                .collect::<Vec<_>>(),
            [(2, 7)]
        );

        // Answered before: nothing stored.
        assert!(
            !messages
                .store_reply(t.id, &reply(ReplyKind::Bot, vec![ids[0]]))
                .await
                .expect("refused")
        );
        // A human has the conversation: the bot's reply is dropped, an agent's is kept.
        conversations
            .set_mode(t.id, conversation, ConversationMode::Human)
            .await
            .expect("handoff");
        assert!(
            !messages
                .store_reply(t.id, &reply(ReplyKind::Bot, vec![ids[1]]))
                .await
                .expect("dropped")
        );
        assert_eq!(
            messages
                .mailbox_after(t.id, conversation, 0, 10)
                .await
                .expect("mailbox")
                .len(),
            4,
            "three questions and one answer"
        );
        assert!(
            messages
                .store_reply(t.id, &reply(ReplyKind::Agent, vec![ids[1]]))
                .await
                .expect("an agent's reply")
        );

        // Another tenant's conversation: refused, whatever the id.
        let refused = messages
            .accept_user(other.id, conversation, EnvelopeId::random(), "x", None)
            .await;
        assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
        let refused = messages
            .store_reply(other.id, &reply(ReplyKind::Agent, vec![ids[1]]))
            .await;
        assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
        assert!(
            !messages
                .store_reply(other.id, &reply(ReplyKind::Bot, vec![ids[1]]))
                .await
                .expect("not the tenant's")
        );
        env.teardown().await;
    }

    /// The history keeps each question right before its answer, however the questions
    /// and answers interleaved, places closed and agent messages where they happened,
    /// leaves pending questions out, and returns the newest `limit` messages. The dry-run
    /// replay's view stops before the message replayed.
    #[tokio::test]
    async fn history_keeps_questions_before_their_answers_in_turn_order() {
        let env = TestEnv::start(&[]).await;
        let t = env.tenant("history").await;
        let conversation = env
            .db
            .conversations()
            .get_or_create(t.id, Channel::Api, "h")
            .await
            .expect("conversation");
        let messages = env.db.messages();
        let ask = |text: &'static str| {
            let messages = env.db.messages();
            async move {
                let envelope = EnvelopeId::random();
                let recorded = messages
                    .accept_user(t.id, conversation, envelope, text, None)
                    .await
                    .expect("accepted");
                (recorded.message_id, envelope)
            }
        };
        let answer = |text: &str, answers: Vec<u64>| NewReply {
            conversation_id: conversation,
            reply_id: ReplyId::random(),
            kind: ReplyKind::Bot,
            text: text.into(),
            answers,
            prompt_tokens: None,
            completion_tokens: None,
            estimated_prompt_tokens: None,
            config_version: 1,
        };
        let (q1, _) = ask("q1").await;
        // q2 arrives while q1 is being answered; q3 is ignored (a reaction, say).
        let (q2, _) = ask("q2").await;
        let (_, q3) = ask("q3").await;
        messages
            .close_unanswered(t.id, q3, UserMessageState::Ignored)
            .await
            .expect("ignored");
        assert!(
            messages
                .store_reply(t.id, &answer("a1", vec![q1]))
                .await
                .expect("a1")
        );
        messages
            .store_agent_message(t.id, conversation, ReplyId::random(), "agent says")
            .await
            .expect("agent");
        assert!(
            messages
                .store_reply(t.id, &answer("a2", vec![q2]))
                .await
                .expect("a2")
        );
        let (q4, _) = ask("q4").await;
        let (q5, _) = ask("q5").await;
        assert!(
            messages
                .store_reply(t.id, &answer("a45", vec![q4, q5]))
                .await
                .expect("a45")
        );
        let (q6, _) = ask("q6, still pending").await;

        let contents =
            |turns: Vec<HistoryTurn>| turns.into_iter().map(|h| h.content).collect::<Vec<_>>();
        let all = messages
            .open_turn(t.id, conversation, 0, 100, |_| false)
            .await
            .expect("history")
            .history;
        assert_eq!(
            contents(all),
            [
                "q3",
                "q1",
                "a1",
                "agent says",
                "q2",
                "a2",
                "q4",
                "q5",
                "a45"
            ]
        );
        let newest = messages
            .open_turn(t.id, conversation, 0, 4, |_| false)
            .await
            .expect("newest")
            .history;
        assert_eq!(contents(newest), ["a2", "q4", "q5", "a45"]);
        let before_q4 = messages
            .history_before(t.id, conversation, q4, 100)
            .await
            .expect("before q4");
        assert_eq!(
            contents(before_q4),
            ["q3", "q1", "a1", "agent says", "q2", "a2"]
        );

        // A fallback reopened for a real answer leaves the history until it is answered.
        let (q7, q7_envelope) = ask("q7").await;
        let fallback = NewReply {
            kind: ReplyKind::Fallback,
            ..answer("sorry", vec![q6, q7])
        };
        assert!(
            messages
                .store_reply(t.id, &fallback)
                .await
                .expect("fallback")
        );
        assert!(
            messages
                .reopen_after_fallback(t.id, q7_envelope)
                .await
                .expect("reopened")
        );
        let newest = messages
            .open_turn(t.id, conversation, 0, 2, |_| false)
            .await
            .expect("newest")
            .history;
        assert_eq!(contents(newest), ["q6, still pending", "sorry"]);
        env.teardown().await;
    }

    /// A turn's one-statement read returns what the three separate reads return, each
    /// part in its own order and within its own limit, and nothing of another
    /// conversation.
    #[tokio::test]
    async fn a_turns_one_read_matches_its_three_reads() {
        let env = TestEnv::start(&[]).await;
        let t = env.tenant("open-turn").await;
        let conversations = env.db.conversations();
        let messages = env.db.messages();
        let (mine, other) = (
            conversations
                .get_or_create(t.id, Channel::Api, "mine")
                .await
                .expect("mine"),
            conversations
                .get_or_create(t.id, Channel::Api, "other")
                .await
                .expect("other"),
        );
        let ask = |conversation, text: String| {
            let messages = env.db.messages();
            async move {
                let envelope = EnvelopeId::random();
                let recorded = messages
                    .accept_user(t.id, conversation, envelope, &text, None)
                    .await
                    .expect("accepted");
                (recorded.message_id, envelope)
            }
        };
        let answer = |conversation, text: String, answers| NewReply {
            conversation_id: conversation,
            reply_id: ReplyId::random(),
            kind: ReplyKind::Bot,
            text,
            answers,
            prompt_tokens: None,
            completion_tokens: None,
            estimated_prompt_tokens: None,
            config_version: 1,
        };
        let mut unconfirmed = std::collections::HashMap::new();
        for conversation in [mine, other] {
            for i in 0..3 {
                let (q, envelope) = ask(conversation, format!("q{i} {conversation}")).await;
                let reply = answer(conversation, format!("a{i} {conversation}"), vec![q]);
                assert!(messages.store_reply(t.id, &reply).await.expect("stored"));
                // The first two were confirmed by the broker; the last one was not.
                if i < 2 {
                    messages
                        .mark_published(t.id, &[reply.reply_id])
                        .await
                        .expect("marked");
                } else {
                    unconfirmed.insert(conversation, (reply.reply_id, reply.text, vec![envelope]));
                }
            }
            for i in 0..3 {
                ask(conversation, format!("p{i} {conversation}")).await;
            }
        }

        let opened = messages
            .open_turn(t.id, mine, 2, 4, |_| false)
            .await
            .expect("opened");
        let pending = messages.pending(t.id, mine, 2).await.expect("pending");
        let history = messages
            .history_before(t.id, mine, u64::MAX, 4)
            .await
            .expect("history");
        let unconfirmed = unconfirmed.remove(&mine).expect("mine's unconfirmed reply");
        assert_eq!(
            opened
                .unpublished
                .iter()
                .map(|(r, a)| (r.id, r.text.clone(), a.clone()))
                .collect::<Vec<_>>(),
            [unconfirmed]
        );
        let texts = |p: &Pending| p.turns.iter().map(|t| t.text.clone()).collect::<Vec<_>>();
        assert_eq!(texts(&opened.pending), texts(&pending));
        assert_eq!(
            texts(&opened.pending),
            [format!("p0 {mine}"), format!("p1 {mine}")]
        );
        assert_eq!(opened.pending.mode, ConversationMode::Bot);
        assert_eq!(opened.history, history);
        assert_eq!(
            opened
                .history
                .iter()
                .map(|h| h.content.clone())
                .collect::<Vec<_>>(),
            [
                format!("q1 {mine}"),
                format!("a1 {mine}"),
                format!("q2 {mine}"),
                format!("a2 {mine}"),
            ]
        );

        // Nothing pending: no mode to read, and none needed.
        let quiet = conversations
            .get_or_create(t.id, Channel::Api, "quiet")
            .await
            .expect("quiet");
        let opened = messages
            .open_turn(t.id, quiet, 2, 4, |_| false)
            .await
            .expect("opened");
        assert!(opened.unpublished.is_empty() && opened.pending.turns.is_empty());
        assert!(opened.history.is_empty());
        env.teardown().await;
    }
}
