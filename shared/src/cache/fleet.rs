//! Who is in the worker fleet right now: each worker renews its membership every few
//! seconds in one sorted set (score = when it lapses, by Redis's clock), and reads the
//! members that have not lapsed in the same round trip. The workers share the work
//! shards out by that list (see the worker's `shards` module); a worker that stops
//! leaves at once, one that dies lapses after its TTL.

use std::time::Duration;

use deadpool_redis::redis;

use super::{Cache, redis_error};
use crate::error::Result;

/// Renews `ARGV[1]` until `ARGV[2]` ms from now, drops the lapsed, returns the members.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 10)
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

impl Cache {
    /// Renews `member`'s place in the worker fleet for `ttl`; every live member, sorted.
    pub async fn renew_fleet_membership(&self, member: &str, ttl: Duration) -> Result<Vec<String>> {
        let mut conn = self.connection();
        redis::Script::new(RENEW)
            .key(self.keys.workers())
            .arg(member)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)
    }

    /// Leaves the worker fleet (shutdown): the others take this member's share at once.
    pub async fn leave_fleet(&self, member: &str) -> Result<()> {
        let mut conn = self.connection();
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.workers())
            .arg(member)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}
