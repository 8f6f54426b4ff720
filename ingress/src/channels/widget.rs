//! The website widget channel.
//!
//! - `POST /widget/v1/sessions` `{ client: slug, visitor_id? }` → 201 `{ session_id,
//!   token, expires_at, visitor_id }`. The request's `Origin` must be one of the
//!   tenant's allowed origins (the `allowed_origins` setting of its widget channel
//!   accounts), else 403. The visitor id keys the conversation: the same visitor id
//!   resumes the same conversation. It is a bearer secret — the widget makes a random one
//!   and keeps it in the browser — so a supplied one must be 16-128 URL-safe characters,
//!   and it is stored only as its SHA-256 (the conversation's `external_id`). The token is
//!   bound to the tenant, the conversation and the origin.
//! - `POST /widget/v1/messages`, `GET /widget/v1/messages`: see [`super::chat`].
//! - `GET /widget.js`: the embeddable widget; `GET /widget/demo?client=<slug>`: a page
//!   that embeds it.
//!
//! CORS: preflights are answered for any origin (they carry no tenant); the real
//! requests decide. A session is opened only for an allowed origin, and every later
//! request of the session must come from that same origin, so `Access-Control-Allow-Origin`
//! echoes the origin except on the 403 that refuses it. No cookies are involved: the
//! bearer token is the credential.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};

use crate::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use shared::ids::Channel;
use shared::metric;
use shared::secrets::visitor_key;
use uuid::Uuid;

use super::body::{self, Accepted, ChatMessageIn, Field, SessionOut, WidgetSessionIn};
use super::chat::{session_limit_by_ip, session_limit_by_tenant};
use super::session::SessionClaims;
use super::{chat, read_body};
use crate::AppState;
use crate::error::{ApiError, Result};

const WIDGET_JS: &str = include_str!("../../static/widget.js");
const DEMO_HTML: &str = include_str!("../../static/demo.html");

pub(crate) fn routes() -> Router<AppState> {
    let api = Router::new()
        .route("/widget/v1/sessions", post(open_session).options(preflight))
        .route(
            "/widget/v1/messages",
            post(send).get(poll).options(preflight),
        )
        .route("/widget/v1/stream", get(stream).options(preflight))
        .layer(middleware::from_fn(allow_origin));
    Router::new()
        .merge(api)
        .route("/widget.js", get(script))
        .route("/widget/demo", get(demo))
}

/// Echoes the request's origin on every answer but a refusal of that origin.
async fn allow_origin(request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin
        && response.status() != StatusCode::FORBIDDEN
    {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    response
}

async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, content-type",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

/// Open a widget session (the page's origin must be allowed for the tenant).
#[utoipa::path(post, path = "/widget/v1/sessions", tag = "widget",
    request_body = WidgetSessionIn,
    responses((status = 201, body = SessionOut),
        (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody)))]
pub(crate) async fn open_session(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    session_limit_by_ip(&state, peer, &headers).await?;
    let bytes = read_body(body, 4096).await?;
    let request: WidgetSessionIn = body::parse(&bytes)?;
    let slug = match request.client {
        Field::Given(s) if !s.is_empty() => s,
        _ => {
            return Err(ApiError::bad_request(
                "missing_client",
                "client (the tenant's slug) is required",
            ));
        }
    };
    let visitor_id = match request.visitor_id {
        Field::Absent | Field::Null => Uuid::new_v4().simple().to_string(),
        Field::Given(v) if valid_visitor_id(&v) => v,
        Field::Given(_) | Field::Mistyped => {
            return Err(ApiError::bad_request(
                "invalid_visitor_id",
                "visitor_id must be 16-128 characters of A-Z, a-z, 0-9, '-' and '_'",
            ));
        }
    };
    let client = state
        .db()
        .clients()
        .by_slug(&slug)
        .await?
        .ok_or_else(|| ApiError::not_found("no such client"))?;
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "widget sessions are opened from a web page (the Origin header is missing)",
            )
        })?
        .to_owned();
    let allowed = state
        .owners()
        .widget_origin_allowed(client.id, &origin)
        .await?;
    if !allowed {
        tracing::info!(client_id = %client.id, "widget session refused: origin not allowed");
        metrics::counter!(metric::INBOUND_REJECTED, "channel" => "widget", "reason" => "origin")
            .increment(1);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not open sessions for this client",
        ));
    }
    if client.status != shared::tenant::ClientStatus::Active {
        return Err(chat::inactive_client());
    }
    session_limit_by_tenant(&state, client.id, client.plan).await?;
    let conversation_id = state
        .db()
        .tenant(client.id)
        .conversations()
        .get_or_create(Channel::Widget, &visitor_key(&visitor_id))
        .await?;
    let claims = SessionClaims {
        client_id: client.id,
        channel: Channel::Widget,
        session_id: Uuid::now_v7(),
        conversation_id,
        external_id: visitor_key(&visitor_id),
        origin: Some(origin),
        app_key: None,
        issued_ms: chrono::Utc::now().timestamp_millis(),
        expires: chrono::Utc::now().timestamp() + state.session_ttl().as_secs() as i64,
    };
    Ok((
        StatusCode::CREATED,
        Json(SessionOut {
            session_id: claims.session_id,
            token: state.sessions().issue(&claims),
            expires_at: claims.expires_at(),
            visitor_id: Some(visitor_id),
            device_secret: None,
        }),
    )
        .into_response())
}

fn valid_visitor_id(v: &str) -> bool {
    (16..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Send a visitor's message (202 once the broker confirmed it).
#[utoipa::path(post, path = "/widget/v1/messages", tag = "widget", security(("session_token" = [])),
    request_body = ChatMessageIn,
    responses((status = 202, body = Accepted),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody),
        (status = 429, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub(crate) async fn send(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    chat::send(&state, Channel::Widget, &headers, body).await
}

/// Long-poll the session's conversation after a cursor.
#[utoipa::path(get, path = "/widget/v1/messages", tag = "widget", security(("session_token" = [])),
    params(("after" = Option<String>, Query, description = "cursor from an earlier answer"),
        ("wait" = Option<u64>, Query, maximum = 30, description = "seconds to wait, 0-30")),
    responses((status = 200, body = crate::wire::PolledMessages),
        (status = 204, description = "nothing new within `wait`"),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody, description = "a newer poll of this session took over")))]
pub(crate) async fn poll(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    chat::poll(&state, Channel::Widget, &headers, &query).await
}

/// Stream the session's conversation as server-sent events (`typing`, `delta`,
/// `discard`, `message`, `error`). EventSource cannot set headers, so the session token
/// comes in the query here, and only here; it is never logged.
#[utoipa::path(get, path = "/widget/v1/stream", tag = "widget",
    params(("token" = String, Query, description = "the session token"),
        ("after" = Option<String>, Query, description = "cursor (event id) to resume after; Last-Event-ID wins")),
    responses((status = 200, description = "text/event-stream of the conversation", content_type = "text/event-stream"),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub(crate) async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    let token = query.get("token").map(String::as_str).unwrap_or("");
    if token.is_empty() {
        return Err(ApiError::unauthorized(
            "missing_session",
            "send the session token as the token query parameter",
        ));
    }
    let claims = chat::authenticate_token(&state, Channel::Widget, token, &headers).await?;
    chat::stream(
        &state,
        Channel::Widget,
        claims,
        &headers,
        query.get("after").map(String::as_str),
    )
    .await
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        WIDGET_JS,
    )
        .into_response()
}

/// A page that embeds the widget for `client`.
async fn demo(Query(query): Query<HashMap<String, String>>) -> Result<Response> {
    let slug = query.get("client").map(String::as_str).unwrap_or("");
    // Slugs are lower-case words and dashes; anything else never reaches the page.
    if slug.is_empty()
        || !slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(ApiError::bad_request(
            "invalid_client",
            "client must be a tenant slug",
        ));
    }
    Ok(Html(DEMO_HTML.replace("{{client}}", slug)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visitor_ids_are_long_and_url_safe() {
        assert!(valid_visitor_id("0123456789abcdef"));
        assert!(valid_visitor_id(&"a".repeat(128)));
        assert!(!valid_visitor_id("short"));
        assert!(!valid_visitor_id(&"a".repeat(129)));
        assert!(!valid_visitor_id("0123456789abcdef<script>"));
    }
}
