//! The operators of the admin API and what they did: `admin_tokens` (each operator's
//! token, stored as its SHA-256, with a scope) and `audit_log` (every admin write). Both
//! are the platform's, not a tenant's: an audit entry names the tenant it touched and
//! outlives it.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::mysql::MySqlPool;

use super::guard;
use crate::error::{Error, Result};
use crate::ids::ClientId;
use crate::pii::Secret;

/// What an operator may do: read everything, or change it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            other => Err(Error::Invalid(format!(
                "scope {other:?} is not read or write"
            ))),
        }
    }
}

/// An operator, as an admin request is attributed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub scope: Scope,
}

/// An operator's token as listed (never the token itself).
#[derive(Debug, Clone)]
pub struct OperatorToken {
    pub id: u64,
    pub name: String,
    pub scope: Scope,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub struct Operators<'a> {
    pool: &'a MySqlPool,
}

impl<'a> Operators<'a> {
    pub(super) fn new(pool: &'a MySqlPool) -> Self {
        Self { pool }
    }

    /// A new token for operator `name` (1-64 characters of a-z, 0-9, '.', '-', '_', '@');
    /// the token is returned here only.
    pub async fn create(&self, name: &str, scope: Scope) -> Result<Secret<String>> {
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b));
        if !name_ok {
            return Err(Error::Invalid(format!(
                "operator name {name:?} must be 1-64 characters of a-z, 0-9, '.', '-', '_' and '@'"
            )));
        }
        let (secret, hash) = crate::secrets::new_bearer_secret();
        guard::query("INSERT INTO admin_tokens (name, scope, token_hash) VALUES (?, ?, ?)")?
            .bind(name)
            .bind(scope.as_str())
            .bind(hash.as_slice())
            .execute(self.pool)
            .await?;
        Ok(Secret::new(format!("cfo_{secret}")))
    }

    /// The operator whose unrevoked token this is.
    pub async fn by_token(&self, presented: &str) -> Result<Option<Operator>> {
        let hash = crate::secrets::bearer_hash(presented.strip_prefix("cfo_").unwrap_or("-"));
        let row = guard::query(
            "SELECT name, scope FROM admin_tokens WHERE token_hash = ? AND revoked_at IS NULL",
        )?
        .bind(hash.as_slice())
        .fetch_optional(self.pool)
        .await?;
        row.map(|r| {
            let scope: String = r.try_get("scope")?;
            Ok(Operator {
                name: r.try_get("name")?,
                scope: scope.parse()?,
            })
        })
        .transpose()
    }

    /// Every token, oldest first.
    pub async fn list(&self) -> Result<Vec<OperatorToken>> {
        let rows = guard::query(
            "SELECT id, name, scope, created_at, revoked_at FROM admin_tokens ORDER BY id",
        )?
        .fetch_all(self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let scope: String = r.try_get("scope")?;
                Ok(OperatorToken {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    scope: scope.parse()?,
                    created_at: r.try_get("created_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    /// Revokes every token of operator `name`; how many were revoked.
    pub async fn revoke(&self, name: &str) -> Result<u64> {
        let done = guard::query(
            "UPDATE admin_tokens SET revoked_at = CURRENT_TIMESTAMP(6) \
             WHERE name = ? AND revoked_at IS NULL",
        )?
        .bind(name)
        .execute(self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// One admin write, as recorded.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub id: u64,
    pub at: DateTime<Utc>,
    pub operator: String,
    pub method: String,
    pub route: String,
    pub tenant: Option<ClientId>,
    pub request_id: Option<String>,
    pub status: u16,
    /// The fields before and after, secrets masked (configuration, mode, channel and key
    /// changes).
    pub changes: Option<serde_json::Value>,
}

/// An admin write to record.
#[derive(Debug, Clone)]
pub struct NewAuditEntry<'e> {
    pub operator: &'e str,
    pub method: &'e str,
    pub route: &'e str,
    pub tenant: Option<ClientId>,
    pub request_id: Option<&'e str>,
    pub status: u16,
    pub changes: Option<&'e serde_json::Value>,
}

#[derive(Debug)]
pub struct AuditLog<'a> {
    pool: &'a MySqlPool,
}

impl<'a> AuditLog<'a> {
    pub(super) fn new(pool: &'a MySqlPool) -> Self {
        Self { pool }
    }

    pub async fn record(&self, entry: &NewAuditEntry<'_>) -> Result<()> {
        guard::query(
            "INSERT INTO audit_log (operator, method, route, tenant, request_id, status, changes) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )?
        .bind(entry.operator)
        .bind(entry.method)
        .bind(entry.route)
        .bind(entry.tenant.map(ClientId::get))
        .bind(entry.request_id)
        .bind(entry.status)
        .bind(entry.changes.map(serde_json::Value::to_string))
        .execute(self.pool)
        .await?;
        Ok(())
    }

    /// Entries after id `after`, oldest first, at most `limit`; of one tenant when given.
    pub async fn list(
        &self,
        tenant: Option<ClientId>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        let rows = guard::query(
            "SELECT id, at, operator, method, route, tenant, request_id, status, changes \
             FROM audit_log WHERE id > ? AND (? IS NULL OR tenant = ?) ORDER BY id LIMIT ?",
        )?
        .bind(after)
        .bind(tenant.map(ClientId::get))
        .bind(tenant.map(ClientId::get))
        .bind(limit)
        .fetch_all(self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                // A JSON column: the driver hands it over as bytes.
                let changes: Option<Vec<u8>> = r.try_get("changes")?;
                let tenant: Option<u64> = r.try_get("tenant")?;
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    operator: r.try_get("operator")?,
                    method: r.try_get("method")?,
                    route: r.try_get("route")?,
                    tenant: tenant.map(ClientId::new),
                    request_id: r.try_get("request_id")?,
                    status: r.try_get("status")?,
                    changes: changes.and_then(|c| serde_json::from_slice(&c).ok()),
                })
            })
            .collect()
    }
}
