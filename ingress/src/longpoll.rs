//! Long-polling a conversation's mailbox: answer at once with everything after the
//! cursor, or wait (up to the requested seconds) for the next announcement, or 204.
//! The watch is registered before every read, so nothing that lands between the read and
//! the wait is missed. The database is the source of truth; announcements only wake.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shared::cache::{MailboxKey, PollSlot};
use shared::db::MailboxItem;
use shared::ids::{ClientId, ConversationId};
use shared::metric;

use crate::AppState;
use crate::error::{ApiError, Result};
use crate::wire::{PolledMessage, PolledMessages};

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

/// The `wait` of a widget or mobile poll: seconds, clamped to `max_wait_s` (those clients
/// cannot be expected to know the server's limit); not a number → 400.
pub(crate) fn clamped_wait(raw: Option<&str>, max_wait_s: u64) -> Result<Duration> {
    match raw {
        None | Some("") => Ok(Duration::ZERO),
        Some(raw) => raw
            .parse::<u64>()
            .map(|w| Duration::from_secs(w.min(max_wait_s)))
            .map_err(|_| {
                ApiError::bad_request("invalid_wait", "wait must be a whole number of seconds")
            }),
    }
}

/// How a poll ended.
#[derive(Debug)]
pub(crate) enum Polled {
    /// Entries after the cursor, ascending (at most one page).
    Items(Vec<MailboxItem>),
    /// Nothing new within the wait (or the process is shutting down): 204.
    Nothing,
    /// A newer poll of the same session took over (widget and mobile sessions).
    Superseded,
}

/// One of the ingress's `http.max_long_polls`, held while a request waits (a channel's
/// poll, an admin page that waits for a change); none left: 503 `overloaded`, retry.
pub(crate) fn permit(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit> {
    state.long_polls().clone().try_acquire_owned().map_err(|_| {
        metrics::counter!(metric::INBOUND_REJECTED, "channel" => "longpoll", "reason" => "overloaded")
            .increment(1);
        ApiError::overloaded("this ingress holds as many long-polls as it may; retry", 1)
    })
}

/// Waits for entries after `after` in a conversation's mailbox, for at most `wait`.
/// With a `slot`, ends early as [`Polled::Superseded`] once a newer poll of the same
/// session claimed it.
pub(crate) async fn wait_for(
    state: &AppState,
    key: &MailboxKey,
    client_id: ClientId,
    conversation_id: ConversationId,
    params: PollParams,
    slot: Option<&PollSlot>,
) -> Result<Polled> {
    // Held until the poll answers; none left: answered at once, the client retries.
    let _permit = permit(state)?;
    let deadline = tokio::time::Instant::now() + params.wait;
    let watch = state.mailboxes().watch(key);
    let mut read = true;
    // Both wake-ups stay armed across iterations and are re-armed the moment they fire:
    // a reply announced while a contest is being looked into must still wake this poll.
    let mut changed = watch.changed();
    let mut contested = slot.map(PollSlot::contested);
    loop {
        if read {
            let items = state
                .db()
                .tenant(client_id)
                .messages()
                .mailbox_after(conversation_id, params.after, PAGE)
                .await?;
            if !items.is_empty() {
                return Ok(Polled::Items(items));
            }
            read = false;
        }
        let contest = async {
            match contested.as_mut() {
                Some(c) => c.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut changed => {
                changed = watch.changed();
                read = true;
            }
            _ = contest => {
                contested = slot.map(PollSlot::contested);
                // Another claim of the slot, or the echo of our own: only a newer
                // generation ends this poll. The mailbox did not change.
                if let Some(slot) = slot
                    && state.mailboxes().superseded(slot).await?
                {
                    return Ok(Polled::Superseded);
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(Polled::Nothing),
            _ = state.shutdown().cancelled() => return Ok(Polled::Nothing),
        }
    }
}

/// The JSON answer for polled entries, with `cursor` naming the last one.
pub(crate) fn answer(polled: Polled, cursor: impl Fn(u64) -> String) -> Response {
    match polled {
        Polled::Items(items) => {
            let last = items.last().map_or(0, |i| i.seq);
            Json(PolledMessages {
                messages: items.into_iter().map(PolledMessage::from).collect(),
                cursor: cursor(last),
            })
            .into_response()
        }
        Polled::Nothing => StatusCode::NO_CONTENT.into_response(),
        Polled::Superseded => ApiError::new(
            StatusCode::CONFLICT,
            "poll_superseded",
            "a newer poll of this session took over",
        )
        .into_response(),
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

    #[test]
    fn session_waits_are_clamped() {
        assert_eq!(
            clamped_wait(Some("300"), 30).expect("clamped"),
            Duration::from_secs(30)
        );
        assert_eq!(
            clamped_wait(Some("5"), 30).expect("as asked"),
            Duration::from_secs(5)
        );
        assert_eq!(clamped_wait(None, 30).expect("default"), Duration::ZERO);
        let e = clamped_wait(Some("-1"), 30).expect_err("not a number");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}
