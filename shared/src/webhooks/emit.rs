//! Where events are made: [`Emitter::emit`] records an event, with a delivery for each of
//! the tenant's endpoints that subscribes to it, and queues the first attempt of each.
//! A tenant with no endpoint for the type costs nothing (its cached configuration says
//! so). Event ids are derived from what the event is about, so the same fact emitted
//! again (a redelivered turn, a retried request) is the same event: recorded once, and
//! only its deliveries that were never tried are queued again.

use chrono::Utc;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{EventType, Job};
use crate::cache::TenantConfigs;
use crate::db::{Db, RecordedEvent};
use crate::error::Result;
use crate::ids::{Channel, ClientId, ConversationId};
use crate::mq::Publisher;

/// Namespace of event ids (UUIDv5 of tenant, type and subject).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6b8f_1c2e_4d7a_4e91_9a3b_5c0d_e1f2_a3b4);

/// An event about to be emitted.
#[derive(Debug, Clone)]
pub struct NewEvent {
    kind: EventType,
    /// Set by [`NewEvent::about`] from the subject; random for facts with no stable
    /// subject.
    subject: Option<String>,
    conversation: Option<(ConversationId, Channel)>,
    data: Map<String, Value>,
}

impl NewEvent {
    /// An event about `subject` (a message id, a status's id…): emitting it again is the
    /// same event.
    pub fn about(kind: EventType, subject: impl std::fmt::Display) -> Self {
        Self {
            kind,
            subject: Some(subject.to_string()),
            conversation: None,
            data: Map::new(),
        }
    }

    /// An event with no subject that would make it the same twice (each is new).
    pub fn once(kind: EventType) -> Self {
        Self {
            kind,
            subject: None,
            conversation: None,
            data: Map::new(),
        }
    }

    /// The conversation it happened in (ordered with that conversation's other events).
    pub fn in_conversation(mut self, id: ConversationId, channel: Channel) -> Self {
        self.conversation = Some((id, channel));
        self.data.insert("conversation_id".into(), json!(id.get()));
        self.data.insert("channel".into(), json!(channel.as_str()));
        self
    }

    /// Adds a field to `data` (`message_id`, `text`, `status`…).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.data.insert(key.into(), value.into());
        self
    }

    pub fn kind(&self) -> EventType {
        self.kind
    }

    fn id(&self, client_id: ClientId) -> Uuid {
        match &self.subject {
            Some(subject) => Uuid::new_v5(
                &EVENT_NAMESPACE,
                format!("{client_id}/{}/{subject}", self.kind).as_bytes(),
            ),
            None => Uuid::now_v7(),
        }
    }
}

/// Emits events for one process (borrowing its database, configuration cache and
/// publisher).
#[derive(Debug, Clone, Copy)]
pub struct Emitter<'a> {
    db: &'a Db,
    configs: &'a TenantConfigs,
    publisher: &'a Publisher,
}

impl<'a> Emitter<'a> {
    pub fn new(db: &'a Db, configs: &'a TenantConfigs, publisher: &'a Publisher) -> Self {
        Self {
            db,
            configs,
            publisher,
        }
    }

    /// Whether any endpoint of the tenant wants events of this type (to skip work that
    /// only an event needs).
    pub async fn wanted(
        &self,
        client_id: ClientId,
        kind: EventType,
        channel: Channel,
    ) -> Result<bool> {
        Ok(self
            .configs
            .get(client_id)
            .await?
            .is_some_and(|t| t.webhooks.iter().any(|w| w.wants(kind, Some(channel)))))
    }

    /// Records the event for every endpoint of the tenant that wants it and queues the
    /// first attempts (each with a confirm). An error means the event may not have
    /// reached every endpoint: the caller fails as it would for any publish.
    pub async fn emit(&self, client_id: ClientId, event: NewEvent) -> Result<()> {
        self.emit_except(client_id, event, None).await
    }

    /// [`Self::emit`], leaving out one endpoint (the one a `webhook.disabled` is about).
    pub async fn emit_except(
        &self,
        client_id: ClientId,
        event: NewEvent,
        except: Option<u64>,
    ) -> Result<()> {
        let Some(tenant) = self.configs.get(client_id).await? else {
            return Ok(());
        };
        let channel = event.conversation.map(|(_, c)| c);
        let targets: Vec<u64> = tenant
            .webhooks
            .iter()
            .filter(|w| Some(w.id) != except && w.wants(event.kind, channel))
            .map(|w| w.id)
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let id = event.id(client_id);
        let body = json!({
            "type": event.kind.as_str(),
            "id": id,
            "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "client_id": client_id.get(),
            "data": event.data,
        });
        let owed = self
            .db
            .tenant(client_id)
            .webhook_log()
            .record(
                &RecordedEvent {
                    id,
                    kind: event.kind,
                    conversation_id: event.conversation.map(|(c, _)| c),
                    body: body.to_string(),
                },
                &targets,
            )
            .await?;
        for webhook_id in owed {
            let job = Job::first(client_id, webhook_id, id);
            self.publisher.publish_webhook_job(&job, None).await?;
        }
        metrics::counter!(crate::metric::WEBHOOK_EVENTS, "type" => event.kind.as_str())
            .increment(1);
        Ok(())
    }
}
