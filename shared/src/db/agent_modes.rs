//! A tenant's agent modes (`agent_modes`): prompt fragments it switches on and off, in
//! priority order. Every change bumps the tenant's `config_version` in the same
//! transaction, like a change of its configuration.

use sqlx::Row;

use super::configs::{Configs, bump_version};
use super::{guard, is_duplicate_key};
use crate::error::{Error, Result};

/// An agent mode: a prompt fragment the tenant can switch on and off.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentMode {
    pub module_key: String,
    pub prompt_fragment: String,
    pub is_active: bool,
    pub priority: i32,
}

pub type NewAgentMode = AgentMode;

/// A partial update of an agent mode (admin `PATCH`).
#[derive(Debug, Clone, Default)]
pub struct ModePatch {
    pub prompt_fragment: Option<String>,
    pub is_active: Option<bool>,
    pub priority: Option<i32>,
}

impl Configs<'_> {
    /// Every agent mode of the tenant, active or not, in priority order.
    pub async fn list_modes(&self) -> Result<Vec<AgentMode>> {
        let client_id = self.client_id;
        guard::query(
            "SELECT module_key, prompt_fragment, is_active, priority FROM agent_modes \
             WHERE client_id = ? ORDER BY priority ASC, module_key ASC",
        )?
        .bind(client_id.get())
        .fetch_all(self.pool.get().await?)
        .await?
        .iter()
        .map(mode_from_row)
        .collect()
    }

    /// Creates a mode; a taken key is [`Error::Conflict`]. Returns the new version.
    pub async fn create_mode(&self, mode: &NewAgentMode) -> Result<u64> {
        let client_id = self.client_id;
        validate_mode_key(&mode.module_key)?;
        validate_fragment(&mode.prompt_fragment)?;
        let mut tx = self.pool.get().await?.begin().await?;
        let inserted = guard::query(
            "INSERT INTO agent_modes (client_id, module_key, prompt_fragment, is_active, priority) \
             VALUES (?, ?, ?, ?, ?)",
        )?
        .bind(client_id.get())
        .bind(&mode.module_key)
        .bind(&mode.prompt_fragment)
        .bind(mode.is_active)
        .bind(mode.priority)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {
                return Err(Error::Conflict(format!(
                    "agent mode {:?} already exists",
                    mode.module_key
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let version = bump_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Changes a mode's fragment, activity or priority. `None` when there is no such mode.
    pub async fn update_mode(&self, module_key: &str, patch: &ModePatch) -> Result<Option<u64>> {
        let client_id = self.client_id;
        if let Some(fragment) = &patch.prompt_fragment {
            validate_fragment(fragment)?;
        }
        let mut tx = self.pool.get().await?.begin().await?;
        let found: Option<u64> = guard::query_scalar(
            "SELECT id FROM agent_modes WHERE client_id = ? AND module_key = ? FOR UPDATE",
        )?
        .bind(client_id.get())
        .bind(module_key)
        .fetch_optional(&mut *tx)
        .await?;
        if found.is_none() {
            return Ok(None);
        }
        guard::query(
            "UPDATE agent_modes SET prompt_fragment = COALESCE(?, prompt_fragment), \
             is_active = COALESCE(?, is_active), priority = COALESCE(?, priority) \
             WHERE client_id = ? AND module_key = ?",
        )?
        .bind(&patch.prompt_fragment)
        .bind(patch.is_active)
        .bind(patch.priority)
        .bind(client_id.get())
        .bind(module_key)
        .execute(&mut *tx)
        .await?;
        let version = bump_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    /// Deletes a mode. `None` when there is no such mode.
    pub async fn delete_mode(&self, module_key: &str) -> Result<Option<u64>> {
        let client_id = self.client_id;
        let mut tx = self.pool.get().await?.begin().await?;
        let done = guard::query("DELETE FROM agent_modes WHERE client_id = ? AND module_key = ?")?
            .bind(client_id.get())
            .bind(module_key)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let version = bump_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(Some(version))
    }
}

/// Longest prompt fragment of one agent mode.
const MAX_FRAGMENT: usize = 8000;

fn validate_fragment(fragment: &str) -> Result<()> {
    if fragment.trim().is_empty() || fragment.len() > MAX_FRAGMENT {
        return Err(Error::Invalid(format!(
            "prompt_fragment must be 1-{MAX_FRAGMENT} characters"
        )));
    }
    Ok(())
}

fn validate_mode_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "module_key must be 1-64 characters of a-z, A-Z, 0-9, '_', '-' or '.'".into(),
        ))
    }
}

pub(super) fn mode_from_row(row: &sqlx::mysql::MySqlRow) -> Result<AgentMode> {
    Ok(AgentMode {
        module_key: row.try_get("module_key")?,
        prompt_fragment: row.try_get("prompt_fragment")?,
        is_active: row.try_get("is_active")?,
        priority: row.try_get("priority")?,
    })
}
