//! The chaos run's verdict, read from the database, the dead-letter queue and the LLM
//! double's log once every accepted message has settled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use shared::db::{Db, MessageState, Role, StoredMessage};
use shared::ids::{Channel, ClientId};
use shared::mq::Broker;
use worker::llm::ChatRole;
use worker::llm::sim::RecordedChat;

use super::Accepted;

/// How many examples of each violation the report lists.
const EXAMPLES: usize = 5;

#[derive(Debug, Default)]
pub(super) struct Report {
    accepted: usize,
    answered: usize,
    dead_lettered: usize,
    /// Dead-lettered after the last attempt, and told so by the fallback message.
    fallback_answered: usize,
    replies: usize,
    coalesced_replies: usize,
    prompts_checked: usize,
    unaccounted: Vec<String>,
    duplicates: Vec<String>,
    undelivered: Vec<String>,
    out_of_order: Vec<String>,
    incomplete_prompts: Vec<String>,
    /// Calls that presented another tenant's key, or the platform's for a tenant's own.
    wrong_keys: Vec<String>,
}

impl Report {
    pub(super) fn violations(&self) -> usize {
        self.unaccounted.len()
            + self.duplicates.len()
            + self.undelivered.len()
            + self.out_of_order.len()
            + self.incomplete_prompts.len()
            + self.wrong_keys.len()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  accepted:             {}", self.accepted)?;
        writeln!(
            f,
            "  answered:             {} ({} replies, {} of them answering several messages at once)",
            self.answered, self.replies, self.coalesced_replies
        )?;
        writeln!(
            f,
            "  dead-lettered:        {} (with a reason; {} of them got the fallback message)",
            self.dead_lettered, self.fallback_answered
        )?;
        let lines = [
            ("accepted ≠ answered + dead-lettered", &self.unaccounted),
            ("duplicate replies", &self.duplicates),
            ("replies never delivered", &self.undelivered),
            ("replies out of order", &self.out_of_order),
            ("prompts missing earlier turns", &self.incomplete_prompts),
            ("calls with another tenant's key", &self.wrong_keys),
        ];
        for (what, found) in lines {
            writeln!(f, "  {what:<36}{}", found.len())?;
            for example in found.iter().take(EXAMPLES) {
                writeln!(f, "      {example}")?;
            }
        }
        writeln!(f, "  prompts checked:      {}", self.prompts_checked)
    }
}

/// The stored messages of every driven conversation (`c<N>`, of tenant
/// `tenants[N % tenants.len()]`), oldest first.
async fn conversations(
    db: &Db,
    tenants: &[ClientId],
    accepted: &Accepted,
) -> anyhow::Result<BTreeMap<usize, Vec<StoredMessage>>> {
    let mut out = BTreeMap::new();
    for c in accepted.keys() {
        let client_id = tenants[c % tenants.len()];
        let Some(id) = db
            .tenant(client_id)
            .conversations()
            .find(Channel::Api, &format!("c{c}"))
            .await?
        else {
            out.insert(*c, Vec::new());
            continue;
        };
        out.insert(
            *c,
            db.tenant(client_id)
                .messages()
                .in_conversation(id, 100_000)
                .await?,
        );
    }
    Ok(out)
}

/// Waits until every accepted message is answered or closed and every reply reached
/// its mailbox, or until nothing moved for `stall` (a message dead-lettered while the
/// database was away stays unanswered; the checks then decide whether it is accounted
/// for). Returns how many stayed open.
pub(super) async fn wait_settled(
    db: &Db,
    tenants: &[ClientId],
    accepted: &Accepted,
    stall: Duration,
) -> usize {
    let mut last = (usize::MAX, Instant::now());
    loop {
        let open = match conversations(db, tenants, accepted).await {
            Ok(all) => all
                .values()
                .flatten()
                .filter(|m| match m.role {
                    Role::User => m.state == MessageState::Pending,
                    Role::Assistant => m.delivery_status.is_none(),
                    _ => false,
                })
                .count(),
            Err(_) => usize::MAX, // the database is still coming back
        };
        if open == 0 {
            return 0;
        }
        if open != last.0 {
            last = (open, Instant::now());
        } else if last.1.elapsed() >= stall {
            return open;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Envelope id → reason of every dead letter.
async fn dead_letters(broker: &Broker) -> anyhow::Result<HashMap<String, String>> {
    let queue = broker.topology().dead_queue();
    let count = broker.queue_stats(&queue).await?.messages;
    let mut out = HashMap::new();
    if count == 0 {
        return Ok(out);
    }
    let mut consumer = broker.consume(&queue, 256, "chaos-check").await?;
    for _ in 0..count {
        let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_secs(10), consumer.next()).await
        else {
            break;
        };
        let reason = delivery
            .headers()
            .get(shared::mq::headers::DEAD_REASON)
            .cloned()
            .unwrap_or_default();
        if let Some(id) = &delivery.message_id {
            out.insert(id.clone(), reason);
        }
    }
    consumer.cancel().await;
    Ok(out)
}

pub(super) async fn run(
    db: &Db,
    broker: &Broker,
    tenants: &[ClientId],
    accepted: &Accepted,
    requests: &[RecordedChat],
    keys: &[String; super::TENANTS],
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let dead = dead_letters(broker).await?;
    let stored = conversations(db, tenants, accepted).await?;
    for (c, messages) in &stored {
        let users: HashMap<String, &StoredMessage> = messages
            .iter()
            .filter(|m| m.role == Role::User)
            .map(|m| (m.envelope_id.to_string(), m))
            .collect();
        for (m, id) in &accepted[c] {
            report.accepted += 1;
            let Some(user) = users.get(id) else {
                report
                    .unaccounted
                    .push(format!("c{c} m{m}: accepted, never recorded"));
                continue;
            };
            match (user.state, dead.get(id)) {
                (_, Some(reason)) if !reason.is_empty() => {
                    report.dead_lettered += 1;
                    if user.state == MessageState::Answered {
                        report.fallback_answered += 1;
                    }
                }
                (MessageState::Answered, _) => report.answered += 1,
                (state, _) => report.unaccounted.push(format!(
                    "c{c} m{m}: {state}, and no dead letter with a reason"
                )),
            }
        }

        // Replies in mailbox order; each must answer something, and come after the
        // messages the previous reply answered.
        let mut replies: Vec<&StoredMessage> = messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .collect();
        replies.sort_by_key(|r| r.seq);
        let mut answered_up_to = 0u64;
        for reply in replies {
            report.replies += 1;
            let answers: Vec<u64> = users
                .values()
                .filter(|u| u.answered_by == Some(reply.id))
                .filter_map(|u| u.seq)
                .collect();
            let (Some(first), Some(last)) = (answers.iter().min(), answers.iter().max()) else {
                report.duplicates.push(format!(
                    "c{c}: reply {} answers no message",
                    reply.envelope_id
                ));
                continue;
            };
            if answers.len() > 1 {
                report.coalesced_replies += 1;
            }
            if reply.delivery_status.is_none() {
                report.duplicates.push(format!(
                    "c{c}: reply {} never reached the channel",
                    reply.envelope_id
                ));
            }
            if *first <= answered_up_to {
                report.out_of_order.push(format!(
                    "c{c}: reply {} answers position {first} after an answer to position {answered_up_to}",
                    reply.envelope_id
                ));
            }
            answered_up_to = answered_up_to.max(*last);
        }
    }

    // Every prompt holds every earlier message of its conversation: the question is the
    // last user message ("c<N> m<K>", several joined when coalesced), and every
    // "c<N> m<J>" with J below its first K must appear before it.
    for request in requests {
        let user_texts: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == ChatRole::User)
            .map(|m| m.content.as_str())
            .collect();
        let Some((question, earlier)) = user_texts.split_last() else {
            continue;
        };
        let asked = parse(question);
        let Some(&(c, first)) = asked.iter().min_by_key(|(_, k)| *k) else {
            continue;
        };
        report.prompts_checked += 1;
        if request.api_key != keys[c % super::TENANTS] {
            report.wrong_keys.push(format!(
                "the call answering c{c} m{first} presented another key than its tenant's"
            ));
        }
        let seen: HashSet<usize> = earlier
            .iter()
            .flat_map(|t| parse(t))
            .filter(|(cc, _)| *cc == c)
            .map(|(_, k)| k)
            .collect();
        if let Some(missing) = (0..first).find(|k| !seen.contains(k)) {
            report.incomplete_prompts.push(format!(
                "the prompt answering c{c} m{first} lacks c{c} m{missing}"
            ));
        }
    }
    Ok(report)
}

/// The `c<N> m<K>` markers in a text.
fn parse(text: &str) -> Vec<(usize, usize)> {
    text.split("\n\n")
        .filter_map(|part| {
            // A marker is a message's first line (a tool call may follow it).
            let (c, m) = part.trim().lines().next()?.split_once(' ')?;
            Some((
                c.strip_prefix('c')?.parse().ok()?,
                m.strip_prefix('m')?.parse().ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn markers_are_read_from_single_and_coalesced_questions() {
        assert_eq!(parse("c3 m7"), [(3, 7)]);
        assert_eq!(parse("c3 m7\n\nc3 m8"), [(3, 7), (3, 8)]);
        assert!(parse("hello there").is_empty());
        assert_eq!(
            parse("c3 m4\nTOOL record {\"c\": 3, \"m\": 4}\n\nc3 m5"),
            [(3, 4), (3, 5)]
        );
    }
}
