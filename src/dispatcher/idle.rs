//! The delivery state of orders whose worker ended caught up, kept so the
//! next wake-up of the order does not read it back from LEDGER.
//!
//! A worker reads an order's [`Progress`] from LEDGER when it starts (two
//! Direct Gets) and keeps it in memory while it owns the order. When it
//! ends caught up, what it holds is exactly what LEDGER holds: only the
//! registry's workers write those subjects, one worker per order at a time,
//! each write acknowledged before the state moves, and only while this
//! process holds the lease (a lost lease stops the dispatcher, and this
//! cache with it). The next worker of the order takes it (once: a taken
//! entry is gone) instead of reading LEDGER.
//!
//! Should it ever be stale all the same, nothing goes wrong: the next
//! registry_data write is guarded by `Nats-Expected-Last-Subject-Sequence`
//! and refused, and the worker then re-reads LEDGER; the body of a posting
//! depends only on the stored registry_data of the one before, so a stale
//! state can at worst send a posting again with its same key and body
//! (the same argument as a lagging replica's read, see [`super::state`]).
//!
//! Bounded: at most [`IDLE_ORDERS_MAX`] orders per registry (the one kept
//! longest ago forgotten first; an order put again is as new as its last
//! put), and an order whose registry_data is larger than
//! [`IDLE_REGISTRY_DATA_MAX_BYTES`] is not kept (it is read back instead).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::state::Progress;
use crate::fifo::FifoMap;

/// Orders kept per registry.
pub const IDLE_ORDERS_MAX: usize = 4_096;
/// Largest registry_data kept (estimated), so the cache stays within
/// `IDLE_ORDERS_MAX` × this (16 MiB) per registry whatever receivers answer.
pub const IDLE_REGISTRY_DATA_MAX_BYTES: usize = 4 * 1024;

/// States kept by every registry's cache in this process (see [`kept_orders`]).
static KEPT: AtomicUsize = AtomicUsize::new(0);

/// Caught-up orders' states kept by every registry's cache in this process:
/// at most [`IDLE_ORDERS_MAX`] per registry. `ledgerline bench` reports it
/// after its scale run.
pub fn kept_orders() -> usize {
    KEPT.load(Ordering::Relaxed)
}

/// Caught-up orders' [`Progress`], shared by a registry's workers.
#[derive(Clone)]
pub(crate) struct IdleOrders {
    inner: Arc<Mutex<Inner>>,
}

impl Default for IdleOrders {
    fn default() -> Self {
        IdleOrders {
            inner: Arc::new(Mutex::new(Inner(FifoMap::new(IDLE_ORDERS_MAX)))),
        }
    }
}

/// The states by order id; the one put longest ago is forgotten first.
struct Inner(FifoMap<String, Progress>);

impl Drop for Inner {
    fn drop(&mut self) {
        KEPT.fetch_sub(self.0.len(), Ordering::Relaxed);
    }
}

impl IdleOrders {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain data: valid whatever a panicking holder did.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the kept state of `order_id`, if any (it is gone after).
    pub fn take(&self, order_id: &str) -> Option<Progress> {
        let p = self.lock().0.remove(order_id);
        if p.is_some() {
            KEPT.fetch_sub(1, Ordering::Relaxed);
        }
        p
    }

    /// Keeps `p` (the state of an order whose worker ended caught up), as
    /// the newest put, unless its registry_data is too large.
    pub fn put(&self, p: Progress) {
        if estimated_size(&p.registry_data, IDLE_REGISTRY_DATA_MAX_BYTES)
            > IDLE_REGISTRY_DATA_MAX_BYTES
        {
            return;
        }
        let mut inner = self.lock();
        let before = inner.0.len();
        // Taken out first, so a state put again is as new as its last put.
        inner.0.remove(&p.order_id);
        inner.0.insert(p.order_id.clone(), p);
        let after = inner.0.len();
        if after > before {
            KEPT.fetch_add(after - before, Ordering::Relaxed);
        } else {
            KEPT.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.0.len(), inner.0.queued())
    }
}

/// A cheap upper estimate of `v`'s JSON size, stopping once past `limit`.
fn estimated_size(v: &Value, limit: usize) -> usize {
    let mut total = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total += match v {
            Value::Null | Value::Bool(_) | Value::Number(_) => 24,
            // Escaping can at most sextuple a string.
            Value::String(s) => 6 * s.len() + 2,
            Value::Array(a) => {
                stack.extend(a.iter());
                2 + a.len()
            }
            Value::Object(o) => {
                for (k, v) in o {
                    total += 6 * k.len() + 4;
                    stack.push(v);
                }
                2
            }
        };
        if total > limit {
            return total;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn progress(order: &str, delivered: u64, registry_data: Value) -> Progress {
        Progress {
            registry_id: "r".into(),
            order_id: order.into(),
            delivered_seq: delivered,
            registry_data,
            registry_data_stream_seq: delivered * 10,
            delivered_posting_stream_seq: delivered * 10 - 1,
            last_delivery: None,
        }
    }

    #[test]
    fn a_kept_state_is_taken_once() {
        let idle = IdleOrders::default();
        idle.put(progress("o1", 3, json!({"journal_id": "J-1"})));
        let p = idle.take("o1").expect("kept");
        assert_eq!(p.delivered_seq, 3);
        assert_eq!(idle.take("o1"), None, "taken once");
        assert_eq!(idle.take("o2"), None);
    }

    #[test]
    fn a_newer_state_replaces_the_older_one() {
        let idle = IdleOrders::default();
        idle.put(progress("o1", 3, json!({})));
        idle.put(progress("o1", 4, json!({})));
        assert_eq!(idle.take("o1").map(|p| p.delivered_seq), Some(4));
    }

    #[test]
    fn it_is_bounded_in_orders_and_forgets_the_oldest() {
        let idle = IdleOrders::default();
        for i in 0..(IDLE_ORDERS_MAX + 10) {
            idle.put(progress(&format!("o{i}"), 1, json!({})));
        }
        assert_eq!(idle.len().0, IDLE_ORDERS_MAX);
        assert_eq!(idle.take("o0"), None, "the oldest is forgotten");
        assert!(idle.take(&format!("o{}", IDLE_ORDERS_MAX + 9)).is_some());
        // Taking and putting many times keeps the eviction list bounded.
        for round in 0..3 {
            for i in 0..IDLE_ORDERS_MAX {
                let o = format!("t{i}");
                idle.put(progress(&o, round + 1, json!({})));
                idle.take(&o);
            }
        }
        let (live, names) = idle.len();
        assert!(live <= IDLE_ORDERS_MAX);
        assert!(names <= 2 * IDLE_ORDERS_MAX + 1, "{names}");
    }

    /// An order taken and put again is as new as its last put: the name
    /// its first put left in the eviction list does not evict it.
    #[test]
    fn an_order_put_again_is_evicted_by_its_last_put_not_its_first() {
        let idle = IdleOrders::default();
        idle.put(progress("again", 1, json!({})));
        idle.take("again");
        for i in 0..IDLE_ORDERS_MAX - 1 {
            idle.put(progress(&format!("o{i}"), 1, json!({})));
        }
        idle.put(progress("again", 2, json!({})));
        assert_eq!(idle.len().0, IDLE_ORDERS_MAX);
        // One more: the oldest *live* state goes (o0), not "again".
        idle.put(progress("new", 1, json!({})));
        assert_eq!(idle.len().0, IDLE_ORDERS_MAX);
        assert_eq!(idle.take("o0"), None, "the oldest put is forgotten");
        assert_eq!(idle.take("again").map(|p| p.delivered_seq), Some(2));
        assert!(idle.take("o1").is_some());
    }

    #[test]
    fn a_large_registry_data_is_not_kept() {
        let idle = IdleOrders::default();
        let big = "x".repeat(IDLE_REGISTRY_DATA_MAX_BYTES);
        idle.put(progress("o1", 1, json!({ "blob": big })));
        assert_eq!(idle.take("o1"), None);
        assert!(estimated_size(&json!({"a": [1, "bc", null]}), 1000) >= 11);
    }
}
