//! A tenant's configuration (`/admin/v1/clients/{id}/config`) as the admin API shows and
//! changes it (its agent modes are in [`super::modes`]). What a value may be is checked by the data
//! layer (`ConfigUpdate::validate`), whose messages name the field.

use serde::{Deserialize, Deserializer, Serialize};
use shared::db::{self, ClientConfig, ConfigUpdate};
use shared::envelope::Template;
use shared::tenant;

/// The tone a persona takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PersonaTone {
    Friendly,
    Professional,
    Formal,
    Casual,
    Empathetic,
    Playful,
    Concise,
}

impl From<tenant::PersonaTone> for PersonaTone {
    fn from(tone: tenant::PersonaTone) -> Self {
        match tone {
            tenant::PersonaTone::Friendly => Self::Friendly,
            tenant::PersonaTone::Professional => Self::Professional,
            tenant::PersonaTone::Formal => Self::Formal,
            tenant::PersonaTone::Casual => Self::Casual,
            tenant::PersonaTone::Empathetic => Self::Empathetic,
            tenant::PersonaTone::Playful => Self::Playful,
            tenant::PersonaTone::Concise => Self::Concise,
        }
    }
}

impl From<PersonaTone> for tenant::PersonaTone {
    fn from(tone: PersonaTone) -> Self {
        match tone {
            PersonaTone::Friendly => Self::Friendly,
            PersonaTone::Professional => Self::Professional,
            PersonaTone::Formal => Self::Formal,
            PersonaTone::Casual => Self::Casual,
            PersonaTone::Empathetic => Self::Empathetic,
            PersonaTone::Playful => Self::Playful,
            PersonaTone::Concise => Self::Concise,
        }
    }
}

/// A tool the platform provides, switched on per tenant (`builtin_tools`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BuiltinTool {
    /// The model hands the conversation to a person, as the handoff phrase does.
    HandoffToHuman,
    /// The model answers with a text and choices (`{text, choices: [string]}`) the user
    /// can pick; the reply carries `choices`.
    OfferChoices,
}

impl From<db::BuiltinTool> for BuiltinTool {
    fn from(t: db::BuiltinTool) -> Self {
        match t {
            db::BuiltinTool::HandoffToHuman => Self::HandoffToHuman,
            db::BuiltinTool::OfferChoices => Self::OfferChoices,
        }
    }
}

impl From<BuiltinTool> for db::BuiltinTool {
    fn from(t: BuiltinTool) -> Self {
        match t {
            BuiltinTool::HandoffToHuman => Self::HandoffToHuman,
            BuiltinTool::OfferChoices => Self::OfferChoices,
        }
    }
}

/// A new tenant's output limit (the column's default), for a `PUT` that leaves it out.
fn default_max_output_tokens() -> u32 {
    1024
}

/// A new tenant's typing indicator setting (the column's default), for a `PUT` that
/// leaves it out.
fn default_true() -> bool {
    true
}

fn default_media_fallback_message() -> String {
    "The user sent a file that could not be opened. Say so briefly and ask them to describe \
     it in words."
        .into()
}

/// A `persona_tone`, refused with a message that names the field and the tones.
fn tone<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PersonaTone, D::Error> {
    let word = String::deserialize(deserializer)?;
    word.parse::<tenant::PersonaTone>()
        .map(Into::into)
        .map_err(|_| {
            let tones: Vec<&str> = tenant::PersonaTone::ALL
                .iter()
                .map(|t| t.as_str())
                .collect();
            serde::de::Error::custom(format!(
                "persona_tone must be one of {}, got {word:?}",
                tones.join(", ")
            ))
        })
}

/// What a tenant's turns do once its month's budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BudgetAction {
    /// The tenant's `fallback_model` answers.
    FallbackModel,
    /// The user gets the `fallback_message`, without an LLM call.
    FallbackMessage,
    /// The conversation goes to a human.
    Handoff,
    /// Only the `budget.exceeded` event.
    None,
}

impl From<db::BudgetAction> for BudgetAction {
    fn from(a: db::BudgetAction) -> Self {
        match a {
            db::BudgetAction::FallbackModel => Self::FallbackModel,
            db::BudgetAction::FallbackMessage => Self::FallbackMessage,
            db::BudgetAction::Handoff => Self::Handoff,
            db::BudgetAction::None => Self::None,
        }
    }
}

impl From<BudgetAction> for db::BudgetAction {
    fn from(a: BudgetAction) -> Self {
        match a {
            BudgetAction::FallbackModel => Self::FallbackModel,
            BudgetAction::FallbackMessage => Self::FallbackMessage,
            BudgetAction::Handoff => Self::Handoff,
            BudgetAction::None => Self::None,
        }
    }
}

/// A `budget_action`, refused with a message that names the field and the actions.
fn budget_action<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BudgetAction, D::Error> {
    let word = String::deserialize(deserializer)?;
    word.parse::<db::BudgetAction>().map(Into::into).map_err(|_| {
        serde::de::Error::custom(format!(
            "budget_action must be one of fallback_model, fallback_message, handoff, none, got {word:?}"
        ))
    })
}

/// [`budget_action`] for a field that may be left out.
fn some_budget_action<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BudgetAction>, D::Error> {
    budget_action(deserializer).map(Some)
}

fn default_warning_pct() -> u8 {
    80
}

fn default_budget_action() -> BudgetAction {
    BudgetAction::None
}

/// [`tone`] for a field that may be left out.
fn some_tone<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PersonaTone>, D::Error> {
    tone(deserializer).map(Some)
}

/// A WhatsApp message template by the name and language it was approved under.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TemplateRef {
    #[schema(example = "order_update")]
    pub name: String,
    #[schema(example = "en_US")]
    pub language: String,
}

impl From<TemplateRef> for Template {
    fn from(t: TemplateRef) -> Self {
        Self {
            name: t.name,
            language: t.language,
            components: None,
        }
    }
}

impl From<Template> for TemplateRef {
    fn from(t: Template) -> Self {
        Self {
            name: t.name,
            language: t.language,
        }
    }
}

/// A tenant's configuration: the `client_configs` row.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ConfigOut {
    pub persona_name: String,
    pub persona_tone: PersonaTone,
    #[schema(example = "en")]
    pub persona_language: String,
    pub llm_model: String,
    pub llm_temperature: f64,
    /// The most tokens one answer may have (1-16384).
    pub llm_max_output_tokens: u32,
    pub max_context_turns: u32,
    pub rag_top_k: u32,
    pub human_handoff_phrase: Option<String>,
    pub handoff_message: String,
    /// Bumped by every change; each reply records the version it was made with.
    pub config_version: u64,
    pub fallback_message: String,
    pub fallback_model: Option<String>,
    pub prompt_token_budget: Option<u32>,
    pub coalesce_window_ms: u32,
    /// WhatsApp users see their message read and a typing indicator while the bot
    /// writes (default true).
    pub whatsapp_typing_indicator: bool,
    /// The built-in tools the model is offered.
    pub builtin_tools: Vec<BuiltinTool>,
    /// Sent once per closed 24-hour window when a WhatsApp reply or agent message has to
    /// wait for the user to write again (null: it just waits).
    pub whatsapp_reengagement_template: Option<TemplateRef>,
    /// WhatsApp voice notes and audio are transcribed and read as the user's words
    /// (default true; needs `speech.provider`).
    pub transcribe_audio: bool,
    /// The model accepts images: WhatsApp images go to it (default false: their caption
    /// and a note that an image was sent).
    pub llm_vision: bool,
    /// What the bot is told when a file the user sent could not be read.
    pub media_fallback_message: String,
    /// The month's budget in the prices' currency (null: none); the month follows the
    /// client's timezone.
    pub budget_monthly: Option<f64>,
    /// `budget.warning` once the month's spending reaches this share (default 80).
    pub budget_warning_pct: u8,
    /// What happens once the month's budget is spent (default none).
    pub budget_action: BudgetAction,
    /// When the client's own LLM key is refused, the platform's key answers instead
    /// (default false: the fallback message, with the reason recorded).
    pub fallback_to_platform_key: bool,
    /// E-mail addresses, phone numbers, card numbers (Luhn-checked) and IBANs
    /// (checksum-checked) reach the LLM as placeholders (`<EMAIL_1>`…), restored in the
    /// reply; the stored message keeps the original (default false).
    pub redact_pii: bool,
    /// Conversations whose last message is older than this many days are erased (null:
    /// kept).
    pub retention_days: Option<u32>,
}

impl From<ClientConfig> for ConfigOut {
    fn from(c: ClientConfig) -> Self {
        Self {
            persona_name: c.persona_name,
            persona_tone: c.persona_tone.into(),
            persona_language: c.persona_language,
            llm_model: c.llm_model,
            llm_temperature: c.llm_temperature,
            llm_max_output_tokens: c.llm_max_output_tokens,
            max_context_turns: c.max_context_turns,
            rag_top_k: c.rag_top_k,
            human_handoff_phrase: c.human_handoff_phrase,
            handoff_message: c.handoff_message,
            config_version: c.config_version,
            fallback_message: c.fallback_message,
            fallback_model: c.fallback_model,
            prompt_token_budget: c.prompt_token_budget,
            coalesce_window_ms: c.coalesce_window_ms,
            whatsapp_typing_indicator: c.whatsapp_typing_indicator,
            builtin_tools: c.builtin_tools.into_iter().map(Into::into).collect(),
            whatsapp_reengagement_template: c.whatsapp_reengagement_template.map(Into::into),
            transcribe_audio: c.transcribe_audio,
            llm_vision: c.llm_vision,
            media_fallback_message: c.media_fallback_message,
            budget_monthly: c.budget.monthly,
            budget_warning_pct: c.budget.warning_pct,
            budget_action: c.budget.action.into(),
            fallback_to_platform_key: c.fallback_to_platform_key,
            redact_pii: c.redact_pii,
            retention_days: c.retention_days,
        }
    }
}

/// A whole configuration (`PUT`): every field but the version.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigIn {
    pub persona_name: String,
    #[serde(deserialize_with = "tone")]
    pub persona_tone: PersonaTone,
    pub persona_language: String,
    pub llm_model: String,
    pub llm_temperature: f64,
    /// The most tokens one answer may have (1-16384; 1024 when left out).
    #[serde(default = "default_max_output_tokens")]
    pub llm_max_output_tokens: u32,
    pub max_context_turns: u32,
    pub rag_top_k: u32,
    pub human_handoff_phrase: Option<String>,
    pub handoff_message: String,
    pub fallback_message: String,
    pub fallback_model: Option<String>,
    pub prompt_token_budget: Option<u32>,
    pub coalesce_window_ms: u32,
    /// WhatsApp users see their message read and a typing indicator while the bot
    /// writes (default true).
    #[serde(default = "default_true")]
    pub whatsapp_typing_indicator: bool,
    /// The built-in tools the model is offered (none when left out).
    #[serde(default)]
    pub builtin_tools: Vec<BuiltinTool>,
    /// WhatsApp's re-engagement template (none when left out).
    #[serde(default)]
    pub whatsapp_reengagement_template: Option<TemplateRef>,
    /// Default true.
    #[serde(default = "default_true")]
    pub transcribe_audio: bool,
    /// Default false.
    #[serde(default)]
    pub llm_vision: bool,
    /// Default: a request to say the file could not be opened.
    #[serde(default = "default_media_fallback_message")]
    pub media_fallback_message: String,
    /// Default null: no budget.
    #[serde(default)]
    pub budget_monthly: Option<f64>,
    /// Default 80.
    #[serde(default = "default_warning_pct")]
    pub budget_warning_pct: u8,
    /// Default none.
    #[serde(default = "default_budget_action", deserialize_with = "budget_action")]
    pub budget_action: BudgetAction,
    /// Default false.
    #[serde(default)]
    pub fallback_to_platform_key: bool,
    /// Default false.
    #[serde(default)]
    pub redact_pii: bool,
    /// Default null: kept.
    #[serde(default)]
    pub retention_days: Option<u32>,
}

impl From<ConfigIn> for ConfigUpdate {
    fn from(c: ConfigIn) -> Self {
        Self {
            persona_name: c.persona_name,
            persona_tone: c.persona_tone.into(),
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
            builtin_tools: c.builtin_tools.into_iter().map(Into::into).collect(),
            whatsapp_reengagement_template: c.whatsapp_reengagement_template.map(Into::into),
            transcribe_audio: c.transcribe_audio,
            llm_vision: c.llm_vision,
            media_fallback_message: c.media_fallback_message,
            budget: db::BudgetPolicy {
                monthly: c.budget_monthly,
                warning_pct: c.budget_warning_pct,
                action: c.budget_action.into(),
            },
            fallback_to_platform_key: c.fallback_to_platform_key,
            redact_pii: c.redact_pii,
            retention_days: c.retention_days,
        }
    }
}

/// Any subset of the configuration (`PATCH`): a field left out keeps its value; `null`
/// clears one of the optional fields.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigPatch {
    pub persona_name: Option<String>,
    #[serde(default, deserialize_with = "some_tone")]
    pub persona_tone: Option<PersonaTone>,
    pub persona_language: Option<String>,
    pub llm_model: Option<String>,
    pub llm_temperature: Option<f64>,
    pub llm_max_output_tokens: Option<u32>,
    pub max_context_turns: Option<u32>,
    pub rag_top_k: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub human_handoff_phrase: Option<Option<String>>,
    pub handoff_message: Option<String>,
    pub fallback_message: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub fallback_model: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub prompt_token_budget: Option<Option<u32>>,
    pub coalesce_window_ms: Option<u32>,
    pub whatsapp_typing_indicator: Option<bool>,
    pub builtin_tools: Option<Vec<BuiltinTool>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<TemplateRef>)]
    pub whatsapp_reengagement_template: Option<Option<TemplateRef>>,
    pub transcribe_audio: Option<bool>,
    pub llm_vision: Option<bool>,
    pub media_fallback_message: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    pub budget_monthly: Option<Option<f64>>,
    pub budget_warning_pct: Option<u8>,
    #[serde(default, deserialize_with = "some_budget_action")]
    pub budget_action: Option<BudgetAction>,
    pub fallback_to_platform_key: Option<bool>,
    pub redact_pii: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub retention_days: Option<Option<u32>>,
}

/// A field that is present, `null` or not: `Some(None)` for `null` (absent fields stay
/// `None` through `#[serde(default)]`).
pub(super) fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl ConfigPatch {
    /// The configuration `current` with this patch's fields changed.
    pub fn apply(self, mut current: ConfigUpdate) -> ConfigUpdate {
        macro_rules! set {
            ($($field:ident),+) => {
                $(if let Some(value) = self.$field {
                    current.$field = value;
                })+
            };
        }
        if let Some(tone) = self.persona_tone {
            current.persona_tone = tone.into();
        }
        if let Some(tools) = self.builtin_tools {
            current.builtin_tools = tools.into_iter().map(Into::into).collect();
        }
        if let Some(template) = self.whatsapp_reengagement_template {
            current.whatsapp_reengagement_template = template.map(Into::into);
        }
        if let Some(budget) = self.budget_monthly {
            current.budget.monthly = budget;
        }
        if let Some(pct) = self.budget_warning_pct {
            current.budget.warning_pct = pct;
        }
        if let Some(action) = self.budget_action {
            current.budget.action = action.into();
        }
        set!(
            persona_name,
            persona_language,
            llm_model,
            llm_temperature,
            llm_max_output_tokens,
            max_context_turns,
            rag_top_k,
            human_handoff_phrase,
            handoff_message,
            fallback_message,
            fallback_model,
            prompt_token_budget,
            coalesce_window_ms,
            whatsapp_typing_indicator,
            transcribe_audio,
            llm_vision,
            media_fallback_message,
            fallback_to_platform_key,
            redact_pii,
            retention_days
        );
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> ConfigUpdate {
        ConfigUpdate {
            persona_name: "Ava".into(),
            persona_tone: tenant::PersonaTone::Professional,
            persona_language: "en".into(),
            llm_model: "llama3.1:8b".into(),
            llm_temperature: 0.7,
            llm_max_output_tokens: 1024,
            max_context_turns: 10,
            rag_top_k: 5,
            human_handoff_phrase: Some("agent".into()),
            handoff_message: "A person will answer.".into(),
            fallback_message: "Sorry.".into(),
            fallback_model: Some("small".into()),
            prompt_token_budget: Some(2048),
            coalesce_window_ms: 0,
            whatsapp_typing_indicator: true,
            builtin_tools: Vec::new(),
            whatsapp_reengagement_template: None,
            transcribe_audio: true,
            llm_vision: false,
            media_fallback_message: "Say the file could not be opened.".into(),
            budget: db::BudgetPolicy::default(),
            fallback_to_platform_key: false,
            redact_pii: false,
            retention_days: None,
        }
    }

    #[test]
    fn an_unknown_budget_action_names_the_field_and_the_actions() {
        let refused = serde_json::from_str::<ConfigPatch>(r#"{ "budget_action": "pray" }"#)
            .expect_err("pray");
        let message = refused.to_string();
        assert!(
            message.contains("budget_action must be one of fallback_model")
                && message.contains("\"pray\""),
            "{message}"
        );
        let patch: ConfigPatch =
            serde_json::from_str(r#"{ "budget_monthly": 12.5, "budget_action": "handoff" }"#)
                .expect("patch");
        let patched = patch.apply(current());
        assert_eq!(patched.budget.monthly, Some(12.5));
        assert_eq!(patched.budget.action, db::BudgetAction::Handoff);
        let cleared: ConfigPatch =
            serde_json::from_str(r#"{ "budget_monthly": null }"#).expect("patch");
        assert_eq!(cleared.apply(patched).budget.monthly, None);
    }

    /// Left out keeps, given changes, `null` clears an optional field.
    #[test]
    fn a_patch_changes_only_what_it_names() {
        let patch: ConfigPatch = serde_json::from_str(
            r#"{ "persona_tone": "formal", "human_handoff_phrase": null, "rag_top_k": 0 }"#,
        )
        .expect("patch");
        let patched = patch.apply(current());
        assert_eq!(patched.persona_tone, tenant::PersonaTone::Formal);
        assert_eq!(patched.human_handoff_phrase, None);
        assert_eq!(patched.rag_top_k, 0);
        assert_eq!(patched.fallback_model.as_deref(), Some("small"));
        assert_eq!(patched.persona_name, "Ava");
    }

    #[test]
    fn an_unknown_tone_names_the_field_and_the_tones() {
        let refused =
            serde_json::from_str::<ConfigPatch>(r#"{ "persona_tone": "loud" }"#).expect_err("loud");
        let message = refused.to_string();
        assert!(
            message.contains("persona_tone must be one of friendly, professional")
                && message.contains("\"loud\""),
            "{message}"
        );
    }

    #[test]
    fn a_patch_refuses_unknown_and_read_only_fields() {
        for body in [r#"{ "config_version": 9 }"#, r#"{ "persona": "x" }"#] {
            let refused = serde_json::from_str::<ConfigPatch>(body).expect_err(body);
            assert!(refused.to_string().contains("unknown field"), "{refused}");
        }
    }
}
