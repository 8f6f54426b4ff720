//! Usage metering: messages answered, tokens spent and tool calls made, per tenant and
//! day. A day is
//! kept in [`SHARDS`] rows per tenant (picked by conversation), so concurrent turns of one
//! tenant do not queue on one row's lock; reads sum them.

use chrono::NaiveDate;
use sqlx::Row;
use sqlx::mysql::MySqlPool;

use super::guard;
use crate::error::Result;
use crate::ids::ClientId;

/// Rows per tenant and day.
pub(in crate::db) const SHARDS: u64 = 16;

/// One day of a tenant's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDay {
    pub day: NaiveDate,
    pub messages: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Tool calls the tenant's turns made (built-in tools included).
    pub tool_calls: u64,
}

#[derive(Debug)]
pub struct Usage<'a> {
    pool: &'a MySqlPool,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

impl<'a> Usage<'a> {
    pub(super) fn new(pool: &'a MySqlPool, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }

    /// Days from `from` to `to`, inclusive, ascending (days without traffic are absent).
    pub async fn days(&self, from: NaiveDate, to: NaiveDate) -> Result<Vec<UsageDay>> {
        let client_id = self.client_id;
        let rows = guard::query(
            "SELECT day, CAST(SUM(messages) AS UNSIGNED) AS messages, \
             CAST(SUM(prompt_tokens) AS UNSIGNED) AS prompt_tokens, \
             CAST(SUM(completion_tokens) AS UNSIGNED) AS completion_tokens FROM usage_daily \
             WHERE client_id = ? AND day BETWEEN ? AND ? GROUP BY day ORDER BY day ASC",
        )?
        .bind(client_id.get())
        .bind(from)
        .bind(to)
        .fetch_all(self.pool)
        .await?;
        let mut days = std::collections::BTreeMap::new();
        for r in &rows {
            let day: NaiveDate = r.try_get("day")?;
            days.insert(
                day,
                UsageDay {
                    day,
                    messages: r.try_get("messages")?,
                    prompt_tokens: r.try_get("prompt_tokens")?,
                    completion_tokens: r.try_get("completion_tokens")?,
                    tool_calls: 0,
                },
            );
        }
        let calls = super::ToolCalls::new(self.pool, client_id)
            .per_day(from, to)
            .await?;
        for (day, calls) in calls {
            days.entry(day)
                .or_insert(UsageDay {
                    day,
                    messages: 0,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    tool_calls: 0,
                })
                .tool_calls = calls;
        }
        Ok(days.into_values().collect())
    }
}
