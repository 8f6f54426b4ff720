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
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use shared::mq::Broker;
use shared::settings::Settings;

mod cpu;
mod graph;
mod noisy;
mod report;
mod run;
pub(crate) mod scrape;
mod traffic;

use report::{median_of, print, print_ceiling};

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
        let mut run = run::run_once(settings, &args, streaming).await?;
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
