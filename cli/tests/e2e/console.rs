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
