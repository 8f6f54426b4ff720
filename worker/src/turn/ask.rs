//! Asking the tenant's model: the prompt assembled from the tenant's configuration, its
//! knowledge, the history and the question within the token budget (DESIGN.md §8), the
//! tenant's fallback model when the primary fails transiently, and the tool loop: while
//! the model calls tools, their results go back to it ([`tool_loop`](super::tool_loop)),
//! for at most `tools.max_rounds` rounds; then it is asked once more without tools.
//!
//! Each call uses the tenant's own key for its provider when it has one; a refused key
//! (401/402/403, quota) is the tenant's: `llm.credentials_failed` is emitted and the turn
//! answers with the tenant's fallback message, the reason recorded, unless the tenant
//! allowed the platform's key (`fallback_to_platform_key`). Every call is priced
//! (`llm.prices`); the turn's cost is recorded with its reply.

use std::sync::Arc;

use shared::db::{HistoryTurn, KeyOwner, ReplyAccounting, TenantConfig};
use shared::envelope::ReplyKind;
use shared::ids::{ClientId, ReplyId};
use shared::metric;
use shared::webhooks::{EventType, NewEvent};

use crate::Ctx;
use crate::error::Result;
use crate::llm::{
    ChatImage, ChatMessage, ChatRequest, ChatRole, Completion, DeltaPiece, LlmClient, TenantKey,
    ToolCall,
};
use crate::prompt;
use crate::redact::Redactor;

use super::live::LiveReply;
use super::tool_loop::{CallsOf, Round, ToolLoop, offered};

/// Per message of the chat, beside its text (as the prompt's tokenizer counts it).
const PER_MESSAGE_TOKENS: usize = 4;

/// What to say back.
pub(crate) struct Answer {
    /// The id the reply is stored under (the one its live deltas carried); `None`: a
    /// new one.
    pub reply_id: Option<ReplyId>,
    pub kind: ReplyKind,
    pub text: String,
    /// Choices offered with the text (`offer_choices`).
    pub choices: Vec<String>,
    /// The model handed the conversation to a person (`handoff_to_human`): the text is
    /// the tenant's handoff message.
    pub hand_off: bool,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub estimated_prompt_tokens: Option<u32>,
    /// Who answered and what the turn's calls cost.
    pub accounting: ReplyAccounting,
}

impl Answer {
    /// A fixed text from the tenant's configuration (no LLM, no tokens).
    pub fn notice(kind: ReplyKind, text: String) -> Self {
        Self {
            reply_id: None,
            kind,
            text,
            choices: Vec::new(),
            hand_off: false,
            prompt_tokens: None,
            completion_tokens: None,
            estimated_prompt_tokens: None,
            accounting: ReplyAccounting::default(),
        }
    }

    /// The tenant's fallback message, saying why it answered.
    pub fn fallback(tenant: &TenantConfig, reason: String) -> Self {
        let mut answer = Self::notice(ReplyKind::Fallback, tenant.config.fallback_message.clone());
        answer.accounting.fallback_reason = Some(reason);
        answer
    }

    /// The LLM tokens the answer spent.
    pub fn tokens(&self) -> u64 {
        u64::from(self.prompt_tokens.unwrap_or(0)) + u64::from(self.completion_tokens.unwrap_or(0))
    }
}

/// What a call to the tenant's model came to.
enum Asked {
    Answered(Completion),
    /// The tenant's own key was refused and nothing may replace it: the reason.
    KeyRefused(String),
}

/// Assembles the prompt (DESIGN.md §8) from the tenant's configuration, its knowledge,
/// `history` and the question, and asks the tenant's model (its fallback model when
/// the primary fails transiently), running the tools it calls (`calls`: whose calls they
/// are).
pub(crate) async fn ask_llm(
    ctx: &Ctx,
    tenant: &TenantConfig,
    history: &[HistoryTurn],
    text: &str,
    live: Option<&LiveReply>,
    calls: CallsOf,
    images: Vec<ChatImage>,
) -> Result<Answer> {
    let client_id = tenant.client.id;
    let config = &tenant.config;
    let (_, model) = ctx.llm.route(&config.llm_model);
    let num_ctx = ctx.llm_settings.context_window(model);
    let mut budget = num_ctx.saturating_sub(ctx.llm_settings.completion_reserve);
    if let Some(own) = config.prompt_token_budget {
        budget = budget.min(own);
    }
    // The tools' definitions count against the budget like the rest of the prompt.
    let tools = offered(tenant);
    let tools_tokens = if tools.is_empty() {
        0
    } else {
        ctx.tokenizer
            .count(&serde_json::to_string(&tools).unwrap_or_default())
    };
    let budget = budget as usize;
    // The tenant's `redact_pii`: what the model (and the embeddings provider) reads holds
    // placeholders; what comes back is restored.
    let mut redactor = config.redact_pii.then(Redactor::default);
    let redacted;
    let (history, text) = match &mut redactor {
        Some(r) => {
            redacted = history
                .iter()
                .map(|h| HistoryTurn {
                    role: h.role,
                    content: r.redact(&h.content),
                })
                .collect::<Vec<_>>();
            (redacted.as_slice(), r.redact(text))
        }
        None => (history, text.to_owned()),
    };
    let text = text.as_str();
    let credentials = tenant_keys(ctx, tenant);
    let own = credentials
        .iter()
        .find(|k| k.provider == ctx.knowledge.provider())
        .map(|k| shared::knowledge::OwnKey {
            api_key: k.api_key.expose(),
            base_url: k.base_url.as_deref(),
        });
    let knowledge = retrieve(ctx, client_id, text, config.rag_top_k, own).await;
    let prompt = prompt::assemble(
        &ctx.tokenizer,
        budget.saturating_sub(tools_tokens),
        tenant,
        &knowledge,
        history,
        text,
    );
    if prompt.dropped.any() {
        let d = prompt.dropped;
        tracing::info!(
            budget,
            history_turns = d.history_turns,
            knowledge_chunks = d.knowledge_chunks,
            modes = d.modes,
            truncated_tokens = d.truncated_tokens,
            "prompt over budget; dropped parts"
        );
        for (part, n) in [
            ("history_turn", d.history_turns),
            ("knowledge_chunk", d.knowledge_chunks),
            ("mode", d.modes),
        ] {
            metrics::counter!(metric::PROMPT_DROPPED, "part" => part).increment(n as u64);
        }
        if d.truncated_tokens > 0 {
            metrics::counter!(metric::PROMPT_TRUNCATED_MESSAGES).increment(1);
        }
    }
    let mut messages = prompt.messages;
    // The images go with the user's message (the last), which the budget always keeps.
    if let Some(user) = messages.last_mut() {
        user.images = images;
    }
    let mut used = prompt.tokens + tools_tokens;
    let estimated = u32::try_from(used).unwrap_or(u32::MAX);
    let started = std::time::Instant::now();
    // The prompt's messages move into the request: no copy of the prompt per call.
    let mut request = ChatRequest {
        tenant: client_id,
        weight: ctx.plans.limits(tenant.client.plan).weight,
        model: config.llm_model.clone(),
        temperature: config.llm_temperature,
        num_ctx,
        max_output_tokens: config.llm_max_output_tokens,
        messages,
        tools,
        // Streamed text would show the placeholders: a redacting tenant's reply comes whole.
        deltas: live.filter(|_| redactor.is_none()).map(LiveReply::sink),
        credentials,
    };
    let mut tool_loop = None;
    let mut spent = Spent::default();
    let mut rounds = 0;
    let completion = loop {
        let completion = match chat(ctx, tenant, &mut request, &mut spent).await? {
            Asked::Answered(completion) => completion,
            Asked::KeyRefused(reason) => {
                if let Some(sink) = &request.deltas {
                    let _ = sink.send(DeltaPiece::Restart);
                }
                return Ok(spent.onto(Answer::fallback(tenant, reason)));
            }
        };
        if completion.tool_calls.is_empty() || request.tools.is_empty() {
            break completion;
        }
        rounds += 1;
        // Text written before the calls is not the answer.
        if let Some(sink) = &request.deltas
            && !completion.text.is_empty()
        {
            let _ = sink.send(DeltaPiece::Restart);
        }
        let tool_loop = match &mut tool_loop {
            Some(l) => l,
            None => tool_loop.insert(Box::pin(ToolLoop::start(ctx, tenant, calls)).await?),
        };
        // A tool gets the values the user wrote, not the placeholders.
        let restored: Vec<_> = completion
            .tool_calls
            .iter()
            .map(|c| ToolCall {
                arguments: restore(redactor.as_ref(), &c.arguments),
                ..c.clone()
            })
            .collect();
        let results = match Box::pin(tool_loop.round(&restored)).await? {
            Round::Results(results) => results,
            Round::Choices { text, choices } => {
                let text = restore(redactor.as_ref(), &text);
                let choices = choices
                    .iter()
                    .map(|c| restore(redactor.as_ref(), c))
                    .collect();
                return Ok(spent.answer(ReplyKind::Bot, text, choices, estimated));
            }
            Round::HandOff => {
                let mut answer = spent.answer(
                    ReplyKind::HandoffNotice,
                    config.handoff_message.clone(),
                    Vec::new(),
                    estimated,
                );
                answer.hand_off = true;
                return Ok(answer);
            }
        };
        used += ctx.tokenizer.count(&completion.text) + PER_MESSAGE_TOKENS;
        request.messages.push(ChatMessage {
            role: ChatRole::Assistant,
            content: completion.text,
            tool_calls: completion.tool_calls.clone(),
            answers: None,
            images: Vec::new(),
        });
        for (call, result) in completion.tool_calls.iter().zip(results) {
            let result = match &mut redactor {
                Some(r) => r.redact(&result),
                None => result,
            };
            let result = fit(
                ctx,
                result,
                budget.saturating_sub(used + PER_MESSAGE_TOKENS),
            );
            used += ctx.tokenizer.count(&result) + PER_MESSAGE_TOKENS;
            request
                .messages
                .push(ChatMessage::tool_result(call, result));
        }
        if rounds >= ctx.tools.max_rounds {
            tracing::info!(
                rounds,
                "tool rounds used up; asking for an answer without tools"
            );
            request.tools.clear();
        }
    };
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        rounds,
        "llm answered"
    );
    if let Some(r) = &redactor {
        tracing::debug!(replaced = r.replaced(), "personal data kept from the model");
    }
    let text = restore(redactor.as_ref(), &completion.text);
    Ok(spent.answer(ReplyKind::Bot, text, Vec::new(), estimated))
}

/// `text` with the turn's placeholders put back (as it is, for a tenant that does not
/// redact).
fn restore(redactor: Option<&Redactor>, text: &str) -> String {
    redactor.map_or_else(|| text.to_owned(), |r| r.restore(text))
}

/// Sends the request to the tenant's model, or to its fallback model when the primary
/// fails with an outage or the tenant's own model failing (an unknown model name, its
/// quota); the request keeps asking the model that answered. What each call cost goes
/// to `spent`.
async fn chat(
    ctx: &Ctx,
    tenant: &TenantConfig,
    request: &mut ChatRequest,
    spent: &mut Spent,
) -> Result<Asked> {
    let config = &tenant.config;
    let e = match ctx.llm.chat(request).await {
        Ok(c) => {
            spent.add(ctx, request, &c);
            return Ok(Asked::Answered(c));
        }
        Err(e) => e,
    };
    if let Some((provider, reason)) = Box::pin(key_refused(ctx, tenant, request, &e)).await? {
        if !config.fallback_to_platform_key {
            tracing::warn!(
                provider,
                error = e.described(),
                "the tenant's own key was refused; answering with its fallback message"
            );
            return Ok(Asked::KeyRefused(reason));
        }
        tracing::warn!(
            provider,
            error = e.described(),
            "the tenant's own key was refused; the platform's key answers (fallback_to_platform_key)"
        );
        request.credentials = request
            .credentials
            .iter()
            .filter(|k| k.provider != provider)
            .cloned()
            .collect();
        spent.reason = Some(format!("{reason}; the platform's key answered"));
        if let Some(sink) = &request.deltas {
            let _ = sink.send(DeltaPiece::Restart);
        }
        let c = ctx.llm.chat(request).await?;
        spent.add(ctx, request, &c);
        return Ok(Asked::Answered(c));
    }
    let fallback = config
        .fallback_model
        .as_deref()
        .filter(|f| *f != request.model);
    let Some(fallback) = fallback.filter(|_| e.is_transient() || e.is_tenants_own()) else {
        return Err(e.into());
    };
    tracing::warn!(
        error = e.described(),
        fallback,
        "primary model failed; asking the fallback model"
    );
    metrics::counter!(metric::LLM_FALLBACKS).increment(1);
    fallback.clone_into(&mut request.model);
    if let Some(sink) = &request.deltas {
        let _ = sink.send(DeltaPiece::Restart);
    }
    match ctx.llm.chat(request).await {
        Ok(c) => {
            spent.add(ctx, request, &c);
            Ok(Asked::Answered(c))
        }
        Err(e) => match Box::pin(key_refused(ctx, tenant, request, &e)).await? {
            Some((_, reason)) => Ok(Asked::KeyRefused(reason)),
            None => Err(e.into()),
        },
    }
}

/// When `error` is the provider refusing the tenant's own key for the request's model:
/// `llm.credentials_failed` is emitted, and the provider and the reason returned.
async fn key_refused(
    ctx: &Ctx,
    tenant: &TenantConfig,
    request: &ChatRequest,
    error: &crate::llm::LlmError,
) -> Result<Option<(String, String)>> {
    let (provider, _) = ctx.llm.route(&request.model);
    if !error.is_key_refused() || LlmClient::tenant_key(request, provider).is_none() {
        return Ok(None);
    }
    let provider = provider.to_owned();
    credentials_failed(ctx, tenant, &provider, error).await?;
    let reason = format!("llm.credentials_failed: {provider}: {}", error.described());
    Ok(Some((provider, reason)))
}

/// The tenant's own keys, opened for this turn's calls (a key that does not open is
/// left out, and logged: the platform's key is no substitute the tenant asked for, so
/// its calls to that provider fail as refused).
fn tenant_keys(ctx: &Ctx, tenant: &TenantConfig) -> Arc<[TenantKey]> {
    tenant
        .llm_credentials
        .iter()
        .map(|c| {
            let api_key = ctx
                .secrets
                .open_llm_key(tenant.client.id, &c.provider, &c.key_sealed)
                .unwrap_or_else(|e| {
                    tracing::error!(provider = c.provider, error = %e, "the tenant's LLM key does not open (encryption key ring?)");
                    String::new()
                });
            TenantKey {
                provider: c.provider.clone(),
                api_key: shared::pii::Secret::new(api_key),
                base_url: c.base_url.clone(),
                organization: c.organization.clone(),
            }
        })
        .collect()
}

/// `llm.credentials_failed`: the provider refused the tenant's own key (once per
/// provider and hour: the event id is made of them, so a failing key does not flood
/// the tenant's endpoints).
async fn credentials_failed(
    ctx: &Ctx,
    tenant: &TenantConfig,
    provider: &str,
    error: &crate::llm::LlmError,
) -> Result<()> {
    metrics::counter!(metric::LLM_TENANT_KEY_REFUSED, "provider" => provider.to_owned())
        .increment(1);
    let hour = chrono::Utc::now().format("%Y-%m-%dT%H");
    let status = match error {
        crate::llm::LlmError::Status { status, .. } => Some(*status),
        _ => None,
    };
    let event = NewEvent::about(
        EventType::LlmCredentialsFailed,
        format!("{provider}/{hour}"),
    )
    .with("provider", provider.to_owned())
    .with("status", status)
    .with("error", error.described());
    ctx.webhooks().emit(tenant.client.id, event).await?;
    Ok(())
}

/// A tool's result cut to `tokens` (what is left of the budget), saying so.
fn fit(ctx: &Ctx, result: String, tokens: usize) -> String {
    let note = "\n[cut to fit the prompt]";
    if ctx.tokenizer.count(&result) <= tokens {
        return result;
    }
    let keep = tokens.saturating_sub(ctx.tokenizer.count(note));
    format!("{}{note}", ctx.tokenizer.truncate(&result, keep))
}

/// Tokens a turn's calls to the model spent, over all rounds, what they cost, and who
/// answered last.
#[derive(Default)]
struct Spent {
    prompt: Option<u32>,
    completion: Option<u32>,
    cost_micros: u64,
    /// A call had no price.
    unpriced: bool,
    /// The provider, model and key of the last call that answered.
    served: Option<(String, String, KeyOwner)>,
    /// Why another key or model answered.
    reason: Option<String>,
}

impl Spent {
    fn add(&mut self, ctx: &Ctx, request: &ChatRequest, c: &Completion) {
        let sum = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        };
        self.prompt = sum(self.prompt, c.prompt_tokens);
        self.completion = sum(self.completion, c.completion_tokens);
        let (provider, model) = ctx.llm.route(&request.model);
        let labels = [
            ("provider", provider.to_owned()),
            ("model", model.to_owned()),
        ];
        match ctx.llm_settings.price(provider, model) {
            Some(price) => {
                let cost = price.cost_micros(
                    c.prompt_tokens.unwrap_or(0),
                    c.completion_tokens.unwrap_or(0),
                );
                self.cost_micros = self.cost_micros.saturating_add(cost);
                metrics::counter!(metric::LLM_COST_MICROS, &labels).increment(cost);
            }
            None => {
                self.unpriced = true;
                metrics::counter!(metric::LLM_UNPRICED_CALLS, &labels).increment(1);
            }
        }
        let owner = if LlmClient::tenant_key(request, provider).is_some() {
            KeyOwner::Tenant
        } else {
            KeyOwner::Platform
        };
        self.served = Some((provider.to_owned(), model.to_owned(), owner));
    }

    /// What was spent, recorded on `answer`.
    fn onto(&self, mut answer: Answer) -> Answer {
        answer.prompt_tokens = self.prompt;
        answer.completion_tokens = self.completion;
        let a = &mut answer.accounting;
        if let Some((provider, model, owner)) = &self.served {
            a.provider = Some(provider.clone());
            a.model = Some(model.clone());
            a.key_owner = Some(*owner);
        }
        if self.served.is_some() || self.cost_micros > 0 {
            a.unpriced = self.unpriced;
            a.cost_micros = (!self.unpriced).then_some(self.cost_micros);
        }
        if a.fallback_reason.is_none() {
            a.fallback_reason.clone_from(&self.reason);
        }
        answer
    }

    fn answer(
        &self,
        kind: ReplyKind,
        text: String,
        choices: Vec<String>,
        estimated: u32,
    ) -> Answer {
        let mut answer = Answer::notice(kind, text);
        answer.choices = choices;
        answer.estimated_prompt_tokens = Some(estimated);
        self.onto(answer)
    }
}

/// The tenant's `top_k` knowledge chunks for `query`, best first. Retrieval is an
/// enhancement: when the embeddings provider or ChromaDB fails, the turn goes on
/// without knowledge (logged and counted) rather than failing.
async fn retrieve(
    ctx: &Ctx,
    client_id: ClientId,
    query: &str,
    top_k: u32,
    own: Option<shared::knowledge::OwnKey<'_>>,
) -> Vec<String> {
    if top_k == 0 {
        return Vec::new();
    }
    match ctx.knowledge.search(client_id, query, top_k, own).await {
        Ok(chunks) => chunks,
        Err(e) => {
            tracing::warn!(error = %e, "knowledge retrieval failed; answering without it");
            metrics::counter!(metric::RETRIEVAL_FAILURES).increment(1);
            Vec::new()
        }
    }
}
