//! The bodies the channels accept, as typed structs, and the responses they give. A
//! channel body tolerates fields it does not know (clients add their own), and each of
//! its fields arrives as a [`Field`]: absent, `null`, of the expected type, or of another,
//! so that validation answers with the field's own stable error code (`missing_text`,
//! `invalid_device_id`…) rather than a generic one.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{ApiError, Result};

/// One field of a channel body as it arrived.
#[derive(Debug, Default, PartialEq)]
pub(crate) enum Field<T> {
    #[default]
    Absent,
    Null,
    Given(T),
    /// Present with another JSON type than the field's.
    Mistyped,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(deserializer)? {
            Value::Null => Self::Null,
            value => serde_json::from_value(value).map_or(Self::Mistyped, Self::Given),
        })
    }
}

/// Parses a channel body: 400 `malformed_json` when it is not JSON, 400
/// `invalid_request` when it is not an object. Every field of `T` being a [`Field`],
/// an object always parses.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))
}

/// The required `text` of a message: a non-empty string of at most `max_bytes` (400 /
/// 413 otherwise).
pub(crate) fn message_text(text: Field<String>, max_bytes: usize) -> Result<String> {
    let text = match text {
        Field::Given(s) if !s.trim().is_empty() => s,
        Field::Given(_) | Field::Null | Field::Absent => {
            return Err(ApiError::bad_request(
                "missing_text",
                "text is required and must not be empty",
            ));
        }
        Field::Mistyped => {
            return Err(ApiError::bad_request(
                "invalid_text",
                "text must be a string",
            ));
        }
    };
    if text.len() > max_bytes {
        return Err(ApiError::too_large(
            "text_too_large",
            format!("text must be at most {max_bytes} bytes"),
        ));
    }
    Ok(text)
}

/// `POST /api/v1/messages`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct ApiMessageIn {
    /// The conversation's key in the tenant's own system (1-191 bytes).
    #[serde(default)]
    #[schema(value_type = String, min_length = 1, max_length = 191)]
    pub conversation_id: Field<String>,
    /// The message (1 byte to `api.max_text_bytes`).
    #[serde(default)]
    #[schema(value_type = String, min_length = 1)]
    pub text: Field<String>,
    /// The caller's own data, passed through with the message.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Field<Map<String, Value>>,
}

/// `POST /widget/v1/messages`, `POST /mobile/v1/messages`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct ChatMessageIn {
    /// The message (1 byte to `api.max_text_bytes`).
    #[serde(default)]
    #[schema(value_type = String, min_length = 1)]
    pub text: Field<String>,
    /// The client's id of the message: a repeated one is not processed twice.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub client_message_id: Field<String>,
}

/// `POST /widget/v1/sessions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct WidgetSessionIn {
    /// The tenant's slug.
    #[serde(default)]
    #[schema(value_type = String)]
    pub client: Field<String>,
    /// The visitor's id from an earlier session (16-128 characters of A-Z, a-z, 0-9,
    /// '-' and '_'); a new one is made when absent.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub visitor_id: Field<String>,
}

/// `POST /mobile/v1/sessions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct MobileSessionIn {
    #[serde(default)]
    #[schema(value_type = String)]
    pub device_id: Field<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub push_token: Field<String>,
    /// The secret the device's first session returned; required by every later one.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub device_secret: Field<String>,
}

/// `PUT /mobile/v1/push-token`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct PushTokenIn {
    /// The device's push token; `null` removes it.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub push_token: Field<String>,
}

/// A message was accepted (202): it is on the broker and will be answered.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    pub message_id: Uuid,
    /// The conversation it belongs to (API channel only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
}

/// A widget or mobile session was opened (201).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SessionOut {
    pub session_id: Uuid,
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// The visitor's id, to open the same conversation next time (widget only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visitor_id: Option<String>,
    /// Mobile only, on the device's first session: the secret every later session of the
    /// device must send as `device_secret`. Shown once; keep it in the device's keystore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_secret: Option<String>,
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn fields_say_how_they_arrived() {
        let body: ChatMessageIn =
            parse(br#"{ "text": 5, "client_message_id": null, "extra": 1 }"#).expect("object");
        assert_eq!(body.text, Field::Mistyped);
        assert_eq!(body.client_message_id, Field::Null);
        let body: ChatMessageIn = parse(br#"{ "text": "hi" }"#).expect("object");
        assert_eq!(body.text, Field::Given("hi".to_owned()));
        assert_eq!(body.client_message_id, Field::Absent);
    }

    #[test]
    fn bodies_that_are_not_objects_get_stable_codes() {
        let e = parse::<ChatMessageIn>(b"{").expect_err("not JSON");
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::BAD_REQUEST, "malformed_json")
        );
        let e = parse::<ChatMessageIn>(b"[1]").expect_err("not an object");
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
    }

    #[test]
    fn message_text_is_required_non_empty_and_bounded() {
        let code = |f, max| message_text(f, max).map_err(|e| (e.status(), e.code()));
        assert_eq!(code(Field::Given("hi".into()), 10), Ok("hi".into()));
        assert_eq!(
            code(Field::Given("  ".into()), 10),
            Err((StatusCode::BAD_REQUEST, "missing_text"))
        );
        assert_eq!(
            code(Field::Absent, 10),
            Err((StatusCode::BAD_REQUEST, "missing_text"))
        );
        assert_eq!(
            code(Field::Mistyped, 10),
            Err((StatusCode::BAD_REQUEST, "invalid_text"))
        );
        assert_eq!(
            code(Field::Given("x".repeat(11)), 10),
            Err((StatusCode::PAYLOAD_TOO_LARGE, "text_too_large"))
        );
    }
}
