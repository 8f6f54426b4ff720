//! One run of `chatfleet bench`'s scenario on a fleet of its own: the extra database
//! servers and tenants it asks for, the sends at the offered rate, the readers that
//! see each answer, and the report (latency, CPU and the servers' work per answer).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::settings::Settings;
use worker::llm::sim::SimOptions;

use super::report::percentile;
use super::scrape::{accept_rounds, turn_stages, turns_in_flight};
use super::traffic::{read_conversation, stream_conversation, watch_graph, webhook};
use super::{
    APP_SECRET, BenchArgs, PHONE_NUMBER_ID, Timings, answered_per_s, cpu, graph, wait_for_answers,
};
use crate::{db_servers, fleet};

/// Resident memory of a process (KiB), from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// One run of the scenario on a fleet of its own; its report.
pub(super) async fn run_once(
    settings: &Settings,
    args: &BenchArgs,
    streaming: bool,
) -> anyhow::Result<Value> {
    let latency = Duration::from_millis(args.llm_latency_ms);
    let whatsapp = args.channel == "whatsapp";
    let graph_stop = tokio_util::sync::CancellationToken::new();
    let (graph_url, graph_replies) = graph::start(graph_stop.clone()).await?;
    let servers = db_servers::DbServers::start(
        &uuid::Uuid::new_v4().simple().to_string()[..8],
        usize::from(args.db_shards) - 1,
        false,
    )
    .await?;
    let harness = fleet::start(
        settings,
        fleet::Options {
            name: "bench",
            workers: args.workers,
            ingress: 1,
            sim: SimOptions {
                latency,
                error_rate: 0.0,
                word_delay: Duration::from_millis(args.word_delay_ms),
            },
            log_dir: None,
            db_proxy: false,
            db_servers: servers.urls.clone(),
            history_turns: args.history_turns,
            env: vec![
                ("CHATFLEET__AMQP__PREFETCH".into(), "4096".into()),
                // The bench measures the platform, not the tenant's plan.
                (
                    "CHATFLEET__PLANS__ENTERPRISE__MESSAGES_PER_MINUTE".into(),
                    "100000000".into(),
                ),
                (
                    "CHATFLEET__PLANS__ENTERPRISE__BURST".into(),
                    "10000000".into(),
                ),
                (
                    "CHATFLEET__DATABASE__MAX_CONNECTIONS".into(),
                    args.db_connections.to_string(),
                ),
                // Nor the provider's concurrency cap: the double has none.
                (
                    "CHATFLEET__LLM__PROVIDERS__OLLAMA__MAX_CONCURRENCY".into(),
                    "100000".into(),
                ),
                // Nor Meta's per-number throughput.
                (
                    "CHATFLEET__WHATSAPP__MESSAGES_PER_SECOND".into(),
                    "1000000".into(),
                ),
                ("CHATFLEET__WHATSAPP__APP_SECRET".into(), APP_SECRET.into()),
                (
                    "CHATFLEET__LLM__PROVIDERS__OLLAMA__STREAM".into(),
                    streaming.to_string(),
                ),
                ("CHATFLEET__WHATSAPP__GRAPH_BASE_URL".into(), graph_url),
            ],
        },
    )
    .await?;
    if whatsapp {
        let credentials =
            shared::secrets::SecretBox::new(&harness.settings.security.encryption_ring()).seal(
                harness.client_id,
                shared::ids::Channel::Whatsapp,
                json!({ "access_token": "bench-token" })
                    .to_string()
                    .as_bytes(),
            )?;
        harness
            .db
            .tenant(harness.client_id)
            .channel_accounts()
            .create(
                shared::ids::Channel::Whatsapp,
                PHONE_NUMBER_ID,
                Some(&credentials),
                &json!({}),
            )
            .await?;
    }
    // The harness made the first tenant; the others go where `clients().create` puts
    // them, the least-loaded shard.
    let mut api_keys = vec![harness.api_key.clone()];
    for t in 2..=args.tenants() {
        let (_, key) =
            fleet::add_tenant(&harness.db, &format!("bench-{t}"), args.history_turns).await?;
        api_keys.push(key);
    }
    let base = harness.fleet.ingress_urls[0].clone();
    let worker_pids: Vec<u32> = harness.fleet.workers.iter().map(|w| w.child.id()).collect();
    let worker_metrics = harness.fleet.worker_metrics();
    let processes = cpu::Processes::watch(harness.fleet.ingress_pids(), worker_pids.clone());
    let cpu_before = processes.sample();
    let cache = shared::cache::Cache::connect(&harness.settings.redis).await?;
    let work_before = (
        harness.db.server_work().await?,
        cache.commands_processed().await?,
    );
    let conversations = args.conversations();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conversations + 64)
        .timeout(Duration::from_secs(60))
        .build()?;
    let timings = Arc::new(Mutex::new(Timings::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    // Refused or failed sends, by what happened: an HTTP status, "timeout" or "connect".
    let errors: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    // How long each send waited for its status (any status: a 503 counts), in ms.
    let statuses: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut pollers = tokio::task::JoinSet::new();
    let peak_rss = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let peak_in_flight = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (pids, peak, stop) = (worker_pids.clone(), peak_rss.clone(), stop.clone());
        let (http, metrics, in_flight) =
            (http.clone(), worker_metrics.clone(), peak_in_flight.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let rss: u64 = pids.iter().filter_map(|p| rss_kib(*p)).sum();
                peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                let turns = turns_in_flight(&http, &metrics).await;
                in_flight.fetch_max(turns, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }

    eprintln!("bench {}: a fleet of its own is up; sending", harness.id);
    let total = (u64::from(args.rate) * args.duration.as_secs()) as usize;
    let started = tokio::time::Instant::now();
    let per = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let mut sends = tokio::task::JoinSet::new();
    if whatsapp {
        tokio::spawn(watch_graph(graph_replies, timings.clone()));
    }
    for k in 0..total {
        tokio::time::sleep_until(started + per * k as u32).await;
        let c = k % conversations;
        let api_key = &api_keys[c % api_keys.len()];
        let request = if whatsapp {
            let body = webhook(c, k);
            http.post(format!("{base}/whatsapp/webhook"))
                .header("content-type", "application/json")
                .header(
                    "x-hub-signature-256",
                    ingress::sign_whatsapp_webhook(APP_SECRET, body.as_bytes()),
                )
                .body(body)
        } else {
            http.post(format!("{base}/api/v1/messages"))
                .bearer_auth(api_key)
                .json(
                    &json!({ "conversation_id": format!("b{c}"), "text": format!("message {k}") }),
                )
        };
        let accepted = if whatsapp {
            reqwest::StatusCode::OK
        } else {
            reqwest::StatusCode::ACCEPTED
        };
        let (times, errs, statuses) = (timings.clone(), errors.clone(), statuses.clone());
        // A conversation's reader starts polling once its first message was accepted:
        // before that the conversation does not exist (404), and a reader that backed
        // off would add its pause to the first answer's latency.
        let (first_accepted, accepted_signal) = tokio::sync::oneshot::channel::<()>();
        let first_accepted = (!whatsapp && k < conversations).then_some(first_accepted);
        sends.spawn(async move {
            let sent = Instant::now();
            let response = request.send().await;
            if response.is_ok()
                && let Ok(mut s) = statuses.lock()
            {
                s.push(sent.elapsed().as_secs_f64() * 1e3);
            }
            match response {
                Ok(r) if r.status() == accepted => {
                    if let Ok(mut t) = times.lock() {
                        t.sent.insert(k as u64, sent);
                    }
                    if let Some(first) = first_accepted {
                        let _ = first.send(());
                    }
                }
                outcome => {
                    let kind = match outcome {
                        Ok(r) => r.status().as_u16().to_string(),
                        Err(e) if e.is_timeout() => "timeout".to_owned(),
                        Err(e) if e.is_connect() => "connect".to_owned(),
                        Err(_) => "other".to_owned(),
                    };
                    if let Ok(mut errs) = errs.lock() {
                        *errs.entry(kind).or_default() += 1;
                    }
                }
            }
        });
        // Each conversation's reader starts once its first message was sent.
        if !whatsapp && k < conversations {
            let (http, base, key, timings, stop) = (
                http.clone(),
                base.clone(),
                api_key.clone(),
                timings.clone(),
                stop.clone(),
            );
            pollers.spawn(async move {
                // Refused: poll anyway (404 until a later message is accepted).
                let _ = accepted_signal.await;
                let conversation = format!("b{c}");
                if streaming {
                    stream_conversation(http, base, key, conversation, timings, stop).await;
                } else {
                    read_conversation(http, base, key, conversation, timings, stop).await;
                }
            });
        }
    }
    while sends.join_next().await.is_some() {}
    let send_window = started.elapsed();
    // Wait for the answers (at most the LLM latency plus 30 s).
    wait_for_answers(&timings, Instant::now() + latency + Duration::from_secs(30)).await;
    let cpu_after = processes.sample();
    let work = harness.db.server_work().await?.since(&work_before.0);
    let redis_commands = cache
        .commands_processed()
        .await?
        .saturating_sub(work_before.1);
    let stages = turn_stages(&http, &worker_metrics).await;
    let accepting = accept_rounds(&http, &[format!("{base}/metrics")]).await;
    stop.cancel();
    pollers.abort_all();
    let dead = harness
        .broker
        .queue_stats(&harness.broker.topology().dead_queue())
        .await
        .map(|s| s.messages)
        .unwrap_or(0);

    let mut first_delta: Vec<f64> = timings
        .lock()
        .map(|t| {
            t.sent
                .iter()
                .filter_map(|(id, s)| {
                    // A delta before the send belonged to an earlier turn's reply.
                    t.first_delta
                        .get(id)
                        .filter(|d| **d >= *s)
                        .map(|d| d.duration_since(*s).as_secs_f64() * 1e3)
                })
                .collect()
        })
        .unwrap_or_default();
    first_delta.sort_by(f64::total_cmp);
    let (accepted, mut e2e, answered_rate) = {
        let t = timings.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let e2e: Vec<f64> = t
            .sent
            .iter()
            .filter_map(|(id, s)| {
                t.answered
                    .get(id)
                    .map(|a| a.saturating_duration_since(*s).as_secs_f64() * 1e3)
            })
            .collect();
        let answers: Vec<Instant> = t
            .sent
            .keys()
            .filter_map(|id| t.answered.get(id).copied())
            .collect();
        (t.sent.len(), e2e, answered_per_s(&answers, send_window))
    };
    e2e.sort_by(f64::total_cmp);
    // What the double actually held each call (its timer rounds up and wakes when the
    // bench process gets the CPU) is the LLM's time, not the platform's.
    let held_ms = harness.sim.mean_hold().unwrap_or(latency).as_secs_f64() * 1e3;
    let overhead: Vec<f64> = e2e.iter().map(|v| (v - held_ms).max(0.0)).collect();
    let wall = started.elapsed().as_secs_f64();
    let answered = e2e.len();
    let cpu_by_process = processes.report(&cpu_before, &cpu_after, wall, answered);
    let row = |v: &[f64]| {
        json!({
            "p50": percentile(v, 0.50), "p90": percentile(v, 0.90),
            "p99": percentile(v, 0.99), "max": v.last().copied().unwrap_or(f64::NAN),
        })
    };
    let per = |n: u64| n as f64 / answered.max(1) as f64;
    let work_per_answered = json!({
        "db_round_trips": per(work.round_trips),
        "db_statements": per(work.statements),
        "db_log_writes": per(work.log_writes),
        "db_fsyncs": per(work.fsyncs),
        "redis_commands": per(redis_commands),
    });
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    let mut statuses = statuses.lock().map(|s| s.clone()).unwrap_or_default();
    statuses.sort_by(f64::total_cmp);
    let run = json!({
        "channel": args.channel,
        "streaming": streaming,
        "word_delay_ms": args.word_delay_ms,
        "first_delta_ms": row(&first_delta),
        "offered_per_s": args.rate,
        "duration_s": args.duration.as_secs(),
        "conversations": conversations,
        "workers": args.workers,
        "db_shards": args.db_shards,
        "tenants": api_keys.len(),
        "llm_latency_ms": args.llm_latency_ms,
        "history_turns": args.history_turns,
        "llm_mean_hold_ms": held_ms,
        "sent": total,
        "accepted": accepted,
        "answered": answered,
        "achieved_per_s": answered_rate,
        "accepted_per_s": accepted as f64 / send_window.as_secs_f64(),
        // One LLM call per turn: fewer than answered messages when turns answered
        // several at once (messages that arrived while their conversation's turn ran).
        "llm_calls": harness.sim.served(),
        "end_to_end_ms": row(&e2e),
        "overhead_ms": row(&overhead),
        "status_ms": row(&statuses),
        "worker_peak_rss_mib": peak_rss.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0,
        "worker_cpu_cores": cpu_by_process["worker"]["cores"],
        "cpu_by_process": cpu_by_process,
        // Every server's own counters (whatever else ran on it counts too).
        "work_per_answered": work_per_answered,
        "peak_turns_in_flight": peak_in_flight.load(std::sync::atomic::Ordering::Relaxed),
        "turn_stage_mean_ms": stages.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "accept_rounds": accepting,
        "dead_letters": dead,
        "errors": errors.values().sum::<u64>(),
        "error_kinds": errors.iter().map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join(", "),
    });

    graph_stop.cancel();
    harness.shut_down().await?;
    drop(servers);
    Ok(run)
}
