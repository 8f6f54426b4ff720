//! The shared crate's error type. Each variant says which component failed, so callers
//! (the worker's disposition, ingress's HTTP mapping) can decide what it means for them.

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error a dependency's client library reported, kept as the source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("settings: {0}")]
    Settings(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// RabbitMQ failed: what was being done, and the client library's error (shown
    /// too, as `Database` shows sqlx's: the fleet's logs print errors by `Display`).
    #[error("broker: {context}{}", cause(.source))]
    Broker {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error("broker did not confirm the publish ({0})")]
    NotConfirmed(String),
    /// Redis failed: what was being done, and the client library's error (shown too).
    #[error("redis: {context}{}", cause(.source))]
    Redis {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The caller's input is invalid; the message says which field and why, and may be
    /// shown to the caller.
    #[error("{0}")]
    Invalid(String),
    /// An invariant broke: a stored procedure's refusal or unexpected answer, a row that
    /// does not decode. Chatfleet's fault, never the caller's: logged, never shown.
    #[error("internal: {0}")]
    Internal(String),
    /// It would duplicate something unique (a slug, a mode key).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// A statement on a tenant table without a tenant predicate (a bug, never retried).
    #[error("refused a statement not scoped to one tenant: {0}")]
    Unscoped(String),
    /// The embeddings provider failed.
    #[error("embeddings: {0}")]
    Embedding(String),
    /// The vector store (ChromaDB) failed.
    #[error("vector store: {0}")]
    Vector(String),
    /// The tenant's data cannot be reached for now (its database shard is being moved
    /// or is not configured here); retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// A stored secret could not be decrypted (wrong `security.encryption_key`?).
    #[error("cannot decrypt stored credentials: {0}")]
    Crypto(String),
}

/// `": <source>"`, or nothing without one.
fn cause(source: &Option<BoxError>) -> String {
    source
        .as_ref()
        .map(|s| format!(": {s}"))
        .unwrap_or_default()
}

impl Error {
    /// A broker failure while doing `context`, keeping the library's error as the source.
    pub fn broker(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Broker {
            context: context.into(),
            source: Some(Box::new(source)),
        }
    }
    /// A broker failure with no library error behind it (a consumer that ended).
    pub fn broker_gone(context: impl Into<String>) -> Self {
        Self::Broker {
            context: context.into(),
            source: None,
        }
    }
    /// A Redis failure while doing `context`, keeping the library's error as the source.
    pub fn redis(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Redis {
            context: context.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Whether retrying the same operation later may succeed (a connection or broker
    /// problem), as opposed to a problem with the request itself.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) => !matches!(
                e,
                sqlx::Error::RowNotFound
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::Decode(_)
                    | sqlx::Error::TypeNotFound { .. }
                    | sqlx::Error::ColumnNotFound(_)
            ),
            Self::Broker { .. }
            | Self::NotConfirmed(_)
            | Self::Redis { .. }
            | Self::Embedding(_)
            | Self::Vector(_)
            | Self::Unavailable(_) => true,
            Self::Settings(_)
            | Self::Migration(_)
            | Self::Invalid(_)
            | Self::Internal(_)
            | Self::Conflict(_)
            | Self::NotFound(_)
            | Self::Unscoped(_)
            | Self::Crypto(_) => false,
        }
    }
}
