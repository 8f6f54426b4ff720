//! Starts the platform for one test and offers the HTTP calls tests make.

use std::process::{Child, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

pub use reqwest::Method;
use shared::db::StoredMessage;
use shared::ids::{Channel, ClientId, ConversationId};
use shared::testkit::{TestEnv, TestTenant, eventually};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker::llm::sim::{LlmSim, SimOptions};

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Platform {
    pub env: TestEnv,
    pub sim: LlmSim,
    pub base: String,
    pub http: reqwest::Client,
    /// Stops everything the platform started (and what a test ties to it).
    pub shutdown: CancellationToken,
    ingress: JoinHandle<()>,
    workers: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Platform {
    /// Ingress + one worker, the default provider pointed at a fresh simulator.
    pub async fn start() -> Self {
        Self::start_with(&[], 1).await
    }

    /// Ingress + `workers` workers (each with its own connections and caches, like
    /// separate processes), with extra `CHATFLEET__…` settings.
    pub async fn start_with(extra: &[(&str, &str)], workers: usize) -> Self {
        Self::start_tweaked(extra, workers, |_| {}).await
    }

    /// [`Self::start_with`], with settings variables cannot set (prices) changed by
    /// `tweak` before anything starts (the in-process ingress and workers only).
    pub async fn start_tweaked(
        extra: &[(&str, &str)],
        workers: usize,
        tweak: impl FnOnce(&mut shared::settings::Settings),
    ) -> Self {
        shared::testkit::init_tracing();
        let shutdown = CancellationToken::new();
        let sim = LlmSim::start(
            "127.0.0.1:0".parse().expect("addr"),
            SimOptions::default(),
            shutdown.clone(),
        )
        .await
        .expect("llm-sim starts");
        let sim_url = sim.base_url();
        let mut vars = vec![(
            "CHATFLEET__LLM__PROVIDERS__OLLAMA__BASE_URL",
            sim_url.as_str(),
        )];
        vars.extend_from_slice(extra);
        let mut env = TestEnv::start(&vars).await;
        tweak(&mut env.settings);
        let running = ingress::start(env.settings.clone(), shutdown.clone())
            .await
            .expect("ingress starts");
        let workers: Vec<_> = (0..workers)
            .map(|_| tokio::spawn(worker::run(env.settings.clone(), shutdown.clone())))
            .collect();
        // Ready when the workers and the API deliverer consume their queues.
        let topology = env.broker.topology().clone();
        for (queue, consumers) in [
            (topology.inbound_work(), workers.len() as u32),
            (topology.outbound_queue(Channel::Api), 1),
            (topology.outbound_queue(Channel::Widget), 1),
            (topology.outbound_queue(Channel::Mobile), 1),
        ] {
            eventually(WAIT, "consumers to start", || async {
                (env.broker.queue_stats(&queue).await.ok()?.consumers >= consumers).then_some(())
            })
            .await;
        }
        // And every work shard has its worker.
        if !workers.is_empty() {
            for shard in 0..topology.work_shards() {
                let queue = topology.work_shard(shard);
                eventually(WAIT, "every work shard to be consumed", || async {
                    (env.broker.queue_stats(&queue).await.ok()?.consumers >= 1).then_some(())
                })
                .await;
            }
        }
        Self {
            base: format!("http://{}", running.addr),
            http: reqwest::Client::new(),
            ingress: running.task,
            env,
            sim,
            shutdown,
            workers,
        }
    }

    /// Stops ingress and worker; each must finish draining within 30 s.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let limit = Duration::from_secs(30);
        for worker in self.workers {
            tokio::time::timeout(limit, worker)
                .await
                .expect("the worker stopped within 30 s of shutdown")
                .expect("worker task")
                .expect("worker ran cleanly");
        }
        tokio::time::timeout(limit, self.ingress)
            .await
            .expect("ingress stopped within 30 s of shutdown")
            .expect("ingress task");
        tokio::time::timeout(limit, self.env.teardown())
            .await
            .expect("teardown finished within 30 s");
    }

    /// POSTs a message; returns status and body.
    pub async fn send(
        &self,
        key: &str,
        conversation: &str,
        text: &str,
        idempotency_key: Option<&str>,
    ) -> (StatusCode, Value) {
        self.send_raw(
            key,
            json!({ "conversation_id": conversation, "text": text }).to_string(),
            idempotency_key,
        )
        .await
    }

    pub async fn send_raw(
        &self,
        key: &str,
        body: String,
        idempotency_key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}/api/v1/messages", self.base))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = idempotency_key {
            request = request.header("idempotency-key", k);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// One long-poll; `None` on 204.
    pub async fn poll(
        &self,
        key: &str,
        conversation: &str,
        after: &str,
        wait_s: u64,
    ) -> Option<Value> {
        let response = self
            .http
            .get(format!(
                "{}/api/v1/conversations/{conversation}/messages",
                self.base
            ))
            .query(&[("after", after), ("wait", &wait_s.to_string())])
            .bearer_auth(key)
            .send()
            .await
            .expect("poll sent");
        match response.status() {
            StatusCode::NO_CONTENT => None,
            StatusCode::OK => Some(response.json().await.expect("poll body")),
            other => panic!("unexpected poll status {other}"),
        }
    }

    /// Reads the mailbox from `after` with long-polls until it holds `count` more
    /// entries; returns them and the final cursor.
    pub async fn read_until(
        &self,
        key: &str,
        conversation: &str,
        after: &str,
        count: usize,
    ) -> (Vec<Value>, String) {
        let mut seen = Vec::new();
        let mut cursor = after.to_owned();
        let deadline = tokio::time::Instant::now() + WAIT;
        while seen.len() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mailbox of {conversation} stayed at {} of {count} entries",
                seen.len()
            );
            if let Some(page) = self.poll(key, conversation, &cursor, 5).await {
                cursor = page["cursor"].as_str().expect("cursor").to_owned();
                seen.extend(
                    page["messages"]
                        .as_array()
                        .expect("messages")
                        .iter()
                        .cloned(),
                );
            }
        }
        (seen, cursor)
    }

    /// Waits until the simulator has answered or refused `n` chat requests.
    pub async fn wait_for_llm_requests(&self, n: usize) {
        eventually(WAIT, "LLM requests", || async {
            (self.sim.requests().len() >= n).then_some(())
        })
        .await;
    }

    /// An admin API call; returns status and JSON body (`Null` when empty).
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.admin_as(self.env.settings.admin.token.expose(), method, path, body)
            .await
    }

    pub async fn admin_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Waits for the reply to the only pending question of `conversation` after `after`.
    pub async fn ask(
        &self,
        key: &str,
        conversation: &str,
        text: &str,
        after: &str,
    ) -> (Value, String) {
        let (status, body) = self.send(key, conversation, text, None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let (entries, cursor) = self.read_until(key, conversation, after, 2).await;
        (entries[1].clone(), cursor)
    }

    /// Listens to the events exchange for `routing_key` (wildcards allowed).
    pub async fn events(&self, routing_key: &str) -> shared::mq::Consumer {
        self.env
            .broker
            .tap(&self.env.broker.topology().events_exchange(), routing_key)
            .await
            .expect("tap events")
    }

    /// The API conversation `external` of a tenant (it must exist).
    pub async fn conversation(&self, client: ClientId, external: &str) -> ConversationId {
        self.conversation_on(client, Channel::Api, external).await
    }

    /// The conversation `external` of a tenant on `channel` (it must exist).
    pub async fn conversation_on(
        &self,
        client: ClientId,
        channel: Channel,
        external: &str,
    ) -> ConversationId {
        self.env
            .db
            .tenant(client)
            .conversations()
            .find(channel, external)
            .await
            .expect("find conversation")
            .unwrap_or_else(|| panic!("no conversation {external}"))
    }

    /// What is stored of a conversation, oldest first.
    pub async fn stored(
        &self,
        client: ClientId,
        conversation: ConversationId,
    ) -> Vec<StoredMessage> {
        self.env
            .db
            .tenant(client)
            .messages()
            .in_conversation(conversation, 1000)
            .await
            .expect("stored messages")
    }

    pub async fn tenant(&self, slug: &str) -> TestTenant {
        self.env.tenant(slug).await
    }

    /// Another ingress replica on its own port (its own connections, caches and Redis
    /// subscription, like a separate process); stops with the platform.
    pub async fn another_ingress(&self) -> String {
        let running = ingress::start(self.env.settings.clone(), self.shutdown.clone())
            .await
            .expect("second ingress starts");
        format!("http://{}", running.addr)
    }

    /// A tenant whose website at `origin` may embed the widget.
    pub async fn widget_tenant(&self, slug: &str, origin: &str) -> TestTenant {
        let tenant = self.tenant(slug).await;
        self.env
            .db
            .tenant(tenant.id)
            .channel_accounts()
            .create(
                Channel::Widget,
                &format!("{slug}-site"),
                None,
                &json!({ "allowed_origins": [origin] }),
            )
            .await
            .expect("widget account");
        tenant
    }

    /// Opens a widget session from `origin`; returns status and body.
    pub async fn widget_session(
        &self,
        base: &str,
        origin: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{base}/widget/v1/sessions"))
            .header("origin", origin)
            .json(&body)
            .send()
            .await
            .expect("session request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sends a widget or mobile message with a session token.
    pub async fn session_send(
        &self,
        base: &str,
        channel: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{base}/{channel}/v1/messages"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("send request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// One widget or mobile long-poll; returns status and body (`Null` on 204).
    pub async fn session_poll(
        &self,
        base: &str,
        channel: &str,
        token: &str,
        after: &str,
        wait_s: u64,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{base}/{channel}/v1/messages"))
            .query(&[("after", after), ("wait", &wait_s.to_string())])
            .bearer_auth(token)
            .send()
            .await
            .expect("poll request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Long-polls a session until `count` more entries arrived; returns them and the cursor.
    pub async fn session_read(
        &self,
        base: &str,
        channel: &str,
        token: &str,
        after: &str,
        count: usize,
    ) -> (Vec<Value>, String) {
        let mut seen = Vec::new();
        let mut cursor = after.to_owned();
        let deadline = tokio::time::Instant::now() + WAIT;
        while seen.len() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "session mailbox stayed at {} of {count} entries",
                seen.len()
            );
            let (status, page) = self.session_poll(base, channel, token, &cursor, 5).await;
            match status {
                StatusCode::OK => {
                    cursor = page["cursor"].as_str().expect("cursor").to_owned();
                    seen.extend(
                        page["messages"]
                            .as_array()
                            .expect("messages")
                            .iter()
                            .cloned(),
                    );
                }
                StatusCode::NO_CONTENT => {}
                other => panic!("poll answered {other}: {page}"),
            }
        }
        (seen, cursor)
    }
}

/// The next event a tap received, within [`WAIT`].
pub async fn next_event(consumer: &mut shared::mq::Consumer) -> shared::envelope::Event {
    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("an event in time")
        .expect("event");
    delivery.ack().await.expect("ack");
    serde_json::from_slice(&delivery.body).expect("an event")
}

/// A `chatfleet worker` process on the platform's database, broker and Redis.
pub fn worker_process(p: &Platform, extra: &[(&str, &str)]) -> Child {
    let mut command = p.env.command(env!("CARGO_BIN_EXE_chatfleet"));
    command
        .arg("worker")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command.env(
        "CHATFLEET__LLM__PROVIDERS__OLLAMA__BASE_URL",
        p.sim.base_url(),
    );
    for (k, v) in extra {
        command.env(k, v);
    }
    command.spawn().expect("chatfleet worker starts")
}

/// Runs the `chatfleet` command line on the platform's settings, off the test's runtime
/// thread (in-process workers keep running meanwhile); returns success and stdout.
pub async fn chatfleet(p: &Platform, args: &[&str]) -> (bool, String) {
    let mut command = p.env.command(env!("CARGO_BIN_EXE_chatfleet"));
    command.args(args).stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("runner")
        .expect("chatfleet runs");
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
