//! The embeddable widget in a real browser ([`crate::chromium`]): loads the demo page
//! from a running ingress, types a message, and sees the bot's reply and then a human
//! agent's message rendered. A screenshot is kept in `$CHATFLEET_ARTIFACTS_DIR`.

use serde_json::json;
use shared::ids::Channel;
use shared::testkit::eventually;

use crate::chromium::Browser;
use crate::support::{Method, Platform, WAIT};

/// Types `text` into the widget's input and presses its send button.
async fn type_and_send(browser: &Browser, text: &str) {
    browser.fill(".cfw-f input", text).await;
    browser.click(".cfw-f button").await;
}

#[tokio::test]
async fn the_demo_page_chats_with_the_bot_and_a_human_agent_in_chromium() {
    let p = Platform::start().await;
    let tenant = p.widget_tenant("demo-shop", &p.base).await;
    let browser = Browser::start().await;
    browser
        .open(&format!("{}/widget/demo?client={}", p.base, tenant.slug))
        .await;

    type_and_send(&browser, "Do you have gift cards?").await;
    let mine = browser.texts_when(".cfw-m.cfw-user", 1).await;
    assert_eq!(mine, ["Do you have gift cards?"]);
    let bot = browser.texts_when(".cfw-m.cfw-assistant", 1).await;
    assert!(
        bot[0].ends_with("You said: Do you have gift cards?"),
        "{bot:?}"
    );

    // Choices offered by the model (the built-in offer_choices tool) are buttons that
    // send the choice's text.
    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", tenant.id),
            Some(json!({ "builtin_tools": ["offer_choices"] })),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    type_and_send(
        &browser,
        r#"TOOL offer_choices {"text": "Which card?", "choices": ["Gold", "Silver"]}"#,
    )
    .await;
    let buttons = browser.texts_when(".cfw-c button", 2).await;
    assert_eq!(buttons, ["Gold", "Silver"]);
    let silver = browser.find_all(".cfw-c button").await[1].clone();
    browser
        .call(
            Method::POST,
            &format!("/element/{silver}/click"),
            Some(json!({})),
        )
        .await;
    let mine = browser.texts_when(".cfw-m.cfw-user", 3).await;
    assert_eq!(mine[2], "Silver");
    browser.texts_when(".cfw-m.cfw-assistant", 3).await;
    assert!(
        browser.find_all(".cfw-c").await.is_empty(),
        "the choices stay after a pick"
    );

    // A human agent writes into the same conversation: the widget shows it as such.
    let visitor = p
        .env
        .db
        .tenant(tenant.id)
        .conversations()
        .list(0, 10)
        .await
        .expect("conversations");
    assert_eq!(visitor.len(), 1);
    assert_eq!(visitor[0].channel, Channel::Widget);
    let (status, body) = p
        .admin(
            Method::POST,
            &format!(
                "/admin/v1/clients/{}/conversations/{}/messages",
                tenant.id, visitor[0].id
            ),
            Some(json!({ "text": "Hi, this is Ana from the shop." })),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    let agent = browser.texts_when(".cfw-m.cfw-agent", 1).await;
    assert_eq!(agent, ["Hi, this is Ana from the shop."]);
    // Nothing shown twice across the polls that carried all this.
    assert_eq!(browser.find_all(".cfw-m").await.len(), 7);

    let shot = browser.screenshot("widget-demo.png").await;
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 1_000);
    eprintln!("screenshot: {}", shot.display());
    browser.call(Method::DELETE, "", None).await; // closes Chromium
    drop(browser);
    p.stop().await;
}

/// With a model that writes slowly (the LLM double streams a word every 150 ms), the
/// widget shows part of the reply while the turn still runs — nothing stored yet — and
/// then the stored reply, once.
#[tokio::test]
async fn the_widget_shows_the_reply_as_it_is_written_in_chromium() {
    let p = Platform::start_with(&[("CHATFLEET__LLM__PROVIDERS__OLLAMA__STREAM", "true")], 1).await;
    p.sim.set_word_delay(std::time::Duration::from_millis(150));
    let tenant = p.widget_tenant("stream-shop", &p.base).await;
    let browser = Browser::start().await;
    browser
        .open(&format!("{}/widget/demo?client={}", p.base, tenant.slug))
        .await;
    type_and_send(&browser, "What do you sell?").await;

    // Part of the reply, written into a live bubble, before anything is stored.
    let partial = eventually(WAIT, "a partly written reply", || async {
        let live = browser.find_all(".cfw-m.cfw-live").await;
        let text = browser.text(live.first()?).await;
        (!text.is_empty()).then_some(text)
    })
    .await;
    let conversations = p
        .env
        .db
        .tenant(tenant.id)
        .conversations()
        .list(0, 10)
        .await
        .expect("conversations");
    let stored = p.stored(tenant.id, conversations[0].id).await;
    assert!(
        stored.iter().all(|m| m.role != shared::db::Role::Assistant),
        "the reply was stored before any of it was shown: {partial:?}"
    );

    // Then the stored reply replaces it: shown once, in full.
    let done = eventually(WAIT, "the stored reply", || async {
        let finished = browser
            .find_all(".cfw-m.cfw-assistant:not(.cfw-live)")
            .await;
        Some(browser.text(finished.first()?).await)
    })
    .await;
    assert!(done.ends_with("You said: What do you sell?"), "{done}");
    assert!(
        done.starts_with(&partial),
        "{partial:?} is how {done:?} began"
    );
    assert_eq!(
        browser.find_all(".cfw-m.cfw-assistant").await.len(),
        1,
        "shown once"
    );
    assert!(browser.find_all(".cfw-m.cfw-live").await.is_empty());
    browser.call(Method::DELETE, "", None).await;
    drop(browser);
    p.stop().await;
}
