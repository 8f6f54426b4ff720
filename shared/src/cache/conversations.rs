//! Conversation ids by their key (tenant, channel, external id), cached in the process:
//! every message and every long-poll names its conversation by key, and a key's id never
//! changes once the conversation exists (conversations are never deleted on their own;
//! only a tenant's removal takes them, and with them everything that could ask). So a
//! hit needs no invalidation and makes no round trip; a miss finds or creates the row.

use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use crate::error::Result;
use crate::ids::{Channel, ClientId, ConversationId};

type Key = (ClientId, Channel, String);

pub struct ConversationIds {
    db: Db,
    ids: moka::sync::Cache<Key, ConversationId>,
}

impl std::fmt::Debug for ConversationIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationIds").finish_non_exhaustive()
    }
}

impl ConversationIds {
    pub fn new(db: Db) -> Arc<Self> {
        Arc::new(Self {
            db,
            ids: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        })
    }

    /// The conversation for this key, created on first use.
    pub async fn get_or_create(
        &self,
        client_id: ClientId,
        channel: Channel,
        external_id: &str,
    ) -> Result<ConversationId> {
        let key = (client_id, channel, external_id.to_owned());
        if let Some(id) = self.ids.get(&key) {
            return Ok(id);
        }
        let id = self
            .db
            .tenant(client_id)
            .conversations()
            .get_or_create(channel, external_id)
            .await?;
        self.ids.insert(key, id);
        Ok(id)
    }

    /// The conversation for this key, if it exists yet.
    pub async fn find(
        &self,
        client_id: ClientId,
        channel: Channel,
        external_id: &str,
    ) -> Result<Option<ConversationId>> {
        let key = (client_id, channel, external_id.to_owned());
        if let Some(id) = self.ids.get(&key) {
            return Ok(Some(id));
        }
        let found = self
            .db
            .tenant(client_id)
            .conversations()
            .find(channel, external_id)
            .await?;
        if let Some(id) = found {
            self.ids.insert(key, id);
        }
        Ok(found)
    }
}
