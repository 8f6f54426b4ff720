//! Which tenant owns a channel account (a WhatsApp `phone_number_id`…), cached in the
//! process: every inbound webhook asks, and the answer changes only when an operator
//! adds or removes an account. Such a change is broadcast to every process, which drops
//! its whole cache at once (and on every resubscription), so a number moved to another
//! tenant is never routed to the old one from a stale entry.
//!
//! Beside it, each tenant's own Meta app (the verify token and app secret from its
//! WhatsApp account's credentials) by the tenant's slug, so `/whatsapp/webhook/{slug}`
//! checks a signature before any database work once the app is known, and each tenant's
//! allowed widget origins, which every widget request of a session checks again (so
//! removing an origin or the widget account ends its sessions); the same announcements
//! drop both.

use std::sync::Arc;

use super::Cache;
use super::broadcast::Listener;
use super::invalidated::InvalidatedCache;
use crate::db::Db;
use crate::error::Result;
use crate::ids::{Channel, ClientId};
use crate::pii::Secret;

/// An account's owner (tenant, account row id), or `None` for an unknown account.
type Owner = Option<(ClientId, u64)>;

/// A tenant's own Meta app, from its WhatsApp account's credentials.
#[derive(Debug, Clone)]
pub struct TenantMetaApp {
    pub client_id: ClientId,
    pub verify_token: Secret<String>,
    pub app_secret: Secret<String>,
}

pub struct AccountOwners {
    db: Db,
    caches: Arc<Caches>,
}

/// Both caches; one announcement drops both.
struct Caches {
    owners: InvalidatedCache<(Channel, String), Owner>,
    /// By tenant slug; `None` when the tenant has no app of its own (or no such slug).
    meta_apps: InvalidatedCache<String, Option<TenantMetaApp>>,
    /// The `allowed_origins` of the tenant's widget accounts, without trailing slashes.
    widget_origins: InvalidatedCache<ClientId, Arc<Vec<String>>>,
}

impl Listener for Caches {
    fn channel(&self) -> String {
        self.owners.channel()
    }
    fn on_message(&self, payload: &str) {
        self.owners.on_message(payload);
        self.meta_apps.on_message(payload);
        self.widget_origins.on_message(payload);
    }
    fn on_subscribed(&self) {
        self.owners.on_subscribed();
        self.meta_apps.on_subscribed();
        self.widget_origins.on_subscribed();
    }
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
            caches: Arc::new(Caches {
                owners: InvalidatedCache::new(cache.clone(), channel.clone()),
                meta_apps: InvalidatedCache::new(cache.clone(), channel.clone()),
                widget_origins: InvalidatedCache::new(cache, channel),
            }),
        })
    }

    /// What keeps this cache in step with the other processes (for [`super::broadcast`]).
    pub fn listener(&self) -> Arc<dyn Listener> {
        self.caches.clone()
    }

    /// The tenant and account id owning `external_account_id` on `channel`.
    pub async fn owner(&self, channel: Channel, external_account_id: &str) -> Result<Owner> {
        let key = (channel, external_account_id.to_owned());
        if let Some(hit) = self.caches.owners.get(&key) {
            return Ok(hit);
        }
        let found = self
            .db
            .channel_account_owner(channel, external_account_id)
            .await?;
        self.caches.owners.insert(key, found);
        Ok(found)
    }

    /// The Meta app of the tenant `slug`, when this process knows it: `Some(None)` for a
    /// tenant known to have none.
    pub fn meta_app(&self, slug: &str) -> Option<Option<TenantMetaApp>> {
        self.caches.meta_apps.get(&slug.to_owned())
    }

    /// Remembers what was read of the tenant `slug`'s Meta app.
    pub fn remember_meta_app(&self, slug: &str, app: Option<TenantMetaApp>) {
        self.caches.meta_apps.insert(slug.to_owned(), app);
    }

    /// Whether `origin` may use the tenant's widget: one of the `allowed_origins` of its
    /// widget channel accounts (a trailing slash in the setting is ignored).
    pub async fn widget_origin_allowed(&self, client_id: ClientId, origin: &str) -> Result<bool> {
        let origins = match self.caches.widget_origins.get(&client_id) {
            Some(hit) => hit,
            None => {
                let accounts = self.db.tenant(client_id).channel_accounts().list().await?;
                let origins: Vec<String> = accounts
                    .iter()
                    .filter(|a| a.channel == Channel::Widget)
                    .filter_map(|a| a.settings.get("allowed_origins")?.as_array().cloned())
                    .flatten()
                    .filter_map(|o| Some(o.as_str()?.trim_end_matches('/').to_owned()))
                    .collect();
                let origins = Arc::new(origins);
                self.caches
                    .widget_origins
                    .insert(client_id, origins.clone());
                origins
            }
        };
        Ok(origins.iter().any(|allowed| allowed == origin))
    }

    /// After an account was added, changed or removed: every process forgets what it
    /// knew.
    pub async fn changed(&self) -> Result<()> {
        self.caches.meta_apps.on_message("changed");
        self.caches.widget_origins.on_message("changed");
        self.caches.owners.changed().await
    }
}
