//! Tenants (`/admin/v1/clients`) as the admin API shows and changes them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::db::{Client, ClientPatch};
use shared::tenant;

/// The plan a tenant pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Plan {
    Starter,
    Growth,
    Enterprise,
}

impl From<tenant::Plan> for Plan {
    fn from(plan: tenant::Plan) -> Self {
        match plan {
            tenant::Plan::Starter => Self::Starter,
            tenant::Plan::Growth => Self::Growth,
            tenant::Plan::Enterprise => Self::Enterprise,
        }
    }
}

impl From<Plan> for tenant::Plan {
    fn from(plan: Plan) -> Self {
        match plan {
            Plan::Starter => Self::Starter,
            Plan::Growth => Self::Growth,
            Plan::Enterprise => Self::Enterprise,
        }
    }
}

/// Whether a tenant's bot speaks: suspended and cancelled tenants get no LLM calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ClientStatus {
    Active,
    Suspended,
    Cancelled,
}

impl From<tenant::ClientStatus> for ClientStatus {
    fn from(status: tenant::ClientStatus) -> Self {
        match status {
            tenant::ClientStatus::Active => Self::Active,
            tenant::ClientStatus::Suspended => Self::Suspended,
            tenant::ClientStatus::Cancelled => Self::Cancelled,
        }
    }
}

impl From<ClientStatus> for tenant::ClientStatus {
    fn from(status: ClientStatus) -> Self {
        match status {
            ClientStatus::Active => Self::Active,
            ClientStatus::Suspended => Self::Suspended,
            ClientStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// A tenant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ClientOut {
    pub id: u64,
    pub slug: String,
    pub name: String,
    pub timezone: String,
    pub locale: String,
    pub plan: Plan,
    pub status: ClientStatus,
    pub created_at: DateTime<Utc>,
}

impl From<Client> for ClientOut {
    fn from(c: Client) -> Self {
        Self {
            id: c.id.get(),
            slug: c.slug,
            name: c.name,
            timezone: c.timezone,
            locale: c.locale,
            plan: c.plan.into(),
            status: c.status.into(),
            created_at: c.created_at,
        }
    }
}

/// A partial update of a tenant: only the fields given change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientPatchIn {
    pub name: Option<String>,
    pub timezone: Option<String>,
    pub locale: Option<String>,
    pub plan: Option<Plan>,
    pub status: Option<ClientStatus>,
}

impl From<ClientPatchIn> for ClientPatch {
    fn from(p: ClientPatchIn) -> Self {
        Self {
            name: p.name,
            timezone: p.timezone,
            locale: p.locale,
            plan: p.plan.map(Into::into),
            status: p.status.map(Into::into),
        }
    }
}
