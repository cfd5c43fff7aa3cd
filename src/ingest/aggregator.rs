//! The aggregator: ORDERS in, postings out (the first half of the SPEC
//! diagram).
//!
//! A durable pull consumer reads `<prefix>.>` in stream order. Messages are
//! routed to a fixed number of lanes by a hash of the order id, so the events
//! of one order are applied in stream order while other orders proceed in the
//! other lanes. For each event a lane:
//!
//! 1. parses it; a bad message is published to `ledger.rejected.<reason>`
//!    with its original bytes and a readable reason (message id
//!    `rejected:<seq>`, so a retry never doubles it);
//! 2. loads the order's book from its bounded cache, or rebuilds it from
//!    JetStream: the per-registry cursor from the last posting on
//!    `ledger.postings.<R>.<O>` (which carries everything posted so far and
//!    the ORDERS sequence of its event), the state by replaying this order's
//!    own subject up to the event. Replayed events above the consumer's ack
//!    floor that a registry has not posted yet are processed now, in stream
//!    order: after a crash JetStream hands out new events at once but the
//!    dead process's unacknowledged ones only after the ack wait, and an
//!    order's events must still each get their posting, in order. A new
//!    order (the event's first delivery, and the first event on its
//!    subject) needs none of that: its book starts empty after one Direct
//!    Get ([`Lane::new_order`]);
//! 3. plans the event with the engine's one fold ([`OrderBook::plan`], the
//!    same as `postings`, `verify` and the admin ledger view use) and, for
//!    each subscribed registry not yet posted, publishes the posting with
//!    `Nats-Msg-Id` = idempotency key and
//!    `Nats-Expected-Last-Subject-Sequence` = the previous posting's
//!    sequence (all of an event's postings are sent before their acks are
//!    awaited: one round trip, not one per registry); the book takes the
//!    plan only once every posting is stored;
//! 4. only then acknowledges the event.
//!
//! An order's events reach its lane in stream order only while one pull
//! subscription receives every delivery. Events handed to someone else (an
//! earlier instance that stopped or died, or a pull lost in flight) come
//! back later, after events that follow them, and the server redelivers
//! handed-back events in the order they were handed back. So the reader
//! keeps a watermark ([`Overtaken`]): the highest ORDERS sequence that may
//! have been delivered elsewhere (read from the consumer at start, and again
//! whenever the consumer's delivery sequence skips, i.e. deliveries went
//! elsewhere). A cached book that stops below it is checked before an event
//! is applied to it: if an earlier event of the order is still on the
//! stream between the two, the book is rebuilt (step 2), which handles the
//! overtaken events first. Above the watermark no check is made.
//!
//! A crash anywhere in between is harmless: the event is redelivered, the
//! book rebuilt, the same postings computed (the engine is deterministic);
//! one that was already stored is recognised by its source sequence and not
//! published again, and `Nats-Expected-Last-Subject-Sequence` refuses any
//! second posting on a subject that moved on, so there is never a second
//! posting with a different key or body. Transient failures (NATS down, timeouts) are
//! retried in place, with the event kept alive by progress acks, so later
//! events of the same order cannot overtake it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::snapshots::{self, Snapshots};
use crate::engine::{ApplyError, OrderBook};
use crate::events::{Event, OrderId, RejectReason, Rejection, parse_event};
use crate::lease::Fence;
use crate::ledger::LedgerOptions;
use crate::posting::{Cursor, Posting};
use crate::records::{StoredPosting, StoredPostingRef};
use crate::registry_store::RegistryWatch;
use crate::streams::direct::DirectGet;
use crate::streams::{
    self, H_EVENT_ID, H_FIELD, H_KIND, H_MESSAGE, H_REASON, H_SOURCE, ORDERS_STREAM, OrderSubjects,
    subjects,
};

/// Durable consumer name on ORDERS.
pub const CONSUMER: &str = "aggregator";
/// Most bytes of an order's events asked for in one round trip when its
/// book is rebuilt (the server pages the rest).
const REPLAY_PAGE_BYTES: usize = 1024 * 1024;
/// How long a rebuild waits for each reply before it counts as a transient
/// failure (the order waits and is tried again).
const REPLAY_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Lanes (concurrent orders). Each lane applies its orders' events one at a
/// time, in stream order.
pub const LANES: usize = 16;
/// Events queued per lane before the reader waits: backpressure, not memory.
pub const LANE_QUEUE: usize = 64;
/// Unacknowledged events the server lets us hold at once.
pub const MAX_ACK_PENDING: i64 = 1_024;
/// Order books kept in memory (all lanes together); a miss rebuilds from
/// JetStream, so this bounds memory, not correctness.
pub const CACHE_ORDERS: usize = 10_000;
/// Books held by every lane's cache in this process (see [`cached_books`]).
static BOOKS_CACHED: AtomicUsize = AtomicUsize::new(0);

/// Order books held in the lanes' caches of every aggregator running in this
/// process: at most `cache_orders` (default [`CACHE_ORDERS`]) per aggregator.
/// `ledgerline bench` reports it after its scale run.
pub fn cached_books() -> usize {
    BOOKS_CACHED.load(Ordering::Relaxed)
}

/// Books rebuilt in this process: from a snapshot, from the order's first
/// event (see [`rebuilt_books`]).
static BOOKS_REBUILT: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Order books rebuilt by every aggregator in this process so far: (from a
/// snapshot, replaying every event). `ledgerline bench` reports them after
/// its restart of long-lived orders; `/metrics` has them as
/// `ledgerline_books_rebuilt_total`.
pub fn rebuilt_books() -> (u64, u64) {
    (
        BOOKS_REBUILT[0].load(Ordering::Relaxed),
        BOOKS_REBUILT[1].load(Ordering::Relaxed),
    )
}

/// Backoff between attempts at a transiently failing event: first, cap.
pub const RETRY_FIRST: Duration = Duration::from_millis(200);
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// Settings of one aggregator.
#[derive(Debug, Clone)]
pub struct AggregatorOptions {
    /// Where ORDERS keeps each order's events (`subject_prefix`,
    /// `order_partitions`).
    pub orders: OrderSubjects,
    /// With order partitions: the one partition this aggregator reads
    /// (consumer `aggregator-p<k>`, filter `<prefix>.*.<k>`); `None`: every
    /// event (consumer `aggregator`).
    pub partition: Option<u32>,
    pub ledger: LedgerOptions,
    pub cache_orders: usize,
    /// Replicas of ORDERS and LEDGER when it is the one to create them
    /// (`stream_replicas`).
    pub stream_replicas: usize,
    /// How long the server waits for an ack before redelivering
    /// (`ack_wait`, default 30 s). Lanes send progress acks while
    /// retrying, so only a dead process's events wait this long.
    pub ack_wait: Duration,
    /// Checked before every write: only the instance holding the lease
    /// writes ([`crate::lease`]). Open (never fenced) by default.
    pub fence: Fence,
}

impl AggregatorOptions {
    pub fn new(orders: OrderSubjects, ledger: LedgerOptions) -> Self {
        Self {
            orders,
            partition: None,
            ledger,
            cache_orders: CACHE_ORDERS,
            stream_replicas: 1,
            ack_wait: streams::ACK_WAIT_DEFAULT,
            fence: Fence::open(),
        }
    }
}

/// Why the aggregator stopped (transient trouble is retried, not returned).
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    #[error(transparent)]
    Streams(#[from] streams::NatsError),
    #[error("cannot create the {name} consumer on ORDERS: {source}")]
    Consumer {
        name: String,
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
}

/// A failure worth retrying (NATS unreachable, a timeout, a race).
#[derive(Debug, thiserror::Error)]
enum Transient {
    /// A step failed; `what` names it.
    #[error("{what}: {source}")]
    Failed {
        what: &'static str,
        #[source]
        source: async_nats::Error,
    },
    /// Another writer moved the order on: rebuild and try again.
    #[error("{0}")]
    MovedOn(String),
}

/// Why an event was not handled yet.
#[derive(Debug, thiserror::Error)]
enum LaneError {
    /// Retried in place (the order's later events wait behind it).
    #[error(transparent)]
    Transient(#[from] Transient),
    /// A stored posting of the order cannot be read: retrying cannot help,
    /// so the event is recorded on `ledger.rejected.internal` and acked,
    /// and the lane goes on with other orders.
    #[error(transparent)]
    Corrupt(CorruptPosting),
}

/// The last stored posting of an order cannot be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "not posted: the last posting on {subject} (#{stream_seq}) is unreadable ({source}); \
     this order's postings cannot go on until it is repaired"
)]
struct CorruptPosting {
    subject: String,
    stream_seq: u64,
    #[source]
    source: serde_json::Error,
}

fn transient(what: &'static str, e: impl Into<async_nats::Error>) -> Transient {
    Transient::Failed {
        what,
        source: e.into(),
    }
}

/// Runs until `shutdown` fires; then stops reading, finishes the event each
/// lane is applying, hands queued ones back (nak) and returns.
pub async fn run_aggregator(
    client: async_nats::Client,
    options: AggregatorOptions,
    registries: RegistryWatch,
    shutdown: CancellationToken,
) -> Result<(), AggregatorError> {
    let js = jetstream::new(client.clone());
    let (consumer_name, filter) = match options.partition {
        Some(k) => (partition_consumer(k), options.orders.partition_filter(k)),
        None => (CONSUMER.to_owned(), options.orders.all()),
    };
    let open = || async {
        let (orders, ledger) =
            streams::ensure_streams(&js, &options.orders, options.stream_replicas).await?;
        // Created, or updated to this configuration (`ack_wait` may change
        // between runs; the rest is the same every time).
        let consumer = orders
            .create_consumer(pull::Config {
                durable_name: Some(consumer_name.clone()),
                description: Some("ledgerline aggregator: events → postings".to_owned()),
                filter_subject: filter.clone(),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ack_wait: options.ack_wait,
                max_ack_pending: MAX_ACK_PENDING,
                // Never give up on an event: a poison message is rejected
                // (and acked) by the lane, never dropped by the server.
                max_deliver: -1,
                ..Default::default()
            })
            .await
            .map_err(|source| AggregatorError::Consumer {
                name: consumer_name.clone(),
                source,
            })?;
        Ok::<_, AggregatorError>((orders, ledger, consumer))
    };
    let Some((orders, ledger, consumer)) =
        streams::until_ready("starting the aggregator", &shutdown, open).await
    else {
        return Ok(());
    };

    let snapshots = match Snapshots::open(&js, &orders, options.stream_replicas).await {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(bucket = snapshots::BUCKET, error = %e,
                  "cannot open the order snapshots; rebuilt orders replay all their events");
            None
        }
    };
    let shared = Arc::new(Shared {
        js: js.clone(),
        consumer: consumer.clone(),
        orders,
        ledger,
        options: options.clone(),
        rejected_max_bytes: streams::rejected_max_bytes(&client),
        registries,
        shutdown: shutdown.clone(),
        overtaken: Overtaken::default(),
        snapshots,
    });
    // Everything delivered before this instance started may come back in
    // any order; deliveries to this reader come in stream order unless
    // their sequence skips.
    let started = &consumer.cached_info().delivered;
    shared.overtaken.raise(started.stream_sequence);
    let mut last_delivery = started.consumer_sequence;
    let mut senders = Vec::with_capacity(LANES);
    let mut lanes = tokio::task::JoinSet::new();
    for i in 0..LANES {
        let (tx, rx) = mpsc::channel::<Message>(LANE_QUEUE);
        senders.push(tx);
        let lane = Lane {
            shared: shared.clone(),
            cache: BookCache::new((options.cache_orders / LANES).max(1)),
            not_new: None,
        };
        lanes.spawn(lane.run(rx, i));
    }
    info!(lanes = LANES, consumer = %consumer_name, %filter, "aggregator started");

    // The reader: fetch in stream order, route by order id.
    'read: while !shutdown.is_cancelled() {
        let pull = consumer
            .stream()
            .heartbeat(crate::streams::PULL_HEARTBEAT)
            .expires(crate::streams::PULL_EXPIRES)
            .messages();
        let mut messages = match pull.await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "cannot pull from ORDERS; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break 'read,
                    _ = tokio::time::sleep(RETRY_MAX) => continue 'read,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    hand_back_buffered(&mut messages).await;
                    break 'read;
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(msg)) => {
                    if let Ok(info) = msg.info() {
                        if info.consumer_sequence != last_delivery.wrapping_add(1)
                            && !note_skipped_deliveries(&shared).await
                        {
                            break 'read;
                        }
                        last_delivery = info.consumer_sequence;
                    }
                    let lane = lane_of(order_token(&msg.subject, &options.orders));
                    if senders[lane].send(msg).await.is_err() {
                        error!(lane, "aggregator lane stopped unexpectedly");
                        break 'read;
                    }
                }
                Some(Err(e)) => {
                    // Heartbeat loss or a server restart: the stream says so
                    // and the client reconnects; log and keep pulling.
                    debug!(error = %e, "ORDERS pull interrupted");
                    if matches!(e.kind(), pull::MessagesErrorKind::ConsumerDeleted) {
                        warn!("aggregator consumer was deleted; recreating it on restart");
                        break 'read;
                    }
                }
                None => continue 'read,
            }
        }
    }
    drop(senders);
    while let Some(r) = lanes.join_next().await {
        if let Err(e) = r {
            error!(error = %e, "aggregator lane panicked");
        }
    }
    info!("aggregator stopped");
    Ok(())
}

/// Deliveries went to someone else (the consumer's delivery sequence
/// skipped): everything the consumer has delivered so far may come back out
/// of order. Raises the watermark before the next event is routed; false
/// when shutting down.
async fn note_skipped_deliveries(shared: &Shared) -> bool {
    let mut delay = RETRY_FIRST;
    loop {
        match shared.consumer.get_info().await {
            Ok(info) => {
                debug!(
                    delivered = info.delivered.stream_sequence,
                    "deliveries went elsewhere; earlier events may come back out of order"
                );
                shared.overtaken.raise(info.delivered.stream_sequence);
                return true;
            }
            Err(e) => {
                warn!(error = %e, "cannot read the aggregator consumer; retrying");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// How long shutdown spends handing back messages already pulled from the
/// server but not yet given to a lane.
pub const HAND_BACK_WINDOW: Duration = Duration::from_secs(2);

/// Naks the messages the client has already pulled but nobody has taken,
/// so the next instance gets them after [`streams::HAND_BACK_DELAY`], not the ack wait.
async fn hand_back_buffered(messages: &mut pull::Stream) {
    let deadline = tokio::time::Instant::now() + HAND_BACK_WINDOW;
    let mut handed = 0u64;
    // A handed-back event is delivered again at once while the pull is
    // open: seeing one twice means the buffer is drained.
    let mut seen = std::collections::HashSet::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, async {
        // A message already buffered arrives at once; waiting longer only
        // means the buffer is empty.
        tokio::time::timeout(Duration::from_millis(50), messages.next())
            .await
            .ok()
            .flatten()
    })
    .await
    {
        let again = msg.info().is_ok_and(|i| !seen.insert(i.stream_sequence));
        let _ = msg
            .ack_with(AckKind::Nak(Some(streams::HAND_BACK_DELAY)))
            .await;
        if again {
            break;
        }
        handed += 1;
    }
    if handed > 0 {
        info!(handed, "handed back events pulled but not started");
    }
}

/// The order id token of an ORDERS subject (the whole subject when it is
/// not under the prefix: parsing then names the mismatch).
fn order_token<'a>(subject: &'a str, orders: &OrderSubjects) -> &'a str {
    orders.order_of(subject).unwrap_or(subject)
}

/// The durable consumer of order partition `k`.
pub fn partition_consumer(k: u32) -> String {
    format!("{CONSUMER}-p{k}")
}

fn lane_of(order: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    order.hash(&mut h);
    // LANES is small; the modulo result always fits usize.
    (h.finish() % LANES as u64) as usize
}

struct Shared {
    js: jetstream::Context,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    orders: Stream,
    ledger: Stream,
    options: AggregatorOptions,
    rejected_max_bytes: usize,
    registries: RegistryWatch,
    shutdown: CancellationToken,
    overtaken: Overtaken,
    /// Order state snapshots ([`snapshots`]); `None` when the bucket could
    /// not be opened (rebuilds then replay every event).
    snapshots: Option<Snapshots>,
}

/// The highest ORDERS sequence that may have been delivered to someone else
/// than this reader's pull subscription, and so may come back after events
/// that follow it (see the module doc).
#[derive(Debug, Default)]
struct Overtaken(AtomicU64);

impl Overtaken {
    fn raise(&self, seq: u64) {
        self.0.fetch_max(seq, Ordering::SeqCst);
    }

    /// Whether an event after `seq` may have been overtaken.
    fn may_follow(&self, seq: u64) -> bool {
        seq < self.0.load(Ordering::SeqCst)
    }
}

/// Where one registry's postings of one order stand on LEDGER.
#[derive(Debug, Clone, Copy, Default)]
struct RegMeta {
    /// LEDGER sequence of the last posting on `ledger.postings.<R>.<O>`.
    subject_seq: u64,
    /// ORDERS sequence of the event of that posting (0: none yet).
    last_src: u64,
}

/// An order's [`OrderBook`] (the engine's: state and cursors) plus where
/// each registry's postings stand on LEDGER.
#[derive(Debug, Clone)]
struct LaneBook {
    book: OrderBook,
    /// ORDERS sequence of the last event handled (applied or rejected).
    last_seq: u64,
    regs: HashMap<String, RegMeta>,
    /// Events handled since the order's last snapshot was taken (or the
    /// book was built): one is taken at [`snapshots::EVERY`].
    since_snapshot: u32,
}

impl LaneBook {
    fn empty(order_id: &OrderId) -> Self {
        LaneBook {
            book: OrderBook::new(order_id.clone()),
            last_seq: 0,
            regs: HashMap::new(),
            since_snapshot: 0,
        }
    }
}

/// The books of recently handled orders; the oldest-inserted is evicted
/// first (taken out while an event is handled, put back after). Counted in
/// [`cached_books`].
struct BookCache(crate::fifo::FifoMap<OrderId, LaneBook>);

impl BookCache {
    fn new(max: usize) -> Self {
        BookCache(crate::fifo::FifoMap::new(max))
    }

    fn remove(&mut self, id: &OrderId) -> Option<LaneBook> {
        let book = self.0.remove(id);
        if book.is_some() {
            BOOKS_CACHED.fetch_sub(1, Ordering::Relaxed);
        }
        book
    }

    /// Puts `book` back; the map evicts the oldest past its bound.
    fn insert(&mut self, id: OrderId, book: LaneBook) {
        let before = self.0.len();
        self.0.insert(id, book);
        let after = self.0.len();
        if after > before {
            BOOKS_CACHED.fetch_add(after - before, Ordering::Relaxed);
        } else {
            BOOKS_CACHED.fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

impl Drop for BookCache {
    fn drop(&mut self) {
        BOOKS_CACHED.fetch_sub(self.0.len(), Ordering::Relaxed);
    }
}

struct Lane {
    shared: Arc<Shared>,
    cache: BookCache,
    /// The ORDERS sequence of an event whose new-order book
    /// ([`Lane::new_order`]) met postings already stored: its retry
    /// rebuilds from the streams instead.
    not_new: Option<u64>,
}

impl Lane {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>, lane: usize) {
        while let Some(msg) = rx.recv().await {
            if self.shared.shutdown.is_cancelled() {
                // Hand back what was queued but not started.
                let _ = msg
                    .ack_with(AckKind::Nak(Some(streams::HAND_BACK_DELAY)))
                    .await;
                continue;
            }
            self.handle(msg, lane).await;
        }
    }

    /// Applies one event until it succeeds, then acks it. Retrying in place
    /// (not nak) keeps later events of the same order behind it.
    async fn handle(&mut self, msg: Message, lane: usize) {
        let mut delay = RETRY_FIRST;
        loop {
            match self.process(&msg).await {
                Ok(()) => {
                    if let Err(e) = msg.ack().await {
                        // The work is stored; a lost ack means a redelivery,
                        // which is recognised and skipped.
                        warn!(error = %e, subject = %msg.subject, "ack failed; the event will be redelivered and skipped");
                    }
                    return;
                }
                Err(LaneError::Corrupt(why)) => match self.reject_corrupt(&msg, &why).await {
                    Ok(()) => {
                        if let Err(e) = msg.ack().await {
                            warn!(error = %e, subject = %msg.subject, "ack failed; the event will be redelivered");
                        }
                        return;
                    }
                    Err(e) => {
                        warn!(lane, subject = %msg.subject, error = %e, "cannot record a rejection yet; retrying");
                        if !self.back_off(&msg, &mut delay).await {
                            return;
                        }
                    }
                },
                Err(LaneError::Transient(e)) => {
                    warn!(lane, subject = %msg.subject, error = %e, retry_in_ms = delay.as_millis() as u64, "event not applied yet; retrying");
                    if !self.back_off(&msg, &mut delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// Keeps `msg` in progress and waits `delay` before the next try,
    /// doubling it up to [`RETRY_MAX`]. On shutdown it naks `msg` (the
    /// event is handled after the next start) and returns false.
    async fn back_off(&self, msg: &Message, delay: &mut Duration) -> bool {
        let _ = msg.ack_with(AckKind::Progress).await;
        tokio::select! {
            _ = self.shared.shutdown.cancelled() => {
                let _ = msg.ack_with(AckKind::Nak(Some(streams::HAND_BACK_DELAY))).await;
                return false;
            }
            _ = tokio::time::sleep(*delay) => {}
        }
        *delay = (*delay * 2).min(RETRY_MAX);
        true
    }

    async fn process(&mut self, msg: &Message) -> Result<(), LaneError> {
        let info = msg
            .info()
            .map_err(|e| transient("reading message info", e))?;
        let seq = info.stream_sequence;
        let token = order_token(&msg.subject, &self.shared.options.orders);
        let event = match parse_event(&msg.payload, Some(token)) {
            Ok(ev) => ev,
            Err(rejection) => {
                return Ok(self
                    .reject(&msg.subject, &msg.payload, seq, &rejection)
                    .await?);
            }
        };
        // With partitions, the server put the event on its order's
        // partition; one published straight on another partition's subject
        // would be handled beside its order's owner: refused instead.
        let orders = &self.shared.options.orders;
        if orders.partitions() > 0 && msg.subject.as_str() != orders.stored(event.order_id.as_str())
        {
            let mut rejection = Rejection::new(
                RejectReason::OrderIdMismatch,
                "order_id",
                format!(
                    "stored on {}, not on its order's partition {}: publish on {} and the server picks the partition",
                    msg.subject,
                    orders.stored(event.order_id.as_str()),
                    orders.publish(event.order_id.as_str())
                ),
            );
            rejection.event_id = Some(event.event_id.clone());
            return Ok(self
                .reject(&msg.subject, &msg.payload, seq, &rejection)
                .await?);
        }
        let order_id = event.order_id.clone();
        let mut new_order = false;
        let mut lb = match self.cache.remove(&order_id) {
            Some(lb) if self.overtaken(&lb, &order_id, seq).await? => {
                debug!(order_id = %order_id, seq, after = lb.last_seq,
                       "an earlier event of the order has not been handled yet; rebuilding");
                self.rebuild(&order_id, seq).await?
            }
            Some(lb) => lb,
            None => match self.new_order(&order_id, seq, info.delivered).await? {
                Some(lb) => {
                    new_order = true;
                    lb
                }
                None => self.rebuild(&order_id, seq).await?,
            },
        };
        if lb.last_seq >= seq {
            debug!(order_id = %order_id, seq, "event already handled; skipping");
            self.cache.insert(order_id, lb);
            return Ok(());
        }
        // On failure the book may hold half a step: it is dropped and
        // rebuilt from the streams on the retry.
        let handled = self
            .handle_event(&mut lb, &event, seq, &msg.subject, &msg.payload)
            .await;
        if let Err(LaneError::Transient(Transient::MovedOn(_))) = &handled
            && new_order
        {
            // Postings of the order are stored after all (its consumer was
            // created anew): the retry reads them.
            self.not_new = Some(seq);
        }
        handled?;
        if lb.regs.values().any(|r| r.last_src > seq) {
            // A redelivery of an event older than what was already posted:
            // this book lacks the later events, so do not keep it.
            return Ok(());
        }
        lb.since_snapshot += 1;
        if lb.since_snapshot >= snapshots::EVERY {
            lb.since_snapshot = 0;
            if let Some(snapshots) = &self.shared.snapshots {
                snapshots.save(&order_id, lb.last_seq, &lb.book.state);
            }
        }
        self.cache.insert(order_id, lb);
        Ok(())
    }

    /// Whether an event of the order between the book's last one and `seq`
    /// is still to be handled (it was delivered elsewhere and `seq`
    /// overtook it). Asked of the stream only below the watermark.
    async fn overtaken(
        &self,
        lb: &LaneBook,
        order_id: &OrderId,
        seq: u64,
    ) -> Result<bool, Transient> {
        if lb.last_seq >= seq || !self.shared.overtaken.may_follow(lb.last_seq) {
            return Ok(false);
        }
        let subject = self.shared.options.orders.stored(order_id.as_str());
        let next = streams::next_on_subject(&self.shared.orders, &subject, lb.last_seq + 1)
            .await
            .map_err(|e| transient("looking for overtaken events of the order", e))?;
        Ok(next.is_some_and(|m| m.sequence < seq))
    }

    /// Applies `event` (ORDERS sequence `seq`) to `lb` and publishes a posting
    /// for each subscribed registry that has not posted it yet. On success
    /// `lb` is the book after the event; on error it is unusable.
    async fn handle_event(
        &self,
        lb: &mut LaneBook,
        event: &Event,
        seq: u64,
        subject: &str,
        payload: &[u8],
    ) -> Result<(), LaneError> {
        // The set in force, shared (not copied) for this event.
        let set = self.shared.registries.borrow().clone();
        let registries = set.all();
        // Registries added since the book was built: their last postings.
        for r in registries.iter().filter(|r| r.subscribes(event.event_type)) {
            if !lb.regs.contains_key(r.id()) {
                let (cursor, meta) = self.load_last(r.id(), &event.order_id).await?;
                lb.book.cursors.insert(r.id().to_owned(), cursor);
                lb.regs.insert(r.id().to_owned(), meta);
            }
        }
        // The engine's one fold; registries that posted this event before a
        // crash (or a redelivery) are left out.
        let regs = &lb.regs;
        let planned = lb
            .book
            .plan(event, registries, &self.shared.options.ledger, |id| {
                regs.get(id).is_some_and(|m| m.last_src >= seq)
            });
        let plan = match planned {
            Ok(plan) => plan,
            Err(ApplyError::Rejected(rejection)) => {
                self.reject(subject, payload, seq, &rejection).await?;
                lb.last_seq = seq;
                return Ok(());
            }
            Err(bug) => {
                return Ok(self
                    .internal(subject, payload, seq, event, &bug.to_string(), lb)
                    .await?);
            }
        };
        // Every registry's posting is sent before any ack is awaited: they
        // are on different subjects, each guarded by its own previous
        // posting, so their acks come back in one round trip. Should one
        // fail, the book is dropped and the retry finds those stored.
        let mut sent = Vec::with_capacity(plan.postings.len());
        for posting in &plan.postings {
            let previous = lb
                .regs
                .get(&posting.registry_id)
                .map_or(0, |m| m.subject_seq);
            sent.push(self.send_posting(posting, seq, previous).await?);
        }
        for (posting, (subject, ack)) in plan.postings.iter().zip(sent) {
            let subject_seq = self
                .posting_stored(posting, seq, subject, ack.await)
                .await?;
            metrics::counter!("ledgerline_postings_total", "registry" => posting.registry_id.clone())
                .increment(1);
            lb.regs.insert(
                posting.registry_id.clone(),
                RegMeta {
                    subject_seq,
                    last_src: seq,
                },
            );
        }
        lb.book.commit(plan);
        lb.last_seq = seq;
        metrics::counter!("ledgerline_events_applied_total").increment(1);
        Ok(())
    }

    /// The book of an order whose first event is `seq`, without reading
    /// LEDGER: `None` unless this is the event's first delivery and no
    /// earlier event is on the order's subject. Then no posting of the
    /// order can exist (each comes from an event of the order that was
    /// delivered before), so every cursor starts empty. Should one exist
    /// all the same (the consumer was created anew), the posting's
    /// expected last subject sequence (0) refuses the publish, and the
    /// retry rebuilds ([`Lane::not_new`]). One Direct Get instead of the
    /// consumer info and one read per registry of [`Lane::rebuild`].
    async fn new_order(
        &mut self,
        order_id: &OrderId,
        seq: u64,
        delivered: i64,
    ) -> Result<Option<LaneBook>, Transient> {
        if delivered != 1 || self.not_new.take() == Some(seq) {
            return Ok(None);
        }
        let subject = self.shared.options.orders.stored(order_id.as_str());
        let first = streams::next_on_subject(&self.shared.orders, &subject, 1)
            .await
            .map_err(|e| transient("looking for earlier events of the order", e))?;
        if first.is_none_or(|m| m.sequence != seq) {
            return Ok(None);
        }
        // The set in force, shared (not copied) for this event.
        let set = self.shared.registries.borrow().clone();
        let registries = set.all();
        let mut lb = LaneBook::empty(order_id);
        for r in registries {
            lb.book.cursors.insert(r.id().to_owned(), Cursor::default());
            lb.regs.insert(r.id().to_owned(), RegMeta::default());
        }
        Ok(Some(lb))
    }

    /// Rebuilds an order's book from JetStream as it should be just before
    /// the event at ORDERS sequence `before`: each registry's last posting,
    /// then the order's own subject replayed in stream order (not the
    /// world). Events the consumer has acknowledged are only folded into
    /// the state; later ones (unacknowledged, so maybe never handled) go
    /// through [`Lane::handle_event`], which posts what is missing.
    async fn rebuild(&self, order_id: &OrderId, before: u64) -> Result<LaneBook, LaneError> {
        let ack_floor = self
            .shared
            .consumer
            .get_info()
            .await
            .map_err(|e| transient("reading the consumer's ack floor", e))?
            .ack_floor
            .stream_sequence;
        // The set in force, shared (not copied) for this event.
        let set = self.shared.registries.borrow().clone();
        let registries = set.all();
        let mut lb = LaneBook::empty(order_id);
        for r in registries {
            let (cursor, meta) = self.load_last(r.id(), order_id).await?;
            lb.book.cursors.insert(r.id().to_owned(), cursor);
            lb.regs.insert(r.id().to_owned(), meta);
        }
        let subject = self.shared.options.orders.stored(order_id.as_str());
        // From the order's latest snapshot below `before`, if any: its
        // state is the fold of every event up to its sequence.
        let snapshot = match &self.shared.snapshots {
            Some(s) => s.load(order_id, before).await,
            None => None,
        };
        let from_snapshot = snapshot.as_ref().map(|(seq, _)| *seq);
        BOOKS_REBUILT[usize::from(from_snapshot.is_none())].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ledgerline_books_rebuilt_total",
            "from" => if from_snapshot.is_some() { "snapshot" } else { "start" })
        .increment(1);
        if let Some((seq, state)) = snapshot {
            lb.book.state = state;
            lb.last_seq = seq;
        }
        // The order's earlier events (after the snapshot), up to a page of
        // them per round trip (not one each).
        let client = self.shared.js.client();
        let mut earlier = DirectGet::new(&client, ORDERS_STREAM, &subject, REPLAY_REPLY_TIMEOUT)
            .max_bytes(REPLAY_PAGE_BYTES)
            .from_seq(lb.last_seq + 1)
            .up_to_seq(before.saturating_sub(1));
        let (mut folded, mut caught_up) = (0u64, 0u64);
        while let Some(m) = earlier
            .next()
            .await
            .map_err(|e| transient("replaying the order's events", e))?
        {
            match parse_event(m.payload(), Some(order_id.as_str())) {
                Ok(ev) if m.seq > ack_floor => {
                    self.handle_event(&mut lb, &ev, m.seq, &subject, m.payload())
                        .await?;
                    caught_up += 1;
                }
                // Handled long ago: refused events change nothing, exactly
                // as when they arrived.
                Ok(ev) => {
                    let _ = lb.book.state.apply(&ev);
                    folded += 1;
                }
                Err(rejection) if m.seq > ack_floor => {
                    self.reject(&subject, m.payload(), m.seq, &rejection)
                        .await?;
                }
                Err(_) => {}
            }
            lb.last_seq = m.seq;
        }
        debug!(order_id = %order_id, ?from_snapshot, folded, caught_up, "rebuilt order book from its subject");
        Ok(lb)
    }

    /// What registry `r` was last sent for `order`, from the last posting on
    /// its subject.
    async fn load_last(&self, r: &str, order: &OrderId) -> Result<(Cursor, RegMeta), LaneError> {
        let subject = subjects::postings(r, order.as_str());
        match self
            .shared
            .ledger
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(m) => {
                let stored = parse_stored(&m.payload, &subject, m.sequence)?;
                Ok((
                    stored.posting.cursor(),
                    RegMeta {
                        subject_seq: m.sequence,
                        last_src: stored.source_seq,
                    },
                ))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                Ok((Cursor::default(), RegMeta::default()))
            }
            Err(e) => Err(transient("reading the last posting", e).into()),
        }
    }

    /// Sends a posting (stored at most once: its message id and guard)
    /// without waiting for it to be stored; returns its subject and the
    /// future of its ack, for [`Lane::posting_stored`].
    async fn send_posting(
        &self,
        posting: &Posting,
        source_seq: u64,
        previous: u64,
    ) -> Result<(String, PublishAckFuture), LaneError> {
        let subject = subjects::postings(&posting.registry_id, posting.order_id.as_str());
        self.shared
            .options
            .fence
            .check()
            .map_err(|e| transient("storing a posting", e))?;
        let stored = StoredPostingRef {
            source_seq,
            previous_subject_seq: previous,
            posting,
        };
        let payload = stored
            .to_json()
            .map_err(|e| transient("encoding a posting", e))?;
        let mut headers = HeaderMap::new();
        headers.insert(H_KIND, "posting");
        let msg = streams::guarded_message(
            headers,
            &posting.idempotency_key.to_string(),
            Some(previous),
            payload.into(),
        );
        let ack = self
            .shared
            .js
            .send_publish(subject.clone(), msg)
            .await
            .map_err(|e| transient("storing a posting", e))?;
        Ok((subject, ack))
    }

    /// The LEDGER sequence of `posting` (from event `source_seq`) once its
    /// write to `subject` was answered with `ack`: a posting is stored
    /// exactly once.
    async fn posting_stored(
        &self,
        posting: &Posting,
        source_seq: u64,
        subject: String,
        ack: Result<PublishAck, PublishError>,
    ) -> Result<u64, LaneError> {
        match ack {
            Ok(ack) => {
                debug!(subject = %subject, seq = posting.seq, stream_seq = ack.sequence, duplicate = ack.duplicate, "posting stored");
                Ok(ack.sequence)
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // The subject moved on: our publish went through before an
                // ack was lost, or another instance owns this order. If the
                // last posting is this one, we are done; else rebuild.
                let last = self
                    .shared
                    .ledger
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .map_err(|e| transient("checking the last posting", e))?;
                let found = parse_stored(&last.payload, &subject, last.sequence)?;
                if found.source_seq == source_seq
                    && found.posting.idempotency_key == posting.idempotency_key
                {
                    if found.posting != *posting {
                        error!(subject = %subject, seq = posting.seq, "stored posting differs from the recomputed one; keeping the stored one (run `ledgerline verify`)");
                    }
                    Ok(last.sequence)
                } else {
                    Err(Transient::MovedOn(format!(
                        "{subject} moved on (last posting seq {} from event #{}); rebuilding",
                        found.posting.seq, found.source_seq
                    ))
                    .into())
                }
            }
            Err(e) => Err(transient("storing a posting", e).into()),
        }
    }

    /// Records an event that cannot be posted because a stored posting of
    /// its order is unreadable (`ledger.rejected.internal`, reason named).
    async fn reject_corrupt(
        &mut self,
        msg: &Message,
        why: &CorruptPosting,
    ) -> Result<(), Transient> {
        let seq = msg
            .info()
            .map_err(|e| transient("reading message info", e))?
            .stream_sequence;
        let token = order_token(&msg.subject, &self.shared.options.orders);
        let event_id = parse_event(&msg.payload, Some(token))
            .ok()
            .map(|ev| ev.event_id);
        let r = Rejection {
            reason: RejectReason::Internal,
            event_id,
            field: String::new(),
            message: why.to_string(),
        };
        self.reject(&msg.subject, &msg.payload, seq, &r).await
    }

    /// Publishes a rejection (before the event is acked); its message id
    /// `rejected:<seq>` makes a retry harmless.
    async fn reject(
        &self,
        subject: &str,
        payload: &[u8],
        seq: u64,
        r: &Rejection,
    ) -> Result<(), Transient> {
        self.shared
            .options
            .fence
            .check()
            .map_err(|e| transient("storing a rejection", e))?;
        let (body, mut headers) = streams::rejected_body(payload, self.shared.rejected_max_bytes);
        headers.insert(H_REASON, r.reason.as_str());
        headers.insert(H_FIELD, streams::header_value(&r.field).as_str());
        headers.insert(H_MESSAGE, streams::header_value(&r.to_string()).as_str());
        if let Some(id) = &r.event_id {
            headers.insert(H_EVENT_ID, streams::header_value(id).as_str());
        }
        headers.insert(
            H_SOURCE,
            streams::header_value(&format!("{subject}#{seq}")).as_str(),
        );
        headers.insert(H_KIND, "rejected");
        let publish = streams::guarded_message(headers, &format!("rejected:{seq}"), None, body);
        self.shared
            .js
            .send_publish(subjects::rejected(r.reason.as_str()), publish)
            .await
            .map_err(|e| transient("storing a rejection", e))?
            .await
            .map_err(|e| transient("storing a rejection", e))?;
        metrics::counter!("ledgerline_events_rejected_total", "reason" => r.reason.as_str())
            .increment(1);
        info!(reason = %r.reason, seq, rejection = %r, "event rejected");
        Ok(())
    }

    /// A broken invariant: never posted; recorded on
    /// `ledger.rejected.internal` with the details and logged as an error.
    /// The event stays in ORDERS for a replay after the fix.
    async fn internal(
        &self,
        subject: &str,
        payload: &[u8],
        seq: u64,
        event: &Event,
        what: &str,
        lb: &mut LaneBook,
    ) -> Result<(), Transient> {
        error!(order_id = %event.order_id, event_id = %event.event_id, error = what, "ledger invariant broken; event not posted");
        let r = Rejection {
            reason: RejectReason::Internal,
            event_id: Some(event.event_id.clone()),
            field: String::new(),
            message: format!("not posted, a ledger invariant failed: {what}"),
        };
        self.reject(subject, payload, seq, &r).await?;
        lb.last_seq = seq;
        Ok(())
    }
}

/// A stored posting, or [`LaneError::Corrupt`]: its order cannot go on for
/// that registry (the cursor is lost), so the event is rejected with the
/// reason rather than retried forever, which would stop the lane and then,
/// through its full queue, every lane.
fn parse_stored(
    payload: &[u8],
    subject: &str,
    stream_seq: u64,
) -> Result<StoredPosting, LaneError> {
    serde_json::from_slice(payload).map_err(|source| {
        error!(subject, stream_seq, error = %source, "unreadable posting in LEDGER");
        LaneError::Corrupt(CorruptPosting {
            subject: subject.to_owned(),
            stream_seq,
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(id: &str) -> (OrderId, LaneBook) {
        let id = OrderId::parse(id).expect("a valid order id");
        let lb = LaneBook {
            book: OrderBook::new(id.clone()),
            last_seq: 1,
            regs: HashMap::new(),
            since_snapshot: 0,
        };
        (id, lb)
    }

    #[test]
    fn the_books_cached_are_counted_for_the_bench() {
        // No other unit test holds a book cache, so the count moves only here.
        let before = cached_books();
        let mut cache = BookCache::new(10);
        for i in 0..25 {
            let (id, lb) = book(&format!("c{i}"));
            cache.insert(id, lb);
        }
        assert_eq!(cached_books(), before + 10);
        assert!(cache.remove(&book("c24").0).is_some());
        assert_eq!(cached_books(), before + 9);
        drop(cache);
        assert_eq!(cached_books(), before);
    }
}
