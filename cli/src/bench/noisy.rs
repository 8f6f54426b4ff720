//! `chatfleet bench --noisy`: does one tenant's flood slow another down?
//!
//! Two tenants on the same plan share a fleet of its own whose provider is saturated on
//! purpose (the LLM double at `--llm-latency-ms`, 300 when unset, and
//! `--noisy-slots` concurrent calls per worker). The quiet tenant sends `--quiet-rate`
//! messages a second for the whole `--duration`, each in a conversation of its own; the
//! noisy one sends `--noisy-factor` times that rate during the middle third, over
//! `--conversations` conversations. The report gives the quiet tenant's end-to-end
//! p50/p99 for the messages it sent before, during and after the flood, and the noisy
//! tenant's answered rate beside what the provider can answer (slots / the double's
//! hold), so it shows the fleet stayed busy.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::settings::Settings;
use worker::llm::sim::SimOptions;

use super::report::percentile;
use super::scrape::deliveries_parked;
use super::traffic::read_conversation;
use super::{BenchArgs, Timings, answered_per_s, wait_for_answers};
use crate::fleet;

/// The noisy tenant's messages are numbered from here (the quiet one's from 0).
const NOISY_BASE: u64 = 1_000_000_000;

pub(super) async fn run(settings: &Settings, args: &BenchArgs) -> anyhow::Result<Value> {
    let latency = Duration::from_millis(if args.llm_latency_ms == 0 {
        300
    } else {
        args.llm_latency_ms
    });
    let harness = fleet::start(
        settings,
        fleet::Options {
            name: "noisy",
            workers: args.workers,
            ingress: 1,
            sim: SimOptions {
                latency,
                error_rate: 0.0,
                word_delay: Duration::ZERO,
            },
            log_dir: None,
            db_proxy: false,
            db_servers: Vec::new(),
            history_turns: args.history_turns,
            env: vec![
                // Both tenants far under their plan's rate: the fleet is the limit.
                (
                    "CHATFLEET__PLANS__ENTERPRISE__MESSAGES_PER_MINUTE".into(),
                    "100000000".into(),
                ),
                (
                    "CHATFLEET__PLANS__ENTERPRISE__BURST".into(),
                    "10000000".into(),
                ),
                (
                    "CHATFLEET__LLM__PROVIDERS__OLLAMA__MAX_CONCURRENCY".into(),
                    args.noisy_slots.to_string(),
                ),
            ],
        },
    )
    .await?;
    let quiet_key = harness.api_key.clone();
    let (_, noisy_key) = fleet::add_tenant(&harness.db, "noisy-flood", args.history_turns).await?;
    let base = harness.fleet.ingress_urls[0].clone();
    let conversations = args.conversations();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conversations + 512)
        .timeout(Duration::from_secs(60))
        .build()?;
    let timings = Arc::new(Mutex::new(Timings::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut pollers = tokio::task::JoinSet::new();
    let mut sends = tokio::task::JoinSet::new();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let send = |key: &str, conversation: String, k: u64| {
        let (http, base, key) = (http.clone(), base.clone(), key.to_owned());
        let (timings, errors) = (timings.clone(), errors.clone());
        async move {
            let sent = Instant::now();
            let r = http
                .post(format!("{base}/api/v1/messages"))
                .bearer_auth(&key)
                .json(&json!({ "conversation_id": conversation, "text": format!("message {k}") }))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                    if let Ok(mut t) = timings.lock() {
                        t.sent.insert(k, sent);
                    }
                }
                _ => {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    };
    let poll = |key: &str, conversation: String| {
        read_conversation(
            http.clone(),
            base.clone(),
            key.to_owned(),
            conversation,
            timings.clone(),
            stop.clone(),
        )
    };

    let third = args.duration / 3;
    let quiet_every = Duration::from_secs_f64(1.0 / args.quiet_rate);
    let noisy_rate = args.quiet_rate * f64::from(args.noisy_factor);
    let noisy_every = Duration::from_secs_f64(1.0 / noisy_rate);
    eprintln!(
        "bench --noisy {}: quiet tenant {} msg/s for {:?}, noisy tenant {noisy_rate} msg/s from {:?} to {:?}; LLM {latency:?}, {} slots per worker",
        harness.id,
        args.quiet_rate,
        args.duration,
        third,
        third * 2,
        args.noisy_slots
    );
    let started = tokio::time::Instant::now();
    // Both tenants' schedules, merged: (when, which tenant, message number).
    let mut schedule: Vec<(Duration, bool, u64)> = Vec::new();
    let mut k = 0;
    while quiet_every * k < args.duration {
        schedule.push((quiet_every * k, false, u64::from(k)));
        k += 1;
    }
    let mut n = 0;
    while noisy_every * n < third {
        schedule.push((third + noisy_every * n, true, NOISY_BASE + u64::from(n)));
        n += 1;
    }
    schedule.sort_by_key(|(at, _, _)| *at);
    for (at, noisy, k) in schedule {
        tokio::time::sleep_until(started + at).await;
        let (key, conversation) = if noisy {
            let c = (k - NOISY_BASE) as usize % conversations;
            (&noisy_key, format!("n{c}"))
        } else {
            (&quiet_key, format!("q{k}"))
        };
        let first_of_its_conversation = !noisy || (k - NOISY_BASE) < conversations as u64;
        sends.spawn(send(key, conversation.clone(), k));
        if first_of_its_conversation {
            pollers.spawn(poll(key, conversation));
        }
    }
    while sends.join_next().await.is_some() {}
    // Wait for the answers (at most 60 s after the last send).
    wait_for_answers(&timings, Instant::now() + Duration::from_secs(60)).await;
    stop.cancel();
    pollers.abort_all();

    let parked = deliveries_parked(&http, &harness.fleet.worker_metrics()).await;
    let held = harness.sim.mean_hold().unwrap_or(latency);
    let capacity = (args.noisy_slots * args.workers) as f64 / held.as_secs_f64();
    let report = {
        let t = timings.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let start = started.into_std();
        let phase = |from: Duration, to: Duration| {
            let mut e2e: Vec<f64> = t
                .sent
                .iter()
                .filter(|(k, s)| **k < NOISY_BASE && (from..to).contains(&(**s - start)))
                .filter_map(|(k, s)| t.answered.get(k).map(|a| (*a - *s).as_secs_f64() * 1e3))
                .collect();
            e2e.sort_by(f64::total_cmp);
            json!({ "messages": e2e.len(), "p50_ms": percentile(&e2e, 0.5), "p99_ms": percentile(&e2e, 0.99) })
        };
        let noisy_answers: Vec<Instant> = t
            .sent
            .keys()
            .filter(|k| **k >= NOISY_BASE)
            .filter_map(|k| t.answered.get(k).copied())
            .collect();
        let noisy_sent = t.sent.keys().filter(|k| **k >= NOISY_BASE).count();
        let quiet_sent = t.sent.len() - noisy_sent;
        let quiet_answered = t
            .sent
            .keys()
            .filter(|k| **k < NOISY_BASE && t.answered.contains_key(*k))
            .count();
        json!({
            "scenario": "noisy",
            "workers": args.workers,
            "llm_latency_ms": latency.as_millis() as u64,
            "llm_mean_hold_ms": held.as_secs_f64() * 1e3,
            "slots_per_worker": args.noisy_slots,
            "capacity_per_s": capacity,
            "quiet_rate_per_s": args.quiet_rate,
            "noisy_rate_per_s": noisy_rate,
            "quiet": {
                "accepted": quiet_sent,
                "answered": quiet_answered,
                "before": phase(Duration::ZERO, third),
                "during": phase(third, third * 2),
                "after": phase(third * 2, args.duration),
            },
            "noisy": {
                "accepted": noisy_sent,
                "answered": noisy_answers.len(),
                "answered_per_s": answered_per_s(&noisy_answers, third),
            },
            "errors": errors.load(std::sync::atomic::Ordering::Relaxed),
            "deliveries_parked": parked,
        })
    };

    harness.shut_down().await?;
    Ok(report)
}

/// Prints the noisy run's figures.
pub(super) fn print(run: &Value) {
    let phase = |p: &str| {
        let q = &run["quiet"][p];
        format!(
            "{:>8.0} {:>8.0} {:>6}",
            q["p50_ms"].as_f64().unwrap_or(f64::NAN),
            q["p99_ms"].as_f64().unwrap_or(f64::NAN),
            q["messages"]
        )
    };
    println!(
        "noisy neighbour: LLM {} ms x {} slots per worker (capacity {:.0} msg/s); quiet {} msg/s, noisy {} msg/s in the middle third",
        run["llm_latency_ms"],
        run["slots_per_worker"],
        run["capacity_per_s"].as_f64().unwrap_or(f64::NAN),
        run["quiet_rate_per_s"],
        run["noisy_rate_per_s"],
    );
    println!("quiet tenant       p50 ms   p99 ms   msgs");
    for p in ["before", "during", "after"] {
        println!("  {p:<14} {}", phase(p));
    }
    println!(
        "noisy tenant: {} accepted, {} answered, {:.1} answered/s; deliveries parked {}; errors {}",
        run["noisy"]["accepted"],
        run["noisy"]["answered"],
        run["noisy"]["answered_per_s"].as_f64().unwrap_or(f64::NAN),
        run["deliveries_parked"],
        run["errors"],
    );
}
