//! Who may post to a source: its `auth` (SPEC 10) and, for `events`
//! sources with a `signing_secret`, a Standard Webhooks signature.
//!
//! Every secret comparison is constant-time: tokens and passwords through
//! [`token_matches`] (SHA-256 of both, compared with `subtle`), HMACs
//! through `hmac`'s own `verify_slice`. What was presented is never logged.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::admin::auth::token_matches;
use crate::secret::Secret;
use crate::source::{Source, SourceAuth};

/// How far a Standard Webhooks `webhook-timestamp` may be from now, in
/// seconds, before the request is refused as a replay (the scheme's own
/// recommendation).
pub const SIGNATURE_TOLERANCE_S: i64 = 5 * 60;

/// Why a request was refused: the header at fault and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub field: String,
    pub message: String,
}

fn refused(field: &str, message: impl Into<String>) -> Refused {
    Refused {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// The credentials of an `Authorization: <scheme> <credentials>` header.
fn authorization<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (s, credentials) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme)
        .then(|| credentials.trim())
        .filter(|c| !c.is_empty())
}

/// The user name and password of an `Authorization: Basic` header.
pub fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let raw = STANDARD.decode(authorization(headers, "basic")?).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The bearer token of a request, if it sent one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    authorization(headers, "bearer")
}

/// Checks a request against the source's `auth`. `oauth2_token_ok` says
/// whether a bearer token is one this process issued for the source.
pub fn check(
    source: &Source,
    headers: &HeaderMap,
    body: &[u8],
    oauth2_token_ok: impl Fn(&str) -> bool,
) -> Result<(), Refused> {
    let auth_header = header::AUTHORIZATION.as_str();
    match &source.config.auth {
        SourceAuth::None => {}
        SourceAuth::Basic { username, password } => {
            let (user, pass) =
                basic(headers).ok_or_else(|| refused(auth_header, "send Basic credentials"))?;
            let expected = Secret::new(format!("{username}:{}", password.expose()));
            if !token_matches(&format!("{user}:{pass}"), &expected) {
                return Err(refused(auth_header, "wrong user name or password"));
            }
        }
        SourceAuth::Bearer { token } => {
            let presented =
                bearer(headers).ok_or_else(|| refused(auth_header, "send a Bearer token"))?;
            if !token_matches(presented, token) {
                return Err(refused(auth_header, "wrong bearer token"));
            }
        }
        SourceAuth::Header { header, value } => {
            let presented = headers
                .get(header.as_str())
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| refused(header, format!("send the {header} header")))?;
            if !token_matches(presented, value) {
                return Err(refused(header, format!("wrong {header}")));
            }
        }
        SourceAuth::Signature { header, secret } => {
            let presented = headers
                .get(header.as_str())
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| refused(header, format!("send the {header} header")))?;
            if !hmac_hex_matches(secret, body, presented) {
                return Err(refused(
                    header,
                    "the signature is not the hex HMAC-SHA256 of the body",
                ));
            }
        }
        SourceAuth::Oauth2 { .. } => {
            let presented = bearer(headers).ok_or_else(|| {
                refused(
                    auth_header,
                    "send a Bearer token from POST /v1/ingest/{source_id}/token",
                )
            })?;
            if !oauth2_token_ok(presented) {
                return Err(refused(auth_header, "unknown or expired token"));
            }
        }
    }
    if let Some(secret) = &source.config.signing_secret {
        check_standard_webhooks(secret, headers, body, time::OffsetDateTime::now_utc())?;
    }
    Ok(())
}

/// True when `presented` is the hex HMAC-SHA256 of `body` under `secret`
/// (either case, optionally prefixed `sha256=`), compared in constant time.
pub fn hmac_hex_matches(secret: &Secret, body: &[u8], presented: &str) -> bool {
    let hex = presented.trim();
    let hex = hex.strip_prefix("sha256=").unwrap_or(hex);
    let Some(sig) = decode_hex(hex) else {
        return false;
    };
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Standard Webhooks: `webhook-id`, `webhook-timestamp` within
/// [`SIGNATURE_TOLERANCE_S`] of `now`, and a `webhook-signature` of
/// `id.timestamp.body` under the source's `whsec_…` key.
fn check_standard_webhooks(
    secret: &Secret,
    headers: &HeaderMap,
    body: &[u8],
    now: time::OffsetDateTime,
) -> Result<(), Refused> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| refused(name, format!("send the {name} header (Standard Webhooks)")))
    };
    let id = get("webhook-id")?;
    let timestamp: i64 = get("webhook-timestamp")?
        .parse()
        .map_err(|_| refused("webhook-timestamp", "must be Unix seconds"))?;
    let signature = get("webhook-signature")?;
    if (now.unix_timestamp() - timestamp).abs() > SIGNATURE_TOLERANCE_S {
        return Err(refused(
            "webhook-timestamp",
            format!("is more than {SIGNATURE_TOLERANCE_S} s from now"),
        ));
    }
    // Validated with the source: the secret decodes.
    let key = crate::signing::decode_secret(secret).map_err(|m| {
        refused(
            "signing_secret",
            format!("the source's secret is unusable: {m}"),
        )
    })?;
    if !crate::signing::verify(&key, id, timestamp, body, signature) {
        return Err(refused(
            "webhook-signature",
            "no signature matches the body under the source's secret",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceConfig;

    fn source(toml_text: &str) -> Source {
        let c: SourceConfig = toml::from_str(toml_text).unwrap();
        c.validate().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn signatures_are_hex_hmac_sha256_of_the_raw_body() {
        let s = source(
            "id = \"g\"\nkind = \"gateway\"\ncurrency = \"USD\"\norder_id_pointer = \"/a\"\n[auth]\ntype = \"signature\"\nsecret = \"key\"",
        );
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog").
        let body = b"The quick brown fox jumps over the lazy dog";
        let good = "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8";
        assert!(check(&s, &headers(&[("x-signature", good)]), body, |_| false).is_ok());
        let upper = good.to_uppercase();
        assert!(check(&s, &headers(&[("x-signature", &upper)]), body, |_| false).is_ok());
        let e = check(&s, &headers(&[("x-signature", good)]), b"changed", |_| {
            false
        })
        .unwrap_err();
        assert_eq!(e.field, "X-Signature");
        assert!(check(&s, &headers(&[]), body, |_| false).is_err());
        assert!(check(&s, &headers(&[("x-signature", "zz")]), body, |_| false).is_err());
    }

    #[test]
    fn basic_bearer_and_header_credentials_must_match() {
        let basic = source(
            "id = \"a\"\nkind = \"events\"\n[auth]\ntype = \"basic\"\nusername = \"u\"\npassword = \"p\"",
        );
        let ok = format!("Basic {}", STANDARD.encode("u:p"));
        let bad = format!("Basic {}", STANDARD.encode("u:q"));
        assert!(check(&basic, &headers(&[("authorization", &ok)]), b"", |_| false).is_ok());
        assert!(check(&basic, &headers(&[("authorization", &bad)]), b"", |_| false).is_err());
        let api_key = source(
            "id = \"a\"\nkind = \"events\"\n[auth]\ntype = \"header\"\nheader = \"authenticationToken\"\nvalue = \"k1\"",
        );
        assert!(
            check(
                &api_key,
                &headers(&[("authenticationtoken", "k1")]),
                b"",
                |_| false
            )
            .is_ok()
        );
        let e = check(
            &api_key,
            &headers(&[("authenticationtoken", "k2")]),
            b"",
            |_| false,
        )
        .unwrap_err();
        assert_eq!(e.field, "authenticationToken");
        let oauth = source(
            "id = \"a\"\nkind = \"events\"\n[auth]\ntype = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"s\"",
        );
        let h = headers(&[("authorization", "Bearer t1")]);
        assert!(check(&oauth, &h, b"", |t| t == "t1").is_ok());
        assert!(check(&oauth, &h, b"", |_| false).is_err());
    }

    #[test]
    fn standard_webhooks_signatures_are_checked_with_their_timestamp() {
        let secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let key = crate::signing::decode_secret(&secret).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let ts = now.unix_timestamp();
        let sig = crate::signing::sign(&key, "msg_1", ts, b"{}");
        let ts_text = ts.to_string();
        let h = headers(&[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &ts_text),
            ("webhook-signature", &sig),
        ]);
        assert!(check_standard_webhooks(&secret, &h, b"{}", now).is_ok());
        let e = check_standard_webhooks(&secret, &h, b"{ }", now).unwrap_err();
        assert_eq!(e.field, "webhook-signature");
        let later = now + time::Duration::seconds(SIGNATURE_TOLERANCE_S + 1);
        let e = check_standard_webhooks(&secret, &h, b"{}", later).unwrap_err();
        assert_eq!(e.field, "webhook-timestamp");
    }
}
