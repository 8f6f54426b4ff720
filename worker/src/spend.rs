//! What a tenant's turns cost and what its budget and plan allow, on every replica.
//!
//! Before a turn asks the model, [`gate`] reads the tenant's spending counters in Redis
//! (one round trip, only for a tenant with a `budget_monthly` or on a plan with
//! `tokens_per_day`): past the day's tokens the message waits like a rate-limited one;
//! past the month's budget the tenant's `budget_action` applies. After a reply is stored
//! (the database counts it in `usage_daily`, the truth), [`count`] adds its cost and
//! tokens to the counters and announces the month's `budget.warning` and
//! `budget.exceeded`, once each. The counters follow the tenant's timezone; an absent
//! one is rebuilt from `usage_daily` (see `shared::cache::spending`).

use std::time::Duration;

use chrono::Utc;
use shared::cache::{BudgetFlag, SpendPeriod, Spent};
use shared::db::{ReplyAccounting, TenantConfig};
use shared::webhooks::{EventType, NewEvent};

use crate::Ctx;
use crate::error::Result;

/// What the tenant's spending allows a turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Gate {
    /// The month's spending reached the budget: `budget_action` applies.
    pub over_budget: bool,
    /// The day's tokens are spent: wait this long (until the tenant's next day).
    pub tokens_wait: Option<Duration>,
}

/// Whether anything watches the tenant's spending (else no counter is read or kept).
fn watched(ctx: &Ctx, tenant: &TenantConfig) -> bool {
    tenant.config.budget.monthly.is_some()
        || ctx
            .plans
            .limits(tenant.client.plan)
            .tokens_per_day
            .is_some()
}

/// The tenant's month and day now.
pub(crate) fn period(tenant: &TenantConfig) -> SpendPeriod {
    SpendPeriod::at(&tenant.client.timezone, Utc::now())
}

/// What the tenant's spending allows the turn about to ask the model.
pub(crate) async fn gate(ctx: &Ctx, tenant: &TenantConfig) -> Result<Gate> {
    if !watched(ctx, tenant) {
        return Ok(Gate::default());
    }
    let client_id = tenant.client.id;
    let period = period(tenant);
    let mut spent = ctx.cache.spent(client_id, &period).await?;
    if spent.month_micros.is_none() || spent.day_tokens.is_none() {
        spent = rebuild(ctx, tenant, &period).await?;
    }
    let month = spent.month_micros.unwrap_or(0);
    let over_budget = tenant
        .config
        .budget
        .monthly_micros()
        .is_some_and(|budget| month >= budget);
    let tokens_wait = ctx
        .plans
        .limits(tenant.client.plan)
        .tokens_per_day
        .filter(|limit| spent.day_tokens.unwrap_or(0) >= *limit)
        .map(|_| {
            (period.next_day - Utc::now())
                .to_std()
                .unwrap_or_default()
                .max(Duration::from_secs(1))
        });
    Ok(Gate {
        over_budget,
        tokens_wait,
    })
}

/// Counters rebuilt from `usage_daily` (set only where still absent), and the month's
/// events announced if the rebuilt spending crossed a threshold.
async fn rebuild(ctx: &Ctx, tenant: &TenantConfig, period: &SpendPeriod) -> Result<Spent> {
    let (month_micros, day_tokens) = ctx
        .db
        .tenant(tenant.client.id)
        .usage()
        .spent(period)
        .await?;
    let spent = ctx
        .cache
        .seed_spent(tenant.client.id, period, month_micros, day_tokens)
        .await?;
    if let Some(month) = spent.month_micros {
        announce(ctx, tenant, period, month).await?;
    }
    Ok(spent)
}

/// Counts a stored reply's cost and tokens on the tenant's counters.
pub(crate) async fn count(
    ctx: &Ctx,
    tenant: &TenantConfig,
    accounting: &ReplyAccounting,
    tokens: u64,
) -> Result<()> {
    let micros = accounting.cost_micros.unwrap_or(0);
    if !watched(ctx, tenant) || (micros == 0 && tokens == 0) {
        return Ok(());
    }
    let period = period(tenant);
    let spent = ctx
        .cache
        .add_spent(tenant.client.id, &period, micros, tokens)
        .await?;
    if let Some(month) = spent.month_micros {
        announce(ctx, tenant, &period, month).await?;
    }
    Ok(())
}

/// Counts a cost outside a reply (a transcription): in `usage_daily`, then on the
/// counters.
pub(crate) async fn count_extra(
    ctx: &Ctx,
    tenant: &TenantConfig,
    shard: u64,
    micros: u64,
) -> Result<()> {
    let period = period(tenant);
    ctx.db
        .tenant(tenant.client.id)
        .usage()
        .add_cost(period.day, shard, micros)
        .await?;
    let accounting = ReplyAccounting {
        cost_micros: Some(micros),
        ..ReplyAccounting::default()
    };
    count(ctx, tenant, &accounting, 0).await
}

/// `budget.warning` and `budget.exceeded`, each once in the tenant's month, when
/// `month_micros` reached its threshold.
async fn announce(
    ctx: &Ctx,
    tenant: &TenantConfig,
    period: &SpendPeriod,
    month_micros: u64,
) -> Result<()> {
    let budget = &tenant.config.budget;
    let Some(budget_micros) = budget.monthly_micros() else {
        return Ok(());
    };
    let warning_micros = budget_micros / 100 * u64::from(budget.warning_pct)
        + budget_micros % 100 * u64::from(budget.warning_pct) / 100;
    for (flag, kind, threshold) in [
        (
            BudgetFlag::Warning,
            EventType::BudgetWarning,
            warning_micros,
        ),
        (
            BudgetFlag::Exceeded,
            EventType::BudgetExceeded,
            budget_micros,
        ),
    ] {
        if month_micros < threshold
            || !ctx
                .cache
                .raise_budget_flag(tenant.client.id, period, flag)
                .await?
        {
            continue;
        }
        tracing::info!(
            client_id = %tenant.client.id,
            month = period.month,
            event = kind.as_str(),
            "the tenant's month reached a budget threshold"
        );
        let event = NewEvent::about(kind, &period.month)
            .with("month", period.month.clone())
            .with("spent", micros_to_units(month_micros))
            .with("budget", micros_to_units(budget_micros))
            .with("warning_pct", budget.warning_pct)
            .with("budget_action", budget.action.as_str())
            .with(
                "currency",
                ctx.llm_settings
                    .currency(&ctx.speech_settings)
                    .unwrap_or_default(),
            );
        ctx.webhooks().emit(tenant.client.id, event).await?;
    }
    Ok(())
}

/// Micro-units as currency units (for people and events).
pub(crate) fn micros_to_units(micros: u64) -> f64 {
    micros as f64 / 1e6
}
