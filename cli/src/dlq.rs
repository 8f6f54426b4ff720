//! `chatfleet dlq list|show|requeue|purge`: the dead-letter queue for operators.
//!
//! Dead letters are browsed by consuming them without an ack and closing the channel
//! afterwards, which hands every one back to the queue; `requeue` and `purge` ack only
//! the ones they act on. Filters: `--client <id>`, `--reason <text>` (substring),
//! `--channel <name>`, `--since <RFC 3339 time>`, `--id <message id>`.

use std::io::{BufRead, Write};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use shared::db::Db;
use shared::ids::EnvelopeId;
use shared::mq::{Broker, Delivery, headers};
use shared::sealed::{DataKeys, Heading, Opened};
use shared::secrets::SecretBox;
use shared::settings::Settings;

/// Most dead letters one command looks at.
const MAX_BROWSE: u16 = 5_000;

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// One line per dead letter (newest last), or JSON lines with --json.
    List {
        #[command(flatten)]
        filter: Filter,
        #[arg(long)]
        json: bool,
    },
    /// Everything about one dead letter: reason, attempt history, headers and body.
    Show { id: String },
    /// Puts the matching dead letters back on their original path (the work queue for
    /// envelopes, the channel's outbound queue for replies), as fresh first attempts. A
    /// message that got the fallback message is answered for real this time.
    Requeue {
        #[command(flatten)]
        filter: Filter,
    },
    /// Deletes the matching dead letters (asks first unless --yes).
    Purge {
        #[command(flatten)]
        filter: Filter,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Default, Args)]
pub(crate) struct Filter {
    /// Tenant id.
    #[arg(long)]
    client: Option<u64>,
    /// Text the reason contains.
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    channel: Option<String>,
    /// Dead-lettered at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only the dead letter with this message id.
    #[arg(long)]
    id: Option<String>,
}

impl Filter {
    fn matches(&self, d: &Delivery) -> bool {
        let h = d.headers();
        let get = |k: &str| h.get(k).map(String::as_str).unwrap_or("");
        self.client
            .is_none_or(|c| get(headers::CLIENT_ID) == c.to_string())
            && self
                .reason
                .as_deref()
                .is_none_or(|r| get(headers::DEAD_REASON).contains(r))
            && self
                .channel
                .as_deref()
                .is_none_or(|c| get(headers::CHANNEL) == c)
            && self
                .id
                .as_deref()
                .is_none_or(|id| d.message_id.as_deref() == Some(id))
            && self.since.is_none_or(|since| {
                get(headers::DEAD_AT)
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .is_ok_and(|at| at >= since)
            })
    }
}

/// A dead letter's body as `show` prints it: the envelope or reply opened with its
/// conversation's data key; only its heading and `"erased": true` when the conversation
/// was erased; as it is when it is no envelope or reply (or does not open).
async fn shown_body(keys: &DataKeys, body: &[u8]) -> Value {
    let as_is = || {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    let Some(heading) = Heading::of(body) else {
        return as_is();
    };
    let opened = match heading.received_at {
        Some(_) => keys
            .open_envelope(body)
            .await
            .map(|o| o.map(|env| serde_json::to_value(env).unwrap_or(Value::Null))),
        None => keys
            .open_reply(body)
            .await
            .map(|o| o.map(|reply| serde_json::to_value(reply).unwrap_or(Value::Null))),
    };
    match opened {
        Ok(Opened::Readable(value)) => value,
        Ok(Opened::Erased(heading)) => json!({
            "id": heading.id,
            "client_id": heading.client_id,
            "channel": heading.channel.as_str(),
            "conversation_id": heading.conversation_id,
            "erased": true,
        }),
        Err(_) => as_is(),
    }
}

fn summary(d: &Delivery) -> Value {
    let h = d.headers();
    let get = |k: &str| h.get(k).cloned();
    json!({
        "id": d.message_id,
        "dead_at": get(headers::DEAD_AT),
        "reason": get(headers::DEAD_REASON),
        "from_queue": get(headers::DEAD_FROM),
        "client_id": get(headers::CLIENT_ID),
        "channel": get(headers::CHANNEL),
        "attempt": d.attempt,
        "routing_key": d.routing_key,
        "history": d.death_history().iter()
            .map(|(queue, reason, count)| json!({ "queue": queue, "reason": reason, "count": count }))
            .collect::<Vec<_>>(),
    })
}

pub(crate) async fn run(settings: &Settings, command: DlqCommand) -> anyhow::Result<()> {
    let db = Db::connect(&settings.database).await?;
    let broker = Broker::connect(&settings.amqp, "chatfleet-dlq").await?;
    let queue = broker.topology().dead_queue();
    let mut consumer = broker.consume(&queue, MAX_BROWSE, "dlq").await?;
    // Everything the queue holds arrives at once (up to the prefetch); a quiet moment
    // means we have seen it all.
    let mut letters = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
    {
        letters.push(d);
        if letters.len() >= usize::from(MAX_BROWSE) {
            break;
        }
    }
    let keys = DataKeys::new(
        db.clone(),
        SecretBox::new(&settings.security.encryption_ring()),
        shared::cache::Cache::connect(&settings.redis).await?,
    );
    let outcome = act(&db, &keys, &broker, &letters, command).await;
    consumer.close().await;
    broker.close().await;
    db.close().await;
    outcome
}

async fn act(
    db: &Db,
    keys: &DataKeys,
    broker: &Broker,
    letters: &[Delivery],
    command: DlqCommand,
) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { filter, json } => {
            let chosen: Vec<&Delivery> = letters.iter().filter(|d| filter.matches(d)).collect();
            for d in &chosen {
                let s = summary(d);
                if json {
                    println!("{s}");
                } else {
                    println!(
                        "{}  {}  client {}  {}  attempt {}  {}",
                        s["id"].as_str().unwrap_or("-"),
                        s["dead_at"].as_str().unwrap_or("-"),
                        s["client_id"].as_str().unwrap_or("-"),
                        s["channel"].as_str().unwrap_or("-"),
                        s["attempt"],
                        s["reason"].as_str().unwrap_or("-"),
                    );
                }
            }
            if !json {
                println!("{} of {} dead letters", chosen.len(), letters.len());
            }
        }
        DlqCommand::Show { id } => {
            let d = letters
                .iter()
                .find(|d| d.message_id.as_deref() == Some(id.as_str()))
                .ok_or_else(|| anyhow::anyhow!("no dead letter {id}"))?;
            let mut s = summary(d);
            s["headers"] = json!(d.headers());
            s["body"] = shown_body(keys, &d.body).await;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        DlqCommand::Requeue { filter } => {
            let publisher = broker.publisher().await?;
            let topology = broker.topology();
            let (mut moved, mut skipped) = (0, 0);
            for d in letters.iter().filter(|d| filter.matches(d)) {
                let from = d
                    .headers()
                    .get(headers::DEAD_FROM)
                    .cloned()
                    .unwrap_or_default();
                let put_back = if from == topology.inbound_work() {
                    // The user got the fallback message when it was dead-lettered: reopen
                    // the message so this time it gets a real answer.
                    if let Some(heading) = Heading::of(&d.body) {
                        db.tenant(heading.client_id)
                            .messages()
                            .reopen_after_fallback(EnvelopeId::from_uuid(heading.id))
                            .await?;
                    }
                    publisher.return_to_work(&d.body).await
                } else if let Some(channel) =
                    from.strip_prefix(&format!("{}.outbound.", topology.prefix()))
                {
                    publisher.publish_outbound_raw(channel, &d.body).await
                } else {
                    eprintln!(
                        "{}: not an envelope or a reply (from {from:?}); left in place",
                        d.message_id.as_deref().unwrap_or("-")
                    );
                    skipped += 1;
                    continue;
                };
                put_back?;
                d.ack().await?;
                moved += 1;
            }
            println!("requeued {moved}, left {skipped}");
        }
        DlqCommand::Purge { filter, yes } => {
            let chosen: Vec<&Delivery> = letters.iter().filter(|d| filter.matches(d)).collect();
            if chosen.is_empty() {
                println!("nothing to purge");
                return Ok(());
            }
            if !yes {
                print!("delete {} dead letters for good? [y/N] ", chosen.len());
                std::io::stdout().flush()?;
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    println!("nothing deleted");
                    return Ok(());
                }
            }
            for d in &chosen {
                d.ack().await?;
            }
            println!("purged {}", chosen.len());
        }
    }
    Ok(())
}
