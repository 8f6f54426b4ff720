//! Attempts in flight, bounded per endpoint and per tenant: a permit of each is taken
//! without waiting (a job that finds none waits on the hold queue instead of holding the
//! consumer), and given back when the attempt ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shared::ids::ClientId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The permits of one attempt: its endpoint's and its tenant's.
pub(super) struct Permits {
    _endpoint: OwnedSemaphorePermit,
    _tenant: OwnedSemaphorePermit,
}

pub(super) struct Limits {
    per_endpoint: u32,
    per_tenant: u32,
    endpoints: Mutex<HashMap<u64, Arc<Semaphore>>>,
    tenants: Mutex<HashMap<ClientId, Arc<Semaphore>>>,
}

impl Limits {
    pub fn new(per_endpoint: u32, per_tenant: u32) -> Self {
        Self {
            per_endpoint,
            per_tenant,
            endpoints: Mutex::default(),
            tenants: Mutex::default(),
        }
    }

    /// Both permits, or `None` when the endpoint or the tenant is at its limit.
    pub fn take(&self, client_id: ClientId, webhook_id: u64) -> Option<Permits> {
        let tenant = semaphore(&self.tenants, client_id, self.per_tenant)
            .try_acquire_owned()
            .ok()?;
        let endpoint = semaphore(&self.endpoints, webhook_id, self.per_endpoint)
            .try_acquire_owned()
            .ok()?;
        Some(Permits {
            _endpoint: endpoint,
            _tenant: tenant,
        })
    }
}

/// The semaphore of `key`, made on first use; idle ones (every permit back) are dropped
/// now and then so the maps do not grow with every endpoint ever seen.
fn semaphore<K: std::hash::Hash + Eq + Copy>(
    map: &Mutex<HashMap<K, Arc<Semaphore>>>,
    key: K,
    permits: u32,
) -> Arc<Semaphore> {
    let mut map = map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if map.len() > 10_000 {
        map.retain(|_, s| s.available_permits() < permits as usize);
    }
    map.entry(key)
        .or_insert_with(|| Arc::new(Semaphore::new(permits as usize)))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_and_a_tenant_hold_at_most_their_permits() {
        let limits = Limits::new(2, 3);
        let tenant = ClientId::new(1);
        let a1 = limits.take(tenant, 1).expect("free");
        let _a2 = limits.take(tenant, 1).expect("free");
        assert!(
            limits.take(tenant, 1).is_none(),
            "endpoint 1 is at its limit"
        );
        let _b1 = limits.take(tenant, 2).expect("another endpoint");
        assert!(
            limits.take(tenant, 3).is_none(),
            "the tenant is at its limit"
        );
        assert!(limits.take(ClientId::new(2), 9).is_some(), "another tenant");
        drop(a1);
        assert!(limits.take(tenant, 1).is_some(), "a permit came back");
    }
}
