//! The consume loop: receives deliveries from `<prefix>.inbound.work` (manual acks,
//! prefetch = the bound on in-flight turns), runs the turns of one conversation strictly
//! one after another in arrival order (different conversations run concurrently), applies
//! each failure's [`Disposition`], re-opens a lost broker connection, and drains on
//! shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::db::UserMessageState;
use shared::envelope::Envelope;
use shared::mq::{Broker, Delivery};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::Ctx;
use crate::error::{Disposition, TurnError};
use crate::turn;

/// A delivery with its decoded envelope (or why it could not be decoded).
struct Job {
    delivery: Delivery,
    envelope: Result<Envelope, String>,
}

/// Runs the turns of each conversation in order, one at a time.
struct Dispatcher {
    ctx: Arc<Ctx>,
    queues: Mutex<HashMap<String, VecDeque<Job>>>,
    tracker: TaskTracker,
}

impl Dispatcher {
    fn dispatch(self: &Arc<Self>, job: Job) {
        let key = match &job.envelope {
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
            if let Some(waiting) = queues.get_mut(&key) {
                waiting.push_back(job);
                return;
            }
            queues.insert(key.clone(), VecDeque::new());
        }
        let this = self.clone();
        self.tracker.spawn(async move {
            let mut next = Some(job);
            while let Some(job) = next {
                this.process(job).await;
                next = match this.queues.lock() {
                    Ok(mut queues) => match queues.get_mut(&key).and_then(VecDeque::pop_front) {
                        Some(job) => Some(job),
                        None => {
                            queues.remove(&key);
                            None
                        }
                    },
                    Err(_) => None,
                };
            }
        });
    }

    fn in_flight(&self) -> usize {
        self.queues
            .lock()
            .map(|q| q.values().map(|w| w.len() + 1).sum())
            .unwrap_or(0)
    }

    async fn process(&self, job: Job) {
        let Job { delivery, envelope } = job;
        let span = match &envelope {
            Ok(env) => tracing::info_span!(
                "turn",
                request_id = %env.trace.request_id,
                client_id = %env.client_id,
                channel = %env.channel,
                envelope_id = %env.id,
                attempt = delivery.attempt,
            ),
            Err(_) => tracing::info_span!("turn", attempt = delivery.attempt),
        };
        async {
            let outcome = match &envelope {
                Ok(env) => turn::handle(&self.ctx, env).await,
                Err(e) => Err(TurnError::Undecodable(e.clone())),
            };
            match outcome {
                Ok(()) => self.ack(&delivery).await,
                Err(e) => self.fail(&delivery, envelope.as_ref().ok(), e).await,
            }
        }
        .instrument(span)
        .await;
    }

    async fn ack(&self, delivery: &Delivery) {
        if let Err(e) = delivery.ack().await {
            // The channel died: the broker redelivers, and the turn is idempotent.
            tracing::warn!(error = %e, "ack failed; the message will be redelivered");
        }
    }

    async fn fail(&self, delivery: &Delivery, envelope: Option<&Envelope>, error: TurnError) {
        let topology = self.ctx.topology();
        let moved = match error.disposition(delivery.attempt, topology.retry_delays()) {
            Disposition::Retry(rung) => {
                tracing::warn!(error = %error, rung = rung.0, "turn failed; retrying later");
                metrics::counter!("chatfleet_retries_total").increment(1);
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
                metrics::counter!("chatfleet_dead_letters_total").increment(1);
                let moved = self
                    .ctx
                    .publisher
                    .dead_letter(delivery, &topology.inbound_work(), &reason)
                    .await;
                if let (Ok(()), Some(env)) = (&moved, envelope)
                    && let Err(e) = self
                        .ctx
                        .db
                        .messages()
                        .close_unanswered(env.client_id, env.id, UserMessageState::Failed)
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
    drain_timeout: Duration,
    shutdown: CancellationToken,
) {
    let dispatcher = Arc::new(Dispatcher {
        ctx,
        queues: Mutex::new(HashMap::new()),
        tracker: TaskTracker::new(),
    });
    let queue = broker.topology().inbound_work();
    let mut deliveries = broker.subscribe(&queue, prefetch, "worker", shutdown);
    while let Some(delivery) = deliveries.next().await {
        let envelope =
            serde_json::from_slice::<Envelope>(&delivery.body).map_err(|e| e.to_string());
        dispatcher.dispatch(Job { delivery, envelope });
    }
    drain(&dispatcher, drain_timeout).await;
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
