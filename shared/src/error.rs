//! The shared crate's error type. Each variant says which component failed, so callers
//! (the worker's disposition, ingress's HTTP mapping) can decide what it means for them.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("settings: {0}")]
    Settings(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("broker: {0}")]
    Broker(String),
    #[error("broker did not confirm the publish ({0})")]
    NotConfirmed(String),
    #[error("redis: {0}")]
    Redis(String),
    /// The request is invalid; the message says which field and why.
    #[error("{0}")]
    Invalid(String),
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
    /// A stored secret could not be decrypted (wrong `security.encryption_key`?).
    #[error("cannot decrypt stored credentials: {0}")]
    Crypto(String),
}

impl Error {
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
            Self::Broker(_)
            | Self::NotConfirmed(_)
            | Self::Redis(_)
            | Self::Embedding(_)
            | Self::Vector(_) => true,
            Self::Settings(_)
            | Self::Migration(_)
            | Self::Invalid(_)
            | Self::Conflict(_)
            | Self::NotFound(_)
            | Self::Unscoped(_)
            | Self::Crypto(_) => false,
        }
    }
}
