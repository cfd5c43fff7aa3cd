//! `ledgerline registry backfill R` and `POST /v1/registries/{id}/backfill`
//! (SPEC 6): the current ledger of the orders a registry missed, posted as
//! each (R, O)'s first posting, so an accounting system connected late
//! starts with the books as they are.
//!
//! **Which orders.** An order is backfilled when R has no posting for it
//! yet and at least one of its applied events is of a type R subscribes to
//! — R would have had a posting, had it existed (and been enabled) when
//! those events were handled. An order with no such event gets its first
//! posting from the aggregator at its next subscribed event, as always.
//! `--orders` names the orders to consider; `--from T` keeps the orders with
//! an event stored at or after T (the ones still active).
//!
//! **What is posted.** The order's events folded as the aggregator folds
//! them ([`OrderBook::apply`]), then the posting of its last applied event
//! built with an empty cursor: seq 1, key `ledgerline:R:O:1`, every entry of
//! the ledger (delta and full modes alike), `registry_data` `{}` when it is
//! delivered. The record is the aggregator's, plus the header
//! `Ledgerline-Backfill: true`.
//!
//! **Racing the aggregator, crashes, second runs.** The posting is stored
//! with the aggregator's own guard, expected last subject sequence 0 on
//! `ledger.postings.R.O`: whichever of the two writes first wins, and the
//! other goes on from it (the aggregator rebuilds the order's book and posts
//! a delta on top; the backfill counts the order as already posted). Nothing
//! else is kept between runs, so a run after a crash, or a second run, finds
//! the postings of the first and posts only what is missing: resumable and
//! idempotent by construction.
//!
//! **Throttled** to the registry's `rate_limit_per_s`, the pace its
//! deliveries go at anyway, so LEDGER does not fill far ahead of them.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self};
use futures::TryStreamExt;
use governor::{Quota, RateLimiter};
use time::OffsetDateTime;

use crate::engine::OrderBook;
use crate::events::{Event, OrderId, parse_event};
use crate::ledger::{LedgerOptions, derive};
use crate::posting::{Cursor, build, check_size};
use crate::records::StoredPostingRef;
use crate::registry::Registry;
use crate::streams::direct::DirectGet;
use crate::streams::{self, H_KIND, LEDGER_STREAM, ORDERS_STREAM, OrderSubjects, subjects};

/// Header on a posting stored by a backfill.
pub const H_BACKFILL: &str = "Ledgerline-Backfill";

/// How long one Direct Get reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which orders a backfill considers.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Only orders with an event stored at or after this time.
    pub from: Option<OffsetDateTime>,
    /// Only these orders (else every order on ORDERS).
    pub orders: Option<Vec<OrderId>>,
}

/// What a backfill did, order by order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackfillSummary {
    pub registry_id: String,
    /// Orders looked at.
    pub orders: u64,
    /// First postings stored by this run.
    pub posted: u64,
    /// Orders R already had a posting for (from the aggregator, or an
    /// earlier backfill), including those the aggregator posted while this
    /// run was building theirs.
    pub already_posted: u64,
    /// Orders with no applied event of a type R subscribes to.
    pub not_subscribed: u64,
    /// Orders whose last event is before `--from`.
    pub inactive: u64,
    /// Orders with no events on ORDERS (named in `--orders` only).
    pub no_events: u64,
    pub elapsed_ms: u128,
}

impl std::fmt::Display for BackfillSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backfill {}: {} orders, {} first postings stored, {} already posted, \
             {} without a subscribed event, {} inactive since --from, {} without events ({} ms)",
            self.registry_id,
            self.orders,
            self.posted,
            self.already_posted,
            self.not_subscribed,
            self.inactive,
            self.no_events,
            self.elapsed_ms
        )
    }
}

/// Why a backfill stopped. What it stored until then stays stored; run it
/// again to go on.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Streams(#[from] streams::NatsError),
    #[error("registry {0} is disabled: enable it first (its postings would wait undelivered)")]
    Disabled(String),
    #[error("no registry {0}")]
    Unknown(String),
    #[error("registry {id} is not in force: {problem}")]
    Invalid {
        id: String,
        problem: crate::registry::FieldError,
    },
    #[error(transparent)]
    Store(#[from] crate::registry_store::StoreError),
    #[error("{what} for order {order}: {source}")]
    Nats {
        what: &'static str,
        order: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("listing the orders on ORDERS: {0}")]
    List(#[source] async_nats::Error),
    #[error("order {order}: {source}")]
    Build {
        order: String,
        #[source]
        source: crate::engine::ApplyError,
    },
}

/// The registry `id` as stored, in force and enabled: what a backfill
/// posts for.
pub async fn registry_to_backfill(
    store: &crate::registry_store::RegistryStore,
    id: &str,
) -> Result<Registry, BackfillError> {
    let entry = store
        .get(id)
        .await?
        .ok_or_else(|| BackfillError::Unknown(id.to_owned()))?;
    let registry =
        entry
            .config
            .validate(store.policy())
            .map_err(|problem| BackfillError::Invalid {
                id: id.to_owned(),
                problem,
            })?;
    if !registry.config.enabled {
        return Err(BackfillError::Disabled(id.to_owned()));
    }
    Ok(registry)
}

/// Order ids, one per line; blank lines and `#` comments skipped. An
/// invalid id names its line.
pub fn parse_order_list(text: &str) -> Result<Vec<OrderId>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match OrderId::parse(line) {
            Some(id) => out.push(id),
            None => {
                return Err(format!(
                    "line {}: {line:?} is not an order id ([A-Za-z0-9_-]{{1,128}})",
                    n + 1
                ));
            }
        }
    }
    Ok(out)
}

/// What became of one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Posted,
    AlreadyPosted,
    NotSubscribed,
    Inactive,
    NoEvents,
}

/// Posts the current ledger of the orders `registry` missed (module doc).
/// `progress(done, total)` is called after each order (`total` unknown
/// until the orders are listed).
pub async fn backfill(
    client: &async_nats::Client,
    orders_subjects: &OrderSubjects,
    options: LedgerOptions,
    registry: &Registry,
    scope: Scope,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<BackfillSummary, BackfillError> {
    let started = Instant::now();
    if !registry.config.enabled {
        return Err(BackfillError::Disabled(registry.id().to_owned()));
    }
    let js = jetstream::new(client.clone());
    let open = async |name: &'static str| {
        js.get_stream(name)
            .await
            .map_err(|source| streams::NatsError::GetStream {
                stream: name,
                source,
            })
    };
    let (orders_stream, ledger) = (open(ORDERS_STREAM).await?, open(LEDGER_STREAM).await?);
    let orders = match scope.orders {
        Some(list) => list,
        None => list_orders(&orders_stream, orders_subjects).await?,
    };
    let total = orders.len() as u64;
    let rate = NonZeroU32::new(registry.config.rate_limit_per_s).unwrap_or(NonZeroU32::MIN);
    let limiter = RateLimiter::direct(Quota::per_second(rate));
    let job = Job {
        client,
        js: &js,
        ledger: &ledger,
        orders: orders_subjects,
        options,
        registry,
        from: scope.from,
    };
    let mut summary = BackfillSummary {
        registry_id: registry.id().to_owned(),
        ..Default::default()
    };
    for order in &orders {
        let outcome = job.order(order, || limiter.until_ready()).await?;
        summary.orders += 1;
        *match outcome {
            Outcome::Posted => &mut summary.posted,
            Outcome::AlreadyPosted => &mut summary.already_posted,
            Outcome::NotSubscribed => &mut summary.not_subscribed,
            Outcome::Inactive => &mut summary.inactive,
            Outcome::NoEvents => &mut summary.no_events,
        } += 1;
        progress(summary.orders, Some(total));
    }
    summary.elapsed_ms = started.elapsed().as_millis();
    Ok(summary)
}

/// Every order with a subject on ORDERS, from the stream's subject index
/// (paged by the server; no message is read), sorted.
async fn list_orders(
    orders: &Stream,
    orders_subjects: &OrderSubjects,
) -> Result<Vec<OrderId>, BackfillError> {
    let mut subjects = orders
        .info_with_subjects(orders_subjects.all())
        .await
        .map_err(|e| BackfillError::List(e.into()))?;
    let mut out = Vec::new();
    while let Some((subject, _count)) = subjects
        .try_next()
        .await
        .map_err(|e| BackfillError::List(e.into()))?
    {
        if let Some(id) = orders_subjects.order_of(&subject).and_then(OrderId::parse) {
            out.push(id);
        }
    }
    out.sort();
    Ok(out)
}

/// One backfill's fixed parts.
struct Job<'a> {
    client: &'a async_nats::Client,
    js: &'a jetstream::Context,
    ledger: &'a Stream,
    orders: &'a OrderSubjects,
    options: LedgerOptions,
    registry: &'a Registry,
    from: Option<OffsetDateTime>,
}

impl Job<'_> {
    /// Backfills one order; `pace` waits for the rate limit before a write.
    async fn order<F: Future<Output = ()>>(
        &self,
        order: &OrderId,
        pace: impl FnOnce() -> F,
    ) -> Result<Outcome, BackfillError> {
        let nats = |what| {
            move |e: async_nats::Error| BackfillError::Nats {
                what,
                order: order.to_string(),
                source: e,
            }
        };
        let subject = subjects::postings(self.registry.id(), order.as_str());
        match self.ledger.get_last_raw_message_by_subject(&subject).await {
            Ok(_) => return Ok(Outcome::AlreadyPosted),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(nats("reading the last posting")(e.into())),
        }
        let Some(folded) = self.fold(order).await.map_err(nats("reading the events"))? else {
            return Ok(Outcome::NoEvents);
        };
        if self.from.is_some_and(|from| folded.last_stored < from) {
            return Ok(Outcome::Inactive);
        }
        let Some((event, source_seq)) = folded.last_applied.filter(|_| folded.subscribed) else {
            return Ok(Outcome::NotSubscribed);
        };
        let build_err = |source: crate::engine::ApplyError| BackfillError::Build {
            order: order.to_string(),
            source,
        };
        let ledger = derive(&folded.book.state, &self.options).map_err(|e| build_err(e.into()))?;
        let posting = build(self.registry, &event, &ledger, &Cursor::default())
            .map_err(|e| build_err(e.into()))?;
        check_size(&posting).map_err(|e| build_err(e.into()))?;

        pace().await;
        let stored = StoredPostingRef {
            source_seq,
            previous_subject_seq: 0,
            posting: &posting,
        };
        let payload = stored.to_json().map_err(|e| nats("encoding")(e.into()))?;
        let mut headers = HeaderMap::new();
        headers.insert(H_KIND, "posting");
        headers.insert(H_BACKFILL, "true");
        let msg = streams::guarded_message(
            headers,
            &posting.idempotency_key.to_string(),
            Some(0),
            payload.into(),
        );
        let ack = match self.js.send_publish(subject, msg).await {
            Ok(fut) => fut.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) if ack.duplicate => Ok(Outcome::AlreadyPosted),
            Ok(_) => Ok(Outcome::Posted),
            // The aggregator (or another backfill) posted first.
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Outcome::AlreadyPosted),
            Err(e) => Err(nats("storing the posting")(e.into())),
        }
    }

    /// The order's events folded as the aggregator folds them; `None` when
    /// it has none.
    async fn fold(&self, order: &OrderId) -> Result<Option<Folded>, async_nats::Error> {
        let subject = self.orders.stored(order.as_str());
        let mut reader = DirectGet::new(self.client, ORDERS_STREAM, &subject, REPLY_TIMEOUT);
        let mut folded: Option<Folded> = None;
        while let Some(m) = reader.next().await? {
            let f = folded.get_or_insert_with(|| Folded::new(order));
            f.last_stored = m.time().unwrap_or(OffsetDateTime::UNIX_EPOCH);
            let Ok(event) = parse_event(m.payload(), Some(order.as_str())) else {
                continue;
            };
            // Refused events change nothing, as in the aggregator.
            if f.book.apply(&event, &[], &self.options).is_ok() {
                f.subscribed |= self.registry.subscribes(event.event_type);
                f.last_applied = Some((event, m.seq));
            }
        }
        Ok(folded)
    }
}

/// An order's events, folded.
struct Folded {
    book: OrderBook,
    /// The last applied event and its ORDERS sequence.
    last_applied: Option<(Event, u64)>,
    /// Whether any applied event is of a type the registry subscribes to.
    subscribed: bool,
    /// When the order's last event was stored.
    last_stored: OffsetDateTime,
}

impl Folded {
    fn new(order: &OrderId) -> Self {
        Folded {
            book: OrderBook::new(order.clone()),
            last_applied: None,
            subscribed: false,
            last_stored: OffsetDateTime::UNIX_EPOCH,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_list_skips_comments_and_names_a_bad_line() {
        let list = parse_order_list("# orders to backfill\nord-1\n\n  ord_2  \n").unwrap();
        assert_eq!(
            list,
            [
                OrderId::parse("ord-1").unwrap(),
                OrderId::parse("ord_2").unwrap()
            ]
        );
        let e = parse_order_list("ord-1\nnot an id\n").unwrap_err();
        assert!(e.starts_with("line 2: \"not an id\""), "{e}");
    }
}
