//! `chatfleet llm-sim`: an LLM test double that speaks the real wire formats of Ollama
//! (`/api/chat`, `/api/embed`, `/api/tags`) and OpenAI-compatible servers
//! (`/v1/chat/completions`, `/v1/embeddings`, `/v1/models`), streaming and not.
//!
//! Replies are deterministic and show what the platform sent:
//! `[<model>] <first line of the system prompt> | You said: <last user message>`.
//! Tools are called deterministically too: while a request offers tools, each line
//! `TOOL <name> <arguments>` of the last user message becomes a call of `<name>` with
//! those arguments (as written: invalid JSON stays invalid), once; `TOOL-LOOP` lines are
//! called again every round. After tool results, the answer quotes them:
//! `… | Tool <name> said: <result> | You said: …`.
//! Embeddings are deterministic too (hashed bag of words, unit length), so retrieval
//! tests rank by shared words. `/v1/audio/transcriptions` (OpenAI's multipart form:
//! `file`, `model`, `response_format`) "hears" a file's bytes as UTF-8 text (with
//! `verbose_json`, a second of audio per ten bytes as its `duration`), and answers 503 to a file
//! that starts with `UNAVAILABLE` (a transcription outage). Latency and an error rate are configurable; every chat
//! request is recorded (with the key it presented) for tests to inspect, and keys can be
//! revoked (answered 401 as OpenAI does).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{ChatMessage, ChatRole, ToolCall};
use wire::{
    ollama_chat, ollama_embed, ollama_tags, openai_chat, openai_embed, openai_models,
    openai_transcribe,
};

mod wire;

/// Embedding dimension of the simulator.
pub const EMBEDDING_DIM: usize = 64;

#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Added before every answer (chat and embeddings).
    pub latency: Duration,
    /// Fraction of requests answered 503, 0.0–1.0.
    pub error_rate: f64,
    /// Between the words of a streamed answer (a model writing at that pace).
    pub word_delay: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            error_rate: 0.0,
            word_delay: Duration::ZERO,
        }
    }
}

/// Which wire format a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    Ollama,
    OpenAi,
}

/// A chat request as the simulator received it.
#[derive(Debug, Clone)]
pub struct RecordedChat {
    pub format: WireFormat,
    pub model: String,
    pub temperature: Option<f64>,
    pub num_ctx: Option<u64>,
    /// The output limit asked for (`max_tokens`, Ollama's `options.num_predict`).
    pub max_tokens: Option<u64>,
    pub stream: bool,
    pub messages: Vec<ChatMessage>,
    /// The names of the tools offered.
    pub tools: Vec<String>,
    /// The `Authorization: Bearer` key the call presented (empty: none).
    pub api_key: String,
    /// The W3C `traceparent` the call carried.
    pub traceparent: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    options: Mutex<SimOptionsState>,
    recorded: Mutex<Vec<RecordedChat>>,
    unavailable: AtomicBool,
    /// Models that misbehave whatever the error rate.
    faulty_models: Mutex<Vec<(String, ModelFault)>>,
    /// Keys answered 401, as a provider answers a revoked key.
    revoked_keys: Mutex<Vec<String>>,
    served: AtomicU64,
    /// Time actually spent waiting out the latency (the timer rounds up), and how often.
    held_micros: AtomicU64,
    holds: AtomicU64,
    transcriptions: AtomicU64,
}

#[derive(Debug, Default, Clone)]
struct SimOptionsState {
    latency: Duration,
    error_rate: f64,
    word_delay: Duration,
}

/// How a model misbehaves.
#[derive(Debug, Clone)]
enum ModelFault {
    /// Answers this status with this JSON body.
    Status(u16, Value),
    /// Holds every call until the caller gives up.
    Hang,
}

/// A running simulator.
#[derive(Debug, Clone)]
pub struct LlmSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl LlmSim {
    /// Binds `addr` (port 0: any free port) and serves until [`LlmSim::stop`] or `shutdown`.
    pub async fn start(
        addr: SocketAddr,
        options: SimOptions,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        if let Ok(mut o) = shared.options.lock() {
            o.latency = options.latency;
            o.error_rate = options.error_rate;
            o.word_delay = options.word_delay;
        }
        let app = Router::new()
            .route("/api/chat", post(ollama_chat))
            .route("/api/embed", post(ollama_embed))
            .route("/api/tags", get(ollama_tags))
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/embeddings", post(openai_embed))
            .route("/v1/models", get(openai_models))
            .route("/v1/audio/transcriptions", post(openai_transcribe))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = shutdown.child_token();
        let until = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { until.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "llm-sim stopped");
            }
        });
        Ok(Self { addr, shared, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every chat request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedChat> {
        self.shared
            .recorded
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// How many transcription requests were received.
    pub fn transcriptions(&self) -> u64 {
        self.shared.transcriptions.load(Ordering::SeqCst)
    }

    /// Answers every request with 503 while `true` (an LLM outage).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Makes every request for `model` fail with 503 (a provider down for one model).
    pub fn fail_model(&self, model: &str) {
        let body = json!({ "error": "llm-sim: simulated overload" });
        self.fault(model, ModelFault::Status(503, body));
    }

    /// Answers every request for `model` with `status` and the error body the OpenAI
    /// API sends (`{"error": {"message", "type", "code"}}`); e.g. 401 for a refused key,
    /// 404 for an unknown model.
    pub fn refuse_model(&self, model: &str, status: u16, message: &str) {
        let body = json!({ "error": { "message": message, "type": "invalid_request_error", "code": status } });
        self.fault(model, ModelFault::Status(status, body));
    }

    /// Holds every request for `model` without answering (a hung model).
    /// Answers every call presenting `key` 401, quoting the key masked as OpenAI does.
    pub fn revoke_key(&self, key: &str) {
        if let Ok(mut keys) = self.shared.revoked_keys.lock() {
            keys.push(key.to_owned());
        }
    }

    pub fn hang_model(&self, model: &str) {
        self.fault(model, ModelFault::Hang);
    }

    fn fault(&self, model: &str, fault: ModelFault) {
        if let Ok(mut m) = self.shared.faulty_models.lock() {
            m.push((model.to_owned(), fault));
        }
    }

    /// Changes the simulated latency.
    pub fn set_latency(&self, latency: Duration) {
        if let Ok(mut o) = self.shared.options.lock() {
            o.latency = latency;
        }
    }

    /// Changes the pause between the words of a streamed answer.
    pub fn set_word_delay(&self, delay: Duration) {
        if let Ok(mut o) = self.shared.options.lock() {
            o.word_delay = delay;
        }
    }

    /// Number of successful chat answers.
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// How long a request was actually held, on average, when a latency was set: a
    /// little more than the latency, since timers round up to the next millisecond and
    /// wake when the scheduler gets to them. `None` before the first such request.
    pub fn mean_hold(&self) -> Option<Duration> {
        let holds = self.shared.holds.load(Ordering::Relaxed);
        (holds > 0)
            .then(|| Duration::from_micros(self.shared.held_micros.load(Ordering::Relaxed) / holds))
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// What the simulator answers: text, or tool calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimAnswer {
    Text(String),
    Calls(Vec<ToolCall>),
}

/// The simulator's deterministic answer to a conversation offered `tools` (names): the
/// tool calls its last user message asks for, else [`reply_for`].
pub fn answer_for(model: &str, messages: &[ChatMessage], tools: &[String]) -> SimAnswer {
    let last_user = messages.iter().rposition(|m| m.role == ChatRole::User);
    let after_user = last_user.map_or(&messages[..0], |i| &messages[i + 1..]);
    let called_before = after_user.iter().any(|m| !m.tool_calls.is_empty());
    if !tools.is_empty()
        && let Some(i) = last_user
    {
        let calls: Vec<ToolCall> = messages[i]
            .content
            .lines()
            .filter_map(|line| {
                let (command, rest) = line.trim().split_once(' ')?;
                let again = match command {
                    "TOOL" => false,
                    "TOOL-LOOP" => true,
                    _ => return None,
                };
                if called_before && !again {
                    return None;
                }
                let (name, arguments) = rest.trim().split_once(' ').unwrap_or((rest.trim(), "{}"));
                Some((name.to_owned(), arguments.trim().to_owned()))
            })
            .enumerate()
            .map(|(n, (name, arguments))| ToolCall {
                id: format!("call_{}_{n}", after_user.len()),
                name,
                arguments,
            })
            .collect();
        if !calls.is_empty() {
            return SimAnswer::Calls(calls);
        }
    }
    SimAnswer::Text(reply_for(model, messages))
}

/// The simulator's deterministic answer to a conversation.
pub fn reply_for(model: &str, messages: &[ChatMessage]) -> String {
    let persona = messages
        .iter()
        .find(|m| m.role == ChatRole::System)
        .and_then(|m| m.content.lines().next())
        .unwrap_or("(no system prompt)");
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.role == ChatRole::User)
        .map(|m| m.content.as_str())
        .unwrap_or("");
    let since_user = messages
        .iter()
        .rposition(|m| m.role == ChatRole::User)
        .map_or(&messages[..0], |i| &messages[i + 1..]);
    let results: String = since_user
        .iter()
        .filter(|m| m.role == ChatRole::Tool)
        .map(|m| {
            let name = m.answers.as_ref().map_or("?", |(_, name)| name.as_str());
            format!(" | Tool {name} said: {}", m.content)
        })
        .collect();
    format!("[{model}] {persona}{results} | You said: {last_user}")
}

/// A deterministic unit vector for `text`: each lower-cased word adds to a hashed bucket.
pub fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; EMBEDDING_DIM];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let digest = Sha256::digest(word.to_lowercase().as_bytes());
        let bucket = usize::from(digest[0]) % EMBEDDING_DIM;
        v[bucket] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    } else {
        v[0] = 1.0;
    }
    v
}

fn count_tokens(messages: &[ChatMessage]) -> u64 {
    messages
        .iter()
        .map(|m| m.content.split_whitespace().count() as u64 + 4)
        .sum()
}

/// The bearer key of a request (empty: none).
fn bearer(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

/// A 401 for a revoked key, its body quoting the key partly masked (as OpenAI's does:
/// whatever reads the body must not pass it on).
fn refused_key(shared: &Shared, key: &str) -> Option<Response> {
    let revoked = shared
        .revoked_keys
        .lock()
        .is_ok_and(|keys| keys.iter().any(|k| k == key));
    revoked.then(|| {
        let shown: String = key.chars().take(8).collect();
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": {
                "message": format!("Incorrect API key provided: {shown}****. You can find your API key at https://platform.openai.com/account/api-keys."),
                "type": "invalid_request_error",
                "code": "invalid_api_key"
            } })),
        )
            .into_response()
    })
}

/// Waits the configured latency; `Err` with a 503 when the request should fail.
async fn gate(shared: &Shared, model: &str) -> Result<(), Response> {
    let options = shared.options.lock().map(|o| o.clone()).unwrap_or_default();
    if !options.latency.is_zero() {
        let started = std::time::Instant::now();
        tokio::time::sleep(options.latency).await;
        let held = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        shared.held_micros.fetch_add(held, Ordering::Relaxed);
        shared.holds.fetch_add(1, Ordering::Relaxed);
    }
    let fault = shared
        .faulty_models
        .lock()
        .ok()
        .and_then(|m| m.iter().find(|(f, _)| f == model).map(|(_, e)| e.clone()));
    match fault {
        Some(ModelFault::Hang) => std::future::pending::<()>().await,
        Some(ModelFault::Status(status, body)) if status != 503 => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            return Err((status, Json(body)).into_response());
        }
        _ => {}
    }
    let fail = fault.is_some()
        || shared.unavailable.load(Ordering::SeqCst)
        || (options.error_rate > 0.0 && rand::rng().random_bool(options.error_rate.min(1.0)));
    if fail {
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "llm-sim: simulated overload" })),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Err(response);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_show_model_persona_and_last_user_message() {
        let messages = vec![
            ChatMessage::new(
                ChatRole::System,
                "You are Ava, an AI assistant for Acme.\nTone: friendly.",
            ),
            ChatMessage::new(ChatRole::User, "first"),
            ChatMessage::new(ChatRole::Assistant, "ok"),
            ChatMessage::new(ChatRole::User, "second"),
        ];
        assert_eq!(
            reply_for("m1", &messages),
            "[m1] You are Ava, an AI assistant for Acme. | You said: second"
        );
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embed("Refund policy: thirty days");
        assert_eq!(a, embed("refund POLICY thirty days"));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_ne!(a, embed("shipping to Canada"));
    }
}
