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
}

impl Job {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
