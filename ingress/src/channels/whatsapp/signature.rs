//! `X-Hub-Signature-256: sha256=<hex>`: HMAC-SHA256 of the raw request bytes with the
//! app secret, compared in constant time, checked before anything is parsed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Whether `header` is a valid signature of `body` under `secret`.
pub(super) fn valid(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    if secret.is_empty() {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected).is_ok()
}

/// The header value for `body` (tests and the bench sign with it).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_over_the_raw_bytes() {
        let body = br#"{"object":"whatsapp_business_account", "entry":[]}"#;
        let good = sign("s3cret", body);
        assert!(valid("s3cret", body, Some(&good)));
        assert!(!valid("other", body, Some(&good)));
        assert!(!valid("s3cret", body, None));
        assert!(!valid("s3cret", body, Some("sha256=zz")));
        assert!(!valid(
            "s3cret",
            body,
            Some(&good.replace("sha256=", "sha1="))
        ));
        // The same JSON re-serialised (spacing changed) is a different body.
        let reserialised = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        assert!(!valid("s3cret", reserialised, Some(&good)));
        assert!(
            !valid("", body, Some(&sign("", body))),
            "an unset secret accepts nothing"
        );
    }
}
