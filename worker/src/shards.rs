//! Where a worker's deliveries come from: the work shards it holds now, and the way
//! back in.
//!
//! Each work shard is a single-active-consumer queue, and the workers share the shards
//! out among themselves: every second each renews its membership of the fleet in Redis
//! and reads the live members (see `shared::cache::fleet`); sorted by name, member `i`
//! of `n` holds the shards `s` with `s % n == i`. A worker takes up a shard it is given
//! and cancels its consumer of one it no longer holds (its deliveries in flight are still
//! settled on that channel, closed after `worker.drain_timeout_s`; those still on their
//! way to it go back to the queue at once). Where two workers
//! briefly disagree (a member joined or lapsed since one of them looked), both consume
//! and the queue serves one of them; a worker that never reached Redis consumes every
//! shard. A worker that stops leaves the fleet at once; one that dies lapses after
//! [`MEMBERSHIP_TTL`], and its shards' deliveries wait that long (the lock and the
//! database keep every guarantee meanwhile, as without affinity).
//!
//! Every worker also consumes `<prefix>.inbound.work`, the way back in (retries, parked
//! and requeued deliveries), and forwards each delivery to its shard.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shared::cache::Cache;
use shared::metric;
use shared::mq::{Broker, Delivery, Subscription};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often a worker renews its membership and looks at the fleet.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How long a released shard's consumer waits for the deliveries still on their way to
/// it, to hand them back.
const HAND_BACK_WAIT: Duration = Duration::from_secs(1);
/// How long a member that stopped renewing still counts.
pub(crate) const MEMBERSHIP_TTL: Duration = Duration::from_secs(3);

/// Where a delivery was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Shard(u16),
    /// `<prefix>.inbound.work`: to be forwarded to its shard.
    WayBack,
}

/// The deliveries of every queue this worker consumes, as one stream.
pub(crate) struct WorkFeed {
    deliveries: mpsc::Receiver<(Source, Delivery)>,
    /// The consumers, each returning its subscription (still open) when it stops.
    pumps: Arc<tokio::sync::Mutex<JoinSet<Subscription>>>,
    holder: JoinSet<()>,
}

/// The shards member `me` holds among `members` (any order), of `shards`.
pub(crate) fn held_by(me: &str, members: &[String], shards: u16) -> Vec<u16> {
    let mut sorted: Vec<&str> = members.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let Some(index) = sorted.iter().position(|m| *m == me) else {
        return (0..shards).collect();
    };
    (0..shards)
        .filter(|s| usize::from(*s) % sorted.len() == index)
        .collect()
}

impl WorkFeed {
    /// Starts consuming: the way back in at once, the shards as the fleet shares them
    /// out. Everything stops receiving at `shutdown`.
    pub(crate) fn start(
        broker: Broker,
        cache: Cache,
        prefetch: u16,
        drain_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let topology = broker.topology().clone();
        // A worker holding every shard holds `prefetch` deliveries, as before the shards.
        let per_queue = (prefetch / topology.work_shards()).max(1);
        let (tx, deliveries) = mpsc::channel(usize::from(prefetch));
        let pumps = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let pump = {
            let (broker, tx, pumps) = (broker.clone(), tx.clone(), pumps.clone());
            let shutdown = shutdown.clone();
            move |source: Source, stop: CancellationToken| {
                let queue = match source {
                    Source::Shard(n) => topology.work_shard(n),
                    Source::WayBack => topology.inbound_work(),
                };
                let mut subscription = broker.subscribe(&queue, per_queue, "worker", stop);
                let (tx, pumps, shutdown) = (tx.clone(), pumps.clone(), shutdown.clone());
                async move {
                    pumps.lock().await.spawn(async move {
                        while let Some(delivery) = subscription.next().await {
                            if tx.send((source, delivery)).await.is_err() {
                                break;
                            }
                        }
                        // A shard released to another worker: what was still on its way
                        // here goes back to the queue now (at shutdown the channel's
                        // closing hands it back).
                        if !shutdown.is_cancelled() {
                            subscription.hand_back_undelivered(HAND_BACK_WAIT).await;
                        }
                        subscription
                    });
                }
            }
        };
        let mut holder = JoinSet::new();
        holder.spawn({
            let pump = pump.clone();
            let shutdown = shutdown.clone();
            async move { pump(Source::WayBack, shutdown).await }
        });
        let shards = broker.topology().work_shards();
        holder.spawn(hold_shards(
            cache,
            shards,
            pump,
            pumps.clone(),
            drain_timeout,
            shutdown,
        ));
        drop(tx);
        Self {
            deliveries,
            pumps,
            holder,
        }
    }

    /// The next delivery and where it came from; `None` once every consumer stopped.
    pub(crate) async fn next(&mut self) -> Option<(Source, Delivery)> {
        self.deliveries.recv().await
    }

    /// Closes every consumer's channel once the deliveries it handed out are settled.
    pub(crate) async fn close(mut self) {
        while self.holder.join_next().await.is_some() {}
        let mut pumps = self.pumps.lock().await;
        while let Some(stopped) = pumps.join_next().await {
            if let Ok(subscription) = stopped {
                subscription.close().await;
            }
        }
    }
}

/// Renews this worker's membership every [`RENEW_EVERY`] and consumes the shards it is
/// given, until `shutdown` (then leaves the fleet).
async fn hold_shards<P, F>(
    cache: Cache,
    shards: u16,
    pump: P,
    pumps: Arc<tokio::sync::Mutex<JoinSet<Subscription>>>,
    drain_timeout: Duration,
    shutdown: CancellationToken,
) where
    P: Fn(Source, CancellationToken) -> F,
    F: Future<Output = ()>,
{
    let me = uuid::Uuid::new_v4().to_string();
    let mut held: BTreeMap<u16, CancellationToken> = BTreeMap::new();
    let mut known = false;
    let mut retired = JoinSet::new();
    loop {
        let wanted = match cache.renew_fleet_membership(&me, MEMBERSHIP_TTL).await {
            Ok(members) => {
                known = true;
                Some(held_by(&me, &members, shards))
            }
            Err(e) if known => {
                tracing::warn!(error = %e, "cannot renew the fleet membership; keeping the shards held");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the fleet membership; consuming every shard");
                Some((0..shards).collect())
            }
        };
        if let Some(wanted) = wanted {
            let released: Vec<u16> = held
                .keys()
                .filter(|s| !wanted.contains(s))
                .copied()
                .collect();
            for shard in released {
                if let Some(stop) = held.remove(&shard) {
                    stop.cancel();
                }
            }
            for shard in wanted {
                if let std::collections::btree_map::Entry::Vacant(entry) = held.entry(shard) {
                    let stop = entry.insert(shutdown.child_token()).clone();
                    pump(Source::Shard(shard), stop).await;
                }
            }
            metrics::gauge!(metric::WORK_SHARDS_HELD).set(held.len() as f64);
            // Stopped consumers of released shards: their channels close once their
            // deliveries had time to settle.
            close_stopped(&pumps, &mut retired, drain_timeout).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
    }
    if let Err(e) = cache.leave_fleet(&me).await {
        tracing::warn!(error = %e, "could not leave the fleet; its shards move when it lapses");
    }
    metrics::gauge!(metric::WORK_SHARDS_HELD).set(0.0);
    retired.abort_all();
}

/// Takes the consumers that stopped while the worker runs on (their shard was released)
/// and closes each channel `drain_timeout` later.
async fn close_stopped(
    pumps: &tokio::sync::Mutex<JoinSet<Subscription>>,
    retired: &mut JoinSet<()>,
    drain_timeout: Duration,
) {
    let mut pumps = pumps.lock().await;
    while let Some(stopped) = pumps.try_join_next() {
        if let Ok(subscription) = stopped {
            retired.spawn(async move {
                tokio::time::sleep(drain_timeout).await;
                subscription.close().await;
            });
        }
    }
    while retired.try_join_next().is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    /// Every shard has exactly one holder, the shares differ by one at most, and every
    /// member computes the same split whatever order Redis listed them in.
    #[test]
    fn the_members_split_the_shards_between_them() {
        let fleet = members(&["c", "a", "d", "b"]);
        let reversed: Vec<String> = fleet.iter().rev().cloned().collect();
        let mut holders = vec![0; 10];
        let mut shares = Vec::new();
        for me in &fleet {
            let mine = held_by(me, &fleet, 10);
            assert_eq!(mine, held_by(me, &reversed, 10), "order-independent");
            for s in &mine {
                holders[usize::from(*s)] += 1;
            }
            shares.push(mine.len());
        }
        assert!(holders.iter().all(|h| *h == 1), "{holders:?}");
        assert_eq!(
            shares.iter().max().expect("shares") - shares.iter().min().expect("shares"),
            1
        );
    }

    /// A member missing from the list (it could not renew) consumes everything: the
    /// single active consumer keeps it from doubling any shard's work.
    #[test]
    fn a_member_the_fleet_does_not_list_takes_every_shard() {
        assert_eq!(held_by("x", &members(&["a", "b"]), 4), vec![0, 1, 2, 3]);
        assert_eq!(held_by("a", &members(&["a"]), 3), vec![0, 1, 2]);
    }
}
