//! The webhook deliverer: makes the attempts queued on `<prefix>.webhooks` (see
//! `shared::webhooks`).
//!
//! For each job: the delivery's row says whether it is still owed and which attempt is
//! next (a duplicated or stale job finds it settled or claimed, and does nothing). An
//! event of a conversation waits (on the hold queue) while an earlier one is still owed
//! to the same endpoint, up to `webhooks.order_wait_s`, then goes marked `out_of_order`.
//! A job whose endpoint or tenant is at its concurrency limit waits on the hold queue
//! too, so a slow endpoint holds at most its own permits, never the consumer. A failed
//! attempt is queued again after the schedule's next delay; after the last it is
//! dead-lettered with the reason. 410 Gone disables the endpoint at once; failing for
//! `webhooks.disable_after` disables it too, and the tenant's other endpoints hear of it
//! (`webhook.disabled`).

mod limits;
mod send;

use std::sync::Arc;

use serde_json::Value;
use shared::db::{DeliveryState, NewAttempt, OwedDelivery, Webhook};
use shared::metric;
use shared::mq::{Delivery, WEBHOOK_HOLD};
use shared::webhooks::{EventType, Job, NewEvent, signature};

use crate::AppState;
use limits::Limits;

/// Jobs held at once (attempts in flight are bounded by the concurrency limits).
const PREFETCH: u16 = 256;

pub(crate) async fn run(state: AppState) {
    let settings = state.webhook_settings().clone();
    let allowed = Arc::new(settings.allowed_networks());
    let http = match send::client(settings.timeout, allowed.clone()) {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; no webhooks are delivered");
            return;
        }
    };
    let queue = state.broker().topology().webhook_work();
    let mut jobs = state.broker().subscribe(
        &queue,
        PREFETCH,
        "deliver-webhooks",
        state.shutdown().clone(),
    );
    let limits = Limits::new(
        settings.concurrency_per_endpoint,
        settings.concurrency_per_tenant,
    );
    let mut attempts = tokio::task::JoinSet::new();
    while let Some(delivery) = jobs.next().await {
        while attempts.try_join_next().is_some() {}
        let job: Job = match serde_json::from_slice::<Job>(&delivery.body) {
            // Handed back unacked: whoever held it may have died holding its claim.
            Ok(job) => Job {
                retake: job.retake || delivery.redelivered,
                ..job
            },
            Err(e) => {
                park(&state, &delivery, &format!("undecodable webhook job: {e}")).await;
                continue;
            }
        };
        let Some(permits) = limits.take(job.client_id, job.webhook_id) else {
            hold(&state, &delivery, &job).await;
            continue;
        };
        let (state, http) = (state.clone(), http.clone());
        attempts.spawn(async move {
            let _permits = permits;
            let outcome = Attempt {
                state: &state,
                http: &http,
                job,
            }
            .run()
            .await;
            match outcome {
                Ok(()) => {
                    let _ = delivery.ack().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook job failed; handing it back");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    let _ = delivery.requeue().await;
                }
            }
        });
    }
    while attempts.join_next().await.is_some() {}
    jobs.close().await;
}

/// Puts a job that may not go yet on the hold queue (it comes back in [`WEBHOOK_HOLD`]).
async fn hold(state: &AppState, delivery: &Delivery, job: &Job) {
    match state
        .publisher()
        .publish_webhook_job(job, Some(WEBHOOK_HOLD))
        .await
    {
        Ok(()) => {
            let _ = delivery.ack().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not hold a webhook job; handing it back");
            let _ = delivery.requeue().await;
        }
    }
}

/// Dead-letters a job that is not one.
async fn park(state: &AppState, delivery: &Delivery, reason: &str) {
    let queue = state.broker().topology().webhook_work();
    match state
        .publisher()
        .dead_letter(delivery, &queue, reason)
        .await
    {
        Ok(()) => {
            let _ = delivery.ack().await;
        }
        Err(_) => {
            let _ = delivery.requeue().await;
        }
    }
}

/// One job's attempt.
struct Attempt<'a> {
    state: &'a AppState,
    http: &'a reqwest::Client,
    job: Job,
}

impl Attempt<'_> {
    async fn run(&self) -> shared::Result<()> {
        let (state, job) = (self.state, self.job);
        let tenant = state.db().tenant(job.client_id);
        let log = tenant.webhook_log();
        let Some(owed) = log.delivery(job.webhook_id, job.event_id).await? else {
            return Ok(()); // the endpoint was removed
        };
        // A claimed attempt is made again only when its job came back unacked: the one
        // who claimed it may have died before sending, or before queueing the next, and
        // nothing else would. Otherwise a claimed attempt is a duplicated job's.
        let retake = job.retake && owed.attempts == job.attempt;
        if owed.state != DeliveryState::Pending || (owed.attempts >= job.attempt && !retake) {
            return Ok(()); // settled, or this attempt was made (a duplicated job)
        }
        let Some(webhook) = tenant.webhooks().get(job.webhook_id).await? else {
            return Ok(());
        };
        if !webhook.enabled {
            return log
                .settle(job.webhook_id, job.event_id, DeliveryState::Dead)
                .await;
        }
        // An attempt that goes while an earlier event of its conversation is still owed
        // to the endpoint says so, whichever attempt it is (a retry of an event that went
        // ahead is still ahead); only the first waits, up to `order_wait`, for them.
        let out_of_order = match owed.conversation_id {
            Some(conversation) => {
                log.earlier_owed(job.webhook_id, conversation, owed.seq)
                    .await?
            }
            None => false,
        };
        if out_of_order && job.attempt == 1 && !retake {
            let waited = (chrono::Utc::now() - owed.created_at)
                .to_std()
                .unwrap_or_default();
            if waited < state.webhook_settings().order_wait {
                return state
                    .publisher()
                    .publish_webhook_job(&job, Some(WEBHOOK_HOLD))
                    .await;
            }
        }
        if !retake && !log.claim(job.webhook_id, job.event_id, job.attempt).await? {
            return Ok(());
        }
        let answer = self.send(&webhook, &owed, out_of_order).await?;
        log.record_attempt(&NewAttempt {
            webhook_id: job.webhook_id,
            event_id: job.event_id,
            event_type: &owed.event_type,
            attempt: job.attempt,
            response_status: answer.status,
            duration_ms: u32::try_from(answer.elapsed.as_millis()).unwrap_or(u32::MAX),
            error: answer.error.as_deref(),
        })
        .await?;
        metrics::histogram!(metric::WEBHOOK_LATENCY_SECONDS).record(answer.elapsed.as_secs_f64());
        if answer.delivered() {
            metrics::counter!(metric::WEBHOOK_DELIVERIES, "outcome" => "delivered").increment(1);
            log.settle(job.webhook_id, job.event_id, DeliveryState::Delivered)
                .await?;
            return tenant.webhooks().answered(job.webhook_id).await;
        }
        let error = answer.error.unwrap_or_default();
        tracing::info!(webhook_id = job.webhook_id, attempt = job.attempt, %error, "webhook attempt failed");
        if answer.status == Some(410) {
            metrics::counter!(metric::WEBHOOK_DELIVERIES, "outcome" => "gone").increment(1);
            return self
                .disable(&webhook, "the endpoint answered 410 Gone")
                .await;
        }
        metrics::counter!(metric::WEBHOOK_DELIVERIES, "outcome" => "failed").increment(1);
        let settings = state.webhook_settings();
        if let Some(since) = tenant.webhooks().failed(job.webhook_id).await?
            && (chrono::Utc::now() - since).to_std().unwrap_or_default() >= settings.disable_after
        {
            return self
                .disable(
                    &webhook,
                    &format!(
                        "every attempt failed for {} s (webhooks.disable_after); last: {error}",
                        settings.disable_after.as_secs()
                    ),
                )
                .await;
        }
        match settings.retry_schedule.get(job.attempt as usize) {
            Some(wait) => {
                let next = Job {
                    attempt: job.attempt + 1,
                    retake: false,
                    ..job
                };
                state
                    .publisher()
                    .publish_webhook_job(&next, Some(*wait))
                    .await
            }
            None => {
                metrics::counter!(metric::WEBHOOK_DELIVERIES, "outcome" => "dead").increment(1);
                let reason = format!(
                    "webhook {} gave up on event {} after {} attempts; last: {error}",
                    job.webhook_id, job.event_id, job.attempt
                );
                state
                    .publisher()
                    .dead_letter_raw(
                        &format!("webhook.{}", job.client_id),
                        &job.to_json(),
                        &reason,
                    )
                    .await?;
                log.settle(job.webhook_id, job.event_id, DeliveryState::Dead)
                    .await
            }
        }
    }

    /// Signs and sends the event as this endpoint gets it.
    async fn send(
        &self,
        webhook: &Webhook,
        owed: &OwedDelivery,
        out_of_order: bool,
    ) -> shared::Result<send::Answer> {
        let (state, job) = (self.state, self.job);
        let sealed = state
            .db()
            .tenant(job.client_id)
            .webhooks()
            .secrets(job.webhook_id)
            .await?
            .ok_or_else(|| shared::Error::NotFound(format!("webhook {}", job.webhook_id)))?;
        let mut keys = Vec::with_capacity(2);
        for stored in std::iter::once(&sealed.current).chain(sealed.previous.as_ref()) {
            let secret =
                state
                    .secrets()
                    .open_webhook_secret(job.client_id, job.webhook_id, stored)?;
            let key = signature::key_from_utf8(&secret).ok_or_else(|| {
                shared::Error::Internal(format!(
                    "webhook {} has a malformed secret",
                    job.webhook_id
                ))
            })?;
            keys.push(key);
        }
        let settings = state.webhook_settings();
        let id = job.event_id.to_string();
        Ok(send::post(
            self.http,
            send::Request {
                url: &webhook.url,
                id: &id,
                body: render(owed, webhook.include_text, out_of_order),
                keys: &keys,
            },
            settings.allow_http,
            &settings.allowed_networks(),
            settings.timeout,
        )
        .await)
    }

    /// Disables the endpoint, gives up what it is still owed and tells the tenant's
    /// other endpoints.
    async fn disable(&self, webhook: &Webhook, reason: &str) -> shared::Result<()> {
        let (state, job) = (self.state, self.job);
        let tenant = state.db().tenant(job.client_id);
        tenant
            .webhook_log()
            .settle(job.webhook_id, job.event_id, DeliveryState::Dead)
            .await?;
        if !tenant.webhooks().disable(job.webhook_id, reason).await? {
            return Ok(()); // disabled meanwhile, by another attempt or an operator
        }
        tracing::warn!(webhook_id = job.webhook_id, client_id = %job.client_id, reason, "webhook endpoint disabled");
        tenant.webhook_log().abandon(job.webhook_id).await?;
        state.configs().refresh(job.client_id).await?;
        let event = NewEvent::once(EventType::WebhookDisabled)
            .with("webhook_id", webhook.id)
            .with("url", webhook.url.clone())
            .with("reason", reason);
        state
            .webhooks()
            .emit_except(job.client_id, event, Some(job.webhook_id))
            .await
    }
}

/// The event as this endpoint gets it: its conversation's `seq` added, the text left out
/// when the endpoint does not want texts, `out_of_order` when it did not wait.
fn render(owed: &OwedDelivery, include_text: bool, out_of_order: bool) -> Vec<u8> {
    let Ok(mut event) = serde_json::from_str::<Value>(&owed.body) else {
        return owed.body.clone().into_bytes();
    };
    if let Some(data) = event.get_mut("data").and_then(Value::as_object_mut) {
        if owed.conversation_id.is_some() {
            data.insert("seq".into(), owed.seq.into());
        }
        if !include_text {
            data.remove("text");
        }
        if out_of_order {
            data.insert("out_of_order".into(), true.into());
        }
    }
    serde_json::to_vec(&event).unwrap_or_default()
}
