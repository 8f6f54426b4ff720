//! Streaming replies over SSE: typing, the answer's deltas while the model writes it
//! (LLM double streaming a word at a time), then the stored message, on whichever
//! replica holds the stream; reconnection with `Last-Event-ID`; a handoff during a
//! streamed turn; two tenants streaming at once.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Method, Platform, WAIT};

/// One server-sent event.
#[derive(Debug, Clone, Default)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

/// A reader of an SSE response.
struct SseClient {
    body: futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buffer: String,
}

impl SseClient {
    async fn open(request: reqwest::RequestBuilder) -> Self {
        let response = request.send().await.expect("stream request");
        assert_eq!(response.status(), StatusCode::OK, "stream refused");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped), within [`WAIT`].
    async fn next(&mut self) -> Sse {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut sse = Sse::default();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            sse.event = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("id:") {
                            sse.id = Some(v.trim().to_owned());
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        }
                    }
                    if sse.event.is_empty() && data.is_empty() {
                        continue; // a keep-alive comment
                    }
                    sse.data = serde_json::from_str(&data).unwrap_or(Value::Null);
                    return sse;
                }
                let chunk = self
                    .body
                    .next()
                    .await
                    .expect("the stream ended")
                    .expect("stream body");
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .expect("an event within the deadline")
    }

    /// Events until (and with) the first `message` whose role is `role`.
    async fn until_message(&mut self, role: &str) -> Vec<Sse> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            let done = event.event == "message" && event.data["role"] == role;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

fn api_stream(p: &Platform, base: &str, key: &str, conversation: &str) -> reqwest::RequestBuilder {
    p.http
        .get(format!("{base}/api/v1/conversations/{conversation}/stream"))
        .bearer_auth(key)
}

/// A platform whose provider streams, a word every 40 ms.
async fn streaming_platform() -> Platform {
    let p = Platform::start_with(&[("CHATFLEET__LLM__PROVIDERS__OLLAMA__STREAM", "true")], 1).await;
    p.sim.set_word_delay(Duration::from_millis(40));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_streams_as_deltas_then_arrives_stored_on_another_replica() {
    let p = streaming_platform().await;
    let other = p.another_ingress().await;
    let tenant = p.tenant("streamed").await;
    // The conversation exists once its first message is accepted.
    let (_, first_cursor) = p.ask(&tenant.api_key, "c1", "hello", "").await;

    let mut stream = SseClient::open(
        api_stream(&p, &other, &tenant.api_key, "c1").query(&[("after", first_cursor.as_str())]),
    )
    .await;
    let (status, sent) = p
        .send(
            &tenant.api_key,
            "c1",
            "tell me about your opening hours please",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    let events = stream.until_message("assistant").await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert!(names.contains(&"typing"), "{names:?}");
    let deltas: Vec<&Sse> = events.iter().filter(|e| e.event == "delta").collect();
    assert!(
        deltas.len() >= 2,
        "at least two deltas before the stored reply: {names:?}"
    );
    let reply = events.last().expect("the stored reply");
    let joined: String = deltas
        .iter()
        .map(|d| d.data["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        joined,
        reply.data["text"].as_str().expect("text"),
        "deltas joined = stored text"
    );
    for (i, d) in deltas.iter().enumerate() {
        assert_eq!(d.data["seq"], i + 1);
        assert_eq!(
            d.data["reply_id"], reply.data["id"],
            "deltas carry the stored reply's id"
        );
    }
    let user = events
        .iter()
        .find(|e| e.event == "message" && e.data["role"] == "user")
        .expect("the user's message");
    assert_eq!(user.data["id"], sent["message_id"]);
    assert!(
        reply.id.as_deref().unwrap_or("").parse::<u64>().is_ok(),
        "a message's event id is its cursor: {reply:?}"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_client_that_reconnects_with_last_event_id_gets_every_later_message_once() {
    let p = Platform::start().await;
    let tenant = p.tenant("resume").await;
    let (_, cursor) = p.ask(&tenant.api_key, "c1", "one", "").await;
    let mut first = SseClient::open(api_stream(&p, &p.base, &tenant.api_key, "c1")).await;
    let before = first.until_message("assistant").await;
    let last_id = before
        .last()
        .and_then(|e| e.id.clone())
        .expect("an event id");
    assert_eq!(last_id, cursor);
    drop(first); // cut off

    // Two more exchanges while the client is away.
    let (_, c2) = p.ask(&tenant.api_key, "c1", "two", &cursor).await;
    p.ask(&tenant.api_key, "c1", "three", &c2).await;
    let mut again = SseClient::open(
        api_stream(&p, &p.base, &tenant.api_key, "c1")
            .header("last-event-id", &last_id)
            .query(&[("after", "0")]),
    )
    .await;
    let mut texts = Vec::new();
    while texts.len() < 4 {
        let event = again.next().await;
        if event.event == "message" {
            texts.push(event.data["text"].as_str().unwrap_or("").to_owned());
        }
    }
    assert_eq!(texts[0], "two");
    assert!(texts[1].ends_with("You said: two"), "{texts:?}");
    assert_eq!(texts[2], "three");
    assert!(texts[3].ends_with("You said: three"), "{texts:?}");

    // Bad input: a malformed cursor, another tenant's conversation.
    let bad = api_stream(&p, &p.base, &tenant.api_key, "c1")
        .query(&[("after", "x")])
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: Value = bad.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_cursor");
    let stranger = p.tenant("stranger").await;
    let foreign = api_stream(&p, &p.base, &stranger.api_key, "c1")
        .send()
        .await
        .expect("sent");
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_during_a_streamed_turn_discards_its_deltas() {
    let p = streaming_platform().await;
    p.sim.set_word_delay(Duration::from_millis(150));
    let tenant = p.tenant("handed").await;
    let (_, cursor) = p.ask(&tenant.api_key, "c1", "hello", "").await;
    let mut stream = SseClient::open(
        api_stream(&p, &p.base, &tenant.api_key, "c1").query(&[("after", cursor.as_str())]),
    )
    .await;
    p.send(
        &tenant.api_key,
        "c1",
        "a question that takes a while to answer",
        None,
    )
    .await;
    // The first delta: the turn is writing. A human takes over now.
    loop {
        if stream.next().await.event == "delta" {
            break;
        }
    }
    let conversation = p.conversation(tenant.id, "c1").await;
    let (status, body) = p
        .admin(
            Method::POST,
            &format!(
                "/admin/v1/clients/{}/conversations/{}/handoff",
                tenant.id,
                conversation.get()
            ),
            None,
        )
        .await;
    assert!(status.is_success(), "{body}");
    let mut after_handoff = Vec::new();
    loop {
        let event = stream.next().await;
        let done = event.event == "discard";
        after_handoff.push(event);
        if done {
            break;
        }
    }
    assert!(
        !after_handoff
            .iter()
            .any(|e| e.event == "message" && e.data["role"] == "assistant"),
        "no bot message after the handoff: {after_handoff:?}"
    );
    let stored = p.stored(tenant.id, conversation).await;
    assert_eq!(
        stored
            .iter()
            .filter(|m| m.role == shared::db::Role::Assistant)
            .count(),
        1,
        "only the first exchange's reply is stored"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_streaming_at_once_see_only_their_own() {
    let p = streaming_platform().await;
    let a = p.tenant("tenant-a").await;
    let b = p.tenant("tenant-b").await;
    let (_, ca) = p.ask(&a.api_key, "same-id", "hi a", "").await;
    let (_, cb) = p.ask(&b.api_key, "same-id", "hi b", "").await;
    let mut sa = SseClient::open(
        api_stream(&p, &p.base, &a.api_key, "same-id").query(&[("after", ca.as_str())]),
    )
    .await;
    let mut sb = SseClient::open(
        api_stream(&p, &p.base, &b.api_key, "same-id").query(&[("after", cb.as_str())]),
    )
    .await;
    p.send(&a.api_key, "same-id", "ALPHA question", None).await;
    p.send(&b.api_key, "same-id", "BRAVO question", None).await;
    let (ea, eb) = tokio::join!(sa.until_message("assistant"), sb.until_message("assistant"));
    for (events, mine, theirs) in [(&ea, "ALPHA", "BRAVO"), (&eb, "BRAVO", "ALPHA")] {
        let all = format!("{events:?}");
        assert!(all.contains(mine), "{all}");
        assert!(
            !all.contains(theirs),
            "another tenant's text reached this stream: {all}"
        );
        let deltas: String = events
            .iter()
            .filter(|e| e.event == "delta")
            .map(|e| e.data["text"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            deltas,
            events.last().expect("reply").data["text"]
                .as_str()
                .unwrap_or("")
        );
    }
    p.stop().await;
}

/// The widget's stream takes its token in the query (EventSource sets no headers); the
/// mobile stream the header; a newer stream of the session supersedes the older.
#[tokio::test]
async fn widget_and_mobile_sessions_stream_their_conversation() {
    let origin = "https://stream.example";
    let p = Platform::start().await;
    let tenant = p.widget_tenant("widget-stream", origin).await;
    let (_, session) = p
        .widget_session(&p.base, origin, json!({ "client": tenant.slug }))
        .await;
    let token = session["token"].as_str().expect("token");
    let open = || {
        p.http
            .get(format!("{}/widget/v1/stream", p.base))
            .header("origin", origin)
            .query(&[("token", token)])
    };
    let mut first = SseClient::open(open()).await;
    let (status, _) = p
        .session_send(
            &p.base,
            "widget",
            token,
            json!({ "text": "from the widget" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let events = first.until_message("assistant").await;
    let cursor = events.last().and_then(|e| e.id.clone()).expect("cursor");
    assert!(
        cursor.contains('.'),
        "a session cursor carries its MAC: {cursor}"
    );

    // A newer stream of the same session takes over.
    let _second = SseClient::open(open().query(&[("after", cursor.as_str())])).await;
    let ended = first.next().await;
    assert_eq!(ended.event, "error");
    assert_eq!(ended.data["error"]["code"], "stream_superseded");

    // Without a token: 401; another conversation's cursor: 404.
    let refused = p
        .http
        .get(format!("{}/widget/v1/stream", p.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let (_, other) = p
        .widget_session(&p.base, origin, json!({ "client": tenant.slug }))
        .await;
    let foreign = p
        .http
        .get(format!("{}/widget/v1/stream", p.base))
        .query(&[
            ("token", other["token"].as_str().expect("token")),
            ("after", cursor.as_str()),
        ])
        .send()
        .await
        .expect("sent");
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    p.stop().await;
}

/// A stream over `http.max_long_polls` is refused at once (503 `overloaded`); a session
/// revoked while its stream is open ends it with an `error` event carrying the code.
#[tokio::test]
async fn streams_are_bounded_and_end_with_their_sessions() {
    let origin = "https://bounded.example";
    let p = Platform::start_with(&[("CHATFLEET__HTTP__MAX_LONG_POLLS", "1")], 1).await;
    let tenant = p.widget_tenant("bounded", origin).await;
    let (_, session) = p
        .widget_session(&p.base, origin, json!({ "client": tenant.slug }))
        .await;
    let token = session["token"].as_str().expect("token");
    let mut open = SseClient::open(
        p.http
            .get(format!("{}/widget/v1/stream", p.base))
            .query(&[("token", token)]),
    )
    .await;

    let over = p
        .http
        .get(format!("{}/mobile/v1/stream", p.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    assert_eq!(
        over.status(),
        StatusCode::UNAUTHORIZED,
        "a widget token is no mobile token"
    );
    let (_, second) = p
        .widget_session(&p.base, origin, json!({ "client": tenant.slug }))
        .await;
    let over = p
        .http
        .get(format!("{}/widget/v1/stream", p.base))
        .query(&[("token", second["token"].as_str().expect("token"))])
        .send()
        .await
        .expect("sent");
    assert_eq!(over.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = over.json().await.expect("json");
    assert_eq!(body["error"]["code"], "overloaded");

    let (status, _) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{}/sessions/revoke", tenant.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let ended = open.next().await;
    assert_eq!(ended.event, "error");
    assert_eq!(ended.data["error"]["code"], "session_revoked");
    p.stop().await;
}
