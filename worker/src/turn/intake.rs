//! A user message before its turn: its conversation (named on the broker, or found by
//! its key), its record (once; channels that record at acceptance need nothing), and
//! the `message.received` / `conversation.created` events of the messages a turn takes
//! up.

use shared::db::{PendingTurn, RecordedUser};
use shared::envelope::Envelope;
use shared::ids::ConversationId;
use shared::webhooks::EventType;

use crate::Ctx;
use crate::error::{Result, TurnError};

/// Records the message of a delivery that waits instead of starting a turn (a parked
/// one), so that a turn of its conversation meanwhile answers it in order.
pub(crate) async fn record_only(ctx: &Ctx, env: &Envelope) -> Result<()> {
    if env.channel.records_at_acceptance() && env.replay.is_none() {
        return Ok(());
    }
    let conversation_id = conversation_of(ctx, env).await?;
    record(ctx, conversation_id, env).await
}

/// The conversation of an envelope: the one its channel named on the broker (its seal
/// opened under that conversation's key, so it is that conversation's), else (an
/// envelope from a producer that names none) found or created by its key.
pub(crate) async fn conversation_of(ctx: &Ctx, env: &Envelope) -> Result<ConversationId> {
    match env.conversation_id {
        Some(conversation_id) => Ok(conversation_id),
        None => Ok(ctx
            .conversations
            .get_or_create(env.client_id, env.channel, env.external_id.expose())
            .await?),
    }
}

/// Records a user message once. A message its channel recorded at acceptance (committed
/// before its envelope was published) needs nothing: the turn reads it with the
/// conversation's other pending messages. A replayed envelope is recorded like any
/// other (a forced live replay carries a new id; the original may be long gone).
pub(super) async fn record(
    ctx: &Ctx,
    conversation_id: ConversationId,
    env: &Envelope,
) -> Result<()> {
    if !(env.channel.records_at_acceptance() && env.replay.is_none()) {
        record_envelope(ctx, conversation_id, env).await?;
    }
    Ok(())
}

/// `message.received` for each message a turn takes up (and `conversation.created`
/// before the conversation's first). Every user message of every channel is taken up by
/// a turn, in order, however it arrived (recorded at acceptance, parked, coalesced); a
/// turn that runs again announces the same events, which are recorded once.
pub(super) async fn announce_received(
    ctx: &Ctx,
    conversation_id: ConversationId,
    env: &Envelope,
    turns: &[PendingTurn],
) -> Result<()> {
    let client_id = env.client_id;
    let emitter = ctx.webhooks();
    if emitter
        .wanted(client_id, EventType::ConversationCreated, env.channel)
        .await?
        && let Some(first) = ctx
            .db
            .tenant(client_id)
            .messages()
            .first_user_envelope(conversation_id)
            .await?
        && turns.iter().any(|p| p.envelope_id == first)
    {
        let created =
            shared::webhooks::NewEvent::about(EventType::ConversationCreated, conversation_id)
                .in_conversation(conversation_id, env.channel)
                .with("external_id", env.external_id.expose().clone());
        emitter.emit(client_id, created).await?;
    }
    for p in turns {
        let received = shared::webhooks::NewEvent::about(EventType::MessageReceived, p.envelope_id)
            .in_conversation(conversation_id, env.channel)
            .with("message_id", p.envelope_id.to_string())
            .with("external_id", env.external_id.expose().clone())
            .with("text", p.text.clone());
        emitter.emit(client_id, received).await?;
    }
    Ok(())
}

/// Records the user message an envelope carries, once (see `Messages::record_user`). A
/// WhatsApp voice note is recorded as its transcript, made only for a message not
/// recorded before: a retry or a redelivery never transcribes again.
pub(super) async fn record_envelope(
    ctx: &Ctx,
    conversation_id: ConversationId,
    env: &Envelope,
) -> Result<RecordedUser> {
    let messages = ctx.db.tenant(env.client_id).messages();
    let text = if crate::media::transcribable(env).is_some() {
        // Boxed: a turn's task stays small (see `timed`).
        Box::pin(async {
            if messages.user_message_id(env.id).await?.is_some() {
                return Ok::<_, TurnError>((env.message.as_prompt_text(), None)); // recorded before
            }
            let transcribe = ctx
                .configs
                .get(env.client_id)
                .await?
                .is_some_and(|t| t.config.transcribe_audio);
            Ok(ctx.media.stored_text(&ctx.db, env, transcribe).await)
        })
        .await?
    } else {
        (env.message.as_prompt_text(), None)
    };
    let (text, transcription_cost) = text;
    let recorded = messages
        .record_user(
            conversation_id,
            env.id,
            &text,
            env.channel_message_id.as_deref(),
        )
        .await?;
    if let Some(cost) = transcription_cost {
        // Boxed: a turn's task stays small (see `timed`).
        Box::pin(async {
            if let Some(tenant) = ctx.configs.get(env.client_id).await? {
                crate::spend::count_extra(ctx, &tenant, conversation_id.get(), cost).await?;
            }
            Ok::<_, TurnError>(())
        })
        .await?;
    }
    Ok(recorded)
}
