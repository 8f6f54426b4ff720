//! The OpenAPI document served at `/openapi.json`: every route's request and response
//! bodies, generated from the handlers' `#[utoipa::path]` annotations and the wire types'
//! `ToSchema` derives. Only ingress's own wire types appear here; database rows never do.

use utoipa::OpenApi;

use crate::channels::body;
use crate::error::{ErrorBody, ErrorDetail};
use crate::{admin, wire};

#[derive(OpenApi)]
#[openapi(
    info(title = "chatfleet ingress", description = "Channel, admin and health endpoints of chatfleet."),
    paths(
        crate::admin::clients::create, crate::admin::clients::list, crate::admin::clients::get_one, crate::admin::clients::update,
        crate::admin::clients::revoke_sessions, crate::admin::audit::list,
        crate::admin::whoami::whoami, crate::admin::inbox::list, crate::admin::replays::dry_run,
        crate::admin::config::get_config, crate::admin::config::put_config, crate::admin::config::patch_config,
        crate::admin::config::list_modes, crate::admin::config::create_mode, crate::admin::config::update_mode, crate::admin::config::delete_mode,
        crate::admin::credentials::list_channels, crate::admin::credentials::create_channel, crate::admin::credentials::delete_channel,
        crate::admin::credentials::update_channel,
        crate::admin::credentials::list_keys, crate::admin::credentials::create_key, crate::admin::credentials::revoke_key,
        crate::admin::conversations::list, crate::admin::conversations::get_one, crate::admin::conversations::agent_message, crate::admin::conversations::template_message,
        crate::admin::conversations::hand_to_human, crate::admin::conversations::resume,
        crate::admin::knowledge::list, crate::admin::knowledge::create, crate::admin::knowledge::remove, crate::admin::knowledge::usage,
        crate::admin::tools::list_tools, crate::admin::tools::create_tool, crate::admin::tools::get_tool,
        crate::admin::tools::update_tool, crate::admin::tools::delete_tool,
        crate::admin::webhooks::list_webhooks, crate::admin::webhooks::create_webhook, crate::admin::webhooks::get_webhook,
        crate::admin::webhooks::update_webhook, crate::admin::webhooks::delete_webhook,
        crate::admin::webhooks::rotate_secret, crate::admin::webhooks::list_attempts,
        crate::admin::llm_credentials::list_credentials, crate::admin::llm_credentials::put_credentials,
        crate::admin::llm_credentials::delete_credentials,
        crate::admin::end_users::erase_conversation, crate::admin::end_users::erase_end_user,
        crate::admin::end_users::export,
        crate::channels::api::send, crate::channels::api::poll, crate::channels::api::stream,
        crate::channels::widget::open_session, crate::channels::widget::send, crate::channels::widget::poll,
        crate::channels::widget::stream,
        crate::channels::mobile::open_session, crate::channels::mobile::set_push_token,
        crate::channels::mobile::send, crate::channels::mobile::poll, crate::channels::mobile::stream,
        crate::health::healthz, crate::health::readyz,
    ),
    components(schemas(
        wire::ClientOut, wire::ClientPatchIn, wire::Plan, wire::ClientStatus,
        wire::ConfigOut, wire::ConfigIn, wire::TemplateRef, wire::PersonaTone, wire::ConfigPatch, wire::AgentModeOut, wire::AgentModeIn,
        wire::ModePatchIn, wire::ChannelAccountOut, wire::ApiKeyOut, wire::ConversationOut,
        wire::MessageOut, wire::MessageRole, wire::PolledMessages, wire::PolledMessage,
        wire::KnowledgeDocumentOut, wire::UsageDayOut, wire::UsageOut, wire::UsageTotalOut, wire::UsageMonthOut,
        wire::BudgetAction, wire::BuiltinTool,
        wire::ToolIn, wire::ToolOut, wire::ToolPatchIn, wire::ToolAuthIn, wire::ToolMethod, wire::ToolCallOut,
        admin::llm_credentials::LlmCredentialsBody, admin::llm_credentials::LlmCredentialsOut,
        admin::end_users::ErasedOut, admin::end_users::EndUserExport,
        wire::WebhookIn, wire::WebhookOut, wire::WebhookPatchIn, wire::CreatedWebhook, wire::RotatedSecret,
        wire::AttemptOut, wire::AttemptPage,
        admin::clients::NewClientBody, admin::clients::ClientPage, admin::clients::SessionsRevoked,
        admin::audit::AuditEntryOut, admin::audit::AuditPage,
        admin::whoami::WhoAmI, admin::inbox::Inbox, admin::inbox::WaitingOut,
        admin::replays::ReplayBody, admin::replays::ReplayOut, admin::replays::ReplayedOut,
        admin::credentials::NewChannelBody, admin::credentials::ChannelPatchBody, admin::credentials::NewKeyBody, admin::credentials::CreatedKey,
        admin::conversations::ConversationPage, admin::conversations::ConversationDetail,
        admin::conversations::AgentMessageBody, admin::conversations::TemplateBody, admin::conversations::AgentMessageAccepted,
        admin::knowledge::NewDocumentBody, ErrorBody, ErrorDetail,
        body::ApiMessageIn, body::ChatMessageIn, body::WidgetSessionIn, body::MobileSessionIn,
        body::PushTokenIn, body::Accepted, body::SessionOut,
    )),
    modifiers(&BearerAuth, &ErrorResponses),
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

/// Every operation's errors: besides the statuses each handler documents, any other
/// status an operation answers (400 malformed, 401, 403, 413, 429, 503 overloaded, …) is
/// an error in the [`ErrorBody`] format — the `default` response says so, and the statuses
/// every request can meet are listed by name.
struct ErrorResponses;

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                };
                if secured {
                    add("401", "missing, invalid, expired or revoked credentials");
                }
                add(
                    "429",
                    "over a rate limit: retry after the Retry-After seconds",
                );
                add(
                    "503",
                    "overloaded or a dependency is unavailable: retry later",
                );
                add("default", "any other error");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// Where a body's schema is not a named type of ours: an inline object with no
    /// properties (`Object`), or a body described only in prose.
    fn placeholders(doc: &Value) -> Vec<String> {
        let mut found = Vec::new();
        let named = |schema: &Value| {
            schema.get("$ref").is_some()
                || schema
                    .get("items")
                    .is_some_and(|items| items.get("$ref").is_some())
        };
        for (path, operations) in doc["paths"].as_object().into_iter().flatten() {
            for (method, operation) in operations.as_object().into_iter().flatten() {
                let at = format!("{method} {path}");
                for content in operation["requestBody"]["content"].as_object().into_iter() {
                    for (kind, body) in content {
                        if !named(&body["schema"]) {
                            found.push(format!("{at}: request {kind}"));
                        }
                    }
                }
                for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                    let described = response["description"].as_str().unwrap_or_default();
                    if described.starts_with('{') {
                        found.push(format!("{at}: {status} described as {described:?}"));
                    }
                    for (kind, body) in response["content"].as_object().into_iter().flatten() {
                        if kind == "application/json" && !named(&body["schema"]) {
                            found.push(format!("{at}: {status} {kind}"));
                        }
                    }
                }
            }
        }
        found
    }

    /// Every JSON request and response body of the document is one of the wire types
    /// (no `Object` placeholder, no body described only in prose).
    #[test]
    fn every_body_is_a_named_type() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("document");
        assert!(doc["paths"].as_object().is_some_and(|p| p.len() > 20));
        let found = placeholders(&doc);
        assert!(found.is_empty(), "placeholders: {found:#?}");
    }

    /// The check sees the placeholders it is there to catch.
    #[test]
    fn placeholders_are_found() {
        let doc = serde_json::json!({ "paths": { "/x": { "post": {
            "requestBody": { "content": { "application/json": { "schema": { "type": "object" } } } },
            "responses": { "202": { "description": "{ message_id }" } }
        } } } });
        assert_eq!(placeholders(&doc).len(), 2, "{:?}", placeholders(&doc));
    }
}
