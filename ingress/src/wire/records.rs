//! The rest of what the admin API lists: conversations, channel accounts, API keys,
//! knowledge documents and usage.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use shared::db::{ApiKeyInfo, ChannelAccount, ConversationSummary, KnowledgeDocument, UsageDay};

/// A conversation, without its messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ConversationOut {
    pub id: u64,
    #[schema(example = "api")]
    pub channel: &'static str,
    pub external_id: String,
    /// `open` or `closed`.
    #[schema(example = "open")]
    pub status: String,
    /// `bot` or `human`: who answers.
    #[schema(example = "bot")]
    pub mode: &'static str,
    pub created_at: DateTime<Utc>,
    pub last_message_at: Option<DateTime<Utc>>,
}

impl From<ConversationSummary> for ConversationOut {
    fn from(c: ConversationSummary) -> Self {
        Self {
            id: c.id.get(),
            channel: c.channel.as_str(),
            external_id: c.external_id,
            status: c.status,
            mode: c.mode.as_str(),
            created_at: c.created_at,
            last_message_at: c.last_message_at,
        }
    }
}

/// A channel account: settings yes, credentials never.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ChannelAccountOut {
    pub id: u64,
    #[schema(example = "whatsapp")]
    pub channel: &'static str,
    pub external_account_id: String,
    /// The channel's settings (`allowed_origins`, `callback_url`…).
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    /// Whether credentials are stored (their content is never shown).
    pub has_credentials: bool,
    pub created_at: DateTime<Utc>,
    /// An API account's callback signing secret (`whsec_…`): shown once, in the response
    /// that set `settings.callback_url` first. Rotate it through the callback's webhook
    /// (`POST …/webhooks/{webhook_id}/rotate-secret`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_secret: Option<String>,
}

impl From<ChannelAccount> for ChannelAccountOut {
    fn from(a: ChannelAccount) -> Self {
        Self {
            id: a.id,
            channel: a.channel.as_str(),
            external_account_id: a.external_account_id,
            settings: a.settings,
            has_credentials: a.has_credentials,
            created_at: a.created_at,
            callback_secret: None,
        }
    }
}

/// An API key as listed (never the secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ApiKeyOut {
    pub id: u64,
    /// The key's public start, to recognise it by.
    pub prefix: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyInfo> for ApiKeyOut {
    fn from(k: ApiKeyInfo) -> Self {
        Self {
            id: k.id,
            prefix: k.prefix,
            name: k.name,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// A knowledge document (its chunks live in the tenant's vector collection).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct KnowledgeDocumentOut {
    pub id: u64,
    pub title: String,
    pub source: Option<String>,
    /// SHA-256 of the content, hex.
    pub content_hash: String,
    pub chunk_count: u32,
    pub created_at: DateTime<Utc>,
}

impl From<KnowledgeDocument> for KnowledgeDocumentOut {
    fn from(d: KnowledgeDocument) -> Self {
        Self {
            id: d.id,
            title: d.title,
            source: d.source,
            content_hash: d.content_hash,
            chunk_count: d.chunk_count,
            created_at: d.created_at,
        }
    }
}

/// One day of a tenant's usage.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UsageDayOut {
    #[schema(value_type = String, example = "2026-11-27")]
    pub day: NaiveDate,
    pub messages: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Tool calls the tenant's turns made.
    pub tool_calls: u64,
    /// What the day's priced LLM calls and transcriptions cost, in `currency`.
    pub cost: f64,
    /// Replies whose model had no price: their cost is unknown, not zero (`cost` leaves
    /// them out).
    pub unpriced_replies: u64,
}

impl From<UsageDay> for UsageDayOut {
    fn from(u: UsageDay) -> Self {
        Self {
            day: u.day,
            messages: u.messages,
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            tool_calls: u.tool_calls,
            cost: u.cost_micros as f64 / 1e6,
            unpriced_replies: u.unpriced_replies,
        }
    }
}

/// A tenant's usage over a range of its days, and its month against its budget.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UsageOut {
    /// The currency of every cost (null: the platform prices nothing).
    #[schema(example = "USD")]
    pub currency: Option<String>,
    /// Days with traffic, ascending (days of the client's timezone; before budgets
    /// existed, of UTC).
    pub days: Vec<UsageDayOut>,
    /// The days summed.
    pub total: UsageTotalOut,
    /// The client's current month.
    pub month: UsageMonthOut,
}

/// Days of usage summed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UsageTotalOut {
    pub messages: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub tool_calls: u64,
    pub cost: f64,
    pub unpriced_replies: u64,
}

impl From<UsageDay> for UsageTotalOut {
    fn from(u: UsageDay) -> Self {
        Self {
            messages: u.messages,
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            tool_calls: u.tool_calls,
            cost: u.cost_micros as f64 / 1e6,
            unpriced_replies: u.unpriced_replies,
        }
    }
}

/// The client's month (its timezone) against its budget.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UsageMonthOut {
    #[schema(example = "2026-12")]
    pub month: String,
    /// What the month cost so far, in `currency`.
    pub spent: f64,
    pub budget_monthly: Option<f64>,
    /// The month's spending reached the budget: `budget_action` applies.
    pub over_budget: bool,
}
