//! Server-sent events of a conversation (`…/stream` of the API, widget and mobile
//! channels): every stored message after the cursor as `message` (exactly what a
//! long-poll returns, its cursor as the event `id`, so a client reconnecting with
//! `Last-Event-ID` gets every later one once, in order), and the turns' live events as
//! they happen — `typing`, `delta` `{reply_id, seq, text}`, `discard` `{reply_id}` —
//! whichever worker runs the turn and whichever replica holds the stream.
//!
//! Stored messages come from the database, woken by the mailbox announcements exactly
//! like long-polls (the watch is registered before every read); live events come from
//! [`shared::cache::StreamEvents`] and are best-effort. A stream holds a slot of
//! `http.max_long_polls`; a session holds one stream or poll at a time (a newer one
//! supersedes it: `error` `stream_superseded`); a session's stream re-checks every second
//! that the session still stands and ends with an `error` event carrying the stable code
//! (`session_expired`, `session_revoked`) when it does not. A comment every 15 s keeps
//! proxies from cutting an idle stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shared::cache::{MailboxKey, PollSlot, StreamEvent};
use shared::ids::{ClientId, ConversationId};
use shared::metric;

use crate::AppState;
use crate::channels::session::SessionClaims;
use crate::error::{ApiError, Result};
use crate::wire::PolledMessage;

/// Stored messages read per database round trip.
const PAGE: u32 = 100;
/// How often a session's stream asks whether the session still stands.
const RECHECK: Duration = Duration::from_secs(1);
/// The comment that keeps an idle stream open through proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What one stream follows.
pub(crate) struct StreamOf {
    pub key: MailboxKey,
    pub client_id: ClientId,
    pub conversation_id: ConversationId,
    /// The last position the client has.
    pub after: u64,
    /// The event id of position `seq`.
    pub cursor: Arc<dyn Fn(u64) -> String + Send + Sync>,
    /// A widget or mobile session's stream: its slot and its claims (re-checked).
    pub session: Option<(PollSlot, SessionClaims)>,
}

/// The cursor a client resumes from: `Last-Event-ID` (an automatic reconnect) before
/// `after`.
pub(crate) fn resume_from<'a>(headers: &'a HeaderMap, after: Option<&'a str>) -> Option<&'a str> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .or(after)
}

/// Opens the stream (503 `overloaded` when this ingress holds as many polls and
/// streams as it may).
pub(crate) fn open(state: &AppState, of: StreamOf) -> Result<Response> {
    let permit = state.long_polls().clone().try_acquire_owned().map_err(|_| {
        metrics::counter!(metric::INBOUND_REJECTED, "channel" => "stream", "reason" => "overloaded")
            .increment(1);
        ApiError::overloaded("this ingress holds as many streams as it may; retry", 1)
    })?;
    let state = state.clone();
    let events = async_stream::stream! {
        let _permit = permit;
        let mut live = state.stream_events().subscribe(&of.key);
        let watch = state.mailboxes().watch(&of.key);
        let mut after = of.after;
        let expires = of.session.as_ref().map(|(_, claims)| {
            tokio::time::Instant::now()
                + Duration::from_secs(
                    u64::try_from(claims.expires - chrono::Utc::now().timestamp()).unwrap_or(0),
                )
        });
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.tick().await;
        let mut read = true;
        // Both wake-ups stay armed across iterations and are re-armed the moment they
        // fire: a notification while a live event is being written (the stream suspended
        // at `yield`) must not fall between one iteration's future and the next.
        let mut changed = watch.changed();
        let mut contested = of.session.as_ref().map(|(slot, _)| slot.contested());
        loop {
            if read {
                let items = match state
                    .db()
                    .tenant(of.client_id)
                    .messages()
                    .mailbox_after(of.conversation_id, after, PAGE)
                    .await
                {
                    Ok(items) => items,
                    Err(e) => {
                        yield Ok(error_event(&ApiError::from(e)));
                        break;
                    }
                };
                let full = items.len() == PAGE as usize;
                for item in items {
                    after = item.seq;
                    let data = serde_json::to_string(&PolledMessage::from(item)).unwrap_or_default();
                    yield Ok::<_, Infallible>(Event::default().event("message").id((of.cursor)(after)).data(data));
                }
                if full {
                    continue;
                }
            }
            read = false;
            let contest = async {
                match contested.as_mut() {
                    Some(c) => c.await,
                    None => std::future::pending().await,
                }
            };
            let expired = async {
                match expires {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut changed => {
                    changed = watch.changed();
                    read = true;
                }
                event = live.next() => {
                    if let Some(event) = event {
                        yield Ok(live_event(&event));
                    }
                }
                _ = contest => {
                    contested = of.session.as_ref().map(|(slot, _)| slot.contested());
                    if let Some((slot, _)) = &of.session
                        && state.mailboxes().superseded(slot).await.unwrap_or(false)
                    {
                        yield Ok(error_event(&ApiError::new(
                            axum::http::StatusCode::CONFLICT,
                            "stream_superseded",
                            "a newer stream or poll of this session took over",
                        )));
                        break;
                    }
                }
                _ = expired => {
                    yield Ok(error_event(&ApiError::unauthorized(
                        "session_expired",
                        "the session has expired; open a new one",
                    )));
                    break;
                }
                _ = recheck.tick(), if of.session.is_some() => {
                    if let Some((_, claims)) = &of.session
                        && let Err(e) = crate::channels::still_valid(&state, claims).await
                    {
                        yield Ok(error_event(&e));
                        break;
                    }
                }
                _ = state.shutdown().cancelled() => break,
            }
        }
    };
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// A turn's live event as SSE.
fn live_event(event: &StreamEvent) -> Event {
    let (name, data) = match event {
        StreamEvent::Typing => ("typing", json!({})),
        StreamEvent::Delta {
            reply_id,
            seq,
            text,
        } => (
            "delta",
            json!({ "reply_id": reply_id, "seq": seq, "text": text }),
        ),
        StreamEvent::Discard { reply_id } => ("discard", json!({ "reply_id": reply_id })),
    };
    Event::default().event(name).data(data.to_string())
}

/// The `error` event that ends a stream, in the error format of every endpoint.
fn error_event(error: &ApiError) -> Event {
    Event::default()
        .event("error")
        .data(json!({ "error": { "code": error.code(), "message": error.message() } }).to_string())
}
