//! One turn, from envelopes to published reply (steps 3–9 of the journey in `lib.rs`).
//! Idempotent on the envelope id: a redelivered envelope that was already answered
//! republishes the stored reply (the deliverers drop duplicates) and never calls the LLM
//! again. A turn answers every unanswered message of its conversation at once, under the
//! conversation's lock, so messages that arrived while another turn ran are answered
//! together by the next one, each prompt holding every earlier exchange.
//!
//! [`Turn::run`] reads as the journey: record the messages at hand and take the lock,
//! read what the turn needs, [`decide`](decide::decide) what to do, do it. Its parts:
//! [`ask`] (prompt and LLM), [`reply`] (store and publish, or close; the outbox) and
//! [`replay`] (dry-run replays and the fallback after the last attempt).

mod ask;
mod decide;
mod held;
mod intake;
mod live;
mod replay;
mod reply;
mod tool_loop;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shared::cache::{ConversationLock, MailboxKey};
use shared::db::{
    BudgetAction, ClosedAs, ConversationMode, HistoryTurn, Pending, PendingTurn, TenantConfig,
};
use shared::envelope::{Envelope, Event, EventKind, ReplyKind};
use shared::ids::{Channel, ConversationId};
use shared::metric;
use shared::pii::Pii;
use shared::webhooks::EventType;

use crate::Ctx;
use crate::error::{Result, TurnError};
use crate::inbox::Inbox;
use ask::{Answer, ask_llm};
use decide::{Decision, decide};
use intake::{announce_received, record};
use live::LiveReply;
use reply::{Answering, close_all, relay_unpublished, reply};

pub(crate) use intake::{conversation_of, record_only};
pub(crate) use replay::{dry_run, give_up};

/// Most user messages answered together as one turn.
const MAX_COALESCED: u32 = 50;
/// How many debounce windows a burst that keeps coming may hold its turn back.
const MAX_DEBOUNCE_WINDOWS: u32 = 10;

/// Handles the deliveries of one conversation at hand (the inbox's, in arrival order):
/// records each user message, then — holding the conversation's lock, so no other worker
/// runs a turn of it meanwhile — answers every unanswered message of the conversation as
/// one turn. Deliveries of the conversation that arrive on this worker while the turn
/// runs are drained from the inbox, recorded and answered too; the caller settles every
/// delivery the inbox took with the turn.
pub(crate) async fn handle(ctx: &Ctx, inbox: &mut Inbox) -> Result<()> {
    let envs = inbox.envelopes();
    if ctx.answered.all(&envs) {
        // Answered by an earlier turn here while these deliveries were on their way.
        metrics::counter!(metric::DELIVERIES_ANSWERED_AHEAD).increment(envs.len() as u64);
        return Ok(());
    }
    let Some(first) = envs.first().cloned() else {
        return Ok(());
    };
    // Ingress receipt → this turn started: the broker and the worker's own queue.
    observe(
        "queued",
        (Utc::now() - first.received_at)
            .to_std()
            .unwrap_or_default(),
    );
    let client_id = first.client_id;
    // Boxed, like every stage of a turn but the LLM call (see [`timed`]).
    let tenant = Box::pin(ctx.configs.get(client_id))
        .await?
        .ok_or(TurnError::UnknownTenant(client_id))?;
    let conversation_id = conversation_of(ctx, &first).await?;
    let mut turn = Turn {
        ctx,
        tenant,
        conversation_id,
        first,
        envs,
        inbox,
    };
    let lock = turn.record_and_lock().await?;
    let outcome = turn.answer_pending().await;
    turn.release(lock).await;
    outcome
}

/// A turn of one conversation on this worker.
struct Turn<'a> {
    ctx: &'a Ctx,
    tenant: Arc<TenantConfig>,
    conversation_id: ConversationId,
    /// The delivery the turn started with (the outbox is published in its name).
    first: Envelope,
    /// Every envelope the turn took, in arrival order.
    envs: Vec<Envelope>,
    inbox: &'a mut Inbox,
}

impl Turn<'_> {
    /// Records the messages at hand and takes the conversation's lock. The first try for
    /// the lock goes out with the recording (one round trip of latency instead of two
    /// when the conversation is free); while another worker's turn holds it, what
    /// arrives here meanwhile is recorded, so that turn or this one answers it.
    async fn record_and_lock(&mut self) -> Result<ConversationLock> {
        let (ctx, client_id, conversation_id) =
            (self.ctx, self.tenant.client.id, self.conversation_id);
        let waiting = std::time::Instant::now();
        let envs = &self.envs;
        let (recorded, first_try) = tokio::join!(
            timed("record", async {
                for env in envs {
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
                self.release(lock).await;
            }
            return Err(e);
        }
        let lock = match first_try {
            Some(lock) => lock,
            None => {
                let mut acquire =
                    Box::pin(ctx.locks.acquire(client_id, conversation_id, ctx.lock_wait));
                loop {
                    tokio::select! {
                        lock = &mut acquire => break lock?.ok_or(TurnError::ConversationBusy)?,
                        _ = self.inbox.arrival() => self.take_in().await?,
                    }
                }
            }
        };
        observe("lock", waiting.elapsed());
        Ok(lock)
    }

    /// Releases the conversation's lock; a failure is only logged, since the lock
    /// expires on its own after `worker.lock_ttl_s`.
    async fn release(&self, lock: ConversationLock) {
        if let Err(e) = Box::pin(self.ctx.locks.release(lock)).await {
            tracing::warn!(error = %e, "could not release the conversation lock");
        }
    }

    /// Records the messages of deliveries that arrived in the inbox meanwhile.
    async fn take_in(&mut self) -> Result<()> {
        for env in self.inbox.drain() {
            record(self.ctx, self.conversation_id, &env).await?;
            self.envs.push(env);
        }
        Ok(())
    }

    /// Answers every unanswered message of the conversation together.
    async fn answer_pending(&mut self) -> Result<()> {
        let (Pending { mode, turns }, history) = timed("reads", Box::pin(self.read())).await?;
        let Some(last) = turns.last() else {
            // Everything was answered by an earlier turn (perhaps on another worker).
            return Ok(());
        };
        // The delivery that carried the latest message speaks for the turn (trace,
        // account).
        let env = self
            .envs
            .iter()
            .find(|e| e.id == last.envelope_id)
            .or_else(|| self.envs.last())
            .unwrap_or(&self.first)
            .clone();
        Box::pin(announce_received(
            self.ctx,
            self.conversation_id,
            &env,
            &turns,
        ))
        .await?;
        if env.channel == Channel::Whatsapp {
            Box::pin(held::reopen(
                self.ctx,
                self.conversation_id,
                &env,
                last.created_at,
            ))
            .await?;
        }
        let answering = Answering {
            conversation_id: self.conversation_id,
            message_ids: turns.iter().map(|p| p.message_id).collect(),
            envelope_ids: turns.iter().map(|p| p.envelope_id).collect(),
            day: crate::spend::period(&self.tenant).day,
            tenant: self.tenant.clone(),
        };
        if turns.len() > 1 {
            tracing::info!(
                messages = turns.len(),
                "answering several messages as one turn"
            );
            metrics::counter!(metric::COALESCED_MESSAGES).increment(turns.len() as u64);
        }
        let (ctx, tenant) = (self.ctx, &*self.tenant);
        let config = &tenant.config;
        match decide(
            tenant.client.status,
            mode,
            config.human_handoff_phrase.as_deref(),
            &turns,
        ) {
            Decision::Inactive => {
                tracing::info!(status = ?tenant.client.status, "tenant not active; no LLM call");
                if ctx.inactive_notice.is_empty() {
                    return close_all(ctx, tenant.client.id, &answering, ClosedAs::Ignored).await;
                }
                let notice = Answer::notice(ReplyKind::Fallback, ctx.inactive_notice.clone());
                reply(ctx, &env, &answering, notice).await.map(drop)
            }
            Decision::HandOff => {
                tracing::info!("handoff phrase matched; handing the conversation to a human");
                self.hand_off(&env, last).await?;
                let notice =
                    Answer::notice(ReplyKind::HandoffNotice, config.handoff_message.clone());
                reply(ctx, &env, &answering, notice).await.map(drop)
            }
            Decision::Forward => {
                self.forward(&env, &turns).await?;
                close_all(ctx, tenant.client.id, &answering, ClosedAs::Ignored).await?;
                self.wake_agents(&env).await;
                Ok(())
            }
            Decision::Ask => {
                let limits = ctx.plans.limits(tenant.client.plan);
                if let Some(wait) =
                    Box::pin(ctx.cache.take_message_token(tenant.client.id, limits)).await?
                {
                    metrics::counter!(metric::RATE_LIMITED).increment(1);
                    return Err(TurnError::RateLimited(wait));
                }
                let gate = Box::pin(crate::spend::gate(ctx, tenant)).await?;
                if let Some(wait) = gate.tokens_wait {
                    tracing::info!("the tenant's tokens for the day are spent; the message waits");
                    metrics::counter!(metric::RATE_LIMITED).increment(1);
                    return Err(TurnError::RateLimited(wait));
                }
                // The month's budget is spent: the tenant's budget_action.
                let mut asking = self.tenant.clone();
                if gate.over_budget {
                    let action = config.budget.action;
                    metrics::counter!(metric::BUDGET_ACTIONS, "action" => action.as_str())
                        .increment(1);
                    match action {
                        BudgetAction::FallbackMessage => {
                            let notice = Answer::fallback(tenant, "budget_exceeded".into());
                            return Box::pin(reply(ctx, &env, &answering, notice))
                                .await
                                .map(drop);
                        }
                        BudgetAction::Handoff => {
                            tracing::info!(
                                "the month's budget is spent; handing the conversation to a human"
                            );
                            Box::pin(self.hand_off(&env, last)).await?;
                            let mut notice = Answer::notice(
                                ReplyKind::HandoffNotice,
                                config.handoff_message.clone(),
                            );
                            notice.accounting.fallback_reason = Some("budget_exceeded".into());
                            return Box::pin(reply(ctx, &env, &answering, notice))
                                .await
                                .map(drop);
                        }
                        BudgetAction::FallbackModel => {
                            if let Some(model) = &config.fallback_model {
                                let mut cheaper = (*self.tenant).clone();
                                cheaper.config.llm_model.clone_from(model);
                                asking = Arc::new(cheaper);
                            }
                        }
                        BudgetAction::None => {}
                    }
                }
                let text = turns
                    .iter()
                    .map(|p| p.text.as_str())
                    .collect::<Vec<_>>()
                    .join("\n\n");
                // Boxed, like every stage but the LLM call (see [`timed`]).
                let live = Box::pin(LiveReply::start(
                    ctx,
                    &env,
                    self.conversation_id,
                    config.whatsapp_typing_indicator,
                ))
                .await;
                // Tool calls are known by the turn's first message, the same however
                // often the turn runs.
                let calls = tool_loop::CallsOf::Turn {
                    turn_id: turns[0].envelope_id,
                    conversation_id: self.conversation_id,
                };
                // Images, for a model that takes them (fetched now: never stored).
                let (images, image_unread) = if config.llm_vision {
                    Box::pin(self.images(&turns)).await
                } else {
                    (Vec::new(), false)
                };
                // A file the bot could not read: the tenant's word on it goes with the
                // prompt (as its first capability, the last dropped for the budget).
                let prompted =
                    if image_unread || turns.iter().any(|p| crate::media::unread(&p.text)) {
                        Arc::new(crate::media::with_fallback_note(&asking))
                    } else {
                        asking
                    };
                let asked = ask_llm(
                    ctx,
                    &prompted,
                    &history,
                    &text,
                    live.as_ref(),
                    calls,
                    images,
                );
                let mut answer = match timed("llm", asked).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        if let Some(live) = live {
                            Box::pin(live.discard()).await;
                        }
                        return Err(e);
                    }
                };
                if answer.hand_off {
                    tracing::info!("the model handed the conversation to a human");
                    if let Some(live) = live {
                        Box::pin(live.discard()).await;
                    }
                    self.hand_off(&env, last).await?;
                    return reply(ctx, &env, &answering, answer).await.map(drop);
                }
                // Every delta out before the stored reply is announced.
                let shown = match live {
                    Some(live) => {
                        answer.reply_id = Some(live.reply_id);
                        Some(Box::pin(live.finish()).await)
                    }
                    None => None,
                };
                let stored = Box::pin(reply(ctx, &env, &answering, answer)).await;
                if !matches!(stored, Ok(true))
                    && let Some(shown) = shown
                {
                    Box::pin(shown.discard()).await;
                }
                stored.map(drop)
            }
        }
    }

    /// What the turn reads under the lock, where no other turn changes the conversation,
    /// so the order does not matter: the outbox, the pending messages (with the mode) and
    /// the history come in one statement, after the messages of deliveries that queued up
    /// meanwhile are recorded. The outbox is published while the debounce window runs.
    async fn read(&mut self) -> Result<(Pending, Vec<HistoryTurn>)> {
        self.take_in().await?;
        let ctx = self.ctx;
        let opened = ctx
            .db
            .tenant(self.tenant.client.id)
            .messages()
            .open_turn(
                self.conversation_id,
                MAX_COALESCED,
                self.tenant.config.max_context_turns,
                |reply_id| ctx.confirms.confirmed(reply_id),
            )
            .await?;
        let (first, conversation_id) = (self.first.clone(), self.conversation_id);
        let (_, pending) = tokio::try_join!(
            relay_unpublished(ctx, &first, conversation_id, opened.unpublished),
            self.settled_pending(opened.pending),
        )?;
        Ok((pending, opened.history))
    }

    /// The conversation's unanswered user messages (`pending`, as the turn first read
    /// them) once the tenant's debounce window (`coalesce_window_ms` after the latest of
    /// them) has passed without a new one; messages of deliveries that queue up on this
    /// worker meanwhile are recorded and join them.
    async fn settled_pending(&mut self, mut pending: Pending) -> Result<Pending> {
        let window = Duration::from_millis(u64::from(self.tenant.config.coalesce_window_ms));
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
                _ = self.inbox.arrival() => {}
            }
            self.take_in().await?;
            pending = self
                .ctx
                .db
                .tenant(self.tenant.client.id)
                .messages()
                .pending(self.conversation_id, MAX_COALESCED)
                .await?;
            if tokio::time::Instant::now() >= give_up_at {
                break;
            }
        }
        Ok(pending)
    }

    /// The images of the turn's messages whose deliveries it holds (a message recorded
    /// by another worker's delivery reaches the model as its caption), and whether one
    /// could not be fetched.
    async fn images(&self, turns: &[PendingTurn]) -> (Vec<crate::llm::ChatImage>, bool) {
        let (mut images, mut unread) = (Vec::new(), false);
        for p in turns {
            let Some(env) = self.envs.iter().find(|e| e.id == p.envelope_id) else {
                continue;
            };
            if crate::media::image_id(env).is_none() {
                continue;
            }
            match self.ctx.media.image(&self.ctx.db, env).await {
                Some(image) => images.push(image),
                None => unread = true,
            }
        }
        (images, unread)
    }

    /// Hands the conversation to a human and announces it (once: a phrase said again
    /// while a human has it changes nothing).
    async fn hand_off(&self, env: &Envelope, last: &PendingTurn) -> Result<()> {
        let (ctx, client_id) = (self.ctx, self.tenant.client.id);
        if ctx
            .db
            .tenant(client_id)
            .conversations()
            .set_mode(self.conversation_id, ConversationMode::Human)
            .await?
        {
            let mut event = Event::new(
                EventKind::Handoff,
                client_id,
                self.conversation_id,
                env.channel,
            );
            event.envelope_id = Some(last.envelope_id);
            ctx.publisher.publish_event(&event).await?;
            let handoff =
                shared::webhooks::NewEvent::about(EventType::ConversationHandoff, last.envelope_id)
                    .in_conversation(self.conversation_id, env.channel)
                    .with("message_id", last.envelope_id.to_string());
            Box::pin(ctx.webhooks().emit(client_id, handoff)).await?;
            metrics::counter!(metric::HANDOFFS).increment(1);
            // The operators' handoff inbox lists it at once.
            if let Err(e) = ctx.mailboxes.announce_handoffs().await {
                tracing::warn!(error = %e, "could not wake the handoff inbox");
            }
        }
        Ok(())
    }

    /// Wakes whoever follows the conversation (the agents' console views): no reply will,
    /// and the user's messages are in its mailbox since they were recorded.
    async fn wake_agents(&self, env: &Envelope) {
        let key = MailboxKey::new(self.tenant.client.id, env.channel, env.external_id.expose());
        if let Err(e) = self.ctx.mailboxes.announce(&key).await {
            tracing::warn!(error = %e, "could not wake the conversation's followers");
        }
    }

    /// Forwards the messages to the person who has the conversation.
    async fn forward(&self, env: &Envelope, turns: &[PendingTurn]) -> Result<()> {
        for p in turns {
            let mut event = Event::new(
                EventKind::UserMessage,
                self.tenant.client.id,
                self.conversation_id,
                env.channel,
            );
            event.envelope_id = Some(p.envelope_id);
            event.text = Some(Pii::new(p.text.clone()));
            self.ctx.publisher.publish_event(&event).await?;
        }
        Ok(())
    }
}

/// Runs one stage of a turn, timing it (see [`observe`]).
///
/// The stage's state is boxed: it lives on the heap while the stage runs, instead of
/// inline in the turn's task, whose size is the largest state of any stage. A worker
/// holds thousands of turns waiting on the LLM; inline, each would carry the reads' and
/// the Redis calls' state through that wait. The other stages of a turn and its Redis
/// calls are boxed for the same reason.
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

/// Where a turn's time goes ([`metric::TURN_STAGE_SECONDS`]`{stage}`): queued (ingress
/// receipt → turn start), record, lock (from its first try, which runs with record),
/// reads (the turn's first read, the outbox relayed, the debounce window), llm (with
/// retrieval and prompt assembly), store, publish.
fn observe(stage: &'static str, elapsed: Duration) {
    metrics::histogram!(metric::TURN_STAGE_SECONDS, "stage" => stage).record(elapsed.as_secs_f64());
}
