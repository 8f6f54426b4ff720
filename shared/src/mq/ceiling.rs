//! The broker's own ceiling on this machine, with the client library chatfleet uses:
//! persistent 1 KiB messages published with confirms (pipelined) to a quorum queue and
//! consumed with acks. Every throughput figure of `chatfleet bench` is read against it.
//!
//! The ceiling is a *hop*: a publisher and a consumer on connections of their own run at
//! the same time, as an ingress and a worker do, and the rate is messages acked per
//! second from the first publish to the last ack. Each message of the platform is
//! published and consumed, so both sides' costs are paid on the same cores at once.
//! Publishing alone (nobody consuming) and then consuming alone (from the full queue)
//! are measured too: each is an upper bound a hop cannot reach, shown beside it.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation};

use super::{Broker, broker_error};
use crate::error::{Error, Result};

/// Publishes allowed in flight (awaiting their confirm) at once, and the consumer's
/// prefetch.
const IN_FLIGHT: usize = 512;

/// How long the consumer waits for its next delivery before the measurement fails.
const STALL: Duration = Duration::from_secs(30);

/// What the broker alone sustained.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    pub messages: usize,
    /// The single-hop ceiling: messages published with confirms and, at the same time on
    /// another connection, consumed with acks, per second.
    pub hop_per_s: f64,
    /// Confirmed publishes per second with nobody consuming.
    pub publish_per_s: f64,
    /// Deliveries consumed and acked per second from the full queue, nobody publishing.
    pub consume_per_s: f64,
}

impl Broker {
    /// Measures [`Ceiling`] with `messages` messages of `size` bytes on a throw-away
    /// quorum queue of this prefix (removed afterwards). This connection publishes;
    /// `consumer`, another connection to the same broker, consumes.
    pub async fn measure_ceiling(
        &self,
        consumer: &Broker,
        messages: usize,
        size: usize,
    ) -> Result<Ceiling> {
        let queue = format!("{}.bench.ceiling", self.topology().prefix());
        let publishing = self.channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        publishing
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .map_err(broker_error)?;
        publishing
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker_error)?;
        let consuming = consumer.channel().await?;
        consuming
            .basic_qos(IN_FLIGHT as u16, BasicQosOptions::default())
            .await
            .map_err(broker_error)?;
        let body = vec![b'x'; size];

        let measured = async {
            // The hop: both sides at once.
            let started = Instant::now();
            let (published, consumed) = tokio::join!(
                publish(&publishing, &queue, &body, messages),
                consume(&consuming, &queue, "ceiling-hop", messages)
            );
            published?;
            consumed?;
            let hop = started.elapsed();

            // Each side alone.
            let started = Instant::now();
            publish(&publishing, &queue, &body, messages).await?;
            let publish_alone = started.elapsed();
            let started = Instant::now();
            consume(&consuming, &queue, "ceiling", messages).await?;
            Ok::<_, Error>((hop, publish_alone, started.elapsed()))
        }
        .await;

        // Removed whether or not the measurement finished.
        let _ = publishing
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = consuming.close(200, "measured".into()).await;
        let _ = publishing.close(200, "measured".into()).await;
        let (hop, publish_alone, consume_alone) = measured?;
        let rate = |d: Duration| messages as f64 / d.as_secs_f64();
        Ok(Ceiling {
            messages,
            hop_per_s: rate(hop),
            publish_per_s: rate(publish_alone),
            consume_per_s: rate(consume_alone),
        })
    }
}

/// Publishes `messages` persistent copies of `body` to `queue`, at most [`IN_FLIGHT`]
/// awaiting their confirm, and returns once every one is confirmed.
async fn publish(ch: &lapin::Channel, queue: &str, body: &[u8], messages: usize) -> Result<()> {
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut pending = FuturesUnordered::new();
    for _ in 0..messages {
        if pending.len() >= IN_FLIGHT {
            confirmed(pending.next().await)?;
        }
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props.clone(),
            )
            .await
            .map_err(broker_error)?;
        pending.push(confirm);
    }
    while let Some(c) = pending.next().await {
        confirmed(Some(c))?;
    }
    Ok(())
}

/// Consumes and acks `messages` deliveries of `queue`, then cancels the consumer.
async fn consume(ch: &lapin::Channel, queue: &str, tag: &str, messages: usize) -> Result<()> {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker_error)?;
    for _ in 0..messages {
        let delivery = tokio::time::timeout(STALL, consumer.next())
            .await
            .map_err(|_| Error::broker_gone("the ceiling queue stopped delivering"))?
            .ok_or_else(|| Error::broker_gone("the ceiling consumer ended"))?
            .map_err(broker_error)?;
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(broker_error)?;
    }
    ch.basic_cancel(tag.into(), Default::default())
        .await
        .map_err(broker_error)?;
    Ok(())
}

fn confirmed(c: Option<lapin::Result<Confirmation>>) -> Result<()> {
    match c {
        Some(Ok(Confirmation::Ack(_) | Confirmation::NotRequested)) | None => Ok(()),
        Some(Ok(Confirmation::Nack(_))) => {
            Err(Error::NotConfirmed("the broker refused a message".into()))
        }
        Some(Err(e)) => Err(broker_error(e)),
    }
}
