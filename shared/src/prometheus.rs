//! The Prometheus exporter. Every process records through the `metrics` facade and
//! serves the text exposition format on `/metrics` (ingress on its HTTP port, workers on
//! `worker.metrics_bind`). Labels are bounded sets (channel, provider, reason, kind…);
//! tenants are never labels — per-tenant figures come from `usage_daily`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: from a cache hit to a slow LLM.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder on first use (later calls, e.g. several components of
/// one test process, share it).
fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (an embedding application's): render ours,
            // which then stays empty, rather than fail.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// Starts recording (call once at start-up, before metrics are emitted).
pub fn install() {
    let _ = handle();
}

/// The current metrics in the Prometheus text format.
pub fn render() -> String {
    handle().render()
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
