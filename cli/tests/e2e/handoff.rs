//! Human handoff end to end: the phrase hands over, the bot goes silent and forwards,
//! an agent writes, hand-back resumes the bot, and a handoff during an in-flight turn
//! suppresses that turn's reply.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::envelope::EventKind;
use shared::testkit::eventually;

use crate::support::{Method, Platform, WAIT, next_event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phrase_hands_over_and_the_agent_takes_it_from_there() {
    let p = Platform::start().await;
    let t = p.tenant("helpdesk").await;
    let mut events = p.events(&format!("handoff.{}", t.id)).await;
    let (s, _) = p
        .admin(Method::PATCH, &format!("/admin/v1/clients/{}/config", t.id),
            Some(json!({ "human_handoff_phrase": "talk to a human", "handoff_message": "A person will answer shortly." })))
        .await;
    assert_eq!(s, StatusCode::OK);

    let (reply, cursor) = p.ask(&t.api_key, "c", "hi there", "0").await;
    assert!(
        reply["text"]
            .as_str()
            .unwrap_or("")
            .contains("You said: hi there")
    );
    let (notice, cursor) = p
        .ask(&t.api_key, "c", "Please, TALK to a HUMAN!", &cursor)
        .await;
    assert_eq!(notice["text"], "A person will answer shortly.");
    let handoff = next_event(&mut events).await;
    assert_eq!(
        (handoff.kind, handoff.client_id),
        (EventKind::Handoff, t.id)
    );
    let conversation = handoff.conversation_id.get();
    let llm_calls = p.sim.requests().len();

    // The bot stays silent; the message is kept and forwarded.
    let (s, _) = p
        .send(&t.api_key, "c", "where is my order 1234?", None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let forwarded = next_event(&mut events).await;
    assert_eq!(forwarded.kind, EventKind::UserMessage);
    assert_eq!(
        forwarded.text.as_ref().map(|t| t.expose().as_str()),
        Some("where is my order 1234?")
    );
    assert_eq!(
        p.sim.requests().len(),
        llm_calls,
        "no LLM call while a human has the conversation"
    );
    let (user_only, cursor) = p.read_until(&t.api_key, "c", &cursor, 1).await;
    assert_eq!(user_only[0]["role"], "user");
    assert!(
        p.poll(&t.api_key, "c", &cursor, 1).await.is_none(),
        "the bot said nothing"
    );

    // A human agent answers through the same outbound path.
    let base = format!("/admin/v1/clients/{}/conversations/{conversation}", t.id);
    let (s, sent) = p
        .admin(
            Method::POST,
            &format!("{base}/messages"),
            Some(json!({ "text": "Hi, Sam here. Checking order 1234." })),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{sent}");
    let (agent, cursor) = p.read_until(&t.api_key, "c", &cursor, 1).await;
    assert_eq!(
        (agent[0]["role"].as_str(), agent[0]["text"].as_str()),
        (Some("agent"), Some("Hi, Sam here. Checking order 1234."))
    );

    // Hand back: the bot answers again, with the agent's words in its history.
    let (s, conv) = p.admin(Method::POST, &format!("{base}/resume"), None).await;
    assert_eq!((s, conv["mode"].as_str()), (StatusCode::OK, Some("bot")));
    assert_eq!(next_event(&mut events).await.kind, EventKind::HandedBack);
    let (back, _) = p
        .ask(&t.api_key, "c", "thanks, anything else?", &cursor)
        .await;
    assert_eq!(back["role"], "assistant");
    let last = p.sim.requests().pop().expect("request");
    assert!(
        last.messages
            .iter()
            .any(|m| m.content == "Hi, Sam here. Checking order 1234.")
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_during_a_turn_suppresses_its_reply() {
    let p = Platform::start().await;
    let t = p.tenant("midturn").await;
    p.sim.set_latency(Duration::from_millis(1500));
    let (s, _) = p.send(&t.api_key, "c", "a slow question", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    p.wait_for_llm_requests(1).await; // the turn is at the LLM now
    let conv = p.conversation(t.id, "c").await;
    let (s, _) = p
        .admin(
            Method::POST,
            &format!(
                "/admin/v1/clients/{}/conversations/{}/handoff",
                t.id,
                conv.get()
            ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    eventually(WAIT, "the turn to end", || async {
        let stored = p
            .env
            .db
            .tenant(t.id)
            .messages()
            .in_conversation(conv, 10)
            .await
            .ok()?;
        (stored.first()?.state != shared::db::MessageState::Pending).then_some(stored)
    })
    .await;
    assert_eq!(p.sim.served(), 1, "the LLM did answer");
    let stored = p.stored(t.id, conv).await;
    assert_eq!(stored.len(), 1, "but its reply was not stored: {stored:?}");
    let (entries, cursor) = p.read_until(&t.api_key, "c", "0", 1).await;
    assert_eq!(entries[0]["role"], "user");
    let nothing: Option<Value> = p.poll(&t.api_key, "c", &cursor, 1).await;
    assert!(nothing.is_none(), "no bot reply after the handoff");
    p.stop().await;
}
