//! Long-polling a conversation's mailbox: answer at once with everything after the
//! cursor, or wait (up to the requested seconds) for the next announcement, or 204.
//! The watch is registered before every read, so nothing that lands between the read and
//! the wait is missed. The database is the source of truth; announcements only wake.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shared::cache::MailboxKey;
use shared::ids::{Channel, ClientId, ConversationId};

use crate::AppState;
use crate::error::{ApiError, Result};

/// Most entries returned by one poll; the cursor lets the caller fetch the rest at once.
const PAGE: u32 = 100;

/// Parsed `after` and `wait` query parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PollParams {
    pub after: u64,
    pub wait: Duration,
}

impl PollParams {
    pub(crate) fn parse(after: Option<&str>, wait: Option<&str>, max_wait_s: u64) -> Result<Self> {
        let after = match after {
            None | Some("") => 0,
            Some(raw) => raw.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_cursor",
                    "after must be a cursor returned by an earlier poll",
                )
            })?,
        };
        let wait = match wait {
            None | Some("") => 0,
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|w| *w <= max_wait_s)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_wait",
                        format!("wait must be a whole number of seconds from 0 to {max_wait_s}"),
                    )
                })?,
        };
        Ok(Self {
            after,
            wait: Duration::from_secs(wait),
        })
    }
}

/// Answers a poll of the mailbox of (`client_id`, `channel`, `external_id`).
pub(crate) async fn poll(
    state: &AppState,
    client_id: ClientId,
    channel: Channel,
    external_id: &str,
    params: PollParams,
) -> Result<Response> {
    let deadline = tokio::time::Instant::now() + params.wait;
    let watch = state
        .mailboxes()
        .watch(&MailboxKey::new(client_id, channel, external_id));
    let mut conversation: Option<ConversationId> = None;
    loop {
        let changed = watch.changed();
        if conversation.is_none() {
            conversation = state
                .db()
                .conversations()
                .find(client_id, channel, external_id)
                .await?;
        }
        if let Some(conversation_id) = conversation {
            let items = state
                .db()
                .messages()
                .mailbox_after(client_id, conversation_id, params.after, PAGE)
                .await?;
            if let Some(last) = items.last() {
                let cursor = last.seq.to_string();
                return Ok(Json(json!({ "messages": items, "cursor": cursor })).into_response());
            }
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(StatusCode::NO_CONTENT.into_response()),
            _ = state.shutdown().cancelled() => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_validated_with_stable_codes() {
        let p = PollParams::parse(Some("42"), Some("5"), 30).expect("valid");
        assert_eq!((p.after, p.wait), (42, Duration::from_secs(5)));
        let p = PollParams::parse(None, None, 30).expect("defaults");
        assert_eq!((p.after, p.wait), (0, Duration::ZERO));
        let e = PollParams::parse(Some("abc"), None, 30).expect_err("bad cursor");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = PollParams::parse(None, Some("31"), 30).expect_err("too long");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}
