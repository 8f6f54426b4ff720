//! The tenant configuration cache: in-process first (a hit costs no network round trip),
//! then Redis, then MariaDB.
//!
//! After an admin write commits (and bumps `config_version`), [`TenantConfigs::refresh`]
//! puts the new configuration into Redis and broadcasts `<client_id>:<version>` to every
//! process, which drops its local copy at once and refuses to cache anything older than
//! that version from then on (a reader that fetched the old copy just before the
//! broadcast cannot put it back). Redis entries are only ever replaced by newer versions,
//! atomically (a Lua script), so a slow reader can never overwrite a fresh entry with a
//! stale one. Local entries also expire after `ttl`, bounding staleness if a broadcast
//! is lost while the subscription looks healthy; a dropped subscription clears the whole
//! local cache when it comes back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_redis::redis;

use super::broadcast::Listener;
use super::cached_tenant::CachedTenant;
use super::{Cache, redis_error};
use crate::db::{Db, TenantConfig};
use crate::error::Result;
use crate::ids::ClientId;
use crate::metric;

/// How long Redis keeps an entry nobody refreshed.
const REDIS_TTL: Duration = Duration::from_secs(600);

/// Stores `body` at version `v` unless the stored version is the same or newer.
const SET_IF_NEWER: &str = r"
local current = redis.call('HGET', KEYS[1], 'v')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'body', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Where a configuration was found (for metrics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Local,
    Redis,
    Database,
}

pub struct TenantConfigs {
    db: Db,
    cache: Cache,
    local: moka::sync::Cache<ClientId, Arc<TenantConfig>>,
    /// The newest version each tenant is known to have; older copies are not cached.
    floors: Mutex<HashMap<ClientId, u64>>,
}

impl std::fmt::Debug for TenantConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConfigs")
            .field("entries", &self.local.entry_count())
            .finish_non_exhaustive()
    }
}

impl TenantConfigs {
    /// A cache whose local entries live at most `ttl`. Register it with
    /// [`super::broadcast::start`] so it hears invalidations.
    pub fn new(db: Db, cache: Cache, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            db,
            cache,
            local: moka::sync::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(100_000)
                .build(),
            floors: Mutex::new(HashMap::new()),
        })
    }

    /// The tenant's configuration; `None` for an unknown tenant.
    pub async fn get(&self, client_id: ClientId) -> Result<Option<Arc<TenantConfig>>> {
        Ok(self.get_with_source(client_id).await?.map(|(c, _)| c))
    }

    /// Like [`TenantConfigs::get`], and says where it came from.
    pub async fn get_with_source(
        &self,
        client_id: ClientId,
    ) -> Result<Option<(Arc<TenantConfig>, Source)>> {
        if let Some(hit) = self.local.get(&client_id) {
            metrics::counter!(metric::CONFIG_CACHE, "result" => "local").increment(1);
            return Ok(Some((hit, Source::Local)));
        }
        if let Some(shared) = self.read_redis(client_id).await? {
            let shared = Arc::new(shared);
            if self.keep_locally(client_id, &shared) {
                metrics::counter!(metric::CONFIG_CACHE, "result" => "redis").increment(1);
                return Ok(Some((shared, Source::Redis)));
            }
        }
        metrics::counter!(metric::CONFIG_CACHE, "result" => "miss").increment(1);
        let Some(fresh) = self.db.tenant(client_id).configs().load_tenant().await? else {
            return Ok(None);
        };
        let fresh = Arc::new(fresh);
        self.write_redis(&fresh).await?;
        self.keep_locally(client_id, &fresh);
        Ok(Some((fresh, Source::Database)))
    }

    /// After an admin write committed: publish the new configuration to Redis and tell
    /// every process. Returns the version now in force.
    pub async fn refresh(&self, client_id: ClientId) -> Result<Option<u64>> {
        let Some(fresh) = self.db.tenant(client_id).configs().load_tenant().await? else {
            return Ok(None);
        };
        let version = fresh.config.config_version;
        self.write_redis(&fresh).await?;
        self.apply_invalidation(client_id, version);
        self.cache
            .publish(
                &self.cache.keys().config_channel(),
                &format!("{client_id}:{version}"),
            )
            .await?;
        Ok(Some(version))
    }

    /// Caches `config` locally unless a newer version is known. Returns whether it did.
    fn keep_locally(&self, client_id: ClientId, config: &Arc<TenantConfig>) -> bool {
        let Ok(floors) = self.floors.lock() else {
            return false;
        };
        let floor = floors.get(&client_id).copied().unwrap_or(0);
        if config.config.config_version < floor {
            return false;
        }
        self.local.insert(client_id, config.clone());
        true
    }

    fn apply_invalidation(&self, client_id: ClientId, version: u64) {
        if let Ok(mut floors) = self.floors.lock() {
            let floor = floors.entry(client_id).or_insert(0);
            *floor = (*floor).max(version);
            self.local.invalidate(&client_id);
        }
    }

    async fn read_redis(&self, client_id: ClientId) -> Result<Option<TenantConfig>> {
        let mut conn = self.cache.connection();
        let body: Option<String> = redis::cmd("HGET")
            .arg(self.cache.keys().tenant(client_id).config())
            .arg("body")
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        // An entry this build cannot read is treated as absent and rebuilt.
        Ok(body.and_then(|b| {
            serde_json::from_str::<CachedTenant>(&b)
                .ok()
                .and_then(|c| TenantConfig::try_from(c).ok())
        }))
    }

    async fn write_redis(&self, config: &TenantConfig) -> Result<()> {
        let body = serde_json::to_string(&CachedTenant::from(config))
            .map_err(|e| crate::Error::Internal(format!("serializing a cached config: {e}")))?;
        let mut conn = self.cache.connection();
        let _: i64 = redis::Script::new(SET_IF_NEWER)
            .key(self.cache.keys().tenant(config.client.id).config())
            .arg(config.config.config_version)
            .arg(body)
            .arg(REDIS_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}

impl Listener for TenantConfigs {
    fn channel(&self) -> String {
        self.cache.keys().config_channel()
    }
    fn on_message(&self, payload: &str) {
        let parsed = payload
            .split_once(':')
            .and_then(|(id, v)| Some((id.parse::<u64>().ok()?, v.parse::<u64>().ok()?)));
        match parsed {
            Some((id, version)) => self.apply_invalidation(ClientId::new(id), version),
            None => {
                tracing::warn!("unreadable config invalidation; clearing the whole cache");
                self.local.invalidate_all();
            }
        }
    }
    /// Invalidations may have been missed while unsubscribed: forget everything.
    fn on_subscribed(&self) {
        self.local.invalidate_all();
    }
}
