//! The admin routes the operator console stands on, without a browser: its files and
//! their policy, `whoami`, the conversation listing's order, filters and cursor, the
//! handoff inbox, a conversation's page that waits for what changes, and the refusals of
//! bad input. The page itself is driven in Chromium in `console.rs`.

use reqwest::StatusCode;
use serde_json::json;
use shared::db::Scope;

use crate::support::{Method, Platform, WAIT};

/// The files and their policy, `whoami`, listings, the inbox, a page woken by an
/// agent's message and by a user's while a human answers, and the refusals of bad input.
#[tokio::test]
async fn the_console_is_served_with_its_policy_and_its_routes_check_their_input() {
    let p = Platform::start().await;
    let code = |v: &serde_json::Value| v["error"]["code"].as_str().unwrap_or("").to_owned();

    let page = p
        .http
        .get(format!("{}/console/", p.base))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .expect("policy")
        .to_owned();
    assert!(
        policy.contains("script-src 'self'") && !policy.contains("unsafe"),
        "{policy}"
    );
    assert!(
        page.text()
            .await
            .expect("html")
            .contains("/console/console.js")
    );
    for (asset, kind) in [
        ("console.css", "text/css"),
        ("console.js", "text/javascript"),
        ("api.js", "text/javascript"),
        ("dom.js", "text/javascript"),
        ("tenant.js", "text/javascript"),
        ("conversations.js", "text/javascript"),
        ("replay.js", "text/javascript"),
    ] {
        let r = p
            .http
            .get(format!("{}/console/{asset}", p.base))
            .send()
            .await
            .expect("asset");
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .expect("type")
                .starts_with(kind)
        );
    }
    let missing = p
        .http
        .get(format!("{}/console/secrets.txt", p.base))
        .send()
        .await
        .expect("missing");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let (s, me) = p.admin(Method::GET, "/admin/v1/whoami", None).await;
    assert_eq!(
        (s, me.clone()),
        (
            StatusCode::OK,
            json!({ "name": "bootstrap", "scope": "write" })
        )
    );
    let viewer = p
        .env
        .db
        .operators()
        .create("viewer", Scope::Read)
        .await
        .expect("read operator");
    let (_, me) = p
        .admin_as(viewer.expose(), Method::GET, "/admin/v1/whoami", None)
        .await;
    assert_eq!(me["scope"], "read");
    let (s, _) = p
        .admin_as("not-a-token-at-all", Method::GET, "/admin/v1/whoami", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Two conversations; newest first, one page at a time, by mode.
    let t = p.tenant("listing").await;
    p.ask(&t.api_key, "first", "hello", "0").await;
    p.ask(&t.api_key, "second", "hello", "0").await;
    let list = format!("/admin/v1/clients/{}/conversations", t.slug);
    let (_, page) = p
        .admin(Method::GET, &format!("{list}?order=newest&limit=1"), None)
        .await;
    assert_eq!(page["conversations"][0]["external_id"], "second", "{page}");
    let before = page["next_before"].as_u64().expect("next_before");
    let (_, page) = p
        .admin(
            Method::GET,
            &format!("{list}?order=newest&limit=1&before={before}"),
            None,
        )
        .await;
    assert_eq!(page["conversations"][0]["external_id"], "first", "{page}");
    let first = page["conversations"][0]["id"].as_u64().expect("id");
    for (query, names) in [
        ("order=sideways", "order"),
        ("mode=robot", "mode"),
        ("channel=fax", "channel"),
        ("before=3", "before"),
    ] {
        let (s, body) = p.admin(Method::GET, &format!("{list}?{query}"), None).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(names),
            "{body}"
        );
    }

    // Handed to a human: in the tenant's human listing and in the inbox, where an
    // operator's page waiting on the (empty) list it shows is woken by it.
    let (_, empty) = p.admin(Method::GET, "/admin/v1/handoffs", None).await;
    assert_eq!(empty["conversations"], json!([]), "{empty}");
    let version = empty["version"].as_str().expect("version").to_owned();
    let inbox_waiting = waiting_get(&p, format!("/admin/v1/handoffs?wait=25&seen={version}"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let conversation = format!("{list}/{first}");
    let (s, _) = p
        .admin(Method::POST, &format!("{conversation}/handoff"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (took, woken) = inbox_waiting.await.expect("inbox task");
    assert_eq!(
        woken["conversations"][0]["conversation"]["id"], first,
        "{woken}"
    );
    assert!(
        took < WAIT,
        "answered only after its wait ({took:?}): not woken"
    );
    assert_ne!(woken["version"], version);
    let (_, human) = p
        .admin(
            Method::GET,
            &format!("{list}?order=newest&mode=human"),
            None,
        )
        .await;
    assert_eq!(
        human["conversations"].as_array().map(Vec::len),
        Some(1),
        "{human}"
    );
    let (_, inbox) = p.admin(Method::GET, "/admin/v1/handoffs", None).await;
    assert_eq!(
        inbox["conversations"][0]["client_slug"], "listing",
        "{inbox}"
    );
    assert_eq!(inbox["conversations"][0]["conversation"]["id"], first);
    assert!(inbox["conversations"][0]["waiting_since"].is_string());
    let (s, _) = p
        .admin(Method::GET, "/admin/v1/handoffs?limit=0", None)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    // A page waiting for what comes after the last message is woken by an agent's.
    let (_, shown) = p.admin(Method::GET, &conversation, None).await;
    let last = last_seq(&shown);
    let waiting = follow(&p, &conversation, last);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (s, _) = p
        .admin(
            Method::POST,
            &format!("{conversation}/messages"),
            Some(json!({ "text": "An agent here." })),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (took, woken) = waiting.await.expect("live task");
    assert!(
        contents(&woken, "agent").contains(&"An agent here."),
        "{woken}"
    );
    assert!(
        took < WAIT,
        "answered only after its wait ({took:?}): not woken"
    );

    // And by the user's next message, which no reply follows while a human answers.
    let last = last_seq(&woken);
    let waiting = follow(&p, &conversation, last);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, body) = p.send(&t.api_key, "first", "Still there?", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (took, woken) = waiting.await.expect("live task");
    assert!(
        contents(&woken, "user").contains(&"Still there?"),
        "{woken}"
    );
    assert!(
        took < WAIT,
        "answered only after its wait ({took:?}): not woken"
    );
    let (s, body) = p
        .admin(
            Method::GET,
            &format!("{conversation}?wait=26&after_seq=1"),
            None,
        )
        .await;
    assert_eq!(
        (s, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed".into())
    );

    // A user asking for a human (the tenant's phrase) wakes the inbox too: the worker
    // hands the conversation over.
    let (s, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", t.slug),
            Some(json!({ "human_handoff_phrase": "a real person" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, before) = p.admin(Method::GET, "/admin/v1/handoffs", None).await;
    let version = before["version"].as_str().expect("version").to_owned();
    let inbox_waiting = waiting_get(&p, format!("/admin/v1/handoffs?wait=25&seen={version}"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, body) = p
        .send(&t.api_key, "second", "I want a real person", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (took, woken) = inbox_waiting.await.expect("inbox task");
    let listed: Vec<&str> = woken["conversations"]
        .as_array()
        .expect("conversations")
        .iter()
        .filter_map(|c| c["conversation"]["external_id"].as_str())
        .collect();
    assert_eq!(listed, ["first", "second"], "{woken}");
    assert!(
        took < WAIT,
        "answered only after its wait ({took:?}): not woken"
    );

    // Replays: bad ranges and limits are refused; a read operator may not run one.
    let replays = format!("/admin/v1/clients/{}/replays", t.slug);
    for body in [
        json!({ "from": "2026-12-06T10:00:00Z", "to": "2026-12-06T09:00:00Z" }),
        json!({ "from": "2026-12-06T10:00:00Z", "limit": 0 }),
        json!({ "from": "2026-12-06T10:00:00Z", "channel": "fax" }),
        json!({ "from": "yesterday" }),
        json!({ "from": "2026-12-06T10:00:00Z", "mode": "live" }),
    ] {
        let (s, answer) = p.admin(Method::POST, &replays, Some(body.clone())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
    }
    let (s, answer) = p
        .admin_as(
            viewer.expose(),
            Method::POST,
            &replays,
            Some(json!({ "from": "2026-12-06T10:00:00Z" })),
        )
        .await;
    assert_eq!(
        (s, code(&answer)),
        (StatusCode::FORBIDDEN, "insufficient_scope".into())
    );
    p.stop().await;
}

/// A conversation's page asked to wait (25 s at most) for what follows `after_seq`: how
/// long it took, and what it answered.
fn follow(
    p: &Platform,
    conversation: &str,
    after_seq: u64,
) -> tokio::task::JoinHandle<(std::time::Duration, serde_json::Value)> {
    follow_for(p, conversation, after_seq, 25)
}

fn follow_for(
    p: &Platform,
    conversation: &str,
    after_seq: u64,
    wait_s: u64,
) -> tokio::task::JoinHandle<(std::time::Duration, serde_json::Value)> {
    waiting_get(
        p,
        format!("{conversation}?wait={wait_s}&after_seq={after_seq}"),
    )
}

/// An admin GET of `path` (one that waits) in the background: how long it took, and
/// what it answered.
fn waiting_get(
    p: &Platform,
    path: String,
) -> tokio::task::JoinHandle<(std::time::Duration, serde_json::Value)> {
    let (http, url, token) = (
        p.http.clone(),
        format!("{}{path}", p.base),
        p.env.settings.admin.token.expose().to_owned(),
    );
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r = http.get(url).bearer_auth(token).send().await.expect("live");
        let body: serde_json::Value = r.json().await.expect("json");
        (started.elapsed(), body)
    })
}

/// A conversation's page whose wait ran out shows what changed meanwhile unannounced (here
/// a user's message no turn has taken up: no worker runs), not what it read before.
#[tokio::test]
async fn a_conversation_page_that_waited_in_vain_is_read_anew() {
    let p = Platform::start_with(&[], 0).await;
    let t = p.tenant("unanswered").await;
    let (status, body) = p.send(&t.api_key, "quiet", "first", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let conversation = p.conversation(t.id, "quiet").await;
    let path = format!(
        "/admin/v1/clients/{}/conversations/{}",
        t.slug,
        conversation.get()
    );
    let waiting = follow_for(&p, &path, 1, 2);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, body) = p.send(&t.api_key, "quiet", "second", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, shown) = waiting.await.expect("live task");
    assert_eq!(contents(&shown, "user"), ["first", "second"], "{shown}");
    p.stop().await;
}

/// The highest mailbox position of a conversation's page.
fn last_seq(page: &serde_json::Value) -> u64 {
    messages(page)
        .filter_map(|m| m["seq"].as_u64())
        .max()
        .expect("a seq")
}

/// The texts of a conversation page's messages by `role`, oldest first.
fn contents<'a>(page: &'a serde_json::Value, role: &str) -> Vec<&'a str> {
    messages(page)
        .filter(|m| m["role"] == role)
        .filter_map(|m| m["content"].as_str())
        .collect()
}

fn messages(page: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    page["messages"].as_array().expect("messages").iter()
}

/// A WhatsApp conversation's page waits on the same wake-up as the mailbox channels':
/// the bot's reply wakes it (the worker announces WhatsApp replies too).
#[tokio::test]
async fn a_whatsapp_conversations_page_is_woken_by_the_bots_reply() {
    use crate::whatsapp::{change, graph_platform, message, signed_post, webhook};
    let (graph, p, t) = graph_platform("wa-console", "557", &[]).await;
    let user = "15550004444";
    let first = webhook(vec![change(
        "557",
        vec![message("wamid.c1", user, "hello")],
    )]);
    assert_eq!(signed_post(&p, first).await, StatusCode::OK);
    shared::testkit::eventually(WAIT, "the first reply", || async {
        (!graph.sent_to(user).is_empty()).then_some(())
    })
    .await;
    let conversation = p
        .conversation_on(t.id, shared::ids::Channel::Whatsapp, user)
        .await;
    let path = format!(
        "/admin/v1/clients/{}/conversations/{}",
        t.slug,
        conversation.get()
    );
    let (_, shown) = p.admin(Method::GET, &path, None).await;
    let waiting = follow(&p, &path, last_seq(&shown));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let again = webhook(vec![change(
        "557",
        vec![message("wamid.c2", user, "again")],
    )]);
    assert_eq!(signed_post(&p, again).await, StatusCode::OK);
    let (took, woken) = waiting.await.expect("live task");
    assert!(
        contents(&woken, "assistant")
            .iter()
            .any(|text| text.ends_with("You said: again")),
        "{woken}"
    );
    assert!(
        took < WAIT,
        "answered only after its wait ({took:?}): not woken"
    );
    p.stop().await;
}
