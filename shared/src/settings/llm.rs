//! The `[llm]`, `[speech]` and `[embeddings]` sections: the model providers, what their
//! tokens and minutes cost, and which of them transcribes and embeds.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::parse;
use crate::pii::Secret;

#[derive(Debug, Clone, Deserialize)]
pub struct LlmSettings {
    pub default_provider: String,
    /// Largest response body read from a provider; a larger one is the provider's failure.
    pub max_response_bytes: usize,
    pub default_context_window: u32,
    pub completion_reserve: u32,
    pub breaker_failures: u32,
    /// Most of a provider's `max_concurrency` one tenant holds while other tenants use
    /// the provider (0 < share <= 1).
    pub tenant_max_share: f64,
    #[serde(
        rename = "breaker_cooldown_s",
        deserialize_with = "parse::positive_seconds"
    )]
    pub breaker_cooldown: Duration,
    #[serde(default)]
    pub context_windows: BTreeMap<String, u32>,
    pub providers: BTreeMap<String, ProviderSettings>,
    /// What `"<provider>/<model>"` costs; a model without an entry is unpriced.
    #[serde(default)]
    pub prices: BTreeMap<String, TokenPrice>,
    /// Hosts a tenant's own credentials may point `base_url` at (exact host names).
    #[serde(default)]
    pub tenant_base_url_allowlist: Vec<String>,
}

/// A model's price per million tokens (`llm.prices."<provider>/<model>"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TokenPrice {
    pub prompt_per_million: f64,
    pub completion_per_million: f64,
    pub currency: String,
}

impl TokenPrice {
    /// What `prompt` and `completion` tokens cost, in micro-units of the currency.
    pub fn cost_micros(&self, prompt: u32, completion: u32) -> u64 {
        // Per million tokens in units is per token in micro-units.
        let micros = f64::from(prompt) * self.prompt_per_million
            + f64::from(completion) * self.completion_per_million;
        micros.round().max(0.0) as u64
    }
}

/// A transcription model's price per minute of audio (`speech.prices."<provider>/<model>"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MinutePrice {
    pub per_minute: f64,
    pub currency: String,
}

impl MinutePrice {
    /// What `seconds` of audio cost, in micro-units of the currency.
    pub fn cost_micros(&self, seconds: f64) -> u64 {
        (seconds / 60.0 * self.per_minute * 1e6).round().max(0.0) as u64
    }
}

impl LlmSettings {
    /// The price of `model` at `provider`, if the operator set one.
    pub fn price(&self, provider: &str, model: &str) -> Option<&TokenPrice> {
        self.prices.get(&format!("{provider}/{model}"))
    }

    /// The currency of every price (one, checked at load); `None` when nothing is priced.
    pub fn currency<'a>(&'a self, speech: &'a SpeechSettings) -> Option<&'a str> {
        self.prices
            .values()
            .map(|p| p.currency.as_str())
            .chain(speech.prices.values().map(|p| p.currency.as_str()))
            .next()
    }

    /// The context window (`num_ctx`) used for `model`.
    pub fn context_window(&self, model: &str) -> u32 {
        self.context_windows
            .get(model)
            .copied()
            .unwrap_or(self.default_context_window)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Ollama,
    Openai,
}

impl ProviderKind {
    /// LLM calls one worker makes at once when a provider sets no `max_concurrency`: a
    /// hosted OpenAI-compatible API takes hundreds; a local Ollama serves a few at a
    /// time (`OLLAMA_NUM_PARALLEL`), the rest queue inside it.
    pub fn default_max_concurrency(self) -> usize {
        match self {
            Self::Openai => 256,
            Self::Ollama => 16,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProviderSettings {
    pub kind: ProviderKind,
    pub base_url: String,
    #[serde(default)]
    pub api_key: Secret<String>,
    #[serde(rename = "timeout_s", deserialize_with = "parse::positive_seconds")]
    pub timeout: Duration,
    /// LLM calls one worker makes at once; unset (0): the kind's default.
    #[serde(default)]
    pub max_concurrency: usize,
    #[serde(default)]
    pub stream: bool,
}

/// Speech to text for WhatsApp voice notes: an OpenAI-compatible
/// `POST /v1/audio/transcriptions` at one of `llm.providers`.
#[derive(Debug, Clone, Deserialize)]
pub struct SpeechSettings {
    /// A provider of `llm.providers`; empty: voice notes are not transcribed.
    pub provider: String,
    pub model: String,
    /// What `"<provider>/<model>"` costs per minute of audio; unset: unpriced.
    #[serde(default)]
    pub prices: BTreeMap<String, MinutePrice>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingsSettings {
    pub provider: String,
    pub model: String,
}
