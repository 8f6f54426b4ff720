//! A WhatsApp Cloud API (Graph API) double for `chatfleet bench --channel whatsapp`: it
//! answers `POST /{version}/{phone_number_id}/messages` as Meta does (a `wamid` per
//! message) and notes when each reply reached it. The bench's LLM double answers
//! "… You said: <the turn's messages>", so a reply names the bench messages it answers.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A reply as the double received it: its text, and when.
pub(crate) struct Received {
    pub text: String,
    pub at: Instant,
}

/// Starts the double on a free port; returns its base URL and the replies as they come.
pub(crate) async fn start(
    stop: CancellationToken,
) -> anyhow::Result<(String, mpsc::UnboundedReceiver<Received>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/{version}/{phone}/messages", post(messages))
        .with_state(Arc::new(tx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok((url, rx))
}

async fn messages(
    State(tx): State<Arc<mpsc::UnboundedSender<Received>>>,
    Path((_version, _phone)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let at = Instant::now();
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    let text = body["text"]["body"].as_str().unwrap_or_default().to_owned();
    let _ = tx.send(Received { text, at });
    Json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": to, "wa_id": to }],
        "messages": [{ "id": format!("wamid.bench-{}", uuid::Uuid::new_v4().simple()) }],
    }))
}
