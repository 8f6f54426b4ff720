//! Recording publisher confirms in batches. Once the broker confirmed a reply, its row
//! is marked published, so the next turn of the conversation does not relay it again
//! (the outbox, `turn::relay_unpublished`). A mark is only a saving: a reply left
//! unmarked — by a crash before the batch was written — is published once more and
//! dropped by the deliverer that already delivered it. So the marks of many turns are
//! written together, one statement per tenant and batch, instead of one commit each.
//! Until its batch is written, a confirmed reply is remembered here, so the next turn of
//! its conversation (which often starts first) does not relay it again. A batch gathers
//! for [`LINGER`] after its first mark, so light load writes few statements too.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::db::Db;
use shared::ids::{ClientId, ReplyId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Most marks written by one batch.
const MAX_BATCH: usize = 512;
/// How long a batch gathers marks after its first.
const LINGER: Duration = Duration::from_millis(100);

/// The sending side: [`Confirms::record`] never waits for the database.
#[derive(Clone)]
pub(crate) struct Confirms {
    tx: mpsc::UnboundedSender<(ClientId, ReplyId)>,
    unwritten: Unwritten,
}

/// Confirmed replies whose marks are queued or being written.
type Unwritten = Arc<Mutex<HashSet<ReplyId>>>;

/// The task writing the marks; [`Writer::finish`] writes what is left and stops it.
pub(crate) struct Writer {
    done: CancellationToken,
    task: JoinHandle<()>,
}

impl Confirms {
    pub(crate) fn start(db: Db) -> (Self, Writer) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let done = CancellationToken::new();
        let stop = done.clone();
        let unwritten = Unwritten::default();
        let written = unwritten.clone();
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            loop {
                tokio::select! {
                    n = shared::batching::gather(&mut rx, &mut batch, MAX_BATCH, LINGER) => {
                        if n == 0 {
                            break;
                        }
                    }
                    () = stop.cancelled() => {
                        while let Ok(mark) = rx.try_recv() {
                            batch.push(mark);
                        }
                        write(&db, &mut batch, &written).await;
                        break;
                    }
                }
                write(&db, &mut batch, &written).await;
            }
        });
        (Self { tx, unwritten }, Writer { done, task })
    }

    /// Queues the mark of a confirmed reply.
    pub(crate) fn record(&self, client_id: ClientId, reply_id: ReplyId) {
        // Remembered before it is queued, so the writer's removal comes after.
        lock(&self.unwritten).insert(reply_id);
        if self.tx.send((client_id, reply_id)).is_err() {
            // The writer stopped (shutdown): the reply is relayed again.
            lock(&self.unwritten).remove(&reply_id);
        }
    }

    /// Whether the broker confirmed this reply and its mark is not written yet.
    pub(crate) fn confirmed(&self, reply_id: ReplyId) -> bool {
        lock(&self.unwritten).contains(&reply_id)
    }
}

impl Writer {
    pub(crate) async fn finish(self) {
        self.done.cancel();
        let _ = self.task.await;
    }
}

fn lock(unwritten: &Unwritten) -> std::sync::MutexGuard<'_, HashSet<ReplyId>> {
    unwritten
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn write(db: &Db, batch: &mut Vec<(ClientId, ReplyId)>, unwritten: &Unwritten) {
    for (client_id, marks) in shared::batching::by_tenant(batch.drain(..), |(c, _)| *c) {
        let replies: Vec<ReplyId> = marks.into_iter().map(|(_, r)| r).collect();
        if let Err(e) = db
            .tenant(client_id)
            .messages()
            .mark_published(&replies)
            .await
        {
            // Relayed again by the conversation's next turn; the deliverers drop repeats.
            tracing::warn!(error = %e, replies = replies.len(), "could not record published replies");
        }
        let mut unwritten = lock(unwritten);
        for reply_id in &replies {
            unwritten.remove(reply_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use shared::db::NewReply;
    use shared::envelope::ReplyKind;
    use shared::ids::{Channel, EnvelopeId};
    use shared::testkit::TestEnv;

    use super::*;

    #[tokio::test]
    async fn finishing_writes_every_queued_mark() {
        let env = TestEnv::start(&[]).await;
        let t = env.tenant("marks").await;
        let conv = env
            .db
            .tenant(t.id)
            .conversations()
            .get_or_create(Channel::Api, "c")
            .await
            .expect("conversation");
        let mut replies = Vec::new();
        for i in 0..3 {
            let user = env
                .db
                .tenant(t.id)
                .messages()
                .record_user(conv, EnvelopeId::random(), &format!("q{i}"), None)
                .await
                .expect("record");
            let reply = NewReply {
                conversation_id: conv,
                reply_id: ReplyId::random(),
                kind: ReplyKind::Bot,
                text: format!("a{i}"),
                answers: vec![user.message_id],
                prompt_tokens: None,
                completion_tokens: None,
                estimated_prompt_tokens: None,
                config_version: 1,
                choices: Vec::new(),
                accounting: Default::default(),
            };
            assert_eq!(
                env.db
                    .tenant(t.id)
                    .messages()
                    .store_reply(&reply)
                    .await
                    .expect("store"),
                shared::db::StoreOutcome::Stored
            );
            replies.push(reply.reply_id);
        }
        // The outbox, as a turn reads it, leaving out the replies `known` confirmed.
        let messages = &env.db.tenant(t.id).messages();
        let outbox = |known: Option<ReplyId>| async move {
            messages
                .open_turn(conv, 0, 0, |id| Some(id) == known)
                .await
                .expect("outbox")
                .unpublished
        };
        assert_eq!(outbox(None).await.len(), 3);
        let relayed = outbox(Some(replies[1])).await;
        let relayed: Vec<ReplyId> = relayed.iter().map(|(r, _)| r.id).collect();
        assert_eq!(
            relayed,
            [replies[0], replies[2]],
            "a known confirm is not relayed"
        );
        let (confirms, writer) = Confirms::start(env.db.clone());
        for reply_id in &replies {
            confirms.record(t.id, *reply_id);
        }
        writer.finish().await;
        assert!(
            outbox(None).await.is_empty(),
            "every confirmed reply is marked"
        );
        assert!(
            !replies.iter().any(|r| confirms.confirmed(*r)),
            "written marks are forgotten"
        );
        env.teardown().await;
    }
}
