//! The WhatsApp webhook end to end: handshake, signatures over raw bytes, routing a
//! batch across tenants, Meta's concurrent retries as one turn, unroutable payloads kept,
//! tenants with their own Meta app, and 503 while the broker cannot confirm.

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::ids::Channel;
use shared::testkit::eventually;

use crate::support::{Method, Platform, WAIT};

const SECRET: &str = "platform-app-secret";
const VERIFY: &str = "platform-verify-token";

fn settings() -> [(&'static str, &'static str); 2] {
    [
        ("CHATFLEET__WHATSAPP__APP_SECRET", SECRET),
        ("CHATFLEET__WHATSAPP__VERIFY_TOKEN", VERIFY),
    ]
}

fn message(wamid: &str, from: &str, text: &str) -> Value {
    json!({ "from": from, "id": wamid, "timestamp": "1750000000", "type": "text", "text": { "body": text } })
}

fn change(phone_number_id: &str, messages: Vec<Value>) -> Value {
    let contacts: Vec<Value> = messages
        .iter()
        .map(|m| json!({ "profile": { "name": "User" }, "wa_id": m["from"] }))
        .collect();
    json!({ "field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550000000", "phone_number_id": phone_number_id },
        "contacts": contacts, "messages": messages } })
}

fn webhook(changes: Vec<Value>) -> String {
    json!({ "object": "whatsapp_business_account", "entry": [{ "id": "1", "changes": changes }] })
        .to_string()
}

async fn post(p: &Platform, path: &str, body: &str, signature: Option<String>) -> StatusCode {
    let mut request = p
        .http
        .post(format!("{}{path}", p.base))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(sig) = signature {
        request = request.header("x-hub-signature-256", sig);
    }
    request.send().await.expect("webhook sent").status()
}

async fn register(p: &Platform, client: u64, number: &str, credentials: Value) {
    let (s, b) = p
        .admin(Method::POST, &format!("/admin/v1/clients/{client}/channels"),
            Some(json!({ "channel": "whatsapp", "external_account_id": number, "credentials": credentials })))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_signatures() {
    let p = Platform::start_with(&settings(), 1).await;
    let get = |q: String| {
        let http = p.http.clone();
        let url = format!("{}/whatsapp/webhook?{q}", p.base);
        async move { http.get(url).send().await.expect("get") }
    };
    let ok = get(format!(
        "hub.mode=subscribe&hub.verify_token={VERIFY}&hub.challenge=1158201444"
    ))
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.text().await.expect("body"), "1158201444");
    let refused = get("hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1".into()).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let body = webhook(vec![change(
        "999",
        vec![message("wamid.sig", "15551230000", "hi")],
    )]);
    assert_eq!(
        post(&p, "/whatsapp/webhook", &body, None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(
            &p,
            "/whatsapp/webhook",
            &body,
            Some(ingress::sign_whatsapp_webhook("wrong", body.as_bytes()))
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    let reserialised =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&body).expect("json"))
            .expect("json");
    assert_eq!(
        post(
            &p,
            "/whatsapp/webhook",
            &reserialised,
            Some(ingress::sign_whatsapp_webhook(SECRET, body.as_bytes()))
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "a signature is over the raw bytes, not the JSON"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_routed_to_its_tenants_and_retries_are_one_turn() {
    let p = Platform::start_with(&settings(), 1).await;
    let a = p.tenant("wa-a").await;
    let b = p.tenant("wa-b").await;
    register(&p, a.id.get(), "111", json!({ "access_token": "token-a" })).await;
    register(&p, b.id.get(), "222", json!({ "access_token": "token-b" })).await;

    let batch = webhook(vec![
        change(
            "111",
            vec![
                message("wamid.a1", "15550000001", "first of a"),
                message("wamid.a2", "15550000002", "second of a"),
            ],
        ),
        change("222", vec![message("wamid.b1", "15550000003", "only of b")]),
    ]);
    let signed = ingress::sign_whatsapp_webhook(SECRET, batch.as_bytes());
    assert_eq!(
        post(&p, "/whatsapp/webhook", &batch, Some(signed.clone())).await,
        StatusCode::OK
    );
    p.wait_for_llm_requests(3).await;
    let conversations = p.env.db.conversations();
    for (t, user) in [
        (&a, "15550000001"),
        (&a, "15550000002"),
        (&b, "15550000003"),
    ] {
        assert!(
            conversations
                .find(t.id, Channel::Whatsapp, user)
                .await
                .expect("find")
                .is_some(),
            "{user}"
        );
    }
    assert!(
        conversations
            .find(a.id, Channel::Whatsapp, "15550000003")
            .await
            .expect("find")
            .is_none()
    );
    assert!(
        conversations
            .find(b.id, Channel::Whatsapp, "15550000001")
            .await
            .expect("find")
            .is_none()
    );

    // Meta delivers the same webhook five times at once: still one turn each.
    let retries: Vec<_> = (0..5)
        .map(|_| {
            let (http, url, body, sig) = (
                p.http.clone(),
                format!("{}/whatsapp/webhook", p.base),
                batch.clone(),
                signed.clone(),
            );
            tokio::spawn(async move {
                http.post(url)
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", sig)
                    .body(body)
                    .send()
                    .await
                    .expect("retry sent")
                    .status()
            })
        })
        .collect();
    for retry in retries {
        assert_eq!(retry.await.expect("retry task"), StatusCode::OK);
    }
    // A new message after the retries, in one of those conversations, proves they were processed.
    let later = webhook(vec![change(
        "222",
        vec![message("wamid.b2", "15550000003", "later of b")],
    )]);
    assert_eq!(
        post(
            &p,
            "/whatsapp/webhook",
            &later,
            Some(ingress::sign_whatsapp_webhook(SECRET, later.as_bytes()))
        )
        .await,
        StatusCode::OK
    );
    p.wait_for_llm_requests(4).await;
    let conv = conversations
        .find(b.id, Channel::Whatsapp, "15550000003")
        .await
        .expect("find")
        .expect("conv");
    eventually(WAIT, "the later message answered", || async {
        let stored = p
            .env
            .db
            .messages()
            .in_conversation(b.id, conv, 50)
            .await
            .ok()?;
        (stored
            .iter()
            .filter(|m| m.role == shared::db::Role::Assistant)
            .count()
            == 2)
            .then_some(())
    })
    .await;
    assert_eq!(
        p.sim.requests().len(),
        4,
        "three turns and the later one; no retry answered twice"
    );
    let stored = p.stored(b.id, conv).await;
    assert_eq!(
        stored
            .iter()
            .filter(|m| m.role == shared::db::Role::User)
            .count(),
        2
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_payloads_are_kept_and_tenants_apps_stay_their_own() {
    let p = Platform::start_with(&settings(), 1).await;
    let a = p.tenant("wa-owner").await;
    let c = p.tenant("wa-own-app").await;
    register(&p, a.id.get(), "111", json!({ "access_token": "token-a" })).await;
    register(
        &p,
        c.id.get(),
        "333",
        json!({ "access_token": "token-c", "app_secret": "c-secret", "verify_token": "c-verify" }),
    )
    .await;
    let dead = p.env.broker.topology().dead_queue();
    let dead_count = || async {
        p.env
            .broker
            .queue_stats(&dead)
            .await
            .expect("stats")
            .messages
    };

    let unknown = webhook(vec![change(
        "999",
        vec![message("wamid.x", "15550000009", "who am I talking to")],
    )]);
    assert_eq!(
        post(
            &p,
            "/whatsapp/webhook",
            &unknown,
            Some(ingress::sign_whatsapp_webhook(SECRET, unknown.as_bytes()))
        )
        .await,
        StatusCode::OK
    );
    eventually(
        WAIT,
        "the unroutable payload in the dead-letter queue",
        || async { (dead_count().await == 1).then_some(()) },
    )
    .await;

    // The tenant's own app: its handshake, its secret, its numbers only.
    let ok = p.http.get(format!("{}/whatsapp/webhook/wa-own-app?hub.mode=subscribe&hub.verify_token=c-verify&hub.challenge=42", p.base))
        .send().await.expect("get");
    assert_eq!(
        (ok.status(), ok.text().await.expect("body")),
        (StatusCode::OK, "42".to_owned())
    );
    let own = webhook(vec![change(
        "333",
        vec![message("wamid.c1", "15550000010", "hello c")],
    )]);
    assert_eq!(
        post(
            &p,
            "/whatsapp/webhook/wa-own-app",
            &own,
            Some(ingress::sign_whatsapp_webhook(SECRET, own.as_bytes()))
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "the platform secret is not the tenant's"
    );
    assert_eq!(
        post(
            &p,
            "/whatsapp/webhook/wa-own-app",
            &own,
            Some(ingress::sign_whatsapp_webhook("c-secret", own.as_bytes()))
        )
        .await,
        StatusCode::OK
    );
    p.wait_for_llm_requests(1).await;
    // Signed by C's app but naming A's number: kept aside, never processed as A's.
    let forged = webhook(vec![change(
        "111",
        vec![message("wamid.f1", "15550000011", "pretend to be a")],
    )]);
    assert_eq!(
        post(
            &p,
            "/whatsapp/webhook/wa-own-app",
            &forged,
            Some(ingress::sign_whatsapp_webhook(
                "c-secret",
                forged.as_bytes()
            ))
        )
        .await,
        StatusCode::OK
    );
    eventually(
        WAIT,
        "the forged payload in the dead-letter queue",
        || async { (dead_count().await == 2).then_some(()) },
    )
    .await;
    assert!(
        p.env
            .db
            .conversations()
            .find(a.id, Channel::Whatsapp, "15550000011")
            .await
            .expect("find")
            .is_none()
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_batch_is_a_503_and_metas_retry_is_answered_once() {
    let p = Platform::start_with(&settings(), 1).await;
    let a = p.tenant("wa-retry").await;
    register(&p, a.id.get(), "111", json!({ "access_token": "token-a" })).await;
    let body = webhook(vec![change(
        "111",
        vec![message("wamid.r1", "15550000020", "are you up?")],
    )]);
    let signed = ingress::sign_whatsapp_webhook(SECRET, body.as_bytes());
    p.env
        .broker
        .delete_topology()
        .await
        .expect("delete topology");
    assert_eq!(
        post(&p, "/whatsapp/webhook", &body, Some(signed.clone())).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    p.env.broker.declare_topology().await.expect("redeclare");
    assert_eq!(
        post(&p, "/whatsapp/webhook", &body, Some(signed)).await,
        StatusCode::OK
    );
    p.wait_for_llm_requests(1).await;
    let conv = p
        .env
        .db
        .conversations()
        .find(a.id, Channel::Whatsapp, "15550000020")
        .await
        .expect("find")
        .expect("conv");
    eventually(WAIT, "the answer", || async {
        let stored = p
            .env
            .db
            .messages()
            .in_conversation(a.id, conv, 10)
            .await
            .ok()?;
        (stored.len() == 2).then_some(())
    })
    .await;
    p.stop().await;
}
