//! Channel adapters: one module per channel. Each authenticates its requests, resolves
//! the tenant, validates the payload and publishes envelopes. Raw channel payloads stay
//! inside these modules.

pub(crate) mod accepting;
pub(crate) mod api;
pub(crate) mod body;
mod chat;
pub(crate) mod mobile;
pub(crate) mod session;
pub(crate) mod whatsapp;
pub(crate) mod widget;

pub(crate) use chat::still_valid;

use axum::body::{Body, Bytes};

use crate::error::{ApiError, Result};

/// Reads a request body of at most `limit` bytes (413 with a JSON error beyond it).
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::too_large(
            "payload_too_large",
            format!("the request body must be at most {limit} bytes"),
        )
    })
}

/// Records an accepted user message and publishes its envelope with a confirm (503
/// unless the broker confirmed). Recording gives the message its place in the
/// conversation at acceptance: whichever worker runs the next turn finds every earlier
/// message in the database, in the order the client's requests were accepted, even while
/// their deliveries are still in flight (or on a worker that just died).
///
/// The record is committed (one round trip) before the envelope is published, so a
/// worker never holds a delivery whose message is not in the database yet. The envelope
/// id is the idempotency key: a retried request records nothing new. When the database
/// fails, nothing is published (503). When the broker cannot confirm, a message this
/// request recorded is withdrawn again (unless a turn already answered it): the 503
/// means "not accepted", and nothing of it stays. See [`commit_then_publish`] for a
/// client that goes away meanwhile.
pub(crate) async fn record_and_publish(
    state: &crate::AppState,
    conversation_id: shared::ids::ConversationId,
    envelope: &shared::envelope::Envelope,
) -> Result<()> {
    let (accepting, publishing, withdrawing) = (state.clone(), state.clone(), state.clone());
    let accepted = envelope.clone();
    let published = shared::envelope::Envelope {
        conversation_id: Some(conversation_id),
        ..envelope.clone()
    };
    let (client_id, envelope_id) = (envelope.client_id, envelope.id);
    commit_then_publish(
        async move {
            let recorded = accepting
                .acceptor()
                .accept(
                    accepted.client_id,
                    conversation_id,
                    accepted.id,
                    accepted.message.as_prompt_text(),
                    accepted.channel_message_id.clone(),
                )
                .await?;
            Ok(recorded.newly_recorded)
        },
        async move {
            publishing
                .publisher()
                .publish_envelope(&published)
                .await
                .map_err(|e| ApiError::broker_unavailable(&e))
        },
        async move {
            withdrawing
                .db()
                .tenant(client_id)
                .messages()
                .withdraw(envelope_id)
                .await
        },
    )
    .await
}

/// Commits a message (`commit`: whether this request recorded it), then publishes it
/// (`publish`), withdrawing it (`withdraw`) when the publish failed or panicked — on a
/// task of its own, so that a client that disconnects, or a request cut off by the
/// timeout, never leaves a committed message unpublished: the work runs to its end
/// either way, and the store and the broker agree (a client that retries with the same
/// idempotency key learns the outcome).
async fn commit_then_publish<W, T, E>(
    commit: impl Future<Output = Result<bool>> + Send + 'static,
    publish: impl Future<Output = Result<()>> + Send + 'static,
    withdraw: W,
) -> Result<()>
where
    W: Future<Output = std::result::Result<T, E>> + Send + 'static,
    E: std::fmt::Display,
{
    use futures::FutureExt;
    let work = tokio::spawn(async move {
        let newly_recorded = commit.await?;
        let failure = match std::panic::AssertUnwindSafe(publish).catch_unwind().await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => ApiError::internal(&shared::Error::Internal(
                "publishing an accepted message panicked".into(),
            )),
        };
        if newly_recorded && let Err(e) = withdraw.await {
            // It stays pending and is answered with the conversation's next turn.
            tracing::warn!(error = %e, "could not withdraw an unpublished message");
        }
        Err(failure)
    });
    work.await.map_err(|e| ApiError::internal(&e))?
}

/// The bearer token of the `Authorization` header.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The request id set by the request-id layer.
pub(crate) fn request_id(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(&crate::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(shared::telemetry::new_request_id)
}

/// The W3C trace context the message carries on: this request's span when traces are
/// exported (a child of the caller's trace, if it sent one), else the caller's as sent.
pub(crate) fn traceparent(headers: &axum::http::HeaderMap) -> Option<String> {
    shared::telemetry::current_traceparent().or_else(|| caller_traceparent(headers))
}

/// The caller's W3C trace context, when it sent one (checked well formed at the edge).
pub(crate) fn caller_traceparent(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn flag() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(false))
    }

    /// A publish that panics after the commit withdraws the message and answers 500.
    #[tokio::test]
    async fn a_publish_that_panics_withdraws_the_message() {
        let withdrawn = flag();
        let w = withdrawn.clone();
        let outcome = commit_then_publish(
            async { Ok(true) },
            async { panic!("a publish that breaks") },
            async move {
                w.store(true, Ordering::SeqCst);
                Ok::<_, String>(())
            },
        )
        .await;
        let status = outcome.map(|_| ()).map_err(|e| e.status());
        assert_eq!(status, Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR));
        assert!(withdrawn.load(Ordering::SeqCst), "withdrawn");
    }

    /// A request dropped between commit and publish (the client left, the timeout cut
    /// it off) still publishes what it committed.
    #[tokio::test]
    async fn a_request_dropped_after_its_commit_still_publishes() {
        let (published, withdrawn) = (flag(), flag());
        let (p, w) = (published.clone(), withdrawn.clone());
        let (committed_tx, committed_rx) = tokio::sync::oneshot::channel::<()>();
        let release = Arc::new(tokio::sync::Notify::new());
        let gate = release.clone();
        let request = tokio::spawn(commit_then_publish(
            async move {
                let _ = committed_tx.send(());
                Ok(true)
            },
            async move {
                gate.notified().await;
                p.store(true, Ordering::SeqCst);
                Ok(())
            },
            async move {
                w.store(true, Ordering::SeqCst);
                Ok::<_, String>(())
            },
        ));
        committed_rx.await.expect("committed");
        request.abort();
        let _ = request.await;
        release.notify_one();
        shared::testkit::eventually(
            std::time::Duration::from_secs(5),
            "the publish to finish",
            || async { published.load(Ordering::SeqCst).then_some(()) },
        )
        .await;
        assert!(
            !withdrawn.load(Ordering::SeqCst),
            "published, not withdrawn"
        );
    }
}
