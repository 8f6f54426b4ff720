//! The process-wide shutdown signal: one [`CancellationToken`] made in `main` and passed
//! down. The first SIGTERM or Ctrl-C cancels it (components drain); a second one exits at
//! once.

pub use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM/Ctrl-C and exits the process on the second.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: draining (send the signal again to stop at once)");
        token.cancel();
        wait_for_signal().await;
        tracing::warn!("second shutdown signal: exiting without draining");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
