//! The Redis copy of a tenant's configuration ([`TenantConfig`]): its own serde type, so
//! the cache's format is written down here and nowhere else, and the data layer's rows
//! stay free of serialisation. Field names are those of the rows; an entry this build
//! cannot read is treated as absent and rebuilt from the database.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::db::{
    AgentMode, BudgetAction, BudgetPolicy, BuiltinTool, Client, ClientConfig, EventFilter,
    LlmCredential, TenantConfig, Tool, ToolAuthKind, ToolMethod, WebhookSubscription,
};
use crate::ids::ClientId;
use crate::tenant::{ClientStatus, PersonaTone, Plan};

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CachedTenant {
    client: CachedClient,
    config: CachedConfig,
    modes: Vec<CachedMode>,
    /// Absent from entries written before tools existed: read as absent, rebuilt.
    tools: Vec<CachedTool>,
    /// Absent from entries written before webhooks existed: read as absent, rebuilt.
    webhooks: Vec<CachedWebhook>,
    /// Absent from entries written before tenants' keys existed: read as absent, rebuilt.
    llm_credentials: Vec<CachedLlmCredential>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedLlmCredential {
    provider: String,
    /// Sealed: opened only by the worker that calls the provider.
    key_sealed: Vec<u8>,
    key_last4: String,
    base_url: Option<String>,
    organization: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedWebhook {
    id: u64,
    /// Event type names, or `*`.
    events: Vec<String>,
    callback: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedClient {
    id: ClientId,
    slug: String,
    name: String,
    timezone: String,
    locale: String,
    plan: Plan,
    status: ClientStatus,
    created_at: DateTime<Utc>,
    sessions_revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedConfig {
    persona_name: String,
    persona_tone: PersonaTone,
    persona_language: String,
    llm_model: String,
    llm_temperature: f64,
    /// Absent from entries written before the column existed: they are read as absent
    /// and rebuilt.
    llm_max_output_tokens: u32,
    max_context_turns: u32,
    rag_top_k: u32,
    human_handoff_phrase: Option<String>,
    handoff_message: String,
    config_version: u64,
    fallback_message: String,
    fallback_model: Option<String>,
    prompt_token_budget: Option<u32>,
    coalesce_window_ms: u32,
    /// Absent from entries written before the column existed: read as absent, rebuilt.
    whatsapp_typing_indicator: bool,
    /// Words (`handoff_to_human`); absent from older entries: read as absent, rebuilt.
    builtin_tools: Vec<String>,
    /// Absent from older entries: none.
    #[serde(default)]
    whatsapp_reengagement_template: Option<crate::envelope::Template>,
    /// Absent from entries written before the columns existed: read as absent, rebuilt.
    transcribe_audio: bool,
    llm_vision: bool,
    media_fallback_message: String,
    /// Absent from entries written before budgets existed: read as absent, rebuilt.
    budget_monthly: Option<f64>,
    budget_warning_pct: u8,
    budget_action: String,
    fallback_to_platform_key: bool,
    /// Absent from older entries: read as absent, rebuilt.
    redact_pii: bool,
    retention_days: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedMode {
    module_key: String,
    prompt_fragment: String,
    is_active: bool,
    priority: i32,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedTool {
    name: String,
    description: String,
    parameters: serde_json::Value,
    /// `GET` or `POST`.
    method: String,
    url: String,
    auth_kind: Option<String>,
    /// Sealed: opened only by the worker that calls the tool.
    auth_sealed: Option<Vec<u8>>,
    timeout_ms: u32,
    side_effects: bool,
    is_active: bool,
}

impl From<&TenantConfig> for CachedTenant {
    fn from(t: &TenantConfig) -> Self {
        let (c, k) = (&t.client, &t.config);
        Self {
            client: CachedClient {
                id: c.id,
                slug: c.slug.clone(),
                name: c.name.clone(),
                timezone: c.timezone.clone(),
                locale: c.locale.clone(),
                plan: c.plan,
                status: c.status,
                created_at: c.created_at,
                sessions_revoked_at: c.sessions_revoked_at,
            },
            config: CachedConfig {
                persona_name: k.persona_name.clone(),
                persona_tone: k.persona_tone,
                persona_language: k.persona_language.clone(),
                llm_model: k.llm_model.clone(),
                llm_temperature: k.llm_temperature,
                llm_max_output_tokens: k.llm_max_output_tokens,
                max_context_turns: k.max_context_turns,
                rag_top_k: k.rag_top_k,
                human_handoff_phrase: k.human_handoff_phrase.clone(),
                handoff_message: k.handoff_message.clone(),
                config_version: k.config_version,
                fallback_message: k.fallback_message.clone(),
                fallback_model: k.fallback_model.clone(),
                prompt_token_budget: k.prompt_token_budget,
                coalesce_window_ms: k.coalesce_window_ms,
                whatsapp_typing_indicator: k.whatsapp_typing_indicator,
                builtin_tools: k
                    .builtin_tools
                    .iter()
                    .map(|b| b.as_str().to_owned())
                    .collect(),
                whatsapp_reengagement_template: k.whatsapp_reengagement_template.clone(),
                transcribe_audio: k.transcribe_audio,
                llm_vision: k.llm_vision,
                media_fallback_message: k.media_fallback_message.clone(),
                budget_monthly: k.budget.monthly,
                budget_warning_pct: k.budget.warning_pct,
                budget_action: k.budget.action.as_str().to_owned(),
                fallback_to_platform_key: k.fallback_to_platform_key,
                redact_pii: k.redact_pii,
                retention_days: k.retention_days,
            },
            llm_credentials: t
                .llm_credentials
                .iter()
                .map(|c| CachedLlmCredential {
                    provider: c.provider.clone(),
                    key_sealed: c.key_sealed.clone(),
                    key_last4: c.key_last4.clone(),
                    base_url: c.base_url.clone(),
                    organization: c.organization.clone(),
                })
                .collect(),
            tools: t
                .tools
                .iter()
                .map(|x| CachedTool {
                    name: x.name.clone(),
                    description: x.description.clone(),
                    parameters: x.parameters.clone(),
                    method: x.method.as_str().to_owned(),
                    url: x.url.clone(),
                    auth_kind: x.auth_kind.map(|a| a.as_str().to_owned()),
                    auth_sealed: x.auth_sealed.clone(),
                    timeout_ms: x.timeout_ms,
                    side_effects: x.side_effects,
                    is_active: x.is_active,
                })
                .collect(),
            webhooks: t
                .webhooks
                .iter()
                .map(|w| CachedWebhook {
                    id: w.id,
                    events: w.events.words(),
                    callback: w.callback,
                })
                .collect(),
            modes: t
                .modes
                .iter()
                .map(|m| CachedMode {
                    module_key: m.module_key.clone(),
                    prompt_fragment: m.prompt_fragment.clone(),
                    is_active: m.is_active,
                    priority: m.priority,
                })
                .collect(),
        }
    }
}

impl TryFrom<CachedTenant> for TenantConfig {
    type Error = crate::db::UnknownWord;

    /// Fails on a word this build does not know (an entry of a newer build): the entry
    /// is treated as absent.
    fn try_from(t: CachedTenant) -> Result<Self, Self::Error> {
        let (c, k) = (t.client, t.config);
        let builtin_tools = k
            .builtin_tools
            .iter()
            .map(|w| w.parse::<BuiltinTool>())
            .collect::<Result<Vec<_>, _>>()?;
        let tools = t
            .tools
            .into_iter()
            .map(|x| {
                Ok(Tool {
                    name: x.name,
                    description: x.description,
                    parameters: x.parameters,
                    method: x.method.parse::<ToolMethod>()?,
                    url: x.url,
                    auth_kind: x.auth_kind.map(|a| a.parse::<ToolAuthKind>()).transpose()?,
                    auth_sealed: x.auth_sealed,
                    timeout_ms: x.timeout_ms,
                    side_effects: x.side_effects,
                    is_active: x.is_active,
                })
            })
            .collect::<Result<Vec<_>, Self::Error>>()?;
        let webhooks = t
            .webhooks
            .into_iter()
            .map(|w| {
                Ok(WebhookSubscription {
                    id: w.id,
                    events: EventFilter::parse(&w.events).map_err(|word| {
                        crate::db::UnknownWord {
                            set: "webhook event type",
                            word,
                        }
                    })?,
                    callback: w.callback,
                })
            })
            .collect::<Result<Vec<_>, Self::Error>>()?;
        Ok(Self {
            client: Client {
                id: c.id,
                slug: c.slug,
                name: c.name,
                timezone: c.timezone,
                locale: c.locale,
                plan: c.plan,
                status: c.status,
                created_at: c.created_at,
                sessions_revoked_at: c.sessions_revoked_at,
            },
            config: ClientConfig {
                persona_name: k.persona_name,
                persona_tone: k.persona_tone,
                persona_language: k.persona_language,
                llm_model: k.llm_model,
                llm_temperature: k.llm_temperature,
                llm_max_output_tokens: k.llm_max_output_tokens,
                max_context_turns: k.max_context_turns,
                rag_top_k: k.rag_top_k,
                human_handoff_phrase: k.human_handoff_phrase,
                handoff_message: k.handoff_message,
                config_version: k.config_version,
                fallback_message: k.fallback_message,
                fallback_model: k.fallback_model,
                prompt_token_budget: k.prompt_token_budget,
                coalesce_window_ms: k.coalesce_window_ms,
                whatsapp_typing_indicator: k.whatsapp_typing_indicator,
                builtin_tools,
                whatsapp_reengagement_template: k.whatsapp_reengagement_template,
                transcribe_audio: k.transcribe_audio,
                llm_vision: k.llm_vision,
                media_fallback_message: k.media_fallback_message,
                budget: BudgetPolicy {
                    monthly: k.budget_monthly,
                    warning_pct: k.budget_warning_pct,
                    action: k.budget_action.parse::<BudgetAction>()?,
                },
                fallback_to_platform_key: k.fallback_to_platform_key,
                redact_pii: k.redact_pii,
                retention_days: k.retention_days,
            },
            tools,
            webhooks,
            llm_credentials: t
                .llm_credentials
                .into_iter()
                .map(|c| LlmCredential {
                    provider: c.provider,
                    key_sealed: c.key_sealed,
                    key_last4: c.key_last4,
                    base_url: c.base_url,
                    organization: c.organization,
                })
                .collect(),
            modes: t
                .modes
                .into_iter()
                .map(|m| AgentMode {
                    module_key: m.module_key,
                    prompt_fragment: m.prompt_fragment,
                    is_active: m.is_active,
                    priority: m.priority,
                })
                .collect(),
        })
    }
}
