//! RabbitMQ: the topology, a publisher that waits for the broker's confirm, and a consumer
//! with manual acks and bounded prefetch. The only module that names lapin types: the
//! rest of chatfleet sees [`Broker`], [`Publisher`], [`Consumer`] and [`Delivery`].
//!
//! Connections are re-established on demand: a publisher or consumer whose connection
//! died asks the [`Broker`] again and gets a fresh one, without restarting the process.

mod ceiling;
mod publisher;
mod subscription;
mod topology;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

pub use ceiling::Ceiling;
pub use publisher::{Publisher, ReplyRoute};
pub use subscription::Subscription;
pub use topology::{RetryRung, Topology, WEBHOOK_HOLD};

use crate::error::{Error, Result};
use crate::pii::Secret;
use crate::settings::AmqpSettings;

/// Header names chatfleet sets on every message.
pub mod headers {
    pub const CLIENT_ID: &str = "x-client-id";
    pub const CHANNEL: &str = "x-channel";
    pub const ATTEMPT: &str = "x-attempt";
    pub const TRACEPARENT: &str = "traceparent";
    /// Why a message was dead-lettered (set by chatfleet, beside RabbitMQ's `x-death`).
    pub const DEAD_REASON: &str = "x-cf-reason";
    /// The queue a dead letter was taken from.
    pub const DEAD_FROM: &str = "x-cf-from-queue";
    /// When it was dead-lettered (RFC 3339).
    pub const DEAD_AT: &str = "x-cf-dead-at";
    /// Quorum queues count redeliveries here.
    pub const DELIVERY_COUNT: &str = "x-delivery-count";
}

/// How long one node may take to accept a connection before the next is tried.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on the broker: one connection, re-opened when it is lost (on the next node of
/// the cluster when its node went away).
#[derive(Debug, Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The cluster's nodes, in the order they are tried.
    nodes: Vec<Secret<String>>,
    /// The node to try first: the one that answered last.
    preferred: std::sync::atomic::AtomicUsize,
    name: String,
    topology: Topology,
    confirm_timeout: Duration,
    current: StdMutex<Option<Arc<Connection>>>,
    reconnect: tokio::sync::Mutex<()>,
}

impl Broker {
    /// Connects now (so a wrong URL fails at start-up). `name` shows in the management UI.
    pub async fn connect(settings: &AmqpSettings, name: &str) -> Result<Self> {
        let broker = Self {
            inner: Arc::new(Inner {
                nodes: settings.nodes(),
                preferred: std::sync::atomic::AtomicUsize::new(0),
                name: name.to_owned(),
                topology: Topology::new(settings),
                confirm_timeout: settings.confirm_timeout,
                current: StdMutex::new(None),
                reconnect: tokio::sync::Mutex::new(()),
            }),
        };
        broker.connection().await?;
        Ok(broker)
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Whether the connection is up right now (readiness).
    pub fn is_connected(&self) -> bool {
        self.live().is_some()
    }

    fn live(&self) -> Option<Arc<Connection>> {
        let current = self.inner.current.lock().ok()?;
        current.as_ref().filter(|c| c.status().connected()).cloned()
    }

    /// The live connection, re-opened if it was lost.
    async fn connection(&self) -> Result<Arc<Connection>> {
        if let Some(conn) = self.live() {
            return Ok(conn);
        }
        let _one_at_a_time = self.inner.reconnect.lock().await;
        if let Some(conn) = self.live() {
            return Ok(conn);
        }
        let conn = Arc::new(self.connect_to_a_node().await?);
        if let Ok(mut current) = self.inner.current.lock() {
            *current = Some(conn.clone());
        }
        Ok(conn)
    }

    /// A new connection to the first node that answers, trying them in order from the
    /// one that answered last.
    async fn connect_to_a_node(&self) -> Result<Connection> {
        use std::sync::atomic::Ordering;
        let nodes = &self.inner.nodes;
        let first = self.inner.preferred.load(Ordering::Relaxed);
        let mut failure = None;
        for node in (0..nodes.len()).map(|i| (first + i) % nodes.len()) {
            let props = ConnectionProperties::default()
                .with_connection_name(self.inner.name.as_str().into());
            let attempt = Connection::connect(nodes[node].expose(), props);
            match tokio::time::timeout(NODE_CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(conn)) => {
                    self.inner.preferred.store(node, Ordering::Relaxed);
                    tracing::info!(name = %self.inner.name, node = node + 1, nodes = nodes.len(), "connected to RabbitMQ");
                    return Ok(conn);
                }
                Ok(Err(e)) => {
                    if nodes.len() > 1 {
                        tracing::warn!(error = %e, node = node + 1, "cannot connect to this RabbitMQ node; trying the next");
                    }
                    failure = Some(Error::broker("cannot connect to RabbitMQ", e));
                }
                Err(_) => {
                    tracing::warn!(
                        node = node + 1,
                        "no answer from this RabbitMQ node within {NODE_CONNECT_TIMEOUT:?}"
                    );
                    failure = Some(Error::broker_gone(format!(
                        "RabbitMQ node {} did not answer within {NODE_CONNECT_TIMEOUT:?}",
                        node + 1
                    )));
                }
            }
        }
        Err(failure.unwrap_or_else(|| Error::broker_gone("no RabbitMQ node configured")))
    }

    async fn channel(&self) -> Result<lapin::Channel> {
        let conn = self.connection().await?;
        conn.create_channel().await.map_err(broker_error)
    }

    /// Declares the whole topology (idempotent).
    pub async fn declare_topology(&self) -> Result<()> {
        let ch = self.channel().await?;
        let declared = self.inner.topology.declare(&ch).await;
        let _ = ch.close(200, "declared".into()).await;
        declared
    }

    /// Deletes every queue and exchange of this prefix. Test clean-up and tooling only.
    pub async fn delete_topology(&self) -> Result<()> {
        let ch = self.channel().await?;
        let deleted = self.inner.topology.delete(&ch).await;
        let _ = ch.close(200, "deleted".into()).await;
        deleted
    }

    /// A publisher whose every publish waits for the broker's confirm.
    pub async fn publisher(&self) -> Result<Publisher> {
        Publisher::new(self.clone(), self.inner.confirm_timeout).await
    }

    /// Consumes `queue` with manual acks and at most `prefetch` unacked deliveries.
    pub async fn consume(&self, queue: &str, prefetch: u16, tag: &str) -> Result<Consumer> {
        let ch = self.channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(broker_error)?;
        let consumer = ch
            .basic_consume(
                queue.into(),
                format!("{tag}-{}", uuid::Uuid::new_v4().simple()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::broker(format!("consuming {queue}"), e))?;
        Ok(Consumer {
            inner: consumer,
            channel: ch,
        })
    }

    /// Reads the archive stream from the first message stored at or after `from`
    /// (`x-stream-offset` by timestamp). Ack each delivery; the stream keeps it anyway.
    pub async fn read_archive(&self, from: chrono::DateTime<chrono::Utc>) -> Result<Consumer> {
        let queue = self.topology().archive();
        let ch = self.channel().await?;
        ch.basic_qos(500, BasicQosOptions::default())
            .await
            .map_err(broker_error)?;
        let mut args = FieldTable::default();
        args.insert(
            "x-stream-offset".into(),
            AMQPValue::Timestamp(u64::try_from(from.timestamp()).unwrap_or_default()),
        );
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                format!("replay-{}", uuid::Uuid::new_v4().simple()).into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .map_err(|e| Error::broker(format!("reading {queue}"), e))?;
        Ok(Consumer {
            inner: consumer,
            channel: ch,
        })
    }

    /// Listens to `exchange` for `routing_key` through a private, auto-deleted queue
    /// (operator tooling and tests watching events).
    pub async fn tap(&self, exchange: &str, routing_key: &str) -> Result<Consumer> {
        let ch = self.channel().await?;
        let queue = ch
            .queue_declare(
                "".into(),
                lapin::options::QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(broker_error)?;
        ch.queue_bind(
            queue.name().as_str().into(),
            exchange.into(),
            routing_key.into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker_error)?;
        ch.basic_qos(64, BasicQosOptions::default())
            .await
            .map_err(broker_error)?;
        let consumer = ch
            .basic_consume(
                queue.name().as_str().into(),
                "tap".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker_error)?;
        Ok(Consumer {
            inner: consumer,
            channel: ch,
        })
    }

    /// Ready messages and consumers of `queue` (passive declare; tooling and tests).
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        let ch = self.channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::broker(format!("inspecting {queue}"), e))?;
        let _ = ch.close(200, "inspected".into()).await;
        Ok(QueueStats {
            messages: q.message_count(),
            consumers: q.consumer_count(),
        })
    }

    /// Messages waiting for a worker: the way back in and every work shard, together
    /// (what autoscalers watch).
    pub async fn work_waiting(&self) -> Result<u64> {
        let topology = self.topology();
        let mut waiting = u64::from(self.queue_stats(&topology.inbound_work()).await?.messages);
        for shard in 0..topology.work_shards() {
            waiting += u64::from(
                self.queue_stats(&topology.work_shard(shard))
                    .await?
                    .messages,
            );
        }
        Ok(waiting)
    }

    /// Closes the connection politely; gives up after 5 s (the broker may be gone).
    pub async fn close(&self) {
        if let Some(conn) = self.live() {
            let closing = conn.close(200, "shutting down".into());
            if tokio::time::timeout(Duration::from_secs(5), closing)
                .await
                .is_err()
            {
                tracing::warn!("broker did not acknowledge the close within 5 s");
            }
        }
    }
}

/// What a passive declare tells about a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready for delivery (not counting unacked ones).
    pub messages: u32,
    pub consumers: u32,
}

/// A stream of deliveries from one queue.
#[derive(Debug)]
pub struct Consumer {
    inner: lapin::Consumer,
    channel: lapin::Channel,
}

impl Consumer {
    /// The next delivery; `None` when the consumer was cancelled or its connection died
    /// (the caller reconnects; unacked deliveries go back to the queue).
    pub async fn next(&mut self) -> Option<Delivery> {
        match self.inner.next().await {
            Some(Ok(d)) => Some(Delivery::from_lapin(d)),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer stopped");
                None
            }
            None => None,
        }
    }

    /// Closes the consumer's channel: every delivery it received and did not ack goes
    /// back to the queue (operator tooling browsing a queue).
    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }

    /// Stops receiving new deliveries; in-flight ones can still be acked.
    pub async fn cancel(&self) {
        let tag = self.inner.tag();
        let _ = self
            .channel
            .basic_cancel(tag.as_str().into(), Default::default())
            .await;
    }
}

/// One message handed to a consumer. It must end in [`Delivery::ack`] or
/// [`Delivery::requeue`]; a delivery dropped without a decision stays unacked until the
/// channel closes and is then redelivered.
#[derive(Debug)]
pub struct Delivery {
    pub body: Vec<u8>,
    pub routing_key: String,
    pub redelivered: bool,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    /// chatfleet's `x-attempt` (1 for the first try, +1 per pass through the retry ladder).
    pub attempt: u32,
    /// How often the broker redelivered this message after a crash (`x-delivery-count`).
    pub delivery_count: u32,
    properties: BasicProperties,
    acker: lapin::Acker,
}

impl Delivery {
    fn from_lapin(d: lapin::message::Delivery) -> Self {
        let attempt = header_u64(&d.properties, headers::ATTEMPT).unwrap_or(1) as u32;
        let delivery_count = header_u64(&d.properties, headers::DELIVERY_COUNT).unwrap_or(0) as u32;
        Self {
            message_id: d.properties.message_id().as_ref().map(|s| s.to_string()),
            correlation_id: d
                .properties
                .correlation_id()
                .as_ref()
                .map(|s| s.to_string()),
            routing_key: d.routing_key.to_string(),
            redelivered: d.redelivered,
            attempt: attempt.max(1),
            delivery_count,
            body: d.data,
            properties: d.properties,
            acker: d.acker,
        }
    }

    /// The string headers (numbers are rendered as text).
    /// The broker's record of the queues this message was dead-lettered from
    /// (`x-death`: the retry ladder's rungs it waited on): (queue, reason, count).
    pub fn death_history(&self) -> Vec<(String, String, u64)> {
        let Some(AMQPValue::FieldArray(deaths)) = self
            .properties
            .headers()
            .as_ref()
            .and_then(|t| t.inner().get("x-death").cloned())
        else {
            return Vec::new();
        };
        deaths
            .as_slice()
            .iter()
            .filter_map(|d| match d {
                AMQPValue::FieldTable(t) => {
                    let field = |k: &str| t.inner().get(k).and_then(value_text);
                    Some((
                        field("queue").unwrap_or_default(),
                        field("reason").unwrap_or_default(),
                        field("count").and_then(|c| c.parse().ok()).unwrap_or(1),
                    ))
                }
                _ => None,
            })
            .collect()
    }

    pub fn headers(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(table) = self.properties.headers() {
            for (k, v) in table {
                if let Some(text) = value_text(v) {
                    out.insert(k.to_string(), text);
                }
            }
        }
        out
    }

    pub async fn ack(&self) -> Result<()> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(broker_error)
    }

    /// Gives the message back to the queue for another consumer (shutdown).
    pub async fn requeue(&self) -> Result<()> {
        self.acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(broker_error)
    }
}

fn header_u64(props: &BasicProperties, name: &str) -> Option<u64> {
    let value = props.headers().as_ref()?.inner().get(name)?;
    value_text(value)?.parse().ok()
}

fn value_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        _ => return None,
    })
}

fn broker_error(e: lapin::Error) -> Error {
    Error::broker("operation failed", e)
}
