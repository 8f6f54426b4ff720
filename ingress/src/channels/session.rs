//! Session tokens and cursors of the widget and mobile channels.
//!
//! A session token is `cfs1.<claims>.<mac>`: the claims (tenant, channel, session,
//! conversation, the origin the widget session was opened from, expiry) as base64url
//! JSON, and an HMAC-SHA256 over them with a key derived from `security.encryption_key`.
//! Any ingress replica can check a token without a database or Redis round trip; a token
//! changed in any byte, issued for another channel or expired is refused (401). Rotating
//! the encryption key ends every session: clients open a new one and resume their
//! conversation.
//!
//! A cursor is a mailbox position with a MAC over the conversation it belongs to
//! (`<seq>.<mac>`), so a cursor from another conversation is refused (400) rather than
//! silently skipping or replaying messages.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use shared::ids::{Channel, ClientId, ConversationId};
use uuid::Uuid;

use crate::error::{ApiError, Result};

type HmacSha256 = Hmac<Sha256>;

const TOKEN_PREFIX: &str = "cfs1";
/// Bytes of MAC kept in a cursor: enough that guessing one is hopeless.
const CURSOR_MAC_BYTES: usize = 12;

/// What a session token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionClaims {
    #[serde(rename = "c")]
    pub client_id: ClientId,
    #[serde(rename = "ch")]
    pub channel: Channel,
    #[serde(rename = "s")]
    pub session_id: Uuid,
    #[serde(rename = "v")]
    pub conversation_id: ConversationId,
    /// The conversation's key in the channel: the widget's visitor id, the device id.
    #[serde(rename = "x")]
    pub external_id: String,
    /// The page origin a widget session was opened from; its requests must come from it.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Expiry, Unix seconds.
    #[serde(rename = "e")]
    pub expires: i64,
}

impl SessionClaims {
    pub(crate) fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.expires, 0).unwrap_or_default()
    }
}

/// Issues and checks session tokens and cursors.
#[derive(Clone)]
pub(crate) struct SessionKeys {
    tokens: [u8; 32],
    cursors: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    /// Derives the token and cursor keys from the platform's master key.
    pub(crate) fn derive(master: &[u8]) -> Self {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut mac = HmacSha256::new_from_slice(master).expect("HMAC takes any key length");
            mac.update(label);
            mac.finalize().into_bytes().into()
        };
        Self {
            tokens: derive(b"chatfleet/session-token/v1"),
            cursors: derive(b"chatfleet/session-cursor/v1"),
        }
    }

    pub(crate) fn issue(&self, claims: &SessionClaims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signed = format!("{TOKEN_PREFIX}.{body}");
        let tag = URL_SAFE_NO_PAD.encode(self.mac(&self.tokens, signed.as_bytes()));
        format!("{signed}.{tag}")
    }

    /// The claims of a valid, unexpired token of `channel` (401 otherwise).
    pub(crate) fn verify(&self, token: &str, channel: Channel) -> Result<SessionClaims> {
        let invalid = || {
            ApiError::unauthorized(
                "invalid_session",
                "the session token is invalid; open a new session",
            )
        };
        let (signed, tag) = token.rsplit_once('.').ok_or_else(invalid)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid())?;
        let mut mac = HmacSha256::new_from_slice(&self.tokens).expect("any key length");
        mac.update(signed.as_bytes());
        mac.verify_slice(&tag).map_err(|_| invalid())?;
        let body = signed
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|b| b.strip_prefix('.'))
            .ok_or_else(invalid)?;
        let claims: SessionClaims = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|json: Vec<u8>| serde_json::from_slice::<SessionClaims>(&json).ok())
            .ok_or_else(invalid)?;
        if claims.channel != channel {
            return Err(invalid());
        }
        if claims.expires <= Utc::now().timestamp() {
            return Err(ApiError::unauthorized(
                "session_expired",
                "the session has expired; open a new one",
            ));
        }
        Ok(claims)
    }

    /// The cursor for position `seq` of a conversation.
    pub(crate) fn cursor(&self, conversation_id: ConversationId, seq: u64) -> String {
        let tag = self.cursor_mac(conversation_id, seq);
        format!("{seq}.{}", hex::encode(tag))
    }

    /// The position a cursor stands for; absent or empty is the start. A cursor of
    /// another conversation, or a forged one, is 400.
    pub(crate) fn position(
        &self,
        conversation_id: ConversationId,
        raw: Option<&str>,
    ) -> Result<u64> {
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(0);
        };
        let foreign = || {
            ApiError::bad_request(
                "invalid_cursor",
                "after must be a cursor returned by an earlier poll of this session",
            )
        };
        let (seq, tag) = raw.split_once('.').ok_or_else(foreign)?;
        let seq: u64 = seq.parse().map_err(|_| foreign())?;
        let tag = hex::decode(tag).map_err(|_| foreign())?;
        let expected = self.cursor_mac(conversation_id, seq);
        if subtle::ConstantTimeEq::ct_eq(expected.as_slice(), tag.as_slice()).into() {
            Ok(seq)
        } else {
            Err(foreign())
        }
    }

    fn cursor_mac(&self, conversation_id: ConversationId, seq: u64) -> [u8; CURSOR_MAC_BYTES] {
        let full = self.mac(
            &self.cursors,
            format!("{}:{seq}", conversation_id.get()).as_bytes(),
        );
        let mut out = [0u8; CURSOR_MAC_BYTES];
        out.copy_from_slice(&full[..CURSOR_MAC_BYTES]);
        out
    }

    fn mac(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn claims(expires: i64) -> SessionClaims {
        SessionClaims {
            client_id: ClientId::new(7),
            channel: Channel::Widget,
            session_id: Uuid::now_v7(),
            conversation_id: ConversationId::new(42),
            external_id: "visitor-abcdefghijklmnop".into(),
            origin: Some("https://shop.example".into()),
            expires,
        }
    }

    #[test]
    fn a_token_round_trips_and_any_change_is_refused() {
        let keys = SessionKeys::derive(b"master key one");
        let c = claims(Utc::now().timestamp() + 60);
        let token = keys.issue(&c);
        assert_eq!(keys.verify(&token, Channel::Widget).expect("valid"), c);

        // Another channel, another deployment's key, a flipped byte: all 401.
        let e = keys.verify(&token, Channel::Mobile).expect_err("channel");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        let other = SessionKeys::derive(b"master key two");
        assert!(other.verify(&token, Channel::Widget).is_err());
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).expect("ascii");
            if tampered != token {
                assert!(
                    keys.verify(&tampered, Channel::Widget).is_err(),
                    "byte {i} changed and still accepted"
                );
            }
        }
    }

    #[test]
    fn an_expired_token_is_refused() {
        let keys = SessionKeys::derive(b"k");
        let token = keys.issue(&claims(Utc::now().timestamp() - 1));
        let e = keys.verify(&token, Channel::Widget).expect_err("expired");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn cursors_belong_to_their_conversation() {
        let keys = SessionKeys::derive(b"k");
        let (mine, theirs) = (ConversationId::new(1), ConversationId::new(2));
        let cursor = keys.cursor(mine, 17);
        assert_eq!(keys.position(mine, Some(&cursor)).expect("mine"), 17);
        assert_eq!(keys.position(mine, None).expect("start"), 0);
        assert_eq!(keys.position(mine, Some("")).expect("start"), 0);
        for bad in [cursor.as_str(), "17", "17.00", "x.y"] {
            let e = keys.position(theirs, Some(bad)).expect_err("foreign");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
        // A position moved forward under the old MAC is refused too.
        let forged = format!("18.{}", cursor.split_once('.').expect("dot").1);
        assert!(keys.position(mine, Some(&forged)).is_err());
    }
}
