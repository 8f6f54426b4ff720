//! The chatfleet worker. The journey of a message through it:
//!
//! 1. [`consume`] receives a delivery from `<prefix>.inbound.work` (manual ack, bounded
//!    prefetch) and queues it behind earlier turns of the same conversation; what queued
//!    up meanwhile is handled together.
//! 2. The envelope is decoded; an undecodable one is dead-lettered at once. A delivery
//!    whose message an earlier turn here already answered is acked at once
//!    ([`answered`]).
//! 3. The tenant's client row, configuration and active agent modes are loaded from the
//!    config cache (in-process, then Redis, then MariaDB; invalidated on every change).
//! 4. The conversation is found or created, and the user message is recorded once (the
//!    envelope id is the idempotency key; the API, widget and mobile channels recorded
//!    it at acceptance). Then the worker takes the conversation's lock
//!    in Redis (no other worker runs a turn of it meanwhile); a message that was already
//!    answered has its stored reply republished. The turn answers every unanswered
//!    message of the conversation at once, after the tenant's debounce window.
//! 5. A message matching the tenant's `human_handoff_phrase` hands the conversation to a
//!    human (event + handoff notice); while a human has it, messages are forwarded as
//!    events and the bot stays silent. A tenant that is not active gets no LLM call: the message stays recorded (and
//!    gets `tenancy.inactive_notice` when one is set). A tenant over its plan's rate
//!    waits in the retry ladder.
//! 6. The last `max_context_turns` turns and the tenant's `rag_top_k` closest knowledge
//!    chunks are read, and the prompt is assembled within the token budget ([`prompt`],
//!    DESIGN.md §8).
//! 7. The tenant's `llm_model` is called at its `llm_temperature` ([`llm`]).
//! 8. The reply is stored together with the user turn's new state (only if the turn is
//!    still unanswered: one reply per turn), then published with a confirm to
//!    `<prefix>.outbound` with the channel as routing key. A stored reply is in its
//!    conversation's mailbox already (API, widget, mobile), so the long-polls waiting on
//!    it are woken at once, before it is published, not after the channel's deliverer
//!    got it.
//! 9. Only then is the delivery acked. A failure's [`error::Disposition`] decides between
//!    the retry ladder and the dead-letter queue.

mod answered;
mod confirms;
mod consume;
pub mod error;
pub mod handoff;
mod inbox;
pub mod llm;
mod media;
mod ops;
pub mod prompt;
mod redact;
mod retention;
mod shards;
mod spend;
pub mod tool_sim;
mod tools;
mod turn;
mod window;

use std::sync::Arc;
use std::time::Duration;

use shared::cache::{
    Cache, ConversationIds, ConversationLocks, Mailboxes, StreamEvents, TenantConfigs, broadcast,
};
use shared::db::Db;
use shared::knowledge::Knowledge;
use shared::mq::{Broker, Publisher, Topology};
use shared::sealed::DataKeys;
use shared::settings::{LlmSettings, PlansSettings, Settings};
use tokio_util::sync::CancellationToken;

use crate::llm::LlmClient;

/// What every turn needs.
pub(crate) struct Ctx {
    db: Db,
    cache: Cache,
    conversations: Arc<ConversationIds>,
    configs: Arc<TenantConfigs>,
    locks: Arc<ConversationLocks>,
    /// Wakes long-polls on every ingress replica (the worker has no polls of its own).
    mailboxes: Arc<Mailboxes>,
    /// Shows turns live to streaming clients (typing, deltas).
    stream_events: Arc<StreamEvents>,
    delta_interval: Duration,
    lock_wait: Duration,
    publisher: Publisher,
    /// Opens the envelopes taken from the broker (sealed per conversation).
    data_keys: Arc<DataKeys>,
    confirms: confirms::Confirms,
    answered: answered::Answered,
    broker: Broker,
    llm: LlmClient,
    llm_settings: LlmSettings,
    /// Transcription prices, beside the LLM's (`speech.prices`).
    speech_settings: shared::settings::SpeechSettings,
    /// Opens tenants' own LLM keys.
    secrets: shared::secrets::SecretBox,
    plans: PlansSettings,
    inactive_notice: String,
    tokenizer: prompt::Tokenizer,
    knowledge: Knowledge,
    /// Calls tenants' tools.
    tools: tools::ToolRunner,
    /// Fetches and transcribes WhatsApp media.
    media: media::MediaReader,
}

impl Ctx {
    fn topology(&self) -> &Topology {
        self.broker.topology()
    }
    /// Emits webhook events (see [`shared::webhooks::Emitter`]).
    fn webhooks(&self) -> shared::webhooks::Emitter<'_> {
        shared::webhooks::Emitter::new(&self.db, &self.configs, &self.publisher)
    }
}

/// Runs a worker until `shutdown` fires, then drains in-flight turns (up to
/// `worker.drain_timeout_s`) and returns. Expects migrations to have been applied.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    shared::prometheus::install();
    let db = Db::connect(&settings.database).await?;
    let broker = Broker::connect(&settings.amqp, "chatfleet-worker").await?;
    broker.declare_topology().await?;
    let cache = Cache::connect(&settings.redis).await?;
    let data_keys = DataKeys::new(
        db.clone(),
        shared::secrets::SecretBox::new(&settings.security.encryption_ring()),
        cache.clone(),
    );
    let publisher = broker.publisher().await?.sealing(data_keys.clone());
    let configs = TenantConfigs::new(db.clone(), cache.clone(), settings.tenancy.config_ttl);
    let locks = ConversationLocks::new(cache.clone(), settings.worker.lock_ttl);
    let conversations = ConversationIds::new(db.clone(), cache.clone());
    broadcast::start(
        cache.clone(),
        vec![
            configs.clone(),
            locks.clone(),
            conversations.clone(),
            data_keys.clone(),
        ],
        shutdown.clone(),
    );
    let (confirms, confirms_writer) = confirms::Confirms::start(db.clone());
    let ctx = Arc::new(Ctx {
        db: db.clone(),
        conversations,
        mailboxes: Mailboxes::new(cache.clone()),
        stream_events: StreamEvents::new(cache.clone()),
        delta_interval: settings.stream.delta_interval,
        cache,
        configs,
        locks,
        lock_wait: settings.worker.lock_wait,
        publisher,
        data_keys,
        confirms,
        answered: answered::Answered::new(),
        broker: broker.clone(),
        llm: LlmClient::new(&settings.llm).with_tenant_networks(settings.tools.allowed_networks()),
        llm_settings: settings.llm.clone(),
        speech_settings: settings.speech.clone(),
        secrets: shared::secrets::SecretBox::new(&settings.security.encryption_ring()),
        plans: settings.plans.clone(),
        inactive_notice: settings.tenancy.inactive_notice.clone(),
        tokenizer: prompt::Tokenizer::new()?,
        knowledge: Knowledge::new(&settings.vector, &settings.embeddings, &settings.llm)?,
        tools: tools::ToolRunner::new(
            &settings.tools,
            shared::secrets::SecretBox::new(&settings.security.encryption_ring()),
        )?,
        media: media::MediaReader::new(&settings)?,
    });
    let ops = ops::serve(ctx.clone(), settings.worker.metrics_bind, shutdown.clone()).await?;
    retention::start(
        ctx.clone(),
        settings.worker.retention_interval,
        shutdown.clone(),
    );
    tracing::info!(addr = %ops, "metrics, health and readiness served");
    consume::run(
        ctx.clone(),
        broker.clone(),
        settings.amqp.prefetch,
        settings.worker.tenant_max_held,
        settings.worker.drain_timeout,
        shutdown,
    )
    .await;
    confirms_writer.finish().await;
    ctx.publisher.close().await;
    broker.close().await;
    db.close().await;
    Ok(())
}
