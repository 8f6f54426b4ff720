//! Who is calling the admin API, and what they changed.
//!
//! Every admin request carries a bearer token: an operator's (`chatfleet admin-token
//! create`, stored as its SHA-256 with a scope) or the bootstrap `admin.token` from the
//! settings when one is set (an operator named `bootstrap` with write scope; compared as
//! SHA-256 digests in constant time, so neither its content nor its length leaks). A
//! read-scope operator may only read (403 `insufficient_scope` otherwise).
//! `admin.failed_auth_per_minute` failures from one client address within a minute
//! block it for a minute (429 with Retry-After), on every replica.
//!
//! Every write an operator makes is recorded in the audit log after it ran: operator,
//! method, path, tenant, request id, status and — where the handler noted them with
//! [`noted`] — the fields before and after, secrets masked.

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use shared::db::{NewAuditEntry, Operator, Scope};
use shared::ids::ClientId;
use shared::metric;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::channels::{bearer, request_id};
use crate::error::ApiError;

/// The name audit entries give the bootstrap token's caller.
const BOOTSTRAP: &str = "bootstrap";

/// What a handler tells the audit log about a write: the tenant, and the fields before
/// and after the change.
#[derive(Debug, Clone)]
struct AuditNote {
    tenant: Option<ClientId>,
    changes: Option<Value>,
}

/// `response`, with the tenant it changed and the fields before and after noted for the
/// audit log (`None`: nothing before, as on a creation, or nothing after, as on a
/// deletion). Mask secrets before passing them.
pub(crate) fn noted(
    response: impl IntoResponse,
    tenant: ClientId,
    before: Option<Value>,
    after: Option<Value>,
) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(AuditNote {
        tenant: Some(tenant),
        changes: Some(serde_json::json!({ "before": before, "after": after })),
    });
    response
}

/// The admin API's gate: throttle, authenticate, check the scope, run, record.
pub(super) async fn require_admin(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let ip = state.edge().client_ip(
        peer.map(|Extension(ConnectInfo(addr))| addr),
        request.headers(),
    );
    if let Some(ip) = ip {
        match state.cache().admin_auth_blocked(ip).await {
            Ok(Some(wait)) => {
                metrics::counter!(metric::EDGE_LIMITED, "limit" => "admin_auth").increment(1);
                return ApiError::rate_limited(
                    "too many failed admin authentications from this address; retry later",
                    wait.as_secs().max(1),
                )
                .into_response();
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "admin throttle unavailable; not enforced"),
        }
    }
    let presented = bearer(request.headers()).unwrap_or("");
    let operator = match identify(&state, presented).await {
        Ok(Some(operator)) => operator,
        Ok(None) => {
            if let Some(ip) = ip
                && let Err(e) = state
                    .cache()
                    .admin_auth_failed(ip, state.admin_failed_auth_per_minute())
                    .await
            {
                tracing::warn!(error = %e, "admin throttle unavailable; failure not counted");
            }
            tracing::info!("admin request refused: unknown token");
            return ApiError::unauthorized(
                "invalid_admin_token",
                "send an operator's admin token as Authorization: Bearer <token>",
            )
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let method = request.method().clone();
    let writes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if writes && operator.scope == Scope::Read {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!(
                "operator {:?} has read scope; this needs write",
                operator.name
            ),
        )
        .into_response();
    }
    let path = request.uri().path().to_owned();
    let request_id = request_id(request.headers());
    request.extensions_mut().insert(operator.clone());
    let response = next.run(request).await;
    if writes {
        let note = response.extensions().get::<AuditNote>().cloned();
        let status = response.status().as_u16();
        record(&state, &operator, &method, &path, &request_id, status, note).await;
    }
    response
}

/// The operator a token belongs to, if any.
async fn identify(state: &AppState, presented: &str) -> crate::error::Result<Option<Operator>> {
    if presented.is_empty() {
        return Ok(None);
    }
    let bootstrap = state.admin_token();
    if !bootstrap.is_empty() {
        let (given, expected) = (
            shared::secrets::bearer_hash(presented),
            shared::secrets::bearer_hash(bootstrap),
        );
        if bool::from(given.ct_eq(&expected)) {
            return Ok(Some(Operator {
                name: BOOTSTRAP.into(),
                scope: Scope::Write,
            }));
        }
    }
    Ok(state.db().operators().by_token(presented).await?)
}

/// Writes the audit entry of a write. A failure to record is logged and counted; the
/// write it describes has happened and is answered as it was.
async fn record(
    state: &AppState,
    operator: &Operator,
    method: &Method,
    path: &str,
    request_id: &str,
    status: u16,
    note: Option<AuditNote>,
) {
    let tenant = match note.as_ref().and_then(|n| n.tenant) {
        Some(tenant) => Some(tenant),
        None => tenant_in_path(state, path).await,
    };
    let entry = NewAuditEntry {
        operator: &operator.name,
        method: method.as_str(),
        route: path,
        tenant,
        request_id: Some(request_id),
        status,
        changes: note.as_ref().and_then(|n| n.changes.as_ref()),
    };
    if let Err(e) = state.db().audit().record(&entry).await {
        metrics::counter!(metric::AUDIT_UNRECORDED).increment(1);
        tracing::error!(error = %e, operator = %operator.name, path, "audit entry not recorded");
    }
}

/// The tenant a `/admin/v1/clients/{id or slug}/…` path names.
async fn tenant_in_path(state: &AppState, path: &str) -> Option<ClientId> {
    let id_or_slug = path.strip_prefix("/admin/v1/clients/")?.split('/').next()?;
    super::resolve(state, id_or_slug).await.ok().map(|c| c.id)
}

/// Masks every value of a credentials object (its keys stay, to show what changed).
pub(crate) fn masked(credentials: &serde_json::Map<String, Value>) -> Value {
    credentials
        .keys()
        .map(|k| (k.clone(), Value::from("[masked]")))
        .collect::<serde_json::Map<_, _>>()
        .into()
}
