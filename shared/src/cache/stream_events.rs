//! A turn's live events for streaming clients: `typing` when a turn starts, the answer's
//! text as `delta`s while the model writes it, `discard` when the turn ends without
//! storing what it streamed. Workers publish them on one Redis pub/sub channel (beside
//! the mailbox wake-ups), each tagged with its conversation's [`MailboxKey`] (which names
//! the tenant); every ingress replica hears them through its one subscription and hands
//! them to the streams open on that key in this process.
//!
//! They are best-effort and never stored: a replica that was not subscribed misses them,
//! and nothing is lost — the stored reply, read from the database, is the only truth a
//! stream delivers as `message`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::Cache;
use super::broadcast::Listener;
use super::mailbox::MailboxKey;
use crate::error::Result;

/// Events a stream may hold before its reader falls behind (it then skips some deltas
/// and still gets every stored message).
const BACKLOG: usize = 256;

/// One live event of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum StreamEvent {
    /// A turn started answering the conversation.
    Typing,
    /// Text appended to the reply `reply_id` since its previous delta (`seq` from 1).
    Delta {
        reply_id: Uuid,
        seq: u32,
        text: String,
    },
    /// The turn ended without storing the reply its deltas were part of.
    Discard { reply_id: Uuid },
}

/// The process's side of the live events: publishing (workers) and hearing (ingress).
#[derive(Debug)]
pub struct StreamEvents {
    cache: Cache,
    channel: String,
    streams: Mutex<HashMap<MailboxKey, Weak<broadcast::Sender<StreamEvent>>>>,
}

/// The live events of one conversation, for one stream.
#[derive(Debug)]
pub struct StreamEventsOf {
    receiver: broadcast::Receiver<StreamEvent>,
    /// Keeps the key's sender alive while this stream is open.
    _sender: Arc<broadcast::Sender<StreamEvent>>,
}

impl StreamEventsOf {
    /// The next event; `None` after a gap (the stream fell behind: events were
    /// dropped, which only costs deltas).
    pub async fn next(&mut self) -> Option<StreamEvent> {
        self.receiver.recv().await.ok()
    }
}

impl StreamEvents {
    pub fn new(cache: Cache) -> Arc<Self> {
        Arc::new(Self {
            channel: cache.keys().stream_events_channel(),
            cache,
            streams: Mutex::new(HashMap::new()),
        })
    }

    /// Publishes `event` of the conversation `key` to every replica.
    pub async fn publish(&self, key: &MailboxKey, event: &StreamEvent) -> Result<()> {
        let payload = format!(
            "{}\t{}",
            key.as_str(),
            serde_json::to_string(event).unwrap_or_default()
        );
        self.cache.publish(&self.channel, &payload).await
    }

    /// The events of `key` from now on, for a stream opened in this process.
    pub fn subscribe(&self, key: &MailboxKey) -> StreamEventsOf {
        let mut streams = match self.streams.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let sender = match streams.get(key).and_then(Weak::upgrade) {
            Some(sender) => sender,
            None => {
                let sender = Arc::new(broadcast::channel(BACKLOG).0);
                streams.retain(|_, s| s.strong_count() > 0);
                streams.insert(key.clone(), Arc::downgrade(&sender));
                sender
            }
        };
        StreamEventsOf {
            receiver: sender.subscribe(),
            _sender: sender,
        }
    }

    fn deliver(&self, key: &str, event: StreamEvent) {
        let sender = match self.streams.lock() {
            Ok(s) => s
                .get(&MailboxKey::from_str_unchecked(key))
                .and_then(Weak::upgrade),
            Err(_) => None,
        };
        if let Some(sender) = sender {
            let _ = sender.send(event);
        }
    }
}

impl Listener for StreamEvents {
    fn channel(&self) -> String {
        self.channel.clone()
    }

    fn on_message(&self, payload: &str) {
        let Some((key, json)) = payload.split_once('\t') else {
            return;
        };
        if let Ok(event) = serde_json::from_str(json) {
            self.deliver(key, event);
        }
    }

    /// Events missed while unsubscribed are gone; streams re-read the database on their
    /// own wake-ups, so nothing stored is missed.
    fn on_subscribed(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_json() {
        let id = Uuid::nil();
        let delta = StreamEvent::Delta {
            reply_id: id,
            seq: 1,
            text: "Hel".into(),
        };
        let json = serde_json::to_string(&delta).expect("json");
        assert_eq!(
            json,
            r#"{"event":"delta","reply_id":"00000000-0000-0000-0000-000000000000","seq":1,"text":"Hel"}"#
        );
        assert_eq!(
            serde_json::from_str::<StreamEvent>(&json).expect("back"),
            delta
        );
        assert_eq!(
            serde_json::to_string(&StreamEvent::Typing).expect("json"),
            r#"{"event":"typing"}"#
        );
    }
}
