//! Channel and tool credentials at rest: sealed with XChaCha20-Poly1305 under the first
//! key of the encryption key ring (`security.encryption_keys`, or
//! `security.encryption_key` alone), with the owning tenant and channel (or tool) as
//! associated data, so a ciphertext copied into another tenant's row fails to open
//! instead of leaking. Stored as `nonce (24 bytes) || ciphertext`. Every key of the ring
//! opens (the AEAD tag tells which key sealed), so a new key goes first, `chatfleet secrets reseal` re-seals what older
//! keys sealed ([`SecretBox::reseal`]), and the old keys can then be removed.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::error::{Error, Result};
use crate::ids::{Channel, ClientId, ConversationId};

const NONCE_LEN: usize = 24;

/// Seals and opens credentials.
#[derive(Clone)]
pub struct SecretBox {
    /// Never empty; the first seals.
    ring: Vec<XChaCha20Poly1305>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox([redacted])")
    }
}

impl SecretBox {
    /// The box of a key ring, the sealing key first. Panics on an empty ring (settings
    /// validation refuses one).
    pub fn new(ring: &[[u8; 32]]) -> Self {
        assert!(!ring.is_empty(), "an encryption key ring needs a key");
        Self {
            ring: ring
                .iter()
                .map(|key| XChaCha20Poly1305::new(&(*key).into()))
                .collect(),
        }
    }

    /// `stored` sealed again under the first key, or `None` when the first key sealed it
    /// already; an error when no key of the ring opens it.
    pub fn reseal(
        &self,
        client_id: ClientId,
        channel: Channel,
        stored: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        self.reseal_with(&associated_data(client_id, channel), stored)
    }

    pub fn seal(&self, client_id: ClientId, channel: Channel, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.seal_with(&associated_data(client_id, channel), plaintext)
    }

    pub fn open(&self, client_id: ClientId, channel: Channel, stored: &[u8]) -> Result<Vec<u8>> {
        self.open_with(&associated_data(client_id, channel), stored)
            .map(|(_, plain)| plain)
    }

    /// The `access_token` in a tenant's sealed WhatsApp credentials (the Graph API's
    /// bearer for its number).
    pub fn whatsapp_access_token(
        &self,
        client_id: ClientId,
        stored: &[u8],
    ) -> std::result::Result<String, String> {
        let plain = self
            .open(client_id, Channel::Whatsapp, stored)
            .map_err(|e| e.to_string())?;
        let creds: serde_json::Value = serde_json::from_slice(&plain).map_err(|e| e.to_string())?;
        creds
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| "the WhatsApp account has no access_token".into())
    }

    /// Seals the credential of a tenant's tool (its name is associated data, like the
    /// tenant: a copy under another tool or tenant does not open).
    pub fn seal_tool_auth(&self, client_id: ClientId, tool: &str, plain: &[u8]) -> Result<Vec<u8>> {
        self.seal_with(&tool_associated_data(client_id, tool), plain)
    }

    pub fn open_tool_auth(
        &self,
        client_id: ClientId,
        tool: &str,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        self.open_with(&tool_associated_data(client_id, tool), stored)
            .map(|(_, plain)| plain)
    }

    /// [`Self::reseal`] for a tool's credential.
    pub fn reseal_tool_auth(
        &self,
        client_id: ClientId,
        tool: &str,
        stored: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        self.reseal_with(&tool_associated_data(client_id, tool), stored)
    }

    /// Seals a webhook endpoint's signing secret (the tenant and the endpoint's id are
    /// the associated data).
    pub fn seal_webhook_secret(
        &self,
        client_id: ClientId,
        webhook_id: u64,
        plain: &[u8],
    ) -> Result<Vec<u8>> {
        self.seal_with(&webhook_associated_data(client_id, webhook_id), plain)
    }

    pub fn open_webhook_secret(
        &self,
        client_id: ClientId,
        webhook_id: u64,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        self.open_with(&webhook_associated_data(client_id, webhook_id), stored)
            .map(|(_, plain)| plain)
    }

    /// [`Self::reseal`] for a webhook's signing secret.
    pub fn reseal_webhook_secret(
        &self,
        client_id: ClientId,
        webhook_id: u64,
        stored: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        self.reseal_with(&webhook_associated_data(client_id, webhook_id), stored)
    }

    /// Seals a tenant's own API key for an LLM provider (the tenant and the provider's
    /// name are the associated data).
    pub fn seal_llm_key(&self, client_id: ClientId, provider: &str, key: &str) -> Result<Vec<u8>> {
        self.seal_with(&llm_associated_data(client_id, provider), key.as_bytes())
    }

    pub fn open_llm_key(
        &self,
        client_id: ClientId,
        provider: &str,
        stored: &[u8],
    ) -> Result<String> {
        let plain = self
            .open_with(&llm_associated_data(client_id, provider), stored)
            .map(|(_, plain)| plain)?;
        String::from_utf8(plain).map_err(|e| Error::Crypto(e.to_string()))
    }

    /// [`Self::reseal`] for a tenant's LLM key.
    pub fn reseal_llm_key(
        &self,
        client_id: ClientId,
        provider: &str,
        stored: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        self.reseal_with(&llm_associated_data(client_id, provider), stored)
    }

    /// Seals a conversation's data key (the tenant and the conversation are the
    /// associated data).
    pub fn seal_data_key(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        key: &[u8; 32],
    ) -> Result<Vec<u8>> {
        self.seal_with(&data_key_associated_data(client_id, conversation_id), key)
    }

    pub fn open_data_key(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        stored: &[u8],
    ) -> Result<[u8; 32]> {
        let plain = self
            .open_with(
                &data_key_associated_data(client_id, conversation_id),
                stored,
            )
            .map(|(_, plain)| plain)?;
        plain
            .try_into()
            .map_err(|_| Error::Crypto("a data key is 32 bytes".into()))
    }

    /// [`Self::reseal`] for a conversation's data key.
    pub fn reseal_data_key(
        &self,
        client_id: ClientId,
        conversation_id: ConversationId,
        stored: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        self.reseal_with(
            &data_key_associated_data(client_id, conversation_id),
            stored,
        )
    }

    /// `stored` sealed again under the first key with the same associated data, or
    /// `None` when the first key sealed it already.
    fn reseal_with(&self, aad: &[u8], stored: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.open_with(aad, stored)? {
            (0, _) => Ok(None),
            (_, plain) => self.seal_with(aad, &plain).map(Some),
        }
    }

    fn seal_with(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        seal_under(&self.ring[0], aad, plaintext)
    }

    /// The plaintext and the position in the ring of the key that opened it.
    fn open_with(&self, aad: &[u8], stored: &[u8]) -> Result<(usize, Vec<u8>)> {
        self.ring
            .iter()
            .enumerate()
            .find_map(|(i, cipher)| open_under(cipher, aad, stored).map(|plain| (i, plain)))
            .ok_or_else(|| {
                Error::Crypto(
                    "authentication failed (no key of the ring, or another tenant, channel or tool)"
                        .into(),
                )
            })
    }
}

/// `plaintext` sealed under `cipher` with a fresh random nonce, stored as
/// `nonce (24 bytes) || ciphertext` (the ring's credentials, and the broker's sealed
/// fields under a conversation's data key).
pub(crate) fn seal_under(
    cipher: &XChaCha20Poly1305,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|e| Error::Crypto(e.to_string()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// What [`seal_under`] sealed, when `cipher` opens it with `aad`.
pub(crate) fn open_under(cipher: &XChaCha20Poly1305, aad: &[u8], stored: &[u8]) -> Option<Vec<u8>> {
    let (nonce, sealed) = stored.split_at_checked(NONCE_LEN)?;
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
        .ok()
}

/// A tool endpoint's credential: what [`SecretBox::seal_tool_auth`] seals (as JSON) and
/// the worker opens to call the tool.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ToolCredential {
    Bearer { token: String },
    Header { name: String, value: String },
    Basic { username: String, password: String },
}

impl std::fmt::Debug for ToolCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ToolCredential([redacted])")
    }
}

impl ToolCredential {
    /// Seals the credential for `tool` of `client_id`.
    pub fn seal(&self, secrets: &SecretBox, client_id: ClientId, tool: &str) -> Result<Vec<u8>> {
        let plain = serde_json::to_vec(self).map_err(|e| Error::Internal(e.to_string()))?;
        secrets.seal_tool_auth(client_id, tool, &plain)
    }

    /// Opens what [`Self::seal`] sealed.
    pub fn open(
        secrets: &SecretBox,
        client_id: ClientId,
        tool: &str,
        sealed: &[u8],
    ) -> Result<Self> {
        let plain = secrets.open_tool_auth(client_id, tool, sealed)?;
        serde_json::from_slice(&plain).map_err(|e| Error::Crypto(e.to_string()))
    }
}

/// A fresh bearer secret (256 random bits, base64url) and its SHA-256, which is what is
/// stored: device secrets, operators' admin tokens.
pub fn new_bearer_secret() -> (String, [u8; 32]) {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = bearer_hash(&secret);
    (secret, hash)
}

/// The stored form of a bearer secret.
pub fn bearer_hash(secret: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

/// A widget visitor's conversation key: the visitor id's SHA-256, hex (a bearer secret is
/// not stored as given; migration 20261205000001 hashed the earlier ones the same way).
pub fn visitor_key(visitor_id: &str) -> String {
    hex::encode(bearer_hash(visitor_id))
}

fn associated_data(client_id: ClientId, channel: Channel) -> Vec<u8> {
    format!("chatfleet/credentials/{client_id}/{channel}").into_bytes()
}

fn tool_associated_data(client_id: ClientId, tool: &str) -> Vec<u8> {
    format!("chatfleet/tool-auth/{client_id}/{tool}").into_bytes()
}

fn webhook_associated_data(client_id: ClientId, webhook_id: u64) -> Vec<u8> {
    format!("chatfleet/webhook-secret/{client_id}/{webhook_id}").into_bytes()
}

fn data_key_associated_data(client_id: ClientId, conversation_id: ConversationId) -> Vec<u8> {
    format!("chatfleet/data-key/{client_id}/{conversation_id}").into_bytes()
}

fn llm_associated_data(client_id: ClientId, provider: &str) -> Vec<u8> {
    format!("chatfleet/llm-key/{client_id}/{provider}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_llm_key_opens_only_for_its_tenant_and_provider() {
        let secrets = SecretBox::new(&[[3u8; 32]]);
        let a = ClientId::new(1);
        let b = ClientId::new(2);
        let sealed = secrets
            .seal_llm_key(a, "openai", "sk-tenant-a")
            .expect("seal");
        assert_eq!(
            secrets.open_llm_key(a, "openai", &sealed).expect("opens"),
            "sk-tenant-a"
        );
        assert!(secrets.open_llm_key(b, "openai", &sealed).is_err());
        assert!(secrets.open_llm_key(a, "groq", &sealed).is_err());
    }

    #[test]
    fn sealed_credentials_open_only_for_their_tenant_and_channel() {
        let sb = SecretBox::new(&[[7; 32]]);
        let sealed = sb
            .seal(ClientId::new(1), Channel::Whatsapp, b"EAAG-token")
            .expect("seal");
        assert!(!sealed.windows(10).any(|w| w == b"EAAG-token"));
        assert_eq!(
            sb.open(ClientId::new(1), Channel::Whatsapp, &sealed)
                .expect("open"),
            b"EAAG-token"
        );
        assert!(
            sb.open(ClientId::new(2), Channel::Whatsapp, &sealed)
                .is_err()
        );
        assert!(sb.open(ClientId::new(1), Channel::Widget, &sealed).is_err());
        assert!(
            SecretBox::new(&[[8; 32]])
                .open(ClientId::new(1), Channel::Whatsapp, &sealed)
                .is_err()
        );
    }

    #[test]
    fn a_ring_opens_with_every_key_and_reseals_under_the_first() {
        let (old, new) = ([1; 32], [2; 32]);
        let (client, channel) = (ClientId::new(3), Channel::Mobile);
        let sealed = SecretBox::new(&[old])
            .seal(client, channel, b"fcm")
            .expect("seal");
        let ring = SecretBox::new(&[new, old]);
        assert_eq!(
            ring.open(client, channel, &sealed).expect("old key opens"),
            b"fcm"
        );
        let resealed = ring
            .reseal(client, channel, &sealed)
            .expect("reseal")
            .expect("sealed by an older key");
        assert!(
            ring.reseal(client, channel, &resealed)
                .expect("again")
                .is_none()
        );
        let only_new = SecretBox::new(&[new]);
        assert_eq!(
            only_new.open(client, channel, &resealed).expect("opens"),
            b"fcm"
        );
        assert!(only_new.open(client, channel, &sealed).is_err());
        assert!(ring.reseal(ClientId::new(4), channel, &sealed).is_err());
    }
}
