//! Gathering queued items into batches for writers whose items nobody is waiting on
//! urgently (the worker's published-marks, the mailbox deliverer's delivered-marks).
//! Taking only what is already queued batches well under load but writes one statement
//! per item when the load is light, when each statement costs the most (every round trip
//! wakes a database thread that was asleep); waiting a little after the first item
//! collects the ones right behind it. Every statement a writer runs is one tenant's, so
//! a batch is split by tenant ([`by_tenant`]).

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::ids::ClientId;

/// Waits for at least one item, then gathers more for up to `linger` until `batch` holds
/// `max`. Returns how many items `batch` holds; 0 once the channel is closed and empty.
/// Items already received stay in `batch` if this future is dropped.
pub async fn gather<T>(
    rx: &mut UnboundedReceiver<T>,
    batch: &mut Vec<T>,
    max: usize,
    linger: Duration,
) -> usize {
    if batch.len() < max && rx.recv_many(batch, max - batch.len()).await == 0 {
        return batch.len();
    }
    let until = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        match tokio::time::timeout_at(until, rx.recv_many(batch, max - batch.len())).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    batch.len()
}

/// Splits a batch by tenant: tenants in the order they first appear, each tenant's items
/// in their order.
pub fn by_tenant<T>(
    items: impl IntoIterator<Item = T>,
    tenant: impl Fn(&T) -> ClientId,
) -> Vec<(ClientId, Vec<T>)> {
    let mut groups: Vec<(ClientId, Vec<T>)> = Vec::new();
    let mut index: HashMap<ClientId, usize> = HashMap::new();
    for item in items {
        let client_id = tenant(&item);
        let i = *index.entry(client_id).or_insert_with(|| {
            groups.push((client_id, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(item);
    }
    groups
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn items_right_behind_the_first_join_its_batch() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(1).expect("open");
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            late.send(2).expect("open");
            tokio::time::sleep(Duration::from_millis(200)).await;
            late.send(3).expect("open");
        });
        let mut batch = Vec::new();
        let n = gather(&mut rx, &mut batch, 10, Duration::from_millis(100)).await;
        assert_eq!((n, batch.as_slice()), (2, [1, 2].as_slice()));
        batch.clear();
        let n = gather(&mut rx, &mut batch, 10, Duration::from_millis(100)).await;
        assert_eq!((n, batch.as_slice()), (1, [3].as_slice()));
    }

    #[test]
    fn a_batch_splits_by_tenant_keeping_each_tenants_order() {
        let (a, b) = (ClientId::new(7), ClientId::new(3));
        let items = [(a, 1), (b, 2), (a, 3), (b, 4), (a, 5)];
        assert_eq!(
            by_tenant(items, |(c, _)| *c),
            [(a, vec![(a, 1), (a, 3), (a, 5)]), (b, vec![(b, 2), (b, 4)])]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_a_closed_channel_ends() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..5 {
            tx.send(i).expect("open");
        }
        let mut batch = Vec::new();
        let started = tokio::time::Instant::now();
        assert_eq!(
            gather(&mut rx, &mut batch, 3, Duration::from_secs(60)).await,
            3
        );
        assert_eq!(started.elapsed(), Duration::ZERO, "no lingering when full");
        batch.clear();
        drop(tx);
        assert_eq!(
            gather(&mut rx, &mut batch, 3, Duration::from_secs(60)).await,
            2
        );
        batch.clear();
        assert_eq!(
            gather(&mut rx, &mut batch, 3, Duration::from_secs(60)).await,
            0
        );
    }
}
