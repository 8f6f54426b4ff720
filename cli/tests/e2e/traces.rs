//! One message, one trace: an ingress process and a worker process export their spans
//! to an OTLP/HTTP receiver double (the protobuf decoded with the `opentelemetry-proto`
//! types); the worker's turn is a child of the ingress's request through the broker, and
//! the LLM double receives a `traceparent` of that trace. A collector that is down
//! changes nothing for the message.

use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use reqwest::StatusCode;
use shared::testkit::eventually;

use crate::support::Platform;

const WAIT: Duration = Duration::from_secs(30);

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

async fn traces(State(collector): State<Collector>, body: axum::body::Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut spans = collector.spans.lock().expect("lock");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .and_then(|v| match &v.value {
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                    Some(s.clone())
                }
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent_span_id: hex::encode(span.parent_span_id),
                });
            }
        }
    }
    StatusCode::OK
}

/// A `chatfleet <role>` process exporting spans to `collector`.
fn process(p: &Platform, role: &str, collector: &str, extra: &[(&str, String)]) -> Child {
    let mut command = p.env.command(env!("CARGO_BIN_EXE_chatfleet"));
    command
        .arg(role)
        .env("RUST_LOG", "warn")
        .env("CHATFLEET__TELEMETRY__OTLP_ENDPOINT", collector)
        .env(
            "CHATFLEET__LLM__PROVIDERS__OLLAMA__BASE_URL",
            p.sim.base_url(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in extra {
        command.env(k, v);
    }
    command.spawn().expect("a chatfleet process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_across_ingress_broker_worker_and_llm() {
    let p = Platform::start_with(&[], 0).await;
    let t = p.tenant("traced").await;
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the collector");
    let collector_url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state(collector.clone());
    let stop = p.shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut ingress = process(
        &p,
        "ingress",
        &collector_url,
        &[("CHATFLEET__HTTP__BIND", format!("127.0.0.1:{port}"))],
    );
    let mut worker = process(&p, "worker", &collector_url, &[]);
    eventually(WAIT, "the ingress process", || async {
        let ok = p.http.get(format!("{base}/healthz")).send().await.ok()?;
        ok.status().is_success().then_some(())
    })
    .await;

    let response = p
        .http
        .post(format!("{base}/api/v1/messages"))
        .bearer_auth(&t.api_key)
        .json(&serde_json::json!({ "conversation_id": "c1", "text": "trace me" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    p.read_until(&t.api_key, "c1", "", 2).await;
    // The processes flush what they hold when they end.
    for child in [&mut ingress, &mut worker] {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for child in [&mut ingress, &mut worker] {
        let _ = child.wait();
    }
    let (request, turn, llm) = eventually(WAIT, "the message's spans", || {
        let spans = collector.spans.lock().expect("lock").clone();
        async move {
            let turn = spans
                .iter()
                .find(|s| s.service == "chatfleet-worker" && s.name == "turn")?
                .clone();
            let request = spans
                .iter()
                .find(|s| s.service == "chatfleet-ingress" && s.span_id == turn.parent_span_id)?
                .clone();
            let llm = spans
                .iter()
                .find(|s| s.name == "llm" && s.parent_span_id == turn.span_id)?
                .clone();
            Some((request, turn, llm))
        }
    })
    .await;
    assert_eq!(request.name, "http");
    assert_eq!(turn.trace_id, request.trace_id);
    assert_eq!(llm.trace_id, request.trace_id);
    let asked = p
        .sim
        .requests()
        .into_iter()
        .find(|r| r.messages.iter().any(|m| m.content == "trace me"))
        .expect("the LLM was asked");
    let traceparent = asked.traceparent.expect("a traceparent");
    assert!(
        traceparent.starts_with(&format!("00-{}-{}-", request.trace_id, llm.span_id)),
        "{traceparent} is not of trace {}",
        request.trace_id
    );

    // A collector that is down costs a message nothing: it is answered as ever.
    let mut worker = process(&p, "worker", "http://127.0.0.1:9", &[]);
    let (status, _) = p.send(&t.api_key, "c2", "nobody collects", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    p.read_until(&t.api_key, "c2", "", 2).await;
    let _ = worker.kill();
    let _ = worker.wait();
    p.stop().await;
}
