//! A stored reply wakes its conversation's long-polls from the worker itself, as soon as
//! it is committed: a poll does not wait for the broker to carry the reply to the
//! channel's deliverer. Here no ingress, and so no deliverer, runs at all.

use std::time::Duration;

use chrono::Utc;
use shared::cache::{MailboxKey, Mailboxes, broadcast};
use shared::envelope::{ENVELOPE_VERSION, Envelope, MessageContent, Sender, Trace};
use shared::ids::{Channel, EnvelopeId};
use shared::pii::Pii;
use shared::testkit::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;
use worker::llm::sim::{LlmSim, SimOptions};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_stored_reply_wakes_its_long_polls_before_any_deliverer_has_it() {
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
    let env = TestEnv::start(&[(
        "CHATFLEET__LLM__PROVIDERS__OLLAMA__BASE_URL",
        sim_url.as_str(),
    )])
    .await;
    let t = env.tenant("wake").await;

    // A poll's view of the mailbox, as an ingress replica has it. Subscribing wakes every
    // watcher once (to re-read after a gap): wait for that before the real test.
    let mailboxes = Mailboxes::new(env.cache.clone());
    let key = MailboxKey::new(t.id, Channel::Api, "c");
    let watch = mailboxes.watch(&key);
    let subscribed = watch.changed();
    broadcast::start(env.cache.clone(), vec![mailboxes.clone()], shutdown.clone());
    tokio::time::timeout(WAIT, subscribed)
        .await
        .expect("the subscription is up");

    // The message as the API channel accepts it: recorded, then its envelope published.
    let conversation = env
        .db
        .conversations()
        .get_or_create(t.id, Channel::Api, "c")
        .await
        .expect("conversation");
    let envelope = Envelope {
        v: ENVELOPE_VERSION,
        id: EnvelopeId::random(),
        client_id: t.id,
        channel: Channel::Api,
        external_id: Pii::new("c".to_owned()),
        sender: Sender {
            id: Pii::new("c".to_owned()),
            name: None,
        },
        message: MessageContent::text("hello"),
        channel_message_id: None,
        channel_account: None,
        received_at: Utc::now(),
        trace: Trace {
            request_id: "wake-test".into(),
            traceparent: None,
        },
        replay: None,
        metadata: None,
    };
    env.db
        .messages()
        .accept_user(t.id, conversation, envelope.id, "hello", None)
        .await
        .expect("recorded");
    let woken = watch.changed();
    let worker = tokio::spawn(worker::run(env.settings.clone(), shutdown.clone()));
    let publisher = env.broker.publisher().await.expect("publisher");
    publisher
        .publish_envelope(&envelope)
        .await
        .expect("published");

    tokio::time::timeout(WAIT, woken)
        .await
        .expect("the worker woke the conversation's long-polls");
    let mailbox = env
        .db
        .messages()
        .mailbox_after(t.id, conversation, 0, 10)
        .await
        .expect("mailbox");
    assert_eq!(mailbox.len(), 2, "the question and its answer are readable");
    // The reply is still on its way to a deliverer that does not exist.
    let outbound = env.broker.topology().outbound_queue(Channel::Api);
    eventually(WAIT, "the reply to wait in the outbound queue", || async {
        (env.broker.queue_stats(&outbound).await.ok()?.messages == 1).then_some(())
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(WAIT, worker)
        .await
        .expect("the worker stopped")
        .expect("worker task")
        .expect("worker ran cleanly");
    publisher.close().await;
    env.teardown().await;
}
