//! An in-process cache whose entries every process drops at once when one of them
//! announces a change on a pub/sub channel (and on every resubscription, when an
//! announcement may have been missed). For lookups that are asked on every request but
//! change only by an operator's action (channel-account owners, API keys). A time to
//! live is only the safety net.

use std::hash::Hash;
use std::time::Duration;

use super::Cache;
use super::broadcast::Listener;
use crate::error::Result;

pub(super) struct InvalidatedCache<K, V> {
    cache: Cache,
    channel: String,
    entries: moka::sync::Cache<K, V>,
}

impl<K, V> InvalidatedCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(super) fn new(cache: Cache, channel: String) -> Self {
        Self {
            cache,
            channel,
            entries: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
        }
    }

    pub(super) fn get(&self, key: &K) -> Option<V> {
        self.entries.get(key)
    }

    pub(super) fn insert(&self, key: K, value: V) {
        self.entries.insert(key, value);
    }

    /// After a change: this process and every other one forget everything.
    pub(super) async fn changed(&self) -> Result<()> {
        self.entries.invalidate_all();
        self.cache.publish(&self.channel, "changed").await
    }
}

impl<K, V> Listener for InvalidatedCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn channel(&self) -> String {
        self.channel.clone()
    }
    fn on_message(&self, _payload: &str) {
        self.entries.invalidate_all();
    }
    fn on_subscribed(&self) {
        self.entries.invalidate_all();
    }
}
