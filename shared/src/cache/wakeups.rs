//! Cross-replica wake-ups by key, over one pub/sub channel.
//!
//! A process holds an in-process table of waiters keyed by string and hears every other
//! replica's announcements through its one Redis subscription ([`super::broadcast`]).
//! Whoever waits must [`Wakeups::watch`] *before* checking the state it waits for, so an
//! announcement in between still wakes it. On every (re)subscription all waiters are
//! woken, since announcements may have been missed meanwhile: a wake-up is a hint to look
//! again, never the state itself.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::Cache;
use crate::error::Result;

/// Waiters keyed by string, woken locally and by announcements on `channel`.
#[derive(Debug)]
pub(super) struct Wakeups {
    cache: Cache,
    channel: String,
    waiters: Mutex<Waiters>,
}

#[derive(Debug, Default)]
struct Waiters {
    by_key: HashMap<String, Weak<Notify>>,
    prune_at: usize,
}

/// A registration to be woken at the next announcement of its key.
#[derive(Debug, Clone)]
pub struct Watch {
    notify: Arc<Notify>,
}

impl Watch {
    /// Resolves at the next announcement after this call. Create it *before* reading.
    pub fn changed(&self) -> Pin<Box<Notified<'_>>> {
        let mut notified = Box::pin(self.notify.notified());
        // Registers the waiter now, so a wake-up before the first poll is not lost.
        notified.as_mut().enable();
        notified
    }
}

impl Wakeups {
    pub(super) fn new(cache: Cache, channel: String) -> Self {
        Self {
            cache,
            channel,
            waiters: Mutex::new(Waiters::default()),
        }
    }

    pub(super) fn channel(&self) -> String {
        self.channel.clone()
    }

    /// Registers interest in `key`.
    pub(super) fn watch(&self, key: &str) -> Watch {
        let mut waiters = match self.waiters.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(notify) = waiters.by_key.get(key).and_then(Weak::upgrade) {
            return Watch { notify };
        }
        let notify = Arc::new(Notify::new());
        waiters
            .by_key
            .insert(key.to_owned(), Arc::downgrade(&notify));
        if waiters.by_key.len() > waiters.prune_at {
            waiters.by_key.retain(|_, w| w.strong_count() > 0);
            waiters.prune_at = (waiters.by_key.len() * 2).max(1024);
        }
        Watch { notify }
    }

    /// Wakes `key`'s waiters here at once, and on every replica through Redis.
    pub(super) async fn announce(&self, key: &str) -> Result<()> {
        // The subscription wakes local waiters again: harmless, they look again.
        self.wake(key);
        self.cache.publish(&self.channel, key).await
    }

    /// Wakes `key`'s waiters in this process only (for callers that announce to the
    /// other replicas themselves).
    pub(super) fn wake(&self, key: &str) {
        let notify = match self.waiters.lock() {
            Ok(w) => w.by_key.get(key).and_then(Weak::upgrade),
            Err(poisoned) => poisoned
                .into_inner()
                .by_key
                .get(key)
                .and_then(Weak::upgrade),
        };
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }

    pub(super) fn on_message(&self, payload: &str) {
        self.wake(payload);
    }

    /// Anything announced while we were not subscribed: wake everyone to look again.
    pub(super) fn on_subscribed(&self) {
        let all: Vec<Arc<Notify>> = match self.waiters.lock() {
            Ok(w) => w.by_key.values().filter_map(Weak::upgrade).collect(),
            Err(_) => Vec::new(),
        };
        for n in all {
            n.notify_waiters();
        }
    }
}
