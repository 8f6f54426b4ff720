//! One turn, from envelopes to published reply (steps 3–9 of the journey in `lib.rs`).
//! Idempotent on the envelope id: a redelivered envelope that was already answered
//! republishes the stored reply (the deliverers drop duplicates) and never calls the LLM
//! again. A turn answers every unanswered message of its conversation at once, under the
//! conversation's lock, so messages that arrived while another turn ran are answered
//! together by the next one, each prompt holding every earlier exchange.

use std::time::Duration;

use chrono::Utc;
use shared::cache::MailboxKey;
use shared::db::{
    ClientStatus, ClosedAs, ConversationMode, HistoryTurn, MessageState, NewReply, Pending,
    StoreOutcome, StoredReply, TenantConfig,
};
use shared::envelope::{ENVELOPE_VERSION, Envelope, Event, EventKind, Reply, ReplyKind};
use shared::ids::{Channel, ClientId, ConversationId, EnvelopeId, ReplyId};
use shared::metric;
use shared::mq::ReplyRoute;
use shared::pii::Pii;
use tokio::sync::Notify;

use crate::Ctx;
use crate::error::{Result, TurnError};
use crate::llm::ChatRequest;
use crate::{handoff, prompt};

/// Most user messages answered together as one turn.
const MAX_COALESCED: u32 = 50;
/// How many debounce windows a burst that keeps coming may hold its turn back.
const MAX_DEBOUNCE_WINDOWS: u32 = 10;

/// Handles the deliveries of one conversation that are at hand (`envs`, in arrival
/// order): records each user message, then — holding the conversation's lock, so no
/// other worker runs a turn of it meanwhile — answers every unanswered message of the
/// conversation as one turn.
/// Deliveries of the same conversation that arrive on this worker while its turn runs:
/// the turn records their messages (while it waits for the lock or a debounce window)
/// and answers them too; the caller settles them with the turn.
pub(crate) struct Intake<'a> {
    /// Takes the deliveries that arrived so far.
    pub take: &'a (dyn Fn() -> Vec<Envelope> + Sync),
    /// Notified at each arrival.
    pub arrived: &'a Notify,
}

pub(crate) async fn handle(ctx: &Ctx, mut envs: Vec<Envelope>, intake: &Intake<'_>) -> Result<()> {
    if ctx.answered.all(&envs) {
        // Answered by an earlier turn here while these deliveries were on their way.
        metrics::counter!(metric::DELIVERIES_ANSWERED_AHEAD).increment(envs.len() as u64);
        return Ok(());
    }
    let Some(first) = envs.first().cloned() else {
        return Ok(());
    };
    let client_id = first.client_id;
    // Ingress receipt → this turn started: the broker and the worker's own queue.
    observe(
        "queued",
        (Utc::now() - first.received_at)
            .to_std()
            .unwrap_or_default(),
    );
    // Boxed, like every stage of a turn but the LLM call (see [`timed`]).
    let tenant = Box::pin(ctx.configs.get(client_id))
        .await?
        .ok_or(TurnError::UnknownTenant(client_id))?;
    let conversation_id = ctx
        .conversations
        .get_or_create(client_id, first.channel, first.external_id.expose())
        .await?;
    // The first try for the lock goes out with the recording of the messages at hand
    // (one round trip of latency instead of two when the conversation is free).
    let waiting = std::time::Instant::now();
    let (recorded, first_try) = tokio::join!(
        timed("record", async {
            for env in &envs {
                record(ctx, conversation_id, env).await?;
            }
            Ok::<_, TurnError>(())
        }),
        Box::pin(
            ctx.locks
                .acquire(client_id, conversation_id, Duration::ZERO)
        ),
    );
    let first_try = first_try?;
    if let Err(e) = recorded {
        if let Some(lock) = first_try {
            release(ctx, lock).await;
        }
        return Err(e);
    }

    // Waiting for another worker's turn: record what arrives here meanwhile, so that
    // turn or ours answers it.
    let lock = match first_try {
        Some(lock) => lock,
        None => {
            let mut acquire =
                Box::pin(ctx.locks.acquire(client_id, conversation_id, ctx.lock_wait));
            loop {
                tokio::select! {
                    lock = &mut acquire => break lock?.ok_or(TurnError::ConversationBusy)?,
                    _ = intake.arrived.notified() => {
                        take_in(ctx, conversation_id, &mut envs, intake).await?;
                    }
                }
            }
        }
    };
    observe("lock", waiting.elapsed());
    let outcome = answer_pending(ctx, &tenant, &first, &mut envs, intake, conversation_id).await;
    release(ctx, lock).await;
    outcome
}

/// Releases a conversation's lock; a failure is only logged, since the lock expires on
/// its own after `worker.lock_ttl_s`.
async fn release(ctx: &Ctx, lock: shared::cache::ConversationLock) {
    if let Err(e) = Box::pin(ctx.locks.release(lock)).await {
        tracing::warn!(error = %e, "could not release the conversation lock");
    }
}

/// Runs one stage of a turn, timing it (see [`observe`]).
///
/// The stage's state is boxed: it lives on the heap while the stage runs, instead of
/// inline in the turn's task, whose size is the largest state of any stage. A worker
/// holds thousands of turns waiting on the LLM; inline, each would carry the reads'
/// (~10 KB) and the Redis calls' (~7 KB each) state through that wait. The other
/// stages of a turn and its Redis calls are boxed for the same reason.
fn timed<'a, T>(
    stage: &'static str,
    work: impl Future<Output = T> + 'a,
) -> impl Future<Output = T> + 'a {
    // Boxed before the returned future exists: held by value, it would be as large.
    let work = Box::pin(work);
    async move {
        let started = std::time::Instant::now();
        let out = work.await;
        observe(stage, started.elapsed());
        out
    }
}

/// Where a turn's time goes: `chatfleet_turn_stage_seconds{stage}` — queued (ingress
/// receipt → turn start), record, lock (from its first try, which runs with record),
/// reads (the turn's first read, the outbox relayed, the debounce window), llm (with
/// retrieval and prompt assembly), store, publish.
fn observe(stage: &'static str, elapsed: Duration) {
    metrics::histogram!(metric::TURN_STAGE_SECONDS, "stage" => stage).record(elapsed.as_secs_f64());
}

/// Records a user message once. A message its channel recorded at acceptance (committed
/// before its envelope was published) needs nothing: the turn reads it with the
/// conversation's other pending messages. A replayed envelope is recorded like any
/// other (a forced live replay carries a new id; the original may be long gone).
async fn record(ctx: &Ctx, conversation_id: ConversationId, env: &Envelope) -> Result<()> {
    if env.channel.records_at_acceptance() && env.replay.is_none() {
        return Ok(());
    }
    ctx.db
        .messages()
        .record_user(
            env.client_id,
            conversation_id,
            env.id,
            &env.message.as_prompt_text(),
            env.channel_message_id.as_deref(),
        )
        .await?;
    Ok(())
}

/// The outbox: publishes, in order, the conversation's stored replies that the broker
/// never confirmed (a worker died between storing and publishing, or the broker was
/// down), before this turn publishes anything. The deliverers drop a reply id they
/// delivered before, so publishing one twice is harmless.
async fn relay_unpublished(
    ctx: &Ctx,
    env: &Envelope,
    conversation_id: ConversationId,
    unpublished: Vec<(StoredReply, Vec<EnvelopeId>)>,
) -> Result<()> {
    for (stored, answers) in unpublished {
        tracing::info!(reply_id = %stored.id, "publishing a stored reply the broker never confirmed");
        let mut reply = reply_from_stored(env, conversation_id, stored);
        reply.in_reply_to = answers;
        publish(ctx, &reply, &env.trace.request_id).await?;
    }
    Ok(())
}

/// Publishes a stored reply with a confirm and queues the confirm's record.
async fn publish(ctx: &Ctx, reply: &Reply, request_id: &str) -> Result<()> {
    ctx.publisher
        .publish_reply(reply, ReplyRoute::Channel, Some(request_id))
        .await?;
    ctx.confirms.record(reply.client_id, reply.id);
    Ok(())
}

/// Records the messages of deliveries that arrived on this worker meanwhile (an already
/// answered one needs nothing more: its reply was published when it was stored).
async fn take_in(
    ctx: &Ctx,
    conversation_id: ConversationId,
    envs: &mut Vec<Envelope>,
    intake: &Intake<'_>,
) -> Result<()> {
    for env in (intake.take)() {
        record(ctx, conversation_id, &env).await?;
        envs.push(env);
    }
    Ok(())
}

/// The conversation's unanswered user messages (`pending`, as the turn first read them)
/// once the tenant's debounce window (`coalesce_window_ms` after the latest of them) has
/// passed without a new one; messages of deliveries that queue up on this worker
/// meanwhile are recorded and join them.
async fn settled_pending(
    ctx: &Ctx,
    tenant: &TenantConfig,
    envs: &mut Vec<Envelope>,
    intake: &Intake<'_>,
    conversation_id: ConversationId,
    mut pending: Pending,
) -> Result<Pending> {
    let client_id = tenant.client.id;
    let window = Duration::from_millis(u64::from(tenant.config.coalesce_window_ms));
    // A burst that never ends is answered after this long anyway.
    let give_up_at = tokio::time::Instant::now() + window * MAX_DEBOUNCE_WINDOWS;
    while let Some(latest) = pending.turns.last() {
        if window.is_zero() || pending.turns.len() >= MAX_COALESCED as usize {
            break;
        }
        let Ok(wait) = (latest.created_at + window - Utc::now()).to_std() else {
            break; // quiet for a whole window
        };
        let wake = (tokio::time::Instant::now() + wait).min(give_up_at);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            // Recorded as it arrives, so the messages keep their arrival order.
            _ = intake.arrived.notified() => {}
        }
        take_in(ctx, conversation_id, envs, intake).await?;
        pending = ctx
            .db
            .messages()
            .pending(client_id, conversation_id, MAX_COALESCED)
            .await?;
        if tokio::time::Instant::now() >= give_up_at {
            break;
        }
    }
    Ok(pending)
}

/// One turn: answers every unanswered message of the conversation together.
async fn answer_pending(
    ctx: &Ctx,
    tenant: &TenantConfig,
    first: &Envelope,
    envs: &mut Vec<Envelope>,
    intake: &Intake<'_>,
    conversation_id: ConversationId,
) -> Result<()> {
    let client_id = tenant.client.id;
    // Under the lock no other turn changes the conversation, so what a turn reads does
    // not depend on the order it reads it in: the outbox, the pending messages (with the
    // mode) and the history come in one statement, after the messages of deliveries
    // that queued up on this worker meanwhile are recorded.
    let reads = async {
        take_in(ctx, conversation_id, envs, intake).await?;
        let opened = ctx
            .db
            .messages()
            .open_turn(
                client_id,
                conversation_id,
                MAX_COALESCED,
                tenant.config.max_context_turns,
                |reply_id| ctx.confirms.confirmed(reply_id),
            )
            .await?;
        let (_, pending) = tokio::try_join!(
            relay_unpublished(ctx, first, conversation_id, opened.unpublished),
            settled_pending(ctx, tenant, envs, intake, conversation_id, opened.pending),
        )?;
        Ok::<_, TurnError>((pending, opened.history))
    };
    let (
        Pending {
            mode,
            turns: pending,
        },
        history,
    ) = timed("reads", reads).await?;
    let envs: &[Envelope] = envs;
    let Some(last) = pending.last() else {
        // Everything was answered by an earlier turn (perhaps on another worker).
        return Ok(());
    };
    // The delivery that carried the latest message speaks for the turn (trace, account).
    let env = envs
        .iter()
        .find(|e| e.id == last.envelope_id)
        .or_else(|| envs.last())
        .expect("a batch is never empty");
    let turn = Turn {
        conversation_id,
        message_ids: pending.iter().map(|p| p.message_id).collect(),
        envelope_ids: pending.iter().map(|p| p.envelope_id).collect(),
        config_version: tenant.config.config_version,
    };
    if pending.len() > 1 {
        tracing::info!(
            messages = pending.len(),
            "answering several messages as one turn"
        );
        metrics::counter!(metric::COALESCED_MESSAGES).increment(pending.len() as u64);
    }
    let text = pending
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");

    if tenant.client.status != ClientStatus::Active {
        tracing::info!(status = ?tenant.client.status, "tenant not active; no LLM call");
        if ctx.inactive_notice.is_empty() {
            return close_all(ctx, client_id, &turn, ClosedAs::Ignored).await;
        }
        let notice = Answer::notice(ReplyKind::Fallback, ctx.inactive_notice.clone());
        return reply(ctx, env, &turn, notice).await;
    }

    if let Some(phrase) = &tenant.config.human_handoff_phrase
        && pending.iter().any(|p| handoff::matches(&p.text, phrase))
    {
        tracing::info!("handoff phrase matched; handing the conversation to a human");
        if ctx
            .db
            .conversations()
            .set_mode(client_id, conversation_id, ConversationMode::Human)
            .await?
        {
            let mut event = Event::new(EventKind::Handoff, client_id, conversation_id, env.channel);
            event.envelope_id = Some(last.envelope_id);
            ctx.publisher.publish_event(&event).await?;
            metrics::counter!(metric::HANDOFFS).increment(1);
        }
        let notice = Answer::notice(
            ReplyKind::HandoffNotice,
            tenant.config.handoff_message.clone(),
        );
        return reply(ctx, env, &turn, notice).await;
    }
    if mode == ConversationMode::Human {
        // A person has this conversation: the bot stays silent and forwards the messages.
        for p in &pending {
            let mut event = Event::new(
                EventKind::UserMessage,
                client_id,
                conversation_id,
                env.channel,
            );
            event.envelope_id = Some(p.envelope_id);
            event.text = Some(Pii::new(p.text.clone()));
            ctx.publisher.publish_event(&event).await?;
        }
        return close_all(ctx, client_id, &turn, ClosedAs::Ignored).await;
    }

    let limits = ctx.plans.limits(tenant.client.plan);
    if let Some(wait) = Box::pin(ctx.cache.take_message_token(client_id, limits)).await? {
        metrics::counter!(metric::RATE_LIMITED).increment(1);
        return Err(TurnError::RateLimited(wait));
    }

    let answer = timed("llm", ask_llm(ctx, tenant, &history, &text)).await?;
    reply(ctx, env, &turn, answer).await
}

/// Assembles the prompt (DESIGN.md §8) from the tenant's configuration, its knowledge,
/// `history` and the question, and asks the tenant's model (its fallback model when
/// the primary fails transiently).
async fn ask_llm(
    ctx: &Ctx,
    tenant: &TenantConfig,
    history: &[HistoryTurn],
    text: &str,
) -> Result<Answer> {
    let client_id = tenant.client.id;
    let config = &tenant.config;
    let (_, model) = ctx.llm.route(&config.llm_model);
    let num_ctx = ctx.llm_settings.context_window(model);
    let mut budget = num_ctx.saturating_sub(ctx.llm_settings.completion_reserve);
    if let Some(own) = config.prompt_token_budget {
        budget = budget.min(own);
    }
    let knowledge = retrieve(ctx, client_id, text, config.rag_top_k).await;
    let prompt = prompt::assemble(
        &ctx.tokenizer,
        budget as usize,
        tenant,
        &knowledge,
        history,
        text,
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
            metrics::counter!(metric::PROMPT_DROPPED, "part" => part).increment(n as u64);
        }
        if d.truncated_tokens > 0 {
            metrics::counter!(metric::PROMPT_TRUNCATED_MESSAGES).increment(1);
        }
    }
    let estimated = u32::try_from(prompt.tokens).unwrap_or(u32::MAX);
    let started = std::time::Instant::now();
    // The prompt's messages move into the request: no copy of the prompt per call.
    let mut request = ChatRequest {
        model: config.llm_model.clone(),
        temperature: config.llm_temperature,
        num_ctx,
        messages: prompt.messages,
    };
    let completion = match ctx.llm.chat(&request).await {
        Ok(c) => c,
        Err(e) if e.is_transient() && config.fallback_model.is_some() => {
            let fallback = config.fallback_model.as_deref().unwrap_or_default();
            tracing::warn!(error = %e, fallback, "primary model failed; asking the fallback model");
            metrics::counter!(metric::LLM_FALLBACKS).increment(1);
            fallback.clone_into(&mut request.model);
            ctx.llm.chat(&request).await?
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "llm answered"
    );

    Ok(Answer {
        kind: ReplyKind::Bot,
        text: completion.text,
        prompt_tokens: completion.prompt_tokens,
        completion_tokens: completion.completion_tokens,
        estimated_prompt_tokens: Some(estimated),
    })
}

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
    let messages = ctx.db.messages();
    let conversation = ctx
        .db
        .conversations()
        .find(client_id, env.channel, env.external_id.expose())
        .await?;
    let history = match conversation {
        Some(conversation_id) => {
            let before = messages
                .user_message_id(client_id, env.id)
                .await?
                .unwrap_or(u64::MAX);
            messages
                .history_before(
                    client_id,
                    conversation_id,
                    before,
                    tenant.config.max_context_turns,
                )
                .await?
        }
        None => Vec::new(),
    };
    let answer = ask_llm(ctx, &tenant, &history, &env.message.as_prompt_text()).await?;
    let reply = Reply {
        v: ENVELOPE_VERSION,
        id: ReplyId::random(),
        in_reply_to: vec![env.id],
        client_id,
        channel: env.channel,
        external_id: env.external_id.clone(),
        channel_account: env.channel_account.clone(),
        conversation_id: conversation.unwrap_or(ConversationId::new(0)),
        kind: answer.kind,
        text: Pii::new(answer.text),
        config_version: tenant.config.config_version,
        created_at: Utc::now(),
        polls_woken: false,
    };
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
    let conversation_id = ctx
        .conversations
        .get_or_create(client_id, env.channel, env.external_id.expose())
        .await?;
    let recorded = ctx
        .db
        .messages()
        .record_user(
            client_id,
            conversation_id,
            env.id,
            &env.message.as_prompt_text(),
            env.channel_message_id.as_deref(),
        )
        .await?;
    if recorded.state != MessageState::Pending || tenant.config.fallback_message.is_empty() {
        return Ok(());
    }
    let turn = Turn {
        conversation_id,
        message_ids: vec![recorded.message_id],
        envelope_ids: vec![env.id],
        config_version: tenant.config.config_version,
    };
    let notice = Answer::notice(ReplyKind::Fallback, tenant.config.fallback_message.clone());
    reply(ctx, env, &turn, notice).await
}

/// The user messages one reply answers.
struct Turn {
    conversation_id: ConversationId,
    message_ids: Vec<u64>,
    envelope_ids: Vec<EnvelopeId>,
    config_version: u64,
}

async fn close_all(ctx: &Ctx, client_id: ClientId, turn: &Turn, state: ClosedAs) -> Result<()> {
    for id in &turn.envelope_ids {
        ctx.db
            .messages()
            .close_unanswered(client_id, *id, state)
            .await?;
    }
    Ok(())
}

/// The tenant's `top_k` knowledge chunks for `query`, best first. Retrieval is an
/// enhancement: when the embeddings provider or ChromaDB fails, the turn goes on
/// without knowledge (logged and counted) rather than failing.
async fn retrieve(ctx: &Ctx, client_id: ClientId, query: &str, top_k: u32) -> Vec<String> {
    if top_k == 0 {
        return Vec::new();
    }
    match ctx.knowledge.search(client_id, query, top_k).await {
        Ok(chunks) => chunks,
        Err(e) => {
            tracing::warn!(error = %e, "knowledge retrieval failed; answering without it");
            metrics::counter!(metric::RETRIEVAL_FAILURES).increment(1);
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

/// Stores the answer to the turn's messages (only if they are all still unanswered),
/// then publishes it with a confirm.
async fn reply(ctx: &Ctx, env: &Envelope, turn: &Turn, answer: Answer) -> Result<()> {
    let mut reply = Reply {
        v: ENVELOPE_VERSION,
        id: ReplyId::random(),
        in_reply_to: turn.envelope_ids.clone(),
        client_id: env.client_id,
        channel: env.channel,
        external_id: env.external_id.clone(),
        channel_account: env.channel_account.clone(),
        conversation_id: turn.conversation_id,
        kind: answer.kind,
        text: Pii::new(answer.text.clone()),
        config_version: turn.config_version,
        created_at: Utc::now(),
        polls_woken: false,
    };
    let stored = timed(
        "store",
        ctx.db.messages().store_reply(
            env.client_id,
            &NewReply {
                conversation_id: turn.conversation_id,
                reply_id: reply.id,
                kind: reply.kind,
                text: answer.text,
                answers: turn.message_ids.clone(),
                prompt_tokens: answer.prompt_tokens,
                completion_tokens: answer.completion_tokens,
                estimated_prompt_tokens: answer.estimated_prompt_tokens,
                config_version: turn.config_version,
            },
        ),
    )
    .await?;
    match stored {
        StoreOutcome::Stored => {}
        StoreOutcome::NotBotMode => {
            tracing::info!("handed to a human while the turn ran; dropping this reply");
            return close_all(ctx, env.client_id, turn, ClosedAs::Ignored).await;
        }
        StoreOutcome::AnsweredBefore => {
            tracing::info!("turn answered before (another delivery); dropping this reply");
            return close_all(ctx, env.client_id, turn, ClosedAs::Ignored).await;
        }
    }
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
    Ok(())
}

/// Wakes the long-polls of the reply's mailbox on every ingress replica: the stored
/// reply is readable there since its commit, so a poll need not wait for the broker to
/// carry it to the channel's deliverer. Returns whether it did; the reply says so, and
/// its deliverer wakes them only when the worker could not (the failure is logged).
async fn wake_polls(ctx: &Ctx, reply: &Reply) -> bool {
    if reply.channel == Channel::Whatsapp {
        return false; // No mailbox: the deliverer sends it to the Graph API.
    }
    let key = MailboxKey::new(reply.client_id, reply.channel, reply.external_id.expose());
    match ctx.mailboxes.announce(&key).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not wake the reply's long-polls");
            false
        }
    }
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
        polls_woken: false,
    }
}
