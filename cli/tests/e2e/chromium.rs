//! Headless Chromium for the browser tests, driven over the W3C WebDriver protocol by
//! ChromeDriver (Debian's `chromium` and `chromium-driver`, which `scripts/test`
//! installs). Screenshots go to `$CHATFLEET_ARTIFACTS_DIR` (default: the system temp
//! dir).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use serde_json::{Value, json};
use shared::testkit::eventually;

use crate::support::{Method, WAIT};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one browser session on it; both end on drop.
pub struct Browser {
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
    pub async fn start() -> Self {
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

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
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

    pub async fn open(&self, url: &str) {
        self.call(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The ids of the elements matching a CSS selector (perhaps none).
    pub async fn find_all(&self, css: &str) -> Vec<String> {
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

    pub async fn text(&self, element: &str) -> String {
        self.call(Method::GET, &format!("/element/{element}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The rendered texts of the elements matching `css`, read in one step (a page that
    /// re-renders between finding an element and reading it cannot make it stale).
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let found = self
            .execute(&format!(
                "return Array.from(document.querySelectorAll({css:?}), e => e.innerText)"
            ))
            .await;
        found
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|t| t.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The texts of the elements matching `css`, once there are at least `n`.
    pub async fn texts_when(&self, css: &str, n: usize) -> Vec<String> {
        eventually(WAIT, &format!("{n} × {css} rendered"), || async {
            let texts = self.texts(css).await;
            (texts.len() >= n).then_some(texts)
        })
        .await
    }

    /// The first element matching `css`, once there is one.
    pub async fn wait_for(&self, css: &str) -> String {
        eventually(WAIT, &format!("{css} rendered"), || async {
            self.find_all(css).await.into_iter().next()
        })
        .await
    }

    /// Replaces the value of the input matching `css` with `text`, as typed.
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self.wait_for(css).await;
        self.call(
            Method::POST,
            &format!("/element/{input}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            Method::POST,
            &format!("/element/{input}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Clicks the first element matching `css`, once there is one.
    pub async fn click(&self, css: &str) {
        let element = self.wait_for(css).await;
        self.call(
            Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub async fn execute(&self, script: &str) -> Value {
        self.call(
            Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    pub async fn screenshot(&self, name: &str) -> PathBuf {
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
