//! Delivery state of a posting, joined from `ledger.deliveries.<R>.<O>`.
//!
//! The dispatcher appends one [`DeliveryRecord`] per attempt to the subject of
//! the (registry, order), in attempt order, and delivers strictly FIFO per
//! (registry, order). So everything the export needs about every posting of
//! an order is on one subject: [`fetch_order`] reads it with one batched
//! JetStream Direct Get (ADR-31: `{"seq", "batch", "next_by_subj"}`, answered
//! by the records and an end-of-batch marker), paging if an order has more
//! than [`DIRECT_GET_BATCH_RECORDS`] attempts, and folds the records into a
//! small per-seq summary ([`OrderDeliveries`]). The records themselves are
//! never kept.
//!
//! Only records at or below the export's snapshot sequence count, so a row's
//! delivery state is the state at the same instant as the postings exported,
//! whatever the dispatcher does meanwhile, and a cached answer is always the
//! same answer as a fresh one.
//!
//! [`DeliveryCache`] keeps the summaries of the most recently seen orders
//! (at most [`DELIVERY_CACHE_ORDERS`]), so the later postings of an order read
//! nearby in the stream cost nothing; older entries are evicted first in,
//! first out. Memory is bounded by the cache, never by the stream.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use time::OffsetDateTime;

use crate::records::{AttemptOutcome, DeliveryRecord};
use crate::streams::{LEDGER_STREAM, subjects};

use super::ExportError;

/// Most delivery records asked for in one Direct Get request. An order with
/// more attempts than this is read in pages.
pub const DIRECT_GET_BATCH_RECORDS: usize = 256;
/// Most bytes of records the server sends for one request (it pages the rest),
/// so one order with huge error excerpts cannot flood the connection.
pub const DIRECT_GET_BATCH_BYTES: usize = 512 * 1024;
/// How long to wait for the next reply of a Direct Get before giving up:
/// far above a loopback or LAN round trip, short enough that a vanished
/// server is reported instead of hanging the export.
pub const DIRECT_GET_TIMEOUT: Duration = Duration::from_secs(30);
/// Orders whose delivery summary is kept. A few hundred bytes each; the
/// postings of one order are usually close together in LEDGER.
pub const DELIVERY_CACHE_ORDERS: usize = 8_192;
/// Most pages read for one order (× [`DIRECT_GET_BATCH_RECORDS`] records):
/// a bound so a corrupt subject cannot keep the export busy forever.
pub const DIRECT_GET_PAGES_MAX: usize = 100_000;

/// Where a posting stands with its receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeliveryStatus {
    /// No attempt recorded yet.
    Pending,
    /// The last attempt succeeded.
    Delivered,
    /// The last attempt failed and another is scheduled.
    Retrying,
    /// Dead-lettered: the last attempt failed for good.
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Dead => "dead",
        }
    }
}

impl From<AttemptOutcome> for DeliveryStatus {
    fn from(o: AttemptOutcome) -> Self {
        match o {
            AttemptOutcome::Delivered => DeliveryStatus::Delivered,
            AttemptOutcome::Retrying => DeliveryStatus::Retrying,
            AttemptOutcome::Dead => DeliveryStatus::Dead,
        }
    }
}

/// The delivery columns of one posting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqDelivery {
    /// The last attempt's outcome, or `Pending` without any.
    pub status: DeliveryStatus,
    /// When the (last) successful attempt ended.
    pub delivered_at: Option<OffsetDateTime>,
    /// Number of attempts recorded.
    pub attempts: u32,
    /// The last attempt's HTTP status, when a response arrived.
    pub http_status: Option<u16>,
}

impl SeqDelivery {
    /// A posting without any attempt.
    pub const PENDING: SeqDelivery = SeqDelivery {
        status: DeliveryStatus::Pending,
        delivered_at: None,
        attempts: 0,
        http_status: None,
    };

    /// Applies the next attempt of this posting.
    pub fn apply(&mut self, r: &DeliveryRecord) {
        self.attempts = self.attempts.saturating_add(1);
        self.status = r.outcome.into();
        self.http_status = r.http_status;
        if r.outcome == AttemptOutcome::Delivered {
            self.delivered_at = Some(r.at);
        }
    }
}

/// Every posting's delivery state for one (registry, order), by seq: a
/// vector sorted by seq (an order has a handful of postings; a map's node
/// would be ten times the size).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderDeliveries {
    by_seq: Vec<(u64, SeqDelivery)>,
}

impl OrderDeliveries {
    /// Folds the next record (in stream order) in.
    pub fn apply(&mut self, r: &DeliveryRecord) {
        let i = match self.by_seq.binary_search_by_key(&r.seq, |(s, _)| *s) {
            Ok(i) => i,
            Err(i) => {
                self.by_seq.insert(i, (r.seq, SeqDelivery::PENDING));
                i
            }
        };
        self.by_seq[i].1.apply(r);
    }

    /// The state of posting `seq`: pending when nothing was recorded.
    pub fn get(&self, seq: u64) -> SeqDelivery {
        match self.by_seq.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(i) => self.by_seq[i].1,
            Err(_) => SeqDelivery::PENDING,
        }
    }

    fn shrink(&mut self) {
        self.by_seq.shrink_to_fit();
    }
}

/// The cache key of (registry, order): both joined by a `.`, which neither
/// contains (registry ids and order ids are `[A-Za-z0-9_-]`), so it is
/// one-to-one; one allocation shared by the map and the eviction queue.
fn order_key(registry: &str, order: &str) -> Arc<str> {
    Arc::from(format!("{registry}.{order}"))
}

/// Summaries of recently seen orders, bounded, evicted first in first out.
#[derive(Debug)]
pub struct DeliveryCache {
    map: HashMap<Arc<str>, Arc<OrderDeliveries>>,
    order: VecDeque<Arc<str>>,
    capacity: usize,
}

impl DeliveryCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::with_capacity(capacity.max(1) + 1),
            order: VecDeque::with_capacity(capacity.max(1) + 1),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, registry: &str, order: &str) -> Option<Arc<OrderDeliveries>> {
        self.map.get(&*format!("{registry}.{order}")).cloned()
    }

    pub fn insert(&mut self, registry: &str, order: &str, d: Arc<OrderDeliveries>) {
        let key = order_key(registry, order);
        if self.map.insert(key.clone(), d).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Looks up delivery state for postings, through the cache.
#[derive(Debug, Clone)]
pub struct DeliveryLookup {
    client: async_nats::Client,
    snapshot_seq: u64,
    cache: Arc<Mutex<DeliveryCache>>,
}

impl DeliveryLookup {
    pub fn new(client: async_nats::Client, snapshot_seq: u64) -> Self {
        Self {
            client,
            snapshot_seq,
            cache: Arc::new(Mutex::new(DeliveryCache::new(DELIVERY_CACHE_ORDERS))),
        }
    }

    /// The delivery state of posting `seq` of (registry, order).
    pub async fn state(
        &self,
        registry: &str,
        order: &str,
        seq: u64,
    ) -> Result<SeqDelivery, ExportError> {
        // A poisoned lock only means another lookup panicked mid-insert; the
        // cache is a pure optimisation, so its content is still usable.
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(registry, order);
        let d = match cached {
            Some(d) => d,
            None => {
                let d =
                    Arc::new(fetch_order(&self.client, registry, order, self.snapshot_seq).await?);
                self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    registry,
                    order,
                    d.clone(),
                );
                d
            }
        };
        Ok(d.get(seq))
    }
}

/// The Direct Get request of one page: up to a batch of records of `subject`
/// from stream sequence `from_seq` on.
fn direct_get_request(subject: &str, from_seq: u64) -> Bytes {
    let v = serde_json::json!({
        "seq": from_seq,
        "next_by_subj": subject,
        "batch": DIRECT_GET_BATCH_RECORDS,
        "max_bytes": DIRECT_GET_BATCH_BYTES,
    });
    Bytes::from(v.to_string())
}

/// How one page of a batched Direct Get ended.
enum PageEnd {
    /// Nothing more to read for this subject (up to the snapshot).
    Done,
    /// More records follow from this stream sequence.
    MoreFrom(u64),
}

/// Reads every delivery record of (registry, order) up to `snapshot_seq` and
/// folds them into per-seq states.
pub async fn fetch_order(
    client: &async_nats::Client,
    registry: &str,
    order: &str,
    snapshot_seq: u64,
) -> Result<OrderDeliveries, ExportError> {
    let subject = subjects::deliveries(registry, order);
    let mut out = OrderDeliveries::default();
    let mut from_seq = 1;
    for _ in 0..DIRECT_GET_PAGES_MAX {
        match fetch_page(client, &subject, from_seq, snapshot_seq, &mut out).await? {
            PageEnd::Done => {
                out.shrink();
                return Ok(out);
            }
            PageEnd::MoreFrom(next) => from_seq = next,
        }
    }
    Err(ExportError::DirectGet {
        subject,
        message: format!(
            "more than {} pages of delivery records",
            DIRECT_GET_PAGES_MAX
        ),
    })
}

async fn fetch_page(
    client: &async_nats::Client,
    subject: &str,
    from_seq: u64,
    snapshot_seq: u64,
    out: &mut OrderDeliveries,
) -> Result<PageEnd, ExportError> {
    let err = |message: String| ExportError::DirectGet {
        subject: subject.to_owned(),
        message,
    };
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| err(format!("cannot subscribe for replies: {e}")))?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{LEDGER_STREAM}"),
            inbox,
            direct_get_request(subject, from_seq),
        )
        .await
        .map_err(|e| err(format!("cannot send the request: {e}")))?;
    let mut last_seq = None;
    loop {
        let msg = tokio::time::timeout(DIRECT_GET_TIMEOUT, replies.next())
            .await
            .map_err(|_| {
                err(format!(
                    "no reply within {DIRECT_GET_TIMEOUT:?} (is allow_direct on?)"
                ))
            })?
            .ok_or_else(|| err("the connection closed".to_owned()))?;
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        match msg.status.map(|s| s.as_u16()) {
            // Nothing (more) on the subject.
            Some(404) => return Ok(PageEnd::Done),
            // End of batch: the server says how many are left.
            Some(204) => {
                let pending: u64 = header("Nats-Num-Pending")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                return Ok(match last_seq {
                    Some(s) if pending > 0 => PageEnd::MoreFrom(s + 1),
                    _ => PageEnd::Done,
                });
            }
            None | Some(200) => {}
            Some(code) => {
                return Err(err(format!(
                    "status {code} {}",
                    msg.description.as_deref().unwrap_or("")
                )));
            }
        }
        let seq: u64 = header("Nats-Sequence")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| err("a reply without Nats-Sequence".to_owned()))?;
        if seq > snapshot_seq {
            // Written after the snapshot: not part of this export. Records
            // come in stream order, so nothing after it counts either.
            return Ok(PageEnd::Done);
        }
        let record: DeliveryRecord =
            serde_json::from_slice(&msg.payload).map_err(|source| ExportError::Decode {
                stream_seq: seq,
                subject: subject.to_owned(),
                source,
            })?;
        if record.registry_id != subject_part(subject, 2)
            || record.order_id != subject_part(subject, 3)
        {
            return Err(ExportError::Integrity {
                stream_seq: seq,
                message: format!(
                    "delivery record for {}/{} stored on {subject}",
                    record.registry_id, record.order_id
                ),
            });
        }
        out.apply(&record);
        last_seq = Some(seq);
        if header("Nats-Num-Pending").is_none() {
            // A server without batch support answers one record and no
            // end-of-batch marker: ask again from the next sequence.
            return Ok(PageEnd::MoreFrom(seq + 1));
        }
    }
}

/// Token `i` of a dotted subject (empty when absent).
fn subject_part(subject: &str, i: usize) -> &str {
    subject.split('.').nth(i).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use uuid::Uuid;

    /// A record as the dispatcher stores it (built from JSON so that fields
    /// added to the record later do not break this test).
    fn attempt(seq: u64, outcome: AttemptOutcome, status: Option<u16>) -> DeliveryRecord {
        let mut v = serde_json::json!({
            "registry_id": "r", "order_id": "o", "seq": seq,
            "idempotency_key": Uuid::nil(), "attempt": 1, "outcome": outcome,
            "duration_ms": 5, "at": "2026-11-22T10:00:00Z",
        });
        if let Some(s) = status {
            v["http_status"] = s.into();
        }
        serde_json::from_value(v).expect("a valid delivery record")
    }

    #[test]
    fn the_last_attempt_decides_the_status_and_every_attempt_counts() {
        let mut d = OrderDeliveries::default();
        d.apply(&attempt(1, AttemptOutcome::Retrying, Some(503)));
        d.apply(&attempt(1, AttemptOutcome::Retrying, None));
        d.apply(&attempt(1, AttemptOutcome::Delivered, Some(200)));
        d.apply(&attempt(2, AttemptOutcome::Dead, Some(422)));
        let one = d.get(1);
        assert_eq!(one.status, DeliveryStatus::Delivered);
        assert_eq!(one.attempts, 3);
        assert_eq!(one.http_status, Some(200));
        assert_eq!(one.delivered_at, Some(datetime!(2026-11-22 10:00:00 UTC)));
        let two = d.get(2);
        assert_eq!(
            (two.status, two.attempts, two.http_status, two.delivered_at),
            (DeliveryStatus::Dead, 1, Some(422), None)
        );
        assert_eq!(d.get(3), SeqDelivery::PENDING);
    }

    #[test]
    fn a_timed_out_last_attempt_leaves_http_status_empty() {
        let mut s = SeqDelivery::PENDING;
        s.apply(&attempt(1, AttemptOutcome::Retrying, Some(500)));
        s.apply(&attempt(1, AttemptOutcome::Retrying, None));
        assert_eq!(s.http_status, None);
        assert_eq!(s.attempts, 2);
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let mut c = DeliveryCache::new(3);
        for i in 0..10 {
            c.insert("r", &format!("o{i}"), Arc::new(OrderDeliveries::default()));
            assert!(c.len() <= 3);
        }
        assert!(c.get("r", "o9").is_some());
        assert!(c.get("r", "o6").is_none());
        // Re-inserting a present key does not grow the eviction queue.
        c.insert("r", "o9", Arc::new(OrderDeliveries::default()));
        assert_eq!(c.order.len(), 3);
    }
}
