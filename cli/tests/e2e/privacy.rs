//! Privacy end to end. Personal data kept from the LLM (`redact_pii`): the simulator,
//! which echoes the user's words, must see placeholders only — in the question and in the
//! history — while the user gets the reply with the originals back and the stored message
//! keeps them. An end user's export and erasure, the archive's and dead letters' copies
//! shredded with the conversation's data key.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use shared::ids::Channel;
use shared::sealed::{DataKeys, Heading, Opened};
use shared::secrets::SecretBox;
use shared::testkit::{TestTenant, eventually};

use crate::support::{Method, Platform, chatfleet};
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

/// Crypto-shredding: a WhatsApp conversation with a transcribed voice note, a tool call
/// and replies Graph refuses (dead-lettered) crosses the broker sealed — the archive
/// stream holds none of its texts or identifiers in the clear, while its data key opens
/// them — and once it is erased, the database holds none of them either, its archived
/// copies read as erased (replay skips them and says so, `dlq show` too), and another
/// conversation of the tenant is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_conversation_is_shredded_in_the_archive_and_the_dead_letters() {
    use crate::whatsapp::{
        change, graph, graph_platform, message, signed_post, voice_note, webhook,
    };

    let from = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let (graph, p, t) = graph_platform(
        "wa-shred",
        "452",
        &[
            ("CHATFLEET__SPEECH__PROVIDER", "ollama"),
            ("CHATFLEET__TOOLS__ALLOW_HTTP", "true"),
            ("CHATFLEET__TOOLS__ALLOWED_PRIVATE_NETWORKS", "127.0.0.2/32"),
        ],
    )
    .await;
    let tools =
        worker::tool_sim::ToolSim::start("127.0.0.2:0".parse().expect("addr"), p.shutdown.clone())
            .await
            .expect("the tool endpoint starts");
    let (status, body) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{}/tools", t.id),
            Some(json!({
                "name": "lookup", "description": "Looks up an order", "method": "GET",
                "url": format!("{}/orders/{{order_id}}", tools.base_url()),
                "parameters": { "type": "object", "properties": { "order_id": { "type": "string" } } },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let spoken = b"ninety nine red balloons";
    graph.add_media(
        "m-shred",
        graph::Media {
            bytes: spoken.to_vec(),
            mime: "audio/ogg; codecs=opus".into(),
            declared_size: spoken.len() as u64,
        },
    );
    let (user, other) = (graph::REFUSED, "15550007070");
    let secrets = ["balloons", "ORD-77-SECRET", user];
    let client = t.id.to_string();
    let dead_letters = |n: usize| {
        let (p, client) = (&p, &client);
        eventually(
            WAIT,
            "the refused replies dead-lettered",
            move || async move {
                let (ok, out) = chatfleet(p, &["dlq", "list", "--json", "--client", client]).await;
                let ids: Vec<String> = out
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter_map(|l| l["id"].as_str().map(str::to_owned))
                    .collect();
                (ok && ids.len() == n).then_some(ids)
            },
        )
    };
    // One after the other (not coalesced into one turn): each reply is dead-lettered.
    let post = |messages: Vec<serde_json::Value>| {
        let p = &p;
        async move {
            assert_eq!(
                signed_post(p, webhook(vec![change("452", messages)])).await,
                StatusCode::OK
            );
        }
    };
    post(vec![voice_note("wamid.s1", user, "m-shred")]).await;
    dead_letters(1).await;
    post(vec![message(
        "wamid.s2",
        user,
        r#"TOOL lookup {"order_id":"ORD-77-SECRET"}"#,
    )])
    .await;
    let dead_letters = dead_letters(2).await;
    post(vec![message(
        "wamid.s3",
        other,
        "control words alpha omega",
    )])
    .await;
    eventually(WAIT, "the control conversation's answer", || async {
        (!graph.sent_to(other).is_empty()).then_some(())
    })
    .await;
    let conversation = p.conversation_on(t.id, Channel::Whatsapp, user).await;
    let control = p.conversation_on(t.id, Channel::Whatsapp, other).await;

    // The archive: nothing of either conversation in the clear, all of it under its key.
    let archived = read_archive(&p, &from).await;
    let keys = DataKeys::new(
        p.env.db.clone(),
        SecretBox::new(&p.env.settings.security.encryption_ring()),
        p.env.cache.clone(),
    );
    let mut opened = String::new();
    for body in &archived {
        let wire = String::from_utf8_lossy(body);
        for secret in secrets.iter().chain(&["control words", other]) {
            assert!(!wire.contains(secret), "{secret} in the clear: {wire}");
        }
        if Heading::of(body).is_some_and(|h| h.conversation_id == Some(conversation)) {
            opened.push_str(&open(&keys, body).await.expect("its key opens it"));
        }
    }
    for secret in &secrets[..2] {
        assert!(
            opened.contains(secret),
            "{secret} not archived (sealed): {opened}"
        );
    }
    let show = |id: String| {
        let p = &p;
        async move {
            let (ok, out) = chatfleet(p, &["dlq", "show", &id]).await;
            assert!(ok, "dlq show");
            serde_json::from_str::<serde_json::Value>(&out).expect("JSON")
        }
    };
    let shown = show(dead_letters[0].clone()).await;
    assert!(
        shown["body"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("You said")),
        "dlq show opens a sealed reply: {shown}"
    );
    let pool = sqlx::MySqlPool::connect(p.env.settings.database.url.expose())
        .await
        .expect("database");
    let count = |sql: &'static str| {
        let pool = &pool;
        let client = t.id.get();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(client)
                .fetch_one(pool)
                .await
                .expect("counted")
        }
    };
    const TOOL_TEXTS: &str = "SELECT COUNT(*) FROM tool_calls WHERE client_id = ? \
                              AND (arguments LIKE '%ORD-77%' OR result LIKE '%ORD-77%')";
    assert!(count(TOOL_TEXTS).await >= 1, "the tool call is recorded");

    // Erased: the database, the archive and the dead letters hold nothing readable of it.
    let (status, _) = p
        .admin(
            Method::DELETE,
            &format!(
                "/admin/v1/clients/{}/conversations/{}",
                t.id,
                conversation.get()
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM messages WHERE client_id = ? \
             AND (content LIKE '%balloons%' OR content LIKE '%ORD-77%')"
        )
        .await,
        0
    );
    assert_eq!(count(TOOL_TEXTS).await, 0);
    assert!(
        count("SELECT COUNT(*) FROM tool_calls WHERE client_id = ?").await >= 1,
        "the count stays"
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM conversations WHERE client_id = ? AND external_id LIKE '%6666%'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM conversation_keys k JOIN conversations c \
             ON c.id = k.conversation_id WHERE k.client_id = ? AND c.external_id LIKE 'erased:%'"
        )
        .await,
        0,
        "the erased conversation's key is gone"
    );
    pool.close().await;
    let fresh = DataKeys::new(
        p.env.db.clone(),
        SecretBox::new(&p.env.settings.security.encryption_ring()),
        p.env.cache.clone(),
    );
    let (mut erased, mut readable) = (0, 0);
    for body in &archived {
        match Heading::of(body).and_then(|h| h.conversation_id) {
            Some(c) if c == conversation => {
                assert!(open(&fresh, body).await.is_none(), "an erased copy opened");
                erased += 1;
            }
            Some(c) if c == control => {
                assert!(open(&fresh, body).await.is_some());
                readable += 1;
            }
            _ => {}
        }
    }
    assert!(
        erased >= 4 && readable >= 2,
        "{erased} erased, {readable} readable"
    );
    let shown = show(dead_letters[1].clone()).await;
    assert_eq!(shown["body"]["erased"], true, "{shown}");
    assert!(!shown.to_string().contains("balloons"), "{shown}");

    // Replay over the range: the erased conversation's two messages are reported and
    // skipped, the other is replayed.
    let (ok, out) = chatfleet(
        &p,
        &[
            "replay", "--from", &from, "--mode", "dry-run", "--client", &client, "--json",
            "--wait-s", "30",
        ],
    )
    .await;
    assert!(ok, "replay");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let erased_lines = lines.iter().filter(|l| l["erased"] == true).count();
    assert_eq!(erased_lines, 2, "{out}");
    let summary = lines.last().expect("a summary");
    assert_eq!(
        (summary["replayed"].as_u64(), summary["erased"].as_u64()),
        (Some(1), Some(2)),
        "{out}"
    );
    assert!(!out.contains("balloons") && !out.contains(user), "{out}");
    p.stop().await;
}

/// Every body the archive stream holds from `from` on.
async fn read_archive(p: &Platform, from: &str) -> Vec<Vec<u8>> {
    let from: chrono::DateTime<chrono::Utc> = from.parse().expect("time");
    let mut archive = p.env.broker.read_archive(from).await.expect("archive");
    let mut bodies = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(1), archive.next()).await {
        let _ = d.ack().await;
        bodies.push(d.body.clone());
    }
    archive.close().await;
    bodies
}

/// An archived envelope or reply opened with its conversation's key, as JSON; `None`
/// when its conversation was erased.
async fn open(keys: &DataKeys, body: &[u8]) -> Option<String> {
    let heading = Heading::of(body).expect("a heading");
    let opened = match heading.received_at {
        Some(_) => keys
            .open_envelope(body)
            .await
            .expect("readable")
            .map(|e| serde_json::to_string(&e).expect("json")),
        None => keys
            .open_reply(body)
            .await
            .expect("readable")
            .map(|r| serde_json::to_string(&r).expect("json")),
    };
    match opened {
        Opened::Readable(json) => Some(json),
        Opened::Erased(_) => None,
    }
}
