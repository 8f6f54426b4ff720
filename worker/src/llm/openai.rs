//! OpenAI-compatible chat completions (`POST /v1/chat/completions`), non-streaming and
//! server-sent events (`data: {chunk}` … `data: [DONE]`, usage in the last chunk when
//! `stream_options.include_usage` is honoured).

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
    temperature: f64,
    max_tokens: u32,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct Usage {
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    delta: Option<Message>,
}

#[derive(Debug, Deserialize)]
struct Response {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
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
            "{}/v1/chat/completions",
            provider.base_url.trim_end_matches('/')
        ))
        .json(&ChatBody {
            model,
            messages: &request.messages,
            temperature: request.temperature,
            max_tokens: request.max_output_tokens,
            stream: provider.stream,
            stream_options: provider.stream.then_some(StreamOptions {
                include_usage: true,
            }),
        });
    if !provider.api_key.expose().is_empty() {
        call = call.bearer_auth(provider.api_key.expose());
    }
    let response = call.send().await.map_err(transport_error)?;
    if !response.status().is_success() {
        return Err(status_error(response).await);
    }
    if !provider.stream {
        let parsed: Response = serde_json::from_slice(&body(response, limit).await?)
            .map_err(|e| LlmError::Malformed(e.to_string()))?;
        let text = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message)
            .and_then(|m| m.content)
            .ok_or_else(|| LlmError::Malformed("no choices[0].message.content".into()))?;
        return Ok(completion(text, parsed.usage));
    }
    let mut text = String::new();
    let mut usage = None;
    let mut stream = std::pin::pin!(lines(response, limit));
    while let Some(line) = stream.next().await {
        let line = line?;
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            continue; // SSE comments, `event:` lines
        };
        if data == "[DONE]" {
            return Ok(completion(text, usage));
        }
        let chunk: Response =
            serde_json::from_str(data).map_err(|e| LlmError::Malformed(e.to_string()))?;
        if let Some(content) = chunk
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.delta)
            .and_then(|d| d.content)
        {
            request.stream_piece(&content);
            text.push_str(&content);
        }
        if chunk.usage.is_some() {
            usage = chunk.usage;
        }
    }
    Err(LlmError::Malformed("stream ended before [DONE]".into()))
}

fn completion(text: String, usage: Option<Usage>) -> Completion {
    Completion {
        text,
        prompt_tokens: usage.as_ref().and_then(|u| u.prompt_tokens),
        completion_tokens: usage.as_ref().and_then(|u| u.completion_tokens),
    }
}
