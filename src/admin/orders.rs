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

use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::AdminState;
use super::error::ApiError;
use crate::dispatcher::state::{Current, OrderDeliveries, Progress, Status};
use crate::dispatcher::status::{RedeliverOutcome, StatusError, request_redeliver};
use crate::events::{OrderId, parse_event};
use crate::ledger::derive;
use crate::money::rate_text;
use crate::order::OrderState;
use crate::records::{AttemptOutcome, DeliveryRecord, StoredPosting};
use crate::streams::{LEDGER_STREAM, ORDERS_STREAM};

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

fn rfc3339(t: OffsetDateTime) -> String {
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

/// Messages asked for in one batched Direct Get.
pub const DIRECT_GET_BATCH: usize = 256;
/// Longest wait for the next reply of a Direct Get.
pub const DIRECT_GET_TIMEOUT: Duration = Duration::from_secs(5);

/// A stored message as a Direct Get returns it.
struct Raw {
    seq: u64,
    subject: String,
    time: OffsetDateTime,
    payload: bytes::Bytes,
}

/// Every message of `stream` on a subject filter (wildcards allowed), in
/// stream order, at most `max`; and whether more were left. Read with
/// batched Direct Gets (ADR-31: `{"seq", "batch", "next_by_subj"}`, a page
/// of messages then an end-of-batch marker), so an order with hundreds of
/// postings costs a few round trips, not hundreds; a server without batch
/// support answers one message per request and is read one at a time.
async fn read_subject(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    max: usize,
) -> Result<(Vec<Raw>, bool), ApiError> {
    let what = format!("reading {filter}");
    let mut out: Vec<Raw> = Vec::new();
    let mut from = 1;
    'pages: loop {
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| nats_err(&what, e))?;
        // One more than wanted, to tell "exactly max" from "more".
        let batch = (max + 1 - out.len()).min(DIRECT_GET_BATCH);
        let request = json!({"seq": from, "next_by_subj": filter, "batch": batch}).to_string();
        client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{stream}"),
                inbox,
                request.into(),
            )
            .await
            .map_err(|e| nats_err(&what, e))?;
        loop {
            let msg = tokio::time::timeout(DIRECT_GET_TIMEOUT, replies.next())
                .await
                .map_err(|_| nats_err(&what, "no reply (is allow_direct on?)"))?
                .ok_or_else(|| nats_err(&what, "the connection closed"))?;
            let header = |name: &str| {
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            match msg.status.map(|s| s.as_u16()) {
                Some(404) => return Ok((out, false)),
                // End of batch; the server says how many are left.
                Some(204) => {
                    let pending: u64 = header("Nats-Num-Pending")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    match out.last() {
                        Some(last) if pending > 0 => {
                            from = last.seq + 1;
                            continue 'pages;
                        }
                        _ => return Ok((out, false)),
                    }
                }
                None | Some(200) => {}
                Some(code) => {
                    return Err(nats_err(
                        &what,
                        format!("status {code} {}", msg.description.as_deref().unwrap_or("")),
                    ));
                }
            }
            let seq: u64 = header("Nats-Sequence")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| nats_err(&what, "a reply without Nats-Sequence"))?;
            let time = header("Nats-Time-Stamp")
                .and_then(|t: String| {
                    OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
                })
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            out.push(Raw {
                seq,
                subject: header("Nats-Subject").unwrap_or_default(),
                time,
                payload: msg.payload.clone(),
            });
            if out.len() > max {
                out.truncate(max);
                return Ok((out, true));
            }
            if header("Nats-Num-Pending").is_none() {
                // No batch support: one message per request.
                from = seq + 1;
                continue 'pages;
            }
        }
    }
}

/// What the delivery records say about one posting.
#[derive(Default)]
struct PostingAttempts {
    attempts: u32,
    last: Option<DeliveryRecord>,
    delivered_at: Option<OffsetDateTime>,
}

/// `GET /v1/orders/{order_id}/ledger`.
pub(super) async fn ledger(
    State(st): State<AdminState>,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let order = OrderId::parse(&order_id)
        .ok_or_else(|| ApiError::invalid("order_id", "must match [A-Za-z0-9_-]{1,128}"))?;
    let js = st.js();
    let ledger_stream = js
        .get_stream(LEDGER_STREAM)
        .await
        .map_err(|e| nats_err("opening LEDGER", e))?;

    // 1. The order's events, folded as the aggregator folds them.
    let subject = format!("{}.{}", st.subject_prefix(), order);
    let (messages, events_truncated) =
        read_subject(st.client(), ORDERS_STREAM, &subject, VIEW_EVENTS_MAX).await?;
    let mut state = OrderState::new(order.clone());
    let mut events = Vec::with_capacity(messages.len());
    for m in &messages {
        let (event_id, event_type, outcome) = match parse_event(&m.payload, Some(order.as_str())) {
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
            "received_at": rfc3339(m.time),
            "event_id": event_id,
            "type": event_type,
        });
        if let (Value::Object(e), Value::Object(o)) = (&mut e, outcome) {
            e.extend(o);
        }
        events.push(e);
    }

    // 2. Its ledger now.
    let ledger_view = match state.currency {
        None => Value::Null,
        Some(currency) => {
            let l = derive(&state, st.ledger_options()).map_err(|bug| {
                tracing::error!(order_id = %order, error = %bug, "ledger invariant broken in the admin view");
                ApiError::internal(bug.to_string())
            })?;
            let (debit, credit) = l.sums();
            let f = |d| currency.format(d);
            json!({
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
                "entries": l.entries.iter().map(|e| {
                    let mut v = json!({
                        "entry_type": e.entry_type.as_str(),
                        "description": e.description,
                        "quantity": e.quantity,
                        "debit": f(e.debit()),
                        "credit": f(e.credit()),
                    });
                    let d = &e.dims;
                    let dims = [
                        ("channel", d.channel.clone()), ("product_id", d.product_id.clone()),
                        ("option_id", d.option_id.clone()), ("unit_type", d.unit_type.clone()),
                        ("tax_rate", d.tax_rate.map(rate_text)),
                        ("payment_method", d.payment_method.clone()), ("fee_kind", d.fee_kind.clone()),
                    ];
                    if let Value::Object(m) = &mut v {
                        for (k, val) in dims {
                            if let Some(val) = val {
                                m.insert(k.into(), Value::String(val));
                            }
                        }
                    }
                    v
                }).collect::<Vec<_>>(),
            })
        }
    };

    // 3. Every posting of the order, per registry.
    let (posting_msgs, postings_truncated) = read_subject(
        st.client(),
        LEDGER_STREAM,
        &format!("ledger.postings.*.{order}"),
        VIEW_POSTINGS_MAX,
    )
    .await?;
    let mut by_registry: BTreeMap<String, Vec<(StoredPosting, u64, OffsetDateTime)>> =
        BTreeMap::new();
    for m in posting_msgs {
        let sp: StoredPosting = serde_json::from_slice(&m.payload).map_err(|e| {
            tracing::error!(subject = %m.subject, stream_seq = m.seq, error = %e, "unreadable posting");
            ApiError::internal(format!(
                "the posting at {} #{} is unreadable: {e}",
                m.subject, m.seq
            ))
        })?;
        by_registry
            .entry(sp.posting.registry_id.clone())
            .or_default()
            .push((sp, m.seq, m.time));
    }
    if messages.is_empty() && by_registry.is_empty() {
        return Err(ApiError::not_found(format!(
            "order {order} has no events and no postings"
        )));
    }

    // 4. Delivery attempts per posting.
    let (records, _) = read_subject(
        st.client(),
        LEDGER_STREAM,
        &format!("ledger.deliveries.*.{order}"),
        VIEW_DELIVERY_RECORDS_MAX,
    )
    .await?;
    let mut attempts: HashMap<(String, u64), PostingAttempts> = HashMap::new();
    for m in records {
        let Ok(r) = serde_json::from_slice::<DeliveryRecord>(&m.payload) else {
            continue;
        };
        let a = attempts.entry((r.registry_id.clone(), r.seq)).or_default();
        a.attempts = a.attempts.max(r.attempt);
        if r.outcome == AttemptOutcome::Delivered {
            a.delivered_at = Some(r.at);
        }
        a.last = Some(r);
    }

    // 5. Per registry: where delivery stands, then each posting.
    let set = st.registries().borrow().clone();
    let mut registries = Vec::new();
    for (registry_id, postings) in &by_registry {
        let progress = Progress::load(&ledger_stream, registry_id, order.as_str())
            .await
            .map_err(|e| nats_err("reading delivery state", e))?;
        let count = postings
            .iter()
            .map(|(sp, ..)| sp.posting.seq)
            .max()
            .unwrap_or(0);
        let summary = OrderDeliveries::new(&progress, count);
        let current = progress.current();
        let registry = set.get(registry_id);
        let posting_views: Vec<Value> = postings
            .iter()
            .map(|(sp, stream_seq, posted_at)| {
                let p = &sp.posting;
                let status = if p.seq <= progress.delivered_seq {
                    "delivered"
                } else if p.seq == progress.next_seq() {
                    match current {
                        Current::Fresh => "pending",
                        Current::Retrying { .. } => "retrying",
                        Current::Dead { .. } => "dead",
                    }
                } else if matches!(current, Current::Dead { .. }) {
                    "held"
                } else {
                    "pending"
                };
                let a = attempts.get(&(registry_id.clone(), p.seq));
                let last = a.and_then(|a| a.last.as_ref());
                let body = p.body(&Value::Null);
                json!({
                    "seq": p.seq,
                    "idempotency_key": p.idempotency_key,
                    "event_id": p.event_id,
                    "event_type": p.event_type,
                    "occurred_at": rfc3339(p.occurred_at),
                    "posted_at": rfc3339(*posted_at),
                    "stream_seq": stream_seq,
                    "mode": p.mode,
                    "filtered": p.filtered,
                    "delivery": {
                        "status": status,
                        "attempts": a.map_or(0, |a| a.attempts),
                        "delivered_at": a.and_then(|a| a.delivered_at).map(rfc3339),
                        "http_status": last.and_then(|r| r.http_status),
                        "last_error": last.and_then(|r| r.error.clone()),
                        "next_attempt_at": last.and_then(|r| r.next_attempt_at).filter(|_| status == "retrying").map(rfc3339),
                    },
                    "ledger_entries": serde_json::to_value(body.ledger_entries).unwrap_or(Value::Null),
                })
            })
            .collect();
        registries.push(json!({
            "registry_id": registry_id,
            "registry": match registry {
                Some(r) => json!({"exists": true, "enabled": r.config.enabled, "name": r.config.name}),
                None => json!({"exists": false, "enabled": false}),
            },
            "delivery": summary,
            "registry_data": progress.registry_data,
            "postings": posting_views,
        }));
    }

    Ok(Json(json!({
        "order_id": order,
        "events": events,
        "events_truncated": events_truncated,
        "ledger": ledger_view,
        "registries": registries,
        "postings_truncated": postings_truncated,
    })))
}

/// The query of a deliveries page.
struct PageQuery {
    status: Option<Status>,
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
                    "pending" => Status::Pending,
                    "delivered" => Status::Delivered,
                    "retrying" => Status::Retrying,
                    "dead" => Status::Dead,
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
    let ledger = st
        .js()
        .get_stream(LEDGER_STREAM)
        .await
        .map_err(|e| nats_err("opening LEDGER", e))?;
    let mut orders: Vec<(String, u64)> = ledger
        .info_with_subjects(format!("ledger.postings.{id}.*"))
        .await
        .map_err(|e| nats_err("listing postings", e))?
        .try_collect::<Vec<(String, usize)>>()
        .await
        .map_err(|e| nats_err("listing postings", e))?
        .into_iter()
        .filter_map(|(subject, count)| {
            let (_, _, o) = crate::streams::subjects::parse_order_subject(&subject)?;
            Some((o.to_owned(), count as u64))
        })
        .collect();
    if orders.is_empty() && st.store().get(&id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "registry {id:?} does not exist and has no postings"
        )));
    }
    orders.sort();
    let start = match &q.after {
        Some(after) => orders.partition_point(|(o, _)| o.as_str() <= after.as_str()),
        None => 0,
    };
    let mut rows = Vec::new();
    let mut next_after = None;
    for (i, (order, count)) in orders.iter().enumerate().skip(start) {
        if rows.len() == q.limit || i - start == DELIVERIES_SCAN_MAX {
            // More remain: continue after the last one examined.
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

/// `POST /v1/registries/{id}/orders/{order_id}/redeliver`: 202 when the
/// dispatcher will resend the dead-lettered posting (same key, same body)
/// and release what it held.
pub(super) async fn redeliver(
    State(st): State<AdminState>,
    Path((id, order_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !token_ok(&id) {
        return Err(ApiError::invalid("id", "must be a registry id"));
    }
    if OrderId::parse(&order_id).is_none() {
        return Err(ApiError::invalid(
            "order_id",
            "must match [A-Za-z0-9_-]{1,128}",
        ));
    }
    match request_redeliver(st.js(), &id, &order_id).await {
        Ok(outcome @ RedeliverOutcome::Requested { .. }) => {
            tracing::info!(registry_id = %id, order_id = %order_id, "redelivery requested over the admin API");
            Ok((StatusCode::ACCEPTED, Json(json!(outcome))))
        }
        Ok(RedeliverOutcome::NotDead { status }) => Err(ApiError::conflict(format!(
            "order {order_id} is not dead-lettered at {id} (status: {}); nothing to redeliver",
            status.as_str()
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
