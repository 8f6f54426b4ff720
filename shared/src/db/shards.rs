//! Tenants spread over database servers (`database.shards`).
//!
//! Every shard carries the whole schema; a tenant's rows all live on one of them, named
//! in the home shard's `tenant_directory`. A deployment with one shard has no directory
//! to read: every statement goes to it. With several, each process keeps the whole
//! directory in memory and, at most once a [`DIRECTORY_TTL`], reads what changed since
//! the last version it saw (one indexed statement, usually empty); a process that cannot
//! read it refuses tenant statements rather than trust an older copy. So a tenant marked
//! as moving is refused everywhere within [`PAUSE_SETTLES`] of the mark, which is what
//! lets `chatfleet tenant move` copy it with nothing writing behind the copy.
//!
//! `clients` (the registry), operators and the audit log live on the home shard; each
//! other shard keeps a copy of its own tenants' `clients` rows for their foreign keys.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use sqlx::Row;
use sqlx::mysql::MySqlPool;

use super::direct::DirectPool;
use super::guard;
use crate::error::{Error, Result};
use crate::ids::ClientId;

/// How long a process trusts its copy of the directory before reading what changed.
pub const DIRECTORY_TTL: Duration = Duration::from_secs(1);
/// After a tenant is marked as moving, how long until no process still writes to its
/// old shard: the directory's age, a slow read of it, and a statement already running.
pub const PAUSE_SETTLES: Duration = Duration::from_secs(5);

/// One database server.
#[derive(Debug)]
pub(super) struct Shard {
    pub(super) name: String,
    pub(super) pool: MySqlPool,
    pub(super) direct: DirectPool,
}

/// Where the directory says a tenant is.
#[derive(Debug, Clone)]
struct Entry {
    shard: String,
    moving_to: Option<String>,
}

/// A tenant's row of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub shard: String,
    /// Set while `chatfleet tenant move` copies it: its traffic is refused meanwhile.
    pub moving_to: Option<String>,
    /// The shard it left, until the copy left there is deleted.
    pub moved_from: Option<String>,
}

/// The process's copy of the directory.
#[derive(Debug, Default)]
struct Directory {
    entries: RwLock<HashMap<u64, Entry>>,
    synced_at: Mutex<Option<Instant>>,
    /// The newest version read; held while reading, so one task reads at a time.
    version: tokio::sync::Mutex<u64>,
}

/// The shards of a deployment, the home first.
#[derive(Debug)]
pub(super) struct Shards {
    list: Vec<Shard>,
    directory: Directory,
}

impl Shards {
    pub(super) fn new(list: Vec<Shard>) -> Self {
        assert!(!list.is_empty(), "a deployment has a home shard");
        Self {
            list,
            directory: Directory::default(),
        }
    }

    pub(super) fn home(&self) -> &Shard {
        &self.list[0]
    }

    pub(super) fn all(&self) -> &[Shard] {
        &self.list
    }

    pub(super) fn named(&self, name: &str) -> Result<&Shard> {
        self.list.iter().find(|s| s.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.list.iter().map(|s| s.name.as_str()).collect();
            Error::Invalid(format!(
                "unknown shard {name:?}; the shards are {}",
                names.join(", ")
            ))
        })
    }

    /// The shard holding `client_id`'s rows. A tenant being moved is
    /// [`Error::Unavailable`] until the move ends.
    pub(super) async fn of(&self, client_id: ClientId) -> Result<&Shard> {
        if self.list.len() == 1 {
            return Ok(self.home());
        }
        self.sync().await?;
        let cached = self
            .directory
            .entries
            .read()
            .expect("directory lock")
            .get(&client_id.get())
            .cloned();
        let entry = match cached {
            Some(entry) => entry,
            // Created since the last read (or never): its own row, or the home for a
            // tenant without one (none after `chatfleet migrate`).
            None => match self.placement(client_id).await? {
                Some(p) => {
                    let entry = Entry {
                        shard: p.shard,
                        moving_to: p.moving_to,
                    };
                    self.directory
                        .entries
                        .write()
                        .expect("directory lock")
                        .insert(client_id.get(), entry.clone());
                    entry
                }
                None => return Ok(self.home()),
            },
        };
        if let Some(to) = entry.moving_to {
            return Err(Error::Unavailable(format!(
                "tenant {client_id} is moving to database shard {to:?}; try again shortly"
            )));
        }
        self.list
            .iter()
            .find(|s| s.name == entry.shard)
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "tenant {client_id} lives on database shard {:?}, which this process's database.shards does not list",
                    entry.shard
                ))
            })
    }

    /// Reads the directory's changes when this process's copy is older than
    /// [`DIRECTORY_TTL`].
    async fn sync(&self) -> Result<()> {
        let fresh = |at: &Option<Instant>| at.is_some_and(|t| t.elapsed() < DIRECTORY_TTL);
        if fresh(&self.directory.synced_at.lock().expect("directory lock")) {
            return Ok(());
        }
        let mut version = self.directory.version.lock().await;
        if fresh(&self.directory.synced_at.lock().expect("directory lock")) {
            return Ok(());
        }
        let started = Instant::now();
        let rows = guard::query(
            "SELECT id, shard, moving_to, version FROM tenant_directory \
             WHERE version > ? ORDER BY version",
        )?
        .bind(*version)
        .fetch_all(&self.home().pool)
        .await?;
        let mut entries = self.directory.entries.write().expect("directory lock");
        for row in &rows {
            let id: u64 = row.try_get("id")?;
            entries.insert(
                id,
                Entry {
                    shard: row.try_get("shard")?,
                    moving_to: row.try_get("moving_to")?,
                },
            );
            *version = row.try_get("version")?;
        }
        *self.directory.synced_at.lock().expect("directory lock") = Some(started);
        Ok(())
    }

    /// `client_id`'s directory row, read now.
    pub(super) async fn placement(&self, client_id: ClientId) -> Result<Option<Placement>> {
        let row =
            guard::query("SELECT shard, moving_to, moved_from FROM tenant_directory WHERE id = ?")?
                .bind(client_id.get())
                .fetch_optional(&self.home().pool)
                .await?;
        row.map(|r| {
            Ok(Placement {
                shard: r.try_get("shard")?,
                moving_to: r.try_get("moving_to")?,
                moved_from: r.try_get("moved_from")?,
            })
        })
        .transpose()
    }

    /// The shard a new tenant goes to: `wanted`, or the configured shard holding the
    /// fewest tenants (the first of equals).
    pub(super) async fn choose(&self, wanted: Option<&str>) -> Result<&Shard> {
        if let Some(name) = wanted {
            return self.named(name);
        }
        if self.list.len() == 1 {
            return Ok(self.home());
        }
        let counts: HashMap<String, i64> =
            guard::query("SELECT shard, COUNT(*) AS tenants FROM tenant_directory GROUP BY shard")?
                .fetch_all(&self.home().pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("shard")?, r.try_get("tenants")?)))
                .collect::<Result<_>>()?;
        Ok(self
            .list
            .iter()
            .min_by_key(|s| counts.get(&s.name).copied().unwrap_or(0))
            .expect("a deployment has a home shard"))
    }
}

/// Takes the next directory version, holding the clock's row lock until `tx` ends, so
/// versions commit in the order they were taken.
pub(super) async fn next_version(tx: &mut sqlx::Transaction<'_, sqlx::MySql>) -> Result<u64> {
    guard::query("UPDATE directory_clock SET version = LAST_INSERT_ID(version + 1) WHERE id = 1")?
        .execute(&mut **tx)
        .await?;
    let version: u64 = guard::query_scalar("SELECT LAST_INSERT_ID()")?
        .fetch_one(&mut **tx)
        .await?;
    Ok(version)
}

/// Writes `client_id`'s directory row (inside the caller's transaction on the home).
pub(super) async fn place(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    client_id: ClientId,
    placement: &Placement,
) -> Result<()> {
    let version = next_version(tx).await?;
    guard::query(
        "INSERT INTO tenant_directory (id, shard, moving_to, moved_from, version) \
         VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE shard = VALUES(shard), \
         moving_to = VALUES(moving_to), moved_from = VALUES(moved_from), version = VALUES(version)",
    )?
    .bind(client_id.get())
    .bind(&placement.shard)
    .bind(&placement.moving_to)
    .bind(&placement.moved_from)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
