//! A tenant's own credentials for LLM providers ("bring your own key"): the key sealed
//! under the key ring ([`crate::secrets::SecretBox::seal_llm_key`]), never returned; its
//! last four characters to show; an optional base URL and organization. Every write
//! bumps the tenant's configuration version, so every replica's cached configuration
//! (which carries the sealed keys) is replaced at once.

use sqlx::Row;

use super::configs::bump_version;
use super::guard;
use crate::error::Result;
use crate::ids::ClientId;

/// A tenant's credentials for one provider, the key still sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct LlmCredential {
    pub provider: String,
    pub key_sealed: Vec<u8>,
    pub key_last4: String,
    pub base_url: Option<String>,
    pub organization: Option<String>,
}

impl std::fmt::Debug for LlmCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmCredential")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct LlmCredentials<'a> {
    pool: crate::db::Placed<'a>,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

const COLUMNS: &str = "provider, key_sealed, key_last4, base_url, organization";

impl<'a> LlmCredentials<'a> {
    pub(super) fn new(pool: crate::db::Placed<'a>, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }

    /// Every provider the tenant brought a key for, by name.
    pub async fn list(&self) -> Result<Vec<LlmCredential>> {
        let client_id = self.client_id;
        guard::query(&format!(
            "SELECT {COLUMNS} FROM llm_credentials WHERE client_id = ? ORDER BY provider"
        ))?
        .bind(client_id.get())
        .fetch_all(self.pool.get().await?)
        .await?
        .iter()
        .map(|r| {
            Ok(LlmCredential {
                provider: r.try_get("provider")?,
                key_sealed: r.try_get("key_sealed")?,
                key_last4: r.try_get("key_last4")?,
                base_url: r.try_get("base_url")?,
                organization: r.try_get("organization")?,
            })
        })
        .collect()
    }

    /// Sets (or replaces) the tenant's credentials for `credential.provider`; returns the
    /// new configuration version.
    pub async fn put(&self, credential: &LlmCredential) -> Result<u64> {
        let client_id = self.client_id;
        let mut tx = self.pool.get().await?.begin().await?;
        guard::query(
            "INSERT INTO llm_credentials (client_id, provider, key_sealed, key_last4, base_url, \
             organization) VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
             key_sealed = VALUES(key_sealed), key_last4 = VALUES(key_last4), \
             base_url = VALUES(base_url), organization = VALUES(organization), \
             updated_at = CURRENT_TIMESTAMP(6)",
        )?
        .bind(client_id.get())
        .bind(&credential.provider)
        .bind(&credential.key_sealed)
        .bind(&credential.key_last4)
        .bind(&credential.base_url)
        .bind(&credential.organization)
        .execute(&mut *tx)
        .await?;
        let version = bump_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Removes the tenant's credentials for `provider`; `None` when it had none.
    pub async fn delete(&self, provider: &str) -> Result<Option<u64>> {
        let client_id = self.client_id;
        let mut tx = self.pool.get().await?.begin().await?;
        let done =
            guard::query("DELETE FROM llm_credentials WHERE client_id = ? AND provider = ?")?
                .bind(client_id.get())
                .bind(provider)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let version = bump_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    /// Replaces a sealed key with `new` if it is still `old` (re-sealing under a new
    /// key), bumping the configuration version; false when it changed meanwhile.
    pub async fn replace_sealed(&self, provider: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        let client_id = self.client_id;
        let mut tx = self.pool.get().await?.begin().await?;
        let done = guard::query(
            "UPDATE llm_credentials SET key_sealed = ? \
             WHERE client_id = ? AND provider = ? AND key_sealed = ?",
        )?
        .bind(new)
        .bind(client_id.get())
        .bind(provider)
        .bind(old)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        bump_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(true)
    }
}
