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
//! - Errors are decided by Graph's `error.code`, not the HTTP status alone: 131047 (the
//!   24-hour window is closed) and 131026 (undeliverable) mark the reply failed without a
//!   retry and announce `delivery.failed.<client_id>`; 130429 / 131056 (throughput limits), 5xx and timeouts are retried with
//!   backoff, then handed back to the queue; anything else (190: bad token…) is
//!   dead-lettered with the reason.
//! - Replies to one recipient go out one after another, in queue order; different
//!   recipients' replies go out concurrently ([`LANES`] lanes, by recipient).

use std::hash::{Hash, Hasher};
use std::time::Duration;

use serde_json::{Value, json};
use shared::db::DeliveryStatus;
use shared::envelope::{Event, EventKind, Reply, ReplyKind};
use shared::ids::{Channel, ConversationId};
use shared::metric;
use shared::mq::Delivery;
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
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Delivery, Decoded)>();
        lanes.push(tx);
        let (state, http, queue) = (state.clone(), http.clone(), queue.clone());
        senders.spawn(async move {
            while let Some((delivery, reply)) = rx.recv().await {
                deliver(&state, &http, &queue, delivery, reply).await;
            }
        });
    }
    // The prefetch bounds the replies held across all lanes.
    while let Some(delivery) = deliveries.next().await {
        let reply: Decoded = Reply::decode_for_channel(&delivery.body);
        if lanes[lane(&reply)].send((delivery, reply)).is_err() {
            break;
        }
    }
    drop(lanes);
    while senders.join_next().await.is_some() {}
    deliveries.close().await;
}

/// A delivery's reply, decoded once, before it is given a lane.
type Decoded = Result<(Reply, ConversationId), String>;

/// The lane of a reply: the same for every reply to one recipient of one tenant (an
/// undecodable one takes lane 0, where it is dead-lettered).
fn lane(reply: &Decoded) -> usize {
    let Ok((reply, _)) = reply else {
        return 0;
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (reply.client_id, reply.external_id.expose()).hash(&mut hasher);
    (hasher.finish() % LANES as u64) as usize
}

/// How one send attempt ended.
enum Outcome {
    Sent(String),
    /// No point retrying; the reply is marked failed.
    Failed(String),
    Transient(String),
    Permanent(String),
}

async fn deliver(
    state: &AppState,
    http: &reqwest::Client,
    queue: &str,
    delivery: Delivery,
    reply: Decoded,
) {
    let (reply, conversation_id) = match reply {
        Ok(decoded) => decoded,
        Err(reason) => return dead_letter(state, queue, &delivery, &reason).await,
    };
    if reply.kind == ReplyKind::Typing {
        // Never waited for, never retried: the reply behind it must not wait on it.
        let _ = delivery.ack().await;
        tokio::spawn(show_typing(state.clone(), http.clone(), reply));
        return;
    }
    let span = tracing::info_span!("deliver", channel = "whatsapp", client_id = %reply.client_id, reply_id = %reply.id);
    async {
        match state.db().tenant(reply.client_id).messages().delivery_status(reply.id).await {
            Ok(Some(status)) => {
                tracing::info!(%status, "already sent; dropped");
                let _ = delivery.ack().await;
                return;
            }
            Ok(None) => {}
            Err(e) => return requeue(&delivery, &e.to_string()).await,
        }
        let Some(phone_number_id) = reply.channel_account.clone() else {
            return dead_letter(
                state,
                queue,
                &delivery,
                "reply has no channel_account (phone_number_id)",
            )
            .await;
        };
        let token = match access_token(state, &reply, &phone_number_id).await {
            Ok(t) => t,
            Err(reason) => return dead_letter(state, queue, &delivery, &reason).await,
        };
        let settings = state.whatsapp();
        let url = messages_url(state, &phone_number_id);
        let mut last_id = None;
        let to = reply.external_id.expose();
        for message in outgoing::messages(to, reply.text.expose(), &reply.choices) {
            // The number's throughput limit, shared across replicas: wait for a slot.
            loop {
                match state
                    .cache()
                    .take_send_token(
                        reply.client_id,
                        &phone_number_id,
                        settings.messages_per_second,
                    )
                    .await
                {
                    Ok(None) => break,
                    Ok(Some(wait)) => {
                        if !pause(state, wait).await {
                            return requeue(&delivery, "shutting down").await;
                        }
                    }
                    Err(e) => return requeue(&delivery, &e.to_string()).await,
                }
            }
            let mut tries = 0;
            let outcome = loop {
                tries += 1;
                let attempt = tokio::select! {
                    _ = state.shutdown().cancelled() => Outcome::Transient("shutting down".into()),
                    sent = send(http, &url, &token, &message) => sent,
                };
                match attempt {
                    Outcome::Transient(reason) if tries < TRIES && !state.shutdown().is_cancelled() => {
                        tracing::warn!(%reason, tries, "WhatsApp send failed; retrying");
                        pause(state, Duration::from_millis(250 << tries)).await;
                    }
                    other => break other,
                }
            };
            match outcome {
                Outcome::Sent(id) => last_id = Some(id),
                Outcome::Failed(reason) => {
                    tracing::warn!(%reason, "WhatsApp refused the message; marked failed");
                    metrics::counter!(metric::DELIVERIES, "channel" => "whatsapp", "result" => "failed").increment(1);
                    if let Err(e) = state.db().tenant(reply.client_id).messages()
                        .record_delivery(reply.id, DeliveryStatus::Failed, None)
                        .await
                    {
                        return requeue(&delivery, &e.to_string()).await;
                    }
                    let mut event = Event::new(
                        EventKind::Delivery,
                        reply.client_id,
                        conversation_id,
                        Channel::Whatsapp,
                    );
                    event.status = Some("failed".into());
                    if let Err(e) = state.publisher().publish_event(&event).await {
                        tracing::warn!(error = %e, "could not announce the failed delivery");
                    }
                    let announced = shared::webhooks::NewEvent::about(
                        shared::webhooks::EventType::DeliveryFailed,
                        reply.id,
                    )
                    .in_conversation(conversation_id, Channel::Whatsapp)
                    .with("message_id", reply.id.to_string())
                    .with("reason", reason.clone());
                    if let Err(e) = state.webhooks().emit(reply.client_id, announced).await {
                        tracing::warn!(error = %e, "could not announce the failed delivery to webhooks");
                    }
                    let _ = delivery.ack().await;
                    return;
                }
                Outcome::Transient(reason) => return requeue(&delivery, &reason).await,
                Outcome::Permanent(reason) => {
                    let _ = state.db().tenant(reply.client_id).messages()
                        .record_delivery(reply.id, DeliveryStatus::Failed, None)
                        .await;
                    return dead_letter(state, queue, &delivery, &reason).await;
                }
            }
        }
        match state.db().tenant(reply.client_id).messages()
            .record_delivery(reply.id,
                DeliveryStatus::Sent,
                last_id.as_deref(),
            )
            .await
        {
            Ok(()) => {
                metrics::counter!(metric::DELIVERIES, "channel" => "whatsapp", "result" => "sent").increment(1);
                let _ = delivery.ack().await;
            }
            Err(e) => requeue(&delivery, &e.to_string()).await,
        }
    }
    .instrument(span)
    .await
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
    let plain = state
        .secrets()
        .open(client_id, Channel::Whatsapp, &sealed)
        .map_err(|e| e.to_string())?;
    let creds: Value = serde_json::from_slice(&plain).map_err(|e| e.to_string())?;
    creds
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| "the WhatsApp account has no access_token".into())
}

async fn send(http: &reqwest::Client, url: &str, token: &str, message: &Value) -> Outcome {
    let response = match http.post(url).bearer_auth(token).json(message).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Transient(format!("Graph API unreachable: {e}")),
    };
    let status = response.status();
    let parsed: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return match parsed["messages"][0]["id"].as_str() {
            Some(id) => Outcome::Sent(id.to_owned()),
            None => Outcome::Transient("Graph API answered without a message id".into()),
        };
    }
    let code = parsed["error"]["code"].as_i64();
    let message = parsed["error"]["message"].as_str().unwrap_or("").to_owned();
    let reason = format!(
        "Graph API {status}, error {}: {message}",
        code.map_or("?".to_owned(), |c| c.to_string())
    );
    match code {
        Some(131_047 | 131_026) => Outcome::Failed(reason),
        Some(130_429 | 131_056) => Outcome::Transient(reason),
        _ if status.is_server_error() => Outcome::Transient(reason),
        _ => Outcome::Permanent(reason),
    }
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
