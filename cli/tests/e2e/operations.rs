//! What operators scrape and probe: `/metrics` in the Prometheus format on ingress and on
//! every worker, with bounded labels, and the worker's `/healthz` and `/readyz`.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use shared::testkit::eventually;

use crate::support::{Platform, WAIT, worker_process};

/// Parses the Prometheus text format: `# HELP` / `# TYPE` comments and
/// `name{labels} value` samples; panics on any other line.
pub(crate) fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "bad comment: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels in {line}");
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        out.insert(series.to_owned(), value);
    }
    out
}

#[tokio::test]
async fn ingress_and_workers_serve_metrics_health_and_readiness() {
    let p = Platform::start_with(&[], 0).await;
    let t = p.tenant("shop").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let bind = format!("127.0.0.1:{port}");
    let mut worker = worker_process(&p, &[("CHATFLEET__WORKER__METRICS_BIND", bind.as_str())]);
    let ops = format!("http://{bind}");
    let get = |url: String| {
        let http = p.http.clone();
        async move {
            let r = http.get(url).send().await.ok()?;
            Some((r.status(), r.text().await.unwrap_or_default()))
        }
    };
    eventually(WAIT, "the worker's operations endpoint", || {
        get(format!("{ops}/healthz"))
    })
    .await;
    let (status, body) = get(format!("{ops}/readyz")).await.expect("readyz");
    assert_eq!(status, StatusCode::OK, "{body}");

    let accepted = "chatfleet_inbound_accepted_total{channel=\"api\"}";
    let before = get(format!("{}/metrics", p.base)).await.expect("metrics").1;
    let before = samples(&before).get(accepted).copied().unwrap_or(0.0);
    let (reply, _) = p.ask(&t.api_key, "c", "hello", "0").await;
    assert!(
        reply["text"]
            .as_str()
            .unwrap_or("")
            .ends_with("You said: hello")
    );

    // The reply is visible before the worker has acked and settled its turn: poll.
    let worker_metrics = eventually(WAIT, "the worker's turn settled", || {
        let metrics = get(format!("{ops}/metrics"));
        async move {
            metrics
                .await
                .filter(|(status, body)| {
                    *status == StatusCode::OK && body.contains("chatfleet_turns_in_flight 0")
                })
                .map(|(_, body)| body)
        }
    })
    .await;
    for series in [
        "chatfleet_end_to_end_seconds_bucket{channel=\"api\",le=\"",
        "chatfleet_end_to_end_seconds_count{channel=\"api\"} 1",
        "chatfleet_llm_seconds_count{provider=\"ollama\"} 1",
        "chatfleet_llm_tokens_total{provider=\"ollama\",kind=\"prompt\"}",
        "chatfleet_turns_in_flight 0",
        "chatfleet_queue_depth{queue=\"inbound.work\"}",
        "chatfleet_config_cache_total{result=",
    ] {
        assert!(
            worker_metrics.contains(series),
            "no {series} in:\n{worker_metrics}"
        );
    }
    let (_, ingress_metrics) = get(format!("{}/metrics", p.base)).await.expect("metrics");
    // Both parse as Prometheus text, and the counter moved with the message (the
    // recorder is per process: other tests of this binary may move it too).
    samples(&worker_metrics);
    let after = samples(&ingress_metrics)[accepted];
    assert!(after - before >= 1.0, "{before} → {after}");
    // Tenants are never labels: per-tenant figures come from usage_daily.
    for text in [&worker_metrics, &ingress_metrics] {
        assert!(!text.contains("client_id"), "{text}");
    }
    let _ = worker.kill();
    let _ = worker.wait();
    p.stop().await;
}
