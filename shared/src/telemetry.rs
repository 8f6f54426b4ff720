//! Tracing set-up: pretty output for people, JSON lines for log pipelines. `RUST_LOG`
//! wins over `telemetry.filter` when it is set.

use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, TelemetrySettings};

/// Installs the global subscriber. Calling it twice (tests) keeps the first one.
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// A new request id (UUIDv7: sortable by time).
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
