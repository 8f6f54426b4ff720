//! Accepting user messages in batches. Each accepted message is committed before its
//! envelope is published (a worker must never hold a delivery whose message is not
//! committed), one transaction per message: under load that was a round trip, a
//! procedure call and a commit per message, and a pooled connection held for each while
//! the database was busiest. Here the requests that arrive while earlier ones are being
//! committed wait for the next round and go together: one procedure call and one commit
//! per tenant and round (`Messages::accept_users`). At light load a round holds one
//! message and nothing waits; at most [`ROUNDS`] rounds run at once.
//!
//! A batch that fails (a retried request whose envelope was recorded before, a deadlock)
//! left nothing written; its messages are then accepted one by one, in their order, so
//! each gets exactly what accepting it alone would have given it.

use std::sync::Arc;

use shared::db::{Db, MessageState, NewUserMessage, RecordedUser};
use shared::ids::{ClientId, ConversationId, EnvelopeId};
use shared::metric;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::{ApiError, Result};

/// Rounds committing at once.
const ROUNDS: usize = 4;
/// Most messages in one round. At 64, rounds ran full under load and held the sends
/// back (docs/performance.md has the figures). A round
/// of 256 maximal texts is ~4 MB, well under MariaDB's 16 MB packet; one of texts made
/// of escaped control characters could exceed it, and then fails as a batch and is
/// accepted one by one like any failed batch.
const MAX_ROUND: usize = 256;

/// A message waiting for its round, and who waits for its outcome.
struct Waiting {
    client_id: ClientId,
    conversation_id: ConversationId,
    envelope_id: EnvelopeId,
    content: String,
    channel_message_id: Option<String>,
    done: oneshot::Sender<shared::Result<RecordedUser>>,
}

/// The sending side; the rounds stop once every `Acceptor` is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Acceptor {
    tx: mpsc::UnboundedSender<Waiting>,
}

impl Acceptor {
    pub(crate) fn start(db: Db) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiting>();
        tokio::spawn(async move {
            let rounds = Arc::new(Semaphore::new(ROUNDS));
            loop {
                let Ok(turn) = rounds.clone().acquire_owned().await else {
                    break;
                };
                let mut round = Vec::new();
                if rx.recv_many(&mut round, MAX_ROUND).await == 0 {
                    break;
                }
                let db = db.clone();
                tokio::spawn(async move {
                    commit(&db, round).await;
                    drop(turn);
                });
            }
        });
        Self { tx }
    }

    /// Records a user message a channel is accepting, committed when this returns (as
    /// `Messages::accept_user` does, together with whatever arrived meanwhile).
    pub(crate) async fn accept(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        envelope_id: EnvelopeId,
        content: String,
        channel_message_id: Option<String>,
    ) -> Result<RecordedUser> {
        let stopped = || {
            ApiError::unavailable(&shared::Error::Internal(
                "the accepting task stopped".into(),
            ))
        };
        let (done, outcome) = oneshot::channel();
        self.tx
            .send(Waiting {
                client_id,
                conversation_id,
                envelope_id,
                content,
                channel_message_id,
                done,
            })
            .map_err(|_| stopped())?;
        Ok(outcome.await.map_err(|_| stopped())??)
    }
}

/// Commits one round: a batch per tenant, each message alone when its batch fails.
async fn commit(db: &Db, round: Vec<Waiting>) {
    metrics::histogram!(metric::ACCEPT_ROUND_MESSAGES).record(round.len() as f64);
    for (client_id, batch) in shared::batching::by_tenant(round, |w| w.client_id) {
        if batch.len() > 1 {
            let entries: Vec<NewUserMessage<'_>> = batch
                .iter()
                .map(|w| NewUserMessage {
                    conversation_id: w.conversation_id,
                    envelope_id: w.envelope_id,
                    content: &w.content,
                    channel_message_id: w.channel_message_id.as_deref(),
                })
                .collect();
            match db.tenant(client_id).messages().accept_users(&entries).await {
                Ok(ids) => {
                    for (waiting, message_id) in batch.into_iter().zip(ids) {
                        let _ = waiting.done.send(Ok(RecordedUser {
                            message_id,
                            newly_recorded: true,
                            state: MessageState::Pending,
                            reply: None,
                        }));
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, messages = batch.len(), "a batch of accepted messages failed; accepting them one by one");
                    metrics::counter!(metric::ACCEPT_BATCHES_SPLIT).increment(1);
                }
            }
        }
        for waiting in batch {
            let recorded = db
                .tenant(client_id)
                .messages()
                .accept_user(
                    waiting.conversation_id,
                    waiting.envelope_id,
                    &waiting.content,
                    waiting.channel_message_id.as_deref(),
                )
                .await;
            let _ = waiting.done.send(recorded);
        }
    }
}

#[cfg(test)]
mod tests {
    use shared::ids::Channel;
    use shared::testkit::TestEnv;

    use super::*;

    /// Many requests at once, over a few conversations (a round's batch), then more with
    /// a retry of an earlier envelope among them (that round's batch fails and its
    /// messages are accepted one by one): every message is committed once, each
    /// conversation's positions are gapless, and the retry learns it was recorded before.
    #[tokio::test]
    async fn concurrent_accepts_are_committed_once_each_in_rounds() {
        let env = TestEnv::start(&[]).await;
        let t = env.tenant("rounds").await;
        let mut conversations = Vec::new();
        for key in ["a", "b", "c"] {
            conversations.push(
                env.db
                    .tenant(t.id)
                    .conversations()
                    .get_or_create(Channel::Api, key)
                    .await
                    .expect("conversation"),
            );
        }
        let acceptor = Acceptor::start(env.db.clone());
        let first = EnvelopeId::random();
        let send_all = |envelopes: Vec<EnvelopeId>| {
            let mut sends = tokio::task::JoinSet::new();
            for (i, envelope) in envelopes.into_iter().enumerate() {
                let acceptor = acceptor.clone();
                let conversation = conversations[i % 3];
                sends.spawn(async move {
                    acceptor
                        .accept(t.id, conversation, envelope, format!("m{i}"), None)
                        .await
                        .map_err(|e| format!("{e:?}"))
                });
            }
            async move {
                let mut fresh = 0;
                while let Some(sent) = sends.join_next().await {
                    let recorded = sent.expect("joined").expect("accepted");
                    fresh += usize::from(recorded.newly_recorded);
                }
                fresh
            }
        };
        let batch: Vec<EnvelopeId> = std::iter::once(first)
            .chain((1..45).map(|_| EnvelopeId::random()))
            .collect();
        assert_eq!(send_all(batch).await, 45);
        let with_retry: Vec<EnvelopeId> = (0..15)
            .map(|i| if i == 7 { first } else { EnvelopeId::random() })
            .collect();
        assert_eq!(
            send_all(with_retry).await,
            14,
            "the retry was recorded before"
        );
        let mut total = 0;
        for conversation in conversations {
            let mailbox = env
                .db
                .tenant(t.id)
                .messages()
                .mailbox_after(conversation, 0, 100)
                .await
                .expect("mailbox");
            let seqs: Vec<u64> = mailbox.iter().map(|m| m.seq).collect();
            let gapless: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, gapless, "positions without gaps");
            total += mailbox.len();
        }
        assert_eq!(total, 59);
        env.teardown().await;
    }
}
