//! One attempt at an endpoint: a signed `POST` under the address rules, answered or not
//! within the timeout. Redirects are not followed (a redirect is a failed attempt), and
//! the answer's body is never read: only its status counts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::webhooks::signature;

/// The HTTP client for endpoints: resolves only to permitted addresses, follows no
/// redirect, gives up after `timeout`.
pub(super) fn client(
    timeout: Duration,
    allowed: Arc<Vec<ipnet::IpNet>>,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(shared::net::GuardedResolver { allowed }))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent("chatfleet-webhooks")
        .build()
}

/// How an attempt went.
#[derive(Debug)]
pub(super) struct Answer {
    /// The endpoint's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why it failed; `None` for a 2xx.
    pub error: Option<String>,
    pub elapsed: Duration,
}

impl Answer {
    pub fn delivered(&self) -> bool {
        self.error.is_none()
    }
}

/// What an attempt sends.
pub(super) struct Request<'a> {
    pub url: &'a str,
    /// The event id (`webhook-id`).
    pub id: &'a str,
    pub body: Vec<u8>,
    /// The keys that sign (two during a rotation's overlap).
    pub keys: &'a [Vec<u8>],
}

/// Sends one signed attempt.
pub(super) async fn post(
    http: &reqwest::Client,
    request: Request<'_>,
    allow_http: bool,
    allowed: &[ipnet::IpNet],
    timeout: Duration,
) -> Answer {
    let started = Instant::now();
    let failed = |error: String| Answer {
        status: None,
        error: Some(error),
        elapsed: started.elapsed(),
    };
    let url = match reqwest::Url::parse(request.url) {
        Ok(url) => url,
        Err(e) => return failed(format!("url is not a URL: {e}")),
    };
    if let Err(reason) = shared::net::check_target(&url, allow_http, allowed) {
        return failed(reason);
    }
    let timestamp = chrono::Utc::now().timestamp();
    let signatures = signature::header(request.keys, request.id, timestamp, &request.body);
    let sent = http
        .post(url)
        .header("webhook-id", request.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signatures)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(request.body)
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status();
            // The body is not read: a huge answer costs nothing.
            drop(response);
            let error = if status.is_success() {
                None
            } else if status.is_redirection() {
                Some(format!("HTTP {status} (redirects are not followed)"))
            } else {
                Some(format!("HTTP {status}"))
            };
            Answer {
                status: Some(status.as_u16()),
                error,
                elapsed: started.elapsed(),
            }
        }
        Err(e) if e.is_timeout() => failed(format!("no answer within {} s", timeout.as_secs())),
        Err(e) => failed(describe(&e)),
    }
}

/// A failed request's cause: a refused address by its reason, else the error chain.
fn describe(error: &reqwest::Error) -> String {
    if let Some(refused) = shared::net::refusal(error) {
        return refused.to_string();
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        text = format!("{text}: {e}");
        source = e.source();
    }
    text
}
