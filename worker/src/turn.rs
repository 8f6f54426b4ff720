//! One user turn, from envelope to published reply (steps 3–9 of the journey in
//! `lib.rs`). Idempotent on the envelope id: a redelivered envelope that was already
//! answered republishes the stored reply (the deliverer drops duplicates) and never
//! calls the LLM again.

use chrono::Utc;
use shared::db::{ClientStatus, ConversationMode, NewReply, StoredReply, UserMessageState};
use shared::envelope::{ENVELOPE_VERSION, Envelope, Event, EventKind, Reply, ReplyKind};
use shared::ids::{ConversationId, ReplyId};
use shared::mq::ReplyRoute;
use shared::pii::Pii;

use crate::Ctx;
use crate::error::{Result, TurnError};
use crate::llm::ChatRequest;
use crate::{handoff, prompt};

pub(crate) async fn handle(ctx: &Ctx, env: &Envelope) -> Result<()> {
    let client_id = env.client_id;
    let tenant = ctx
        .configs
        .get(client_id)
        .await?
        .ok_or(TurnError::UnknownTenant(client_id))?;
    let conversation_id = ctx
        .db
        .conversations()
        .get_or_create(client_id, env.channel, env.external_id.expose())
        .await?;
    let text = env.message.as_prompt_text();
    let recorded = ctx
        .db
        .messages()
        .record_user(
            client_id,
            conversation_id,
            env.id,
            &text,
            env.channel_message_id.as_deref(),
        )
        .await?;
    match recorded.state {
        UserMessageState::Pending => {}
        UserMessageState::Answered => {
            if let Some(stored) = recorded.reply {
                // Stored but maybe never published (a crash in between): publish again.
                tracing::info!("turn already answered; republishing its reply");
                let reply = reply_from_stored(env, conversation_id, stored);
                ctx.publisher
                    .publish_reply(&reply, ReplyRoute::Channel, Some(&env.trace.request_id))
                    .await?;
            }
            return Ok(());
        }
        UserMessageState::Failed | UserMessageState::Ignored => {
            tracing::info!(state = ?recorded.state, "turn already closed; nothing to do");
            return Ok(());
        }
    }

    if tenant.client.status != ClientStatus::Active {
        tracing::info!(status = ?tenant.client.status, "tenant not active; no LLM call");
        if ctx.inactive_notice.is_empty() {
            ctx.db
                .messages()
                .close_unanswered(client_id, env.id, UserMessageState::Ignored)
                .await?;
            return Ok(());
        }
        let notice = Answer::notice(ReplyKind::Fallback, ctx.inactive_notice.clone());
        return reply(
            ctx,
            env,
            conversation_id,
            recorded.message_id,
            tenant.config.config_version,
            notice,
        )
        .await;
    }

    if let Some(phrase) = &tenant.config.human_handoff_phrase
        && handoff::matches(&text, phrase)
    {
        tracing::info!("handoff phrase matched; handing the conversation to a human");
        let conversations = ctx.db.conversations();
        if conversations
            .set_mode(client_id, conversation_id, ConversationMode::Human)
            .await?
        {
            let mut event = Event::new(EventKind::Handoff, client_id, conversation_id, env.channel);
            event.envelope_id = Some(env.id);
            ctx.publisher.publish_event(&event).await?;
            metrics::counter!("chatfleet_handoffs_total").increment(1);
        }
        let notice = Answer::notice(
            ReplyKind::HandoffNotice,
            tenant.config.handoff_message.clone(),
        );
        return reply(
            ctx,
            env,
            conversation_id,
            recorded.message_id,
            tenant.config.config_version,
            notice,
        )
        .await;
    }
    if ctx
        .db
        .conversations()
        .mode(client_id, conversation_id)
        .await?
        == ConversationMode::Human
    {
        // A person has this conversation: the bot stays silent and forwards the message.
        let mut event = Event::new(
            EventKind::UserMessage,
            client_id,
            conversation_id,
            env.channel,
        );
        event.envelope_id = Some(env.id);
        event.text = Some(Pii::new(text.clone()));
        ctx.publisher.publish_event(&event).await?;
        ctx.db
            .messages()
            .close_unanswered(client_id, env.id, UserMessageState::Ignored)
            .await?;
        return Ok(());
    }

    let limits = ctx.plans.limits(tenant.client.plan);
    if let Some(wait) = ctx.cache.take_message_token(client_id, limits).await? {
        metrics::counter!("chatfleet_rate_limited_total").increment(1);
        return Err(TurnError::RateLimited(wait));
    }

    let config = &tenant.config;
    let history = ctx
        .db
        .messages()
        .history(
            client_id,
            conversation_id,
            recorded.message_id,
            config.max_context_turns,
        )
        .await?;
    let (_, model) = ctx.llm.route(&config.llm_model);
    let num_ctx = ctx.llm_settings.context_window(model);
    let mut budget = num_ctx.saturating_sub(ctx.llm_settings.completion_reserve);
    if let Some(own) = config.prompt_token_budget {
        budget = budget.min(own);
    }
    let knowledge = retrieve(ctx, client_id, &text, config.rag_top_k).await;
    let prompt = prompt::assemble(
        &ctx.tokenizer,
        budget as usize,
        &tenant,
        &knowledge,
        &history,
        &text,
    );
    if prompt.dropped.any() {
        let d = prompt.dropped;
        tracing::info!(
            budget,
            history_turns = d.history_turns,
            knowledge_chunks = d.knowledge_chunks,
            modes = d.modes,
            truncated_tokens = d.truncated_tokens,
            "prompt over budget; dropped parts"
        );
        for (part, n) in [
            ("history_turn", d.history_turns),
            ("knowledge_chunk", d.knowledge_chunks),
            ("mode", d.modes),
        ] {
            metrics::counter!("chatfleet_prompt_dropped_total", "part" => part).increment(n as u64);
        }
        if d.truncated_tokens > 0 {
            metrics::counter!("chatfleet_prompt_truncated_messages_total").increment(1);
        }
    }
    let estimated = u32::try_from(prompt.tokens).unwrap_or(u32::MAX);
    let started = std::time::Instant::now();
    let completion = ctx
        .llm
        .chat(ChatRequest {
            model: config.llm_model.clone(),
            temperature: config.llm_temperature,
            num_ctx,
            messages: prompt.messages,
        })
        .await?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "llm answered"
    );

    let answer = Answer {
        kind: ReplyKind::Bot,
        text: completion.text,
        prompt_tokens: completion.prompt_tokens,
        completion_tokens: completion.completion_tokens,
        estimated_prompt_tokens: Some(estimated),
    };
    reply(
        ctx,
        env,
        conversation_id,
        recorded.message_id,
        config.config_version,
        answer,
    )
    .await
}

/// The tenant's `top_k` knowledge chunks for `query`, best first. Retrieval is an
/// enhancement: when the embeddings provider or ChromaDB fails, the turn goes on
/// without knowledge (logged and counted) rather than failing.
async fn retrieve(
    ctx: &Ctx,
    client_id: shared::ids::ClientId,
    query: &str,
    top_k: u32,
) -> Vec<String> {
    if top_k == 0 {
        return Vec::new();
    }
    match ctx.knowledge.search(client_id, query, top_k).await {
        Ok(chunks) => chunks,
        Err(e) => {
            tracing::warn!(error = %e, "knowledge retrieval failed; answering without it");
            metrics::counter!("chatfleet_retrieval_failures_total").increment(1);
            Vec::new()
        }
    }
}

/// What to say back.
struct Answer {
    kind: ReplyKind,
    text: String,
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
    estimated_prompt_tokens: Option<u32>,
}

impl Answer {
    /// A fixed text from the tenant's configuration (no LLM, no tokens).
    fn notice(kind: ReplyKind, text: String) -> Self {
        Self {
            kind,
            text,
            prompt_tokens: None,
            completion_tokens: None,
            estimated_prompt_tokens: None,
        }
    }
}

/// Stores the answer to user message `message_id` (only if it is still unanswered), then
/// publishes it with a confirm.
async fn reply(
    ctx: &Ctx,
    env: &Envelope,
    conversation_id: ConversationId,
    message_id: u64,
    config_version: u64,
    answer: Answer,
) -> Result<()> {
    let reply = Reply {
        v: ENVELOPE_VERSION,
        id: ReplyId::random(),
        in_reply_to: vec![env.id],
        client_id: env.client_id,
        channel: env.channel,
        external_id: env.external_id.clone(),
        channel_account: env.channel_account.clone(),
        conversation_id,
        kind: answer.kind,
        text: Pii::new(answer.text.clone()),
        config_version,
        created_at: Utc::now(),
    };
    let stored = ctx
        .db
        .messages()
        .store_reply(
            env.client_id,
            &NewReply {
                conversation_id,
                reply_id: reply.id,
                kind: reply.kind,
                text: answer.text,
                answers: vec![message_id],
                prompt_tokens: answer.prompt_tokens,
                completion_tokens: answer.completion_tokens,
                estimated_prompt_tokens: answer.estimated_prompt_tokens,
                config_version,
            },
        )
        .await?;
    if !stored {
        // Answered concurrently, or handed to a human while the LLM was thinking.
        tracing::info!("turn already answered or handed off; dropping this reply");
        ctx.db
            .messages()
            .close_unanswered(env.client_id, env.id, UserMessageState::Ignored)
            .await?;
        return Ok(());
    }
    ctx.publisher
        .publish_reply(&reply, ReplyRoute::Channel, Some(&env.trace.request_id))
        .await?;
    Ok(())
}

fn reply_from_stored(
    env: &Envelope,
    conversation_id: ConversationId,
    stored: StoredReply,
) -> Reply {
    Reply {
        v: ENVELOPE_VERSION,
        id: stored.id,
        in_reply_to: vec![env.id],
        client_id: env.client_id,
        channel: env.channel,
        external_id: env.external_id.clone(),
        channel_account: env.channel_account.clone(),
        conversation_id,
        kind: stored.kind,
        text: Pii::new(stored.text),
        config_version: stored.config_version,
        created_at: stored.created_at,
    }
}
