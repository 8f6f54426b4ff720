//! A tenant's behaviour: its `client_configs` row and its `agent_modes` (written in
//! [`super::agent_modes`]). Everything that makes one client's bot differ from another's
//! is read from here, never from code. Every write bumps `config_version`, which each
//! reply records.

use sqlx::Row;

use super::Client;
use super::agent_modes::{AgentMode, mode_from_row};
use super::guard;
use super::text_column::text_column;
use super::tools::{BuiltinTool, Tool};
use crate::envelope::Template;
use crate::error::{Error, Result};
use crate::ids::ClientId;
use crate::tenant::PersonaTone;

/// The `client_configs` row, with the column names as field names.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    pub persona_name: String,
    pub persona_tone: PersonaTone,
    pub persona_language: String,
    pub llm_model: String,
    pub llm_temperature: f64,
    /// The most tokens one answer may have (sent to the provider with every call).
    pub llm_max_output_tokens: u32,
    pub max_context_turns: u32,
    pub rag_top_k: u32,
    pub human_handoff_phrase: Option<String>,
    pub handoff_message: String,
    pub config_version: u64,
    pub fallback_message: String,
    pub fallback_model: Option<String>,
    pub prompt_token_budget: Option<u32>,
    pub coalesce_window_ms: u32,
    /// WhatsApp users see their message read and a typing indicator while a turn runs.
    pub whatsapp_typing_indicator: bool,
    /// The built-in tools the model is offered, in order.
    pub builtin_tools: Vec<BuiltinTool>,
    /// Sent (once per closed window) when a WhatsApp reply waits for the user to write
    /// again; `None`: the reply just waits.
    pub whatsapp_reengagement_template: Option<Template>,
    /// WhatsApp voice notes and audio are transcribed and read as the user's words.
    pub transcribe_audio: bool,
    /// The model accepts images: WhatsApp images go to it (else their caption and a note).
    pub llm_vision: bool,
    /// What the bot is told when a file the user sent could not be read.
    pub media_fallback_message: String,
    /// What the tenant's month may cost, and what happens past it.
    pub budget: BudgetPolicy,
    /// When the tenant's own key is refused, the platform's key answers instead (else the
    /// turn takes the tenant's fallback path).
    pub fallback_to_platform_key: bool,
    /// E-mail addresses, phone numbers, card numbers and IBANs reach the LLM as
    /// placeholders, restored in the reply.
    pub redact_pii: bool,
    /// Conversations whose last message is older than this many days are erased
    /// (`None`: kept).
    pub retention_days: Option<u32>,
}

/// A tenant's monthly budget (`budget_monthly`, `budget_warning_pct`, `budget_action`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetPolicy {
    /// In the prices' currency; `None`: no budget.
    pub monthly: Option<f64>,
    /// `budget.warning` once the month's spending reaches this share of the budget.
    pub warning_pct: u8,
    pub action: BudgetAction,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        Self {
            monthly: None,
            warning_pct: 80,
            action: BudgetAction::None,
        }
    }
}

impl BudgetPolicy {
    /// The budget in micro-units, if there is one.
    pub fn monthly_micros(&self) -> Option<u64> {
        self.monthly.map(|b| (b * 1e6).round().max(0.0) as u64)
    }
}

/// What a turn does once the tenant's month has spent its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetAction {
    /// The tenant's `fallback_model` answers.
    FallbackModel,
    /// The user gets the tenant's `fallback_message`, without an LLM call.
    FallbackMessage,
    /// The conversation goes to a human (with the handoff message).
    Handoff,
    /// Only the events.
    None,
}

text_column!(BudgetAction, "budget action", {
    FallbackModel => "fallback_model",
    FallbackMessage => "fallback_message",
    Handoff => "handoff",
    None => "none",
});

/// The largest budget accepted (in currency units).
const MAX_BUDGET: f64 = 1e12;

text_column!(PersonaTone, "persona tone", {
    Friendly => "friendly",
    Professional => "professional",
    Formal => "formal",
    Casual => "casual",
    Empathetic => "empathetic",
    Playful => "playful",
    Concise => "concise",
});

/// A full replacement of a tenant's configuration (everything but the version).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigUpdate {
    pub persona_name: String,
    pub persona_tone: PersonaTone,
    pub persona_language: String,
    pub llm_model: String,
    pub llm_temperature: f64,
    /// The most tokens one answer may have (sent to the provider with every call).
    pub llm_max_output_tokens: u32,
    pub max_context_turns: u32,
    pub rag_top_k: u32,
    pub human_handoff_phrase: Option<String>,
    pub handoff_message: String,
    pub fallback_message: String,
    pub fallback_model: Option<String>,
    pub prompt_token_budget: Option<u32>,
    pub coalesce_window_ms: u32,
    /// WhatsApp users see their message read and a typing indicator while a turn runs.
    pub whatsapp_typing_indicator: bool,
    /// The built-in tools the model is offered, in order.
    pub builtin_tools: Vec<BuiltinTool>,
    /// Sent (once per closed window) when a WhatsApp reply waits for the user to write
    /// again; `None`: the reply just waits.
    pub whatsapp_reengagement_template: Option<Template>,
    /// WhatsApp voice notes and audio are transcribed and read as the user's words.
    pub transcribe_audio: bool,
    /// The model accepts images: WhatsApp images go to it (else their caption and a note).
    pub llm_vision: bool,
    /// What the bot is told when a file the user sent could not be read.
    pub media_fallback_message: String,
    /// What the tenant's month may cost, and what happens past it.
    pub budget: BudgetPolicy,
    /// When the tenant's own key is refused, the platform's key answers instead (else the
    /// turn takes the tenant's fallback path).
    pub fallback_to_platform_key: bool,
    /// E-mail addresses, phone numbers, card numbers and IBANs reach the LLM as
    /// placeholders, restored in the reply.
    pub redact_pii: bool,
    /// Conversations whose last message is older than this many days are erased
    /// (`None`: kept).
    pub retention_days: Option<u32>,
}

impl ConfigUpdate {
    /// Rejects values the bot could not honour; each message names the field.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.persona_name.trim().is_empty() || self.persona_name.len() > 100 {
            problems.push("persona_name must be 1-100 characters".to_owned());
        }
        if self.persona_language.trim().is_empty() || self.persona_language.len() > 32 {
            problems.push("persona_language must be 1-32 characters".to_owned());
        }
        if self.llm_model.trim().is_empty() || self.llm_model.len() > 200 {
            problems.push("llm_model must be 1-200 characters".to_owned());
        }
        if !(0.0..=2.0).contains(&self.llm_temperature) {
            problems.push("llm_temperature must be between 0 and 2".to_owned());
        }
        if !(1..=MAX_OUTPUT_TOKENS).contains(&self.llm_max_output_tokens) {
            problems.push(format!(
                "llm_max_output_tokens must be 1-{MAX_OUTPUT_TOKENS}"
            ));
        }
        if self.max_context_turns > 100 {
            problems.push("max_context_turns must be 0-100".to_owned());
        }
        if self.rag_top_k > 50 {
            problems.push("rag_top_k must be 0-50".to_owned());
        }
        if self
            .human_handoff_phrase
            .as_ref()
            .is_some_and(|p| p.trim().is_empty() || p.len() > 200)
        {
            problems.push("human_handoff_phrase must be 1-200 characters, or null".to_owned());
        }
        if self.handoff_message.trim().is_empty() || self.handoff_message.len() > 2000 {
            problems.push("handoff_message must be 1-2000 characters".to_owned());
        }
        if self.prompt_token_budget.is_some_and(|b| b < 256) {
            problems.push("prompt_token_budget must be at least 256 tokens when set".to_owned());
        }
        if self.fallback_message.trim().is_empty() || self.fallback_message.len() > 2000 {
            problems.push("fallback_message must be 1-2000 characters".to_owned());
        }
        if self.media_fallback_message.trim().is_empty() || self.media_fallback_message.len() > 2000
        {
            problems.push("media_fallback_message must be 1-2000 characters".to_owned());
        }
        if let Some(template) = &self.whatsapp_reengagement_template {
            if let Some(problem) = template.problem() {
                problems.push(format!("whatsapp_reengagement_template: {problem}"));
            } else if template.components.is_some() {
                problems.push(
                    "whatsapp_reengagement_template takes a name and a language only".to_owned(),
                );
            }
        }
        if let Some(budget) = self.budget.monthly
            && !(budget.is_finite() && (0.0..=MAX_BUDGET).contains(&budget))
        {
            problems.push("budget_monthly must be zero or more (at most 1e12), or null".to_owned());
        }
        if self
            .retention_days
            .is_some_and(|d| !(1..=36_500).contains(&d))
        {
            problems.push("retention_days must be 1-36500, or null".to_owned());
        }
        if !(1..=100).contains(&self.budget.warning_pct) {
            problems.push("budget_warning_pct must be 1-100".to_owned());
        }
        if self.budget.action == BudgetAction::FallbackModel && self.fallback_model.is_none() {
            problems.push(
                "budget_action fallback_model needs a fallback_model to answer with".to_owned(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(problems.join("; ")))
        }
    }
}

impl From<ClientConfig> for ConfigUpdate {
    fn from(c: ClientConfig) -> Self {
        Self {
            persona_name: c.persona_name,
            persona_tone: c.persona_tone,
            persona_language: c.persona_language,
            llm_model: c.llm_model,
            llm_temperature: c.llm_temperature,
            llm_max_output_tokens: c.llm_max_output_tokens,
            max_context_turns: c.max_context_turns,
            rag_top_k: c.rag_top_k,
            human_handoff_phrase: c.human_handoff_phrase,
            handoff_message: c.handoff_message,
            fallback_message: c.fallback_message,
            fallback_model: c.fallback_model,
            prompt_token_budget: c.prompt_token_budget,
            coalesce_window_ms: c.coalesce_window_ms,
            whatsapp_typing_indicator: c.whatsapp_typing_indicator,
            builtin_tools: c.builtin_tools,
            whatsapp_reengagement_template: c.whatsapp_reengagement_template,
            transcribe_audio: c.transcribe_audio,
            llm_vision: c.llm_vision,
            media_fallback_message: c.media_fallback_message,
            budget: c.budget,
            fallback_to_platform_key: c.fallback_to_platform_key,
            redact_pii: c.redact_pii,
            retention_days: c.retention_days,
        }
    }
}

/// Everything the worker needs to answer for a tenant.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub client: Client,
    pub config: ClientConfig,
    /// Active modes only, highest priority (lowest number) first.
    pub modes: Vec<AgentMode>,
    /// Active tools only, by name.
    pub tools: Vec<Tool>,
    /// Enabled webhook endpoints and what each wants.
    pub webhooks: Vec<super::WebhookSubscription>,
    /// The tenant's own provider credentials, keys sealed.
    pub llm_credentials: Vec<super::LlmCredential>,
}

/// The most an answer's output limit may be.
pub const MAX_OUTPUT_TOKENS: u32 = 16_384;

const CONFIG_COLUMNS: &str = "persona_name, persona_tone, persona_language, llm_model, \
    llm_temperature, llm_max_output_tokens, max_context_turns, rag_top_k, human_handoff_phrase, handoff_message, config_version, \
    fallback_message, fallback_model, prompt_token_budget, coalesce_window_ms, \
    whatsapp_typing_indicator, builtin_tools, \
    CAST(whatsapp_reengagement_template AS CHAR) AS whatsapp_reengagement_template, \
    transcribe_audio, llm_vision, media_fallback_message, \
    CAST(budget_monthly AS DOUBLE) AS budget_monthly, budget_warning_pct, budget_action, \
    fallback_to_platform_key, redact_pii, retention_days";

#[derive(Debug)]
pub struct Configs<'a> {
    pub(super) pool: crate::db::Placed<'a>,
    /// The tenant every statement is bound to.
    pub(super) client_id: ClientId,
}

impl<'a> Configs<'a> {
    pub(super) fn new(pool: crate::db::Placed<'a>, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }

    /// The tenant's client row, configuration and active modes; `None` for an unknown
    /// tenant.
    pub async fn load_tenant(&self) -> Result<Option<TenantConfig>> {
        let client_id = self.client_id;
        let Some(client) = super::Clients::new(self.pool.db()).get(client_id).await? else {
            return Ok(None);
        };
        let Some(config) = self.get().await? else {
            return Ok(None);
        };
        let modes = guard::query(
            "SELECT module_key, prompt_fragment, is_active, priority FROM agent_modes \
             WHERE client_id = ? AND is_active = TRUE ORDER BY priority ASC, module_key ASC",
        )?
        .bind(client_id.get())
        .fetch_all(self.pool.get().await?)
        .await?
        .iter()
        .map(mode_from_row)
        .collect::<Result<Vec<_>>>()?;
        let tools = super::Tools::new(self.pool, client_id).active().await?;
        let webhooks = super::Webhooks::new(self.pool, client_id)
            .subscriptions()
            .await?;
        let llm_credentials = super::LlmCredentials::new(self.pool, client_id)
            .list()
            .await?;
        Ok(Some(TenantConfig {
            client,
            config,
            modes,
            tools,
            webhooks,
            llm_credentials,
        }))
    }

    pub async fn get(&self) -> Result<Option<ClientConfig>> {
        let client_id = self.client_id;
        let row = guard::query(&format!(
            "SELECT {CONFIG_COLUMNS} FROM client_configs WHERE client_id = ?"
        ))?
        .bind(client_id.get())
        .fetch_optional(self.pool.get().await?)
        .await?;
        row.map(|r| config_from_row(&r)).transpose()
    }

    /// Replaces the configuration and bumps its version; returns the new version.
    pub async fn update(&self, update: &ConfigUpdate) -> Result<u64> {
        let client_id = self.client_id;
        update.validate()?;
        let mut tx = self.pool.get().await?.begin().await?;
        let done = guard::query(
            "UPDATE client_configs SET persona_name = ?, persona_tone = ?, persona_language = ?, \
             llm_model = ?, llm_temperature = ?, llm_max_output_tokens = ?, \
             max_context_turns = ?, rag_top_k = ?, \
             human_handoff_phrase = ?, handoff_message = ?, fallback_message = ?, fallback_model = ?, \
             prompt_token_budget = ?, coalesce_window_ms = ?, whatsapp_typing_indicator = ?, \
             builtin_tools = ?, whatsapp_reengagement_template = ?, \
             transcribe_audio = ?, llm_vision = ?, media_fallback_message = ?, \
             budget_monthly = ?, budget_warning_pct = ?, budget_action = ?, \
             fallback_to_platform_key = ?, redact_pii = ?, retention_days = ?, \
             config_version = config_version + 1 \
             WHERE client_id = ?",
        )?
        .bind(&update.persona_name)
        .bind(update.persona_tone)
        .bind(&update.persona_language)
        .bind(&update.llm_model)
        .bind(update.llm_temperature)
        .bind(update.llm_max_output_tokens)
        .bind(update.max_context_turns)
        .bind(update.rag_top_k)
        .bind(&update.human_handoff_phrase)
        .bind(&update.handoff_message)
        .bind(&update.fallback_message)
        .bind(&update.fallback_model)
        .bind(update.prompt_token_budget)
        .bind(update.coalesce_window_ms)
        .bind(update.whatsapp_typing_indicator)
        .bind(builtin_tools_column(&update.builtin_tools))
        .bind(
            update
                .whatsapp_reengagement_template
                .as_ref()
                .and_then(|t| serde_json::to_string(t).ok()),
        )
        .bind(update.transcribe_audio)
        .bind(update.llm_vision)
        .bind(&update.media_fallback_message)
        .bind(update.budget.monthly)
        .bind(update.budget.warning_pct)
        .bind(update.budget.action)
        .bind(update.fallback_to_platform_key)
        .bind(update.redact_pii)
        .bind(update.retention_days)
        .bind(client_id.get())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!(
                "client {client_id} does not exist"
            )));
        }
        let version = current_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(version)
    }
}

/// Bumps a tenant's configuration version inside `tx`; returns the new version.
pub(super) async fn bump_version(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    client_id: ClientId,
) -> Result<u64> {
    guard::query(
        "UPDATE client_configs SET config_version = config_version + 1 WHERE client_id = ?",
    )?
    .bind(client_id.get())
    .execute(&mut **tx)
    .await?;
    current_version(tx, client_id).await
}

async fn current_version(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    client_id: ClientId,
) -> Result<u64> {
    let version: u64 =
        guard::query_scalar("SELECT config_version FROM client_configs WHERE client_id = ?")?
            .bind(client_id.get())
            .fetch_one(&mut **tx)
            .await?;
    Ok(version)
}

fn config_from_row(row: &sqlx::mysql::MySqlRow) -> Result<ClientConfig> {
    Ok(ClientConfig {
        persona_name: row.try_get("persona_name")?,
        persona_tone: row.try_get("persona_tone")?,
        persona_language: row.try_get("persona_language")?,
        llm_model: row.try_get("llm_model")?,
        llm_temperature: row.try_get("llm_temperature")?,
        llm_max_output_tokens: row.try_get("llm_max_output_tokens")?,
        max_context_turns: row.try_get("max_context_turns")?,
        rag_top_k: row.try_get("rag_top_k")?,
        human_handoff_phrase: row.try_get("human_handoff_phrase")?,
        handoff_message: row.try_get("handoff_message")?,
        config_version: row.try_get("config_version")?,
        fallback_message: row.try_get("fallback_message")?,
        fallback_model: row.try_get("fallback_model")?,
        prompt_token_budget: row.try_get("prompt_token_budget")?,
        coalesce_window_ms: row.try_get("coalesce_window_ms")?,
        whatsapp_typing_indicator: row.try_get("whatsapp_typing_indicator")?,
        builtin_tools: {
            let words: String = row.try_get("builtin_tools")?;
            words
                .split(',')
                .filter(|w| !w.is_empty())
                .map(|w| {
                    w.parse::<BuiltinTool>()
                        .map_err(|e| Error::Internal(e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?
        },
        whatsapp_reengagement_template: {
            let stored: Option<String> = row.try_get("whatsapp_reengagement_template")?;
            stored
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(|e| Error::Internal(format!("stored template is not JSON: {e}")))?
        },
        transcribe_audio: row.try_get("transcribe_audio")?,
        llm_vision: row.try_get("llm_vision")?,
        media_fallback_message: row.try_get("media_fallback_message")?,
        budget: BudgetPolicy {
            monthly: row.try_get("budget_monthly")?,
            warning_pct: row.try_get("budget_warning_pct")?,
            action: row.try_get("budget_action")?,
        },
        fallback_to_platform_key: row.try_get("fallback_to_platform_key")?,
        redact_pii: row.try_get("redact_pii")?,
        retention_days: row.try_get("retention_days")?,
    })
}

/// The `builtin_tools` column: the names, comma-separated, each once, in a fixed order.
fn builtin_tools_column(tools: &[BuiltinTool]) -> String {
    let mut tools = tools.to_vec();
    tools.sort();
    tools.dedup();
    tools
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(",")
}
