//! Outbound deliverers: one consumer per channel's `<prefix>.outbound.<channel>` queue,
//! and the webhook deliverer on `<prefix>.webhooks`.

use std::time::Duration;

use shared::envelope::Reply;
use shared::ids::ConversationId;
use shared::metric;
use shared::mq::Delivery;
use shared::sealed::{Opened, Unreadable};

use crate::AppState;

pub(crate) mod mailbox;
mod push;
pub(crate) mod webhooks;
pub(crate) mod whatsapp;

/// The reply a deliverer took from `queue`, opened, and the conversation it goes to;
/// `None` when the delivery was settled here: dead-lettered when it cannot be read (or
/// names no conversation), dropped when its conversation was erased since it was sent,
/// handed back to the queue after a pause when its data key cannot be read now.
pub(crate) async fn open_reply(
    state: &AppState,
    queue: &str,
    delivery: &Delivery,
) -> Option<(Reply, ConversationId)> {
    let reason = match state.data_keys().open_reply(&delivery.body).await {
        Ok(Opened::Readable(reply)) => match reply.conversation_id {
            Some(conversation_id) => return Some((reply, conversation_id)),
            None => "a reply on a channel queue names no conversation".to_owned(),
        },
        Ok(Opened::Erased(heading)) => {
            tracing::debug!(reply_id = %heading.id, "the reply's conversation was erased; dropped");
            metrics::counter!(metric::ERASED_SKIPPED, "what" => "reply").increment(1);
            let _ = delivery.ack().await;
            return None;
        }
        Err(Unreadable::Unavailable(e)) => {
            tracing::warn!(error = %e, "cannot open a reply now; handing it back");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery.requeue().await;
            return None;
        }
        Err(Unreadable::Malformed(reason)) => reason,
    };
    tracing::error!(%reason, "reply dead-lettered");
    if state
        .publisher()
        .dead_letter(delivery, queue, &reason)
        .await
        .is_ok()
    {
        let _ = delivery.ack().await;
    }
    None
}
