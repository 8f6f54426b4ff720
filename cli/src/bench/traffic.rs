//! The bench's traffic: the WhatsApp webhooks it sends, and how it sees each message
//! answered (API long-polls or SSE streams read by conversation, replies arriving at the
//! Graph API double), noting the time each bench message was answered and, streaming,
//! when the first delta of its answer arrived.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{PHONE_NUMBER_ID, Timings, graph};

/// The bench messages a text names ("message 12\n\nmessage 14": 12 and 14).
fn bench_messages(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.split("message ").skip(1).filter_map(|rest| {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..digits].parse().ok()
    })
}

/// The bench messages a reply answers: the LLM double's reply ends with "You said: "
/// and the turn's text (the messages it answered, joined).
fn answered_by(reply: &str) -> impl Iterator<Item = u64> + '_ {
    bench_messages(reply.rsplit_once("You said: ").map_or("", |(_, said)| said))
}

/// Long-polls one conversation, noting when each bench message's reply was seen.
pub(super) async fn read_conversation(
    http: reqwest::Client,
    base: String,
    key: String,
    conversation: String,
    timings: Arc<Mutex<Timings>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut cursor = "0".to_owned();
    while !stop.is_cancelled() {
        let r = http
            .get(format!(
                "{base}/api/v1/conversations/{conversation}/messages"
            ))
            .query(&[("after", cursor.as_str()), ("wait", "20")])
            .bearer_auth(&key)
            .send()
            .await;
        let seen = Instant::now();
        let Ok(r) = r else { continue };
        match r.status() {
            reqwest::StatusCode::OK => {}
            // A quiet wait: poll again at once.
            reqwest::StatusCode::NO_CONTENT => continue,
            // 404 while none of its messages was accepted yet.
            _ => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        }
        let Ok(page) = r.json::<Value>().await else {
            continue;
        };
        cursor = page["cursor"].as_str().unwrap_or(&cursor).to_owned();
        for entry in page["messages"].as_array().into_iter().flatten() {
            if entry["role"] == "assistant"
                && let Ok(mut t) = timings.lock()
            {
                for k in answered_by(entry["text"].as_str().unwrap_or_default()) {
                    t.answered.entry(k).or_insert(seen);
                }
            }
        }
    }
}

/// Reads one conversation's SSE stream: a reply's first delta is noted by its reply id;
/// its stored message answers the bench messages it names, whose first delta was that
/// one.
pub(super) async fn stream_conversation(
    http: reqwest::Client,
    base: String,
    key: String,
    conversation: String,
    timings: Arc<Mutex<Timings>>,
    stop: tokio_util::sync::CancellationToken,
) {
    use futures::StreamExt;
    let mut cursor = "0".to_owned();
    let mut first_deltas: std::collections::HashMap<String, Instant> = Default::default();
    while !stop.is_cancelled() {
        let opened = http
            .get(format!("{base}/api/v1/conversations/{conversation}/stream"))
            .query(&[("after", cursor.as_str())])
            .bearer_auth(&key)
            .timeout(Duration::from_secs(3600))
            .send()
            .await;
        let Ok(response) = opened.and_then(reqwest::Response::error_for_status) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            let seen = Instant::now();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            for event in crate::sse::drain_events(&mut buffer) {
                let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                    continue;
                };
                let id = event.id;
                match event.event.as_str() {
                    "delta" => {
                        if let Some(reply) = data["reply_id"].as_str() {
                            first_deltas.entry(reply.to_owned()).or_insert(seen);
                        }
                    }
                    "message" => {
                        if let Some(id) = id {
                            cursor = id;
                        }
                        if data["role"] != "assistant" {
                            continue;
                        }
                        let delta = data["id"].as_str().and_then(|r| first_deltas.remove(r));
                        if let Ok(mut t) = timings.lock() {
                            for k in answered_by(data["text"].as_str().unwrap_or_default()) {
                                t.answered.entry(k).or_insert(seen);
                                if let Some(at) = delta {
                                    t.first_delta.entry(k).or_insert(at);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Notes the answer time of every bench message a reply at the Graph API double names.
pub(super) async fn watch_graph(
    mut replies: tokio::sync::mpsc::UnboundedReceiver<graph::Received>,
    timings: Arc<Mutex<Timings>>,
) {
    while let Some(reply) = replies.recv().await {
        if let Ok(mut t) = timings.lock() {
            for k in answered_by(&reply.text) {
                t.answered.entry(k).or_insert(reply.at);
            }
        }
    }
}

/// A signed-ready WhatsApp webhook carrying bench message `k` from conversation `c`'s
/// number, as Meta sends it.
pub(super) fn webhook(c: usize, k: usize) -> String {
    let from = format!("1555{c:07}");
    json!({ "object": "whatsapp_business_account", "entry": [{ "id": "1", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550000000", "phone_number_id": PHONE_NUMBER_ID },
            "contacts": [{ "profile": { "name": "Bench" }, "wa_id": from }],
            "messages": [{ "from": from, "id": format!("wamid.bench-in-{k}"),
                "timestamp": chrono::Utc::now().timestamp().to_string(),
                "type": "text", "text": { "body": format!("message {k}") } }] } }] }] })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_name_the_messages_they_answer() {
        let said: Vec<u64> = bench_messages("message 12\n\nmessage 140").collect();
        assert_eq!(said, [12, 140]);
        assert_eq!(bench_messages("no numbers here").count(), 0);
        // A reply names what it answered after "You said: ", not before.
        let reply = "[m] message 3 was earlier | You said: message 12\n\nmessage 14";
        assert_eq!(answered_by(reply).collect::<Vec<_>>(), [12, 14]);
    }
}
