//! Orders and deliveries over the admin API:
//! - `GET /v1/orders/{order_id}/ledger`: the order's current ledger (its
//!   events replayed from ORDERS through the same fold and ledger math as
//!   the aggregator), every posting stored for it per registry, and where
//!   each posting's delivery stands (from the LEDGER records the
//!   dispatcher writes);
//! - `GET /v1/registries/{id}/deliveries?status=&limit=&after=`: delivery
//!   state per order of a registry, paged by order id;
//! - `POST /v1/registries/{id}/orders/{order_id}/redeliver`: the
//!   dispatcher's redeliver request (the same as `ledgerline redeliver`).
//!
//! Everything is read from JetStream on each request; nothing is cached,
//! so the views are never stale and any instance can answer.

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use futures::TryStreamExt;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::AdminState;
use super::error::ApiError;
use crate::dispatcher::index::{DeliveryIndex, INDEXED};
use crate::dispatcher::state::{OrderDeliveries, Progress};
use crate::dispatcher::status::{RedeliverOutcome, StatusError, check_pairs, request_redeliver};
use crate::events::{OrderId, Text, parse_event};
use crate::ledger::derive;
use crate::ledger::{Entry, LedgerOptions};
use crate::money::Currency;
use crate::money::rate_text;
use crate::order::OrderState;
use crate::records::{DeliveryRecord, DeliveryStatus, SeqDeliveries, SeqDelivery, StoredPosting};
use crate::registry::Registry;
use crate::streams::direct::{DirectGet, DirectMessage};
use crate::streams::{LEDGER_STREAM, ORDERS_STREAM, subjects};

/// Most events replayed for one ledger view; a longer history is shown up
/// to here, marked `truncated`.
pub const VIEW_EVENTS_MAX: usize = 10_000;
/// Most postings (all registries together) in one ledger view.
pub const VIEW_POSTINGS_MAX: usize = 10_000;
/// Most delivery records read for one ledger view.
pub const VIEW_DELIVERY_RECORDS_MAX: usize = 50_000;
/// Orders per page of a registry's deliveries: default and most.
pub const DELIVERIES_PAGE_DEFAULT: usize = 100;
pub const DELIVERIES_PAGE_MAX: usize = 1_000;
/// Most orders examined for one page (with a status filter most may not
/// match); the page then ends early with `next_after` to continue.
pub const DELIVERIES_SCAN_MAX: usize = 10_000;

pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn nats_err(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "admin: {what} failed");
    ApiError::unavailable(format!("{what}: {e}"))
}

fn token_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Longest wait for the next reply of a Direct Get: a request answers
/// in milliseconds, and an API caller should hear of a vanished server
/// well within the router's 15 s timeout.
pub const DIRECT_GET_TIMEOUT: Duration = Duration::from_secs(5);

/// Every message of `stream` on a subject filter (wildcards allowed), in
/// stream order, at most `max`; and whether more were left. Read with the
/// batched Direct Get client ([`DirectGet`]), so an order with hundreds of
/// postings costs a few round trips, not hundreds.
async fn read_subject(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    max: usize,
) -> Result<(Vec<DirectMessage>, bool), ApiError> {
    // One more than wanted, to tell "exactly max" from "more".
    let mut reader =
        DirectGet::new(client, stream, filter, DIRECT_GET_TIMEOUT).limit(max.saturating_add(1));
    let mut out = Vec::new();
    while let Some(m) = reader
        .next()
        .await
        .map_err(|e| nats_err(&format!("reading {filter}"), e))?
    {
        out.push(m);
    }
    let truncated = out.len() > max;
    out.truncate(max);
    Ok((out, truncated))
}

/// When a message was stored (the epoch if the server did not say).
fn stored_at(m: &DirectMessage) -> OffsetDateTime {
    m.time().unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// An order's postings, per registry: each with its stream sequence and
/// when it was stored.
type PostingsByRegistry = BTreeMap<String, Vec<(StoredPosting, u64, OffsetDateTime)>>;

/// `GET /v1/orders/{order_id}/ledger`.
pub(super) async fn ledger(
    State(st): State<AdminState>,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    order_view(&st, &order_id).await.map(Json)
}

/// The ledger view of an order (the body of `GET /v1/orders/{order_id}/ledger`,
/// also what the console's order page shows).
pub(super) async fn order_view(st: &AdminState, order_id: &str) -> Result<Value, ApiError> {
    let order = OrderId::parse(order_id)
        .ok_or_else(|| ApiError::invalid("order_id", "must match [A-Za-z0-9_-]{1,128}"))?;
    let ledger_stream = st
        .js()
        .get_stream(LEDGER_STREAM)
        .await
        .map_err(|e| nats_err("opening LEDGER", e))?;

    // 1. The order's events, folded as the aggregator folds them.
    let subject = st.orders().stored(order.as_str());
    let (messages, events_truncated) =
        read_subject(st.client(), ORDERS_STREAM, &subject, VIEW_EVENTS_MAX).await?;
    let (state, events) = replay_events(&order, &messages);

    // 2. Its ledger now.
    let ledger_view = ledger_view(&order, &state, st.ledger_options())?;

    // 3. Every posting of the order, per registry.
    let (by_registry, postings_truncated) = postings_by_registry(st.client(), &order).await?;
    if messages.is_empty() && by_registry.is_empty() {
        return Err(ApiError::not_found(format!(
            "order {order} has no events and no postings"
        )));
    }

    // 4. Delivery attempts per posting.
    let deliveries = deliveries_by_registry(st.client(), &order).await?;

    // 5. Per registry: where delivery stands, then each posting.
    let set = st.registries().borrow().clone();
    let mut registries = Vec::new();
    for (registry_id, postings) in &by_registry {
        let progress = Progress::load(&ledger_stream, registry_id, order.as_str())
            .await
            .map_err(|e| nats_err("reading delivery state", e))?;
        registries.push(registry_view(
            registry_id,
            set.get(registry_id),
            &progress,
            postings,
            deliveries.get(registry_id),
        ));
    }

    Ok(json!({
        "order_id": order,
        "events": events,
        "events_truncated": events_truncated,
        "ledger": ledger_view,
        "registries": registries,
        "postings_truncated": postings_truncated,
    }))
}

/// One registry's part of an order's ledger view: whether it exists,
/// where the order's delivery stands, the registry_data the next posting
/// carries, and each posting.
fn registry_view(
    registry_id: &str,
    registry: Option<&Registry>,
    progress: &Progress,
    postings: &[(StoredPosting, u64, OffsetDateTime)],
    records: Option<&SeqDeliveries>,
) -> Value {
    let count = postings
        .iter()
        .map(|(sp, ..)| sp.posting.seq)
        .max()
        .unwrap_or(0);
    let summary = OrderDeliveries::new(progress, count);
    let posting_views: Vec<Value> = postings
        .iter()
        .map(|(sp, stream_seq, posted_at)| {
            let delivery = records.map_or(SeqDelivery::PENDING, |r| r.get(sp.posting.seq));
            posting_view(sp, *stream_seq, *posted_at, progress, &delivery)
        })
        .collect();
    json!({
        "registry_id": registry_id,
        "registry": match registry {
            Some(r) => json!({"exists": true, "enabled": r.config.enabled, "name": r.config.name}),
            None => json!({"exists": false, "enabled": false}),
        },
        "delivery": summary,
        "registry_data": progress.registry_data,
        "postings": posting_views,
    })
}

/// The order's events folded as the aggregator folds them: its state, and
/// each event with whether it applied (and why not).
fn replay_events(order: &OrderId, messages: &[DirectMessage]) -> (OrderState, Vec<Value>) {
    let mut state = OrderState::new(order.clone());
    let mut events = Vec::with_capacity(messages.len());
    for m in messages {
        let (event_id, event_type, outcome) = match parse_event(m.payload(), Some(order.as_str())) {
            Ok(ev) => {
                let outcome = match state.apply(&ev) {
                    Ok(()) => json!({"applied": true}),
                    Err(r) => {
                        json!({"applied": false, "reason": r.reason.as_str(), "message": r.to_string()})
                    }
                };
                (Some(ev.event_id.clone()), Some(ev.event_type), outcome)
            }
            Err(r) => (
                r.event_id.clone(),
                None,
                json!({"applied": false, "reason": r.reason.as_str(), "message": r.to_string()}),
            ),
        };
        let mut e = json!({
            "stream_seq": m.seq,
            "received_at": rfc3339(stored_at(m)),
            "event_id": event_id,
            "type": event_type,
        });
        if let (Value::Object(e), Value::Object(o)) = (&mut e, outcome) {
            e.extend(o);
        }
        events.push(e);
    }
    (state, events)
}

/// The order's ledger now (null before its first valid event).
fn ledger_view(
    order: &OrderId,
    state: &OrderState,
    options: &LedgerOptions,
) -> Result<Value, ApiError> {
    let Some(currency) = state.currency else {
        return Ok(Value::Null);
    };
    let l = derive(state, options).map_err(|bug| {
        tracing::error!(order_id = %order, error = %bug, "ledger invariant broken in the admin view");
        ApiError::internal(bug.to_string())
    })?;
    let (debit, credit) = l.sums();
    let f = |d| currency.format(d);
    Ok(json!({
        "currency": currency.code(),
        "version": state.version,
        "cancelled": state.cancelled,
        "totals": {
            "revenue": f(l.totals.revenue), "discount": f(l.totals.discount),
            "tax": f(l.totals.tax), "fees": f(l.totals.fees), "total": f(l.totals.total),
            "paid": f(l.totals.paid), "written_off": f(l.totals.written_off),
            "outstanding": f(l.totals.outstanding),
        },
        "debit": f(debit),
        "credit": f(credit),
        "entries": l.entries.iter().map(|e| entry_view(e, currency)).collect::<Vec<_>>(),
    }))
}

/// One ledger entry, with the dimensions it has.
fn entry_view(e: &Entry<'_>, currency: Currency) -> Value {
    let f = |d| currency.format(d);
    let mut v = json!({
        "entry_type": e.entry_type.as_str(),
        "description": e.description,
        "quantity": e.quantity,
        "debit": f(e.debit()),
        "credit": f(e.credit()),
    });
    let d = &e.dims;
    let text = |t: Option<&Text>| t.map(|t| t.to_string());
    let dims = [
        ("channel", text(d.channel)),
        ("product_id", text(d.product_id)),
        ("option_id", text(d.option_id)),
        ("unit_type", text(d.unit_type)),
        ("tax_rate", d.tax_rate.map(rate_text)),
        ("payment_method", text(d.payment_method)),
        ("fee_kind", text(d.fee_kind)),
    ];
    if let Value::Object(m) = &mut v {
        for (k, val) in dims {
            if let Some(val) = val {
                m.insert(k.into(), Value::String(val));
            }
        }
    }
    v
}

/// [`read_subject`] of the order's LEDGER subjects of one kind (`subject`
/// of a registry and an order, e.g. [`subjects::postings`]) for every
/// registry.
pub(super) async fn read_every_registry(
    client: &async_nats::Client,
    subject: fn(&str, &str) -> String,
    order: &OrderId,
    max: usize,
) -> Result<(Vec<DirectMessage>, bool), ApiError> {
    read_subject(client, LEDGER_STREAM, &subject("*", order.as_str()), max).await
}

/// Every posting of the order, per registry, and whether more were left.
async fn postings_by_registry(
    client: &async_nats::Client,
    order: &OrderId,
) -> Result<(PostingsByRegistry, bool), ApiError> {
    let (posting_msgs, truncated) =
        read_every_registry(client, subjects::postings, order, VIEW_POSTINGS_MAX).await?;
    let mut by_registry = PostingsByRegistry::new();
    for m in posting_msgs {
        let sp: StoredPosting = serde_json::from_slice(m.payload()).map_err(|e| {
            tracing::error!(subject = %m.subject(), stream_seq = m.seq, error = %e, "unreadable posting");
            ApiError::internal(format!(
                "the posting at {} #{} is unreadable: {e}",
                m.subject(),
                m.seq
            ))
        })?;
        by_registry
            .entry(sp.posting.registry_id.clone())
            .or_default()
            .push((sp, m.seq, stored_at(&m)));
    }
    Ok((by_registry, truncated))
}

/// The order's delivery records folded per registry and posting (an
/// unreadable record is skipped: the view shows what can be read).
async fn deliveries_by_registry(
    client: &async_nats::Client,
    order: &OrderId,
) -> Result<HashMap<String, SeqDeliveries>, ApiError> {
    let (records, _) = read_every_registry(
        client,
        subjects::deliveries,
        order,
        VIEW_DELIVERY_RECORDS_MAX,
    )
    .await?;
    let mut by_registry: HashMap<String, SeqDeliveries> = HashMap::new();
    for m in records {
        let Ok(r) = serde_json::from_slice::<DeliveryRecord>(m.payload()) else {
            continue;
        };
        by_registry
            .entry(r.registry_id.clone())
            .or_default()
            .apply(&r);
    }
    Ok(by_registry)
}

/// One posting with where its delivery stands: the status from the
/// registry's progress, the rest from its delivery records.
fn posting_view(
    sp: &StoredPosting,
    stream_seq: u64,
    posted_at: OffsetDateTime,
    progress: &Progress,
    d: &SeqDelivery,
) -> Value {
    let p = &sp.posting;
    let status = progress.posting_status(p.seq);
    let body = p.body(&Value::Null);
    json!({
        "seq": p.seq,
        "idempotency_key": p.idempotency_key,
        "event_id": p.event_id,
        "event_type": p.event_type,
        "occurred_at": rfc3339(p.occurred_at),
        "posted_at": rfc3339(posted_at),
        "stream_seq": stream_seq,
        "mode": p.mode,
        "filtered": p.filtered,
        "delivery": {
            "status": status.as_str(),
            "attempts": d.highest_attempt,
            "delivered_at": d.delivered_at.map(rfc3339),
            "http_status": d.http_status,
            "last_error": d.last_error,
            "next_attempt_at": d.next_attempt_at.filter(|_| status == DeliveryStatus::Retrying).map(rfc3339),
        },
        "ledger_entries": serde_json::to_value(body.ledger_entries).unwrap_or(Value::Null),
    })
}

/// The query of a deliveries page.
struct PageQuery {
    status: Option<DeliveryStatus>,
    limit: usize,
    after: Option<String>,
}

fn parse_page_query(raw: Option<&str>) -> Result<PageQuery, ApiError> {
    let mut q = PageQuery {
        status: None,
        limit: DELIVERIES_PAGE_DEFAULT,
        after: None,
    };
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "status" => {
                q.status = Some(match v.as_ref() {
                    "pending" => DeliveryStatus::Pending,
                    "delivered" => DeliveryStatus::Delivered,
                    "retrying" => DeliveryStatus::Retrying,
                    "dead" => DeliveryStatus::Dead,
                    other => {
                        return Err(ApiError::invalid(
                            "status",
                            format!(
                                "{other:?} is not a status; use pending, delivered, retrying or dead"
                            ),
                        ));
                    }
                })
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=DELIVERIES_PAGE_MAX).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "limit",
                            format!("must be a number from 1 to {DELIVERIES_PAGE_MAX}"),
                        )
                    })?
            }
            "after" => {
                if !token_ok(&v) {
                    return Err(ApiError::invalid("after", "must be an order id"));
                }
                q.after = Some(v.into_owned());
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown query parameter; use status, limit or after",
                ));
            }
        }
    }
    Ok(q)
}

/// The `k` smallest order ids after `after` (all when `None`), with their
/// posting counts, from orders offered in any order: a max-heap of at most
/// `k`, so memory is bounded by `k` whatever the number offered.
struct FirstOrders {
    after: Option<String>,
    k: usize,
    heap: BinaryHeap<(String, u64)>,
    /// Orders offered (after or not).
    seen: u64,
}

impl FirstOrders {
    fn new(after: Option<String>, k: usize) -> Self {
        Self {
            after,
            k,
            heap: BinaryHeap::with_capacity(k.saturating_add(1).min(1 << 16)),
            seen: 0,
        }
    }

    fn offer(&mut self, order: &str, count: u64) {
        self.seen += 1;
        if self.after.as_deref().is_some_and(|a| order <= a) || self.k == 0 {
            return;
        }
        if self.heap.len() == self.k {
            match self.heap.peek() {
                Some((largest, _)) if order < largest.as_str() => {
                    self.heap.pop();
                }
                _ => return,
            }
        }
        self.heap.push((order.to_owned(), count));
    }

    fn into_sorted(self) -> Vec<(String, u64)> {
        self.heap.into_sorted_vec()
    }
}

/// `GET /v1/registries/{id}/deliveries?status=&limit=&after=`: one row per
/// order with postings for the registry (deleted registries included:
/// their postings stay), by order id.
pub(super) async fn deliveries(
    State(st): State<AdminState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = parse_page_query(raw.as_deref())?;
    if !token_ok(&id) {
        return Err(ApiError::not_found(format!(
            "registry {id:?} does not exist"
        )));
    }
    // A registry that is gone (or never was) is read the long way, which
    // tells the two apart.
    if let Some(status) = q.status.filter(|s| INDEXED.contains(s))
        && st.store().get(&id).await?.is_some()
        && let Some(index) = DeliveryIndex::existing(st.js())
            .await
            .map_err(|e| nats_err("opening the dead-letter index", e))?
    {
        return indexed_deliveries(&st, &index, &id, status, &q).await;
    }
    let ledger = st
        .js()
        .get_stream(LEDGER_STREAM)
        .await
        .map_err(|e| nats_err("opening LEDGER", e))?;
    // Only the first orders after `after` are ever examined (at most
    // DELIVERIES_SCAN_MAX + 1, see below), so only those are kept while
    // the registry's subjects are read: a page's memory does not grow with
    // the registry's number of orders.
    let mut subjects = ledger
        .info_with_subjects(format!("ledger.postings.{id}.*"))
        .await
        .map_err(|e| nats_err("listing postings", e))?;
    let mut first = FirstOrders::new(q.after.clone(), DELIVERIES_SCAN_MAX + 1);
    while let Some((subject, count)) = subjects
        .try_next()
        .await
        .map_err(|e| nats_err("listing postings", e))?
    {
        if let Some((_, _, o)) = crate::streams::subjects::parse_order_subject(&subject) {
            first.offer(o, count as u64);
        }
    }
    if first.seen == 0 && st.store().get(&id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "registry {id:?} does not exist and has no postings"
        )));
    }
    let orders = first.into_sorted();
    let mut rows = Vec::new();
    let mut next_after = None;
    for (i, (order, count)) in orders.iter().enumerate() {
        if rows.len() == q.limit || i == DELIVERIES_SCAN_MAX {
            // More remain: continue after the last one examined (i ≥ 1:
            // the limit is at least 1).
            next_after = orders.get(i.wrapping_sub(1)).map(|(o, _)| o.clone());
            break;
        }
        let progress = Progress::load(&ledger, &id, order)
            .await
            .map_err(|e| nats_err("reading delivery state", e))?;
        let row = OrderDeliveries::new(&progress, *count);
        if q.status.is_none_or(|s| s == row.status) {
            rows.push(row);
        }
    }
    Ok(Json(json!({
        "registry_id": id,
        "status": q.status,
        "deliveries": rows,
        "next_after": next_after,
    })))
}

/// A deliveries page of dead or retrying orders, from the dead-letter index:
/// only the orders it names are read, each checked against LEDGER.
async fn indexed_deliveries(
    st: &AdminState,
    index: &DeliveryIndex,
    id: &str,
    status: DeliveryStatus,
    q: &PageQuery,
) -> Result<Json<Value>, ApiError> {
    let pairs = index
        .pairs(status, Some(id))
        .await
        .map_err(|e| nats_err("reading the dead-letter index", e))?;
    let mut rows = Vec::new();
    let mut next_after = None;
    let mut last_examined = None;
    for pair in pairs
        .into_iter()
        .filter(|(_, o)| q.after.as_ref().is_none_or(|a| o > a))
    {
        if rows.len() == q.limit {
            next_after = last_examined;
            break;
        }
        last_examined = Some(pair.1.clone());
        rows.extend(
            check_pairs(st.js(), vec![pair], Some(status), |_, _| {})
                .await
                .map_err(|e| nats_err("reading delivery state", e))?,
        );
    }
    Ok(Json(json!({
        "registry_id": id,
        "status": status,
        "deliveries": rows,
        "next_after": next_after,
    })))
}

/// `POST /v1/registries/{id}/orders/{order_id}/redeliver`: 202 when the
/// dispatcher will resend the dead-lettered posting (same key, same body)
/// and release what it held.
pub(super) async fn redeliver(
    State(st): State<AdminState>,
    Path((id, order_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let outcome = redeliver_order(&st, &id, &order_id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!(outcome))))
}

/// Requests the redelivery of order `order_id`'s dead letter at registry
/// `id` (the API's and the console's redeliver): the outcome when one was
/// requested, else the error saying why not.
pub(super) async fn redeliver_order(
    st: &AdminState,
    id: &str,
    order_id: &str,
) -> Result<RedeliverOutcome, ApiError> {
    if !token_ok(id) {
        return Err(ApiError::invalid("id", "must be a registry id"));
    }
    if OrderId::parse(order_id).is_none() {
        return Err(ApiError::invalid(
            "order_id",
            "must match [A-Za-z0-9_-]{1,128}",
        ));
    }
    match request_redeliver(st.js(), id, order_id).await {
        Ok(outcome @ RedeliverOutcome::Requested { .. }) => {
            tracing::info!(registry_id = %id, order_id = %order_id, "redelivery requested over the admin API");
            Ok(outcome)
        }
        Ok(RedeliverOutcome::NotDead { status }) => Err(ApiError::conflict(format!(
            "order {order_id} is not dead-lettered at {id} (status: {}); nothing to redeliver",
            status.as_str()
        ))),
        Ok(RedeliverOutcome::Unsendable { seq, reason }) => Err(ApiError::conflict(format!(
            "posting {seq} of order {order_id} at {id} cannot be sent ({reason}); \
             a redelivery would fail the same way (run `ledgerline verify`)"
        ))),
        Ok(RedeliverOutcome::Unknown) => Err(ApiError::not_found(format!(
            "registry {id} has no postings for order {order_id}"
        ))),
        Err(StatusError::BadId(bad)) => Err(ApiError::invalid(
            if bad == id { "id" } else { "order_id" },
            format!("{bad:?} is not a valid id"),
        )),
        Err(e) => Err(nats_err("requesting the redelivery", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deliveries_page_keeps_only_the_first_orders_after_its_cursor() {
        // 100,000 orders offered in a scrambled order; 10 kept.
        let ids: Vec<String> = (0..100_000u64)
            .map(|i| format!("o{:06}", (i * 7_919) % 100_000))
            .collect();
        let mut first = FirstOrders::new(Some("o049999".to_owned()), 10);
        for (i, id) in ids.iter().enumerate() {
            first.offer(id, i as u64);
            assert!(first.heap.len() <= 10);
        }
        assert_eq!(first.seen, 100_000);
        let got: Vec<String> = first.into_sorted().into_iter().map(|(o, _)| o).collect();
        let want: Vec<String> = (50_000..50_010).map(|i| format!("o{i:06}")).collect();
        assert_eq!(got, want);
        // Without a cursor: the first ones overall; fewer than k: all.
        let mut all = FirstOrders::new(None, 5);
        for id in ["c", "a", "e", "b", "d", "f"] {
            all.offer(id, 1);
        }
        let got: Vec<String> = all.into_sorted().into_iter().map(|(o, _)| o).collect();
        assert_eq!(got, ["a", "b", "c", "d", "e"]);
        let mut few = FirstOrders::new(Some("a".to_owned()), 5);
        for id in ["a", "c", "b"] {
            few.offer(id, 1);
        }
        assert_eq!(
            few.into_sorted(),
            [("b".to_owned(), 1), ("c".to_owned(), 1)]
        );
    }
    use crate::dispatcher::state::LastDelivery;
    use crate::events::EventType;
    use crate::posting::Posting;
    use crate::records::AttemptOutcome;
    use crate::registry::PostingMode;
    use time::macros::datetime;
    use uuid::Uuid;

    fn stored(seq: u64) -> StoredPosting {
        StoredPosting {
            source_seq: seq,
            previous_subject_seq: 0,
            posting: Posting {
                registry_id: "books".into(),
                order_id: OrderId::parse("o-1").expect("a valid order id"),
                seq,
                idempotency_key: Uuid::from_u128(seq.into()),
                event_id: format!("e-{seq}"),
                event_type: EventType::OrderUpdated,
                occurred_at: datetime!(2026-11-22 10:00:00 UTC),
                mode: PostingMode::Delta,
                currency: None,
                filtered: false,
                entries: vec![],
                cumulative: vec![],
            },
        }
    }

    /// Posting 1 delivered, posting 2's last attempt `outcome`.
    fn progress(outcome: AttemptOutcome) -> (Progress, SeqDeliveries) {
        let record: DeliveryRecord = serde_json::from_value(json!({
            "registry_id": "books", "order_id": "o-1", "seq": 2,
            "idempotency_key": Uuid::from_u128(2), "attempt": 3, "outcome": outcome,
            "http_status": 503, "error": "HTTP 503", "duration_ms": 5,
            "next_attempt_at": "2026-11-22T10:05:00Z", "at": "2026-11-22T10:00:00Z",
        }))
        .expect("a valid delivery record");
        let mut records = SeqDeliveries::default();
        records.apply(&record);
        let p = Progress {
            registry_id: "books".into(),
            order_id: "o-1".into(),
            delivered_seq: 1,
            registry_data: json!({}),
            registry_data_stream_seq: 0,
            delivered_posting_stream_seq: 0,
            last_delivery: Some(LastDelivery {
                round_attempt: 3,
                round_started_at: record.at,
                record,
                stream_seq: 9,
            }),
        };
        (p, records)
    }

    fn delivery(p: &Progress, records: &SeqDeliveries, seq: u64) -> Value {
        let at = datetime!(2026-11-22 10:00:00 UTC);
        posting_view(&stored(seq), seq, at, p, &records.get(seq))["delivery"].clone()
    }

    #[test]
    fn a_retrying_posting_shows_its_last_attempt_and_when_the_next_is_due() {
        let (p, records) = progress(AttemptOutcome::Retrying);
        assert_eq!(
            delivery(&p, &records, 2),
            json!({"status": "retrying", "attempts": 3, "delivered_at": null,
                "http_status": 503, "last_error": "HTTP 503",
                "next_attempt_at": "2026-11-22T10:05:00Z"})
        );
        assert_eq!(delivery(&p, &records, 3)["status"], "pending");
        assert_eq!(
            delivery(&p, &records, 1),
            json!({"status": "delivered", "attempts": 0, "delivered_at": null,
                "http_status": null, "last_error": null, "next_attempt_at": null}),
            "posting 1's records are not in this view's records"
        );
    }

    #[test]
    fn postings_behind_a_dead_letter_are_held_and_no_next_attempt_is_shown() {
        let (p, records) = progress(AttemptOutcome::Dead);
        let dead = delivery(&p, &records, 2);
        assert_eq!(
            (&dead["status"], &dead["next_attempt_at"]),
            (&json!("dead"), &Value::Null)
        );
        assert_eq!(delivery(&p, &records, 3)["status"], "held");
        let view = registry_view(
            "books",
            None,
            &p,
            &[(stored(2), 2, datetime!(2026-11-22 10:00:00 UTC))],
            Some(&records),
        );
        assert_eq!(view["registry"], json!({"exists": false, "enabled": false}));
        assert_eq!(view["delivery"]["status"], "dead");
    }
}
