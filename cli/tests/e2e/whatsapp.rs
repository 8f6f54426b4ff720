//! The WhatsApp webhook end to end: handshake, signatures over raw bytes, routing a
//! batch across tenants, Meta's concurrent retries as one turn, unroutable payloads kept,
//! tenants with their own Meta app, and 503 while the broker cannot confirm.

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::db::DeliveryStatus;
use shared::ids::{Channel, ClientId, ConversationId};
use shared::testkit::eventually;

use crate::support::{Method, Platform, WAIT, chatfleet, next_event};

const SECRET: &str = "platform-app-secret";
const VERIFY: &str = "platform-verify-token";

fn settings() -> [(&'static str, &'static str); 2] {
    [
        ("CHATFLEET__WHATSAPP__APP_SECRET", SECRET),
        ("CHATFLEET__WHATSAPP__VERIFY_TOKEN", VERIFY),
    ]
}

pub(crate) fn message(wamid: &str, from: &str, text: &str) -> Value {
    json!({ "from": from, "id": wamid, "timestamp": "1750000000", "type": "text", "text": { "body": text } })
}

pub(crate) fn change(phone_number_id: &str, messages: Vec<Value>) -> Value {
    let contacts: Vec<Value> = messages
        .iter()
        .map(|m| json!({ "profile": { "name": "User" }, "wa_id": m["from"] }))
        .collect();
    json!({ "field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550000000", "phone_number_id": phone_number_id },
        "contacts": contacts, "messages": messages } })
}

pub(crate) fn webhook(changes: Vec<Value>) -> String {
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
    // A body over `whatsapp.max_body_bytes` (1 MiB) is 413 before anything else, even
    // validly signed.
    let huge = format!("{{\"object\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    assert_eq!(
        post(
            &p,
            "/whatsapp/webhook",
            &huge,
            Some(ingress::sign_whatsapp_webhook(SECRET, huge.as_bytes()))
        )
        .await,
        StatusCode::PAYLOAD_TOO_LARGE
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
    for (t, user) in [
        (&a, "15550000001"),
        (&a, "15550000002"),
        (&b, "15550000003"),
    ] {
        assert!(
            p.env
                .db
                .tenant(t.id)
                .conversations()
                .find(Channel::Whatsapp, user)
                .await
                .expect("find")
                .is_some(),
            "{user}"
        );
    }
    assert!(
        p.env
            .db
            .tenant(a.id)
            .conversations()
            .find(Channel::Whatsapp, "15550000003")
            .await
            .expect("find")
            .is_none()
    );
    assert!(
        p.env
            .db
            .tenant(b.id)
            .conversations()
            .find(Channel::Whatsapp, "15550000001")
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
    assert_eq!(signed_post(&p, later.clone()).await, StatusCode::OK);
    p.wait_for_llm_requests(4).await;
    let conv = p
        .env
        .db
        .tenant(b.id)
        .conversations()
        .find(Channel::Whatsapp, "15550000003")
        .await
        .expect("find")
        .expect("conv");
    eventually(WAIT, "the later message answered", || async {
        let stored = p
            .env
            .db
            .tenant(b.id)
            .messages()
            .in_conversation(conv, 50)
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
    assert_eq!(signed_post(&p, unknown.clone()).await, StatusCode::OK);
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
            .tenant(a.id)
            .conversations()
            .find(Channel::Whatsapp, "15550000011")
            .await
            .expect("find")
            .is_none()
    );

    // A's number is routed (and cached) ... until the account is removed: from then on
    // it is unroutable on every replica, whatever was cached.
    let routed = webhook(vec![change(
        "111",
        vec![message("wamid.a9", "15550000012", "still a")],
    )]);
    assert_eq!(signed_post(&p, routed.clone()).await, StatusCode::OK);
    p.wait_for_llm_requests(2).await;
    let (_, accounts) = p
        .admin(
            Method::GET,
            &format!("/admin/v1/clients/{}/channels", a.id),
            None,
        )
        .await;
    let account = accounts[0]["id"].as_u64().expect("account id");
    let (s, _) = p
        .admin(
            Method::DELETE,
            &format!("/admin/v1/clients/{}/channels/{account}", a.id),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let after = webhook(vec![change(
        "111",
        vec![message("wamid.a10", "15550000012", "gone?")],
    )]);
    assert_eq!(signed_post(&p, after.clone()).await, StatusCode::OK);
    // Counted by reason: the reply to "still a" may be dead-lettered too, when its
    // deliverer finds the account already gone.
    eventually(
        WAIT,
        "the removed number's payload in the dead-letter queue",
        || async {
            let (ok, out) = chatfleet(
                &p,
                &[
                    "dlq",
                    "list",
                    "--json",
                    "--reason",
                    "unknown phone_number_id",
                ],
            )
            .await;
            (ok && out.lines().count() == 2).then_some(())
        },
    )
    .await;
    p.stop().await;
}

/// A tenant's own Meta app is read once and then taken from the process's cache: a
/// webhook's signature is checked before any database work (shown here by removing the
/// account behind the cache's back: its secret still verifies), until an account change
/// is announced, which drops the cached app everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_meta_app_is_cached_until_an_account_changes() {
    let p = Platform::start_with(&settings(), 1).await;
    let c = p.tenant("wa-cached").await;
    register(
        &p,
        c.id.get(),
        "444",
        json!({ "access_token": "t", "app_secret": "cached-secret", "verify_token": "v" }),
    )
    .await;
    let empty = webhook(vec![]);
    let signed = || {
        post(
            &p,
            "/whatsapp/webhook/wa-cached",
            &empty,
            Some(ingress::sign_whatsapp_webhook(
                "cached-secret",
                empty.as_bytes(),
            )),
        )
    };
    assert_eq!(signed().await, StatusCode::OK, "read, then cached");
    let accounts = p.env.db.tenant(c.id).channel_accounts();
    let id = accounts.list().await.expect("accounts")[0].id;
    assert!(accounts.delete(id).await.expect("removed unannounced"));
    assert_eq!(signed().await, StatusCode::OK, "the cached secret");
    register(&p, c.id.get(), "445", json!({ "access_token": "t2" })).await;
    assert_eq!(
        signed().await,
        StatusCode::UNAUTHORIZED,
        "an announced account change drops the cached app"
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
        .tenant(a.id)
        .conversations()
        .find(Channel::Whatsapp, "15550000020")
        .await
        .expect("find")
        .expect("conv");
    eventually(WAIT, "the answer", || async {
        let stored = p
            .env
            .db
            .tenant(a.id)
            .messages()
            .in_conversation(conv, 10)
            .await
            .ok()?;
        (stored.len() == 2).then_some(())
    })
    .await;
    p.stop().await;
}

/// A local stand-in for Meta's Graph API: records every send and answers with the real
/// shapes, including errors by recipient; serves media (`GET /{version}/{media_id}`,
/// then the file at the URL it gives) that a test put there.
pub(crate) mod graph {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde_json::{Value, json};

    /// A number whose read/typing calls hang a minute, then fail.
    pub const HANGING_READS: &str = "777";
    /// A recipient whose 24-hour window is closed (error 131047).
    pub const CLOSED_WINDOW: &str = "15550009999";
    /// A recipient that hits the throughput limit (130429) once.
    pub const THROTTLED_ONCE: &str = "15550008888";
    /// A recipient Graph refuses for good (error 100: the reply is dead-lettered).
    pub const REFUSED: &str = "15550006666";

    #[derive(Debug, Clone)]
    pub struct Sent {
        pub at: std::time::Instant,
        pub phone_number_id: String,
        pub authorization: String,
        pub body: Value,
    }

    /// A media file: its bytes, type and the `file_size` Graph declares for it.
    #[derive(Debug, Clone)]
    pub struct Media {
        pub bytes: Vec<u8>,
        pub mime: String,
        pub declared_size: u64,
    }

    /// A media id whose URL Graph gives on another host (which must be refused).
    pub const OFF_HOST: &str = "m-off-host";

    #[derive(Clone, Default)]
    pub struct Graph {
        pub sent: Arc<Mutex<Vec<Sent>>>,
        /// `status: read` calls (read receipts and typing indicators).
        pub reads: Arc<Mutex<Vec<Sent>>>,
        media: Arc<Mutex<HashMap<String, Media>>>,
        /// The media ids whose files were downloaded (with a bearer token), in order.
        downloaded: Arc<Mutex<Vec<String>>>,
        base: Arc<Mutex<String>>,
    }

    impl Graph {
        pub async fn start() -> (Self, String) {
            let graph = Self::default();
            let app = Router::new()
                .route("/{version}/{phone}/messages", post(messages))
                .route("/{version}/{media_id}", get(media_info))
                .route("/files/{media_id}", get(media_file))
                .with_state(graph.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            *graph.base.lock().expect("lock") = url.clone();
            tokio::spawn(async move { axum::serve(listener, app).await.expect("graph double") });
            (graph, url)
        }

        /// Serves `media` under `id` (as Graph declares its size: `declared_size`).
        pub fn add_media(&self, id: &str, media: Media) {
            self.media
                .lock()
                .expect("lock")
                .insert(id.to_owned(), media);
        }

        pub fn downloads(&self) -> usize {
            self.downloaded.lock().expect("lock").len()
        }

        pub fn downloaded(&self, media_id: &str) -> bool {
            self.downloaded
                .lock()
                .expect("lock")
                .iter()
                .any(|d| d == media_id)
        }

        pub fn sent(&self) -> Vec<Sent> {
            self.sent.lock().expect("lock").clone()
        }

        pub fn reads(&self) -> Vec<Sent> {
            self.reads.lock().expect("lock").clone()
        }

        pub fn sent_to(&self, to: &str) -> Vec<Sent> {
            self.sent()
                .into_iter()
                .filter(|s| s.body["to"] == to)
                .collect()
        }
    }

    /// Graph's error for an unknown (or expired) media id.
    fn no_media() -> Response {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": {
                "message": "Unsupported get request. Object with ID does not exist",
                "type": "GraphMethodException", "code": 100, "error_subcode": 33,
                "fbtrace_id": "A3hJ8c3lq9-nX" } })),
        )
            .into_response()
    }

    async fn media_info(
        State(graph): State<Graph>,
        Path((_version, media_id)): Path<(String, String)>,
        headers: HeaderMap,
    ) -> Response {
        if !headers.contains_key("authorization") {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let Some(media) = graph.media.lock().expect("lock").get(&media_id).cloned() else {
            return no_media();
        };
        let mut base = graph.base.lock().expect("lock").clone();
        if media_id == OFF_HOST {
            base = base.replace("127.0.0.1", "localhost");
        }
        Json(json!({
            "messaging_product": "whatsapp",
            "url": format!("{base}/files/{media_id}"),
            "mime_type": media.mime,
            "sha256": "c0ffee",
            "file_size": media.declared_size,
            "id": media_id,
        }))
        .into_response()
    }

    async fn media_file(
        State(graph): State<Graph>,
        Path(media_id): Path<String>,
        headers: HeaderMap,
    ) -> Response {
        if !headers.contains_key("authorization") {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let Some(media) = graph.media.lock().expect("lock").get(&media_id).cloned() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        graph.downloaded.lock().expect("lock").push(media_id);
        ([("content-type", media.mime)], media.bytes).into_response()
    }

    async fn messages(
        State(graph): State<Graph>,
        Path((_version, phone)): Path<(String, String)>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if body["status"] == "read" {
            graph.reads.lock().expect("lock").push(Sent {
                at: std::time::Instant::now(),
                phone_number_id: phone.clone(),
                authorization,
                body,
            });
            if phone == HANGING_READS {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({ "error": { "message": "unavailable", "code": 2 } })),
                );
            }
            return (StatusCode::OK, Json(json!({ "success": true })));
        }
        let to = body["to"].as_str().unwrap_or("").to_owned();
        let body_type = body["type"].as_str().unwrap_or("").to_owned();
        let previous = graph.sent_to(&to).len();
        graph.sent.lock().expect("lock").push(Sent {
            at: std::time::Instant::now(),
            phone_number_id: phone,
            authorization,
            body,
        });
        let error = |code: i64, message: &str| {
            (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": {
                "message": message, "type": "OAuthException", "code": code,
                "error_data": { "messaging_product": "whatsapp", "details": message },
                "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam" } })),
            )
        };
        // Outside the window only templates go.
        if to == CLOSED_WINDOW && body_type != "template" {
            return error(131_047, "Re-engagement message");
        }
        if to == THROTTLED_ONCE && previous == 0 {
            return error(130_429, "Rate limit hit");
        }
        if to == REFUSED {
            return error(100, "Invalid parameter");
        }
        (
            StatusCode::OK,
            Json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": to, "wa_id": to }],
            "messages": [{ "id": format!("wamid.out-{to}-{}", previous + 1) }] })),
        )
    }
}

/// A platform whose WhatsApp deliverer talks to a Graph double (with `extra` settings),
/// and a tenant `slug` owning the number `number` with the access token `EAAG-<slug>`.
pub(crate) async fn graph_platform(
    slug: &str,
    number: &str,
    extra: &[(&str, &str)],
) -> (graph::Graph, Platform, shared::testkit::TestTenant) {
    let (graph, graph_url) = graph::Graph::start().await;
    let media_host = graph_url.trim_start_matches("http://").to_owned();
    let mut vars = settings().to_vec();
    vars.push(("CHATFLEET__WHATSAPP__GRAPH_BASE_URL", graph_url.as_str()));
    vars.push(("CHATFLEET__WHATSAPP__MEDIA_HOST", media_host.as_str()));
    vars.extend_from_slice(extra);
    let p = Platform::start_with(&vars, 1).await;
    let t = p.tenant(slug).await;
    register(
        &p,
        t.id.get(),
        number,
        json!({ "access_token": format!("EAAG-{slug}") }),
    )
    .await;
    (graph, p, t)
}

pub(crate) async fn signed_post(p: &Platform, body: String) -> StatusCode {
    let signature = ingress::sign_whatsapp_webhook(SECRET, body.as_bytes());
    post(p, "/whatsapp/webhook", &body, Some(signature)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_sent_through_the_graph_api_once_split_and_by_error_code() {
    let (graph, p, t) = graph_platform("wa-out", "444", &[]).await;

    // A plain reply: the tenant's token, the documented body.
    let hello = webhook(vec![change(
        "444",
        vec![message("wamid.h1", "15550001111", "hello")],
    )]);
    assert_eq!(signed_post(&p, hello.clone()).await, StatusCode::OK);
    eventually(WAIT, "the reply at the Graph API", || async {
        (!graph.sent_to("15550001111").is_empty()).then_some(())
    })
    .await;
    let sent = graph.sent_to("15550001111");
    assert_eq!(sent[0].phone_number_id, "444");
    assert_eq!(sent[0].authorization, "Bearer EAAG-wa-out");
    assert_eq!(sent[0].body["messaging_product"], "whatsapp");
    assert_eq!(sent[0].body["type"], "text");
    assert!(
        sent[0].body["text"]["body"]
            .as_str()
            .unwrap_or("")
            .ends_with("You said: hello")
    );

    // Statuses move the stored reply forward only, and are announced.
    let conv = p
        .env
        .db
        .tenant(t.id)
        .conversations()
        .find(Channel::Whatsapp, "15550001111")
        .await
        .expect("find")
        .expect("conv");
    eventually(WAIT, "the reply recorded as sent", || async {
        let stored = p
            .env
            .db
            .tenant(t.id)
            .messages()
            .in_conversation(conv, 10)
            .await
            .ok()?;
        stored
            .iter()
            .any(|m| m.delivery_status == Some(DeliveryStatus::Sent))
            .then_some(())
    })
    .await;
    let mut events = p.events(&format!("delivery.*.{}", t.id)).await;
    for status in ["delivered", "sent", "read"] {
        let body = json!({ "object": "whatsapp_business_account", "entry": [{ "id": "1", "changes": [{ "field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": { "display_phone_number": "1", "phone_number_id": "444" },
            "statuses": [{ "id": "wamid.out-15550001111-1", "status": status, "timestamp": "1750263773", "recipient_id": "15550001111" }] } }] }] });
        assert_eq!(signed_post(&p, body.to_string()).await, StatusCode::OK);
    }
    let mut announced = Vec::new();
    while announced.len() < 2 {
        announced.push(next_event(&mut events).await.status.unwrap_or_default());
    }
    assert_eq!(
        announced,
        ["delivered", "read"],
        "an out-of-order 'sent' changes nothing"
    );
    let conv = p
        .env
        .db
        .tenant(t.id)
        .conversations()
        .find(Channel::Whatsapp, "15550001111")
        .await
        .expect("find")
        .expect("conv");
    let stored = p.stored(t.id, conv).await;
    assert!(
        stored
            .iter()
            .any(|m| m.delivery_status == Some(DeliveryStatus::Read))
    );

    // Meta retries the webhook after we answered: the stored reply is republished and
    // the deliverer drops it; a later message shows the retry was processed.
    assert_eq!(signed_post(&p, hello).await, StatusCode::OK);
    let next = webhook(vec![change(
        "444",
        vec![message("wamid.h2", "15550001111", "and now?")],
    )]);
    assert_eq!(signed_post(&p, next).await, StatusCode::OK);
    eventually(WAIT, "the second reply", || async {
        (graph.sent_to("15550001111").len() >= 2).then_some(())
    })
    .await;
    let sent = graph.sent_to("15550001111");
    assert_eq!(sent.len(), 2, "each reply sent once");
    assert!(
        sent[1].body["text"]["body"]
            .as_str()
            .unwrap_or("")
            .ends_with("You said: and now?")
    );

    // A long reply goes out in order, in parts of at most 4096 characters.
    let long: String = (0..12)
        .map(|i| format!("Paragraph {i}. {}\n\n", "word ".repeat(150)))
        .collect();
    let big = webhook(vec![change(
        "444",
        vec![message("wamid.long", "15550002222", &long)],
    )]);
    assert_eq!(signed_post(&p, big).await, StatusCode::OK);
    eventually(WAIT, "the long reply", || async {
        (graph.sent_to("15550002222").len() >= 3).then_some(())
    })
    .await;
    let parts: Vec<String> = graph
        .sent_to("15550002222")
        .iter()
        .map(|s| s.body["text"]["body"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(parts.iter().all(|p| p.chars().count() <= 4096));
    let joined = parts.join(" ");
    let order: Vec<usize> = (0..12)
        .map(|i| {
            joined
                .find(&format!("Paragraph {i}."))
                .expect("every paragraph sent")
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "parts in order");

    // 131047: held for the window (not failed, not retried). 130429: retried, then sent.
    let closed = webhook(vec![change(
        "444",
        vec![message("wamid.c1", graph::CLOSED_WINDOW, "late reply")],
    )]);
    let throttled = webhook(vec![change(
        "444",
        vec![message("wamid.t1", graph::THROTTLED_ONCE, "busy?")],
    )]);
    assert_eq!(signed_post(&p, closed).await, StatusCode::OK);
    assert_eq!(signed_post(&p, throttled).await, StatusCode::OK);
    eventually(WAIT, "the throttled reply to get through", || async {
        (graph.sent_to(graph::THROTTLED_ONCE).len() == 2).then_some(())
    })
    .await;
    let conv = p
        .env
        .db
        .tenant(t.id)
        .conversations()
        .find(Channel::Whatsapp, graph::CLOSED_WINDOW)
        .await
        .expect("find")
        .expect("conv");
    let held = eventually(WAIT, "the closed-window reply held", || async {
        let stored = p
            .env
            .db
            .tenant(t.id)
            .messages()
            .in_conversation(conv, 10)
            .await
            .ok()?;
        stored
            .into_iter()
            .find(|m| m.delivery_status == Some(DeliveryStatus::AwaitingWindow))
    })
    .await;
    assert_eq!(held.role, shared::db::Role::Assistant);
    assert_eq!(
        graph.sent_to(graph::CLOSED_WINDOW).len(),
        1,
        "no retry of a closed window"
    );
    let conv = p
        .env
        .db
        .tenant(t.id)
        .conversations()
        .find(Channel::Whatsapp, graph::THROTTLED_ONCE)
        .await
        .expect("find")
        .expect("conv");
    let stored = p.stored(t.id, conv).await;
    assert!(
        stored
            .iter()
            .any(|m| m.delivery_status == Some(DeliveryStatus::Sent))
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbers_send_rate_is_limited() {
    let (graph, p, _) = graph_platform(
        "wa-rate",
        "555",
        &[("CHATFLEET__WHATSAPP__MESSAGES_PER_SECOND", "2")],
    )
    .await;
    let users: Vec<String> = (0..6).map(|i| format!("1555000070{i}")).collect();
    let batch = webhook(vec![change(
        "555",
        users
            .iter()
            .enumerate()
            .map(|(i, u)| message(&format!("wamid.rate{i}"), u, "hi"))
            .collect(),
    )]);
    assert_eq!(signed_post(&p, batch).await, StatusCode::OK);
    eventually(WAIT, "six replies sent", || async {
        (graph.sent().len() == 6).then_some(())
    })
    .await;
    let times: Vec<std::time::Instant> = graph.sent().iter().map(|s| s.at).collect();
    let span = times
        .iter()
        .max()
        .expect("max")
        .duration_since(*times.iter().min().expect("min"));
    // Two at once, then two a second: the last four need at least 1.5 s.
    assert!(
        span >= std::time::Duration::from_millis(1500),
        "six sends within {span:?}"
    );
    p.stop().await;
}

/// When a turn starts, the user's message is marked read with a typing indicator, once,
/// with the tenant's token; a tenant can switch it off; a hanging or failing call never
/// holds the reply back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_marks_the_message_read_and_shows_typing_once() {
    let (graph, p, t) = graph_platform("wa-typing", "555", &[]).await;
    let hello = webhook(vec![change(
        "555",
        vec![message("wamid.t1", "15550002222", "hello")],
    )]);
    assert_eq!(signed_post(&p, hello).await, StatusCode::OK);
    eventually(WAIT, "the reply at the Graph API", || async {
        (!graph.sent_to("15550002222").is_empty()).then_some(())
    })
    .await;
    let reads = eventually(WAIT, "the read and typing call", || async {
        let reads = graph.reads();
        (!reads.is_empty()).then_some(reads)
    })
    .await;
    assert_eq!(reads.len(), 1, "once per turn: {reads:?}");
    assert_eq!(reads[0].phone_number_id, "555");
    assert_eq!(reads[0].authorization, "Bearer EAAG-wa-typing");
    assert_eq!(
        reads[0].body,
        json!({ "messaging_product": "whatsapp", "status": "read", "message_id": "wamid.t1",
                "typing_indicator": { "type": "text" } })
    );

    // Switched off: the next turn makes no such call.
    let (status, _) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", t.id),
            Some(json!({ "whatsapp_typing_indicator": false })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let next = webhook(vec![change(
        "555",
        vec![message("wamid.t2", "15550002222", "again")],
    )]);
    assert_eq!(signed_post(&p, next).await, StatusCode::OK);
    eventually(WAIT, "the second reply", || async {
        (graph.sent_to("15550002222").len() >= 2).then_some(())
    })
    .await;
    assert_eq!(graph.reads().len(), 1, "no typing call once switched off");

    // A number whose read calls hang: its reply goes out regardless.
    let hanging = p.tenant("wa-hanging").await;
    register(
        &p,
        hanging.id.get(),
        graph::HANGING_READS,
        json!({ "access_token": "EAAG-h" }),
    )
    .await;
    let slow = webhook(vec![change(
        graph::HANGING_READS,
        vec![message("wamid.h9", "15550003333", "are you there")],
    )]);
    assert_eq!(signed_post(&p, slow).await, StatusCode::OK);
    eventually(WAIT, "the reply, the typing call still hanging", || async {
        (!graph.sent_to("15550003333").is_empty()).then_some(())
    })
    .await;
    assert!(
        graph
            .reads()
            .iter()
            .any(|r| r.phone_number_id == graph::HANGING_READS)
    );
    p.stop().await;
}

/// Choices the model offers (`offer_choices`) go out as WhatsApp reply buttons (up to
/// three short ones) or a list (up to ten), and a tap comes back as the choice's words.
#[tokio::test]
async fn choices_go_out_as_reply_buttons_or_a_list() {
    let (graph, p, t) = graph_platform("wa-choices", "446", &[]).await;
    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", t.id),
            Some(json!({ "builtin_tools": ["offer_choices"] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let user = "15550004444";
    for (n, (ask, shape)) in [
        (
            r#"TOOL offer_choices {"text": "Which size?", "choices": ["Small", "Large"]}"#,
            "button",
        ),
        (
            r#"TOOL offer_choices {"text": "Which day?", "choices": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]}"#,
            "list",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let body = webhook(vec![change(
            "446",
            vec![message(&format!("wamid.ch{n}"), user, ask)],
        )]);
        assert_eq!(signed_post(&p, body).await, StatusCode::OK);
        let sent = eventually(WAIT, "the interactive reply", || async {
            let sent = graph.sent_to(user);
            (sent.len() > n).then(|| sent[n].body.clone())
        })
        .await;
        assert_eq!(sent["type"], "interactive", "{sent}");
        assert_eq!(sent["interactive"]["type"], shape, "{sent}");
        assert!(
            sent["interactive"]["body"]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("Which")),
            "{sent}"
        );
        if shape == "button" {
            assert_eq!(
                sent["interactive"]["action"]["buttons"][1]["reply"]["title"],
                "Large"
            );
        } else {
            let rows = &sent["interactive"]["action"]["sections"][0]["rows"];
            assert_eq!(rows.as_array().map(Vec::len), Some(5), "{sent}");
        }
    }
    // A tap on a button is the user saying its title.
    let tap = json!({ "from": user, "id": "wamid.tap", "timestamp": "1750000001", "type": "interactive",
        "interactive": { "type": "button_reply", "button_reply": { "id": "choice-2", "title": "Large" } } });
    assert_eq!(
        signed_post(&p, webhook(vec![change("446", vec![tap])])).await,
        StatusCode::OK
    );
    let answer = eventually(WAIT, "the answer to the tap", || async {
        let sent = graph.sent_to(user);
        (sent.len() > 2).then(|| sent[2].body.clone())
    })
    .await;
    assert!(
        answer["text"]["body"]
            .as_str()
            .is_some_and(|t| t.ends_with("You said: Large")),
        "{answer}"
    );
    p.stop().await;
}

/// The user says hello to `number` and gets the answer; then the window closes. The
/// user's conversation.
async fn answered_then_closed(
    p: &Platform,
    graph: &graph::Graph,
    client: ClientId,
    number: &str,
    user: &str,
) -> ConversationId {
    let hello = webhook(vec![change(
        number,
        vec![message(&format!("wamid.hello-{user}"), user, "hello")],
    )]);
    assert_eq!(signed_post(p, hello).await, StatusCode::OK);
    eventually(WAIT, "the first answer", || async {
        (graph.sent_to(user).len() == 1).then_some(())
    })
    .await;
    let conv = p.conversation_on(client, Channel::Whatsapp, user).await;
    close_window(p, client, conv).await;
    conv
}

/// Makes the user's last message 25 hours old (through the store), closing the window.
async fn close_window(p: &Platform, client: ClientId, conv: ConversationId) {
    let pool = sqlx::MySqlPool::connect(p.env.settings.database.url.expose())
        .await
        .expect("connect");
    sqlx::query(
        "UPDATE conversations SET user_last_at = NOW(6) - INTERVAL 25 HOUR \
         WHERE client_id = ? AND id = ?",
    )
    .bind(client.get())
    .bind(conv.get())
    .execute(&pool)
    .await
    .expect("the window closed");
    pool.close().await;
}

/// The texts and template names the Graph double got for `user`, in order.
fn sent_texts(graph: &graph::Graph, user: &str) -> Vec<String> {
    graph
        .sent_to(user)
        .iter()
        .map(|s| match s.body["type"].as_str() {
            Some("template") => format!(
                "template:{}",
                s.body["template"]["name"].as_str().unwrap_or("")
            ),
            _ => s.body["text"]["body"].as_str().unwrap_or("").to_owned(),
        })
        .collect()
}

/// WhatsApp's 24-hour window: past it, an agent's messages are held (the tenant's
/// re-engagement template goes once), shown as held in the conversation, and delivered
/// in order, once, before the answer when the user writes again; a template goes out
/// whatever the window.
#[tokio::test]
async fn the_24_hour_window_holds_messages_until_the_user_writes_again() {
    let (graph, p, t) = graph_platform("wa-window", "447", &[]).await;
    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", t.id),
            Some(json!({ "whatsapp_reengagement_template": { "name": "come_back", "language": "en" } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let user = "15550005555";
    let conv = answered_then_closed(&p, &graph, t.id, "447", user).await;

    let agent = |text: &'static str| {
        let p = &p;
        async move {
            let (status, body) = p
                .admin(
                    Method::POST,
                    &format!(
                        "/admin/v1/clients/{}/conversations/{}/messages",
                        t.id,
                        conv.get()
                    ),
                    Some(json!({ "text": text })),
                )
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        }
    };
    let held_count = || async {
        p.stored(t.id, conv)
            .await
            .iter()
            .filter(|m| m.delivery_status == Some(DeliveryStatus::AwaitingWindow))
            .count()
    };
    agent("first, while you were away").await;
    eventually(WAIT, "the agent's message held", || async {
        (held_count().await == 1).then_some(())
    })
    .await;
    agent("second, while you were away").await;
    eventually(WAIT, "both held", || async {
        (held_count().await == 2).then_some(())
    })
    .await;
    assert_eq!(
        sent_texts(&graph, user)[1..],
        ["template:come_back".to_owned()],
        "held messages are not sent; the template goes once per closed window"
    );
    let (_, view) = p
        .admin(
            Method::GET,
            &format!("/admin/v1/clients/{}/conversations/{}", t.id, conv.get()),
            None,
        )
        .await;
    assert_eq!(
        view.to_string().matches("awaiting_window").count(),
        2,
        "the conversation view shows what is held: {view}"
    );

    // The user writes again: the held messages go first, in order, then the answer.
    let back = webhook(vec![change(
        "447",
        vec![message("wamid.w2", user, "I am back")],
    )]);
    assert_eq!(signed_post(&p, back).await, StatusCode::OK);
    let texts = eventually(WAIT, "the held messages and the answer", || async {
        let texts = sent_texts(&graph, user);
        (texts.len() >= 5).then_some(texts)
    })
    .await;
    assert_eq!(texts[2], "first, while you were away", "{texts:?}");
    assert_eq!(texts[3], "second, while you were away", "{texts:?}");
    assert!(texts[4].ends_with("You said: I am back"), "{texts:?}");
    eventually(WAIT, "nothing held any more", || async {
        (held_count().await == 0).then_some(())
    })
    .await;
    assert_eq!(
        sent_texts(&graph, user).len(),
        5,
        "each held message went once"
    );

    // A template goes out whatever the window; it is stored as the agent's.
    let (status, body) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{}/conversations/{}/template", t.id, conv.get()),
            Some(json!({ "name": "order_update", "language": "en_US",
                "components": [{ "type": "body", "parameters": [{ "type": "text", "text": "42" }] }] })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let template = eventually(WAIT, "the template at Graph", || async {
        graph.sent_to(user).get(5).map(|s| s.body.clone())
    })
    .await;
    assert_eq!(template["type"], "template", "{template}");
    assert_eq!(template["template"]["language"]["code"], "en_US");
    assert_eq!(
        template["template"]["components"][0]["parameters"][0]["text"],
        "42"
    );
    let stored = p.stored(t.id, conv).await;
    let last = stored.last().expect("stored");
    assert_eq!(last.role, shared::db::Role::Agent);
    assert!(last.content.contains("order_update"), "{}", last.content);
    // Bad templates and other channels are refused, naming what is wrong.
    for (bad, says) in [
        (json!({ "name": "Order Update", "language": "en" }), "name"),
        (
            json!({ "name": "order_update", "language": "english" }),
            "language",
        ),
        (
            json!({ "name": "order_update", "language": "en", "components": {} }),
            "components",
        ),
    ] {
        let (status, body) = p
            .admin(
                Method::POST,
                &format!(
                    "/admin/v1/clients/{}/conversations/{}/template",
                    t.id,
                    conv.get()
                ),
                Some(bad),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.to_string().contains(says), "{says}: {body}");
    }
    p.stop().await;
}

/// A message held longer than `whatsapp.hold_max_days` expires: marked so, announced
/// (`delivery.expired`), never sent.
#[tokio::test]
async fn a_held_message_expires_after_hold_max_days() {
    // About two seconds.
    let (graph, p, t) = graph_platform(
        "wa-expiry",
        "448",
        &[("CHATFLEET__WHATSAPP__HOLD_MAX_DAYS", "0.000025")],
    )
    .await;
    let user = "15550006666";
    let conv = answered_then_closed(&p, &graph, t.id, "448", user).await;
    let mut expired = p.events(&format!("delivery.expired.{}", t.id)).await;
    let (status, body) = p
        .admin(
            Method::POST,
            &format!(
                "/admin/v1/clients/{}/conversations/{}/messages",
                t.id,
                conv.get()
            ),
            Some(json!({ "text": "too late" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let event = next_event(&mut expired).await;
    assert_eq!(event.status.as_deref(), Some("expired"));
    let stored = p.stored(t.id, conv).await;
    assert_eq!(
        stored.last().and_then(|m| m.delivery_status),
        Some(DeliveryStatus::Expired)
    );
    assert_eq!(graph.sent_to(user).len(), 1, "never sent");
    p.stop().await;
}

pub(crate) fn voice_note(wamid: &str, from: &str, media_id: &str) -> Value {
    json!({ "from": from, "id": wamid, "timestamp": "1750000000", "type": "audio",
        "audio": { "id": media_id, "mime_type": "audio/ogg; codecs=opus", "voice": true } })
}

/// Voice notes are fetched with the tenant's token, transcribed once and answered as the
/// user's words; a file too large (declared or actually), gone, or not transcribable is
/// answered with its placeholder and the tenant's media_fallback_message in the prompt,
/// never dead-lettered.
#[tokio::test]
async fn voice_notes_are_transcribed_once_and_unreadable_media_is_still_answered() {
    let (graph, p, _) = graph_platform(
        "wa-voice",
        "449",
        &[
            ("CHATFLEET__SPEECH__PROVIDER", "ollama"),
            ("CHATFLEET__WHATSAPP__MAX_MEDIA_BYTES", "2048"),
        ],
    )
    .await;
    let audio = |bytes: &[u8], declared: usize| graph::Media {
        bytes: bytes.to_vec(),
        mime: "audio/ogg; codecs=opus".into(),
        declared_size: declared as u64,
    };
    let words = b"what time do you open on sunday";
    graph.add_media("m-voice", audio(words, words.len()));
    let user = "15550007001";
    let post_voice = |wamid: &'static str, user: &'static str, media: &'static str| {
        let p = &p;
        async move {
            let body = webhook(vec![change("449", vec![voice_note(wamid, user, media)])]);
            assert_eq!(signed_post(p, body).await, StatusCode::OK);
        }
    };
    post_voice("wamid.v1", user, "m-voice").await;
    let answer = eventually(WAIT, "the answer to the voice note", || async {
        graph.sent_to(user).first().map(|s| s.body.clone())
    })
    .await;
    assert!(
        answer["text"]["body"]
            .as_str()
            .is_some_and(|t| t.ends_with("You said: [voice note] what time do you open on sunday")),
        "{answer}"
    );
    assert_eq!((p.sim.transcriptions(), graph.downloads()), (1, 1));
    // Meta's retry of the same message is the same turn: nothing is fetched or
    // transcribed again (the next message's answer shows the retry was handled first).
    post_voice("wamid.v1", user, "m-voice").await;
    let after = webhook(vec![change(
        "449",
        vec![message("wamid.v2", user, "thanks")],
    )]);
    assert_eq!(signed_post(&p, after).await, StatusCode::OK);
    eventually(WAIT, "the next answer", || async {
        (graph.sent_to(user).len() == 2).then_some(())
    })
    .await;
    assert_eq!((p.sim.transcriptions(), graph.downloads()), (1, 1));

    // Files the bot cannot read: too large by file_size, larger than declared, expired,
    // and a transcription outage.
    let big = vec![b'x'; 4096];
    graph.add_media("m-big", audio(&big, big.len()));
    graph.add_media("m-liar", audio(&big, 100));
    graph.add_media("m-outage", audio(b"UNAVAILABLE noise", 17));
    graph.add_media(graph::OFF_HOST, audio(words, words.len()));
    let cases = [
        ("wamid.b1", "15550007002", "m-big"),
        ("wamid.l1", "15550007003", "m-liar"),
        ("wamid.x1", "15550007004", "m-expired"),
        ("wamid.o1", "15550007005", "m-outage"),
        ("wamid.h1", "15550007006", graph::OFF_HOST),
    ];
    for (wamid, user, media) in cases {
        post_voice(wamid, user, media).await;
    }
    for (_, user, media) in cases {
        let answer = eventually(WAIT, "an answer to an unreadable file", || async {
            graph.sent_to(user).first().map(|s| s.body.clone())
        })
        .await;
        assert!(
            answer["text"]["body"]
                .as_str()
                .is_some_and(|t| t.ends_with("You said: [audio]")),
            "{media}: {answer}"
        );
    }
    // The model was told the tenant's fallback message with each of them.
    let noted = p
        .sim
        .requests()
        .iter()
        .filter(|r| {
            r.messages.last().is_some_and(|m| m.content == "[audio]")
                && r.messages[0]
                    .content
                    .contains("could not be opened. Say so briefly")
        })
        .count();
    assert!(noted >= cases.len(), "{noted} prompts carried the note");
    assert!(
        !graph.downloaded(graph::OFF_HOST),
        "nothing is fetched from another host"
    );
    let dead = p.env.broker.topology().dead_queue();
    let stats = p.env.broker.queue_stats(&dead).await.expect("stats");
    assert_eq!(stats.messages, 0, "nothing was dead-lettered");
    p.stop().await;
}

/// An image with a caption reaches a model that takes images as an image part beside
/// the caption (fetched for the turn, not stored); with `llm_vision` off the model reads
/// the caption and that an image was sent.
#[tokio::test]
async fn images_reach_a_vision_model_and_others_read_the_caption() {
    let (graph, p, t) = graph_platform("wa-image", "450", &[]).await;
    let photo = b"\xff\xd8\xff\xe0 not really a jpeg".to_vec();
    graph.add_media(
        "m-photo",
        graph::Media {
            declared_size: photo.len() as u64,
            bytes: photo.clone(),
            mime: "image/jpeg".into(),
        },
    );
    let image = |wamid: &str, user: &str| {
        json!({ "from": user, "id": wamid, "timestamp": "1750000000", "type": "image",
            "image": { "id": "m-photo", "mime_type": "image/jpeg", "caption": "is this the one?" } })
    };
    let asked_about = |user: &'static str, wamid: &'static str| {
        let (p, graph) = (&p, &graph);
        let body = webhook(vec![change("450", vec![image(wamid, user)])]);
        async move {
            assert_eq!(signed_post(p, body).await, StatusCode::OK);
            eventually(WAIT, "the answer to the image", || async {
                (!graph.sent_to(user).is_empty()).then_some(())
            })
            .await;
            p.sim
                .requests()
                .into_iter()
                .rev()
                .find(|r| {
                    r.messages
                        .last()
                        .is_some_and(|m| m.content.contains("is this the one?"))
                })
                .expect("the model was asked")
        }
    };
    let plain = asked_about("15550008001", "wamid.i1").await;
    let user = plain.messages.last().expect("a user message");
    assert_eq!(user.content, "[image] is this the one?");
    assert!(
        user.images.is_empty(),
        "no image for a model without vision"
    );

    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", t.id),
            Some(json!({ "llm_vision": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = asked_about("15550008002", "wamid.i2").await;
    let user = seen.messages.last().expect("a user message");
    assert_eq!(user.images.len(), 1, "{user:?}");
    if seen.format == worker::llm::sim::WireFormat::OpenAi {
        assert_eq!(user.images[0].mime, "image/jpeg"); // Ollama's images carry no type
    }
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(user.images[0].base64.as_bytes())
            .expect("base64"),
        photo
    );
    // Stored: the caption and the note, never the bytes.
    let conv = p
        .conversation_on(t.id, Channel::Whatsapp, "15550008002")
        .await;
    let stored = p.stored(t.id, conv).await;
    assert_eq!(stored[0].content, "[image] is this the one?");
    p.stop().await;
}
