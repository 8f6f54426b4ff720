//! `chatfleet webhooks list|attempts|redeliver`: a tenant's webhook endpoints for
//! operators, straight from the database (no admin token needed on the host).
//!
//! `redeliver` makes the chosen deliveries owed again from their first attempt and queues
//! them, oldest first, with the same event ids (`webhook-id`), so a receiver that
//! deduplicates by id sees them as the same events.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::json;
use shared::db::{Db, EventSelector};
use shared::ids::ClientId;
use shared::mq::Broker;
use shared::settings::Settings;
use shared::webhooks::{EventType, Job};
use uuid::Uuid;

/// Attempts one `attempts` page reads from the database.
const PAGE: u32 = 500;

#[derive(Debug, Subcommand)]
pub(crate) enum WebhooksCommand {
    /// The tenant's endpoints: id, state, URL and subscribed events.
    List {
        /// Tenant id.
        #[arg(long)]
        client: u64,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// An endpoint's attempts, oldest first: event, attempt, status, duration, error.
    Attempts {
        #[command(flatten)]
        endpoint: Endpoint,
        #[command(flatten)]
        filter: Filter,
        /// Most attempts shown (the latest ones).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sends the endpoint's events again (delivered or not) with their own event ids.
    Redeliver {
        #[command(flatten)]
        endpoint: Endpoint,
        #[command(flatten)]
        filter: Filter,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Endpoint {
    /// Tenant id.
    #[arg(long)]
    client: u64,
    /// Webhook endpoint id.
    #[arg(long)]
    webhook: u64,
}

impl Endpoint {
    /// The tenant and its endpoint, or an error naming what is missing.
    async fn find(&self, db: &Db) -> anyhow::Result<(ClientId, shared::db::Webhook)> {
        let id = tenant(db, self.client).await?;
        let webhook = db
            .tenant(id)
            .webhooks()
            .get(self.webhook)
            .await?
            .with_context(|| format!("tenant {} has no webhook {}", self.client, self.webhook))?;
        Ok((id, webhook))
    }
}

#[derive(Debug, Clone, Default, Args)]
pub(crate) struct Filter {
    /// Events recorded at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// One event (its id, the `webhook-id`) or every event of one type.
    #[arg(long)]
    event: Option<String>,
}

impl Filter {
    /// The events chosen; `None` when neither flag was given.
    fn selector(&self) -> anyhow::Result<Option<EventSelector>> {
        let (mut kind, mut id) = (None, None);
        if let Some(word) = self.event.as_deref() {
            match Uuid::parse_str(word) {
                Ok(event_id) => id = Some(event_id),
                Err(_) => {
                    kind = Some(word.parse::<EventType>().with_context(|| {
                        format!("--event {word:?} is neither an event id nor an event type")
                    })?);
                }
            }
        }
        if self.since.is_none() && self.event.is_none() {
            return Ok(None);
        }
        Ok(Some(EventSelector {
            since: self.since.unwrap_or(DateTime::UNIX_EPOCH),
            kind,
            id,
        }))
    }
}

pub(crate) async fn run(settings: &Settings, command: WebhooksCommand) -> anyhow::Result<()> {
    let db = Db::connect(&settings.database)
        .await
        .context("connecting to the database (run `chatfleet migrate` first)")?;
    let outcome = match command {
        WebhooksCommand::List { client, json } => list(&db, client, json).await,
        WebhooksCommand::Attempts {
            endpoint,
            filter,
            limit,
            json,
        } => attempts(&db, &endpoint, &filter, limit, json).await,
        WebhooksCommand::Redeliver { endpoint, filter } => {
            redeliver(settings, &db, &endpoint, &filter).await
        }
    };
    db.close().await;
    outcome
}

/// The tenant, or an error naming the id.
async fn tenant(db: &Db, client: u64) -> anyhow::Result<ClientId> {
    let id = ClientId::new(client);
    db.clients()
        .get(id)
        .await?
        .with_context(|| format!("no tenant with id {client}"))?;
    Ok(id)
}

async fn list(db: &Db, client: u64, as_json: bool) -> anyhow::Result<()> {
    let id = tenant(db, client).await?;
    let webhooks = db.tenant(id).webhooks().list().await?;
    if webhooks.is_empty() && !as_json {
        println!("tenant {client} has no webhook endpoints");
    }
    for w in webhooks {
        let events = w.events.words().join(",");
        let state = if w.enabled { "enabled" } else { "disabled" };
        if as_json {
            println!(
                "{}",
                json!({
                    "id": w.id, "url": w.url, "events": w.events.words(),
                    "enabled": w.enabled, "disabled_reason": w.disabled_reason,
                    "failing_since": w.failing_since, "callback": w.channel_account_id.is_some(),
                    "include_text": w.include_text, "description": w.description,
                })
            );
            continue;
        }
        println!("{:>6}  {state:<8}  {}  [{events}]", w.id, w.url);
        if let Some(reason) = &w.disabled_reason {
            println!("        disabled: {reason}");
        } else if let Some(since) = w.failing_since {
            println!("        failing since {since}");
        }
    }
    Ok(())
}

async fn attempts(
    db: &Db,
    endpoint: &Endpoint,
    filter: &Filter,
    limit: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    let (id, _) = endpoint.find(db).await?;
    let tenant = db.tenant(id);
    let selector = filter.selector()?;
    let log = tenant.webhook_log();
    let mut shown = std::collections::VecDeque::with_capacity(limit);
    let mut after = 0;
    loop {
        let page = log.attempts(endpoint.webhook, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for a in page {
            if selector
                .as_ref()
                .is_some_and(|s| !s.matches(a.event_id, &a.event_type, a.at))
            {
                continue;
            }
            if shown.len() == limit {
                shown.pop_front();
            }
            shown.push_back(a);
        }
    }
    for a in shown {
        if as_json {
            println!(
                "{}",
                json!({
                    "at": a.at, "event_id": a.event_id, "event_type": a.event_type,
                    "attempt": a.attempt, "response_status": a.response_status,
                    "duration_ms": a.duration_ms, "error": a.error,
                })
            );
            continue;
        }
        let status = a
            .response_status
            .map_or_else(|| "---".to_owned(), |s| s.to_string());
        println!(
            "{}  {}  {:<24} #{:<2} {status} {:>6} ms  {}",
            a.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            a.event_id,
            a.event_type,
            a.attempt,
            a.duration_ms,
            a.error.as_deref().unwrap_or(""),
        );
    }
    Ok(())
}

async fn redeliver(
    settings: &Settings,
    db: &Db,
    endpoint: &Endpoint,
    filter: &Filter,
) -> anyhow::Result<()> {
    let Some(selector) = filter.selector()? else {
        bail!(
            "say which events to send again: --since <RFC 3339 time>, --event <id or type>, or both"
        );
    };
    let (id, webhook) = endpoint.find(db).await?;
    let tenant = db.tenant(id);
    if !webhook.enabled {
        bail!(
            "webhook {} is disabled ({}); enable it first (PATCH …/webhooks/{} {{\"enabled\": true}})",
            webhook.id,
            webhook
                .disabled_reason
                .as_deref()
                .unwrap_or("no reason recorded"),
            webhook.id
        );
    }
    let events = tenant
        .webhook_log()
        .reopen(endpoint.webhook, &selector)
        .await?;
    if events.is_empty() {
        println!("no events of webhook {} match", endpoint.webhook);
        return Ok(());
    }
    let broker = Broker::connect(&settings.amqp, "chatfleet-webhooks").await?;
    let publisher = broker.publisher().await?;
    for event_id in &events {
        let job = Job::first(id, endpoint.webhook, *event_id);
        publisher.publish_webhook_job(&job, None).await?;
    }
    broker.close().await;
    println!(
        "queued {} event(s) for webhook {} again, with their own event ids",
        events.len(),
        endpoint.webhook
    );
    Ok(())
}
