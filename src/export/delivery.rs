//! Delivery state of a posting, joined from `ledger.deliveries.<R>.<O>`.
//!
//! The dispatcher appends one [`DeliveryRecord`] per attempt to the subject of
//! the (registry, order), in attempt order, and delivers strictly FIFO per
//! (registry, order). So everything the export needs about every posting of
//! an order is on one subject: [`fetch_order`] reads it with the batched
//! Direct Get client ([`crate::streams::direct`]), and folds the records into
//! a small per-seq summary ([`SeqDeliveries`], the one fold in
//! [`crate::records`]). The records themselves are never kept.
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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::fifo::FifoMap;
use crate::records::DeliveryRecord;
use crate::records::{SeqDeliveries, SeqDelivery};
use crate::streams::direct::{DirectGet, SharedInbox};
use crate::streams::{LEDGER_STREAM, subjects};

use super::ExportError;

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

/// The cache key of (registry, order): both joined by a `.`, which neither
/// contains (registry ids and order ids are `[A-Za-z0-9_-]`), so it is
/// one-to-one; one allocation shared by the map and the eviction queue.
fn order_key(registry: &str, order: &str) -> Arc<str> {
    Arc::from(format!("{registry}.{order}"))
}

/// Summaries of recently seen orders, bounded, evicted first in first out.
#[derive(Debug)]
pub struct DeliveryCache {
    map: FifoMap<Arc<str>, Arc<SeqDeliveries>>,
}

impl DeliveryCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: FifoMap::with_capacity(capacity.max(1)),
        }
    }

    pub fn get(&self, registry: &str, order: &str) -> Option<Arc<SeqDeliveries>> {
        self.map.get(&*format!("{registry}.{order}")).cloned()
    }

    pub fn insert(&mut self, registry: &str, order: &str, d: Arc<SeqDeliveries>) {
        self.map.insert(order_key(registry, order), d);
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
    /// Every lookup's replies arrive on it (no subscription per order).
    inbox: SharedInbox,
    snapshot_seq: u64,
    cache: Arc<Mutex<DeliveryCache>>,
}

impl DeliveryLookup {
    pub async fn new(client: async_nats::Client, snapshot_seq: u64) -> Result<Self, ExportError> {
        let inbox = SharedInbox::new(&client)
            .await
            .map_err(|source| ExportError::DirectGet {
                subject: subjects::DELIVERIES_ALL.to_owned(),
                source,
            })?;
        Ok(Self {
            client,
            inbox,
            snapshot_seq,
            cache: Arc::new(Mutex::new(DeliveryCache::new(DELIVERY_CACHE_ORDERS))),
        })
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
                let d = Arc::new(
                    fetch_order_on(
                        &self.client,
                        Some(&self.inbox),
                        registry,
                        order,
                        self.snapshot_seq,
                    )
                    .await?,
                );
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

/// Reads every delivery record of (registry, order) up to `snapshot_seq` and
/// folds them into per-seq states.
pub async fn fetch_order(
    client: &async_nats::Client,
    registry: &str,
    order: &str,
    snapshot_seq: u64,
) -> Result<SeqDeliveries, ExportError> {
    fetch_order_on(client, None, registry, order, snapshot_seq).await
}

/// [`fetch_order`], its replies on `inbox` when given.
async fn fetch_order_on(
    client: &async_nats::Client,
    inbox: Option<&SharedInbox>,
    registry: &str,
    order: &str,
    snapshot_seq: u64,
) -> Result<SeqDeliveries, ExportError> {
    let subject = subjects::deliveries(registry, order);
    let mut records = DirectGet::new(client, LEDGER_STREAM, &subject, DIRECT_GET_TIMEOUT)
        .max_bytes(DIRECT_GET_BATCH_BYTES)
        .up_to_seq(snapshot_seq);
    if let Some(inbox) = inbox {
        records = records.shared_inbox(inbox);
    }
    let mut out = SeqDeliveries::default();
    loop {
        let m = match records.next().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(source) => return Err(ExportError::DirectGet { subject, source }),
        };
        let record: DeliveryRecord =
            serde_json::from_slice(m.payload()).map_err(|source| ExportError::Decode {
                stream_seq: m.seq,
                subject: subject.clone(),
                source,
            })?;
        if record.registry_id != registry || record.order_id != order {
            return Err(ExportError::Integrity {
                stream_seq: m.seq,
                message: format!(
                    "delivery record for {}/{} stored on {subject}",
                    record.registry_id, record.order_id
                ),
            });
        }
        out.apply(&record);
    }
    out.shrink_to_fit();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let mut c = DeliveryCache::new(3);
        for i in 0..10 {
            c.insert("r", &format!("o{i}"), Arc::new(SeqDeliveries::default()));
            assert!(c.len() <= 3);
        }
        assert!(c.get("r", "o9").is_some());
        assert!(c.get("r", "o6").is_none());
        // Re-inserting a present key does not grow the eviction queue.
        c.insert("r", "o9", Arc::new(SeqDeliveries::default()));
        assert_eq!(c.map.queued(), 3);
    }
}
