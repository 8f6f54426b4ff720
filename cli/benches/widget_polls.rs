//! Reply-to-poll wake-up latency of the widget channel with 1,000 polls waiting on one
//! ingress: from the moment the worker stored a reply (its `created_at`) to the moment
//! the visitor's waiting poll answered with it — publish, deliverer, mailbox position,
//! Redis announcement, wake-up, database read and HTTP answer. Run with
//! `cargo bench -p cli --bench widget_polls` (MariaDB, RabbitMQ and Redis must be up).

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::time::Duration;

use serde_json::{Value, json};
use shared::ids::Channel;
use shared::testkit::TestEnv;
use tokio_util::sync::CancellationToken;
use worker::llm::sim::{LlmSim, SimOptions};

const ORIGIN: &str = "https://bench.example";
const WAITING: usize = 1_000;
const ANSWERED: usize = 200;

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let shutdown = CancellationToken::new();
    let sim = LlmSim::start(
        "127.0.0.1:0".parse().expect("addr"),
        SimOptions::default(),
        shutdown.clone(),
    )
    .await
    .expect("llm-sim");
    let sim_url = sim.base_url();
    let env = TestEnv::start(&[
        (
            "CHATFLEET__LLM__PROVIDERS__OLLAMA__BASE_URL",
            sim_url.as_str(),
        ),
        ("CHATFLEET__VECTOR__URL", "http://127.0.0.1:9"),
        ("CHATFLEET__TELEMETRY__FILTER", "error"),
        // Every session comes from this one address: the edge's per-address and
        // per-tenant session limits would refuse most of them.
        ("CHATFLEET__EDGE__SESSIONS_PER_IP_PER_MINUTE", "1000000"),
        ("CHATFLEET__PLANS__STARTER__SESSIONS_PER_MINUTE", "1000000"),
    ])
    .await;
    let tenant = env.tenant("bench").await;
    // The bench tenant may answer as fast as it is asked.
    env.db
        .clients()
        .update(
            tenant.id,
            &shared::db::ClientPatch {
                name: None,
                timezone: None,
                locale: None,
                plan: Some(shared::tenant::Plan::Enterprise),
                status: None,
            },
        )
        .await
        .expect("plan");
    env.db
        .tenant(tenant.id)
        .channel_accounts()
        .create(
            Channel::Widget,
            "bench-site",
            None,
            &json!({ "allowed_origins": [ORIGIN] }),
        )
        .await
        .expect("widget account");
    let running = ingress::start(env.settings.clone(), shutdown.clone())
        .await
        .expect("ingress");
    let worker = tokio::spawn(worker::run(env.settings.clone(), shutdown.clone()));
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(WAITING + 16)
        .build()
        .expect("client");

    let mut tokens = Vec::with_capacity(WAITING);
    for _ in 0..WAITING {
        let session: Value = http
            .post(format!("{base}/widget/v1/sessions"))
            .header("origin", ORIGIN)
            .json(&json!({ "client": "bench" }))
            .send()
            .await
            .expect("session")
            .json()
            .await
            .expect("session body");
        tokens.push(session["token"].as_str().expect("token").to_owned());
    }

    // Every visitor waits; the first ANSWERED of them ask a question, one every 20 ms.
    let polls: Vec<_> = tokens
        .iter()
        .map(|token| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            tokio::spawn(async move {
                let mut cursor = String::new();
                loop {
                    let r = http
                        .get(format!("{base}/widget/v1/messages"))
                        .query(&[("after", cursor.as_str()), ("wait", "30")])
                        .bearer_auth(&token)
                        .send()
                        .await
                        .expect("poll");
                    let answered = chrono::Utc::now();
                    if r.status() != reqwest::StatusCode::OK {
                        return None;
                    }
                    let page: Value = r.json().await.expect("page");
                    cursor = page["cursor"].as_str().expect("cursor").to_owned();
                    let reply = page["messages"]
                        .as_array()
                        .and_then(|m| m.iter().find(|m| m["role"] == "assistant").cloned());
                    if let Some(reply) = reply {
                        let stored: chrono::DateTime<chrono::Utc> = reply["created_at"]
                            .as_str()
                            .expect("created_at")
                            .parse()
                            .expect("time");
                        return Some((answered - stored).num_microseconds().unwrap_or(0));
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for token in tokens.iter().take(ANSWERED) {
        let sent = http
            .post(format!("{base}/widget/v1/messages"))
            .bearer_auth(token)
            .json(&json!({ "text": "Is it in stock?" }))
            .send()
            .await
            .expect("send");
        assert_eq!(sent.status(), reqwest::StatusCode::ACCEPTED);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::with_capacity(ANSWERED);
    for poll in polls.into_iter().take(ANSWERED) {
        latencies.push(poll.await.expect("poll task").expect("a reply"));
    }
    latencies.sort_unstable();
    println!(
        "widget long-poll wake-up with {WAITING} polls waiting ({ANSWERED} answered, 50 replies/s):"
    );
    println!(
        "  reply stored → waiting poll answered: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50) as f64 / 1e3,
        percentile(&latencies, 0.90) as f64 / 1e3,
        percentile(&latencies, 0.99) as f64 / 1e3,
        *latencies.last().expect("latencies") as f64 / 1e3,
    );
    shutdown.cancel();
    let _ = worker.await;
    let _ = running.task.await;
    env.teardown().await;
}
