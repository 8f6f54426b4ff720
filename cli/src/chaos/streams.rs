//! Clients reading conversations over SSE through the whole chaos run: each holds a
//! stream open on one ingress (alternating), and when it is cut (a restart, a drop)
//! reconnects with `Last-Event-ID`, as EventSource does. At the end each must have
//! received every message of its conversation's mailbox, in order, and no reply twice.
//! A user message may come twice: one whose acceptance failed after it was recorded (the
//! broker did not confirm it; RabbitMQ restarts) is withdrawn, and its client's retry
//! records it again at a later position, under the same id — clients keep the later.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use shared::db::Db;
use shared::ids::{Channel, ClientId};
use tokio_util::sync::CancellationToken;

use super::TENANTS;

/// Conversations read over SSE (the first ones driven).
const STREAMED: usize = 8;

/// The messages (id, role) each streamed conversation's reader received so far, in order.
pub(super) type Received = Arc<Mutex<BTreeMap<usize, Vec<(String, String)>>>>;

/// Starts a reader on each of the first conversations; they read until `stop`, noting
/// what they receive as it comes.
pub(super) fn start(
    http: reqwest::Client,
    ingress: Vec<String>,
    keys: [String; TENANTS],
    conversations: usize,
    stop: CancellationToken,
) -> Received {
    let received = Received::default();
    for c in 0..conversations.min(STREAMED) {
        let base = ingress[c % ingress.len()].clone();
        let (http, key, stop) = (http.clone(), keys[c % TENANTS].clone(), stop.clone());
        let ids = received.clone();
        tokio::spawn(async move { read(http, base, key, c, stop, ids).await });
    }
    received
}

/// Reads conversation `c` until `stop`, reconnecting from the last event id.
async fn read(
    http: reqwest::Client,
    base: String,
    key: String,
    c: usize,
    stop: CancellationToken,
    received: Received,
) {
    let mut last_event_id = String::new();
    while !stop.is_cancelled() {
        let mut request = http
            .get(format!("{base}/api/v1/conversations/c{c}/stream"))
            .bearer_auth(&key)
            .timeout(Duration::from_secs(3600));
        if !last_event_id.is_empty() {
            request = request.header("last-event-id", &last_event_id);
        }
        let response = tokio::select! {
            r = request.send() => r,
            _ = stop.cancelled() => return,
        };
        // 404 until the conversation's first message is accepted; errors while the
        // fleet is being broken.
        let Ok(response) = response.and_then(reqwest::Response::error_for_status) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        loop {
            let chunk = tokio::select! {
                chunk = body.next() => chunk,
                _ = stop.cancelled() => return,
            };
            let Some(Ok(chunk)) = chunk else { break };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            for event in crate::sse::drain_events(&mut buffer) {
                if event.event != "message" {
                    continue;
                }
                if let Ok(m) = serde_json::from_str::<serde_json::Value>(&event.data)
                    && let Ok(mut all) = received.lock()
                {
                    let id = m["id"].as_str().unwrap_or_default().to_owned();
                    let role = m["role"].as_str().unwrap_or_default().to_owned();
                    all.entry(c).or_default().push((id, role));
                }
                if let Some(id) = event.id {
                    last_event_id = id;
                }
            }
        }
    }
}

/// What the stream readers got against the mailboxes: conversations, messages, user
/// messages seen again after a withdrawal, replies seen twice, missing, out of order.
#[derive(Debug, Default)]
pub(super) struct StreamCheck {
    pub conversations: usize,
    pub messages: usize,
    pub resent: usize,
    pub duplicates: usize,
    pub missing: usize,
    pub out_of_order: usize,
}

impl StreamCheck {
    pub(super) fn violations(&self) -> usize {
        self.duplicates + self.missing + self.out_of_order
    }
}

/// Compares each reader's messages with its conversation's mailbox as a long-poll from
/// the start would read it now.
pub(super) async fn check(
    db: &Db,
    tenants: &[ClientId],
    received: &Received,
) -> anyhow::Result<StreamCheck> {
    let received = received.lock().map(|r| r.clone()).unwrap_or_default();
    let mut out = StreamCheck::default();
    for (c, got) in &received {
        let client_id = tenants[c % tenants.len()];
        let Some(conversation) = db
            .tenant(client_id)
            .conversations()
            .find(Channel::Api, &format!("c{c}"))
            .await?
        else {
            continue;
        };
        let mailbox: Vec<String> = db
            .tenant(client_id)
            .messages()
            .mailbox_after(conversation, 0, 100_000)
            .await?
            .into_iter()
            .map(|m| m.id.to_string())
            .collect();
        out.conversations += 1;
        out.messages += got.len();
        let mut seen = HashSet::new();
        for (id, role) in got {
            if !seen.insert(id) {
                if role == "user" {
                    out.resent += 1;
                } else {
                    out.duplicates += 1;
                }
            }
        }
        out.missing += mailbox.iter().filter(|id| !seen.contains(id)).count();
        // Each message where the client keeps it: its last arrival.
        let kept: Vec<&String> = got
            .iter()
            .enumerate()
            .filter(|(i, (id, _))| !got[i + 1..].iter().any(|(later, _)| later == id))
            .map(|(_, (id, _))| id)
            .filter(|id| mailbox.contains(id))
            .collect();
        let expected: Vec<&String> = mailbox.iter().filter(|id| seen.contains(id)).collect();
        if kept != expected {
            out.out_of_order += 1;
        }
    }
    Ok(out)
}
