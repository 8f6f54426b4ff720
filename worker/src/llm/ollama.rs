//! Ollama's native chat API (`POST /api/chat`), non-streaming and NDJSON streaming.
//! `options.num_ctx` is always set: Ollama's own default (2048) silently truncates
//! longer prompts. Tools go as `tools`; the model's calls come back as
//! `message.tool_calls` (arguments as an object, no ids: the worker numbers them), their
//! results go as `role: "tool"` messages naming the tool (`tool_name`).

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::{
    ChatMessage, ChatRequest, ChatRole, Completion, Endpoint, LlmError, ToolCall, ToolSpec, body,
    lines, serialize_tools, status_error, transport_error,
};

/// The request body, serialized straight from the turn's messages (no intermediate JSON
/// tree: with thousands of calls in flight, a copy of every prompt adds up).
#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    #[serde(serialize_with = "serialize_messages")]
    messages: &'a [ChatMessage],
    #[serde(
        serialize_with = "serialize_tools",
        skip_serializing_if = "<[ToolSpec]>::is_empty"
    )]
    tools: &'a [ToolSpec],
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

/// One message as Ollama takes it.
#[derive(Serialize)]
struct WireMessage<'a> {
    role: ChatRole,
    content: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_name: Option<&'a str>,
    /// A user message's images, base64.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<&'a str>,
}

#[derive(Serialize, Deserialize)]
struct WireToolCall {
    function: WireFunction,
}

#[derive(Serialize, Deserialize)]
struct WireFunction {
    name: String,
    /// An object (Ollama's form); arguments that were not JSON go as the string.
    #[serde(default)]
    arguments: serde_json::Value,
}

fn serialize_messages<S: serde::Serializer>(
    messages: &[ChatMessage],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(messages.iter().map(|m| {
        WireMessage {
            role: m.role,
            content: &m.content,
            tool_calls: m
                .tool_calls
                .iter()
                .map(|c| WireToolCall {
                    function: WireFunction {
                        name: c.name.clone(),
                        arguments: serde_json::from_str(&c.arguments)
                            .unwrap_or_else(|_| serde_json::Value::String(c.arguments.clone())),
                    },
                })
                .collect(),
            tool_name: m.answers.as_ref().map(|(_, name)| name.as_str()),
            images: m.images.iter().map(|i| &*i.base64).collect(),
        }
    }))
}

#[derive(Debug, Deserialize)]
struct AnswerMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

impl std::fmt::Debug for WireToolCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireToolCall")
            .field("name", &self.function.name)
            .finish()
    }
}

/// Takes a message's tool calls, numbering them after those taken before.
fn take_calls(calls: &mut Vec<ToolCall>, message: &mut AnswerMessage) {
    for call in message.tool_calls.drain(..) {
        let arguments = match call.function.arguments {
            serde_json::Value::String(raw) => raw,
            other => other.to_string(),
        };
        calls.push(ToolCall {
            id: format!("call_{}", calls.len()),
            name: call.function.name,
            arguments,
        });
    }
}

#[derive(Debug, Deserialize)]
struct ChatChunk {
    #[serde(default)]
    message: Option<AnswerMessage>,
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
    endpoint: &Endpoint<'_>,
    stream: bool,
    model: &str,
    request: &ChatRequest,
    limit: usize,
) -> Result<Completion, LlmError> {
    let mut call = http
        .post(format!(
            "{}/api/chat",
            endpoint.base_url.trim_end_matches('/')
        ))
        .json(&ChatBody {
            model,
            messages: &request.messages,
            tools: &request.tools,
            stream,
            options: ChatOptions {
                temperature: request.temperature,
                num_ctx: request.num_ctx,
                num_predict: request.max_output_tokens,
            },
        });
    if !endpoint.api_key.is_empty() {
        call = call.bearer_auth(endpoint.api_key);
    }
    // The provider (or the gateway in front of it) joins the message's trace.
    if let Some(traceparent) = shared::telemetry::current_traceparent() {
        call = call.header("traceparent", traceparent);
    }
    let response = call.send().await.map_err(transport_error)?;
    if !response.status().is_success() {
        return Err(status_error(response).await);
    }
    if !stream {
        let chunk: ChatChunk = serde_json::from_slice(&body(response, limit).await?)
            .map_err(|e| LlmError::Malformed(e.to_string()))?;
        return finish(String::new(), Vec::new(), chunk);
    }
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut stream = std::pin::pin!(lines(response, limit));
    while let Some(line) = stream.next().await {
        let chunk: ChatChunk =
            serde_json::from_str(&line?).map_err(|e| LlmError::Malformed(e.to_string()))?;
        if chunk.done || chunk.error.is_some() {
            if let Some(m) = chunk.message.as_ref().filter(|_| chunk.error.is_none()) {
                request.stream_piece(&m.content);
            }
            return finish(text, calls, chunk);
        }
        if let Some(mut m) = chunk.message {
            request.stream_piece(&m.content);
            text.push_str(&m.content);
            take_calls(&mut calls, &mut m);
        }
    }
    Err(LlmError::Malformed("stream ended before done".into()))
}

fn finish(
    mut text: String,
    mut calls: Vec<ToolCall>,
    last: ChatChunk,
) -> Result<Completion, LlmError> {
    if let Some(error) = last.error {
        return Err(LlmError::Malformed(error));
    }
    if let Some(mut m) = last.message {
        text.push_str(&m.content);
        take_calls(&mut calls, &mut m);
    }
    Ok(Completion {
        text,
        tool_calls: calls,
        prompt_tokens: last.prompt_eval_count,
        completion_tokens: last.eval_count,
    })
}
