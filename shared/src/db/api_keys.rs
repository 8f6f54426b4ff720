//! Tenant API keys. A key reads `cfk_<prefix>_<secret>`: the prefix is public (listings,
//! lookups), the secret is 32 random bytes shown once at creation and stored only as its
//! SHA-256 (a fast hash is enough for a high-entropy secret; a slow password hash would
//! only add latency to every API call).

use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::mysql::MySqlPool;
use subtle::ConstantTimeEq;

use super::client_id_of;
use super::guard;
use crate::error::Result;
use crate::ids::ClientId;

const KEY_TAG: &str = "cfk";

/// A freshly created key: the only time the secret exists outside its owner's hands.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: u64,
    pub prefix: String,
    /// The whole key, to show once.
    pub key: crate::pii::Secret<String>,
}

#[derive(Debug)]
pub struct ApiKeys<'a> {
    pool: crate::db::Placed<'a>,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

impl<'a> ApiKeys<'a> {
    pub(super) fn new(pool: crate::db::Placed<'a>, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }

    pub async fn create(&self, name: &str) -> Result<NewApiKey> {
        let client_id = self.client_id;
        // The thread-local generator must not live across an await (it is not Send).
        let (prefix, secret) = {
            let mut rng = rand::rng();
            (
                hex::encode(rng.random::<[u8; 6]>()),
                hex::encode(rng.random::<[u8; 32]>()),
            )
        };
        let hash = Sha256::digest(secret.as_bytes());
        let done = guard::query(
            "INSERT INTO api_keys (client_id, prefix, secret_hash, name) VALUES (?, ?, ?, ?)",
        )?
        .bind(client_id.get())
        .bind(&prefix)
        .bind(hash.as_slice())
        .bind(name)
        .execute(self.pool.get().await?)
        .await?;
        Ok(NewApiKey {
            id: done.last_insert_id(),
            key: crate::pii::Secret::new(format!("{KEY_TAG}_{prefix}_{secret}")),
            prefix,
        })
    }

    pub async fn revoke(&self, key_id: u64) -> Result<bool> {
        let client_id = self.client_id;
        let done = guard::query(
            "UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP(6) \
             WHERE client_id = ? AND id = ? AND revoked_at IS NULL",
        )?
        .bind(client_id.get())
        .bind(key_id)
        .execute(self.pool.get().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// An API key as listed (never the secret).
#[derive(Debug, Clone)]
pub struct ApiKeyInfo {
    pub id: u64,
    pub prefix: String,
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ApiKeys<'_> {
    pub async fn list(&self) -> Result<Vec<ApiKeyInfo>> {
        let client_id = self.client_id;
        let rows = guard::query(
            "SELECT id, prefix, name, created_at, revoked_at FROM api_keys \
             WHERE client_id = ? ORDER BY id ASC",
        )?
        .bind(client_id.get())
        .fetch_all(self.pool.get().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiKeyInfo {
                    id: r.try_get("id")?,
                    prefix: r.try_get("prefix")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }
}

/// The tenant a presented key belongs to, or `None` for a malformed, unknown or revoked
/// key. This is the one lookup that cannot start from a tenant id: it is how the tenant
/// is found. It goes by the public prefix and compares the hash in constant time.
pub(super) async fn authenticate(pool: &MySqlPool, presented: &str) -> Result<Option<ClientId>> {
    let mut parts = presented.splitn(3, '_');
    let (Some(KEY_TAG), Some(prefix), Some(secret)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    if prefix.len() != 12 || secret.len() != 64 {
        return Ok(None);
    }
    let row = guard::tenant_lookup(
        "SELECT client_id, secret_hash FROM api_keys WHERE prefix = ? AND revoked_at IS NULL",
        "an API key identifies its tenant; the lookup goes by the key's public prefix",
    )
    .bind(prefix)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let stored: Vec<u8> = row.try_get("secret_hash")?;
    let presented_hash = Sha256::digest(secret.as_bytes());
    if bool::from(presented_hash.as_slice().ct_eq(stored.as_slice())) {
        Ok(Some(client_id_of(row.try_get("client_id")?)))
    } else {
        Ok(None)
    }
}
