//! `chatfleet chaos`: proves the delivery guarantees by breaking things.
//!
//! It runs a fleet of its own — `--ingress` ingress and `--workers` worker processes of
//! this binary, on a fresh database, queue prefix and Redis prefix, against an in-process
//! LLM double that fails `--error-rate` of its calls after `--latency-ms` — and drives
//! `--messages` messages over `--conversations` API conversations (each conversation
//! sends in order, sometimes in bursts, through either ingress, retrying a 503 with the
//! same Idempotency-Key as a real client would). Meanwhile it SIGKILLs a random worker
//! every `--kill-every-s` seconds (and starts a new one; every third kill takes an
//! ingress instead, restarted on its address), and, unless `--short`, restarts
//! RabbitMQ once, restarts Redis once and makes the database unreachable for
//! `--db-outage-s` seconds (through a TCP proxy in front of it). With `--cluster` the
//! fleet runs on a three-node RabbitMQ cluster of its own (`amqp.urls`), and the broker
//! fault stops the node leading the work queues for ten seconds instead.
//!
//! The conversations belong to two tenants, alternately, and each worker holds few
//! deliveries of one tenant while the other uses it (`worker.tenant_max_held` 4):
//! the fairness path — deliveries parked on the retry ladder and answered by their
//! conversation's next turn — runs all along, under the same faults.
//!
//! When every accepted message is answered or dead-lettered it checks, from the database,
//! the dead-letter queue and the LLM double's log:
//! - accepted = answered + dead-lettered (with a reason);
//! - no duplicate replies (every stored reply answers something, and reached the channel
//!   once);
//! - no reply out of order within its conversation;
//! - every LLM prompt held all earlier messages of its conversation, and presented its
//!   tenant's key (the neighbour brings its own; the other tenant uses the platform's);
//! - every webhook event reached its tenant's receiver (which fails a fifth of the
//!   requests), signed with that tenant's secret, in order per conversation.
//!
//! It prints the figures and exits non-zero on any violation.

mod checks;
mod cluster;
pub(crate) mod proxy;
mod side_effects;
mod streams;
mod webhooks;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use shared::settings::Settings;
use tokio_util::sync::CancellationToken;
use worker::llm::sim::SimOptions;

use proxy::DbProxy;

use crate::db_servers;
use crate::fleet::{self, Fleet};

#[derive(Debug, Clone, Args)]
pub(crate) struct ChaosArgs {
    /// Messages to send in all.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Conversations they are spread over.
    #[arg(long, default_value_t = 400)]
    conversations: usize,
    #[arg(long, default_value_t = 3)]
    workers: usize,
    #[arg(long, default_value_t = 2)]
    ingress: usize,
    /// Fraction of LLM calls that fail (503).
    #[arg(long, default_value_t = 0.1)]
    error_rate: f64,
    /// LLM latency, in milliseconds.
    #[arg(long, default_value_t = 150)]
    latency_ms: u64,
    /// Seconds between worker kills (SIGKILL, then a new worker).
    #[arg(long, default_value_t = 4)]
    kill_every_s: u64,
    /// How long the database is unreachable.
    #[arg(long, default_value_t = 5)]
    db_outage_s: u64,
    /// About two minutes: fewer messages, worker kills and redelivery only (no broker,
    /// Redis or database faults).
    #[arg(long)]
    short: bool,
    /// Keep the run's database, queues and keys (and `--cluster`'s nodes) for inspection.
    #[arg(long)]
    keep: bool,
    /// Write each fleet process's log (at warn level) to a file in this directory.
    #[arg(long)]
    log_dir: Option<std::path::PathBuf>,
    /// Run the fleet on a three-node RabbitMQ cluster of its own (scripts/rabbitmq-cluster;
    /// needs the checkout and root or the rabbitmq user); the broker fault then stops the
    /// node leading the work queues for ten seconds.
    #[arg(long)]
    cluster: bool,
    /// Spread the tenants over this many database shards: the configured MariaDB and
    /// servers of the run's own (scripts/mariadb-shard; needs the checkout and root or
    /// the mysql user). The database fault cuts the home shard's.
    #[arg(long, default_value_t = 1)]
    db_shards: usize,
    /// Which infrastructure faults to inject besides worker kills (broker, redis, db).
    #[arg(long, value_delimiter = ',', default_value = "broker,redis,db")]
    faults: Vec<String>,
}

/// What the driver got accepted, per conversation in sending order.
type Accepted = HashMap<usize, Vec<(usize, String)>>;

/// The neighbour's own key for the default provider, and a budget it never reaches;
/// returns the key each tenant's calls must present (the platform's, the neighbour's).
async fn own_key_and_budget(
    db: &shared::db::Db,
    settings: &Settings,
    neighbour: shared::ids::ClientId,
) -> anyhow::Result<[String; TENANTS]> {
    let provider = settings.llm.default_provider.clone();
    let platform = settings
        .llm
        .providers
        .get(&provider)
        .map(|p| p.api_key.expose().clone())
        .unwrap_or_default();
    let own = "sk-chaos-neighbour-own-key".to_owned();
    let secrets = shared::secrets::SecretBox::new(&settings.security.encryption_ring());
    db.tenant(neighbour)
        .llm_credentials()
        .put(&shared::db::LlmCredential {
            key_sealed: secrets.seal_llm_key(neighbour, &provider, &own)?,
            provider,
            key_last4: own[own.len() - 4..].to_owned(),
            base_url: None,
            organization: None,
        })
        .await?;
    let configs = db.tenant(neighbour).configs();
    let mut config: shared::db::ConfigUpdate = configs
        .get()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no configuration"))?
        .into();
    config.budget.monthly = Some(1_000_000.0);
    configs.update(&config).await?;
    Ok([platform, own])
}

/// Conversation `c<N>` belongs to tenant `N % TENANTS`.
const TENANTS: usize = 2;

/// Few held deliveries per tenant, so that parking happens often.
const TENANT_MAX_HELD: &str = "4";

pub(crate) async fn run(settings: Settings, args: ChaosArgs) -> anyhow::Result<()> {
    let args = if args.short {
        ChaosArgs {
            messages: args.messages.min(1_500),
            conversations: args.conversations.min(100),
            ..args
        }
    } else {
        args
    };
    anyhow::ensure!(
        (0.0..1.0).contains(&args.error_rate),
        "--error-rate must be in 0.0..1.0"
    );
    anyhow::ensure!(
        args.workers > 0 && args.ingress > 0,
        "need workers and ingress"
    );
    let started = Instant::now();
    let cluster = if args.cluster {
        let cluster =
            cluster::Cluster::start(&uuid::Uuid::new_v4().simple().to_string()[..8], args.keep)
                .await?;
        eprintln!("a RabbitMQ cluster of three nodes is up: {}", cluster.urls);
        Some(cluster)
    } else {
        None
    };
    anyhow::ensure!((1..=8).contains(&args.db_shards), "--db-shards must be 1-8");
    let db_servers = db_servers::DbServers::start(
        &uuid::Uuid::new_v4().simple().to_string()[..8],
        args.db_shards - 1,
        args.keep,
    )
    .await?;
    let harness = fleet::start(
        &settings,
        fleet::Options {
            name: "chaos",
            workers: args.workers,
            ingress: args.ingress,
            sim: SimOptions {
                latency: Duration::from_millis(args.latency_ms),
                error_rate: args.error_rate,
                word_delay: Duration::ZERO,
            },
            log_dir: args.log_dir.clone(),
            env: [("CHATFLEET__WORKER__TENANT_MAX_HELD", TENANT_MAX_HELD)]
                .into_iter()
                .chain(side_effects::SETTINGS)
                .chain(webhooks::SETTINGS)
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .chain(
                    cluster
                        .as_ref()
                        .map(|c| ("CHATFLEET__AMQP__URLS".to_owned(), c.urls.clone())),
                )
                .collect(),
            db_proxy: true,
            db_servers: db_servers.urls.clone(),
            // The checks find every earlier exchange of a conversation in each prompt.
            history_turns: 100,
        },
    )
    .await?;
    let fleet::Harness {
        id,
        db,
        broker,
        settings: run_settings,
        client_id,
        api_key,
        sim,
        proxy,
        fleet,
        http,
        stop,
    } = harness;
    let proxy = proxy.ok_or_else(|| anyhow::anyhow!("the chaos fleet runs behind a proxy"))?;
    let (neighbour, neighbour_key) = fleet::add_tenant(&db, "chaos-neighbour", 100).await?;
    // The neighbour brings its own LLM key and has a budget: its every turn takes the
    // tenant-key and spending paths (Redis counters) under the same faults.
    let llm_keys = own_key_and_budget(&db, &run_settings, neighbour).await?;
    // Before any message: no process has the tenant's configuration cached yet.
    let endpoint = worker::tool_sim::ToolSim::start("127.0.0.2:0".parse()?, stop.clone()).await?;
    side_effects::add_tool(&db, client_id, &endpoint).await?;
    let tenants = [client_id, neighbour];
    let receiver = webhooks::Receiver::start(stop.clone()).await?;
    let hooks = webhooks::add_endpoints(
        &db,
        &shared::secrets::SecretBox::new(&run_settings.security.encryption_ring()),
        &tenants,
        &receiver,
    )
    .await?;
    eprintln!(
        "chaos {id}: {} ingress, {} workers, LLM double {} ms / {:.0}% errors; sending {} messages over {} conversations{}",
        args.ingress,
        args.workers,
        args.latency_ms,
        args.error_rate * 100.0,
        args.messages,
        args.conversations,
        if args.short {
            " (short: worker kills only)"
        } else {
            ""
        }
    );

    // Drive, and break things meanwhile; some conversations are read over SSE throughout.
    let reading = CancellationToken::new();
    let readers = streams::start(
        http.clone(),
        fleet.ingress_urls.clone(),
        [api_key.clone(), neighbour_key.clone()],
        args.conversations,
        reading.clone(),
    );
    let sent = Arc::new(AtomicU64::new(0));
    let driver = tokio::spawn(drive(
        http.clone(),
        fleet.ingress_urls.clone(),
        [api_key.clone(), neighbour_key],
        args.messages,
        args.conversations,
        sent.clone(),
    ));
    let fleet = Arc::new(tokio::sync::Mutex::new(fleet));
    // Faults stop with the sending; the proxy and the LLM double serve to the end.
    let sending = CancellationToken::new();
    let cluster = cluster.map(Arc::new);
    let faults = tokio::spawn(break_things(
        fleet.clone(),
        proxy.clone(),
        cluster.clone(),
        broker.topology().work_shard(0),
        args.clone(),
        sent.clone(),
        sending.clone(),
    ));
    let accepted = driver.await??;
    sending.cancel();
    let faults = faults.await??;
    let accepted_total: usize = accepted.values().map(Vec::len).sum();
    eprintln!(
        "all {accepted_total} messages accepted after {:.0?}; waiting for every turn to settle",
        started.elapsed()
    );

    let still_open = checks::wait_settled(&db, &tenants, &accepted, Duration::from_secs(90)).await;
    // Settled: give the streams a moment to carry the last replies, then stop reading.
    let streamed = settle_streams(&db, &tenants, readers, reading).await?;
    webhooks::wait_delivered(&db, &hooks, Duration::from_secs(60)).await;
    let mut fleet = Arc::try_unwrap(fleet)
        .map_err(|_| anyhow::anyhow!("the fault task still holds the fleet"))?
        .into_inner();
    // Counted by the workers alive at the end (a killed worker's count is gone).
    let parked = crate::bench::scrape::deliveries_parked(&http, &fleet.worker_metrics()).await;
    tokio::task::spawn_blocking(move || fleet.stop()).await?;
    stop.cancel();
    let report = checks::run(
        &db,
        &broker,
        &tenants,
        &accepted,
        &sim.requests(),
        &llm_keys,
    )
    .await?;
    let effects = side_effects::check(&endpoint);
    let hooked = webhooks::check(&db, &tenants, &accepted, &hooks, &receiver).await?;
    println!("chaos run {id} ({:.0?}):", started.elapsed());
    println!("  faults:               {faults}");
    println!(
        "  tenants:              {TENANTS} (worker.tenant_max_held {TENANT_MAX_HELD}; {parked} deliveries parked by the workers alive at the end)"
    );
    println!(
        "  LLM calls:            {} ({} refused by the double)",
        sim.requests().len(),
        sim.requests().len() as u64 - sim.served()
    );
    print!("{report}");
    print!("{effects}");
    print!("{hooked}");
    println!(
        "  SSE readers:          {} conversations, {} messages received ({} user messages again after a withdrawal); {} replies duplicated, {} missing, {} out of order",
        streamed.conversations,
        streamed.messages,
        streamed.resent,
        streamed.duplicates,
        streamed.missing,
        streamed.out_of_order
    );
    if still_open > 0 {
        println!("  still open:           {still_open} (nothing moved for 90 s)");
    }
    if !args.keep {
        fleet::clean_up(&run_settings, &broker, &db).await?;
    }
    // The cluster (if any) stops as the last of it is dropped, after the clean-up, and
    // so do the extra database servers.
    drop(cluster);
    drop(db_servers);
    if report.violations() + streamed.violations() + effects.violations.len() + hooked.violations()
        > 0
    {
        anyhow::bail!("chaos run {id}: guarantees violated");
    }
    println!("  verdict:              all guarantees held");
    Ok(())
}

/// Lets the SSE readers catch up with the settled mailboxes (until each received its
/// mailbox whole, or 10 s), then stops them and checks what they got.
async fn settle_streams(
    db: &shared::db::Db,
    tenants: &[shared::ids::ClientId],
    readers: streams::Received,
    reading: CancellationToken,
) -> anyhow::Result<streams::StreamCheck> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let check = streams::check(db, tenants, &readers).await?;
        if check.violations() == 0 || Instant::now() >= deadline {
            reading.cancel();
            return Ok(check);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends every conversation's messages in order (bursts of up to five back to back,
/// else a short pause), each through either ingress with its tenant's key; a 503 or a
/// dropped connection is retried with the same Idempotency-Key, as a client would.
async fn drive(
    http: reqwest::Client,
    ingress: Vec<String>,
    keys: [String; TENANTS],
    messages: usize,
    conversations: usize,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<Accepted> {
    let per = messages.div_ceil(conversations);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..conversations {
        let count = per.min(messages.saturating_sub(c * per));
        if count == 0 {
            break;
        }
        let key = keys[c % TENANTS].clone();
        let (http, ingress, sent) = (http.clone(), ingress.clone(), sent.clone());
        tasks.spawn(async move {
            // Spread the starts so the load ramps up.
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..2_000))).await;
            let mut accepted = Vec::with_capacity(count);
            let mut burst = 0;
            for m in 0..count {
                let text = side_effects::message_text(c, m, c % TENANTS == 0);
                let idempotency = format!("chaos-c{c}-m{m}");
                let mut tries = 0u32;
                let message_id = loop {
                    let base = &ingress[(c + m + tries as usize) % ingress.len()];
                    let response = http
                        .post(format!("{base}/api/v1/messages"))
                        .bearer_auth(&key)
                        .header("idempotency-key", &idempotency)
                        .json(&serde_json::json!({ "conversation_id": format!("c{c}"), "text": text }))
                        .send()
                        .await;
                    if let Ok(r) = response
                        && r.status() == reqwest::StatusCode::ACCEPTED
                        && let Ok(body) = r.json::<serde_json::Value>().await
                    {
                        break body["message_id"].as_str().unwrap_or_default().to_owned();
                    }
                    tries += 1;
                    anyhow::ensure!(tries < 300, "c{c} m{m} was never accepted");
                    tokio::time::sleep(Duration::from_millis(200 + 100 * u64::from(tries.min(10)))).await;
                };
                accepted.push((m, message_id));
                sent.fetch_add(1, Ordering::Relaxed);
                if burst > 0 {
                    burst -= 1;
                } else if rand::random_bool(0.1) {
                    burst = rand::random_range(2..5);
                } else {
                    tokio::time::sleep(Duration::from_millis(rand::random_range(100..1_500))).await;
                }
            }
            anyhow::Ok((c, accepted))
        });
    }
    let mut all = Accepted::new();
    while let Some(done) = tasks.join_next().await {
        let (c, accepted) = done??;
        all.insert(c, accepted);
    }
    Ok(all)
}

/// Kills a worker (every third time an ingress) every few seconds; unless short, restarts RabbitMQ at a fifth of the
/// messages, Redis at two fifths and cuts the database at three fifths. Returns a summary.
async fn break_things(
    fleet: Arc<tokio::sync::Mutex<Fleet>>,
    proxy: DbProxy,
    cluster: Option<Arc<cluster::Cluster>>,
    work_queue: String,
    args: ChaosArgs,
    sent: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<String> {
    let total = args.messages as u64;
    let (mut kills, mut ingress_kills) = (0, 0);
    let mut done = Vec::new();
    let wanted = |fault: &str| !args.short && args.faults.iter().any(|f| f == fault);
    let mut broker_at = wanted("broker").then_some(total / 5);
    let mut redis_at = wanted("redis").then_some(total * 2 / 5);
    let mut db_at = wanted("db").then_some(total * 3 / 5);
    let mut bouncing = None;
    let mut next_kill = Instant::now() + Duration::from_secs(args.kill_every_s);
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let progress = sent.load(Ordering::Relaxed);
        if Instant::now() >= next_kill {
            // Every third kill takes an ingress (the webhook and channel deliverers).
            if kills % 3 == 2 {
                fleet.lock().await.kill_random_ingress()?;
                ingress_kills += 1;
            } else {
                fleet.lock().await.kill_random_worker()?;
            }
            kills += 1;
            next_kill = Instant::now() + Duration::from_secs(args.kill_every_s);
        }
        if broker_at.is_some_and(|at| progress >= at) {
            broker_at = None;
            if let Some(cluster) = &cluster {
                eprintln!("stopping the RabbitMQ node leading {work_queue} for 10 s");
                // In the background: the node takes a while to stop, rejoin and catch
                // up, and the kills and the other faults go on meanwhile.
                let (cluster, queue) = (cluster.clone(), work_queue.clone());
                bouncing = Some(tokio::spawn(async move {
                    cluster
                        .bounce_leader_of(&queue, Duration::from_secs(10))
                        .await
                }));
            } else {
                eprintln!("restarting RabbitMQ");
                shell("rabbitmqctl -q stop_app && rabbitmqctl -q start_app")?;
                done.push("RabbitMQ restarted".to_owned());
            }
        }
        if redis_at.is_some_and(|at| progress >= at) {
            redis_at = None;
            eprintln!("restarting Redis");
            shell(
                "redis-cli -h 127.0.0.1 shutdown nosave; sleep 1; mkdir -p /var/lib/redis /var/log/redis; \
                 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no \
                 --dir /var/lib/redis --logfile /var/log/redis/ci.log",
            )?;
            done.push("Redis restarted".to_owned());
        }
        if db_at.is_some_and(|at| progress >= at) {
            db_at = None;
            eprintln!("database unreachable for {} s", args.db_outage_s);
            proxy.cut().await;
            tokio::time::sleep(Duration::from_secs(args.db_outage_s)).await;
            proxy.restore();
            done.push("database cut off".to_owned());
        }
    }
    if let Some(bouncing) = bouncing {
        let node = bouncing.await??;
        done.push(format!(
            "RabbitMQ node {node} (leading the work queue) stopped and started"
        ));
    }
    Ok(format!(
        "{kills} kills ({ingress_kills} of an ingress){}{}",
        if done.is_empty() { "" } else { ", " },
        done.join(", ")
    ))
}

fn shell(script: &str) -> anyhow::Result<()> {
    let status = Command::new("sh").args(["-c", script]).status()?;
    anyhow::ensure!(status.success(), "`{script}` failed: {status}");
    Ok(())
}
