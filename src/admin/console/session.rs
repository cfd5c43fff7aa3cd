//! Console sessions and CSRF tokens, derived from the admin token so that
//! nothing is stored and any instance with the same token accepts them.
//!
//! A session cookie is `<nonce>.<issued>.<mac>`: a random nonce, the Unix
//! time it was issued, and HMAC-SHA256(admin token, "session", nonce,
//! issued). The admin token itself never leaves the server; changing it
//! ends every session. The CSRF token of a session is HMAC-SHA256(admin
//! token, "csrf", nonce, issued): a form posted from elsewhere cannot know
//! it. Every comparison is constant-time (`subtle`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::secret::Secret;

/// The cookie's name.
pub const COOKIE: &str = "ledgerline_console";
/// How long a session lasts after logging in.
pub const SESSION_TTL_SECS: i64 = 12 * 3600;

/// A valid session, read from its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    nonce: String,
    issued: i64,
}

fn mac(token: &Secret, purpose: &str, nonce: &str, issued: i64) -> Vec<u8> {
    // HMAC takes a key of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(token.expose().as_bytes())
        .expect("HMAC accepts any key length");
    for part in ["ledgerline console", purpose, nonce, &issued.to_string()] {
        m.update(part.as_bytes());
        m.update(&[0]);
    }
    m.finalize().into_bytes().to_vec()
}

impl Session {
    /// A new session issued at `now`.
    pub fn issue(now: OffsetDateTime) -> Self {
        Session {
            nonce: uuid::Uuid::new_v4().simple().to_string(),
            issued: now.unix_timestamp(),
        }
    }

    /// The cookie value of this session.
    pub fn cookie_value(&self, token: &Secret) -> String {
        let m = mac(token, "session", &self.nonce, self.issued);
        format!(
            "{}.{}.{}",
            self.nonce,
            self.issued,
            URL_SAFE_NO_PAD.encode(m)
        )
    }

    /// The session of a cookie value, if it was issued with `token` and
    /// has not expired at `now`.
    pub fn from_cookie(value: &str, token: &Secret, now: OffsetDateTime) -> Option<Self> {
        let mut parts = value.splitn(3, '.');
        let (nonce, issued, presented) = (parts.next()?, parts.next()?, parts.next()?);
        let issued: i64 = issued.parse().ok()?;
        let age = now.unix_timestamp() - issued;
        if !(-60..SESSION_TTL_SECS).contains(&age) {
            return None;
        }
        let presented = URL_SAFE_NO_PAD.decode(presented).ok()?;
        let expected = mac(token, "session", nonce, issued);
        bool::from(presented.ct_eq(&expected)).then(|| Session {
            nonce: nonce.to_owned(),
            issued,
        })
    }

    /// The CSRF token of this session (the hidden field of every form).
    pub fn csrf_token(&self, token: &Secret) -> String {
        URL_SAFE_NO_PAD.encode(mac(token, "csrf", &self.nonce, self.issued))
    }

    /// True when `presented` is this session's CSRF token.
    pub fn csrf_matches(&self, token: &Secret, presented: &str) -> bool {
        let expected = self.csrf_token(token);
        presented.as_bytes().ct_eq(expected.as_bytes()).into()
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-22 10:00:00 UTC);

    #[test]
    fn a_session_is_accepted_only_with_its_token_and_before_it_expires() {
        let token = Secret::new("admin-token");
        let s = Session::issue(NOW);
        let value = s.cookie_value(&token);
        assert!(!value.contains("admin-token"));
        assert_eq!(Session::from_cookie(&value, &token, NOW), Some(s.clone()));
        let other = Secret::new("another-token");
        assert_eq!(Session::from_cookie(&value, &other, NOW), None);
        let late = NOW + time::Duration::seconds(SESSION_TTL_SECS);
        assert_eq!(Session::from_cookie(&value, &token, late), None);
        // Tampering with the issue time or the MAC breaks it.
        let (nonce, rest) = value.split_once('.').unwrap();
        let (_, m) = rest.split_once('.').unwrap();
        let later_issue = format!("{nonce}.{}.{m}", NOW.unix_timestamp() + 10);
        assert_eq!(Session::from_cookie(&later_issue, &token, NOW), None);
        assert_eq!(Session::from_cookie("a.b", &token, NOW), None);
        assert_eq!(Session::from_cookie("", &token, NOW), None);
    }

    #[test]
    fn csrf_tokens_are_per_session() {
        let token = Secret::new("admin-token");
        let (a, b) = (Session::issue(NOW), Session::issue(NOW));
        let ta = a.csrf_token(&token);
        assert!(a.csrf_matches(&token, &ta));
        assert!(!b.csrf_matches(&token, &ta));
        assert!(!a.csrf_matches(&token, ""));
        assert!(!a.csrf_matches(&Secret::new("x"), &ta));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = "a=1; ledgerline_console_x=2; ledgerline_console=abc.1.z";
        assert_eq!(cookie(h, COOKIE), Some("abc.1.z"));
        assert_eq!(cookie("x=1", COOKIE), None);
    }
}
