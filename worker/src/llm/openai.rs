//! OpenAI-compatible chat completions (`POST /v1/chat/completions`), non-streaming and
//! server-sent events (`data: {chunk}` … `data: [DONE]`, usage in the last chunk when
//! `stream_options.include_usage` is honoured). Tools go as `tools`; the model's calls
//! come back as `tool_calls` (streamed in pieces by `index`), their results go as
//! `role: "tool"` messages with the call's `tool_call_id`.

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

/// One message as OpenAI takes it.
#[derive(Serialize)]
struct WireMessage<'a> {
    role: ChatRole,
    /// `null` for an assistant message that only calls tools.
    content: WireContent<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

/// A message's content: text (or `null`), or text and images as content parts.
#[derive(Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Text(Option<&'a str>),
    Parts(Vec<WirePart<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: WireImageUrl },
}

#[derive(Serialize)]
struct WireImageUrl {
    url: String,
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    r#type: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

fn serialize_messages<S: serde::Serializer>(
    messages: &[ChatMessage],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(messages.iter().map(|m| {
        WireMessage {
            role: m.role,
            content: if m.images.is_empty() {
                WireContent::Text(
                    (!m.content.is_empty() || m.tool_calls.is_empty()).then_some(&m.content),
                )
            } else {
                WireContent::Parts(
                    std::iter::once(WirePart::Text { text: &m.content })
                        .chain(m.images.iter().map(|i| WirePart::ImageUrl {
                            image_url: WireImageUrl { url: i.data_url() },
                        }))
                        .collect(),
                )
            },
            tool_calls: m
                .tool_calls
                .iter()
                .map(|c| WireToolCall {
                    id: &c.id,
                    r#type: "function",
                    function: WireFunction {
                        name: &c.name,
                        arguments: &c.arguments,
                    },
                })
                .collect(),
            tool_call_id: m.answers.as_ref().map(|(id, _)| id.as_str()),
        }
    }))
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<CallPiece>,
}

/// A tool call, or (streamed) a piece of one: the pieces of one call share its `index`.
#[derive(Debug, Deserialize)]
struct CallPiece {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: FunctionPiece,
}

#[derive(Debug, Default, Deserialize)]
struct FunctionPiece {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// Puts a streamed answer's tool call pieces together.
#[derive(Default)]
struct Calls(Vec<ToolCall>);

impl Calls {
    fn add(&mut self, position: usize, piece: CallPiece) {
        let index = piece.index.unwrap_or(position);
        while self.0.len() <= index {
            self.0.push(ToolCall {
                id: format!("call_{}", self.0.len()),
                name: String::new(),
                arguments: String::new(),
            });
        }
        let call = &mut self.0[index];
        if let Some(id) = piece.id {
            call.id = id;
        }
        if let Some(name) = piece.function.name {
            call.name.push_str(&name);
        }
        if let Some(arguments) = piece.function.arguments {
            call.arguments.push_str(&arguments);
        }
    }
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
    endpoint: &Endpoint<'_>,
    stream: bool,
    model: &str,
    request: &ChatRequest,
    limit: usize,
) -> Result<Completion, LlmError> {
    let mut call = http
        .post(format!(
            "{}/v1/chat/completions",
            endpoint.base_url.trim_end_matches('/')
        ))
        .json(&ChatBody {
            model,
            messages: &request.messages,
            tools: &request.tools,
            temperature: request.temperature,
            max_tokens: request.max_output_tokens,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
        });
    if !endpoint.api_key.is_empty() {
        call = call.bearer_auth(endpoint.api_key);
    }
    // The provider (or the gateway in front of it) joins the message's trace.
    if let Some(traceparent) = shared::telemetry::current_traceparent() {
        call = call.header("traceparent", traceparent);
    }
    if let Some(organization) = endpoint.organization {
        call = call.header("OpenAI-Organization", organization);
    }
    let response = call.send().await.map_err(transport_error)?;
    if !response.status().is_success() {
        return Err(status_error(response).await);
    }
    if !stream {
        let parsed: Response = serde_json::from_slice(&body(response, limit).await?)
            .map_err(|e| LlmError::Malformed(e.to_string()))?;
        let message = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message)
            .filter(|m| m.content.is_some() || !m.tool_calls.is_empty())
            .ok_or_else(|| {
                LlmError::Malformed("no choices[0].message.content or tool_calls".into())
            })?;
        let mut calls = Calls::default();
        for (i, piece) in message.tool_calls.into_iter().enumerate() {
            calls.add(i, piece);
        }
        let text = message.content.unwrap_or_default();
        return Ok(completion(text, calls, parsed.usage));
    }
    let mut text = String::new();
    let mut calls = Calls::default();
    let mut usage = None;
    let mut stream = std::pin::pin!(lines(response, limit));
    while let Some(line) = stream.next().await {
        let line = line?;
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            continue; // SSE comments, `event:` lines
        };
        if data == "[DONE]" {
            return Ok(completion(text, calls, usage));
        }
        let chunk: Response =
            serde_json::from_str(data).map_err(|e| LlmError::Malformed(e.to_string()))?;
        if let Some(delta) = chunk.choices.into_iter().next().and_then(|c| c.delta) {
            if let Some(content) = delta.content {
                request.stream_piece(&content);
                text.push_str(&content);
            }
            for (i, piece) in delta.tool_calls.into_iter().enumerate() {
                calls.add(i, piece);
            }
        }
        if chunk.usage.is_some() {
            usage = chunk.usage;
        }
    }
    Err(LlmError::Malformed("stream ended before [DONE]".into()))
}

fn completion(text: String, calls: Calls, usage: Option<Usage>) -> Completion {
    Completion {
        text,
        tool_calls: calls.0,
        prompt_tokens: usage.as_ref().and_then(|u| u.prompt_tokens),
        completion_tokens: usage.as_ref().and_then(|u| u.completion_tokens),
    }
}
