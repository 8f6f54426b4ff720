//! Session tokens and cursors of the widget and mobile channels.
//!
//! A session token is `cfs2.<key id>.<claims>.<mac>`: the claims (tenant, channel,
//! session, conversation, the origin the widget session was opened from or the app key
//! of the mobile one, issue time, expiry) as base64url JSON, and an HMAC-SHA256 over
//! everything before it with a key derived from one key of `security.session_keys`. The
//! first key of the ring signs; every key verifies, found by the id the token names, so a
//! new key added first rotates signing without logging anyone out, and removing an old
//! key ends the sessions it signed. A token changed in any byte, issued for another
//! channel, signed by a key no longer in the ring or expired is refused (401) without a
//! database or Redis round trip; whether it was revoked since is
//! [`super::chat::authenticate`]'s question.
//!
//! A cursor is a mailbox position with a MAC over the conversation it belongs to
//! (`<seq>.<mac>`), so a cursor from another conversation is refused (400) rather than
//! silently skipping or replaying messages; any key of the ring may have made it.

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

const TOKEN_PREFIX: &str = "cfs2";
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
    /// The app key a mobile session was opened with: the session ends with its account.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub app_key: Option<String>,
    /// When the token was issued, Unix milliseconds (a tenant's revocation ends the
    /// sessions issued before it).
    #[serde(rename = "i")]
    pub issued_ms: i64,
    /// Expiry, Unix seconds.
    #[serde(rename = "e")]
    pub expires: i64,
}

impl SessionClaims {
    pub(crate) fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.expires, 0).unwrap_or_default()
    }
}

/// One key of the ring: its id and the token and cursor keys derived from it.
#[derive(Clone)]
struct RingKey {
    id: String,
    tokens: [u8; 32],
    cursors: [u8; 32],
}

/// Issues and checks session tokens and cursors with the `security.session_keys` ring.
#[derive(Clone)]
pub(crate) struct SessionKeys {
    /// Never empty; the first signs.
    ring: Vec<RingKey>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    /// The ring of `keys` (first signs); settings validation guarantees one at least.
    pub(crate) fn new(keys: &[[u8; 32]]) -> Self {
        let derive = |master: &[u8], label: &[u8]| -> [u8; 32] {
            let mut mac = HmacSha256::new_from_slice(master).expect("HMAC takes any key length");
            mac.update(label);
            mac.finalize().into_bytes().into()
        };
        let ring = keys
            .iter()
            .map(|master| RingKey {
                id: hex::encode(&derive(master, b"chatfleet/session-key-id/v2")[..4]),
                tokens: derive(master, b"chatfleet/session-token/v2"),
                cursors: derive(master, b"chatfleet/session-cursor/v2"),
            })
            .collect();
        Self { ring }
    }

    fn signing(&self) -> &RingKey {
        self.ring
            .first()
            .expect("security.session_keys is never empty")
    }

    pub(crate) fn issue(&self, claims: &SessionClaims) -> String {
        let key = self.signing();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signed = format!("{TOKEN_PREFIX}.{}.{body}", key.id);
        let tag = URL_SAFE_NO_PAD.encode(self.mac(&key.tokens, signed.as_bytes()));
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
        let (key_id, body) = signed
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.split_once('.'))
            .ok_or_else(invalid)?;
        let key = self
            .ring
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(invalid)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid())?;
        let mut mac = HmacSha256::new_from_slice(&key.tokens).expect("any key length");
        mac.update(signed.as_bytes());
        mac.verify_slice(&tag).map_err(|_| invalid())?;
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
        let tag = self.cursor_mac(self.signing(), conversation_id, seq);
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
        let made_here = self.ring.iter().any(|key| {
            let expected = self.cursor_mac(key, conversation_id, seq);
            subtle::ConstantTimeEq::ct_eq(expected.as_slice(), tag.as_slice()).into()
        });
        if made_here { Ok(seq) } else { Err(foreign()) }
    }

    fn cursor_mac(
        &self,
        key: &RingKey,
        conversation_id: ConversationId,
        seq: u64,
    ) -> [u8; CURSOR_MAC_BYTES] {
        let full = self.mac(
            &key.cursors,
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
            app_key: None,
            issued_ms: Utc::now().timestamp_millis(),
            expires,
        }
    }

    #[test]
    fn a_token_round_trips_and_any_change_is_refused() {
        let keys = SessionKeys::new(&[[1; 32]]);
        let c = claims(Utc::now().timestamp() + 60);
        let token = keys.issue(&c);
        assert_eq!(keys.verify(&token, Channel::Widget).expect("valid"), c);

        // Another channel, another deployment's key, a flipped byte: all 401.
        let e = keys.verify(&token, Channel::Mobile).expect_err("channel");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        let other = SessionKeys::new(&[[2; 32]]);
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
        let keys = SessionKeys::new(&[[3; 32]]);
        let token = keys.issue(&claims(Utc::now().timestamp() - 1));
        let e = keys.verify(&token, Channel::Widget).expect_err("expired");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn cursors_belong_to_their_conversation() {
        let keys = SessionKeys::new(&[[3; 32]]);
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

    #[test]
    fn a_new_key_first_keeps_old_tokens_and_cursors_valid_until_the_old_key_goes() {
        let (old, new) = ([1; 32], [2; 32]);
        let before = SessionKeys::new(&[old]);
        let c = claims(Utc::now().timestamp() + 60);
        let token = before.issue(&c);
        let cursor = before.cursor(c.conversation_id, 5);

        let rotated = SessionKeys::new(&[new, old]);
        assert_eq!(
            rotated
                .verify(&token, Channel::Widget)
                .expect("old key verifies"),
            c
        );
        assert_eq!(
            rotated
                .position(c.conversation_id, Some(&cursor))
                .expect("old cursor"),
            5
        );
        let fresh = rotated.issue(&c);
        assert_ne!(
            fresh.split('.').nth(1),
            token.split('.').nth(1),
            "the new key signs"
        );
        assert!(
            SessionKeys::new(&[new])
                .verify(&fresh, Channel::Widget)
                .is_ok()
        );

        let retired = SessionKeys::new(&[new]);
        assert!(
            retired.verify(&token, Channel::Widget).is_err(),
            "old key removed"
        );
        assert!(retired.position(c.conversation_id, Some(&cursor)).is_err());
    }
}
