//! Tenants spread over two database servers (the machine's MariaDB and the one
//! `scripts/test` starts): where new tenants go, that their rows live on their own shard
//! only, that credentials find them on either, and that a move — interrupted, rolled
//! back, resumed — leaves every row on exactly one shard with its ids.

use shared::Error;
use shared::db::Db;
use shared::ids::{Channel, ClientId};
use shared::testkit::{TWO_SHARDS, TestEnv, eventually};
use std::time::Duration;

/// Rows of `table` the tenant has on the shard at `index` (0 = home), read directly.
async fn rows_on(env: &TestEnv, index: usize, table: &str, client: ClientId) -> i64 {
    let url = env.settings.database.shard_list()[index].url.clone();
    let pool = sqlx::MySqlPool::connect(url.expose())
        .await
        .expect("connect");
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE client_id = ?"))
        .bind(client.get())
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    n
}

/// Polls until the tenant's statements are refused as unavailable (`paused`) or run.
async fn until_paused(db: &Db, client: ClientId, paused: bool) {
    eventually(
        Duration::from_secs(10),
        "the directory to change",
        || async {
            let answer = db.tenant(client).configs().get().await;
            (matches!(answer, Err(Error::Unavailable(_))) == paused).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn tenants_live_on_one_shard_each_and_move_whole() {
    let env = TestEnv::start(&[TWO_SHARDS]).await;
    assert_eq!(env.db.shard_names(), ["home", "second"]);
    let a = env.tenant("on-home").await;
    let b = env.tenant("on-second").await;
    let db = &env.db;
    let placed = |id| async move { db.placement(id).await.expect("directory") };
    assert_eq!(placed(a.id).await.expect("a row").shard, "home");
    assert_eq!(placed(b.id).await.expect("a row").shard, "second");

    // b's rows are on the second server only, with ids from that shard's own range.
    let conversation = env
        .db
        .tenant(b.id)
        .conversations()
        .get_or_create(Channel::Api, "order-1")
        .await
        .expect("b's conversation");
    assert!(conversation.get() >= 1 << 40, "{conversation}");
    assert_eq!(rows_on(&env, 1, "conversations", b.id).await, 1);
    assert_eq!(rows_on(&env, 0, "conversations", b.id).await, 0);
    assert_eq!(rows_on(&env, 1, "client_configs", b.id).await, 1);
    assert_eq!(rows_on(&env, 0, "client_configs", b.id).await, 0);
    let key = env
        .db
        .tenant(b.id)
        .api_keys()
        .create("k")
        .await
        .expect("key");
    assert_eq!(
        env.db
            .api_key_owner(key.key.expose())
            .await
            .expect("lookup"),
        Some(b.id)
    );
    let home_key = env
        .db
        .tenant(a.id)
        .api_keys()
        .create("k")
        .await
        .expect("key");
    assert_eq!(
        env.db
            .api_key_owner(home_key.key.expose())
            .await
            .expect("lookup"),
        Some(a.id)
    );

    // More conversations than one insert of the copy carries.
    for i in 0..250 {
        env.db
            .tenant(b.id)
            .conversations()
            .get_or_create(Channel::Api, &format!("more-{i}"))
            .await
            .expect("a conversation");
    }

    // A move that is rolled back: refused while open, served from where it was after.
    env.db.begin_move(b.id, "home").await.expect("begin");
    until_paused(&env.db, b.id, true).await;
    let refused = env.db.begin_move(b.id, "second").await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    env.db.copy_moving_tenant(b.id).await.expect("copy");
    assert_eq!(rows_on(&env, 0, "conversations", b.id).await, 251);
    env.db.cancel_move(b.id).await.expect("rollback");
    until_paused(&env.db, b.id, false).await;
    assert_eq!(rows_on(&env, 0, "conversations", b.id).await, 0);
    assert_eq!(placed(b.id).await.expect("row").shard, "second");

    // Interrupted after the copy, then run to the end: every row on home, same ids.
    env.db.begin_move(b.id, "home").await.expect("begin");
    env.db.copy_moving_tenant(b.id).await.expect("copy");
    let again = env.db.begin_move(b.id, "home").await.expect("resume");
    assert_eq!(again.moving_to.as_deref(), Some("home"));
    let moved = env.db.copy_moving_tenant(b.id).await.expect("copy again");
    let count = |table: &str| moved.iter().find(|t| t.table == table).map(|t| t.rows);
    assert_eq!(count("conversations"), Some(251));
    assert_eq!(count("client_configs"), Some(1));
    let finished = env.db.finish_move(b.id).await.expect("finish");
    assert_eq!(finished.shard, "home");
    assert_eq!(finished.moved_from.as_deref(), Some("second"));
    env.db.purge_moved_from(b.id).await.expect("purge");
    until_paused(&env.db, b.id, false).await;
    assert_eq!(rows_on(&env, 1, "conversations", b.id).await, 0);
    assert_eq!(rows_on(&env, 1, "client_configs", b.id).await, 0);
    assert_eq!(rows_on(&env, 0, "conversations", b.id).await, 251);
    let found = eventually(
        Duration::from_secs(5),
        "b's conversation on home",
        || async {
            env.db
                .tenant(b.id)
                .conversations()
                .get_or_create(Channel::Api, "order-1")
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(found, conversation, "a moved row keeps its id");
    assert_eq!(
        env.db
            .api_key_owner(key.key.expose())
            .await
            .expect("lookup"),
        Some(b.id),
        "its API key moved with it"
    );
    let nowhere = env.db.begin_move(b.id, "third").await;
    assert!(
        matches!(&nowhere, Err(Error::Invalid(m)) if m.contains("home, second")),
        "{nowhere:?}"
    );
    env.teardown().await;
}

/// The handoff inbox reads every shard: the conversations a human answers, of every
/// tenant, longest waiting first; those the bot answers are not listed. A tenant's
/// conversations newest first, by channel and mode, stay its own.
#[tokio::test]
async fn the_handoff_inbox_spans_tenants_and_shards() {
    use shared::db::ConversationMode::{Bot, Human};
    let env = TestEnv::start(&[TWO_SHARDS]).await;
    let a = env.tenant("inbox-home").await;
    let b = env.tenant("inbox-second").await;
    assert_eq!(
        env.db
            .placement(b.id)
            .await
            .expect("dir")
            .expect("row")
            .shard,
        "second"
    );
    let open = |client: ClientId, channel: Channel, key: &'static str| {
        let db = &env.db;
        async move {
            db.tenant(client)
                .conversations()
                .get_or_create(channel, key)
                .await
                .expect("conversation")
        }
    };
    let b_first = open(b.id, Channel::Widget, "b-first").await;
    let a_second = open(a.id, Channel::Api, "a-second").await;
    let a_bot = open(a.id, Channel::Api, "a-bot").await;
    let b_third = open(b.id, Channel::Api, "b-third").await;
    // Handed over in this order, a moment apart (the column keeps microseconds).
    for (client, conversation) in [(b.id, b_first), (a.id, a_second), (b.id, b_third)] {
        let switched = env
            .db
            .tenant(client)
            .conversations()
            .set_mode(conversation, Human)
            .await
            .expect("handoff");
        assert!(switched);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (waiting, unreadable) = env.db.waiting_for_humans(50).await;
    assert!(unreadable.is_empty(), "{unreadable:?}");
    let listed: Vec<_> = waiting
        .iter()
        .map(|w| (w.client_id, w.conversation.id))
        .collect();
    assert_eq!(listed, [(b.id, b_first), (a.id, a_second), (b.id, b_third)]);
    assert!(waiting.iter().all(|w| w.waiting_since.is_some()));
    assert_eq!(env.db.waiting_for_humans(2).await.0.len(), 2);

    // Handed back: off the inbox.
    env.db
        .tenant(b.id)
        .conversations()
        .set_mode(b_first, Bot)
        .await
        .expect("resume");
    let (waiting, _) = env.db.waiting_for_humans(50).await;
    assert_eq!(waiting[0].conversation.id, a_second);
    assert_eq!(waiting.len(), 2);

    // One tenant's listing, newest first and filtered.
    let a_list = env.db.tenant(a.id).conversations();
    let newest: Vec<_> = a_list
        .newest(u64::MAX, 10, None, None)
        .await
        .expect("newest")
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(newest, [a_bot, a_second]);
    let human = a_list
        .newest(u64::MAX, 10, Some(Channel::Api), Some(Human))
        .await
        .expect("filtered");
    assert_eq!(human.len(), 1);
    assert_eq!(human[0].id, a_second);
    assert!(
        a_list
            .newest(u64::MAX, 10, Some(Channel::Widget), None)
            .await
            .expect("none")
            .is_empty()
    );
    let older = a_list
        .newest(a_bot.get(), 10, None, None)
        .await
        .expect("page");
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].id, a_second);
    env.teardown().await;
}
