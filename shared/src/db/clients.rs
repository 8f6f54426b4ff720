//! Tenants (`clients`, on the home shard). Creating a tenant places it on a shard (the
//! directory row, in the same transaction as its `clients` row) and creates its
//! `client_configs` row with the defaults there; a tenant on another shard gets a copy
//! of its `clients` row there too (its rows' foreign keys point at it). When that
//! second step fails, the first is undone, so a tenant never exists without a
//! configuration.

use super::shards::{Placement, place};
use super::text_column::text_column;
use super::{Db, guard};
use super::{client_id_of, is_duplicate_key};
use crate::error::{Error, Result};
use crate::ids::ClientId;
use crate::tenant::{ClientStatus, Plan};
use chrono::{DateTime, Utc};
use sqlx::Row;

text_column!(Plan, "plan (expected starter, growth or enterprise)", {
    Starter => "starter",
    Growth => "growth",
    Enterprise => "enterprise",
});

text_column!(ClientStatus, "status (expected active, suspended or cancelled)", {
    Active => "active",
    Suspended => "suspended",
    Cancelled => "cancelled",
});

/// A tenant: the `clients` row.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: ClientId,
    pub slug: String,
    pub name: String,
    pub timezone: String,
    pub locale: String,
    pub plan: Plan,
    pub status: ClientStatus,
    pub created_at: DateTime<Utc>,
    /// Widget and mobile sessions issued before this instant are refused.
    pub sessions_revoked_at: Option<DateTime<Utc>>,
}

/// A partial update of a tenant (admin `PATCH`): only the fields given change.
#[derive(Debug, Clone, Default)]
pub struct ClientPatch {
    pub name: Option<String>,
    pub timezone: Option<String>,
    pub locale: Option<String>,
    pub plan: Option<Plan>,
    pub status: Option<ClientStatus>,
}

#[derive(Debug, Clone)]
pub struct NewClient {
    pub slug: String,
    pub name: String,
    pub timezone: String,
    pub locale: String,
    pub plan: Plan,
}

impl NewClient {
    /// Validates the slug (the tenant's public handle: URLs, widget snippet).
    pub fn new(slug: &str, name: &str, plan: Plan) -> Result<Self> {
        let slug_ok = (2..=64).contains(&slug.len())
            && slug
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !slug.starts_with('-')
            && !slug.ends_with('-');
        if !slug_ok {
            return Err(Error::Invalid(format!(
                "slug {slug:?} must be 2-64 characters of a-z, 0-9 and '-', not starting or ending with '-'"
            )));
        }
        let name = name.trim();
        if name.is_empty() || name.len() > 255 {
            return Err(Error::Invalid("name must be 1-255 characters".into()));
        }
        Ok(Self {
            slug: slug.to_owned(),
            name: name.to_owned(),
            timezone: "UTC".into(),
            locale: "en".into(),
            plan,
        })
    }
}

const COLUMNS: &str =
    "id, slug, name, timezone, locale, plan, status, created_at, sessions_revoked_at";

#[derive(Debug)]
pub struct Clients<'a> {
    db: &'a Db,
    /// The home shard's pool.
    pool: &'a sqlx::MySqlPool,
}

/// A tenant's timezone is an IANA name (`Europe/Berlin`): its budget months and usage
/// days follow it.
fn check_timezone(timezone: &str) -> Result<()> {
    if timezone.len() > 64 || timezone.parse::<chrono_tz::Tz>().is_err() {
        return Err(Error::Invalid(format!(
            "timezone must be an IANA time zone name such as \"Europe/Berlin\" or \"UTC\", got {timezone:?}"
        )));
    }
    Ok(())
}

impl<'a> Clients<'a> {
    pub(super) fn new(db: &'a Db) -> Self {
        Self {
            db,
            pool: &db.home().pool,
        }
    }

    /// Creates a tenant and its default configuration on the shard holding the fewest
    /// tenants. A taken slug is an [`Error::Conflict`] that says so.
    pub async fn create(&self, new: &NewClient) -> Result<ClientId> {
        self.create_on(new, None).await
    }

    /// [`Clients::create`] on the shard named `shard` (`None`: the least loaded); an
    /// unknown shard is an [`Error::Invalid`] naming the shards.
    pub async fn create_on(&self, new: &NewClient, shard: Option<&str>) -> Result<ClientId> {
        check_timezone(&new.timezone)?;
        let shard = self.db.shards.choose(shard).await?;
        let at_home = std::ptr::eq(shard, self.db.home());
        let mut tx = self.pool.begin().await?;
        let inserted = guard::query(
            "INSERT INTO clients (slug, name, timezone, locale, plan) VALUES (?, ?, ?, ?, ?)",
        )?
        .bind(&new.slug)
        .bind(&new.name)
        .bind(&new.timezone)
        .bind(&new.locale)
        .bind(new.plan.as_str())
        .execute(&mut *tx)
        .await;
        let id = match inserted {
            Ok(done) => client_id_of(done.last_insert_id()),
            Err(e) if is_duplicate_key(&e) => {
                return Err(Error::Conflict(format!(
                    "slug {:?} is already taken",
                    new.slug
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let placement = Placement {
            shard: shard.name.clone(),
            moving_to: None,
            moved_from: None,
        };
        place(&mut tx, id, &placement).await?;
        if at_home {
            guard::query("INSERT INTO client_configs (client_id) VALUES (?)")?
                .bind(id.get())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(id);
        }
        tx.commit().await?;
        if let Err(e) = super::moving::seed_copy(self.db, id, shard).await {
            let undone = self.forget(id).await;
            if let Err(undo) = undone {
                tracing::error!(client_id = %id, error = %undo, "a tenant whose shard refused it could not be removed from the home");
            }
            return Err(e);
        }
        Ok(id)
    }

    /// Removes a tenant that never reached its shard from the home again.
    async fn forget(&self, id: ClientId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        guard::query("DELETE FROM tenant_directory WHERE id = ?")?
            .bind(id.get())
            .execute(&mut *tx)
            .await?;
        guard::query("DELETE FROM clients WHERE id = ?")?
            .bind(id.get())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Bumps the tenant's configuration version on its shard (a change to its `clients`
    /// row shapes every turn, so caches must notice).
    async fn bump_config_version(&self, client_id: ClientId) -> Result<()> {
        let shard = self.db.shards.of(client_id).await?;
        let mut tx = shard.pool.begin().await?;
        super::configs::bump_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The tenant with this id. The tenant table itself is keyed by the tenant id.
    pub async fn get(&self, client_id: ClientId) -> Result<Option<Client>> {
        let row = guard::query(&format!("SELECT {COLUMNS} FROM clients WHERE id = ?"))?
            .bind(client_id.get())
            .fetch_optional(self.pool)
            .await?;
        row.map(|r| from_row(&r)).transpose()
    }

    /// Tenants by ascending id, after `after_id`, at most `limit`.
    pub async fn list(&self, after_id: u64, limit: u32) -> Result<Vec<Client>> {
        let rows = guard::query(&format!(
            "SELECT {COLUMNS} FROM clients WHERE id > ? ORDER BY id ASC LIMIT ?"
        ))?
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Ends every widget and mobile session of the tenant issued before `at` (and bumps
    /// the configuration version, so every cached copy is refreshed). `false` for an
    /// unknown tenant.
    pub async fn revoke_sessions(&self, client_id: ClientId, at: DateTime<Utc>) -> Result<bool> {
        let done = guard::query("UPDATE clients SET sessions_revoked_at = ? WHERE id = ?")?
            .bind(at)
            .bind(client_id.get())
            .execute(self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.bump_config_version(client_id).await?;
        Ok(true)
    }

    /// Applies a partial update and bumps the configuration version (status, plan and
    /// name shape every turn, so caches must notice). `None` for an unknown tenant.
    pub async fn update(&self, client_id: ClientId, patch: &ClientPatch) -> Result<Option<Client>> {
        if let Some(name) = &patch.name
            && (name.trim().is_empty() || name.len() > 255)
        {
            return Err(Error::Invalid("name must be 1-255 characters".into()));
        }
        if let Some(timezone) = &patch.timezone {
            check_timezone(timezone)?;
        }
        if patch
            .locale
            .as_ref()
            .is_some_and(|l| l.is_empty() || l.len() > 16)
        {
            return Err(Error::Invalid("locale must be 1-16 characters".into()));
        }
        let done = guard::query(
            "UPDATE clients SET name = COALESCE(?, name), timezone = COALESCE(?, timezone), \
             locale = COALESCE(?, locale), plan = COALESCE(?, plan), status = COALESCE(?, status) \
             WHERE id = ?",
        )?
        .bind(patch.name.as_deref().map(str::trim))
        .bind(&patch.timezone)
        .bind(&patch.locale)
        .bind(patch.plan.map(Plan::as_str))
        .bind(patch.status.map(ClientStatus::as_str))
        .bind(client_id.get())
        .execute(self.pool)
        .await?;
        let exists: Option<u64> = guard::query_scalar("SELECT id FROM clients WHERE id = ?")?
            .bind(client_id.get())
            .fetch_optional(self.pool)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let _ = done;
        self.bump_config_version(client_id).await?;
        self.get(client_id).await
    }

    /// Resolves a public slug to its tenant (how channels that name the tenant find it).
    pub async fn by_slug(&self, slug: &str) -> Result<Option<Client>> {
        let row = guard::query(&format!("SELECT {COLUMNS} FROM clients WHERE slug = ?"))?
            .bind(slug)
            .fetch_optional(self.pool)
            .await?;
        row.map(|r| from_row(&r)).transpose()
    }
}

fn from_row(row: &sqlx::mysql::MySqlRow) -> Result<Client> {
    Ok(Client {
        id: client_id_of(row.try_get("id")?),
        slug: row.try_get("slug")?,
        name: row.try_get("name")?,
        timezone: row.try_get("timezone")?,
        locale: row.try_get("locale")?,
        plan: row.try_get("plan")?,
        status: row.try_get("status")?,
        created_at: row.try_get("created_at")?,
        sessions_revoked_at: row.try_get("sessions_revoked_at")?,
    })
}
