//! Asking the tenant's model: the prompt assembled from the tenant's configuration, its
//! knowledge, the history and the question within the token budget (DESIGN.md §8), and
//! the tenant's fallback model when the primary fails transiently.

use shared::db::{HistoryTurn, TenantConfig};
use shared::envelope::ReplyKind;
use shared::ids::{ClientId, ReplyId};
use shared::metric;

use crate::Ctx;
use crate::error::Result;
use crate::llm::{ChatRequest, DeltaPiece};
use crate::prompt;

use super::live::LiveReply;

/// What to say back.
pub(crate) struct Answer {
    /// The id the reply is stored under (the one its live deltas carried); `None`: a
    /// new one.
    pub reply_id: Option<ReplyId>,
    pub kind: ReplyKind,
    pub text: String,
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
            prompt_tokens: None,
            completion_tokens: None,
            estimated_prompt_tokens: None,
        }
    }
}

/// Assembles the prompt (DESIGN.md §8) from the tenant's configuration, its knowledge,
/// `history` and the question, and asks the tenant's model (its fallback model when
/// the primary fails transiently).
pub(crate) async fn ask_llm(
    ctx: &Ctx,
    tenant: &TenantConfig,
    history: &[HistoryTurn],
    text: &str,
    live: Option<&LiveReply>,
) -> Result<Answer> {
    let client_id = tenant.client.id;
    let config = &tenant.config;
    let (_, model) = ctx.llm.route(&config.llm_model);
    let num_ctx = ctx.llm_settings.context_window(model);
    let mut budget = num_ctx.saturating_sub(ctx.llm_settings.completion_reserve);
    if let Some(own) = config.prompt_token_budget {
        budget = budget.min(own);
    }
    let knowledge = retrieve(ctx, client_id, text, config.rag_top_k).await;
    let prompt = prompt::assemble(
        &ctx.tokenizer,
        budget as usize,
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
    let estimated = u32::try_from(prompt.tokens).unwrap_or(u32::MAX);
    let started = std::time::Instant::now();
    // The prompt's messages move into the request: no copy of the prompt per call.
    let mut request = ChatRequest {
        tenant: client_id,
        weight: ctx.plans.limits(tenant.client.plan).weight,
        model: config.llm_model.clone(),
        temperature: config.llm_temperature,
        num_ctx,
        max_output_tokens: config.llm_max_output_tokens,
        messages: prompt.messages,
        deltas: live.map(LiveReply::sink),
    };
    let completion = match ctx.llm.chat(&request).await {
        Ok(c) => c,
        // A fallback model helps with an outage and with the tenant's own model failing
        // (an unknown model name, its quota).
        Err(e) if (e.is_transient() || e.is_tenants_own()) && config.fallback_model.is_some() => {
            let fallback = config.fallback_model.as_deref().unwrap_or_default();
            tracing::warn!(error = %e, fallback, "primary model failed; asking the fallback model");
            metrics::counter!(metric::LLM_FALLBACKS).increment(1);
            fallback.clone_into(&mut request.model);
            if let Some(sink) = &request.deltas {
                let _ = sink.send(DeltaPiece::Restart);
            }
            ctx.llm.chat(&request).await?
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "llm answered"
    );

    Ok(Answer {
        reply_id: None,
        kind: ReplyKind::Bot,
        text: completion.text,
        prompt_tokens: completion.prompt_tokens,
        completion_tokens: completion.completion_tokens,
        estimated_prompt_tokens: Some(estimated),
    })
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
