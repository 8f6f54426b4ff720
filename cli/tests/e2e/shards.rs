//! Tenants on two database servers, the second one this test's own: a tenant whose
//! server is down gets 503 while the other is served, and comes back with it; a tenant
//! moved with `chatfleet tenant move` while its user keeps writing loses nothing,
//! answers nothing twice and keeps its order.

use std::path::PathBuf;
use std::process::Command;

use reqwest::StatusCode;
use shared::db::MessageState;
use shared::ids::{Channel, ClientId};
use shared::testkit::{TWO_SHARDS, TestTenant, eventually};

use crate::support::{Platform, WAIT, chatfleet};

/// A MariaDB server of this test's own (`scripts/mariadb-shard`), removed when dropped.
struct Server {
    dir: PathBuf,
    url: String,
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/mariadb-shard");

fn mariadb_shard(args: &[&str]) -> String {
    let out = Command::new(SCRIPT).args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "mariadb-shard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Server {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("cf-shard-{}", uuid::Uuid::new_v4().simple()));
        let url = mariadb_shard(&["start", dir.to_str().expect("utf-8")]);
        Self { dir, url }
    }

    fn stop(&self) {
        mariadb_shard(&["stop", self.dir.to_str().expect("utf-8")]);
    }

    fn restart(&self) {
        mariadb_shard(&["start", self.dir.to_str().expect("utf-8")]);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT)
            .args(["remove", self.dir.to_str().unwrap_or_default()])
            .status();
    }
}

/// Sends `text`, retrying while the platform answers 503 (as a client does).
async fn send_until_accepted(p: &Platform, t: &TestTenant, conversation: &str, text: &str) {
    eventually(WAIT, "the message to be accepted", || async {
        let (status, body) = p.send(&t.api_key, conversation, text, Some(text)).await;
        match status {
            StatusCode::ACCEPTED | StatusCode::OK => Some(()),
            StatusCode::SERVICE_UNAVAILABLE => None,
            other => panic!("{other}: {body}"),
        }
    })
    .await;
}

/// Waits until every user message of the conversation is answered, then checks each
/// was answered once, in order: the replies' echoes, joined, are the messages, joined.
async fn answered_once_in_order(p: &Platform, client: ClientId, external: &str, sent: &[String]) {
    // Through connections a restarted server dropped: a statement may fail once.
    let stored = eventually(WAIT, "every message answered", || async {
        let tenant = p.env.db.tenant(client);
        let conversation = tenant
            .conversations()
            .find(Channel::Api, external)
            .await
            .ok()??;
        let stored = p
            .env
            .db
            .tenant(client)
            .messages()
            .in_conversation(conversation, 1000)
            .await
            .ok()?;
        let users: Vec<_> = stored
            .iter()
            .filter(|m| m.role.as_str() == "user")
            .collect();
        (users.len() == sent.len() && users.iter().all(|m| m.state == MessageState::Answered))
            .then_some(stored)
    })
    .await;
    let users: Vec<&str> = stored
        .iter()
        .filter(|m| m.role.as_str() == "user")
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(users, sent, "stored in the order sent");
    let echoes: Vec<&str> = stored
        .iter()
        .filter(|m| m.role.as_str() == "assistant")
        .map(|m| m.content.rsplit("You said: ").next().unwrap_or_default())
        .collect();
    assert_eq!(
        echoes.join("\n\n"),
        sent.join("\n\n"),
        "answered once each, in order"
    );
}

#[tokio::test]
async fn a_tenant_on_a_server_that_is_down_waits_and_a_moved_tenant_loses_nothing() {
    let server = Server::start();
    let shards = format!("{}@{}", TWO_SHARDS.1, server.url);
    // A ladder longer than a move's pause (5 s and the copy), and long enough for the
    // connections a restarted server dropped to be found out: each fails its statement
    // once, until it has sat idle 5 s and is pinged before use.
    let p = Platform::start_with(
        &[
            (TWO_SHARDS.0, shards.as_str()),
            ("CHATFLEET__AMQP__RETRY_DELAYS_S", "1,2,4,8"),
        ],
        1,
    )
    .await;
    let home = p.tenant("on-home").await;
    let away = p.tenant("on-second").await;
    let db = &p.env.db;
    let shard_of = |id| async move {
        db.placement(id)
            .await
            .expect("directory")
            .expect("row")
            .shard
    };
    assert_eq!(shard_of(home.id).await, "home");
    assert_eq!(shard_of(away.id).await, "second");

    send_until_accepted(&p, &home, "h", "hello home").await;
    send_until_accepted(&p, &away, "a", "hello second").await;
    answered_once_in_order(&p, home.id, "h", &["hello home".into()]).await;
    answered_once_in_order(&p, away.id, "a", &["hello second".into()]).await;

    // The second server goes away: its tenant is refused with 503, the other served.
    server.stop();
    let (status, body) = p.send(&away.api_key, "a", "while down", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    send_until_accepted(&p, &home, "h", "still here").await;
    answered_once_in_order(
        &p,
        home.id,
        "h",
        &["hello home".into(), "still here".into()],
    )
    .await;

    // It comes back, and so does its tenant.
    server.restart();
    send_until_accepted(&p, &away, "a", "back again").await;
    answered_once_in_order(
        &p,
        away.id,
        "a",
        &["hello second".into(), "back again".into()],
    )
    .await;

    // Moved to the home while its user keeps writing.
    let writer = {
        let sent: Vec<String> = (0..12).map(|i| format!("during the move {i}")).collect();
        let p = &p;
        let away = &away;
        async move {
            for text in &sent {
                send_until_accepted(p, away, "a", text).await;
                tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            }
            sent
        }
    };
    let mover = chatfleet(&p, &["tenant", "move", "on-second", "--to", "home"]);
    let (sent, (moved, out)) = tokio::join!(writer, mover);
    assert!(moved, "tenant move failed");
    assert!(out.contains("moved on-second to shard home"), "{out}");
    assert_eq!(shard_of(away.id).await, "home");
    let mut all: Vec<String> = vec!["hello second".into(), "back again".into()];
    all.extend(sent);
    answered_once_in_order(&p, away.id, "a", &all).await;

    // Nothing of it is left on the second server.
    let pool =
        sqlx::MySqlPool::connect(&p.env.settings.database.shard_list()[1].url.expose().clone())
            .await
            .expect("connect");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE client_id = ?")
        .bind(away.id.get())
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, 0);
    pool.close().await;
    p.stop().await;
}
