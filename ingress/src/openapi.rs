//! The OpenAPI document served at `/openapi.json`: every route's request and response
//! bodies, generated from the handlers' `#[utoipa::path]` annotations and the wire types'
//! `ToSchema` derives. Only ingress's own wire types appear here; database rows never do.

use utoipa::OpenApi;

use crate::error::{ErrorBody, ErrorDetail};
use crate::{admin, wire};

#[derive(OpenApi)]
#[openapi(
    info(title = "chatfleet ingress", description = "Channel, admin and health endpoints of chatfleet."),
    paths(
        crate::admin::clients::create, crate::admin::clients::list, crate::admin::clients::get_one, crate::admin::clients::update,
        crate::admin::config::get_config, crate::admin::config::put_config, crate::admin::config::patch_config,
        crate::admin::config::list_modes, crate::admin::config::create_mode, crate::admin::config::update_mode, crate::admin::config::delete_mode,
        crate::admin::credentials::list_channels, crate::admin::credentials::create_channel, crate::admin::credentials::delete_channel,
        crate::admin::credentials::list_keys, crate::admin::credentials::create_key, crate::admin::credentials::revoke_key,
        crate::admin::conversations::list, crate::admin::conversations::get_one, crate::admin::conversations::agent_message,
        crate::admin::conversations::hand_to_human, crate::admin::conversations::resume,
        crate::admin::knowledge::list, crate::admin::knowledge::create, crate::admin::knowledge::remove, crate::admin::knowledge::usage,
        crate::channels::api::send, crate::channels::api::poll,
        crate::channels::widget::open_session, crate::channels::widget::send, crate::channels::widget::poll,
        crate::channels::mobile::open_session, crate::channels::mobile::set_push_token,
        crate::channels::mobile::send, crate::channels::mobile::poll,
        crate::health::healthz, crate::health::readyz,
    ),
    components(schemas(
        wire::ClientOut, wire::ClientPatchIn, wire::Plan, wire::ClientStatus,
        wire::ConfigOut, wire::ConfigIn, wire::ConfigPatch, wire::AgentModeOut, wire::AgentModeIn,
        wire::ModePatchIn, wire::ChannelAccountOut, wire::ApiKeyOut, wire::ConversationOut,
        wire::MessageOut, wire::MessageRole, wire::PolledMessages, wire::PolledMessage,
        wire::KnowledgeDocumentOut, wire::UsageDayOut,
        admin::clients::NewClientBody, admin::clients::ClientPage,
        admin::credentials::NewChannelBody, admin::credentials::NewKeyBody, admin::credentials::CreatedKey,
        admin::conversations::ConversationPage, admin::conversations::ConversationDetail,
        admin::conversations::AgentMessageBody, admin::conversations::AgentMessageAccepted,
        admin::knowledge::NewDocumentBody, ErrorBody, ErrorDetail,
    )),
    modifiers(&BearerAuth),
)]
pub(crate) struct ApiDoc;

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
