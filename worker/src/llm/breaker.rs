//! A circuit breaker per LLM provider: after `threshold` consecutive failures it opens
//! and refuses calls at once (tenants' fallback models answer instead, or the turn waits
//! in the retry ladder) until `cooldown` has passed; then one probe call is let through —
//! success closes it, failure opens it again for another cool-down.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(super) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl Breaker {
    pub(super) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether a call may go out now (at most one probe while half-open).
    pub(super) fn admit(&self, now: Instant) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return true;
        };
        match s.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) if s.probing => false,
            Some(_) => {
                s.probing = true;
                true
            }
        }
    }

    pub(super) fn succeeded(&self) {
        if let Ok(mut s) = self.state.lock() {
            *s = State::default();
        }
    }

    /// Records a failure; returns true when this opened the breaker.
    pub(super) fn failed(&self, now: Instant) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        s.failures += 1;
        if s.probing || (s.open_until.is_none() && s.failures >= self.threshold) {
            s.open_until = Some(now + self.cooldown);
            s.probing = false;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let b = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(b.admit(t0));
        assert!(!b.failed(t0));
        b.succeeded(); // a success in between resets the count
        assert!(!b.failed(t0));
        assert!(!b.failed(t0));
        assert!(b.failed(t0), "third consecutive failure opens");
        assert!(!b.admit(t0 + Duration::from_secs(9)));
        // Half-open: exactly one probe.
        let later = t0 + Duration::from_secs(10);
        assert!(b.admit(later));
        assert!(!b.admit(later));
        assert!(b.failed(later), "a failed probe opens again");
        assert!(!b.admit(later + Duration::from_secs(9)));
        let again = later + Duration::from_secs(10);
        assert!(b.admit(again));
        b.succeeded();
        assert!(
            b.admit(again) && b.admit(again),
            "closed after a good probe"
        );
    }
}
