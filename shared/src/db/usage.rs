//! Usage metering: messages answered, tokens spent and tool calls made, per tenant and
//! day. A day is
//! kept in [`SHARDS`] rows per tenant (picked by conversation), so concurrent turns of one
//! tenant do not queue on one row's lock; reads sum them.

use chrono::NaiveDate;
use sqlx::Row;

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
    /// What the day's priced LLM calls and transcriptions cost, in micro-units.
    pub cost_micros: u64,
    /// Replies whose model had no price (their cost is unknown, not zero).
    pub unpriced_replies: u64,
}

impl UsageDay {
    /// The days summed (dated `day`).
    pub fn total<'d>(day: NaiveDate, days: impl IntoIterator<Item = &'d UsageDay>) -> Self {
        days.into_iter().fold(Self::empty(day), |mut sum, d| {
            sum.messages += d.messages;
            sum.prompt_tokens += d.prompt_tokens;
            sum.completion_tokens += d.completion_tokens;
            sum.tool_calls += d.tool_calls;
            sum.cost_micros += d.cost_micros;
            sum.unpriced_replies += d.unpriced_replies;
            sum
        })
    }

    /// A day without traffic.
    pub fn empty(day: NaiveDate) -> Self {
        Self {
            day,
            messages: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            tool_calls: 0,
            cost_micros: 0,
            unpriced_replies: 0,
        }
    }
}

#[derive(Debug)]
pub struct Usage<'a> {
    pool: crate::db::Placed<'a>,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

impl<'a> Usage<'a> {
    pub(super) fn new(pool: crate::db::Placed<'a>, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }

    /// Days from `from` to `to`, inclusive, ascending (days without traffic are absent).
    pub async fn days(&self, from: NaiveDate, to: NaiveDate) -> Result<Vec<UsageDay>> {
        let client_id = self.client_id;
        let rows = guard::query(
            "SELECT day, CAST(SUM(messages) AS UNSIGNED) AS messages, \
             CAST(SUM(prompt_tokens) AS UNSIGNED) AS prompt_tokens, \
             CAST(SUM(completion_tokens) AS UNSIGNED) AS completion_tokens, \
             CAST(SUM(cost_micros) AS UNSIGNED) AS cost_micros, \
             CAST(SUM(unpriced_replies) AS UNSIGNED) AS unpriced_replies FROM usage_daily \
             WHERE client_id = ? AND day BETWEEN ? AND ? GROUP BY day ORDER BY day ASC",
        )?
        .bind(client_id.get())
        .bind(from)
        .bind(to)
        .fetch_all(self.pool.get().await?)
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
                    cost_micros: r.try_get("cost_micros")?,
                    unpriced_replies: r.try_get("unpriced_replies")?,
                },
            );
        }
        let calls = super::ToolCalls::new(self.pool, client_id)
            .per_day(from, to)
            .await?;
        for (day, calls) in calls {
            days.entry(day)
                .or_insert_with(|| UsageDay::empty(day))
                .tool_calls = calls;
        }
        Ok(days.into_values().collect())
    }

    /// What the tenant's month (the days of `period`) cost in micro-units, and the LLM
    /// tokens its day spent: how the spending counters are rebuilt, in one statement.
    pub async fn spent(&self, period: &crate::cache::SpendPeriod) -> Result<(u64, u64)> {
        let client_id = self.client_id;
        let row = guard::query(
            "SELECT CAST(IFNULL(SUM(cost_micros), 0) AS UNSIGNED) AS cost_micros, \
             CAST(IFNULL(SUM(IF(day = ?, prompt_tokens + completion_tokens, 0)), 0) AS UNSIGNED) \
             AS tokens FROM usage_daily WHERE client_id = ? AND day BETWEEN ? AND ?",
        )?
        .bind(period.day)
        .bind(client_id.get())
        .bind(period.month_first)
        .bind(period.month_last)
        .fetch_one(self.pool.get().await?)
        .await?;
        Ok((row.try_get("cost_micros")?, row.try_get("tokens")?))
    }

    /// Counts a cost outside a reply (a voice note's transcription) on `day`.
    pub async fn add_cost(&self, day: NaiveDate, shard: u64, cost_micros: u64) -> Result<()> {
        let client_id = self.client_id;
        guard::query(
            "INSERT INTO usage_daily (client_id, day, shard, cost_micros) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE cost_micros = cost_micros + VALUES(cost_micros)",
        )?
        .bind(client_id.get())
        .bind(day)
        .bind(shard % SHARDS)
        .bind(cost_micros)
        .execute(self.pool.get().await?)
        .await?;
        Ok(())
    }
}
