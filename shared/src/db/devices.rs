//! Mobile devices and their push tokens: a reply to a device's conversation is also sent
//! as a push notification when the device registered a token.

use sqlx::mysql::MySqlPool;

use super::guard;
use crate::error::Result;
use crate::ids::ClientId;

#[derive(Debug)]
pub struct Devices<'a> {
    pool: &'a MySqlPool,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

impl<'a> Devices<'a> {
    pub(super) fn new(pool: &'a MySqlPool, client_id: ClientId) -> Self {
        Self { pool, client_id }
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
        .execute(self.pool)
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
        .fetch_optional(self.pool)
        .await?;
        Ok(token.flatten())
    }
}
