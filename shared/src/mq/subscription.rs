//! A consumer that survives its connection: [`Subscription::next`] re-opens the consumer
//! (with backoff) whenever the broker connection or channel is lost, and ends only when
//! the shutdown token fires, cancelling the consumer so in-flight deliveries can still be
//! acked while nothing new arrives. Once they are settled, [`Subscription::close`]
//! closes its channel before the process closes the connection.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Broker, Consumer, Delivery};

#[derive(Debug)]
pub struct Subscription {
    broker: Broker,
    queue: String,
    prefetch: u16,
    tag: String,
    shutdown: CancellationToken,
    current: Option<Consumer>,
}

impl Broker {
    /// Consumes `queue` until `shutdown`, reconnecting as needed.
    pub fn subscribe(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
        shutdown: CancellationToken,
    ) -> Subscription {
        Subscription {
            broker: self.clone(),
            queue: queue.to_owned(),
            prefetch,
            tag: tag.to_owned(),
            shutdown,
            current: None,
        }
    }
}

impl Subscription {
    /// The next delivery, or `None` once shutdown was requested.
    pub async fn next(&mut self) -> Option<Delivery> {
        let mut backoff = Duration::from_millis(200);
        loop {
            if self.current.is_none() {
                if self.shutdown.is_cancelled() {
                    return None;
                }
                match self
                    .broker
                    .consume(&self.queue, self.prefetch, &self.tag)
                    .await
                {
                    Ok(consumer) => {
                        tracing::info!(queue = %self.queue, prefetch = self.prefetch, "consuming");
                        backoff = Duration::from_millis(200);
                        self.current = Some(consumer);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, queue = %self.queue, "cannot consume; retrying in {backoff:?}");
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return None,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
            }
            let consumer = self.current.as_mut()?;
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    consumer.cancel().await;
                    return None;
                }
                delivery = consumer.next() => match delivery {
                    Some(d) => return Some(d),
                    None => {
                        tracing::warn!(queue = %self.queue, "lost the consumer; reconnecting");
                        self.current = None;
                    }
                },
            }
        }
    }

    /// After this consumer was stopped while the process runs on (its queue went to
    /// another consumer): hands the deliveries that were still on their way to it back
    /// to the queue at once, for the next consumer, instead of leaving them unacked until
    /// the channel closes. Waits at most `within` for the broker to end the consumer.
    pub async fn hand_back_undelivered(&mut self, within: Duration) {
        let Some(consumer) = self.current.as_mut() else {
            return;
        };
        let _ = tokio::time::timeout(within, async {
            while let Some(delivery) = consumer.next().await {
                let _ = delivery.requeue().await;
            }
        })
        .await;
    }

    /// Closes the consumer's channel (after the deliveries it handed out were settled)
    /// and waits for the broker's answer. A channel merely dropped closes in the
    /// background, and when the connection closes at the same moment lapin takes the
    /// two for a protocol error and logs the connection as failed.
    pub async fn close(mut self) {
        if let Some(consumer) = self.current.take() {
            consumer.close().await;
        }
    }
}
