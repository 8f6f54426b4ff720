//! Failed admin authentications per client address, across every ingress replica: the
//! `admin.failed_auth_per_minute`-th failure within a minute blocks the address for a
//! minute (every admin request from it is refused meanwhile, a right token included, so
//! guessing cannot go on).

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis;

use super::{Cache, redis_error};
use crate::error::Result;

/// Counts one failure in the address's minute; at the limit, blocks it for a minute.
const FAILED: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], 60000) end
if n >= tonumber(ARGV[1]) then redis.call('SET', KEYS[2], '1', 'PX', 60000) end
return n
";

static FAILED_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FAILED));

impl Cache {
    /// How long `ip` stays blocked from the admin API, if it is.
    pub async fn admin_auth_blocked(&self, ip: IpAddr) -> Result<Option<Duration>> {
        let mut conn = self.connection();
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg(self.keys.admin_auth_blocked(ip))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok((ttl_ms > 0).then(|| Duration::from_millis(ttl_ms.unsigned_abs())))
    }

    /// Records a failed admin authentication from `ip`.
    pub async fn admin_auth_failed(&self, ip: IpAddr, per_minute: u32) -> Result<()> {
        let mut conn = self.connection();
        let _: u64 = FAILED_SCRIPT
            .key(self.keys.admin_auth_failures(ip))
            .key(self.keys.admin_auth_blocked(ip))
            .arg(per_minute.max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}
