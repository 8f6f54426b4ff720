//! A tenant's tools (`/admin/v1/clients/{id}/tools`) and the calls its turns made, as
//! the admin API shows and changes them. A tool's credential goes in (`auth`) and is
//! sealed at once; only its kind comes out (`auth_type`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::db::{self, ToolAuthKind, ToolCallRow};
use shared::secrets::ToolCredential;
use uuid::Uuid;

use super::config::present;

/// How the endpoint is called: `GET` sends the arguments not in the URL as query
/// parameters, `POST` as a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) enum ToolMethod {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
}

impl From<db::ToolMethod> for ToolMethod {
    fn from(m: db::ToolMethod) -> Self {
        match m {
            db::ToolMethod::Get => Self::Get,
            db::ToolMethod::Post => Self::Post,
        }
    }
}

impl From<ToolMethod> for db::ToolMethod {
    fn from(m: ToolMethod) -> Self {
        match m {
            ToolMethod::Get => Self::Get,
            ToolMethod::Post => Self::Post,
        }
    }
}

/// The endpoint's credential: sealed when stored, never returned.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum ToolAuthIn {
    /// `Authorization: Bearer <token>`.
    Bearer { token: String },
    /// `<name>: <value>`.
    Header { name: String, value: String },
    /// `Authorization: Basic …`.
    Basic { username: String, password: String },
}

impl TryFrom<ToolAuthIn> for ToolCredential {
    type Error = String;

    /// Refuses a credential no request could carry; the message names the field.
    fn try_from(auth: ToolAuthIn) -> Result<Self, String> {
        let clean = |field: &str, v: &str| {
            if v.is_empty() || v.len() > 1024 || v.chars().any(char::is_control) {
                Err(format!(
                    "auth.{field} must be 1-1024 characters without control characters"
                ))
            } else {
                Ok(())
            }
        };
        Ok(match auth {
            ToolAuthIn::Bearer { token } => {
                clean("token", &token)?;
                Self::Bearer { token }
            }
            ToolAuthIn::Header { name, value } => {
                clean("value", &value)?;
                let reserved = ["host", "content-length", "content-type", "idempotency-key"];
                if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || reserved.contains(&name.to_ascii_lowercase().as_str())
                {
                    return Err(format!(
                        "auth.name must be an HTTP header name other than {}",
                        reserved.join(", ")
                    ));
                }
                Self::Header { name, value }
            }
            ToolAuthIn::Basic { username, password } => {
                clean("username", &username)?;
                clean("password", &password)?;
                if username.contains(':') {
                    return Err("auth.username must not contain ':'".into());
                }
                Self::Basic { username, password }
            }
        })
    }
}

/// A new tool.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolIn {
    /// `^[a-zA-Z0-9_-]{1,64}$`, unique per tenant.
    #[schema(example = "order_status")]
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// A JSON Schema object of the arguments.
    #[schema(value_type = Object)]
    pub parameters: Value,
    pub method: ToolMethod,
    /// `https://` (or `http://` where the operator allows it); may hold `{param}`
    /// placeholders in its path or query, filled URL-encoded from the arguments.
    #[schema(example = "https://shop.example/orders/{order_id}")]
    pub url: String,
    pub auth: Option<ToolAuthIn>,
    /// Default 5000, at most 30000.
    pub timeout_ms: Option<u32>,
    /// Whether a call changes something (default: true for POST, false for GET).
    pub side_effects: Option<bool>,
    /// Default true.
    pub is_active: Option<bool>,
}

/// Any subset of a tool's fields (its name stays); `auth: null` removes the credential.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolPatchIn {
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    pub method: Option<ToolMethod>,
    pub url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<ToolAuthIn>)]
    pub auth: Option<Option<ToolAuthIn>>,
    pub timeout_ms: Option<u32>,
    pub side_effects: Option<bool>,
    pub is_active: Option<bool>,
}

/// A tool as the API shows it: everything but the credential.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ToolOut {
    pub name: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub parameters: Value,
    pub method: ToolMethod,
    pub url: String,
    /// `bearer`, `header` or `basic` when a credential is set.
    #[schema(example = "bearer")]
    pub auth_type: Option<&'static str>,
    pub timeout_ms: u32,
    pub side_effects: bool,
    pub is_active: bool,
}

impl From<db::Tool> for ToolOut {
    fn from(t: db::Tool) -> Self {
        Self {
            name: t.name,
            description: t.description,
            parameters: t.parameters,
            method: t.method.into(),
            url: t.url,
            auth_type: t.auth_kind.map(ToolAuthKind::as_str),
            timeout_ms: t.timeout_ms,
            side_effects: t.side_effects,
            is_active: t.is_active,
        }
    }
}

/// One tool call a turn made.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ToolCallOut {
    /// The envelope id of the turn's first message.
    pub turn_id: Uuid,
    pub call_index: u32,
    pub tool: String,
    /// The arguments as the model gave them (JSON text).
    pub arguments: String,
    /// `ok`, `error`, `refused`, `invalid` or `not_called`.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// What the model was given back.
    pub result: String,
    pub duration_ms: u32,
    pub created_at: DateTime<Utc>,
}

impl From<ToolCallRow> for ToolCallOut {
    fn from(r: ToolCallRow) -> Self {
        Self {
            turn_id: *r.call.turn_id.as_uuid(),
            call_index: r.call.call_index,
            tool: r.call.tool,
            arguments: r.call.arguments,
            status: r.call.status.as_str(),
            result: r.call.result,
            duration_ms: r.call.duration_ms,
            created_at: r.created_at,
        }
    }
}
