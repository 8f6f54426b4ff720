//! `chatfleet bench`: what the platform adds to the LLM's own time, measured end to end.
//!
//! It starts a fleet of its own (one ingress, `--workers` workers, the LLM double with
//! `--llm-latency-ms`), sends messages at `--rate` per second for `--duration` over
//! `--conversations` conversations, and watches the answers arrive: on the API channel
//! by long-polling every conversation, on WhatsApp (`--channel whatsapp`: signed
//! webhooks in) at a Graph API double ([`graph`]) that the replies are sent to. A
//! message's end-to-end latency runs from just before its send to the moment its answer
//! is visible to the channel (a reply answering several messages answers each of them).
//! Platform overhead = end to end − the time the double actually held the call (its
//! mean: a little over `--llm-latency-ms`, since timers round up). Prints a table (and writes
//! JSON with `--json <file>`): offered, accepted and answered rate (answered: from the
//! first answer to the last, so a saturated run's backlog counts), latency and overhead
//! percentiles, worker RSS and CPU, CPU by process (the fleet's, the bench's own and the
//! local services', [`cpu`]), the ingress's accepting rounds, dead letters and errors.
//! `--ceiling` measures the broker's single-hop rate with the same client library right
//! before each run (`shared::mq::Ceiling`: publishing with confirms and consuming with
//! acks at once), so each run's answered rate has a yardstick of its own hour;
//! `--ceiling-only` measures just that.
//!
//! By default every conversation receives a message every ten seconds, so a turn answers
//! about one message, as in real chat; `--conversations` fewer makes them hot (each
//! turn answers the messages that arrived while the one before it ran).
//! `--compare-workers 1,4` runs the scenario once per worker count, one after another,
//! and reads the answered rates against the first. `--db-shards 2` shards the run's
//! database over the machine's MariaDB and a server of the run's own
//! (`scripts/mariadb-shard`), with one tenant per shard (`--tenants` to change it): the
//! conversations take turns among the tenants, which are placed as they would be in
//! production, on the least-loaded shard.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use shared::mq::Broker;
use shared::settings::Settings;
use worker::llm::sim::SimOptions;

use crate::{db_servers, fleet};

mod cpu;
mod graph;
mod noisy;
mod report;
pub(crate) mod scrape;
mod traffic;

use report::{median_of, percentile, print, print_ceiling};
use scrape::{accept_rounds, turn_stages, turns_in_flight};
use traffic::{read_conversation, stream_conversation, watch_graph, webhook};

/// The bench tenant's WhatsApp number and the app secret its webhooks are signed with.
const PHONE_NUMBER_ID: &str = "100000000000001";
const APP_SECRET: &str = "bench-app-secret";

#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {
    /// Messages offered per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// How long to offer them (e.g. 10s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Conversations the messages are spread over (default: ten seconds' worth of
    /// messages, so each conversation gets one every ten seconds).
    #[arg(long)]
    conversations: Option<usize>,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Runs the scenario once per worker count given (e.g. 1,4), in one invocation, and
    /// reads each answered rate against the first's (overrides --workers).
    #[arg(long, value_delimiter = ',')]
    compare_workers: Vec<usize>,
    /// Database servers the run's database is sharded over: the machine's MariaDB and
    /// `N - 1` servers of the run's own (scripts/mariadb-shard).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    db_shards: u16,
    /// Tenants the conversations are spread over, each placed on the least-loaded shard
    /// at its creation (default: one per shard).
    #[arg(long)]
    tenants: Option<usize>,
    /// The LLM double's latency, in milliseconds.
    #[arg(long, default_value_t = 0)]
    llm_latency_ms: u64,
    /// The channel driven: api (send + long-poll) or whatsapp (signed webhooks in,
    /// replies sent to a Graph API double).
    #[arg(long, default_value = "api", value_parser = ["api", "whatsapp"])]
    channel: String,
    /// Measure the broker's single-hop ceiling right before each run, and read the
    /// run's answered rate against it.
    #[arg(long)]
    ceiling: bool,
    /// Measure only the broker's ceiling.
    #[arg(long)]
    ceiling_only: bool,
    /// Messages for the ceiling.
    #[arg(long, default_value_t = 20_000)]
    ceiling_messages: usize,
    /// The tenant's `max_context_turns`: earlier turns in every prompt (10 is a new
    /// tenant's default, 100 the most a tenant may configure).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100))]
    history_turns: u32,
    /// Database connections of each fleet process (`database.max_connections`).
    #[arg(long, default_value_t = 16)]
    db_connections: u32,
    /// Runs of the scenario; with more than one, the report adds each figure's median.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The noisy-neighbour scenario (see `noisy.rs`): a quiet tenant throughout, a
    /// noisy one flooding in the middle third, the provider saturated on purpose.
    #[arg(long)]
    noisy: bool,
    /// `--noisy`: the quiet tenant's messages per second.
    #[arg(long, default_value_t = 2.0)]
    quiet_rate: f64,
    /// `--noisy`: the noisy tenant's rate as a multiple of the quiet one's.
    #[arg(long, default_value_t = 100)]
    noisy_factor: u32,
    /// `--noisy`: the provider's concurrent calls per worker.
    #[arg(long, default_value_t = 8)]
    noisy_slots: usize,
    /// Each run twice, long-polling and then streaming (SSE, the provider streaming its
    /// answers): time to the first delta beside time to the stored message.
    #[arg(long)]
    stream: bool,
    /// The LLM double's pause between the words of a streamed answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    word_delay_ms: u64,
}

impl BenchArgs {
    fn conversations(&self) -> usize {
        self.conversations.unwrap_or(self.rate as usize * 10).max(1)
    }

    fn tenants(&self) -> usize {
        self.tenants.unwrap_or(usize::from(self.db_shards))
    }
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

/// Send times and answer times of every accepted message, by its number `k` (the bench
/// sends "message {k}"), and when streaming the time of its answer's first delta.
#[derive(Default)]
struct Timings {
    sent: HashMap<u64, Instant>,
    answered: HashMap<u64, Instant>,
    first_delta: HashMap<u64, Instant>,
}

/// Answers per second, from the first answer to the last: a saturated fleet is still
/// answering after the last send, and its backlog's answers count against the time they
/// took, not against the send window (nor is the LLM's latency before the first answer
/// counted). Answers too close together to tell (a short run) are counted against the
/// send window.
fn answered_per_s(answers: &[Instant], send_window: Duration) -> f64 {
    let span = answers
        .iter()
        .min()
        .zip(answers.iter().max())
        .map(|(first, last)| *last - *first)
        .filter(|span| *span >= send_window / 2)
        .unwrap_or(send_window);
    answers.len() as f64 / span.as_secs_f64()
}

pub(crate) async fn run(settings: &Settings, args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0
            && args.conversations != Some(0)
            && args.workers > 0
            && !args.compare_workers.contains(&0)
            && args.runs > 0
            && args.tenants != Some(0),
        "--rate, --conversations, --workers, --compare-workers, --runs and --tenants must be positive"
    );
    anyhow::ensure!(
        args.tenants() == 1 || args.channel == "api",
        "--tenants and --db-shards drive the api channel (the WhatsApp double is one number)"
    );
    let mut report = json!({});
    if args.noisy {
        anyhow::ensure!(
            args.quiet_rate > 0.0 && args.noisy_factor > 0 && args.noisy_slots > 0,
            "--quiet-rate, --noisy-factor and --noisy-slots must be positive"
        );
        let mut runs = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            let run = noisy::run(settings, &args).await?;
            noisy::print(&run);
            runs.push(run);
        }
        report["runs"] = json!(runs);
        return write(&args, &report);
    }
    if args.ceiling_only {
        report["ceiling"] = ceiling(settings, args.ceiling_messages).await?;
        print_ceiling(&report["ceiling"]);
        return write(&args, &report);
    }
    anyhow::ensure!(
        !args.stream || args.channel == "api",
        "--stream drives the api channel (WhatsApp shows no deltas)"
    );
    let modes: &[bool] = if args.stream {
        &[false, true]
    } else {
        &[false]
    };
    let worker_counts = if args.compare_workers.is_empty() {
        vec![args.workers]
    } else {
        args.compare_workers.clone()
    };
    // Each (streaming, workers) scenario, in the order they run within a round.
    let scenarios: Vec<(bool, usize)> = modes
        .iter()
        .flat_map(|m| worker_counts.iter().map(move |w| (*m, *w)))
        .collect();
    let mut runs = Vec::with_capacity(args.runs * scenarios.len());
    for &(streaming, workers) in (0..args.runs).flat_map(|_| &scenarios) {
        let args = BenchArgs {
            workers,
            ..args.clone()
        };
        // Measured right before each run: this machine's speed moves within minutes,
        // and each run is read against its own yardstick.
        let ceiling = if args.ceiling {
            Some(ceiling(settings, args.ceiling_messages).await?)
        } else {
            None
        };
        let mut run = run_once(settings, &args, streaming).await?;
        if let Some(ceiling) = ceiling {
            run["fraction_of_ceiling"] = json!(
                run["achieved_per_s"].as_f64().unwrap_or(0.0)
                    / ceiling["hop_per_s"].as_f64().unwrap_or(f64::NAN)
            );
            run["ceiling"] = ceiling;
        }
        print("", &run);
        let (answered, accepted) = (run["answered"].as_u64(), run["accepted"].as_u64());
        runs.push(run);
        anyhow::ensure!(
            answered == accepted && answered > Some(0),
            "{answered:?} of {accepted:?} accepted messages were answered"
        );
    }
    let mut summaries = Vec::new();
    for &(streaming, workers) in &scenarios {
        let of_mode: Vec<&Value> = runs
            .iter()
            .filter(|r| r["streaming"] == json!(streaming) && r["workers"] == json!(workers))
            .collect();
        let summary = if of_mode.len() > 1 {
            let mut median = median_of(&of_mode);
            // A failure in any run counts.
            for worst in ["dead_letters", "errors"] {
                median[worst] = json!(of_mode.iter().filter_map(|r| r[worst].as_u64()).max());
            }
            print(&format!("median of {} runs: ", of_mode.len()), &median);
            median
        } else {
            of_mode[0].clone()
        };
        summaries.push(summary);
    }
    if worker_counts.len() > 1 {
        print_worker_comparison(&summaries);
    }
    let summary = if summaries.len() == 1 {
        summaries.remove(0)
    } else if worker_counts.len() > 1 {
        json!(summaries)
    } else {
        json!({ "long_poll": summaries[0], "streaming": summaries[1] })
    };
    report["runs"] = json!(runs);
    report["summary"] = summary;
    write(&args, &report)
}

/// Each worker count's answered rate and CPU per answer against the first count's (of
/// the same mode).
fn print_worker_comparison(summaries: &[Value]) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    for summary in summaries {
        let Some(first) = summaries
            .iter()
            .find(|s| s["streaming"] == summary["streaming"])
        else {
            continue;
        };
        println!(
            "  {} worker(s){}: {:.0} answered/s = {:.2}x {} worker(s); {:.2} messages per turn; fleet CPU {:.2} ms per answer",
            summary["workers"],
            if summary["streaming"] == json!(true) {
                ", streaming"
            } else {
                ""
            },
            f(&summary["achieved_per_s"]),
            f(&summary["achieved_per_s"]) / f(&first["achieved_per_s"]),
            first["workers"],
            f(&summary["answered"]) / f(&summary["llm_calls"]),
            f(&summary["cpu_by_process"]["platform"]["ms_per_answered"]),
        );
    }
}

/// The broker's single-hop ceiling (and each side alone), over two connections as an
/// ingress and a worker have.
async fn ceiling(settings: &Settings, messages: usize) -> anyhow::Result<Value> {
    let publisher = Broker::connect(&settings.amqp, "chatfleet-bench-publisher").await?;
    let consumer = Broker::connect(&settings.amqp, "chatfleet-bench-consumer").await?;
    let measured = publisher.measure_ceiling(&consumer, messages, 1024).await;
    consumer.close().await;
    publisher.close().await;
    let c = measured?;
    Ok(json!({
        "messages": c.messages,
        "hop_per_s": c.hop_per_s,
        "publish_per_s": c.publish_per_s,
        "consume_per_s": c.consume_per_s,
    }))
}

/// One run of the scenario on a fleet of its own; its report.
async fn run_once(settings: &Settings, args: &BenchArgs, streaming: bool) -> anyhow::Result<Value> {
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

/// Waits until every accepted message was answered, or until `deadline`.
async fn wait_for_answers(timings: &Mutex<Timings>, deadline: Instant) {
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
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write(args: &BenchArgs, report: &Value) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answered_rate_counts_the_time_the_answers_took() {
        let start = Instant::now();
        let spread = |n: u32, over: Duration| -> Vec<Instant> {
            (0..n).map(|i| start + over * i / (n - 1)).collect()
        };
        let window = Duration::from_secs(10);
        let kept_up = answered_per_s(&spread(1000, window), window);
        assert!((kept_up - 100.0).abs() < 0.5, "{kept_up}");
        // A backlog answered for twice as long as the sends took: half the rate.
        let saturated = answered_per_s(&spread(1000, window * 2), window);
        assert!((saturated - 50.0).abs() < 0.5, "{saturated}");
        // All at once (too few to tell): against the send window.
        let burst = answered_per_s(&spread(10, Duration::from_millis(1)), window);
        assert!((burst - 1.0).abs() < 1e-9, "{burst}");
    }
}
