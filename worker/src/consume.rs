//! The consume loop: receives deliveries from the work shards this worker holds and the
//! way back in ([`crate::shards`]; manual acks, prefetch = the bound on in-flight turns),
//! forwards those of the way back in to their shards, opens their envelopes with their
//! conversations' data keys (dropping those of erased conversations), runs the turns of one conversation strictly
//! one after another in arrival order (different conversations run concurrently; across
//! workers the conversation lock in `turn` keeps them apart), hands the deliveries that
//! queued up behind a turn to the next turn together, applies each failure's
//! [`Disposition`] to every delivery of the batch, parks a flooding tenant's new turns
//! so other tenants' messages behind them are reached ([`crate::window`]), re-opens a
//! lost broker connection, and drains on shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use shared::db::ClosedAs;
use shared::envelope::{Envelope, ReplayMode};
use shared::ids::{ClientId, ConversationId};
use shared::metric;
use shared::mq::{Broker, Delivery, RetryRung};
use shared::sealed::{Heading, Opened, Unreadable};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::Ctx;
use crate::error::{Disposition, TurnError};
use crate::inbox::{Inbox, Job, Queued};
use crate::shards::{Source, WorkFeed};
use crate::turn;
use crate::window::{Admission, TenantWindow};

/// Whether an envelope is a dry-run replay (see `turn::dry_run`).
fn dry_run(env: &Envelope) -> bool {
    env.replay
        .as_ref()
        .is_some_and(|r| r.mode == ReplayMode::DryRun)
}

/// Most deliveries of one conversation handled by one turn.
const MAX_BATCH: usize = 32;

/// Runs the turns of each conversation in order, one at a time.
struct Dispatcher {
    ctx: Arc<Ctx>,
    /// The deliveries queued behind the running turn of each conversation.
    queues: Mutex<HashMap<String, Arc<Queued>>>,
    /// Each tenant's deliveries held here.
    window: TenantWindow,
    tracker: TaskTracker,
}

/// The tenant a delivery is for, when it could be read.
fn tenant_of(job: &Job) -> Option<ClientId> {
    job.envelope.as_ref().ok().map(|e| e.client_id)
}

impl Dispatcher {
    /// Queues a delivery behind its conversation's running turn, or starts a turn for
    /// it, or parks it (see [`crate::window`]).
    fn dispatch(self: &Arc<Self>, job: Job) {
        self.dispatch_or_park(job, true);
    }

    fn dispatch_or_park(self: &Arc<Self>, job: Job, may_park: bool) {
        let key = match &job.envelope {
            // A dry-run replay touches no conversation: it runs on its own.
            Ok(env) if dry_run(env) => {
                format!("replay-{}", uuid::Uuid::new_v4())
            }
            Ok(env) => format!(
                "{}\u{1f}{}\u{1f}{}",
                env.client_id,
                env.channel,
                env.external_id.expose()
            ),
            Err(_) => format!("undecodable-{}", uuid::Uuid::new_v4()),
        };
        {
            let Ok(mut queues) = self.queues.lock() else {
                return;
            };
            // A dry-run replay touches no conversation: never parked (nor recorded).
            let may_park = may_park && !job.envelope.as_ref().is_ok_and(dry_run);
            if let Some(tenant) = tenant_of(&job)
                && self.window.arrive(tenant, may_park) == Admission::Park
            {
                drop(queues);
                let this = self.clone();
                self.tracker.spawn(async move { this.park(job).await });
                return;
            }
            if let Some(queued) = queues.get(&key) {
                queued.push(job);
                return;
            }
            queues.insert(key.clone(), Arc::default());
        }
        let this = self.clone();
        self.tracker.spawn(async move {
            let mut batch = vec![job];
            while !batch.is_empty() {
                this.process(&key, batch).await;
                // Whatever queued up behind this turn is handled together next.
                batch = this.take_queued(&key, MAX_BATCH);
                if batch.is_empty()
                    && let Ok(mut queues) = this.queues.lock()
                    && queues.get(&key).is_some_and(|q| q.len() == 0)
                {
                    queues.remove(&key);
                } else if batch.is_empty() {
                    // Queued between the two locks: go round again.
                    batch = this.take_queued(&key, MAX_BATCH);
                }
            }
        });
    }

    /// Moves a delivery of a tenant over its share of the window to the retry ladder's
    /// first rung (no attempt spent), after recording its message where the channel
    /// did not (so whichever turn of its conversation runs next answers it, in order).
    /// When that fails, the delivery runs as a turn after all.
    async fn park(self: Arc<Self>, job: Job) {
        let Ok(env) = &job.envelope else {
            return self.dispatch_or_park(job, false);
        };
        if let Err(e) = turn::record_only(&self.ctx, env).await {
            tracing::warn!(error = %e, "could not record a parked message; running its turn");
            return self.dispatch_or_park(job, false);
        }
        // The shortest rung: the tenant's parked work comes back soon enough to keep
        // its turns going (each round costs one republish while it stays over).
        let rung = RetryRung(0);
        let delivery = &job.delivery;
        match self
            .ctx
            .publisher
            .retry(delivery, rung, delivery.attempt)
            .await
        {
            Ok(()) => {
                tracing::debug!(client_id = %env.client_id, "tenant over its share of the worker; delivery parked");
                metrics::counter!(metric::DELIVERIES_PARKED).increment(1);
                self.ack(delivery).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not park a delivery; running its turn");
                self.dispatch_or_park(job, false);
            }
        }
    }

    /// Up to `max` deliveries waiting behind the running turn of conversation `key`.
    fn take_queued(&self, key: &str, max: usize) -> Vec<Job> {
        self.queued(key).map(|q| q.take(max)).unwrap_or_default()
    }

    /// The queue of conversation `key`, while a turn of it runs here.
    fn queued(&self, key: &str) -> Option<Arc<Queued>> {
        self.queues.lock().ok()?.get(key).cloned()
    }

    fn in_flight(&self) -> usize {
        self.queues
            .lock()
            .map(|q| q.values().map(|w| w.len() + 1).sum())
            .unwrap_or(0)
    }

    /// Runs one turn for deliveries of one conversation (or dead-letters an undecodable
    /// one), then settles every delivery of the batch.
    async fn process(&self, key: &str, batch: Vec<Job>) {
        let first = &batch[0];
        let span = match &first.envelope {
            Ok(env) => tracing::info_span!(
                "turn",
                request_id = %env.trace.request_id,
                client_id = %env.client_id,
                channel = %env.channel,
                envelope_id = %env.id,
                attempt = first.delivery.attempt,
                deliveries = batch.len(),
            ),
            Err(_) => tracing::info_span!("turn", attempt = first.delivery.attempt),
        };
        // One trace per message, across the broker (the ingress's span is the parent).
        if let Ok(env) = &first.envelope {
            shared::telemetry::continue_trace(&span, env.trace.traceparent.as_deref());
        }
        let in_flight = metrics::gauge!(metric::TURNS_IN_FLIGHT);
        in_flight.increment(1.0);
        let undecodable = first.envelope.as_ref().err().cloned();
        let replay = first.envelope.as_ref().ok().filter(|e| dry_run(e)).cloned();
        // Deliveries that queue up while the turn waits (its lock, its debounce window)
        // join it through its inbox: the turn records their messages and answers them
        // too, and they are settled with it.
        let queued = self.queued(key).unwrap_or_default();
        let mut inbox = Inbox::new(queued, batch, MAX_BATCH);
        let outcome = async {
            match (undecodable, replay) {
                // Boxed: rare, and inline it would size every turn's task.
                (None, Some(env)) => Box::pin(turn::dry_run(&self.ctx, &env)).await,
                (None, None) => turn::handle(&self.ctx, &mut inbox).await,
                (Some(e), _) => Err(TurnError::Undecodable(e)),
            }
        }
        .instrument(span.clone())
        .await;
        let batch = inbox.into_taken();
        for job in &batch {
            if let Some(tenant) = tenant_of(job) {
                self.window.settled(tenant);
            }
        }
        // Boxed: settling (a failure's retry or dead-letter publish) has the largest
        // state; inline, every turn's task would carry it through its LLM call.
        Box::pin(
            async {
                match outcome {
                    Ok(()) => {
                        for job in &batch {
                            self.ack(&job.delivery).await;
                        }
                    }
                    Err(e) => {
                        for job in &batch {
                            self.fail(&job.delivery, job.envelope.as_ref().ok(), &e)
                                .await;
                        }
                    }
                }
            }
            .instrument(span),
        )
        .await;
        in_flight.decrement(1.0);
    }

    async fn ack(&self, delivery: &Delivery) {
        if let Err(e) = delivery.ack().await {
            // The channel died: the broker redelivers, and the turn is idempotent.
            tracing::warn!(error = %e, "ack failed; the message will be redelivered");
        }
    }

    /// `dead_letter` for a message that got the fallback and went to the dead-letter queue
    /// (best effort: the message is parked either way).
    async fn announce_dead_letter(&self, env: &Envelope, reason: &str) {
        let Ok(Some(conversation_id)) = self
            .ctx
            .conversations
            .find(env.client_id, env.channel, env.external_id.expose())
            .await
        else {
            return;
        };
        let event =
            shared::webhooks::NewEvent::about(shared::webhooks::EventType::DeadLetter, env.id)
                .in_conversation(conversation_id, env.channel)
                .with("message_id", env.id.to_string())
                .with("reason", reason.to_owned());
        if let Err(e) = self.ctx.webhooks().emit(env.client_id, event).await {
            tracing::warn!(error = %e, "could not announce the dead letter to webhooks");
        }
    }

    async fn fail(&self, delivery: &Delivery, envelope: Option<&Envelope>, error: &TurnError) {
        let topology = self.ctx.topology();
        let moved = match error.disposition(delivery.attempt, topology.retry_delays()) {
            Disposition::Retry(rung) => {
                tracing::warn!(error = %error, rung = rung.0, "turn failed; retrying later");
                metrics::counter!(metric::RETRIES).increment(1);
                self.ctx
                    .publisher
                    .retry(delivery, rung, delivery.attempt + 1)
                    .await
            }
            Disposition::Delay(rung) => {
                tracing::info!(reason = %error, rung = rung.0, "turn delayed");
                self.ctx
                    .publisher
                    .retry(delivery, rung, delivery.attempt)
                    .await
            }
            Disposition::DeadLetter(reason) => {
                tracing::error!(reason = %reason, "turn failed; dead-lettering");
                metrics::counter!(metric::DEAD_LETTERS).increment(1);
                // A dry-run replay never touches the conversation it replays.
                let envelope = envelope.filter(|e| !dry_run(e));
                if let Some(env) = envelope
                    && let Err(e) = turn::give_up(&self.ctx, env).await
                {
                    tracing::warn!(error = %e, "could not send the fallback message");
                }
                let moved = self
                    .ctx
                    .publisher
                    .dead_letter(delivery, &topology.inbound_work(), &reason)
                    .await;
                if let (Ok(()), Some(env)) = (&moved, envelope) {
                    Box::pin(self.announce_dead_letter(env, &reason)).await;
                }
                if let (Ok(()), Some(env)) = (&moved, envelope)
                    && let Err(e) = self
                        .ctx
                        .db
                        .tenant(env.client_id)
                        .messages()
                        .close_unanswered(env.id, ClosedAs::Failed)
                        .await
                {
                    tracing::warn!(error = %e, "could not mark the turn failed");
                }
                moved
            }
        };
        match moved {
            Ok(()) => self.ack(delivery).await,
            Err(e) => {
                // Could not park it anywhere: hand it back to the queue after a pause (the
                // quorum queue's delivery limit ends a loop that never heals).
                tracing::error!(error = %e, "could not retry or dead-letter; requeueing");
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = delivery.requeue().await;
            }
        }
    }
}

/// Consumes until `shutdown`, then drains in-flight turns for up to `drain_timeout`.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    broker: Broker,
    prefetch: u16,
    tenant_max_held: usize,
    drain_timeout: Duration,
    shutdown: CancellationToken,
) {
    let dispatcher = Arc::new(Dispatcher {
        ctx,
        queues: Mutex::new(HashMap::new()),
        window: TenantWindow::new(tenant_max_held),
        tracker: TaskTracker::new(),
    });
    let mut deliveries = WorkFeed::start(
        broker,
        dispatcher.ctx.cache.clone(),
        prefetch,
        drain_timeout,
        shutdown.clone(),
    );
    // Envelopes are opened before they are dispatched (a data key not cached yet is a
    // database read): one conversation's in the order they arrived, one after another,
    // different conversations' concurrently and dispatched as each is ready, so a
    // tenant's burst of new conversations does not hold back another tenant's message.
    let mut running = futures::stream::FuturesUnordered::new();
    let mut waiting: HashMap<Chain, VecDeque<Delivery>> = HashMap::new();
    let open_next = |chain: Chain, delivery: Option<Delivery>| {
        delivery.map(|delivery| opened(&dispatcher.ctx, chain, delivery, &shutdown))
    };
    let mut receiving = true;
    while receiving || !running.is_empty() {
        tokio::select! {
            Some((chain, job)) = running.next(), if !running.is_empty() => {
                if let Some(job) = job {
                    dispatcher.dispatch(job);
                }
                let next = waiting.get_mut(&chain).and_then(VecDeque::pop_front);
                match open_next(chain, next) {
                    Some(opening) => running.push(opening),
                    None => {
                        waiting.remove(&chain);
                    }
                }
            }
            delivery = deliveries.next(), if receiving => match delivery {
                Some((Source::WayBack, delivery)) => {
                    let ctx = dispatcher.ctx.clone();
                    dispatcher.tracker.spawn(async move { forward(&ctx, delivery).await });
                }
                Some((Source::Shard(_), delivery)) => {
                    let chain = chain_of(&delivery);
                    match waiting.get_mut(&chain) {
                        Some(queue) => queue.push_back(delivery),
                        None => {
                            waiting.insert(chain, VecDeque::new());
                            running.extend(open_next(chain, Some(delivery)));
                        }
                    }
                }
                None => receiving = false,
            },
        }
    }
    drain(&dispatcher, drain_timeout).await;
    deliveries.close().await;
}

/// Moves a delivery from the way back in to its work shard (by its readable heading;
/// one without a heading goes to shard 0, to be dead-lettered there as undecodable).
async fn forward(ctx: &Ctx, delivery: Delivery) {
    let topology = ctx.topology();
    let shard = Heading::of(&delivery.body)
        .map_or(0, |h| topology.shard_of(h.client_id, h.conversation_id));
    match ctx.publisher.forward_to_shard(&delivery, shard).await {
        Ok(()) => {
            metrics::counter!(metric::WORK_FORWARDED).increment(1);
            if let Err(e) = delivery.ack().await {
                tracing::warn!(error = %e, "ack of a forwarded delivery failed; it is forwarded again (its turn is idempotent)");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not forward a delivery to its shard; requeueing");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery.requeue().await;
        }
    }
}

/// The deliveries opened one after another: those of one conversation (by the readable
/// heading; those without one, of one tenant).
type Chain = Option<(ClientId, Option<ConversationId>)>;

fn chain_of(delivery: &Delivery) -> Chain {
    Heading::of(&delivery.body).map(|h| (h.client_id, h.conversation_id))
}

/// [`open`], with the chain the delivery belongs to.
async fn opened(
    ctx: &Ctx,
    chain: Chain,
    delivery: Delivery,
    shutdown: &CancellationToken,
) -> (Chain, Option<Job>) {
    (chain, open(ctx, delivery, shutdown).await)
}

/// The delivery's envelope, opened with its conversation's data key: its turn's job
/// (with the reason when it cannot be read: it is dead-lettered), or `None` when it was
/// settled here — dropped because its conversation was erased since it was sent, or
/// handed back to the queue because the worker is stopping while its key cannot be read
/// (it is read again every few seconds until then: nothing else runs without the
/// database either).
async fn open(ctx: &Ctx, delivery: Delivery, shutdown: &CancellationToken) -> Option<Job> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let envelope = match ctx.data_keys.open_envelope(&delivery.body).await {
            Ok(Opened::Readable(envelope)) => Ok(envelope),
            Ok(Opened::Erased(heading)) => {
                tracing::debug!(envelope_id = %heading.id, "the message's conversation was erased; dropped");
                metrics::counter!(metric::ERASED_SKIPPED, "what" => "envelope").increment(1);
                let _ = delivery.ack().await;
                return None;
            }
            Err(Unreadable::Malformed(reason)) => Err(reason),
            Err(Unreadable::Unavailable(e)) => {
                tracing::warn!(error = %e, "cannot open a delivery now; trying again");
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = delivery.requeue().await;
                        return None;
                    }
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        return Some(Job { delivery, envelope });
    }
}

async fn drain(dispatcher: &Dispatcher, timeout: Duration) {
    dispatcher.tracker.close();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = dispatcher.in_flight();
        if dispatcher.tracker.is_empty() {
            tracing::info!("drained");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                in_flight = left,
                "drain timeout; unacked turns go back to the queue"
            );
            return;
        }
        tracing::info!(in_flight = left, "draining");
        tokio::select! {
            _ = dispatcher.tracker.wait() => {}
            _ = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_secs(2))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns.
    fn future_size<A, B, F: Future>(_: impl FnOnce(A, B) -> F) -> usize {
        size_of::<F>()
    }

    /// The size of the future `f` returns (three arguments).
    fn future_size3<A, B, C, F: Future>(_: impl FnOnce(A, B, C) -> F) -> usize {
        size_of::<F>()
    }

    /// A worker holds thousands of turns waiting on the LLM, each a task as large as the
    /// largest state of any of its stages: those that are not the wait itself (the
    /// reads, the Redis calls, settling) are boxed, so they do not size every task;
    /// inline, they made it several times larger.
    #[test]
    fn a_turn_task_is_a_few_kilobytes() {
        let process = future_size3(Dispatcher::process);
        let handle = future_size(turn::handle);
        eprintln!("process {process} B, turn::handle {handle} B");
        assert!(process <= 5 * 1024, "Dispatcher::process: {process} B");
        assert!(handle <= 5 * 1024, "turn::handle: {handle} B");
    }
}
