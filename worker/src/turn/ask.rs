//! Asking the tenant's model: the prompt assembled from the tenant's configuration, its
//! knowledge, the history and the question within the token budget (DESIGN.md §8), the
//! tenant's fallback model when the primary fails transiently, and the tool loop: while
//! the model calls tools, their results go back to it ([`tool_loop`](super::tool_loop)),
//! for at most `tools.max_rounds` rounds; then it is asked once more without tools.

use shared::db::{ClientConfig, HistoryTurn, TenantConfig};
use shared::envelope::ReplyKind;
use shared::ids::{ClientId, ReplyId};
use shared::metric;

use crate::Ctx;
use crate::error::Result;
use crate::llm::{ChatImage, ChatMessage, ChatRequest, ChatRole, Completion, DeltaPiece};
use crate::prompt;

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
        }
    }
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
    let knowledge = retrieve(ctx, client_id, text, config.rag_top_k).await;
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
        deltas: live.map(LiveReply::sink),
    };
    let mut tool_loop = None;
    let mut spent = Spent::default();
    let mut rounds = 0;
    let completion = loop {
        let completion = chat(ctx, config, &mut request).await?;
        spent.add(&completion);
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
        let results = match Box::pin(tool_loop.round(&completion.tool_calls)).await? {
            Round::Results(results) => results,
            Round::Choices { text, choices } => {
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
    Ok(spent.answer(ReplyKind::Bot, completion.text, Vec::new(), estimated))
}

/// Sends the request to the tenant's model, or to its fallback model when the primary
/// fails with an outage or the tenant's own model failing (an unknown model name, its
/// quota); the request keeps asking the model that answered.
async fn chat(ctx: &Ctx, config: &ClientConfig, request: &mut ChatRequest) -> Result<Completion> {
    match ctx.llm.chat(request).await {
        Ok(c) => Ok(c),
        Err(e)
            if (e.is_transient() || e.is_tenants_own())
                && config
                    .fallback_model
                    .as_deref()
                    .is_some_and(|f| f != request.model) =>
        {
            let fallback = config.fallback_model.as_deref().unwrap_or_default();
            tracing::warn!(error = %e, fallback, "primary model failed; asking the fallback model");
            metrics::counter!(metric::LLM_FALLBACKS).increment(1);
            fallback.clone_into(&mut request.model);
            if let Some(sink) = &request.deltas {
                let _ = sink.send(DeltaPiece::Restart);
            }
            Ok(ctx.llm.chat(request).await?)
        }
        Err(e) => Err(e.into()),
    }
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

/// Tokens a turn's calls to the model spent, over all rounds.
#[derive(Default)]
struct Spent {
    prompt: Option<u32>,
    completion: Option<u32>,
}

impl Spent {
    fn add(&mut self, c: &Completion) {
        let sum = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        };
        self.prompt = sum(self.prompt, c.prompt_tokens);
        self.completion = sum(self.completion, c.completion_tokens);
    }

    fn answer(
        &self,
        kind: ReplyKind,
        text: String,
        choices: Vec<String>,
        estimated: u32,
    ) -> Answer {
        Answer {
            reply_id: None,
            kind,
            text,
            choices,
            hand_off: false,
            prompt_tokens: self.prompt,
            completion_tokens: self.completion,
            estimated_prompt_tokens: Some(estimated),
        }
    }
}

/// The tenant's `top_k` knowledge chunks for `query`, best first. Retrieval is an
/// enhancement: when the embeddings provider or ChromaDB fails, the turn goes on
/// without knowledge (logged and counted) rather than failing.
async fn retrieve(ctx: &Ctx, client_id: ClientId, query: &str, top_k: u32) -> Vec<String> {
    if top_k == 0 {
        return Vec::new();
    }
    match ctx.knowledge.search(client_id, query, top_k).await {
        Ok(chunks) => chunks,
        Err(e) => {
            tracing::warn!(error = %e, "knowledge retrieval failed; answering without it");
            metrics::counter!(metric::RETRIEVAL_FAILURES).increment(1);
            Vec::new()
        }
    }
}
