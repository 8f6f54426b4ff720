//! Which tenant owns a channel account (a WhatsApp `phone_number_id`…), cached in the
//! process: every inbound webhook asks, and the answer changes only when an operator
//! adds or removes an account. Such a change is broadcast to every process, which drops
//! its whole cache at once (and on every resubscription), so a number moved to another
//! tenant is never routed to the old one from a stale entry.

use std::sync::Arc;

use super::Cache;
use super::broadcast::Listener;
use super::invalidated::InvalidatedCache;
use crate::db::Db;
use crate::error::Result;
use crate::ids::{Channel, ClientId};

/// An account's owner (tenant, account row id), or `None` for an unknown account.
type Owner = Option<(ClientId, u64)>;

pub struct AccountOwners {
    db: Db,
    owners: Arc<InvalidatedCache<(Channel, String), Owner>>,
}

impl std::fmt::Debug for AccountOwners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountOwners").finish_non_exhaustive()
    }
}

impl AccountOwners {
    pub fn new(db: Db, cache: Cache) -> Arc<Self> {
        let channel = cache.keys().accounts_channel();
        Arc::new(Self {
            db,
            owners: Arc::new(InvalidatedCache::new(cache, channel)),
        })
    }

    /// What keeps this cache in step with the other processes (for [`super::broadcast`]).
    pub fn listener(&self) -> Arc<dyn Listener> {
        self.owners.clone()
    }

    /// The tenant and account id owning `external_account_id` on `channel`.
    pub async fn owner(&self, channel: Channel, external_account_id: &str) -> Result<Owner> {
        let key = (channel, external_account_id.to_owned());
        if let Some(hit) = self.owners.get(&key) {
            return Ok(hit);
        }
        let found = self
            .db
            .channel_account_owner(channel, external_account_id)
            .await?;
        self.owners.insert(key, found);
        Ok(found)
    }

    /// After an account was added or removed: every process forgets what it knew.
    pub async fn changed(&self) -> Result<()> {
        self.owners.changed().await
    }
}
