//! A tenant's webhook endpoints (`webhooks`). Which events an endpoint wants is part of
//! the cached tenant configuration (the emitters read it on every event), so every write
//! that changes it bumps `config_version`. Signing secrets are stored sealed (see
//! `crate::secrets`) and only the deliverer opens them.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::configs::bump_version;
use super::guard;
use crate::error::{Error, Result};
use crate::ids::{Channel, ClientId};
use crate::webhooks::EventType;

/// The events an endpoint subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFilter {
    /// `*`: every event type, those added later included.
    All,
    Only(Vec<EventType>),
}

impl EventFilter {
    /// The filter the words name (`*` or event types); the first unknown word otherwise.
    pub fn parse(words: &[String]) -> std::result::Result<Self, String> {
        if words.iter().any(|w| w == "*") {
            return Ok(Self::All);
        }
        let mut types = Vec::with_capacity(words.len());
        for word in words {
            let t: EventType = word.parse().map_err(|_| word.clone())?;
            if !types.contains(&t) {
                types.push(t);
            }
        }
        Ok(Self::Only(types))
    }

    pub fn words(&self) -> Vec<String> {
        match self {
            Self::All => vec!["*".into()],
            Self::Only(types) => types.iter().map(|t| t.as_str().to_owned()).collect(),
        }
    }

    fn column(&self) -> String {
        self.words().join(",")
    }

    fn from_column(text: &str) -> Self {
        let words: Vec<String> = text.split(',').map(str::to_owned).collect();
        // A word this build does not know (written by a newer one) is skipped.
        Self::parse(&words)
            .unwrap_or_else(|_| Self::Only(words.iter().filter_map(|w| w.parse().ok()).collect()))
    }

    pub fn contains(&self, kind: EventType) -> bool {
        match self {
            Self::All => true,
            Self::Only(types) => types.contains(&kind),
        }
    }
}

/// An endpoint as the admin API shows it (never its secret).
#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: u64,
    pub url: String,
    pub events: EventFilter,
    pub description: String,
    pub include_text: bool,
    /// Set for an API channel account's callback (`settings.callback_url`).
    pub channel_account_id: Option<u64>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed (`None` while it answers).
    pub failing_since: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation still signs.
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// What an emitter needs to know of an enabled endpoint (in the cached configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSubscription {
    pub id: u64,
    pub events: EventFilter,
    /// An API channel account's callback: only `message.replied` of API conversations.
    pub callback: bool,
}

impl WebhookSubscription {
    /// Whether an event of this type, in a conversation on `channel`, goes here.
    pub fn wants(&self, kind: EventType, channel: Option<Channel>) -> bool {
        if self.callback {
            kind.reaches_callback(channel)
        } else {
            self.events.contains(kind)
        }
    }
}

/// A new endpoint.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub url: String,
    pub events: EventFilter,
    pub description: String,
    pub include_text: bool,
    pub channel_account_id: Option<u64>,
}

/// The sealed secrets that sign an endpoint's deliveries now: the current one, and the
/// one before the last rotation while it still signs.
#[derive(Debug, Clone)]
pub struct SealedSecrets {
    pub current: Vec<u8>,
    pub previous: Option<Vec<u8>>,
}

const WEBHOOK_COLUMNS: &str = "id, url, events, description, include_text, channel_account_id, \
    enabled, disabled_reason, failing_since, previous_until, created_at";

#[derive(Debug)]
pub struct Webhooks<'a> {
    pool: crate::db::Placed<'a>,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

impl<'a> Webhooks<'a> {
    pub(super) fn new(pool: crate::db::Placed<'a>, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }

    /// Every endpoint, oldest first.
    pub async fn list(&self) -> Result<Vec<Webhook>> {
        let client_id = self.client_id;
        guard::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE client_id = ? ORDER BY id"
        ))?
        .bind(client_id.get())
        .fetch_all(self.pool.get().await?)
        .await?
        .iter()
        .map(webhook_from_row)
        .collect()
    }

    pub async fn get(&self, id: u64) -> Result<Option<Webhook>> {
        let client_id = self.client_id;
        guard::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE client_id = ? AND id = ?"
        ))?
        .bind(client_id.get())
        .bind(id)
        .fetch_optional(self.pool.get().await?)
        .await?
        .as_ref()
        .map(webhook_from_row)
        .transpose()
    }

    /// The callback endpoint of an API channel account, if it has one.
    pub async fn of_account(&self, channel_account_id: u64) -> Result<Option<Webhook>> {
        let client_id = self.client_id;
        guard::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE client_id = ? AND channel_account_id = ?"
        ))?
        .bind(client_id.get())
        .bind(channel_account_id)
        .fetch_optional(self.pool.get().await?)
        .await?
        .as_ref()
        .map(webhook_from_row)
        .transpose()
    }

    /// The enabled endpoints, as the emitters need them.
    pub async fn subscriptions(&self) -> Result<Vec<WebhookSubscription>> {
        let client_id = self.client_id;
        let rows = guard::query(
            "SELECT id, events, channel_account_id FROM webhooks \
             WHERE client_id = ? AND enabled = TRUE ORDER BY id",
        )?
        .bind(client_id.get())
        .fetch_all(self.pool.get().await?)
        .await?;
        rows.iter()
            .map(|row| {
                let events: String = row.try_get("events")?;
                let account: Option<u64> = row.try_get("channel_account_id")?;
                Ok(WebhookSubscription {
                    id: row.try_get("id")?,
                    events: EventFilter::from_column(&events),
                    callback: account.is_some(),
                })
            })
            .collect()
    }

    /// Creates an endpoint whose secret `seal` seals (it is given the new id, the
    /// secret's associated data); more than `max` endpoints is [`Error::Invalid`].
    pub async fn create(
        &self,
        new: &NewWebhook,
        max: u32,
        seal: impl FnOnce(u64) -> Result<Vec<u8>>,
    ) -> Result<u64> {
        let client_id = self.client_id;
        let mut tx = self.pool.get().await?.begin().await?;
        // The version bump locks the tenant's config row: creations queue behind it, so
        // the count holds until this one commits.
        bump_version(&mut tx, client_id).await?;
        let count: i64 = guard::query_scalar("SELECT COUNT(*) FROM webhooks WHERE client_id = ?")?
            .bind(client_id.get())
            .fetch_one(&mut *tx)
            .await?;
        if count >= i64::from(max) {
            return Err(Error::Invalid(format!(
                "a tenant may have at most {max} webhooks (webhooks.max_per_tenant)"
            )));
        }
        let done = guard::query(
            "INSERT INTO webhooks (client_id, url, events, description, include_text, \
             channel_account_id, secret_sealed) VALUES (?, ?, ?, ?, ?, ?, '')",
        )?
        .bind(client_id.get())
        .bind(&new.url)
        .bind(new.events.column())
        .bind(&new.description)
        .bind(new.include_text)
        .bind(new.channel_account_id)
        .execute(&mut *tx)
        .await?;
        let id = done.last_insert_id();
        guard::query("UPDATE webhooks SET secret_sealed = ? WHERE client_id = ? AND id = ?")?
            .bind(seal(id)?)
            .bind(client_id.get())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Replaces the endpoint's editable fields (re-enabling clears the failure record);
    /// false when there is no such endpoint.
    pub async fn update(&self, webhook: &Webhook) -> Result<bool> {
        let client_id = self.client_id;
        let mut tx = self.pool.get().await?.begin().await?;
        let done = guard::query(
            "UPDATE webhooks SET url = ?, events = ?, description = ?, include_text = ?, \
             disabled_reason = IF(?, NULL, disabled_reason), \
             failing_since = IF(? AND enabled = FALSE, NULL, failing_since), enabled = ? \
             WHERE client_id = ? AND id = ?",
        )?
        .bind(&webhook.url)
        .bind(webhook.events.column())
        .bind(&webhook.description)
        .bind(webhook.include_text)
        .bind(webhook.enabled)
        .bind(webhook.enabled)
        .bind(webhook.enabled)
        .bind(client_id.get())
        .bind(webhook.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 && self.get(webhook.id).await?.is_none() {
            return Ok(false);
        }
        bump_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn delete(&self, id: u64) -> Result<bool> {
        let client_id = self.client_id;
        let mut tx = self.pool.get().await?.begin().await?;
        let done = guard::query("DELETE FROM webhooks WHERE client_id = ? AND id = ?")?
            .bind(client_id.get())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        bump_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Makes `sealed` the signing secret; the old one keeps signing until `overlap_until`.
    pub async fn rotate(
        &self,
        id: u64,
        sealed: &[u8],
        overlap_until: DateTime<Utc>,
    ) -> Result<bool> {
        let client_id = self.client_id;
        let done = guard::query(
            "UPDATE webhooks SET previous_sealed = secret_sealed, previous_until = ?, \
             secret_sealed = ? WHERE client_id = ? AND id = ?",
        )?
        .bind(overlap_until)
        .bind(sealed)
        .bind(client_id.get())
        .bind(id)
        .execute(self.pool.get().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The secrets that sign now (the previous one only inside its overlap).
    pub async fn secrets(&self, id: u64) -> Result<Option<SealedSecrets>> {
        let client_id = self.client_id;
        let row = guard::query(
            "SELECT secret_sealed, IF(previous_until > NOW(6), previous_sealed, NULL) AS previous \
             FROM webhooks WHERE client_id = ? AND id = ?",
        )?
        .bind(client_id.get())
        .bind(id)
        .fetch_optional(self.pool.get().await?)
        .await?;
        row.map(|r| {
            Ok(SealedSecrets {
                current: r.try_get("secret_sealed")?,
                previous: r.try_get("previous")?,
            })
        })
        .transpose()
    }

    /// Every sealed secret of the tenant (`chatfleet secrets reseal`): id, current,
    /// previous.
    pub async fn sealed_all(&self) -> Result<Vec<(u64, Vec<u8>, Option<Vec<u8>>)>> {
        let client_id = self.client_id;
        let rows = guard::query(
            "SELECT id, secret_sealed, previous_sealed FROM webhooks WHERE client_id = ?",
        )?
        .bind(client_id.get())
        .fetch_all(self.pool.get().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("secret_sealed")?,
                    r.try_get("previous_sealed")?,
                ))
            })
            .collect()
    }

    /// Replaces sealed secrets (a re-seal under a new key) while they are still `old`.
    pub async fn replace_sealed(
        &self,
        id: u64,
        current: (&[u8], &[u8]),
        previous: Option<(&[u8], &[u8])>,
    ) -> Result<bool> {
        let client_id = self.client_id;
        let done = guard::query(
            "UPDATE webhooks SET secret_sealed = ?, previous_sealed = ? \
             WHERE client_id = ? AND id = ? AND secret_sealed = ? \
             AND (previous_sealed <=> ?)",
        )?
        .bind(current.1)
        .bind(previous.map(|p| p.1))
        .bind(client_id.get())
        .bind(id)
        .bind(current.0)
        .bind(previous.map(|p| p.0))
        .execute(self.pool.get().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Disables an enabled endpoint with the reason; false when it was not enabled.
    pub async fn disable(&self, id: u64, reason: &str) -> Result<bool> {
        let client_id = self.client_id;
        let mut tx = self.pool.get().await?.begin().await?;
        let done = guard::query(
            "UPDATE webhooks SET enabled = FALSE, disabled_reason = ? \
             WHERE client_id = ? AND id = ? AND enabled = TRUE",
        )?
        .bind(reason)
        .bind(client_id.get())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        bump_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Notes a failed attempt; since when the endpoint has been failing.
    pub async fn failed(&self, id: u64) -> Result<Option<DateTime<Utc>>> {
        let client_id = self.client_id;
        guard::query(
            "UPDATE webhooks SET failing_since = COALESCE(failing_since, NOW(6)) \
             WHERE client_id = ? AND id = ?",
        )?
        .bind(client_id.get())
        .bind(id)
        .execute(self.pool.get().await?)
        .await?;
        Ok(guard::query_scalar(
            "SELECT failing_since FROM webhooks WHERE client_id = ? AND id = ?",
        )?
        .bind(client_id.get())
        .bind(id)
        .fetch_optional(self.pool.get().await?)
        .await?
        .flatten())
    }

    /// Notes a delivered attempt: the endpoint is no longer failing.
    pub async fn answered(&self, id: u64) -> Result<()> {
        let client_id = self.client_id;
        guard::query(
            "UPDATE webhooks SET failing_since = NULL \
             WHERE client_id = ? AND id = ? AND failing_since IS NOT NULL",
        )?
        .bind(client_id.get())
        .bind(id)
        .execute(self.pool.get().await?)
        .await?;
        Ok(())
    }
}

fn webhook_from_row(row: &sqlx::mysql::MySqlRow) -> Result<Webhook> {
    let events: String = row.try_get("events")?;
    Ok(Webhook {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        events: EventFilter::from_column(&events),
        description: row.try_get("description")?,
        include_text: row.try_get("include_text")?,
        channel_account_id: row.try_get("channel_account_id")?,
        enabled: row.try_get("enabled")?,
        disabled_reason: row.try_get("disabled_reason")?,
        failing_since: row.try_get("failing_since")?,
        previous_secret_until: row.try_get("previous_until")?,
        created_at: row.try_get("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_read_their_words_and_callbacks_want_only_api_replies() {
        let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            EventFilter::parse(&words(&["*", "x"])),
            Ok(EventFilter::All)
        );
        assert_eq!(
            EventFilter::parse(&words(&["message.sent"])),
            Err("message.sent".into())
        );
        let only = EventFilter::parse(&words(&["message.replied", "message.replied"]))
            .expect("known types");
        assert_eq!(only.words(), vec!["message.replied".to_owned()]);
        assert_eq!(EventFilter::from_column(&only.column()), only);
        let callback = WebhookSubscription {
            id: 1,
            events: EventFilter::All,
            callback: true,
        };
        assert!(callback.wants(EventType::MessageReplied, Some(Channel::Api)));
        assert!(!callback.wants(EventType::MessageReplied, Some(Channel::Widget)));
        assert!(!callback.wants(EventType::MessageReceived, Some(Channel::Api)));
    }
}
