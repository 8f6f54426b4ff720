//! Reading a provider's HTTP answer: transport failures and non-2xx statuses as
//! [`LlmError`]s (keeping `Retry-After`), whole bodies and NDJSON/SSE lines, both cut
//! off at `llm.max_response_bytes`.

use std::time::Duration;

use super::LlmError;

/// Maps a transport error.
pub(super) fn transport_error(e: reqwest::Error) -> LlmError {
    if e.is_timeout() {
        LlmError::Timeout(Duration::ZERO)
    } else if e.is_decode() || e.is_body() {
        LlmError::Malformed(e.to_string())
    } else {
        LlmError::Unreachable(e.to_string())
    }
}

/// Turns a non-2xx response into an error, keeping `Retry-After`.
pub(super) async fn status_error(response: reqwest::Response) -> LlmError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = response.text().await.unwrap_or_default();
    body.truncate(500);
    LlmError::Status {
        status,
        body,
        retry_after,
    }
}

/// A whole response body, refused once it passes `limit` bytes (without reading on).
pub(super) async fn body(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, LlmError> {
    use futures::StreamExt;
    let mut read = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(transport_error)?;
        if read.len() + chunk.len() > limit {
            return Err(LlmError::TooLarge(limit));
        }
        read.extend_from_slice(&chunk);
    }
    Ok(read)
}

/// Splits a byte stream into lines (NDJSON and SSE are both line-based), refusing a
/// stream whose total passes `limit` bytes.
pub(super) fn lines(
    response: reqwest::Response,
    limit: usize,
) -> impl futures::Stream<Item = Result<String, LlmError>> {
    use futures::StreamExt;
    async_stream::try_stream! {
        let mut buffer: Vec<u8> = Vec::new();
        let mut total = 0;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(transport_error)?;
            total += chunk.len();
            if total > limit {
                Err(LlmError::TooLarge(limit))?;
            }
            buffer.extend_from_slice(&chunk);
            while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line).trim().to_owned();
                if !line.is_empty() {
                    yield line;
                }
            }
        }
        let rest = String::from_utf8_lossy(&buffer).trim().to_owned();
        if !rest.is_empty() {
            yield rest;
        }
    }
}
