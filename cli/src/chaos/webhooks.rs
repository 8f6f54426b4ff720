//! The chaos run's webhooks: each tenant has an endpoint for every event on a receiver
//! (on 127.0.0.2) that answers 500 to a fifth of the requests at random, so retries run
//! all along while workers and ingress processes (the deliverers) are killed.
//!
//! At the end, per tenant: every event recorded for the endpoint was delivered (2xx) at
//! least once under its own `webhook-id`, signed with that tenant's own secret and
//! carrying its own `client_id`; every stored user message and reply of the driven
//! conversations has its `message.received` / `message.replied`; and each
//! conversation's events were first delivered in `seq` order (unless marked
//! `out_of_order`, which is counted).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use shared::db::{Db, DeliveryState, EventFilter, NewWebhook, Role};
use shared::ids::ClientId;
use shared::secrets::SecretBox;
use shared::webhooks::signature;
use tokio_util::sync::CancellationToken;

use super::Accepted;

/// The settings the fleet's processes need to reach the receiver, and a short schedule:
/// with a fifth of the attempts failing, twelve in a row fail about once in 4·10⁹.
pub(super) const SETTINGS: [(&str, &str); 3] = [
    ("CHATFLEET__WEBHOOKS__ALLOW_HTTP", "true"),
    (
        "CHATFLEET__WEBHOOKS__ALLOWED_PRIVATE_NETWORKS",
        "127.0.0.2/32",
    ),
    (
        "CHATFLEET__WEBHOOKS__RETRY_SCHEDULE",
        "0,1,1,2,2,3,3,5,5,5,5,5",
    ),
];

/// The share of requests the receiver fails.
const FAIL_RATE: f64 = 0.2;

/// How many examples of each violation the report lists.
const EXAMPLES: usize = 5;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    tenant: u64,
    id: String,
    timestamp: i64,
    signatures: String,
    body: Vec<u8>,
    ok: bool,
}

/// The receiver: what it got, in arrival order.
#[derive(Clone, Default)]
pub(super) struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    base: String,
}

impl Receiver {
    pub(super) async fn start(stop: CancellationToken) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await?;
        let receiver = Self {
            got: Arc::default(),
            base: format!("http://{}", listener.local_addr()?),
        };
        let app = axum::Router::new()
            .route("/{tenant}", axum::routing::post(answer))
            .with_state(receiver.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(receiver)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

async fn answer(
    State(receiver): State<Receiver>,
    Path(tenant): Path<u64>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let ok = !rand::random_bool(FAIL_RATE);
    if let Ok(mut got) = receiver.got.lock() {
        got.push(Received {
            tenant,
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp").parse().unwrap_or_default(),
            signatures: header("webhook-signature"),
            body: body.to_vec(),
            ok,
        });
    }
    if ok {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// Each tenant's endpoint: its id and secret.
pub(super) type Endpoints = HashMap<ClientId, (u64, String)>;

/// Gives every tenant an endpoint for every event on the receiver (`/<tenant id>`), made
/// in the database as the admin API makes it.
pub(super) async fn add_endpoints(
    db: &Db,
    secrets: &SecretBox,
    tenants: &[ClientId],
    receiver: &Receiver,
) -> anyhow::Result<Endpoints> {
    let mut endpoints = Endpoints::new();
    for &client_id in tenants {
        let secret = signature::new_secret();
        let new = NewWebhook {
            url: format!("{}/{client_id}", receiver.base),
            events: EventFilter::parse(&["*".to_owned()]).map_err(anyhow::Error::msg)?,
            description: "chaos receiver".into(),
            include_text: true,
            channel_account_id: None,
        };
        let id = db
            .tenant(client_id)
            .webhooks()
            .create(&new, 16, |id| {
                secrets.seal_webhook_secret(client_id, id, secret.as_bytes())
            })
            .await?;
        endpoints.insert(client_id, (id, secret));
    }
    Ok(endpoints)
}

#[derive(Debug, Default)]
pub(super) struct WebhookCheck {
    events: usize,
    requests: usize,
    failed_answers: usize,
    out_of_order_marked: usize,
    violations: Vec<String>,
}

impl WebhookCheck {
    pub(super) fn violations(&self) -> usize {
        self.violations.len()
    }
}

impl std::fmt::Display for WebhookCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  webhooks:             {} events, {} requests ({} answered 500 on purpose), {} sent marked out_of_order; {} violations",
            self.events,
            self.requests,
            self.failed_answers,
            self.out_of_order_marked,
            self.violations.len()
        )?;
        for v in self.violations.iter().take(EXAMPLES * 2) {
            writeln!(f, "      {v}")?;
        }
        Ok(())
    }
}

/// Waits until no delivery of the endpoints is still owed, for as long as some delivery
/// settled within the last `stalled` (after the faults the endpoints' backlog drains for
/// minutes, held behind earlier events of each conversation; a delivery that is lost
/// stops the count from falling).
pub(super) async fn wait_delivered(db: &Db, endpoints: &Endpoints, stalled: Duration) {
    let mut fewest = usize::MAX;
    let mut deadline = Instant::now() + stalled;
    while Instant::now() < deadline {
        let mut owed = 0;
        for (client_id, (webhook_id, _)) in endpoints {
            match db
                .tenant(*client_id)
                .webhook_log()
                .deliveries(*webhook_id)
                .await
            {
                Ok(all) => {
                    owed += all
                        .iter()
                        .filter(|(_, d)| d.state == DeliveryState::Pending)
                        .count();
                }
                Err(_) => owed += 1,
            }
        }
        if owed == 0 {
            return;
        }
        if owed < fewest {
            fewest = owed;
            deadline = Instant::now() + stalled;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The verdict on what the receiver got, against the database.
pub(super) async fn check(
    db: &Db,
    tenants: &[ClientId],
    accepted: &Accepted,
    endpoints: &Endpoints,
    receiver: &Receiver,
) -> anyhow::Result<WebhookCheck> {
    let received = receiver.received();
    let mut report = WebhookCheck {
        requests: received.len(),
        failed_answers: received.iter().filter(|r| !r.ok).count(),
        ..WebhookCheck::default()
    };
    for (&client_id, (webhook_id, secret)) in endpoints {
        let key = signature::key_of(secret)
            .ok_or_else(|| anyhow::anyhow!("a malformed secret was made"))?;
        let mine: Vec<&Received> = received
            .iter()
            .filter(|r| r.tenant == client_id.get())
            .collect();
        for r in &mine {
            let expected = signature::sign(&key, &r.id, r.timestamp, &r.body);
            let event: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            if !r.signatures.split(' ').any(|s| s == expected) {
                report.violations.push(format!(
                    "tenant {client_id}: event {} not signed with its secret",
                    r.id
                ));
            }
            if event["client_id"] != client_id.get() || event["id"] != r.id.as_str() {
                report.violations.push(format!(
                    "tenant {client_id}: request {} carries {}/{}",
                    r.id, event["client_id"], event["id"]
                ));
            }
        }
        let deliveries = db
            .tenant(client_id)
            .webhook_log()
            .deliveries(*webhook_id)
            .await?;
        report.events += deliveries.len();
        let delivered: HashSet<&str> = mine
            .iter()
            .filter(|r| r.ok)
            .map(|r| r.id.as_str())
            .collect();
        let mut announced: HashMap<&str, HashSet<String>> = HashMap::new();
        for (event_id, d) in &deliveries {
            let id = event_id.to_string();
            if d.state != DeliveryState::Delivered || !delivered.contains(id.as_str()) {
                report.violations.push(format!(
                    "tenant {client_id}: {} {id} is {:?} and {} at the receiver",
                    d.event_type,
                    d.state,
                    if delivered.contains(id.as_str()) {
                        "was delivered"
                    } else {
                        "never arrived"
                    }
                ));
            }
            let body: Value = serde_json::from_str(&d.body).unwrap_or(Value::Null);
            if let Some(message) = body["data"]["message_id"].as_str() {
                let kind = if d.event_type == "message.received" {
                    "message.received"
                } else if d.event_type == "message.replied" {
                    "message.replied"
                } else {
                    continue;
                };
                announced
                    .entry(kind)
                    .or_default()
                    .insert(message.to_owned());
            }
        }
        report.violations.extend(
            unannounced(db, client_id, tenants, accepted, &announced)
                .await?
                .into_iter()
                .map(|m| format!("tenant {client_id}: {m}")),
        );
        let (violations, marked) = order(&mine);
        report.out_of_order_marked += marked;
        report.violations.extend(
            violations
                .into_iter()
                .map(|v| format!("tenant {client_id}: {v}")),
        );
    }
    Ok(report)
}

/// The stored user messages and replies of the tenant's driven conversations that no
/// event announced.
async fn unannounced(
    db: &Db,
    client_id: ClientId,
    tenants: &[ClientId],
    accepted: &Accepted,
    announced: &HashMap<&str, HashSet<String>>,
) -> anyhow::Result<Vec<String>> {
    let mut missing = Vec::new();
    let empty = HashSet::new();
    for c in accepted
        .keys()
        .filter(|c| tenants[*c % tenants.len()] == client_id)
    {
        let tenant = db.tenant(client_id);
        let Some(conversation) = tenant
            .conversations()
            .find(shared::ids::Channel::Api, &format!("c{c}"))
            .await?
        else {
            continue;
        };
        for m in tenant
            .messages()
            .in_conversation(conversation, 100_000)
            .await?
        {
            let kind = match m.role {
                Role::User => "message.received",
                Role::Assistant => "message.replied",
                _ => continue,
            };
            let id = m.envelope_id.to_string();
            if !announced.get(kind).unwrap_or(&empty).contains(&id) {
                missing.push(format!("c{c}: no {kind} for message {id}"));
            }
        }
    }
    Ok(missing)
}

/// Whether each conversation's events were first delivered in `seq` order: the
/// violations, and how many events went marked `out_of_order`.
fn order(received: &[&Received]) -> (Vec<String>, usize) {
    let mut first = HashSet::new();
    let mut last_seq: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    let (mut violations, mut marked) = (Vec::new(), 0);
    for r in received.iter().filter(|r| r.ok) {
        if !first.insert(r.id.clone()) {
            continue; // delivered again: at least once is the promise
        }
        let event: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let data = &event["data"];
        let (Some(conversation), Some(seq)) =
            (data["conversation_id"].as_u64(), data["seq"].as_u64())
        else {
            continue;
        };
        if data["out_of_order"] == true {
            marked += 1;
            continue;
        }
        if let Some((before, before_id)) = last_seq.get(&conversation)
            && *before > seq
        {
            violations.push(format!(
                "conversation {conversation}: event {} (seq {seq}) delivered after {before_id} (seq {before})",
                r.id
            ));
        }
        last_seq.insert(conversation, (seq, r.id.clone()));
    }
    (violations, marked)
}
