//! Personal data on the broker, sealed per conversation (crypto-shredding).
//!
//! Every envelope and reply that names its conversation crosses the broker with its
//! personal fields — an envelope's `external_id`, `sender`, `message` and `metadata`, a
//! reply's `external_id`, `text`, `choices` and `template` — moved into one `sealed`
//! field: base64 of `nonce (24 bytes) || XChaCha20-Poly1305 ciphertext` of their JSON,
//! under the conversation's data key, with the tenant, the conversation and the message's
//! id as associated data (a sealed field moved to another message does not open). The
//! routing metadata (version, ids, tenant, channel, channel account, times, trace, replay
//! mark) stays readable. So the archive stream and the dead-letter queue hold personal
//! data only sealed; erasing a conversation deletes its key (`conversation_keys`),
//! and its copies there can no longer be opened: [`Opened::Erased`].
//!
//! A data key is 32 random bytes, made on the first message of a conversation, stored
//! sealed under the encryption key ring ([`SecretBox::seal_data_key`]) and cached in the
//! process; an erasure's broadcast drops it on every replica. A body without `sealed`
//! (from before data keys, or a dry-run's reply to a conversation never recorded) is read
//! as it is.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::KeyInit;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::cache::Cache;
use crate::cache::broadcast::Listener;
use crate::db::{Db, StoredDataKey};
use crate::envelope::{Envelope, Replay, Reply};
use crate::error::{Error, Result};
use crate::ids::{Channel, ClientId, ConversationId};
use crate::secrets::{SecretBox, open_under, seal_under};

const SEALED: &str = "sealed";
/// An envelope's personal fields.
const ENVELOPE_PERSONAL: &[&str] = &["external_id", "sender", "message", "metadata"];
/// A reply's personal fields.
const REPLY_PERSONAL: &[&str] = &["external_id", "text", "choices", "template"];

/// What a body read from the broker turned out to be.
#[derive(Debug)]
pub enum Opened<T> {
    /// Readable: sealed under a key that still exists, or never sealed.
    Readable(T),
    /// Sealed under the key of a conversation that was erased since.
    Erased(Heading),
}

impl<T> Opened<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Opened<U> {
        match self {
            Self::Readable(item) => Opened::Readable(f(item)),
            Self::Erased(heading) => Opened::Erased(heading),
        }
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum Unreadable {
    /// It is not a well-formed envelope or reply, or its seal does not open: reading it
    /// again will not help.
    Malformed(String),
    /// The data key could not be read now (the database); reading it again may work.
    Unavailable(Error),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(why) => f.write_str(why),
            Self::Unavailable(e) => write!(f, "the data key cannot be read now: {e}"),
        }
    }
}

/// The readable routing metadata of an envelope or a reply, sealed or not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Heading {
    pub id: uuid::Uuid,
    pub client_id: ClientId,
    pub channel: Channel,
    #[serde(default)]
    pub conversation_id: Option<ConversationId>,
    /// When the channel received it: an envelope's (a reply has none).
    #[serde(default)]
    pub received_at: Option<DateTime<Utc>>,
    /// An envelope's replay mark.
    #[serde(default)]
    pub replay: Option<Replay>,
}

impl Heading {
    /// The heading of a body, when it has one.
    pub fn of(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }
}

/// A conversation's key as this process holds it.
#[derive(Clone)]
enum Held {
    Key(Arc<XChaCha20Poly1305>),
    Erased,
}

/// Seals and opens envelopes and replies with their conversations' data keys.
pub struct DataKeys {
    db: Db,
    secrets: SecretBox,
    cache: Cache,
    held: moka::sync::Cache<(ClientId, ConversationId), Held>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeys([redacted])")
    }
}

impl DataKeys {
    pub fn new(db: Db, secrets: SecretBox, cache: Cache) -> Arc<Self> {
        Arc::new(Self {
            db,
            secrets,
            cache,
            held: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        })
    }

    /// The envelope as it goes on the broker: sealed when it names its conversation.
    pub async fn seal_envelope(&self, envelope: &Envelope) -> Result<Vec<u8>> {
        match envelope.conversation_id {
            Some(conversation) => {
                self.seal(
                    envelope,
                    envelope.client_id,
                    conversation,
                    ENVELOPE_PERSONAL,
                )
                .await
            }
            None => Ok(envelope.to_json()),
        }
    }

    /// The reply as it goes on the broker: sealed when it names its conversation (a
    /// dry-run's reply to a conversation never recorded names none).
    pub async fn seal_reply(&self, reply: &Reply) -> Result<Vec<u8>> {
        match reply.conversation_id {
            Some(conversation) => {
                self.seal(reply, reply.client_id, conversation, REPLY_PERSONAL)
                    .await
            }
            None => Ok(reply.to_json()),
        }
    }

    pub async fn open_envelope(
        &self,
        body: &[u8],
    ) -> std::result::Result<Opened<Envelope>, Unreadable> {
        self.open(body, "envelope").await
    }

    pub async fn open_reply(&self, body: &[u8]) -> std::result::Result<Opened<Reply>, Unreadable> {
        self.open(body, "reply").await
    }

    async fn seal<T: Serialize>(
        &self,
        item: &T,
        client_id: ClientId,
        conversation_id: ConversationId,
        personal: &[&str],
    ) -> Result<Vec<u8>> {
        let Held::Key(key) = self.key(client_id, conversation_id, true).await? else {
            return Err(Error::Invalid(format!(
                "conversation {conversation_id} was erased: nothing more is sent for it"
            )));
        };
        let Ok(Value::Object(mut fields)) = serde_json::to_value(item) else {
            return Err(Error::Internal("a message serialises to an object".into()));
        };
        let hidden: Map<String, Value> = personal
            .iter()
            .filter_map(|name| Some(((*name).to_owned(), fields.remove(*name)?)))
            .collect();
        let aad = associated_data(&fields)
            .ok_or_else(|| Error::Internal("a message has an id and a tenant".into()))?;
        let plain = serde_json::to_vec(&hidden).map_err(|e| Error::Internal(e.to_string()))?;
        let stored = seal_under(&key, &aad, &plain)?;
        fields.insert(SEALED.into(), Value::String(BASE64.encode(stored)));
        serde_json::to_vec(&fields).map_err(|e| Error::Internal(e.to_string()))
    }

    async fn open<T: DeserializeOwned>(
        &self,
        body: &[u8],
        what: &str,
    ) -> std::result::Result<Opened<T>, Unreadable> {
        let malformed = |why: String| Unreadable::Malformed(format!("undecodable {what}: {why}"));
        let mut fields: Map<String, Value> =
            serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
        if let Some(sealed) = fields.remove(SEALED) {
            let heading: Heading = serde_json::from_value(Value::Object(fields.clone()))
                .map_err(|e| malformed(e.to_string()))?;
            let conversation = heading
                .conversation_id
                .ok_or_else(|| malformed("sealed without naming its conversation".into()))?;
            let key = match self.key(heading.client_id, conversation, false).await {
                Ok(Held::Key(key)) => key,
                Ok(Held::Erased) => return Ok(Opened::Erased(heading)),
                Err(Error::Invalid(why)) => return Err(malformed(why)),
                Err(e) => return Err(Unreadable::Unavailable(e)),
            };
            let stored = sealed
                .as_str()
                .and_then(|s| BASE64.decode(s).ok())
                .ok_or_else(|| malformed("a sealed field that is not base64".into()))?;
            let aad = associated_data(&fields)
                .ok_or_else(|| malformed("no id or tenant beside the seal".into()))?;
            let plain = open_under(&key, &aad, &stored).ok_or_else(|| {
                malformed("its seal does not open under its conversation's key".into())
            })?;
            let hidden: Map<String, Value> =
                serde_json::from_slice(&plain).map_err(|e| malformed(e.to_string()))?;
            fields.extend(hidden);
        }
        serde_json::from_value(Value::Object(fields))
            .map(Opened::Readable)
            .map_err(|e| malformed(e.to_string()))
    }

    /// The conversation's key, made when it has none yet and `create`. `Invalid` when
    /// there is no such conversation (or, not creating, no key).
    async fn key(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        create: bool,
    ) -> Result<Held> {
        let id = (client_id, conversation_id);
        if let Some(held) = self.held.get(&id) {
            return Ok(held);
        }
        let conversations = self.db.tenant(client_id).conversations();
        // Creating, the key is offered first: a new conversation's costs one statement;
        // one that has a key (or was erased, or is unknown) is read after the offer.
        let offered = if create {
            let mut fresh = [0u8; 32];
            rand::rng().fill_bytes(&mut fresh);
            let sealed = self
                .secrets
                .seal_data_key(client_id, conversation_id, &fresh)?;
            conversations
                .create_data_key(conversation_id, &sealed)
                .await?
                .then_some(sealed)
        } else {
            None
        };
        let stored = match offered {
            Some(sealed) => StoredDataKey::Sealed(sealed),
            None => conversations.data_key(conversation_id).await?,
        };
        let held = match stored {
            StoredDataKey::Sealed(sealed) => {
                let key = self
                    .secrets
                    .open_data_key(client_id, conversation_id, &sealed)?;
                Held::Key(Arc::new(XChaCha20Poly1305::new(&key.into())))
            }
            StoredDataKey::Erased => Held::Erased,
            StoredDataKey::Missing => {
                return Err(Error::Invalid(format!(
                    "conversation {conversation_id} has no data key"
                )));
            }
            StoredDataKey::Unknown => {
                return Err(Error::Invalid(format!(
                    "tenant {client_id} has no conversation {conversation_id}"
                )));
            }
        };
        self.held.insert(id, held.clone());
        Ok(held)
    }
}

/// What a sealed field is bound to: the tenant, the conversation and the message's id.
fn associated_data(fields: &Map<String, Value>) -> Option<Vec<u8>> {
    let id = fields.get("id")?.as_str()?;
    let client = fields.get("client_id")?.as_u64()?;
    let conversation = fields.get("conversation_id")?.as_u64()?;
    Some(format!("chatfleet/sealed/{client}/{conversation}/{id}").into_bytes())
}

/// An erasure drops the conversation's key here (the broadcast of
/// [`crate::cache::ConversationIds::erased`]).
impl Listener for DataKeys {
    fn channel(&self) -> String {
        self.cache.keys().erased_channel()
    }
    fn on_message(&self, payload: &str) {
        match crate::cache::erased_conversation(payload) {
            Some(conversation) => self.held.invalidate(&conversation),
            None => self.held.invalidate_all(),
        }
    }
    fn on_subscribed(&self) {
        self.held.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Destination, MessageContent, ReplyKind, Trace};
    use crate::ids::EnvelopeId;
    use crate::testkit::TestEnv;

    fn keys_of(env: &TestEnv) -> Arc<DataKeys> {
        DataKeys::new(
            env.db.clone(),
            SecretBox::new(&env.settings.security.encryption_ring()),
            env.cache.clone(),
        )
    }

    fn envelope(client_id: ClientId, conversation: Option<ConversationId>) -> Envelope {
        Envelope {
            conversation_id: conversation,
            metadata: Some(crate::pii::Pii::new(serde_json::json!({"order": "A-77"}))),
            ..Envelope::inbound(
                EnvelopeId::random(),
                client_id,
                Channel::Api,
                "+4915112345678".into(),
                MessageContent::text("my card is 4111 1111 1111 1111"),
                Trace {
                    request_id: "r-1".into(),
                    traceparent: None,
                },
            )
        }
    }

    /// An envelope and a reply cross the broker with their personal fields sealed and
    /// their routing readable; they open as they were; a sealed field moved onto another
    /// message does not open; a process that never saw the key opens them too.
    #[tokio::test]
    async fn personal_fields_are_sealed_and_open_as_they_were() {
        let env = TestEnv::start(&[]).await;
        let t = env.tenant("sealed").await;
        let conversation = env
            .db
            .tenant(t.id)
            .conversations()
            .get_or_create(Channel::Api, "+4915112345678")
            .await
            .expect("conversation");
        let keys = keys_of(&env);
        let sent = envelope(t.id, Some(conversation));
        let body = keys.seal_envelope(&sent).await.expect("sealed");
        let wire = String::from_utf8_lossy(&body).into_owned();
        for personal in ["4111", "+4915112345678", "A-77", "card"] {
            assert!(!wire.contains(personal), "{personal} in the clear: {wire}");
        }
        let heading = Heading::of(&body).expect("a readable heading");
        assert_eq!(
            (heading.client_id, heading.conversation_id, heading.channel),
            (t.id, Some(conversation), Channel::Api)
        );
        assert!(heading.received_at.is_some());
        let elsewhere = keys_of(&env);
        match elsewhere.open_envelope(&body).await.expect("opens") {
            Opened::Readable(opened) => assert_eq!(opened, sent),
            Opened::Erased(_) => panic!("not erased"),
        }

        let reply = Reply::answering(
            Destination::of(&sent, Some(conversation)),
            vec![sent.id],
            ReplyKind::Bot,
            "your card 4111 1111 1111 1111 is on file".into(),
            1,
        );
        let reply_body = keys.seal_reply(&reply).await.expect("sealed");
        assert!(!String::from_utf8_lossy(&reply_body).contains("4111"));
        assert!(
            Heading::of(&reply_body)
                .expect("heading")
                .received_at
                .is_none()
        );
        match elsewhere.open_reply(&reply_body).await.expect("opens") {
            Opened::Readable(opened) => assert_eq!(opened, reply),
            Opened::Erased(_) => panic!("not erased"),
        }

        // The seal of one message under another message's id does not open.
        let mut moved: Map<String, Value> = serde_json::from_slice(&body).expect("json");
        moved.insert("id".into(), Value::String(EnvelopeId::random().to_string()));
        let moved = serde_json::to_vec(&moved).expect("json");
        match keys.open_envelope(&moved).await {
            Err(Unreadable::Malformed(why)) => assert!(why.contains("does not open"), "{why}"),
            other => panic!("a moved seal opened: {other:?}"),
        }
        // Without a conversation it goes, and is read, as it is.
        let clear = envelope(t.id, None);
        let clear_body = keys.seal_envelope(&clear).await.expect("as it is");
        assert_eq!(clear_body, clear.to_json());
        assert!(matches!(
            keys.open_envelope(&clear_body).await,
            Ok(Opened::Readable(e)) if e == clear
        ));
        env.teardown().await;
    }

    /// Erasing the conversation deletes its key: what was sealed under it reads as
    /// erased (in a process that held the key too, once the erasure is broadcast), and
    /// nothing more can be sealed for it.
    #[tokio::test]
    async fn an_erased_conversation_cannot_be_opened_or_sealed_for() {
        let env = TestEnv::start(&[]).await;
        let t = env.tenant("shredded").await;
        let conversations = env.db.tenant(t.id).conversations();
        let conversation = conversations
            .get_or_create(Channel::Api, "+4915112345678")
            .await
            .expect("conversation");
        let keys = keys_of(&env);
        let body = keys
            .seal_envelope(&envelope(t.id, Some(conversation)))
            .await
            .expect("sealed");
        conversations
            .erase(conversation)
            .await
            .expect("erased")
            .expect("it existed");
        assert_eq!(
            conversations.data_key(conversation).await.expect("read"),
            StoredDataKey::Erased
        );
        let fresh = keys_of(&env);
        assert!(matches!(
            fresh.open_envelope(&body).await,
            Ok(Opened::Erased(h)) if h.conversation_id == Some(conversation)
        ));
        // The process that sealed it still holds the key until the broadcast arrives.
        keys.on_message(&format!("{}:{}", t.id, conversation));
        assert!(matches!(
            keys.open_envelope(&body).await,
            Ok(Opened::Erased(_))
        ));
        let refused = keys
            .seal_envelope(&envelope(t.id, Some(conversation)))
            .await
            .expect_err("nothing is sealed for an erased conversation");
        assert!(refused.to_string().contains("erased"), "{refused}");
        env.teardown().await;
    }
}
