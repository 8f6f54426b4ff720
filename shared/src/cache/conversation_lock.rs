//! Per-conversation locks in Redis: no two workers, on any replicas, run turns of one
//! conversation at the same time.
//!
//! A lock is `SET <key> <token> NX PX <ttl>` with a random token. While it is held, a
//! background task renews it every third of its TTL (a compare-and-`PEXPIRE` script), so
//! a long LLM call keeps it; a worker that dies stops renewing and the lock expires. A
//! release is a compare-and-delete script, announced on `<prefix>:locks` when somebody
//! waits, so waiting workers on every replica try again at once. A waiter never polls: it
//! sleeps until the announcement or until the lock's remaining TTL ran out (a holder that
//! died).
//!
//! Who waits is marked in Redis by the same script that finds the lock taken (a waiters
//! key that outlives the waiter's sleep), and the release announces only if that mark
//! is there: a turn's lock is rarely contended (a worker runs a conversation's turns one
//! after another), and every announcement wakes every worker replica's subscription.
//! Both scripts are atomic, so a waiter marked itself before a release (which then
//! announces) or found the lock free.
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

/// Takes the lock (`KEYS[1]`) for our token if it is free: `{1, 0}`. Otherwise marks
/// that somebody waits (`KEYS[2]`, until `ARGV[3]` ms after the lock's own expiry, which
/// outlasts the waiter's sleep) and answers `{0, <the lock's remaining ms>}`.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, 0}
end
local left = redis.call('PTTL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', math.max(left, 0) + tonumber(ARGV[3]))
return {0, left}";

/// Deletes the lock only if it still holds our token, and announces the release on the
/// locks channel (`ARGV[2]`) if somebody waits (`KEYS[2]`): one round trip.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
if redis.call('DEL', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[2], KEYS[1])
end
return 0";

/// How long a waiters mark outlives the lock's remaining TTL that the waiter sleeps for.
const WAITERS_MARGIN: Duration = Duration::from_secs(1);

/// The scripts, hashed once per process.
static ACQUIRE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ACQUIRE));
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
    waiters: String,
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
        let keys = self.cache.keys().tenant(client_id);
        let key = keys.conversation_lock(conversation_id);
        let waiters = keys.conversation_lock_waiters(conversation_id);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let ttl_ms = self.ttl.as_millis() as u64;
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            // Watch before trying, so a release in between still wakes us.
            let watch = self.wakeups.watch(&key);
            let released = watch.changed();
            let mut conn = self.cache.connection();
            let (taken, left_ms): (i64, i64) = ACQUIRE_SCRIPT
                .key(&key)
                .key(&waiters)
                .arg(&token)
                .arg(ttl_ms)
                .arg(WAITERS_MARGIN.as_millis() as u64)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
            drop(conn);
            if taken == 1 {
                return Ok(Some(self.held(key, waiters, token)));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // A held lock always has a TTL (the script read it while the lock was held).
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
        let mut conn = self.cache.connection();
        let _: i64 = RELEASE_SCRIPT
            .key(&lock.key)
            .key(&lock.waiters)
            .arg(&lock.token)
            .arg(self.wakeups.channel())
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        // The subscription wakes them again: harmless, they try again.
        self.wakeups.wake(&lock.key);
        Ok(())
    }

    fn held(&self, key: String, waiters: String, token: String) -> ConversationLock {
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
                // Boxed: the call's state (the script and its reply) lives only while it
                // runs, not in every held lock's idle task (thousands are held).
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
            waiters,
            token,
            renewal,
            lost,
        }
    }
}

async fn renew(cache: &Cache, key: &str, token: &str, ttl: Duration) -> Result<bool> {
    let mut conn = cache.connection();
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::testkit::{TestEnv, eventually};

    /// Everything said on the locks channel, in order, as one replica hears it.
    struct Heard {
        channel: String,
        payloads: Mutex<Vec<String>>,
        subscribed: AtomicBool,
    }

    impl Listener for Heard {
        fn channel(&self) -> String {
            self.channel.clone()
        }
        fn on_message(&self, payload: &str) {
            if let Ok(mut heard) = self.payloads.lock() {
                heard.push(payload.to_owned());
            }
        }
        fn on_subscribed(&self) {
            self.subscribed.store(true, Ordering::Relaxed);
        }
    }

    /// A release nobody waits for is not announced; one somebody waits for on another
    /// replica is, and wakes the waiter long before the held lock's TTL would have.
    #[tokio::test]
    async fn a_release_is_announced_when_somebody_waits_and_wakes_the_waiter() {
        const WAIT: Duration = Duration::from_secs(20);
        let env = TestEnv::start(&[]).await;
        let shutdown = CancellationToken::new();
        let ttl = Duration::from_secs(60);
        let (a, b) = (
            ConversationLocks::new(env.cache.clone(), ttl),
            ConversationLocks::new(env.cache.clone(), ttl),
        );
        let heard = Arc::new(Heard {
            channel: env.cache.keys().locks_channel(),
            payloads: Mutex::new(Vec::new()),
            subscribed: AtomicBool::new(false),
        });
        super::super::broadcast::start(env.cache.clone(), vec![a.clone()], shutdown.clone());
        super::super::broadcast::start(
            env.cache.clone(),
            vec![b.clone(), heard.clone()],
            shutdown.clone(),
        );
        eventually(WAIT, "the waiting replica subscribed", || async {
            heard.subscribed.load(Ordering::Relaxed).then_some(())
        })
        .await;
        let tenant = ClientId::new(7);
        let (quiet, contended) = (ConversationId::new(1), ConversationId::new(2));

        let lock = a
            .acquire(tenant, quiet, Duration::ZERO)
            .await
            .expect("redis");
        a.release(lock.expect("free")).await.expect("release");

        let held = a
            .acquire(tenant, contended, Duration::ZERO)
            .await
            .expect("redis");
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(tenant, contended, 2 * WAIT).await })
        };
        let waiters = env
            .cache
            .keys()
            .tenant(tenant)
            .conversation_lock_waiters(contended);
        eventually(WAIT, "the waiter marked itself", || async {
            let mut conn = env.cache.connection();
            let marked: bool = redis::cmd("EXISTS")
                .arg(&waiters)
                .query_async(&mut conn)
                .await
                .ok()?;
            marked.then_some(())
        })
        .await;
        a.release(held.expect("free")).await.expect("release");
        let taken = tokio::time::timeout(WAIT, waiter)
            .await
            .expect("woken by the release, not by the TTL")
            .expect("joined")
            .expect("redis")
            .expect("taken after the release");

        // Pub/sub keeps order: an announcement of the quiet release would come first.
        let first = eventually(WAIT, "the announcement", || async {
            heard.payloads.lock().ok()?.first().cloned()
        })
        .await;
        assert_eq!(
            first,
            env.cache.keys().tenant(tenant).conversation_lock(contended)
        );
        b.release(taken).await.expect("release");
        shutdown.cancel();
        env.teardown().await;
    }
}
