//! The broker's own ceiling on this machine, with the client library chatfleet uses:
//! persistent 1 KiB messages published with confirms (pipelined) to a quorum queue, then
//! consumed with acks. Every throughput figure of `chatfleet bench` is read against it.

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

/// Publishes allowed in flight (awaiting their confirm) at once.
const IN_FLIGHT: usize = 512;

/// What the broker alone sustained.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    pub messages: usize,
    /// Confirmed publishes per second.
    pub publish_per_s: f64,
    /// Deliveries consumed and acked per second.
    pub consume_per_s: f64,
}

impl Broker {
    /// Measures [`Ceiling`] with `messages` messages of `size` bytes on a throw-away
    /// quorum queue of this prefix (removed afterwards).
    pub async fn measure_ceiling(&self, messages: usize, size: usize) -> Result<Ceiling> {
        let queue = format!("{}.bench.ceiling", self.topology().prefix());
        let ch = self.channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(broker_error)?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker_error)?;
        let body = vec![b'x'; size];
        let props = BasicProperties::default().with_delivery_mode(2);

        let started = Instant::now();
        let mut pending = FuturesUnordered::new();
        for _ in 0..messages {
            if pending.len() >= IN_FLIGHT {
                confirmed(pending.next().await)?;
            }
            let confirm = ch
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props.clone(),
                )
                .await
                .map_err(broker_error)?;
            pending.push(confirm);
        }
        while let Some(c) = pending.next().await {
            confirmed(Some(c))?;
        }
        let publish = started.elapsed();

        ch.basic_qos(IN_FLIGHT as u16, BasicQosOptions::default())
            .await
            .map_err(broker_error)?;
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "ceiling".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker_error)?;
        let started = Instant::now();
        for _ in 0..messages {
            let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
                .await
                .map_err(|_| Error::Broker("the ceiling queue stopped delivering".into()))?
                .ok_or_else(|| Error::Broker("the ceiling consumer ended".into()))?
                .map_err(broker_error)?;
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(broker_error)?;
        }
        let consume = started.elapsed();
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = ch.close(200, "measured".into()).await;
        Ok(Ceiling {
            messages,
            publish_per_s: messages as f64 / publish.as_secs_f64(),
            consume_per_s: messages as f64 / consume.as_secs_f64(),
        })
    }
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
