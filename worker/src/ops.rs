//! The worker's operations endpoint on `worker.metrics_bind`: `/metrics` (Prometheus
//! text format), `/healthz` (the process answers) and `/readyz` (its broker, database and
//! Redis answer) — what an orchestrator probes and a Prometheus scrapes. It also samples
//! the work queue's depth for the `chatfleet_queue_depth` gauge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use shared::metric;

/// Serves until `shutdown`; returns the bound address (port 0: any free port).
pub(crate) async fn serve(
    ctx: Arc<Ctx>,
    bind: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    tokio::spawn(watch_queue(ctx.clone(), shutdown.clone()));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ctx);
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the operations endpoint stopped");
        }
    });
    Ok(addr)
}

/// Every 10 s: the work waiting (the way back in and every shard, together) and the
/// workers consuming the way back in (every worker does): what autoscalers watch.
async fn watch_queue(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let way_back = ctx.topology().inbound_work();
    loop {
        if let Ok(stats) = ctx.broker.queue_stats(&way_back).await
            && let Ok(depth) = ctx.broker.work_waiting().await
        {
            metrics::gauge!(metric::QUEUE_DEPTH, "queue" => "inbound.work").set(depth as f64);
            metrics::gauge!(metric::QUEUE_CONSUMERS, "queue" => "inbound.work")
                .set(f64::from(stats.consumers));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, shared::prometheus::CONTENT_TYPE)],
        shared::prometheus::render(),
    )
        .into_response()
}

async fn readyz(State(ctx): State<Arc<Ctx>>) -> Response {
    let (ready, body) = shared::readiness::check(&ctx.db, &ctx.cache, &ctx.broker).await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}
