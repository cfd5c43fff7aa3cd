//! One delivery attempt: the request of SPEC 4 (body, headers, auth,
//! signature), sent once, and its result classified into an [`Outcome`].
//!
//! [`Target`] is a registry made ready to send to: its URL with the custom
//! query parameters, its fixed headers, its token cache, signing keys, rate
//! limiter, circuit breaker and redactor. [`Target::attempt`] never fails:
//! every way an attempt can end is an outcome, and the text it reports
//! (error, response excerpt, the receiver's message) has been redacted.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use time::OffsetDateTime;
use url::Url;

use super::auth::{Redactor, TokenCache, TokenError, static_authorization};
use super::breaker::{Breaker, Health};
use super::http::{
    CappedBody, RESPONSE_MAX_BYTES, SendFailure, check_literal_target, classify_error, describe,
    read_capped,
};
use super::schedule::parse_retry_after;
use crate::lease::Fence;
use crate::posting::Posting;
use crate::records::RESPONSE_EXCERPT_MAX_BYTES;
use crate::registry::{AcceptRule, Registry, TargetPolicy};
use crate::secret::Secret;

/// Header: the posting's idempotency key (SPEC 4).
pub const H_IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Header: the event type that produced the posting.
pub const H_EVENT_TYPE: &str = "x-ledger-event-type";
/// Standard Webhooks headers.
pub const H_WEBHOOK_ID: &str = "webhook-id";
pub const H_WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub const H_WEBHOOK_SIGNATURE: &str = "webhook-signature";
/// Longest receiver message kept (from a refused or 4xx reply).
pub const RECEIVER_MESSAGE_MAX_CHARS: usize = 500;
/// Slack on top of a registry's timeout for the whole attempt (token fetch
/// plus request), so a stuck token endpoint cannot hold a worker forever.
const ATTEMPT_SLACK: Duration = Duration::from_secs(1);

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Accepted: the reply becomes the registry_data of the next posting.
    Delivered { registry_data: Value },
    /// Worth another attempt (connection error, timeout, 408, 429, 5xx,
    /// oversized reply), after `retry_after` if the receiver said so.
    Retry { retry_after: Option<Duration> },
    /// Retrying cannot help (another 4xx, a refused reply, a refused
    /// target): dead-letter now.
    DeadLetter { receiver_message: Option<String> },
}

/// An attempt's outcome and what to record about it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptReport {
    /// What the dispatcher does next.
    pub outcome: Outcome,
    /// The reply's status (`None`: no reply).
    pub http_status: Option<u16>,
    /// Why it failed, redacted.
    pub error: Option<String>,
    /// The start of the reply, redacted.
    pub response_excerpt: Option<String>,
    /// How long the attempt took.
    pub duration: Duration,
    /// For the circuit breaker.
    pub health: Health,
}

/// Why a registry cannot be sent to at all (a configuration the validator
/// let through but HTTP refuses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry {registry}: {message}")]
pub struct TargetError {
    pub registry: String,
    pub message: String,
}

/// The Standard Webhooks keys of a registry.
#[derive(Clone, Default)]
struct Signing {
    current: Option<Vec<u8>>,
    /// The previous key and the end of its rotation window.
    previous: Option<(Vec<u8>, OffsetDateTime)>,
}

/// A registry, ready to send to.
pub struct Target {
    pub registry: Registry,
    url: Url,
    headers: HeaderMap,
    oauth: Option<TokenCache>,
    signing: Signing,
    pub limiter: DefaultDirectRateLimiter,
    pub breaker: Breaker,
    redactor: Redactor,
    timeout: Duration,
    policy: Arc<TargetPolicy>,
    /// Checked before every attempt and write to this registry: the
    /// instance's lease, or (shares) the registry's own.
    pub fence: Fence,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("registry", &self.registry.id())
            .field("url", &self.registry.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Target {
    pub fn new(
        registry: &Registry,
        policy: Arc<TargetPolicy>,
        breaker: Breaker,
        fence: Fence,
    ) -> Result<Self, TargetError> {
        let cfg = &registry.config;
        let err = |message: String| TargetError {
            registry: cfg.id.clone(),
            message,
        };
        let mut url = registry.url.clone();
        if !cfg.query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in &cfg.query {
                q.append_pair(k, v.expose());
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &cfg.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| err(format!("headers.{name}: not a valid header name")))?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| err(format!("headers.{name}: not a valid header value")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if let Some(auth) = static_authorization(&cfg.auth) {
            let mut v = HeaderValue::from_str(auth.expose())
                .map_err(|_| err("auth: the credentials are not a valid header value".into()))?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let oauth = TokenCache::for_auth(&cfg.auth).map_err(err)?;
        let key = |s: &Secret, field: &str| {
            crate::signing::decode_secret(s).map_err(|m| err(format!("{field}: {m}")))
        };
        let mut signing = Signing::default();
        if let Some(s) = &cfg.signing_secret {
            signing.current = Some(key(s, "signing_secret")?);
        }
        if let (Some(s), Some(until)) = (
            &cfg.signing_secret_previous,
            &cfg.signing_secret_previous_until,
        ) {
            let until =
                OffsetDateTime::parse(until, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| err(format!("signing_secret_previous_until: {e}")))?;
            signing.previous = Some((key(s, "signing_secret_previous")?, until));
        }
        // `rate_limit_per_s` is validated to be in 1..=10,000.
        let per_second = NonZeroU32::new(cfg.rate_limit_per_s).unwrap_or(NonZeroU32::MIN);
        Ok(Self {
            registry: registry.clone(),
            url,
            headers,
            oauth,
            signing,
            limiter: RateLimiter::direct(Quota::per_second(per_second)),
            breaker,
            redactor: Redactor::for_registry(cfg),
            timeout: Duration::from_millis(cfg.timeout_ms),
            policy,
            fence,
        })
    }

    pub fn id(&self) -> &str {
        self.registry.id()
    }

    /// Tokens fetched so far (OAuth2 registries).
    pub fn token_fetches(&self) -> u64 {
        self.oauth.as_ref().map_or(0, TokenCache::fetches)
    }

    /// `text` with every secret of this registry replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let tokens = self
            .oauth
            .as_ref()
            .map(TokenCache::recent_tokens)
            .unwrap_or_default();
        self.redactor.redact(text, &tokens)
    }

    /// The `webhook-timestamp` and `webhook-signature` values for `body`, or
    /// `None` without a signing secret. During a rotation window both keys
    /// sign; receivers accept either.
    pub fn signature(
        &self,
        msg_id: &str,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Option<(String, String)> {
        let current = self.signing.current.as_ref()?;
        let ts = now.unix_timestamp();
        let mut sigs = vec![crate::signing::sign(current, msg_id, ts, body)];
        if let Some((previous, until)) = &self.signing.previous
            && now < *until
        {
            sigs.push(crate::signing::sign(previous, msg_id, ts, body));
        }
        Some((ts.to_string(), sigs.join(" ")))
    }

    /// Sends `body` (posting `posting`'s exact bytes) once and classifies the
    /// result.
    pub async fn attempt(
        &self,
        client: &reqwest::Client,
        posting: &Posting,
        body: &Bytes,
    ) -> AttemptReport {
        let started = Instant::now();
        let limit = self.timeout * 2 + ATTEMPT_SLACK;
        let mut report =
            match tokio::time::timeout(limit, self.attempt_inner(client, posting, body)).await {
                Ok(r) => r,
                Err(_) => failed(
                    Outcome::Retry { retry_after: None },
                    format!("timed out after {} ms", limit.as_millis()),
                    Health::Down,
                ),
            };
        report.duration = started.elapsed();
        report.error = report.error.map(|e| self.redact(&e));
        report.response_excerpt = report.response_excerpt.map(|e| self.redact(&e));
        if let Outcome::DeadLetter {
            receiver_message: Some(m),
        } = &mut report.outcome
        {
            *m = self.redact(m);
        }
        report
    }

    async fn attempt_inner(
        &self,
        client: &reqwest::Client,
        posting: &Posting,
        body: &Bytes,
    ) -> AttemptReport {
        if let Err(refused) = check_literal_target(&self.url, &self.policy) {
            return failed(
                Outcome::DeadLetter {
                    receiver_message: None,
                },
                refused.to_string(),
                Health::Up,
            );
        }
        let mut token = None;
        if let Some(cache) = &self.oauth {
            if let Err(refused) = check_literal_target(cache.token_url(), &self.policy) {
                return failed(
                    Outcome::DeadLetter {
                        receiver_message: None,
                    },
                    format!("token endpoint: {refused}"),
                    Health::Up,
                );
            }
            match cache.authorization(client, self.timeout).await {
                Ok(t) => token = Some(t),
                Err(e) => return token_failure(e),
            }
        }
        let mut resp = self.send(client, posting, body, token.as_ref()).await;
        if let (Some(cache), Ok(r), Some((_, id))) = (&self.oauth, &resp, &token)
            && r.status() == reqwest::StatusCode::UNAUTHORIZED
        {
            // Refreshed once: a 401 again means the credentials are wrong.
            cache.invalidate(*id).await;
            match cache.authorization(client, self.timeout).await {
                Ok(t) => token = Some(t),
                Err(e) => return token_failure(e),
            }
            resp = self.send(client, posting, body, token.as_ref()).await;
        }
        match resp {
            Ok(r) => self.classify(r).await,
            Err(e) => match classify_error(e) {
                SendFailure::Refused(m) => failed(
                    Outcome::DeadLetter {
                        receiver_message: None,
                    },
                    m,
                    Health::Up,
                ),
                SendFailure::Timeout(_) => failed(
                    Outcome::Retry { retry_after: None },
                    format!("timed out after {} ms", self.timeout.as_millis()),
                    Health::Down,
                ),
                SendFailure::Transport(m) => failed(
                    Outcome::Retry { retry_after: None },
                    format!("connection failed: {m}"),
                    Health::Down,
                ),
            },
        }
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        posting: &Posting,
        body: &Bytes,
        token: Option<&(HeaderValue, u64)>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let key = posting.idempotency_key.to_string();
        let mut headers = self.headers.clone();
        let text = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
        headers.insert(H_IDEMPOTENCY_KEY, text(&key));
        headers.insert(H_EVENT_TYPE, text(posting.event_type.as_str()));
        if let Some((auth, _)) = token {
            headers.insert(reqwest::header::AUTHORIZATION, auth.clone());
        }
        if let Some((ts, sig)) = self.signature(&key, body, OffsetDateTime::now_utc()) {
            headers.insert(H_WEBHOOK_ID, text(&key));
            headers.insert(H_WEBHOOK_TIMESTAMP, text(&ts));
            headers.insert(H_WEBHOOK_SIGNATURE, text(&sig));
        }
        client
            .post(self.url.clone())
            .headers(headers)
            .timeout(self.timeout)
            .body(body.clone())
            .send()
            .await
    }

    async fn classify(&self, resp: reqwest::Response) -> AttemptReport {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match read_capped(resp, RESPONSE_MAX_BYTES).await {
            Ok(CappedBody::Complete(b)) => b,
            Ok(CappedBody::TooLarge(prefix)) => {
                let mut r = failed(
                    Outcome::Retry { retry_after: None },
                    format!(
                        "HTTP {status} with a reply over {} KiB",
                        RESPONSE_MAX_BYTES / 1024
                    ),
                    Health::Up,
                );
                r.http_status = Some(status);
                r.response_excerpt = excerpt(&prefix);
                return r;
            }
            Err(e) => {
                let mut r = failed(
                    Outcome::Retry { retry_after: None },
                    format!(
                        "HTTP {status}, then the reply broke off: {}",
                        describe(&e.without_url())
                    ),
                    Health::Down,
                );
                r.http_status = Some(status);
                return r;
            }
        };
        let accept = self.registry.config.accept.as_ref();
        let message_pointer = accept.map_or("/message", |a| a.message_pointer.as_str());
        let receiver_message = receiver_message(&body, message_pointer);
        let mut report = match status {
            200..=299 => match accept.map(|a| check_accept(a, &body)) {
                Some(Err(why)) => {
                    refused(format!("refused by the receiver: {why}"), receiver_message)
                }
                _ => {
                    let data = registry_data(&body);
                    match json_depth(&data) {
                        depth if depth > REGISTRY_DATA_MAX_DEPTH => AttemptReport {
                            outcome: Outcome::DeadLetter {
                                receiver_message: None,
                            },
                            error: Some(format!(
                                "HTTP {status} accepted, but the reply nests {depth} levels deep \
                                 and registry_data may nest at most {REGISTRY_DATA_MAX_DEPTH}: \
                                 it could not be stored and sent back"
                            )),
                            ..blank(Health::Up)
                        },
                        _ => AttemptReport {
                            outcome: Outcome::Delivered {
                                registry_data: data,
                            },
                            ..blank(Health::Up)
                        },
                    }
                }
            },
            408 | 429 | 500..=599 => AttemptReport {
                outcome: Outcome::Retry { retry_after },
                error: Some(match retry_after {
                    Some(d) => format!("HTTP {status} (Retry-After {} s)", d.as_secs()),
                    None => format!("HTTP {status}"),
                }),
                ..blank(Health::Down)
            },
            300..=399 => AttemptReport {
                outcome: Outcome::DeadLetter {
                    receiver_message: None,
                },
                error: Some(format!(
                    "HTTP {status}: redirect to {} not followed",
                    location.as_deref().unwrap_or("nowhere")
                )),
                ..blank(Health::Up)
            },
            _ => refused(format!("HTTP {status}"), receiver_message),
        };
        report.http_status = Some(status);
        report.response_excerpt = excerpt(&body);
        report
    }
}

fn blank(health: Health) -> AttemptReport {
    AttemptReport {
        outcome: Outcome::Retry { retry_after: None },
        http_status: None,
        error: None,
        response_excerpt: None,
        duration: Duration::ZERO,
        health,
    }
}

fn failed(outcome: Outcome, error: String, health: Health) -> AttemptReport {
    AttemptReport {
        outcome,
        error: Some(error),
        ..blank(health)
    }
}

/// A dead letter for `what`, followed by the receiver's own message when
/// its reply carried one.
fn refused(what: String, receiver_message: Option<String>) -> AttemptReport {
    let error = match &receiver_message {
        Some(m) => format!("{what}: {m}"),
        None => what,
    };
    failed(Outcome::DeadLetter { receiver_message }, error, Health::Up)
}

fn token_failure(e: TokenError) -> AttemptReport {
    match e {
        TokenError::Unavailable(_) => failed(
            Outcome::Retry { retry_after: None },
            e.to_string(),
            Health::Down,
        ),
        TokenError::Refused { .. } | TokenError::BadReply(_) => failed(
            Outcome::DeadLetter {
                receiver_message: None,
            },
            e.to_string(),
            Health::Up,
        ),
    }
}

/// Deepest nesting of registry_data that is kept. The stored record wraps
/// it in a few more levels, and every reader (serde_json stops at 128)
/// must be able to read it back.
pub const REGISTRY_DATA_MAX_DEPTH: usize = 64;

/// How deeply `v` nests (a scalar is 0, `[]` and `{}` are 1).
pub fn json_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => {
                deepest = deepest.max(depth);
                continue;
            }
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    deepest
}

/// A reply body as registry_data (SPEC 4): parsed JSON as is, an empty body
/// as `{}`, other text as a JSON string.
pub fn registry_data(body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(body);
    if text.trim().is_empty() {
        return Value::Object(Default::default());
    }
    serde_json::from_slice(body).unwrap_or_else(|_| Value::String(text.into_owned()))
}

/// The start of a reply, for the delivery record.
pub fn excerpt(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let mut end = body.len().min(RESPONSE_EXCERPT_MAX_BYTES);
    let text = loop {
        match std::str::from_utf8(&body[..end]) {
            Ok(t) => break t.to_owned(),
            // Cut inside a character: step back to its start.
            Err(e) if e.error_len().is_none() => end = e.valid_up_to(),
            Err(_) => break String::from_utf8_lossy(&body[..end]).into_owned(),
        }
    };
    Some(text)
}

/// The receiver's explanation in a JSON reply, at `pointer`.
fn receiver_message(body: &[u8], pointer: &str) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let m = match v.pointer(pointer)? {
        Value::String(s) => s.clone(),
        Value::Null => return None,
        other => other.to_string(),
    };
    Some(m.chars().take(RECEIVER_MESSAGE_MAX_CHARS).collect())
}

/// Checks a 2xx reply against the registry's accept rule.
pub fn check_accept(rule: &AcceptRule, body: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        format!(
            "the reply is not JSON, so {} cannot be read",
            rule.json_pointer
        )
    })?;
    let got = v.pointer(&rule.json_pointer);
    match got {
        Some(got) if rule.success_values.iter().any(|ok| ok == got) => Ok(()),
        Some(got) => Err(format!(
            "{} is {got}, not one of {}",
            rule.json_pointer,
            Value::Array(rule.success_values.clone())
        )),
        None => Err(format!("the reply has no {}", rule.json_pointer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_depth_counts_nesting() {
        assert_eq!(json_depth(&json!("x")), 0);
        assert_eq!(json_depth(&json!({})), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": []}]})), 4);
        let deep: Value =
            serde_json::from_str(&format!("{}{}", "[".repeat(100), "]".repeat(100))).unwrap();
        assert_eq!(json_depth(&deep), 100);
    }

    #[test]
    fn replies_become_registry_data_as_the_spec_says() {
        assert_eq!(registry_data(b""), json!({}));
        assert_eq!(registry_data(b"  \n"), json!({}));
        assert_eq!(
            registry_data(br#"{"journal_id":"J-1","revision":2}"#),
            json!({"journal_id": "J-1", "revision": 2})
        );
        assert_eq!(registry_data(b"OK"), json!("OK"));
    }

    #[test]
    fn the_accept_rule_compares_json_values_and_explains_a_refusal() {
        let rule = AcceptRule {
            json_pointer: "/status".into(),
            success_values: vec![json!("1"), json!(1), json!(true), json!("success")],
            message_pointer: "/message".into(),
        };
        assert!(check_accept(&rule, br#"{"status":"1","message":"ok"}"#).is_ok());
        assert!(check_accept(&rule, br#"{"status":true}"#).is_ok());
        let e = check_accept(&rule, br#"{"status":"0","message":"no"}"#).unwrap_err();
        assert!(e.contains(r#"/status is "0""#), "{e}");
        assert!(check_accept(&rule, b"fine").is_err());
        assert!(check_accept(&rule, br#"{"ok":1}"#).is_err());
        assert_eq!(
            receiver_message(
                br#"{"status":"0","message":"Customer unknown"}"#,
                "/message"
            ),
            Some("Customer unknown".into())
        );
    }

    #[test]
    fn excerpts_are_bounded_and_cut_on_a_character() {
        let long = "é".repeat(2000);
        let e = excerpt(long.as_bytes()).unwrap();
        assert!(e.len() <= RESPONSE_EXCERPT_MAX_BYTES);
        assert!(e.chars().all(|c| c == 'é'));
        assert_eq!(excerpt(b""), None);
    }
}
