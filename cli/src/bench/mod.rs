//! `chatfleet bench`: what the platform adds to the LLM's own time, measured end to end.
//!
//! It starts a fleet of its own (one ingress, `--workers` workers, the LLM double with
//! `--llm-latency-ms`), sends messages at `--rate` per second for `--duration` over
//! `--conversations` conversations, and watches the answers arrive: on the API channel
//! by long-polling every conversation, on WhatsApp (`--channel whatsapp`: signed
//! webhooks in) at a Graph API double ([`graph`]) that the replies are sent to. A
//! message's end-to-end latency runs from just before its send to the moment its answer
//! is visible to the channel (a reply answering several messages answers each of them).
//! Platform overhead = end to end − the double's latency. Prints a table (and writes
//! JSON with `--json <file>`): offered and achieved rate, latency and overhead
//! percentiles, worker RSS and CPU, dead letters and errors. `--ceiling` first measures
//! the broker's own rate with the same client library, so every figure has a yardstick;
//! `--ceiling-only` measures just that.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use shared::mq::Broker;
use shared::settings::Settings;
use worker::llm::sim::SimOptions;

use crate::fleet;

mod graph;

/// The bench tenant's WhatsApp number and the app secret its webhooks are signed with.
const PHONE_NUMBER_ID: &str = "100000000000001";
const APP_SECRET: &str = "bench-app-secret";

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Messages offered per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// How long to offer them (e.g. 10s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 200)]
    conversations: usize,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// The LLM double's latency, in milliseconds.
    #[arg(long, default_value_t = 0)]
    llm_latency_ms: u64,
    /// The channel driven: api (send + long-poll) or whatsapp (signed webhooks in,
    /// replies sent to a Graph API double).
    #[arg(long, default_value = "api", value_parser = ["api", "whatsapp"])]
    channel: String,
    /// Measure the broker's own ceiling first.
    #[arg(long)]
    ceiling: bool,
    /// Measure only the broker's ceiling.
    #[arg(long)]
    ceiling_only: bool,
    /// Messages for the ceiling.
    #[arg(long, default_value_t = 20_000)]
    ceiling_messages: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    let (number, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like 30s or 2m"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{raw:?} is not a duration like 30s or 2m")),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Resident memory (KiB) and CPU time (seconds) of a process, from /proc.
fn usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((rss, ticks / 100.0))
}

/// Send times and answer times of every accepted message, by its number `k` (the bench
/// sends "message {k}").
#[derive(Default)]
struct Timings {
    sent: HashMap<u64, Instant>,
    answered: HashMap<u64, Instant>,
}

/// The bench messages a text names ("message 12\n\nmessage 14": 12 and 14).
fn bench_messages(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.split("message ").skip(1).filter_map(|rest| {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..digits].parse().ok()
    })
}

pub(crate) async fn run(settings: &Settings, args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.conversations > 0 && args.workers > 0,
        "--rate, --conversations and --workers must be positive"
    );
    let mut report = json!({});
    if args.ceiling || args.ceiling_only {
        let broker = Broker::connect(&settings.amqp, "chatfleet-bench").await?;
        let c = broker.measure_ceiling(args.ceiling_messages, 1024).await?;
        broker.close().await;
        println!(
            "broker ceiling ({} persistent 1 KiB messages, quorum queue): publish with confirms {:.0}/s, consume with acks {:.0}/s",
            c.messages, c.publish_per_s, c.consume_per_s
        );
        report["ceiling"] = json!({ "messages": c.messages, "publish_per_s": c.publish_per_s, "consume_per_s": c.consume_per_s });
        if args.ceiling_only {
            return write(&args, &report);
        }
    }

    let latency = Duration::from_millis(args.llm_latency_ms);
    let whatsapp = args.channel == "whatsapp";
    let graph_stop = tokio_util::sync::CancellationToken::new();
    let (graph_url, graph_replies) = graph::start(graph_stop.clone()).await?;
    let harness = fleet::start(
        settings,
        fleet::Options {
            name: "bench",
            workers: args.workers,
            ingress: 1,
            sim: SimOptions {
                latency,
                error_rate: 0.0,
            },
            log_dir: None,
            db_proxy: false,
            env: vec![
                ("CHATFLEET__AMQP__PREFETCH".into(), "2048".into()),
                // The bench measures the platform, not the tenant's plan.
                (
                    "CHATFLEET__PLANS__ENTERPRISE__MESSAGES_PER_MINUTE".into(),
                    "100000000".into(),
                ),
                (
                    "CHATFLEET__PLANS__ENTERPRISE__BURST".into(),
                    "10000000".into(),
                ),
                // Nor Meta's per-number throughput.
                (
                    "CHATFLEET__WHATSAPP__MESSAGES_PER_SECOND".into(),
                    "1000000".into(),
                ),
                ("CHATFLEET__WHATSAPP__APP_SECRET".into(), APP_SECRET.into()),
                ("CHATFLEET__WHATSAPP__GRAPH_BASE_URL".into(), graph_url),
            ],
        },
    )
    .await?;
    if whatsapp {
        let credentials =
            shared::secrets::SecretBox::new(harness.settings.security.encryption_key_bytes())
                .seal(
                    harness.client_id,
                    shared::ids::Channel::Whatsapp,
                    json!({ "access_token": "bench-token" })
                        .to_string()
                        .as_bytes(),
                )?;
        harness
            .db
            .channel_accounts()
            .create(
                harness.client_id,
                shared::ids::Channel::Whatsapp,
                PHONE_NUMBER_ID,
                Some(&credentials),
                &json!({}),
            )
            .await?;
    }
    let base = harness.fleet.ingress_urls[0].clone();
    let worker_pids: Vec<u32> = harness.fleet.workers.iter().map(|w| w.id()).collect();
    let before: Vec<(u64, f64)> = worker_pids.iter().filter_map(|p| usage(*p)).collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.conversations + 64)
        .timeout(Duration::from_secs(60))
        .build()?;
    let timings = Arc::new(Mutex::new(Timings::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut pollers = tokio::task::JoinSet::new();
    let peak_rss = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (pids, peak, stop) = (worker_pids.clone(), peak_rss.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let rss: u64 = pids.iter().filter_map(|p| usage(*p)).map(|u| u.0).sum();
                peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }

    let scenario = format!(
        "{} {} msg/s for {:?} over {} conversations, {} worker(s), LLM double {} ms",
        args.channel,
        args.rate,
        args.duration,
        args.conversations,
        args.workers,
        args.llm_latency_ms
    );
    eprintln!("bench {}: {scenario}", harness.id);
    let total = (u64::from(args.rate) * args.duration.as_secs()) as usize;
    let started = tokio::time::Instant::now();
    let per = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let mut sends = tokio::task::JoinSet::new();
    if whatsapp {
        tokio::spawn(watch_graph(graph_replies, timings.clone()));
    }
    for k in 0..total {
        tokio::time::sleep_until(started + per * k as u32).await;
        let c = k % args.conversations;
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
                .bearer_auth(&harness.api_key)
                .json(
                    &json!({ "conversation_id": format!("b{c}"), "text": format!("message {k}") }),
                )
        };
        let accepted = if whatsapp {
            reqwest::StatusCode::OK
        } else {
            reqwest::StatusCode::ACCEPTED
        };
        let (times, errs) = (timings.clone(), errors.clone());
        sends.spawn(async move {
            let sent = Instant::now();
            match request.send().await {
                Ok(r) if r.status() == accepted => {
                    if let Ok(mut t) = times.lock() {
                        t.sent.insert(k as u64, sent);
                    }
                }
                _ => {
                    errs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        // Each conversation's reader starts once its first message was sent.
        if !whatsapp && k < args.conversations {
            let (http, base, key, timings, stop) = (
                http.clone(),
                base.clone(),
                harness.api_key.clone(),
                timings.clone(),
                stop.clone(),
            );
            pollers.spawn(read_conversation(
                http,
                base,
                key,
                format!("b{c}"),
                timings,
                stop,
            ));
        }
    }
    while sends.join_next().await.is_some() {}
    let send_window = started.elapsed();
    // Wait for the answers (at most the LLM latency plus 30 s).
    let deadline = Instant::now() + latency + Duration::from_secs(30);
    loop {
        let (sent, answered) = timings
            .lock()
            .map(|t| {
                (
                    t.sent.len(),
                    t.sent
                        .keys()
                        .filter(|k| t.answered.contains_key(*k))
                        .count(),
                )
            })
            .unwrap_or_default();
        if answered >= sent || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after: Vec<(u64, f64)> = worker_pids.iter().filter_map(|p| usage(*p)).collect();
    let stages = turn_stages(&http, &harness.fleet.worker_metrics).await;
    stop.cancel();
    pollers.abort_all();
    let dead = harness
        .broker
        .queue_stats(&harness.broker.topology().dead_queue())
        .await
        .map(|s| s.messages)
        .unwrap_or(0);

    let (accepted, mut e2e) = {
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
        (t.sent.len(), e2e)
    };
    e2e.sort_by(f64::total_cmp);
    let latency_ms = latency.as_secs_f64() * 1e3;
    let overhead: Vec<f64> = e2e.iter().map(|v| (v - latency_ms).max(0.0)).collect();
    let cpu: f64 = after.iter().map(|a| a.1).sum::<f64>() - before.iter().map(|b| b.1).sum::<f64>();
    let wall = started.elapsed().as_secs_f64();
    let answered = e2e.len();
    let row = |v: &[f64]| {
        json!({
            "p50": percentile(v, 0.50), "p90": percentile(v, 0.90),
            "p99": percentile(v, 0.99), "max": v.last().copied().unwrap_or(f64::NAN),
        })
    };
    report["run"] = json!({
        "channel": args.channel,
        "offered_per_s": args.rate,
        "duration_s": args.duration.as_secs(),
        "conversations": args.conversations,
        "workers": args.workers,
        "llm_latency_ms": args.llm_latency_ms,
        "sent": total,
        "accepted": accepted,
        "answered": answered,
        "achieved_per_s": answered as f64 / send_window.as_secs_f64(),
        "end_to_end_ms": row(&e2e),
        "overhead_ms": row(&overhead),
        "worker_peak_rss_mib": peak_rss.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0,
        "worker_cpu_cores": cpu / wall,
        "turn_stage_mean_ms": stages.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "dead_letters": dead,
        "errors": errors.load(std::sync::atomic::Ordering::Relaxed),
    });
    let r = &report["run"];
    println!("bench {} ({scenario}):", harness.id);
    println!(
        "  sent / accepted / answered:  {total} / {accepted} / {answered}  ({:.0} answered/s)",
        r["achieved_per_s"].as_f64().unwrap_or(0.0)
    );
    for (name, v) in [
        ("end to end (ms)", &r["end_to_end_ms"]),
        ("platform overhead (ms)", &r["overhead_ms"]),
    ] {
        println!(
            "  {name:<28} p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
            v["p50"].as_f64().unwrap_or(f64::NAN),
            v["p90"].as_f64().unwrap_or(f64::NAN),
            v["p99"].as_f64().unwrap_or(f64::NAN),
            v["max"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "  worker peak RSS {:.0} MiB, CPU {:.2} cores; dead letters {dead}; errors {}",
        r["worker_peak_rss_mib"].as_f64().unwrap_or(0.0),
        r["worker_cpu_cores"].as_f64().unwrap_or(0.0),
        r["errors"]
    );

    if !stages.is_empty() {
        let line: Vec<String> = stages.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
        println!("  turn stages, mean ms:        {}", line.join("  "));
    }

    graph_stop.cancel();
    let fleet::Harness {
        db,
        broker,
        settings: run_settings,
        mut fleet,
        stop: infra,
        ..
    } = harness;
    tokio::task::spawn_blocking(move || fleet.stop()).await?;
    infra.cancel();
    fleet::clean_up(&run_settings, &broker, &db).await?;
    write(&args, &report)?;
    anyhow::ensure!(
        answered == accepted && answered > 0,
        "{} of {accepted} accepted messages were answered",
        answered
    );
    Ok(())
}

/// Mean time per turn stage (ms) over every worker, from their
/// `chatfleet_turn_stage_seconds` sums and counts, in the order a turn runs them.
async fn turn_stages(http: &reqwest::Client, urls: &[String]) -> Vec<(String, f64)> {
    const ORDER: [&str; 9] = [
        "queued", "record", "lock", "relay", "pending", "history", "llm", "store", "publish",
    ];
    let mut totals: HashMap<String, (f64, f64)> = HashMap::new();
    for url in urls {
        let Ok(text) = http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
        else {
            continue;
        };
        let Ok(text) = text.text().await else {
            continue;
        };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("chatfleet_turn_stage_seconds_") else {
                continue;
            };
            let (Some((kind, rest)), Some(value)) = (
                rest.split_once("{stage=\""),
                line.rsplit_once(' ')
                    .and_then(|(_, v)| v.parse::<f64>().ok()),
            ) else {
                continue;
            };
            let stage = rest.split('"').next().unwrap_or_default().to_owned();
            let entry = totals.entry(stage).or_default();
            match kind {
                "sum" => entry.0 += value,
                "count" => entry.1 += value,
                _ => {}
            }
        }
    }
    ORDER
        .iter()
        .filter_map(|stage| {
            let (sum, count) = totals.get(*stage)?;
            (*count > 0.0).then(|| ((*stage).to_owned(), sum / count * 1e3))
        })
        .collect()
}

fn write(args: &BenchArgs, report: &Value) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)?;
    }
    Ok(())
}

/// Long-polls one conversation: each assistant entry answers every user entry before it
/// that was not answered yet.
async fn read_conversation(
    http: reqwest::Client,
    base: String,
    key: String,
    conversation: String,
    timings: Arc<Mutex<Timings>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut cursor = "0".to_owned();
    let mut waiting: Vec<u64> = Vec::new();
    while !stop.is_cancelled() {
        let r = http
            .get(format!(
                "{base}/api/v1/conversations/{conversation}/messages"
            ))
            .query(&[("after", cursor.as_str()), ("wait", "20")])
            .bearer_auth(&key)
            .send()
            .await;
        let seen = Instant::now();
        let Ok(r) = r else { continue };
        if r.status() != reqwest::StatusCode::OK {
            // 404 until the first message was accepted; 204 after a quiet wait.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let Ok(page) = r.json::<Value>().await else {
            continue;
        };
        cursor = page["cursor"].as_str().unwrap_or(&cursor).to_owned();
        for entry in page["messages"].as_array().into_iter().flatten() {
            let text = entry["text"].as_str().unwrap_or_default();
            match entry["role"].as_str() {
                Some("user") => waiting.extend(bench_messages(text)),
                Some("assistant") => {
                    if let Ok(mut t) = timings.lock() {
                        for k in waiting.drain(..) {
                            t.answered.insert(k, seen);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Notes the answer time of every bench message a reply at the Graph API double names.
async fn watch_graph(
    mut replies: tokio::sync::mpsc::UnboundedReceiver<graph::Received>,
    timings: Arc<Mutex<Timings>>,
) {
    while let Some(reply) = replies.recv().await {
        let said = reply.text.rsplit_once("You said: ").map_or("", |(_, s)| s);
        if let Ok(mut t) = timings.lock() {
            for k in bench_messages(said) {
                t.answered.entry(k).or_insert(reply.at);
            }
        }
    }
}

/// A signed-ready WhatsApp webhook carrying bench message `k` from conversation `c`'s
/// number, as Meta sends it.
fn webhook(c: usize, k: usize) -> String {
    let from = format!("1555{c:07}");
    json!({ "object": "whatsapp_business_account", "entry": [{ "id": "1", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550000000", "phone_number_id": PHONE_NUMBER_ID },
            "contacts": [{ "profile": { "name": "Bench" }, "wa_id": from }],
            "messages": [{ "from": from, "id": format!("wamid.bench-in-{k}"),
                "timestamp": chrono::Utc::now().timestamp().to_string(),
                "type": "text", "text": { "body": format!("message {k}") } }] } }] }] })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_name_the_messages_they_answer() {
        let said: Vec<u64> = bench_messages("message 12\n\nmessage 140").collect();
        assert_eq!(said, [12, 140]);
        assert_eq!(bench_messages("no numbers here").count(), 0);
    }
}
