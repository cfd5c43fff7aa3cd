//! Standard Webhooks signatures.
//!
//! `webhook-signature: v1,<base64 HMAC-SHA256("<id>.<timestamp>.<body>")>`,
//! keyed by the base64 part of a `whsec_…` secret. During a secret rotation
//! several signatures are sent, space-separated; a verifier accepts any.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest key accepted, in bytes: below this HMAC-SHA256 is weak.
pub const SECRET_MIN_BYTES: usize = 16;
/// Longest key accepted, in bytes.
pub const SECRET_MAX_BYTES: usize = 128;

/// Decodes a `whsec_<base64>` secret into its key bytes.
pub fn decode_secret(secret: &Secret) -> Result<Vec<u8>, String> {
    let s = secret.expose();
    let b64 = s
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("must start with {SECRET_PREFIX:?} followed by base64"))?;
    let key = STANDARD
        .decode(b64)
        .map_err(|_| format!("the part after {SECRET_PREFIX:?} is not valid base64"))?;
    if !(SECRET_MIN_BYTES..=SECRET_MAX_BYTES).contains(&key.len()) {
        return Err(format!(
            "the key must be {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} bytes, not {}",
            key.len()
        ));
    }
    Ok(key)
}

/// `v1,<base64 signature>` of `id.timestamp.body` under `key`.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Checks a `webhook-signature` header value (space-separated `v1,…`
/// signatures) against `key`, in constant time per signature.
pub fn verify(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    use subtle::ConstantTimeEq;
    let want = sign(key, msg_id, timestamp, body);
    header
        .split_whitespace()
        .any(|sig| sig.as_bytes().ct_eq(want.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        // The vector published with the Standard Webhooks specification.
        let key = decode_secret(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
            &format!("v1,bogus {sig}")
        ));
        assert!(!verify(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265331,
            br#"{"test": 2432232314}"#,
            &sig
        ));
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert!(decode_secret(&Secret::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).is_err());
        assert!(decode_secret(&Secret::new("whsec_!!!")).is_err());
        assert!(decode_secret(&Secret::new("whsec_YWJj")).is_err());
    }
}
