//! Mobile devices: the hash of each device's secret (what proves a later session comes
//! from the installation that opened the first), and push tokens (a reply to a device's
//! conversation is also sent as a push notification when the device registered one).

use super::guard;
use crate::error::Result;
use crate::ids::ClientId;

#[derive(Debug)]
pub struct Devices<'a> {
    pool: crate::db::Placed<'a>,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

impl<'a> Devices<'a> {
    pub(super) fn new(pool: crate::db::Placed<'a>, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }

    /// Stores `secret_hash` as the device's if it has none yet, and returns the hash the
    /// device has now: `secret_hash` when this call claimed the device, another when an
    /// earlier session (or a concurrent one) did.
    pub async fn claim_secret(&self, device_id: &str, secret_hash: &[u8; 32]) -> Result<Vec<u8>> {
        let client_id = self.client_id;
        guard::query(
            "INSERT INTO mobile_devices (client_id, device_id, secret_hash) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE secret_hash = COALESCE(secret_hash, VALUES(secret_hash))",
        )?
        .bind(client_id.get())
        .bind(device_id)
        .bind(secret_hash.as_slice())
        .execute(self.pool.get().await?)
        .await?;
        let stored: Option<Vec<u8>> = guard::query_scalar(
            "SELECT secret_hash FROM mobile_devices WHERE client_id = ? AND device_id = ?",
        )?
        .bind(client_id.get())
        .bind(device_id)
        .fetch_one(self.pool.get().await?)
        .await?;
        Ok(stored.unwrap_or_default())
    }

    /// The hash of the device's secret; `None` for a device that has not claimed one.
    pub async fn secret_hash(&self, device_id: &str) -> Result<Option<Vec<u8>>> {
        let client_id = self.client_id;
        let stored: Option<Option<Vec<u8>>> = guard::query_scalar(
            "SELECT secret_hash FROM mobile_devices WHERE client_id = ? AND device_id = ?",
        )?
        .bind(client_id.get())
        .bind(device_id)
        .fetch_optional(self.pool.get().await?)
        .await?;
        Ok(stored.flatten())
    }

    /// Registers (or replaces, or with `None` removes) the device's push token.
    pub async fn set_push_token(&self, device_id: &str, push_token: Option<&str>) -> Result<()> {
        let client_id = self.client_id;
        guard::query(
            "INSERT INTO mobile_devices (client_id, device_id, push_token) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE push_token = VALUES(push_token)",
        )?
        .bind(client_id.get())
        .bind(device_id)
        .bind(push_token)
        .execute(self.pool.get().await?)
        .await?;
        Ok(())
    }

    /// The device's push token, if it registered one.
    pub async fn push_token(&self, device_id: &str) -> Result<Option<String>> {
        let client_id = self.client_id;
        let token: Option<Option<String>> = guard::query_scalar(
            "SELECT push_token FROM mobile_devices WHERE client_id = ? AND device_id = ?",
        )?
        .bind(client_id.get())
        .bind(device_id)
        .fetch_optional(self.pool.get().await?)
        .await?;
        Ok(token.flatten())
    }
}
