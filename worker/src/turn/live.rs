//! What a turn shows while it runs, to clients streaming the conversation (SSE): `typing`
//! when it starts asking the model, then — when the provider streams — the answer's text
//! as it arrives, batched into at most one `delta` per `stream.delta_interval_ms`, all
//! under the id the stored reply will have. The deltas are flushed before the reply is
//! stored and announced, so a client meets the stored `message` after the last delta of
//! its text; a turn that stores nothing (a failure, a handoff meanwhile) publishes
//! `discard`. Best-effort throughout: a failed publish is logged, never the turn's
//! failure, and the stored reply stays the only truth.

use std::time::Duration;

use shared::cache::{MailboxKey, StreamEvent, StreamEvents};
use shared::envelope::{Envelope, Reply};
use shared::ids::{Channel, ConversationId, ReplyId};
use shared::mq::ReplyRoute;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Ctx;
use crate::llm::{DeltaPiece, DeltaSink};

/// A reply being written, shown live.
pub(super) struct LiveReply {
    pub reply_id: ReplyId,
    sink: DeltaSink,
    batcher: JoinHandle<()>,
    shown: Shown,
}

/// Where a reply is shown: the conversation's streams.
#[derive(Clone)]
struct Shown {
    events: Arc<StreamEvents>,
    key: MailboxKey,
}

/// A live reply whose text is all shown: it is stored next, or discarded.
pub(super) struct ShownReply {
    shown: Shown,
    reply_id: ReplyId,
}

impl Shown {
    async fn publish(&self, event: StreamEvent) {
        if let Err(e) = self.events.publish(&self.key, &event).await {
            tracing::debug!(error = %e, "a live event was not published");
        }
    }
}

impl LiveReply {
    /// Shows `typing` on the conversation's streams and starts showing the answer;
    /// `None` for a channel without streams (WhatsApp: its deliverer marks the user's
    /// message read and shows WhatsApp's typing indicator, when the tenant wants it).
    pub async fn start(
        ctx: &Ctx,
        env: &Envelope,
        conversation_id: ConversationId,
        whatsapp_typing_indicator: bool,
    ) -> Option<Self> {
        if env.channel == Channel::Whatsapp {
            if whatsapp_typing_indicator && env.channel_message_id.is_some() {
                let typing = Reply::typing(env, conversation_id);
                let sent = ctx
                    .publisher
                    .publish_reply(&typing, ReplyRoute::Channel, Some(&env.trace.request_id))
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "the typing indicator was not published");
                }
            }
            return None;
        }
        let shown = Shown {
            events: ctx.stream_events.clone(),
            key: MailboxKey::new(env.client_id, env.channel, env.external_id.expose()),
        };
        shown.publish(StreamEvent::Typing).await;
        let reply_id = ReplyId::random();
        let (sink, pieces) = mpsc::unbounded_channel();
        let batcher = tokio::spawn(batch(shown.clone(), reply_id, ctx.delta_interval, pieces));
        Some(Self {
            reply_id,
            sink,
            batcher,
            shown,
        })
    }

    /// Where the provider sends the answer's text.
    pub fn sink(&self) -> DeltaSink {
        self.sink.clone()
    }

    /// Shows what is left of the answer's text and waits until it is published.
    pub async fn finish(self) -> ShownReply {
        drop(self.sink);
        let _ = self.batcher.await;
        ShownReply {
            shown: self.shown,
            reply_id: self.reply_id,
        }
    }

    /// The turn ended without a reply: whatever was shown is void.
    pub async fn discard(self) {
        self.finish().await.discard().await;
    }
}

impl ShownReply {
    /// The reply was not stored (a handoff meanwhile, answered before): void.
    pub async fn discard(self) {
        self.shown
            .publish(StreamEvent::Discard {
                reply_id: *self.reply_id.as_uuid(),
            })
            .await;
    }
}

/// Publishes the pieces as deltas, at most one per `interval`, until the sink closes.
async fn batch(
    shown: Shown,
    reply_id: ReplyId,
    interval: Duration,
    mut pieces: mpsc::UnboundedReceiver<DeltaPiece>,
) {
    let mut pending = String::new();
    let mut seq = 0u32;
    let mut last_sent: Option<Instant> = None;
    loop {
        let due =
            (!pending.is_empty()).then(|| last_sent.map_or_else(Instant::now, |at| at + interval));
        let piece = match due {
            Some(at) => tokio::select! {
                piece = pieces.recv() => Some(piece),
                _ = tokio::time::sleep_until(at) => None,
            },
            None => Some(pieces.recv().await),
        };
        match piece {
            // Due: send what accumulated.
            None => {
                seq += 1;
                let text = std::mem::take(&mut pending);
                shown
                    .publish(StreamEvent::Delta {
                        reply_id: *reply_id.as_uuid(),
                        seq,
                        text,
                    })
                    .await;
                last_sent = Some(Instant::now());
            }
            Some(Some(DeltaPiece::Text(text))) => pending.push_str(&text),
            Some(Some(DeltaPiece::Restart)) => {
                if seq > 0 {
                    shown
                        .publish(StreamEvent::Discard {
                            reply_id: *reply_id.as_uuid(),
                        })
                        .await;
                }
                pending.clear();
                seq = 0;
            }
            // The answer is complete: the rest goes out now.
            Some(None) => {
                if !pending.is_empty() {
                    shown
                        .publish(StreamEvent::Delta {
                            reply_id: *reply_id.as_uuid(),
                            seq: seq + 1,
                            text: pending,
                        })
                        .await;
                }
                return;
            }
        }
    }
}
