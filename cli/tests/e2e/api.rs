//! The API channel end to end: round trip, prompt contents, idempotency, isolation.

use reqwest::StatusCode;
use shared::db::{AgentMode, ConfigUpdate};
use shared::ids::ClientId;
use worker::llm::ChatRole;

use crate::support::Platform;

async fn configure(p: &Platform, client: ClientId, turns: u32) {
    let mut config: ConfigUpdate = p
        .env
        .db
        .tenant(client)
        .configs()
        .get()
        .await
        .expect("read")
        .expect("config")
        .into();
    config.persona_name = "Zed".into();
    config.persona_tone = shared::tenant::PersonaTone::Formal;
    config.persona_language = "French".into();
    config.llm_temperature = 0.3;
    config.max_context_turns = turns;
    p.env
        .db
        .tenant(client)
        .configs()
        .update(&config)
        .await
        .expect("update config");
    for (key, fragment, active, priority) in [
        ("second", "MODE-SECOND", true, 20),
        ("first", "MODE-FIRST", true, 10),
        ("disabled", "MODE-DISABLED", false, 1),
    ] {
        p.env
            .db
            .tenant(client)
            .configs()
            .create_mode(&AgentMode {
                module_key: key.into(),
                prompt_fragment: fragment.into(),
                is_active: active,
                priority,
            })
            .await
            .expect("mode");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_answered_with_the_tenants_configuration() {
    let p = Platform::start().await;
    let t = p.tenant("acme").await;
    configure(&p, t.id, 2).await;

    let mut cursor = "0".to_owned();
    for (i, text) in ["first question", "second question", "third question"]
        .iter()
        .enumerate()
    {
        let (status, body) = p.send(&t.api_key, "conv-1", text, None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["conversation_id"], "conv-1");
        let (entries, next) = p.read_until(&t.api_key, "conv-1", &cursor, 2).await;
        cursor = next;
        assert_eq!(entries[0]["role"], "user");
        assert_eq!(entries[0]["text"], *text);
        assert_eq!(entries[0]["id"], body["message_id"]);
        assert_eq!(entries[1]["role"], "assistant");
        let reply = entries[1]["text"].as_str().expect("text");
        assert!(
            reply.contains("You are Zed, an AI assistant for acme Shop."),
            "{reply}"
        );
        assert!(reply.ends_with(&format!("You said: {text}")), "{reply}");
        assert_eq!(p.sim.requests().len(), i + 1);
    }
    // Nothing more arrives: no duplicate reply, no gap.
    assert!(p.poll(&t.api_key, "conv-1", &cursor, 1).await.is_none());
    // The whole mailbox, read from the start, is ascending with one reply per question.
    let (all, _) = p.read_until(&t.api_key, "conv-1", "0", 6).await;
    let roles: Vec<&str> = all
        .iter()
        .map(|m| m["role"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant"
        ]
    );

    let requests = p.sim.requests();
    let last = requests.last().expect("a request");
    assert_eq!(last.model, "llama3.1:8b");
    assert_eq!(last.temperature, Some(0.3));
    assert_eq!(last.num_ctx, Some(8192));
    let system = &last.messages[0];
    assert_eq!(system.role, ChatRole::System);
    assert!(
        system.content.starts_with(
            "You are Zed, an AI assistant for acme Shop.\nTone: formal. Language: French.\n"
        ),
        "{}",
        system.content
    );
    let first = system
        .content
        .find("MODE-FIRST")
        .expect("active mode present");
    let second = system
        .content
        .find("MODE-SECOND")
        .expect("active mode present");
    assert!(first < second, "modes in priority order");
    assert!(
        !system.content.contains("MODE-DISABLED"),
        "inactive mode absent"
    );
    // System prompt, at most max_context_turns (2) earlier turns, then the new message.
    let rest: Vec<(ChatRole, &str)> = last.messages[1..]
        .iter()
        .map(|m| (m.role, m.content.as_str()))
        .collect();
    assert_eq!(rest.len(), 3);
    assert_eq!(rest[0].0, ChatRole::User);
    assert_eq!(rest[0].1, "second question");
    assert_eq!(rest[1].0, ChatRole::Assistant);
    assert_eq!(rest[2], (ChatRole::User, "third question"));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_is_one_message_and_one_reply() {
    let p = Platform::start().await;
    let t = p.tenant("idem").await;

    let (s1, b1) = p.send(&t.api_key, "c", "hello", Some("key-1")).await;
    let (s2, b2) = p.send(&t.api_key, "c", "hello", Some("key-1")).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(b1["message_id"], b2["message_id"]);
    let (first, cursor) = p.read_until(&t.api_key, "c", "0", 2).await;
    assert_eq!(first[0]["id"], b1["message_id"]);

    // A retry after the answer, then a new message: the conversation's turns are
    // processed in order, so once the new message is answered the retry was handled.
    let (s3, b3) = p.send(&t.api_key, "c", "hello", Some("key-1")).await;
    assert_eq!(
        (s3, &b3["message_id"]),
        (StatusCode::ACCEPTED, &b1["message_id"])
    );
    p.send(&t.api_key, "c", "next", Some("key-2")).await;
    let (rest, cursor) = p.read_until(&t.api_key, "c", &cursor, 2).await;
    assert_eq!(rest[0]["text"], "next");
    assert_eq!(rest[1]["role"], "assistant");
    assert!(
        p.poll(&t.api_key, "c", &cursor, 1).await.is_none(),
        "no second reply"
    );
    assert_eq!(p.sim.requests().len(), 2, "the LLM answered each turn once");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_sharing_a_conversation_id_never_see_each_other() {
    let p = Platform::start().await;
    let a = p.tenant("tenant-a").await;
    let b = p.tenant("tenant-b").await;

    p.send(&a.api_key, "shared", "alpha secret", None).await;
    let (a_entries, a_cursor) = p.read_until(&a.api_key, "shared", "0", 2).await;
    p.send(&b.api_key, "shared", "bravo question", None).await;
    let (b_entries, _) = p.read_until(&b.api_key, "shared", "0", 2).await;

    let texts = |entries: &[serde_json::Value]| -> String {
        entries
            .iter()
            .map(|e| e["text"].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(!texts(&b_entries).contains("alpha"), "B saw A's messages");
    assert!(texts(&b_entries).contains("tenant-b Shop"));
    assert!(
        p.poll(&a.api_key, "shared", &a_cursor, 1).await.is_none(),
        "A saw B's messages"
    );
    assert!(texts(&a_entries).contains("tenant-a Shop"));
    let b_request = p
        .sim
        .requests()
        .into_iter()
        .find(|r| r.messages.iter().any(|m| m.content == "bravo question"))
        .expect("B's request");
    assert_eq!(
        b_request.messages.len(),
        2,
        "B's prompt has no history from A"
    );
    assert!(
        b_request
            .messages
            .iter()
            .all(|m| !m.content.contains("alpha"))
    );
    p.stop().await;
}

/// A caller's oversized `x-request-id` once made the request's task panic after its
/// message was committed: the client got no answer, the message was kept. It is now
/// replaced by a fresh id (which the response carries), and the message is accepted and
/// answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_id_is_replaced_and_the_message_answered_once() {
    let p = Platform::start().await;
    let t = p.tenant("long-id").await;
    let long = "r".repeat(1000);
    let response = p
        .http
        .post(format!("{}/api/v1/messages", p.base))
        .bearer_auth(&t.api_key)
        .header("x-request-id", long.as_str())
        .json(&serde_json::json!({ "conversation_id": "c", "text": "hello" }))
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("a request id in the response")
        .to_owned();
    assert!(id.len() <= 64 && id != long, "{id}");
    let (entries, _) = p.read_until(&t.api_key, "c", "0", 2).await;
    let roles: Vec<&str> = entries.iter().filter_map(|e| e["role"].as_str()).collect();
    assert_eq!(roles, ["user", "assistant"]);
    // Nothing more comes: one reply.
    assert!(p.poll(&t.api_key, "c", "2", 1).await.is_none());
    p.stop().await;
}

/// An ingress holds at most `http.max_long_polls` polls; the ones beyond are answered
/// 503 `overloaded` at once, with `Retry-After`, and the held ones wait as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_beyond_the_cap_are_answered_at_once() {
    let p = Platform::start_with(&[("CHATFLEET__HTTP__MAX_LONG_POLLS", "3")], 1).await;
    let t = p.tenant("poll-cap").await;
    let (status, _) = p.send(&t.api_key, "c", "hello", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, cursor) = p.read_until(&t.api_key, "c", "0", 2).await;
    let mut polls = tokio::task::JoinSet::new();
    for _ in 0..13 {
        let request = p
            .http
            .get(format!("{}/api/v1/conversations/c/messages", p.base))
            .query(&[("after", cursor.as_str()), ("wait", "5")])
            .bearer_auth(&t.api_key);
        polls.spawn(async move {
            let started = std::time::Instant::now();
            let response = request.send().await.expect("poll");
            let retry_after = response.headers().get("retry-after").cloned();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, retry_after, body, started.elapsed())
        });
    }
    let answers = polls.join_all().await;
    let refused: Vec<_> = answers
        .iter()
        .filter(|(s, ..)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    let held = answers
        .iter()
        .filter(|(s, ..)| *s == StatusCode::NO_CONTENT)
        .count();
    assert_eq!((refused.len(), held), (10, 3), "{answers:?}");
    for (_, retry_after, body, took) in refused {
        assert_eq!(body["error"]["code"], "overloaded");
        assert!(retry_after.is_some(), "Retry-After");
        assert!(
            *took < std::time::Duration::from_secs(4),
            "answered at once: {took:?}"
        );
    }
    p.stop().await;
}

/// An ingress serves at most `http.max_in_flight` requests at once: with its slots held
/// by long-polls, a send is answered 503 `overloaded` at once (nothing accepted), health
/// checks still answer, and once the polls end the send is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_admission_limit_are_refused_at_once() {
    let p = Platform::start_with(&[("CHATFLEET__HTTP__MAX_IN_FLIGHT", "2")], 1).await;
    let t = p.tenant("admission").await;
    let (status, _) = p.send(&t.api_key, "c", "hello", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, cursor) = p.read_until(&t.api_key, "c", "0", 2).await;
    let mut polls = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (http, url, key, cursor) = (
            p.http.clone(),
            format!("{}/api/v1/conversations/c/messages", p.base),
            t.api_key.clone(),
            cursor.clone(),
        );
        // A poll that meets the other slots taken (by the sends below) tries again: the
        // two polls end up holding both slots for their whole wait.
        polls.spawn(async move {
            loop {
                let status = http
                    .get(&url)
                    .query(&[("after", cursor.as_str()), ("wait", "4")])
                    .bearer_auth(&key)
                    .send()
                    .await
                    .expect("poll")
                    .status();
                if status != StatusCode::SERVICE_UNAVAILABLE {
                    return status;
                }
            }
        });
    }
    // Both slots taken once a third request is refused; until then the polls connect.
    let refused = shared::testkit::eventually(crate::support::WAIT, "a refusal", || async {
        let response = p
            .http
            .post(format!("{}/api/v1/messages", p.base))
            .bearer_auth(&t.api_key)
            .json(&serde_json::json!({ "conversation_id": "d", "text": "over" }))
            .send()
            .await
            .expect("send");
        (response.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(response)
    })
    .await;
    assert!(refused.headers().get("retry-after").is_some());
    let body: serde_json::Value = refused.json().await.expect("body");
    assert_eq!(body["error"]["code"], "overloaded");
    let health = p
        .http
        .get(format!("{}/healthz", p.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "health checks are not counted"
    );
    assert_eq!(
        polls.join_all().await,
        [StatusCode::NO_CONTENT, StatusCode::NO_CONTENT]
    );
    let (status, _) = p.send(&t.api_key, "d", "after", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    p.stop().await;
}
