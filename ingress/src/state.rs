//! The state every handler and deliverer shares.

use std::sync::Arc;

use shared::cache::{Cache, Mailboxes};
use shared::db::Db;
use shared::mq::{Broker, Publisher};
use shared::settings::ApiSettings;
use tokio_util::sync::CancellationToken;

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
    api: ApiSettings,
    shutdown: CancellationToken,
}

impl AppState {
    pub(crate) fn new(
        db: Db,
        broker: Broker,
        publisher: Publisher,
        cache: Cache,
        mailboxes: Arc<Mailboxes>,
        api: ApiSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                broker,
                publisher,
                cache,
                mailboxes,
                api,
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
    pub(crate) fn api(&self) -> &ApiSettings {
        &self.inner.api
    }
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
}
