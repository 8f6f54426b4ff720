//! Per-conversation locks in Redis: no two workers, on any replicas, run turns of one
//! conversation at the same time.
//!
//! A lock is `SET <key> <token> NX PX <ttl>` with a random token. While it is held, a
//! background task renews it every third of its TTL (a compare-and-`PEXPIRE` script), so
//! a long LLM call keeps it; a worker that dies stops renewing and the lock expires. A
//! release is a compare-and-delete script, announced on `<prefix>:locks`, so waiting
//! workers on every replica try again at once. A waiter never polls: it sleeps until the
//! announcement or until the lock's remaining TTL ran out (a holder that died).
//!
//! The lock is what keeps turns apart; correctness does not rest on it alone. The
//! database stores a reply only while all the turns it answers are unanswered, so a turn
//! that lost its lock (a stall longer than the TTL) cannot answer twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use deadpool_redis::redis;
use tokio_util::sync::CancellationToken;

use super::broadcast::Listener;
use super::wakeups::Wakeups;
use super::{Cache, redis_error};
use crate::error::Result;
use crate::ids::{ClientId, ConversationId};

/// Renews the lock only if it still holds our token.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Deletes the lock only if it still holds our token, and announces the release on the
/// locks channel (`ARGV[2]`) either way: one round trip.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[2], KEYS[1])
return 0";

/// The scripts, hashed once per process.
static RENEW_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RENEW));
static RELEASE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE));

/// The process's conversation locks.
#[derive(Debug)]
pub struct ConversationLocks {
    cache: Cache,
    wakeups: Wakeups,
    ttl: Duration,
}

/// A held conversation lock; give it back with [`ConversationLocks::release`]. Dropped
/// without a release, it stops being renewed and expires after its TTL.
#[derive(Debug)]
pub struct ConversationLock {
    key: String,
    token: String,
    renewal: CancellationToken,
    lost: Arc<AtomicBool>,
}

impl ConversationLock {
    /// Whether a renewal found the lock gone (it expired during a stall).
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for ConversationLock {
    fn drop(&mut self) {
        self.renewal.cancel();
    }
}

impl ConversationLocks {
    /// Locks that expire `ttl` after their last renewal; they hear releases on other
    /// replicas once registered with [`super::broadcast::start`].
    pub fn new(cache: Cache, ttl: Duration) -> Arc<Self> {
        let channel = cache.keys().locks_channel();
        Arc::new(Self {
            wakeups: Wakeups::new(cache.clone(), channel),
            cache,
            ttl,
        })
    }

    /// Takes the conversation's lock, waiting up to `max_wait` for its holder to release
    /// it (or for it to expire); `None` if it is still held then.
    pub async fn acquire(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        max_wait: Duration,
    ) -> Result<Option<ConversationLock>> {
        let key = self
            .cache
            .keys()
            .tenant(client_id)
            .conversation_lock(conversation_id);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let ttl_ms = self.ttl.as_millis() as u64;
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            // Watch before trying, so a release in between still wakes us.
            let watch = self.wakeups.watch(&key);
            let released = watch.changed();
            let mut conn = self.cache.pool.get().await.map_err(redis_error)?;
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            if taken.is_some() {
                return Ok(Some(self.held(key, token)));
            }
            let left_ms: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            drop(conn);
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // A held lock always has a TTL; -2 means it just went away: try again now.
            let expiry = now + Duration::from_millis(left_ms.max(0) as u64 + 5);
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep_until(expiry.min(deadline)) => {}
            }
        }
    }

    /// Releases a lock and wakes the workers waiting for it, here and on every replica.
    pub async fn release(&self, lock: ConversationLock) -> Result<()> {
        lock.renewal.cancel();
        let mut conn = self.cache.pool.get().await.map_err(redis_error)?;
        let _: i64 = RELEASE_SCRIPT
            .key(&lock.key)
            .arg(&lock.token)
            .arg(self.wakeups.channel())
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        // The subscription wakes them again: harmless, they try again.
        self.wakeups.wake(&lock.key);
        Ok(())
    }

    fn held(&self, key: String, token: String) -> ConversationLock {
        let cache = self.cache.clone();
        let renewal = CancellationToken::new();
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, gone) = (renewal.clone(), lost.clone());
        let (k, t, ttl) = (key.clone(), token.clone(), self.ttl);
        tokio::spawn(async move {
            let every = ttl / 3;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                // Boxed: the call's state (pool checkout, script) lives only while it
                // runs, not in every held lock's idle task (~7 KB each, thousands held).
                match Box::pin(renew(&cache, &k, &t, ttl)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!("conversation lock expired while held");
                        gone.store(true, Ordering::Relaxed);
                        return;
                    }
                    // Redis hiccup: try again at the next tick; the TTL leaves room.
                    Err(e) => tracing::warn!(error = %e, "could not renew a conversation lock"),
                }
            }
        });
        ConversationLock {
            key,
            token,
            renewal,
            lost,
        }
    }
}

async fn renew(cache: &Cache, key: &str, token: &str, ttl: Duration) -> Result<bool> {
    let mut conn = cache.pool.get().await.map_err(redis_error)?;
    let renewed: i64 = RENEW_SCRIPT
        .key(key)
        .arg(token)
        .arg(ttl.as_millis() as u64)
        .invoke_async(&mut conn)
        .await
        .map_err(redis_error)?;
    Ok(renewed == 1)
}

impl Listener for ConversationLocks {
    fn channel(&self) -> String {
        self.wakeups.channel()
    }
    fn on_message(&self, payload: &str) {
        self.wakeups.on_message(payload);
    }
    fn on_subscribed(&self) {
        self.wakeups.on_subscribed();
    }
}
