//! `chatfleet usage --client <id> [--month YYYY-MM]`: a tenant's month, day by day —
//! messages, tokens, tool calls and cost — with its total and budget, straight from the
//! database (`usage_daily`, days of the tenant's timezone).

use anyhow::{Context, bail};
use chrono::NaiveDate;
use clap::Args;
use shared::cache::SpendPeriod;
use shared::db::{Db, UsageDay};
use shared::ids::ClientId;
use shared::settings::Settings;

#[derive(Debug, Args)]
pub(crate) struct UsageArgs {
    /// Tenant id.
    #[arg(long)]
    client: u64,
    /// The month, YYYY-MM (default: the tenant's current month).
    #[arg(long)]
    month: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(settings: &Settings, args: UsageArgs) -> anyhow::Result<()> {
    let db = Db::connect(&settings.database).await?;
    let client = db
        .clients()
        .get(ClientId::new(args.client))
        .await?
        .with_context(|| format!("there is no tenant {}", args.client))?;
    let now = SpendPeriod::at(&client.timezone, chrono::Utc::now());
    let (first, last) = match &args.month {
        None => (now.month_first, now.month_last),
        Some(month) => month_bounds(month)?,
    };
    let days = db.tenant(client.id).usage().days(first, last).await?;
    let budget = db
        .tenant(client.id)
        .configs()
        .get()
        .await?
        .map(|c| c.budget)
        .unwrap_or_default();
    let currency = settings.llm.currency(&settings.speech);
    let total = UsageDay::total(first, &days);
    if args.json {
        let day = |d: &UsageDay| {
            serde_json::json!({
                "day": d.day, "messages": d.messages, "prompt_tokens": d.prompt_tokens,
                "completion_tokens": d.completion_tokens, "tool_calls": d.tool_calls,
                "cost": d.cost_micros as f64 / 1e6, "unpriced_replies": d.unpriced_replies,
            })
        };
        let out = serde_json::json!({
            "client_id": client.id.get(), "timezone": client.timezone,
            "month": first.format("%Y-%m").to_string(), "currency": currency,
            "days": days.iter().map(day).collect::<Vec<_>>(), "total": day(&total),
            "budget_monthly": budget.monthly,
        });
        println!("{out}");
        return Ok(());
    }
    let currency = currency.unwrap_or("(no prices set)");
    println!(
        "tenant {} ({}), {} in {}; costs in {currency}",
        client.id,
        client.slug,
        first.format("%Y-%m"),
        client.timezone
    );
    println!(
        "{:<10} {:>9} {:>12} {:>12} {:>6} {:>14} {:>9}",
        "day", "messages", "prompt_tok", "complete_tok", "tools", "cost", "unpriced"
    );
    for d in days.iter().chain(std::iter::once(&total)) {
        let label = if std::ptr::eq(d, &total) {
            "total".to_owned()
        } else {
            d.day.to_string()
        };
        println!(
            "{label:<10} {:>9} {:>12} {:>12} {:>6} {:>14.6} {:>9}",
            d.messages,
            d.prompt_tokens,
            d.completion_tokens,
            d.tool_calls,
            d.cost_micros as f64 / 1e6,
            d.unpriced_replies
        );
    }
    match budget.monthly_micros() {
        Some(b) => println!(
            "budget {:.6}: {:.1}% spent{}",
            b as f64 / 1e6,
            if b == 0 {
                100.0
            } else {
                total.cost_micros as f64 * 100.0 / b as f64
            },
            if total.cost_micros >= b {
                format!(" (over: budget_action {})", budget.action.as_str())
            } else {
                String::new()
            }
        ),
        None => println!("no budget"),
    }
    if total.unpriced_replies > 0 {
        println!(
            "{} replies came from models without a price (llm.prices): their cost is not counted above",
            total.unpriced_replies
        );
    }
    Ok(())
}

/// The first and last day of `YYYY-MM`.
fn month_bounds(month: &str) -> anyhow::Result<(NaiveDate, NaiveDate)> {
    let Ok(first) = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d") else {
        bail!("--month must be YYYY-MM, got {month:?}");
    };
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .context("--month is out of range")?;
    Ok((first, next.pred_opt().unwrap_or(first)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_runs_from_its_first_to_its_last_day() {
        let (first, last) = month_bounds("2028-02").expect("a month");
        assert_eq!(
            (first.to_string(), last.to_string()),
            ("2028-02-01".into(), "2028-02-29".into())
        );
        assert!(month_bounds("2028-13").is_err());
        assert!(month_bounds("February").is_err());
    }
}
