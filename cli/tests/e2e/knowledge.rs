//! Tenant knowledge against a real ChromaDB: retrieval scoped to its tenant, `rag_top_k`,
//! deletion, idempotent re-upload, failures that store nothing; usage metering.

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::testkit::require_chroma;

use crate::support::{Method, Platform};

fn knowledge_section(system: &str) -> &str {
    let start = system
        .find("=== PRODUCT KNOWLEDGE ===\n")
        .map_or(0, |i| i + 26);
    let end = system
        .find("=== ACTIVE CAPABILITIES ===")
        .unwrap_or(system.len());
    &system[start..end]
}

async fn last_system_prompt(p: &Platform) -> String {
    p.sim.requests().pop().expect("a chat request").messages[0]
        .content
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_retrieves_only_its_own_knowledge() {
    require_chroma();
    let p = Platform::start().await;
    let a = p.tenant("know-a").await;
    let b = p.tenant("know-b").await;
    for (t, marker) in [(&a, "ALPHAKNOW"), (&b, "BRAVOKNOW")] {
        let (s, _) = p
            .admin(
                Method::PATCH,
                &format!("/admin/v1/clients/{}/config", t.id),
                Some(json!({ "rag_top_k": 2 })),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let content: String = (0..5)
            .map(|i| {
                format!(
                    "Section {i}. The {marker} widget number {i} ships in {} days.\n\n",
                    i + 2
                )
            })
            .collect::<String>()
            + &"Unrelated filler about opening hours and parking. ".repeat(60);
        let (s, doc) = p
            .admin(Method::POST, &format!("/admin/v1/clients/{}/knowledge", t.id),
                Some(json!({ "title": format!("{marker} catalogue"), "source": "catalogue.md", "content": content })))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{doc}");
        assert!(doc["chunk_count"].as_u64().unwrap_or(0) >= 2, "{doc}");
        // The same content again is the same document.
        let (s, again) = p
            .admin(
                Method::POST,
                &format!("/admin/v1/clients/{}/knowledge", t.id),
                Some(json!({ "title": "again", "content": content })),
            )
            .await;
        assert_eq!((s, &again["id"]), (StatusCode::OK, &doc["id"]));
    }

    let mut cursors = ["0".to_owned(), "0".to_owned()];
    for (i, (t, mine, other)) in [
        (&a, "ALPHAKNOW", "BRAVOKNOW"),
        (&b, "BRAVOKNOW", "ALPHAKNOW"),
    ]
    .into_iter()
    .enumerate()
    {
        let (_, cursor) = p
            .ask(
                &t.api_key,
                "q",
                &format!("How long does the {mine} widget take to ship?"),
                &cursors[i],
            )
            .await;
        cursors[i] = cursor;
        let system = last_system_prompt(&p).await;
        let section = knowledge_section(&system);
        assert!(
            section.contains(mine),
            "{mine} missing from its own prompt:\n{system}"
        );
        assert!(
            !system.contains(other),
            "{other} leaked into {mine}'s prompt"
        );
        let chunks = section.lines().filter(|l| l.contains("Section")).count();
        assert!(
            chunks >= 1 && section.matches("Section 0.").count() <= 1,
            "{section}"
        );
        let (_, docs) = p
            .admin(
                Method::GET,
                &format!("/admin/v1/clients/{}/knowledge", t.id),
                None,
            )
            .await;
        assert_eq!(docs.as_array().map(Vec::len), Some(1));
    }

    // rag_top_k bounds the chunks; 0 skips retrieval.
    let (s, _) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", a.id),
            Some(json!({ "rag_top_k": 1 })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, cursor) = p
        .ask(
            &a.api_key,
            "q",
            "ALPHAKNOW widget shipping days?",
            &cursors[0],
        )
        .await;
    let one = last_system_prompt(&p).await;
    let few = knowledge_section(&one).trim();
    assert!(!few.is_empty());
    let (s, _) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", a.id),
            Some(json!({ "rag_top_k": 0 })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, cursor) = p
        .ask(&a.api_key, "q", "ALPHAKNOW widget shipping days?", &cursor)
        .await;
    assert!(
        knowledge_section(&last_system_prompt(&p).await)
            .trim()
            .is_empty()
    );

    // Deleting the document removes it from retrieval.
    let (s, _) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", a.id),
            Some(json!({ "rag_top_k": 3 })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, docs) = p
        .admin(
            Method::GET,
            &format!("/admin/v1/clients/{}/knowledge", a.id),
            None,
        )
        .await;
    let doc_id = docs[0]["id"].as_u64().expect("id");
    let (s, _) = p
        .admin(
            Method::DELETE,
            &format!("/admin/v1/clients/{}/knowledge/{doc_id}", a.id),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    p.ask(&a.api_key, "q", "ALPHAKNOW widget shipping days?", &cursor)
        .await;
    assert!(
        !last_system_prompt(&p)
            .await
            .contains("ALPHAKNOW widget number")
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_documents_and_failed_embeddings_store_nothing() {
    require_chroma();
    let p = Platform::start().await;
    let t = p.tenant("docs").await;
    let path = format!("/admin/v1/clients/{}/knowledge", t.id);
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_owned();
    let (s, b) = p
        .admin(
            Method::POST,
            &path,
            Some(json!({ "title": "empty", "content": "   " })),
        )
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "empty_document")
    );
    let (s, b) = p
        .admin(
            Method::POST,
            &path,
            Some(json!({ "title": "huge", "content": "x".repeat(5 * 1024 * 1024 + 1) })),
        )
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "document_too_large")
    );
    p.sim.set_unavailable(true);
    let (s, b) = p
        .admin(
            Method::POST,
            &path,
            Some(json!({ "title": "t", "content": "Some real text." })),
        )
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::BAD_GATEWAY, "embedding_failed")
    );
    p.sim.set_unavailable(false);
    let (_, docs) = p.admin(Method::GET, &path, None).await;
    assert_eq!(
        docs.as_array().map(Vec::len),
        Some(0),
        "nothing half-stored"
    );
    // And the same document can be added once the provider is back.
    let (s, _) = p
        .admin(
            Method::POST,
            &path,
            Some(json!({ "title": "t", "content": "Some real text." })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_adds_up_to_the_stored_messages() {
    let p = Platform::start().await;
    let t = p.tenant("metered").await;
    // Several conversations: a day's usage is kept in several rows (by conversation),
    // and the figures are their sums.
    let mut answers = Vec::new();
    for i in 0..4 {
        let conversation = format!("c{i}");
        let (_, cursor) = p
            .ask(
                &t.api_key,
                &conversation,
                &format!("question number {i}"),
                "0",
            )
            .await;
        p.ask(&t.api_key, &conversation, "and a follow-up", &cursor)
            .await;
        let conv = p.conversation(t.id, &conversation).await;
        answers.extend(
            p.stored(t.id, conv)
                .await
                .into_iter()
                .filter(|m| m.role == shared::db::Role::Assistant),
        );
    }
    let (s, usage) = p
        .admin(
            Method::GET,
            &format!("/admin/v1/clients/{}/usage", t.id),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{usage}");
    let days = usage["days"].as_array().expect("days");
    assert_eq!(days.len(), 1);
    assert_eq!(answers.len(), 8);
    assert_eq!(usage["total"]["messages"].as_u64(), Some(8), "{usage}");
    // No model has a price here: the replies are unpriced, not free.
    assert_eq!(days[0]["unpriced_replies"].as_u64(), Some(8), "{usage}");
    assert_eq!(usage["currency"], Value::Null, "{usage}");
    assert_eq!(days[0]["messages"].as_u64(), Some(answers.len() as u64));
    let prompt: u64 = answers
        .iter()
        .map(|m| u64::from(m.prompt_tokens.unwrap_or(0)))
        .sum();
    let completion: u64 = answers
        .iter()
        .map(|m| u64::from(m.completion_tokens.unwrap_or(0)))
        .sum();
    assert_eq!(days[0]["prompt_tokens"].as_u64(), Some(prompt));
    assert_eq!(days[0]["completion_tokens"].as_u64(), Some(completion));
    assert!(
        answers
            .iter()
            .all(|m| m.estimated_prompt_tokens.unwrap_or(0) > 0),
        "estimates are recorded"
    );
    let (s, _) = p
        .admin(
            Method::GET,
            &format!(
                "/admin/v1/clients/{}/usage?from=2026-12-31&to=2026-01-01",
                t.id
            ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_goes_on_without_knowledge_when_chroma_is_down() {
    // Nothing listens on port 9: every retrieval fails.
    let p = Platform::start_with(&[("CHATFLEET__VECTOR__URL", "http://127.0.0.1:9")], 1).await;
    let t = p.tenant("no-chroma").await;
    let (reply, _) = p.ask(&t.api_key, "c", "still there?", "0").await;
    assert_eq!(reply["role"], "assistant");
    let system = last_system_prompt(&p).await;
    assert!(knowledge_section(&system).trim().is_empty());
    p.stop().await;
}

/// What a ChromaDB behind an authenticating proxy (or an older ChromaDB with token
/// authentication) sees: `vector.token` on every call, and without it nothing is stored.
/// The proxy is this test's, in front of the run's real ChromaDB.
#[tokio::test]
async fn the_vector_token_reaches_an_authenticating_chroma() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Bytes;
    use axum::extract::{Request, State};
    use axum::http::StatusCode as AxumStatus;
    use axum::response::IntoResponse;

    #[derive(Clone)]
    struct Proxy {
        upstream: String,
        http: reqwest::Client,
        refused: Arc<AtomicUsize>,
    }
    async fn forward(State(proxy): State<Proxy>, request: Request) -> axum::response::Response {
        let bearer = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let chroma_token = request
            .headers()
            .get("x-chroma-token")
            .and_then(|v| v.to_str().ok());
        if bearer != Some("Bearer chroma-token-of-ours")
            || chroma_token != Some("chroma-token-of-ours")
        {
            proxy.refused.fetch_add(1, Ordering::SeqCst);
            return (AxumStatus::UNAUTHORIZED, "missing or wrong token").into_response();
        }
        let method = Method::from_bytes(request.method().as_str().as_bytes()).expect("method");
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let body: Bytes = axum::body::to_bytes(request.into_body(), 1 << 24)
            .await
            .expect("body");
        let answer = proxy
            .http
            .request(method, format!("{}{path}", proxy.upstream))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("chroma answers");
        let status = AxumStatus::from_u16(answer.status().as_u16()).expect("status");
        (status, answer.bytes().await.expect("body")).into_response()
    }

    let upstream = require_chroma();
    let proxy = Proxy {
        upstream: upstream.trim_end_matches('/').to_owned(),
        http: reqwest::Client::new(),
        refused: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy_url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(proxy.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.expect("proxy") });

    let p = Platform::start().await;
    let tenant = p.tenant("vector-token").await;
    let knowledge = |token: &str| {
        let mut vector = p.env.settings.vector.clone();
        vector.url = proxy_url.clone();
        vector.token = shared::pii::Secret::new(token.to_owned());
        shared::knowledge::Knowledge::new(&vector, &p.env.settings.embeddings, &p.env.settings.llm)
            .expect("knowledge")
    };
    let without = knowledge("")
        .ingest(tenant.id, 1, "faq", "Opening hours: 9 to 5.", None)
        .await;
    assert!(without.is_err(), "stored without the token");
    let refused = proxy.refused.load(Ordering::SeqCst);
    assert!(refused >= 1);
    let with = knowledge("chroma-token-of-ours");
    with.ingest(tenant.id, 2, "faq", "Opening hours: 9 to 5.", None)
        .await
        .expect("stored with the token");
    let found = with
        .search(tenant.id, "when are you open", 1, None)
        .await
        .expect("search");
    assert!(found.iter().any(|c| c.contains("9 to 5")), "{found:?}");
    assert_eq!(
        proxy.refused.load(Ordering::SeqCst),
        refused,
        "every call carried the token"
    );
    p.stop().await;
}
