//! Layered settings: the embedded defaults (`settings.default.toml`, commented), then
//! `deploy/config/<env>.toml`, then `CHATFLEET__SECTION__KEY` environment variables.
//!
//! [`Settings::load`] validates everything at start-up and fails with a message that names
//! the offending key. Secrets are wrapped in [`Secret`], whose `Debug` is redacted. Pass
//! components the section they need; there is no global settings object.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::pii::Secret;
use crate::tenant::Plan;

const DEFAULTS: &str = include_str!("settings.default.toml");
const DEV_ENCRYPTION_KEY: &str = "ZGV2LW9ubHktZW5jcnlwdGlvbi1rZXktMzItYnl0ZSE=";
const DEV_ADMIN_TOKEN: &str = "dev-admin-token-change-me";

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// The environment name (`$CHATFLEET_ENV`, default `local`).
    #[serde(default)]
    pub env: String,
    pub http: HttpSettings,
    pub api: ApiSettings,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub llm: LlmSettings,
    pub embeddings: EmbeddingsSettings,
    pub vector: VectorSettings,
    pub whatsapp: WhatsappSettings,
    pub sessions: SessionSettings,
    pub mobile: MobileSettings,
    pub admin: AdminSettings,
    pub security: SecuritySettings,
    pub tenancy: TenancySettings,
    pub plans: PlansSettings,
    pub worker: WorkerSettings,
    pub telemetry: TelemetrySettings,
}

/// Widget and mobile sessions.
#[derive(Debug, Clone, Deserialize)]
pub struct SessionSettings {
    pub ttl_s: u64,
}

/// The mobile channel's push notifications.
#[derive(Debug, Clone, Deserialize)]
pub struct MobileSettings {
    pub push_url: String,
    pub push_timeout_s: u64,
    pub push_attempts: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TenancySettings {
    pub inactive_notice: String,
    pub config_ttl_s: u64,
}

/// One plan's message rate.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct PlanLimits {
    pub messages_per_minute: u32,
    pub burst: u32,
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
    pub request_timeout_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub max_text_bytes: usize,
    pub max_wait_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: Secret<String>,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    pub url: Secret<String>,
    pub prefix: String,
    pub prefetch: u16,
    pub delivery_limit: u32,
    pub retry_delays_s: Vec<u64>,
    pub archive_max_age: String,
    pub confirm_timeout_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    pub url: Secret<String>,
    pub prefix: String,
    pub pool_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LlmSettings {
    pub default_provider: String,
    pub default_context_window: u32,
    pub completion_reserve: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown_s: u64,
    #[serde(default)]
    pub context_windows: BTreeMap<String, u32>,
    pub providers: BTreeMap<String, ProviderSettings>,
}

impl LlmSettings {
    /// The context window (`num_ctx`) used for `model`.
    pub fn context_window(&self, model: &str) -> u32 {
        self.context_windows
            .get(model)
            .copied()
            .unwrap_or(self.default_context_window)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Ollama,
    Openai,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProviderSettings {
    pub kind: ProviderKind,
    pub base_url: String,
    #[serde(default)]
    pub api_key: Secret<String>,
    pub timeout_s: u64,
    pub max_concurrency: usize,
    #[serde(default)]
    pub stream: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingsSettings {
    pub provider: String,
    pub model: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VectorSettings {
    pub url: String,
    pub prefix: String,
    pub timeout_s: u64,
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
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    pub token: Secret<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SecuritySettings {
    pub encryption_key: Secret<String>,
}

impl SecuritySettings {
    /// The decoded 32-byte key (validated at load time).
    pub fn encryption_key_bytes(&self) -> [u8; 32] {
        decode_key(self.encryption_key.expose()).unwrap_or([0; 32])
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub drain_timeout_s: u64,
    pub lock_ttl_s: u64,
    pub lock_wait_s: u64,
    pub metrics_bind: SocketAddr,
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
                    .source(Some(sources.vars)),
            )
            .set_override("env", sources.env.clone())
            .map_err(|e| Error::Settings(e.to_string()))?
            .build()
            .map_err(|e| Error::Settings(e.to_string()))?;
        let settings: Settings = raw
            .try_deserialize()
            .map_err(|e| Error::Settings(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what deserialisation cannot; every message starts with the key.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, what: String| {
            if !ok {
                problems.push(format!("{key}: {what}"));
            }
        };
        check(
            self.api.max_text_bytes > 0,
            "api.max_text_bytes",
            "must be positive".into(),
        );
        check(
            (1..=300).contains(&self.api.max_wait_s),
            "api.max_wait_s",
            format!("must be 1..=300 seconds, got {}", self.api.max_wait_s),
        );
        check(
            self.http.request_timeout_s > self.api.max_wait_s,
            "http.request_timeout_s",
            "must be longer than api.max_wait_s, or long-polls are cut off".into(),
        );
        let db = self.database.url.expose();
        check(
            db.starts_with("mysql://") || db.starts_with("mariadb://"),
            "database.url",
            "must be a mysql:// URL".into(),
        );
        check(
            self.database.max_connections > 0,
            "database.max_connections",
            "must be positive".into(),
        );
        check(
            self.amqp.url.expose().starts_with("amqp://"),
            "amqp.url",
            "must be an amqp:// URL (this build has no AMQP TLS; terminate TLS in front of \
             the broker or build lapin with its rustls feature)"
                .into(),
        );
        check(
            is_name(&self.amqp.prefix),
            "amqp.prefix",
            format!(
                "must be 1-64 characters of a-z, 0-9, '-' or '_', got {:?}",
                self.amqp.prefix
            ),
        );
        check(
            (1..=10_000).contains(&self.amqp.prefetch),
            "amqp.prefetch",
            format!("must be 1..=10000, got {}", self.amqp.prefetch),
        );
        check(
            self.amqp.delivery_limit > 0,
            "amqp.delivery_limit",
            "must be positive".into(),
        );
        check(
            !self.amqp.retry_delays_s.is_empty() && self.amqp.retry_delays_s.iter().all(|d| *d > 0),
            "amqp.retry_delays_s",
            "must be a non-empty list of positive delays".into(),
        );
        check(
            is_duration(&self.amqp.archive_max_age),
            "amqp.archive_max_age",
            format!(
                "must look like 7D, 12h, 30m or 60s, got {:?}",
                self.amqp.archive_max_age
            ),
        );
        check(
            (60..=30 * 86_400).contains(&self.sessions.ttl_s),
            "sessions.ttl_s",
            format!("must be 60 s to 30 days, got {}", self.sessions.ttl_s),
        );
        check(
            (self.mobile.push_url.starts_with("http://")
                || self.mobile.push_url.starts_with("https://"))
                && self.mobile.push_url.contains("{project_id}"),
            "mobile.push_url",
            "must be an http(s) URL containing {project_id}".into(),
        );
        check(
            self.mobile.push_timeout_s > 0,
            "mobile.push_timeout_s",
            "must be positive".into(),
        );
        check(
            (1..=10).contains(&self.mobile.push_attempts),
            "mobile.push_attempts",
            format!("must be 1..=10, got {}", self.mobile.push_attempts),
        );
        check(
            self.amqp.confirm_timeout_s > 0,
            "amqp.confirm_timeout_s",
            "must be positive".into(),
        );

        check(
            self.redis.url.expose().starts_with("redis://")
                || self.redis.url.expose().starts_with("rediss://"),
            "redis.url",
            "must be a redis:// URL".into(),
        );
        check(
            is_name(&self.redis.prefix),
            "redis.prefix",
            format!(
                "must be 1-64 characters of a-z, 0-9, '-' or '_', got {:?}",
                self.redis.prefix
            ),
        );
        check(
            self.redis.pool_size > 0,
            "redis.pool_size",
            "must be positive".into(),
        );
        check(
            self.llm.providers.contains_key(&self.llm.default_provider),
            "llm.default_provider",
            format!(
                "{:?} is not one of llm.providers ({})",
                self.llm.default_provider,
                self.llm
                    .providers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        check(
            self.llm.completion_reserve < self.llm.default_context_window,
            "llm.completion_reserve",
            "must be smaller than llm.default_context_window".into(),
        );
        for (name, p) in &self.llm.providers {
            check(
                p.base_url.starts_with("http://") || p.base_url.starts_with("https://"),
                &format!("llm.providers.{name}.base_url"),
                format!("must be an http(s) URL, got {:?}", p.base_url),
            );
            check(
                p.timeout_s > 0,
                &format!("llm.providers.{name}.timeout_s"),
                "must be positive".into(),
            );
            check(
                p.max_concurrency > 0,
                &format!("llm.providers.{name}.max_concurrency"),
                "must be positive".into(),
            );
        }
        check(
            self.llm.providers.contains_key(&self.embeddings.provider),
            "embeddings.provider",
            format!("{:?} is not one of llm.providers", self.embeddings.provider),
        );
        check(
            self.whatsapp.messages_per_second > 0,
            "whatsapp.messages_per_second",
            "must be positive".into(),
        );
        check(
            self.vector.url.starts_with("http://") || self.vector.url.starts_with("https://"),
            "vector.url",
            "must be an http(s) URL".into(),
        );
        check(
            is_name(&self.vector.prefix),
            "vector.prefix",
            "must be 1-64 characters of a-z, 0-9, '-' or '_'".into(),
        );
        check(
            self.vector.chunk_chars >= 100
                && self.vector.chunk_overlap < self.vector.chunk_chars / 2,
            "vector.chunk_chars",
            "must be at least 100, with vector.chunk_overlap under half of it".into(),
        );
        check(
            self.admin.token.expose().len() >= 16,
            "admin.token",
            "must be at least 16 characters".into(),
        );
        check(
            decode_key(self.security.encryption_key.expose()).is_some(),
            "security.encryption_key",
            "must be 32 bytes encoded as base64".into(),
        );
        if self.env == "production" {
            check(
                self.security.encryption_key.expose() != DEV_ENCRYPTION_KEY,
                "security.encryption_key",
                "the development default is refused in production".into(),
            );
            check(
                self.admin.token.expose() != DEV_ADMIN_TOKEN,
                "admin.token",
                "the development default is refused in production".into(),
            );
        }
        for (name, plan) in [
            ("starter", &self.plans.starter),
            ("growth", &self.plans.growth),
            ("enterprise", &self.plans.enterprise),
        ] {
            check(
                plan.messages_per_minute > 0,
                &format!("plans.{name}.messages_per_minute"),
                "must be positive".into(),
            );
            check(
                plan.burst > 0,
                &format!("plans.{name}.burst"),
                "must be positive".into(),
            );
        }
        check(
            (1..=3600).contains(&self.tenancy.config_ttl_s),
            "tenancy.config_ttl_s",
            "must be 1..=3600 seconds".into(),
        );
        check(
            self.tenancy.inactive_notice.len() <= 2000,
            "tenancy.inactive_notice",
            "must be at most 2000 characters".into(),
        );
        check(
            self.worker.lock_ttl_s >= 3,
            "worker.lock_ttl_s",
            format!("must be at least 3 seconds, got {}", self.worker.lock_ttl_s),
        );
        check(
            self.worker.lock_wait_s > 0,
            "worker.lock_wait_s",
            "must be positive".into(),
        );
        check(
            self.llm.breaker_failures > 0,
            "llm.breaker_failures",
            "must be positive".into(),
        );
        check(
            self.worker.drain_timeout_s > 0,
            "worker.drain_timeout_s",
            "must be positive".into(),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Settings(problems.join("; ")))
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn is_duration(s: &str) -> bool {
    let Some(unit) = s.chars().last() else {
        return false;
    };
    let digits = &s[..s.len() - unit.len_utf8()];
    matches!(unit, 'Y' | 'M' | 'D' | 'h' | 'm' | 's')
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
}

fn decode_key(encoded: &str) -> Option<[u8; 32]> {
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?
        .try_into()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(vars: &[(&str, &str)]) -> Sources {
        Sources {
            env: "unit-test".into(),
            config_dir: PathBuf::from("/nonexistent"),
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn load_err(vars: &[(&str, &str)]) -> String {
        match Settings::load_from(sources(vars)) {
            Ok(_) => panic!("settings {vars:?} should have been refused"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn embedded_defaults_are_valid() {
        let s = Settings::load_from(sources(&[])).expect("defaults load");
        assert_eq!(s.amqp.prefix, "cf");
        assert_eq!(s.llm.context_window("llama3.1:8b"), 8192);
        assert_eq!(s.env, "unit-test");
    }

    #[test]
    fn environment_variables_override_defaults() {
        let s = Settings::load_from(sources(&[
            ("CHATFLEET__AMQP__PREFIX", "t123"),
            ("CHATFLEET__AMQP__RETRY_DELAYS_S", "2,4"),
            (
                "CHATFLEET__LLM__PROVIDERS__OLLAMA__BASE_URL",
                "http://127.0.0.1:9",
            ),
        ]))
        .expect("load");
        assert_eq!(s.amqp.prefix, "t123");
        assert_eq!(s.amqp.retry_delays_s, vec![2, 4]);
        assert_eq!(s.llm.providers["ollama"].base_url, "http://127.0.0.1:9");
    }

    #[test]
    fn an_invalid_value_names_its_key() {
        assert!(load_err(&[("CHATFLEET__AMQP__PREFETCH", "0")]).contains("amqp.prefetch"));
        assert!(load_err(&[("CHATFLEET__AMQP__PREFIX", "Bad Prefix")]).contains("amqp.prefix"));
        assert!(
            load_err(&[("CHATFLEET__LLM__DEFAULT_PROVIDER", "nope")])
                .contains("llm.default_provider")
        );
        assert!(
            load_err(&[("CHATFLEET__SECURITY__ENCRYPTION_KEY", "short")])
                .contains("security.encryption_key")
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        let err = load_err(&[("CHATFLEET__HTTP__BIND", "not-an-address")]);
        assert!(err.contains("http.bind"), "{err}");
    }

    #[test]
    fn production_refuses_development_secrets() {
        let mut s = sources(&[]);
        s.env = "production".into();
        let err = Settings::load_from(s)
            .expect_err("dev secrets refused")
            .to_string();
        assert!(
            err.contains("security.encryption_key") && err.contains("admin.token"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let s = Settings::load_from(sources(&[])).expect("load");
        let shown = format!("{s:?}");
        assert!(!shown.contains(DEV_ADMIN_TOKEN));
        assert!(!shown.contains("guest:guest"));
    }
}
