//! Typed identifiers. A tenant id is never a bare integer once it leaves the database row
//! it was read from, so a conversation id can never be passed where a tenant id belongs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A tenant (a row of `clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(u64);

impl ClientId {
    pub const fn new(id: u64) -> Self {
        Self(id)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A conversation row (internal id, unique across tenants, never shown to channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConversationId(u64);

impl ConversationId {
    pub const fn new(id: u64) -> Self {
        Self(id)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The id of an inbound envelope, and of the user message it becomes. The idempotency key
/// of a user turn: unique per tenant in `messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EnvelopeId(Uuid);

/// Namespace of the UUIDv5 envelope ids (a fixed random UUID: changing it would change
/// every deterministic id and break deduplication of retried webhooks across a deploy).
const ENVELOPE_NAMESPACE: Uuid = Uuid::from_u128(0x6c1f_0a0e_5d7b_4c3e_9f5e_2b8d_41a7_c9d3);

impl EnvelopeId {
    /// A deterministic id for a message the channel (or the caller) identified: the same
    /// provider message id or `Idempotency-Key` always yields the same envelope id, so a
    /// retried request is recognised as the same turn.
    pub fn deterministic(client_id: ClientId, channel: Channel, key: &str) -> Self {
        let name = format!("{}\u{1f}{}\u{1f}{}", client_id, channel.as_str(), key);
        Self(Uuid::new_v5(&ENVELOPE_NAMESPACE, name.as_bytes()))
    }
    /// A fresh, time-ordered id for a message nobody identified.
    pub fn random() -> Self {
        Self(Uuid::now_v7())
    }
    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The id of a reply (and of the assistant message it is stored as).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplyId(Uuid);

impl ReplyId {
    pub fn random() -> Self {
        Self(Uuid::now_v7())
    }
    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for ReplyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The channels a message can arrive on and leave by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Whatsapp,
    Widget,
    Mobile,
    Api,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Self::Whatsapp, Self::Widget, Self::Mobile, Self::Api];

    /// Whether the channel's ingress records a user message (commits it at its mailbox
    /// position) before it publishes the envelope: the API, widget and mobile channels
    /// do; WhatsApp leaves recording to the worker.
    pub const fn records_at_acceptance(self) -> bool {
        !matches!(self, Self::Whatsapp)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Whatsapp => "whatsapp",
            Self::Widget => "widget",
            Self::Mobile => "mobile",
            Self::Api => "api",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown channel {0:?} (expected whatsapp, widget, mobile or api)")]
pub struct UnknownChannel(String);

impl FromStr for Channel {
    type Err = UnknownChannel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownChannel(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_ids_depend_on_tenant_channel_and_key() {
        let a = EnvelopeId::deterministic(ClientId::new(1), Channel::Api, "k1");
        assert_eq!(
            a,
            EnvelopeId::deterministic(ClientId::new(1), Channel::Api, "k1")
        );
        assert_ne!(
            a,
            EnvelopeId::deterministic(ClientId::new(2), Channel::Api, "k1")
        );
        assert_ne!(
            a,
            EnvelopeId::deterministic(ClientId::new(1), Channel::Widget, "k1")
        );
        assert_ne!(
            a,
            EnvelopeId::deterministic(ClientId::new(1), Channel::Api, "k2")
        );
    }

    #[test]
    fn channels_round_trip_through_their_names() {
        for c in Channel::ALL {
            assert_eq!(c.as_str().parse::<Channel>().ok(), Some(c));
        }
        assert!("sms".parse::<Channel>().is_err());
    }
}
