//! Ollama's native chat API (`POST /api/chat`), non-streaming and NDJSON streaming.
//! `options.num_ctx` is always set: Ollama's own default (2048) silently truncates
//! longer prompts.

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use shared::settings::ProviderSettings;

use super::{
    ChatMessage, ChatRequest, Completion, LlmError, body, lines, status_error, transport_error,
};

/// The request body, serialized straight from the turn's messages (no intermediate JSON
/// tree: with thousands of calls in flight, a copy of every prompt adds up).
#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    stream: bool,
    options: ChatOptions,
}

#[derive(Serialize)]
struct ChatOptions {
    temperature: f64,
    num_ctx: u32,
    /// The most tokens the answer may have.
    num_predict: u32,
}

#[derive(Debug, Deserialize)]
struct ChatChunk {
    #[serde(default)]
    message: Option<ChatMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    prompt_eval_count: Option<u32>,
    #[serde(default)]
    eval_count: Option<u32>,
    #[serde(default)]
    error: Option<String>,
}

/// Asks `model` (the provider's own name for it: the tenant's `llm_model` without a
/// provider prefix) with `request`'s messages and settings.
pub(super) async fn chat(
    http: &reqwest::Client,
    provider: &ProviderSettings,
    model: &str,
    request: &ChatRequest,
    limit: usize,
) -> Result<Completion, LlmError> {
    let mut call = http
        .post(format!(
            "{}/api/chat",
            provider.base_url.trim_end_matches('/')
        ))
        .json(&ChatBody {
            model,
            messages: &request.messages,
            stream: provider.stream,
            options: ChatOptions {
                temperature: request.temperature,
                num_ctx: request.num_ctx,
                num_predict: request.max_output_tokens,
            },
        });
    if !provider.api_key.expose().is_empty() {
        call = call.bearer_auth(provider.api_key.expose());
    }
    let response = call.send().await.map_err(transport_error)?;
    if !response.status().is_success() {
        return Err(status_error(response).await);
    }
    if !provider.stream {
        let chunk: ChatChunk = serde_json::from_slice(&body(response, limit).await?)
            .map_err(|e| LlmError::Malformed(e.to_string()))?;
        return finish(String::new(), chunk);
    }
    let mut text = String::new();
    let mut stream = std::pin::pin!(lines(response, limit));
    while let Some(line) = stream.next().await {
        let chunk: ChatChunk =
            serde_json::from_str(&line?).map_err(|e| LlmError::Malformed(e.to_string()))?;
        if chunk.done || chunk.error.is_some() {
            if let Some(m) = chunk.message.as_ref().filter(|_| chunk.error.is_none()) {
                request.stream_piece(&m.content);
            }
            return finish(text, chunk);
        }
        if let Some(m) = chunk.message {
            request.stream_piece(&m.content);
            text.push_str(&m.content);
        }
    }
    Err(LlmError::Malformed("stream ended before done".into()))
}

fn finish(mut text: String, last: ChatChunk) -> Result<Completion, LlmError> {
    if let Some(error) = last.error {
        return Err(LlmError::Malformed(error));
    }
    if let Some(m) = last.message {
        text.push_str(&m.content);
    }
    Ok(Completion {
        text,
        prompt_tokens: last.prompt_eval_count,
        completion_tokens: last.eval_count,
    })
}
