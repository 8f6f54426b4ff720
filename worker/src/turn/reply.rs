//! How a turn ends: its answer stored (only while every message it answers is still
//! unanswered: one reply per turn) and published with a confirm, or its messages closed
//! without one; and the outbox, the stored replies the broker never confirmed, published
//! before anything new.

use std::sync::Arc;

use chrono::Utc;
use shared::cache::MailboxKey;
use shared::db::{ClosedAs, NewReply, StoreOutcome, StoredReply, TenantConfig};
use shared::envelope::{Destination, Envelope, Reply, ReplyKind};
use shared::ids::{ClientId, ConversationId, EnvelopeId};
use shared::metric;
use shared::mq::ReplyRoute;

use super::ask::Answer;
use super::timed;
use crate::Ctx;
use crate::error::Result;

/// The user messages one reply answers.
#[derive(Debug)]
pub(super) struct Answering {
    pub conversation_id: ConversationId,
    /// Their row ids.
    pub message_ids: Vec<u64>,
    pub envelope_ids: Vec<EnvelopeId>,
    /// The tenant's day (its timezone) the turn counts on.
    pub day: chrono::NaiveDate,
    /// The tenant, as configured when the answer was made (its version is recorded with
    /// the reply; its budget and plan say whether the reply's cost and tokens go to its
    /// spending counters).
    pub tenant: Arc<TenantConfig>,
}

/// Stores the answer to the turn's messages (only if they are all still unanswered),
/// then publishes it with a confirm; whether it was stored.
pub(super) async fn reply(
    ctx: &Ctx,
    env: &Envelope,
    turn: &Answering,
    mut answer: Answer,
) -> Result<bool> {
    answer.accounting.day = Some(turn.day);
    let tokens = answer.tokens();
    let mut reply = Reply::answering(
        Destination::of(env, Some(turn.conversation_id)),
        turn.envelope_ids.clone(),
        answer.kind,
        answer.text.clone(),
        turn.tenant.config.config_version,
    );
    if let Some(id) = answer.reply_id {
        reply.id = id;
    }
    reply.choices.clone_from(&answer.choices);
    let stored = timed(
        "store",
        ctx.db
            .tenant(env.client_id)
            .messages()
            .store_reply(&NewReply {
                conversation_id: turn.conversation_id,
                reply_id: reply.id,
                kind: reply.kind,
                text: answer.text,
                answers: turn.message_ids.clone(),
                prompt_tokens: answer.prompt_tokens,
                completion_tokens: answer.completion_tokens,
                estimated_prompt_tokens: answer.estimated_prompt_tokens,
                config_version: turn.tenant.config.config_version,
                choices: answer.choices,
                accounting: answer.accounting.clone(),
            }),
    )
    .await?;
    match stored {
        StoreOutcome::Stored => {}
        StoreOutcome::NotBotMode => {
            tracing::info!("handed to a human while the turn ran; dropping this reply");
            return close_all(ctx, env.client_id, turn, ClosedAs::Ignored)
                .await
                .map(|()| false);
        }
        StoreOutcome::AnsweredBefore => {
            tracing::info!("turn answered before (another delivery); dropping this reply");
            return close_all(ctx, env.client_id, turn, ClosedAs::Ignored)
                .await
                .map(|()| false);
        }
    }
    let counted = crate::spend::count(ctx, &turn.tenant, &answer.accounting, tokens);
    // The reply is stored and counted in the database; the counters catch up when
    // rebuilt.
    if let Err(e) = Box::pin(counted).await {
        tracing::warn!(error = %e, "could not count the reply's spending in Redis");
    }
    Box::pin(announce_replied(ctx, &reply)).await?;
    reply.polls_woken = Box::pin(wake_polls(ctx, &reply)).await;
    timed("publish", publish(ctx, &reply, &env.trace.request_id)).await?;
    // A fallback answer is not final: `chatfleet dlq requeue` reopens its messages.
    if reply.kind != ReplyKind::Fallback {
        ctx.answered.remember(&turn.envelope_ids);
    }
    // Ingress receipt of the message this turn answered last → its reply on the broker.
    let end_to_end = (Utc::now() - env.received_at).to_std().unwrap_or_default();
    metrics::histogram!(metric::END_TO_END_SECONDS, "channel" => env.channel.as_str())
        .record(end_to_end.as_secs_f64());
    Ok(true)
}

pub(super) async fn close_all(
    ctx: &Ctx,
    client_id: ClientId,
    turn: &Answering,
    state: ClosedAs,
) -> Result<()> {
    for id in &turn.envelope_ids {
        ctx.db
            .tenant(client_id)
            .messages()
            .close_unanswered(*id, state)
            .await?;
    }
    Ok(())
}

/// The outbox: publishes, in order, the conversation's stored replies that the broker
/// never confirmed (a worker died between storing and publishing, or the broker was
/// down), before this turn publishes anything. The deliverers drop a reply id they
/// delivered before, so publishing one twice is harmless.
pub(super) async fn relay_unpublished(
    ctx: &Ctx,
    env: &Envelope,
    conversation_id: ConversationId,
    unpublished: Vec<(StoredReply, Vec<EnvelopeId>)>,
) -> Result<()> {
    for (stored, answers) in unpublished {
        tracing::info!(reply_id = %stored.id, "publishing a stored reply the broker never confirmed");
        let mut reply = reply_from_stored(env, conversation_id, stored);
        reply.in_reply_to = answers;
        // Its turn may have died before announcing it too (the same event id: once).
        Box::pin(announce_replied(ctx, &reply)).await?;
        publish(ctx, &reply, &env.trace.request_id).await?;
    }
    Ok(())
}

/// `message.replied` for a stored reply (before it is published: a turn that fails
/// between the two runs again, finds the reply stored and emits the same event).
async fn announce_replied(ctx: &Ctx, reply: &Reply) -> Result<()> {
    let Some(conversation_id) = reply.conversation_id else {
        return Ok(());
    };
    let event =
        shared::webhooks::NewEvent::about(shared::webhooks::EventType::MessageReplied, reply.id)
            .in_conversation(conversation_id, reply.channel)
            .with("message_id", reply.id.to_string())
            .with("external_id", reply.external_id.expose().clone())
            .with("kind", serde_json::to_value(reply.kind).unwrap_or_default())
            .with(
                "in_reply_to",
                reply
                    .in_reply_to
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .with("text", reply.text.expose().clone());
    Ok(ctx.webhooks().emit(reply.client_id, event).await?)
}

/// Publishes a stored reply with a confirm and queues the confirm's record.
async fn publish(ctx: &Ctx, reply: &Reply, request_id: &str) -> Result<()> {
    ctx.publisher
        .publish_reply(reply, ReplyRoute::Channel, Some(request_id))
        .await?;
    ctx.confirms.record(reply.client_id, reply.id);
    Ok(())
}

/// Wakes the long-polls of the reply's mailbox on every ingress replica: the stored
/// reply is readable there since its commit, so a poll need not wait for the broker to
/// carry it to the channel's deliverer. Returns whether it did; the reply says so, and
/// its deliverer wakes them only when the worker could not (the failure is logged).
/// A WhatsApp conversation has no polls, but the console's page of it waits on the same
/// wake-up.
async fn wake_polls(ctx: &Ctx, reply: &Reply) -> bool {
    let key = MailboxKey::new(reply.client_id, reply.channel, reply.external_id.expose());
    match ctx.mailboxes.announce(&key).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not wake the reply's long-polls");
            false
        }
    }
}

pub(super) fn reply_from_stored(
    env: &Envelope,
    conversation_id: ConversationId,
    stored: StoredReply,
) -> Reply {
    Reply {
        id: stored.id,
        created_at: stored.created_at,
        choices: stored.choices,
        ..Reply::answering(
            Destination::of(env, Some(conversation_id)),
            vec![env.id],
            stored.kind,
            stored.text,
            stored.config_version,
        )
    }
}
