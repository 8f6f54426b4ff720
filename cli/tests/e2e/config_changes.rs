//! Configuration changes take effect on the next message, on every worker; tenants never
//! see each other's configuration or data, across many interleaved messages and workers;
//! status and plan limits.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use shared::testkit::eventually;

use crate::support::{Method, Platform, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_config_change_is_seen_by_the_next_message_on_every_worker() {
    let p = Platform::start_with(&[], 3).await;
    let t = p.tenant("fickle").await;
    let mut cursor = "0".to_owned();
    for round in 0..12 {
        let persona = format!("Persona{round}");
        let (s, cfg) = p
            .admin(
                Method::PATCH,
                &format!("/admin/v1/clients/{}/config", t.id),
                Some(json!({ "persona_name": persona })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{cfg}");
        let (reply, next) = p
            .ask(&t.api_key, "c", &format!("question {round}"), &cursor)
            .await;
        cursor = next;
        let text = reply["text"].as_str().unwrap_or("");
        assert!(
            text.contains(&format!("You are {persona}, ")),
            "round {round}: {text}"
        );
        let last = p.sim.requests().pop().expect("request");
        assert!(
            last.messages[0]
                .content
                .starts_with(&format!("You are {persona}, "))
        );
        let conv = p.conversation(t.id, "c").await;
        let stored = p.stored(t.id, conv).await;
        let answer = stored
            .iter()
            .rev()
            .find(|m| m.role == shared::db::Role::Assistant)
            .expect("answer");
        assert_eq!(
            answer.config_version,
            cfg["config_version"].as_u64(),
            "round {round}"
        );
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_config_after_the_subscription_comes_back() {
    let p = Platform::start().await;
    let t = p.tenant("reconnect").await;
    let (first, cursor) = p.ask(&t.api_key, "c", "warm the cache", "0").await;
    assert!(
        first["text"]
            .as_str()
            .unwrap_or("")
            .contains("You are Assistant, ")
    );

    // Drop every pub/sub connection (ours resubscribe within moments) and change the
    // persona while they are down.
    let channel = p.env.cache.keys().config_channel();
    let client = deadpool_redis_client();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: i64 = redis_cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .expect("kill");
    let (s, _) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", t.id),
            Some(json!({ "persona_name": "Renewed" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Wait until ingress and worker listen again, then ask.
    eventually(WAIT, "the subscriptions to return", || {
        let mut conn = conn.clone();
        let channel = channel.clone();
        async move {
            let counts: Vec<(String, i64)> = redis_cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .ok()?;
            (counts.first()?.1 >= 2).then_some(())
        }
    })
    .await;
    let (reply, _) = p.ask(&t.api_key, "c", "who are you now?", &cursor).await;
    assert!(
        reply["text"]
            .as_str()
            .unwrap_or("")
            .contains("You are Renewed, "),
        "{reply}"
    );
    p.stop().await;
}

fn deadpool_redis_client() -> redis::Client {
    redis::Client::open("redis://127.0.0.1:6379").expect("redis url")
}

fn redis_cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interleaved_tenants_never_see_each_others_markers() {
    let lots = [
        ("CHATFLEET__PLANS__STARTER__BURST", "1000"),
        ("CHATFLEET__PLANS__STARTER__MESSAGES_PER_MINUTE", "60000"),
    ];
    let p = Platform::start_with(&lots, 3).await;
    let a = p.tenant("marker-a").await;
    let b = p.tenant("marker-b").await;
    for (t, marker) in [(&a, "ALPHAMARK"), (&b, "BRAVOMARK")] {
        let (s, _) = p
            .admin(
                Method::PATCH,
                &format!("/admin/v1/clients/{}/config", t.id),
                Some(
                    json!({ "persona_name": format!("{marker}-persona"), "max_context_turns": 6 }),
                ),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = p
            .admin(Method::POST, &format!("/admin/v1/clients/{}/modes", t.id),
                Some(json!({ "module_key": "m", "prompt_fragment": format!("{marker}-mode"), "is_active": true, "priority": 1 })))
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    // 200 messages, alternating tenants, over 10 conversation ids both tenants use.
    let mut sent = Vec::new();
    for i in 0..200 {
        let (t, marker) = if i % 2 == 0 {
            (&a, "ALPHAMARK")
        } else {
            (&b, "BRAVOMARK")
        };
        let conversation = format!("conv-{}", (i / 2) % 10);
        let (s, _) = p
            .send(
                &t.api_key,
                &conversation,
                &format!("{marker} message {i}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
        sent.push(i);
    }
    // Every conversation of each tenant, read until its last message is answered (a
    // worker answers messages that queued up behind a turn together): none of the
    // other tenant's markers anywhere.
    for (t, mine, other, first) in [
        (&a, "ALPHAMARK", "BRAVOMARK", 0),
        (&b, "BRAVOMARK", "ALPHAMARK", 1),
    ] {
        for c in 0..10 {
            let conversation = format!("conv-{c}");
            // A turn that took several messages ends its reply with the last of them.
            let last = format!("{mine} message {}", first + 2 * c + 180);
            let (mut entries, mut cursor) = p.read_until(&t.api_key, &conversation, "0", 1).await;
            while !entries.iter().any(|e| {
                e["role"] == "assistant" && e["text"].as_str().unwrap_or("").ends_with(&last)
            }) {
                let (more, next) = p.read_until(&t.api_key, &conversation, &cursor, 1).await;
                entries.extend(more);
                cursor = next;
            }
            for e in &entries {
                assert!(
                    !e["text"].as_str().unwrap_or("").contains(other),
                    "{conversation}: {e}"
                );
            }
        }
    }
    for request in p.sim.requests() {
        let all: String = request
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let (mine, other) = if all.contains("ALPHAMARK-persona") {
            ("ALPHAMARK", "BRAVOMARK")
        } else {
            ("BRAVOMARK", "ALPHAMARK")
        };
        assert!(all.contains(&format!("{mine}-mode")));
        assert!(
            !all.contains(other),
            "a {mine} prompt contains {other}:\n{all}"
        );
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_tenant_gets_no_llm_call_but_keeps_its_messages() {
    let p = Platform::start().await;
    let t = p.tenant("paused").await;
    let (s, _) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}", t.id),
            Some(json!({ "status": "suspended" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = p.send(&t.api_key, "c", "anyone?", None).await;
    assert_eq!(
        s,
        StatusCode::ACCEPTED,
        "the channel still gets its acknowledgement"
    );
    let conv = p.conversation(t.id, "c").await;
    eventually(WAIT, "the message to be recorded and closed", || async {
        let stored = p
            .env
            .db
            .tenant(t.id)
            .messages()
            .in_conversation(conv, 10)
            .await
            .ok()?;
        (stored.len() == 1 && stored[0].state == shared::db::MessageState::Ignored).then_some(())
    })
    .await;
    assert!(
        p.sim.requests().is_empty(),
        "no LLM call for a suspended tenant"
    );

    let (s, _) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}", t.id),
            Some(json!({ "status": "active" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (reply, _) = p.ask(&t.api_key, "c2", "back?", "0").await;
    assert_eq!(reply["role"], "assistant");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_limit_delays_but_never_drops() {
    // 60 a minute = one a second, two at once.
    let limits = [
        ("CHATFLEET__PLANS__STARTER__BURST", "2"),
        ("CHATFLEET__PLANS__STARTER__MESSAGES_PER_MINUTE", "60"),
    ];
    let p = Platform::start_with(&limits, 1).await;
    let t = p.tenant("thrifty").await;
    let started = Instant::now();
    for i in 0..5 {
        let (s, _) = p.send(&t.api_key, &format!("c{i}"), "hi", None).await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    for i in 0..5 {
        let (entries, _) = p.read_until(&t.api_key, &format!("c{i}"), "0", 2).await;
        assert_eq!(entries[1]["role"], "assistant");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "five messages at one a second (burst two) took {:?}",
        started.elapsed()
    );
    assert_eq!(p.sim.requests().len(), 5);
    let dead = p
        .env
        .broker
        .queue_stats(&p.env.broker.topology().dead_queue())
        .await
        .expect("stats");
    assert_eq!(dead.messages, 0, "nothing was dead-lettered");
    p.stop().await;
}
