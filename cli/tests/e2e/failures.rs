//! Bad input and failing dependencies: clear errors, nothing lost, nothing half-stored.

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::testkit::eventually;

use crate::support::{Method, Platform, WAIT, chatfleet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_stable_error_codes() {
    let p = Platform::start().await;
    let t = p.tenant("strict").await;
    let code = |body: &Value| body["error"]["code"].as_str().unwrap_or("").to_owned();

    let (s, b) = p
        .send("cfk_000000000000_".to_owned().as_str(), "c", "hi", None)
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_api_key")
    );
    let response = p
        .http
        .post(format!("{}/api/v1/messages", p.base))
        .body("{}")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let (s, b) = p
        .send_raw(&t.api_key, "{\"conversation_id\": ".into(), None)
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let (s, b) = p
        .send_raw(
            &t.api_key,
            json!({ "conversation_id": "c" }).to_string(),
            None,
        )
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::BAD_REQUEST, "missing_text")
    );
    let (s, b) = p.send(&t.api_key, "c", "   ", None).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::BAD_REQUEST, "missing_text")
    );
    let (s, b) = p
        .send_raw(&t.api_key, json!({ "text": "hi" }).to_string(), None)
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_conversation_id")
    );
    let (s, b) = p
        .send(&t.api_key, "c", &"x".repeat(16 * 1024 + 1), None)
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "text_too_large")
    );
    let (s, _) = p.send(&t.api_key, "c", &"x".repeat(16 * 1024), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "exactly the limit is accepted");
    let (s, b) = p.send(&t.api_key, "c", &"x".repeat(200_000), None).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    let key_id = {
        let created = p
            .env
            .db
            .tenant(t.id)
            .api_keys()
            .create("to revoke")
            .await
            .expect("key");
        let (s, _) = p
            .send(created.key.expose(), "c", "before revoke", None)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
        (created.id, created.key.expose().clone())
    };
    // The key is in ingress's cache now (it authenticated the send above); revoking it
    // through the admin API drops it there at once.
    let (s, b) = p
        .admin(
            Method::DELETE,
            &format!("/admin/v1/clients/{}/api-keys/{}", t.id, key_id.0),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, b) = p.send(&key_id.1, "c", "after revoke", None).await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_api_key")
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_publish_is_a_503_and_stores_nothing() {
    let p = Platform::start().await;
    let t = p.tenant("brokerless").await;
    // Remove the topology under the running ingress: the broker can no longer route, so
    // it cannot confirm the envelope.
    p.env
        .broker
        .delete_topology()
        .await
        .expect("delete topology");
    let (s, b) = p.send(&t.api_key, "c", "lost?", Some("k-503")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert_eq!(b["error"]["code"], "broker_unavailable");
    // Nothing of the message was stored (the conversation itself may exist, empty).
    if let Some(conv) = p
        .env
        .db
        .tenant(t.id)
        .conversations()
        .find(shared::ids::Channel::Api, "c")
        .await
        .expect("query")
    {
        let stored = p
            .env
            .db
            .tenant(t.id)
            .messages()
            .in_conversation(conv, 10)
            .await
            .expect("read");
        assert!(stored.is_empty(), "{stored:?}");
    }

    // The client retries once the broker is back: accepted and answered, once.
    p.env.broker.declare_topology().await.expect("redeclare");
    let (s, _) = p.send(&t.api_key, "c", "lost?", Some("k-503")).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (entries, _) = p.read_until(&t.api_key, "c", "0", 2).await;
    assert_eq!(entries[1]["role"], "assistant");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_llm_means_retry_later_not_loss() {
    let p = Platform::start().await;
    let t = p.tenant("patient").await;
    p.sim.set_unavailable(true);
    let (s, _) = p.send(&t.api_key, "c", "are you there?", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // First try and one retry through the ladder (1 s rung) both fail...
    p.wait_for_llm_requests(2).await;
    // ...then the LLM comes back and the next rung's retry answers.
    p.sim.set_unavailable(false);
    let (entries, _) = p.read_until(&t.api_key, "c", "0", 2).await;
    assert_eq!(entries[1]["role"], "assistant");
    assert!(
        entries[1]["text"]
            .as_str()
            .unwrap_or("")
            .ends_with("You said: are you there?")
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_never_succeeds_ends_in_the_dead_letter_queue() {
    let p = Platform::start().await;
    let t = p.tenant("doomed").await;
    p.sim.set_unavailable(true);
    let (s, _) = p.send(&t.api_key, "c", "hello?", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let dead = p.env.broker.topology().dead_queue();
    eventually(WAIT, "the dead letter", || async {
        (p.env.broker.queue_stats(&dead).await.ok()?.messages == 1).then_some(())
    })
    .await;
    // First try plus one per rung of the test ladder (1 s, 2 s).
    assert_eq!(p.sim.requests().len(), 3);
    // The user is not left in silence: the tenant's fallback message answers.
    let (entries, _) = p.read_until(&t.api_key, "c", "0", 2).await;
    assert_eq!(entries[0]["text"], "hello?");
    assert_eq!(
        entries[1]["text"],
        "Sorry, I cannot answer right now. Please try again in a moment."
    );
    let mut dead_letters = p
        .env
        .broker
        .consume(&dead, 1, "test")
        .await
        .expect("read the dead letters");
    let dead_letter = tokio::time::timeout(WAIT, dead_letters.next())
        .await
        .expect("a dead letter in time")
        .expect("a dead letter");
    let reason = dead_letter.headers()[shared::mq::headers::DEAD_REASON].clone();
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_requeued_after_the_fix_is_answered_once() {
    let p = Platform::start().await;
    let t = p.tenant("outage").await;
    p.sim.set_unavailable(true);
    let (s, _) = p.send(&t.api_key, "c", "is my order late?", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // Every attempt fails: the user gets the fallback message, the envelope a dead letter.
    let (entries, cursor) = p.read_until(&t.api_key, "c", "0", 2).await;
    assert!(
        entries[1]["text"]
            .as_str()
            .unwrap_or("")
            .starts_with("Sorry")
    );
    let dead = p.env.broker.topology().dead_queue();
    eventually(WAIT, "the dead letter", || async {
        (p.env.broker.queue_stats(&dead).await.ok()?.messages == 1).then_some(())
    })
    .await;
    let (ok, listed) = chatfleet(&p, &["dlq", "list", "--json"]).await;
    assert!(ok);
    let letter: Value = serde_json::from_str(listed.lines().next().expect("one")).expect("json");
    assert!(
        letter["reason"]
            .as_str()
            .unwrap_or("")
            .contains("gave up after 3 attempts"),
        "{letter}"
    );

    // The LLM is back: requeued, the message gets its real answer, once.
    p.sim.set_unavailable(false);
    let (ok, out) = chatfleet(&p, &["dlq", "requeue"]).await;
    assert!(ok && out.contains("requeued 1"), "{out}");
    let (answer, cursor) = p.read_until(&t.api_key, "c", &cursor, 1).await;
    assert!(
        answer[0]["text"]
            .as_str()
            .unwrap_or("")
            .ends_with("You said: is my order late?"),
        "{answer:?}"
    );
    assert!(
        p.poll(&t.api_key, "c", &cursor, 2).await.is_none(),
        "answered twice"
    );
    assert_eq!(
        p.env
            .broker
            .queue_stats(&dead)
            .await
            .expect("stats")
            .messages,
        0
    );
    p.stop().await;
}
