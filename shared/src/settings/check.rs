//! What parsing cannot check: ranges, URL schemes, names, and relations between keys
//! (a request timeout longer than the longest long-poll, a completion reserve inside the
//! context window, no development secret outside a developer's loopback-only machine). Every problem is reported,
//! each starting with its key.

use std::time::Duration;

use super::{
    DEV_ADMIN_TOKEN, DEV_ENCRYPTION_KEY, DEV_SESSION_KEY, Environment, Settings, decode_key,
};
use crate::error::{Error, Result};

impl Settings {
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
            self.api.max_wait <= Duration::from_secs(300),
            "api.max_wait_s",
            format!(
                "must be 1..=300 seconds, got {}",
                self.api.max_wait.as_secs()
            ),
        );
        check(
            self.http.request_timeout > self.api.max_wait,
            "http.request_timeout_s",
            "must be longer than api.max_wait_s, or long-polls are cut off".into(),
        );
        check(
            self.http.max_long_polls > 0,
            "http.max_long_polls",
            "must be positive".into(),
        );
        for proxy in &self.http.trusted_proxies {
            check(
                proxy.parse::<ipnet::IpNet>().is_ok() || proxy.parse::<std::net::IpAddr>().is_ok(),
                "http.trusted_proxies",
                format!("{proxy:?} is neither an IP address nor a CIDR block (10.0.0.0/8)"),
            );
        }
        for network in &self.tools.allowed_private_networks {
            check(
                super::parse::network(network).is_some(),
                "tools.allowed_private_networks",
                format!("{network:?} is neither an IP address nor a CIDR block (127.0.0.0/8)"),
            );
        }
        for network in &self.webhooks.allowed_private_networks {
            check(
                super::parse::network(network).is_some(),
                "webhooks.allowed_private_networks",
                format!("{network:?} is neither an IP address nor a CIDR block (127.0.0.0/8)"),
            );
        }
        check(
            (1..=100).contains(&self.webhooks.max_per_tenant),
            "webhooks.max_per_tenant",
            "must be 1-100".into(),
        );
        check(
            (1..=64).contains(&self.webhooks.concurrency_per_endpoint)
                && self.webhooks.concurrency_per_endpoint <= self.webhooks.concurrency_per_tenant,
            "webhooks.concurrency_per_endpoint",
            "must be 1-64 and at most webhooks.concurrency_per_tenant".into(),
        );
        check(
            self.webhooks.timeout.as_secs() <= 60,
            "webhooks.timeout_s",
            "must be at most 60".into(),
        );
        check(
            (1..=1000).contains(&self.tools.max_per_tenant),
            "tools.max_per_tenant",
            "must be 1-1000".into(),
        );
        check(
            (1..=16).contains(&self.tools.max_rounds),
            "tools.max_rounds",
            "must be 1-16".into(),
        );
        for (key, value) in [
            (
                "edge.sessions_per_ip_per_minute",
                self.edge.sessions_per_ip_per_minute,
            ),
            (
                "edge.sends_per_session_per_minute",
                self.edge.sends_per_session_per_minute,
            ),
        ] {
            check(value > 0, key, "must be positive".into());
        }
        check(
            self.http.max_in_flight > 0,
            "http.max_in_flight",
            "must be positive".into(),
        );
        let db = self.database.url.expose();
        check(
            db.starts_with("mysql://") || db.starts_with("mariadb://"),
            "database.url",
            "must be a mysql:// URL".into(),
        );
        let shards = self.database.shard_list();
        for (i, shard) in shards.iter().enumerate() {
            let url = shard.url.expose();
            check(
                is_name(&shard.name)
                    && (url.starts_with("mysql://") || url.starts_with("mariadb://")),
                "database.shards",
                format!(
                    "shard {} must be name=mysql://… with a name of 1-64 characters of a-z, 0-9, '-' or '_'",
                    i + 1
                ),
            );
            check(
                !shards[..i].iter().any(|s| s.name == shard.name),
                "database.shards",
                format!("shard name {:?} is used twice", shard.name),
            );
        }
        check(
            self.database.max_connections > 0,
            "database.max_connections",
            "must be positive".into(),
        );
        check(
            is_amqp_url(self.amqp.url.expose()),
            "amqp.url",
            "must be an amqp:// or amqps:// (TLS) URL".into(),
        );
        for (i, url) in self.amqp.urls.iter().enumerate() {
            check(
                is_amqp_url(url.expose()),
                "amqp.urls",
                format!("node {} must be an amqp:// or amqps:// (TLS) URL", i + 1),
            );
        }
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
            (1..=usize::from(self.amqp.prefetch)).contains(&self.worker.tenant_max_held),
            "worker.tenant_max_held",
            format!(
                "must be 1..=amqp.prefetch ({}), got {}",
                self.amqp.prefetch, self.worker.tenant_max_held
            ),
        );
        check(
            (1..=256).contains(&self.amqp.work_shards),
            "amqp.work_shards",
            format!("must be 1..=256, got {}", self.amqp.work_shards),
        );
        check(
            self.amqp.delivery_limit > 0,
            "amqp.delivery_limit",
            "must be positive".into(),
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
            (60..=30 * 86_400).contains(&self.sessions.ttl.as_secs()),
            "sessions.ttl_s",
            format!(
                "must be 60 s to 30 days, got {}",
                self.sessions.ttl.as_secs()
            ),
        );
        check(
            (self.mobile.push_url.starts_with("http://")
                || self.mobile.push_url.starts_with("https://"))
                && self.mobile.push_url.contains("{project_id}"),
            "mobile.push_url",
            "must be an http(s) URL containing {project_id}".into(),
        );
        check(
            (1..=10).contains(&self.mobile.push_attempts),
            "mobile.push_attempts",
            format!("must be 1..=10, got {}", self.mobile.push_attempts),
        );

        check(
            self.redis.url.expose().starts_with("redis://")
                || self.redis.url.expose().starts_with("rediss://"),
            "redis.url",
            "must be a redis:// or rediss:// (TLS) URL".into(),
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
            self.llm.max_response_bytes >= 1024,
            "llm.max_response_bytes",
            format!("must be at least 1024, got {}", self.llm.max_response_bytes),
        );
        check(
            self.llm.tenant_max_share > 0.0 && self.llm.tenant_max_share <= 1.0,
            "llm.tenant_max_share",
            format!("must be in (0, 1], got {}", self.llm.tenant_max_share),
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
            self.speech.provider.is_empty()
                || self.llm.providers.contains_key(&self.speech.provider),
            "speech.provider",
            format!("{:?} is not one of llm.providers", self.speech.provider),
        );
        self.check_prices(&mut check);
        check(
            (0.0..=1.0).contains(&self.telemetry.sample_ratio),
            "telemetry.sample_ratio",
            format!(
                "must be between 0 and 1, got {}",
                self.telemetry.sample_ratio
            ),
        );
        check(
            self.telemetry.otlp_endpoint.is_empty()
                || self.telemetry.otlp_endpoint.starts_with("http://")
                || self.telemetry.otlp_endpoint.starts_with("https://"),
            "telemetry.otlp_endpoint",
            "must be an http(s) URL, or empty".into(),
        );
        check(
            (1024..=100 * 1024 * 1024).contains(&self.whatsapp.max_media_bytes),
            "whatsapp.max_media_bytes",
            "must be between 1 KiB and 100 MiB".into(),
        );
        check(
            self.whatsapp.messages_per_second > 0,
            "whatsapp.messages_per_second",
            "must be positive".into(),
        );
        check(
            (1024..=64 * 1024 * 1024).contains(&self.whatsapp.max_body_bytes),
            "whatsapp.max_body_bytes",
            format!(
                "must be 1 KiB to 64 MiB, got {}",
                self.whatsapp.max_body_bytes
            ),
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
            check(
                plan.sessions_per_minute > 0,
                &format!("plans.{name}.sessions_per_minute"),
                "must be positive".into(),
            );
            check(
                (1..=1000).contains(&plan.weight),
                &format!("plans.{name}.weight"),
                format!("must be 1..=1000, got {}", plan.weight),
            );
        }
        check(
            self.tenancy.config_ttl <= Duration::from_secs(3600),
            "tenancy.config_ttl_s",
            "must be 1..=3600 seconds".into(),
        );
        check(
            self.tenancy.inactive_notice.len() <= 2000,
            "tenancy.inactive_notice",
            "must be at most 2000 characters".into(),
        );
        check(
            self.worker.lock_ttl >= Duration::from_secs(3),
            "worker.lock_ttl_s",
            format!(
                "must be at least 3 seconds, got {}",
                self.worker.lock_ttl.as_secs()
            ),
        );
        check(
            self.llm.breaker_failures > 0,
            "llm.breaker_failures",
            "must be positive".into(),
        );
        problems.extend(self.secret_problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Settings(problems.join("; ")))
        }
    }
}

impl Settings {
    /// Prices name configured providers, are not negative, and share one currency (a
    /// budget is one number); allowlisted hosts are host names.
    fn check_prices(&self, check: &mut impl FnMut(bool, &str, String)) {
        let currency = self.llm.currency(&self.speech);
        let mut priced = |key: String, provider: &str, amounts: &[f64], cur: &str| {
            check(
                self.llm.providers.contains_key(provider),
                &key,
                format!(
                    "{provider:?} is not one of llm.providers (keys are \"<provider>/<model>\")"
                ),
            );
            check(
                amounts.iter().all(|a| a.is_finite() && *a >= 0.0),
                &key,
                "prices must be zero or more".into(),
            );
            check(
                !cur.trim().is_empty() && Some(cur) == currency,
                &format!("{key}.currency"),
                format!(
                    "every price must be in one currency ({}), got {cur:?}",
                    currency.unwrap_or_default()
                ),
            );
        };
        for (name, p) in &self.llm.prices {
            let provider = name.split_once('/').map_or("", |(p, _)| p);
            priced(
                format!("llm.prices.{name:?}"),
                provider,
                &[p.prompt_per_million, p.completion_per_million],
                &p.currency,
            );
        }
        for (name, p) in &self.speech.prices {
            let provider = name.split_once('/').map_or("", |(p, _)| p);
            priced(
                format!("speech.prices.{name:?}"),
                provider,
                &[p.per_minute],
                &p.currency,
            );
        }
        for host in &self.llm.tenant_base_url_allowlist {
            check(
                !host.is_empty() && !host.contains(['/', ':', ' ']),
                "llm.tenant_base_url_allowlist",
                format!("{host:?} is not a host name"),
            );
        }
    }
}

/// Shortest admin token and WhatsApp app secret or verify token.
const MIN_SECRET_CHARS: usize = 16;

impl Settings {
    /// Whether this process may run on development secrets: a developer's machine
    /// (`env = "local"`) listening on loopback addresses only.
    pub fn is_local_loopback(&self) -> bool {
        self.env == Environment::Local
            && self.http.bind.ip().is_loopback()
            && self.admin.bind.is_none_or(|a| a.ip().is_loopback())
            && self.worker.metrics_bind.ip().is_loopback()
    }

    /// The secrets' problems: malformed anywhere; outside [`Self::is_local_loopback`]
    /// also a development default, a `CHANGE-ME` placeholder or too short.
    fn secret_problems(&self) -> Vec<String> {
        let strict = !self.is_local_loopback();
        let mut problems = Vec::new();
        let mut weak = |key: &str, value: &str, dev_default: Option<&str>, min: usize| {
            if value.is_empty() {
                return;
            }
            if value.chars().count() < min {
                problems.push(format!("{key}: must be at least {min} characters"));
            } else if strict && dev_default == Some(value) {
                problems.push(format!(
                    "{key}: is the development default, refused outside env = \"local\" with \
                     loopback binds; set a secret of your own"
                ));
            } else if strict && value.to_ascii_uppercase().contains("CHANGE-ME") {
                problems.push(format!(
                    "{key}: is a CHANGE-ME placeholder; replace it with a secret of your own"
                ));
            }
        };
        let admin = self.admin.token.expose();
        weak(
            "admin.token",
            admin,
            Some(DEV_ADMIN_TOKEN),
            MIN_SECRET_CHARS,
        );
        for (key, value) in [
            ("whatsapp.app_secret", &self.whatsapp.app_secret),
            ("whatsapp.verify_token", &self.whatsapp.verify_token),
        ] {
            weak(
                key,
                value.expose(),
                None,
                if strict { MIN_SECRET_CHARS } else { 1 },
            );
        }
        weak(
            "vector.token",
            self.vector.token.expose(),
            None,
            if strict { MIN_SECRET_CHARS } else { 1 },
        );
        for (key, url) in [
            ("database.url", &self.database.url),
            ("amqp.url", &self.amqp.url),
            ("redis.url", &self.redis.url),
        ]
        .into_iter()
        .chain(self.amqp.urls.iter().map(|u| ("amqp.urls", u)))
        .chain(self.database.shards.iter().map(|u| ("database.shards", u)))
        {
            if strict && url.expose().to_ascii_uppercase().contains("CHANGE-ME") {
                problems.push(format!("{key}: holds a CHANGE-ME placeholder password"));
            }
        }
        let rings = [
            (
                if self.security.encryption_keys.is_empty() {
                    "security.encryption_key"
                } else {
                    "security.encryption_keys"
                },
                self.security.encryption_key_texts().collect::<Vec<_>>(),
                DEV_ENCRYPTION_KEY,
            ),
            (
                "security.session_keys",
                self.security.session_keys.iter().collect(),
                DEV_SESSION_KEY,
            ),
        ];
        for (key, ring, dev_default) in rings {
            if ring.is_empty() {
                problems.push(format!("{key}: needs at least one key"));
            }
            for value in ring {
                let value = value.expose();
                if strict && value.to_ascii_uppercase().contains("CHANGE-ME") {
                    problems.push(format!(
                        "{key}: is a CHANGE-ME placeholder; generate a key with \
                         `openssl rand -base64 32`"
                    ));
                } else if decode_key(value).is_none() {
                    problems.push(format!("{key}: must be 32 bytes encoded as base64"));
                } else if strict && value == dev_default {
                    problems.push(format!(
                        "{key}: is the development default, refused outside env = \"local\" \
                         with loopback binds; generate a key with `openssl rand -base64 32`"
                    ));
                }
            }
        }
        problems
    }
}

/// An AMQP node's URL, plain or TLS.
fn is_amqp_url(url: &str) -> bool {
    url.starts_with("amqp://") || url.starts_with("amqps://")
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
