//! Moving a tenant between shards, and what keeps that safe: shard numbering.
//!
//! Rows keep their ids when they move, so no two shards may hand out the same id: `chatfleet
//! migrate` numbers every shard (`shard_ordinals`, on the home; the home is 0) and starts
//! shard k's `AUTO_INCREMENT` counters at k × 2^40 (well inside JavaScript's exact
//! integers). A move ([`Db::begin_move`] … [`Db::finish_move`], driven by `chatfleet
//! tenant move`) copies every tenant table's rows of the tenant, and its `clients` row,
//! column by column as the server prints them, verifies each table's row count and
//! checksum on both sides, and only then points the directory at the new shard; the copy
//! left behind is deleted last ([`Db::purge_moved_from`]). Every step can run again.

use futures::TryStreamExt;
use sqlx::mysql::MySqlPool;
use sqlx::{Connection, Row};

use super::shards::{Placement, Shard, Shards, place};
use super::{Db, guard};
use crate::error::{Error, Result};
use crate::ids::ClientId;

/// Ids of shard k's new rows start at k × 2^40.
const ID_SPACE_BITS: u32 = 40;
/// Rows per insert when copying.
const COPY_BATCH: usize = 200;

/// One table's share of a move: its rows of the tenant on both shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedTable {
    pub table: String,
    pub rows: u64,
}

/// Numbers shards new to the home's `shard_ordinals` and starts their id counters apart;
/// gives tenants without a directory row the home (they were created before shards).
pub(super) async fn number_shards(shards: &Shards) -> Result<()> {
    let home = &shards.home().pool;
    for (i, shard) in shards.all().iter().enumerate() {
        guard::query(
            "INSERT IGNORE INTO shard_ordinals (name, ordinal) \
             SELECT ?, CASE WHEN ? THEN 0 ELSE GREATEST(COALESCE(MAX(ordinal), 0) + 1, 1) END \
             FROM shard_ordinals",
        )?
        .bind(&shard.name)
        .bind(i == 0)
        .execute(home)
        .await?;
        let ordinal: u16 =
            guard::query_scalar("SELECT ordinal FROM shard_ordinals WHERE name = ?")?
                .bind(&shard.name)
                .fetch_one(home)
                .await?;
        if ordinal > 0 {
            start_ids_at(&shard.pool, u64::from(ordinal) << ID_SPACE_BITS).await?;
        }
    }
    let mut tx = home.begin().await?;
    let unplaced: Vec<u64> = guard::query_scalar(
        "SELECT c.id FROM clients c LEFT JOIN tenant_directory d ON d.id = c.id \
         WHERE d.id IS NULL FOR UPDATE",
    )?
    .fetch_all(&mut *tx)
    .await?;
    for id in unplaced {
        let placement = Placement {
            shard: shards.home().name.clone(),
            moving_to: None,
            moved_from: None,
        };
        place(&mut tx, ClientId::new(id), &placement).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Raises every `AUTO_INCREMENT` counter of the shard's schema below `floor` to it.
async fn start_ids_at(pool: &MySqlPool, floor: u64) -> Result<()> {
    let tables: Vec<String> = guard::query_scalar(
        "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND AUTO_INCREMENT IS NOT NULL AND AUTO_INCREMENT < ?",
    )?
    .bind(floor)
    .fetch_all(pool)
    .await?;
    for table in tables {
        guard::query(&format!("ALTER TABLE `{table}` AUTO_INCREMENT = {floor}"))?
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// A new tenant's `clients` copy and default configuration on a shard other than home.
pub(super) async fn seed_copy(db: &Db, client_id: ClientId, shard: &Shard) -> Result<()> {
    let mut tx = shard.pool.begin().await?;
    copy_client_row(db, client_id, &mut tx).await?;
    guard::query("INSERT INTO client_configs (client_id) VALUES (?)")?
        .bind(client_id.get())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Copies the home's `clients` row of the tenant into `tx` (another shard).
async fn copy_client_row(
    db: &Db,
    client_id: ClientId,
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
) -> Result<()> {
    let columns = columns_of(&db.home().pool, "clients").await?;
    let row = guard::query(&format!(
        "SELECT {} FROM clients WHERE id = ?",
        as_bytes(&columns)
    ))?
    .bind(client_id.get())
    .fetch_optional(&db.home().pool)
    .await?
    .ok_or_else(|| Error::NotFound(format!("tenant {client_id} does not exist")))?;
    let values = cells(&row, columns.len())?;
    guard::query("DELETE FROM clients WHERE id = ?")?
        .bind(client_id.get())
        .execute(&mut **tx)
        .await?;
    insert_rows(tx, "clients", &columns, &[values]).await
}

/// A row read with [`as_bytes`]: each of its `n` values as bytes.
fn cells(row: &sqlx::mysql::MySqlRow, n: usize) -> Result<Vec<Option<Vec<u8>>>> {
    Ok((0..n).map(|i| row.try_get(i)).collect::<Result<_, _>>()?)
}

/// A connection of its own to `shard` with foreign key checks off (rows of a tenant go
/// in and out table by table), closed by the caller instead of going back to the pool.
async fn unchecked_connection(shard: &Shard) -> Result<sqlx::MySqlConnection> {
    let mut conn = shard.pool.acquire().await?.detach();
    guard::query("SET SESSION foreign_key_checks = 0")?
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// The columns a table has, in the shard's schema order.
async fn columns_of(pool: &MySqlPool, table: &str) -> Result<Vec<String>> {
    let columns: Vec<String> = guard::query_scalar(
        "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
    )?
    .bind(table)
    .fetch_all(pool)
    .await?;
    if columns.is_empty() {
        return Err(Error::Internal(format!("table {table} has no columns")));
    }
    Ok(columns)
}

/// `CAST(c AS BINARY)` of each column: every value as the bytes the server prints,
/// which it reads back into the same column type unchanged.
fn as_bytes(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| format!("CAST(`{c}` AS BINARY)"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn insert_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    table: &str,
    columns: &[String],
    rows: &[Vec<Option<Vec<u8>>>],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let names = columns
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let one = format!("({})", vec!["?"; columns.len()].join(", "));
    let sql = format!(
        "INSERT INTO `{table}` ({names}) VALUES {}",
        vec![one.as_str(); rows.len()].join(", ")
    );
    let mut insert = guard::query(&sql)?;
    for row in rows {
        for value in row {
            insert = insert.bind(value.as_deref());
        }
    }
    insert.execute(&mut **tx).await?;
    Ok(())
}

/// (rows, checksum) of the tenant's rows of `table`: the same on both shards when the
/// copy is whole.
async fn fingerprint(
    pool: &MySqlPool,
    table: &str,
    columns: &[String],
    client_id: ClientId,
) -> Result<(u64, u64)> {
    let cells = columns
        .iter()
        .map(|c| format!("IFNULL(HEX(CAST(`{c}` AS BINARY)), 'N')"))
        .collect::<Vec<_>>()
        .join(", ");
    let row = guard::query(&format!(
        "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(CRC32(CONCAT_WS('|', {cells}))), 0) AS UNSIGNED) AS sum \
         FROM `{table}` WHERE client_id = ?"
    ))?
    .bind(client_id.get())
    .fetch_one(pool)
    .await?;
    let n: i64 = row.try_get("n")?;
    Ok((n as u64, row.try_get("sum")?))
}

/// Deletes the tenant's rows of every tenant table on `shard` (and its `clients` copy
/// unless that is the home), foreign key checks off on that one connection.
async fn delete_tenant(db: &Db, client_id: ClientId, shard: &Shard) -> Result<()> {
    let mut conn = unchecked_connection(shard).await?;
    let mut tx = conn.begin().await?;
    for table in guard::TENANT_TABLES {
        guard::query(&format!("DELETE FROM `{table}` WHERE client_id = ?"))?
            .bind(client_id.get())
            .execute(&mut *tx)
            .await?;
    }
    if !std::ptr::eq(shard, db.home()) {
        guard::query("DELETE FROM clients WHERE id = ?")?
            .bind(client_id.get())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    conn.close().await?;
    Ok(())
}

impl Db {
    /// Marks the tenant as moving to `to`: from now on (within [`super::PAUSE_SETTLES`]
    /// everywhere) its statements are refused as unavailable. Running it again for the
    /// same destination is a no-op; another destination while a move is open, or the
    /// shard it is on, is refused.
    pub async fn begin_move(&self, client_id: ClientId, to: &str) -> Result<Placement> {
        self.shards.named(to)?;
        let mut tx = self.home().pool.begin().await?;
        let row = guard::query(
            "SELECT shard, moving_to, moved_from FROM tenant_directory WHERE id = ? FOR UPDATE",
        )?
        .bind(client_id.get())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "tenant {client_id} has no directory row (run `chatfleet migrate`)"
            ))
        })?;
        let mut placement = Placement {
            shard: row.try_get("shard")?,
            moving_to: row.try_get("moving_to")?,
            moved_from: row.try_get("moved_from")?,
        };
        match &placement.moving_to {
            Some(open) if open != to => {
                return Err(Error::Conflict(format!(
                    "tenant {client_id} is already moving to {open:?}: finish that move or roll it back first"
                )));
            }
            Some(_) => return Ok(placement),
            None if placement.shard == to => {
                return Err(Error::Invalid(format!(
                    "tenant {client_id} is on shard {to:?} already"
                )));
            }
            None => {}
        }
        if let Some(from) = &placement.moved_from {
            return Err(Error::Conflict(format!(
                "tenant {client_id}'s copy on {from:?} from its last move is still there: finish that move first"
            )));
        }
        placement.moving_to = Some(to.to_owned());
        place(&mut tx, client_id, &placement).await?;
        tx.commit().await?;
        Ok(placement)
    }

    /// Copies the moving tenant's rows from its shard to the one it moves to (whatever
    /// an earlier attempt left there is deleted first), then compares each table's row
    /// count and checksum on both. An error leaves the move open to be run again.
    pub async fn copy_moving_tenant(&self, client_id: ClientId) -> Result<Vec<MovedTable>> {
        let placement = self.open_move(client_id).await?;
        let from = self.shards.named(&placement.shard)?;
        let to = self
            .shards
            .named(placement.moving_to.as_deref().unwrap_or_default())?;
        delete_tenant(self, client_id, to).await?;
        let mut conn = unchecked_connection(to).await?;
        let mut tx = conn.begin().await?;
        if !std::ptr::eq(to, self.home()) {
            copy_client_row(self, client_id, &mut tx).await?;
        }
        let mut moved = Vec::new();
        let mut schema = Vec::new();
        for table in guard::TENANT_TABLES {
            let columns = columns_of(&from.pool, table).await?;
            // Streamed from the old shard a batch at a time: a large tenant's rows are
            // never all in memory.
            let select = format!(
                "SELECT {} FROM `{table}` WHERE client_id = ?",
                as_bytes(&columns)
            );
            let mut rows = guard::query(&select)?
                .bind(client_id.get())
                .fetch(&from.pool);
            let mut batch = Vec::with_capacity(COPY_BATCH);
            let mut copied = 0_u64;
            while let Some(row) = rows.try_next().await? {
                batch.push(cells(&row, columns.len())?);
                if batch.len() == COPY_BATCH {
                    insert_rows(&mut tx, table, &columns, &batch).await?;
                    copied += batch.len() as u64;
                    batch.clear();
                }
            }
            insert_rows(&mut tx, table, &columns, &batch).await?;
            copied += batch.len() as u64;
            moved.push(MovedTable {
                table: table.to_owned(),
                rows: copied,
            });
            schema.push((table, columns));
        }
        tx.commit().await?;
        conn.close().await?;
        for (table, columns) in &schema {
            let there = fingerprint(&from.pool, table, columns, client_id).await?;
            let here = fingerprint(&to.pool, table, columns, client_id).await?;
            if there != here {
                return Err(Error::Internal(format!(
                    "the copy of tenant {client_id}'s {table} differs ({} rows and checksum {} on {:?}, {} and {} on {:?}); run the move again",
                    there.0, there.1, from.name, here.0, here.1, to.name
                )));
            }
        }
        Ok(moved)
    }

    /// Points the directory at the shard the tenant moved to and lifts the pause; the
    /// old shard's copy is deleted by [`Db::purge_moved_from`].
    pub async fn finish_move(&self, client_id: ClientId) -> Result<Placement> {
        let mut placement = self.open_move(client_id).await?;
        let mut tx = self.home().pool.begin().await?;
        placement.moved_from = Some(std::mem::replace(
            &mut placement.shard,
            placement.moving_to.take().unwrap_or_default(),
        ));
        place(&mut tx, client_id, &placement).await?;
        tx.commit().await?;
        Ok(placement)
    }

    /// Deletes what a finished move left on the old shard.
    pub async fn purge_moved_from(&self, client_id: ClientId) -> Result<()> {
        let Some(mut placement) = self.placement(client_id).await? else {
            return Ok(());
        };
        let Some(from) = placement.moved_from.take() else {
            return Ok(());
        };
        delete_tenant(self, client_id, self.shards.named(&from)?).await?;
        let mut tx = self.home().pool.begin().await?;
        place(&mut tx, client_id, &placement).await?;
        tx.commit().await.map_err(Error::from)
    }

    /// Rolls an open move back: deletes whatever was copied to the destination and
    /// lifts the pause; the tenant stays where it was.
    pub async fn cancel_move(&self, client_id: ClientId) -> Result<Placement> {
        let mut placement = self.open_move(client_id).await?;
        let to = self
            .shards
            .named(placement.moving_to.as_deref().unwrap_or_default())?;
        delete_tenant(self, client_id, to).await?;
        placement.moving_to = None;
        let mut tx = self.home().pool.begin().await?;
        place(&mut tx, client_id, &placement).await?;
        tx.commit().await?;
        Ok(placement)
    }

    async fn open_move(&self, client_id: ClientId) -> Result<Placement> {
        match self.placement(client_id).await? {
            Some(p) if p.moving_to.is_some() => Ok(p),
            _ => Err(Error::Invalid(format!(
                "tenant {client_id} has no move under way"
            ))),
        }
    }
}
