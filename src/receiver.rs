//! `ledgerline receiver`: a sample accounting system, the other end of the
//! wire contract, for demos and tests.
//!
//! It takes posting requests on any path (POST), and:
//! - verifies Standard Webhooks signatures when given a `whsec_` secret
//!   (401 otherwise), within a 5-minute timestamp tolerance (401
//!   "timestamp out of tolerance" beyond it, whatever the value);
//! - keeps a journal per order and answers registry_data like
//!   `{"journal_id": "J-000123", "revision": 2}`; a repeated idempotency
//!   key gets the same answer again (it is the same posting);
//! - checks the registry_data chain: each request must carry what it
//!   answered to the previous posting of the order (`chain_ok`);
//! - keeps what it received (bounded), for `GET /_receiver/received`;
//! - can be told to fail: a status for a share of requests, a delay, a
//!   random extra delay (answers then come back in random order), at start
//!   or at any time with `PUT /_receiver/failure`.
//!
//! Control API: `GET|DELETE /_receiver/received`, `GET|PUT
//! /_receiver/failure`, `GET /_receiver/stats`, `GET /healthz`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::secret::Secret;

/// Requests kept for `GET /_receiver/received`; older ones are dropped.
pub const RECEIVED_MAX: usize = 100_000;
/// Largest request body accepted.
pub const BODY_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Standard Webhooks timestamp tolerance.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Longest delay the receiver can be told to add (so a typo cannot hang a
/// demo for hours).
pub const DELAY_MAX_MS: u64 = 120_000;

/// How the receiver misbehaves on purpose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailureMode {
    /// Answer this status (with `{"status":"0","message":…}`) instead of
    /// accepting, to `share` of the requests.
    pub status: Option<u16>,
    /// Share of requests that fail, 0 to 1.
    pub share: f64,
    /// Wait this long before answering any request.
    pub delay_ms: u64,
    /// Plus a random extra wait up to this long.
    pub jitter_ms: u64,
}

impl Default for FailureMode {
    fn default() -> Self {
        Self {
            status: None,
            share: 1.0,
            delay_ms: 0,
            jitter_ms: 0,
        }
    }
}

/// How the signature of a request checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureCheck {
    /// No secret configured.
    NotChecked,
    Valid,
    Missing,
    Invalid,
    /// The `webhook-timestamp` is further from now than the tolerance
    /// (however far: any i64 is handled).
    Stale,
}

/// A request as the receiver saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Received {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Header names lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub order_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub signature: SignatureCheck,
    /// The status answered.
    pub status: u16,
    /// Whether its registry_data was the previous answer for the order
    /// (`None` when not accepted).
    pub chain_ok: Option<bool>,
}

impl Received {
    /// A header's value (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// The value of header `name` (any case) in `headers`, whose names are
/// lower-case.
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// Counts for `GET /_receiver/stats` and the CLI summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub accepted: u64,
    pub failures_injected: u64,
    pub signature_failures: u64,
    pub chain_breaks: u64,
    pub distinct_keys: u64,
    pub orders: u64,
}

/// Why the receiver cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("--secret: {0}")]
    Secret(String),
    #[error("--fail-share must be between 0 and 1")]
    Share,
}

struct Journal {
    revision: u64,
    journal_id: String,
    last_answer: Value,
}

struct Inner {
    key: Option<Vec<u8>>,
    failure: Mutex<FailureMode>,
    received: Mutex<VecDeque<Received>>,
    journals: Mutex<HashMap<String, Journal>>,
    answers: Mutex<HashMap<String, Value>>,
    next_journal: AtomicU64,
    stats: Mutex<Stats>,
    /// Answer like the order-confirmation reference: `"status": "1"` and a
    /// `"message"` beside the journal fields (for registries with an accept
    /// rule on `/status`).
    status_reply: std::sync::atomic::AtomicBool,
}

/// A receiver served on a loopback port ([`Receiver::serve_on_loopback`]).
pub struct Served {
    pub receiver: Receiver,
    pub addr: std::net::SocketAddr,
}

/// The sample receiver. Clones share state.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: valid whatever a panicking holder did.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn check_failure(f: &FailureMode) -> Result<(), ReceiverError> {
    if !(0.0..=1.0).contains(&f.share) {
        return Err(ReceiverError::Share);
    }
    Ok(())
}

impl Receiver {
    /// A receiver that verifies signatures with `secret` (when given).
    pub fn new(secret: Option<&Secret>, failure: FailureMode) -> Result<Self, ReceiverError> {
        check_failure(&failure)?;
        let key = secret
            .map(crate::signing::decode_secret)
            .transpose()
            .map_err(ReceiverError::Secret)?;
        Ok(Self {
            inner: Arc::new(Inner {
                key,
                failure: Mutex::new(failure),
                received: Mutex::new(VecDeque::new()),
                journals: Mutex::new(HashMap::new()),
                answers: Mutex::new(HashMap::new()),
                next_journal: AtomicU64::new(123),
                stats: Mutex::new(Stats::default()),
                status_reply: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Also answer `"status": "1", "message": "Booked"` on success, as the
    /// order-confirmation reference's systems do.
    pub fn with_status_reply(self, on: bool) -> Self {
        self.inner.status_reply.store(on, Ordering::Relaxed);
        self
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/_receiver/received",
                get(received_list).delete(received_clear),
            )
            .route("/_receiver/failure", get(failure_get).put(failure_put))
            .route("/_receiver/stats", get(stats_get))
            .fallback(webhook)
            .layer(DefaultBodyLimit::max(BODY_MAX_BYTES))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Serves `router` (this receiver's, maybe with more routes) on a
    /// free loopback port until `shutdown`, in a task of its own (as the
    /// demo and the bench run their receivers).
    pub async fn serve_on_loopback(
        self,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<Served> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Ok(Served {
            receiver: self,
            addr,
        })
    }

    /// What was received so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.inner.received).iter().cloned().collect()
    }

    pub fn set_failure(&self, f: FailureMode) -> Result<(), ReceiverError> {
        check_failure(&f)?;
        *lock(&self.inner.failure) = f;
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        let mut s = lock(&self.inner.stats).clone();
        s.distinct_keys = lock(&self.inner.answers).len() as u64;
        s.orders = lock(&self.inner.journals).len() as u64;
        s
    }

    fn keep(&self, r: Received) {
        let mut q = lock(&self.inner.received);
        if q.len() >= RECEIVED_MAX {
            q.pop_front();
        }
        q.push_back(r);
    }

    fn check_signature(&self, headers: &HeaderMap, body: &[u8]) -> SignatureCheck {
        check_signature(self.inner.key.as_deref(), headers, body)
    }

    /// The answer to an accepted posting: the same for a repeated key, the
    /// order's next revision otherwise. `record` is kept before the key
    /// counts as answered, so whoever sees `distinct_keys` grow finds the
    /// request in [`Self::received`].
    fn answer(
        &self,
        order_id: &str,
        key: &str,
        registry_data: &Value,
        mut record: Received,
    ) -> (Value, bool) {
        let mut answers = lock(&self.inner.answers);
        let mut journals = lock(&self.inner.journals);
        let journal = journals
            .entry(order_id.to_owned())
            .or_insert_with(|| Journal {
                revision: 0,
                journal_id: format!(
                    "J-{:06}",
                    self.inner.next_journal.fetch_add(1, Ordering::Relaxed)
                ),
                last_answer: json!({}),
            });
        record.status = 200;
        if let Some(a) = answers.get(key) {
            // A retry of a posting already booked: same answer. Its
            // registry_data was checked the first time.
            record.chain_ok = Some(true);
            self.keep(record);
            return (a.clone(), true);
        }
        let chain_ok = *registry_data == journal.last_answer;
        record.chain_ok = Some(chain_ok);
        self.keep(record);
        journal.revision += 1;
        let mut a = json!({"journal_id": journal.journal_id, "revision": journal.revision});
        if self.inner.status_reply.load(Ordering::Relaxed) {
            a["status"] = json!("1");
            a["message"] = json!(format!("Booked in {}", journal.journal_id));
        }
        journal.last_answer = a.clone();
        answers.insert(key.to_owned(), a.clone());
        (a, chain_ok)
    }
}

/// How the Standard Webhooks signature of a request (`headers`, `body`)
/// checks out under `key` (`None`: no secret, not checked). Also the
/// bench's receivers' check.
pub fn check_signature(key: Option<&[u8]>, headers: &HeaderMap, body: &[u8]) -> SignatureCheck {
    let Some(key) = key else {
        return SignatureCheck::NotChecked;
    };
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sig)) = (
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    ) else {
        return SignatureCheck::Missing;
    };
    let Ok(ts) = ts.parse::<i64>() else {
        return SignatureCheck::Invalid;
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    // In i128: `now - ts` overflows i64 for a timestamp near i64::MIN.
    let skew = (i128::from(now) - i128::from(ts)).unsigned_abs();
    if skew > u128::from(SIGNATURE_TOLERANCE.as_secs()) {
        return SignatureCheck::Stale;
    }
    if crate::signing::verify(key, id, ts, body, sig) {
        SignatureCheck::Valid
    } else {
        SignatureCheck::Invalid
    }
}

fn refusal(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"status": "0", "message": message}))).into_response()
}

async fn webhook(
    State(rx): State<Receiver>,
    method: axum::http::Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != axum::http::Method::POST {
        return refusal(StatusCode::METHOD_NOT_ALLOWED, "POST postings here");
    }
    let mode = lock(&rx.inner.failure).clone();
    let wait = mode.delay_ms.min(DELAY_MAX_MS)
        + match mode.jitter_ms.min(DELAY_MAX_MS) {
            0 => 0,
            j => rand::random_range(0..=j),
        };
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    let signature = rx.check_signature(&headers, &body);
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let mut record = Received {
        at: OffsetDateTime::now_utc(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        order_id: field("order_id"),
        idempotency_key: field("idempotency_key"),
        signature,
        status: 200,
        chain_ok: None,
    };
    lock(&rx.inner.stats).requests += 1;
    let refused = if matches!(signature, SignatureCheck::Missing | SignatureCheck::Invalid) {
        lock(&rx.inner.stats).signature_failures += 1;
        refusal(StatusCode::UNAUTHORIZED, "signature missing or invalid")
    } else if signature == SignatureCheck::Stale {
        lock(&rx.inner.stats).signature_failures += 1;
        refusal(StatusCode::UNAUTHORIZED, "timestamp out of tolerance")
    } else if let Some(status) = mode
        .status
        .filter(|_| mode.share >= 1.0 || rand::random::<f64>() < mode.share)
    {
        lock(&rx.inner.stats).failures_injected += 1;
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        refusal(status, "simulated failure")
    } else {
        match (
            &parsed,
            record.order_id.clone(),
            record.idempotency_key.clone(),
        ) {
            (Some(v), Some(order), Some(key)) => {
                let registry_data = v.get("registry_data").cloned().unwrap_or(Value::Null);
                let (answer, chain_ok) = rx.answer(&order, &key, &registry_data, record);
                let mut stats = lock(&rx.inner.stats);
                stats.accepted += 1;
                if !chain_ok {
                    stats.chain_breaks += 1;
                }
                // Kept by `answer`.
                return (StatusCode::OK, Json(answer)).into_response();
            }
            _ => refusal(
                StatusCode::BAD_REQUEST,
                "expected a JSON posting with order_id and idempotency_key",
            ),
        }
    };
    record.status = refused.status().as_u16();
    rx.keep(record);
    refused
}

async fn received_list(State(rx): State<Receiver>) -> Json<Vec<Received>> {
    Json(rx.received())
}

async fn received_clear(State(rx): State<Receiver>) -> StatusCode {
    lock(&rx.inner.received).clear();
    StatusCode::NO_CONTENT
}

async fn failure_get(State(rx): State<Receiver>) -> Json<FailureMode> {
    Json(lock(&rx.inner.failure).clone())
}

async fn failure_put(State(rx): State<Receiver>, Json(f): Json<FailureMode>) -> Response {
    match rx.set_failure(f) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refusal(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn stats_get(State(rx): State<Receiver>) -> Json<Stats> {
    Json(rx.stats())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as the handler records it, before it is answered.
    fn request(order: &str, key: &str) -> Received {
        Received {
            at: OffsetDateTime::UNIX_EPOCH,
            path: "/hooks".into(),
            query: None,
            headers: Vec::new(),
            body: String::new(),
            order_id: Some(order.into()),
            idempotency_key: Some(key.into()),
            signature: SignatureCheck::NotChecked,
            status: 0,
            chain_ok: None,
        }
    }

    #[test]
    fn answers_chain_per_order_and_repeat_for_a_repeated_key() {
        let rx = Receiver::new(None, FailureMode::default()).unwrap();
        let answer = |o: &str, k: &str, rd: &Value| rx.answer(o, k, rd, request(o, k));
        let (a1, ok1) = answer("o-1", "k1", &json!({}));
        assert!(ok1);
        assert_eq!(a1["revision"], 1);
        assert_eq!(a1["journal_id"], "J-000123");
        let (again, _) = answer("o-1", "k1", &json!({}));
        assert_eq!(again, a1);
        let (a2, ok2) = answer("o-1", "k2", &a1);
        assert!(ok2);
        assert_eq!(a2["revision"], 2);
        let (_, ok3) = answer("o-1", "k3", &a1);
        assert!(!ok3, "posting 3 must carry the answer to posting 2");
        let (b1, _) = answer("o-2", "k4", &json!({}));
        assert_eq!(b1["journal_id"], "J-000124");
        // Every answered request is kept, with its status and chain check,
        // by the time its key counts.
        let kept = rx.received();
        assert_eq!(kept.len(), 5);
        assert_eq!(rx.stats().distinct_keys, 4);
        assert!(kept.iter().all(|r| r.status == 200));
        let chain: Vec<Option<bool>> = kept.iter().map(|r| r.chain_ok).collect();
        assert_eq!(chain, [true, true, true, false, true].map(Some));
    }

    #[test]
    fn a_share_outside_zero_to_one_is_refused() {
        let f = FailureMode {
            share: 1.5,
            ..FailureMode::default()
        };
        assert!(Receiver::new(None, f).is_err());
    }
}
