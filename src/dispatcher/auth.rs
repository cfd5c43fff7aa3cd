//! How the dispatcher authenticates to a receiver, and keeps secrets out of
//! what it stores.
//!
//! - `basic` and `bearer` are a fixed `Authorization` header.
//! - `oauth2_client_credentials` is a [`TokenCache`]: one token per registry,
//!   fetched from `token_url` (form body `grant_type=client_credentials`,
//!   `client_id`, `client_secret`, `scope`, plus `extra_body`; `headers` and
//!   `params` on the token request, as the subscription reference's
//!   `headers`/`params`/`body` do), read from the reply at `token_field`
//!   (a key, or a JSON pointer when it starts with `/`) with its lifetime at
//!   `expires_field`, sent as `Authorization: <token_type> <token>`. Shared
//!   by every delivery of the registry; concurrent callers wait for one
//!   fetch; refreshed shortly before it expires, and once after a 401.
//! - [`Redactor`] replaces every secret value of a registry (and the tokens
//!   it fetched) by `***` in text that is about to be stored or logged: a
//!   receiver that echoes its request headers cannot leak them into LEDGER.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::HeaderValue;
use serde_json::Value;
use url::Url;

use super::http::{CappedBody, SendFailure, classify_error, read_capped};
use crate::registry::AuthConfig;
use crate::secret::{REDACTED, Secret};

/// Largest token reply read.
pub const TOKEN_REPLY_MAX_BYTES: usize = 64 * 1024;
/// A token is refreshed this long before it expires, or at 4/5 of its
/// lifetime for short-lived tokens, so no request carries a token that
/// expires in flight.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Tokens remembered for redaction (the current one and a few before it).
const REDACT_TOKENS_KEPT: usize = 4;
/// Secrets shorter than this are not redacted from free text: replacing
/// every `a` of a response would destroy it and protect nothing.
pub const REDACT_MIN_LEN: usize = 4;

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint refused the credentials (a 4xx): permanent until
    /// someone fixes the registry.
    #[error("the token endpoint refused the credentials: HTTP {status}{detail}")]
    Refused { status: u16, detail: String },
    /// The reply had no usable token: permanent.
    #[error("the token endpoint's reply is unusable: {0}")]
    BadReply(String),
    /// Unreachable, timed out, 5xx, 429: worth retrying.
    #[error("the token endpoint is unavailable: {0}")]
    Unavailable(String),
}

/// The `Authorization` header value for `basic`/`bearer`, if any.
pub fn static_authorization(auth: &AuthConfig) -> Option<Secret> {
    match auth {
        AuthConfig::Basic { username, password } => {
            let raw = format!("{username}:{}", password.expose());
            Some(Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )))
        }
        AuthConfig::Bearer { token } => Some(Secret::new(format!("Bearer {}", token.expose()))),
        AuthConfig::None | AuthConfig::Oauth2ClientCredentials { .. } => None,
    }
}

/// A token and when to stop using it.
struct Cached {
    id: u64,
    header: HeaderValue,
    /// `None`: the reply gave no lifetime; used until a 401.
    refresh_at: Option<Instant>,
}

/// The OAuth2 client-credentials token of one registry.
pub struct TokenCache {
    token_url: Url,
    form: Vec<(String, Secret)>,
    headers: Vec<(String, Secret)>,
    token_field: String,
    expires_field: String,
    token_type: String,
    current: tokio::sync::Mutex<Option<Cached>>,
    next_id: AtomicU64,
    fetches: AtomicU64,
    recent: Mutex<VecDeque<String>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("token_url", &self.token_url.as_str())
            .field("fetches", &self.fetches())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// The cache for an `oauth2_client_credentials` registry, else `None`.
    pub fn for_auth(auth: &AuthConfig) -> Result<Option<Self>, String> {
        let AuthConfig::Oauth2ClientCredentials {
            token_url,
            client_id,
            client_secret,
            scope,
            token_field,
            expires_field,
            token_type,
            extra_body,
            headers,
            params,
        } = auth
        else {
            return Ok(None);
        };
        let mut url =
            Url::parse(token_url).map_err(|e| format!("auth.token_url is not a URL: {e}"))?;
        if !params.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
        }
        let mut form: Vec<(String, Secret)> = vec![
            ("grant_type".into(), Secret::new("client_credentials")),
            ("client_id".into(), Secret::new(client_id.clone())),
            ("client_secret".into(), client_secret.clone()),
        ];
        if let Some(scope) = scope {
            form.push(("scope".into(), Secret::new(scope.clone())));
        }
        // Extra fields may override the defaults (a custom grant type).
        for (k, v) in extra_body {
            form.retain(|(name, _)| name != k);
            form.push((k.clone(), v.clone()));
        }
        for (name, value) in headers {
            HeaderValue::from_str(value.expose())
                .map_err(|_| format!("auth.headers.{name}: not a valid header value"))?;
        }
        Ok(Some(Self {
            token_url: url,
            form,
            headers: headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            token_field: token_field.clone(),
            expires_field: expires_field.clone(),
            token_type: token_type.clone(),
            current: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
            fetches: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
        }))
    }

    /// How many tokens were fetched so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The token endpoint (its host is checked like a webhook's).
    pub fn token_url(&self) -> &Url {
        &self.token_url
    }

    /// The `Authorization` value to send and the token's id (for
    /// [`TokenCache::invalidate`]). Fetches when there is no valid token;
    /// concurrent callers wait for that one fetch.
    pub async fn authorization(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(HeaderValue, u64), TokenError> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref()
            && c.refresh_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok((c.header.clone(), c.id));
        }
        let fresh = self.fetch(client, timeout).await?;
        let out = (fresh.header.clone(), fresh.id);
        *current = Some(fresh);
        Ok(out)
    }

    /// Forgets the token `id` after a 401, unless another caller already
    /// replaced it: a burst of 401s causes one refresh, not one each.
    pub async fn invalidate(&self, id: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| c.id == id) {
            *current = None;
        }
    }

    async fn fetch(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> Result<Cached, TokenError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let form: Vec<(&str, &str)> = self
            .form
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        let mut req = client
            .post(self.token_url.clone())
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form);
        for (name, value) in &self.headers {
            // Checked in `for_auth`.
            if let Ok(mut v) = HeaderValue::from_str(value.expose()) {
                v.set_sensitive(true);
                req = req.header(name.as_str(), v);
            }
        }
        let started = Instant::now();
        let resp = req.send().await.map_err(|e| match classify_error(e) {
            SendFailure::Refused(m) => TokenError::BadReply(m),
            SendFailure::Timeout(m) | SendFailure::Transport(m) => TokenError::Unavailable(m),
        })?;
        let status = resp.status().as_u16();
        let body = match read_capped(resp, TOKEN_REPLY_MAX_BYTES).await {
            Ok(CappedBody::Complete(b)) => b,
            Ok(CappedBody::TooLarge(_)) => {
                return Err(TokenError::BadReply(format!(
                    "over {TOKEN_REPLY_MAX_BYTES} bytes"
                )));
            }
            Err(e) => return Err(TokenError::Unavailable(super::http::describe(&e))),
        };
        if status == 429 || status == 408 || status >= 500 {
            return Err(TokenError::Unavailable(format!("HTTP {status}")));
        }
        if !(200..300).contains(&status) {
            // The error body of a token endpoint is RFC 6749 JSON
            // ({"error": "invalid_client"}); keep only that field.
            let detail = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            return Err(TokenError::Refused { status, detail });
        }
        let reply: Value =
            serde_json::from_slice(&body).map_err(|_| TokenError::BadReply("not JSON".into()))?;
        let token = lookup(&reply, &self.token_field)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                TokenError::BadReply(format!("no string at token_field {:?}", self.token_field))
            })?
            .to_owned();
        let lifetime = lookup(&reply, &self.expires_field).and_then(|v| match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        });
        let refresh_at = lifetime.filter(|s| s.is_finite() && *s >= 0.0).map(|secs| {
            let life = Duration::from_secs_f64(secs.min(1e9));
            let margin = TOKEN_REFRESH_MARGIN.min(life / 5);
            started + life.saturating_sub(margin)
        });
        let mut header = HeaderValue::from_str(&format!("{} {token}", self.token_type))
            .map_err(|_| TokenError::BadReply("the token is not a valid header value".into()))?;
        header.set_sensitive(true);
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.push_front(token);
            recent.truncate(REDACT_TOKENS_KEPT);
        }
        Ok(Cached {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            header,
            refresh_at,
        })
    }

    /// The tokens fetched recently, for redaction.
    pub fn recent_tokens(&self) -> Vec<String> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// `field` of `reply`: a JSON pointer when it starts with `/`, else a key.
fn lookup<'a>(reply: &'a Value, field: &str) -> Option<&'a Value> {
    if field.starts_with('/') {
        reply.pointer(field)
    } else {
        reply.get(field)
    }
}

/// Replaces known secret values in text by `***`.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// Every secret of a registry: signing secrets (and their key part),
    /// custom header and query values, basic/bearer credentials (and the header they
    /// make), client secret, token request extras.
    pub fn for_registry(r: &crate::registry::RegistryConfig) -> Self {
        let mut s: Vec<String> = Vec::new();
        for secret in [&r.signing_secret, &r.signing_secret_previous]
            .into_iter()
            .flatten()
        {
            s.push(secret.expose().to_owned());
            if let Some(key) = secret.expose().strip_prefix(crate::signing::SECRET_PREFIX) {
                s.push(key.to_owned());
            }
        }
        s.extend(r.headers.values().map(|v| v.expose().to_owned()));
        s.extend(r.query.values().map(|v| v.expose().to_owned()));
        if let Some(h) = static_authorization(&r.auth) {
            s.push(h.expose().to_owned());
            if let Some((_, cred)) = h.expose().split_once(' ') {
                s.push(cred.to_owned());
            }
        }
        match &r.auth {
            AuthConfig::Basic { password, .. } => s.push(password.expose().to_owned()),
            AuthConfig::Bearer { token } => s.push(token.expose().to_owned()),
            AuthConfig::Oauth2ClientCredentials {
                client_secret,
                extra_body,
                headers,
                ..
            } => {
                s.push(client_secret.expose().to_owned());
                s.extend(extra_body.values().map(|v| v.expose().to_owned()));
                s.extend(headers.values().map(|v| v.expose().to_owned()));
            }
            AuthConfig::None => {}
        }
        Self::new(s)
    }

    pub fn new(secrets: Vec<String>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= REDACT_MIN_LEN)
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    /// `text` with every known secret (and every `extra` one) replaced.
    pub fn redact(&self, text: &str, extra: &[String]) -> String {
        let mut out = text.to_owned();
        for s in self.secrets.iter().chain(extra) {
            if s.len() >= REDACT_MIN_LEN && out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_of_a_registry_is_redacted_from_text() {
        let r = crate::registry::config_from_toml(
            r#"
            id = "r"
            url = "https://x.example"
            signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            headers = { authenticationToken = "api-key-123" }
            [auth]
            type = "basic"
            username = "shop"
            password = "hunter22"
            "#,
        );
        let red = Redactor::for_registry(&r);
        let echoed = "auth=Basic c2hvcDpodW50ZXIyMg== key=api-key-123 pw=hunter22 \
                      sec=MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw tok=abcd-token";
        let out = red.redact(echoed, &["abcd-token".to_owned()]);
        for leaked in [
            "c2hvcDpodW50ZXIyMg",
            "api-key-123",
            "hunter22",
            "MfKQ9r8",
            "abcd-token",
        ] {
            assert!(!out.contains(leaked), "{leaked} in {out}");
        }
        assert!(out.contains("shop") || out.contains("***"));
    }

    #[test]
    fn token_fields_are_keys_or_pointers() {
        let v: Value = serde_json::json!({"auth_token": "a", "data": {"token": "b"}});
        assert_eq!(lookup(&v, "auth_token"), Some(&Value::from("a")));
        assert_eq!(lookup(&v, "/data/token"), Some(&Value::from("b")));
        assert_eq!(lookup(&v, "missing"), None);
    }
}
