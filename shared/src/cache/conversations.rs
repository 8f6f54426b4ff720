//! Conversation ids by their key (tenant, channel, external id), cached in the process:
//! every message and every long-poll names its conversation by key, and a key's id
//! changes only when the conversation is erased (its key then names a new one). So a hit
//! makes no round trip; a miss finds or creates the row; an erasure is broadcast and
//! every replica drops the erased id (all of them, when the subscription was lost and a
//! broadcast may have been missed).

use std::sync::Arc;
use std::time::Duration;

use super::Cache;
use super::broadcast::Listener;
use crate::db::Db;
use crate::error::Result;
use crate::ids::{Channel, ClientId, ConversationId};

type Key = (ClientId, Channel, String);

pub struct ConversationIds {
    db: Db,
    cache: Cache,
    ids: moka::sync::Cache<Key, ConversationId>,
}

impl std::fmt::Debug for ConversationIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationIds").finish_non_exhaustive()
    }
}

impl ConversationIds {
    pub fn new(db: Db, cache: Cache) -> Arc<Self> {
        Arc::new(Self {
            db,
            cache,
            ids: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_idle(Duration::from_secs(600))
                .support_invalidation_closures()
                .build(),
        })
    }

    /// Forgets an erased conversation here and on every replica.
    pub async fn erased(&self, client_id: ClientId, conversation_id: ConversationId) -> Result<()> {
        self.forget(client_id, conversation_id);
        self.cache
            .publish(
                &self.cache.keys().erased_channel(),
                &format!("{client_id}:{conversation_id}"),
            )
            .await
    }

    fn forget(&self, client_id: ClientId, conversation_id: ConversationId) {
        let _ = self
            .ids
            .invalidate_entries_if(move |k, v| k.0 == client_id && *v == conversation_id);
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

impl Listener for ConversationIds {
    fn channel(&self) -> String {
        self.cache.keys().erased_channel()
    }
    fn on_message(&self, payload: &str) {
        match erased_conversation(payload) {
            Some((client_id, conversation_id)) => self.forget(client_id, conversation_id),
            None => self.ids.invalidate_all(),
        }
    }
    fn on_subscribed(&self) {
        self.ids.invalidate_all();
    }
}

/// The conversation an erasure's broadcast names (`<client_id>:<conversation_id>`).
pub(crate) fn erased_conversation(payload: &str) -> Option<(ClientId, ConversationId)> {
    let (client, conversation) = payload.split_once(':')?;
    Some((
        ClientId::new(client.parse().ok()?),
        ConversationId::new(conversation.parse().ok()?),
    ))
}
