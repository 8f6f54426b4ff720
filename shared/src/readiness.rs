//! The readiness check every process serves on `/readyz`: its database, Redis and broker
//! answer (each ping bounded by two seconds).

use std::time::Duration;

use serde_json::{Value, json};

use crate::cache::Cache;
use crate::db::Db;
use crate::mq::Broker;

/// Whether the process is ready, and a `{ database, redis, broker }` body saying which
/// dependency is `ok` or `unavailable`.
pub async fn check(db: &Db, cache: &Cache, broker: &Broker) -> (bool, Value) {
    let limit = Duration::from_secs(2);
    let database = matches!(tokio::time::timeout(limit, db.ping()).await, Ok(Ok(())));
    let redis = matches!(tokio::time::timeout(limit, cache.ping()).await, Ok(Ok(())));
    let broker = broker.is_connected();
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        database && redis && broker,
        json!({ "database": word(database), "redis": word(redis), "broker": word(broker) }),
    )
}
