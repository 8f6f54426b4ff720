//! Conversation affinity: the workers share the work shards out, a busy conversation's
//! messages all reach the one worker holding its shard (and are answered together), and
//! a dead worker's shards move to the survivor with nothing lost or answered twice.

use std::process::{Child, Command};
use std::time::Duration;

use reqwest::StatusCode;
use shared::testkit::eventually;

use crate::operations::samples;
use crate::support::{Platform, WAIT, worker_process};

/// A worker process serving its metrics on a port of its own.
struct Worker {
    process: Child,
    metrics: String,
}

impl Worker {
    fn start(p: &Platform) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let bind = format!("127.0.0.1:{port}");
        let process = worker_process(p, &[("CHATFLEET__WORKER__METRICS_BIND", bind.as_str())]);
        Self {
            process,
            metrics: format!("http://{bind}/metrics"),
        }
    }

    /// One sample of this worker's metrics (0 when absent); `None` while it does not
    /// answer.
    async fn sample(&self, p: &Platform, series: &str) -> Option<f64> {
        let body = p
            .http
            .get(&self.metrics)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(samples(&body).get(series).copied().unwrap_or(0.0))
    }
}

const HELD: &str = "chatfleet_work_shards_held";
const TURNS: &str = "chatfleet_llm_seconds_count{provider=\"ollama\"}";

#[tokio::test]
async fn a_conversation_stays_with_one_worker_and_moves_when_it_dies() {
    // A worker killed mid-turn leaves the conversation's lock to expire: a short TTL.
    let p = Platform::start_with(
        &[
            ("CHATFLEET__AMQP__WORK_SHARDS", "4"),
            ("CHATFLEET__WORKER__LOCK_TTL_S", "3"),
        ],
        0,
    )
    .await;
    let t = p.tenant("shop").await;
    let workers = [Worker::start(&p), Worker::start(&p)];
    // The two share the four shards, two each, one consumer per shard.
    eventually(WAIT, "the shards to be shared out", || async {
        for w in &workers {
            (w.sample(&p, HELD).await? == 2.0).then_some(())?;
        }
        for shard in 0..4 {
            let queue = p.env.broker.topology().work_shard(shard);
            (p.env.broker.queue_stats(&queue).await.ok()?.consumers == 1).then_some(())?;
        }
        Some(())
    })
    .await;

    // A busy conversation: twelve messages while its turns take 300 ms each.
    p.sim.set_latency(Duration::from_millis(300));
    for i in 0..12 {
        let (s, _) = p.send(&t.api_key, "busy", &format!("m{i}"), None).await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    let (entries, cursor) = p.read_until(&t.api_key, "busy", "0", 12).await;
    let mut answered = entries;
    let mut cursor = cursor;
    while !answered
        .iter()
        .rev()
        .find(|e| e["role"] == "assistant")
        .is_some_and(|e| e["text"].as_str().unwrap_or("").contains("m11"))
    {
        let (more, next) = p.read_until(&t.api_key, "busy", &cursor, 1).await;
        answered.extend(more);
        cursor = next;
    }
    let mut turns = Vec::new();
    for w in &workers {
        turns.push(w.sample(&p, TURNS).await.expect("metrics"));
    }
    let holder = turns
        .iter()
        .position(|n| *n > 0.0)
        .expect("someone answered");
    assert_eq!(
        turns[1 - holder],
        0.0,
        "one worker answered it all: {turns:?}"
    );
    assert!(
        turns[holder] < 12.0,
        "its messages were answered together: {turns:?} calls for 12 messages"
    );

    // The holder dies; its shards move to the survivor, which answers what comes next.
    let [first, second] = workers;
    let (mut dead, survivor) = if holder == 0 {
        (first, second)
    } else {
        (second, first)
    };
    let status = Command::new("kill")
        .args(["-KILL", &dead.process.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let _ = dead.process.wait();
    let (s, _) = p.send(&t.api_key, "busy", "after the crash", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (more, _) = p.read_until(&t.api_key, "busy", &cursor, 2).await;
    assert!(
        more[1]["text"]
            .as_str()
            .unwrap_or("")
            .ends_with("You said: after the crash"),
        "{more:?}"
    );
    assert_eq!(survivor.sample(&p, HELD).await, Some(4.0));

    // Every message answered once, in order: each assistant entry answers the messages
    // before it, and no message is answered twice.
    answered.extend(more);
    let users: Vec<&str> = answered
        .iter()
        .filter(|e| e["role"] == "user")
        .filter_map(|e| e["text"].as_str())
        .collect();
    let mut expected: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
    expected.push("after the crash".into());
    assert_eq!(users, expected);
    let replies = answered.iter().filter(|e| e["role"] == "assistant").count();
    assert_eq!(
        replies as f64,
        turns[holder] + 1.0,
        "one reply per turn, none repeated"
    );
    let mut survivor = survivor;
    let _ = survivor.process.kill();
    let _ = survivor.process.wait();
    p.stop().await;
}
