//! Privacy end to end. Personal data kept from the LLM (`redact_pii`): the simulator,
//! which echoes the user's words, must see placeholders only — in the question and in the
//! history — while the user gets the reply with the originals back and the stored message
//! keeps them. An end user's export and erasure.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use shared::testkit::{TestTenant, eventually};

use crate::support::{Method, Platform};
use crate::webhooks::{Receiver, add_webhook, delivered};

const WAIT: Duration = Duration::from_secs(30);

/// Webhooks to the receiver double on 127.0.0.2.
const WEBHOOKS: [(&str, &str); 2] = [
    ("CHATFLEET__WEBHOOKS__ALLOW_HTTP", "true"),
    (
        "CHATFLEET__WEBHOOKS__ALLOWED_PRIVATE_NETWORKS",
        "127.0.0.2/32",
    ),
];

const SAID: &str = "Mail jane.doe@example.com, call +49 151 2345 6789, card 4111 1111 1111 1111, \
                    IBAN DE89 3704 0044 0532 0130 00; not a card: 4111 1111 1111 1112";
const ORIGINALS: [&str; 4] = [
    "jane.doe@example.com",
    "+49 151 2345 6789",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_reaches_the_model_as_placeholders_and_the_user_as_written() {
    let p = Platform::start().await;
    let (private, plain) = (p.tenant("private").await, p.tenant("plain").await);
    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", private.id),
            Some(json!({ "redact_pii": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["redact_pii"], true, "{body}");

    let (reply, cursor) = p.ask(&private.api_key, "c1", SAID, "").await;
    // A second turn: the first exchange is history now, and goes redacted too.
    let (again, _) = p
        .ask(&private.api_key, "c1", "and my mail was?", &cursor)
        .await;
    let seen: Vec<String> = p
        .sim
        .requests()
        .iter()
        .flat_map(|r| r.messages.iter().map(|m| m.content.clone()))
        .collect();
    let asked = seen
        .iter()
        .find(|m| m.contains("<EMAIL_1>"))
        .expect("asked");
    for placeholder in ["<EMAIL_1>", "<PHONE_1>", "<CARD_1>", "<IBAN_1>"] {
        assert!(asked.contains(placeholder), "{asked}");
    }
    // A number that fails the Luhn check is left as typed.
    assert!(asked.contains("4111 1111 1111 1112"), "{asked}");
    for original in ORIGINALS {
        assert!(
            seen.iter().all(|m| !m.contains(original)),
            "the model saw {original}"
        );
    }
    assert!(
        p.sim.requests().len() >= 2 && seen.iter().filter(|m| m.contains("<EMAIL_1>")).count() >= 2,
        "the second turn's history holds the first exchange, redacted"
    );
    // The user reads the originals (the simulator echoes what it was told).
    let text = reply["text"].as_str().unwrap_or_default();
    for original in ORIGINALS {
        assert!(text.contains(original), "{original} missing from {text}");
    }
    assert!(!text.contains("<EMAIL_1>"), "{text}");
    assert!(
        again["text"].as_str().is_some_and(|t| !t.contains('<')),
        "{again}"
    );
    // What is stored of the user's message is what they wrote.
    let c1 = p.conversation(private.id, "c1").await;
    assert_eq!(p.stored(private.id, c1).await[0].content, SAID);

    // Without redact_pii the model reads the message as written (the control).
    p.ask(&plain.api_key, "c1", "write to john@example.org", "")
        .await;
    assert!(p.sim.requests().iter().any(|r| {
        r.messages
            .iter()
            .any(|m| m.content.contains("john@example.org"))
    }));
    p.stop().await;
}

/// Erasure and export: an end user's conversation is exported whole and alone, then
/// erased everywhere (idempotently, only within its tenant); a turn in flight stores
/// nothing; the user's next message starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_user_is_exported_and_erased_everywhere() {
    let p = Platform::start_with(&WEBHOOKS, 1).await;
    let (receiver, base) = Receiver::start(p.shutdown.clone()).await;
    let (a, b) = (p.tenant("alpha").await, p.tenant("beta").await);
    add_webhook(&p, &a, format!("{base}/a/ok"), json!(["end_user.erased"])).await;
    p.ask(&a.api_key, "c1", "my mail is ann@example.com", "")
        .await;
    p.ask(&b.api_key, "c1", "beta's own words", "").await;
    let users =
        |t: &TestTenant, query: &str| format!("/admin/v1/clients/{}/end-users{query}", t.id);

    // Export: everything of the end user, nothing of another's.
    let (status, export) = p
        .admin(
            Method::GET,
            &users(&a, "/export?channel=api&external_id=c1"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{export}");
    let messages = export["conversations"][0]["messages"]
        .as_array()
        .expect("messages");
    assert_eq!(messages.len(), 2, "{export}");
    assert_eq!(messages[0]["content"], "my mail is ann@example.com");
    assert!(messages[1]["delivery_status"].is_string() || messages[1]["state"] == "stored");
    assert!(!export.to_string().contains("beta's own words"), "{export}");
    let (status, nothing) = p
        .admin(
            Method::GET,
            &users(&a, "/export?channel=api&external_id=nobody"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(nothing["conversations"], json!([]), "{nothing}");
    let (status, _) = p
        .admin(
            Method::GET,
            &users(&a, "/export?channel=fax&external_id=c1"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Erase by id: 404 for an unknown one and for another tenant's.
    let a1 = p.conversation(a.id, "c1").await;
    let b1 = p.conversation(b.id, "c1").await;
    let path = |t: &TestTenant, id: u64| format!("/admin/v1/clients/{}/conversations/{id}", t.id);
    let (status, _) = p.admin(Method::DELETE, &path(&a, b1.get()), None).await;
    assert!(status == StatusCode::NOT_FOUND || a1 == b1, "{status}");
    let (status, _) = p.admin(Method::DELETE, &path(&a, 9_999_999), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for _ in 0..2 {
        let (status, _) = p.admin(Method::DELETE, &path(&a, a1.get()), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    assert!(p.stored(a.id, a1).await.is_empty());
    assert_eq!(
        p.stored(b.id, b1).await.len(),
        2,
        "the other tenant keeps its own"
    );
    let (_, view) = p.admin(Method::GET, &path(&a, a1.get()), None).await;
    assert_eq!(
        view["external_id"],
        format!("erased:{}", a1.get()),
        "{view}"
    );
    let heard = eventually(WAIT, "end_user.erased", || {
        let got = delivered(&receiver.at("/a/ok"));
        async move { got.get("end_user.erased").cloned() }
    })
    .await;
    assert_eq!(heard.len(), 1, "erasing again is the same event");
    assert!(!heard[0].event().to_string().contains("ann@example.com"));

    // The user writes again: a new conversation, without the erased history.
    p.ask(&a.api_key, "c1", "hello again", "").await;
    assert_ne!(p.conversation(a.id, "c1").await, a1);
    let last = p.sim.requests().pop().expect("asked");
    assert!(
        last.messages
            .iter()
            .all(|m| !m.content.contains("ann@example.com"))
    );

    // By end user; again is nothing; an unknown channel names the field.
    let (status, body) = p
        .admin(
            Method::DELETE,
            &users(&a, "?channel=api&external_id=c1"),
            None,
        )
        .await;
    assert_eq!(
        (status, body["erased_conversations"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let (_, body) = p
        .admin(
            Method::DELETE,
            &users(&a, "?channel=api&external_id=c1"),
            None,
        )
        .await;
    assert_eq!(body["erased_conversations"], 0, "{body}");
    let (status, body) = p
        .admin(
            Method::DELETE,
            &users(&a, "?channel=fax&external_id=c1"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.to_string().contains("channel"), "{body}");

    // A turn in flight when its conversation is erased stores and delivers nothing.
    p.sim.set_latency(Duration::from_secs(2));
    let before = p.sim.requests().len();
    let (status, _) = p.send(&a.api_key, "c2", "erase me mid-turn", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    p.wait_for_llm_requests(before + 1).await;
    let c2 = p.conversation(a.id, "c2").await;
    let (status, _) = p.admin(Method::DELETE, &path(&a, c2.get()), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let served = p.sim.served();
    eventually(WAIT, "the turn's LLM call to end", || async {
        (p.sim.served() > served).then_some(())
    })
    .await;
    p.sim.set_latency(Duration::ZERO);
    // The next message of the same key is answered in a fresh conversation, after the
    // erased turn finished: by then that turn stored whatever it was going to.
    p.ask(&a.api_key, "c2", "after", "").await;
    assert!(
        p.stored(a.id, c2).await.is_empty(),
        "the erased turn stored a reply"
    );
    let (_, fresh) = p
        .admin(
            Method::GET,
            &users(&a, "/export?channel=api&external_id=c2"),
            None,
        )
        .await;
    let texts = fresh.to_string();
    assert!(!texts.contains("erase me mid-turn"), "{texts}");
    p.stop().await;
}

/// Retention: conversations whose last message is older than the tenant's limit are
/// erased by the sweeper; newer ones and other tenants' stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_erases_what_is_older_than_the_limit() {
    let p = Platform::start_with(&[("CHATFLEET__WORKER__RETENTION_INTERVAL_S", "1")], 1).await;
    let (t, other) = (p.tenant("kept-short").await, p.tenant("kept-long").await);
    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", t.id),
            Some(json!({ "retention_days": 1 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", t.id),
            Some(json!({ "retention_days": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for (tenant, conversation) in [(&t, "old"), (&t, "new"), (&other, "old")] {
        p.ask(&tenant.api_key, conversation, "remember me", "")
            .await;
    }
    let (old, new) = (
        p.conversation(t.id, "old").await,
        p.conversation(t.id, "new").await,
    );
    let others = p.conversation(other.id, "old").await;
    // Two days pass for both tenants' "old" conversations.
    let pool = sqlx::MySqlPool::connect(p.env.settings.database.url.expose())
        .await
        .expect("database");
    sqlx::query(
        "UPDATE conversations SET last_message_at = NOW(6) - INTERVAL 2 DAY WHERE id IN (?, ?)",
    )
    .bind(old.get())
    .bind(others.get())
    .execute(&pool)
    .await
    .expect("aged");
    pool.close().await;
    eventually(WAIT, "the old conversation to be erased", || async {
        p.stored(t.id, old).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        p.stored(t.id, new).await.len(),
        2,
        "a newer conversation stays"
    );
    assert_eq!(
        p.stored(other.id, others).await.len(),
        2,
        "a tenant without a limit keeps all"
    );
    p.stop().await;
}

/// A worker logging at every level (`RUST_LOG=trace`, its libraries included) never
/// writes what a user said or who they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_hold_no_personal_data_at_any_level() {
    let p = Platform::start_with(&[], 0).await;
    let t = p.tenant("logged").await;
    let log = std::env::temp_dir().join(format!("cf-trace-{}.log", t.id));
    let file = std::fs::File::create(&log).expect("log file");
    let mut worker = p.env.command(env!("CARGO_BIN_EXE_chatfleet"));
    worker
        .arg("worker")
        .env("RUST_LOG", "trace")
        .env(
            "CHATFLEET__LLM__PROVIDERS__OLLAMA__BASE_URL",
            p.sim.base_url(),
        )
        .stdout(file)
        .stderr(std::process::Stdio::null());
    let mut worker = worker.spawn().expect("a worker");
    let said = "my card is 4111 1111 1111 1111, write to zed.secret@example.com";
    let (status, _) = p.send(&t.api_key, "+4915112345678", said, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    p.read_until(&t.api_key, "+4915112345678", "", 2).await;
    let _ = worker.kill();
    let _ = worker.wait();
    let written = std::fs::read_to_string(&log).expect("the log");
    let _ = std::fs::remove_file(&log);
    assert!(written.len() > 10_000, "the worker logged at trace level");
    for personal in [
        "zed.secret@example.com",
        "4111 1111 1111 1111",
        "4915112345678",
    ] {
        assert!(!written.contains(personal), "the log holds {personal}");
    }
    p.stop().await;
}
