//! Envelopes this worker answered lately. A turn answers every pending message of its
//! conversation, including messages whose deliveries are still on their way (their
//! channel recorded them at acceptance); under load that is most of them. When such a
//! delivery arrives, its message is answered and the reply confirmed by the broker, so
//! it is acked at once, without the conversation's lock or a database read.
//!
//! Only final answers are remembered: a message that got the tenant's fallback message
//! is reopened when an operator requeues its dead letter, and must then take the whole
//! turn. And only a shortcut: an envelope not remembered here (answered by another
//! worker, or forgotten) takes the whole turn, which finds it answered and does nothing.

use std::time::Duration;

use shared::envelope::Envelope;
use shared::ids::EnvelopeId;

/// Envelopes remembered at most (about 100 bytes each).
const CAPACITY: u64 = 50_000;
/// How long one is remembered: far longer than a delivery waits behind its turn.
const KEPT_FOR: Duration = Duration::from_secs(300);

pub(crate) struct Answered(moka::sync::Cache<EnvelopeId, ()>);

impl Answered {
    pub(crate) fn new() -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(KEPT_FOR)
                .build(),
        )
    }

    /// Remembers the envelopes of messages whose final reply the broker confirmed.
    pub(crate) fn remember(&self, envelope_ids: &[EnvelopeId]) {
        for id in envelope_ids {
            self.0.insert(*id, ());
        }
    }

    /// Whether every one of `envs` is known answered.
    pub(crate) fn all(&self, envs: &[Envelope]) -> bool {
        !envs.is_empty() && envs.iter().all(|e| self.0.contains_key(&e.id))
    }
}
