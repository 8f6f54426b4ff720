//! The `ingress` binary: load settings, set up telemetry, serve until SIGTERM.

use shared::settings::Settings;
use shared::shutdown::{CancellationToken, cancel_on_signals};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = shared::telemetry::init(&settings.telemetry, "chatfleet-ingress");
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let running = ingress::start(settings, shutdown).await?;
    running.task.await?;
    Ok(())
}
