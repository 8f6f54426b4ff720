//! `/admin/v1/clients/{id}/llm-credentials/{provider}`: a tenant's own key for one of the
//! platform's LLM providers ("bring your own key"). The key is sealed before it is
//! stored and never returned (a listing shows its last four characters); a `base_url`
//! may only point at a host of `llm.tenant_base_url_allowlist`, under the SSRF rules of
//! tools. Every change refreshes the tenant's configuration everywhere: the next turn
//! on any replica uses (or stops using) the key.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::db::LlmCredential;

use super::{audited, body, noted, resolve};
use crate::AppState;
use crate::error::{ApiError, Result};
use crate::extract::Path;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/admin/v1/clients/{id}/llm-credentials",
            get(list_credentials),
        )
        .route(
            "/admin/v1/clients/{id}/llm-credentials/{provider}",
            put(put_credentials).delete(delete_credentials),
        )
}

/// Longest API key accepted.
const MAX_KEY_CHARS: usize = 1024;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LlmCredentialsBody {
    /// The tenant's key for the provider: sealed at rest, never returned.
    api_key: String,
    /// Replaces the provider's base URL (a host of `llm.tenant_base_url_allowlist`).
    #[serde(default)]
    base_url: Option<String>,
    /// Sent as `OpenAI-Organization`.
    #[serde(default)]
    organization: Option<String>,
}

/// A provider the tenant brought a key for (the key itself is never shown).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LlmCredentialsOut {
    #[schema(example = "openai")]
    provider: String,
    configured: bool,
    /// The key's last four characters.
    #[schema(example = "x7Qa")]
    key_last4: String,
    base_url: Option<String>,
    organization: Option<String>,
}

impl From<LlmCredential> for LlmCredentialsOut {
    fn from(c: LlmCredential) -> Self {
        Self {
            provider: c.provider,
            configured: true,
            key_last4: c.key_last4,
            base_url: c.base_url,
            organization: c.organization,
        }
    }
}

/// The providers the tenant brought its own key for.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/llm-credentials",
    params(("id" = String, Path, description = "client id or slug")),
    security(("admin_token" = [])), responses((status = 200, body = Vec<LlmCredentialsOut>)))]
pub(crate) async fn list_credentials(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<LlmCredentialsOut>>> {
    let client = resolve(&state, &id).await?;
    let found = state
        .db()
        .tenant(client.id)
        .llm_credentials()
        .list()
        .await?;
    Ok(Json(found.into_iter().map(Into::into).collect()))
}

/// Set (or replace) the tenant's own key for a provider; its turns and knowledge
/// embeddings on that provider use it from the next message on.
#[utoipa::path(put, path = "/admin/v1/clients/{id}/llm-credentials/{provider}",
    params(("id" = String, Path, description = "client id or slug"), ("provider" = String, Path, description = "a provider of llm.providers")),
    request_body = LlmCredentialsBody, security(("admin_token" = [])),
    responses((status = 200, body = LlmCredentialsOut), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn put_credentials(
    State(state): State<AppState>,
    Path((id, provider)): Path<(String, String)>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let req: LlmCredentialsBody = body(raw).await?;
    let llm = state.llm_settings();
    if !llm.providers.contains_key(&provider) {
        return Err(ApiError::invalid(format!(
            "provider {provider:?} is not one of this platform's LLM providers ({})",
            llm.providers.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let api_key = req.api_key.trim();
    if api_key.is_empty()
        || api_key.len() > MAX_KEY_CHARS
        || api_key.chars().any(char::is_whitespace)
    {
        return Err(ApiError::invalid(format!(
            "api_key must be 1-{MAX_KEY_CHARS} characters without spaces"
        )));
    }
    if let Some(url) = &req.base_url {
        check_base_url(&state, url)?;
    }
    if req
        .organization
        .as_ref()
        .is_some_and(|o| o.trim().is_empty() || o.len() > 200)
    {
        return Err(ApiError::invalid(
            "organization must be 1-200 characters, or absent",
        ));
    }
    let last4: String = {
        let chars: Vec<char> = api_key.chars().collect();
        chars[chars.len().saturating_sub(4)..].iter().collect()
    };
    let credential = LlmCredential {
        provider: provider.clone(),
        key_sealed: state
            .secrets()
            .seal_llm_key(client.id, &provider, api_key)?,
        key_last4: last4,
        base_url: req.base_url.map(|u| u.trim_end_matches('/').to_owned()),
        organization: req.organization,
    };
    let keys = state.db().tenant(client.id).llm_credentials();
    let before = keys
        .list()
        .await?
        .into_iter()
        .find(|c| c.provider == provider)
        .map(LlmCredentialsOut::from);
    keys.put(&credential).await?;
    state.configs().refresh(client.id).await?;
    tracing::info!(client_id = %client.id, provider, "the tenant's own LLM key was set");
    let out = LlmCredentialsOut::from(credential);
    let after = audited(&out);
    Ok(noted(Json(out), client.id, before.and_then(audited), after))
}

/// Remove the tenant's own key for a provider: its turns use the platform's key again.
#[utoipa::path(delete, path = "/admin/v1/clients/{id}/llm-credentials/{provider}",
    params(("id" = String, Path, description = "client id or slug"), ("provider" = String, Path)),
    security(("admin_token" = [])),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn delete_credentials(
    State(state): State<AppState>,
    Path((id, provider)): Path<(String, String)>,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let keys = state.db().tenant(client.id).llm_credentials();
    let before = keys
        .list()
        .await?
        .into_iter()
        .find(|c| c.provider == provider)
        .map(LlmCredentialsOut::from);
    if keys.delete(&provider).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "the client has no key of its own for {provider:?}"
        )));
    }
    state.configs().refresh(client.id).await?;
    tracing::info!(client_id = %client.id, provider, "the tenant's own LLM key was removed");
    Ok(noted(
        StatusCode::NO_CONTENT,
        client.id,
        before.and_then(audited),
        None,
    ))
}

/// A tenant's base URL: a URL without credentials, on a host of
/// `llm.tenant_base_url_allowlist`, `https://` unless tools may use `http://`, not a
/// literal address outside the networks tools may reach (names are checked after DNS on
/// every call, by the worker's guarded resolver).
fn check_base_url(state: &AppState, url: &str) -> Result<()> {
    if url.len() > 500 {
        return Err(ApiError::invalid("base_url must be at most 500 characters"));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::invalid(format!("base_url is not a URL: {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::invalid("base_url must not hold credentials"));
    }
    let host = parsed.host_str().unwrap_or_default();
    let allowlist = &state.llm_settings().tenant_base_url_allowlist;
    if !allowlist
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(host))
    {
        return Err(ApiError::invalid(if allowlist.is_empty() {
            "base_url: this platform allows no base URL of a tenant's own (llm.tenant_base_url_allowlist is empty)".to_owned()
        } else {
            format!(
                "base_url: host {host:?} is not in llm.tenant_base_url_allowlist ({})",
                allowlist.join(", ")
            )
        }));
    }
    let tools = state.tools();
    shared::net::check_target(&parsed, tools.allow_http, &tools.allowed_networks())
        .map_err(|reason| ApiError::invalid(format!("base_url: {reason}")))
}
