//! The worker's prefetch window shared between tenants.
//!
//! All tenants share one work queue, read in order. A tenant that floods it would fill
//! every worker's window (`amqp.prefetch` unacked deliveries) with its own messages, and
//! every other tenant's next message would wait in the broker behind the whole flood.
//! So while another tenant used this worker in the last [`SEEN_WINDOW`], one tenant
//! holds at most `worker.tenant_max_held` deliveries here; a delivery past that is
//! *parked* instead — its message recorded, the delivery moved to the retry ladder
//! without spending an attempt — and the worker reads on to the messages behind it.
//! Being recorded, a parked message is answered by the next turn of its conversation
//! (one running here already, or the one its delivery starts when it comes back); a
//! delivery whose message was answered meanwhile is acked on its return. A tenant alone
//! may fill the whole window (nothing to protect, and parking costs broker work).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shared::ids::ClientId;

/// How long after its last delivery a tenant still counts as using the worker.
const SEEN_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct TenantWindow {
    max_held: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    held: HashMap<ClientId, usize>,
    seen: HashMap<ClientId, Instant>,
    pruned_at: Instant,
}

/// Whether a delivery is held here or parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Hold,
    Park,
}

impl TenantWindow {
    pub(crate) fn new(max_held: usize) -> Self {
        Self {
            max_held: max_held.max(1),
            state: Mutex::new(State {
                held: HashMap::new(),
                seen: HashMap::new(),
                pruned_at: Instant::now(),
            }),
        }
    }

    /// A delivery of `tenant` arrived; `may_park` unless it must run here (a dry-run
    /// replay, a parking that failed). Held deliveries are counted until
    /// [`TenantWindow::settled`].
    pub(crate) fn arrive(&self, tenant: ClientId, may_park: bool) -> Admission {
        let Ok(mut s) = self.state.lock() else {
            return Admission::Hold;
        };
        let now = Instant::now();
        if now - s.pruned_at >= Duration::from_secs(1) {
            s.seen.retain(|_, at| now - *at < SEEN_WINDOW);
            s.pruned_at = now;
        }
        s.seen.insert(tenant, now);
        let held = s.held.get(&tenant).copied().unwrap_or(0);
        let others = s.seen.len() > 1;
        if may_park && others && held >= self.max_held {
            return Admission::Park;
        }
        *s.held.entry(tenant).or_default() += 1;
        Admission::Hold
    }

    /// A held delivery of `tenant` was settled (acked, retried or dead-lettered).
    pub(crate) fn settled(&self, tenant: ClientId) {
        if let Ok(mut s) = self.state.lock()
            && let Some(n) = s.held.get_mut(&tenant)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.held.remove(&tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_alone_fills_the_window() {
        let w = TenantWindow::new(2);
        let a = ClientId::new(1);
        for _ in 0..5 {
            assert_eq!(w.arrive(a, true), Admission::Hold);
        }
    }

    #[test]
    fn past_its_share_a_tenant_parks_while_others_use_the_worker() {
        let w = TenantWindow::new(2);
        let (a, b) = (ClientId::new(1), ClientId::new(2));
        assert_eq!(w.arrive(b, true), Admission::Hold);
        w.settled(b); // B is done, but seen lately
        assert_eq!(w.arrive(a, true), Admission::Hold);
        assert_eq!(w.arrive(a, true), Admission::Hold);
        assert_eq!(w.arrive(a, true), Admission::Park, "a third delivery");
        assert_eq!(
            w.arrive(a, false),
            Admission::Hold,
            "one that must run here"
        );
        assert_eq!(w.arrive(b, true), Admission::Hold, "B is under its share");
        w.settled(a);
        w.settled(a);
        assert_eq!(w.arrive(a, true), Admission::Hold, "room again");
    }
}
