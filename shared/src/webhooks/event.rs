//! The event types a tenant's endpoint can subscribe to, as they are spelled on the wire.

use std::fmt;
use std::str::FromStr;

use crate::ids::Channel;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    ConversationCreated,
    /// A user message was accepted.
    MessageReceived,
    /// A bot reply was stored.
    MessageReplied,
    /// A human agent's message was stored.
    MessageAgent,
    DeliverySent,
    DeliveryDelivered,
    DeliveryRead,
    DeliveryFailed,
    /// A reply held for WhatsApp's closed window was given up (`whatsapp.hold_max_days`).
    DeliveryExpired,
    ConversationHandoff,
    ConversationHandedBack,
    /// A message got the fallback and went to the dead-letter queue.
    DeadLetter,
    /// One of the tenant's endpoints was disabled (sent to its other endpoints).
    WebhookDisabled,
    /// A provider refused the tenant's own key (401/402/403, quota).
    LlmCredentialsFailed,
    /// The month's spending reached `budget_warning_pct` of the budget (once a month).
    BudgetWarning,
    /// The month's spending reached the budget (once a month): `budget_action` applies.
    BudgetExceeded,
    /// A conversation was erased (an end user's erasure, or retention).
    EndUserErased,
}

impl EventType {
    pub const ALL: [EventType; 17] = [
        Self::ConversationCreated,
        Self::MessageReceived,
        Self::MessageReplied,
        Self::MessageAgent,
        Self::DeliverySent,
        Self::DeliveryDelivered,
        Self::DeliveryRead,
        Self::DeliveryFailed,
        Self::DeliveryExpired,
        Self::ConversationHandoff,
        Self::ConversationHandedBack,
        Self::DeadLetter,
        Self::WebhookDisabled,
        Self::LlmCredentialsFailed,
        Self::BudgetWarning,
        Self::BudgetExceeded,
        Self::EndUserErased,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConversationCreated => "conversation.created",
            Self::MessageReceived => "message.received",
            Self::MessageReplied => "message.replied",
            Self::MessageAgent => "message.agent",
            Self::DeliverySent => "delivery.sent",
            Self::DeliveryDelivered => "delivery.delivered",
            Self::DeliveryRead => "delivery.read",
            Self::DeliveryFailed => "delivery.failed",
            Self::DeliveryExpired => "delivery.expired",
            Self::ConversationHandoff => "conversation.handoff",
            Self::ConversationHandedBack => "conversation.handed_back",
            Self::DeadLetter => "dead_letter",
            Self::WebhookDisabled => "webhook.disabled",
            Self::LlmCredentialsFailed => "llm.credentials_failed",
            Self::BudgetWarning => "budget.warning",
            Self::BudgetExceeded => "budget.exceeded",
            Self::EndUserErased => "end_user.erased",
        }
    }

    /// The event of a WhatsApp delivery status (`sent`, `delivered`, `read`, `failed`).
    pub fn of_delivery_status(status: &str) -> Option<Self> {
        match status {
            "sent" => Some(Self::DeliverySent),
            "delivered" => Some(Self::DeliveryDelivered),
            "read" => Some(Self::DeliveryRead),
            "failed" => Some(Self::DeliveryFailed),
            _ => None,
        }
    }

    /// The only event an API channel account's callback receives.
    pub fn reaches_callback(self, channel: Option<Channel>) -> bool {
        self == Self::MessageReplied && channel == Some(Channel::Api)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no event type.
#[derive(Debug, thiserror::Error)]
#[error("unknown event type {0:?}")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_reads_back_from_its_name() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().ok(), Some(t));
        }
        assert!("message.sent".parse::<EventType>().is_err());
    }
}
