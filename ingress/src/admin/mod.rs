//! The admin API (`/admin/v1`, bearer `admin.token` on every route): a tenant's whole
//! life cycle. JSON field names are the column names of the data model. Every write that
//! changes how a tenant's bot behaves commits first, then refreshes the tenant's cached
//! configuration everywhere ([`shared::cache::TenantConfigs::refresh`]); a write that
//! fails changes neither the database nor the cache.
//!
//! The OpenAPI document at `/openapi.json` is generated from the handlers' annotations.

mod clients;
mod config;
mod conversations;
mod credentials;
mod knowledge;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use shared::db::{
    AgentMode, ApiKeyInfo, ChannelAccount, Client, ClientConfig, ClientPatch, ClientStatus,
    ConfigUpdate, ConversationSummary, ModePatch, Plan, Role, StoredMessage,
};
use subtle::ConstantTimeEq;
use utoipa::OpenApi;

use crate::AppState;
use crate::channels::bearer;
use crate::error::{ApiError, Result};

#[derive(OpenApi)]
#[openapi(
    info(title = "chatfleet ingress", description = "Channel, admin and health endpoints of chatfleet."),
    paths(
        clients::create, clients::list, clients::get_one, clients::update,
        config::get_config, config::put_config, config::patch_config,
        config::list_modes, config::create_mode, config::update_mode, config::delete_mode,
        credentials::list_channels, credentials::create_channel, credentials::delete_channel,
        credentials::list_keys, credentials::create_key, credentials::revoke_key,
        conversations::list, conversations::get_one, conversations::agent_message,
        conversations::hand_to_human, conversations::resume,
        knowledge::list, knowledge::create, knowledge::remove, knowledge::usage,
        crate::channels::api::send, crate::channels::api::poll,
        crate::channels::widget::open_session, crate::channels::widget::send, crate::channels::widget::poll,
        crate::channels::mobile::open_session, crate::channels::mobile::set_push_token,
        crate::channels::mobile::send, crate::channels::mobile::poll,
        crate::health::healthz, crate::health::readyz,
    ),
    components(schemas(
        Client, ClientPatch, Plan, ClientStatus, ClientConfig, ConfigUpdate, AgentMode, ModePatch,
        ChannelAccount, ApiKeyInfo, ConversationSummary, StoredMessage, Role,
        clients::NewClientBody, clients::ClientPage, credentials::NewChannelBody,
        credentials::NewKeyBody, credentials::CreatedKey, conversations::ConversationPage,
        conversations::ConversationDetail, conversations::AgentMessageBody, ErrorBody, ErrorDetail,
        knowledge::NewDocumentBody, shared::db::KnowledgeDocument, shared::db::UsageDay,
    )),
    modifiers(&BearerAuth),
)]
pub(crate) struct ApiDoc;

/// The error shape of every endpoint.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: errors are rendered by `ApiError`
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only
pub(crate) struct ErrorDetail {
    /// Stable snake_case code.
    code: String,
    message: String,
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub(crate) fn routes(state: AppState) -> Router<AppState> {
    let admin = Router::new()
        .merge(clients::routes())
        .merge(config::routes())
        .merge(credentials::routes())
        .merge(conversations::routes())
        .merge(knowledge::routes())
        .route_layer(middleware::from_fn_with_state(state, require_admin));
    Router::new()
        .merge(admin)
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}

/// Refuses any admin request without the right bearer token (compared in constant time).
async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = bearer(request.headers()).unwrap_or("");
    let expected = state.admin_token().as_bytes();
    if presented.is_empty() || !bool::from(presented.as_bytes().ct_eq(expected)) {
        return ApiError::unauthorized(
            "invalid_admin_token",
            "send the admin token as Authorization: Bearer <token>",
        )
        .into_response();
    }
    next.run(request).await
}

/// Finds a tenant by numeric id or by slug; 404 when there is none.
async fn resolve(state: &AppState, id_or_slug: &str) -> Result<Client> {
    let found = match id_or_slug.parse::<u64>() {
        Ok(id) => {
            state
                .db()
                .clients()
                .get(shared::ids::ClientId::new(id))
                .await?
        }
        Err(_) => state.db().clients().by_slug(id_or_slug).await?,
    };
    found.ok_or_else(|| ApiError::not_found(format!("no client {id_or_slug:?}")))
}

/// `?after=&limit=` of listings.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct Page {
    /// Return items after this id (the `next_after` of the previous page).
    #[serde(default)]
    after: Option<u64>,
    /// 1-200, default 50.
    #[serde(default)]
    limit: Option<u32>,
}

impl Page {
    fn bounds(&self) -> Result<(u64, u32)> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=200).contains(&limit) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "limit must be 1-200",
            ));
        }
        Ok((self.after.unwrap_or(0), limit))
    }
}

/// Reads a JSON request body (at most 64 KiB).
async fn body<T: serde::de::DeserializeOwned>(body: axum::body::Body) -> Result<T> {
    let bytes = crate::channels::read_body(body, 64 * 1024).await?;
    crate::error::parse_json(&bytes)
}
