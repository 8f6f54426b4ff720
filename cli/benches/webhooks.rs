//! Signed WhatsApp webhooks against a real ingress, broker and database on this machine:
//! how many are accepted per second (each confirmed by the broker before the 200), and
//! the acknowledgement latency at a fixed 1,000 webhooks/s. Run with
//! `cargo bench -p cli --bench webhooks` (MariaDB, RabbitMQ and Redis must be up).
//! Only ingress runs: acknowledgement is what Meta waits for.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use shared::testkit::TestEnv;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-app-secret";

fn body(i: usize) -> String {
    json!({ "object": "whatsapp_business_account", "entry": [{ "id": "1", "changes": [{ "field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550000000", "phone_number_id": "777" },
        "contacts": [{ "profile": { "name": "Bench" }, "wa_id": format!("1555{i:07}") }],
        "messages": [{ "from": format!("1555{i:07}"), "id": format!("wamid.bench{i}"), "timestamp": "1750000000",
                       "type": "text", "text": { "body": "How long does shipping take?" } }] } }] }] })
    .to_string()
}

async fn post(http: &reqwest::Client, url: &str, i: usize) -> Duration {
    let b = body(i);
    let signature = ingress::sign_whatsapp_webhook(SECRET, b.as_bytes());
    let started = Instant::now();
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .body(b)
        .send()
        .await
        .expect("webhook sent");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let env = TestEnv::start(&[
        ("CHATFLEET__WHATSAPP__APP_SECRET", SECRET),
        ("CHATFLEET__WHATSAPP__VERIFY_TOKEN", "bench"),
        ("CHATFLEET__TELEMETRY__FILTER", "warn"),
    ])
    .await;
    let tenant = env.tenant("bench").await;
    env.db
        .tenant(tenant.id)
        .channel_accounts()
        .create(shared::ids::Channel::Whatsapp, "777", None, &json!({}))
        .await
        .expect("channel account");
    let shutdown = CancellationToken::new();
    let running = ingress::start(env.settings.clone(), shutdown.clone())
        .await
        .expect("ingress");
    let url = format!("http://{}/whatsapp/webhook", running.addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");

    // Warm up connections and caches.
    for i in 0..200 {
        post(&http, &url, i).await;
    }

    // 1. As fast as possible, 64 in flight.
    let total = 5_000;
    let limit = Arc::new(Semaphore::new(64));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let permit = limit.clone().acquire_owned().await.expect("permit");
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let d = post(&http, &url, 10_000 + i).await;
            drop(permit);
            d
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();

    // 2. A fixed 1,000 webhooks/s for 5 s.
    let per = Duration::from_millis(1);
    let count = 5_000;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until(start + per * i as u32).await;
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(
            async move { post(&http, &url, 100_000 + i).await },
        ));
    }
    let mut latencies = Vec::with_capacity(count);
    for t in tasks {
        latencies.push(t.await.expect("task"));
    }
    let achieved = count as f64 / start.elapsed().as_secs_f64();
    latencies.sort();

    println!("signed WhatsApp webhooks, one message each, confirmed by the broker before 200:");
    println!("  as fast as possible (64 in flight): {rate:.0} accepted/s over {total}");
    println!(
        "  at 1,000/s (achieved {achieved:.0}/s over {count}): ack p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.90).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    );
    shutdown.cancel();
    let _ = running.task.await;
    env.teardown().await;
}
