//! The simulator's HTTP side: each provider's request format read into the neutral
//! messages the answers are made from, and answered in that provider's response format,
//! streamed or not; embeddings, transcriptions and the model lists.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    RecordedChat, Shared, SimAnswer, WireFormat, answer_for, bearer, count_tokens, embed, gate,
    refused_key,
};
use crate::llm::{ChatImage, ChatMessage, ChatRole, ToolCall};

/// Records a chat request, then lets it through unless its key was revoked or the
/// model's fault or the error rate refuses it.
async fn admit(shared: &Shared, chat: RecordedChat) -> Result<(), Response> {
    let (api_key, model) = (chat.api_key.clone(), chat.model.clone());
    record(shared, chat);
    if let Some(refused) = refused_key(shared, &api_key) {
        return Err(refused);
    }
    gate(shared, &model).await?;
    shared.served.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// The caller's W3C trace context, recorded for the trace tests.
fn traceparent(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// What the model says: text, or tool calls (see [`answer_for`]).
fn answer(model: &str, messages: &[ChatMessage], tools: &[String]) -> (String, Vec<ToolCall>) {
    match answer_for(model, messages, tools) {
        SimAnswer::Text(text) => (text, Vec::new()),
        SimAnswer::Calls(calls) => (String::new(), calls),
    }
}

fn bad_request(msg: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response()
}

/// A chat message of either wire format, as received.
#[derive(Debug, Deserialize)]
struct SimMessage {
    role: ChatRole,
    /// Text, or (OpenAI) content parts of text and `image_url`s.
    #[serde(default)]
    content: Option<Value>,
    /// Ollama: a user message's images, base64.
    #[serde(default)]
    images: Vec<String>,
    #[serde(default)]
    tool_calls: Vec<Value>,
    /// OpenAI: the call a tool message answers.
    #[serde(default)]
    tool_call_id: Option<String>,
    /// Ollama: the tool a tool message answers.
    #[serde(default)]
    tool_name: Option<String>,
}

/// The received messages, provider-neutral: a tool call's arguments as JSON text, a tool
/// result's call id and tool name (found from the call, for OpenAI).
fn neutral(messages: Vec<SimMessage>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::new();
    for m in messages {
        let tool_calls = m
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| ToolCall {
                id: c["id"]
                    .as_str()
                    .map_or_else(|| format!("call_{i}"), str::to_owned),
                name: c["function"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                arguments: match &c["function"]["arguments"] {
                    Value::String(raw) => raw.clone(),
                    other => other.to_string(),
                },
            })
            .collect();
        let answers = (m.role == ChatRole::Tool).then(|| {
            let id = m.tool_call_id.clone().unwrap_or_default();
            let name = m.tool_name.clone().unwrap_or_else(|| {
                out.iter()
                    .flat_map(|o| &o.tool_calls)
                    .find(|c| c.id == id)
                    .map(|c| c.name.clone())
                    .unwrap_or_default()
            });
            (id, name)
        });
        let (content, mut images) = match m.content {
            Some(Value::String(text)) => (text, Vec::new()),
            Some(Value::Array(parts)) => content_parts(&parts),
            _ => (String::new(), Vec::new()),
        };
        images.extend(m.images.into_iter().map(|b| ChatImage {
            mime: "image/*".into(),
            base64: b.into(),
        }));
        out.push(ChatMessage {
            role: m.role,
            content,
            tool_calls,
            answers,
            images,
        });
    }
    out
}

/// OpenAI content parts: the text parts joined, and the images of the `image_url` parts
/// (data URLs).
fn content_parts(parts: &[Value]) -> (String, Vec<ChatImage>) {
    let mut text = Vec::new();
    let mut images = Vec::new();
    for part in parts {
        match part["type"].as_str() {
            Some("text") => text.push(part["text"].as_str().unwrap_or_default()),
            Some("image_url") => {
                let url = part["image_url"]["url"].as_str().unwrap_or_default();
                if let Some((mime, data)) = url
                    .strip_prefix("data:")
                    .and_then(|u| u.split_once(";base64,"))
                {
                    images.push(ChatImage {
                        mime: mime.to_owned(),
                        base64: data.into(),
                    });
                }
            }
            _ => {}
        }
    }
    (text.join("\n"), images)
}

/// The names of the tools a request offers.
fn tool_names(tools: &Value) -> Vec<String> {
    tools
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
        .collect()
}

#[derive(Debug, Deserialize)]
struct OllamaChatRequest {
    model: String,
    messages: Vec<SimMessage>,
    #[serde(default)]
    tools: Value,
    #[serde(default = "default_true")]
    stream: bool,
    #[serde(default)]
    options: Value,
}

fn default_true() -> bool {
    true
}

fn words(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

pub(super) async fn ollama_chat(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let api_key = bearer(&headers);
    let Ok(req) = serde_json::from_slice::<OllamaChatRequest>(&body) else {
        return bad_request("invalid chat request");
    };
    let messages = neutral(req.messages);
    let tools = tool_names(&req.tools);
    if let Err(refused) = admit(
        &shared,
        RecordedChat {
            format: WireFormat::Ollama,
            model: req.model.clone(),
            temperature: req.options["temperature"].as_f64(),
            num_ctx: req.options["num_ctx"].as_u64(),
            max_tokens: req.options["num_predict"].as_u64(),
            stream: req.stream,
            messages: messages.clone(),
            tools: tools.clone(),
            api_key: api_key.clone(),
            traceparent: traceparent(&headers),
        },
    )
    .await
    {
        return refused;
    }
    let prompt_tokens = count_tokens(&messages);
    let created = chrono::Utc::now().to_rfc3339();
    let (text, calls) = answer(&req.model, &messages, &tools);
    let eval = text.split_whitespace().count() as u64 + calls.len() as u64;
    let tool_calls: Vec<Value> = calls
        .iter()
        .map(|c| {
            let arguments = serde_json::from_str::<Value>(&c.arguments)
                .unwrap_or_else(|_| Value::String(c.arguments.clone()));
            json!({ "function": { "name": c.name, "arguments": arguments } })
        })
        .collect();
    let mut message = json!({ "role": "assistant", "content": if req.stream { String::new() } else { text.clone() } });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let done = |message: Value| {
        json!({
            "model": req.model, "created_at": created,
            "message": message,
            "done": true, "done_reason": "stop",
            "prompt_eval_count": prompt_tokens, "eval_count": eval,
            "total_duration": 1, "load_duration": 0, "prompt_eval_duration": 1, "eval_duration": 1,
        })
    };
    if !req.stream {
        return Json(done(message)).into_response();
    }
    let mut parts: Vec<String> = words(&text)
        .into_iter()
        .map(|w| {
            let chunk = json!({
                "model": req.model, "created_at": created,
                "message": { "role": "assistant", "content": w }, "done": false,
            });
            format!("{chunk}\n")
        })
        .collect();
    if !calls.is_empty() {
        // Ollama streams a call whole, in a chunk of its own.
        let chunk =
            json!({ "model": req.model, "created_at": created, "message": message, "done": false });
        parts.push(format!("{chunk}\n"));
    }
    let last = done(json!({ "role": "assistant", "content": "" }));
    parts.push(format!("{last}\n"));
    streamed(&shared, "application/x-ndjson", parts)
}

#[derive(Debug, Deserialize)]
struct OpenAiChatRequest {
    model: String,
    messages: Vec<SimMessage>,
    #[serde(default)]
    tools: Value,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    temperature: Value,
    #[serde(default)]
    max_tokens: Value,
    #[serde(default)]
    stream_options: Value,
}

pub(super) async fn openai_chat(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let api_key = bearer(&headers);
    let Ok(req) = serde_json::from_slice::<OpenAiChatRequest>(&body) else {
        return bad_request("invalid chat request");
    };
    let messages = neutral(req.messages);
    let tools = tool_names(&req.tools);
    if let Err(refused) = admit(
        &shared,
        RecordedChat {
            format: WireFormat::OpenAi,
            model: req.model.clone(),
            temperature: req.temperature.as_f64(),
            num_ctx: None,
            max_tokens: req.max_tokens.as_u64(),
            stream: req.stream,
            messages: messages.clone(),
            tools: tools.clone(),
            api_key: api_key.clone(),
            traceparent: traceparent(&headers),
        },
    )
    .await
    {
        return refused;
    }
    let (text, calls) = answer(&req.model, &messages, &tools);
    let prompt_tokens = count_tokens(&messages);
    let completion_tokens = text.split_whitespace().count() as u64 + calls.len() as u64;
    let usage = json!({
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = chrono::Utc::now().timestamp();
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    if !req.stream {
        let message = if calls.is_empty() {
            json!({ "role": "assistant", "content": text })
        } else {
            let tool_calls: Vec<Value> = calls
                .iter()
                .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
                .collect();
            json!({ "role": "assistant", "content": null, "tool_calls": tool_calls })
        };
        return Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": req.model,
            "choices": [{ "index": 0, "message": message, "finish_reason": finish }],
            "usage": usage,
        }))
        .into_response();
    }
    let mut parts = Vec::new();
    let mut push = |v: Value| parts.push(format!("data: {v}\n\n"));
    let chunk = |delta: Value, finish: Value| {
        json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": req.model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] })
    };
    push(chunk(
        json!({ "role": "assistant", "content": "" }),
        Value::Null,
    ));
    for w in words(&text) {
        push(chunk(json!({ "content": w }), Value::Null));
    }
    // A call streams as OpenAI streams it: its id and name first, its arguments in pieces.
    for (index, c) in calls.iter().enumerate() {
        push(chunk(
            json!({ "tool_calls": [{ "index": index, "id": c.id, "type": "function", "function": { "name": c.name, "arguments": "" } }] }),
            Value::Null,
        ));
        let cut = c
            .arguments
            .char_indices()
            .nth(c.arguments.chars().count() / 2)
            .map_or(0, |(i, _)| i);
        for piece in [&c.arguments[..cut], &c.arguments[cut..]] {
            push(chunk(
                json!({ "tool_calls": [{ "index": index, "function": { "arguments": piece } }] }),
                Value::Null,
            ));
        }
    }
    push(chunk(json!({}), Value::from(finish)));
    if req.stream_options["include_usage"] == json!(true) {
        push(
            json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": req.model,
            "choices": [], "usage": usage }),
        );
    }
    parts.push("data: [DONE]\n\n".to_owned());
    streamed(&shared, "text/event-stream", parts)
}

/// A streamed answer's body: all at once, or a part per `word_delay` when one is set.
fn streamed(shared: &Shared, content_type: &'static str, parts: Vec<String>) -> Response {
    let delay = shared
        .options
        .lock()
        .map(|o| o.word_delay)
        .unwrap_or_default();
    if delay.is_zero() {
        return ([(header::CONTENT_TYPE, content_type)], parts.concat()).into_response();
    }
    let body = async_stream::stream! {
        for (i, part) in parts.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(delay).await;
            }
            yield Ok::<_, std::convert::Infallible>(part);
        }
    };
    (
        [(header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

fn record(shared: &Shared, chat: RecordedChat) {
    if let Ok(mut r) = shared.recorded.lock() {
        r.push(chat);
    }
}

/// `input` of an embeddings request: one string or many.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

impl EmbedInput {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
struct EmbedRequest {
    model: String,
    input: EmbedInput,
}

pub(super) async fn ollama_embed(
    State(shared): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<EmbedRequest>(&body) else {
        return bad_request("invalid embed request");
    };
    if let Err(r) = gate(&shared, "").await {
        return r;
    }
    let embeddings: Vec<Vec<f32>> = req.input.into_vec().iter().map(|t| embed(t)).collect();
    Json(json!({ "model": req.model, "embeddings": embeddings })).into_response()
}

pub(super) async fn openai_embed(
    State(shared): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<EmbedRequest>(&body) else {
        return bad_request("invalid embeddings request");
    };
    if let Err(r) = gate(&shared, "").await {
        return r;
    }
    let inputs = req.input.into_vec();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({ "object": "embedding", "index": i, "embedding": embed(t) }))
        .collect();
    Json(json!({
        "object": "list", "data": data, "model": req.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response()
}

/// OpenAI's transcription endpoint: the file's bytes, read as UTF-8, are its words.
pub(super) async fn openai_transcribe(
    State(shared): State<Arc<Shared>>,
    mut form: axum::extract::Multipart,
) -> Response {
    shared.transcriptions.fetch_add(1, Ordering::SeqCst);
    let (mut file, mut model, mut verbose) = (None, None, false);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("file") => file = field.bytes().await.ok(),
            Some("model") => model = field.text().await.ok(),
            Some("response_format") => {
                verbose = field.text().await.is_ok_and(|f| f == "verbose_json");
            }
            _ => {}
        }
    }
    let (Some(file), Some(_model)) = (file, model) else {
        return bad_request("a transcription needs a file and a model");
    };
    if file.starts_with(b"UNAVAILABLE") {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": { "message": "llm-sim: transcription unavailable", "type": "server_error" } })),
        )
            .into_response();
    }
    let text = String::from_utf8_lossy(&file);
    if verbose {
        // A second of speech per ten bytes: durations tests can price.
        let duration = file.len() as f64 / 10.0;
        return Json(json!({ "task": "transcribe", "duration": duration, "text": text }))
            .into_response();
    }
    Json(json!({ "text": text })).into_response()
}

pub(super) async fn ollama_tags() -> Response {
    Json(
        json!({ "models": [{ "name": "llama3.1:8b", "model": "llama3.1:8b", "size": 0,
        "details": { "family": "llm-sim" } }] }),
    )
    .into_response()
}

pub(super) async fn openai_models() -> Response {
    Json(json!({ "object": "list", "data": [{ "id": "llama3.1:8b", "object": "model", "owned_by": "llm-sim" }] }))
        .into_response()
}
