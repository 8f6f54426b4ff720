//! The message path's own connection pool: connections handed back without a round trip.
//!
//! sqlx's pool pings every connection on its way back (in a task of its own), so each
//! statement cost two round trips to the server, and the connection stayed out of the
//! pool until the ping came back. Under load those pings were half of everything MariaDB
//! was asked to do (`Com_admin_commands` = `Com_stmt_execute`). The ping is there for a
//! statement whose future was dropped half-way, which can leave the connection mid-reply.
//! Here a [`Lease`] knows whether its statement finished ([`Lease::settle`]): a finished
//! one goes back as it is, an unfinished one is closed instead of being reused, and a
//! connection idle long enough for the server to have dropped it (a restart,
//! `wait_timeout`) is pinged before it is handed out again. So is every connection that
//! sat in the pool while another one was found broken: after a server restart the first
//! statement on a dead connection fails, and the pool's other connections, dead as well,
//! are found out by a ping instead of each failing a statement of its own.
//!
//! Only single statements (and procedure calls, whose transactions the server runs) go
//! through it; anything holding a transaction open across statements uses sqlx's pool.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection};

/// How long a connection may sit idle before it is pinged on its way out of the pool.
pub(super) const IDLE_BEFORE_PING: Duration = Duration::from_secs(5);
/// How long a statement waits for a free connection (or a new one) before it fails.
const WAIT: Duration = Duration::from_secs(10);

/// A pool of connections for single statements on the message path.
#[derive(Clone)]
pub(super) struct DirectPool {
    pool: managed::Pool<Manager>,
    broken_at: BrokenAt,
}

/// When a connection to the server was last found broken (not by a server's error
/// reply): shared by a shard's two pools, so that sqlx's checks its idle connections too.
#[derive(Debug, Clone, Default)]
pub(super) struct BrokenAt(Arc<Mutex<Option<Instant>>>);

impl BrokenAt {
    fn mark(&self) {
        *self.0.lock().expect("broken_at") = Some(Instant::now());
    }

    /// Whether a connection idle for `idle` sat in a pool while one was found broken.
    pub(super) fn spans(&self, idle: Duration) -> bool {
        self.0
            .lock()
            .expect("broken_at")
            .is_some_and(|broken| broken.elapsed() <= idle)
    }
}

impl std::fmt::Debug for DirectPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("DirectPool")
            .field("size", &status.size)
            .field("max_size", &status.max_size)
            .finish()
    }
}

impl DirectPool {
    pub(super) fn new(options: MySqlConnectOptions, max_size: u32, broken_at: BrokenAt) -> Self {
        let manager = Manager {
            options,
            broken_at: broken_at.clone(),
        };
        let pool = managed::Pool::builder(manager)
            .max_size(max_size as usize)
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .recycle_timeout(Some(WAIT))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("a runtime and timeouts are set");
        Self { pool, broken_at }
    }

    /// Runs one statement on a leased connection and settles the lease with its outcome.
    pub(super) async fn run<T>(
        &self,
        statement: impl AsyncFnOnce(&mut MySqlConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let mut lease = self.lease().await?;
        let outcome = statement(lease.conn()).await;
        lease.settle(outcome)
    }

    /// A connection for one statement; [`Lease::settle`] it with the statement's outcome.
    async fn lease(&self) -> Result<Lease, sqlx::Error> {
        let mut conn = self.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(e) => e,
            managed::PoolError::Timeout(_) => sqlx::Error::PoolTimedOut,
            managed::PoolError::Closed => sqlx::Error::PoolClosed,
            other => sqlx::Error::Protocol(format!("connection pool: {other}")),
        })?;
        conn.settled = false;
        Ok(Lease {
            conn,
            broken_at: self.broken_at.clone(),
        })
    }

    pub(super) fn close(&self) {
        self.pool.close();
    }
}

/// A pooled connection, and whether its last statement ran to the end.
pub(super) struct Pooled {
    raw: MySqlConnection,
    settled: bool,
}

/// A connection out of the pool for one statement.
struct Lease {
    conn: managed::Object<Manager>,
    broken_at: BrokenAt,
}

impl Lease {
    fn conn(&mut self) -> &mut MySqlConnection {
        &mut self.conn.raw
    }

    /// Records how the statement ended: a reply from the server (rows, or an error it
    /// sent) leaves the connection ready for the next statement; anything else (a broken
    /// socket, a protocol error) closes it when it goes back. A lease dropped unsettled
    /// (its statement's future was dropped half-way) is closed too. A broken one also
    /// makes the pool ping every connection that was idle meanwhile before reusing it.
    fn settle<T>(mut self, outcome: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.conn.settled = matches!(outcome, Ok(_) | Err(sqlx::Error::Database(_)));
        if outcome.is_err() && !self.conn.settled {
            self.broken_at.mark();
        }
        outcome
    }
}

pub(super) struct Manager {
    options: MySqlConnectOptions,
    broken_at: BrokenAt,
}

impl managed::Manager for Manager {
    type Type = Pooled;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<Pooled, sqlx::Error> {
        Ok(Pooled {
            raw: self.options.connect().await?,
            settled: true,
        })
    }

    async fn recycle(&self, conn: &mut Pooled, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        if !conn.settled {
            return Err(RecycleError::message(
                "its last statement did not finish; closed",
            ));
        }
        let idle = metrics.last_used();
        if idle >= IDLE_BEFORE_PING || self.broken_at.spans(idle) {
            conn.raw.ping().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    // One import: `tests/guard_scan.rs` refuses a file naming sqlx's query functions
    // (every statement here goes through the guard all the same).
    use sqlx::{Row, mysql::MySqlArguments, query::QueryScalar};

    use super::super::guard;
    use super::*;

    type Scalar = QueryScalar<'static, sqlx::MySql, i64, MySqlArguments>;

    fn pool(max_size: u32) -> DirectPool {
        let url = std::env::var("CHATFLEET_TEST_MYSQL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
        DirectPool::new(
            url.parse().expect("a MySQL URL"),
            max_size,
            BrokenAt::default(),
        )
    }

    fn connection_id() -> Scalar {
        guard::query_scalar("SELECT CAST(CONNECTION_ID() AS SIGNED)").expect("guarded")
    }

    async fn scalar(pool: &DirectPool, query: Scalar) -> Result<i64, sqlx::Error> {
        pool.run(async move |conn| query.fetch_one(conn).await)
            .await
    }

    /// The point of the pool: a connection goes back and out again without a ping.
    #[tokio::test]
    async fn statements_reuse_one_connection_without_pinging_it() {
        let pool = pool(1);
        let first = scalar(&pool, connection_id()).await.expect("id");
        for _ in 0..5 {
            let again = scalar(&pool, connection_id()).await.expect("id");
            assert_eq!(again, first, "the same connection, handed out again");
        }
        let status =
            guard::query("SHOW SESSION STATUS LIKE 'Com_admin_commands'").expect("guarded");
        let status = pool
            .run(async move |conn| status.fetch_one(conn).await)
            .await;
        let pings: String = status.expect("status").get(1);
        assert_eq!(pings, "0", "no ping on this connection");
    }

    /// An error the server sent leaves the connection as good as before.
    #[tokio::test]
    async fn a_statement_the_server_refused_keeps_its_connection() {
        let pool = pool(1);
        let first = scalar(&pool, connection_id()).await.expect("id");
        let refused = scalar(
            &pool,
            guard::query_scalar("SELECT no_such_column").expect("guarded"),
        )
        .await;
        assert!(
            matches!(refused, Err(sqlx::Error::Database(_))),
            "{refused:?}"
        );
        assert_eq!(scalar(&pool, connection_id()).await.expect("id"), first);
    }

    /// A statement whose future was dropped half-way (a client gone, a timeout) leaves
    /// its connection mid-reply: the next statement gets a fresh connection and its own
    /// answer, not the abandoned statement's.
    #[tokio::test]
    async fn a_connection_cut_off_mid_statement_is_not_reused() {
        let pool = pool(1);
        let first = scalar(&pool, connection_id()).await.expect("id");
        let slow = guard::query_scalar("SELECT CAST(SLEEP(1) + 41 AS SIGNED)").expect("guarded");
        let cut = tokio::time::timeout(Duration::from_millis(100), scalar(&pool, slow)).await;
        assert!(cut.is_err(), "the slow statement was cut off");
        let next = scalar(&pool, connection_id()).await.expect("id");
        assert_ne!(next, first, "a new connection");
        let seven = guard::query_scalar("SELECT CAST(7 AS SIGNED)").expect("guarded");
        assert_eq!(scalar(&pool, seven).await.expect("seven"), 7);
    }

    /// After a server restart every pooled connection is dead: the first statement on
    /// one fails, and the others are found out by a ping, not by failing statements.
    #[tokio::test]
    async fn one_broken_connection_gets_the_idle_ones_checked() {
        const CONNECTIONS: usize = 3;
        let other = pool(1);
        let pool = pool(CONNECTIONS as u32);
        // Three connections at once, so the pool holds three.
        let leases = futures::future::join_all((0..CONNECTIONS).map(|_| pool.lease())).await;
        let mut ids = Vec::new();
        for lease in leases {
            let mut lease = lease.expect("lease");
            let id = connection_id().fetch_one(lease.conn()).await;
            ids.push(lease.settle(id).expect("id"));
        }
        for id in &ids {
            let sql = format!("KILL {id}");
            let kill = guard::query(&sql).expect("guarded");
            other
                .run(async move |conn| kill.execute(conn).await)
                .await
                .expect("kill");
        }
        let mut failed = 0;
        for _ in 0..CONNECTIONS + 1 {
            if scalar(&pool, connection_id()).await.is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 1, "only the first statement met a dead connection");
    }
}
