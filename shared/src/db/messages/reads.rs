//! What a turn reads: the conversation's pending user turns, the outbox of replies the
//! broker never confirmed, and the history for the prompt — in one statement once the
//! turn holds the conversation's lock ([`Messages::open_turn`]). Reads only.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::mysql::MySqlRow;
use uuid::Uuid;

use super::{HistoryTurn, Messages, StoredReply, history_turn, stored_reply};
use crate::db::{ConversationMode, guard};
use crate::error::Result;
use crate::ids::{ConversationId, EnvelopeId, ReplyId};

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

impl Messages<'_> {
    /// The conversation's unanswered user turns in mailbox order, at most `limit`: what
    /// the next turn answers (several at once when they arrived while one was running);
    /// with who has the conversation, read in the same statement (when anything is
    /// pending).
    pub async fn pending(&self, conversation_id: ConversationId, limit: u32) -> Result<Pending> {
        let client_id = self.client_id;
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
            .pool
            .direct()
            .await?
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
        conversation_id: ConversationId,
        pending_limit: u32,
        history_limit: u32,
        confirmed: impl Fn(ReplyId) -> bool,
    ) -> Result<OpenTurn> {
        let client_id = self.client_id;
        // Each part keeps its own order and limit; `part`, `k1` and `k2` sort the rows
        // back into them (a UNION promises no order of its own). Literals in unsigned
        // columns are cast, or MariaDB widens the column to DECIMAL.
        let rows = guard::query(
            "(SELECT 'relay' AS part, m.id, m.envelope_id, m.role, m.content, m.created_at, \
                m.reply_kind, m.config_version, NULL AS mode, m.seq AS k1, \
                CAST(0 AS UNSIGNED) AS k2, m.choices FROM messages m FORCE INDEX (ix_messages_open) \
              WHERE m.client_id = ? AND m.conversation_id = ? AND m.state = 'stored' \
                AND m.published_at IS NULL) \
             UNION ALL \
             (SELECT 'pending', m.id, m.envelope_id, m.role, m.content, m.created_at, NULL, \
                CAST(NULL AS UNSIGNED), \
                (SELECT c.mode FROM conversations c \
                 WHERE c.client_id = m.client_id AND c.id = m.conversation_id), \
                m.seq, CAST(0 AS UNSIGNED), NULL FROM messages m FORCE INDEX (ix_messages_open) \
              WHERE m.client_id = ? AND m.conversation_id = ? AND m.role = 'user' \
                AND m.state = 'pending' ORDER BY m.seq ASC LIMIT ?) \
             UNION ALL \
             (SELECT 'history', m.id, NULL, m.role, m.content, NULL, NULL, \
                CAST(NULL AS UNSIGNED), NULL, \
                m.history_seq, m.id, NULL FROM messages m FORCE INDEX (ix_messages_history) \
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
            .pool
            .direct()
            .await?
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
            let mut reply = stored_reply(r)?;
            if confirmed(reply.id) {
                continue;
            }
            reply.choices = super::mailbox::choices(r)?;
            let answers = self.answers_of(r.try_get("id")?).await?;
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
        conversation_id: ConversationId,
        before_id: u64,
        limit: u32,
    ) -> Result<Vec<HistoryTurn>> {
        let client_id = self.client_id;
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
        .fetch_all(self.pool.get().await?)
        .await?;
        let mut turns = rows.iter().map(history_turn).collect::<Result<Vec<_>>>()?;
        turns.reverse();
        Ok(turns)
    }

    /// The envelopes of the user messages a stored reply (row `reply_row`) answers.
    async fn answers_of(&self, reply_row: u64) -> Result<Vec<EnvelopeId>> {
        let client_id = self.client_id;
        let answers: Vec<Uuid> = guard::query_scalar(
            "SELECT envelope_id FROM messages WHERE client_id = ? AND reply_message_id = ? \
             ORDER BY seq ASC",
        )?
        .bind(client_id.get())
        .bind(reply_row)
        .fetch_all(self.pool.get().await?)
        .await?;
        Ok(answers.into_iter().map(EnvelopeId::from_uuid).collect())
    }
}

/// Pending rows (with the conversation's `mode` on each) as a [`Pending`].
fn pending_of(rows: &[&MySqlRow]) -> Result<Pending> {
    let mode = match rows.first() {
        Some(r) => r.try_get("mode")?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::messages::{ClosedAs, NewReply, StoreOutcome};
    use crate::envelope::ReplyKind;
    use crate::ids::Channel;
    use crate::testkit::TestEnv;

    /// The history keeps each question right before its answer, however the questions
    /// and answers interleaved, places closed and agent messages where they happened,
    /// leaves pending questions out, and returns the newest `limit` messages. The dry-run
    /// replay's view stops before the message replayed.
    #[tokio::test]
    async fn history_keeps_questions_before_their_answers_in_turn_order() {
        let env = TestEnv::start(&[]).await;
        let db = &env.db;
        let t = env.tenant("history").await;
        let conversation = db
            .tenant(t.id)
            .conversations()
            .get_or_create(Channel::Api, "h")
            .await
            .expect("conversation");
        let ask = |text: &'static str| async move {
            let envelope = EnvelopeId::random();
            let recorded = db
                .tenant(t.id)
                .messages()
                .accept_user(conversation, envelope, text, None)
                .await
                .expect("accepted");
            (recorded.message_id, envelope)
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
            choices: Vec::new(),
            accounting: Default::default(),
        };
        let (q1, _) = ask("q1").await;
        // q2 arrives while q1 is being answered; q3 is ignored (a reaction, say).
        let (q2, _) = ask("q2").await;
        let (_, q3) = ask("q3").await;
        db.tenant(t.id)
            .messages()
            .close_unanswered(q3, ClosedAs::Ignored)
            .await
            .expect("ignored");
        assert_eq!(
            db.tenant(t.id)
                .messages()
                .store_reply(&answer("a1", vec![q1]))
                .await
                .expect("a1"),
            StoreOutcome::Stored
        );
        db.tenant(t.id)
            .messages()
            .store_agent_message(conversation, ReplyId::random(), "agent says")
            .await
            .expect("agent");
        assert_eq!(
            db.tenant(t.id)
                .messages()
                .store_reply(&answer("a2", vec![q2]))
                .await
                .expect("a2"),
            StoreOutcome::Stored
        );
        let (q4, _) = ask("q4").await;
        let (q5, _) = ask("q5").await;
        assert_eq!(
            db.tenant(t.id)
                .messages()
                .store_reply(&answer("a45", vec![q4, q5]))
                .await
                .expect("a45"),
            StoreOutcome::Stored
        );
        let (q6, _) = ask("q6, still pending").await;

        let contents =
            |turns: Vec<HistoryTurn>| turns.into_iter().map(|h| h.content).collect::<Vec<_>>();
        let all = db
            .tenant(t.id)
            .messages()
            .open_turn(conversation, 0, 100, |_| false)
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
        let newest = db
            .tenant(t.id)
            .messages()
            .open_turn(conversation, 0, 4, |_| false)
            .await
            .expect("newest")
            .history;
        assert_eq!(contents(newest), ["a2", "q4", "q5", "a45"]);
        let before_q4 = db
            .tenant(t.id)
            .messages()
            .history_before(conversation, q4, 100)
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
        assert_eq!(
            db.tenant(t.id)
                .messages()
                .store_reply(&fallback)
                .await
                .expect("fallback"),
            StoreOutcome::Stored
        );
        assert!(
            db.tenant(t.id)
                .messages()
                .reopen_after_fallback(q7_envelope)
                .await
                .expect("reopened")
        );
        let newest = db
            .tenant(t.id)
            .messages()
            .open_turn(conversation, 0, 2, |_| false)
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
        let db = &env.db;
        let t = env.tenant("open-turn").await;
        let (mine, other) = (
            db.tenant(t.id)
                .conversations()
                .get_or_create(Channel::Api, "mine")
                .await
                .expect("mine"),
            db.tenant(t.id)
                .conversations()
                .get_or_create(Channel::Api, "other")
                .await
                .expect("other"),
        );
        let ask = |conversation, text: String| async move {
            let envelope = EnvelopeId::random();
            let recorded = db
                .tenant(t.id)
                .messages()
                .accept_user(conversation, envelope, &text, None)
                .await
                .expect("accepted");
            (recorded.message_id, envelope)
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
            choices: Vec::new(),
            accounting: Default::default(),
        };
        let mut unconfirmed = std::collections::HashMap::new();
        for conversation in [mine, other] {
            for i in 0..3 {
                let (q, envelope) = ask(conversation, format!("q{i} {conversation}")).await;
                let reply = answer(conversation, format!("a{i} {conversation}"), vec![q]);
                assert_eq!(
                    db.tenant(t.id)
                        .messages()
                        .store_reply(&reply)
                        .await
                        .expect("stored"),
                    StoreOutcome::Stored
                );
                // The first two were confirmed by the broker; the last one was not.
                if i < 2 {
                    db.tenant(t.id)
                        .messages()
                        .mark_published(&[reply.reply_id])
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

        let opened = db
            .tenant(t.id)
            .messages()
            .open_turn(mine, 2, 4, |_| false)
            .await
            .expect("opened");
        let pending = db
            .tenant(t.id)
            .messages()
            .pending(mine, 2)
            .await
            .expect("pending");
        let history = db
            .tenant(t.id)
            .messages()
            .history_before(mine, u64::MAX, 4)
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
        let quiet = db
            .tenant(t.id)
            .conversations()
            .get_or_create(Channel::Api, "quiet")
            .await
            .expect("quiet");
        let opened = db
            .tenant(t.id)
            .messages()
            .open_turn(quiet, 2, 4, |_| false)
            .await
            .expect("opened");
        assert!(opened.unpublished.is_empty() && opened.pending.turns.is_empty());
        assert!(opened.history.is_empty());
        env.teardown().await;
    }
}
