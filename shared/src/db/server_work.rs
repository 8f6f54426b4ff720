//! What the database servers have done so far, summed over every shard: the counters
//! `chatfleet bench` reads before and after a run to say how many round trips,
//! statements, redo log writes and fsyncs one answered message cost. They are each
//! server's global counters, so they count whatever else ran on it meanwhile.

use sqlx::Row;

use super::Db;
use super::guard;
use crate::error::Result;

/// Server-wide counters, summed over the shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerWork {
    /// Statements clients sent (`Questions`): round trips, a procedure call counting one.
    pub round_trips: u64,
    /// Statements run (`Queries`), those inside procedures too.
    pub statements: u64,
    /// Writes to InnoDB's redo log (`Innodb_log_writes`): a commit, or a group of
    /// commits that waited together.
    pub log_writes: u64,
    /// InnoDB's fsyncs (`Innodb_data_fsyncs`), the redo log's and the data files'.
    pub fsyncs: u64,
}

impl ServerWork {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            round_trips: self.round_trips.saturating_sub(earlier.round_trips),
            statements: self.statements.saturating_sub(earlier.statements),
            log_writes: self.log_writes.saturating_sub(earlier.log_writes),
            fsyncs: self.fsyncs.saturating_sub(earlier.fsyncs),
        }
    }
}

impl Db {
    /// The counters of every shard's server, summed.
    pub async fn server_work(&self) -> Result<ServerWork> {
        let mut sum = ServerWork::default();
        for shard in self.shards.all() {
            let rows = guard::query(
                "SHOW GLOBAL STATUS WHERE Variable_name IN \
                 ('Questions', 'Queries', 'Innodb_log_writes', 'Innodb_data_fsyncs')",
            )?
            .fetch_all(&shard.pool)
            .await?;
            for row in rows {
                let name: String = row.try_get(0)?;
                let value: String = row.try_get(1)?;
                let value: u64 = value.parse().unwrap_or_default();
                match name.as_str() {
                    "Questions" => sum.round_trips += value,
                    "Queries" => sum.statements += value,
                    "Innodb_log_writes" => sum.log_writes += value,
                    "Innodb_data_fsyncs" => sum.fsyncs += value,
                    _ => {}
                }
            }
        }
        Ok(sum)
    }
}
