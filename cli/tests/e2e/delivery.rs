//! Delivery guarantees across workers: one conversation's turns never overlap and keep
//! their order, bursts are answered together, a worker killed mid-call costs neither a
//! reply nor a duplicate, the fallback model and message stand in for a failing LLM, and
//! SIGTERM drains in-flight turns.

use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use shared::testkit::eventually;

use crate::support::{Method, Platform, WAIT, worker_process};

async fn consumers(p: &Platform) -> u32 {
    let queue = p.env.broker.topology().inbound_work();
    p.env
        .broker
        .queue_stats(&queue)
        .await
        .map(|s| s.consumers)
        .unwrap_or(0)
}

#[tokio::test]
async fn two_workers_answer_one_conversation_in_order_with_the_whole_history() {
    let p = Platform::start_with(&[], 2).await;
    let t = p.tenant("shop").await;
    p.sim.set_latency(Duration::from_millis(400));
    let (s, _) = p.send(&t.api_key, "c", "first question", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // The first turn is running; the second message arrives 10 ms later, most likely on
    // the other worker (the broker hands deliveries out in turn).
    p.wait_for_llm_requests(1).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (s, _) = p.send(&t.api_key, "c", "second question", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // The mailbox is chronological: the second question may precede the first answer.
    let (entries, _) = p.read_until(&t.api_key, "c", "0", 4).await;
    let replies: Vec<&str> = entries
        .iter()
        .filter(|e| e["role"] == "assistant")
        .map(|e| e["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(replies.len(), 2, "{entries:?}");
    assert!(
        replies[0].ends_with("You said: first question"),
        "{replies:?}"
    );
    assert!(
        replies[1].ends_with("You said: second question"),
        "{replies:?}"
    );
    // The second prompt held the first exchange.
    let requests = p.sim.requests();
    assert_eq!(requests.len(), 2);
    let second: Vec<&str> = requests[1]
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert!(second.contains(&"first question"), "{second:?}");
    assert!(second.contains(&replies[0]), "{second:?}");
    p.stop().await;
}

#[tokio::test]
async fn a_burst_within_the_debounce_window_is_one_turn() {
    let p = Platform::start_with(&[], 2).await;
    let t = p.tenant("shop").await;
    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", t.id),
            Some(json!({ "coalesce_window_ms": 500 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for i in 0..5 {
        let (s, _) = p.send(&t.api_key, "c", &format!("part {i}"), None).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let (entries, cursor) = p.read_until(&t.api_key, "c", "0", 6).await;
    let roles: Vec<&str> = entries
        .iter()
        .map(|e| e["role"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(roles, ["user", "user", "user", "user", "user", "assistant"]);
    // One LLM call whose question holds all five parts, in order.
    assert!(
        p.poll(&t.api_key, "c", &cursor, 1).await.is_none(),
        "a second reply"
    );
    let requests = p.sim.requests();
    assert_eq!(requests.len(), 1);
    let question = &requests[0].messages.last().expect("a question").content;
    assert_eq!(question, "part 0\n\npart 1\n\npart 2\n\npart 3\n\npart 4");
    p.stop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_call_costs_neither_the_reply_nor_a_duplicate() {
    let p = Platform::start_with(&[], 0).await;
    let t = p.tenant("shop").await;
    p.sim.set_latency(Duration::from_secs(2));
    // A short lock TTL: the dead worker's lock expires soon after it died.
    let settings = [("CHATFLEET__WORKER__LOCK_TTL_S", "3")];
    let mut doomed = worker_process(&p, &settings);
    eventually(WAIT, "the worker to consume", || async {
        (consumers(&p).await == 1).then_some(())
    })
    .await;
    let (s, _) = p.send(&t.api_key, "c", "are you there?", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    p.wait_for_llm_requests(1).await;
    doomed.kill().expect("SIGKILL");
    doomed.wait().expect("reaped");
    let mut survivor = worker_process(&p, &settings);
    let (entries, cursor) = p.read_until(&t.api_key, "c", "0", 2).await;
    assert_eq!(entries[1]["role"], "assistant");
    assert!(
        entries[1]["text"]
            .as_str()
            .unwrap_or("")
            .ends_with("You said: are you there?")
    );
    assert!(
        p.poll(&t.api_key, "c", &cursor, 3).await.is_none(),
        "a second reply"
    );
    assert_eq!(p.sim.requests().len(), 2, "asked once by each worker");
    let conversation = p.conversation(t.id, "c").await;
    assert_eq!(p.stored(t.id, conversation).await.len(), 2);
    let _ = survivor.kill();
    let _ = survivor.wait();
    p.stop().await;
}

#[tokio::test]
async fn a_failing_model_is_replaced_by_the_fallback_model() {
    let p = Platform::start().await;
    let t = p.tenant("shop").await;
    p.sim.fail_model("llama3.1:8b");
    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", t.id),
            Some(json!({ "fallback_model": "backup-model" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (reply, _) = p.ask(&t.api_key, "c", "hello", "0").await;
    let text = reply["text"].as_str().unwrap_or("");
    assert!(text.starts_with("[backup-model]"), "{text}");
    let requests = p.sim.requests();
    let models: Vec<&str> = requests.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(models, ["llama3.1:8b", "backup-model"]);
    // The fallback model is asked the same prompt, whole.
    assert!(requests[0].messages.len() >= 2);
    assert_eq!(requests[1].messages, requests[0].messages);
    p.stop().await;
}

#[tokio::test]
async fn sigterm_drains_fifty_in_flight_turns() {
    let p = Platform::start_with(&[], 0).await;
    let t = p.tenant("shop").await;
    // Fifty conversations at once must fit the plan.
    let (status, _) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}", t.id),
            Some(json!({ "plan": "enterprise" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    p.sim.set_latency(Duration::from_secs(2));
    let mut worker = worker_process(
        &p,
        &[
            ("CHATFLEET__WORKER__DRAIN_TIMEOUT_S", "20"),
            ("CHATFLEET__AMQP__PREFETCH", "64"),
        ],
    );
    eventually(WAIT, "the worker to consume", || async {
        (consumers(&p).await == 1).then_some(())
    })
    .await;
    for i in 0..50 {
        let (s, _) = p.send(&t.api_key, &format!("c{i}"), "hi", None).await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    p.wait_for_llm_requests(50).await;
    let signalled = std::time::Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .expect("waiter")
        .expect("exit status");
    let took = signalled.elapsed();
    assert!(exited.success(), "{exited:?}");
    assert!(took < Duration::from_secs(20), "drain took {took:?}");
    for i in 0..50 {
        let (entries, _) = p.read_until(&t.api_key, &format!("c{i}"), "0", 2).await;
        assert_eq!(entries[1]["role"], "assistant", "conversation c{i}");
    }
    assert_eq!(p.sim.requests().len(), 50, "no turn ran twice");
    p.stop().await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_and_the_queue_keeps_flowing() {
    let p = Platform::start().await;
    let t = p.tenant("shop").await;
    let publisher = p.env.broker.publisher().await.expect("publisher");
    publisher
        .publish_inbound_raw(&format!("api.{}", t.id), b"\x00 not an envelope {")
        .await
        .expect("published");
    let dead = p.env.broker.topology().dead_queue();
    let mut dead_letters = p
        .env
        .broker
        .consume(&dead, 1, "test")
        .await
        .expect("consume");
    let poison = tokio::time::timeout(WAIT, dead_letters.next())
        .await
        .expect("dead-lettered in time")
        .expect("a dead letter");
    let reason = poison.headers()[shared::mq::headers::DEAD_REASON].clone();
    assert!(reason.starts_with("undecodable"), "{reason}");
    assert_eq!(poison.attempt, 1, "dead-lettered at once, not retried");
    // The next message is answered as usual.
    let (reply, _) = p.ask(&t.api_key, "c", "still there?", "0").await;
    assert!(
        reply["text"]
            .as_str()
            .unwrap_or("")
            .ends_with("You said: still there?")
    );
    p.stop().await;
}
