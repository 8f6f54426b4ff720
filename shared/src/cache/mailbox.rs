//! Wakes long-polls on every ingress replica when a conversation's mailbox grows.
//!
//! Each process holds **one** Redis subscription ([`super::broadcast`]; not one per
//! waiting poll) and an
//! in-process table of waiters keyed by [`MailboxKey`]. A deliverer that stored a reply
//! calls [`Mailboxes::announce`]; every replica's subscriber wakes the polls waiting on
//! that key, which then read the database (the source of truth) again.
//!
//! A poll must [`Mailboxes::watch`] *before* it reads, so an entry that lands between the
//! read and the wait still wakes it. A lost subscription is re-established, and on every
//! (re)subscribe all waiters are woken to re-read: an announcement missed while
//! disconnected costs a database read, never a lost message.
//!
//! A session may hold one long-poll at a time ([`Mailboxes::claim_poll_slot`]): the
//! newest claim wins on any replica, and an earlier poll learns it was superseded through
//! the same announcements (a generation counter in Redis decides who is newest).

use std::pin::Pin;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::futures::Notified;

use super::Cache;
use super::broadcast::Listener;
use super::wakeups::{Wakeups, Watch};
use crate::error::Result;
use crate::ids::{Channel, ClientId};

/// How long Redis remembers a session's poll generation after its last claim (longer
/// than any poll waits).
const POLL_SLOT_TTL_S: u64 = 120;

/// Identifies one conversation's mailbox without putting the channel-side key (a phone
/// number, say) on the wire: the external id is hashed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MailboxKey(String);

impl MailboxKey {
    /// The key as published on the wire.
    pub(super) fn as_str(&self) -> &str {
        &self.0
    }

    /// A key read back from the wire.
    pub(super) fn from_str_unchecked(key: &str) -> Self {
        Self(key.to_owned())
    }

    pub fn new(client_id: ClientId, channel: Channel, external_id: &str) -> Self {
        let digest = Sha256::digest(external_id.as_bytes());
        Self(format!(
            "{client_id}:{}:{}",
            channel.as_str(),
            hex::encode(&digest[..16])
        ))
    }
}

/// The process's mailbox notifier.
#[derive(Debug)]
pub struct Mailboxes {
    cache: Cache,
    wakeups: Wakeups,
}

/// A registration to be woken when a mailbox may have new entries.
pub type MailboxWatch = Watch;

impl Mailboxes {
    /// The notifier; it hears other replicas once registered with
    /// [`super::broadcast::start`].
    pub fn new(cache: Cache) -> Arc<Self> {
        let channel = cache.keys().mailbox_channel();
        Arc::new(Self {
            wakeups: Wakeups::new(cache.clone(), channel),
            cache,
        })
    }

    /// Registers interest in `key`.
    pub fn watch(&self, key: &MailboxKey) -> MailboxWatch {
        self.wakeups.watch(&key.0)
    }

    /// Tells every replica that `key`'s mailbox has new entries.
    pub async fn announce(&self, key: &MailboxKey) -> Result<()> {
        self.wakeups.announce(&key.0).await
    }

    /// Registers interest in the operators' handoff inbox: any conversation's change of
    /// who answers it.
    pub fn watch_handoffs(&self) -> MailboxWatch {
        self.wakeups.watch(HANDOFFS)
    }

    /// Tells every replica that a conversation was handed to a human or back.
    pub async fn announce_handoffs(&self) -> Result<()> {
        self.wakeups.announce(HANDOFFS).await
    }
}

/// The key changes of mode are announced under; no mailbox key looks like it (those are
/// `<client>:<channel>:<digest>`).
const HANDOFFS: &str = "handoffs";

/// The one long-poll a session may hold; see [`Mailboxes::claim_poll_slot`].
#[derive(Debug)]
pub struct PollSlot {
    redis_key: String,
    generation: u64,
    watch: MailboxWatch,
}

impl PollSlot {
    /// Resolves when another poll may have claimed the slot; then ask
    /// [`Mailboxes::superseded`].
    pub fn contested(&self) -> Pin<Box<Notified<'_>>> {
        self.watch.changed()
    }
}

impl Mailboxes {
    /// Claims the single long-poll slot of a session: any earlier poll of the same session,
    /// on any replica, is woken and finds itself [`superseded`](Self::superseded).
    pub async fn claim_poll_slot(
        &self,
        client_id: ClientId,
        channel: Channel,
        session_id: &str,
    ) -> Result<PollSlot> {
        let redis_key = self
            .cache
            .keys()
            .tenant(client_id)
            .poll_slot(channel, session_id);
        let key = MailboxKey::new(client_id, channel, &format!("poll-slot\0{session_id}"));
        // Watch first, so a claim racing this one still wakes it. Every poll of the
        // session (here too) is woken by the published claim, after the new generation
        // is stored.
        let watch = self.watch(&key);
        let generation = self
            .cache
            .increment_and_publish(&redis_key, POLL_SLOT_TTL_S, &self.wakeups.channel(), &key.0)
            .await?;
        Ok(PollSlot {
            redis_key,
            generation,
            watch,
        })
    }

    /// Whether a newer poll of the same session claimed the slot.
    pub async fn superseded(&self, slot: &PollSlot) -> Result<bool> {
        let current = self.cache.counter(&slot.redis_key).await?;
        Ok(current.is_some_and(|c| c != slot.generation))
    }
}

impl Listener for Mailboxes {
    fn channel(&self) -> String {
        self.wakeups.channel()
    }
    fn on_message(&self, payload: &str) {
        self.wakeups.on_message(payload);
    }
    /// Anything announced while we were not subscribed: wake everyone to re-read.
    fn on_subscribed(&self) {
        self.wakeups.on_subscribed();
    }
}
