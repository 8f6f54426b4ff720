//! Layered settings: the embedded defaults (`settings.default.toml`, commented), then
//! `deploy/config/<env>.toml`, then `CHATFLEET__SECTION__KEY` environment variables.
//!
//! [`Settings::load`] parses every value into what it means ([`parse`]: durations,
//! the environment), checks what parsing cannot ([`check`]: ranges, URLs, relations between
//! keys) and fails at start-up with a message that names the offending key. Secrets are wrapped in [`Secret`], whose `Debug` is redacted. Pass
//! components the section they need; there is no global settings object.

mod check;
mod llm;
mod parse;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::pii::Secret;
use crate::tenant::Plan;

pub use llm::{
    EmbeddingsSettings, LlmSettings, MinutePrice, ProviderKind, ProviderSettings, SpeechSettings,
    TokenPrice,
};
pub use parse::Environment;

const DEFAULTS: &str = include_str!("settings.default.toml");
const DEV_ENCRYPTION_KEY: &str = "ZGV2LW9ubHktZW5jcnlwdGlvbi1rZXktMzItYnl0ZSE=";
const DEV_ADMIN_TOKEN: &str = "dev-admin-token-change-me";
const DEV_SESSION_KEY: &str = "ZGV2LW9ubHktc2Vzc2lvbi1rZXktMzItYnl0ZXMhISE=";

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Which deployment this is (`$CHATFLEET_ENV`, default `local`).
    pub env: Environment,
    pub http: HttpSettings,
    pub api: ApiSettings,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub llm: LlmSettings,
    pub embeddings: EmbeddingsSettings,
    pub speech: SpeechSettings,
    pub vector: VectorSettings,
    pub whatsapp: WhatsappSettings,
    pub sessions: SessionSettings,
    pub stream: StreamSettings,
    pub tools: ToolsSettings,
    pub webhooks: WebhooksSettings,
    pub mobile: MobileSettings,
    pub admin: AdminSettings,
    pub security: SecuritySettings,
    pub tenancy: TenancySettings,
    pub plans: PlansSettings,
    pub worker: WorkerSettings,
    pub edge: EdgeSettings,
    pub telemetry: TelemetrySettings,
}

/// Streaming replies to SSE clients.
#[derive(Debug, Clone, Deserialize)]
pub struct StreamSettings {
    /// At most one delta per turn this often.
    #[serde(rename = "delta_interval_ms", deserialize_with = "parse::millis")]
    pub delta_interval: Duration,
}

/// Tenants' tools: the HTTP endpoints their bots call through function calling.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolsSettings {
    /// Most tool definitions one tenant may have.
    pub max_per_tenant: u32,
    /// Most rounds of tool calls in one turn; then the model answers without tools.
    pub max_rounds: u32,
    /// Whether tool URLs may be `http://` (else `https://` only).
    pub allow_http: bool,
    /// Private networks tools may reach after all (CIDRs): loopback, private, link-local,
    /// CGNAT and metadata addresses are refused otherwise.
    pub allowed_private_networks: Vec<String>,
}

impl ToolsSettings {
    /// [`Self::allowed_private_networks`] parsed (validated at load).
    pub fn allowed_networks(&self) -> Vec<ipnet::IpNet> {
        parse::networks(&self.allowed_private_networks)
    }
}

/// Tenants' webhooks: events POSTed to their endpoints, signed, retried through RabbitMQ.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhooksSettings {
    /// Seconds before each attempt (the first is usually 0); after the last attempt
    /// fails the delivery is dead-lettered.
    #[serde(deserialize_with = "parse::seconds_list")]
    pub retry_schedule: Vec<Duration>,
    /// An endpoint failing this long (seconds) is disabled.
    #[serde(deserialize_with = "parse::positive_seconds")]
    pub disable_after: Duration,
    /// How long a later event of a conversation waits for an earlier one still being
    /// retried before it goes out marked `out_of_order`.
    #[serde(rename = "order_wait_s", deserialize_with = "parse::positive_seconds")]
    pub order_wait: Duration,
    /// An attempt with no answer within this is failed.
    #[serde(rename = "timeout_s", deserialize_with = "parse::positive_seconds")]
    pub timeout: Duration,
    /// Most endpoints one tenant may have.
    pub max_per_tenant: u32,
    /// Most attempts in flight to one endpoint, and to one tenant's endpoints together.
    pub concurrency_per_endpoint: u32,
    pub concurrency_per_tenant: u32,
    /// Whether endpoint URLs may be `http://` (else `https://` only).
    pub allow_http: bool,
    /// Private networks endpoints may be in after all (CIDRs).
    pub allowed_private_networks: Vec<String>,
}

impl WebhooksSettings {
    /// [`Self::allowed_private_networks`] parsed (validated at load).
    pub fn allowed_networks(&self) -> Vec<ipnet::IpNet> {
        parse::networks(&self.allowed_private_networks)
    }
}

/// Widget and mobile sessions.
#[derive(Debug, Clone, Deserialize)]
pub struct SessionSettings {
    #[serde(rename = "ttl_s", deserialize_with = "parse::positive_seconds")]
    pub ttl: Duration,
}

/// The mobile channel's push notifications.
#[derive(Debug, Clone, Deserialize)]
pub struct MobileSettings {
    pub push_url: String,
    #[serde(
        rename = "push_timeout_s",
        deserialize_with = "parse::positive_seconds"
    )]
    pub push_timeout: Duration,
    pub push_attempts: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TenancySettings {
    pub inactive_notice: String,
    #[serde(rename = "config_ttl_s", deserialize_with = "parse::positive_seconds")]
    pub config_ttl: Duration,
}

/// One plan's message rate and its share of a saturated fleet.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct PlanLimits {
    pub messages_per_minute: u32,
    pub burst: u32,
    /// Widget and mobile sessions the tenant's users may open per minute, across
    /// replicas.
    pub sessions_per_minute: u32,
    /// A tenant's weight when tenants wait for the same LLM slots: slots go to the
    /// waiting tenant holding the fewest per unit of weight.
    pub weight: u32,
    /// Most LLM tokens (prompt and completion) the tenant's turns spend in a day of its
    /// timezone; unset: no limit. Past it, messages wait like rate-limited ones.
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PlansSettings {
    pub starter: PlanLimits,
    pub growth: PlanLimits,
    pub enterprise: PlanLimits,
}

impl PlansSettings {
    pub fn limits(&self, plan: Plan) -> &PlanLimits {
        match plan {
            Plan::Starter => &self.starter,
            Plan::Growth => &self.growth,
            Plan::Enterprise => &self.enterprise,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub bind: SocketAddr,
    /// Long-polls one ingress holds at once (503 `overloaded` beyond).
    pub max_long_polls: usize,
    /// Requests one ingress serves at once (503 `overloaded` beyond).
    pub max_in_flight: usize,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` names the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(
        rename = "request_timeout_s",
        deserialize_with = "parse::positive_seconds"
    )]
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub max_text_bytes: usize,
    #[serde(rename = "max_wait_s", deserialize_with = "parse::positive_seconds")]
    pub max_wait: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: Secret<String>,
    /// The database servers tenants are spread over, each `name=url`; the first is the
    /// home (the tenant directory, operators, audit). When set, `url` is not used.
    #[serde(default)]
    pub shards: Vec<Secret<String>>,
    pub max_connections: u32,
}

/// One database server of [`DatabaseSettings::shard_list`].
#[derive(Debug, Clone)]
pub struct ShardTarget {
    pub name: String,
    pub url: Secret<String>,
}

/// The name of the one shard a deployment without `database.shards` has.
pub const HOME_SHARD: &str = "home";

impl DatabaseSettings {
    /// The shards, the home first: `database.shards`, or `database.url` named `home`.
    /// Entries without `name=` are named by position (validation refuses them).
    pub fn shard_list(&self) -> Vec<ShardTarget> {
        if self.shards.is_empty() {
            return vec![ShardTarget {
                name: HOME_SHARD.into(),
                url: self.url.clone(),
            }];
        }
        self.shards
            .iter()
            .enumerate()
            .map(|(i, entry)| match entry.expose().split_once('=') {
                Some((name, url)) if !name.contains(':') => ShardTarget {
                    name: name.trim().to_owned(),
                    url: Secret::new(url.trim().to_owned()),
                },
                _ => ShardTarget {
                    name: format!("#{}", i + 1),
                    url: entry.clone(),
                },
            })
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    pub url: Secret<String>,
    /// The nodes of a RabbitMQ cluster, tried in order on connect and reconnect (from the
    /// one that answered last); when set, `url` is not used.
    #[serde(default)]
    pub urls: Vec<Secret<String>>,
    pub prefix: String,
    pub prefetch: u16,
    /// Work queues a conversation's messages are spread over by a hash of (tenant,
    /// conversation); each is consumed by one worker at a time (see `mq::topology`).
    pub work_shards: u16,
    pub delivery_limit: u32,
    #[serde(
        rename = "retry_delays_s",
        deserialize_with = "parse::positive_seconds_list"
    )]
    pub retry_delays: Vec<Duration>,
    pub archive_max_age: String,
    /// `webhooks.retry_schedule`, copied here at load: the webhook delay queues are part
    /// of the topology.
    #[serde(skip)]
    pub webhook_schedule: Vec<Duration>,
    /// `whatsapp.hold_max_days`, copied here at load: held WhatsApp replies wait in a
    /// queue with that TTL.
    #[serde(skip)]
    pub whatsapp_hold: Duration,
    #[serde(
        rename = "confirm_timeout_s",
        deserialize_with = "parse::positive_seconds"
    )]
    pub confirm_timeout: Duration,
}

impl AmqpSettings {
    /// The broker nodes to connect to, in the order to try them: `urls`, or `url` alone.
    pub fn nodes(&self) -> Vec<Secret<String>> {
        if self.urls.is_empty() {
            vec![self.url.clone()]
        } else {
            self.urls.clone()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    pub url: Secret<String>,
    pub prefix: String,
    /// Multiplexed connections each process spreads its commands over.
    pub pool_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VectorSettings {
    pub url: String,
    /// Sent as `Authorization: Bearer` and `X-Chroma-Token` when not empty.
    #[serde(default)]
    pub token: Secret<String>,
    pub prefix: String,
    #[serde(rename = "timeout_s", deserialize_with = "parse::positive_seconds")]
    pub timeout: Duration,
    pub chunk_chars: usize,
    pub chunk_overlap: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WhatsappSettings {
    pub graph_base_url: String,
    pub api_version: String,
    pub app_secret: Secret<String>,
    pub verify_token: Secret<String>,
    pub messages_per_second: u32,
    /// Largest webhook body read (413 beyond, without reading the rest).
    pub max_body_bytes: usize,
    /// Largest media file (voice note, image) fetched from the Graph API, by its
    /// declared `file_size` and while it streams.
    pub max_media_bytes: u64,
    /// The host (and port, if not the scheme's) media URLs from the Graph API must be on;
    /// any other is refused.
    pub media_host: String,
    /// How long a reply waits for a closed 24-hour window to open again before it
    /// expires (`delivery.expired`).
    #[serde(rename = "hold_max_days", deserialize_with = "parse::positive_days")]
    pub hold_max: Duration,
}

/// Rates at the edge for callers nobody vouches for (the widget's and the mobile app's
/// public keys), shared by every ingress replica through Redis.
#[derive(Debug, Clone, Deserialize)]
pub struct EdgeSettings {
    /// Widget and mobile sessions one client address may open per minute.
    pub sessions_per_ip_per_minute: u32,
    /// Messages one widget or mobile session may send per minute.
    pub sends_per_session_per_minute: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    /// The bootstrap token; empty: only operators' tokens are accepted.
    pub token: Secret<String>,
    /// The admin API's and `/metrics`' own listener; `None`: on `http.bind`.
    #[serde(deserialize_with = "parse::optional_address")]
    pub bind: Option<SocketAddr>,
    /// Failed admin authentications per client address per minute before a minute of 429s.
    pub failed_auth_per_minute: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SecuritySettings {
    pub encryption_key: Secret<String>,
    /// Replaces `encryption_key` when not empty: the first seals, all open.
    #[serde(default)]
    pub encryption_keys: Vec<Secret<String>>,
    /// Signs session tokens and cursors: the first signs, all verify.
    pub session_keys: Vec<Secret<String>>,
}

impl SecuritySettings {
    /// The encryption key ring, first the key that seals (validated at load time).
    pub fn encryption_ring(&self) -> Vec<[u8; 32]> {
        self.encryption_key_texts()
            .filter_map(|k| decode_key(k.expose()))
            .collect()
    }

    /// The session key ring, first the key that signs (validated at load time).
    pub fn session_ring(&self) -> Vec<[u8; 32]> {
        self.session_keys
            .iter()
            .filter_map(|k| decode_key(k.expose()))
            .collect()
    }

    /// The configured encryption keys as written: `encryption_keys`, or else
    /// `encryption_key` alone.
    fn encryption_key_texts(&self) -> impl Iterator<Item = &Secret<String>> {
        let ring: &[Secret<String>] = if self.encryption_keys.is_empty() {
            std::slice::from_ref(&self.encryption_key)
        } else {
            &self.encryption_keys
        };
        ring.iter()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    #[serde(
        rename = "drain_timeout_s",
        deserialize_with = "parse::positive_seconds"
    )]
    pub drain_timeout: Duration,
    #[serde(rename = "lock_ttl_s", deserialize_with = "parse::positive_seconds")]
    pub lock_ttl: Duration,
    #[serde(rename = "lock_wait_s", deserialize_with = "parse::positive_seconds")]
    pub lock_wait: Duration,
    /// Deliveries of one tenant a worker holds at once while other tenants use it; a
    /// delivery past that which would start a new turn waits in the retry ladder.
    pub tenant_max_held: usize,
    pub metrics_bind: SocketAddr,
    /// How often the retention sweeper runs (one worker at a time across the fleet).
    #[serde(
        rename = "retention_interval_s",
        deserialize_with = "parse::positive_seconds"
    )]
    pub retention_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    pub format: LogFormat,
    pub filter: String,
    /// An OTLP/HTTP collector (`http://collector:4318`): spans are exported to its
    /// `/v1/traces`; empty: no traces.
    #[serde(default)]
    pub otlp_endpoint: String,
    /// The share of traces started here that are kept (a trace continued from a caller's
    /// `traceparent` follows the caller's decision).
    pub sample_ratio: f64,
}

/// Where settings come from, besides the embedded defaults.
#[derive(Debug, Clone)]
pub struct Sources {
    /// `<env>` selects `<config_dir>/<env>.toml` (optional file).
    pub env: String,
    pub config_dir: PathBuf,
    /// `CHATFLEET__…` variables (normally the process environment).
    pub vars: HashMap<String, String>,
}

impl Sources {
    /// `$CHATFLEET_ENV` (default `local`), `$CHATFLEET_CONFIG_DIR` (default
    /// `deploy/config`) and the process environment.
    pub fn from_process() -> Self {
        Self {
            env: std::env::var("CHATFLEET_ENV").unwrap_or_else(|_| "local".into()),
            config_dir: std::env::var("CHATFLEET_CONFIG_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from("deploy/config")),
            vars: std::env::vars()
                .filter(|(k, _)| k.starts_with("CHATFLEET__"))
                .collect(),
        }
    }
}

impl Settings {
    /// Loads and validates the settings of this process.
    pub fn load() -> Result<Self> {
        Self::load_from(Sources::from_process())
    }

    pub fn load_from(sources: Sources) -> Result<Self> {
        let env_file: PathBuf = sources.config_dir.join(format!("{}.toml", sources.env));
        let raw = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from(Path::new(&env_file)).required(false))
            .add_source(
                config::Environment::with_prefix("CHATFLEET")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("amqp.retry_delays_s")
                    .with_list_parse_key("amqp.urls")
                    .with_list_parse_key("database.shards")
                    .with_list_parse_key("http.trusted_proxies")
                    .with_list_parse_key("llm.tenant_base_url_allowlist")
                    .with_list_parse_key("tools.allowed_private_networks")
                    .with_list_parse_key("webhooks.allowed_private_networks")
                    .with_list_parse_key("webhooks.retry_schedule")
                    .with_list_parse_key("security.encryption_keys")
                    .with_list_parse_key("security.session_keys")
                    .source(Some(sources.vars)),
            )
            .set_override("env", sources.env.clone())
            .map_err(|e| Error::Settings(e.to_string()))?
            .build()
            .map_err(|e| Error::Settings(e.to_string()))?;
        let mut settings: Settings = raw
            .try_deserialize()
            .map_err(|e| Error::Settings(e.to_string()))?;
        settings.amqp.webhook_schedule = settings.webhooks.retry_schedule.clone();
        settings.amqp.whatsapp_hold = settings.whatsapp.hold_max;
        for provider in settings.llm.providers.values_mut() {
            if provider.max_concurrency == 0 {
                provider.max_concurrency = provider.kind.default_max_concurrency();
            }
        }
        settings.validate()?;
        Ok(settings)
    }
}

fn decode_key(encoded: &str) -> Option<[u8; 32]> {
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?
        .try_into()
        .ok()
}

#[cfg(test)]
mod tests;
