//! `oauth2` sources: `POST /v1/ingest/{source_id}/token`, an OAuth 2.0
//! client-credentials endpoint (RFC 6749 §4.4) that the marketplace calls
//! before posting, then `Authorization: Bearer <token>` on its webhooks.
//!
//! Credentials come as HTTP Basic, a form body or a JSON body
//! (`client_id`, `client_secret`, `grant_type` = `client_credentials`).
//! The reply names the token and its lifetime as the source's
//! `token_field` and `expires_field` say (the marketplace's `tokenKey` and
//! `expiresKey`), with `token_type` `Bearer`.
//!
//! Tokens are held in memory, by their SHA-256 only, with their expiry:
//! a token is a short-lived credential the client renews on its own
//! schedule (at `expires_in`, or when answered 401), so losing them in a
//! restart costs one token request, and keeping them out of NATS keeps
//! credentials out of a store that every instance and operator can read.
//! Bounded: at most [`TOKENS_PER_SOURCE_MAX`] live tokens per source (the
//! oldest goes first).
//!
//! A token is bound to the credentials it was issued for ([`token_key`]):
//! once a source's `client_id` or `client_secret` changes (the admin API or
//! the CLI, served at once), or the source is deleted and made again, the
//! tokens minted under the old ones are refused.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{InboundState, Outcome, count};
use crate::admin::ApiError;
use crate::admin::auth::token_matches;
use crate::source::{Source, SourceAuth};

/// Live tokens kept per source: a client asking for more than this many
/// within a token's lifetime is misbehaving; its oldest tokens expire early.
pub const TOKENS_PER_SOURCE_MAX: usize = 1_000;

/// A token's SHA-256 and when it expires.
type Issued = ([u8; 32], Instant);

/// Tokens issued by this process: per source, oldest first.
#[derive(Debug, Default)]
pub struct TokenStore {
    by_source: Mutex<HashMap<String, VecDeque<Issued>>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What the tokens of `source` are kept under: its id and a digest of its
/// client credentials (none for a source without oauth2: it has no
/// tokens to match).
pub fn token_key(source: &Source) -> String {
    let SourceAuth::Oauth2 {
        client_id,
        client_secret,
        ..
    } = &source.config.auth
    else {
        return source.id().to_owned();
    };
    let mut h = Sha256::new();
    h.update(client_id.as_bytes());
    h.update([0]);
    h.update(client_secret.expose().as_bytes());
    let d: [u8; 32] = h.finalize().into();
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}/{hex}", source.id())
}

impl TokenStore {
    /// Records `token` for `source_id` until `ttl` from now.
    pub fn insert(&self, source_id: &str, token: &str, ttl: Duration) {
        let now = Instant::now();
        let mut map = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        // Keys of old credentials go once their tokens have expired.
        map.retain(|_, list| list.iter().any(|(_, until)| *until > now));
        let list = map.entry(source_id.to_owned()).or_default();
        list.retain(|(_, until)| *until > now);
        while list.len() >= TOKENS_PER_SOURCE_MAX {
            list.pop_front();
        }
        list.push_back((digest(token), now + ttl));
    }

    /// True when `token` was issued for `source_id` and has not expired.
    /// The digests are compared in constant time.
    pub fn valid(&self, source_id: &str, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        let d = digest(token);
        let now = Instant::now();
        let map = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        map.get(source_id).is_some_and(|list| {
            list.iter()
                .filter(|(_, until)| *until > now)
                .fold(false, |found, (t, _)| found | bool::from(t.ct_eq(&d)))
        })
    }
}

/// The client credentials of a token request: Basic auth, else the form
/// or JSON body's `client_id` / `client_secret`; and its `grant_type`.
fn credentials(headers: &HeaderMap, body: &[u8]) -> Result<(String, String), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let fields: Map<String, Value> = if is_json {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not a JSON object: {e}")))?
    } else {
        url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect()
    };
    let field = |name: &str| fields.get(name).and_then(Value::as_str).map(str::to_owned);
    match field("grant_type").as_deref() {
        Some("client_credentials") => {}
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "grant_type must be client_credentials",
            )
            .with_field("grant_type"));
        }
    }
    let basic = super::auth::basic(headers);
    if let Some((id, secret)) = basic {
        return Ok((id, secret));
    }
    match (field("client_id"), field("client_secret")) {
        (Some(id), Some(secret)) => Ok((id, secret)),
        (None, _) => Err(unauthorized(
            "client_id",
            "send client_id and client_secret",
        )),
        (_, None) => Err(unauthorized(
            "client_secret",
            "send client_id and client_secret",
        )),
    }
}

fn unauthorized(field: &str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message).with_field(field)
}

/// `POST /v1/ingest/{source_id}/token`.
pub(super) async fn issue(
    State(st): State<InboundState>,
    Path(source_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(source) = st.source(&source_id) else {
        count(super::UNKNOWN_SOURCE, Outcome::NotFound);
        return ApiError::not_found("no such source")
            .with_field("source_id")
            .into_response();
    };
    let SourceAuth::Oauth2 {
        client_id,
        client_secret,
        token_field,
        expires_field,
        token_ttl_s,
    } = &source.config.auth
    else {
        count(source.id(), Outcome::NotFound);
        return ApiError::not_found("this source does not use oauth2 tokens")
            .with_field("source_id")
            .into_response();
    };
    if !st.admit(&source) {
        count(source.id(), Outcome::RateLimited);
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "over the source's rate limit",
        )
        .into_response();
    }
    let (id, secret) = match credentials(&headers, &body) {
        Ok(c) => c,
        Err(e) => {
            count(source.id(), Outcome::Unauthorized);
            return e.into_response();
        }
    };
    // Both compared, in constant time, whichever is wrong.
    let id_ok = token_matches(&id, &crate::secret::Secret::new(client_id.clone()));
    let secret_ok = token_matches(&secret, client_secret);
    if !(id_ok & secret_ok) {
        count(source.id(), Outcome::Unauthorized);
        return unauthorized("client_secret", "wrong client_id or client_secret").into_response();
    }
    let token: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    st.inner.tokens.insert(
        &token_key(&source),
        &token,
        Duration::from_secs(*token_ttl_s),
    );
    count(source.id(), Outcome::Token);
    let mut reply = Map::new();
    reply.insert(token_field.clone(), Value::String(token));
    reply.insert(expires_field.clone(), Value::from(*token_ttl_s));
    reply.insert("token_type".to_owned(), Value::String("Bearer".to_owned()));
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(Value::Object(reply)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn tokens_are_valid_for_their_source_until_they_expire() {
        let store = TokenStore::default();
        store.insert("a", "t1", Duration::from_secs(60));
        store.insert("a", "t0", Duration::ZERO);
        assert!(store.valid("a", "t1"));
        assert!(!store.valid("b", "t1"));
        assert!(!store.valid("a", "t2"));
        assert!(!store.valid("a", "t0"), "expired");
    }

    #[test]
    fn at_most_the_bound_of_tokens_is_kept_per_source() {
        let store = TokenStore::default();
        for i in 0..=TOKENS_PER_SOURCE_MAX {
            store.insert("a", &format!("t{i}"), Duration::from_secs(60));
        }
        assert!(!store.valid("a", "t0"), "the oldest went first");
        assert!(store.valid("a", &format!("t{TOKENS_PER_SOURCE_MAX}")));
    }

    #[test]
    fn credentials_come_from_basic_auth_a_form_or_json() {
        let mut h = HeaderMap::new();
        let form = b"grant_type=client_credentials&client_id=c&client_secret=s%21";
        assert_eq!(credentials(&h, form).unwrap(), ("c".into(), "s!".into()));
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        let json = br#"{"grant_type":"client_credentials","client_id":"c","client_secret":"s"}"#;
        assert_eq!(credentials(&h, json).unwrap(), ("c".into(), "s".into()));
        let e = credentials(&h, br#"{"grant_type":"password"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("grant_type"));
        let mut basic = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode("c2:s2"));
        basic.insert(header::AUTHORIZATION, value.parse().unwrap());
        assert_eq!(
            credentials(&basic, b"grant_type=client_credentials").unwrap(),
            ("c2".into(), "s2".into())
        );
    }
}
