//! The data layer: the only place SQL lives. A tenant's data is reached through
//! [`Db::tenant`], whose repositories are bound to that tenant once and filter every
//! statement by its `client_id`, so no query can read or write another tenant's rows by
//! accident; the isolation guard ([`guard`]) checks every statement as well. The tenant
//! registry ([`Db::clients`]) and the two lookups that find a tenant from a credential
//! ([`Db::api_key_owner`], [`Db::channel_account_owner`]) are the only ways in that do
//! not start from a tenant.
//!
//! The schema lives in `migrations/` (embedded at build time) and is applied by
//! [`Db::migrate`]; the stored procedures' current bodies in `procedures/`. sqlx types
//! stay inside this module: callers see [`Db`] and the repositories' plain row types.

mod agent_modes;
mod api_keys;
mod channel_accounts;
mod clients;
mod configs;
mod conversations;
mod data_keys;
mod devices;
mod direct;
mod erasure;
pub mod guard;
mod knowledge;
mod llm_credentials;
mod messages;
mod moving;
mod operators;
mod server_work;
mod shards;
mod text_column;
mod tool_calls;
mod tools;
mod usage;
mod webhook_log;
mod webhooks;

use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

pub use agent_modes::{AgentMode, ModePatch, NewAgentMode};
pub use api_keys::{ApiKeyInfo, ApiKeys, NewApiKey};
pub use channel_accounts::{ChannelAccount, ChannelAccounts};
pub use clients::{Client, ClientPatch, Clients, NewClient};
pub use configs::{BudgetAction, BudgetPolicy, ClientConfig, ConfigUpdate, Configs, TenantConfig};
pub use conversations::{
    ConversationMode, ConversationSummary, Conversations, UserWindow, WaitingConversation,
};
pub use data_keys::StoredDataKey;
pub use devices::Devices;
pub use erasure::{ERASED_PREFIX, Erased};
pub use knowledge::{KnowledgeDocument, KnowledgeDocuments, Registered};
pub use llm_credentials::{LlmCredential, LlmCredentials};
pub use messages::{
    ClosedAs, DeliveryStatus, HistoryTurn, KeyOwner, MailboxItem, MessageState, Messages, NewReply,
    NewUserMessage, OpenTurn, Pending, PendingTurn, RecordedUser, ReplyAccounting, Role,
    StoreOutcome, StoredMessage, StoredReply,
};
pub use moving::MovedTable;
pub use operators::{
    AuditEntry, AuditLog, NewAuditEntry, Operator, OperatorToken, Operators, Scope,
};
pub use server_work::ServerWork;
pub use shards::{DIRECTORY_TTL, PAUSE_SETTLES, Placement};
pub use text_column::UnknownWord;
pub use tool_calls::{ToolCallRecord, ToolCallRow, ToolCallStatus, ToolCalls};
pub use tools::{BuiltinTool, MAX_TOOL_TIMEOUT_MS, Tool, ToolAuthKind, ToolMethod, Tools};
pub use usage::{Usage, UsageDay};
pub use webhook_log::{
    Attempt, DeliveryState, EventSelector, NewAttempt, OwedDelivery, RecordedEvent, WebhookLog,
};
pub use webhooks::{
    EventFilter, NewWebhook, SealedSecrets, Webhook, WebhookSubscription, Webhooks,
};

use crate::error::{Error, Result};
use crate::ids::{Channel, ClientId};
use crate::settings::{DatabaseSettings, ShardTarget};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

use direct::{BrokenAt, DirectPool, IDLE_BEFORE_PING};
use shards::{Shard, Shards};

/// The chatfleet databases: one per shard ([`shards`]), each with the message path's
/// single statements ([`direct`]) and everything else (transactions, admin, migrations).
#[derive(Debug, Clone)]
pub struct Db {
    shards: std::sync::Arc<Shards>,
}

impl Db {
    /// Connects to every shard's existing database. Run [`Db::migrate`] (or `chatfleet
    /// migrate`) first.
    ///
    /// `database.max_connections` is split: the message path's statements get up to that
    /// many, everything else up to half as many (at least two), each opened on demand.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self> {
        let mut list = Vec::new();
        for target in settings.shard_list() {
            let home = list.is_empty();
            list.push(Self::connect_shard(&target, settings.max_connections, home).await?);
        }
        Ok(Self {
            shards: std::sync::Arc::new(Shards::new(list)),
        })
    }

    /// A shard's pools. The home must answer now, so a wrong URL or a server that is
    /// down fails start-up; another shard that is down fails only its tenants'
    /// statements until it is back.
    async fn connect_shard(
        target: &ShardTarget,
        max_connections: u32,
        must_answer: bool,
    ) -> Result<Shard> {
        let options: MySqlConnectOptions = target.url.expose().parse()?;
        let options = options.charset("utf8mb4").timezone(Some("+00:00".into()));
        let broken_at = BrokenAt::default();
        let checked = broken_at.clone();
        let pool = MySqlPoolOptions::new()
            .max_connections((max_connections / 2).max(2))
            .min_connections(u32::from(must_answer))
            .acquire_timeout(Duration::from_secs(10))
            // sqlx pings every connection it hands out by default: a round trip per
            // statement on the busiest path. Only a connection that sat idle long enough
            // for the server to have gone away (a restart, `wait_timeout`), or that sat
            // idle while the message path found one broken, is checked; a busy one that
            // broke fails its statement, which every caller handles.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                let broken_meanwhile = checked.spans(meta.idle_for);
                Box::pin(async move {
                    if broken_meanwhile || meta.idle_for >= IDLE_BEFORE_PING {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options.clone());
        if must_answer && let Err(e) = pool.acquire().await {
            tracing::error!(shard = %target.name, error = %e, "cannot connect to the database (is MariaDB up, and was `chatfleet migrate` run?)");
            return Err(Error::Database(e));
        }
        let direct = DirectPool::new(options, max_connections, broken_at);
        Ok(Shard {
            name: target.name.clone(),
            pool,
            direct,
        })
    }

    /// Creates each shard's database when it does not exist and applies pending
    /// migrations to every shard; then, on the home, numbers new shards (their ids start
    /// apart, see [`moving`]) and gives every tenant without a directory row the home.
    /// Safe to run concurrently from several processes (sqlx takes a migration lock).
    pub async fn migrate(settings: &DatabaseSettings) -> Result<Self> {
        for target in settings.shard_list() {
            let url = target.url.expose();
            if !sqlx::MySql::database_exists(url).await? {
                sqlx::MySql::create_database(url).await?;
            }
        }
        let db = Self::connect(settings).await?;
        for shard in db.shards.all() {
            MIGRATOR.run(&shard.pool).await?;
        }
        moving::number_shards(&db.shards).await?;
        Ok(db)
    }

    /// Drops every shard's database `settings` names (throw-away runs: tests, chaos runs).
    pub async fn drop_database(settings: &DatabaseSettings) -> Result<()> {
        for target in settings.shard_list() {
            sqlx::MySql::drop_database(target.url.expose()).await?;
        }
        Ok(())
    }

    /// Round-trips a trivial query on the home shard (readiness checks).
    pub async fn ping(&self) -> Result<()> {
        guard::query("SELECT 1")?.execute(&self.home().pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        for shard in self.shards.all() {
            shard.direct.close();
            shard.pool.close().await;
        }
    }

    fn home(&self) -> &Shard {
        self.shards.home()
    }

    /// The names of the shards, the home first.
    pub fn shard_names(&self) -> Vec<&str> {
        self.shards.all().iter().map(|s| s.name.as_str()).collect()
    }

    /// The tenant registry (`clients`): creating, listing and finding tenants.
    pub fn clients(&self) -> Clients<'_> {
        Clients::new(self)
    }

    /// The admin API's operators and their tokens (the platform's, not a tenant's).
    pub fn operators(&self) -> Operators<'_> {
        Operators::new(&self.home().pool)
    }

    /// The record of admin writes.
    pub fn audit(&self) -> AuditLog<'_> {
        AuditLog::new(&self.home().pool)
    }

    /// Where the directory places `client_id` (`None`: no row; it is on the home).
    pub async fn placement(&self, client_id: ClientId) -> Result<Option<Placement>> {
        self.shards.placement(client_id).await
    }

    /// One tenant's data: every repository it hands out binds each statement to
    /// `client_id` (the isolation guard checks each statement as well) and runs it on
    /// the tenant's shard.
    pub fn tenant(&self, client_id: ClientId) -> TenantDb<'_> {
        TenantDb {
            db: self,
            client_id,
        }
    }

    /// The tenant a presented API key belongs to, or `None` for a malformed, unknown or
    /// revoked key: the one lookup that cannot start from a tenant, since it is how the
    /// tenant is found (by the key's public prefix, the hash compared in constant time).
    pub async fn api_key_owner(&self, presented: &str) -> Result<Option<ClientId>> {
        first_found(self.shards.all(), |shard| {
            api_keys::authenticate(&shard.pool, presented)
        })
        .await
    }

    /// The tenant and account id that own `external_account_id` on `channel` (how an
    /// inbound webhook finds its tenant: it cannot start from one).
    pub async fn channel_account_owner(
        &self,
        channel: Channel,
        external_account_id: &str,
    ) -> Result<Option<(ClientId, u64)>> {
        first_found(self.shards.all(), |shard| {
            channel_accounts::owner(&shard.pool, channel, external_account_id)
        })
        .await
    }

    /// Every conversation a human answers, longest waiting first, at most `limit`, read
    /// from every shard at once (a tenant's copy left on a shard it moved from is not listed;
    /// a tenant in the middle of a move is listed once it has landed), and the names of
    /// the shards that could not be read: the operators' handoff inbox.
    pub async fn waiting_for_humans(&self, limit: u32) -> (Vec<WaitingConversation>, Vec<String>) {
        let read = self.shards.all().iter().map(|shard| async move {
            (
                shard,
                conversations::waiting_for_humans(&shard.pool, limit).await,
            )
        });
        let mut waiting = Vec::new();
        let mut unreadable = Vec::new();
        for (shard, found) in futures::future::join_all(read).await {
            let found = match found {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(shard = %shard.name, error = %e, "handoff inbox: shard unreadable");
                    unreadable.push(shard.name.clone());
                    continue;
                }
            };
            for conversation in found {
                let placed = self.shards.of(conversation.client_id).await;
                if placed.is_ok_and(|home| home.name == shard.name) {
                    waiting.push(conversation);
                }
            }
        }
        waiting.sort_by_key(|w| (w.waiting_since, w.client_id, w.conversation.id));
        waiting.truncate(limit as usize);
        (waiting, unreadable)
    }
}

/// Asks every shard at once and answers with the first that finds something: a shard
/// that is down delays (and fails) only lookups that no other shard answers.
async fn first_found<'s, T, F>(
    shards: &'s [Shard],
    lookup: impl Fn(&'s Shard) -> F,
) -> Result<Option<T>>
where
    F: Future<Output = Result<Option<T>>>,
{
    use futures::StreamExt;
    let mut asked: futures::stream::FuturesUnordered<F> = shards.iter().map(lookup).collect();
    let mut failure = None;
    while let Some(answer) = asked.next().await {
        match answer {
            Ok(Some(found)) => return Ok(Some(found)),
            Ok(None) => {}
            Err(e) => failure = Some(e),
        }
    }
    failure.map_or(Ok(None), Err)
}

/// A tenant's statements' way to its shard, found when the first one runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed<'a> {
    db: &'a Db,
    client_id: ClientId,
}

impl<'a> Placed<'a> {
    /// The pool of the tenant's shard (sqlx's: transactions and the admin path).
    async fn get(&self) -> Result<&'a MySqlPool> {
        Ok(&self.db.shards.of(self.client_id).await?.pool)
    }

    /// The tenant shard's message-path pool ([`direct`]).
    async fn direct(&self) -> Result<&'a DirectPool> {
        Ok(&self.db.shards.of(self.client_id).await?.direct)
    }

    fn db(&self) -> &'a Db {
        self.db
    }
}

/// One tenant's repositories ([`Db::tenant`]).
#[derive(Debug, Clone, Copy)]
pub struct TenantDb<'a> {
    db: &'a Db,
    client_id: ClientId,
}

impl<'a> TenantDb<'a> {
    fn placed(&self) -> Placed<'a> {
        Placed {
            db: self.db,
            client_id: self.client_id,
        }
    }
    pub fn configs(&self) -> Configs<'a> {
        Configs::new(self.placed(), self.client_id)
    }
    pub fn api_keys(&self) -> ApiKeys<'a> {
        ApiKeys::new(self.placed(), self.client_id)
    }
    pub fn channel_accounts(&self) -> ChannelAccounts<'a> {
        ChannelAccounts::new(self.placed(), self.client_id)
    }
    pub fn knowledge(&self) -> KnowledgeDocuments<'a> {
        KnowledgeDocuments::new(self.placed(), self.client_id)
    }
    pub fn usage(&self) -> Usage<'a> {
        Usage::new(self.placed(), self.client_id)
    }
    pub fn conversations(&self) -> Conversations<'a> {
        Conversations::new(self.placed(), self.client_id)
    }
    pub fn messages(&self) -> Messages<'a> {
        Messages::new(self.placed(), self.client_id)
    }
    pub fn devices(&self) -> Devices<'a> {
        Devices::new(self.placed(), self.client_id)
    }
    pub fn llm_credentials(&self) -> LlmCredentials<'a> {
        LlmCredentials::new(self.placed(), self.client_id)
    }
    pub fn tools(&self) -> Tools<'a> {
        Tools::new(self.placed(), self.client_id)
    }
    pub fn tool_calls(&self) -> ToolCalls<'a> {
        ToolCalls::new(self.placed(), self.client_id)
    }
    pub fn webhooks(&self) -> Webhooks<'a> {
        Webhooks::new(self.placed(), self.client_id)
    }
    pub fn webhook_log(&self) -> WebhookLog<'a> {
        WebhookLog::new(self.placed(), self.client_id)
    }
}

/// MySQL's "duplicate entry" error (ER_DUP_ENTRY).
fn is_duplicate_key(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23000")
        && db.message().contains("Duplicate entry"))
}

/// InnoDB chose this transaction as a deadlock's victim and rolled it back
/// (ER_LOCK_DEADLOCK, SQLSTATE 40001): running it again is the prescribed answer.
fn is_deadlock(err: &Error) -> bool {
    matches!(err, Error::Database(sqlx::Error::Database(db))
        if db.code().as_deref() == Some("40001"))
}

fn client_id_of(raw: u64) -> ClientId {
    ClientId::new(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Channel;
    use crate::testkit::TestEnv;

    async fn touch(
        tx: &mut sqlx::Transaction<'static, sqlx::MySql>,
        client_id: ClientId,
        conversation: crate::ids::ConversationId,
    ) -> Result<()> {
        guard::query(
            "UPDATE conversations SET last_seq = last_seq WHERE client_id = ? AND id = ?",
        )?
        .bind(client_id.get())
        .bind(conversation.get())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// What `Messages::store_reply` runs again: a real deadlock's victim, and only it.
    #[tokio::test]
    async fn a_deadlock_victim_is_told_apart_from_other_failures() {
        let env = TestEnv::start(&[]).await;
        let t = env.tenant("deadlock").await;
        let conversations = env.db.tenant(t.id).conversations();
        let a = conversations
            .get_or_create(Channel::Api, "a")
            .await
            .expect("a");
        let b = conversations
            .get_or_create(Channel::Api, "b")
            .await
            .expect("b");
        let (mut one, mut two) = (
            env.db.home().pool.begin().await.expect("begin"),
            env.db.home().pool.begin().await.expect("begin"),
        );
        touch(&mut one, t.id, a).await.expect("one locks a");
        touch(&mut two, t.id, b).await.expect("two locks b");
        // Each now wants the other's row: InnoDB rolls one of them back.
        let (first, second) = tokio::join!(touch(&mut one, t.id, b), touch(&mut two, t.id, a));
        let victims = [&first, &second]
            .into_iter()
            .filter(|r| r.as_ref().is_err_and(is_deadlock))
            .count();
        assert_eq!(victims, 1, "{first:?} {second:?}");
        assert!(first.is_ok() || second.is_ok());
        drop((one, two));
        assert!(!is_deadlock(&Error::Invalid("not a deadlock".into())));
        env.teardown().await;
    }
}
