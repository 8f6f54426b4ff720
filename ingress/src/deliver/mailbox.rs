//! The mailbox deliverer of the API, widget and mobile channels: marks each reply
//! delivered to its conversation's mailbox while it wakes the long-polls on every replica
//! (and, for mobile, sends a push notification in the background: see [`super::push`]),
//! then acks. A reply's mailbox position was fixed when it was stored, so deliveries run
//! concurrently (up to the prefetch) without reordering anything; a reply id that was
//! delivered before is dropped (at-least-once in, one push per reply).

use std::time::Duration;

use shared::cache::MailboxKey;
use shared::envelope::Reply;
use shared::ids::Channel;
use shared::mq::Delivery;
use tracing::Instrument;

use crate::AppState;

/// Unacked replies held at once.
const PREFETCH: u16 = 64;

pub(crate) async fn run(state: AppState, channel: Channel) {
    let queue = state.broker().topology().outbound_queue(channel);
    let mut deliveries = state.broker().subscribe(
        &queue,
        PREFETCH,
        &format!("deliver-{channel}"),
        state.shutdown().clone(),
    );
    let http = reqwest::Client::new();
    let mut running = tokio::task::JoinSet::new();
    while let Some(delivery) = deliveries.next().await {
        let (state, http, queue) = (state.clone(), http.clone(), queue.clone());
        running.spawn(async move { deliver(&state, &http, channel, &queue, delivery).await });
        // The prefetch bounds the deliveries in flight; reap the finished ones.
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    deliveries.close().await;
}

async fn deliver(
    state: &AppState,
    http: &reqwest::Client,
    channel: Channel,
    queue: &str,
    delivery: Delivery,
) {
    let reply: Reply = match serde_json::from_slice(&delivery.body) {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("undecodable reply: {e}");
            tracing::error!(%reason, "dead-lettering");
            if state
                .publisher()
                .dead_letter(&delivery, queue, &reason)
                .await
                .is_ok()
            {
                let _ = delivery.ack().await;
            }
            return;
        }
    };
    let span = tracing::info_span!("deliver", %channel, client_id = %reply.client_id, reply_id = %reply.id);
    async {
        // The reply is in the mailbox since the worker stored it (its position too):
        // the long-polls are woken while the delivery is recorded, not after its commit.
        // A redelivered reply wakes them once more, which is harmless: they read again.
        let key = MailboxKey::new(reply.client_id, channel, reply.external_id.expose());
        let messages = state.db().messages();
        let (placed, announced) = tokio::join!(
            messages.deliver_to_mailbox(reply.client_id, reply.conversation_id, reply.id),
            state.mailboxes().announce(&key)
        );
        if let Err(e) = announced {
            // Pollers still see it on their next read; only the wake-up was lost.
            tracing::warn!(error = %e, "could not announce the reply");
        }
        match placed {
            Ok(Some(_)) => {
                if channel == Channel::Mobile {
                    super::push::notify(state, http, &reply);
                }
                tracing::info!("delivered");
            }
            Ok(None) => tracing::info!("already delivered; dropped"),
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
