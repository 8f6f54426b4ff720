//! Standard Webhooks signing (<https://www.standardwebhooks.com>): a secret is `whsec_`
//! and the base64 of its key; a signature is `v1,` and the base64 HMAC-SHA256, keyed by
//! the key, of `{webhook-id}.{webhook-timestamp}.{body}`; several (during a rotation)
//! are separated by spaces in one `webhook-signature` header.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const PREFIX: &str = "whsec_";
/// Random bytes in a new secret's key.
const KEY_BYTES: usize = 32;

/// A new secret, as shown to the tenant once.
pub fn new_secret() -> String {
    let mut key = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut key);
    format!("{PREFIX}{}", STANDARD.encode(key))
}

/// The key of a secret (`whsec_` and base64); `None` when it is not one.
pub fn key_of(secret: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret.strip_prefix(PREFIX)?).ok()
}

/// The key of a secret stored as its text (what the key ring seals).
pub fn key_from_utf8(secret: &[u8]) -> Option<Vec<u8>> {
    key_of(std::str::from_utf8(secret).ok()?)
}

/// One signature: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one signature per key, space-separated.
pub fn header(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| sign(k, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the Standard Webhooks reference libraries.
    #[test]
    fn signs_like_the_reference_libraries() {
        let key = key_of("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("a secret");
        let signed = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signed, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_new_secret_has_a_long_key_and_two_keys_sign_twice() {
        let secret = new_secret();
        let key = key_of(&secret).expect("a secret");
        assert!(key.len() >= 24, "{}", key.len());
        let other = key_of(&new_secret()).expect("a secret");
        let both = header(&[key.clone(), other], "msg_1", 1, b"{}");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&key, "msg_1", 1, b"{}"));
        assert_ne!(parts[0], parts[1]);
        assert!(key_of("not-a-secret").is_none());
    }
}
