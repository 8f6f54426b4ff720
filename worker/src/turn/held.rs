//! WhatsApp's 24-hour customer-service window, from the worker's side. A user message
//! opens it: the conversation notes when, and the number the user wrote to (an agent's
//! message goes out from it). The replies the WhatsApp deliverer held while the window
//! was closed (`awaiting_window`) are queued again, oldest first, before the turn's own
//! answer: one lane per recipient keeps them in that order, and the deliverer drops a
//! copy it already sent.

use chrono::{DateTime, Utc};
use shared::envelope::Envelope;
use shared::ids::ConversationId;
use shared::mq::ReplyRoute;

use super::reply::reply_from_stored;
use crate::Ctx;
use crate::error::Result;

/// The user wrote at `at` (the latest message the turn takes up): the window is open
/// again, and whatever waited for it goes.
pub(super) async fn reopen(
    ctx: &Ctx,
    conversation_id: ConversationId,
    env: &Envelope,
    at: DateTime<Utc>,
) -> Result<()> {
    let tenant = ctx.db.tenant(env.client_id);
    tenant
        .conversations()
        .touch_user(conversation_id, at, env.channel_account.as_deref())
        .await?;
    for stored in tenant.messages().held(conversation_id).await? {
        let mut reply = reply_from_stored(env, conversation_id, stored);
        reply.in_reply_to = Vec::new(); // it answered earlier messages, not this one
        tracing::info!(reply_id = %reply.id, "queueing a reply held for the 24-hour window");
        ctx.publisher
            .publish_reply(&reply, ReplyRoute::Channel, Some(&env.trace.request_id))
            .await?;
    }
    Ok(())
}
