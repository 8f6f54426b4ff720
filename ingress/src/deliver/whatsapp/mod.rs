//! The WhatsApp deliverer: sends each reply on `<prefix>.outbound.whatsapp` through the
//! Graph API (`POST {graph_base_url}/{api_version}/{phone_number_id}/messages`) with the
//! tenant's access token, decrypted only in memory for the call.
//!
//! - A reply that was sent before (its delivery status is set) is never sent again.
//! - Replies over 4096 characters go out as several messages, split at paragraph, then
//!   sentence, then word boundaries, in order; choices go as buttons or a list
//!   ([`outgoing`]).
//! - Each number sends at most `whatsapp.messages_per_second` (a Redis token bucket
//!   shared by every deliverer replica).
//! - WhatsApp's 24-hour customer-service window: a reply (or an agent's message) that
//!   would go out more than 24 hours after the user's last message, or that Graph refuses
//!   with 131047, is held (`awaiting_window`) until the user writes again, when the
//!   worker queues it again; after `whatsapp.hold_max_days` it expires
//!   (`delivery.expired`). The first hold of a closed window sends the tenant's
//!   re-engagement template. Template messages go out whatever the window.
//! - Errors are decided by Graph's `error.code`, not the HTTP status alone: 131026
//!   (undeliverable) marks the reply failed without a retry and announces
//!   `delivery.failed.<client_id>`; 130429 / 131056 (throughput limits), 5xx and
//!   timeouts are retried with backoff, then handed back to the queue; anything else
//!   (190: bad token…) is dead-lettered with the reason.
//! - Replies to one recipient go out one after another, in queue order; different
//!   recipients' replies go out concurrently ([`LANES`] lanes, by recipient).

use std::hash::{Hash, Hasher};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use shared::db::{DeliveryStatus, UserWindow};
use shared::envelope::{Event, EventKind, Reply, ReplyKind};
use shared::ids::{Channel, ConversationId};
use shared::metric;
use shared::mq::{Delivery, ReplyRoute};
use shared::sealed::Heading;
use shared::webhooks::{EventType, NewEvent};
use tracing::Instrument;

use crate::AppState;

mod outgoing;

/// Unacked replies held at once.
const PREFETCH: u16 = 64;
/// Recipients served concurrently.
const LANES: usize = 16;
/// In-process tries of a transient failure before the message goes back to the queue.
const TRIES: u32 = 4;

pub(crate) async fn run(state: AppState) {
    let queue = state.broker().topology().outbound_queue(Channel::Whatsapp);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap_or_default();
    let mut deliveries = state.broker().subscribe(
        &queue,
        PREFETCH,
        "deliver-whatsapp",
        state.shutdown().clone(),
    );
    let mut lanes = Vec::with_capacity(LANES);
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..LANES {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Delivery>();
        lanes.push(tx);
        let (state, http, queue) = (state.clone(), http.clone(), queue.clone());
        senders.spawn(async move {
            while let Some(delivery) = rx.recv().await {
                deliver(&state, &http, &queue, delivery).await;
            }
        });
    }
    // The prefetch bounds the replies held across all lanes.
    while let Some(delivery) = deliveries.next().await {
        if lanes[lane(&delivery.body)].send(delivery).is_err() {
            break;
        }
    }
    drop(lanes);
    while senders.join_next().await.is_some() {}
    deliveries.close().await;
}

/// The lane of a reply: the same for every reply of one conversation (one recipient of
/// one tenant), read from the body's readable heading (one without takes lane 0, where
/// it is dead-lettered).
fn lane(body: &[u8]) -> usize {
    let Some(heading) = Heading::of(body) else {
        return 0;
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (heading.client_id, heading.conversation_id).hash(&mut hasher);
    (hasher.finish() % LANES as u64) as usize
}

/// Why a message was not sent.
enum Refusal {
    /// No point retrying; the reply is marked failed.
    Failed(String),
    /// 131047: the 24-hour window is closed; the reply is held.
    WindowClosed(String),
    Transient(String),
    Permanent(String),
}

impl Refusal {
    fn reason(&self) -> &str {
        match self {
            Self::Failed(r) | Self::WindowClosed(r) | Self::Transient(r) | Self::Permanent(r) => r,
        }
    }
}

async fn deliver(state: &AppState, http: &reqwest::Client, queue: &str, delivery: Delivery) {
    let Some((reply, conversation_id)) = super::open_reply(state, queue, &delivery).await else {
        return;
    };
    if reply.kind == ReplyKind::Typing {
        // Never waited for, never retried: the reply behind it must not wait on it.
        let _ = delivery.ack().await;
        tokio::spawn(show_typing(state.clone(), http.clone(), reply));
        return;
    }
    let span = tracing::info_span!("deliver", channel = "whatsapp", client_id = %reply.client_id, reply_id = %reply.id);
    let sending = Sending {
        state,
        http,
        queue,
        delivery: &delivery,
        reply: &reply,
        conversation_id,
    };
    sending.run().instrument(span).await;
}

/// One reply on its way to the Graph API.
struct Sending<'a> {
    state: &'a AppState,
    http: &'a reqwest::Client,
    queue: &'a str,
    delivery: &'a Delivery,
    reply: &'a Reply,
    conversation_id: ConversationId,
}

impl Sending<'_> {
    async fn run(&self) {
        let (state, reply, delivery) = (self.state, self.reply, self.delivery);
        let tenant = state.db().tenant(reply.client_id);
        let held = match tenant.messages().delivery_status(reply.id).await {
            Ok(Some(DeliveryStatus::AwaitingWindow)) => true,
            Ok(Some(status)) => {
                tracing::info!(%status, "already sent; dropped");
                let _ = delivery.ack().await;
                return;
            }
            Ok(None) => false,
            Err(e) => return requeue(delivery, &e.to_string()).await,
        };
        let window = match tenant.conversations().window(self.conversation_id).await {
            Ok(window) => window,
            Err(e) => return requeue(delivery, &e.to_string()).await,
        };
        // An agent's message carries no number: the conversation's is the one the user
        // writes to.
        let Some(phone_number_id) = reply
            .channel_account
            .clone()
            .or_else(|| window.as_ref().and_then(|w| w.channel_account.clone()))
        else {
            return self
                .dead_letter("neither the reply nor its conversation has a phone_number_id")
                .await;
        };
        let token = match access_token(state, reply, &phone_number_id).await {
            Ok(t) => t,
            Err(reason) => return self.dead_letter(&reason).await,
        };
        let to = reply.external_id.expose();
        let graph = Graph {
            url: messages_url(state, &phone_number_id),
            token,
            phone_number_id,
        };
        let messages = match &reply.template {
            Some(template) => vec![outgoing::template(to, template)],
            None if !window_open(window.as_ref()) => return self.hold(&graph, held).await,
            None => outgoing::messages(to, reply.text.expose(), &reply.choices),
        };
        let mut last_id = None;
        for message in messages {
            match self.send_one(&graph, &message).await {
                Ok(id) => last_id = Some(id),
                Err(Refusal::WindowClosed(reason)) if reply.template.is_none() => {
                    tracing::info!(%reason, "WhatsApp's window is closed; holding the reply");
                    return self.hold(&graph, held).await;
                }
                Err(Refusal::Failed(reason) | Refusal::WindowClosed(reason)) => {
                    tracing::warn!(%reason, "WhatsApp refused the message; marked failed");
                    return self
                        .settle_undelivered(
                            DeliveryStatus::Failed,
                            EventType::DeliveryFailed,
                            &reason,
                        )
                        .await;
                }
                Err(Refusal::Transient(reason)) => return requeue(delivery, &reason).await,
                Err(Refusal::Permanent(reason)) => {
                    let _ = tenant
                        .messages()
                        .record_delivery(reply.id, DeliveryStatus::Failed, None)
                        .await;
                    return self.dead_letter(&reason).await;
                }
            }
        }
        match tenant
            .messages()
            .record_delivery(reply.id, DeliveryStatus::Sent, last_id.as_deref())
            .await
        {
            Ok(()) => {
                metrics::counter!(metric::DELIVERIES, "channel" => "whatsapp", "result" => "sent")
                    .increment(1);
                let _ = delivery.ack().await;
            }
            Err(e) => requeue(delivery, &e.to_string()).await,
        }
    }

    /// Sends one payload, waiting for the number's throughput slot and retrying a
    /// transient failure a few times; the message id Graph gave it.
    async fn send_one(&self, graph: &Graph, message: &Value) -> Result<String, Refusal> {
        let (state, reply) = (self.state, self.reply);
        // The number's throughput limit, shared across replicas: wait for a slot.
        loop {
            match state
                .cache()
                .take_send_token(
                    reply.client_id,
                    &graph.phone_number_id,
                    state.whatsapp().messages_per_second,
                )
                .await
            {
                Ok(None) => break,
                Ok(Some(wait)) => {
                    if !pause(state, wait).await {
                        return Err(Refusal::Transient("shutting down".into()));
                    }
                }
                Err(e) => return Err(Refusal::Transient(e.to_string())),
            }
        }
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt = tokio::select! {
                _ = state.shutdown().cancelled() => Err(Refusal::Transient("shutting down".into())),
                sent = send(self.http, &graph.url, &graph.token, message) => sent,
            };
            match attempt {
                Err(Refusal::Transient(reason))
                    if tries < TRIES && !state.shutdown().is_cancelled() =>
                {
                    tracing::warn!(%reason, tries, "WhatsApp send failed; retrying");
                    pause(state, Duration::from_millis(250 << tries)).await;
                }
                other => return other,
            }
        }
    }

    /// Holds a reply WhatsApp's closed 24-hour window keeps back: `awaiting_window`,
    /// with a copy on the held queue. When the user writes again the worker queues it
    /// again (in order, before the new answer); if the copy comes back from the held
    /// queue first (`whatsapp.hold_max_days`), it expires. The first hold of a closed
    /// window sends the tenant's re-engagement template, if it has one.
    async fn hold(&self, graph: &Graph, held: bool) {
        let (state, reply, delivery) = (self.state, self.reply, self.delivery);
        if held {
            let waited = (Utc::now() - reply.created_at).to_std().unwrap_or_default();
            if waited >= state.whatsapp().hold_max {
                return self
                    .settle_undelivered(
                        DeliveryStatus::Expired,
                        EventType::DeliveryExpired,
                        "held longer than whatsapp.hold_max_days for the 24-hour window",
                    )
                    .await;
            }
            let _ = delivery.ack().await; // its copy waits on the held queue
            return;
        }
        // The copy first: a hold recorded without one would never expire.
        if let Err(e) = state
            .publisher()
            .publish_reply(reply, ReplyRoute::Held, None)
            .await
        {
            return requeue(delivery, &e.to_string()).await;
        }
        if let Err(e) = state
            .db()
            .tenant(reply.client_id)
            .messages()
            .record_delivery(reply.id, DeliveryStatus::AwaitingWindow, None)
            .await
        {
            return requeue(delivery, &e.to_string()).await;
        }
        metrics::counter!(metric::DELIVERIES, "channel" => "whatsapp", "result" => "held")
            .increment(1);
        self.reengage(graph).await;
        let _ = delivery.ack().await;
    }

    /// Sends the tenant's re-engagement template, once per closed window (a failure is
    /// logged: the held reply still waits for the user).
    async fn reengage(&self, graph: &Graph) {
        let (state, reply) = (self.state, self.reply);
        let template = match state.configs().get(reply.client_id).await {
            Ok(Some(tenant)) => tenant.config.whatsapp_reengagement_template.clone(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "no re-engagement template: the configuration is unreadable");
                None
            }
        };
        let Some(template) = template else { return };
        match state
            .db()
            .tenant(reply.client_id)
            .conversations()
            .claim_reengagement(self.conversation_id)
            .await
        {
            Ok(true) => {}
            Ok(false) => return, // sent for this window already
            Err(e) => {
                tracing::warn!(error = %e, "re-engagement template not sent");
                return;
            }
        }
        let message = outgoing::template(reply.external_id.expose(), &template);
        let result = match self.send_one(graph, &message).await {
            Ok(_) => "reengaged",
            Err(refusal) => {
                tracing::warn!(reason = refusal.reason(), "re-engagement template refused");
                "reengage_failed"
            }
        };
        metrics::counter!(metric::DELIVERIES, "channel" => "whatsapp", "result" => result)
            .increment(1);
    }

    /// Marks the reply failed or expired and announces it (events and webhooks).
    async fn settle_undelivered(&self, status: DeliveryStatus, kind: EventType, reason: &str) {
        let (state, reply, delivery) = (self.state, self.reply, self.delivery);
        metrics::counter!(metric::DELIVERIES, "channel" => "whatsapp", "result" => status.as_str())
            .increment(1);
        if let Err(e) = state
            .db()
            .tenant(reply.client_id)
            .messages()
            .record_delivery(reply.id, status, None)
            .await
        {
            return requeue(delivery, &e.to_string()).await;
        }
        let mut event = Event::new(
            EventKind::Delivery,
            reply.client_id,
            self.conversation_id,
            Channel::Whatsapp,
        );
        event.status = Some(status.as_str().into());
        if let Err(e) = state.publisher().publish_event(&event).await {
            tracing::warn!(error = %e, "could not announce the undelivered reply");
        }
        let announced = NewEvent::about(kind, reply.id)
            .in_conversation(self.conversation_id, Channel::Whatsapp)
            .with("message_id", reply.id.to_string())
            .with("reason", reason);
        if let Err(e) = state.webhooks().emit(reply.client_id, announced).await {
            tracing::warn!(error = %e, "could not announce the undelivered reply to webhooks");
        }
        let _ = delivery.ack().await;
    }

    async fn dead_letter(&self, reason: &str) {
        dead_letter(self.state, self.queue, self.delivery, reason).await;
    }
}

/// Where and as whom a reply's messages are sent.
struct Graph {
    url: String,
    token: String,
    phone_number_id: String,
}

/// Whether WhatsApp's 24-hour customer-service window is open: the user wrote less than
/// 24 hours ago (or we do not know when: Graph's 131047 says it if not).
fn window_open(window: Option<&UserWindow>) -> bool {
    window
        .and_then(|w| w.user_last_at)
        .is_none_or(|at| Utc::now() - at < chrono::Duration::hours(24))
}

/// The Graph API's messages endpoint of a number.
fn messages_url(state: &AppState, phone_number_id: &str) -> String {
    let settings = state.whatsapp();
    format!(
        "{}/{}/{}/messages",
        settings.graph_base_url.trim_end_matches('/'),
        settings.api_version,
        phone_number_id
    )
}

/// Marks the user's message read and shows WhatsApp's typing indicator (Cloud API:
/// `status: read` with `typing_indicator`), once; a failure is logged and counted.
async fn show_typing(state: AppState, http: reqwest::Client, signal: Reply) {
    let outcome = async {
        let phone_number_id = signal
            .channel_account
            .clone()
            .ok_or("no channel_account (phone_number_id)")?;
        let message_id = signal
            .channel_message_id
            .clone()
            .ok_or("no message id to mark read")?;
        let token = access_token(&state, &signal, &phone_number_id).await?;
        let url = messages_url(&state, &phone_number_id);
        let body = json!({
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
            "typing_indicator": { "type": "text" },
        });
        let response = http
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("Graph API unreachable: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("Graph API answered {}", response.status()))
        }
    }
    .await;
    let result = match outcome {
        Ok(()) => "typing",
        Err(reason) => {
            tracing::info!(client_id = %signal.client_id, %reason, "typing indicator not shown");
            "typing_failed"
        }
    };
    metrics::counter!(metric::DELIVERIES, "channel" => "whatsapp", "result" => result).increment(1);
}

/// The tenant's access token for the number, checked to belong to the reply's tenant.
async fn access_token(
    state: &AppState,
    reply: &Reply,
    phone_number_id: &str,
) -> Result<String, String> {
    let owner = state
        .owners()
        .owner(Channel::Whatsapp, phone_number_id)
        .await
        .map_err(|e| e.to_string())?;
    let Some((client_id, account_id)) = owner.filter(|(c, _)| *c == reply.client_id) else {
        return Err("the phone number is not the reply's tenant's".into());
    };
    let sealed = state
        .db()
        .tenant(client_id)
        .channel_accounts()
        .sealed_credentials(account_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the WhatsApp account has no credentials")?;
    state.secrets().whatsapp_access_token(client_id, &sealed)
}

/// Posts one message; the id Graph gave it.
async fn send(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    message: &Value,
) -> Result<String, Refusal> {
    let response = match http.post(url).bearer_auth(token).json(message).send().await {
        Ok(r) => r,
        Err(e) => return Err(Refusal::Transient(format!("Graph API unreachable: {e}"))),
    };
    let status = response.status();
    let parsed: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return match parsed["messages"][0]["id"].as_str() {
            Some(id) => Ok(id.to_owned()),
            None => Err(Refusal::Transient(
                "Graph API answered without a message id".into(),
            )),
        };
    }
    let code = parsed["error"]["code"].as_i64();
    let message = parsed["error"]["message"].as_str().unwrap_or("").to_owned();
    let reason = format!(
        "Graph API {status}, error {}: {message}",
        code.map_or("?".to_owned(), |c| c.to_string())
    );
    Err(match code {
        Some(131_047) => Refusal::WindowClosed(reason),
        Some(131_026) => Refusal::Failed(reason),
        Some(130_429 | 131_056) => Refusal::Transient(reason),
        _ if status.is_server_error() => Refusal::Transient(reason),
        _ => Refusal::Permanent(reason),
    })
}

/// Sleeps `wait`, or less when shutdown comes first; returns whether it slept it all.
async fn pause(state: &AppState, wait: Duration) -> bool {
    tokio::select! {
        _ = state.shutdown().cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

async fn requeue(delivery: &Delivery, reason: &str) {
    tracing::warn!(%reason, "WhatsApp delivery failed for now; back to the queue");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = delivery.requeue().await;
}

async fn dead_letter(state: &AppState, queue: &str, delivery: &Delivery, reason: &str) {
    tracing::error!(%reason, "WhatsApp delivery dead-lettered");
    if state
        .publisher()
        .dead_letter(delivery, queue, reason)
        .await
        .is_ok()
    {
        let _ = delivery.ack().await;
    }
}
