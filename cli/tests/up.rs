//! `chatfleet up` as a user runs it: a real process, with the simulator standing in for
//! an LLM that does not answer; a round trip through its printed API key; Ctrl-C drains
//! and exits cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use shared::testkit::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_a_round_trip_and_drains_on_ctrl_c() {
    let env = TestEnv::start(&[]).await;
    let s = &env.settings;
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatfleet"))
        .arg("up")
        .env("CHATFLEET_CONFIG_DIR", "/nonexistent")
        .env("CHATFLEET__DATABASE__URL", s.database.url.expose())
        .env("CHATFLEET__AMQP__PREFIX", &s.amqp.prefix)
        // The test's own retry ladder, so its teardown removes every queue `up` declares.
        .env(
            "CHATFLEET__AMQP__RETRY_DELAYS_S",
            s.amqp
                .retry_delays
                .iter()
                .map(|d| d.as_secs().to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        // And its work shards (the default would declare shards its teardown never names).
        .env(
            "CHATFLEET__AMQP__WORK_SHARDS",
            s.amqp.work_shards.to_string(),
        )
        .env("CHATFLEET__REDIS__PREFIX", &s.redis.prefix)
        .env("CHATFLEET__HTTP__BIND", "127.0.0.1:0")
        .env("CHATFLEET__WORKER__METRICS_BIND", "127.0.0.1:0")
        // Nothing listens there: `up` must fall back to the simulator.
        .env(
            "CHATFLEET__LLM__PROVIDERS__OLLAMA__BASE_URL",
            "http://127.0.0.1:9",
        )
        .env("CHATFLEET__WORKER__DRAIN_TIMEOUT_S", "5")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chatfleet up starts");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let banner = std::thread::spawn(move || {
        let text: Vec<String> = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect();
        text.join("\n")
    });
    // Read stdout to the end (a reader that stopped early would close the pipe under
    // the running process); hand over the base URL and key as soon as they are printed.
    let (found_tx, found_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut base, mut key) = (None, None);
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(rest) = line.strip_prefix("chatfleet is up: ingress on ") {
                base = rest.split(',').next().map(str::to_owned);
            }
            if line.starts_with("Demo tenant") {
                key = lines
                    .next()
                    .and_then(Result::ok)
                    .map(|k| k.trim().to_owned());
            }
            if line.starts_with("Read the reply") {
                // The printed command's URL, between its first pair of quotes.
                let read = lines
                    .next()
                    .and_then(Result::ok)
                    .and_then(|l| l.split('\'').nth(1).map(str::to_owned));
                let _ = found_tx.send((base.clone(), key.clone(), read));
            }
        }
    });
    let (base, key, read) = tokio::task::spawn_blocking(move || {
        found_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or((None, None, None))
    })
    .await
    .expect("stdout reader");
    let (base, key, read) = (
        base.expect("base URL printed"),
        key.expect("API key printed"),
        read.expect("the command that reads the reply printed"),
    );

    let http = reqwest::Client::new();
    let accepted = http
        .post(format!("{base}/api/v1/messages"))
        .bearer_auth(&key)
        .json(&serde_json::json!({ "conversation_id": "try-1", "text": "Hello there" }))
        .send()
        .await
        .expect("send");
    assert_eq!(accepted.status(), reqwest::StatusCode::ACCEPTED);
    // The printed read command, run once as a new user would, shows the reply (it
    // waits for it; it must not answer at once with the user's own message).
    let r = http
        .get(&read)
        .bearer_auth(&key)
        .send()
        .await
        .expect("the printed read");
    assert_eq!(r.status(), reqwest::StatusCode::OK, "{read}");
    let page: serde_json::Value = r.json().await.expect("json");
    let reply = page["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "assistant").cloned())
        .unwrap_or_else(|| panic!("the printed command showed no reply: {page}"));
    assert_eq!(
        reply["text"],
        "[llama3.1:8b] You are Ava, an AI assistant for Demo Shop. | You said: Hello there"
    );

    // The printed demo page may open widget sessions for the demo tenant.
    let session = http
        .post(format!("{base}/widget/v1/sessions"))
        .header("origin", base.as_str())
        .json(&serde_json::json!({ "client": "demo" }))
        .send()
        .await
        .expect("widget session");
    assert_eq!(session.status(), reqwest::StatusCode::CREATED);

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("waiter")
        .expect("exit status");
    let stderr = banner.join().expect("stderr reader");
    assert!(stderr.contains("USING THE LLM SIMULATOR"), "{stderr}");
    assert!(exited.success(), "exit {exited:?}\n{stderr}");
    // `up` declared the test's topology and nothing else (a default rung the test's
    // ladder lacks would outlive the teardown).
    let default_rung = format!("{}.retry.600s", s.amqp.prefix);
    assert!(
        env.broker.queue_stats(&default_rung).await.is_err(),
        "{default_rung} was declared"
    );
    env.teardown().await;
}

#[tokio::test]
async fn tenant_commands_create_a_tenant_and_a_working_key() {
    let env = TestEnv::start(&[]).await;
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_chatfleet"))
            .args(args)
            .env("CHATFLEET_CONFIG_DIR", "/nonexistent")
            .env(
                "CHATFLEET__DATABASE__URL",
                env.settings.database.url.expose(),
            )
            .env("RUST_LOG", "warn")
            .output()
            .expect("chatfleet runs")
    };
    let created = run(&[
        "tenant", "create", "--slug", "cli-made", "--name", "CLI Made", "--plan", "growth",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let again = run(&["tenant", "create", "--slug", "cli-made", "--name", "Twice"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already taken"));
    let bad_plan = run(&[
        "tenant", "create", "--slug", "x-y", "--name", "X", "--plan", "gold",
    ]);
    assert!(String::from_utf8_lossy(&bad_plan.stderr).contains("unknown plan"));

    let key = run(&["tenant", "api-key", "cli-made"]);
    assert!(key.status.success());
    let key = String::from_utf8_lossy(&key.stdout).trim().to_owned();
    let client = env
        .db
        .api_key_owner(&key)
        .await
        .expect("lookup")
        .expect("key works");
    let tenant = env
        .db
        .clients()
        .get(client)
        .await
        .expect("get")
        .expect("tenant");
    assert_eq!(
        (tenant.slug.as_str(), tenant.plan),
        ("cli-made", shared::tenant::Plan::Growth)
    );
    let missing = run(&["tenant", "api-key", "nobody"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no tenant with slug"));
    env.teardown().await;
}
