//! The mobile app channel: app-key sessions per device, the widget's send and poll
//! semantics, and push notifications in the FCM HTTP v1 format with retries.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::post;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::ids::Channel;
use shared::testkit::eventually;

use crate::support::{Platform, WAIT};

const APP_KEY: &str = "app-key-shop-ios-123";

/// A local stand-in for FCM's `projects/{project}/messages:send`: records each request
/// and answers with the scripted statuses in turn (then 200).
#[derive(Clone, Default)]
struct FcmDouble {
    received: Arc<Mutex<Vec<(String, String, Value)>>>,
    script: Arc<Mutex<Vec<u16>>>,
}

impl FcmDouble {
    async fn start(script: Vec<u16>) -> (Self, String) {
        let fcm = Self {
            script: Arc::new(Mutex::new(script)),
            ..Self::default()
        };
        let app = Router::new()
            .route("/v1/projects/{project}/messages:send", post(send))
            .with_state(fcm.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/v1/projects/{{project_id}}/messages:send",
            listener.local_addr().expect("addr")
        );
        tokio::spawn(async move { axum::serve(listener, app).await.expect("fcm double") });
        (fcm, url)
    }

    fn received(&self) -> Vec<(String, String, Value)> {
        self.received.lock().expect("lock").clone()
    }
}

async fn send(
    State(fcm): State<FcmDouble>,
    Path(project): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (AxumStatus, axum::Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    fcm.received
        .lock()
        .expect("lock")
        .push((project.clone(), auth, body));
    let next = {
        let mut script = fcm.script.lock().expect("lock");
        if script.is_empty() {
            200
        } else {
            script.remove(0)
        }
    };
    let status = AxumStatus::from_u16(next).expect("status");
    if status.is_success() {
        (
            status,
            axum::Json(json!({ "name": format!("projects/{project}/messages/0:1") })),
        )
    } else {
        (
            status,
            axum::Json(json!({ "error": { "code": next, "status": "UNAVAILABLE" } })),
        )
    }
}

async fn mobile_session(p: &Platform, app_key: &str, body: Value) -> (StatusCode, Value) {
    let response = p
        .http
        .post(format!("{}/mobile/v1/sessions", p.base))
        .header("x-app-key", app_key)
        .json(&body)
        .send()
        .await
        .expect("session request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_device_chats_and_gets_a_push_retried_through_a_transient_failure() {
    // FCM is briefly unavailable for the first notification.
    let (fcm, url) = FcmDouble::start(vec![503]).await;
    let p = Platform::start_with(
        &[
            ("CHATFLEET__MOBILE__PUSH_URL", url.as_str()),
            ("CHATFLEET__MOBILE__PUSH_ATTEMPTS", "3"),
        ],
        1,
    )
    .await;
    let tenant = p.tenant("shop").await;
    let (status, body) = p
        .admin(
            reqwest::Method::POST,
            &format!("/admin/v1/clients/{}/channels", tenant.id),
            Some(json!({
                "channel": "mobile",
                "external_account_id": APP_KEY,
                "credentials": { "fcm_project_id": "shop-app", "fcm_access_token": "ya29.test-token" },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Wrong or missing app key: 401.
    let (status, body) = mobile_session(&p, "nope", json!({ "device_id": "d1" })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = mobile_session(&p, APP_KEY, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, session) = mobile_session(
        &p,
        APP_KEY,
        json!({ "device_id": "device-42", "push_token": "fcm-registration-token-42" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    let token = session["token"].as_str().expect("token").to_owned();
    let device_secret = session["device_secret"].as_str().expect("device secret");

    // A widget token is not a mobile token.
    let widget_tenant = p.widget_tenant("other", "https://other.example").await;
    let (_, widget) = p
        .widget_session(
            &p.base,
            "https://other.example",
            json!({ "client": widget_tenant.slug }),
        )
        .await;
    let (status, _) = p
        .session_poll(
            &p.base,
            "mobile",
            widget["token"].as_str().expect("token"),
            "",
            0,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, sent) = p
        .session_send(
            &p.base,
            "mobile",
            &token,
            json!({ "text": "Where is my order?", "client_message_id": "c1" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    let (entries, _) = p.session_read(&p.base, "mobile", &token, "", 2).await;
    assert_eq!(entries[0]["id"], sent["message_id"]);
    let reply = entries[1]["text"].as_str().expect("reply").to_owned();
    assert!(reply.ends_with("You said: Where is my order?"), "{reply}");

    // The push: first try refused with 503, the retry delivered, in FCM's format.
    let received = eventually(WAIT, "the push retried and delivered", || async {
        let r = fcm.received();
        (r.len() >= 2).then_some(r)
    })
    .await;
    assert_eq!(received.len(), 2, "retried more than needed: {received:?}");
    for (project, auth, body) in &received {
        assert_eq!(project, "shop-app");
        assert_eq!(auth, "Bearer ya29.test-token");
        assert_eq!(body["message"]["token"], "fcm-registration-token-42");
        assert_eq!(body["message"]["notification"]["body"], reply.as_str());
        assert_eq!(body["message"]["data"]["message_id"], entries[1]["id"]);
    }

    // A device that removed its token gets no push for the next reply.
    let removed = p
        .http
        .put(format!("{}/mobile/v1/push-token", p.base))
        .bearer_auth(&token)
        .json(&json!({ "push_token": null }))
        .send()
        .await
        .expect("remove token");
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let stored = p
        .env
        .db
        .tenant(tenant.id)
        .devices()
        .push_token("device-42")
        .await
        .expect("device");
    assert_eq!(stored, None);
    let (status, _) = p
        .session_send(&p.base, "mobile", &token, json!({ "text": "thanks" }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (later, _) = p.session_read(&p.base, "mobile", &token, "", 4).await;
    assert_eq!(later[3]["role"], "assistant");
    assert_eq!(fcm.received().len(), 2, "a push went to a removed token");

    // The device resumes its conversation in a new session, with its secret.
    let (status, again) = mobile_session(
        &p,
        APP_KEY,
        json!({ "device_id": "device-42", "device_secret": device_secret }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert!(again.get("device_secret").is_none(), "shown once: {again}");
    let conversation = p
        .env
        .db
        .tenant(tenant.id)
        .conversations()
        .find(Channel::Mobile, "device-42")
        .await
        .expect("find")
        .expect("the device's conversation");
    let (history, _) = p
        .session_read(
            &p.base,
            "mobile",
            again["token"].as_str().expect("token"),
            "",
            4,
        )
        .await;
    assert_eq!(history.len(), 4);
    assert_eq!(p.stored(tenant.id, conversation).await.len(), 4);
    p.stop().await;
}

/// Device ids are guessable: a second installation claiming one gets 401 and sees
/// nothing without the secret the device's first session returned; the right secret
/// resumes. A device registered before device secrets existed claims one on its next
/// session.
#[tokio::test]
async fn a_second_installation_with_the_same_device_id_sees_nothing() {
    let p = Platform::start().await;
    let tenant = p.tenant("shop").await;
    p.env
        .db
        .tenant(tenant.id)
        .channel_accounts()
        .create(Channel::Mobile, APP_KEY, None, &json!({}))
        .await
        .expect("mobile account");

    let (status, first) = mobile_session(&p, APP_KEY, json!({ "device_id": "1" })).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let secret = first["device_secret"]
        .as_str()
        .expect("a new device gets a secret");
    assert!(secret.len() >= 22, "at least 128 bits: {secret}");
    let token = first["token"].as_str().expect("token");
    let (status, _) = p
        .session_send(
            &p.base,
            "mobile",
            token,
            json!({ "text": "my address is 1 Main St" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    p.session_read(&p.base, "mobile", token, "", 2).await;

    // The stored hash is not the secret.
    let stored = p
        .env
        .db
        .tenant(tenant.id)
        .devices()
        .secret_hash("1")
        .await
        .expect("read")
        .expect("claimed");
    assert_ne!(stored, secret.as_bytes());

    for attempt in [
        json!({ "device_id": "1" }),
        json!({ "device_id": "1", "device_secret": "guess" }),
        json!({ "device_id": "1", "device_secret": null, "push_token": "attacker-phone" }),
    ] {
        let (status, body) = mobile_session(&p, APP_KEY, attempt.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{attempt}: {body}");
        assert_eq!(body["error"]["code"], "invalid_device_secret", "{body}");
        assert!(body.get("token").is_none());
    }
    let push = p.env.db.tenant(tenant.id).devices().push_token("1").await;
    assert_eq!(
        push.expect("read"),
        None,
        "a refused session moved no push token"
    );

    let (status, again) = mobile_session(
        &p,
        APP_KEY,
        json!({ "device_id": "1", "device_secret": secret }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    let (history, _) = p
        .session_read(
            &p.base,
            "mobile",
            again["token"].as_str().expect("token"),
            "",
            2,
        )
        .await;
    assert_eq!(history[0]["text"], "my address is 1 Main St");

    // Registered before this change (a row without a secret): claims one now, once.
    p.env
        .db
        .tenant(tenant.id)
        .devices()
        .set_push_token("legacy-device", Some("fcm-old"))
        .await
        .expect("legacy row");
    let (status, legacy) =
        mobile_session(&p, APP_KEY, json!({ "device_id": "legacy-device" })).await;
    assert_eq!(status, StatusCode::CREATED, "{legacy}");
    assert!(legacy["device_secret"].is_string(), "{legacy}");
    let (status, _) = mobile_session(&p, APP_KEY, json!({ "device_id": "legacy-device" })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    p.stop().await;
}
