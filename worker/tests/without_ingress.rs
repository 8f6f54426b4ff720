//! A worker handed API envelopes with no ingress (and so no deliverer) running: the
//! tests do the API channel's part themselves, recording a message before publishing it.
//!
//! - A stored reply wakes its conversation's long-polls from the worker itself, as soon
//!   as it is committed: a poll does not wait for the broker to carry the reply to the
//!   channel's deliverer.
//! - The worker trusts the API channel's recording: an envelope whose message is not in
//!   the database (the channel withdrew it when the broker could not confirm, and told
//!   the client 503) is not recorded again and gets no answer.
//! - A delivery whose message an earlier turn on the worker answered is acked at once,
//!   without waiting for the conversation's lock.

use std::time::Duration;

use shared::cache::{ConversationLocks, MailboxKey, Mailboxes, broadcast};
use shared::envelope::{Envelope, MessageContent, Trace};
use shared::ids::{Channel, ConversationId, EnvelopeId};
use shared::mq::Publisher;
use shared::testkit::{TestEnv, TestTenant, eventually};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker::llm::sim::{LlmSim, SimOptions};

const WAIT: Duration = Duration::from_secs(20);

/// Services, a tenant with an API conversation `c`, and a publisher; the worker is
/// started by [`Fixture::start_worker`].
struct Fixture {
    shutdown: CancellationToken,
    env: TestEnv,
    tenant: TestTenant,
    conversation: ConversationId,
    publisher: Publisher,
    sim: LlmSim,
}

impl Fixture {
    async fn start(slug: &str) -> Self {
        Self::start_with(slug, &[]).await
    }

    /// With `CHATFLEET__…` overrides.
    async fn start_with(slug: &str, extra: &[(&str, &str)]) -> Self {
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
        let env = TestEnv::start(&vars).await;
        let tenant = env.tenant(slug).await;
        let conversation = env
            .db
            .tenant(tenant.id)
            .conversations()
            .get_or_create(Channel::Api, "c")
            .await
            .expect("conversation");
        let publisher = env.broker.publisher().await.expect("publisher");
        Self {
            shutdown,
            env,
            tenant,
            conversation,
            publisher,
            sim,
        }
    }

    fn start_worker(&self) -> JoinHandle<anyhow::Result<()>> {
        tokio::spawn(worker::run(
            self.env.settings.clone(),
            self.shutdown.clone(),
        ))
    }

    /// An envelope of conversation `c`, as the API channel builds it.
    fn envelope(&self, text: &str) -> Envelope {
        self.envelope_in("c", text)
    }

    fn envelope_in(&self, external_id: &str, text: &str) -> Envelope {
        Envelope::inbound(
            EnvelopeId::random(),
            self.tenant.id,
            Channel::Api,
            external_id.to_owned(),
            MessageContent::text(text),
            Trace {
                request_id: "without-ingress-test".into(),
                traceparent: None,
            },
        )
    }

    /// What the API channel does with an accepted message: records it, then publishes.
    async fn accept(&self, envelope: &Envelope) {
        self.record(envelope).await;
        self.publish(envelope).await;
    }

    /// The API channel's recording of a message, in its conversation.
    async fn record(&self, envelope: &Envelope) {
        let conversation = self
            .env
            .db
            .tenant(self.tenant.id)
            .conversations()
            .get_or_create(Channel::Api, envelope.external_id.expose())
            .await
            .expect("conversation");
        let text = envelope.message.as_prompt_text();
        self.env
            .db
            .tenant(self.tenant.id)
            .messages()
            .accept_user(conversation, envelope.id, &text, None)
            .await
            .expect("recorded");
    }

    async fn publish(&self, envelope: &Envelope) {
        self.publisher
            .publish_envelope(envelope)
            .await
            .expect("published");
    }

    async fn outbound_waiting(&self) -> Option<u32> {
        let outbound = self.env.broker.topology().outbound_queue(Channel::Api);
        Some(self.env.broker.queue_stats(&outbound).await.ok()?.messages)
    }

    async fn stop(self, worker: JoinHandle<anyhow::Result<()>>) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, worker)
            .await
            .expect("the worker stopped")
            .expect("worker task")
            .expect("worker ran cleanly");
        self.publisher.close().await;
        self.env.teardown().await;
    }
}

#[tokio::test]
async fn a_stored_reply_wakes_its_long_polls_before_any_deliverer_has_it() {
    let f = Fixture::start("wake").await;
    // A poll's view of the mailbox, as an ingress replica has it. Subscribing wakes every
    // watcher once (to re-read after a gap): wait for that before the real test.
    let mailboxes = Mailboxes::new(f.env.cache.clone());
    let key = MailboxKey::new(f.tenant.id, Channel::Api, "c");
    let watch = mailboxes.watch(&key);
    let subscribed = watch.changed();
    broadcast::start(
        f.env.cache.clone(),
        vec![mailboxes.clone()],
        f.shutdown.clone(),
    );
    tokio::time::timeout(WAIT, subscribed)
        .await
        .expect("the subscription is up");

    let woken = watch.changed();
    let worker = f.start_worker();
    f.accept(&f.envelope("hello")).await;

    tokio::time::timeout(WAIT, woken)
        .await
        .expect("the worker woke the conversation's long-polls");
    let mailbox = f
        .env
        .db
        .tenant(f.tenant.id)
        .messages()
        .mailbox_after(f.conversation, 0, 10)
        .await
        .expect("mailbox");
    assert_eq!(mailbox.len(), 2, "the question and its answer are readable");
    // The reply is still on its way to a deliverer that does not exist.
    eventually(WAIT, "the reply to wait in the outbound queue", || async {
        (f.outbound_waiting().await? == 1).then_some(())
    })
    .await;
    f.stop(worker).await;
}

/// A new tenant's bot speaks as the seed's defaults say: a professional tone, in `en`
/// (existing tenants keep the values they have).
#[tokio::test]
async fn a_new_tenants_prompt_carries_the_seed_defaults() {
    let f = Fixture::start("seed-defaults").await;
    let config = f
        .env
        .db
        .tenant(f.tenant.id)
        .configs()
        .get()
        .await
        .expect("config")
        .expect("a new tenant has a config");
    assert_eq!(
        (
            config.persona_tone.as_str(),
            config.persona_language.as_str(),
            config.rag_top_k
        ),
        ("professional", "en", 5)
    );
    let worker = f.start_worker();
    f.accept(&f.envelope("hello")).await;
    let (system, max_tokens) = eventually(WAIT, "the LLM is asked", || async {
        let asked = f.sim.requests();
        let first = asked.first()?;
        Some((first.messages.first()?.content.clone(), first.max_tokens))
    })
    .await;
    assert_eq!(
        max_tokens,
        Some(1024),
        "a new tenant's output limit is sent"
    );
    assert!(
        system.contains("Tone: professional. Language: en."),
        "{system}"
    );
    f.stop(worker).await;
}

#[tokio::test]
async fn an_api_message_the_channel_did_not_record_is_not_answered() {
    let f = Fixture::start("withdrawn").await;
    let worker = f.start_worker();
    // Withdrawn after the broker failed to confirm, but its envelope got through.
    let withdrawn = f.envelope("never accepted");
    f.publish(&withdrawn).await;
    // The next message of the conversation, accepted as usual: its turn runs after the
    // first delivery's (one conversation's deliveries are handled in order).
    let accepted = f.envelope("accepted");
    f.accept(&accepted).await;

    eventually(WAIT, "the accepted message's reply", || async {
        (f.outbound_waiting().await? == 1).then_some(())
    })
    .await;
    let messages = f
        .env
        .db
        .tenant(f.tenant.id)
        .messages()
        .in_conversation(f.conversation, 10)
        .await
        .expect("messages");
    let envelopes: Vec<_> = messages.iter().map(|m| m.envelope_id).collect();
    assert_eq!(
        messages.len(),
        2,
        "the accepted question and its answer only"
    );
    assert_eq!(&envelopes[0], accepted.id.as_uuid());
    assert!(
        !envelopes.contains(withdrawn.id.as_uuid()),
        "the withdrawn message stays withdrawn"
    );
    f.stop(worker).await;
}

#[tokio::test]
async fn a_delivery_answered_ahead_of_it_is_acked_without_the_lock() {
    // Two deliveries held at once: two stuck ones would hold up everything behind them.
    let f = Fixture::start_with(
        "ahead",
        &[
            ("CHATFLEET__AMQP__PREFETCH", "2"),
            ("CHATFLEET__WORKER__TENANT_MAX_HELD", "2"),
        ],
    )
    .await;
    // Three messages accepted; only the first one's delivery is on its way yet.
    let envelopes: Vec<Envelope> = (0..3).map(|i| f.envelope(&format!("m{i}"))).collect();
    f.accept(&envelopes[0]).await;
    for later in &envelopes[1..] {
        f.record(later).await;
    }
    let worker = f.start_worker();
    eventually(WAIT, "one reply answering all three", || async {
        (f.outbound_waiting().await? == 1).then_some(())
    })
    .await;
    // Someone else holds the conversation now: deliveries that took the whole turn would
    // wait for the lock (a minute), and fill the worker's prefetch meanwhile.
    let locks = ConversationLocks::new(f.env.cache.clone(), Duration::from_secs(60));
    let _held = locks
        .acquire(f.tenant.id, f.conversation, WAIT)
        .await
        .expect("redis")
        .expect("the turn released the lock");
    for later in &envelopes[1..] {
        f.publish(later).await;
    }
    // Another conversation's message gets through behind them only if they were acked.
    f.accept(&f.envelope_in("d", "elsewhere")).await;
    eventually(WAIT, "the other conversation's reply", || async {
        (f.outbound_waiting().await? == 2).then_some(())
    })
    .await;
    f.stop(worker).await;
}
