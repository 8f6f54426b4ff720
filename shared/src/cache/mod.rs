//! Redis: the shared connections, the one builder of every key ([`Keys`]), and the
//! cross-replica mailbox notifier ([`Mailboxes`]). The only module that names redis types.
//!
//! Every key and pub/sub channel starts with `redis.prefix`; every tenant's key also
//! carries the tenant id, and is only reachable through [`Keys::tenant`].

mod accounts;
mod admin_auth;
mod api_keys;
pub mod broadcast;
mod cached_tenant;
mod conversation_lock;
mod conversations;
mod fleet;
mod invalidated;
mod mailbox;
mod rate_limit;
mod spending;
mod stream_events;
mod tenant_config;
mod wakeups;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use deadpool_redis::redis;
use redis::aio::ConnectionManager;

pub use accounts::{AccountOwners, TenantMetaApp};
pub use api_keys::ApiKeyOwners;
pub use conversation_lock::{ConversationLock, ConversationLocks};
pub use conversations::ConversationIds;
pub(crate) use conversations::erased_conversation;
pub use mailbox::{MailboxKey, MailboxWatch, Mailboxes, PollSlot};
pub use spending::{BudgetFlag, SpendPeriod, Spent};
pub use stream_events::{StreamEvent, StreamEvents, StreamEventsOf};
pub use tenant_config::{Source as ConfigSource, TenantConfigs};

use crate::error::{Error, Result};
use crate::ids::ClientId;
use crate::settings::RedisSettings;

/// Redis connections shared by every task of the process, plus the client used for
/// dedicated pub/sub connections.
///
/// Each connection is multiplexed (commands from any number of tasks are pipelined on
/// it, answered in order) and reconnects by itself after an error, so a command takes no
/// checkout: a pool's checkout sent `UNWATCH` and `PING` before every use, a round trip
/// that was 10 of the 23 commands one answered message cost. `redis.pool_size`
/// connections share the load in turn.
#[derive(Clone)]
pub struct Cache {
    connections: Arc<[ConnectionManager]>,
    next: Arc<AtomicUsize>,
    client: redis::Client,
    keys: Keys,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// Opens the connections and checks that Redis answers.
    pub async fn connect(settings: &RedisSettings) -> Result<Self> {
        let client = redis::Client::open(settings.url.expose().as_str())
            .map_err(|e| Error::redis("redis.url", e))?;
        let mut connections = Vec::with_capacity(settings.pool_size.max(1));
        for _ in 0..settings.pool_size.max(1) {
            // A connection that fails is opened again from the next command on.
            let connection = ConnectionManager::new(client.clone())
                .await
                .map_err(|e| Error::redis("redis.url", e))?;
            connections.push(connection);
        }
        let cache = Self {
            connections: connections.into(),
            next: Arc::default(),
            client,
            keys: Keys {
                prefix: settings.prefix.clone(),
            },
        };
        cache.ping().await?;
        Ok(cache)
    }

    /// One of the shared connections, in turn (a cheap handle to it).
    fn connection(&self) -> ConnectionManager {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[n].clone()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.connection();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    /// Commands the Redis server has processed since it started (`INFO stats`), whoever
    /// sent them: `chatfleet bench` reads it before and after a run.
    pub async fn commands_processed(&self) -> Result<u64> {
        let mut conn = self.connection();
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_default())
    }

    /// Takes the fleet-wide lease `name` for `ttl` if nobody holds it: true for the one
    /// replica that got it (it is not released; it runs out, so whatever it guards runs
    /// at most once per `ttl` across the fleet).
    pub async fn take_lease(&self, name: &str, ttl: std::time::Duration) -> Result<bool> {
        let mut conn = self.connection();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.lease(name))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(set.is_some())
    }

    async fn publish(&self, channel: &str, payload: &str) -> Result<()> {
        let mut conn = self.connection();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    /// Increments the counter at `key`, (re)sets its expiry and publishes `payload` on
    /// `channel`, in one round trip; returns the new value.
    async fn increment_and_publish(
        &self,
        key: &str,
        ttl_s: u64,
        channel: &str,
        payload: &str,
    ) -> Result<u64> {
        let mut conn = self.connection();
        let (value, _, _): (u64, i64, i64) = redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg(key)
            .cmd("EXPIRE")
            .arg(key)
            .arg(ttl_s)
            .cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(value)
    }

    /// The counter at `key`, if it exists.
    async fn counter(&self, key: &str) -> Result<Option<u64>> {
        let mut conn = self.connection();
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)
    }

    /// Deletes every key under this cache's prefix (test clean-up; never FLUSHDB).
    pub async fn delete_prefixed(&self) -> Result<u64> {
        let mut conn = self.connection();
        let pattern = format!("{}:*", self.keys.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// Builds every Redis key and channel name. Tenant keys need a [`ClientId`].
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys of one tenant.
    pub fn tenant(&self, client_id: ClientId) -> TenantKeys<'_> {
        TenantKeys {
            prefix: &self.prefix,
            client_id,
        }
    }

    /// The pub/sub channel that announces new mailbox entries to every ingress replica.
    pub fn mailbox_channel(&self) -> String {
        format!("{}:mailbox", self.prefix)
    }

    /// The workers alive now (see `fleet.rs`).
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// A fleet-wide lease (one replica at a time runs what it guards).
    pub fn lease(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.prefix)
    }

    /// The pub/sub channel that tells every replica a conversation was erased (its key no
    /// longer names it).
    pub fn erased_channel(&self) -> String {
        format!("{}:erased", self.prefix)
    }

    /// The pub/sub channel of turns' live events (typing, deltas) for streaming clients.
    pub fn stream_events_channel(&self) -> String {
        format!("{}:stream", self.prefix)
    }

    /// The pub/sub channel that announces released conversation locks to every worker.
    pub fn locks_channel(&self) -> String {
        format!("{}:locks", self.prefix)
    }

    /// The pub/sub channel that announces channel-account changes to every process.
    pub fn accounts_channel(&self) -> String {
        format!("{}:accounts", self.prefix)
    }

    /// The pub/sub channel that announces API key revocations to every process.
    pub fn api_keys_channel(&self) -> String {
        format!("{}:api-keys", self.prefix)
    }

    /// The bucket of widget and mobile sessions opened from one client address (any
    /// tenant's: an address floods them all alike).
    pub fn edge_ip_sessions(&self, ip: std::net::IpAddr) -> String {
        format!("{}:edge:sessions:{ip}", self.prefix)
    }

    /// Failed admin authentications of one client address in the current minute.
    pub fn admin_auth_failures(&self, ip: std::net::IpAddr) -> String {
        format!("{}:admin-auth:failures:{ip}", self.prefix)
    }

    /// Present while a client address is blocked from the admin API.
    pub fn admin_auth_blocked(&self, ip: std::net::IpAddr) -> String {
        format!("{}:admin-auth:blocked:{ip}", self.prefix)
    }

    /// The pub/sub channel that announces configuration changes to every process.
    pub fn config_channel(&self) -> String {
        format!("{}:config", self.prefix)
    }
}

/// The keys of one tenant: `<prefix>:t:<client_id>:…`.
#[derive(Debug, Clone, Copy)]
pub struct TenantKeys<'a> {
    prefix: &'a str,
    client_id: ClientId,
}

impl TenantKeys<'_> {
    pub fn config(&self) -> String {
        format!("{}:t:{}:config", self.prefix, self.client_id)
    }
    pub fn rate_bucket(&self) -> String {
        format!("{}:t:{}:rate", self.prefix, self.client_id)
    }
    /// What the tenant's month (`YYYY-MM`, its timezone) cost so far, in micro-units.
    pub fn month_spend(&self, month: &str) -> String {
        format!("{}:t:{}:spend:{month}", self.prefix, self.client_id)
    }
    /// The LLM tokens the tenant's day (`YYYY-MM-DD`, its timezone) spent so far.
    pub fn day_tokens(&self, day: &str) -> String {
        format!("{}:t:{}:tokens:{day}", self.prefix, self.client_id)
    }
    /// Set once the month's `flag` (warning, exceeded) was announced.
    pub fn budget_flag(&self, month: &str, flag: &str) -> String {
        format!("{}:t:{}:budget:{month}:{flag}", self.prefix, self.client_id)
    }
    /// The generation of a session's long-poll slot.
    pub fn poll_slot(&self, channel: crate::ids::Channel, session_id: &str) -> String {
        format!(
            "{}:t:{}:poll:{}:{session_id}",
            self.prefix, self.client_id, channel
        )
    }
    /// The lock that serialises one conversation's turns across workers.
    pub fn conversation_lock(&self, conversation_id: crate::ids::ConversationId) -> String {
        format!(
            "{}:t:{}:lock:{}",
            self.prefix,
            self.client_id,
            conversation_id.get()
        )
    }
    /// Set while a worker waits for a conversation's lock, so its release is announced.
    pub fn conversation_lock_waiters(&self, conversation_id: crate::ids::ConversationId) -> String {
        format!(
            "{}:t:{}:lock-waiters:{}",
            self.prefix,
            self.client_id,
            conversation_id.get()
        )
    }
    /// The bucket of widget and mobile sessions the tenant's users open.
    pub fn session_opens(&self) -> String {
        format!("{}:t:{}:session-opens", self.prefix, self.client_id)
    }
    /// The bucket of messages one widget or mobile session sends.
    pub fn session_sends(&self, session_id: &str) -> String {
        format!(
            "{}:t:{}:session-sends:{session_id}",
            self.prefix, self.client_id
        )
    }
    /// The send-rate bucket of one of the tenant's channel accounts.
    pub fn send_bucket(&self, account: &str) -> String {
        format!("{}:t:{}:send:{account}", self.prefix, self.client_id)
    }
}

fn redis_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::redis("command failed", e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_keys_carry_prefix_and_tenant() {
        let keys = Keys {
            prefix: "cf".into(),
        };
        assert_eq!(keys.tenant(ClientId::new(42)).config(), "cf:t:42:config");
        assert_ne!(
            keys.tenant(ClientId::new(1)).config(),
            keys.tenant(ClientId::new(2)).config()
        );
        assert_eq!(keys.mailbox_channel(), "cf:mailbox");
    }

    /// The shared connections have no pool to replace a broken one: a connection the
    /// server dropped must be opened again by the commands after it.
    #[tokio::test]
    async fn a_dropped_connection_is_opened_again() {
        const WAIT: std::time::Duration = std::time::Duration::from_secs(20);
        let env = crate::testkit::TestEnv::start(&[]).await;
        let cache = env.cache.clone();
        let mut ids = Vec::new();
        for _ in 0..cache.connections.len() {
            let id: u64 = redis::cmd("CLIENT")
                .arg("ID")
                .query_async(&mut cache.connection())
                .await
                .expect("client id");
            ids.push(id);
        }
        let mut other = env
            .cache
            .client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        for id in &ids {
            let killed: u64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(&mut other)
                .await
                .expect("kill");
            assert_eq!(killed, 1, "connection {id} was there to drop");
        }
        crate::testkit::eventually(WAIT, "every connection answers again", || async {
            for _ in 0..cache.connections.len() {
                cache.ping().await.ok()?;
            }
            Some(())
        })
        .await;
        let id: u64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut cache.connection())
            .await
            .expect("client id after");
        assert!(
            !ids.contains(&id),
            "a new connection answers ({id} not in {ids:?})"
        );
        env.teardown().await;
    }
}
