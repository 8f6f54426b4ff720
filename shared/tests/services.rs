//! The shared crate against the real services: topology declaration, the repositories'
//! idempotency and tenant scoping, the mailbox notifier, the conversation locks.

use std::time::Duration;

use shared::cache::{ConversationLocks, MailboxKey, Mailboxes};
use shared::db::{MessageState, NewReply, StoreOutcome};
use shared::envelope::ReplyKind;
use shared::ids::{Channel, ClientId, ConversationId, EnvelopeId, ReplyId};
use shared::mq::Broker;
use shared::settings::AmqpSettings;
use shared::testkit::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn declaring_the_topology_twice_is_harmless() {
    let env = TestEnv::start(&[]).await;
    env.broker
        .declare_topology()
        .await
        .expect("second declaration");
    env.broker
        .declare_topology()
        .await
        .expect("third declaration");
    let stats = env
        .broker
        .queue_stats(&env.broker.topology().inbound_work())
        .await
        .expect("work queue exists");
    assert_eq!(stats.messages, 0);
    for queue in env.broker.topology().queues() {
        env.broker
            .queue_stats(&queue)
            .await
            .unwrap_or_else(|e| panic!("{queue}: {e}"));
    }
    env.teardown().await;
}

#[tokio::test]
async fn a_conflicting_redeclaration_names_the_queue() {
    let env = TestEnv::start(&[]).await;
    let changed = AmqpSettings {
        delivery_limit: env.settings.amqp.delivery_limit + 1,
        ..env.settings.amqp.clone()
    };
    let other = Broker::connect(&changed, "conflict")
        .await
        .expect("connect");
    let err = other
        .declare_topology()
        .await
        .expect_err("arguments differ")
        .to_string();
    assert!(err.contains(&env.broker.topology().inbound_work()), "{err}");
    other.close().await;
    env.teardown().await;
}

#[tokio::test]
async fn a_user_turn_is_recorded_once_and_answered_once() {
    let env = TestEnv::start(&[]).await;
    let t = env.tenant("once").await;
    let conv = env
        .db
        .tenant(t.id)
        .conversations()
        .get_or_create(Channel::Api, "c1")
        .await
        .expect("conv");
    assert_eq!(
        env.db
            .tenant(t.id)
            .conversations()
            .get_or_create(Channel::Api, "c1")
            .await
            .expect("again"),
        conv
    );
    let case = env
        .db
        .tenant(t.id)
        .conversations()
        .get_or_create(Channel::Api, "C1")
        .await
        .expect("case");
    assert_ne!(case, conv, "conversation keys are case-sensitive");

    let envelope = EnvelopeId::deterministic(t.id, Channel::Api, "k");
    let first = env
        .db
        .tenant(t.id)
        .messages()
        .record_user(conv, envelope, "hi", None)
        .await
        .expect("record");
    assert!(first.newly_recorded);
    let again = env
        .db
        .tenant(t.id)
        .messages()
        .record_user(conv, envelope, "hi", None)
        .await
        .expect("again");
    assert!(!again.newly_recorded);
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(again.state, MessageState::Pending);
    // Inserting first (as a channel accepting it does) finds the same recording, and
    // takes no mailbox position (the reply below gets position 2).
    let accepted = env
        .db
        .tenant(t.id)
        .messages()
        .accept_user(conv, envelope, "hi", None)
        .await
        .expect("accept again");
    assert!(!accepted.newly_recorded);
    assert_eq!(accepted.message_id, first.message_id);

    let reply = |id: ReplyId| NewReply {
        conversation_id: conv,
        reply_id: id,
        kind: ReplyKind::Bot,
        text: "hello".into(),
        answers: vec![first.message_id],
        prompt_tokens: Some(10),
        completion_tokens: Some(2),
        estimated_prompt_tokens: None,
        config_version: 1,
        choices: Vec::new(),
        accounting: Default::default(),
    };
    let reply_id = ReplyId::random();
    assert_eq!(
        env.db
            .tenant(t.id)
            .messages()
            .store_reply(&reply(reply_id))
            .await
            .expect("store"),
        StoreOutcome::Stored
    );
    assert_eq!(
        env.db
            .tenant(t.id)
            .messages()
            .store_reply(&reply(ReplyId::random()))
            .await
            .expect("second store"),
        StoreOutcome::AnsweredBefore,
        "one reply per turn"
    );
    let answered = env
        .db
        .tenant(t.id)
        .messages()
        .record_user(conv, envelope, "hi", None)
        .await
        .expect("after");
    assert_eq!(answered.state, MessageState::Answered);
    assert_eq!(answered.reply.expect("stored reply").id, reply_id);

    // Into the mailbox exactly once, after the user message.
    let seq = env
        .db
        .tenant(t.id)
        .messages()
        .deliver_to_mailbox(conv, reply_id)
        .await
        .expect("deliver");
    assert_eq!(seq, Some(2));
    assert_eq!(
        env.db
            .tenant(t.id)
            .messages()
            .deliver_to_mailbox(conv, reply_id)
            .await
            .expect("again"),
        None
    );
    let mailbox = env
        .db
        .tenant(t.id)
        .messages()
        .mailbox_after(conv, 0, 10)
        .await
        .expect("mailbox");
    assert_eq!(mailbox.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(
        env.db
            .tenant(t.id)
            .messages()
            .mailbox_after(conv, 2, 10)
            .await
            .expect("after")
            .is_empty()
    );
    env.teardown().await;
}

#[tokio::test]
async fn repositories_never_cross_tenants() {
    let env = TestEnv::start(&[]).await;
    let a = env.tenant("alpha").await;
    let b = env.tenant("bravo").await;
    let conv_a = env
        .db
        .tenant(a.id)
        .conversations()
        .get_or_create(Channel::Api, "same")
        .await
        .expect("a");
    let conv_b = env
        .db
        .tenant(b.id)
        .conversations()
        .get_or_create(Channel::Api, "same")
        .await
        .expect("b");
    assert_ne!(conv_a, conv_b);
    let envelope = EnvelopeId::deterministic(a.id, Channel::Api, "k");
    env.db
        .tenant(a.id)
        .messages()
        .record_user(conv_a, envelope, "secret of a", None)
        .await
        .expect("record");
    // B cannot read, write into or deliver to A's conversation, even knowing its id.
    assert!(
        env.db
            .tenant(b.id)
            .messages()
            .mailbox_after(conv_a, 0, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        env.db
            .tenant(b.id)
            .messages()
            .record_user(conv_a, EnvelopeId::random(), "x", None)
            .await
            .is_err()
    );
    assert!(
        env.db
            .tenant(b.id)
            .messages()
            .history_before(conv_a, u64::MAX, 10)
            .await
            .expect("history")
            .is_empty()
    );
    assert_eq!(
        env.db.api_key_owner(&a.api_key).await.expect("auth"),
        Some(a.id)
    );
    assert_eq!(
        env.db.api_key_owner(&b.api_key).await.expect("auth"),
        Some(b.id)
    );
    assert!(
        !env.db
            .tenant(ClientId::new(b.id.get()))
            .api_keys()
            .revoke(1)
            .await
            .expect("revoke A's key as B")
    );
    assert_eq!(
        env.db.api_key_owner(&a.api_key).await.expect("auth"),
        Some(a.id)
    );
    env.teardown().await;
}

#[tokio::test]
async fn an_announcement_wakes_a_watcher_registered_before_it() {
    let env = TestEnv::start(&[]).await;
    let shutdown = CancellationToken::new();
    let listener = Mailboxes::new(env.cache.clone());
    let announcer = Mailboxes::new(env.cache.clone());
    shared::cache::broadcast::start(env.cache.clone(), vec![listener.clone()], shutdown.clone());
    let key = MailboxKey::new(ClientId::new(1), Channel::Api, "conv");
    let watch = listener.watch(&key);
    // The subscription may still be connecting: announce until it wakes (each try is
    // a real cross-connection publish, like one replica telling another).
    let woke = async {
        loop {
            let changed = watch.changed();
            announcer.announce(&key).await.expect("announce");
            if tokio::time::timeout(Duration::from_millis(200), changed)
                .await
                .is_ok()
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), woke)
        .await
        .expect("the watcher woke");
    // Echoes of the earlier tries may still be on their way: let them pass.
    while tokio::time::timeout(Duration::from_millis(300), watch.changed())
        .await
        .is_ok()
    {}
    // A different key does not wake it.
    let changed = watch.changed();
    announcer
        .announce(&MailboxKey::new(ClientId::new(2), Channel::Api, "conv"))
        .await
        .expect("announce");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), changed)
            .await
            .is_err()
    );
    shutdown.cancel();
    env.teardown().await;
}

#[tokio::test]
async fn envelopes_carry_the_request_id_and_prefetch_bounds_unacked_deliveries() {
    use shared::envelope::{Envelope, MessageContent, Trace};

    let env = TestEnv::start(&[]).await;
    let publisher = env.broker.publisher().await.expect("publisher");
    let envelope = |n: u32| {
        Envelope::inbound(
            EnvelopeId::random(),
            ClientId::new(9),
            Channel::Api,
            "c".into(),
            MessageContent::text(format!("m{n}")),
            Trace {
                request_id: format!("req-{n}"),
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            },
        )
    };
    let sent: Vec<Envelope> = (1..=3).map(envelope).collect();
    for e in &sent {
        publisher.publish_envelope(e).await.expect("confirmed");
    }
    // One tenant, no conversation named: one shard holds them all.
    let shard = env.broker.topology().shard_of(ClientId::new(9), None);
    let mut consumer = env
        .broker
        .consume(&env.broker.topology().work_shard(shard), 2, "test")
        .await
        .expect("consume");
    let first = consumer.next().await.expect("first");
    let second = consumer.next().await.expect("second");
    assert_eq!(first.correlation_id.as_deref(), Some("req-1"));
    assert_eq!(
        first.message_id.as_deref(),
        Some(sent[0].id.to_string().as_str())
    );
    assert_eq!(first.routing_key, format!("api.9.{shard}"));
    assert_eq!(first.attempt, 1);
    let headers = first.headers();
    assert_eq!(headers.get("x-client-id").map(String::as_str), Some("9"));
    assert_eq!(headers.get("x-channel").map(String::as_str), Some("api"));
    assert!(
        headers
            .get("traceparent")
            .is_some_and(|t| t.starts_with("00-0af7"))
    );
    let decoded: Envelope = serde_json::from_slice(&second.body).expect("an envelope");
    assert_eq!(decoded, sent[1]);
    // Two unacked deliveries fill the prefetch window: the third waits for an ack.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err()
    );
    first.ack().await.expect("ack");
    let third = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("delivered after the ack")
        .expect("third");
    assert_eq!(third.correlation_id.as_deref(), Some("req-3"));
    second.ack().await.expect("ack");
    third.ack().await.expect("ack");
    env.teardown().await;
}

/// Each conversation's envelopes wait in one work shard (its hash's), the shards share
/// the conversations out, the archive holds every envelope once, and an envelope of a
/// publisher that predates the shards (a two-word routing key) takes the way back in.
#[tokio::test]
async fn a_conversations_envelopes_wait_in_its_one_work_shard() {
    use shared::envelope::{Envelope, MessageContent, Trace};

    let env = TestEnv::start(&[("CHATFLEET__AMQP__WORK_SHARDS", "4")]).await;
    let topology = env.broker.topology().clone();
    assert_eq!(topology.work_shards(), 4);
    let publisher = env.broker.publisher().await.expect("publisher");
    let mut expected = vec![0u32; 4];
    for conversation in 1..=40u64 {
        for n in 0..3 {
            let mut envelope = Envelope::inbound(
                EnvelopeId::random(),
                ClientId::new(5),
                Channel::Api,
                format!("c{conversation}"),
                MessageContent::text(format!("m{n}")),
                Trace {
                    request_id: format!("req-{conversation}-{n}"),
                    traceparent: None,
                },
            );
            envelope.conversation_id = Some(ConversationId::new(conversation));
            publisher
                .publish_envelope(&envelope)
                .await
                .expect("confirmed");
            let shard =
                topology.shard_of(ClientId::new(5), Some(ConversationId::new(conversation)));
            expected[usize::from(shard)] += 1;
        }
    }
    publisher
        .publish_inbound_raw("api.5", b"{}")
        .await
        .expect("confirmed");
    for shard in 0..4u16 {
        let waiting = env
            .broker
            .queue_stats(&topology.work_shard(shard))
            .await
            .expect("shard")
            .messages;
        assert_eq!(waiting, expected[usize::from(shard)], "shard {shard}");
        assert!(
            waiting >= 9,
            "40 conversations leave no shard nearly empty: {expected:?}"
        );
    }
    let way_back = env
        .broker
        .queue_stats(&topology.inbound_work())
        .await
        .expect("way back");
    assert_eq!(way_back.messages, 1, "the two-word key");
    assert_eq!(env.broker.work_waiting().await.expect("waiting"), 121);
    env.teardown().await;
}

#[tokio::test]
async fn a_held_lock_outlives_its_ttl_and_a_dropped_one_expires() {
    let env = TestEnv::start(&[]).await;
    let ttl = Duration::from_millis(600);
    let locks = ConversationLocks::new(env.cache.clone(), ttl);
    let (tenant, conversation) = (ClientId::new(7), ConversationId::new(70));
    let held = locks
        .acquire(tenant, conversation, Duration::ZERO)
        .await
        .expect("redis")
        .expect("a free lock is taken");
    // Three TTLs: only the renewals (every third of the TTL) keep it.
    tokio::time::sleep(3 * ttl).await;
    assert!(!held.lost(), "no renewal found the lock gone");
    let second = locks
        .acquire(tenant, conversation, Duration::ZERO)
        .await
        .expect("redis");
    assert!(second.is_none(), "the renewed lock is still held");
    // Another tenant's conversation with the same id is another lock.
    assert!(
        locks
            .acquire(ClientId::new(8), conversation, Duration::ZERO)
            .await
            .expect("redis")
            .is_some()
    );
    // Dropped without a release (a turn cut off): renewals stop, the lock expires.
    drop(held);
    let taken = eventually(
        Duration::from_secs(10),
        "the dropped lock expires",
        || async {
            locks
                .acquire(tenant, conversation, Duration::ZERO)
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    locks.release(taken).await.expect("release");
    env.teardown().await;
}

/// The migrated schema keeps the guard's promises: every table with a `client_id` column
/// is on the guard's list of tenant tables (a migration adding one fails here until the
/// guard knows it), and every foreign key to a tenant table includes `client_id`, so a
/// row can only point at its own tenant's rows.
#[tokio::test]
async fn every_tenant_table_is_guarded_and_its_foreign_keys_include_the_tenant() {
    let env = TestEnv::start(&[]).await;
    let pool = sqlx::MySqlPool::connect(env.settings.database.url.expose())
        .await
        .expect("connect");
    let with_client_id: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND COLUMN_NAME = 'client_id'",
    )
    .fetch_all(&pool)
    .await
    .expect("columns");
    assert!(with_client_id.len() >= 9, "{with_client_id:?}");
    for table in &with_client_id {
        assert!(
            shared::db::guard::TENANT_TABLES.contains(&table.as_str()),
            "{table} has a client_id column but the isolation guard does not know it"
        );
    }
    let keys: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT CAST(TABLE_NAME AS CHAR), CAST(CONSTRAINT_NAME AS CHAR), \
           CAST(GROUP_CONCAT(COLUMN_NAME ORDER BY ORDINAL_POSITION) AS CHAR) \
         FROM information_schema.KEY_COLUMN_USAGE \
         WHERE TABLE_SCHEMA = DATABASE() AND REFERENCED_TABLE_NAME IS NOT NULL \
           AND REFERENCED_TABLE_NAME <> 'clients' \
         GROUP BY TABLE_NAME, CONSTRAINT_NAME",
    )
    .fetch_all(&pool)
    .await
    .expect("foreign keys");
    assert!(
        !keys.is_empty(),
        "messages refers to conversations at least"
    );
    for (table, name, columns) in keys {
        assert!(
            columns.split(',').any(|c| c == "client_id"),
            "{table}.{name} ({columns}) refers to a tenant table without client_id"
        );
    }
    pool.close().await;
    env.teardown().await;
}

/// A test that fails before its teardown leaves nothing behind: dropping its environment
/// removes its queues, its database and its keys.
#[tokio::test]
async fn a_failed_tests_environment_removes_itself_when_dropped() {
    let env = TestEnv::start(&[]).await;
    // A key under its prefix (a failed admin sign-in's count).
    env.cache
        .admin_auth_failed([127, 0, 0, 1].into(), 10)
        .await
        .expect("a key");
    let settings = env.settings.clone();
    let work = env.broker.topology().inbound_work();
    drop(env);

    let broker = Broker::connect(&settings.amqp, "cleanup-check")
        .await
        .expect("broker");
    assert!(
        broker.queue_stats(&work).await.is_err(),
        "{work} is still declared"
    );
    broker.close().await;
    let url = settings.database.shard_list()[0].url.clone();
    use sqlx::migrate::MigrateDatabase;
    assert!(
        !sqlx::MySql::database_exists(url.expose())
            .await
            .expect("asked"),
        "the test database is still there"
    );
    let cache = shared::cache::Cache::connect(&settings.redis)
        .await
        .expect("redis");
    assert_eq!(cache.delete_prefixed().await.expect("keys"), 0);
}
