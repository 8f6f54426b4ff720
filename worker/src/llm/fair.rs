//! A provider's LLM slots shared fairly between tenants, so that one tenant's flood,
//! hanging model or endless answers cannot take the slots every other tenant needs.
//!
//! The rules, applied each time a slot frees or a call asks for one:
//!
//! - A tenant holding fewer than its *share* (`llm.tenant_max_share` of the slots) gets
//!   a free slot.
//! - A tenant at or over its share gets one only while no other tenant waits, and only
//!   if that leaves a free slot for each other tenant that used the provider in the last
//!   [`ACTIVE_WINDOW`] (up to the slots outside the share): a tenant alone may use every
//!   slot (work-conserving), but a quiet tenant that comes back finds a slot free instead
//!   of waiting behind calls that may hang until their timeout.
//! - Among waiting tenants, the next slot goes to the one holding the fewest slots per
//!   unit of its plan's weight (`plans.<plan>.weight`); ties go to the longest waiting.
//!   Each tenant's own calls are served in arrival order.
//!
//! The share is per worker and provider, like `max_concurrency` itself.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shared::ids::ClientId;
use tokio::sync::oneshot;

/// How long after its last call a tenant still counts as using the provider.
pub(super) const ACTIVE_WINDOW: Duration = Duration::from_secs(60);

/// The slots of one provider.
#[derive(Debug)]
pub(super) struct FairSlots {
    capacity: usize,
    /// Most slots a tenant holds while others use the provider.
    share: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    held: usize,
    tenants: HashMap<ClientId, Tenant>,
    /// Arrival order of waiting calls.
    next_seq: u64,
}

#[derive(Debug)]
struct Tenant {
    held: usize,
    weight: u32,
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
    last_active: Instant,
}

impl Tenant {
    /// Drops the waiters whose callers went away; the oldest live one's arrival.
    fn front(&mut self) -> Option<u64> {
        while self.waiting.front().is_some_and(|(_, tx)| tx.is_closed()) {
            self.waiting.pop_front();
        }
        self.waiting.front().map(|(seq, _)| *seq)
    }

    fn active(&self, now: Instant) -> bool {
        self.held > 0 || !self.waiting.is_empty() || now - self.last_active < ACTIVE_WINDOW
    }
}

/// A held slot; dropping it frees the slot for the next caller.
#[derive(Debug)]
pub(super) struct Slot<'a> {
    slots: &'a FairSlots,
    tenant: ClientId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.release(self.tenant);
    }
}

/// A call waiting for a slot. A slot granted to a caller that went away before it saw
/// the grant is freed again.
struct Waiting<'a> {
    slots: &'a FairSlots,
    tenant: ClientId,
    granted: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.granted.take()
            && rx.try_recv().is_ok()
        {
            self.slots.release(self.tenant);
        }
    }
}

impl FairSlots {
    /// `capacity` slots; one tenant holds at most `max_share` of them (at least one)
    /// while others use the provider.
    pub(super) fn new(capacity: usize, max_share: f64) -> Self {
        let capacity = capacity.max(1);
        let share = ((capacity as f64 * max_share).floor() as usize).clamp(1, capacity);
        Self {
            capacity,
            share,
            state: Mutex::new(State::default()),
        }
    }

    /// A slot for a call of `tenant`, whose plan weighs `weight`, once the rules give it
    /// one.
    pub(super) async fn acquire(&self, tenant: ClientId, weight: u32) -> Slot<'_> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut state) = self.state.lock() {
            let now = Instant::now();
            state.next_seq += 1;
            let seq = state.next_seq;
            let entry = state.tenants.entry(tenant).or_insert_with(|| Tenant {
                held: 0,
                weight,
                waiting: VecDeque::new(),
                last_active: now,
            });
            entry.weight = weight.max(1);
            entry.last_active = now;
            entry.waiting.push_back((seq, tx));
            self.grant(&mut state, now);
        }
        let mut waiting = Waiting {
            slots: self,
            tenant,
            granted: Some(rx),
        };
        if let Some(rx) = waiting.granted.as_mut() {
            // The sender is only ever dropped by sending (or with the whole state).
            let _ = rx.await;
        }
        waiting.granted = None;
        Slot {
            slots: self,
            tenant,
        }
    }

    fn release(&self, tenant: ClientId) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        state.held = state.held.saturating_sub(1);
        if let Some(t) = state.tenants.get_mut(&tenant) {
            t.held = t.held.saturating_sub(1);
            t.last_active = now;
        }
        self.grant(&mut state, now);
        state.tenants.retain(|_, t| t.active(now));
    }

    /// Hands free slots to waiting calls, by the rules in the module's documentation.
    fn grant(&self, state: &mut State, now: Instant) {
        while state.held < self.capacity {
            let free = self.capacity - state.held;
            let waiting: Vec<(ClientId, u64)> = state
                .tenants
                .iter_mut()
                .filter_map(|(id, t)| t.front().map(|seq| (*id, seq)))
                .collect();
            let active = state.tenants.values().filter(|t| t.active(now)).count();
            let eligible = |t: &Tenant| {
                if t.held < self.share {
                    return true;
                }
                // Over its share: only alone in the queue, and leaving a slot for each
                // other tenant that used the provider lately.
                let others = active.saturating_sub(1);
                let headroom = others.min(self.capacity - self.share);
                waiting.len() == 1 && free > headroom
            };
            let next = waiting
                .iter()
                .filter_map(|(id, seq)| state.tenants.get(id).map(|t| (id, seq, t)))
                .filter(|(_, _, t)| eligible(t))
                .min_by(|(_, a_seq, a), (_, b_seq, b)| {
                    // a.held / a.weight against b.held / b.weight, then arrival.
                    (a.held as u64 * u64::from(b.weight))
                        .cmp(&(b.held as u64 * u64::from(a.weight)))
                        .then(a_seq.cmp(b_seq))
                })
                .map(|(id, _, _)| *id);
            let Some(id) = next else {
                return;
            };
            let Some(t) = state.tenants.get_mut(&id) else {
                return;
            };
            let Some((_, tx)) = t.waiting.pop_front() else {
                continue;
            };
            if tx.send(()).is_ok() {
                t.held += 1;
                state.held += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::FutureExt;

    use super::*;

    fn tenant(n: u64) -> ClientId {
        ClientId::new(n)
    }

    /// Asks for a slot; `Some` when granted at once.
    fn try_now(slots: &FairSlots, t: ClientId, weight: u32) -> Option<Slot<'_>> {
        slots.acquire(t, weight).now_or_never()
    }

    #[test]
    fn a_tenant_alone_may_use_every_slot() {
        let slots = FairSlots::new(4, 0.5);
        let a = tenant(1);
        let held: Vec<_> = (0..4).filter_map(|_| try_now(&slots, a, 1)).collect();
        assert_eq!(held.len(), 4, "work-conserving: every slot");
        assert!(try_now(&slots, a, 1).is_none(), "capacity still bounds");
    }

    #[test]
    fn a_tenant_that_used_the_provider_lately_finds_a_slot_free() {
        let slots = FairSlots::new(4, 0.5);
        let (a, b) = (tenant(1), tenant(2));
        drop(try_now(&slots, b, 1).expect("b's earlier call"));
        // B is quiet now but active lately: A may take all slots but one.
        let held: Vec<_> = (0..4).filter_map(|_| try_now(&slots, a, 1)).collect();
        assert_eq!(held.len(), 3, "one slot kept for B");
        assert!(
            try_now(&slots, b, 1).is_some(),
            "B's next call goes out at once"
        );
    }

    #[tokio::test]
    async fn a_tenant_over_its_share_waits_behind_others() {
        let slots = Arc::new(FairSlots::new(4, 0.5));
        let (a, b) = (tenant(1), tenant(2));
        // A alone fills every slot (B never seen), then B asks.
        let mut a_held: Vec<_> = (0..4).filter_map(|_| try_now(&slots, a, 1)).collect();
        let s = slots.clone();
        let b_call = tokio::spawn(async move {
            let _slot = s.acquire(b, 1).await;
        });
        let s = slots.clone();
        let a_more = tokio::spawn(async move {
            let _slot = s.acquire(a, 1).await;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        assert!(!b_call.is_finished() && !a_more.is_finished());
        // The first slot freed goes to B, not to A's earlier waiting call.
        a_held.pop();
        tokio::time::timeout(Duration::from_secs(5), b_call)
            .await
            .expect("B got the freed slot")
            .expect("B's task");
        tokio::task::yield_now().await;
        assert!(
            !a_more.is_finished(),
            "A stays at its share while B is active"
        );
        a_more.abort();
    }

    #[test]
    fn slots_go_by_weight_among_waiting_tenants() {
        let slots = FairSlots::new(10, 1.0);
        let (blocker, light, heavy) = (tenant(1), tenant(2), tenant(3));
        let blocking: Vec<_> = (0..10)
            .filter_map(|_| try_now(&slots, blocker, 1))
            .collect();
        // Both wait for more than every slot…
        let mut waits: Vec<_> = (0..10)
            .map(|_| slots.acquire(light, 1).boxed())
            .chain((0..10).map(|_| slots.acquire(heavy, 4).boxed()))
            .collect();
        for w in &mut waits {
            assert!(w.as_mut().now_or_never().is_none(), "nothing free yet");
        }
        // …and the slots freed one by one go four to heavy for each to light.
        drop(blocking);
        let held = |t: ClientId| {
            slots
                .state
                .lock()
                .ok()
                .and_then(|s| s.tenants.get(&t).map(|t| t.held))
                .unwrap_or(0)
        };
        assert_eq!((held(light), held(heavy)), (2, 8), "8 : 2 is 4 : 1");
    }

    #[test]
    fn a_slot_granted_to_a_caller_that_left_is_freed() {
        let slots = FairSlots::new(1, 1.0);
        let a = tenant(1);
        let first = try_now(&slots, a, 1).expect("free slot");
        let mut waiter = slots.acquire(a, 1).boxed();
        assert!(waiter.as_mut().now_or_never().is_none());
        drop(first); // granted to the waiter…
        drop(waiter); // …which left before it saw the grant
        assert!(try_now(&slots, a, 1).is_some(), "the slot came back");
    }
}
