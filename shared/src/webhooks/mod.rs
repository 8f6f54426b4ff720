//! Webhooks: what happens in a tenant's conversations, POSTed to the tenant's own
//! endpoints. An event is recorded (with one delivery per subscribed endpoint) where it
//! happens ([`Emitter`]); a [`Job`] per delivery goes through RabbitMQ to the ingress's
//! webhook deliverer, which signs it to the Standard Webhooks spec ([`signature`]) and
//! retries it through the broker's delay queues. The database rows are the truth about a
//! delivery (a job claims its attempt there), the broker carries the timing.

mod emit;
mod event;
pub mod signature;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::ClientId;

pub use emit::{Emitter, NewEvent};
pub use event::{EventType, UnknownEventType};

/// One attempt owed: the message on `<prefix>.webhooks` and its wait queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub client_id: ClientId,
    pub webhook_id: u64,
    pub event_id: Uuid,
    /// The attempt this job makes (1 for the first).
    pub attempt: u32,
    /// The attempt was claimed by a deliverer that died (the broker handed the job back
    /// unacked): it is made again, though the row says it was claimed. Kept when the job
    /// waits on the hold queue, where the broker's own redelivery flag is lost.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retake: bool,
}

impl Job {
    /// The first attempt of an event's delivery to an endpoint.
    pub fn first(client_id: ClientId, webhook_id: u64, event_id: Uuid) -> Self {
        Self {
            client_id,
            webhook_id,
            event_id,
            attempt: 1,
            retake: false,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
