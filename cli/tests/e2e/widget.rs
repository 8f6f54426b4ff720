//! The website widget channel: sessions bound to allowed origins, sends answered once,
//! long-polls that work on any replica and never lose or repeat a message.

#![allow(clippy::print_stdout)] // wake-up and memory figures are printed for the record

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Platform, WAIT};

const SITE: &str = "https://shop.example";

fn token(session: &Value) -> String {
    session["token"].as_str().expect("token").to_owned()
}

/// (role, text) of each entry; a simulated answer shortened to its "You said: …" part.
fn texts(entries: &[Value]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| {
            let text = e["text"].as_str().expect("text");
            let text = text.find("You said: ").map_or(text, |at| &text[at..]);
            (
                e["role"].as_str().expect("role").to_owned(),
                text.to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_widget_session_sends_once_and_reads_its_replies() {
    let p = Platform::start().await;
    let tenant = p.widget_tenant("shop", SITE).await;

    // Origins: only the tenant's own site opens sessions, and CORS says so.
    let (status, body) = p
        .widget_session(
            &p.base,
            "https://evil.example",
            json!({ "client": tenant.slug }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "origin_not_allowed");
    let refused = p
        .http
        .post(format!("{}/widget/v1/sessions", p.base))
        .json(&json!({ "client": tenant.slug }))
        .send()
        .await
        .expect("no origin");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let (status, _) = p
        .widget_session(&p.base, SITE, json!({ "client": "nobody" }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let preflight = p
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/widget/v1/messages", p.base),
        )
        .header("origin", SITE)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(preflight.headers()["access-control-allow-origin"], SITE);
    assert!(
        preflight.headers()["access-control-allow-headers"]
            .to_str()
            .expect("ascii")
            .contains("authorization")
    );

    let opened = p
        .http
        .post(format!("{}/widget/v1/sessions", p.base))
        .header("origin", SITE)
        .json(&json!({ "client": tenant.slug, "visitor_id": "visitor-0123456789abcdef" }))
        .send()
        .await
        .expect("session");
    assert_eq!(opened.status(), StatusCode::CREATED);
    assert_eq!(opened.headers()["access-control-allow-origin"], SITE);
    let session: Value = opened.json().await.expect("session body");
    assert!(session["session_id"].is_string() && session["expires_at"].is_string());
    let token = token(&session);

    // The same client_message_id twice: one message id, one turn.
    let message = json!({ "text": "Do you ship to Lisbon?", "client_message_id": "m-1" });
    let (status, first) = p
        .session_send(&p.base, "widget", &token, message.clone())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (_, again) = p.session_send(&p.base, "widget", &token, message).await;
    assert_eq!(first["message_id"], again["message_id"]);
    let (entries, cursor) = p.session_read(&p.base, "widget", &token, "", 2).await;
    assert_eq!(entries[0]["id"], first["message_id"]);
    assert_eq!(
        texts(&entries)[1],
        (
            "assistant".to_owned(),
            "You said: Do you ship to Lisbon?".to_owned()
        )
    );
    p.wait_for_llm_requests(1).await;
    let (status, _) = p.session_poll(&p.base, "widget", &token, &cursor, 1).await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "a repeated send was answered twice"
    );
    assert_eq!(p.sim.requests().len(), 1);

    // Bad input.
    let (status, body) = p
        .session_send(
            &p.base,
            "widget",
            &token,
            json!({ "text": "x".repeat(16 * 1024 + 1) }),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let (status, body) = p
        .session_poll(
            &p.base,
            "widget",
            &String::from_utf8(forged).expect("ascii"),
            "",
            0,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let wrong_origin = p
        .http
        .get(format!("{}/widget/v1/messages", p.base))
        .header("origin", "https://evil.example")
        .bearer_auth(&token)
        .send()
        .await
        .expect("poll");
    assert_eq!(wrong_origin.status(), StatusCode::FORBIDDEN);
    assert!(
        wrong_origin
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // Another visitor's cursor is not this session's.
    let (_, other) = p
        .widget_session(&p.base, SITE, json!({ "client": tenant.slug }))
        .await;
    let (status, body) = p
        .session_poll(&p.base, "widget", &crate::widget::token(&other), &cursor, 0)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_cursor");

    // The returning visitor resumes the conversation in a new session.
    let (_, resumed) = p
        .widget_session(
            &p.base,
            SITE,
            json!({ "client": tenant.slug, "visitor_id": "visitor-0123456789abcdef" }),
        )
        .await;
    assert_ne!(resumed["session_id"], session["session_id"]);
    let (history, _) = p
        .session_read(&p.base, "widget", &crate::widget::token(&resumed), "", 2)
        .await;
    assert_eq!(texts(&history), texts(&entries));
    p.stop().await;
}

#[tokio::test]
async fn a_newer_poll_takes_over_the_session() {
    let p = Platform::start().await;
    let tenant = p.widget_tenant("shop", SITE).await;
    let (_, session) = p
        .widget_session(&p.base, SITE, json!({ "client": tenant.slug }))
        .await;
    let token = token(&session);
    let first = {
        let (http, base, token) = (p.http.clone(), p.base.clone(), token.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let r = http
                .get(format!("{base}/widget/v1/messages?wait=20"))
                .bearer_auth(token)
                .send()
                .await
                .expect("first poll");
            (r.status(), started.elapsed())
        })
    };
    // Let the first poll start waiting: the second must find it holding the slot.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = p.session_poll(&p.base, "widget", &token, "", 1).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, waited) = first.await.expect("first");
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        waited < Duration::from_secs(10),
        "superseded poll waited {waited:?}"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_reply_wakes_a_poll_waiting_on_another_replica() {
    let p = Platform::start().await;
    let other = p.another_ingress().await;
    let tenant = p.widget_tenant("shop", SITE).await;
    let (_, session) = p
        .widget_session(&p.base, SITE, json!({ "client": tenant.slug }))
        .await;
    let token = token(&session);
    let mut cursor = String::new();
    let mut delays = Vec::new();
    for round in 0..5 {
        // The poll waits on the second replica; the message goes in through the first.
        let poll = {
            let (http, other, token, cursor) =
                (p.http.clone(), other.clone(), token.clone(), cursor.clone());
            tokio::spawn(async move {
                let mut entries = Vec::new();
                let mut cursor = cursor;
                while entries.len() < 2 {
                    let r = http
                        .get(format!("{other}/widget/v1/messages"))
                        .query(&[("after", cursor.as_str()), ("wait", "20")])
                        .bearer_auth(&token)
                        .send()
                        .await
                        .expect("poll");
                    let answered = chrono::Utc::now();
                    assert_eq!(r.status(), StatusCode::OK);
                    let page: Value = r.json().await.expect("page");
                    cursor = page["cursor"].as_str().expect("cursor").to_owned();
                    for e in page["messages"].as_array().expect("messages") {
                        entries.push((e.clone(), answered));
                    }
                }
                (entries, cursor)
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _) = p
            .session_send(
                &p.base,
                "widget",
                &token,
                json!({ "text": format!("round {round}") }),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let (entries, next) = tokio::time::timeout(WAIT, poll)
            .await
            .expect("the poll on the other replica answered")
            .expect("poll task");
        cursor = next;
        let (reply, answered) = &entries[1];
        assert_eq!(reply["role"], "assistant");
        let stored: chrono::DateTime<chrono::Utc> = reply["created_at"]
            .as_str()
            .expect("created_at")
            .parse()
            .expect("time");
        delays.push((*answered - stored).num_milliseconds());
    }
    delays.sort_unstable();
    println!("reply stored → poll on the other replica answered: {delays:?} ms");
    assert!(
        delays[delays.len() / 2] < 100,
        "median wake-up across replicas {} ms",
        delays[delays.len() / 2]
    );
    p.stop().await;
}

#[tokio::test]
async fn polls_that_disconnect_never_lose_or_repeat_a_reply() {
    let p = Platform::start().await;
    let tenant = p.widget_tenant("shop", SITE).await;
    let (_, session) = p
        .widget_session(&p.base, SITE, json!({ "client": tenant.slug }))
        .await;
    let token = token(&session);
    let mut cursor = String::new();
    let mut received: Vec<Value> = Vec::new();
    let mut cut = 0;
    // A fixed pseudo-random sequence of client patience: reproducible, and varied.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..20 {
        let deadline = Instant::now() + WAIT;
        let mut sent = false;
        // Poll, hanging up on polls after a random patience: some while waiting, some
        // just as the reply lands. Only an answered poll moves the cursor.
        while received.iter().filter(|e| e["role"] == "assistant").count() <= i {
            assert!(Instant::now() < deadline, "reply {i} never arrived");
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let patience = Duration::from_millis(5 + seed % 115);
            let poll = p
                .http
                .get(format!("{}/widget/v1/messages", p.base))
                .query(&[("after", cursor.as_str()), ("wait", "5")])
                .bearer_auth(&token)
                .timeout(patience)
                .send();
            let poll = tokio::spawn(async move {
                match poll.await {
                    Ok(r) if r.status() == StatusCode::OK => Some(r.json::<Value>().await.ok()),
                    Ok(r) => {
                        let status = r.status();
                        assert!(
                            [StatusCode::NO_CONTENT, StatusCode::CONFLICT].contains(&status),
                            "poll answered {status}"
                        );
                        Some(None)
                    }
                    Err(_) => None,
                }
            });
            if !sent {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let (status, _) = p
                    .session_send(
                        &p.base,
                        "widget",
                        &token,
                        json!({ "text": format!("message {i}") }),
                    )
                    .await;
                assert_eq!(status, StatusCode::ACCEPTED);
                sent = true;
            }
            match poll.await.expect("poll task") {
                Some(Some(page)) => {
                    cursor = page["cursor"].as_str().expect("cursor").to_owned();
                    received.extend(page["messages"].as_array().expect("messages").clone());
                }
                Some(None) => {}
                None => cut += 1, // hung up (maybe mid-answer): the cursor stays
            }
        }
    }
    let ids: HashSet<&str> = received
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), received.len(), "an entry arrived twice");
    let expected: Vec<(String, String)> = (0..20)
        .flat_map(|i| {
            [
                ("user".to_owned(), format!("message {i}")),
                ("assistant".to_owned(), format!("You said: message {i}")),
            ]
        })
        .collect();
    assert_eq!(texts(&received), expected);
    assert!(cut > 0, "no poll was cut off; the test proved nothing");
    p.stop().await;
}

/// Resident memory of this process (ingress, worker and the test), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn two_thousand_idle_polls_are_cheap_and_answer_on_time() {
    // Two thousand sessions from one address in a few seconds: past the edge's limits.
    let p = Platform::start_with(
        &[
            ("CHATFLEET__EDGE__SESSIONS_PER_IP_PER_MINUTE", "1000000"),
            ("CHATFLEET__PLANS__STARTER__SESSIONS_PER_MINUTE", "1000000"),
        ],
        1,
    )
    .await;
    let tenant = p.widget_tenant("shop", SITE).await;
    let polls = 2_000;
    let mut tokens = Vec::with_capacity(polls);
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut opening = Vec::new();
    for _ in 0..polls {
        let (http, base, slug, limit) = (
            p.http.clone(),
            p.base.clone(),
            tenant.slug.clone(),
            limit.clone(),
        );
        opening.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.expect("permit");
            let r = http
                .post(format!("{base}/widget/v1/sessions"))
                .header("origin", SITE)
                .json(&json!({ "client": slug }))
                .send()
                .await
                .expect("session");
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<Value>().await.expect("session body")["token"]
                .as_str()
                .expect("token")
                .to_owned()
        }));
    }
    for o in opening {
        tokens.push(o.await.expect("session task"));
    }
    let before = rss_kib();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(polls)
        .build()
        .expect("client");
    // Visitors' polls arrive over a second, not in one instant (a burst of 2,000 TCP
    // handshakes would only measure the listen backlog).
    let started = Instant::now();
    let mut waiting = Vec::with_capacity(polls);
    for (i, token) in tokens.into_iter().enumerate() {
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (http, base) = (http.clone(), p.base.clone());
        waiting.push(tokio::spawn(async move {
            let asked = Instant::now();
            let status = http
                .get(format!("{base}/widget/v1/messages?wait=5"))
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status());
            (status, asked.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = rss_kib();
    let mut answers = Vec::with_capacity(polls);
    for w in waiting {
        let (status, took) = w.await.expect("poll task");
        answers.push((status.expect("poll answered"), took));
    }
    let mut durations: Vec<Duration> = answers.iter().map(|(_, d)| *d).collect();
    durations.sort();
    println!(
        "{polls} idle polls: RSS {} MiB before, {} MiB while waiting (+{} KiB/poll, client side included); \
         each answered after p50 {:?}, max {:?}; all within {:?}",
        before / 1024,
        during / 1024,
        during.saturating_sub(before) / polls as u64,
        durations[polls / 2],
        durations[polls - 1],
        started.elapsed(),
    );
    assert!(
        answers.iter().all(|(s, _)| *s == StatusCode::NO_CONTENT),
        "not all 204"
    );
    // A 5 s poll answers after 5 s, give or take what a loaded two-core machine adds.
    assert!(
        durations[0] >= Duration::from_secs(5) && durations[polls - 1] < Duration::from_secs(5 + 5),
        "polls of 5 s answered after {:?} to {:?}",
        durations[0],
        durations[polls - 1]
    );
    // Bounded: both ends of each waiting poll (client and server connection, tasks,
    // buffers) live in this process; together they stay under 128 KiB a poll.
    assert!(
        during.saturating_sub(before) < 128 * polls as u64,
        "RSS grew by {} MiB for {polls} polls",
        (during - before) / 1024
    );
    p.stop().await;
}
