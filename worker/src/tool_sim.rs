//! A tenant's tool endpoint, for tests and `chatfleet chaos`: an HTTP server that
//! records every call (method, path, query, credential, `Idempotency-Key`, body) and
//! answers by path: `/status/<code>` with that status, `/slow` never in time (it holds
//! the call for a minute), `/hold-first` holds a call for a minute unless an earlier
//! call carried its `Idempotency-Key` (then 200 at once), `/huge` with 1 MiB, `/redirect?to=<url>` with a 302 there,
//! anything else 200 with what it received as JSON.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One call as the endpoint received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    pub idempotency_key: Option<String>,
    /// The body, parsed when it is JSON (`Null` when empty).
    pub body: Value,
}

/// A running endpoint.
#[derive(Debug, Clone)]
pub struct ToolSim {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<ToolRequest>>>,
}

impl ToolSim {
    /// Binds `addr` (port 0: any free port) and serves until `shutdown`.
    pub async fn start(addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<Self> {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(answer).with_state(calls.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "tool-sim stopped");
            }
        });
        Ok(Self { addr, calls })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<ToolRequest> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

async fn answer(State(calls): State<Arc<Mutex<Vec<ToolRequest>>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let bytes = axum::body::to_bytes(body, 1024 * 1024)
        .await
        .unwrap_or_default();
    let call = ToolRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        authorization: header("authorization"),
        idempotency_key: header("idempotency-key"),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    };
    let repeated = match calls.lock() {
        Ok(mut c) => {
            let repeated = c
                .iter()
                .any(|e| e.idempotency_key.is_some() && e.idempotency_key == call.idempotency_key);
            c.push(call.clone());
            repeated
        }
        Err(_) => false,
    };
    let path = call.path.as_str();
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, Json(json!({ "error": "tool-sim: as asked" }))).into_response();
    }
    match path {
        "/hold-first" if !repeated => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK.into_response()
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK.into_response()
        }
        "/huge" => "x".repeat(1024 * 1024).into_response(),
        "/redirect" => {
            let to = call
                .query
                .as_deref()
                .and_then(|q| q.strip_prefix("to="))
                .map(|to| {
                    url::form_urlencoded::parse(format!("to={to}").as_bytes())
                        .map(|(_, v)| v.into_owned())
                        .next()
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
        }
        _ => Json(json!({
            "received": { "method": call.method, "path": call.path, "query": call.query, "body": call.body }
        }))
        .into_response(),
    }
}
