//! Inbound webhooks (SPEC 10): the sales channels' own webhooks, taken on
//! `ingest_listen` (its own listener: this one faces the internet) and
//! stored on ORDERS as SPEC 1 events.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/ingest/{source_id}` | a payload that says what happened (gateway, events) |
//! | `POST /v1/ingest/{source_id}/{topic}` | a payload whose topic is in the URL (`orders/created`, `payment/created`) |
//! | `POST /v1/ingest/{source_id}/token` | `oauth2` sources: client-credentials tokens ([`tokens`]) |
//!
//! A request, in order: the source (404), its rate limit (429), its
//! credentials ([`auth`], 401: nothing stored), the mapping
//! ([`crate::mapping::plan`]; a `jq` source's program runs on a blocking
//! thread, [`JQ_RUNS_MAX`] at once: a refusal is 400/422 naming the field, with
//! the raw body kept on `ledger.rejected.<reason>`), then every mapped event
//! published to `<prefix>.<order_id>` with its message id. The reply is 2xx
//! only once JetStream acknowledged every one ([`store`]): nothing
//! acknowledged is ever lost. NATS unreachable or slow: 503, and the
//! vendor retries; the retry carries the same message id, so it is stored
//! once whichever attempt got through. Bodies are limited to
//! [`crate::source::SOURCE_BODY_MAX_BYTES`], requests to
//! [`REQUEST_TIMEOUT`].

pub mod auth;
mod store;
pub mod tokens;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::ApiError;
use crate::domain::wire::wire_names;
use crate::events::{RejectReason, Rejection};
use crate::mapping::{self, Plan};
use crate::source::{SOURCE_BODY_MAX_BYTES, Source, SourceKind};

pub use store::StoreError;

/// Longest a request may take before it is answered 503 (the vendor
/// retries): bounds what a slow NATS can pile up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Most `jq` programs running at once, on blocking threads: a program is
/// trusted configuration but jaq has no step limit, so a runaway one holds
/// at most this many threads (later requests wait, then get 503).
pub const JQ_RUNS_MAX: usize = 4;
/// The `source` label of a request for a source that does not exist, so
/// made-up ids cannot create series.
pub const UNKNOWN_SOURCE: &str = "unknown";

/// The sources in force, by id: the source bucket's, config file's
/// included ([`crate::source_store`]), followed live by `ledgerline run`.
pub type SourceWatch = watch::Receiver<Arc<Vec<Source>>>;

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct InboundState {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    orders: crate::streams::OrderSubjects,
    sources: SourceWatch,
    limiters: Mutex<HashMap<(String, u32), Arc<DefaultDirectRateLimiter>>>,
    tokens: tokens::TokenStore,
    jq_runs: Arc<tokio::sync::Semaphore>,
}

impl InboundState {
    pub fn new(
        client: async_nats::Client,
        orders: crate::streams::OrderSubjects,
        sources: SourceWatch,
    ) -> Self {
        let js = async_nats::jetstream::new(client.clone());
        Self {
            inner: Arc::new(Inner {
                client,
                js,
                orders,
                sources,
                limiters: Mutex::new(HashMap::new()),
                tokens: tokens::TokenStore::default(),
                jq_runs: Arc::new(tokio::sync::Semaphore::new(JQ_RUNS_MAX)),
            }),
        }
    }

    fn source(&self, id: &str) -> Option<Source> {
        self.inner
            .sources
            .borrow()
            .iter()
            .find(|s| s.id() == id)
            .cloned()
    }

    /// True when the source's rate limit lets one more request through.
    fn admit(&self, source: &Source) -> bool {
        let per_s = source.config.rate_limit_per_s;
        let limiter = {
            let mut map = self
                .inner
                .limiters
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // One limiter per source and rate: a changed rate starts afresh;
            // at most one entry per configured (source, rate).
            map.retain(|(id, _), _| self.inner.sources.borrow().iter().any(|s| s.id() == id));
            map.entry((source.id().to_owned(), per_s))
                .or_insert_with(|| {
                    // Validation keeps the rate in 1..=SOURCE_RATE_LIMIT_MAX.
                    let rate = NonZeroU32::new(per_s).unwrap_or(NonZeroU32::MIN);
                    Arc::new(RateLimiter::direct(Quota::per_second(rate)))
                })
                .clone()
        };
        limiter.check().is_ok()
    }
}

/// How a request ended: the `outcome` label (a fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    Stored,
    Duplicate,
    Ignored,
    Rejected,
    Unauthorized,
    RateLimited,
    NotFound,
    Unavailable,
    Token,
}

wire_names!(Outcome);

fn count(source: &str, outcome: Outcome) {
    metrics::counter!("ledgerline_inbound_requests_total",
        "source" => source.to_owned(), "outcome" => outcome.as_str())
    .increment(1);
}

/// The ingest API as an axum router.
pub fn router(state: InboundState) -> Router {
    Router::new()
        .route("/v1/ingest/{source_id}", post(ingest_without_topic))
        .route("/v1/ingest/{source_id}/token", post(tokens::issue))
        .route("/v1/ingest/{source_id}/{*topic}", post(ingest_with_topic))
        .fallback(|| async {
            ApiError::not_found("no such route: POST /v1/ingest/{source_id}[/{topic}]")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "webhooks are POSTed")
        })
        .layer(middleware::from_fn(timeout))
        .layer(DefaultBodyLimit::max(SOURCE_BODY_MAX_BYTES))
        .with_state(state)
}

/// Middleware: answers 503 when a request outlives [`REQUEST_TIMEOUT`].
async fn timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            ApiError::unavailable("storing the webhook took too long; retry it").into_response()
        }
    }
}

async fn ingest_without_topic(
    State(st): State<InboundState>,
    Path(source_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    ingest(st, source_id, None, headers, body).await
}

async fn ingest_with_topic(
    State(st): State<InboundState>,
    Path((source_id, topic)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    ingest(st, source_id, Some(topic), headers, body).await
}

/// One webhook, start to reply.
#[tracing::instrument(skip_all, fields(source_id = %source_id, topic = topic.as_deref().unwrap_or("")))]
async fn ingest(
    st: InboundState,
    source_id: String,
    topic: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(source) = st.source(&source_id) else {
        count(UNKNOWN_SOURCE, Outcome::NotFound);
        return ApiError::not_found("no such source")
            .with_field("source_id")
            .into_response();
    };
    let (outcome, resp) = handle(&st, &source, topic.as_deref(), &headers, &body).await;
    count(source.id(), outcome);
    resp
}

async fn handle(
    st: &InboundState,
    source: &Source,
    topic: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> (Outcome, Response) {
    if !st.admit(source) {
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "over the source's limit of {} requests per second",
                source.config.rate_limit_per_s
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return (Outcome::RateLimited, resp);
    }
    if let Err(r) = auth::check(source, headers, body, |t| {
        st.inner.tokens.valid(&tokens::token_key(source), t)
    }) {
        warn!(field = %r.field, "inbound request refused: {}", r.message);
        return (
            Outcome::Unauthorized,
            ApiError::new(StatusCode::UNAUTHORIZED, r.message)
                .with_field(r.field)
                .into_response(),
        );
    }
    let events = match plan(st, source, topic, body).await {
        Ok(Plan::Store(events)) => events,
        Ok(Plan::Redeem(redeem)) => {
            match store::order_lines(&st.inner.client, &st.inner.orders, &redeem.order_id).await {
                Ok(lines) if lines.is_empty() => {
                    let why = Rejection::new(
                        RejectReason::InvalidField,
                        "orderId",
                        format!("order {} has no lines stored to redeem", redeem.order_id),
                    );
                    return rejected(st, source, topic, body, why).await;
                }
                Ok(lines) => redeem.events(&lines),
                Err(e) => return unavailable(&e),
            }
        }
        Ok(Plan::Ignored { topic }) => {
            info!(topic = %topic, "inbound topic not mapped; acknowledged, nothing stored");
            return (Outcome::Ignored, reply(source, &json!({"ignored": topic})));
        }
        Err(why) => return rejected(st, source, topic, body, why).await,
    };
    match store::publish(st, source, &events).await {
        Ok(stored) => {
            let outcome = if stored.new == 0 {
                Outcome::Duplicate
            } else {
                Outcome::Stored
            };
            let detail = json!({"stored": stored.new, "duplicates": stored.duplicates});
            (outcome, reply(source, &detail))
        }
        Err(e) => unavailable(&e),
    }
}

/// [`mapping::plan`]; a `jq` source's program runs on a blocking thread,
/// at most [`JQ_RUNS_MAX`] at once.
async fn plan(
    st: &InboundState,
    source: &Source,
    topic: Option<&str>,
    body: &Bytes,
) -> Result<Plan, Rejection> {
    if source.kind() != SourceKind::Jq {
        return mapping::plan(source, topic, body);
    }
    // The semaphore is never closed: `acquire` cannot fail while it lives.
    let _permit = st.inner.jq_runs.clone().acquire_owned().await;
    let (source, topic, body) = (source.clone(), topic.map(str::to_owned), body.clone());
    tokio::task::spawn_blocking(move || mapping::plan(&source, topic.as_deref(), &body))
        .await
        .unwrap_or_else(|e| {
            Err(Rejection::new(
                RejectReason::Internal,
                "program",
                format!("the jq program's run ended abnormally: {e}"),
            ))
        })
}

/// A refused request: its body kept on `ledger.rejected.<reason>`, then
/// 400 (not JSON, too large) or 422 naming the field.
async fn rejected(
    st: &InboundState,
    source: &Source,
    topic: Option<&str>,
    body: &[u8],
    why: Rejection,
) -> (Outcome, Response) {
    if let Err(e) = store::reject(st, source, topic.unwrap_or(""), body, &why).await {
        return unavailable(&e);
    }
    let status = match why.reason {
        RejectReason::MalformedJson | RejectReason::TooLarge => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (
        Outcome::Rejected,
        ApiError::new(status, format!("{} ({})", why.message, why.reason))
            .with_field(why.field)
            .into_response(),
    )
}

/// The 2xx reply: `{"status": "success"}` (what the POS expects), plus
/// `detail` for the kinds whose senders read nothing.
fn reply(source: &Source, detail: &serde_json::Value) -> Response {
    let mut body = json!({"status": "success"});
    if source.kind() != SourceKind::PosPayments
        && let (Some(b), Some(d)) = (body.as_object_mut(), detail.as_object())
    {
        b.extend(d.clone());
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn unavailable(e: &StoreError) -> (Outcome, Response) {
    warn!(error = %e, "inbound webhook not stored; answered 503 so the sender retries");
    (
        Outcome::Unavailable,
        ApiError::unavailable("the event store is unavailable; retry later").into_response(),
    )
}

/// Serves the ingest API on `listener` until `shutdown`, then stops
/// accepting and finishes the requests in flight (each either stored and
/// answered, or answered 503).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: InboundState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    metrics::describe_counter!(
        "ledgerline_inbound_requests_total",
        "Inbound webhook requests by source and outcome (stored, duplicate, ignored, rejected, unauthorized, rate_limited, not_found, unavailable, token)"
    );
    crate::admin::serve_router("ingest API", listener, router(state), shutdown).await
}

#[cfg(test)]
mod tests {
    use strum::VariantArray;

    use super::Outcome;

    /// The `outcome` label's values are named by strum's rule; dashboards
    /// and alerts know them by these names.
    #[test]
    fn outcome_labels_keep_their_names() {
        let names: Vec<&str> = Outcome::VARIANTS.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            names.join(" "),
            "stored duplicate ignored rejected unauthorized rate_limited not_found unavailable token"
        );
    }
}
