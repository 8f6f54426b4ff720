//! Erasing a conversation everywhere (`DELETE` of a conversation or an end user, and
//! retention): the database's copy ([`crate::db::Conversations::erase`]), every
//! replica's cached id of its key, and the tenant told (`end_user.erased`, without the
//! end user's identifier). Idempotent: erasing an erased conversation does it all again
//! and changes nothing.

use crate::cache::ConversationIds;
use crate::db::{Db, Erased};
use crate::error::Result;
use crate::ids::{ClientId, ConversationId};
use crate::metric;
use crate::webhooks::{Emitter, EventType, NewEvent};

/// Erases the conversation; `None` when the tenant has no such conversation. `why`:
/// `request` or `retention` (the event's and the metric's word).
pub async fn erase_conversation(
    db: &Db,
    conversations: &ConversationIds,
    emitter: Emitter<'_>,
    client_id: ClientId,
    conversation_id: ConversationId,
    why: &'static str,
) -> Result<Option<Erased>> {
    let Some(erased) = db
        .tenant(client_id)
        .conversations()
        .erase(conversation_id)
        .await?
    else {
        return Ok(None);
    };
    conversations.erased(client_id, conversation_id).await?;
    let event = NewEvent::about(EventType::EndUserErased, conversation_id)
        .with("conversation_id", conversation_id.get())
        .with("channel", erased.channel.as_str())
        .with("reason", why);
    emitter.emit(client_id, event).await?;
    metrics::counter!(metric::CONVERSATIONS_ERASED, "reason" => why).increment(1);
    tracing::info!(%client_id, %conversation_id, reason = why, "conversation erased");
    Ok(Some(erased))
}
