//! The worker's LLM client against the simulator, in both wire formats, streaming and
//! not: the same conversation yields the same answer and token counts either way.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::json;
use shared::pii::Secret;
use shared::settings::{LlmSettings, ProviderKind, ProviderSettings};
use tokio_util::sync::CancellationToken;
use worker::llm::sim::{LlmSim, SimOptions, WireFormat};
use worker::llm::{ChatMessage, ChatRequest, ChatRole, LlmClient, LlmError, TenantKey, ToolSpec};

fn settings(base_url: &str, kind: ProviderKind, stream: bool) -> LlmSettings {
    let provider = ProviderSettings {
        kind,
        base_url: base_url.to_owned(),
        api_key: Secret::new(String::new()),
        timeout: std::time::Duration::from_secs(10),
        max_concurrency: 4,
        stream,
    };
    LlmSettings {
        default_provider: "main".into(),
        max_response_bytes: 256 * 1024,
        default_context_window: 4096,
        completion_reserve: 512,
        breaker_failures: 5,
        tenant_max_share: 0.5,
        breaker_cooldown: std::time::Duration::from_secs(30),
        context_windows: BTreeMap::new(),
        providers: BTreeMap::from([
            ("main".to_owned(), provider.clone()),
            ("other".to_owned(), provider),
        ]),
        prices: BTreeMap::new(),
        tenant_base_url_allowlist: Vec::new(),
    }
}

fn request(model: &str) -> ChatRequest {
    ChatRequest {
        tenant: shared::ids::ClientId::new(1),
        weight: 1,
        model: model.into(),
        temperature: 0.4,
        num_ctx: 4096,
        max_output_tokens: 300,
        tools: Vec::new(),
        deltas: None,
        credentials: std::sync::Arc::from(Vec::new()),
        messages: vec![
            ChatMessage::new(
                ChatRole::System,
                "You are Ava, an AI assistant for Acme.\nTone: friendly.",
            ),
            ChatMessage::new(ChatRole::User, "earlier"),
            ChatMessage::new(ChatRole::Assistant, "reply"),
            ChatMessage::new(ChatRole::User, "where is my order?"),
        ],
    }
}

async fn sim() -> LlmSim {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    LlmSim::start(addr, SimOptions::default(), CancellationToken::new())
        .await
        .expect("sim")
}

#[tokio::test]
async fn both_wire_formats_streaming_and_not() {
    let sim = sim().await;
    let expected =
        "[llama3.1:8b] You are Ava, an AI assistant for Acme. | You said: where is my order?";
    for (kind, format) in [
        (ProviderKind::Ollama, WireFormat::Ollama),
        (ProviderKind::Openai, WireFormat::OpenAi),
    ] {
        for stream in [false, true] {
            let client = LlmClient::new(&settings(&sim.base_url(), kind, stream));
            let completion = client
                .chat(&request("llama3.1:8b"))
                .await
                .unwrap_or_else(|e| panic!("{kind:?} stream={stream}: {e}"));
            assert_eq!(completion.text, expected, "{kind:?} stream={stream}");
            assert!(
                completion.prompt_tokens.unwrap_or(0) > 0,
                "{kind:?} stream={stream}: prompt tokens"
            );
            assert!(
                completion.completion_tokens.unwrap_or(0) > 0,
                "{kind:?} stream={stream}: completion tokens"
            );
            let seen = sim.requests().pop().expect("recorded");
            assert_eq!((seen.format, seen.stream), (format, stream));
            assert_eq!(seen.temperature, Some(0.4));
            assert_eq!(
                seen.max_tokens,
                Some(300),
                "{kind:?} stream={stream}: the output limit is sent"
            );
            assert_eq!(seen.messages, request("x").messages);
            if kind == ProviderKind::Ollama {
                assert_eq!(seen.num_ctx, Some(4096), "num_ctx is always sent to Ollama");
            }
        }
    }
}

/// Tool calling in both wire formats, streaming and not: the tools go out, the model's
/// calls come back with their arguments whole (OpenAI streams them in pieces), and the
/// results sent back (`role: tool`, with the call's id or the tool's name) reach the
/// model, which quotes them.
#[tokio::test]
async fn tool_calls_round_trip_in_both_wire_formats() {
    let sim = sim().await;
    for kind in [ProviderKind::Ollama, ProviderKind::Openai] {
        for stream in [false, true] {
            let client = LlmClient::new(&settings(&sim.base_url(), kind, stream));
            let mut asked = request("m");
            asked.messages.last_mut().expect("user").content =
                "TOOL order_status {\"order_id\": \"A-1\"}\nTOOL weather {}".into();
            asked.tools = vec![ToolSpec {
                name: "order_status".into(),
                description: "Looks up an order".into(),
                parameters: json!({"type": "object", "properties": {"order_id": {"type": "string"}}}),
            }];
            let first = client.chat(&asked).await.expect("a round of calls");
            let names: Vec<&str> = first.tool_calls.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(
                names,
                ["order_status", "weather"],
                "{kind:?} stream={stream}"
            );
            let args: serde_json::Value =
                serde_json::from_str(&first.tool_calls[0].arguments).expect("JSON arguments");
            assert_eq!(args, json!({"order_id": "A-1"}), "{kind:?} stream={stream}");
            let seen = sim.requests().pop().expect("recorded");
            assert_eq!(seen.tools, ["order_status"], "{kind:?} stream={stream}");
            asked.messages.push(ChatMessage {
                role: ChatRole::Assistant,
                content: String::new(),
                tool_calls: first.tool_calls.clone(),
                answers: None,
                images: Vec::new(),
            });
            for (call, result) in first.tool_calls.iter().zip(["shipped", "sunny"]) {
                asked.messages.push(ChatMessage::tool_result(call, result));
            }
            let answer = client.chat(&asked).await.expect("an answer");
            assert!(answer.tool_calls.is_empty(), "{kind:?} stream={stream}");
            assert!(
                answer
                    .text
                    .contains("Tool order_status said: shipped | Tool weather said: sunny"),
                "{kind:?} stream={stream}: {}",
                answer.text
            );
        }
    }
}

/// A response body over `llm.max_response_bytes` is the provider's failure (transient,
/// so the turn goes to the retry ladder and the fallback model), never a crash, in
/// both wire formats, streaming or not.
#[tokio::test]
async fn an_oversized_response_is_a_failure() {
    let sim = sim().await;
    for kind in [ProviderKind::Ollama, ProviderKind::Openai] {
        for stream in [false, true] {
            let mut settings = settings(&sim.base_url(), kind, stream);
            settings.max_response_bytes = 64; // every answer of the double is longer
            let err = LlmClient::new(&settings)
                .chat(&request("llama3.1:8b"))
                .await
                .expect_err("over the limit");
            assert!(
                matches!(err, LlmError::TooLarge(64)) && err.is_transient(),
                "{kind:?} stream={stream}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn a_provider_prefix_routes_and_is_stripped() {
    let sim = sim().await;
    let client = LlmClient::new(&settings(&sim.base_url(), ProviderKind::Ollama, false));
    assert_eq!(client.route("other/llama3.1:8b"), ("other", "llama3.1:8b"));
    assert_eq!(
        client.route("meta-llama/Llama-3"),
        ("main", "meta-llama/Llama-3")
    );
    client.chat(&request("other/mistral")).await.expect("chat");
    assert_eq!(sim.requests().pop().expect("recorded").model, "mistral");
}

/// A tenant's request with its own key for `provider`.
fn with_key(mut request: ChatRequest, tenant: u64, provider: &str, key: &str) -> ChatRequest {
    request.tenant = shared::ids::ClientId::new(tenant);
    request.credentials = std::sync::Arc::from(vec![TenantKey {
        provider: provider.into(),
        api_key: Secret::new(key.into()),
        base_url: None,
        organization: None,
    }]);
    request
}

#[tokio::test]
async fn a_tenants_own_key_goes_to_its_provider_only() {
    for kind in [ProviderKind::Ollama, ProviderKind::Openai] {
        let sim = sim().await;
        let mut settings = settings(&sim.base_url(), kind, false);
        for p in settings.providers.values_mut() {
            p.api_key = Secret::new("platform-key".into());
        }
        let client = LlmClient::new(&settings);
        client
            .chat(&with_key(request("m"), 1, "main", "sk-tenant-a"))
            .await
            .expect("chat");
        assert_eq!(
            sim.requests().pop().expect("recorded").api_key,
            "sk-tenant-a"
        );
        // Its key is for "main": a model on "other" goes with the platform's key.
        client
            .chat(&with_key(request("other/m"), 1, "main", "sk-tenant-a"))
            .await
            .expect("chat");
        assert_eq!(
            sim.requests().pop().expect("recorded").api_key,
            "platform-key"
        );
        // Another tenant, no key of its own.
        client.chat(&request("m")).await.expect("chat");
        assert_eq!(
            sim.requests().pop().expect("recorded").api_key,
            "platform-key"
        );
    }
}

/// A revoked tenant key is that tenant's failure: its breaker opens (saying the key was
/// refused, without the provider's answer that quotes the key), the provider's stays
/// closed and other tenants are answered.
#[tokio::test]
async fn a_refused_tenant_key_opens_only_that_tenants_breaker() {
    let sim = sim().await;
    sim.revoke_key("sk-revoked-a");
    let client = LlmClient::new(&settings(&sim.base_url(), ProviderKind::Openai, false));
    for _ in 0..5 {
        let err = client
            .chat(&with_key(request("m"), 7, "main", "sk-revoked-a"))
            .await
            .expect_err("401");
        assert!(err.is_key_refused() && err.is_tenants_own(), "{err}");
        assert!(!err.described().contains("sk-revo"), "{}", err.described());
    }
    let open = client
        .chat(&with_key(request("m"), 7, "main", "sk-revoked-a"))
        .await
        .expect_err("the tenant's breaker is open");
    assert!(
        matches!(open, LlmError::TenantCircuitOpen { .. }) && open.is_key_refused(),
        "{open}"
    );
    assert!(!open.to_string().contains("sk-revo"), "{open}");
    let served = sim.served();
    for tenant in 1..=6 {
        let mut other = request("m");
        other.tenant = shared::ids::ClientId::new(tenant);
        client
            .chat(&other)
            .await
            .expect("other tenants are answered");
    }
    assert_eq!(sim.served(), served + 6);
}

#[tokio::test]
async fn outages_are_transient_errors_with_retry_after() {
    let sim = sim().await;
    sim.set_unavailable(true);
    let client = LlmClient::new(&settings(&sim.base_url(), ProviderKind::Openai, false));
    let err = client.chat(&request("m")).await.expect_err("503");
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), Some(std::time::Duration::from_secs(1)));
    let down = LlmClient::new(&settings("http://127.0.0.1:9", ProviderKind::Ollama, false));
    let err = down.chat(&request("m")).await.expect_err("refused");
    assert!(
        matches!(err, LlmError::Unreachable(_)) && err.is_transient(),
        "{err}"
    );
}

/// The bench subtracts what the double actually held a request, not the nominal latency.
#[tokio::test]
async fn the_simulator_reports_how_long_it_actually_held_requests() {
    let sim = sim().await;
    assert_eq!(sim.mean_hold(), None, "no latency, nothing held");
    let client = LlmClient::new(&settings(&sim.base_url(), ProviderKind::Ollama, false));
    client.chat(&request("m")).await.expect("chat");
    assert_eq!(sim.mean_hold(), None, "a zero latency holds nothing");
    let latency = std::time::Duration::from_millis(30);
    sim.set_latency(latency);
    let started = std::time::Instant::now();
    client.chat(&request("m")).await.expect("chat");
    client.chat(&request("m")).await.expect("chat");
    let held = sim.mean_hold().expect("held");
    assert!(held >= latency, "{held:?}");
    assert!(held * 2 <= started.elapsed(), "{held:?}");
}

/// A call that finds every slot of its provider busy waits for one and is counted as
/// waiting (`chatfleet_llm_waiting{provider}`) until it gets it.
#[tokio::test]
async fn calls_waiting_for_a_slot_are_counted() {
    shared::prometheus::install();
    let sim = sim().await;
    sim.set_latency(std::time::Duration::from_millis(400));
    let mut settings = settings(&sim.base_url(), ProviderKind::Ollama, false);
    for provider in settings.providers.values_mut() {
        provider.max_concurrency = 1;
    }
    let client = LlmClient::new(&settings);
    let waiting = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("chatfleet_llm_waiting{provider=\"main\"}"))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (first, second) = (client.clone(), client.clone());
    let calls = tokio::spawn(async move {
        let (one, two) = (request("m"), request("m"));
        let answers = tokio::join!(first.chat(&one), second.chat(&two));
        (answers.0.is_ok(), answers.1.is_ok())
    });
    shared::testkit::eventually(
        std::time::Duration::from_secs(5),
        "a call waiting for the provider's one slot",
        || async { (waiting(&shared::prometheus::render()) >= 1.0).then_some(()) },
    )
    .await;
    assert_eq!(calls.await.expect("calls"), (true, true), "both answered");
    assert_eq!(
        waiting(&shared::prometheus::render()),
        0.0,
        "no call waits any more"
    );
}

/// A user message's image goes as OpenAI's `image_url` data URL part beside the text,
/// and as Ollama's `images`; the text still reads as the message.
#[tokio::test]
async fn images_go_in_each_wire_format() {
    let sim = sim().await;
    for (kind, mime) in [
        (ProviderKind::Ollama, "image/*"),
        (ProviderKind::Openai, "image/png"),
    ] {
        let client = LlmClient::new(&settings(&sim.base_url(), kind, false));
        let mut asked = request("llama3.1:8b");
        if let Some(user) = asked.messages.last_mut() {
            user.images = vec![worker::llm::ChatImage {
                mime: "image/png".into(),
                base64: "iVBORw0KGgo=".into(),
            }];
        }
        let answer = client.chat(&asked).await.expect("an answer");
        assert!(
            answer.text.ends_with("You said: where is my order?"),
            "{kind:?}"
        );
        let seen = sim.requests().pop().expect("recorded");
        let user = seen.messages.last().expect("the user message");
        assert_eq!(user.content, "where is my order?", "{kind:?}");
        assert_eq!(user.images.len(), 1, "{kind:?}");
        assert_eq!(
            (user.images[0].mime.as_str(), &*user.images[0].base64),
            (mime, "iVBORw0KGgo="),
            "{kind:?}"
        );
    }
}
