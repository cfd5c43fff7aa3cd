//! The worker of one (registry, order): delivers its postings one after
//! the other, each only once the previous one's registry_data is stored.
//!
//! It is driven by the stream, not by its wake-ups. Each step of
//! [`Worker::run`] is: **load** where the order stands ([`Progress`]: read
//! from LEDGER when the worker starts, unless the order's previous worker
//! ended caught up and left it in [`IdleOrders`]; then kept in memory,
//! moved by the worker's own acknowledged writes), **find** the posting
//! after the last delivered one, **decide** what to do with the pure
//! [`decide`] (the decision lives there, unit-tested row by row), and
//! **apply** the [`Step`] with [`Worker::apply`], the one place where a
//! decided step's messages are acked, nak'd or kept and where the worker
//! ends (a worker that is stopped, or cannot read the order's state or
//! posting, hands its messages back before deciding: [`Worker::interrupted`]):
//!
//! | the order | the posting | step | attempt? | wake-ups held |
//! |---|---|---|---|---|
//! | caught up | none | `CaughtUp` | – | all acked; the worker ends |
//! | caught up | named by a wake-up, not visible yet | `Park` | – | all handed back with 1 s; ends |
//! | retrying | next attempt later | `Park` | – | all handed back with the delay; ends |
//! | dead | held | `HoldDead` | – | all acked; ends (until a redeliver) |
//! | dead + redeliver request | same key, same body | `Redeliver` | yes, new round | kept |
//! | fresh / retry due | – | `Attempt` | yes | kept (progress-acked) |
//! | not dead | missing or unreadable | `DeadLetterUnsendable` | – | kept (then `HoldDead`) |
//!
//! A wake-up is acked only when its order is caught up or dead, never
//! while a posting waits: see [`Worker::park`] for why that makes a
//! scheduled retry impossible to lose. The circuit breaker, the rate
//! limiter and the lease fence are checked when an attempt is applied
//! (they are shared state); an open breaker parks the order too, a stop
//! or a NATS failure hands its wake-ups back.
//!
//! After an attempt: delivered → registry_data record and delivery record
//! (sent together, each guarded on its own subject, acks awaited together:
//! [`Worker::store_delivered`]), then the next posting; retryable → a `retrying` record naming the next
//! attempt (schedule, jitter, `Retry-After`; dead when
//! `max_attempts`/`max_age` end the round); permanent → alert, `dead`
//! record, email. Every delivery record is guarded by the sequence of the
//! order's last one: a worker with a stale state is refused and reads the
//! order again ([`Worker::store_delivery`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::DirectGetError;
use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Shared;
use super::attempt::{AttemptReport, Outcome, Target};
use super::breaker::Admission;
use super::decide::{Next, Round, Step, WakeUp, WakeUpKind, decide};
use super::idle::IdleOrders;
use super::index::IndexError;
use super::schedule::{NextStep, RoundLimits, next_step};
use super::state::{
    H_POSTING_STREAM_SEQ, H_ROUND_ATTEMPT, H_ROUND_STARTED, LastDelivery, Progress, StateError,
};
use crate::lease::Fenced;
use crate::notify::Notice;
use crate::posting::{Posting, idempotency_key};
use crate::records::{
    AlertRecord, AttemptOutcome, ControlRecord, DeliveryRecord, DeliveryStatus, RegistryDataRecord,
    StoredPosting,
};
use crate::streams::{self, H_KIND, subjects};

/// After a NATS failure (a read or a record that could not be stored), the
/// order's wake-ups are handed back for this long: the attempt is redone
/// then, with the same key and body.
pub const NATS_RETRY_DELAY: Duration = Duration::from_secs(2);
/// Extra wait after an open breaker's cool-down, spread at random so the
/// held orders do not all come back in the same instant.
pub const BREAKER_SPREAD_MAX: Duration = Duration::from_millis(500);

/// The wake-ups waiting for each busy order of a registry.
pub(crate) type Slots = Arc<Mutex<HashMap<String, Vec<Token>>>>;

/// What a wake-up says.
pub(crate) enum TokenKind {
    /// A posting without its `cumulative` (parsed, or `None` if unreadable).
    Posting(Option<Box<StoredPosting>>),
    /// An operator asked to redeliver posting `seq`.
    Redeliver { seq: u64 },
    /// The overdue-retry sweep woke the order ([`super::sweep`]).
    Wake,
}

/// A consumer message: a wake-up for one order, answered exactly once.
pub(crate) struct Token {
    msg: async_nats::jetstream::Message,
    pub order_id: String,
    pub stream_seq: u64,
    /// How many times the consumer has handed this message out (1: never
    /// before).
    pub delivered: i64,
    pub kind: TokenKind,
}

impl Token {
    /// A wake-up from a consumer message, or `None` (and the message
    /// terminated) when it is not on a subject of `registry_id`.
    pub async fn from_message(
        msg: async_nats::jetstream::Message,
        registry_id: &str,
    ) -> Option<Token> {
        let (stream_seq, delivered) = msg
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 0));
        let parsed = subjects::parse_order_subject(msg.subject.as_str())
            .filter(|(_, r, _)| *r == registry_id)
            .map(|(kind, _, o)| (kind.to_owned(), o.to_owned()));
        let Some((kind, order_id)) = parsed else {
            warn!(subject = %msg.subject, "message on an unexpected subject; terminated");
            let _ = msg.ack_with(AckKind::Term).await;
            return None;
        };
        let kind = match kind.as_str() {
            "postings" => TokenKind::Posting(
                StoredPosting::read_without_cumulative(&msg.payload)
                    .ok()
                    .map(Box::new),
            ),
            "control" => match serde_json::from_slice::<ControlRecord>(&msg.payload) {
                Ok(ControlRecord::Redeliver { seq, .. }) => TokenKind::Redeliver { seq },
                Ok(ControlRecord::Wake { .. }) => TokenKind::Wake,
                Err(e) => {
                    warn!(subject = %msg.subject, error = %e, "unreadable control record; ignored");
                    let _ = msg.ack_with(AckKind::Term).await;
                    return None;
                }
            },
            _ => {
                let _ = msg.ack_with(AckKind::Term).await;
                return None;
            }
        };
        Some(Token {
            msg,
            order_id,
            stream_seq,
            delivered,
            kind,
        })
    }

    /// What this wake-up says, without its message ([`decide`] reads it).
    fn wake_up(&self) -> WakeUp {
        let kind = match &self.kind {
            TokenKind::Posting(Some(sp)) => WakeUpKind::Posting {
                seq: sp.posting.seq,
            },
            TokenKind::Posting(None) => WakeUpKind::UnreadablePosting,
            TokenKind::Redeliver { seq } => WakeUpKind::Redeliver { seq: *seq },
            TokenKind::Wake => WakeUpKind::Wake,
        };
        WakeUp {
            stream_seq: self.stream_seq,
            kind,
        }
    }

    async fn answer(self, kind: AckKind) {
        // A lost answer only means the server redelivers: harmless, the
        // worker reads the truth from the stream.
        if let Err(e) = self.msg.ack_with(kind).await {
            debug!(error = %e, "could not answer a consumer message; it will be redelivered");
        }
    }

    pub async fn ack(self) {
        self.answer(AckKind::Ack).await
    }

    pub async fn nak(self, delay: Option<Duration>) {
        self.answer(AckKind::Nak(delay)).await
    }

    pub async fn progress(&self) {
        if let Err(e) = self.msg.ack_with(AckKind::Progress).await {
            debug!(error = %e, "progress ack failed");
        }
    }
}

/// Posting `delivered_seq + 1`, with the exact bytes it is sent as.
struct CurrentPosting {
    stream_seq: u64,
    posting: Posting,
    body: Bytes,
}

/// What is known of the next posting, as the worker holds it.
type Lookup = Next<CurrentPosting, Unsendable>;

/// Why a posting can never be sent (a bug upstream); the words end up in
/// its `dead` record.
#[derive(Debug, thiserror::Error)]
enum Unsendable {
    #[error("the posting at {subject} #{stream_seq} is unreadable: {source}")]
    Unreadable {
        subject: String,
        stream_seq: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("posting {seq} is missing from {subject} (the next one there is {next})")]
    Missing {
        seq: u64,
        subject: String,
        next: u64,
    },
    #[error("posting {seq} on this order's subject belongs to {registry_id}/{order_id}")]
    OtherOrder {
        seq: u64,
        registry_id: String,
        order_id: String,
    },
    #[error("cannot serialise the body: {source}")]
    Body {
        #[source]
        source: serde_json::Error,
    },
}

/// Why the next posting could not be read.
#[derive(Debug, thiserror::Error)]
enum FindError {
    /// Reading LEDGER failed: try again later.
    #[error("{source}")]
    Nats {
        #[source]
        source: DirectGetError,
    },
    /// The posting is missing or unreadable: it can never be sent.
    #[error(transparent)]
    Unsendable(#[from] Unsendable),
}

/// A record could not be stored.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    /// Another writer moved the order on first: a registry_data or
    /// delivery record is stored after the last one this worker knows of.
    #[error("conflict")]
    Conflict,
    /// This instance lost its lease: it must not write.
    #[error("{source}")]
    Fenced {
        #[source]
        source: Fenced,
    },
    /// The record could not be serialised.
    #[error("{source}")]
    Serialise {
        #[source]
        source: serde_json::Error,
    },
    /// NATS refused or did not answer: try again later.
    #[error("{source}")]
    Publish {
        #[source]
        source: PublishError,
    },
    /// The dead-letter index could not be written (before the record).
    #[error("{source}")]
    Index {
        #[source]
        source: IndexError,
    },
}

/// Why a worker stopped before deciding: its wake-ups are handed back.
#[derive(Debug, thiserror::Error)]
enum Interrupted {
    #[error("the dispatcher is stopping")]
    Cancelled,
    #[error(transparent)]
    Load(#[from] StateError),
    #[error(transparent)]
    Find(#[from] FindError),
}

/// Where the worker goes after a step it applied.
enum Flow {
    /// On, with the order in this state.
    Continue(Box<Progress>),
    /// On, reading the order's state back from LEDGER.
    Reload,
    /// The worker has ended.
    End,
}

/// What came of sending the posting (before it is recorded).
enum Sent {
    /// The circuit breaker holds attempts back this long.
    BreakerOpen(Duration),
    /// The dispatcher stops, or this instance lost its lease: not sent.
    Stopped,
    /// The attempt was made.
    Report(AttemptReport),
}

/// One order's worker, built by the dispatcher's loop (`held` starts
/// empty).
pub(crate) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) target: Arc<Target>,
    pub(super) slots: Slots,
    pub(super) idle: IdleOrders,
    pub(super) order_id: String,
    pub(super) cancel: CancellationToken,
    /// Held while the worker lives: one of `max_in_flight`.
    pub(super) _permit: OwnedSemaphorePermit,
    pub(super) held: Vec<Token>,
}

impl Worker {
    fn registry_id(&self) -> &str {
        self.target.id()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Token>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the wake-ups queued for this order into `held`.
    fn take_queue(&mut self) {
        let queued = match self.slots().get_mut(&self.order_id) {
            Some(q) => std::mem::take(q),
            None => return,
        };
        self.receive(queued);
    }

    /// Takes wake-ups into `held`.
    ///
    /// The server hands a message out again when its ack wait passes
    /// before it is answered, so two copies of one message can meet here:
    /// only the newest copy is kept (the older one is never answered).
    fn receive(&mut self, tokens: Vec<Token>) {
        for t in tokens {
            if let Some(i) = self.held.iter().position(|h| h.stream_seq == t.stream_seq) {
                metrics::counter!("ledgerline_dispatcher_duplicate_wakeups_total",
                    "registry" => self.registry_id().to_owned())
                .increment(1);
                self.held[i] = t;
            } else {
                self.held.push(t);
            }
        }
    }

    /// Ends the worker if no wake-up arrived meanwhile (atomically with the
    /// router, so none is stranded); otherwise takes them and goes on.
    fn try_exit(&mut self) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get_mut(&self.order_id) {
            Some(q) if !q.is_empty() => {
                let queued = std::mem::take(q);
                drop(slots);
                self.receive(queued);
                false
            }
            _ => {
                slots.remove(&self.order_id);
                true
            }
        }
    }

    /// [`Worker::try_exit`] as a [`Flow`]: ends, or goes on with `p`.
    fn end_or_continue(&mut self, p: Progress) -> Flow {
        if self.try_exit() {
            Flow::End
        } else {
            Flow::Continue(Box::new(p))
        }
    }

    /// Hands every wake-up back (after `delay`); the worker then ends.
    async fn hand_back(&mut self, delay: Option<Duration>) -> Flow {
        let queued = self.slots().remove(&self.order_id).unwrap_or_default();
        for t in self.held.drain(..).chain(queued) {
            t.nak(delay).await;
        }
        Flow::End
    }

    async fn ack_all(&mut self) {
        for t in self.held.drain(..) {
            t.ack().await;
        }
    }

    /// Waits `delay` durably: every held wake-up is handed back to the
    /// server with the delay, none is acked.
    ///
    /// This is what makes a retry impossible to lose. A wake-up is acked
    /// only when its order is caught up or dead; until then every wake-up
    /// of the order is either held here (and progress-acked) or waiting on
    /// the server with a delay. A copy of a message that the server has
    /// since handed out again (after its ack wait) may be stale, and
    /// answering it may do nothing: so the worker never counts on any one
    /// copy, and the live one, wherever it is, still brings the order back.
    async fn park(&mut self, delay: Duration) {
        for t in self.held.drain(..) {
            t.nak(Some(delay)).await;
        }
    }

    /// Runs `fut`, progress-acking the held wake-ups (and those that
    /// arrive) so the server does not hand them to anyone else meanwhile.
    async fn with_progress<F: std::future::Future>(&mut self, fut: F) -> F::Output {
        let every = self.shared.progress_every();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return out,
                _ = tick.tick() => {
                    self.take_queue();
                    for t in &self.held {
                        t.progress().await;
                    }
                }
            }
        }
    }

    /// The worker's life: until the order is caught up, waiting, dead, or
    /// the dispatcher stops. Each step: load → find → decide → apply.
    pub async fn run(mut self) {
        let mut progress: Option<Progress> = None;
        let mut current: Option<CurrentPosting> = None;
        let mut first = true;
        loop {
            self.take_queue();
            let (p, lookup) = match self
                .load_and_find(progress.take(), current.take(), first)
                .await
            {
                Ok(found) => found,
                Err(why) => {
                    self.interrupted(why).await;
                    return;
                }
            };
            first = false;
            let held: Vec<WakeUp> = self.held.iter().map(Token::wake_up).collect();
            let step = decide(&p, lookup.as_ref(), &held, OffsetDateTime::now_utc());
            match self.apply(step, p).await {
                Flow::Continue(p) => progress = Some(*p),
                // Always LEDGER after a conflict; the posting is found again.
                Flow::Reload => continue,
                Flow::End => return,
            }
            // Kept while it is still the next one (a retry, a park that
            // did not end the worker).
            if let Next::Found(cur) = lookup {
                current = Some(cur);
            }
        }
    }

    /// Where the order stands and what is known of its next posting.
    ///
    /// The state is the one `carried` from the last step; at the worker's
    /// `first` step what the order's previous worker ended with
    /// ([`IdleOrders`]); else LEDGER. The posting is `carried` when it is
    /// still the next one, else found ([`Worker::find_posting`]).
    async fn load_and_find(
        &mut self,
        carried: Option<Progress>,
        current: Option<CurrentPosting>,
        first: bool,
    ) -> Result<(Progress, Lookup), Interrupted> {
        if self.cancel.is_cancelled() {
            return Err(Interrupted::Cancelled);
        }
        let kept = if first {
            self.idle.take(&self.order_id)
        } else {
            None
        };
        let p = match carried.or(kept) {
            Some(p) => p,
            None if first && self.first_posting_first_delivery() => {
                Progress::new(self.registry_id(), &self.order_id)
            }
            None => Progress::load(&self.shared.ledger, self.registry_id(), &self.order_id).await?,
        };
        let lookup = match current {
            Some(cur) if cur.posting.seq == p.next_seq() => Next::Found(cur),
            _ => match self.find_posting(&p).await {
                Ok(Some(cur)) => Next::Found(cur),
                Ok(None) => Next::NotOnStream,
                Err(FindError::Unsendable(why)) => Next::Unsendable(why),
                Err(e) => return Err(e.into()),
            },
        };
        Ok((p, lookup))
    }

    /// Whether the order's first posting is among the wake-ups, handed out
    /// for the first time, with nothing but first-time postings beside it.
    /// Then nothing of the order has been attempted (postings go strictly
    /// in order, and no one was handed posting 1 before), so its state is
    /// [`Progress::new`] without reading LEDGER. Should records exist all
    /// the same (the consumer was created anew), the expected last subject
    /// sequence (0) of the registry_data record or of the attempt record
    /// refuses the write, and the order is read again
    /// ([`Flow::Reload`]); what was sent is posting 1 with its one key and
    /// body (it carries `{}`), so the receiver sees the same request again.
    fn first_posting_first_delivery(&self) -> bool {
        let mut first = false;
        for t in &self.held {
            match &t.kind {
                TokenKind::Posting(Some(sp)) if t.delivered == 1 => {
                    first |= sp.posting.seq == 1;
                }
                _ => return false,
            }
        }
        first
    }

    /// Says why the worker stops before deciding, and hands its wake-ups
    /// back: after [`crate::streams::HAND_BACK_DELAY`] when stopping, else
    /// after [`NATS_RETRY_DELAY`].
    async fn interrupted(&mut self, why: Interrupted) {
        let delay = match &why {
            Interrupted::Cancelled => Some(crate::streams::HAND_BACK_DELAY),
            Interrupted::Load(e) => {
                warn!(registry_id = %self.registry_id(), order_id = %self.order_id,
                      error = %e, "cannot read the order's delivery state");
                Some(NATS_RETRY_DELAY)
            }
            Interrupted::Find(e) => {
                warn!(registry_id = %self.registry_id(), order_id = %self.order_id,
                      error = %e, "cannot read the next posting");
                Some(NATS_RETRY_DELAY)
            }
        };
        self.hand_back(delay).await;
    }

    /// Carries out `step` for the order in state `p`: the one place where
    /// wake-ups are acked, handed back or kept, and where the worker ends.
    async fn apply(&mut self, step: Step<&CurrentPosting, &Unsendable>, mut p: Progress) -> Flow {
        match step {
            Step::CaughtUp => {
                self.ack_all().await;
                // Kept for the order's next worker before the slot is
                // released, so no newer state can be overwritten.
                self.idle.put(p);
                if self.try_exit() {
                    return Flow::End;
                }
                // More wake-ups came: this worker goes on with it.
                match self.idle.take(&self.order_id) {
                    Some(kept) => Flow::Continue(Box::new(kept)),
                    None => Flow::Reload,
                }
            }
            Step::Park { delay, .. } => {
                self.park(delay).await;
                self.end_or_continue(p)
            }
            Step::HoldDead => {
                // Held until someone redelivers it.
                self.ack_all().await;
                self.end_or_continue(p)
            }
            Step::DeadLetterUnsendable { why, round } => {
                match self.dead_letter_unsendable(&mut p, why, round).await {
                    Ok(()) => Flow::Continue(Box::new(p)),
                    Err(StoreError::Conflict) => Flow::Reload,
                    Err(e) => {
                        warn!(error = %e, "cannot record an unsendable posting");
                        self.hand_back(Some(NATS_RETRY_DELAY)).await
                    }
                }
            }
            Step::Redeliver { posting, round } | Step::Attempt { posting, round } => {
                if matches!(step, Step::Redeliver { .. }) {
                    info!(registry_id = %self.registry_id(), order_id = %self.order_id,
                          seq = posting.posting.seq, "redelivering a dead-lettered posting");
                }
                let report = match self.send(posting).await {
                    Sent::BreakerOpen(wait) => {
                        self.park(wait).await;
                        return self.end_or_continue(p);
                    }
                    Sent::Stopped => {
                        return self.hand_back(Some(crate::streams::HAND_BACK_DELAY)).await;
                    }
                    Sent::Report(report) => report,
                };
                match self.settle(&mut p, posting, round, report).await {
                    Ok(()) => Flow::Continue(Box::new(p)),
                    Err(StoreError::Conflict) => {
                        info!(registry_id = %self.registry_id(), order_id = %self.order_id,
                              "the order moved on behind this worker's back; re-reading");
                        Flow::Reload
                    }
                    Err(e) => {
                        warn!(registry_id = %self.registry_id(), order_id = %self.order_id, error = %e,
                              "cannot store the attempt's outcome; it will be attempted again");
                        self.hand_back(Some(NATS_RETRY_DELAY)).await
                    }
                }
            }
        }
    }

    /// Sends `cur` once, unless the circuit breaker holds it back (not
    /// recorded), the dispatcher stops while it waits for the rate limit,
    /// or this instance is no longer the active one.
    async fn send(&mut self, cur: &CurrentPosting) -> Sent {
        if let Admission::NotBefore(at) = self.target.breaker.admit(Instant::now()) {
            let spread = BREAKER_SPREAD_MAX.mul_f64(rand::random::<f64>());
            return Sent::BreakerOpen(at.saturating_duration_since(Instant::now()) + spread);
        }
        let target = self.target.clone();
        let cancel = self.cancel.clone();
        let ready = self
            .with_progress(async {
                tokio::select! {
                    _ = target.limiter.until_ready() => true,
                    _ = cancel.cancelled() => false,
                }
            })
            .await;
        if !ready {
            return Sent::Stopped;
        }
        // Only the active instance sends (it may have lost the lease
        // while waiting).
        if let Err(fenced) = self.target.fence.check() {
            info!(registry_id = %self.registry_id(), order_id = %self.order_id,
                  error = %fenced, "not sending");
            return Sent::Stopped;
        }
        let shared = self.shared.clone();
        let report = self
            .with_progress(target.attempt(&shared.http, &cur.posting, &cur.body))
            .await;
        if target.breaker.report(Instant::now(), report.health) {
            warn!(registry_id = %self.registry_id(), "circuit breaker open: deliveries to this registry pause");
        }
        Sent::Report(report)
    }

    /// Finds posting `p.next_seq()`: in a held wake-up, else on the stream
    /// after the last delivered one; `None` when the stream has none.
    async fn find_posting(&self, p: &Progress) -> Result<Option<CurrentPosting>, FindError> {
        let n = p.next_seq();
        let held = self.held.iter().find_map(|t| match &t.kind {
            TokenKind::Posting(Some(sp)) if sp.posting.seq == n => Some((sp, t.stream_seq)),
            _ => None,
        });
        if let Some((sp, stream_seq)) = held {
            return Ok(Some(self.prepare(sp.posting.clone(), stream_seq, p)?));
        }
        if self.only_delivered_postings_held(n) {
            // Posting n, if stored, has a wake-up of its own that no one has
            // acked (a wake-up is acked only once its order is caught up
            // past it, or dead with it held, and a dead order is woken by
            // a redeliver wake-up, never a posting's): it brings the order
            // back. The stream is not asked (one Direct Get per worker less).
            return Ok(None);
        }
        let subject = subjects::postings(self.registry_id(), &self.order_id);
        let mut from = p.delivered_posting_stream_seq.saturating_add(1);
        loop {
            let next = streams::next_on_subject(&self.shared.ledger, &subject, from).await;
            let Some(m) = next.map_err(|source| FindError::Nats { source })? else {
                return Ok(None);
            };
            let sp = StoredPosting::read_without_cumulative(&m.payload).map_err(|source| {
                Unsendable::Unreadable {
                    subject: subject.clone(),
                    stream_seq: m.sequence,
                    source,
                }
            })?;
            match sp.posting.seq.cmp(&n) {
                std::cmp::Ordering::Less => from = m.sequence + 1,
                std::cmp::Ordering::Equal => {
                    return Ok(Some(self.prepare(sp.posting, m.sequence, p)?));
                }
                std::cmp::Ordering::Greater => {
                    return Err(Unsendable::Missing {
                        seq: n,
                        subject,
                        next: sp.posting.seq,
                    }
                    .into());
                }
            }
        }
    }

    /// Whether every wake-up held names a posting before `n` (and there is
    /// one): all delivered, nothing else (a redeliver, the sweep, an
    /// unreadable posting) asks for the stream to be read.
    fn only_delivered_postings_held(&self, n: u64) -> bool {
        !self.held.is_empty()
            && self
                .held
                .iter()
                .all(|t| matches!(&t.kind, TokenKind::Posting(Some(sp)) if sp.posting.seq < n))
    }

    /// The exact request body of `posting`: it carries the registry_data
    /// stored for the posting before it, so it is the same at every attempt.
    fn prepare(
        &self,
        posting: Posting,
        stream_seq: u64,
        p: &Progress,
    ) -> Result<CurrentPosting, Unsendable> {
        if posting.registry_id != self.registry_id() || posting.order_id.as_str() != self.order_id {
            return Err(Unsendable::OtherOrder {
                seq: posting.seq,
                registry_id: posting.registry_id.clone(),
                order_id: posting.order_id.as_str().to_owned(),
            });
        }
        let body = posting
            .body_json(&p.registry_data)
            .map_err(|source| Unsendable::Body { source })?;
        Ok(CurrentPosting {
            stream_seq,
            posting,
            body: Bytes::from(body),
        })
    }

    /// Records what an attempt came to and updates `p` to match.
    async fn settle(
        &mut self,
        p: &mut Progress,
        cur: &CurrentPosting,
        round: Round,
        report: AttemptReport,
    ) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        let posting = &cur.posting;
        let mut record = attempt_record(posting, round, &report, now);
        metrics::histogram!("ledgerline_delivery_attempt_duration_seconds",
            "registry" => posting.registry_id.clone())
        .record(report.duration.as_secs_f64());
        let receiver_message = match report.outcome {
            Outcome::Delivered { registry_data } => {
                // The record is built and serialised once: its size is
                // checked on the bytes that are then published.
                let rd_record = RegistryDataRecord {
                    registry_id: posting.registry_id.clone(),
                    order_id: posting.order_id.as_str().to_owned(),
                    seq: posting.seq,
                    idempotency_key: posting.idempotency_key,
                    registry_data,
                    received_at: now,
                };
                let max = crate::streams::record_max_bytes(&self.shared.js.client());
                match registry_data_payload(&rd_record, max) {
                    Ok(payload) => {
                        return self
                            .store_delivered(p, cur, round, record, rd_record, payload)
                            .await;
                    }
                    Err(why) => {
                        // Accepted, but the reply cannot be kept as
                        // registry_data: storing it would fail forever, so
                        // the posting is dead-lettered with the reason
                        // instead of being sent again.
                        record.error = Some(why);
                        None
                    }
                }
            }
            Outcome::Retry { retry_after } => match self.next_retry(round, now, retry_after) {
                NextStep::RetryAt(at) => return self.store_retrying(p, round, record, at).await,
                NextStep::GiveUp(why) => {
                    record.error = Some(match record.error.take() {
                        Some(e) => format!("{e}; {why}"),
                        None => why,
                    });
                    None
                }
            },
            Outcome::DeadLetter { receiver_message } => receiver_message,
        };
        record.outcome = AttemptOutcome::Dead;
        let held = self.held_postings_after(posting.seq).await;
        self.dead_letter(p, record, round, receiver_message, held)
            .await
    }

    /// Stores a delivered attempt: the registry_data record and the
    /// delivery record are sent together and their acks awaited together
    /// (one round trip, not two); `p` moves on to the next posting.
    ///
    /// Each write is guarded on its own subject, so neither depends on the
    /// other being stored first: registry_data by the expected last subject
    /// sequence of the last registry_data record, the delivery record by
    /// that of the last delivery record (`p.last_delivery`), so a stale
    /// state can never write a record behind a newer one (a `dead` or
    /// `retrying` record of a later posting). Whatever a failure or a crash
    /// leaves stored (both, registry_data alone, the delivery record alone
    /// when the registry_data write was refused or lost), the order is read
    /// again from LEDGER: a `delivered` record without its registry_data is
    /// taken as a lost write and the posting sent again with the same key
    /// and body ([`Progress::current`]).
    async fn store_delivered(
        &self,
        p: &mut Progress,
        cur: &CurrentPosting,
        round: Round,
        record: DeliveryRecord,
        rd_record: RegistryDataRecord,
        payload: Vec<u8>,
    ) -> Result<(), StoreError> {
        let posting = &cur.posting;
        let mut rd_headers = HeaderMap::new();
        rd_headers.insert(H_POSTING_STREAM_SEQ, cur.stream_seq.to_string().as_str());
        let rd_subject = subjects::registry_data(&posting.registry_id, posting.order_id.as_str());
        let rd_sent = self
            .send_bytes(
                rd_subject,
                "registry_data",
                Guard::After(p.registry_data_stream_seq),
                rd_headers,
                payload,
            )
            .await?;
        let dl_previous = p.last_delivery.as_ref().map_or(0, |l| l.stream_seq);
        let dl_payload =
            serde_json::to_vec(&record).map_err(|source| StoreError::Serialise { source })?;
        let dl_sent = self
            .send_bytes(
                subjects::deliveries(&record.registry_id, &record.order_id),
                "delivery",
                Guard::After(dl_previous),
                round_headers(round),
                dl_payload,
            )
            .await?;
        // Both are on the wire: their acks come back in one round trip.
        let rd_ack = rd_sent.await;
        let dl_ack = dl_sent.await;
        let rd_seq = stored(rd_ack)?;
        let dl_seq = stored(dl_ack)?;
        // A posting that had failed before leaves the dead-letter index
        // (one that never failed was never in it: nothing to write). A
        // failure here leaves a stale key, which readers check and skip.
        let failed_before = round.attempt > 1
            || p.last_delivery
                .as_ref()
                .is_some_and(|l| l.record.outcome != AttemptOutcome::Delivered);
        if failed_before
            && let Err(e) = self
                .shared
                .index
                .clear(&record.registry_id, &record.order_id)
                .await
        {
            warn!(registry_id = %record.registry_id, order_id = %self.order_id, error = %e,
                  "delivered, but the dead-letter index still names the order");
        }
        metrics::counter!("ledgerline_deliveries_total",
            "registry" => record.registry_id.clone(), "outcome" => "delivered")
        .increment(1);
        debug!(registry_id = %record.registry_id, order_id = %self.order_id,
               seq = record.seq, attempt = round.attempt, "delivered");
        p.delivered_seq = record.seq;
        p.registry_data = rd_record.registry_data;
        p.registry_data_stream_seq = rd_seq;
        p.delivered_posting_stream_seq = cur.stream_seq;
        p.last_delivery = Some(last_delivery(record, dl_seq, round));
        // The wake-ups stay held (and alive) until the order is caught
        // up: see `park`.
        Ok(())
    }

    /// When a retryable failure in `round` is tried again, or why not.
    fn next_retry(
        &self,
        round: Round,
        now: OffsetDateTime,
        retry_after: Option<Duration>,
    ) -> NextStep {
        let registry = &self.target.registry;
        let limits = RoundLimits {
            max_attempts: registry.config.max_attempts,
            max_age: registry.max_age,
        };
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        next_step(
            &self.shared.schedule,
            limits,
            round.round_attempt,
            round.round_started_at,
            now,
            retry_after,
            jitter,
        )
    }

    /// Stores a `retrying` record naming the next attempt, `at`.
    async fn store_retrying(
        &self,
        p: &mut Progress,
        round: Round,
        mut record: DeliveryRecord,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        record.outcome = AttemptOutcome::Retrying;
        record.next_attempt_at = Some(at);
        let dl_seq = self.store_delivery(p, &record, round).await?;
        metrics::counter!("ledgerline_deliveries_total",
            "registry" => record.registry_id.clone(), "outcome" => "retrying")
        .increment(1);
        info!(registry_id = %record.registry_id, order_id = %self.order_id,
              seq = record.seq, attempt = round.attempt,
              error = record.error.as_deref().unwrap_or(""),
              "attempt failed; will retry");
        p.last_delivery = Some(last_delivery(record, dl_seq, round));
        Ok(())
    }

    /// Postings stored after `seq` (held by a dead letter).
    async fn held_postings_after(&self, seq: u64) -> u64 {
        let subject = subjects::postings(self.registry_id(), &self.order_id);
        match self
            .shared
            .ledger
            .direct_get_last_for_subject(subject.as_str())
            .await
        {
            Ok(m) => StoredPosting::read_without_cumulative(&m.payload)
                .map(|sp| sp.posting.seq.saturating_sub(seq))
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Alert, `dead` record, email.
    async fn dead_letter(
        &mut self,
        p: &mut Progress,
        record: DeliveryRecord,
        round: Round,
        receiver_message: Option<String>,
        held: u64,
    ) -> Result<(), StoreError> {
        let reason = record
            .error
            .clone()
            .unwrap_or_else(|| "dead-lettered".to_owned());
        let alert = AlertRecord {
            registry_id: record.registry_id.clone(),
            order_id: record.order_id.clone(),
            seq: record.seq,
            idempotency_key: record.idempotency_key,
            reason: reason.clone(),
            http_status: record.http_status,
            receiver_message,
            at: record.at,
        };
        self.publish(
            subjects::alerts(&record.registry_id),
            "alert",
            Guard::MsgId(format!(
                "alert:{}:{}",
                record.idempotency_key, record.attempt
            )),
            HeaderMap::new(),
            &alert,
        )
        .await?;
        let dl_seq = self.store_delivery(p, &record, round).await?;
        metrics::counter!("ledgerline_deliveries_total",
            "registry" => record.registry_id.clone(), "outcome" => "dead")
        .increment(1);
        warn!(registry_id = %record.registry_id, order_id = %record.order_id, seq = record.seq,
              attempt = record.attempt, held, reason = %reason, "posting dead-lettered");
        if let Some(notifier) = &self.shared.notifier {
            let registry = &self.target.registry.config;
            notifier.notify(Notice {
                alert,
                registry_name: registry.name.clone(),
                to: registry.notify_emails.clone(),
                held,
            });
        }
        p.last_delivery = Some(last_delivery(record, dl_seq, round));
        Ok(())
    }

    /// Dead-letters posting `p.next_seq()` without sending it: it is
    /// missing or unreadable on the stream (a bug upstream).
    async fn dead_letter_unsendable(
        &mut self,
        p: &mut Progress,
        why: &Unsendable,
        round: Round,
    ) -> Result<(), StoreError> {
        let n = p.next_seq();
        let record = DeliveryRecord {
            registry_id: self.registry_id().to_owned(),
            order_id: self.order_id.clone(),
            seq: n,
            idempotency_key: idempotency_key(self.registry_id(), &self.order_id, n),
            attempt: round.attempt,
            outcome: AttemptOutcome::Dead,
            http_status: None,
            duration_ms: 0,
            error: Some(format!("{}{why}", crate::records::NOT_SENT)),
            response_excerpt: None,
            next_attempt_at: None,
            at: round.round_started_at,
        };
        self.dead_letter(p, record, round, None, 0).await
    }

    /// Stores a `retrying` or `dead` record, its pair written to the
    /// dead-letter index first ([`super::index`]: the index may name a pair
    /// whose record a crash lost, never miss one whose record is stored).
    /// Stores a `retrying` or `dead` record of the posting `p` is at,
    /// guarded like the `delivered` one ([`Self::store_delivered`]) by the
    /// expected last subject sequence of the order's last delivery record:
    /// a worker whose state is stale (a lagging replica's read, a kept
    /// state someone else moved on) is refused ([`StoreError::Conflict`])
    /// and reads the order again, instead of storing a failed attempt
    /// behind a record it has not seen (a `delivered` one of the same
    /// posting, which a stale worker would have sent again).
    async fn store_delivery(
        &self,
        p: &Progress,
        record: &DeliveryRecord,
        round: Round,
    ) -> Result<u64, StoreError> {
        let status = match record.outcome {
            AttemptOutcome::Dead => DeliveryStatus::Dead,
            _ => DeliveryStatus::Retrying,
        };
        self.shared
            .index
            .mark(status, &record.registry_id, &record.order_id, record.seq)
            .await
            .map_err(|source| StoreError::Index { source })?;
        self.publish(
            subjects::deliveries(&record.registry_id, &record.order_id),
            "delivery",
            Guard::After(p.last_delivery.as_ref().map_or(0, |l| l.stream_seq)),
            round_headers(round),
            record,
        )
        .await
    }

    /// Publishes a LEDGER record and waits for the stream to store it;
    /// returns its stream sequence.
    async fn publish<T: serde::Serialize>(
        &self,
        subject: String,
        kind: &str,
        guard: Guard,
        headers: HeaderMap,
        record: &T,
    ) -> Result<u64, StoreError> {
        let payload =
            serde_json::to_vec(record).map_err(|source| StoreError::Serialise { source })?;
        let sent = self
            .send_bytes(subject, kind, guard, headers, payload)
            .await?;
        stored(sent.await)
    }

    /// Sends a LEDGER record (already serialised) without waiting for the
    /// stream to store it: the returned future is its ack.
    async fn send_bytes(
        &self,
        subject: String,
        kind: &str,
        guard: Guard,
        mut headers: HeaderMap,
        payload: Vec<u8>,
    ) -> Result<PublishAckFuture, StoreError> {
        self.target
            .fence
            .check()
            .map_err(|source| StoreError::Fenced { source })?;
        headers.insert(H_KIND, kind);
        match guard {
            Guard::After(seq) => headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                seq.to_string().as_str(),
            ),
            Guard::MsgId(id) => headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str()),
        }
        self.shared
            .js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|source| StoreError::Publish { source })
    }
}

/// What makes a LEDGER write safe to send again: exactly one guard.
///
/// The order's own records (registry_data, delivery records) are written
/// [`Guard::After`] the last record the worker read or wrote on their
/// subject: a write sent twice (an ack lost, a second dispatcher with the
/// same state) or from a stale state is refused by the stream
/// ([`StoreError::Conflict`]), and the worker reads the order again. They
/// carry no `Nats-Msg-Id`: the guard already refuses every repeat, and a
/// duplicate ack would only say that *some* record with that id is
/// stored, not that it is this one. Writes on a subject the worker does
/// not follow (alerts) carry a message id instead, so a repeat within the
/// stream's duplicate window is stored once.
#[derive(Debug, Clone)]
enum Guard {
    /// `Nats-Expected-Last-Subject-Sequence`: the subject's last record is
    /// at this LEDGER sequence (0: the subject is empty).
    After(u64),
    /// `Nats-Msg-Id`.
    MsgId(String),
}

/// The LEDGER sequence a record's write was stored at, or why not. A
/// duplicate ack (only a [`Guard::MsgId`] write can get one) names the
/// record stored before with the same id.
fn stored(ack: Result<PublishAck, PublishError>) -> Result<u64, StoreError> {
    match ack {
        Ok(a) => Ok(a.sequence),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(StoreError::Conflict),
        Err(source) => Err(StoreError::Publish { source }),
    }
}

/// The headers of a delivery record naming its round.
fn round_headers(round: Round) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(H_ROUND_ATTEMPT, round.round_attempt.to_string().as_str());
    let started = round
        .round_started_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    headers.insert(H_ROUND_STARTED, started.as_str());
    headers
}

/// `record` as stored, or why it cannot be stored in a message of at most
/// `max` bytes (a reply under the 256 KiB cap can still grow past the
/// server's `max_payload` once escaped into JSON).
fn registry_data_payload(record: &RegistryDataRecord, max: usize) -> Result<Vec<u8>, String> {
    match serde_json::to_vec(record) {
        Ok(bytes) if bytes.len() <= max => Ok(bytes),
        Ok(bytes) => Err(too_large_reason(bytes.len(), max)),
        Err(e) => Err(format!("the reply cannot be stored as registry_data: {e}")),
    }
}

/// Why a registry_data record of `size` bytes cannot be stored when NATS
/// takes at most `max`.
fn too_large_reason(size: usize, max: usize) -> String {
    format!(
        "the reply was accepted but cannot be kept as registry_data: it is {size} bytes \
         when stored and NATS takes at most {max}; the receiver should answer with less"
    )
}

/// The record of attempt `round` of `posting`, as if delivered (settling
/// changes its outcome).
fn attempt_record(
    posting: &Posting,
    round: Round,
    report: &AttemptReport,
    now: OffsetDateTime,
) -> DeliveryRecord {
    DeliveryRecord {
        registry_id: posting.registry_id.clone(),
        order_id: posting.order_id.as_str().to_owned(),
        seq: posting.seq,
        idempotency_key: posting.idempotency_key,
        attempt: round.attempt,
        outcome: AttemptOutcome::Delivered,
        http_status: report.http_status,
        duration_ms: report.duration.as_millis() as u64,
        error: report.error.clone(),
        response_excerpt: report.response_excerpt.clone(),
        next_attempt_at: None,
        at: now,
    }
}

/// The last delivery record of the order once `record` is stored at
/// `stream_seq`.
fn last_delivery(record: DeliveryRecord, stream_seq: u64, round: Round) -> LastDelivery {
    LastDelivery {
        record,
        stream_seq,
        round_attempt: round.round_attempt,
        round_started_at: round.round_started_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_that_grows_past_max_payload_when_stored_is_named_unstorable() {
        // 250 KiB of control characters: under the 256 KiB reply cap, six
        // times that once escaped (`\u0001`) into the stored JSON.
        let text = "\u{1}".repeat(250 * 1024);
        let record = RegistryDataRecord {
            registry_id: "r".into(),
            order_id: "o".into(),
            seq: 1,
            idempotency_key: uuid::Uuid::nil(),
            registry_data: serde_json::Value::String(text),
            received_at: OffsetDateTime::UNIX_EPOCH,
        };
        let one_mb = 1024 * 1024 - crate::streams::REJECTED_HEADER_ROOM_BYTES;
        let why = registry_data_payload(&record, one_mb).expect_err("too large for a 1 MB server");
        assert!(why.contains("cannot be kept as registry_data"), "{why}");
        let stored = registry_data_payload(&record, 8 * 1024 * 1024).expect("fits in 8 MB");
        assert_eq!(
            serde_json::from_slice::<RegistryDataRecord>(&stored).unwrap(),
            record
        );
    }
}
