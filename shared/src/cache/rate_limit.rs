//! Rate limits shared by every replica: token buckets in Redis, updated atomically by a
//! Lua script that reads Redis's own clock (so replicas' clocks do not matter). A
//! tenant's messages (capacity = the plan's burst, refill = its messages per minute), a
//! channel account's sends, and the edge's per-minute limits (a minute's worth at once,
//! refilled evenly): sessions per client address and per tenant, sends per session.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis;

use super::{Cache, redis_error};
use crate::error::Result;
use crate::ids::ClientId;
use crate::settings::PlanLimits;

/// Takes one token; returns 0 when granted, else the milliseconds until one is available.
const TAKE: &str = r"
local capacity = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * per_ms)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / per_ms)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / per_ms) + 60000)
return wait
";

/// [`TAKE`], hashed once per process.
static TAKE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(TAKE));

impl Cache {
    /// Takes one message from the tenant's bucket: `None` when it may go now, else how
    /// long until it may.
    pub async fn take_message_token(
        &self,
        client_id: ClientId,
        limits: &PlanLimits,
    ) -> Result<Option<Duration>> {
        let key = self.keys.tenant(client_id).rate_bucket();
        self.take(
            &key,
            limits.burst,
            f64::from(limits.messages_per_minute) / 60.0,
        )
        .await
    }

    /// Takes one send from the bucket of a tenant's channel account (e.g. a WhatsApp
    /// number's throughput limit, shared by every deliverer replica).
    pub async fn take_send_token(
        &self,
        client_id: ClientId,
        account: &str,
        per_second: u32,
    ) -> Result<Option<Duration>> {
        let key = self.keys.tenant(client_id).send_bucket(account);
        self.take(&key, per_second, f64::from(per_second)).await
    }

    /// Takes one widget or mobile session from the bucket of client address `ip`
    /// (`per_minute` a minute).
    pub async fn take_session_for_ip(
        &self,
        ip: std::net::IpAddr,
        per_minute: u32,
    ) -> Result<Option<Duration>> {
        let key = self.keys.edge_ip_sessions(ip);
        self.take_per_minute(&key, per_minute).await
    }

    /// Takes one session from the tenant's bucket (`plans.<plan>.sessions_per_minute`).
    pub async fn take_session_for_tenant(
        &self,
        client_id: ClientId,
        per_minute: u32,
    ) -> Result<Option<Duration>> {
        let key = self.keys.tenant(client_id).session_opens();
        self.take_per_minute(&key, per_minute).await
    }

    /// Takes one message from the bucket of one of the tenant's widget or mobile
    /// sessions.
    pub async fn take_session_send(
        &self,
        client_id: ClientId,
        session_id: &str,
        per_minute: u32,
    ) -> Result<Option<Duration>> {
        let key = self.keys.tenant(client_id).session_sends(session_id);
        self.take_per_minute(&key, per_minute).await
    }

    async fn take_per_minute(&self, key: &str, per_minute: u32) -> Result<Option<Duration>> {
        self.take(key, per_minute, f64::from(per_minute) / 60.0)
            .await
    }

    async fn take(&self, key: &str, capacity: u32, per_second: f64) -> Result<Option<Duration>> {
        let mut conn = self.connection();
        let wait_ms: u64 = TAKE_SCRIPT
            .key(key)
            .arg(capacity.max(1))
            .arg(per_second / 1000.0)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }
}
