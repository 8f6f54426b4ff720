//! Security: widget and mobile sessions end on every replica within a second of the four
//! events that revoke them, and a session opened afterwards works.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::testkit::eventually;
use tokio::time::Instant;

use crate::support::Platform;

/// How soon every replica must refuse a revoked session.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

/// A quick look (no wait) at the session's conversation: 200/204 while it stands.
async fn look(p: &Platform, base: &str, channel: &str, token: &str) -> (StatusCode, Value) {
    p.session_poll(base, channel, token, "", 0).await
}

/// Asserts the session works on `base` now and is refused there (401 `session_revoked`)
/// within [`REVOCATION_BOUND`] of `revoke` returning.
async fn revoked_within_bound<F, Fut>(
    p: &Platform,
    base: &str,
    channel: &str,
    token: &str,
    what: &str,
    revoke: F,
) where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let (status, body) = look(p, base, channel, token).await;
    assert!(
        status.is_success(),
        "{what}: the session works before: {status} {body}"
    );
    revoke().await;
    let revoked_at = Instant::now();
    let body = eventually(REVOCATION_BOUND, what, || async {
        let (status, body) = look(p, base, channel, token).await;
        (status == StatusCode::UNAUTHORIZED).then_some(body)
    })
    .await;
    assert_eq!(body["error"]["code"], "session_revoked", "{what}: {body}");
    eprintln!(
        "{what}: refused on the other replica after {:?}",
        revoked_at.elapsed()
    );
}

#[tokio::test]
async fn sessions_end_on_every_replica_within_a_second_of_each_revocation() {
    let p = Platform::start().await;
    let other = p.another_ingress().await;
    let origin = "https://shop.example";
    let widget_session = |slug: String| {
        let p = &p;
        async move {
            let (status, s) = p
                .widget_session(&p.base, origin, json!({ "client": slug }))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{s}");
            s["token"].as_str().expect("token").to_owned()
        }
    };
    let admin = |method: Method, path: String, body: Option<Value>| {
        let p = &p;
        async move {
            let (status, answer) = p.admin(method, &path, body).await;
            assert!(status.is_success(), "{path}: {status} {answer}");
            answer
        }
    };

    // 1. The origin is removed from the widget account's allowed_origins.
    let shop = p.widget_tenant("shop", origin).await;
    let token = widget_session(shop.slug.clone()).await;
    let accounts = admin(
        Method::GET,
        format!("/admin/v1/clients/{}/channels", shop.id),
        None,
    )
    .await;
    let account = accounts[0]["id"].as_u64().expect("account id");
    revoked_within_bound(&p, &other, "widget", &token, "origin removed", || async {
        admin(
            Method::PATCH,
            format!("/admin/v1/clients/{}/channels/{account}", shop.id),
            Some(json!({ "settings": { "allowed_origins": ["https://new-shop.example"] } })),
        )
        .await;
    })
    .await;
    let (status, _) = p
        .widget_session(&p.base, origin, json!({ "client": shop.slug }))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the removed origin opens no session"
    );

    // 2. The mobile channel account is deleted.
    let app = p.tenant("app").await;
    let created = admin(
        Method::POST,
        format!("/admin/v1/clients/{}/channels", app.id),
        Some(json!({ "channel": "mobile", "external_account_id": "app-key-revoked" })),
    )
    .await;
    let opened = p
        .http
        .post(format!("{}/mobile/v1/sessions", p.base))
        .header("x-app-key", "app-key-revoked")
        .json(&json!({ "device_id": "device-1" }))
        .send()
        .await
        .expect("mobile session");
    assert_eq!(opened.status(), StatusCode::CREATED);
    let mobile: Value = opened.json().await.expect("json");
    let mobile_token = mobile["token"].as_str().expect("token");
    let account = created["id"].as_u64().expect("id");
    revoked_within_bound(
        &p,
        &other,
        "mobile",
        mobile_token,
        "account deleted",
        || async {
            admin(
                Method::DELETE,
                format!("/admin/v1/clients/{}/channels/{account}", app.id),
                None,
            )
            .await;
        },
    )
    .await;

    // 3. The tenant is suspended; no new session either.
    let suspended = p.widget_tenant("suspended", origin).await;
    let token = widget_session(suspended.slug.clone()).await;
    revoked_within_bound(&p, &other, "widget", &token, "tenant suspended", || async {
        admin(
            Method::PATCH,
            format!("/admin/v1/clients/{}", suspended.id),
            Some(json!({ "status": "suspended" })),
        )
        .await;
    })
    .await;
    let (status, body) = p
        .widget_session(&p.base, origin, json!({ "client": suspended.slug }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "client_inactive");

    // 4. The operator revokes every session of the tenant; a new one works.
    let revoked = p.widget_tenant("revoked", origin).await;
    let token = widget_session(revoked.slug.clone()).await;
    let bystander = p.widget_tenant("bystander", origin).await;
    let bystander_token = widget_session(bystander.slug.clone()).await;
    revoked_within_bound(&p, &other, "widget", &token, "sessions revoked", || async {
        let answer = admin(
            Method::POST,
            format!("/admin/v1/clients/{}/sessions/revoke", revoked.id),
            None,
        )
        .await;
        assert!(answer["sessions_revoked_at"].is_string(), "{answer}");
    })
    .await;
    let (status, _) = look(&p, &other, "widget", &bystander_token).await;
    assert!(
        status.is_success(),
        "another tenant's session is untouched: {status}"
    );
    let fresh = widget_session(revoked.slug.clone()).await;
    let (status, body) = p
        .session_send(&other, "widget", &fresh, json!({ "text": "hello again" }))
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "a session opened afterwards works: {body}"
    );
    p.stop().await;
}
