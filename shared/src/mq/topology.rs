//! The RabbitMQ topology of DESIGN.md §3: every exchange and queue name, built from the
//! configured prefix by the methods of [`Topology`] (there is no other way to spell one),
//! and its idempotent declaration.
//!
//! The work is sharded: an envelope's routing key ends in its shard
//! (`<channel>.<client_id>.<shard>`, the shard a hash of its tenant and conversation), and
//! shard `n` is the quorum queue `<prefix>.inbound.work.<n>`, bound `*.*.<n>` and declared
//! single-active-consumer, so one conversation's messages always wait in one queue and
//! reach one worker at a time. `<prefix>.inbound.work` is the way back in: the retry
//! ladder, parked and requeued deliveries, and envelopes of publishers that predate the
//! shards (two-word routing keys, bound `*.*`) land there, and workers forward each to its
//! shard.
//!
//! Declaring twice with the same settings is harmless (RabbitMQ treats an identical
//! re-declaration as a no-op). Changing an argument of an existing queue (say the delivery
//! limit) is refused by the broker with PRECONDITION_FAILED, which is reported with the
//! queue's name: such a change needs a policy or a migration, not a silent redeclare.

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::error::{Error, Result};
use crate::ids::{Channel as MsgChannel, ClientId, ConversationId};
use crate::settings::AmqpSettings;

/// The names of chatfleet's exchanges and queues under one prefix, and the knobs they are
/// declared with.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    delivery_limit: u32,
    work_shards: u16,
    retry_delays: Vec<Duration>,
    archive_max_age: String,
    /// The waits of webhook deliveries, distinct and ascending: the retry schedule's
    /// non-zero delays and [`WEBHOOK_HOLD`].
    webhook_waits: Vec<Duration>,
    /// How long a WhatsApp reply held for a closed window waits before it is looked at
    /// again (to expire it): `whatsapp.hold_max_days`.
    whatsapp_hold: Duration,
}

/// How long a webhook delivery that may not go yet (an earlier event of its conversation
/// is still owed, or its endpoint is at its concurrency limit) waits before it is looked
/// at again.
pub const WEBHOOK_HOLD: Duration = Duration::from_secs(1);

/// `whatsapp.hold_max_days`' default, for settings built without loading.
const DEFAULT_WHATSAPP_HOLD: Duration = Duration::from_secs(7 * 86_400);

/// Where a retried message waits: the index into the retry ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryRung(pub usize);

impl Topology {
    pub fn new(settings: &AmqpSettings) -> Self {
        Self {
            prefix: settings.prefix.clone(),
            delivery_limit: settings.delivery_limit,
            work_shards: settings.work_shards.max(1),
            retry_delays: settings.retry_delays.clone(),
            archive_max_age: settings.archive_max_age.clone(),
            webhook_waits: webhook_waits(&settings.webhook_schedule),
            whatsapp_hold: if settings.whatsapp_hold.is_zero() {
                DEFAULT_WHATSAPP_HOLD
            } else {
                settings.whatsapp_hold
            },
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// Topic exchange every channel publishes envelopes to (`<channel>.<client_id>`).
    pub fn inbound_exchange(&self) -> String {
        format!("{}.inbound", self.prefix)
    }
    /// The way back into the work: retries, parked and requeued deliveries (workers
    /// forward each to its shard).
    pub fn inbound_work(&self) -> String {
        format!("{}.inbound.work", self.prefix)
    }
    /// How many work shards there are.
    pub fn work_shards(&self) -> u16 {
        self.work_shards
    }
    /// Work shard `n`'s queue.
    pub fn work_shard(&self, n: u16) -> String {
        format!("{}.inbound.work.{n}", self.prefix)
    }
    /// The shard of a tenant's conversation (of the tenant, for an envelope naming
    /// none): a hash every process computes alike.
    pub fn shard_of(&self, client_id: ClientId, conversation: Option<ConversationId>) -> u16 {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&client_id.get().to_le_bytes());
        key[8..].copy_from_slice(&conversation.map_or(0, ConversationId::get).to_le_bytes());
        let hash = xxhash_rust::xxh3::xxh3_64(&key);
        u16::try_from(hash % u64::from(self.work_shards)).unwrap_or(0)
    }
    /// The routing key of an envelope on the inbound exchange.
    pub fn envelope_routing_key(
        &self,
        channel: MsgChannel,
        client_id: ClientId,
        conversation: Option<ConversationId>,
    ) -> String {
        format!(
            "{channel}.{client_id}.{}",
            self.shard_of(client_id, conversation)
        )
    }
    /// The retry ladder's delays, shortest first.
    pub fn retry_delays(&self) -> &[Duration] {
        &self.retry_delays
    }
    pub fn retry_queue(&self, rung: RetryRung) -> Option<String> {
        self.retry_delays
            .get(rung.0)
            .map(|d| format!("{}.retry.{}s", self.prefix, d.as_secs()))
    }
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    pub fn dead_queue(&self) -> String {
        format!("{}.dead.q", self.prefix)
    }
    /// Topic exchange replies are published to, routing key = channel (or `replay`).
    pub fn outbound_exchange(&self) -> String {
        format!("{}.outbound", self.prefix)
    }
    pub fn outbound_queue(&self, channel: MsgChannel) -> String {
        format!("{}.outbound.{}", self.prefix, channel.as_str())
    }
    /// Where a WhatsApp reply held for a closed window waits out `whatsapp.hold_max_days`
    /// (named by it, so a changed setting declares a new queue), then returns to the
    /// channel's outbound queue to be expired if it is still held.
    pub fn whatsapp_held_queue(&self) -> String {
        format!(
            "{}.outbound.whatsapp.held.{}s",
            self.prefix,
            self.whatsapp_hold.as_secs()
        )
    }
    pub fn replay_queue(&self) -> String {
        format!("{}.outbound.replay", self.prefix)
    }
    pub fn archive(&self) -> String {
        format!("{}.archive", self.prefix)
    }
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The queue webhook deliveries are made from.
    pub fn webhook_work(&self) -> String {
        format!("{}.webhooks", self.prefix)
    }
    /// Where a webhook delivery waits `wait` (rounded up to a declared wait) before it
    /// returns to [`Self::webhook_work`].
    pub fn webhook_wait_queue(&self, wait: Duration) -> String {
        let declared = self
            .webhook_waits
            .iter()
            .find(|w| **w >= wait)
            .or(self.webhook_waits.last())
            .copied()
            .unwrap_or(WEBHOOK_HOLD);
        format!("{}.webhooks.wait.{}s", self.prefix, declared.as_secs())
    }

    /// Every queue, for tooling and clean-up.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![self.inbound_work(), self.dead_queue(), self.webhook_work()];
        queues.extend((0..self.work_shards).map(|n| self.work_shard(n)));
        queues.extend(
            self.webhook_waits
                .iter()
                .map(|w| self.webhook_wait_queue(*w)),
        );
        queues.extend((0..self.retry_delays.len()).filter_map(|i| self.retry_queue(RetryRung(i))));
        queues.extend(MsgChannel::ALL.iter().map(|c| self.outbound_queue(*c)));
        queues.push(self.whatsapp_held_queue());
        queues.push(self.replay_queue());
        queues.push(self.archive());
        queues
    }

    fn exchanges(&self) -> Vec<String> {
        vec![
            self.inbound_exchange(),
            self.dead_exchange(),
            self.outbound_exchange(),
            self.events_exchange(),
        ]
    }

    /// Declares everything. Idempotent.
    pub(crate) async fn declare(&self, ch: &Channel) -> Result<()> {
        for exchange in self.exchanges() {
            ch.exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| declare_error(&exchange, e))?;
        }

        // Work queue: a quorum queue (replicated, poison-message aware). The delivery limit
        // catches crash loops; dead letters go to <prefix>.dead at-least-once, which needs
        // reject-publish overflow (a full queue refuses publishes, and the publisher sees
        // a nack, instead of dropping the oldest message).
        let work = || {
            let mut args = quorum_args();
            args.insert("x-delivery-limit".into(), long(self.delivery_limit));
            dead_letter_to(&mut args, &self.dead_exchange(), None);
            args
        };
        for n in 0..self.work_shards {
            let mut args = work();
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            self.queue(ch, &self.work_shard(n), args).await?;
            self.bind(
                ch,
                &self.work_shard(n),
                &self.inbound_exchange(),
                &format!("*.*.{n}"),
            )
            .await?;
        }
        // The way back in. Before the shards it was bound `#`: that binding goes (or every
        // envelope would be worked twice), and envelopes of older publishers (two-word
        // keys) still come here to be forwarded.
        self.queue(ch, &self.inbound_work(), work()).await?;
        ch.queue_unbind(
            self.inbound_work().as_str().into(),
            self.inbound_exchange().as_str().into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_error(&self.inbound_work(), e))?;
        self.bind(ch, &self.inbound_work(), &self.inbound_exchange(), "*.*")
            .await?;

        // Retry ladder: each rung holds messages for its TTL, then dead-letters them
        // through the default exchange straight into the work queue, so a retry does not
        // pass through the inbound exchange (and the archive) a second time.
        for (i, delay) in self.retry_delays.iter().enumerate() {
            let Some(name) = self.retry_queue(RetryRung(i)) else {
                continue;
            };
            let mut args = quorum_args();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
            );
            dead_letter_to(&mut args, "", Some(&self.inbound_work()));
            self.queue(ch, &name, args).await?;
        }

        // Dead letters: kept until an operator inspects, requeues or purges them.
        self.queue(ch, &self.dead_queue(), quorum_args()).await?;
        self.bind(ch, &self.dead_queue(), &self.dead_exchange(), "#")
            .await?;

        // Outbound: one queue per channel (routing key = channel), plus dry-run replays.
        for channel in MsgChannel::ALL {
            let mut args = quorum_args();
            args.insert("x-delivery-limit".into(), long(self.delivery_limit));
            dead_letter_to(&mut args, &self.dead_exchange(), None);
            let queue = self.outbound_queue(channel);
            self.queue(ch, &queue, args).await?;
            self.bind(ch, &queue, &self.outbound_exchange(), channel.as_str())
                .await?;
        }
        let mut held = quorum_args();
        held.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(
                i64::try_from(self.whatsapp_hold.as_millis()).unwrap_or(i64::MAX),
            ),
        );
        dead_letter_to(
            &mut held,
            "",
            Some(&self.outbound_queue(MsgChannel::Whatsapp)),
        );
        self.queue(ch, &self.whatsapp_held_queue(), held).await?;
        self.queue(ch, &self.replay_queue(), quorum_args()).await?;
        self.bind(
            ch,
            &self.replay_queue(),
            &self.outbound_exchange(),
            "replay",
        )
        .await?;

        // Webhooks: deliveries are made from one queue; each wait (a retry's delay, or a
        // hold while an earlier event is owed) is a queue whose TTL returns the delivery
        // to it through the default exchange.
        let mut webhooks = quorum_args();
        webhooks.insert("x-delivery-limit".into(), long(self.delivery_limit));
        dead_letter_to(&mut webhooks, &self.dead_exchange(), None);
        self.queue(ch, &self.webhook_work(), webhooks).await?;
        for wait in &self.webhook_waits {
            let mut args = quorum_args();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
            );
            dead_letter_to(&mut args, "", Some(&self.webhook_work()));
            self.queue(ch, &self.webhook_wait_queue(*wait), args)
                .await?;
        }

        // Archive: a stream holding every envelope and reply for `archive_max_age`; the
        // source of `chatfleet replay` (read by timestamp with x-stream-offset).
        let mut archive = FieldTable::default();
        archive.insert("x-queue-type".into(), string("stream"));
        archive.insert("x-max-age".into(), string(&self.archive_max_age));
        self.queue(ch, &self.archive(), archive).await?;
        self.bind(ch, &self.archive(), &self.inbound_exchange(), "#")
            .await?;
        self.bind(ch, &self.archive(), &self.outbound_exchange(), "#")
            .await?;
        Ok(())
    }

    /// Deletes every queue and exchange under this prefix (test clean-up, `chatfleet`
    /// tooling). Never called by the product itself.
    pub(crate) async fn delete(&self, ch: &Channel) -> Result<()> {
        for queue in self.queues() {
            ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| Error::broker(format!("deleting {queue}"), e))?;
        }
        for exchange in self.exchanges() {
            ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|e| Error::broker(format!("deleting {exchange}"), e))?;
        }
        Ok(())
    }

    async fn queue(&self, ch: &Channel, name: &str, args: FieldTable) -> Result<()> {
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map_err(|e| declare_error(name, e))?;
        Ok(())
    }

    async fn bind(&self, ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<()> {
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_error(&format!("{queue} <- {exchange} ({key})"), e))
    }
}

/// The distinct non-zero delays of the schedule and the hold, ascending.
fn webhook_waits(schedule: &[Duration]) -> Vec<Duration> {
    let mut waits: Vec<Duration> = schedule
        .iter()
        .copied()
        .filter(|d| !d.is_zero())
        .chain([WEBHOOK_HOLD])
        .map(|d| Duration::from_secs(d.as_secs().max(1)))
        .collect();
    waits.sort();
    waits.dedup();
    waits
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("quorum"));
    args
}

fn dead_letter_to(args: &mut FieldTable, exchange: &str, routing_key: Option<&str>) {
    args.insert("x-dead-letter-exchange".into(), string(exchange));
    if let Some(key) = routing_key {
        args.insert("x-dead-letter-routing-key".into(), string(key));
    }
    args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
    args.insert("x-overflow".into(), string("reject-publish"));
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn long(n: u32) -> AMQPValue {
    AMQPValue::LongLongInt(i64::from(n))
}

fn declare_error(what: &str, e: lapin::Error) -> Error {
    Error::broker(
        format!(
            "declaring {what} (an existing queue with other arguments must be migrated, not redeclared)"
        ),
        e,
    )
}
