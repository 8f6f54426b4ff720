//! Turns outside a conversation's ordinary flow: a dry-run replay (today's configuration
//! and prompt, nothing stored, the reply to the replay queue) and the fallback message
//! after a delivery's last attempt failed.

use shared::db::MessageState;
use shared::envelope::{Destination, Envelope, Reply, ReplyKind};
use shared::mq::ReplyRoute;

use super::ask::{Answer, ask_llm};
use super::reply::{Answering, reply};
use crate::Ctx;
use crate::error::{Result, TurnError};

/// A dry-run replay (`chatfleet replay --mode dry-run`): the turn as it would run today —
/// today's configuration, the conversation's history before the original message — with
/// nothing stored, no lock, no rate limit and no channel: the reply goes to the replay
/// queue, for the operator to compare with the original.
pub(crate) async fn dry_run(ctx: &Ctx, env: &Envelope) -> Result<()> {
    let client_id = env.client_id;
    let tenant = ctx
        .configs
        .get(client_id)
        .await?
        .ok_or(TurnError::UnknownTenant(client_id))?;
    let conversation = ctx
        .db
        .tenant(client_id)
        .conversations()
        .find(env.channel, env.external_id.expose())
        .await?;
    let history = match conversation {
        Some(conversation_id) => {
            let before = ctx
                .db
                .tenant(client_id)
                .messages()
                .user_message_id(env.id)
                .await?
                .unwrap_or(u64::MAX);
            ctx.db
                .tenant(client_id)
                .messages()
                .history_before(conversation_id, before, tenant.config.max_context_turns)
                .await?
        }
        None => Vec::new(),
    };
    // Tool calls as the original turn made them, if it started with this message.
    let calls = super::tool_loop::CallsOf::DryRun { turn_id: env.id };
    let text = env.message.as_prompt_text();
    let answer = ask_llm(ctx, &tenant, &history, &text, None, calls, Vec::new()).await?;
    let reply = Reply::answering(
        Destination::of(env, conversation),
        vec![env.id],
        answer.kind,
        answer.text,
        tenant.config.config_version,
    );
    ctx.publisher
        .publish_reply(&reply, ReplyRoute::Replay, Some(&env.trace.request_id))
        .await?;
    Ok(())
}

/// After the last attempt failed: the user gets the tenant's fallback message for the
/// delivery's message (if it is still unanswered), so nobody waits forever in silence.
pub(crate) async fn give_up(ctx: &Ctx, env: &Envelope) -> Result<()> {
    let client_id = env.client_id;
    let Some(tenant) = ctx.configs.get(client_id).await? else {
        return Ok(());
    };
    let conversation_id = super::conversation_of(ctx, env).await?;
    let recorded = super::intake::record_envelope(ctx, conversation_id, env).await?;
    if recorded.state != MessageState::Pending || tenant.config.fallback_message.is_empty() {
        return Ok(());
    }
    let turn = Answering {
        conversation_id,
        message_ids: vec![recorded.message_id],
        envelope_ids: vec![env.id],
        day: crate::spend::period(&tenant).day,
        tenant: tenant.clone(),
    };
    let notice = Answer::notice(ReplyKind::Fallback, tenant.config.fallback_message.clone());
    reply(ctx, env, &turn, notice).await.map(drop)
}
