//! A fleet of chatfleet processes of its own, for `chatfleet chaos` and `chatfleet bench`:
//! a fresh database (reached through a TCP proxy the run can cut), its own queue and
//! Redis prefix, an enterprise tenant with an API key, an in-process LLM double, and
//! `ingress` / `worker` processes of this very binary.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shared::cache::Cache;
use shared::db::{ConfigUpdate, Db, NewClient};
use shared::ids::ClientId;
use shared::mq::Broker;
use shared::pii::Secret;
use shared::settings::{Settings, Sources};
use shared::tenant::Plan;
use tokio_util::sync::CancellationToken;
use worker::llm::sim::{LlmSim, SimOptions};

use crate::chaos::proxy::DbProxy;

/// The fleet's retry ladder, in seconds: short, so runs settle in minutes.
pub(crate) const LADDER: [u64; 5] = [1, 2, 4, 8, 15];

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Names the run's database (`chatfleet_<name>_<id>`) and prefix (`<name><id>`).
    pub name: &'static str,
    pub workers: usize,
    pub ingress: usize,
    pub sim: SimOptions,
    pub log_dir: Option<std::path::PathBuf>,
    /// More `CHATFLEET__…` settings for every process.
    pub env: Vec<(String, String)>,
    /// Reach the database through a proxy the run can cut (chaos); otherwise directly.
    pub db_proxy: bool,
    /// The tenant's `max_context_turns`: how many earlier turns each prompt carries.
    pub history_turns: u32,
    /// Root URLs of more MariaDB servers: the run's database is sharded over the
    /// configured one (`home`, the first tenant's) and these (`s2`, `s3`, …; tenants
    /// created later go to the least loaded).
    pub db_servers: Vec<String>,
}

/// A running fleet and everything it runs on.
pub(crate) struct Harness {
    pub id: String,
    pub db: Db,
    pub broker: Broker,
    pub settings: Settings,
    pub client_id: ClientId,
    pub api_key: String,
    pub sim: LlmSim,
    /// With [`Options::db_proxy`].
    pub proxy: Option<DbProxy>,
    pub fleet: Fleet,
    pub http: reqwest::Client,
    /// Stops the proxy and the LLM double (after the fleet).
    pub stop: CancellationToken,
}

/// Starts a fleet. `settings` (the command's own) names the database server the run's
/// database is made on; everything else the fleet's processes and the harness run with
/// comes from the sources a fleet process reads — the command's configuration and
/// environment, then the run's names and [`Options::env`] — so the topology the harness
/// declares (and deletes afterwards) is the one the processes use. The harness alone
/// reaches the database directly, not through the proxy the run may cut.
pub(crate) async fn start(settings: &Settings, options: Options) -> anyhow::Result<Harness> {
    let name = options.name;
    let stop = CancellationToken::new();
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let prefix = format!("{name}{id}");

    // A fresh database (behind a proxy the run can cut), its own queues and keys.
    let db_url = reqwest::Url::parse(settings.database.url.expose())?;
    let upstream = format!(
        "{}:{}",
        db_url.host_str().unwrap_or("127.0.0.1"),
        db_url.port().unwrap_or(3306)
    );
    let mut direct = db_url.clone();
    direct.set_path(&format!("/chatfleet_{name}_{id}"));
    let extra_shards: Vec<String> = options
        .db_servers
        .iter()
        .enumerate()
        .map(|(i, server)| format!("s{}={server}/chatfleet_{name}_{id}", i + 2))
        .collect();
    let shards_via = |home: &reqwest::Url| {
        std::iter::once(format!("home={home}"))
            .chain(extra_shards.iter().cloned())
            .collect::<Vec<_>>()
    };
    let (proxy, process_url) = if options.db_proxy {
        let proxy = DbProxy::start(upstream, stop.clone()).await?;
        let mut proxied = direct.clone();
        proxied.set_host(Some("127.0.0.1"))?;
        let _ = proxied.set_port(Some(proxy.addr.port()));
        (Some(proxy), proxied)
    } else {
        (None, direct.clone())
    };
    let sim = LlmSim::start("127.0.0.1:0".parse()?, options.sim.clone(), stop.clone()).await?;

    let env: Vec<(String, String)> = [
        ("CHATFLEET__DATABASE__URL", process_url.to_string()),
        ("CHATFLEET__DATABASE__MAX_CONNECTIONS", "16".into()),
        ("CHATFLEET__AMQP__PREFIX", prefix.clone()),
        (
            "CHATFLEET__AMQP__RETRY_DELAYS_S",
            LADDER.map(|d| d.to_string()).join(","),
        ),
        ("CHATFLEET__REDIS__PREFIX", prefix.clone()),
        (
            "CHATFLEET__LLM__PROVIDERS__OLLAMA__BASE_URL",
            sim.base_url(),
        ),
        // The double answers any number at once, like a hosted API.
        (
            "CHATFLEET__LLM__PROVIDERS__OLLAMA__MAX_CONCURRENCY",
            "256".into(),
        ),
        ("CHATFLEET__WORKER__LOCK_TTL_S", "5".into()),
        ("CHATFLEET__WORKER__DRAIN_TIMEOUT_S", "10".into()),
        ("CHATFLEET__TELEMETRY__FILTER", "warn".into()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .chain(options.env.iter().cloned())
    .chain((!extra_shards.is_empty()).then(|| {
        (
            "CHATFLEET__DATABASE__SHARDS".to_owned(),
            shards_via(&process_url).join(","),
        )
    }))
    .collect();

    let mut sources = Sources::from_process();
    sources.vars.extend(
        env.iter()
            .filter(|(k, _)| k.starts_with("CHATFLEET__"))
            .cloned(),
    );
    let mut run_settings = Settings::load_from(sources)?;
    run_settings.database.url = Secret::new(direct.to_string());
    if !extra_shards.is_empty() {
        run_settings.database.shards = shards_via(&direct).into_iter().map(Secret::new).collect();
    }
    let db = Db::migrate(&run_settings.database).await?;
    let broker = Broker::connect(&run_settings.amqp, "chatfleet-fleet").await?;
    broker.declare_topology().await?;
    let (client_id, api_key) = add_tenant(&db, name, options.history_turns).await?;

    let mut fleet = Fleet {
        exe: std::env::current_exe()?,
        log_dir: options.log_dir.clone(),
        spawned: 0,
        env,
        workers: Vec::new(),
        ingress: Vec::new(),
        ingress_urls: Vec::new(),
    };
    for _ in 0..options.ingress {
        let port = free_port()?;
        let child = fleet.spawn(
            "ingress",
            &[("CHATFLEET__HTTP__BIND".into(), format!("127.0.0.1:{port}"))],
        )?;
        fleet.ingress.push(child);
        fleet.ingress_urls.push(format!("http://127.0.0.1:{port}"));
    }
    for _ in 0..options.workers {
        fleet.spawn_worker()?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    wait_ready(&http, &fleet.ingress_urls).await?;
    Ok(Harness {
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
    })
}

/// Creates an enterprise tenant `slug` whose prompts carry `history_turns` earlier
/// turns and no knowledge; its id and an API key.
pub(crate) async fn add_tenant(
    db: &Db,
    slug: &str,
    history_turns: u32,
) -> anyhow::Result<(ClientId, String)> {
    let client_id = db
        .clients()
        .create(&NewClient::new(slug, "Fleet Test", Plan::Enterprise)?)
        .await?;
    let mut config: ConfigUpdate = db
        .tenant(client_id)
        .configs()
        .get()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no configuration"))?
        .into();
    config.max_context_turns = history_turns;
    config.rag_top_k = 0;
    db.tenant(client_id).configs().update(&config).await?;
    let api_key = db
        .tenant(client_id)
        .api_keys()
        .create(slug)
        .await?
        .key
        .expose()
        .clone();
    Ok((client_id, api_key))
}

impl Harness {
    /// Stops the fleet (each process drains), then the proxy and the LLM double, and
    /// removes the run's database, queues and keys.
    pub(crate) async fn shut_down(self) -> anyhow::Result<()> {
        let Self {
            db,
            broker,
            settings,
            mut fleet,
            stop,
            ..
        } = self;
        tokio::task::spawn_blocking(move || fleet.stop()).await?;
        stop.cancel();
        clean_up(&settings, &broker, &db).await
    }
}

/// A port nothing listens on right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Removes a run's database, queues and keys.
pub(crate) async fn clean_up(settings: &Settings, broker: &Broker, db: &Db) -> anyhow::Result<()> {
    let cache = Cache::connect(&settings.redis).await?;
    let _ = cache.delete_prefixed().await;
    let _ = broker.delete_topology().await;
    broker.close().await;
    db.close().await;
    let _ = Db::drop_database(&settings.database).await;
    Ok(())
}

async fn wait_ready(http: &reqwest::Client, urls: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for url in urls {
        loop {
            let ready = http
                .get(format!("{url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{url} never became ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// One fleet process and how to start it again.
pub(crate) struct Fleet {
    pub exe: std::path::PathBuf,
    log_dir: Option<std::path::PathBuf>,
    spawned: usize,
    env: Vec<(String, String)>,
    pub workers: Vec<Worker>,
    ingress: Vec<Child>,
    pub ingress_urls: Vec<String>,
}

/// A worker process and the address of its `/metrics`.
pub(crate) struct Worker {
    pub child: Child,
    pub metrics: String,
}

impl Fleet {
    fn spawn(&self, role: &str, extra: &[(String, String)]) -> anyhow::Result<Child> {
        let mut command = Command::new(&self.exe);
        let (out, err) = match &self.log_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let file = std::fs::File::create(dir.join(format!("{role}-{}.log", self.spawned)))?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        command
            .arg(role)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in self.env.iter().chain(extra) {
            command.env(k, v);
        }
        Ok(command.spawn()?)
    }

    pub(crate) fn spawn_worker(&mut self) -> anyhow::Result<()> {
        self.spawned += 1;
        let port = free_port()?;
        let child = self.spawn(
            "worker",
            &[(
                "CHATFLEET__WORKER__METRICS_BIND".into(),
                format!("127.0.0.1:{port}"),
            )],
        )?;
        self.workers.push(Worker {
            child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
        });
        Ok(())
    }

    /// SIGKILLs an ingress process and starts another on its address (clients and
    /// readers of the old one reconnect to the same URL).
    pub(crate) fn kill_random_ingress(&mut self) -> anyhow::Result<()> {
        if self.ingress.is_empty() {
            return Ok(());
        }
        let i = rand::random_range(0..self.ingress.len());
        let victim = &mut self.ingress[i];
        let killed = victim.kill();
        let reaped = victim.wait();
        killed?;
        reaped?;
        let bind = self.ingress_urls[i]
            .trim_start_matches("http://")
            .to_owned();
        self.spawned += 1;
        self.ingress[i] = self.spawn("ingress", &[("CHATFLEET__HTTP__BIND".into(), bind)])?;
        Ok(())
    }

    pub(crate) fn kill_random_worker(&mut self) -> anyhow::Result<()> {
        if self.workers.is_empty() {
            return Ok(());
        }
        let i = rand::random_range(0..self.workers.len());
        let mut victim = self.workers.swap_remove(i).child;
        let killed = victim.kill();
        let reaped = victim.wait();
        killed?;
        reaped?;
        self.spawn_worker()
    }

    /// Each worker's `/metrics` URL.
    pub(crate) fn worker_metrics(&self) -> Vec<String> {
        self.workers.iter().map(|w| w.metrics.clone()).collect()
    }

    /// The ingress processes' ids.
    pub(crate) fn ingress_pids(&self) -> Vec<u32> {
        self.ingress.iter().map(Child::id).collect()
    }

    /// SIGTERM to everything, then waits (each drains).
    pub(crate) fn stop(&mut self) {
        let workers = self.workers.iter_mut().map(|w| &mut w.child);
        let children: Vec<&mut Child> = workers.chain(self.ingress.iter_mut()).collect();
        for child in &children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in children {
            let _ = child.wait();
        }
    }
}
