//! chatfleet's shared library: the pieces every process needs and no process owns.
//!
//! - [`ids`] and [`envelope`]: the typed ids and the two wire types that cross the broker
//!   (the inbound [`envelope::Envelope`] and the outbound [`envelope::Reply`]).
//! - [`settings`]: layered configuration, validated at start-up.
//! - [`telemetry`]: tracing set-up.
//! - [`mq`]: the RabbitMQ topology, a confirming publisher and a manual-ack consumer. The
//!   only module that names lapin types.
//! - [`cache`]: Redis pool, tenant-scoped key builder and the cross-replica mailbox
//!   notifier. The only module that names redis types.
//! - [`db`]: migrations and the tenant-scoped repositories. The only place SQL lives.
//!
//! This crate depends on no other workspace crate.

pub mod batching;
pub mod cache;
pub mod db;
pub mod envelope;
pub mod erasure;
pub mod error;
pub mod ids;
pub mod knowledge;
pub mod metric;
pub mod mq;
pub mod net;
pub mod pii;
pub mod prometheus;
pub mod readiness;
pub mod replay;
pub mod sealed;
pub mod secrets;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod tenant;
#[cfg(feature = "testkit")]
pub mod testkit;
mod text;
pub mod webhooks;

pub use error::{Error, Result};
