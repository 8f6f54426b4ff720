//! Which tenant owns a channel account (a WhatsApp `phone_number_id`…), cached in the
//! process: every inbound webhook asks, and the answer changes only when an operator
//! adds or removes an account. Such a change is broadcast to every process, which drops
//! its whole cache at once (and on every resubscription), so a number moved to another
//! tenant is never routed to the old one from a stale entry.

use std::sync::Arc;
use std::time::Duration;

use super::Cache;
use super::broadcast::Listener;
use crate::db::Db;
use crate::error::Result;
use crate::ids::{Channel, ClientId};

pub struct AccountOwners {
    db: Db,
    cache: Cache,
    owners: moka::sync::Cache<(Channel, String), Option<(ClientId, u64)>>,
}

impl std::fmt::Debug for AccountOwners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountOwners").finish_non_exhaustive()
    }
}

impl AccountOwners {
    pub fn new(db: Db, cache: Cache) -> Arc<Self> {
        Arc::new(Self {
            db,
            cache,
            owners: moka::sync::Cache::builder()
                .max_capacity(100_000)
                // A safety net only: changes are broadcast.
                .time_to_live(Duration::from_secs(300))
                .build(),
        })
    }

    /// The tenant and account id owning `external_account_id` on `channel`.
    pub async fn owner(
        &self,
        channel: Channel,
        external_account_id: &str,
    ) -> Result<Option<(ClientId, u64)>> {
        let key = (channel, external_account_id.to_owned());
        if let Some(hit) = self.owners.get(&key) {
            return Ok(hit);
        }
        let found = self
            .db
            .channel_accounts()
            .owner(channel, external_account_id)
            .await?;
        self.owners.insert(key, found);
        Ok(found)
    }

    /// After an account was added or removed: every process forgets what it knew.
    pub async fn changed(&self) -> Result<()> {
        self.owners.invalidate_all();
        self.cache
            .publish(&self.cache.keys().accounts_channel(), "changed")
            .await
    }
}

impl Listener for AccountOwners {
    fn channel(&self) -> String {
        self.cache.keys().accounts_channel()
    }
    fn on_message(&self, _payload: &str) {
        self.owners.invalidate_all();
    }
    fn on_subscribed(&self) {
        self.owners.invalidate_all();
    }
}
