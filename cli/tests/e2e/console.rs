//! The operator console in a real browser ([`crate::chromium`]) against a live fleet: an
//! operator signs in, creates a tenant, gives it a persona and an API key; a user writes
//! through the API and the reply appears live; the user asks for a human, an agent
//! answers from the handoff inbox (the user's API client gets it), sees another agent's
//! message at once, hands back, and the bot answers with the new persona. Message text
//! with markup is shown as text; a read-scope operator's save is refused in the page; a
//! revoked token returns to sign-in; a dry-run replay shows old and new replies side by
//! side. Screenshots of each view go to `$CHATFLEET_ARTIFACTS_DIR`.

use serde_json::json;
use shared::db::Scope;
use shared::testkit::eventually;

use crate::chromium::Browser;
use crate::support::{Method, Platform, WAIT};

/// The text of the first element matching `css`, once it satisfies `ok`.
async fn text_when(browser: &Browser, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    eventually(WAIT, what, || async {
        let text = browser.texts(css).await.into_iter().next()?;
        ok(&text).then_some(text)
    })
    .await
}

async fn sign_in(browser: &Browser, token: &str) {
    browser.fill("#token", token).await;
    browser.click("#signin button[type=submit]").await;
    browser.wait_for("#operator").await;
}

#[tokio::test]
async fn operators_run_a_tenant_and_answer_a_handoff_in_chromium() {
    let p = Platform::start().await;
    let browser = Browser::start().await;
    // Tall enough for a whole conversation in the screenshots.
    browser
        .call(
            Method::POST,
            "/window/rect",
            Some(json!({ "width": 1200, "height": 1000 })),
        )
        .await;
    browser.open(&format!("{}/console/", p.base)).await;

    // Sign in; create a tenant.
    sign_in(&browser, p.env.settings.admin.token.expose()).await;
    browser.fill("#new-slug", "console-shop").await;
    browser.fill("#new-name", "Console Shop").await;
    browser.click("#new-tenant button[type=submit]").await;

    // Its persona and handoff phrase, saved from the configuration form.
    browser.fill("#f-persona_name", "Nia").await;
    browser
        .fill("#f-human_handoff_phrase", "talk to a human")
        .await;
    browser.click("#config-save").await;
    text_when(
        &browser,
        "#config-result .okbox",
        "the save confirmed",
        |t| t.contains("config version"),
    )
    .await;
    let (_, config) = p
        .admin(Method::GET, "/admin/v1/clients/console-shop/config", None)
        .await;
    assert_eq!(config["persona_name"], "Nia", "{config}");
    assert_eq!(config["human_handoff_phrase"], "talk to a human");
    browser.execute("window.scrollTo(0, 0)").await;
    browser.screenshot("console-tenant.png").await;

    // The API's validation message beside its field.
    browser.fill("#f-llm_temperature", "7").await;
    browser.click("#config-save").await;
    let beside = text_when(&browser, "#err-llm_temperature", "the field's error", |t| {
        !t.is_empty()
    })
    .await;
    assert!(beside.contains("between 0 and 2"), "{beside}");
    browser.fill("#f-llm_temperature", "0.3").await;

    // An API key, shown once.
    browser
        .open(&format!("{}/console/#/tenants/console-shop/keys", p.base))
        .await;
    browser.fill("#key-name", "storefront").await;
    browser.click("#key-create").await;
    let key = text_when(&browser, "#new-key", "the new key", |t| !t.is_empty()).await;

    // A user writes through the API; markup in the text stays text.
    let markup = "Hi <script>window.pwned = 1</script><b>there</b>";
    let (status, body) = p.send(&key, "visitor-1", markup, None).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    let (first, cursor) = p.read_until(&key, "visitor-1", "", 2).await;
    assert!(
        first[1]["text"]
            .as_str()
            .unwrap_or("")
            .contains("You are Nia"),
        "{first:?}"
    );
    let conversation = p
        .conversation(
            shared::ids::ClientId::new(config_client(&p).await),
            "visitor-1",
        )
        .await;
    browser
        .open(&format!(
            "{}/console/#/tenants/console-shop/conversations/{}",
            p.base,
            conversation.get()
        ))
        .await;
    let shown = text_when(
        &browser,
        "#messages .msg.user .text",
        "the user's message",
        |t| !t.is_empty(),
    )
    .await;
    assert_eq!(shown, markup);
    let injected = browser
        .execute("return [window.pwned === undefined, document.querySelectorAll('#messages script, #messages b').length]")
        .await;
    assert_eq!(injected, json!([true, 0]), "markup was interpreted");

    // The next reply appears without reloading the page.
    let (status, _) = p.send(&key, "visitor-1", "What do you sell?", None).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    browser.texts_when("#messages .msg.assistant", 2).await;

    // The user asks for a human: the page shows the handoff, the inbox lists it.
    let (status, _) = p
        .send(&key, "visitor-1", "Please, talk to a human", None)
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    text_when(&browser, "#conversation-mode", "the handoff shown", |t| {
        t == "a human answers"
    })
    .await;
    browser.open(&format!("{}/console/#/inbox", p.base)).await;
    let row = format!("#inbox tr[data-id='{}']", conversation.get());
    browser.wait_for(&row).await;
    browser.screenshot("console-inbox.png").await;
    browser.click(&format!("{row} a")).await;

    // The agent answers from the page; the user's API client gets it.
    browser
        .fill("#agent-text", "Hello, this is Sam from the shop.")
        .await;
    browser.click("#agent-send").await;
    let (entries, cursor) = p.read_until(&key, "visitor-1", &cursor, 5).await;
    let agent = entries.last().expect("entries");
    assert_eq!(agent["role"], "agent", "{entries:?}");
    assert_eq!(agent["text"], "Hello, this is Sam from the shop.");

    // Another agent (through the API) writes too: this page shows it at once.
    let (status, body) = p
        .admin(
            Method::POST,
            &format!(
                "/admin/v1/clients/console-shop/conversations/{}/messages",
                conversation.get()
            ),
            Some(json!({ "text": "Sam, I'll take the refund part." })),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    let agents = browser.texts_when("#messages .msg.agent .text", 2).await;
    assert_eq!(agents[1], "Sam, I'll take the refund part.");
    browser.screenshot("console-conversation.png").await;

    // Handed back, the bot answers the next message with the new persona.
    browser.click("#mode-toggle").await;
    text_when(&browser, "#conversation-mode", "the bot back", |t| {
        t == "the bot answers"
    })
    .await;
    let (reply, _) = p
        .ask(
            &key,
            "visitor-1",
            "Thanks, bye",
            &cursor_after(&p, &key, &cursor).await,
        )
        .await;
    assert!(
        reply["text"].as_str().unwrap_or("").contains("You are Nia"),
        "{reply}"
    );

    // Its usage, charted per day.
    browser
        .open(&format!("{}/console/#/tenants/console-shop/usage", p.base))
        .await;
    let totals = text_when(&browser, "#tab-usage p.muted", "the usage totals", |t| {
        t.contains(" messages, ")
    })
    .await;
    // Four answered: three by the model, one by the handoff notice.
    assert!(totals.contains("Last 30 days: 4 messages, "), "{totals}");
    assert_eq!(browser.find_all("#tab-usage svg.chart").await.len(), 3);
    browser.screenshot("console-usage.png").await;

    // A dry-run replay of the tenant's messages: old and new replies side by side.
    browser.open(&format!("{}/console/#/replay", p.base)).await;
    browser.click("#replay-run").await;
    let summary = text_when(&browser, "#replay-summary", "the replay's summary", |t| {
        t.contains("replayed")
    })
    .await;
    assert!(summary.starts_with("4 replayed"), "{summary}");
    let sides = browser.texts_when(".replayed .side .after", 4).await;
    assert!(sides.iter().all(|s| s.contains("You are Nia")), "{sides:?}");
    browser.screenshot("console-replay.png").await;

    // A read-scope operator sees the configuration but its save is refused in the page.
    let reader = p
        .env
        .db
        .operators()
        .create("reader", Scope::Read)
        .await
        .expect("read operator");
    browser.click("#who button").await;
    sign_in(&browser, reader.expose()).await;
    text_when(&browser, "#who .badge", "the read-only badge", |t| {
        t == "read only"
    })
    .await;
    browser
        .open(&format!("{}/console/#/tenants/console-shop/config", p.base))
        .await;
    browser.fill("#f-persona_name", "Mallory").await;
    browser.click("#config-save").await;
    let refused = text_when(&browser, "#config-result .errbox", "the refusal", |t| {
        !t.is_empty()
    })
    .await;
    assert!(refused.contains("insufficient_scope"), "{refused}");
    let (_, config) = p
        .admin(Method::GET, "/admin/v1/clients/console-shop/config", None)
        .await;
    assert_eq!(config["persona_name"], "Nia");

    // Its token revoked, the next call returns to sign-in.
    p.env.db.operators().revoke("reader").await.expect("revoke");
    browser.open(&format!("{}/console/#/tenants", p.base)).await;
    let why = text_when(&browser, "#signin-error", "sign-in again", |t| {
        !t.is_empty()
    })
    .await;
    assert!(why.contains("sign in again"), "{why}");

    browser.call(Method::DELETE, "", None).await;
    drop(browser);
    p.stop().await;
}

/// The tenant's id (the console created it by slug).
async fn config_client(p: &Platform) -> u64 {
    let (_, client) = p
        .admin(Method::GET, "/admin/v1/clients/console-shop", None)
        .await;
    client["id"].as_u64().expect("client id")
}

/// The mailbox cursor after everything there is now (the agents' second message
/// included), read from `after`.
async fn cursor_after(p: &Platform, key: &str, after: &str) -> String {
    let (_, cursor) = p.read_until(key, "visitor-1", after, 1).await;
    cursor
}

/// What the page stands on, without a browser: its files and their policy, `whoami`,
/// the conversation listing's order, filters and cursor, the inbox, a conversation's
/// page woken by an agent's message, and the refusals of bad input.
#[tokio::test]
async fn the_console_is_served_with_its_policy_and_its_routes_check_their_input() {
    use reqwest::StatusCode;
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

    // Handed to a human: in the tenant's human listing and in the inbox.
    let conversation = format!("{list}/{first}");
    let (s, _) = p
        .admin(Method::POST, &format!("{conversation}/handoff"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
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

/// The tenant's page beyond its configuration: an agent mode added, then switched off;
/// a markdown document uploaded from a file and then deleted; an API key revoked.
#[tokio::test]
async fn a_tenants_modes_knowledge_and_keys_from_the_page_in_chromium() {
    shared::testkit::require_chroma();
    let p = Platform::start().await;
    let t = p.tenant("pages-shop").await;
    let browser = Browser::start().await;
    browser.open(&format!("{}/console/", p.base)).await;
    sign_in(&browser, p.env.settings.admin.token.expose()).await;
    let tab = |name: &str| format!("{}/console/#/tenants/{}/{name}", p.base, t.slug);

    // A mode, added and then switched off.
    browser.open(&tab("modes")).await;
    browser.fill("#new-mode-key", "returns").await;
    browser
        .fill("#new-mode-fragment", "Explain the 30-day returns policy.")
        .await;
    browser.click("#new-mode button[type=submit]").await;
    browser.wait_for(".mode[data-key='returns']").await;
    let returns = || async {
        let (_, modes) = p
            .admin(
                Method::GET,
                &format!("/admin/v1/clients/{}/modes", t.slug),
                None,
            )
            .await;
        modes
            .as_array()
            .expect("modes")
            .iter()
            .find(|m| m["module_key"] == "returns")
            .cloned()
            .unwrap_or_else(|| panic!("no mode returns: {modes}"))
    };
    assert_eq!(returns().await["is_active"], true);
    browser
        .click(".mode[data-key='returns'] input[type=checkbox]")
        .await;
    browser.click(".mode[data-key='returns'] button.save").await;
    text_when(
        &browser,
        ".mode[data-key='returns'] .okbox",
        "the mode saved",
        |t| t == "Saved.",
    )
    .await;
    assert_eq!(returns().await["is_active"], false);

    // A markdown file uploaded, listed with its chunks, then deleted.
    let dir = std::env::temp_dir().join(format!("cf-console-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("shipping.md");
    std::fs::write(
        &file,
        "# Shipping\n\nParcels leave within two days.\n\nReturns are free for 30 days.\n",
    )
    .expect("file");
    browser.open(&tab("knowledge")).await;
    let input = browser.wait_for("#knowledge-file").await;
    browser
        .call(
            Method::POST,
            &format!("/element/{input}/value"),
            Some(json!({ "text": file.display().to_string() })),
        )
        .await;
    browser.click("#knowledge-upload button[type=submit]").await;
    let row = text_when(
        &browser,
        "#knowledge tbody tr",
        "the document listed",
        |t| t.contains("shipping.md"),
    )
    .await;
    assert!(row.contains("shipping.md"), "{row}");
    let (_, docs) = p
        .admin(
            Method::GET,
            &format!("/admin/v1/clients/{}/knowledge", t.slug),
            None,
        )
        .await;
    assert_eq!(docs[0]["source"], "shipping.md", "{docs}");
    assert!(docs[0]["chunk_count"].as_u64().unwrap_or(0) >= 1, "{docs}");
    browser.execute("window.confirm = () => true").await;
    browser.click("#knowledge tbody button.danger").await;
    text_when(&browser, "#knowledge tbody", "the document gone", |t| {
        t.contains("No documents.")
    })
    .await;
    std::fs::remove_dir_all(&dir).expect("remove dir");

    // The test tenant's key, revoked from the page: refused at once.
    browser.open(&tab("keys")).await;
    browser.execute("window.confirm = () => true").await;
    browser.click("#api-keys tbody button.danger").await;
    text_when(
        &browser,
        "#api-keys tbody button.danger",
        "the key revoked",
        |t| t == "Revoked",
    )
    .await;
    let (status, _) = p.send(&t.api_key, "after-revoke", "hello", None).await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);

    browser.call(Method::DELETE, "", None).await;
    drop(browser);
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
    let (http, url, token) = (
        p.http.clone(),
        format!(
            "{}{conversation}?wait={wait_s}&after_seq={after_seq}",
            p.base
        ),
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
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    let conversation = p.conversation(t.id, "quiet").await;
    let path = format!(
        "/admin/v1/clients/{}/conversations/{}",
        t.slug,
        conversation.get()
    );
    let waiting = follow_for(&p, &path, 1, 2);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, body) = p.send(&t.api_key, "quiet", "second", None).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
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
