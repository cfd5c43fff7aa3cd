//! Snapshots of order state, so rebuilding a long-lived order's book
//! replays only what came after its latest snapshot.
//!
//! The aggregator rebuilds a book it does not hold (after a restart, an
//! eviction from its cache, a partition handed over) by replaying the
//! order's events from ORDERS. nats-server finds an order's next event by
//! reading every message stored between it and the one before (in the
//! blocks that hold the order), so for an order with many events among
//! many others' the replay reads a large part of the stream. Every
//! [`EVERY`] events an order's lane stores its state in the KV bucket
//! [`BUCKET`] (key: the order id; value: [`Snapshot`], JSON): the state
//! after every event of the order up to ORDERS sequence `orders_seq`. A
//! rebuild starts from it and replays the events after it.
//!
//! A snapshot is a cache, never a record: the state after an event depends
//! on the order's events alone (the fold ignores registries and options),
//! so any snapshot of the same ORDERS stream is right for its sequence,
//! whoever wrote it and whenever, and the bucket can be deleted at any
//! time (rebuilds then replay from the start). One is used only when it
//! was written by this format, for this order, on this very stream (its
//! creation time: a stream deleted and created again numbers its events
//! anew) and below the event the book is rebuilt for ([`usable`]).
//! Writes are not awaited; one that fails leaves the previous snapshot.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream::Stream};
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::events::OrderId;
use crate::order::OrderState;

/// The KV bucket of order snapshots.
pub const BUCKET: &str = "ledgerline_books";
/// Events handled between two snapshots of an order: orders with fewer
/// never get one (their replay is short), and a rebuild replays fewer than
/// this many events after the snapshot.
pub const EVERY: u32 = 64;
/// A snapshot larger than this is not stored (a state with thousands of
/// applied event ids); the order is replayed from its start instead.
pub const MAX_BYTES: usize = 512 * 1024;
/// The format written, and the only one read.
pub const FORMAT: u32 = 1;
/// How long the bucket keeps a snapshot (its `max_age` when created): an
/// order idle for longer is rebuilt from its start, and the bucket does not
/// grow with every long-lived order there ever was.
pub const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a rebuild waits for the snapshot before replaying without it.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One order's state after its events up to `orders_seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    /// ORDERS's creation time (RFC 3339), naming the stream's incarnation.
    pub orders_created: String,
    /// The ORDERS sequence of the last event folded into `state`.
    pub orders_seq: u64,
    pub state: OrderState,
}

/// The state and sequence a rebuild of `order` before ORDERS sequence
/// `before` may start from, if `snapshot` is one it may use.
pub fn usable(
    snapshot: Snapshot,
    orders_created: &str,
    order: &OrderId,
    before: u64,
) -> Option<(u64, OrderState)> {
    (snapshot.format == FORMAT
        && snapshot.orders_created == orders_created
        && snapshot.state.order_id == *order
        && snapshot.orders_seq > 0
        && snapshot.orders_seq < before)
        .then_some((snapshot.orders_seq, snapshot.state))
}

/// The bucket, open, and the ORDERS incarnation snapshots are taken of.
#[derive(Debug, Clone)]
pub struct Snapshots {
    kv: kv::Store,
    orders_created: String,
}

impl Snapshots {
    /// Opens the bucket, creating it (file storage, `replicas`, one value
    /// per key, kept [`KEEP`]) when it is missing; an existing bucket is
    /// used as it is.
    pub async fn open(
        js: &jetstream::Context,
        orders: &Stream,
        replicas: usize,
    ) -> Result<Self, async_nats::Error> {
        let config = kv::Config {
            bucket: BUCKET.to_owned(),
            description: "ledgerline: order state snapshots (a cache: may be deleted)".to_owned(),
            history: 1,
            max_age: KEEP,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas.max(1),
            ..Default::default()
        };
        let kv = crate::streams::settings::open_bucket(js, config).await?;
        Ok(Snapshots {
            kv,
            orders_created: created(orders),
        })
    }

    /// Stores `state` (after ORDERS sequence `orders_seq`) as `order`'s
    /// snapshot, without waiting; one over [`MAX_BYTES`] is not stored.
    pub fn save(&self, order: &OrderId, orders_seq: u64, state: &OrderState) {
        let snapshot = SnapshotRef {
            format: FORMAT,
            orders_created: &self.orders_created,
            orders_seq,
            state,
        };
        let bytes = match serde_json::to_vec(&snapshot) {
            Ok(bytes) if bytes.len() <= MAX_BYTES => bytes,
            Ok(bytes) => {
                debug!(order_id = %order, size = bytes.len(), "order snapshot too large; not stored");
                metrics::counter!("ledgerline_book_snapshots_total", "outcome" => "too_large")
                    .increment(1);
                return;
            }
            Err(e) => {
                debug!(order_id = %order, error = %e, "order snapshot not encoded");
                return;
            }
        };
        let (kv, key) = (self.kv.clone(), order.as_str().to_owned());
        tokio::spawn(async move {
            let outcome = match kv.put(&key, bytes.into()).await {
                Ok(_) => "stored",
                Err(e) => {
                    debug!(order_id = %key, error = %e, "order snapshot not stored");
                    "failed"
                }
            };
            metrics::counter!("ledgerline_book_snapshots_total", "outcome" => outcome).increment(1);
        });
    }

    /// The snapshot a rebuild of `order` before ORDERS sequence `before`
    /// may start from; `None` when there is none it may use, or it cannot
    /// be read (the rebuild then replays every event).
    pub async fn load(&self, order: &OrderId, before: u64) -> Option<(u64, OrderState)> {
        let entry = match tokio::time::timeout(READ_TIMEOUT, self.kv.get(order.as_str())).await {
            Ok(Ok(entry)) => entry?,
            Ok(Err(e)) => {
                debug!(order_id = %order, error = %e, "order snapshot not read");
                return None;
            }
            Err(_) => {
                debug!(order_id = %order, "order snapshot not read in time");
                return None;
            }
        };
        let snapshot: Snapshot = match serde_json::from_slice(&entry) {
            Ok(s) => s,
            Err(e) => {
                debug!(order_id = %order, error = %e, "order snapshot unreadable; ignored");
                return None;
            }
        };
        usable(snapshot, &self.orders_created, order, before)
    }
}

/// [`Snapshot`] borrowing the state, for writing.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    format: u32,
    orders_created: &'a str,
    orders_seq: u64,
    state: &'a OrderState,
}

/// A stream's creation time, RFC 3339 (empty if it cannot be formatted).
fn created(stream: &Stream) -> String {
    stream
        .cached_info()
        .created
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str) -> OrderId {
        OrderId::parse(id).expect("a valid order id")
    }

    fn snapshot(id: &str, seq: u64) -> Snapshot {
        let mut state = OrderState::new(order(id));
        state.version = Some(7);
        Snapshot {
            format: FORMAT,
            orders_created: "2026-11-29T10:00:00Z".to_owned(),
            orders_seq: seq,
            state,
        }
    }

    #[test]
    fn a_snapshot_below_the_event_of_this_order_and_stream_is_used() {
        let (seq, state) = usable(
            snapshot("o-1", 40),
            "2026-11-29T10:00:00Z",
            &order("o-1"),
            41,
        )
        .expect("usable");
        assert_eq!((seq, state.version), (40, Some(7)));
    }

    #[test]
    fn a_snapshot_of_another_order_stream_format_or_later_event_is_not() {
        let created = "2026-11-29T10:00:00Z";
        let o = order("o-1");
        // At or after the event the book is rebuilt for: it already holds it.
        assert!(usable(snapshot("o-1", 41), created, &o, 41).is_none());
        assert!(usable(snapshot("o-1", 90), created, &o, 41).is_none());
        // ORDERS deleted and created again: its sequences mean other events.
        assert!(usable(snapshot("o-1", 40), "2026-11-30T00:00:00Z", &o, 41).is_none());
        // Another order's state under this key.
        assert!(usable(snapshot("o-2", 40), created, &o, 41).is_none());
        // Another format.
        let mut other = snapshot("o-1", 40);
        other.format = FORMAT + 1;
        assert!(usable(other, created, &o, 41).is_none());
        // Sequence 0 names no event.
        assert!(usable(snapshot("o-1", 0), created, &o, 41).is_none());
    }

    #[test]
    fn what_is_written_reads_back_as_the_same_snapshot() {
        let s = snapshot("o-1", 40);
        let bytes = serde_json::to_vec(&SnapshotRef {
            format: s.format,
            orders_created: &s.orders_created,
            orders_seq: s.orders_seq,
            state: &s.state,
        })
        .unwrap();
        let back: Snapshot = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, s);
    }
}
