//! Storing what answers a conversation: a reply to its pending turns (one per turn,
//! under the conversation's row lock), a human agent's message, the outbox marks of the
//! replies the broker confirmed, and the turns closed without a reply.

use super::{MessageState, Messages, Role, signalled, single};
use crate::db::text_column::text_column;
use crate::db::{guard, is_deadlock, usage};
use crate::envelope::ReplyKind;
use crate::error::{Error, Result};
use crate::ids::{ConversationId, EnvelopeId, ReplyId};
use crate::metric;

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
    /// The choices the reply offers (`offer_choices`); empty: none.
    pub choices: Vec<String>,
    /// Who answered, what it cost, and the day it counts on.
    pub accounting: ReplyAccounting,
}

/// Who answered a reply and what its turn cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplyAccounting {
    /// The tenant's own date (its timezone) the usage counts on; `None`: UTC's.
    pub day: Option<chrono::NaiveDate>,
    /// The provider and model that answered; `None`: no LLM call.
    pub provider: Option<String>,
    pub model: Option<String>,
    pub key_owner: Option<KeyOwner>,
    /// What the turn's LLM calls (tool rounds included) cost, in micro-units; `None` when
    /// one of them had no price, or there was no call.
    pub cost_micros: Option<u64>,
    /// A call had no price (the reply counts as unpriced, not as free).
    pub unpriced: bool,
    /// Why a fallback answered instead of the tenant's model.
    pub fallback_reason: Option<String>,
}

/// Whose key an LLM call used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOwner {
    /// The tenant's own credentials (`llm-credentials`).
    Tenant,
    /// The operator's (`llm.providers.<name>.api_key`).
    Platform,
}

text_column!(KeyOwner, "key owner", {
    Tenant => "tenant",
    Platform => "platform",
});

/// What [`Messages::store_reply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The reply is stored and the turns it answers are answered.
    Stored,
    /// Nothing stored: a bot or fallback reply met a conversation a human has (a
    /// handoff during the turn wins).
    NotBotMode,
    /// Nothing stored: the turns were answered before (the guard that makes one reply
    /// per turn).
    AnsweredBefore,
}

text_column!(StoreOutcome, "store_reply outcome", {
    Stored => "stored",
    NotBotMode => "not_bot",
    AnsweredBefore => "answered_before",
});

/// How a user turn ends without a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedAs {
    /// Given up on (dead-lettered).
    Failed,
    /// Deliberately not answered (suspended tenant, human mode, reaction…).
    Ignored,
}

impl From<ClosedAs> for MessageState {
    fn from(closed: ClosedAs) -> Self {
        match closed {
            ClosedAs::Failed => Self::Failed,
            ClosedAs::Ignored => Self::Ignored,
        }
    }
}

/// How often a reply transaction runs before a deadlock is reported.
const DEADLOCK_ATTEMPTS: u32 = 3;

impl Messages<'_> {
    /// Stores a reply and marks the user turns it answers as answered, in one
    /// transaction, and counts the usage; or stores nothing and says why.
    pub async fn store_reply(&self, reply: &NewReply) -> Result<StoreOutcome> {
        if reply.answers.is_empty() {
            return Err(Error::Internal(
                "a reply must answer at least one message".into(),
            ));
        }
        // A small transaction among many is InnoDB's usual deadlock victim (against the
        // batched confirm marks, say); rolled back whole, it is simply run again.
        let mut attempt = 1;
        loop {
            match self.try_store_reply(reply).await {
                Err(e) if is_deadlock(&e) && attempt < DEADLOCK_ATTEMPTS => {
                    tracing::debug!(attempt, "storing a reply met a deadlock; running it again");
                    metrics::counter!(metric::DB_DEADLOCK_RETRIES).increment(1);
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn try_store_reply(&self, reply: &NewReply) -> Result<StoreOutcome> {
        let client_id = self.client_id;
        let role = match reply.kind {
            ReplyKind::Agent => Role::Agent,
            _ => Role::Assistant,
        };
        // The bot's own answers are only stored while the bot has the conversation: a
        // handoff that happened during the turn wins (the conversation's row lock orders
        // the two). One round trip: the mailbox position, the reply, the answered marks
        // and the usage in one transaction (the `store_reply` procedure).
        let bot_only = matches!(reply.kind, ReplyKind::Bot | ReplyKind::Fallback);
        let answers = reply
            .answers
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let choices = (!reply.choices.is_empty())
            .then(|| serde_json::to_string(&reply.choices))
            .transpose()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let spent = &reply.accounting;
        let call = guard::query_scalar(
            "CALL store_reply(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .bind(client_id.get())
        .bind(reply.conversation_id.get())
        .bind(reply.reply_id.as_uuid())
        .bind(role)
        .bind(&reply.text)
        .bind(reply.kind)
        .bind(bot_only)
        .bind(reply.prompt_tokens)
        .bind(reply.completion_tokens)
        .bind(reply.estimated_prompt_tokens)
        .bind(reply.config_version)
        .bind(answers)
        .bind(reply.conversation_id.get() % usage::SHARDS)
        .bind(choices)
        .bind(spent.day)
        .bind(spent.provider.clone())
        .bind(spent.model.clone())
        .bind(spent.key_owner)
        .bind(spent.cost_micros)
        .bind(spent.unpriced)
        .bind(spent.fallback_reason.clone());
        let outcome: Vec<StoreOutcome> = self
            .pool
            .direct()
            .await?
            .run(async move |conn| call.fetch_all(conn).await)
            .await
            .map_err(signalled)?;
        single(outcome, "store_reply")
    }

    /// Stores a human agent's message (answering no particular turn) at the
    /// conversation's next mailbox position (the `store_agent_message` procedure).
    pub async fn store_agent_message(
        &self,
        conversation_id: ConversationId,
        reply_id: ReplyId,
        text: &str,
    ) -> Result<()> {
        let client_id = self.client_id;
        let call = guard::query_scalar("CALL store_agent_message(?, ?, ?, ?)")?
            .bind(client_id.get())
            .bind(conversation_id.get())
            .bind(reply_id.as_uuid())
            .bind(text);
        let positions: Vec<u64> = self
            .pool
            .direct()
            .await?
            .run(async move |conn| call.fetch_all(conn).await)
            .await
            .map_err(|e| match signalled(e) {
                // The admin API names the conversation: not the tenant's is not found.
                Error::Internal(_) => {
                    Error::NotFound(format!("conversation {conversation_id} not found"))
                }
                other => other,
            })?;
        single(positions, "store_agent_message")?;
        Ok(())
    }

    /// Records that the broker confirmed these replies of one tenant (the outbox of
    /// [`Messages::open_turn`] leaves them out): one statement for a whole batch of
    /// confirms.
    pub async fn mark_published(&self, reply_ids: &[ReplyId]) -> Result<()> {
        self.mark_replies(
            reply_ids,
            "published_at = CURRENT_TIMESTAMP(6)",
            "published_at IS NULL",
        )
        .await
    }

    /// `UPDATE messages SET {set}` for a batch of one tenant's replies, those still
    /// matching `only`: one statement for many marks.
    pub(super) async fn mark_replies(
        &self,
        reply_ids: &[ReplyId],
        set: &str,
        only: &str,
    ) -> Result<()> {
        let client_id = self.client_id;
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
        self.pool
            .direct()
            .await?
            .run(async move |conn| update.execute(conn).await)
            .await?;
        Ok(())
    }

    /// Makes a user message that only got the tenant's fallback message (its turn was
    /// dead-lettered after the last attempt) unanswered again, so the next turn answers it
    /// for real: what `chatfleet dlq requeue` does before putting it back on the work
    /// queue. Returns whether it was reopened.
    pub async fn reopen_after_fallback(&self, envelope_id: EnvelopeId) -> Result<bool> {
        let client_id = self.client_id;
        let done = guard::query(
            "UPDATE messages u JOIN messages r \
               ON r.client_id = u.client_id AND r.id = u.reply_message_id \
             SET u.state = 'pending', u.reply_message_id = NULL, u.history_seq = NULL \
             WHERE u.client_id = ? AND u.envelope_id = ? AND u.role = 'user' \
               AND u.state = 'answered' AND r.reply_kind = 'fallback'",
        )?
        .bind(client_id.get())
        .bind(envelope_id.as_uuid())
        .execute(self.pool.get().await?)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Marks a still-pending user turn as failed (it was dead-lettered) or ignored.
    pub async fn close_unanswered(&self, envelope_id: EnvelopeId, closed: ClosedAs) -> Result<()> {
        let client_id = self.client_id;
        guard::query(
            "UPDATE messages SET state = ?, history_seq = COALESCE(seq, 0) \
             WHERE client_id = ? AND envelope_id = ? AND role = 'user' AND state = 'pending'",
        )?
        .bind(MessageState::from(closed))
        .bind(client_id.get())
        .bind(envelope_id.as_uuid())
        .execute(self.pool.get().await?)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::db::ConversationMode;
    use crate::ids::Channel;
    use crate::testkit::TestEnv;

    /// The write procedures (one round trip each) keep every character of a message,
    /// answer exactly the messages they are given, count them, and refuse what the
    /// statements they replaced refused.
    #[tokio::test]
    async fn the_write_procedures_store_exactly_what_they_are_given() {
        let env = TestEnv::start(&[]).await;
        let db = &env.db;
        let t = env.tenant("procedures").await;
        let other = env.tenant("procedures-other").await;
        let conversation = db
            .tenant(t.id)
            .conversations()
            .get_or_create(Channel::Api, "c")
            .await
            .expect("conversation");
        let text = "Grüße 👋 — 你好, O'Brien \\ \"quoted\"";
        let mut ids = Vec::new();
        for content in [text, "second", "third"] {
            let recorded = db
                .tenant(t.id)
                .messages()
                .accept_user(
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
        let mailbox = db
            .tenant(t.id)
            .messages()
            .mailbox_after(conversation, 0, 10)
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
            choices: Vec::new(),
            accounting: Default::default(),
        };
        assert_eq!(
            db.tenant(t.id)
                .messages()
                .store_reply(&reply(ReplyKind::Bot, vec![ids[0], ids[2]]))
                .await
                .expect("stored"),
            StoreOutcome::Stored
        );
        let pending = db
            .tenant(t.id)
            .messages()
            .pending(conversation, 10)
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
        let history = db
            .tenant(t.id)
            .messages()
            .open_turn(conversation, 0, 10, |_| false)
            .await
            .expect("history")
            .history;
        assert_eq!(
            history.last().map(|h| h.content.as_str()),
            Some(&*format!("re: {text}"))
        );
        let today = Utc::now().date_naive();
        let usage = db
            .tenant(t.id)
            .usage()
            .days(today, today)
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
        assert_eq!(
            db.tenant(t.id)
                .messages()
                .store_reply(&reply(ReplyKind::Bot, vec![ids[0]]))
                .await
                .expect("refused"),
            StoreOutcome::AnsweredBefore
        );
        // A human has the conversation: the bot's reply is dropped, an agent's is kept.
        db.tenant(t.id)
            .conversations()
            .set_mode(conversation, ConversationMode::Human)
            .await
            .expect("handoff");
        assert_eq!(
            db.tenant(t.id)
                .messages()
                .store_reply(&reply(ReplyKind::Bot, vec![ids[1]]))
                .await
                .expect("dropped"),
            StoreOutcome::NotBotMode
        );
        assert_eq!(
            db.tenant(t.id)
                .messages()
                .mailbox_after(conversation, 0, 10)
                .await
                .expect("mailbox")
                .len(),
            4,
            "three questions and one answer"
        );
        assert_eq!(
            db.tenant(t.id)
                .messages()
                .store_reply(&reply(ReplyKind::Agent, vec![ids[1]]))
                .await
                .expect("an agent's reply"),
            StoreOutcome::Stored
        );

        // Another tenant's conversation: refused, whatever the id.
        let refused = db
            .tenant(other.id)
            .messages()
            .accept_user(conversation, EnvelopeId::random(), "x", None)
            .await;
        assert!(matches!(refused, Err(Error::Internal(_))), "{refused:?}");
        let refused = db
            .tenant(other.id)
            .messages()
            .store_reply(&reply(ReplyKind::Agent, vec![ids[1]]))
            .await;
        assert!(matches!(refused, Err(Error::Internal(_))), "{refused:?}");
        assert_eq!(
            db.tenant(other.id)
                .messages()
                .store_reply(&reply(ReplyKind::Bot, vec![ids[1]]))
                .await
                .expect("not the tenant's"),
            StoreOutcome::NotBotMode
        );
        env.teardown().await;
    }
}
