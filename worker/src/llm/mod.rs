//! The LLM providers: the only module that knows LLM wire formats.
//!
//! A tenant's `llm_model` selects the provider: `<provider>/<model>` when `<provider>` is
//! a configured provider name, else the default provider with the whole string as the
//! model (so `meta-llama/Llama-3.1-8B` still works on an OpenAI-compatible server).
//! Each provider has a concurrency limit, shared fairly between tenants ([`fair`]);
//! errors say whether retrying may help, and whose fault they are: a provider's outage
//! opens the provider's circuit breaker, a tenant's own failures (its key, its model,
//! its quota) a breaker of that tenant and model only.

mod breaker;
mod error;
mod fair;
mod ollama;
mod openai;
mod responses;
pub mod sim;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shared::ids::ClientId;
use shared::metric;
use shared::settings::{LlmSettings, ProviderKind, ProviderSettings};

pub use error::LlmError;
use responses::{body, lines, status_error, transport_error};

/// Who said a message in the chat sent to the LLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
    /// A tool's result, answering one of the assistant's tool calls.
    Tool,
}

/// One message of the chat, provider-neutral (each wire format writes it its own way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
    /// The tools an assistant message asked for.
    pub tool_calls: Vec<ToolCall>,
    /// A tool message: the call it answers (its id and the tool's name).
    pub answers: Option<(String, String)>,
    /// Images a user message shows (for models that accept them).
    pub images: Vec<ChatImage>,
}

/// An image in a user message: its media type and its bytes in base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatImage {
    pub mime: String,
    pub base64: Arc<str>,
}

impl ChatImage {
    /// As a `data:` URL (OpenAI's `image_url`).
    pub fn data_url(&self) -> String {
        format!("data:{};base64,{}", self.mime, self.base64)
    }
}

impl ChatMessage {
    /// A message of text only.
    pub fn new(role: ChatRole, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            answers: None,
            images: Vec::new(),
        }
    }

    /// A tool's result for `call`.
    pub fn tool_result(call: &ToolCall, content: impl Into<String>) -> Self {
        Self {
            role: ChatRole::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            answers: Some((call.id.clone(), call.name.clone())),
            images: Vec::new(),
        }
    }
}

/// A tool the model asked to call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The provider's id of the call (made up for Ollama, which gives none).
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them: JSON text, not necessarily valid.
    pub arguments: String,
}

/// A tool offered to the model: a function with a JSON Schema of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// `tools` as both wire formats write it: `[{type: "function", function: {…}}]`.
fn serialize_tools<S: serde::Serializer>(tools: &[ToolSpec], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Function<'a> {
        r#type: &'static str,
        function: &'a ToolSpec,
    }
    s.collect_seq(tools.iter().map(|function| Function {
        r#type: "function",
        function,
    }))
}

/// One chat completion request, provider-neutral.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// Whose turn asks: slots are shared fairly between tenants, and a tenant's own
    /// failures open a breaker of its own.
    pub tenant: ClientId,
    /// The tenant's plan weight (`plans.<plan>.weight`).
    pub weight: u32,
    pub model: String,
    pub temperature: f64,
    /// The context window to ask for (Ollama's `num_ctx`).
    pub num_ctx: u32,
    /// The most tokens the answer may have (`max_tokens`, Ollama's `num_predict`).
    pub max_output_tokens: u32,
    pub messages: Vec<ChatMessage>,
    /// The tools the model may call (none: it answers in text).
    pub tools: Vec<ToolSpec>,
    /// Where a streamed answer's text goes as it arrives (clients watching the
    /// conversation see it being written); `None`: nobody watches.
    pub deltas: Option<DeltaSink>,
    /// The tenant's own credentials, for the provider that has them (a model routed to
    /// another provider uses the operator's key).
    pub credentials: Arc<[TenantKey]>,
}

/// A tenant's own credentials for one provider, opened for the call.
#[derive(Clone)]
pub struct TenantKey {
    pub provider: String,
    pub api_key: shared::pii::Secret<String>,
    /// Replaces the provider's `base_url` (an allowlisted host).
    pub base_url: Option<String>,
    /// Sent as `OpenAI-Organization`.
    pub organization: Option<String>,
}

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKey")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Where one call goes and with which key.
pub(crate) struct Endpoint<'a> {
    pub base_url: &'a str,
    pub api_key: &'a str,
    pub organization: Option<&'a str>,
}

/// Text of an answer as a provider streams it, piece by piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaPiece {
    /// More of the answer.
    Text(String),
    /// What was streamed so far is void (the call failed; another model answers anew).
    Restart,
}

/// The sending side of a turn's deltas.
pub type DeltaSink = tokio::sync::mpsc::UnboundedSender<DeltaPiece>;

impl ChatRequest {
    /// Hands a streamed piece of the answer to whoever watches.
    pub(crate) fn stream_piece(&self, text: &str) {
        if let Some(sink) = &self.deltas
            && !text.is_empty()
        {
            let _ = sink.send(DeltaPiece::Text(text.to_owned()));
        }
    }
}

/// The model's answer.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    /// The tools the model asked to call instead of answering (or beside its text).
    pub tool_calls: Vec<ToolCall>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
}

struct Provider {
    settings: ProviderSettings,
    slots: fair::FairSlots,
    breaker: breaker::Breaker,
    /// Breakers of tenants' own failures, by tenant, model and whether the tenant's own
    /// key was used (its refused key does not stop calls with the platform's); only
    /// failing ones are kept (a success removes its entry).
    tenant_breakers: std::sync::Mutex<BTreeMap<(ClientId, String, bool), TenantBreaker>>,
    breaker_failures: u32,
    breaker_cooldown: Duration,
    /// When a wait for a slot was last logged (seconds since the epoch): at most once a
    /// minute per provider.
    wait_logged_at: std::sync::atomic::AtomicU64,
}

/// How often a provider's full slots are logged.
const WAIT_LOG_EVERY_S: u64 = 60;

impl Provider {
    /// A slot for one call: at once when one is free, else counted as waiting
    /// ([`metric::LLM_WAITING`]) until one is (logged at most once a minute: a full
    /// provider is the fleet's limit, and `max_concurrency` is the setting that moves it).
    async fn slot(&self, name: &str, tenant: ClientId, weight: u32) -> fair::Slot<'_> {
        use futures::FutureExt;
        if let Some(slot) = self.slots.acquire(tenant, weight).now_or_never() {
            return slot;
        }
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let last = self
            .wait_logged_at
            .load(std::sync::atomic::Ordering::Relaxed);
        if now >= last + WAIT_LOG_EVERY_S
            && self
                .wait_logged_at
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                provider = name,
                max_concurrency = self.settings.max_concurrency,
                "every LLM slot of the provider is busy; turns wait for one (raise llm.providers.<name>.max_concurrency if the provider can take more)"
            );
        }
        let waiting = metrics::gauge!(metric::LLM_WAITING, "provider" => name.to_owned());
        waiting.increment(1.0);
        let slot = self.slots.acquire(tenant, weight).await;
        waiting.decrement(1.0);
        slot
    }

    /// Refuses at once a call of a tenant whose own breaker for `model` is open.
    fn admit_tenant(&self, tenant: ClientId, model: &str, own: bool) -> Result<(), LlmError> {
        let Ok(breakers) = self.tenant_breakers.lock() else {
            return Ok(());
        };
        match breakers.get(&(tenant, model.to_owned(), own)) {
            Some(b) if !b.breaker.admit(std::time::Instant::now()) => {
                Err(LlmError::TenantCircuitOpen {
                    model: model.to_owned(),
                    last: b.last.clone(),
                    transient: b.transient,
                    key_refused: b.key_refused,
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts a tenant's own failure; true when it opened the tenant's breaker.
    fn tenant_failed(&self, tenant: ClientId, model: &str, own: bool, error: &LlmError) -> bool {
        let Ok(mut breakers) = self.tenant_breakers.lock() else {
            return false;
        };
        let b = breakers
            .entry((tenant, model.to_owned(), own))
            .or_insert_with(|| TenantBreaker {
                breaker: breaker::Breaker::new(self.breaker_failures, self.breaker_cooldown),
                last: String::new(),
                transient: false,
                key_refused: false,
            });
        b.last = error.described();
        b.transient = error.is_transient();
        b.key_refused = error.is_key_refused();
        b.breaker.failed(std::time::Instant::now())
    }

    fn tenant_succeeded(&self, tenant: ClientId, model: &str, own: bool) {
        if let Ok(mut breakers) = self.tenant_breakers.lock()
            && !breakers.is_empty()
        {
            breakers.remove(&(tenant, model.to_owned(), own));
        }
    }
}

/// A breaker of one tenant's calls to one model, and what last failed.
struct TenantBreaker {
    breaker: breaker::Breaker,
    last: String,
    transient: bool,
    key_refused: bool,
}

/// All configured providers, sharing one HTTP client.
#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    /// For tenants' own base URLs: addresses checked after DNS (the SSRF rules of
    /// tools), no redirects.
    tenant_http: reqwest::Client,
    providers: Arc<BTreeMap<String, Provider>>,
    default_provider: String,
    /// Largest response body read (`llm.max_response_bytes`).
    max_response_bytes: usize,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("default_provider", &self.default_provider)
            .finish()
    }
}

impl LlmClient {
    pub fn new(settings: &LlmSettings) -> Self {
        let providers = settings
            .providers
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    Provider {
                        settings: p.clone(),
                        slots: fair::FairSlots::new(p.max_concurrency, settings.tenant_max_share),
                        breaker: breaker::Breaker::new(
                            settings.breaker_failures,
                            settings.breaker_cooldown,
                        ),
                        tenant_breakers: std::sync::Mutex::default(),
                        breaker_failures: settings.breaker_failures,
                        breaker_cooldown: settings.breaker_cooldown,
                        wait_logged_at: std::sync::atomic::AtomicU64::new(0),
                    },
                )
            })
            .collect();
        Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
                .build()
                .unwrap_or_default(),
            tenant_http: guarded_client(Vec::new()),
            providers: Arc::new(providers),
            default_provider: settings.default_provider.clone(),
            max_response_bytes: settings.max_response_bytes,
        }
    }

    /// Lets tenants' own base URLs reach these private networks after all (the
    /// networks tools may reach, `tools.allowed_private_networks`).
    pub fn with_tenant_networks(mut self, allowed: Vec<ipnet::IpNet>) -> Self {
        self.tenant_http = guarded_client(allowed);
        self
    }

    /// Splits a tenant's `llm_model` into (provider name, model name).
    pub fn route<'m>(&self, llm_model: &'m str) -> (&str, &'m str) {
        if let Some((provider, model)) = llm_model.split_once('/')
            && let Some((name, _)) = self.providers.get_key_value(provider)
        {
            return (name.as_str(), model);
        }
        (self.default_provider.as_str(), llm_model)
    }

    /// The tenant's own credentials `request` uses for `provider`, if it has them.
    pub fn tenant_key<'r>(request: &'r ChatRequest, provider: &str) -> Option<&'r TenantKey> {
        request.credentials.iter().find(|k| k.provider == provider)
    }

    /// Sends one chat request to the provider its `model` selects, with the tenant's own
    /// key for that provider if it has one. Borrowed: a caller that falls back to another
    /// model sends the same messages again, uncopied.
    ///
    /// A tenant's failures count against its own breaker, never the provider's: its
    /// key refused (401/402/403, quota), its model unknown, and — when its credentials
    /// point at a base URL of its own — every failure, since that server is the tenant's.
    pub async fn chat(&self, request: &ChatRequest) -> Result<Completion, LlmError> {
        let (name, model) = self.route(&request.model);
        let provider = self
            .providers
            .get(name)
            .ok_or_else(|| LlmError::Unreachable(format!("no provider named {name:?}")))?;
        let own = Self::tenant_key(request, name);
        let own_server = own.is_some_and(|k| k.base_url.is_some());
        provider.admit_tenant(request.tenant, model, own.is_some())?;
        if !own_server && !provider.breaker.admit(std::time::Instant::now()) {
            return Err(LlmError::CircuitOpen(name.to_owned()));
        }
        let endpoint = match own {
            Some(key) => Endpoint {
                base_url: key
                    .base_url
                    .as_deref()
                    .unwrap_or(&provider.settings.base_url),
                api_key: key.api_key.expose(),
                organization: key.organization.as_deref(),
            },
            None => Endpoint {
                base_url: &provider.settings.base_url,
                api_key: provider.settings.api_key.expose(),
                organization: None,
            },
        };
        let _slot = provider.slot(name, request.tenant, request.weight).await;
        let timeout = provider.settings.timeout;
        let started = std::time::Instant::now();
        let stream = provider.settings.stream;
        let http = if own_server {
            &self.tenant_http
        } else {
            &self.http
        };
        let call = async {
            let limit = self.max_response_bytes;
            match provider.settings.kind {
                ProviderKind::Ollama => {
                    ollama::chat(http, &endpoint, stream, model, request, limit).await
                }
                ProviderKind::Openai => {
                    openai::chat(http, &endpoint, stream, model, request, limit).await
                }
            }
        };
        let span = tracing::info_span!("llm", provider = name, model);
        let outcome = tokio::time::timeout(timeout, tracing::Instrument::instrument(call, span))
            .await
            .map_err(|_| LlmError::Timeout(timeout))
            .and_then(|r| r);
        match &outcome {
            Ok(completion) => {
                provider.breaker.succeeded();
                provider.tenant_succeeded(request.tenant, model, own.is_some());
                metrics::histogram!(metric::LLM_SECONDS, "provider" => name.to_owned())
                    .record(started.elapsed().as_secs_f64());
                for (kind, tokens) in [
                    ("prompt", completion.prompt_tokens),
                    ("completion", completion.completion_tokens),
                ] {
                    metrics::counter!(metric::LLM_TOKENS, "provider" => name.to_owned(), "kind" => kind)
                        .increment(u64::from(tokens.unwrap_or(0)));
                }
            }
            Err(e) if e.is_tenants_own() || own_server => {
                metrics::counter!(metric::LLM_ERRORS, "provider" => name.to_owned(), "kind" => e.kind())
                    .increment(1);
                if provider.tenant_failed(request.tenant, model, own.is_some(), e) {
                    tracing::warn!(
                        provider = name,
                        client_id = %request.tenant,
                        model,
                        error = e.described(),
                        "the tenant's own calls to the model keep failing; its breaker opened"
                    );
                    metrics::counter!(metric::LLM_TENANT_BREAKER_OPENED, "provider" => name.to_owned())
                        .increment(1);
                }
            }
            Err(e) if e.is_transient() => {
                metrics::counter!(metric::LLM_ERRORS, "provider" => name.to_owned(), "kind" => e.kind())
                    .increment(1);
                if provider.breaker.failed(std::time::Instant::now()) {
                    tracing::warn!(provider = name, "LLM circuit breaker opened");
                    metrics::counter!(metric::LLM_BREAKER_OPENED, "provider" => name.to_owned())
                        .increment(1);
                }
            }
            Err(e) => {
                metrics::counter!(metric::LLM_ERRORS, "provider" => name.to_owned(), "kind" => e.kind())
                    .increment(1);
            }
        }
        outcome
    }
}

/// The client for tenants' own base URLs: every address checked after DNS, no redirects,
/// no proxy.
fn guarded_client(allowed: Vec<ipnet::IpNet>) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(shared::net::GuardedResolver {
            allowed: Arc::new(allowed),
        }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default()
}
