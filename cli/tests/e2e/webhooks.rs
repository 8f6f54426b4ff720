//! Tenants' webhooks end to end: endpoints through the admin API, a receiver double on
//! 127.0.0.2 (the one private address these runs allow) that fails, answers or is gone
//! by path, signatures checked against each tenant's own secret, retries with the same
//! `webhook-id`, the order of a conversation's events, rotation and 410.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::testkit::{TestTenant, eventually};
use shared::webhooks::signature;

use crate::support::{Method, Platform, chatfleet};

const SETTINGS: [(&str, &str); 3] = [
    ("CHATFLEET__WEBHOOKS__ALLOW_HTTP", "true"),
    (
        "CHATFLEET__WEBHOOKS__ALLOWED_PRIVATE_NETWORKS",
        "127.0.0.2/32",
    ),
    ("CHATFLEET__WEBHOOKS__RETRY_SCHEDULE", "0,1,1,1,1"),
];

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    path: String,
    id: String,
    timestamp: i64,
    signatures: String,
    body: Vec<u8>,
    /// What it answered.
    status: u16,
}

impl Received {
    pub(crate) fn event(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// Whether one of its signatures is the secret's.
    fn signed_by(&self, secret: &str) -> bool {
        let key = signature::key_of(secret).expect("a secret");
        let expected = signature::sign(&key, &self.id, self.timestamp, &self.body);
        self.signatures.split(' ').any(|s| s == expected)
    }
}

#[derive(Clone, Default)]
pub(crate) struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub(crate) async fn start(shutdown: tokio_util::sync::CancellationToken) -> (Self, String) {
        let receiver = Self::default();
        let app = axum::Router::new()
            .route("/{tenant}/{behaviour}", axum::routing::post(answer))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind the receiver");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
        });
        (receiver, base)
    }

    pub(crate) fn at(&self, path: &str) -> Vec<Received> {
        let got = self.got.lock().expect("lock");
        got.iter().filter(|r| r.path == path).cloned().collect()
    }
}

/// `fail3`: 500 to the first three requests of each `webhook-id`, then 200; `slow-received`:
/// 500 to the first four requests of a `message.received`, to the first of anything else;
/// `down`: 500; `gone`: 410; anything else 200.
async fn answer(
    State(receiver): State<Receiver>,
    UrlPath((tenant, behaviour)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> AxumStatus {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let path = format!("/{tenant}/{behaviour}");
    let id = header("webhook-id");
    let mut got = receiver.got.lock().expect("lock");
    let earlier = got.iter().filter(|r| r.path == path && r.id == id).count();
    let kind = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)["type"].clone();
    let status = match behaviour.as_str() {
        "fail3" if earlier < 3 => 500,
        "slow-received" if kind == "message.received" && earlier < 4 => 500,
        "slow-received" if earlier < 1 => 500,
        "down" => 500,
        "gone" => 410,
        _ => 200,
    };
    got.push(Received {
        path,
        id,
        timestamp: header("webhook-timestamp").parse().unwrap_or_default(),
        signatures: header("webhook-signature"),
        body: body.to_vec(),
        status,
    });
    AxumStatus::from_u16(status).expect("a status")
}

/// Creates an endpoint; its id and secret.
pub(crate) async fn add_webhook(
    p: &Platform,
    t: &TestTenant,
    url: String,
    events: Value,
) -> (u64, String) {
    let (status, body) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{}/webhooks", t.id),
            Some(json!({ "url": url, "events": events })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let secret = body["secret"].as_str().expect("a secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (body["id"].as_u64().expect("an id"), secret)
}

/// The delivered (2xx) events at `path`, by type, with what was received.
pub(crate) fn delivered(received: &[Received]) -> HashMap<String, Vec<Received>> {
    let mut by_type: HashMap<String, Vec<Received>> = HashMap::new();
    for r in received.iter().filter(|r| r.status == 200) {
        let kind = r.event()["type"].as_str().unwrap_or_default().to_owned();
        by_type.entry(kind).or_default().push(r.clone());
    }
    by_type
}

#[tokio::test]
async fn webhooks_are_signed_retried_in_order_kept_to_their_tenant_and_disabled_when_gone() {
    let p = Platform::start_with(&SETTINGS, 1).await;
    let (receiver, base) = Receiver::start(p.shutdown.clone()).await;
    let (a, b) = (p.tenant("alpha").await, p.tenant("beta").await);
    let path = format!("/admin/v1/clients/{}/webhooks", a.id);

    // Bad input names its field.
    for (bad, field) in [
        (
            json!({ "url": "ftp://hooks.example/x", "events": ["*"] }),
            "url",
        ),
        (
            json!({ "url": "http://127.0.0.1:9/x", "events": ["*"] }),
            "url",
        ),
        (
            json!({ "url": format!("{base}/a/ok"), "events": [] }),
            "events",
        ),
        (
            json!({ "url": format!("{base}/a/ok"), "events": ["message.sent"] }),
            "message.sent",
        ),
    ] {
        let (status, body) = p.admin(Method::POST, &path, Some(bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {body}");
        assert!(body.to_string().contains(field), "{field}: {body}");
    }

    let (a_hook, a_secret) = add_webhook(
        &p,
        &a,
        format!("{base}/a/fail3"),
        json!(["message.received", "message.replied"]),
    )
    .await;
    let (b_hook, b_secret) = add_webhook(&p, &b, format!("{base}/b/ok"), json!(["*"])).await;
    // Another tenant's endpoint is not found.
    let (status, _) = p
        .admin(Method::GET, &format!("{path}/{b_hook}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, listed) = p.admin(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!listed.to_string().contains(&a_secret), "{listed}");

    p.ask(&a.api_key, "c1", "hello from alpha", "0").await;
    p.ask(&b.api_key, "c1", "hello from beta", "0").await;

    // Alpha's receiver fails three times per event, then answers: each event arrives four
    // times under one webhook-id, signed with alpha's secret, received before replied.
    let got = eventually(Duration::from_secs(60), "alpha's events delivered", || {
        let got = receiver.at("/a/fail3");
        let done = delivered(&got);
        async move {
            (done.contains_key("message.received") && done.contains_key("message.replied"))
                .then_some(got)
        }
    })
    .await;
    let done = delivered(&got);
    for kind in ["message.received", "message.replied"] {
        let event = &done[kind][0];
        let tries: Vec<&Received> = got.iter().filter(|r| r.id == event.id).collect();
        assert_eq!(tries.len(), 4, "{kind}: {tries:?}");
        assert!(tries.iter().all(|r| r.signed_by(&a_secret)), "{kind}");
        assert!(!tries.iter().any(|r| r.signed_by(&b_secret)), "{kind}");
        let e = event.event();
        assert_eq!(e["client_id"], a.id.get(), "{e}");
        assert_eq!(e["id"], event.id.as_str(), "{e}");
    }
    let (received, replied) = (
        done["message.received"][0].event(),
        done["message.replied"][0].event(),
    );
    assert_eq!(received["data"]["text"], "hello from alpha");
    assert!(
        received["data"]["seq"].as_u64() < replied["data"]["seq"].as_u64(),
        "{received} {replied}"
    );
    let received_at = got
        .iter()
        .position(|r| r.status == 200 && r.id == done["message.received"][0].id)
        .expect("delivered");
    let first_replied = got
        .iter()
        .position(|r| r.id == done["message.replied"][0].id)
        .expect("sent");
    assert!(
        received_at < first_replied,
        "the reply's event went out while the message's was still being retried"
    );
    let (status, attempts) = p
        .admin(
            Method::GET,
            &format!("{path}/{a_hook}/attempts?limit=200"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{attempts}");
    let of_received: Vec<&Value> = attempts["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter(|x| x["event_id"] == done["message.received"][0].id.as_str())
        .collect();
    assert_eq!(of_received.len(), 4, "{attempts}");
    assert_eq!(of_received[0]["response_status"], 500);
    assert_eq!(of_received[3]["response_status"], 200);

    // Beta's endpoint hears only beta, signed with beta's secret.
    let b_got = eventually(Duration::from_secs(30), "beta's events", || {
        let got = receiver.at("/b/ok");
        async move { (delivered(&got).contains_key("message.replied")).then_some(got) }
    })
    .await;
    assert!(b_got.iter().all(|r| r.signed_by(&b_secret)));
    assert!(b_got.iter().all(|r| r.event()["client_id"] == b.id.get()));
    let kinds: Vec<String> = b_got
        .iter()
        .map(|r| r.event()["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        kinds.contains(&"conversation.created".to_owned()),
        "{kinds:?}"
    );

    // After a rotation both secrets sign.
    let (status, rotated) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{}/webhooks/{b_hook}/rotate-secret", b.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_secret = rotated["secret"].as_str().expect("secret").to_owned();
    let before = receiver.at("/b/ok").len();
    p.ask(&b.api_key, "c2", "after the rotation", "0").await;
    let after = eventually(
        Duration::from_secs(30),
        "deliveries after the rotation",
        || {
            let got = receiver.at("/b/ok");
            async move { (got.len() > before).then_some(got) }
        },
    )
    .await;
    let fresh = &after[before];
    assert!(
        fresh.signed_by(&new_secret) && fresh.signed_by(&b_secret),
        "{fresh:?}"
    );

    // 410 disables at once; a disabled endpoint gets nothing more.
    let (gone, _) = add_webhook(
        &p,
        &a,
        format!("{base}/a/gone"),
        json!(["message.received"]),
    )
    .await;
    p.ask(&a.api_key, "c2", "to a gone endpoint", "0").await;
    let disabled = eventually(
        Duration::from_secs(30),
        "the gone endpoint disabled",
        || {
            let p = &p;
            let url = format!("{path}/{gone}");
            async move {
                let (_, w) = p.admin(Method::GET, &url, None).await;
                (w["enabled"] == false).then_some(w)
            }
        },
    )
    .await;
    assert!(
        disabled["disabled_reason"].to_string().contains("410"),
        "{disabled}"
    );
    let gone_requests = receiver.at("/a/gone").len();
    assert_eq!(gone_requests, 1);
    p.ask(&a.api_key, "c3", "after it was disabled", "0").await;
    eventually(
        Duration::from_secs(30),
        "the next event delivered elsewhere",
        || {
            let n = delivered(&receiver.at("/a/fail3"))
                .get("message.received")
                .map_or(0, Vec::len);
            async move { (n >= 3).then_some(()) }
        },
    )
    .await;
    assert_eq!(receiver.at("/a/gone").len(), gone_requests);

    // A REST channel account with a callback_url gets each reply, signed with the secret
    // shown when the account was made, and nothing else.
    let (status, account) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{}/channels", b.id),
            Some(json!({
                "channel": "api", "external_account_id": "beta-integration",
                "settings": { "callback_url": format!("{base}/bcallback/ok") },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{account}");
    let callback_secret = account["callback_secret"]
        .as_str()
        .expect("the callback's secret, shown once")
        .to_owned();
    p.ask(&b.api_key, "c3", "to the integration", "0").await;
    let called = eventually(Duration::from_secs(30), "the reply's callback", || {
        let got = receiver.at("/bcallback/ok");
        async move { (!got.is_empty()).then_some(got) }
    })
    .await;
    assert!(called.iter().all(|r| r.signed_by(&callback_secret)));
    assert!(
        called.iter().all(
            |r| r.event()["type"] == "message.replied" && r.event()["data"]["text"].is_string()
        ),
        "{called:?}"
    );

    // The Standard Webhooks reference verifier accepts every delivery under the secret it
    // was signed with, and rejects each with its body or its timestamp changed.
    let mut signed: Vec<(&Received, &str)> = Vec::new();
    signed.extend(got.iter().map(|r| (r, a_secret.as_str())));
    signed.extend(b_got.iter().map(|r| (r, b_secret.as_str())));
    signed.push((fresh, new_secret.as_str()));
    signed.push((fresh, b_secret.as_str()));
    signed.extend(called.iter().map(|r| (r, callback_secret.as_str())));
    let verdict = reference_verifier(&signed).await;
    assert_eq!(verdict["verified"], signed.len(), "{verdict}");
    assert_eq!(verdict["rejected_tampered"], 2 * signed.len(), "{verdict}");

    // Operators: `chatfleet webhooks list|attempts|redeliver`.
    let (client, hook) = (a.id.to_string(), a_hook.to_string());
    let (ok, listed) = chatfleet(&p, &["webhooks", "list", "--client", &client, "--json"]).await;
    assert!(
        ok && listed.contains(&format!("{base}/a/fail3")),
        "{listed}"
    );
    assert!(!listed.contains(&a_secret), "{listed}");
    let event_id = done["message.received"][0].id.clone();
    let endpoint = ["--client", client.as_str(), "--webhook", hook.as_str()];
    let attempts_of = || {
        let mut args = vec!["webhooks", "attempts"];
        args.extend(endpoint);
        args.extend(["--event", event_id.as_str(), "--json"]);
        args
    };
    let (ok, lines) = chatfleet(&p, &attempts_of()).await;
    assert!(ok, "{lines}");
    assert_eq!(lines.lines().count(), 4, "{lines}");
    let (ok, refused) = chatfleet(&p, &[&["webhooks", "redeliver"], &endpoint[..]].concat()).await;
    assert!(
        !ok,
        "a redelivery of everything must be asked for: {refused}"
    );
    let mut redeliver = vec!["webhooks", "redeliver"];
    redeliver.extend(endpoint);
    redeliver.extend(["--event", event_id.as_str()]);
    let (ok, said) = chatfleet(&p, &redeliver).await;
    assert!(ok && said.contains("queued 1"), "{said}");
    let again = eventually(Duration::from_secs(30), "the event sent again", || {
        let n = receiver
            .at("/a/fail3")
            .iter()
            .filter(|r| r.id == event_id)
            .count();
        async move { (n == 5).then_some(n) }
    })
    .await;
    assert_eq!(again, 5);
    let (ok, lines) = chatfleet(&p, &attempts_of()).await;
    assert!(ok && lines.lines().count() == 5, "{lines}");
    p.stop().await;
}

/// An event that went ahead of an earlier one still being retried says so on every
/// attempt until the earlier one is delivered, not only on the first: its retry arriving
/// before the earlier event is marked `out_of_order` too.
#[tokio::test]
async fn a_retry_of_an_event_that_went_ahead_is_marked_out_of_order() {
    let settings: Vec<(&str, &str)> = SETTINGS
        .iter()
        .copied()
        .chain([("CHATFLEET__WEBHOOKS__ORDER_WAIT_S", "1")])
        .collect();
    let p = Platform::start_with(&settings, 1).await;
    let (receiver, base) = Receiver::start(p.shutdown.clone()).await;
    let t = p.tenant("ahead").await;
    add_webhook(
        &p,
        &t,
        format!("{base}/t/slow-received"),
        json!(["message.received", "message.replied"]),
    )
    .await;
    p.ask(&t.api_key, "c1", "hello", "0").await;
    // The received event fails four times (delivered on its fifth attempt, ~4 s); the
    // replied event waits a second for it, goes marked, fails once, and its retry is
    // delivered while the received event is still owed.
    let got = eventually(Duration::from_secs(60), "both events delivered", || {
        let receiver = receiver.clone();
        async move {
            let got = delivered(&receiver.at("/t/slow-received"));
            (got.get("message.received")?.len() == 1 && got.get("message.replied")?.len() == 1)
                .then_some(got)
        }
    })
    .await;
    let (received, replied) = (&got["message.received"][0], &got["message.replied"][0]);
    let arrivals = receiver.at("/t/slow-received");
    let position = |r: &Received| {
        arrivals
            .iter()
            .position(|a| a.id == r.id && a.status == 200)
    };
    assert!(
        position(replied) < position(received),
        "the reply's event went ahead: {:?}",
        arrivals
            .iter()
            .map(|a| (a.event()["type"].clone(), a.status))
            .collect::<Vec<_>>()
    );
    assert!(replied.event()["data"]["seq"].as_u64() > received.event()["data"]["seq"].as_u64());
    assert_eq!(
        replied.event()["data"]["out_of_order"],
        true,
        "delivered ahead of an owed event: {}",
        replied.event()
    );
    assert_ne!(
        received.event()["data"]["out_of_order"],
        true,
        "{}",
        received.event()
    );
    p.stop().await;
}

#[tokio::test]
async fn an_endpoint_failing_longer_than_disable_after_is_disabled_and_the_others_hear_of_it() {
    let mut settings = SETTINGS.to_vec();
    settings.push(("CHATFLEET__WEBHOOKS__DISABLE_AFTER", "2"));
    settings.push(("CHATFLEET__WEBHOOKS__RETRY_SCHEDULE", "0,1,1,1,1,1,1,1,1,1"));
    let p = Platform::start_with(&settings, 1).await;
    let (receiver, base) = Receiver::start(p.shutdown.clone()).await;
    let t = p.tenant("gamma").await;
    let (down, _) = add_webhook(
        &p,
        &t,
        format!("{base}/g/down"),
        json!(["message.received"]),
    )
    .await;
    let (_, watcher_secret) =
        add_webhook(&p, &t, format!("{base}/g/ok"), json!(["webhook.disabled"])).await;
    p.ask(&t.api_key, "c1", "to an endpoint that is down", "0")
        .await;
    let heard = eventually(Duration::from_secs(60), "webhook.disabled", || {
        let got = delivered(&receiver.at("/g/ok"));
        async move { got.get("webhook.disabled").map(|d| d[0].clone()) }
    })
    .await;
    assert!(heard.signed_by(&watcher_secret));
    let event = heard.event();
    assert_eq!(event["data"]["webhook_id"], down, "{event}");
    let (_, w) = p
        .admin(
            Method::GET,
            &format!("/admin/v1/clients/{}/webhooks/{down}", t.id),
            None,
        )
        .await;
    assert_eq!(w["enabled"], false, "{w}");
    assert!(
        w["disabled_reason"]
            .to_string()
            .contains("webhooks.disable_after"),
        "{w}"
    );
    // It failed for at least disable_after before it was given up: several attempts.
    let tries = receiver.at("/g/down").len();
    assert!(tries >= 3, "{tries} attempts");
    p.stop().await;
}

/// The webhook deliverer (ingress) and the worker are separate processes here: both are
/// SIGKILLed and started again after the receiver failed the first attempt. The retry
/// waits in the broker, so the event still arrives, and answered 200 exactly once.
#[tokio::test]
async fn a_delivery_being_retried_survives_killing_every_process() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sim = worker::llm::sim::LlmSim::start(
        "127.0.0.1:0".parse().expect("addr"),
        worker::llm::sim::SimOptions::default(),
        shutdown.clone(),
    )
    .await
    .expect("llm-sim");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let sim_url = sim.base_url();
    let bind = format!("127.0.0.1:{port}");
    let mut vars = SETTINGS.to_vec();
    vars.extend([
        ("CHATFLEET__WEBHOOKS__RETRY_SCHEDULE", "0,2,2,2,2"),
        (
            "CHATFLEET__LLM__PROVIDERS__OLLAMA__BASE_URL",
            sim_url.as_str(),
        ),
        ("CHATFLEET__HTTP__BIND", bind.as_str()),
    ]);
    let env = shared::testkit::TestEnv::start(&vars).await;
    let (receiver, base) = Receiver::start(shutdown.clone()).await;
    let t = env.tenant("delta").await;
    let secret = signature::new_secret();
    let secrets = shared::secrets::SecretBox::new(&env.settings.security.encryption_ring());
    env.db
        .tenant(t.id)
        .webhooks()
        .create(
            &shared::db::NewWebhook {
                url: format!("{base}/d/fail3"),
                events: shared::db::EventFilter::parse(&["message.received".to_owned()])
                    .expect("a filter"),
                description: String::new(),
                include_text: true,
                channel_account_id: None,
            },
            16,
            |id| secrets.seal_webhook_secret(t.id, id, secret.as_bytes()),
        )
        .await
        .expect("an endpoint");
    let spawn = |role: &str| {
        env.command(env!("CARGO_BIN_EXE_chatfleet"))
            .arg(role)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("a chatfleet process")
    };
    let mut fleet = vec![spawn("ingress"), spawn("worker")];
    let http = reqwest::Client::new();
    let url = format!("http://{bind}/api/v1/messages");
    eventually(Duration::from_secs(30), "the message accepted", || {
        let request = http
            .post(&url)
            .bearer_auth(&t.api_key)
            .header("idempotency-key", "k1")
            .json(&json!({ "conversation_id": "c1", "text": "through the kills" }));
        async move {
            let r = request.send().await.ok()?;
            (r.status() == StatusCode::ACCEPTED).then_some(())
        }
    })
    .await;
    eventually(Duration::from_secs(30), "the first attempt", || {
        let n = receiver.at("/d/fail3").len();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    for mut child in fleet.drain(..) {
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    let mut fleet = vec![spawn("ingress"), spawn("worker")];
    let got = eventually(Duration::from_secs(60), "delivered after the kills", || {
        let got = receiver.at("/d/fail3");
        async move { got.iter().any(|r| r.status == 200).then_some(got) }
    })
    .await;
    for mut child in fleet.drain(..) {
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    let id = &got[0].id;
    assert!(got.iter().all(|r| &r.id == id && r.signed_by(&secret)));
    assert_eq!(got.iter().filter(|r| r.status == 200).count(), 1, "{got:?}");
    assert!(got.len() >= 4, "{got:?}");
    shutdown.cancel();
    env.teardown().await;
}

/// Runs the Standard Webhooks project's reference verifier (scripts/verify-webhooks.py,
/// in the virtual environment `scripts/test` makes) over deliveries, each with the
/// secret it must verify under; its verdict.
async fn reference_verifier(deliveries: &[(&Received, &str)]) -> Value {
    let python = std::env::var("CHATFLEET_VENV_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/chatfleet-venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/verify-webhooks.py");
    let input: String = deliveries
        .iter()
        .map(|(r, secret)| {
            json!({
                "secret": secret, "id": r.id, "timestamp": r.timestamp,
                "signature": r.signatures,
                "body": String::from_utf8_lossy(&r.body),
            })
            .to_string()
                + "\n"
        })
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(&python)
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{python} does not run ({e}): scripts/test installs standardwebhooks")
            });
        let mut stdin = child.stdin.take().expect("stdin");
        std::io::Write::write_all(&mut stdin, input.as_bytes()).expect("write");
        drop(stdin);
        child.wait_with_output().expect("the verifier ran")
    })
    .await
    .expect("runner");
    assert!(
        out.status.success(),
        "the reference verifier refused: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("its verdict")
}
