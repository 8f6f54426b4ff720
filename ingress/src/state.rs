//! The state every handler and deliverer shares.

use std::sync::Arc;

use shared::cache::{Cache, Mailboxes, TenantConfigs};
use shared::db::Db;
use shared::mq::{Broker, Publisher};
use shared::secrets::SecretBox;
use shared::settings::{ApiSettings, Secret};
use tokio_util::sync::CancellationToken;

#[allow(clippy::too_many_arguments)] // built once, in `start`
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    broker: Broker,
    publisher: Publisher,
    cache: Cache,
    mailboxes: Arc<Mailboxes>,
    configs: Arc<TenantConfigs>,
    api: ApiSettings,
    admin_token: Secret<String>,
    secrets: SecretBox,
    shutdown: CancellationToken,
}

impl AppState {
    pub(crate) fn new(
        db: Db,
        broker: Broker,
        publisher: Publisher,
        cache: Cache,
        mailboxes: Arc<Mailboxes>,
        configs: Arc<TenantConfigs>,
        api: ApiSettings,
        admin_token: Secret<String>,
        secrets: SecretBox,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                broker,
                publisher,
                cache,
                mailboxes,
                configs,
                api,
                admin_token,
                secrets,
                shutdown,
            }),
        }
    }
    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }
    pub(crate) fn broker(&self) -> &Broker {
        &self.inner.broker
    }
    pub(crate) fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }
    pub(crate) fn cache(&self) -> &Cache {
        &self.inner.cache
    }
    pub(crate) fn mailboxes(&self) -> &Mailboxes {
        &self.inner.mailboxes
    }
    pub(crate) fn configs(&self) -> &TenantConfigs {
        &self.inner.configs
    }
    pub(crate) fn api(&self) -> &ApiSettings {
        &self.inner.api
    }
    pub(crate) fn admin_token(&self) -> &str {
        self.inner.admin_token.expose()
    }
    pub(crate) fn secrets(&self) -> &SecretBox {
        &self.inner.secrets
    }
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
}
