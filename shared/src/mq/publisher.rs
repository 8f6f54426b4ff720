//! Publishing with publisher confirms. Every publish waits for the broker's ack (bounded
//! by `amqp.confirm_timeout_s`) and is `mandatory`, so an unroutable message (a missing
//! binding) is an error rather than a silent drop. Callers answer 2xx or ack a delivery
//! only after these methods return `Ok`.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation};
use tokio::sync::RwLock;

use super::{Broker, Delivery, RetryRung, broker_error, headers};
use crate::envelope::{Envelope, Event, Reply};
use crate::error::{Error, Result};
use crate::sealed::DataKeys;

/// Where a reply goes: its channel's outbound queue, the dry-run replay queue, or (a
/// WhatsApp reply held for a closed window) the queue where it waits out
/// `whatsapp.hold_max_days` before it comes back to be expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyRoute {
    Channel,
    Replay,
    Held,
}

/// A confirming publisher on its own channel, shared by many tasks (publishes are
/// pipelined: each task waits only for its own confirm).
#[derive(Debug)]
pub struct Publisher {
    broker: Broker,
    channel: RwLock<lapin::Channel>,
    confirm_timeout: Duration,
    /// Seals the personal fields of envelopes and replies (every fleet process has it;
    /// without, as in tests and tools that publish no personal data, they go as they are).
    sealing: Option<Arc<DataKeys>>,
}

impl Publisher {
    pub(super) async fn new(broker: Broker, confirm_timeout: Duration) -> Result<Self> {
        let channel = open_confirming(&broker).await?;
        Ok(Self {
            broker,
            channel: RwLock::new(channel),
            confirm_timeout,
            sealing: None,
        })
    }

    /// This publisher, sealing envelopes and replies with their conversations' data
    /// keys (see [`crate::sealed`]).
    pub fn sealing(self, keys: Arc<DataKeys>) -> Self {
        Self {
            sealing: Some(keys),
            ..self
        }
    }

    /// Publishes an envelope to the inbound exchange (`<channel>.<client_id>.<shard>`).
    pub async fn publish_envelope(&self, envelope: &Envelope) -> Result<()> {
        let topology = self.broker.topology();
        let props = properties(
            envelope.id.to_string(),
            Some(envelope.trace.request_id.as_str()),
            envelope_headers(envelope, 1),
        );
        let body = match &self.sealing {
            Some(keys) => keys.seal_envelope(envelope).await?,
            None => envelope.to_json(),
        };
        self.publish(
            &topology.inbound_exchange(),
            &topology.envelope_routing_key(
                envelope.channel,
                envelope.client_id,
                envelope.conversation_id,
            ),
            &body,
            props,
        )
        .await
    }

    /// Moves a delivery, as it is, to work shard `shard` (the caller acks the original
    /// after this returns): how a retried, parked or requeued delivery finds its shard.
    pub async fn forward_to_shard(&self, delivery: &Delivery, shard: u16) -> Result<()> {
        let queue = self.broker.topology().work_shard(shard);
        self.publish("", &queue, &delivery.body, delivery.properties.clone())
            .await
    }

    /// Publishes raw bytes to the inbound exchange as if they were an envelope: operator
    /// tooling re-injecting stored payloads, and tests sending poison messages.
    pub async fn publish_inbound_raw(&self, routing_key: &str, body: &[u8]) -> Result<()> {
        self.publish_raw(
            &self.broker.topology().inbound_exchange(),
            routing_key,
            body,
        )
        .await
    }

    /// Puts raw bytes (a dead-lettered envelope, as it was) on the way back into the work
    /// (`<prefix>.inbound.work`), from where a worker forwards it to its shard; it does not
    /// pass the inbound exchange, so the archive does not hold it twice.
    pub async fn return_to_work(&self, body: &[u8]) -> Result<()> {
        self.publish_raw("", &self.broker.topology().inbound_work(), body)
            .await
    }

    /// Publishes raw bytes to the outbound exchange under a channel's routing key: operator
    /// tooling putting a dead-lettered reply back on its way.
    pub async fn publish_outbound_raw(&self, routing_key: &str, body: &[u8]) -> Result<()> {
        self.publish_raw(
            &self.broker.topology().outbound_exchange(),
            routing_key,
            body,
        )
        .await
    }

    /// Publishes bytes that come from outside this process's own types, under a new
    /// message id and no headers.
    async fn publish_raw(&self, exchange: &str, routing_key: &str, body: &[u8]) -> Result<()> {
        let props = properties(
            uuid::Uuid::now_v7().to_string(),
            None,
            FieldTable::default(),
        );
        self.publish(exchange, routing_key, body, props).await
    }

    /// Publishes a reply to the outbound exchange.
    pub async fn publish_reply(
        &self,
        reply: &Reply,
        route: ReplyRoute,
        request_id: Option<&str>,
    ) -> Result<()> {
        let mut table = FieldTable::default();
        table.insert(
            headers::CLIENT_ID.into(),
            text(&reply.client_id.to_string()),
        );
        table.insert(headers::CHANNEL.into(), text(reply.channel.as_str()));
        let topology = self.broker.topology();
        let (exchange, key) = match route {
            ReplyRoute::Channel => (
                topology.outbound_exchange(),
                reply.channel.as_str().to_owned(),
            ),
            ReplyRoute::Replay => (topology.outbound_exchange(), "replay".to_owned()),
            ReplyRoute::Held => (String::new(), topology.whatsapp_held_queue()),
        };
        let body = match &self.sealing {
            Some(keys) => keys.seal_reply(reply).await?,
            None => reply.to_json(),
        };
        self.publish(
            &exchange,
            &key,
            &body,
            properties(reply.id.to_string(), request_id, table),
        )
        .await
    }

    /// Publishes a conversation event to `<prefix>.events` (see [`Event::routing_key`]).
    /// Events are facts for other systems: nobody may be bound, so an unroutable event
    /// is not an error (the publish is not `mandatory`).
    pub async fn publish_event(&self, event: &Event) -> Result<()> {
        let mut table = FieldTable::default();
        table.insert(
            headers::CLIENT_ID.into(),
            text(&event.client_id.to_string()),
        );
        let props = properties(event.id.to_string(), None, table);
        self.publish_with(
            &self.broker.topology().events_exchange(),
            &event.routing_key(),
            &event.to_json(),
            props,
            false,
        )
        .await
    }

    /// Queues a webhook delivery's attempt: at once, or after waiting `wait` (rounded up
    /// to a declared wait queue, see [`super::Topology::webhook_wait_queue`]).
    pub async fn publish_webhook_job(
        &self,
        job: &crate::webhooks::Job,
        wait: Option<Duration>,
    ) -> Result<()> {
        let topology = self.broker.topology();
        let queue = match wait {
            Some(wait) if !wait.is_zero() => topology.webhook_wait_queue(wait),
            _ => topology.webhook_work(),
        };
        let mut table = FieldTable::default();
        table.insert(headers::CLIENT_ID.into(), text(&job.client_id.to_string()));
        let props = properties(
            format!("{}:{}:{}", job.event_id, job.webhook_id, job.attempt),
            None,
            table,
        );
        self.publish("", &queue, &job.to_json(), props).await
    }

    /// Sends a delivery to wait on rung `rung` of the retry ladder, to come back as
    /// attempt `next_attempt` (the same attempt when it was only delayed, +1 when it
    /// failed). The caller acks the original after this returns.
    pub async fn retry(
        &self,
        delivery: &Delivery,
        rung: RetryRung,
        next_attempt: u32,
    ) -> Result<()> {
        let queue = self
            .broker
            .topology()
            .retry_queue(rung)
            .ok_or_else(|| Error::Invalid(format!("no retry rung {}", rung.0)))?;
        let mut props = delivery.properties.clone();
        let mut table = props.headers().clone().unwrap_or_default();
        table.insert(
            headers::ATTEMPT.into(),
            AMQPValue::LongLongInt(i64::from(next_attempt)),
        );
        props = props.with_headers(table);
        self.publish("", &queue, &delivery.body, props).await
    }

    /// Puts a delivery in the dead-letter queue with the reason. The caller acks the
    /// original after this returns.
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        from_queue: &str,
        reason: &str,
    ) -> Result<()> {
        let mut props = delivery.properties.clone();
        let mut table = props.headers().clone().unwrap_or_default();
        table.insert(headers::DEAD_REASON.into(), text(reason));
        table.insert(headers::DEAD_FROM.into(), text(from_queue));
        table.insert(
            headers::DEAD_AT.into(),
            text(&chrono::Utc::now().to_rfc3339()),
        );
        props = props.with_headers(table);
        self.publish(
            &self.broker.topology().dead_exchange(),
            &delivery.routing_key,
            &delivery.body,
            props,
        )
        .await
    }

    /// Puts raw bytes that never became an envelope (an unroutable webhook) in the
    /// dead-letter queue with the reason.
    pub async fn dead_letter_raw(
        &self,
        routing_key: &str,
        body: &[u8],
        reason: &str,
    ) -> Result<()> {
        let mut table = FieldTable::default();
        table.insert(headers::DEAD_REASON.into(), text(reason));
        table.insert(
            headers::DEAD_AT.into(),
            text(&chrono::Utc::now().to_rfc3339()),
        );
        let props = properties(uuid::Uuid::now_v7().to_string(), None, table);
        self.publish(
            &self.broker.topology().dead_exchange(),
            routing_key,
            body,
            props,
        )
        .await
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<()> {
        self.publish_with(exchange, routing_key, body, props, true)
            .await
    }

    async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
        mandatory: bool,
    ) -> Result<()> {
        let channel = self.live_channel().await?;
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                body,
                props,
            )
            .await
            .map_err(broker_error)?;
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| {
                Error::NotConfirmed(format!("no confirm within {:?}", self.confirm_timeout))
            })?
            .map_err(broker_error)?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(Error::NotConfirmed(format!(
                "unroutable: {exchange} / {routing_key} ({})",
                returned.reply_text
            ))),
            Confirmation::Nack(_) => {
                // A channel whose publish a quorum queue refused while its leader moved
                // (a cluster node went away) can go on being refused after a new leader
                // is elected: the next publish starts on a fresh channel.
                let _ = channel
                    .close(200, "a publish was refused; starting afresh".into())
                    .await;
                Err(Error::NotConfirmed(format!(
                    "broker refused {exchange} / {routing_key} (queue full or unavailable)"
                )))
            }
            Confirmation::NotRequested => Err(Error::NotConfirmed("confirms are off".into())),
        }
    }

    /// Closes the publishing channel once the process is done publishing, waiting for
    /// the broker (see [`super::Subscription::close`] for why not merely drop it).
    pub async fn close(&self) {
        let ch = self.channel.read().await;
        if ch.status().connected() {
            let _ = ch.close(200, "done".into()).await;
        }
    }

    /// The publishing channel, re-opened (with confirms) if it or its connection died.
    async fn live_channel(&self) -> Result<lapin::Channel> {
        {
            let ch = self.channel.read().await;
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        let mut ch = self.channel.write().await;
        if !ch.status().connected() {
            *ch = open_confirming(&self.broker).await?;
        }
        Ok(ch.clone())
    }
}

async fn open_confirming(broker: &Broker) -> Result<lapin::Channel> {
    let ch = broker.channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broker_error)?;
    Ok(ch)
}

fn envelope_headers(envelope: &Envelope, attempt: u32) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(
        headers::CLIENT_ID.into(),
        text(&envelope.client_id.to_string()),
    );
    table.insert(headers::CHANNEL.into(), text(envelope.channel.as_str()));
    table.insert(
        headers::ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    if let Some(tp) = &envelope.trace.traceparent {
        table.insert(headers::TRACEPARENT.into(), text(tp));
    }
    table
}

fn properties(
    message_id: String,
    correlation_id: Option<&str>,
    headers: FieldTable,
) -> BasicProperties {
    let props = BasicProperties::default()
        .with_message_id(message_id.into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2) // persistent
        .with_timestamp(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default())
        .with_headers(headers);
    match correlation_id {
        Some(id) => props.with_correlation_id(short_string(id).into()),
        None => props,
    }
}

/// Longest AMQP short string, in bytes: lapin panics on a longer one.
const MAX_SHORT_STRING: usize = 255;

/// `s` cut to fit an AMQP short string (at a character boundary). The ingress keeps only
/// short request ids; this is the second guard, so no caller's id can make a publish
/// panic after its message was committed.
fn short_string(s: &str) -> &str {
    crate::text::prefix_within(s, MAX_SHORT_STRING)
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No id, however long, makes a publish's properties panic.
    #[test]
    fn a_correlation_id_is_cut_to_a_short_string() {
        let long = "é".repeat(300);
        let cut = short_string(&long);
        assert!(
            cut.len() <= MAX_SHORT_STRING && long.starts_with(cut),
            "{}",
            cut.len()
        );
        let props = properties("m".into(), Some(&long), FieldTable::default());
        assert!(props.correlation_id().is_some());
        assert_eq!(short_string("req-1"), "req-1");
    }
}
