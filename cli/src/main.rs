//! `chatfleet`: the operator's command line.
//!
//! - `up`: everything in one process for a local try-out (migrations, topology, a demo
//!   tenant, ingress and worker, and the LLM simulator when no LLM answers).
//! - `worker`, `ingress`: run one process of the fleet (what the `worker` and `ingress`
//!   binaries do), so one binary can run every role.
//! - `chaos`: break a fleet of its own while driving messages, then check the guarantees.
//! - `replay`: re-run archived envelopes, as a dry run beside the original replies, or live.
//! - `dlq list|show|requeue|purge`: the dead-letter queue, filtered by tenant, reason,
//!   channel, time or id.
//! - `bench --ceiling`: the broker's own rate on this machine.
//! - `queues`: depth, unacked, consumers and rates of every queue of the deployment.
//! - `migrate`: create the database if needed and apply migrations.
//! - `tenant create|api-key`: make tenants without the admin API.
//! - `admin-token create|list|revoke`: operators of the admin API.
//! - `secrets reseal`: re-encrypt stored credentials under the first encryption key.
//! - `webhooks list|attempts|redeliver`: a tenant's webhook endpoints, their attempts,
//!   and sending events again with their own ids.
//! - `usage --client [--month]`: a tenant's month, day by day, with its cost and budget.
//! - `llm-sim`: the LLM test double (Ollama and OpenAI wire formats).

// A command-line tool talks to its user on stdout.
#![allow(clippy::print_stdout)]

mod bench;
mod chaos;
mod db_servers;
mod dlq;
mod fleet;
mod operators;
mod queues;
mod replay;
mod scripts;
mod secrets;
mod sse;
mod tenant;
mod up;
mod usage;
mod webhooks;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shared::db::Db;
use shared::settings::Settings;
use shared::shutdown::{CancellationToken, cancel_on_signals};

#[derive(Debug, Parser)]
#[command(name = "chatfleet", version, about = "Operate a chatfleet deployment")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform in this process (local try-out).
    Up(up::UpArgs),
    /// Run a worker (as the `worker` binary does): consume until SIGTERM, then drain.
    Worker,
    /// Run ingress (as the `ingress` binary does): serve until SIGTERM, then drain.
    Ingress,
    /// Run a fleet of its own, break it while driving messages through it, and check that
    /// no message was lost, duplicated or answered out of order.
    Chaos(chaos::ChaosArgs),
    /// Re-run archived envelopes: dry-run (compare with today's configuration) or live.
    Replay(replay::ReplayArgs),
    /// The dead-letter queue: list, show, requeue, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Benchmarks: `--ceiling` measures the broker's own rate on this machine.
    Bench(bench::BenchArgs),
    /// Every queue of this deployment: ready and unacked messages, consumers, rates.
    Queues(queues::QueuesArgs),
    /// Create the database if needed and apply pending migrations.
    Migrate,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(tenant::TenantCommand),
    /// Operators of the admin API: a token each, with read or write scope.
    #[command(subcommand)]
    AdminToken(operators::AdminTokenCommand),
    /// Stored secrets: `reseal` re-encrypts every credential under the first key of
    /// security.encryption_keys.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Tenants' webhook endpoints: list, attempts, redeliver.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// A tenant's month: messages, tokens, tool calls and cost per day, and its budget.
    Usage(usage::UsageArgs),
    /// Run the LLM simulator (speaks Ollama and OpenAI wire formats).
    LlmSim {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:11434")]
        bind: SocketAddr,
        /// Latency added to every answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Fraction of requests answered 503 (0.0-1.0).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Pause between the words of a streamed answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        word_delay_ms: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load()?;
    let service = match cli.command {
        Command::Worker => "chatfleet-worker",
        Command::Ingress => "chatfleet-ingress",
        _ => "chatfleet",
    };
    let _telemetry = shared::telemetry::init(&settings.telemetry, service);
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    match cli.command {
        Command::Up(args) => up::run(settings, args, shutdown).await,
        Command::Worker => worker::run(settings, shutdown).await,
        Command::Chaos(args) => chaos::run(settings, args).await,
        Command::Queues(args) => queues::run(&settings, args).await,
        Command::Bench(args) => bench::run(&settings, args).await,
        Command::Dlq(command) => dlq::run(&settings, command).await,
        Command::Replay(args) => replay::run(&settings, args).await,
        Command::Ingress => {
            let running = ingress::start(settings, shutdown).await?;
            tracing::info!(addr = %running.addr, "ingress listening");
            running.task.await?;
            Ok(())
        }
        Command::Migrate => {
            Db::migrate(&settings.database).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Tenant(command) => tenant::run(&settings, command).await,
        Command::Secrets(command) => secrets::run(&settings, command).await,
        Command::AdminToken(command) => operators::run(&settings, command).await,
        Command::Webhooks(command) => webhooks::run(&settings, command).await,
        Command::Usage(args) => usage::run(&settings, args).await,
        Command::LlmSim {
            bind,
            latency_ms,
            error_rate,
            word_delay_ms,
        } => {
            if !(0.0..=1.0).contains(&error_rate) {
                anyhow::bail!("--error-rate must be between 0.0 and 1.0");
            }
            let sim = worker::llm::sim::LlmSim::start(
                bind,
                worker::llm::sim::SimOptions {
                    latency: Duration::from_millis(latency_ms),
                    error_rate,
                    word_delay: Duration::from_millis(word_delay_ms),
                },
                shutdown.clone(),
            )
            .await?;
            println!(
                "llm-sim listening on {} (Ollama and OpenAI formats)",
                sim.base_url()
            );
            shutdown.cancelled().await;
            Ok(())
        }
    }
}
