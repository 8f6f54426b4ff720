//! Recording user turns: once per envelope id (the idempotency key), at the mailbox
//! position of their conversation, one at a time (a worker) or a channel's batch at once.
//! Never answers a turn: that is [`super::replies`].

use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::{MessageState, Messages, RecordedUser, signalled, single, stored_reply};
use crate::db::{guard, is_duplicate_key};
use crate::error::{Error, Result};
use crate::ids::{ConversationId, EnvelopeId};

/// A user message a channel is accepting ([`Messages::accept_users`]).
#[derive(Debug, Clone, Copy)]
pub struct NewUserMessage<'a> {
    pub conversation_id: ConversationId,
    pub envelope_id: EnvelopeId,
    pub content: &'a str,
    pub channel_message_id: Option<&'a str>,
}

impl Messages<'_> {
    /// Records a user turn once. A second call with the same envelope id changes nothing
    /// and reports the first recording's state (and its reply, if answered). Looks first:
    /// for a worker, whose messages were mostly recorded at acceptance already. The look
    /// is a locking read, so it waits for a recording of the envelope that is still being
    /// committed (by another delivery of the same envelope, on another worker) and then
    /// finds it, instead of missing it, taking a position under the conversation's row
    /// lock and inserting only to meet a duplicate key.
    pub async fn record_user(
        &self,
        conversation_id: ConversationId,
        envelope_id: EnvelopeId,
        content: &str,
        channel_message_id: Option<&str>,
    ) -> Result<RecordedUser> {
        if let Some(found) = self.find_user(envelope_id).await? {
            return Ok(found);
        }
        self.accept_user(conversation_id, envelope_id, content, channel_message_id)
            .await
    }

    /// [`Messages::record_user`] for a message that is most likely new (a channel
    /// accepting it): inserts first (at its mailbox position, committed when this
    /// returns), and looks for the earlier recording only when the envelope id turns out
    /// to be taken.
    pub async fn accept_user(
        &self,
        conversation_id: ConversationId,
        envelope_id: EnvelopeId,
        content: &str,
        channel_message_id: Option<&str>,
    ) -> Result<RecordedUser> {
        let client_id = self.client_id;
        // One round trip: the position and the insert in one transaction
        // (migrations/20261128000002_write_procedures.sql).
        let call = guard::query_scalar("CALL accept_user_message(?, ?, ?, ?, ?)")?
            .bind(client_id.get())
            .bind(conversation_id.get())
            .bind(envelope_id.as_uuid())
            .bind(content)
            .bind(channel_message_id);
        let inserted = self
            .pool
            .direct()
            .await?
            .run(async move |conn| call.fetch_all(conn).await)
            .await;
        match inserted {
            Ok(ids) => Ok(RecordedUser {
                message_id: single(ids, "accept_user_message")?,
                newly_recorded: true,
                state: MessageState::Pending,
                reply: None,
            }),
            Err(e) if is_duplicate_key(&e) => {
                // Recorded before, or concurrently by another delivery of the envelope.
                self.find_user(envelope_id).await?.ok_or(Error::Database(e))
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
    pub async fn accept_users(&self, batch: &[NewUserMessage<'_>]) -> Result<Vec<u64>> {
        let client_id = self.client_id;
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
            .map_err(|e| Error::Internal(format!("accept_user_messages batch: {e}")))?;
        let call = guard::query_scalar("CALL accept_user_messages(?, ?)")?
            .bind(client_id.get())
            .bind(entries);
        let ids: Vec<String> = self
            .pool
            .direct()
            .await?
            .run(async move |conn| call.fetch_all(conn).await)
            .await
            .map_err(signalled)?;
        let ids = single(ids, "accept_user_messages")?
            .split(',')
            .map(|id| {
                id.parse::<u64>()
                    .map_err(|_| Error::Internal(format!("accept_user_messages answered {id:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        if ids.len() != batch.len() {
            return Err(Error::Internal(format!(
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

    async fn find_user(&self, envelope_id: EnvelopeId) -> Result<Option<RecordedUser>> {
        let client_id = self.client_id;
        // A locking read: it waits for a transaction that inserted this envelope's
        // message and has not committed yet (another worker's delivery of the same
        // envelope), instead of missing it and meeting the duplicate key later. Outside
        // a transaction its shared locks last for this statement only.
        let row = guard::query(
            "SELECT u.id, u.state, r.envelope_id, r.reply_kind, r.content, r.config_version, \
             r.created_at \
             FROM messages u LEFT JOIN messages r \
               ON r.client_id = u.client_id AND r.id = u.reply_message_id \
             WHERE u.client_id = ? AND u.envelope_id = ? AND u.role = 'user' \
             LOCK IN SHARE MODE",
        )?
        .bind(client_id.get())
        .bind(envelope_id.as_uuid());
        let found = self
            .pool
            .direct()
            .await?
            .run(async move |conn| row.fetch_optional(conn).await)
            .await?;
        let Some(row) = found else {
            return Ok(None);
        };
        // The reply's columns are NULL while the message is unanswered.
        let reply = match row.try_get::<Option<Uuid>, _>("envelope_id")? {
            Some(_) => Some(stored_reply(&row)?),
            None => None,
        };
        Ok(Some(RecordedUser {
            message_id: row.try_get("id")?,
            newly_recorded: false,
            state: row.try_get("state")?,
            reply,
        }))
    }

    /// The envelope id of the conversation's first user message, if it has one.
    pub async fn first_user_envelope(
        &self,
        conversation_id: ConversationId,
    ) -> Result<Option<EnvelopeId>> {
        let client_id = self.client_id;
        let id: Option<Uuid> = guard::query_scalar(
            "SELECT envelope_id FROM messages WHERE client_id = ? AND conversation_id = ? \
             AND role = 'user' ORDER BY id LIMIT 1",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .fetch_optional(self.pool.get().await?)
        .await?;
        Ok(id.map(EnvelopeId::from_uuid))
    }

    /// The row id of the user message an envelope recorded, if it was recorded.
    pub async fn user_message_id(&self, envelope_id: EnvelopeId) -> Result<Option<u64>> {
        let client_id = self.client_id;
        Ok(guard::query_scalar(
            "SELECT id FROM messages WHERE client_id = ? AND envelope_id = ? AND role = 'user'",
        )?
        .bind(client_id.get())
        .bind(envelope_id.as_uuid())
        .fetch_optional(self.pool.get().await?)
        .await?)
    }

    /// Removes a user message that is still unanswered (one whose acceptance failed after
    /// it was recorded). Returns whether it was removed.
    pub async fn withdraw(&self, envelope_id: EnvelopeId) -> Result<bool> {
        let client_id = self.client_id;
        let done = guard::query(
            "DELETE FROM messages \
             WHERE client_id = ? AND envelope_id = ? AND role = 'user' AND state = 'pending'",
        )?
        .bind(client_id.get())
        .bind(envelope_id.as_uuid())
        .execute(self.pool.get().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::mysql::MySqlPool;

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
        let db = &env.db;
        let t = env.tenant("in-flight").await;
        let conversation = db
            .tenant(t.id)
            .conversations()
            .get_or_create(Channel::Api, "c")
            .await
            .expect("conversation");
        let envelope = EnvelopeId::random();
        // The other recording, inserted and not yet committed.
        let mut other = env.db.home().pool.begin().await.expect("begin");
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
            db.tenant(client_id)
                .messages()
                .record_user(conversation, envelope, "hello", None)
                .await
        });
        let waiting = eventually(Duration::from_secs(10), "the worker to wait", || async {
            let waiting = waiting(&env.db.home().pool).await;
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
        assert_eq!(recorded.state, MessageState::Pending);
        env.teardown().await;
    }

    /// A channel's batch: one transaction, positions in the batch's order per
    /// conversation, every character kept; a batch meeting a recorded envelope (or
    /// another tenant's conversation) writes nothing and takes no position.
    #[tokio::test]
    async fn a_batch_of_accepted_messages_is_written_whole_or_not_at_all() {
        let env = TestEnv::start(&[]).await;
        let db = &env.db;
        let t = env.tenant("batch").await;
        let other = env.tenant("batch-other").await;
        let a = db
            .tenant(t.id)
            .conversations()
            .get_or_create(Channel::Api, "a")
            .await
            .expect("a");
        let b = db
            .tenant(t.id)
            .conversations()
            .get_or_create(Channel::Api, "b")
            .await
            .expect("b");
        let foreign = db
            .tenant(other.id)
            .conversations()
            .get_or_create(Channel::Api, "a")
            .await
            .expect("foreign");
        let text = "Grüße 👋 — 你好, O'Brien \\ \"quoted\"";
        let envelopes: Vec<EnvelopeId> = (0..3).map(|_| EnvelopeId::random()).collect();
        let batch = |conversation_id, envelope_id, content| NewUserMessage {
            conversation_id,
            envelope_id,
            content,
            channel_message_id: None,
        };
        let ids = db
            .tenant(t.id)
            .messages()
            .accept_users(&[
                batch(a, envelopes[0], text),
                NewUserMessage {
                    channel_message_id: Some("wamid.Ä👋"),
                    ..batch(b, envelopes[1], "to b")
                },
                batch(a, envelopes[2], "second to a"),
            ])
            .await
            .expect("accepted");
        assert_eq!(ids.len(), 3);
        for (id, envelope) in ids.iter().zip(&envelopes) {
            assert_eq!(
                db.tenant(t.id)
                    .messages()
                    .user_message_id(*envelope)
                    .await
                    .expect("looked up"),
                Some(*id),
                "each id is its own message's, in the order given: {ids:?}"
            );
        }
        let messages = &db.tenant(t.id).messages();
        let mailbox = |conversation| async move {
            messages
                .mailbox_after(conversation, 0, 10)
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
        let found = db
            .tenant(t.id)
            .messages()
            .record_user(b, envelopes[1], "ignored", None)
            .await
            .expect("found");
        assert_eq!((found.message_id, found.newly_recorded), (ids[1], false));

        // A recorded envelope in the batch: nothing of it is written.
        let fresh = EnvelopeId::random();
        let duplicate = db
            .tenant(t.id)
            .messages()
            .accept_users(&[batch(a, fresh, "new"), batch(a, envelopes[0], "again")])
            .await;
        assert!(duplicate.is_err(), "{duplicate:?}");
        // Another tenant's conversation: refused, nothing written.
        let refused = db
            .tenant(t.id)
            .messages()
            .accept_users(&[
                batch(a, fresh, "new"),
                batch(foreign, EnvelopeId::random(), "x"),
            ])
            .await;
        assert!(matches!(refused, Err(Error::Internal(_))), "{refused:?}");
        assert_eq!(mailbox(a).await.len(), 2, "nothing of either batch written");
        let next = db
            .tenant(t.id)
            .messages()
            .accept_user(a, fresh, "new", None)
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
        let db = &env.db;
        let t = env.tenant("lock-order").await;
        let mut conversations = Vec::new();
        for key in 0..8 {
            conversations.push(
                db.tenant(t.id)
                    .conversations()
                    .get_or_create(Channel::Api, &format!("c{key}"))
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
                    if let Err(e) = db.tenant(t.id).messages().accept_users(&batch).await {
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
            let seqs: Vec<u64> = db
                .tenant(t.id)
                .messages()
                .mailbox_after(conversation, 0, 100)
                .await
                .expect("mailbox")
                .iter()
                .map(|m| m.seq)
                .collect();
            assert_eq!(seqs, (1..=2 * ROUNDS as u64).collect::<Vec<_>>());
        }
        env.teardown().await;
    }
}
