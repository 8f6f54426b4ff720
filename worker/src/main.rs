//! The `worker` binary: load settings, set up telemetry, run until SIGTERM, drain.

use shared::settings::Settings;
use shared::shutdown::{CancellationToken, cancel_on_signals};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = shared::telemetry::init(&settings.telemetry, "chatfleet-worker");
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    worker::run(settings, shutdown).await
}
