//! Logs and traces. Logs: pretty output for people, JSON lines for log pipelines;
//! `RUST_LOG` wins over `telemetry.filter` when it is set. Traces (when
//! `telemetry.otlp_endpoint` is set): chatfleet's own spans exported over OTLP/HTTP in
//! batches, off the message path, sampled at `telemetry.sample_ratio` (parent-based: a
//! trace continued from a `traceparent` keeps its caller's decision). One message is one
//! trace across processes: [`current_traceparent`] writes the current span's W3C
//! `traceparent` (into the envelope's AMQP headers, into LLM calls), [`continue_trace`]
//! makes a span its child.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::metric;
use crate::settings::{LogFormat, TelemetrySettings};

/// Chatfleet's own spans (not its libraries').
const TRACED: &str = "ingress=info,worker=info,shared=info,cli=info,chatfleet=info";

/// Flushes the spans not exported yet when the process ends (dropped at the end of
/// `main`).
#[derive(Debug)]
#[must_use = "dropping it flushes and ends the trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "the last spans were not exported");
        }
    }
}

/// Installs the global subscriber (logs, and traces for `service` when an OTLP endpoint
/// is set). Calling it twice (tests) keeps the first one. Must run inside the Tokio
/// runtime (the exporter sends on it).
pub fn init(settings: &TelemetrySettings, service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_filter(filter)
            .boxed(),
    };
    let provider = traces(settings, service);
    let spans = provider.as_ref().map(|p| {
        // Spans are entered at every poll of the futures they instrument: no clock reads
        // (busy/idle time), no thread attributes, no OpenTelemetry context switched on
        // each entry (the `traceparent` is read from the span itself).
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("chatfleet"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_context_activation(false)
            .with_filter(EnvFilter::new(TRACED))
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Telemetry { provider }
}

/// The trace export, when `telemetry.otlp_endpoint` is set.
fn traces(settings: &TelemetrySettings, service: &str) -> Option<SdkTracerProvider> {
    if settings.otlp_endpoint.is_empty() {
        return None;
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OtlpClient::new())
        .with_endpoint(format!(
            "{}/v1/traces",
            settings.otlp_endpoint.trim_end_matches('/')
        ))
        .with_timeout(std::time::Duration::from_secs(5))
        .build();
    let exporter = match exporter {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("traces are off: the OTLP exporter could not be built: {e}");
            return None;
        }
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder_empty()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .build(),
    )
}

/// The current span's W3C `traceparent`, when it is part of a trace.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Makes `span` a child of the span `traceparent` names (a caller's, or the process's
/// upstream); nothing without one.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The exporter's HTTP client: the platform's reqwest, sending on the runtime the
/// process started on (the batch exporter runs on a thread of its own).
#[derive(Debug)]
struct OtlpClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl OtlpClient {
    fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let sent = self
            .runtime
            .spawn(async move {
                let (parts, body) = request.into_parts();
                let mut call = http.request(parts.method, parts.uri.to_string()).body(body);
                for (name, value) in &parts.headers {
                    call = call.header(name, value);
                }
                let response = call.send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, body))
            })
            .await;
        match sent {
            Ok(Ok((status, body))) => {
                if !status.is_success() {
                    metrics::counter!(metric::TRACE_EXPORT_FAILURES).increment(1);
                }
                let mut response = http::Response::new(body);
                *response.status_mut() = status;
                Ok(response)
            }
            Ok(Err(e)) => {
                metrics::counter!(metric::TRACE_EXPORT_FAILURES).increment(1);
                Err(Box::new(e))
            }
            Err(e) => {
                metrics::counter!(metric::TRACE_EXPORT_FAILURES).increment(1);
                Err(Box::new(e))
            }
        }
    }
}

/// A new request id (UUIDv7: sortable by time).
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
