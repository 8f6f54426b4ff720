//! `chatfleet dlq` as an operator runs it, against dead letters made the way the platform
//! makes them: a worker giving up on an envelope, ingress parking an unroutable webhook.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use shared::testkit::TestEnv;

fn dlq(env: &TestEnv, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut command = env.command(env!("CARGO_BIN_EXE_chatfleet"));
    command
        .arg("dlq")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("chatfleet dlq runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("answer");
    let out = child.wait_with_output().expect("finished");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `queue` holds `n` ready messages (messages handed back by a closed
/// channel reach the queue a moment after the command exits).
async fn settle(env: &TestEnv, queue: &str, n: u32) {
    shared::testkit::eventually(
        Duration::from_secs(10),
        &format!("{n} in {queue}"),
        || async { (env.broker.queue_stats(queue).await.ok()?.messages == n).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn dead_letters_are_listed_shown_requeued_and_purged() {
    let env = TestEnv::start(&[]).await;
    let topology = env.broker.topology().clone();
    let publisher = env.broker.publisher().await.expect("publisher");
    // A worker gives up on an envelope...
    publisher
        .publish_inbound_raw("api.7", br#"{"not":"really an envelope"}"#)
        .await
        .expect("published");
    let mut work = env
        .broker
        .consume(&topology.inbound_work(), 1, "test")
        .await
        .expect("consume");
    let delivery = tokio::time::timeout(Duration::from_secs(10), work.next())
        .await
        .expect("in time")
        .expect("a delivery");
    publisher
        .dead_letter(
            &delivery,
            &topology.inbound_work(),
            "llm: gave up after 6 attempts",
        )
        .await
        .expect("dead-lettered");
    delivery.ack().await.expect("ack");
    work.close().await;
    // ...and ingress parks a webhook it cannot route.
    publisher
        .dead_letter_raw("whatsapp.unroutable", b"{}", "unknown phone_number_id")
        .await
        .expect("parked");

    let (ok, out, err) = dlq(&env, &["list", "--json"], "");
    assert!(ok, "{err}");
    let letters: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(letters.len(), 2, "{out}");
    // Browsing takes nothing away.
    settle(&env, &topology.dead_queue(), 2).await;
    let (_, out, _) = dlq(&env, &["list", "--json", "--reason", "gave up"], "");
    let gave_up: Value = serde_json::from_str(out.lines().next().expect("one")).expect("json");
    assert_eq!(out.lines().count(), 1);
    assert_eq!(gave_up["from_queue"], topology.inbound_work());
    let id = gave_up["id"].as_str().expect("id").to_owned();

    let (ok, out, _) = dlq(&env, &["show", &id], "");
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).expect("pretty json");
    assert_eq!(shown["reason"], "llm: gave up after 6 attempts");
    assert_eq!(shown["body"]["not"], "really an envelope");

    // Requeue puts the envelope back on the work queue; the webhook stays.
    let (ok, out, err) = dlq(&env, &["requeue"], "");
    assert!(ok, "{err}");
    assert!(out.contains("requeued 1, left 1"), "{out}");
    assert!(err.contains("not an envelope or a reply"), "{err}");
    settle(&env, &topology.inbound_work(), 1).await;
    settle(&env, &topology.dead_queue(), 1).await;

    // Purge asks first; "n" keeps it, --yes deletes it.
    let (_, out, _) = dlq(&env, &["purge"], "n\n");
    assert!(out.contains("nothing deleted"), "{out}");
    settle(&env, &topology.dead_queue(), 1).await;
    let (ok, out, _) = dlq(&env, &["purge", "--yes"], "");
    assert!(ok && out.contains("purged 1"), "{out}");
    settle(&env, &topology.dead_queue(), 0).await;
    env.teardown().await;
}
