//! The state every handler and deliverer shares.

use std::sync::Arc;

use shared::cache::{
    AccountOwners, ApiKeyOwners, Cache, ConversationIds, Mailboxes, TenantConfigs,
};
use shared::db::Db;
use shared::knowledge::Knowledge;
use shared::mq::{Broker, Publisher};
use shared::sealed::DataKeys;
use shared::secrets::SecretBox;
use shared::settings::{ApiSettings, MobileSettings, WhatsappSettings};
use tokio_util::sync::CancellationToken;

use crate::channels::accepting::Acceptor;
use crate::channels::session::SessionKeys;

#[derive(Debug, Clone)]
pub(crate) struct AppState {
    inner: Arc<Services>,
}

/// Everything handlers and deliverers share; built once, in [`crate::start`].
#[derive(Debug)]
pub(crate) struct Services {
    pub db: Db,
    /// Commits accepted messages in rounds.
    pub acceptor: Acceptor,
    pub broker: Broker,
    pub publisher: Publisher,
    pub cache: Cache,
    pub mailboxes: Arc<Mailboxes>,
    /// Turns' live events (typing, deltas) for the SSE streams.
    pub stream_events: Arc<shared::cache::StreamEvents>,
    pub configs: Arc<TenantConfigs>,
    pub owners: Arc<AccountOwners>,
    pub api_keys: Arc<ApiKeyOwners>,
    pub conversations: Arc<ConversationIds>,
    pub api: ApiSettings,
    pub whatsapp: WhatsappSettings,
    pub mobile: MobileSettings,
    /// Widget and mobile session tokens and cursors.
    pub sessions: SessionKeys,
    pub session_ttl: std::time::Duration,
    pub admin: shared::settings::AdminSettings,
    pub secrets: SecretBox,
    /// Opens the replies the deliverers take from the broker (sealed per conversation).
    pub data_keys: Arc<DataKeys>,
    /// Tool definitions' limits and URL rules.
    pub tools: shared::settings::ToolsSettings,
    /// Webhook endpoints' limits, URL rules and retry schedule.
    pub webhooks: shared::settings::WebhooksSettings,
    /// The LLM providers tenants may bring keys for, their allowed base URLs and prices.
    pub llm: shared::settings::LlmSettings,
    /// Transcription prices (with the LLM's, the currency of usage and budgets).
    pub speech: shared::settings::SpeechSettings,
    pub knowledge: Knowledge,
    /// The edge's limits and trusted proxies.
    pub edge: crate::edge::Edge,
    /// Each plan's sessions per minute.
    pub plans: shared::settings::PlansSettings,
    /// A permit per long-poll held (`http.max_long_polls`).
    pub long_polls: Arc<tokio::sync::Semaphore>,
    /// A permit per request served (`http.max_in_flight`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub shutdown: CancellationToken,
}

impl AppState {
    pub(crate) fn new(services: Services) -> Self {
        Self {
            inner: Arc::new(services),
        }
    }
    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }
    pub(crate) fn acceptor(&self) -> &Acceptor {
        &self.inner.acceptor
    }
    pub(crate) fn broker(&self) -> &Broker {
        &self.inner.broker
    }
    pub(crate) fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }
    pub(crate) fn cache(&self) -> &Cache {
        &self.inner.cache
    }
    pub(crate) fn stream_events(&self) -> &shared::cache::StreamEvents {
        &self.inner.stream_events
    }

    pub(crate) fn mailboxes(&self) -> &Mailboxes {
        &self.inner.mailboxes
    }
    pub(crate) fn configs(&self) -> &TenantConfigs {
        &self.inner.configs
    }
    pub(crate) fn webhook_settings(&self) -> &shared::settings::WebhooksSettings {
        &self.inner.webhooks
    }
    pub(crate) fn llm_settings(&self) -> &shared::settings::LlmSettings {
        &self.inner.llm
    }
    /// The currency of every price, if any is set.
    pub(crate) fn currency(&self) -> Option<&str> {
        self.inner.llm.currency(&self.inner.speech)
    }
    /// Emits webhook events (see [`shared::webhooks::Emitter`]).
    pub(crate) fn webhooks(&self) -> shared::webhooks::Emitter<'_> {
        shared::webhooks::Emitter::new(&self.inner.db, &self.inner.configs, &self.inner.publisher)
    }
    pub(crate) fn mobile(&self) -> &MobileSettings {
        &self.inner.mobile
    }
    pub(crate) fn sessions(&self) -> &SessionKeys {
        &self.inner.sessions
    }
    pub(crate) fn session_ttl(&self) -> std::time::Duration {
        self.inner.session_ttl
    }
    pub(crate) fn whatsapp(&self) -> &WhatsappSettings {
        &self.inner.whatsapp
    }
    pub(crate) fn owners(&self) -> &AccountOwners {
        &self.inner.owners
    }
    pub(crate) fn api_keys(&self) -> &ApiKeyOwners {
        &self.inner.api_keys
    }
    pub(crate) fn conversations(&self) -> &ConversationIds {
        &self.inner.conversations
    }
    pub(crate) fn edge(&self) -> &crate::edge::Edge {
        &self.inner.edge
    }
    pub(crate) fn plans(&self) -> &shared::settings::PlansSettings {
        &self.inner.plans
    }
    pub(crate) fn api(&self) -> &ApiSettings {
        &self.inner.api
    }
    /// The bootstrap admin token; empty when none is set.
    pub(crate) fn admin_token(&self) -> &str {
        self.inner.admin.token.expose()
    }

    pub(crate) fn admin_failed_auth_per_minute(&self) -> u32 {
        self.inner.admin.failed_auth_per_minute
    }
    pub(crate) fn secrets(&self) -> &SecretBox {
        &self.inner.secrets
    }
    pub(crate) fn data_keys(&self) -> &DataKeys {
        &self.inner.data_keys
    }
    pub(crate) fn tools(&self) -> &shared::settings::ToolsSettings {
        &self.inner.tools
    }
    pub(crate) fn knowledge(&self) -> &Knowledge {
        &self.inner.knowledge
    }
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
    pub(crate) fn long_polls(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.inner.long_polls
    }
    pub(crate) fn in_flight(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.inner.in_flight
    }
}
