//! Gathering queued items into batches for writers whose items nobody is waiting on
//! urgently (the worker's published-marks, the mailbox deliverer's delivered-marks).
//! Taking only what is already queued batches well under load but writes one statement
//! per item when the load is light, when each statement costs the most (every round trip
//! wakes a database thread that was asleep); waiting a little after the first item
//! collects the ones right behind it.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

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
