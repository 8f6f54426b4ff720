//! Replaying the archive, as `chatfleet replay` and the operator console do it.
//!
//! The archive stream holds every envelope and reply for `amqp.archive_max_age`.
//! [`read_archive`] reads it from a time on and keeps the envelopes of a [`Range`], each
//! with the text of the reply it originally got (erased conversations are counted by
//! their headings: what they said can no longer be read). [`dry_run`] sends envelopes to
//! the workers marked as a dry run — they answer with today's configuration and the
//! conversation's history before the message, store nothing, take no lock and call no
//! channel — and collects the answers from `<prefix>.outbound.replay`, leaving other
//! replays' answers for them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::envelope::{Envelope, Replay, ReplayMode, ReplyKind};
use crate::error::Result;
use crate::ids::{Channel, ClientId, EnvelopeId};
use crate::mq::{Broker, Publisher};
use crate::sealed::{DataKeys, Heading, Opened};

/// Which archived envelopes to replay.
#[derive(Debug, Clone)]
pub struct Range {
    /// Received at or after this time.
    pub from: DateTime<Utc>,
    /// … and at or before this time.
    pub to: DateTime<Utc>,
    pub client: Option<ClientId>,
    pub channel: Option<Channel>,
    /// The conversation's id in its channel (API conversation id, phone number…).
    pub conversation: Option<String>,
    /// At most this many envelopes (the first in archive order).
    pub limit: Option<usize>,
}

/// What the archive holds of a range.
#[derive(Debug, Default)]
pub struct Archived {
    /// In archive order, each once.
    pub envelopes: Vec<Envelope>,
    /// The text of the reply each envelope originally got.
    pub originals: HashMap<EnvelopeId, String>,
    /// The envelopes of erased conversations in the range (skipped).
    pub erased: Vec<Heading>,
}

/// How long the archive may stay quiet before it is read up to now (the stream has no
/// end).
const QUIET: Duration = Duration::from_secs(1);

/// Reads the envelopes of `range` from the archive, with their original replies.
pub async fn read_archive(broker: &Broker, keys: &DataKeys, range: &Range) -> Result<Archived> {
    let mut archive = broker.read_archive(range.from).await?;
    let mut found = Archived::default();
    let in_range = |heading: &Heading| {
        heading.replay.is_none()
            && heading
                .received_at
                .is_some_and(|at| at >= range.from && at <= range.to)
            && range.client.is_none_or(|c| heading.client_id == c)
            && range.channel.is_none_or(|c| heading.channel == c)
    };
    while let Ok(Some(d)) = tokio::time::timeout(QUIET, archive.next()).await {
        let _ = d.ack().await;
        let Some(heading) = Heading::of(&d.body) else {
            continue;
        };
        if d.routing_key == "replay" || !in_range(&heading) && heading.received_at.is_some() {
            continue; // an earlier dry run's answer, or an envelope not asked for
        }
        if heading.received_at.is_none() {
            if let Ok(Opened::Readable(reply)) = keys.open_reply(&d.body).await {
                for id in &reply.in_reply_to {
                    found.originals.insert(*id, reply.text.expose().clone());
                }
            }
            continue;
        }
        match keys.open_envelope(&d.body).await {
            Ok(Opened::Readable(env)) => {
                let wanted = range
                    .conversation
                    .as_deref()
                    .is_none_or(|c| env.external_id.expose() == c);
                if wanted && !found.envelopes.iter().any(|e| e.id == env.id) {
                    found.envelopes.push(env);
                }
            }
            // An erased conversation cannot be told by its id in the channel.
            Ok(Opened::Erased(heading)) if range.conversation.is_none() => {
                if !found.erased.iter().any(|e| e.id == heading.id) {
                    found.erased.push(heading);
                }
            }
            Ok(Opened::Erased(_)) => {}
            Err(e) => tracing::warn!(error = %e, "an archived envelope cannot be read; skipped"),
        }
    }
    archive.close().await;
    if let Some(limit) = range.limit {
        found.envelopes.truncate(limit);
    }
    Ok(found)
}

/// Sends `envelopes` to the workers as one dry run and collects their answers (text and
/// kind, by the envelope answered) until each has one or `wait` passed; `answered` is
/// called after each answer with the count so far.
pub async fn dry_run(
    broker: &Broker,
    publisher: &Publisher,
    keys: &DataKeys,
    envelopes: &[Envelope],
    wait: Duration,
    answered: impl Fn(usize),
) -> Result<HashMap<EnvelopeId, (String, ReplyKind)>> {
    // Listening before sending: no answer comes before the queue is read.
    let mut answers = broker
        .consume(&broker.topology().replay_queue(), 256, "replay")
        .await?;
    let ours: HashSet<EnvelopeId> = envelopes.iter().map(|e| e.id).collect();
    let replay_id = uuid::Uuid::now_v7();
    for env in envelopes {
        let mut env = env.clone();
        env.replay = Some(Replay {
            replay_id,
            mode: ReplayMode::DryRun,
        });
        publisher.publish_envelope(&env).await?;
    }
    let mut new_replies = HashMap::new();
    let deadline = tokio::time::Instant::now() + wait;
    while new_replies.len() < ours.len() {
        let Ok(Some(d)) = tokio::time::timeout_at(deadline, answers.next()).await else {
            break;
        };
        match keys.open_reply(&d.body).await {
            Ok(Opened::Readable(reply)) if reply.in_reply_to.iter().any(|id| ours.contains(id)) => {
                let _ = d.ack().await;
                for id in &reply.in_reply_to {
                    new_replies.insert(*id, (reply.text.expose().clone(), reply.kind));
                }
                answered(new_replies.len());
            }
            // Another replay's answer: leave it for its reader.
            _ => {
                let _ = d.requeue().await;
            }
        }
    }
    answers.close().await;
    Ok(new_replies)
}
