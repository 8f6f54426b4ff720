//! One Redis pub/sub subscription per process, shared by everything that listens for
//! cross-replica broadcasts (mailbox wake-ups, config invalidations).
//!
//! The subscription is re-established when it drops, and every (re)subscribe calls each
//! listener's [`Listener::on_subscribed`]: whatever was broadcast while this process was
//! not listening must be assumed missed (mailboxes re-read, config caches clear).

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Cache;

/// Something that reacts to messages on one pub/sub channel.
pub trait Listener: Send + Sync + 'static {
    /// The full channel name (built by [`super::Keys`]).
    fn channel(&self) -> String;
    fn on_message(&self, payload: &str);
    /// Called after every successful (re)subscription.
    fn on_subscribed(&self);
}

/// Starts the process's subscription; it runs until `shutdown`.
pub fn start(cache: Cache, listeners: Vec<Arc<dyn Listener>>, shutdown: CancellationToken) {
    tokio::spawn(async move { subscribe_forever(cache, listeners, shutdown).await });
}

async fn subscribe_forever(
    cache: Cache,
    listeners: Vec<Arc<dyn Listener>>,
    shutdown: CancellationToken,
) {
    let channels: Vec<String> = listeners.iter().map(|l| l.channel()).collect();
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match cache.client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channels).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    for l in &listeners {
                        l.on_subscribed();
                    }
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            msg = messages.next() => match msg {
                                Some(msg) => {
                                    let payload: redis::RedisResult<String> = msg.get_payload();
                                    let channel = msg.get_channel_name();
                                    if let Ok(payload) = payload {
                                        for l in listeners.iter().filter(|l| l.channel() == channel) {
                                            l.on_message(&payload);
                                        }
                                    }
                                }
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("broadcast subscription lost; re-subscribing");
                }
                Err(e) => tracing::warn!(error = %e, "broadcast subscription failed"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot open the broadcast subscription"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
