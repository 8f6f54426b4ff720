//! `chatfleet queues` as an operator runs it: a real process against the local broker.

use serde_json::Value;
use shared::testkit::TestEnv;

fn queues(env: &TestEnv, prefix: Option<&str>) -> std::process::Output {
    let mut command = env.command(env!("CARGO_BIN_EXE_chatfleet"));
    command.args(["queues", "--json"]);
    if let Some(p) = prefix {
        command.env("CHATFLEET__AMQP__PREFIX", p);
    }
    command.output().expect("chatfleet queues runs")
}

#[tokio::test]
async fn queues_lists_every_queue_with_its_depth_and_consumers() {
    let env = TestEnv::start(&[]).await;
    let publisher = env.broker.publisher().await.expect("publisher");
    for _ in 0..3 {
        publisher
            .publish_inbound_raw("api.1", b"{}")
            .await
            .expect("published");
    }
    let out = queues(&env, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let names: Vec<&str> = rows.iter().filter_map(|r| r["queue"].as_str()).collect();
    assert_eq!(names, env.broker.topology().queues());
    let work = rows
        .iter()
        .find(|r| r["queue"] == env.broker.topology().inbound_work())
        .expect("the work queue");
    assert_eq!(
        (work["ready"].as_u64(), work["consumers"].as_u64()),
        (Some(3), Some(0))
    );

    // A prefix nothing runs with is said plainly.
    let out = queues(&env, Some("nothingrunshere"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no chatfleet queues with prefix"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.teardown().await;
}

#[tokio::test]
async fn bench_ceiling_measures_the_broker_and_cleans_up() {
    let env = TestEnv::start(&[]).await;
    let report = std::env::temp_dir().join(format!("cf-ceiling-{}.json", env.id));
    let mut command = env.command(env!("CARGO_BIN_EXE_chatfleet"));
    command
        .args([
            "bench",
            "--ceiling-only",
            "--ceiling-messages",
            "500",
            "--json",
        ])
        .arg(&report);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("runner")
        .expect("chatfleet bench runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(&report).expect("the report")).expect("JSON");
    assert_eq!(report["ceiling"]["messages"], 500);
    for rate in ["publish_per_s", "consume_per_s"] {
        assert!(
            report["ceiling"][rate].as_f64().unwrap_or(0.0) > 0.0,
            "{report}"
        );
    }
    // The throw-away queue is gone.
    let leftover = format!("{}.bench.ceiling", env.broker.topology().prefix());
    assert!(env.broker.queue_stats(&leftover).await.is_err());
    env.teardown().await;
}
