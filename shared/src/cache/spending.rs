//! A tenant's spending, shared by every replica without a database round trip per turn:
//! what its month cost (micro-units) and the LLM tokens its day spent, two Redis
//! counters keyed by the tenant's own month and day (its timezone). A counter that is
//! absent (a new month or day, a restarted Redis, a budget just set) is rebuilt from
//! `usage_daily`, the truth, and only set if still absent; a turn adds to counters that
//! exist and leaves absent ones to the next rebuild, which counts it from the database.
//! Flags make each month's budget events happen once.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use deadpool_redis::redis;

use super::{Cache, redis_error};
use crate::error::Result;
use crate::ids::ClientId;

/// How long a month's or a day's counters outlive it (they are keyed by it, so this only
/// bounds what Redis keeps).
const COUNTER_TTL_S: u64 = 40 * 24 * 3600;

/// Adds to the counters that exist (an absent one stays absent): `KEYS` month spend,
/// day tokens; `ARGV` micro-units, tokens. Returns the new values, -1 for absent.
const ADD: &str = r"
local out = {}
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    out[i] = redis.call('INCRBY', KEYS[i], ARGV[i])
  else
    out[i] = -1
  end
end
return out
";

static ADD_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(ADD));

/// The tenant's month and day at a moment, in its timezone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendPeriod {
    /// `YYYY-MM`.
    pub month: String,
    pub month_first: NaiveDate,
    pub month_last: NaiveDate,
    pub day: NaiveDate,
    /// When the tenant's next day starts.
    pub next_day: DateTime<Utc>,
}

impl SpendPeriod {
    /// The period `now` falls in for a tenant in `timezone` (an IANA name; one this
    /// build does not know counts as UTC).
    pub fn at(timezone: &str, now: DateTime<Utc>) -> Self {
        let tz = timezone.parse::<chrono_tz::Tz>().unwrap_or(chrono_tz::UTC);
        let day = now.with_timezone(&tz).date_naive();
        let tomorrow = day
            .succ_opt()
            .unwrap_or(day)
            .and_time(chrono::NaiveTime::MIN);
        // The earliest instant the local date is tomorrow's (a midnight a clock change
        // skips is its first hour on).
        let next_day = tomorrow
            .and_local_timezone(tz)
            .earliest()
            .or_else(|| {
                (tomorrow + chrono::Duration::hours(1))
                    .and_local_timezone(tz)
                    .earliest()
            })
            .map_or(now + chrono::Duration::days(1), |t| t.with_timezone(&Utc));
        let month_first = day.with_day(1).unwrap_or(day);
        let next_month = month_first
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(month_first);
        Self {
            month: format!("{:04}-{:02}", day.year(), day.month()),
            month_first,
            month_last: next_month.pred_opt().unwrap_or(day),
            day,
            next_day,
        }
    }
}

/// The counters as read: `None` where absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub month_micros: Option<u64>,
    pub day_tokens: Option<u64>,
}

/// A budget event that happens once a month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetFlag {
    Warning,
    Exceeded,
}

impl Cache {
    /// The tenant's counters for `period`.
    pub async fn spent(&self, client_id: ClientId, period: &SpendPeriod) -> Result<Spent> {
        let keys = self.keys.tenant(client_id);
        let mut conn = self.connection();
        let (month, day): (Option<u64>, Option<u64>) = redis::cmd("MGET")
            .arg(keys.month_spend(&period.month))
            .arg(keys.day_tokens(&period.day.to_string()))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(Spent {
            month_micros: month,
            day_tokens: day,
        })
    }

    /// Sets counters rebuilt from the database, each only if still absent; returns them
    /// as they now are.
    pub async fn seed_spent(
        &self,
        client_id: ClientId,
        period: &SpendPeriod,
        month_micros: u64,
        day_tokens: u64,
    ) -> Result<Spent> {
        let keys = self.keys.tenant(client_id);
        let (month_key, day_key) = (
            keys.month_spend(&period.month),
            keys.day_tokens(&period.day.to_string()),
        );
        let mut conn = self.connection();
        let (month, day): (Option<u64>, Option<u64>) = redis::pipe()
            .cmd("SET")
            .arg(&month_key)
            .arg(month_micros)
            .arg("NX")
            .arg("EX")
            .arg(COUNTER_TTL_S)
            .ignore()
            .cmd("SET")
            .arg(&day_key)
            .arg(day_tokens)
            .arg("NX")
            .arg("EX")
            .arg(COUNTER_TTL_S)
            .ignore()
            .cmd("MGET")
            .arg(&month_key)
            .arg(&day_key)
            .query_async::<((Option<u64>, Option<u64>),)>(&mut conn)
            .await
            .map_err(redis_error)?
            .0;
        Ok(Spent {
            month_micros: month,
            day_tokens: day,
        })
    }

    /// Adds a turn's cost and tokens to the counters that exist; returns the new values.
    pub async fn add_spent(
        &self,
        client_id: ClientId,
        period: &SpendPeriod,
        micros: u64,
        tokens: u64,
    ) -> Result<Spent> {
        let keys = self.keys.tenant(client_id);
        let mut conn = self.connection();
        let (month, day): (i64, i64) = ADD_SCRIPT
            .key(keys.month_spend(&period.month))
            .key(keys.day_tokens(&period.day.to_string()))
            .arg(micros)
            .arg(tokens)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(Spent {
            month_micros: u64::try_from(month).ok(),
            day_tokens: u64::try_from(day).ok(),
        })
    }

    /// Raises the month's flag; true the first time (the event is due), false after.
    pub async fn raise_budget_flag(
        &self,
        client_id: ClientId,
        period: &SpendPeriod,
        flag: BudgetFlag,
    ) -> Result<bool> {
        let word = match flag {
            BudgetFlag::Warning => "warning",
            BudgetFlag::Exceeded => "exceeded",
        };
        let key = self.keys.tenant(client_id).budget_flag(&period.month, word);
        let mut conn = self.connection();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(COUNTER_TTL_S)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(set.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("a time")
    }

    #[test]
    fn the_month_follows_the_tenants_timezone() {
        // 23:30 UTC on the last of November is already December in Berlin (UTC+1)…
        let berlin = SpendPeriod::at("Europe/Berlin", at("2026-11-30T23:30:00Z"));
        assert_eq!(berlin.month, "2026-12");
        assert_eq!(berlin.day.to_string(), "2026-12-01");
        assert_eq!(berlin.month_first.to_string(), "2026-12-01");
        assert_eq!(berlin.month_last.to_string(), "2026-12-31");
        assert_eq!(berlin.next_day, at("2026-12-01T23:00:00Z"));
        // …still November in New York and in UTC.
        let new_york = SpendPeriod::at("America/New_York", at("2026-12-01T03:00:00Z"));
        assert_eq!(new_york.month, "2026-11");
        assert_eq!(new_york.month_last.to_string(), "2026-11-30");
        assert_eq!(
            SpendPeriod::at("UTC", at("2026-11-30T23:30:00Z")).month,
            "2026-11"
        );
        // A name this build does not know counts as UTC.
        assert_eq!(
            SpendPeriod::at("Mars/Olympus", at("2026-11-30T23:30:00Z")).month,
            "2026-11"
        );
        // February of a leap year.
        let feb = SpendPeriod::at("UTC", at("2028-02-10T12:00:00Z"));
        assert_eq!(feb.month_last.to_string(), "2028-02-29");
    }
}
