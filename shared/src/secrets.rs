//! Channel credentials at rest: sealed with XChaCha20-Poly1305 under the first key of the
//! encryption key ring (`security.encryption_keys`, or `security.encryption_key` alone),
//! with the owning tenant and channel as associated data, so a ciphertext copied into
//! another tenant's row fails to open instead of leaking. Stored as
//! `nonce (24 bytes) || ciphertext`. Every key of the ring opens (the AEAD tag tells which
//! key sealed), so a new key goes first, `chatfleet secrets reseal` re-seals what older
//! keys sealed ([`SecretBox::reseal`]), and the old keys can then be removed.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::error::{Error, Result};
use crate::ids::{Channel, ClientId};

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
        match self.open_with(client_id, channel, stored)? {
            (0, _) => Ok(None),
            (_, plain) => self.seal(client_id, channel, &plain).map(Some),
        }
    }

    pub fn seal(&self, client_id: ClientId, channel: Channel, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated_data(client_id, channel);
        let sealed = self.ring[0]
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|e| Error::Crypto(e.to_string()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, client_id: ClientId, channel: Channel, stored: &[u8]) -> Result<Vec<u8>> {
        self.open_with(client_id, channel, stored)
            .map(|(_, plain)| plain)
    }

    /// The plaintext and the position in the ring of the key that opened it.
    fn open_with(
        &self,
        client_id: ClientId,
        channel: Channel,
        stored: &[u8],
    ) -> Result<(usize, Vec<u8>)> {
        if stored.len() < NONCE_LEN {
            return Err(Error::Crypto("ciphertext too short".into()));
        }
        let (nonce, sealed) = stored.split_at(NONCE_LEN);
        let aad = associated_data(client_id, channel);
        self.ring
            .iter()
            .enumerate()
            .find_map(|(i, cipher)| {
                let payload = Payload {
                    msg: sealed,
                    aad: &aad,
                };
                cipher
                    .decrypt(XNonce::from_slice(nonce), payload)
                    .ok()
                    .map(|plain| (i, plain))
            })
            .ok_or_else(|| {
                Error::Crypto(
                    "authentication failed (no key of the ring, or another tenant or channel)"
                        .into(),
                )
            })
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

#[cfg(test)]
mod tests {
    use super::*;

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
