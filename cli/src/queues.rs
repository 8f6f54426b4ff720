//! `chatfleet queues`: every queue of this deployment's prefix with its ready messages
//! and consumers (from the broker over AMQP), and — when RabbitMQ's management API
//! answers — unacked messages and publish/deliver rates.

use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use shared::mq::Broker;
use shared::settings::Settings;

#[derive(Debug, Args)]
pub(crate) struct QueuesArgs {
    /// RabbitMQ's management API (its credentials are the AMQP URL's).
    #[arg(long, default_value = "http://127.0.0.1:15672")]
    management_url: String,
    /// One JSON object per queue instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(settings: &Settings, args: QueuesArgs) -> anyhow::Result<()> {
    let broker = Broker::connect(&settings.amqp, "chatfleet-queues").await?;
    if broker
        .queue_stats(&broker.topology().inbound_work())
        .await
        .is_err()
    {
        anyhow::bail!(
            "no chatfleet queues with prefix {:?} on this broker (has anything run with amqp.prefix = {:?}?)",
            settings.amqp.prefix,
            settings.amqp.prefix
        );
    }
    // The management API of the first node, with its credentials.
    let node = settings.amqp.nodes().swap_remove(0);
    let amqp = reqwest::Url::parse(node.expose())?;
    let vhost = match amqp.path().trim_start_matches('/') {
        "" => "%2f".to_owned(),
        v => v.to_owned(),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut rows = Vec::new();
    for queue in broker.topology().queues() {
        let stats = broker.queue_stats(&queue).await;
        let management: Option<Value> = async {
            let r = http
                .get(format!(
                    "{}/api/queues/{vhost}/{queue}",
                    args.management_url
                ))
                .basic_auth(amqp.username(), amqp.password())
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())?;
            r.json().await.ok()
        }
        .await;
        let rate = |what: &str| {
            management
                .as_ref()
                .and_then(|m| m["message_stats"][format!("{what}_details")]["rate"].as_f64())
        };
        let row = match stats {
            Ok(s) => json!({
                "queue": queue,
                "ready": s.messages,
                "unacked": management.as_ref().and_then(|m| m["messages_unacknowledged"].as_u64()),
                "consumers": s.consumers,
                "publish_rate": rate("publish"),
                "deliver_rate": rate("deliver_get"),
            }),
            Err(e) => json!({ "queue": queue, "error": e.to_string() }),
        };
        rows.push(row);
    }
    broker.close().await;
    if args.json {
        for row in &rows {
            println!("{row}");
        }
        return Ok(());
    }
    let cell = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.fract() != 0.0)
            .map_or_else(|| n.to_string(), |f| format!("{f:.1}")),
        other => other.to_string(),
    };
    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "queue", "ready", "unacked", "consumers", "publish/s", "deliver/s"
    );
    for row in &rows {
        if let Some(error) = row["error"].as_str() {
            println!("{:<36} {error}", row["queue"].as_str().unwrap_or(""));
            continue;
        }
        println!(
            "{:<36} {:>9} {:>9} {:>9} {:>10} {:>10}",
            row["queue"].as_str().unwrap_or(""),
            cell(&row["ready"]),
            cell(&row["unacked"]),
            cell(&row["consumers"]),
            cell(&row["publish_rate"]),
            cell(&row["deliver_rate"]),
        );
    }
    Ok(())
}
