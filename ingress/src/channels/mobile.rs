//! The mobile app channel.
//!
//! - `POST /mobile/v1/sessions` with `X-App-Key` `{ device_id, device_secret?,
//!   push_token? }` → 201 `{ session_id, token, expires_at, device_secret? }`. The app key
//!   identifies the tenant's app: it is the external account id of the tenant's mobile
//!   channel account. It ships inside the app, so it is an identifier rather than a
//!   secret. The device id keys the conversation, so a device that opens a new session
//!   resumes its conversation — but device ids are guessable, so the device's first
//!   session returns a `device_secret` (256 random bits, stored as its SHA-256) and every
//!   later session of the device must send it (401 `invalid_device_secret` otherwise):
//!   another installation that claims the same device id sees nothing.
//! - `PUT /mobile/v1/push-token` `{ push_token }` (null removes it) → 204: replies are
//!   then also sent as push notifications (see `deliver::push`).
//! - `POST /mobile/v1/messages`, `GET /mobile/v1/messages`: see [`super::chat`].

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};

use crate::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use shared::ids::{Channel, ClientId};
use shared::secrets::{bearer_hash, new_bearer_secret};
use shared::tenant::{ClientStatus, Plan};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::body::{self, Accepted, ChatMessageIn, Field, MobileSessionIn, PushTokenIn, SessionOut};
use super::chat::{session_limit_by_ip, session_limit_by_tenant};
use super::session::SessionClaims;
use super::{chat, read_body};
use crate::AppState;
use crate::error::{ApiError, Result};

/// Longest device id (the `conversations.external_id` column).
const MAX_DEVICE_ID: usize = 191;
/// Longest push token (FCM registration tokens are a few hundred bytes).
const MAX_PUSH_TOKEN: usize = 4096;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/mobile/v1/sessions", post(open_session))
        .route("/mobile/v1/push-token", put(set_push_token))
        .route("/mobile/v1/messages", post(send).get(poll))
        .route("/mobile/v1/stream", get(stream))
}

/// The tenant whose app `X-App-Key` names, and the key.
async fn app_owner(state: &AppState, headers: &HeaderMap) -> Result<(ClientId, String)> {
    let key = headers
        .get("x-app-key")
        .and_then(|k| k.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 191)
        .ok_or_else(|| {
            ApiError::unauthorized("missing_app_key", "send the app key as X-App-Key")
        })?;
    let owner = state.owners().owner(Channel::Mobile, key).await?;
    owner
        .map(|(client_id, _)| (client_id, key.to_owned()))
        .ok_or_else(|| ApiError::unauthorized("invalid_app_key", "the app key is not registered"))
}

/// Checks that the session comes from the installation that owns the device: the
/// presented secret must match the stored hash. A device without one claims it now and
/// gets the new secret back (once). 401 `invalid_device_secret` otherwise, before the
/// conversation is touched.
async fn prove_device(
    state: &AppState,
    client_id: ClientId,
    device_id: &str,
    presented: Option<&str>,
) -> Result<Option<String>> {
    let devices = state.db().tenant(client_id).devices();
    let refused = || {
        ApiError::unauthorized(
            "invalid_device_secret",
            "this device is registered: send the device_secret its first session returned",
        )
    };
    if let Some(stored) = devices.secret_hash(device_id).await? {
        let matches = presented
            .is_some_and(|p| bool::from(bearer_hash(p).as_slice().ct_eq(stored.as_slice())));
        return if matches { Ok(None) } else { Err(refused()) };
    }
    let (secret, hash) = new_bearer_secret();
    let stored = devices.claim_secret(device_id, &hash).await?;
    if bool::from(stored.as_slice().ct_eq(hash.as_slice())) {
        Ok(Some(secret))
    } else {
        // A concurrent first session claimed the device a moment earlier.
        Err(refused())
    }
}

fn push_token(value: Field<String>) -> Result<Option<String>> {
    match value {
        Field::Absent | Field::Null => Ok(None),
        Field::Given(t) if !t.is_empty() && t.len() <= MAX_PUSH_TOKEN => Ok(Some(t)),
        Field::Given(_) | Field::Mistyped => Err(ApiError::bad_request(
            "invalid_push_token",
            format!("push_token must be a string of 1-{MAX_PUSH_TOKEN} bytes, or null"),
        )),
    }
}

/// Open a session for a device of the tenant's app.
#[utoipa::path(post, path = "/mobile/v1/sessions", tag = "mobile",
    params(("X-App-Key" = String, Header, description = "the app's key")),
    request_body = MobileSessionIn,
    responses((status = 201, body = SessionOut),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 429, body = crate::error::ErrorBody)))]
pub(crate) async fn open_session(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    session_limit_by_ip(&state, peer, &headers).await?;
    let (client_id, app_key) = app_owner(&state, &headers).await?;
    let bytes = read_body(body, 16 * 1024).await?;
    let request: MobileSessionIn = body::parse(&bytes)?;
    let device_id = match request.device_id {
        Field::Given(d) if !d.trim().is_empty() && d.len() <= MAX_DEVICE_ID => d,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_device_id",
                format!("device_id must be a non-empty string of at most {MAX_DEVICE_ID} bytes"),
            ));
        }
    };
    let token = push_token(request.push_token)?;
    let presented = match request.device_secret {
        Field::Absent | Field::Null => None,
        Field::Given(s) if s.len() <= 256 => Some(s),
        Field::Given(_) | Field::Mistyped => {
            return Err(ApiError::bad_request(
                "invalid_device_secret",
                "device_secret must be the string the device's first session returned",
            ));
        }
    };
    let tenant = state.configs().get(client_id).await?;
    if tenant
        .as_ref()
        .is_none_or(|t| t.client.status != ClientStatus::Active)
    {
        return Err(chat::inactive_client());
    }
    let plan = tenant.map_or(Plan::Starter, |t| t.client.plan);
    session_limit_by_tenant(&state, client_id, plan).await?;
    let new_secret = prove_device(&state, client_id, &device_id, presented.as_deref()).await?;
    let conversation_id = state
        .db()
        .tenant(client_id)
        .conversations()
        .get_or_create(Channel::Mobile, &device_id)
        .await?;
    if let Some(token) = token {
        state
            .db()
            .tenant(client_id)
            .devices()
            .set_push_token(&device_id, Some(&token))
            .await?;
    }
    let claims = SessionClaims {
        client_id,
        channel: Channel::Mobile,
        session_id: Uuid::now_v7(),
        conversation_id,
        external_id: device_id,
        origin: None,
        app_key: Some(app_key),
        issued_ms: chrono::Utc::now().timestamp_millis(),
        expires: chrono::Utc::now().timestamp() + state.session_ttl().as_secs() as i64,
    };
    Ok((
        StatusCode::CREATED,
        Json(SessionOut {
            session_id: claims.session_id,
            token: state.sessions().issue(&claims),
            expires_at: claims.expires_at(),
            visitor_id: None,
            device_secret: new_secret,
        }),
    )
        .into_response())
}

/// Register (or with null remove) the device's push token.
#[utoipa::path(put, path = "/mobile/v1/push-token", tag = "mobile", security(("session_token" = [])),
    request_body = PushTokenIn,
    responses((status = 204, description = "stored"),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn set_push_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let claims = chat::authenticate(&state, Channel::Mobile, &headers).await?;
    let bytes = read_body(body, 16 * 1024).await?;
    let request: PushTokenIn = body::parse(&bytes)?;
    if request.push_token == Field::Absent {
        return Err(ApiError::bad_request(
            "missing_push_token",
            "push_token is required (null removes it)",
        ));
    }
    let token = push_token(request.push_token)?;
    state
        .db()
        .tenant(claims.client_id)
        .devices()
        .set_push_token(&claims.external_id, token.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Send the device user's message (202 once the broker confirmed it).
#[utoipa::path(post, path = "/mobile/v1/messages", tag = "mobile", security(("session_token" = [])),
    request_body = ChatMessageIn,
    responses((status = 202, body = Accepted),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 413, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody),
        (status = 503, body = crate::error::ErrorBody)))]
pub(crate) async fn send(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    chat::send(&state, Channel::Mobile, &headers, body).await
}

/// Long-poll the device's conversation after a cursor.
#[utoipa::path(get, path = "/mobile/v1/messages", tag = "mobile", security(("session_token" = [])),
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
    chat::poll(&state, Channel::Mobile, &headers, &query).await
}

/// Stream the device's conversation as server-sent events (`typing`, `delta`, `discard`,
/// `message`, `error`).
#[utoipa::path(get, path = "/mobile/v1/stream", tag = "mobile", security(("session_token" = [])),
    params(("after" = Option<String>, Query, description = "cursor (event id) to resume after; Last-Event-ID wins")),
    responses((status = 200, description = "text/event-stream of the conversation", content_type = "text/event-stream"),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub(crate) async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    let claims = chat::authenticate(&state, Channel::Mobile, &headers).await?;
    chat::stream(
        &state,
        Channel::Mobile,
        claims,
        &headers,
        query.get("after").map(String::as_str),
    )
    .await
}
