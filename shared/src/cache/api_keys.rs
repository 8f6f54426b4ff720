//! Which tenant an API key belongs to, cached in the process: every API request (each
//! send and each long-poll) authenticates, and the answer only changes when a key is
//! revoked. A revocation is broadcast to every process, which drops its whole cache at
//! once (and on every resubscription, when a broadcast may have been missed), so a key
//! revoked through the admin API is refused everywhere right away. Only keys that
//! authenticated are kept, under the SHA-256 of the whole key (never the key itself);
//! unknown keys always ask the database, so guessing cannot fill the cache.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::Cache;
use super::broadcast::Listener;
use super::invalidated::InvalidatedCache;
use crate::db::Db;
use crate::error::Result;
use crate::ids::ClientId;

pub struct ApiKeyOwners {
    db: Db,
    owners: Arc<InvalidatedCache<[u8; 32], ClientId>>,
}

impl std::fmt::Debug for ApiKeyOwners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyOwners").finish_non_exhaustive()
    }
}

impl ApiKeyOwners {
    pub fn new(db: Db, cache: Cache) -> Arc<Self> {
        let channel = cache.keys().api_keys_channel();
        Arc::new(Self {
            db,
            owners: Arc::new(InvalidatedCache::new(cache, channel)),
        })
    }

    /// What keeps this cache in step with the other processes (for [`super::broadcast`]).
    pub fn listener(&self) -> Arc<dyn Listener> {
        self.owners.clone()
    }

    /// The tenant `presented` belongs to; `None` for a malformed, unknown or revoked key.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<ClientId>> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if let Some(client_id) = self.owners.get(&digest) {
            return Ok(Some(client_id));
        }
        let found = self.db.api_key_owner(presented).await?;
        if let Some(client_id) = found {
            self.owners.insert(digest, client_id);
        }
        Ok(found)
    }

    /// Revokes a key of `client_id`; every process forgets the keys it knew. Returns
    /// whether an active key was revoked.
    pub async fn revoke(&self, client_id: ClientId, key_id: u64) -> Result<bool> {
        let revoked = self.db.tenant(client_id).api_keys().revoke(key_id).await?;
        if revoked {
            self.owners.changed().await?;
        }
        Ok(revoked)
    }
}
