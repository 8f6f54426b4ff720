//! The ids a caller may send to follow a request: `x-request-id` and the W3C
//! `traceparent`. They travel downstream (AMQP `correlation_id`, a short string of at
//! most 255 bytes, and headers), into logs and into the response, so only well-formed
//! ones are kept: a request id of 1-64 characters of `[A-Za-z0-9._-]` (any other is
//! replaced by a fresh one, which the response carries) and a `traceparent` of the W3C
//! form (any other is dropped). An oversized id once made the request's task panic after
//! its message was committed, so the client got no answer while the message was kept.

use axum::extract::Request;

use crate::REQUEST_ID;

/// The longest caller's request id kept.
const MAX_REQUEST_ID: usize = 64;

/// Removes a caller's request id or trace context that is not well formed (the request
/// id is then generated as for a request that sent none).
pub(crate) async fn keep_well_formed(mut request: Request) -> Request {
    let headers = request.headers_mut();
    if headers
        .get(&REQUEST_ID)
        .is_some_and(|id| !is_request_id(id.as_bytes()))
    {
        headers.remove(&REQUEST_ID);
    }
    if headers
        .get("traceparent")
        .is_some_and(|t| !is_traceparent(t.as_bytes()))
    {
        headers.remove("traceparent");
    }
    request
}

fn is_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `version-trace_id-parent_id-flags`: 2, 32, 16 and 2 lowercase hex digits.
fn is_traceparent(value: &[u8]) -> bool {
    let parts: Vec<&[u8]> = value.split(|b| *b == b'-').collect();
    parts.len() == 4
        && parts.iter().zip([2, 32, 16, 2]).all(|(part, len)| {
            part.len() == len && part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_request_ids_are_kept() {
        assert!(is_request_id(b"req-42_a.b"));
        assert!(is_request_id(&[b'a'; 64]));
        assert!(!is_request_id(&[b'a'; 65]));
        assert!(!is_request_id(b""));
        assert!(!is_request_id(b"has space"));
        assert!(!is_request_id("é".as_bytes()));
    }

    #[test]
    fn only_w3c_trace_contexts_are_kept() {
        assert!(is_traceparent(
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        assert!(!is_traceparent(
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"
        ));
        assert!(!is_traceparent(b"00-abc-def-01"));
        assert!(!is_traceparent(&[b'0'; 300]));
    }

    #[tokio::test]
    async fn an_oversized_request_id_is_dropped_and_a_good_one_kept() {
        let long = "x".repeat(1000);
        let request = Request::builder()
            .header(&REQUEST_ID, long.as_str())
            .header("traceparent", long.as_str())
            .body(axum::body::Body::empty())
            .expect("request");
        let kept = keep_well_formed(request).await;
        assert!(kept.headers().get(&REQUEST_ID).is_none());
        assert!(kept.headers().get("traceparent").is_none());
        let request = Request::builder()
            .header(&REQUEST_ID, "req-1")
            .body(axum::body::Body::empty())
            .expect("request");
        let kept = keep_well_formed(request).await;
        assert_eq!(kept.headers()[&REQUEST_ID], "req-1");
    }
}
