//! A tenant's webhook endpoints (`/admin/v1/clients/{id}/webhooks`) and their attempts,
//! as the admin API shows and changes them. A signing secret comes out once: in the
//! response that created or rotated it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::db::{Attempt, Webhook};
use uuid::Uuid;

/// A new endpoint.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookIn {
    /// `https://` (or `http://` where the operator allows it), a public host.
    #[schema(example = "https://crm.example/hooks/chatfleet")]
    pub url: String,
    /// Event types (`message.replied`, `conversation.handoff`…) or `"*"` for all.
    #[schema(example = json!(["conversation.handoff", "message.replied"]))]
    pub events: Vec<String>,
    pub description: Option<String>,
    /// Whether events carry message texts (default true).
    pub include_text: Option<bool>,
}

/// Any subset of an endpoint's fields; `enabled: true` re-enables a disabled one.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookPatchIn {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub include_text: Option<bool>,
    pub enabled: Option<bool>,
}

/// An endpoint as the API shows it (never its secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct WebhookOut {
    pub id: u64,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub include_text: bool,
    /// Set when this is an API channel account's callback (`settings.callback_url`):
    /// change it through the account.
    pub channel_account_id: Option<u64>,
    pub enabled: bool,
    /// Why it was disabled (`410 Gone`, failing for too long).
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed.
    pub failing_since: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation signs too.
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<Webhook> for WebhookOut {
    fn from(w: Webhook) -> Self {
        Self {
            id: w.id,
            url: w.url,
            events: w.events.words(),
            description: w.description,
            include_text: w.include_text,
            channel_account_id: w.channel_account_id,
            enabled: w.enabled,
            disabled_reason: w.disabled_reason,
            failing_since: w.failing_since,
            previous_secret_until: w.previous_secret_until,
            created_at: w.created_at,
        }
    }
}

/// A created endpoint with its signing secret, shown here and never again.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookOut,
    /// `whsec_` and the base64 of the key (Standard Webhooks).
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

/// A rotated secret: the new one signs from now on; the old one signs beside it until
/// `previous_secret_until`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RotatedSecret {
    pub id: u64,
    pub secret: String,
    pub previous_secret_until: DateTime<Utc>,
}

/// One delivery attempt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AttemptOut {
    /// The attempt's id (for `after`).
    pub id: u64,
    /// The event's id: the `webhook-id` header, the same on every attempt.
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub response_status: Option<u16>,
    pub duration_ms: u32,
    /// Why it failed (timeout, refused address, status…).
    pub error: Option<String>,
}

impl From<Attempt> for AttemptOut {
    fn from(a: Attempt) -> Self {
        Self {
            id: a.id,
            event_id: a.event_id,
            event_type: a.event_type,
            attempt: a.attempt,
            at: a.at,
            response_status: a.response_status,
            duration_ms: a.duration_ms,
            error: a.error,
        }
    }
}

/// A page of attempts, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AttemptPage {
    pub attempts: Vec<AttemptOut>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_after: Option<u64>,
}
