//! The chatfleet worker. The journey of a message through it:
//!
//! 1. [`consume`] receives a delivery from `<prefix>.inbound.work` (manual ack, bounded
//!    prefetch) and queues it behind earlier turns of the same conversation.
//! 2. The envelope is decoded; an undecodable one is dead-lettered at once.
//! 3. The tenant's client row, configuration and active agent modes are loaded.
//! 4. The conversation is found or created, and the user message is recorded once (the
//!    envelope id is the idempotency key). A turn that was already answered republishes
//!    its stored reply and stops there.
//! 5. A tenant that is not active gets no LLM call: the message stays recorded.
//! 6. The last `max_context_turns` turns are read and the prompt is assembled
//!    ([`prompt`], DESIGN.md §8).
//! 7. The tenant's `llm_model` is called at its `llm_temperature` ([`llm`]).
//! 8. The reply is stored together with the user turn's new state (only if the turn is
//!    still unanswered: one reply per turn), then published with a confirm to
//!    `<prefix>.outbound` with the channel as routing key.
//! 9. Only then is the delivery acked. A failure's [`error::Disposition`] decides between
//!    the retry ladder and the dead-letter queue.

mod consume;
pub mod error;
pub mod llm;
pub mod prompt;
mod turn;

use std::sync::Arc;
use std::time::Duration;

use shared::db::Db;
use shared::mq::{Broker, Publisher, Topology};
use shared::settings::{LlmSettings, Settings};
use tokio_util::sync::CancellationToken;

use crate::llm::LlmClient;

/// What every turn needs.
pub(crate) struct Ctx {
    db: Db,
    publisher: Publisher,
    broker: Broker,
    llm: LlmClient,
    llm_settings: LlmSettings,
}

impl Ctx {
    fn topology(&self) -> &Topology {
        self.broker.topology()
    }
}

/// Runs a worker until `shutdown` fires, then drains in-flight turns (up to
/// `worker.drain_timeout_s`) and returns. Expects migrations to have been applied.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let db = Db::connect(&settings.database).await?;
    let broker = Broker::connect(&settings.amqp, "chatfleet-worker").await?;
    broker.declare_topology().await?;
    let publisher = broker.publisher().await?;
    let ctx = Arc::new(Ctx {
        db: db.clone(),
        publisher,
        broker: broker.clone(),
        llm: LlmClient::new(&settings.llm),
        llm_settings: settings.llm.clone(),
    });
    consume::run(
        ctx,
        broker.clone(),
        settings.amqp.prefetch,
        Duration::from_secs(settings.worker.drain_timeout_s),
        shutdown,
    )
    .await;
    broker.close().await;
    db.close().await;
    Ok(())
}
