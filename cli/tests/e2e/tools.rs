//! Tenants' tools end to end: definitions through the admin API, the tool loop against
//! the LLM double (which calls tools on `TOOL <name> <arguments>` lines), a recording
//! tool endpoint on 127.0.0.2 (the only private address these platforms allow), calls
//! recorded once across a worker's death, and built-in tools.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::testkit::{TestTenant, eventually};
use tokio_util::sync::CancellationToken;
use worker::tool_sim::ToolSim;

use crate::support::{Method, Platform, WAIT, worker_process};

/// Tools may be plain http:// and reach 127.0.0.2, where the tool endpoint runs; every
/// other private address (127.0.0.1 included) is refused.
const SETTINGS: [(&str, &str); 2] = [
    ("CHATFLEET__TOOLS__ALLOW_HTTP", "true"),
    ("CHATFLEET__TOOLS__ALLOWED_PRIVATE_NETWORKS", "127.0.0.2/32"),
];

async fn endpoint(shutdown: &CancellationToken) -> ToolSim {
    ToolSim::start("127.0.0.2:0".parse().expect("addr"), shutdown.clone())
        .await
        .expect("the tool endpoint starts")
}

async fn add_tool(p: &Platform, t: &TestTenant, tool: Value) {
    let (status, body) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{}/tools", t.id),
            Some(tool),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

fn get_tool(name: &str, url: String) -> Value {
    json!({
        "name": name, "description": format!("The {name} tool"), "method": "GET", "url": url,
        "parameters": { "type": "object", "properties": { "order_id": { "type": "string" }, "verbose": { "type": "boolean" } } },
    })
}

/// The reply to one message of a new conversation.
async fn reply_to(p: &Platform, t: &TestTenant, conversation: &str, text: &str) -> Value {
    p.ask(&t.api_key, conversation, text, "0").await.0
}

fn text(reply: &Value) -> &str {
    reply["text"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_tenants_tools_are_called_checked_and_kept_to_the_tenant() {
    let p = Platform::start_with(&SETTINGS, 1).await;
    let tools = endpoint(&p.shutdown).await;
    let (a, b) = (p.tenant("alpha").await, p.tenant("beta").await);
    let path = format!("/admin/v1/clients/{}/tools", a.id);

    // Bad definitions name their field; a taken name is a conflict.
    let order = json!({
        "name": "order_status", "description": "Looks up an order", "method": "GET",
        "url": format!("{}/orders/{{order_id}}", tools.base_url()),
        "parameters": { "type": "object", "properties": { "order_id": { "type": "string" }, "verbose": { "type": "boolean" } }, "required": ["order_id"] },
        "auth": { "type": "bearer", "token": "tok-alpha-secret" },
    });
    for (change, field) in [
        (json!({ "name": "has space" }), "name"),
        (
            json!({ "parameters": { "type": "object", "properties": { "n": { "type": 5 } } } }),
            "parameters",
        ),
        (json!({ "url": "ftp://shop.example/x" }), "url"),
        (
            json!({ "url": "https://shop.example/{missing}" }),
            "{missing}",
        ),
        (json!({ "timeout_ms": 30001 }), "timeout_ms"),
    ] {
        let mut bad = order.clone();
        for (k, v) in change.as_object().expect("object") {
            bad[k] = v.clone();
        }
        let (status, body) = p.admin(Method::POST, &path, Some(bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {body}");
        assert!(body.to_string().contains(field), "{field}: {body}");
    }
    add_tool(&p, &a, order.clone()).await;
    let (status, _) = p.admin(Method::POST, &path, Some(order)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, listed) = p.admin(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed[0]["auth_type"], "bearer");
    assert_eq!(listed[0]["side_effects"], false);
    assert!(!listed.to_string().contains("tok-alpha-secret"), "{listed}");

    // The model's call reaches the endpoint with its arguments and the tenant's
    // credential; the next LLM request carries the result; the reply quotes it.
    let reply = reply_to(
        &p,
        &a,
        "c1",
        r#"TOOL order_status {"order_id": "A 1", "verbose": true}"#,
    )
    .await;
    let calls = tools.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (calls[0].method.as_str(), calls[0].path.as_str()),
        ("GET", "/orders/A%201")
    );
    assert_eq!(calls[0].query.as_deref(), Some("verbose=true"));
    assert_eq!(
        calls[0].authorization.as_deref(),
        Some("Bearer tok-alpha-secret")
    );
    assert_eq!(
        calls[0].idempotency_key, None,
        "a GET tool has no side effects"
    );
    assert!(
        text(&reply).contains("Tool order_status said: {\"received\""),
        "{reply}"
    );
    let asked = p.sim.requests();
    let last = asked.last().expect("an LLM request");
    assert!(
        last.messages
            .iter()
            .any(|m| m.content.contains("/orders/A 1") || m.content.contains("/orders/A%201"))
    );
    // The admin conversation view shows the call; usage counts it.
    let conversation = p.conversation(a.id, "c1").await;
    let (_, detail) = p
        .admin(
            Method::GET,
            &format!(
                "/admin/v1/clients/{}/conversations/{}",
                a.id,
                conversation.get()
            ),
            None,
        )
        .await;
    assert_eq!(detail["tool_calls"][0]["tool"], "order_status", "{detail}");
    assert_eq!(detail["tool_calls"][0]["status"], "ok");
    let (_, usage) = p
        .admin(
            Method::GET,
            &format!("/admin/v1/clients/{}/usage", a.id),
            None,
        )
        .await;
    assert_eq!(usage["days"][0]["tool_calls"], 1, "{usage}");

    // Tenant B never sees A's tools and cannot call one by name.
    add_tool(
        &p,
        &b,
        get_tool("b_lookup", format!("{}/b", tools.base_url())),
    )
    .await;
    let before = p.sim.requests().len();
    let reply = reply_to(&p, &b, "c1", r#"TOOL order_status {"order_id": "A 1"}"#).await;
    assert!(text(&reply).contains("there is no tool named"), "{reply}");
    for request in &p.sim.requests()[before..] {
        assert_eq!(request.tools, ["b_lookup"]);
        assert!(
            request
                .messages
                .iter()
                .all(|m| !m.content.contains("Looks up an order"))
        );
    }
    assert_eq!(tools.calls().len(), 1, "B's turn called A's endpoint");

    // Refused addresses, by name and on a redirect; failures that cost only a sentence.
    let port = tools
        .base_url()
        .rsplit(':')
        .next()
        .expect("port")
        .to_owned();
    for (name, url) in [
        ("by_name", format!("http://localhost:{port}/x")),
        ("by_literal", format!("http://127.0.0.1:{port}/x")),
        (
            "redirected",
            format!(
                "{}/redirect?to=http%3A%2F%2Flocalhost%3A{port}%2Fx",
                tools.base_url()
            ),
        ),
        ("broken", format!("{}/status/500", tools.base_url())),
        ("huge", format!("{}/huge", tools.base_url())),
    ] {
        add_tool(&p, &a, get_tool(name, url)).await;
    }
    let mut slow = get_tool("slow", format!("{}/slow", tools.base_url()));
    slow["timeout_ms"] = json!(300);
    add_tool(&p, &a, slow).await;
    let reply = reply_to(
        &p,
        &a,
        "c2",
        "TOOL by_name {}\nTOOL by_literal {}\nTOOL redirected {}\nTOOL broken {}\nTOOL slow {}\nTOOL order_status {\"order_id\": 7}\nTOOL huge {}",
    )
    .await;
    let said = text(&reply);
    for expected in [
        "Tool by_name said: error: localhost resolves to",
        "Tool by_literal said: error: 127.0.0.1 is not a public address",
        "not a public address (redirected)",
        "Tool broken said: error: the endpoint answered 500",
        "Tool slow said: error: the endpoint did not answer within 300 ms",
        "cut",
        "Tool order_status said: error: the arguments do not match",
    ] {
        let shown: String = said.chars().take(1500).collect();
        assert!(said.contains(expected), "{expected:?} missing from {shown}");
    }
    assert!(
        tools.calls().iter().all(|c| c.path != "/x"),
        "a refused address was reached"
    );

    // max_rounds: a model that keeps calling is asked once more without tools.
    let before = p.sim.requests().len();
    reply_to(&p, &a, "c3", r#"TOOL-LOOP order_status {"order_id": "L"}"#).await;
    let rounds = &p.sim.requests()[before..];
    assert_eq!(rounds.len(), 5, "four rounds of calls and a last question");
    assert!(rounds[..4].iter().all(|r| !r.tools.is_empty()));
    assert!(
        rounds[4].tools.is_empty(),
        "the last question offers no tools"
    );

    // Built-ins: choices reach the poll; the model hands the conversation to a person.
    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", a.id),
            Some(json!({ "builtin_tools": ["offer_choices", "handoff_to_human"] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let reply = reply_to(
        &p,
        &a,
        "c4",
        r#"TOOL offer_choices {"text": "Which colour?", "choices": ["Red", "Blue"]}"#,
    )
    .await;
    assert_eq!(
        (text(&reply), &reply["choices"]),
        ("Which colour?", &json!(["Red", "Blue"]))
    );
    let reply = reply_to(
        &p,
        &a,
        "c5",
        "TOOL handoff_to_human {\"reason\": \"asked for a person\"}",
    )
    .await;
    let conversation = p.conversation(a.id, "c5").await;
    let (_, detail) = p
        .admin(
            Method::GET,
            &format!(
                "/admin/v1/clients/{}/conversations/{}",
                a.id,
                conversation.get()
            ),
            None,
        )
        .await;
    assert_eq!(detail["mode"], "human", "{detail}");
    assert!(
        !text(&reply).contains("You said"),
        "the handoff message, not a bot answer: {reply}"
    );
    p.stop().await;
}

/// Both wire formats drive the loop: the platform's provider speaks Ollama's elsewhere,
/// here an OpenAI-compatible server's, streaming (tool calls arrive in pieces).
#[tokio::test]
async fn the_loop_runs_on_openai_compatible_providers_too() {
    let mut settings = SETTINGS.to_vec();
    settings.extend([
        ("CHATFLEET__LLM__PROVIDERS__OLLAMA__KIND", "openai"),
        ("CHATFLEET__LLM__PROVIDERS__OLLAMA__STREAM", "true"),
    ]);
    let p = Platform::start_with(&settings, 1).await;
    let tools = endpoint(&p.shutdown).await;
    let t = p.tenant("shop").await;
    add_tool(
        &p,
        &t,
        get_tool(
            "order_status",
            format!("{}/orders/{{order_id}}", tools.base_url()),
        ),
    )
    .await;
    let reply = reply_to(&p, &t, "c", r#"TOOL order_status {"order_id": "9"}"#).await;
    assert!(text(&reply).contains("Tool order_status said:"), "{reply}");
    let formats: Vec<_> = p.sim.requests().iter().map(|r| r.format).collect();
    assert!(
        formats
            .iter()
            .all(|f| *f == worker::llm::sim::WireFormat::OpenAi),
        "{formats:?}"
    );
    p.stop().await;
}

/// A side-effect call is made once however the worker dies: killed after the call was
/// recorded, the redelivered turn reuses the result; killed before, the call is made
/// again with the same `Idempotency-Key`.
#[tokio::test]
async fn a_side_effect_is_not_repeated_when_a_worker_dies() {
    let p = Platform::start_with(&SETTINGS, 0).await;
    let tools = endpoint(&p.shutdown).await;
    let t = p.tenant("shop").await;
    let post = |name: &str, path: &str| {
        json!({
            "name": name, "description": "Books a table", "method": "POST",
            "url": format!("{}{path}", tools.base_url()),
            "parameters": { "type": "object", "properties": { "n": { "type": "integer" } } },
            "timeout_ms": 30000,
        })
    };
    add_tool(&p, &t, post("book", "/book")).await;
    add_tool(&p, &t, post("hold", "/hold-first")).await;
    let mut settings = SETTINGS.to_vec();
    settings.push(("CHATFLEET__WORKER__LOCK_TTL_S", "3"));

    // Killed after the call was recorded (while the model is asked again).
    p.sim.set_latency(Duration::from_millis(1500));
    let mut doomed = worker_process(&p, &settings);
    let (s, _) = p
        .send(&t.api_key, "after", r#"TOOL book {"n": 1}"#, None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let conversation = eventually(WAIT, "the call to be recorded", || async {
        let c = p
            .env
            .db
            .tenant(t.id)
            .conversations()
            .find(shared::ids::Channel::Api, "after")
            .await
            .ok()??;
        let recorded = p
            .env
            .db
            .tenant(t.id)
            .tool_calls()
            .for_conversation(c, 10)
            .await
            .ok()?;
        (!recorded.is_empty()).then_some(c)
    })
    .await;
    doomed.kill().expect("SIGKILL");
    doomed.wait().expect("reaped");
    let mut survivor = worker_process(&p, &settings);
    let (entries, _) = p.read_until(&t.api_key, "after", "0", 2).await;
    assert!(
        text(&entries[1]).contains("Tool book said:"),
        "{}",
        entries[1]
    );
    let booked: Vec<_> = tools
        .calls()
        .into_iter()
        .filter(|c| c.path == "/book")
        .collect();
    assert_eq!(
        booked.len(),
        1,
        "the recorded call was made again: {booked:?}"
    );
    assert_eq!(booked[0].body, json!({ "n": 1 }));
    let key = booked[0]
        .idempotency_key
        .clone()
        .expect("an Idempotency-Key");
    assert!(key.ends_with(":0"), "{key}");
    let calls = p
        .env
        .db
        .tenant(t.id)
        .tool_calls()
        .for_conversation(conversation, 10)
        .await
        .expect("calls");
    assert_eq!(calls.len(), 1);
    let _ = survivor.kill();
    let _ = survivor.wait();

    // Killed before it was recorded (the endpoint holds the first call).
    p.sim.set_latency(Duration::ZERO);
    let mut doomed = worker_process(&p, &settings);
    let (s, _) = p
        .send(&t.api_key, "before", r#"TOOL hold {"n": 2}"#, None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    eventually(WAIT, "the call to reach the endpoint", || async {
        tools
            .calls()
            .iter()
            .any(|c| c.path == "/hold-first")
            .then_some(())
    })
    .await;
    doomed.kill().expect("SIGKILL");
    doomed.wait().expect("reaped");
    let mut survivor = worker_process(&p, &settings);
    let (entries, cursor) = p.read_until(&t.api_key, "before", "0", 2).await;
    assert!(
        text(&entries[1]).contains("Tool hold said:"),
        "{}",
        entries[1]
    );
    let held: Vec<_> = tools
        .calls()
        .into_iter()
        .filter(|c| c.path == "/hold-first")
        .collect();
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(held[0].idempotency_key.is_some());
    assert_eq!(
        held[0].idempotency_key, held[1].idempotency_key,
        "the same key both times"
    );
    assert!(
        p.poll(&t.api_key, "before", &cursor, 2).await.is_none(),
        "a second reply"
    );
    let _ = survivor.kill();
    let _ = survivor.wait();
    p.stop().await;
}
