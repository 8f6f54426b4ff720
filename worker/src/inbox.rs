//! A conversation's inbox on this worker: the deliveries of one conversation that arrive
//! while its turn runs. The dispatcher puts them in; the running turn owns an [`Inbox`]
//! and drains it (recording their messages while it waits for the conversation's lock or
//! a debounce window, so it answers them too); afterwards the dispatcher settles every
//! delivery the turn took together with the turn. What the turn did not take stays for
//! the next turn.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use shared::envelope::Envelope;
use shared::mq::Delivery;
use tokio::sync::Notify;

/// A delivery with its decoded envelope (or why it could not be decoded).
#[derive(Debug)]
pub(crate) struct Job {
    pub delivery: Delivery,
    pub envelope: Result<Envelope, String>,
}

/// The deliveries queued for one conversation, shared by the dispatcher (which adds
/// them) and the conversation's running turn (which takes them).
#[derive(Debug, Default)]
pub(crate) struct Queued {
    jobs: Mutex<VecDeque<Job>>,
    /// Told of each arrival, so a waiting turn records it at once.
    arrived: Notify,
}

impl Queued {
    pub fn push(&self, job: Job) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.push_back(job);
        }
        self.arrived.notify_one();
    }

    /// Up to `max` of the queued deliveries, oldest first.
    pub fn take(&self, max: usize) -> Vec<Job> {
        match self.jobs.lock() {
            Ok(mut jobs) => {
                let n = jobs.len().min(max);
                jobs.drain(..n).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.jobs.lock().map_or(0, |jobs| jobs.len())
    }
}

/// What a running turn owns of its conversation's queue: the deliveries it started
/// with and those it took since, all settled with the turn.
#[derive(Debug)]
pub(crate) struct Inbox {
    queued: Arc<Queued>,
    taken: Vec<Job>,
    /// Most deliveries taken in at once.
    max: usize,
}

impl Inbox {
    pub fn new(queued: Arc<Queued>, first: Vec<Job>, max: usize) -> Self {
        Self {
            queued,
            taken: first,
            max,
        }
    }

    /// The envelopes the turn started with.
    pub fn envelopes(&self) -> Vec<Envelope> {
        self.taken
            .iter()
            .filter_map(|j| j.envelope.as_ref().ok().cloned())
            .collect()
    }

    /// Takes the deliveries that arrived since, returning their envelopes in arrival
    /// order (an undecodable one is settled with the turn, and dead-lettered then).
    pub fn drain(&mut self) -> Vec<Envelope> {
        let more = self.queued.take(self.max);
        let envelopes = more
            .iter()
            .filter_map(|j| j.envelope.as_ref().ok().cloned())
            .collect();
        self.taken.extend(more);
        envelopes
    }

    /// Resolves at the next arrival.
    pub async fn arrival(&self) {
        self.queued.arrived.notified().await;
    }

    /// The deliveries to settle with the turn.
    pub fn into_taken(self) -> Vec<Job> {
        self.taken
    }
}
