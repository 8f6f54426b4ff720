//! The mailbox deliverer of the API, widget and mobile channels: marks each reply
//! delivered to its conversation's mailbox, wakes the long-polls on every replica unless
//! the worker already did (and, for mobile, sends a push notification in the background:
//! see [`super::push`]), then acks. A reply's mailbox position was fixed when it was
//! stored, so deliveries run concurrently (up to the prefetch) without reordering
//! anything. The marks of API and widget replies are written in batches ([`Marks`]);
//! a mobile reply's own mark tells whether it is new, so a reply id that was delivered
//! before is not pushed again (at-least-once in, one push per reply).

use std::time::Duration;

use shared::cache::MailboxKey;
use shared::db::Db;
use shared::ids::{Channel, ClientId, ReplyId};
use shared::mq::Delivery;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::AppState;

/// Unacked replies held at once.
const PREFETCH: u16 = 64;

/// Most marks written by one statement: half the prefetch, so deliveries keep flowing
/// while a batch gathers.
const MAX_MARKS: usize = PREFETCH as usize / 2;
/// How long a batch gathers marks after its first (a delivery's ack waits for its mark;
/// the reply was readable since the worker stored it).
const LINGER: Duration = Duration::from_millis(100);

/// A reply to mark delivered, and who waits for the mark's commit.
struct Mark {
    client_id: ClientId,
    reply_id: ReplyId,
    done: oneshot::Sender<Result<(), String>>,
}

/// Writes the delivery marks of replies whose deliverer needs nothing back: whatever
/// queued up while the previous statement ran, or within [`LINGER`] of the first, goes in
/// the next, one per tenant. A delivery is acked only once its mark is committed.
#[derive(Clone)]
struct Marks {
    tx: mpsc::UnboundedSender<Mark>,
}

impl Marks {
    /// Starts the writer; it stops once every `Marks` is dropped.
    fn start(db: Db) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Mark>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_MARKS);
            while shared::batching::gather(&mut rx, &mut batch, MAX_MARKS, LINGER).await > 0 {
                let by_tenant = shared::batching::by_tenant(batch.drain(..), |m| m.client_id);
                for (client_id, marks) in by_tenant {
                    let ids: Vec<ReplyId> = marks.iter().map(|m| m.reply_id).collect();
                    let written = db
                        .tenant(client_id)
                        .messages()
                        .mark_delivered(&ids)
                        .await
                        .map_err(|e| e.to_string());
                    for mark in marks {
                        let _ = mark.done.send(written.clone());
                    }
                }
            }
        });
        Self { tx }
    }

    /// Marks one reply delivered; returns once the mark is committed.
    async fn mark(&self, client_id: ClientId, reply_id: ReplyId) -> Result<(), String> {
        let (done, committed) = oneshot::channel();
        self.tx
            .send(Mark {
                client_id,
                reply_id,
                done,
            })
            .map_err(|_| "the mark writer stopped".to_owned())?;
        committed
            .await
            .map_err(|_| "the mark writer stopped".to_owned())?
    }
}

pub(crate) async fn run(state: AppState, channel: Channel) {
    let queue = state.broker().topology().outbound_queue(channel);
    let mut deliveries = state.broker().subscribe(
        &queue,
        PREFETCH,
        &format!("deliver-{channel}"),
        state.shutdown().clone(),
    );
    let http = reqwest::Client::new();
    let marks = Marks::start(state.db().clone());
    let mut running = tokio::task::JoinSet::new();
    while let Some(delivery) = deliveries.next().await {
        let (state, http, queue) = (state.clone(), http.clone(), queue.clone());
        let marks = marks.clone();
        running.spawn(async move {
            deliver(&state, &http, &marks, channel, &queue, delivery).await;
        });
        // The prefetch bounds the deliveries in flight; reap the finished ones.
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    deliveries.close().await;
}

async fn deliver(
    state: &AppState,
    http: &reqwest::Client,
    marks: &Marks,
    channel: Channel,
    queue: &str,
    delivery: Delivery,
) {
    let Some((reply, conversation_id)) = super::open_reply(state, queue, &delivery).await else {
        return;
    };
    let span = tracing::info_span!("deliver", %channel, client_id = %reply.client_id, reply_id = %reply.id);
    async {
        // The reply is in the mailbox since the worker stored it (its position too): the
        // long-polls are woken while the delivery is recorded, not after its commit, and
        // only if the worker could not. A redelivered reply wakes them once more, which
        // is harmless: they read again.
        let key = MailboxKey::new(reply.client_id, channel, reply.external_id.expose());
        let wake = async {
            if reply.polls_woken {
                return Ok(());
            }
            state.mailboxes().announce(&key).await
        };
        let place = async {
            if channel == Channel::Mobile {
                // Pushed only the first time the reply is delivered.
                state
                    .db()
                    .tenant(reply.client_id)
                    .messages()
                    .deliver_to_mailbox(conversation_id, reply.id)
                    .await
                    .map(|placed| placed.is_some())
                    .map_err(|e| e.to_string())
            } else {
                marks.mark(reply.client_id, reply.id).await.map(|()| false)
            }
        };
        let (placed, woken) = tokio::join!(place, wake);
        if let Err(e) = woken {
            // Pollers still see it on their next read; only the wake-up was lost.
            tracing::warn!(error = %e, "could not announce the reply");
        }
        match placed {
            Ok(push) => {
                if push {
                    super::push::notify(state, http, &reply, conversation_id);
                }
                tracing::info!("delivered");
            }
            Err(e) => {
                tracing::warn!(error = %e, "delivery failed; requeueing");
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = delivery.requeue().await;
                return;
            }
        }
        if let Err(e) = delivery.ack().await {
            tracing::warn!(error = %e, "ack failed; the reply will be redelivered and dropped");
        }
    }
    .instrument(span)
    .await
}
