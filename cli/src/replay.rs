//! `chatfleet replay`: re-runs archived envelopes against today's configuration.
//!
//! The archive stream holds every envelope and reply for `amqp.archive_max_age`; replay
//! reads it from `--from` (by timestamp), keeps the envelopes that match the filters and
//! pairs each with the reply it originally got.
//!
//! - `--mode dry-run`: each envelope goes to the workers marked as a dry run: they answer
//!   it with today's configuration and prompt and the conversation's history before it,
//!   store nothing, take no lock and call no channel; the reply comes back on
//!   `<prefix>.outbound.replay`, and the original and new replies are printed side by
//!   side, with the webhook events the turn would have sent to the tenant's endpoints
//!   as they are subscribed today, then `N replayed, M changed, K failed`.
//! - `--mode live`: the envelopes are processed for real again. Already answered ones are
//!   skipped by the workers (their ids are idempotency keys) unless `--force` gives them
//!   new ids, which makes them new messages.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use shared::db::{Db, WebhookSubscription};
use shared::envelope::{Envelope, Replay, ReplayMode, ReplyKind};
use shared::ids::{Channel, ClientId, EnvelopeId};
use shared::mq::Broker;
use shared::replay::{Archived, Range, read_archive};
use shared::sealed::{DataKeys, Heading};
use shared::secrets::SecretBox;
use shared::settings::Settings;
use shared::webhooks::EventType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    DryRun,
    Live,
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// Replay envelopes received at or after this time (RFC 3339).
    #[arg(long)]
    from: DateTime<Utc>,
    /// … and at or before this time (default: now).
    #[arg(long)]
    to: Option<DateTime<Utc>>,
    /// Only this tenant (slug or id).
    #[arg(long)]
    client: Option<String>,
    /// Only this conversation (its id in the channel: API conversation id, phone…).
    #[arg(long)]
    conversation: Option<String>,
    #[arg(long)]
    channel: Option<String>,
    /// At most this many envelopes.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Live mode: give the envelopes new ids, so answered ones are answered again.
    #[arg(long)]
    force: bool,
    /// One JSON object per envelope (and a summary object) instead of text.
    #[arg(long)]
    json: bool,
    /// How long to wait for the dry-run replies, in seconds.
    #[arg(long, default_value_t = 120)]
    wait_s: u64,
}

/// Prints the envelopes of erased conversations the range held, which were skipped.
fn report_erased(erased: &[Heading], json: bool) {
    for heading in erased {
        if json {
            println!(
                "{}",
                json!({
                    "envelope_id": heading.id,
                    "client_id": heading.client_id,
                    "channel": heading.channel.as_str(),
                    "received_at": heading.received_at,
                    "erased": true,
                })
            );
        } else {
            println!(
                "── {} · client {} · {} · erased (its conversation was erased: skipped)",
                heading.channel.as_str(),
                heading.client_id,
                heading
                    .received_at
                    .map_or_else(String::new, |at| at.format("%Y-%m-%d %H:%M:%S").to_string()),
            );
        }
    }
}

fn progress(n: usize, hidden: bool, what: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_owned());
    bar
}

pub(crate) async fn run(settings: &Settings, args: ReplayArgs) -> anyhow::Result<()> {
    let db = Db::connect(&settings.database).await?;
    let client = match &args.client {
        None => None,
        Some(c) => match c.parse::<u64>() {
            Ok(id) => Some(ClientId::new(id)),
            Err(_) => {
                let found = db.clients().by_slug(c).await?;
                Some(found.ok_or_else(|| anyhow::anyhow!("no client {c:?}"))?.id)
            }
        },
    };
    let cache = shared::cache::Cache::connect(&settings.redis).await?;
    let keys = DataKeys::new(
        db.clone(),
        SecretBox::new(&settings.security.encryption_ring()),
        cache,
    );
    let broker = Broker::connect(&settings.amqp, "chatfleet-replay").await?;
    let channel = args
        .channel
        .as_deref()
        .map(|c| c.parse::<Channel>())
        .transpose()
        .map_err(|e| anyhow::anyhow!("--channel: {e}"))?;
    let range = Range {
        from: args.from,
        to: args.to.unwrap_or_else(Utc::now),
        client,
        channel,
        conversation: args.conversation.clone(),
        limit: args.limit,
    };
    let Archived {
        envelopes,
        originals,
        erased,
    } = read_archive(&broker, &keys, &range).await?;
    report_erased(&erased, args.json);
    let publisher = broker.publisher().await?.sealing(keys.clone());
    let replay_id = uuid::Uuid::now_v7();
    if args.mode == Mode::Live {
        let bar = progress(envelopes.len(), args.json, "re-injecting");
        for env in &envelopes {
            let mut env = env.clone();
            if args.force {
                env.id = EnvelopeId::random();
            }
            env.replay = Some(Replay {
                replay_id,
                mode: ReplayMode::Live,
            });
            publisher.publish_envelope(&env).await?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        let summary = format!(
            "{} re-injected{}, {} erased",
            envelopes.len(),
            if args.force {
                " as new messages"
            } else {
                " (the workers skip those already answered)"
            },
            erased.len()
        );
        if args.json {
            println!(
                "{}",
                json!({ "summary": summary, "replayed": envelopes.len(), "erased": erased.len() })
            );
        } else {
            println!("{summary}");
        }
        broker.close().await;
        db.close().await;
        return Ok(());
    }

    let bar = progress(envelopes.len(), args.json, "replaying");
    let new_replies = shared::replay::dry_run(
        &broker,
        &publisher,
        &keys,
        &envelopes,
        Duration::from_secs(args.wait_s),
        |n| bar.set_position(n as u64),
    )
    .await?;
    bar.finish_and_clear();
    broker.close().await;
    let subscriptions = subscriptions(&db, &envelopes).await?;
    db.close().await;

    let (mut changed, mut failed) = (0, 0);
    for env in &envelopes {
        let before = originals.get(&env.id);
        let after = new_replies.get(&env.id).map(|(text, _)| text);
        let events = would_have_sent(
            subscriptions
                .get(&env.client_id)
                .map_or(&[][..], Vec::as_slice),
            env.channel,
            new_replies.get(&env.id).map(|(_, kind)| *kind),
        );
        let differs = after.is_some() && before != after;
        changed += usize::from(differs);
        failed += usize::from(after.is_none());
        if args.json {
            println!(
                "{}",
                json!({
                    "envelope_id": env.id,
                    "client_id": env.client_id,
                    "channel": env.channel.as_str(),
                    "conversation": env.external_id.expose(),
                    "received_at": env.received_at,
                    "message": env.message.as_prompt_text(),
                    "original_reply": before,
                    "replayed_reply": after,
                    "changed": differs,
                    "would_have_sent": events.iter()
                        .map(|(kind, webhooks)| json!({ "type": kind.as_str(), "webhooks": webhooks }))
                        .collect::<Vec<_>>(),
                })
            );
            continue;
        }
        println!(
            "── {} {} · client {} · {} · {}",
            env.channel.as_str(),
            env.external_id.expose(),
            env.client_id,
            env.received_at.format("%Y-%m-%d %H:%M:%S"),
            if after.is_none() {
                "NO ANSWER"
            } else if differs {
                "CHANGED"
            } else {
                "same"
            }
        );
        println!("   user:   {}", env.message.as_prompt_text());
        let show = |r: Option<&String>| {
            r.map_or("(none)".to_owned(), |t| t.replace('\n', "\n           "))
        };
        if differs {
            println!(" - before: {}", show(before));
            println!(" + after:  {}", show(after));
        } else {
            println!("   reply:  {}", show(after.or(before)));
        }
        for (kind, webhooks) in &events {
            let ids: Vec<String> = webhooks.iter().map(u64::to_string).collect();
            println!("   would have sent {kind} to webhook {}", ids.join(", "));
        }
    }
    let summary = format!(
        "{} replayed, {changed} changed, {failed} failed, {} erased",
        envelopes.len(),
        erased.len()
    );
    if args.json {
        let v: Value = json!({ "summary": summary, "replayed": envelopes.len(), "changed": changed, "failed": failed, "erased": erased.len() });
        println!("{v}");
    } else {
        println!("{summary}");
    }
    Ok(())
}

/// Each replayed tenant's webhook subscriptions as they are today.
async fn subscriptions(
    db: &Db,
    envelopes: &[Envelope],
) -> anyhow::Result<HashMap<ClientId, Vec<WebhookSubscription>>> {
    let mut found = HashMap::new();
    let tenants: HashSet<ClientId> = envelopes.iter().map(|e| e.client_id).collect();
    for client_id in tenants {
        let of_tenant = db.tenant(client_id).webhooks().subscriptions().await?;
        found.insert(client_id, of_tenant);
    }
    Ok(found)
}

/// The webhook events a replayed turn would have sent, each with the endpoints that
/// want it: its message received, a handoff when today's answer hands over, and the
/// reply (none without one).
fn would_have_sent(
    subscriptions: &[WebhookSubscription],
    channel: Channel,
    reply: Option<ReplyKind>,
) -> Vec<(EventType, Vec<u64>)> {
    let mut kinds = vec![EventType::MessageReceived];
    if reply == Some(ReplyKind::HandoffNotice) {
        kinds.push(EventType::ConversationHandoff);
    }
    if reply.is_some() {
        kinds.push(EventType::MessageReplied);
    }
    kinds
        .into_iter()
        .filter_map(|kind| {
            let ids: Vec<u64> = subscriptions
                .iter()
                .filter(|w| w.wants(kind, Some(channel)))
                .map(|w| w.id)
                .collect();
            (!ids.is_empty()).then_some((kind, ids))
        })
        .collect()
}
