//! A tenant's agent modes (`/admin/v1/clients/{id}/modes`) as the admin API shows,
//! creates and changes them. What a value may be is checked by the data layer.

use serde::{Deserialize, Serialize};
use shared::db::{AgentMode, ModePatch};

/// An agent mode: a prompt fragment the tenant can switch on and off.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AgentModeOut {
    pub module_key: String,
    pub prompt_fragment: String,
    pub is_active: bool,
    /// Lower numbers come first in the prompt and are dropped last.
    pub priority: i32,
}

impl From<AgentMode> for AgentModeOut {
    fn from(m: AgentMode) -> Self {
        Self {
            module_key: m.module_key,
            prompt_fragment: m.prompt_fragment,
            is_active: m.is_active,
            priority: m.priority,
        }
    }
}

/// A new agent mode.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentModeIn {
    pub module_key: String,
    pub prompt_fragment: String,
    pub is_active: bool,
    pub priority: i32,
}

impl From<AgentModeIn> for AgentMode {
    fn from(m: AgentModeIn) -> Self {
        Self {
            module_key: m.module_key,
            prompt_fragment: m.prompt_fragment,
            is_active: m.is_active,
            priority: m.priority,
        }
    }
}

/// A partial update of an agent mode.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModePatchIn {
    pub prompt_fragment: Option<String>,
    pub is_active: Option<bool>,
    pub priority: Option<i32>,
}

impl From<ModePatchIn> for ModePatch {
    fn from(p: ModePatchIn) -> Self {
        Self {
            prompt_fragment: p.prompt_fragment,
            is_active: p.is_active,
            priority: p.priority,
        }
    }
}
