//! Channel credentials at rest: sealed with XChaCha20-Poly1305 under
//! `security.encryption_key`, with the owning tenant and channel as associated data, so a
//! ciphertext copied into another tenant's row fails to open instead of leaking.
//! Stored as `nonce (24 bytes) || ciphertext`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::error::{Error, Result};
use crate::ids::{Channel, ClientId};

const NONCE_LEN: usize = 24;

/// Seals and opens credentials.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox([redacted])")
    }
}

impl SecretBox {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    pub fn seal(&self, client_id: ClientId, channel: Channel, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated_data(client_id, channel);
        let sealed = self
            .cipher
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
        if stored.len() < NONCE_LEN {
            return Err(Error::Crypto("ciphertext too short".into()));
        }
        let (nonce, sealed) = stored.split_at(NONCE_LEN);
        let aad = associated_data(client_id, channel);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                Error::Crypto("authentication failed (wrong key, tenant or channel)".into())
            })
    }
}

fn associated_data(client_id: ClientId, channel: Channel) -> Vec<u8> {
    format!("chatfleet/credentials/{client_id}/{channel}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_credentials_open_only_for_their_tenant_and_channel() {
        let sb = SecretBox::new([7; 32]);
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
            SecretBox::new([8; 32])
                .open(ClientId::new(1), Channel::Whatsapp, &sealed)
                .is_err()
        );
    }
}
