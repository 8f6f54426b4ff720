//! `chatfleet replay` against a running platform: a dry run answers archived messages
//! with today's configuration beside the original replies and stores nothing; a live
//! replay skips what was answered unless forced.

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::testkit::eventually;

use crate::support::{Method, Platform, WAIT, chatfleet};

/// Runs `chatfleet replay … --json`; its JSON lines.
async fn replay(p: &Platform, args: &[&str]) -> Vec<Value> {
    let args: Vec<&str> = ["replay"]
        .into_iter()
        .chain(args.iter().copied())
        .chain(["--json"])
        .collect();
    let (ok, out) = chatfleet(p, &args).await;
    assert!(ok, "chatfleet replay failed");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn a_dry_run_shows_todays_answer_beside_the_original_and_stores_nothing() {
    let p = Platform::start_with(
        &[
            ("CHATFLEET__WEBHOOKS__ALLOW_HTTP", "true"),
            (
                "CHATFLEET__WEBHOOKS__ALLOWED_PRIVATE_NETWORKS",
                "127.0.0.2/32",
            ),
        ],
        1,
    )
    .await;
    let t = p.tenant("shop").await;
    let from = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let (original, cursor) = p.ask(&t.api_key, "c", "hello there", "0").await;
    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", t.id),
            Some(json!({ "persona_name": "Zed" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An endpoint for replies only, made after the original turn: the dry run shows what
    // today's subscriptions would have got.
    let (status, hook) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{}/webhooks", t.id),
            Some(json!({ "url": "http://127.0.0.2:9/hook", "events": ["message.replied"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");

    let client = t.slug.clone();
    let lines = replay(
        &p,
        &[
            "--from", &from, "--mode", "dry-run", "--client", &client, "--wait-s", "30",
        ],
    )
    .await;
    let (entries, summary) = lines.split_at(lines.len() - 1);
    assert_eq!(entries.len(), 1, "{lines:?}");
    let e = &entries[0];
    assert_eq!(e["message"], "hello there");
    assert_eq!(e["original_reply"], original["text"]);
    let replayed = e["replayed_reply"].as_str().expect("a replayed reply");
    assert!(
        replayed.contains("Zed") && replayed.ends_with("You said: hello there"),
        "{replayed}"
    );
    assert_eq!(e["changed"], true);
    assert_eq!(
        e["would_have_sent"],
        json!([{ "type": "message.replied", "webhooks": [hook["id"]] }])
    );
    assert_eq!(
        summary[0]["summary"],
        "1 replayed, 1 changed, 0 failed, 0 erased"
    );
    // Nothing was stored or sent: the conversation still holds the two messages.
    let conversation = p.conversation(t.id, "c").await;
    assert_eq!(p.stored(t.id, conversation).await.len(), 2);
    assert!(p.poll(&t.api_key, "c", &cursor, 1).await.is_none());

    // Live: the answered message is skipped...
    let lines = replay(
        &p,
        &["--from", &from, "--mode", "live", "--client", &client],
    )
    .await;
    assert_eq!(lines[0]["replayed"], 1);
    eventually(WAIT, "the work queues to drain", || async {
        (p.env.broker.work_waiting().await.ok()? == 0).then_some(())
    })
    .await;
    assert!(
        p.poll(&t.api_key, "c", &cursor, 2).await.is_none(),
        "answered twice"
    );
    // ...unless forced, which makes it a new message with a new answer.
    replay(
        &p,
        &[
            "--from", &from, "--mode", "live", "--client", &client, "--force",
        ],
    )
    .await;
    let (entries, _) = p.read_until(&t.api_key, "c", &cursor, 2).await;
    assert_eq!(entries[0]["text"], "hello there");
    assert!(entries[1]["text"].as_str().unwrap_or("").contains("Zed"));
    p.stop().await;
}

/// A dry-run replay of a turn that called a side-effect tool does not call it again: the
/// model is given the original turn's recorded result.
#[tokio::test]
async fn a_dry_run_never_repeats_a_side_effect() {
    let p = Platform::start_with(
        &[
            ("CHATFLEET__TOOLS__ALLOW_HTTP", "true"),
            ("CHATFLEET__TOOLS__ALLOWED_PRIVATE_NETWORKS", "127.0.0.2/32"),
        ],
        1,
    )
    .await;
    let endpoint =
        worker::tool_sim::ToolSim::start("127.0.0.2:0".parse().expect("addr"), p.shutdown.clone())
            .await
            .expect("tool endpoint");
    let t = p.tenant("shop").await;
    let (status, body) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{}/tools", t.id),
            Some(json!({
                "name": "book", "description": "Books a table", "method": "POST",
                "url": format!("{}/book", endpoint.base_url()),
                "parameters": { "type": "object", "properties": { "n": { "type": "integer" } } },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let from = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let (original, _) = p.ask(&t.api_key, "c", "TOOL book {\"n\": 4}", "0").await;
    assert!(
        original["text"]
            .as_str()
            .unwrap_or("")
            .contains("Tool book said:"),
        "{original}"
    );
    assert_eq!(endpoint.calls().len(), 1);

    let client = t.slug.clone();
    let lines = replay(
        &p,
        &[
            "--from", &from, "--mode", "dry-run", "--client", &client, "--wait-s", "30",
        ],
    )
    .await;
    let replayed = lines[0]["replayed_reply"]
        .as_str()
        .expect("a replayed reply");
    assert_eq!(
        replayed, original["text"],
        "the recorded result, quoted as before"
    );
    assert_eq!(endpoint.calls().len(), 1, "the dry run called the endpoint");
    p.stop().await;
}
