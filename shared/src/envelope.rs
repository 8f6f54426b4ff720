//! The two wire types that cross the broker: the inbound [`Envelope`] (what a channel
//! received, normalised) and the outbound [`Reply`] (what the bot or an agent says back).
//!
//! Events ([`Event`]) about conversations go to the events exchange for other systems.
//! All are versioned (`v`) and tolerate unknown fields, so a rolling deploy can run old and
//! new processes side by side: a newer producer may add fields an older consumer ignores.
//! Nothing else is ever serialised onto a queue. Personal data is wrapped in [`Pii`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{Channel, ClientId, ConversationId, EnvelopeId, ReplyId};
use crate::pii::Pii;

/// The envelope format this build writes. Readers accept any `v` they can parse.
pub const ENVELOPE_VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u16,
    pub id: EnvelopeId,
    pub client_id: ClientId,
    pub channel: Channel,
    /// The conversation key inside the channel (WhatsApp user id, widget session, API
    /// conversation id). Personal data on some channels.
    pub external_id: Pii<String>,
    pub sender: Sender,
    pub message: MessageContent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_account: Option<String>,
    /// The conversation the channel records the message in. Its data key seals the
    /// personal fields on the wire (`crate::sealed`); absent from envelopes of producers
    /// that name none (older ingresses, tests), which travel in the clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<ConversationId>,
    pub received_at: DateTime<Utc>,
    pub trace: Trace,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,
    /// Caller-supplied metadata (API channel), passed through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Pii<serde_json::Value>>,
}

impl Envelope {
    /// A message a channel received just now from the conversation's own user (the
    /// sender is `external_id`, unnamed): no channel ids, no replay, no metadata. The
    /// channel fills in what else it knows (`sender.name`, `channel_message_id`,
    /// `channel_account`, `metadata`).
    pub fn inbound(
        id: EnvelopeId,
        client_id: ClientId,
        channel: Channel,
        external_id: String,
        message: MessageContent,
        trace: Trace,
    ) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            id,
            client_id,
            channel,
            sender: Sender {
                id: Pii::new(external_id.clone()),
                name: None,
            },
            external_id: Pii::new(external_id),
            message,
            channel_message_id: None,
            channel_account: None,
            conversation_id: None,
            received_at: Utc::now(),
            trace,
            replay: None,
            metadata: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub id: Pii<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Pii<String>>,
}

/// What the user sent. Unknown future kinds fail to parse and are dead-lettered with the
/// reason, never dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MessageContent {
    Text {
        text: Pii<String>,
    },
    Media {
        media_type: String,
        url_or_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<Pii<String>>,
    },
    Postback {
        payload: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<Pii<String>>,
    },
    /// A kind of message chatfleet cannot read (the bot can say so).
    Unsupported {
        original_type: String,
    },
    Location {
        latitude: f64,
        longitude: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<Pii<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<Pii<String>>,
    },
}

impl MessageContent {
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text {
            text: Pii::new(text.into()),
        }
    }

    /// The text the bot reads and the conversation stores for this message.
    pub fn as_prompt_text(&self) -> String {
        match self {
            Self::Text { text } => text.expose().clone(),
            Self::Media {
                media_type,
                caption,
                ..
            } => match caption {
                Some(c) => format!("[{media_type}] {}", c.expose()),
                None => format!("[{media_type}]"),
            },
            Self::Postback { payload, title } => match title {
                Some(t) => t.expose().clone(),
                None => payload.clone(),
            },
            Self::Unsupported { original_type } => {
                format!("[unsupported message type: {original_type}]")
            }
            Self::Location {
                latitude,
                longitude,
                name,
                address,
            } => {
                let label = [name, address]
                    .into_iter()
                    .flatten()
                    .map(|p| p.expose().as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("[location {latitude},{longitude}] {label}")
                    .trim_end()
                    .to_owned()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    pub replay_id: Uuid,
    pub mode: ReplayMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayMode {
    DryRun,
    Live,
}

/// What a reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    Bot,
    Agent,
    HandoffNotice,
    Fallback,
    /// Not a reply but its herald: "the bot is writing". Sent to WhatsApp (the user's
    /// message marked read, a typing indicator shown), never stored, delivered at most
    /// once and never retried.
    Typing,
}

/// A reply on its way to a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub v: u16,
    pub id: ReplyId,
    /// The envelopes (user turns) this reply answers; several when a burst was coalesced.
    pub in_reply_to: Vec<EnvelopeId>,
    pub client_id: ClientId,
    pub channel: Channel,
    pub external_id: Pii<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_account: Option<String>,
    /// The conversation the reply belongs to; absent only from a dry-run replay's reply
    /// (`replay` route), whose conversation may not exist. A channel's deliverer refuses
    /// a reply without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<ConversationId>,
    pub kind: ReplyKind,
    pub text: Pii<String>,
    pub config_version: u64,
    pub created_at: DateTime<Utc>,
    /// The worker already woke the long-polls of the reply's mailbox (it is readable
    /// there from its commit), so the deliverer need not; absent (false) from other
    /// producers and from older workers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub polls_woken: bool,
    /// The channel's id of the user message a [`ReplyKind::Typing`] signal is about (the
    /// WhatsApp wamid to mark read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_message_id: Option<String>,
    /// The choices the reply offers (`offer_choices`): WhatsApp sends them as buttons or
    /// a list; empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// A WhatsApp template message instead of text (an agent's, sent through the admin
    /// API): it may go out while the 24-hour window is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Template>,
}

/// A WhatsApp message template, by the name and language it was approved under, with
/// its parameters (Graph's `components`) when it has any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    pub language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<serde_json::Value>,
}

impl Template {
    /// What is wrong with it, naming the field; `None` when it can be sent.
    pub fn problem(&self) -> Option<String> {
        let name_ok = (1..=512).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Some("name must be 1-512 characters of a-z, 0-9 and '_'".into());
        }
        let (lang, region) = self
            .language
            .split_once('_')
            .map_or((self.language.as_str(), None), |(l, r)| (l, Some(r)));
        let language_ok = (2..=3).contains(&lang.len())
            && lang.bytes().all(|b| b.is_ascii_lowercase())
            && region.is_none_or(|r| {
                (2..=4).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphabetic())
            });
        if !language_ok {
            return Some("language must be a language code such as en or en_US".into());
        }
        match &self.components {
            Some(c) if !c.is_array() => Some("components must be an array".into()),
            Some(c) if c.to_string().len() > 16_384 => {
                Some("components must be at most 16 KiB of JSON".into())
            }
            _ => None,
        }
    }

    /// How it is shown where a text is expected (stored messages, history).
    pub fn as_text(&self) -> String {
        format!("[template {} ({})]", self.name, self.language)
    }
}

/// The conversation a reply goes to: one tenant's, on one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub client_id: ClientId,
    pub channel: Channel,
    pub external_id: Pii<String>,
    pub channel_account: Option<String>,
    /// Absent only for a dry-run replay of a conversation that was never recorded.
    pub conversation_id: Option<ConversationId>,
}

impl Destination {
    /// The conversation `env` came from (recorded as `conversation_id`).
    pub fn of(env: &Envelope, conversation_id: Option<ConversationId>) -> Self {
        Self {
            client_id: env.client_id,
            channel: env.channel,
            external_id: env.external_id.clone(),
            channel_account: env.channel_account.clone(),
            conversation_id,
        }
    }
}

impl Reply {
    /// A new reply (a fresh id, created now) to `to`, answering the envelopes
    /// `in_reply_to` (none for a human agent's message).
    pub fn answering(
        to: Destination,
        in_reply_to: Vec<EnvelopeId>,
        kind: ReplyKind,
        text: String,
        config_version: u64,
    ) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            id: ReplyId::random(),
            in_reply_to,
            client_id: to.client_id,
            channel: to.channel,
            external_id: to.external_id,
            channel_account: to.channel_account,
            conversation_id: to.conversation_id,
            kind,
            text: Pii::new(text),
            config_version,
            created_at: Utc::now(),
            polls_woken: false,
            channel_message_id: None,
            choices: Vec::new(),
            template: None,
        }
    }

    /// The typing signal of a turn answering `env` (see [`ReplyKind::Typing`]).
    pub fn typing(env: &Envelope, conversation_id: ConversationId) -> Self {
        Self {
            channel_message_id: env.channel_message_id.clone(),
            ..Self::answering(
                Destination::of(env, Some(conversation_id)),
                vec![env.id],
                ReplyKind::Typing,
                String::new(),
                0,
            )
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What happened in a conversation that people or systems outside the bot care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The conversation was handed to a human agent.
    Handoff,
    /// The conversation was handed back to the bot.
    HandedBack,
    /// A user message arrived while a human has the conversation (forwarded to agents).
    UserMessage,
    /// The channel reported a reply's delivery status (`status`: sent, delivered, read,
    /// failed).
    Delivery,
}

/// An event on `<prefix>.events`, routing key `handoff.<client_id>`, or
/// `delivery.<status>.<client_id>` for delivery statuses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub v: u16,
    pub id: Uuid,
    pub kind: EventKind,
    pub client_id: ClientId,
    pub conversation_id: ConversationId,
    pub channel: Channel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_id: Option<EnvelopeId>,
    /// The forwarded message's text (`user_message` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Pii<String>>,
    /// The delivery status (`delivery` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The channel's id of the message the status is about (`delivery` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_message_id: Option<String>,
    pub at: DateTime<Utc>,
}

impl Event {
    pub fn new(
        kind: EventKind,
        client_id: ClientId,
        conversation_id: ConversationId,
        channel: Channel,
    ) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            id: Uuid::now_v7(),
            kind,
            client_id,
            conversation_id,
            channel,
            envelope_id: None,
            text: None,
            status: None,
            channel_message_id: None,
            at: Utc::now(),
        }
    }

    /// The routing key on the events exchange.
    pub fn routing_key(&self) -> String {
        match self.kind {
            EventKind::Delivery => format!(
                "delivery.{}.{}",
                self.status.as_deref().unwrap_or("unknown"),
                self.client_id
            ),
            _ => format!("handoff.{}", self.client_id),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            id: EnvelopeId::deterministic(ClientId::new(7), Channel::Api, "idem-1"),
            client_id: ClientId::new(7),
            channel: Channel::Api,
            external_id: Pii::new("conv-1".into()),
            sender: Sender {
                id: Pii::new("user-1".into()),
                name: None,
            },
            message: MessageContent::text("hello"),
            channel_message_id: None,
            channel_account: None,
            conversation_id: None,
            received_at: Utc::now(),
            trace: Trace {
                request_id: "req-1".into(),
                traceparent: None,
            },
            replay: None,
            metadata: None,
        }
    }

    #[test]
    fn envelope_round_trips() {
        let env = sample();
        let back: Envelope = serde_json::from_slice(&env.to_json()).expect("parse");
        assert_eq!(back, env);
    }

    #[test]
    fn unknown_fields_from_newer_producers_are_ignored() {
        let mut value = serde_json::to_value(sample()).expect("value");
        value["added_in_v2"] = serde_json::json!({"anything": true});
        value["message"]["extra"] = serde_json::json!(1);
        let back: Envelope = serde_json::from_value(value).expect("tolerant parse");
        assert_eq!(back.message, MessageContent::text("hello"));
    }

    #[test]
    fn the_wire_shape_is_the_documented_one() {
        let value = serde_json::to_value(sample()).expect("value");
        assert_eq!(value["v"], 1);
        assert_eq!(value["channel"], "api");
        assert_eq!(value["message"]["type"], "text");
        assert_eq!(value["message"]["text"], "hello");
        assert_eq!(value["client_id"], 7);
        assert!(value.get("replay").is_none());
    }

    #[test]
    fn debug_output_hides_personal_data() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains("hello"));
        assert!(!shown.contains("user-1"));
        assert!(!shown.contains("conv-1"));
    }

    /// A reply answering the sample, to the conversation given.
    fn reply_to(conversation_id: Option<ConversationId>) -> Reply {
        Reply::answering(
            Destination::of(&sample(), conversation_id),
            vec![sample().id],
            ReplyKind::Bot,
            "hi".into(),
            3,
        )
    }

    #[test]
    fn a_reply_answers_its_envelope_in_its_conversation() {
        let reply = reply_to(Some(ConversationId::new(42)));
        assert_eq!(
            (reply.v, reply.client_id, reply.channel),
            (ENVELOPE_VERSION, ClientId::new(7), Channel::Api)
        );
        assert_eq!(reply.external_id.expose(), "conv-1");
        let back: Reply = serde_json::from_slice(&reply.to_json()).expect("decoded");
        assert_eq!(back, reply);
    }

    /// A dry-run reply of a conversation never recorded names none (no id-0 stand-in on
    /// the wire).
    #[test]
    fn a_reply_without_a_conversation_names_none_on_the_wire() {
        let wire: serde_json::Value =
            serde_json::from_slice(&reply_to(None).to_json()).expect("json");
        assert!(wire.get("conversation_id").is_none(), "{wire}");
    }
}
