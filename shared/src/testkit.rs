//! The test kit (feature `testkit`, tests only): every test gets its own database, queue
//! prefix and Redis key prefix on the real local services, and removes them afterwards.
//! A service that is not running fails the test with the command that starts it.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::db::{Db, NewClient};
use crate::ids::ClientId;
use crate::mq::Broker;
use crate::settings::{Settings, Sources};
use crate::tenant::Plan;

const MYSQL_HINT: &str =
    "start MariaDB with: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd";
const RABBIT_HINT: &str = "start RabbitMQ with: rabbitmq-server -detached";
const REDIS_HINT: &str = "start Redis with: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";

/// One test's isolated slice of the local services.
#[derive(Debug)]
pub struct TestEnv {
    pub settings: Settings,
    /// The `CHATFLEET__…` variables behind `settings`, to start processes with.
    pub vars: HashMap<String, String>,
    pub db: Db,
    pub broker: Broker,
    pub cache: Cache,
    pub id: String,
    /// Set by [`TestEnv::teardown`]; otherwise dropping the environment (a test that
    /// failed half-way) removes what it made.
    torn_down: bool,
}

/// A tenant made for a test, with an API key.
#[derive(Debug, Clone)]
pub struct TestTenant {
    pub id: ClientId,
    pub slug: String,
    pub api_key: String,
}

/// The setting that gives a test two database shards: `home` on the machine's MariaDB,
/// `second` on the one `scripts/test` starts (`CHATFLEET_TEST_MYSQL_SHARD`), or on the
/// server named after an `@` (`test:2@mysql://root@127.0.0.1:23307`).
pub const TWO_SHARDS: (&str, &str) = ("CHATFLEET__DATABASE__SHARDS", "test:2");

impl TestEnv {
    /// Fresh database `cf_t_<id>` (migrated), queue prefix `t<id>` (topology declared) and
    /// Redis prefix `t<id>`. `extra` adds `CHATFLEET__…` overrides.
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let base = std::env::var("CHATFLEET_TEST_MYSQL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
        let mut vars: HashMap<String, String> = HashMap::from([
            (
                "CHATFLEET__DATABASE__URL".into(),
                format!("{base}/cf_t_{id}"),
            ),
            ("CHATFLEET__DATABASE__MAX_CONNECTIONS".into(), "8".into()),
            ("CHATFLEET__AMQP__PREFIX".into(), format!("t{id}")),
            ("CHATFLEET__AMQP__PREFETCH".into(), "32".into()),
            // Few work shards: every test declares its own, and the broker here has 1,024
            // file handles for all of them.
            ("CHATFLEET__AMQP__WORK_SHARDS".into(), "2".into()),
            ("CHATFLEET__WORKER__TENANT_MAX_HELD".into(), "16".into()),
            // As many LLM calls at once as the window holds: tests that want a
            // saturated provider set fewer.
            (
                "CHATFLEET__LLM__PROVIDERS__OLLAMA__MAX_CONCURRENCY".into(),
                "64".into(),
            ),
            ("CHATFLEET__AMQP__RETRY_DELAYS_S".into(), "1,2".into()),
            ("CHATFLEET__REDIS__PREFIX".into(), format!("t{id}")),
            ("CHATFLEET__REDIS__POOL_SIZE".into(), "8".into()),
            ("CHATFLEET__HTTP__BIND".into(), "127.0.0.1:0".into()),
            ("CHATFLEET__WORKER__DRAIN_TIMEOUT_S".into(), "5".into()),
            (
                "CHATFLEET__WORKER__METRICS_BIND".into(),
                "127.0.0.1:0".into(),
            ),
            ("CHATFLEET__VECTOR__PREFIX".into(), format!("t{id}")),
            // Tests never reach Meta: a closed local port unless a test brings a double.
            (
                "CHATFLEET__WHATSAPP__GRAPH_BASE_URL".into(),
                "http://127.0.0.1:9".into(),
            ),
        ]);
        // Secrets of this test alone: env "test" refuses the development defaults.
        let key = || {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
        };
        vars.extend([
            (
                "CHATFLEET__ADMIN__TOKEN".into(),
                format!("test-admin-{}", uuid::Uuid::new_v4().simple()),
            ),
            ("CHATFLEET__SECURITY__ENCRYPTION_KEY".into(), key()),
            ("CHATFLEET__SECURITY__SESSION_KEYS".into(), key()),
        ]);
        if let Ok(url) = std::env::var("CHATFLEET_TEST_CHROMA_URL") {
            vars.insert("CHATFLEET__VECTOR__URL".into(), url);
        }
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        if let Some(wanted) = vars.get(TWO_SHARDS.0)
            && let Some(server) = wanted.strip_prefix(TWO_SHARDS.1)
        {
            let second = match server.strip_prefix('@') {
                Some(url) => url.to_owned(),
                None => std::env::var("CHATFLEET_TEST_MYSQL_SHARD").unwrap_or_else(|_| {
                    panic!("CHATFLEET_TEST_MYSQL_SHARD is not set: run the suite with scripts/test, which starts a second MariaDB (scripts/mariadb-shard)")
                }),
            };
            vars.insert(
                TWO_SHARDS.0.into(),
                format!("home={base}/cf_t_{id},second={second}/cf_t_{id}"),
            );
        }
        let settings = Settings::load_from(Sources {
            env: "test".into(),
            config_dir: PathBuf::from("/nonexistent"),
            vars: vars.clone(),
        })
        .expect("test settings are valid");
        let db = Db::migrate(&settings.database)
            .await
            .unwrap_or_else(|e| panic!("MariaDB at {base} is not usable ({e}); {MYSQL_HINT}"));
        let broker = Broker::connect(&settings.amqp, "chatfleet-test")
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ is not usable ({e}); {RABBIT_HINT}"));
        broker
            .declare_topology()
            .await
            .expect("declaring the test topology");
        let cache = Cache::connect(&settings.redis)
            .await
            .unwrap_or_else(|e| panic!("Redis is not usable ({e}); {REDIS_HINT}"));
        Self {
            settings,
            vars,
            db,
            broker,
            cache,
            id,
            torn_down: false,
        }
    }

    /// A command running `program` (a chatfleet binary) with exactly this environment's
    /// settings (no config directory) and logging off unless the caller sets `RUST_LOG`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut command = std::process::Command::new(program);
        command
            .env("CHATFLEET_CONFIG_DIR", "/nonexistent")
            .env("RUST_LOG", "off")
            .envs(&self.vars);
        command
    }

    /// A new active tenant with a fresh API key.
    pub async fn tenant(&self, slug: &str) -> TestTenant {
        let client = NewClient::new(slug, &format!("{slug} Shop"), Plan::Starter).expect("slug");
        let id = self
            .db
            .clients()
            .create(&client)
            .await
            .expect("create tenant");
        let key = self
            .db
            .tenant(id)
            .api_keys()
            .create("test")
            .await
            .expect("api key");
        TestTenant {
            id,
            slug: slug.to_owned(),
            api_key: key.key.expose().clone(),
        }
    }

    /// Removes this test's database, queues, exchanges and keys.
    pub async fn teardown(mut self) {
        let _ = self.broker.delete_topology().await;
        self.broker.close().await;
        let _ = self.cache.delete_prefixed().await;
        self.db.close().await;
        let _ = Db::drop_database(&self.settings.database).await;
        self.torn_down = true;
    }
}

/// A test that panicked before its teardown would leave its queues (21 of them) on the
/// broker, where hundreds stall RabbitMQ, and its database and keys behind: they are
/// removed here over fresh connections, on a thread of its own (a drop cannot await, and
/// the test's runtime is unwinding).
impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let settings = self.settings.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let removed = async {
                    if let Ok(broker) =
                        Broker::connect(&settings.amqp, "chatfleet-test-cleanup").await
                    {
                        let _ = broker.delete_topology().await;
                        broker.close().await;
                    }
                    if let Ok(cache) = Cache::connect(&settings.redis).await {
                        let _ = cache.delete_prefixed().await;
                    }
                    let _ = Db::drop_database(&settings.database).await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(30), removed).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// The ChromaDB of this test run; tests that need one fail without it.
pub fn require_chroma() -> String {
    std::env::var("CHATFLEET_TEST_CHROMA_URL").unwrap_or_else(|_| {
        panic!("CHATFLEET_TEST_CHROMA_URL is not set: run the suite with scripts/test, which installs and starts ChromaDB")
    })
}

/// Polls `probe` until it returns `Some`, or panics after `within` naming `what`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Routes tracing output through the test harness (shown only for failing tests).
/// `RUST_LOG` selects what is logged; the default is warnings and errors.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
