//! The embeddable widget in a real browser: headless Chromium, driven over the W3C
//! WebDriver protocol by ChromeDriver (Debian's `chromium` and `chromium-driver`, which
//! `scripts/test` installs), loads the demo page from a running ingress, types a
//! message, and sees the bot's reply and then a human agent's message rendered. A
//! screenshot is kept in `$CHATFLEET_ARTIFACTS_DIR` (default: the system temp dir).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use serde_json::{Value, json};
use shared::ids::Channel;
use shared::testkit::eventually;

use crate::support::{Method, Platform, WAIT};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one browser session on it; both end on drop.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    _profile: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Browser {
    async fn start() -> Self {
        let chromedriver = std::env::var("CHATFLEET_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium =
            std::env::var("CHATFLEET_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&chromedriver).exists()
                && std::path::Path::new(&chromium).exists(),
            "the browser test needs {chromium} and {chromedriver}: \
             apt-get install chromium chromium-driver (scripts/test installs them)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        eventually(WAIT, "chromedriver to answer", || async {
            let r = http.get(format!("{base}/status")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        let profile = std::env::temp_dir().join(format!("cf-chromium-{}", uuid::Uuid::new_v4()));
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1200,800",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session body");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        Self {
            driver,
            http,
            session: format!("{base}/session/{session}"),
            _profile: tempdir::Dir(profile),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            request = request.json(&b);
        }
        let answer: Value = request
            .send()
            .await
            .expect("webdriver call")
            .json()
            .await
            .expect("webdriver answer");
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The ids of the elements matching a CSS selector (perhaps none).
    async fn find_all(&self, css: &str) -> Vec<String> {
        let found = self
            .call(
                Method::POST,
                "/elements",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        found
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn text(&self, element: &str) -> String {
        self.call(Method::GET, &format!("/element/{element}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The texts of the elements matching `css`, once there are at least `n`.
    async fn texts_when(&self, css: &str, n: usize) -> Vec<String> {
        let ids = eventually(WAIT, &format!("{n} × {css} rendered"), || async {
            let ids = self.find_all(css).await;
            (ids.len() >= n).then_some(ids)
        })
        .await;
        let mut out = Vec::new();
        for id in ids {
            out.push(self.text(&id).await);
        }
        out
    }

    async fn type_and_send(&self, text: &str) {
        let input = eventually(WAIT, "the widget's input", || async {
            self.find_all(".cfw-f input").await.into_iter().next()
        })
        .await;
        self.call(
            Method::POST,
            &format!("/element/{input}/value"),
            Some(json!({ "text": text })),
        )
        .await;
        let button = self.find_all(".cfw-f button").await;
        self.call(
            Method::POST,
            &format!("/element/{}/click", button[0]),
            Some(json!({})),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.call(Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 png"))
            .expect("png");
        let dir = std::env::var("CHATFLEET_ARTIFACTS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir().join("chatfleet-artifacts"));
        std::fs::create_dir_all(&dir).expect("artifacts dir");
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("screenshot written");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Killing ChromeDriver also ends the Chromium it started.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test]
async fn the_demo_page_chats_with_the_bot_and_a_human_agent_in_chromium() {
    let p = Platform::start().await;
    let tenant = p.widget_tenant("demo-shop", &p.base).await;
    let browser = Browser::start().await;
    browser
        .open(&format!("{}/widget/demo?client={}", p.base, tenant.slug))
        .await;

    browser.type_and_send("Do you have gift cards?").await;
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
    browser
        .type_and_send(
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
    browser.type_and_send("What do you sell?").await;

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
