//! Channel accounts: which tenant owns a WhatsApp number, a widget origin list, an API
//! callback URL. Credentials arrive here already sealed (see `crate::secrets`) and are
//! never returned by listings.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::mysql::MySqlPool;

use super::{guard, is_duplicate_key};
use crate::error::{Error, Result};
use crate::ids::{Channel, ClientId};

/// A channel account as listed: settings yes, credentials never.
#[derive(Debug, Clone)]
pub struct ChannelAccount {
    pub id: u64,
    pub channel: Channel,
    pub external_account_id: String,
    pub settings: serde_json::Value,
    /// Whether credentials are stored (their content is never shown).
    pub has_credentials: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug)]
pub struct ChannelAccounts<'a> {
    pool: crate::db::Placed<'a>,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

impl<'a> ChannelAccounts<'a> {
    pub(super) fn new(pool: crate::db::Placed<'a>, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }

    /// Stores an account; the same external account on the same channel (even for another
    /// tenant) is [`Error::Conflict`].
    pub async fn create(
        &self,
        channel: Channel,
        external_account_id: &str,
        sealed_credentials: Option<&[u8]>,
        settings: &serde_json::Value,
    ) -> Result<u64> {
        let client_id = self.client_id;
        let inserted = guard::query(
            "INSERT INTO channel_accounts (client_id, channel, external_account_id, \
             credentials_encrypted, settings_json) VALUES (?, ?, ?, ?, ?)",
        )?
        .bind(client_id.get())
        .bind(channel.as_str())
        .bind(external_account_id)
        .bind(sealed_credentials)
        .bind(settings.to_string())
        .execute(self.pool.get().await?)
        .await;
        match inserted {
            Ok(done) => Ok(done.last_insert_id()),
            Err(e) if is_duplicate_key(&e) => Err(Error::Conflict(format!(
                "{channel} account {external_account_id:?} is already registered"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list(&self) -> Result<Vec<ChannelAccount>> {
        let client_id = self.client_id;
        let rows = guard::query(
            "SELECT id, channel, external_account_id, settings_json, \
             credentials_encrypted IS NOT NULL AS has_credentials, created_at \
             FROM channel_accounts WHERE client_id = ? ORDER BY id ASC",
        )?
        .bind(client_id.get())
        .fetch_all(self.pool.get().await?)
        .await?;
        rows.iter()
            .map(|r| {
                let channel: String = r.try_get("channel")?;
                // A utf8mb4_bin column: the driver hands it over as bytes.
                let external: Vec<u8> = r.try_get("external_account_id")?;
                let settings: String = r.try_get("settings_json")?;
                Ok(ChannelAccount {
                    id: r.try_get("id")?,
                    channel: channel
                        .parse()
                        .map_err(|e: crate::ids::UnknownChannel| Error::Invalid(e.to_string()))?,
                    external_account_id: String::from_utf8_lossy(&external).into_owned(),
                    settings: serde_json::from_str(&settings).unwrap_or(serde_json::Value::Null),
                    has_credentials: r.try_get::<i64, _>("has_credentials")? != 0,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// The sealed credentials of every account the tenant has on `channel`.
    pub async fn sealed_for_channel(&self, channel: Channel) -> Result<Vec<Vec<u8>>> {
        let client_id = self.client_id;
        let rows: Vec<Option<Vec<u8>>> = guard::query_scalar(
            "SELECT credentials_encrypted FROM channel_accounts WHERE client_id = ? AND channel = ? ORDER BY id",
        )?
        .bind(client_id.get())
        .bind(channel.as_str())
        .fetch_all(self.pool.get().await?)
        .await?;
        Ok(rows.into_iter().flatten().collect())
    }

    /// Replaces an account's settings; `false` when the tenant has no such account.
    pub async fn update_settings(&self, id: u64, settings: &serde_json::Value) -> Result<bool> {
        let client_id = self.client_id;
        let exists: Option<u64> =
            guard::query_scalar("SELECT id FROM channel_accounts WHERE client_id = ? AND id = ?")?
                .bind(client_id.get())
                .bind(id)
                .fetch_optional(self.pool.get().await?)
                .await?;
        if exists.is_none() {
            return Ok(false);
        }
        guard::query(
            "UPDATE channel_accounts SET settings_json = ? WHERE client_id = ? AND id = ?",
        )?
        .bind(settings.to_string())
        .bind(client_id.get())
        .bind(id)
        .execute(self.pool.get().await?)
        .await?;
        Ok(true)
    }

    pub async fn delete(&self, id: u64) -> Result<bool> {
        let client_id = self.client_id;
        let done = guard::query("DELETE FROM channel_accounts WHERE client_id = ? AND id = ?")?
            .bind(client_id.get())
            .bind(id)
            .execute(self.pool.get().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every account of the tenant that stores credentials: id, channel and the sealed
    /// bytes (for re-sealing under a new key).
    pub async fn sealed_all(&self) -> Result<Vec<(u64, Channel, Vec<u8>)>> {
        let client_id = self.client_id;
        let rows = guard::query(
            "SELECT id, channel, credentials_encrypted FROM channel_accounts \
             WHERE client_id = ? AND credentials_encrypted IS NOT NULL ORDER BY id",
        )?
        .bind(client_id.get())
        .fetch_all(self.pool.get().await?)
        .await?;
        rows.iter()
            .map(|r| {
                let channel: String = r.try_get("channel")?;
                Ok((
                    r.try_get("id")?,
                    channel
                        .parse()
                        .map_err(|e: crate::ids::UnknownChannel| Error::Invalid(e.to_string()))?,
                    r.try_get("credentials_encrypted")?,
                ))
            })
            .collect()
    }

    /// Replaces an account's sealed credentials with `new` if they are still `old`
    /// (another writer's change wins); whether they were replaced.
    pub async fn replace_sealed(&self, id: u64, old: &[u8], new: &[u8]) -> Result<bool> {
        let client_id = self.client_id;
        let done = guard::query(
            "UPDATE channel_accounts SET credentials_encrypted = ? \
             WHERE client_id = ? AND id = ? AND credentials_encrypted = ?",
        )?
        .bind(new)
        .bind(client_id.get())
        .bind(id)
        .bind(old)
        .execute(self.pool.get().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The sealed credentials of one account, for the channel that uses them.
    pub async fn sealed_credentials(&self, id: u64) -> Result<Option<Vec<u8>>> {
        let client_id = self.client_id;
        let sealed: Option<Option<Vec<u8>>> = guard::query_scalar(
            "SELECT credentials_encrypted FROM channel_accounts WHERE client_id = ? AND id = ?",
        )?
        .bind(client_id.get())
        .bind(id)
        .fetch_optional(self.pool.get().await?)
        .await?;
        Ok(sealed.flatten())
    }
}

/// The tenant and account id that own `external_account_id` on `channel` (how an
/// inbound webhook finds its tenant: it cannot start from one).
pub(super) async fn owner(
    pool: &MySqlPool,
    channel: Channel,
    external_account_id: &str,
) -> Result<Option<(ClientId, u64)>> {
    let row = guard::tenant_lookup(
        "SELECT client_id, id FROM channel_accounts WHERE channel = ? AND external_account_id = ?",
        "a channel account identifies its tenant; webhooks name the account, not the tenant",
    )
    .bind(channel.as_str())
    .bind(external_account_id)
    .fetch_optional(pool)
    .await?;
    row.map(|r| Ok((ClientId::new(r.try_get("client_id")?), r.try_get("id")?)))
        .transpose()
}
