//! The join of each posting with its delivery records, in one pass over
//! LEDGER: the bookkeeping, without I/O (the export's driver, in
//! [`super`], feeds it what it reads and writes what it lets go).
//!
//! The export reads the postings and the delivery records of the exported
//! registries in stream order up to the snapshot S (two ordered consumers,
//! merged: [`super::read`]). Every delivery record of a posting is stored after the
//! posting (the dispatcher attempts only what it has read), so all of a
//! posting's records pass by after it. The join holds each posting in a
//! window, folds the records of the held postings' orders as they pass
//! ([`SeqDeliveries`], the same fold as everywhere else), and lets the
//! postings go in stream order, each once its state at S is known:
//!
//! - its own `delivered` record has passed: the fold of a posting ends at
//!   its delivery ([`SeqDelivery`]), so nothing after it can change its
//!   row. This is how nearly every posting of a healthy ledger goes,
//!   without a question to the server;
//! - or its order is **complete**:
//! - the consumer has passed the order's last delivery record at S, or the
//!   order has none at S. Where that record lies is asked of the server
//!   for a batch of orders at a time (one multi-last Direct Get,
//!   [`crate::streams::direct::last_sequences`]): [`Join::questions`],
//!   [`Join::answer`];
//! - or the consumer has read everything up to S ([`Join::read_all`]);
//! - or the window is full and its oldest posting's records lie beyond it
//!   (or cannot be located): the driver then reads those orders' records up
//!   to S on their own (the per-order Direct Get) and that answer stands
//!   for the order ([`Join::stuck`], [`Join::resolve`]); records of it
//!   passing by later are ignored.
//!
//! Whichever way, a posting's delivery state is the fold of every record of
//! its order up to S: the same answer the per-order read gives.
//!
//! Where an order's last record lies is asked only for postings still
//! held when the window is a quarter full ([`Join::should_ask`]): most
//! postings have gone by their `delivered` record before then.
//!
//! Memory: at most [`JoinLimits::postings`] postings and
//! [`JoinLimits::bytes`] of their stored JSON are held (decoded as they
//! are read, so nothing of the consumer's buffers is pinned), plus one
//! small fold per order with a held posting: bounded by the limits, never
//! by LEDGER.

use std::collections::{HashMap, VecDeque};

use time::OffsetDateTime;

use crate::posting::Posting;
#[cfg(test)]
use crate::records::DeliveryRecord;
use crate::records::{DeliveryRecordView, SeqDeliveries, SeqDelivery, StoredPosting};
use crate::streams::subjects;

use super::ExportError;

/// How much the join may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinLimits {
    /// Postings held at most.
    pub postings: usize,
    /// Bytes of held postings' stored JSON at most (one posting is always
    /// let in, whatever its size).
    pub bytes: usize,
}

impl JoinLimits {
    /// The export's: 16,384 postings or 8 MiB, enough for the records of
    /// a posting to arrive while the dispatcher keeps up (at 700 bytes a
    /// posting, about 12,000 postings, several seconds of a busy pipeline),
    /// small next to the rest of the process.
    pub const DEFAULT: JoinLimits = JoinLimits {
        postings: 16_384,
        bytes: 8 * 1024 * 1024,
    };
}

impl Default for JoinLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A posting read and held, decoded (or why not: the error is reported
/// when the posting's turn comes, after every posting before it).
#[derive(Debug)]
struct Held {
    /// `<R>.<O>`: the order's key, the tail of its subjects.
    key: Box<str>,
    stream_seq: u64,
    posted_at: OffsetDateTime,
    /// Bytes of its stored JSON (what the window's byte limit counts).
    size: usize,
    posting: Result<Posting, serde_json::Error>,
}

/// Where the join stands on the delivery records of one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its last record at S is to be asked for.
    Unasked,
    /// Asked for; the answer is awaited.
    Asked,
    /// Its last record at S is at this stream sequence, not read yet.
    LastAt(u64),
    /// Every record up to S is folded in.
    Complete,
}

/// An order with held postings.
#[derive(Debug)]
struct Entry {
    /// Its postings in the window.
    held: usize,
    state: State,
    deliveries: SeqDeliveries,
}

/// Why the oldest held posting cannot go yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// Nothing is held.
    Empty,
    /// It can go ([`Join::pop`]).
    Ready,
    /// Where its order's last record lies has not been asked yet.
    Unasked,
    /// It has been asked; the answer is awaited.
    Asked,
    /// Its order's last record lies ahead of the consumer.
    Ahead,
}

/// A posting let go, with its delivery state at S.
#[derive(Debug)]
pub struct Joined {
    pub posting: Posting,
    pub posted_at: OffsetDateTime,
    pub stream_seq: u64,
    pub delivery: SeqDelivery,
}

/// The window and the folds of its orders.
#[derive(Debug)]
pub struct Join {
    limits: JoinLimits,
    window: VecDeque<Held>,
    bytes: usize,
    entries: HashMap<Box<str>, Entry>,
    /// Orders in state [`State::Unasked`].
    unasked: usize,
    /// Postings of the window up to this stream sequence have had their
    /// order asked for, when it needed to be.
    asked_through: u64,
    /// The stream sequence of the last message the consumer read.
    position: u64,
}

impl Join {
    pub fn new(limits: JoinLimits) -> Self {
        Join {
            limits,
            window: VecDeque::new(),
            bytes: 0,
            entries: HashMap::new(),
            unasked: 0,
            asked_through: 0,
            position: 0,
        }
    }

    /// True when no more postings may be held until some go.
    pub fn is_full(&self) -> bool {
        !self.window.is_empty()
            && (self.window.len() >= self.limits.postings || self.bytes >= self.limits.bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }

    /// Postings held.
    pub fn len(&self) -> usize {
        self.window.len()
    }

    /// Orders whose last record is still to be asked for.
    pub fn unasked(&self) -> usize {
        self.unasked
    }

    /// The consumer read the message at `stream_seq` (of whatever kind).
    fn advance(&mut self, stream_seq: u64) {
        self.position = self.position.max(stream_seq);
    }

    /// Holds the posting of order `key` (`<R>.<O>`) read at `stream_seq`:
    /// `size` bytes of stored JSON, decoded (by [`decode_posting`]) into
    /// `posting`.
    pub fn posting(
        &mut self,
        key: &str,
        stream_seq: u64,
        posted_at: OffsetDateTime,
        size: usize,
        posting: Result<Posting, serde_json::Error>,
    ) {
        self.advance(stream_seq);
        match self.entries.get_mut(key) {
            Some(e) => e.held += 1,
            None => {
                self.entries.insert(
                    key.into(),
                    Entry {
                        held: 1,
                        state: State::Unasked,
                        deliveries: SeqDeliveries::default(),
                    },
                );
                self.unasked += 1;
            }
        }
        self.bytes += size;
        self.window.push_back(Held {
            key: key.into(),
            stream_seq,
            posted_at,
            size,
            posting,
        });
    }

    /// True when where the held orders' last records lie is worth asking:
    /// the window is a quarter full (by postings or bytes), so its oldest
    /// postings' `delivered` records have not come within that distance.
    pub fn should_ask(&self) -> bool {
        self.window.len() >= self.limits.postings / 4 || self.bytes >= self.limits.bytes / 4
    }

    /// True when a delivery record of order `key` is still wanted (a
    /// posting of it is held and its records are not all in): only those
    /// are worth decoding.
    pub fn wants(&self, key: &str) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| e.state != State::Complete)
    }

    /// [`Self::record_view`] for a whole record (the tests build those).
    #[cfg(test)]
    pub fn record(&mut self, key: &str, stream_seq: u64, record: Option<&DeliveryRecord>) {
        self.fold(
            key,
            stream_seq,
            record.map(|r| |d: &mut SeqDeliveries| d.apply(r)),
        );
    }

    /// A delivery record of order `key` read at `stream_seq`, as a view
    /// (records are folded, never kept); `None` for one not wanted (only
    /// the position counts).
    pub fn record_view(
        &mut self,
        key: &str,
        stream_seq: u64,
        record: Option<&DeliveryRecordView<'_>>,
    ) {
        self.fold(
            key,
            stream_seq,
            record.map(|r| |d: &mut SeqDeliveries| d.apply_view(r)),
        );
    }

    /// Folds a record of order `key` read at `stream_seq` in, by `apply`.
    fn fold(&mut self, key: &str, stream_seq: u64, apply: Option<impl FnOnce(&mut SeqDeliveries)>) {
        self.advance(stream_seq);
        let Some(apply) = apply else { return };
        if let Some(e) = self.entries.get_mut(key)
            && e.state != State::Complete
        {
            apply(&mut e.deliveries);
            if e.state == State::LastAt(stream_seq) {
                e.state = State::Complete;
            }
        }
    }

    /// Any other message the consumer read at `stream_seq`.
    pub fn skipped(&mut self, stream_seq: u64) {
        self.advance(stream_seq);
    }

    /// The consumer has read every message up to S: every order is
    /// complete.
    pub fn read_all(&mut self) {
        for e in self.entries.values_mut() {
            e.state = State::Complete;
        }
        self.unasked = 0;
    }

    /// Up to `max` orders whose last record to ask for, oldest posting
    /// first; they count as asked from now on.
    pub fn questions(&mut self, max: usize) -> Vec<Box<str>> {
        let mut out = Vec::new();
        let start = self
            .window
            .partition_point(|h| h.stream_seq <= self.asked_through);
        for h in self.window.range(start..) {
            if out.len() == max {
                break;
            }
            self.asked_through = h.stream_seq;
            if let Some(e) = self.entries.get_mut(&h.key)
                && e.state == State::Unasked
            {
                e.state = State::Asked;
                self.unasked -= 1;
                out.push(h.key.clone());
            }
        }
        out
    }

    /// The answer to [`Self::questions`]: `last(key)` is the stream
    /// sequence of the order's last delivery record at S, `None` when it
    /// has none.
    pub fn answer(&mut self, keys: &[Box<str>], last: impl Fn(&str) -> Option<u64>) {
        for key in keys {
            let Some(e) = self.entries.get_mut(key) else {
                continue;
            };
            if e.state == State::Complete {
                continue;
            }
            if e.state == State::Unasked {
                // Asked again after it left and came back: this answer
                // is as good (S has not moved).
                self.unasked -= 1;
            }
            e.state = match last(key) {
                Some(seq) if seq > self.position => State::LastAt(seq),
                _ => State::Complete,
            };
        }
    }

    /// Why the oldest held posting cannot go yet, or that it can.
    pub fn front(&self) -> Front {
        let Some(h) = self.window.front() else {
            return Front::Empty;
        };
        let Some(e) = self.entries.get(&h.key) else {
            return Front::Ready;
        };
        match (&h.posting, e.state) {
            (_, State::Complete) | (Err(_), _) => Front::Ready,
            (Ok(p), _) if e.deliveries.is_delivered(p.seq) => Front::Ready,
            (_, State::Unasked) => Front::Unasked,
            (_, State::Asked) => Front::Asked,
            (_, State::LastAt(_)) => Front::Ahead,
        }
    }

    /// Up to `max` distinct incomplete orders of the oldest held postings:
    /// the ones to read on their own when the window is full.
    pub fn stuck(&self, max: usize) -> Vec<Box<str>> {
        let mut out: Vec<Box<str>> = Vec::new();
        for h in &self.window {
            if out.len() == max {
                break;
            }
            if self.wants(&h.key) && !out.contains(&h.key) {
                out.push(h.key.clone());
            }
        }
        out
    }

    /// Every record of order `key` up to S, read on its own: it stands for
    /// the order; records of it read later are ignored.
    pub fn resolve(&mut self, key: &str, deliveries: SeqDeliveries) {
        if let Some(e) = self.entries.get_mut(key)
            && e.state != State::Complete
        {
            if e.state == State::Unasked {
                self.unasked -= 1;
            }
            e.state = State::Complete;
            e.deliveries = deliveries;
        }
    }

    /// The oldest held posting with its delivery state, decoded, if it can
    /// go.
    pub fn pop(&mut self) -> Result<Option<Joined>, ExportError> {
        if self.front() != Front::Ready {
            return Ok(None);
        }
        let Some(h) = self.window.pop_front() else {
            return Ok(None);
        };
        self.bytes -= h.size;
        let posting = h.posting.map_err(|source| ExportError::Decode {
            stream_seq: h.stream_seq,
            subject: posting_subject(&h.key),
            source,
        })?;
        check_subject(&posting, &h.key, h.stream_seq)?;
        let (delivery, left) = match self.entries.get_mut(&h.key) {
            Some(e) => {
                e.held -= 1;
                (e.deliveries.get(posting.seq), e.held)
            }
            None => (SeqDelivery::PENDING, 0),
        };
        if left == 0
            && let Some(e) = self.entries.remove(&h.key)
            && e.state == State::Unasked
        {
            // It went by its `delivered` record before it was asked about.
            self.unasked -= 1;
        }
        Ok(Some(Joined {
            posting,
            posted_at: h.posted_at,
            stream_seq: h.stream_seq,
            delivery,
        }))
    }
}

/// A stored posting as the export needs it: every field but `cumulative`
/// (left empty, skipped unparsed: about half the decoding time of an export).
pub fn decode_posting(payload: &[u8]) -> Result<Posting, serde_json::Error> {
    StoredPosting::read_without_cumulative(payload).map(|sp| sp.posting)
}

/// `(registry, order)` of an order key `<R>.<O>` (neither contains a `.`).
pub(super) fn split_key(key: &str) -> (&str, &str) {
    key.split_once('.').unwrap_or((key, ""))
}

/// The subject of the postings of order `key`.
fn posting_subject(key: &str) -> String {
    let (r, o) = split_key(key);
    subjects::postings(r, o)
}

/// The order key `<R>.<O>` of a `ledger.<kind>.<R>.<O>` subject, with its
/// kind; `None` for any other subject.
pub fn order_key(subject: &str) -> Option<(&str, &str)> {
    let (kind, r, o) = subjects::parse_order_subject(subject)?;
    Some((kind, &subject[subject.len() - r.len() - 1 - o.len()..]))
}

/// A posting must be stored on its own order's subject.
pub fn check_subject(posting: &Posting, key: &str, stream_seq: u64) -> Result<(), ExportError> {
    let (r, o) = split_key(key);
    if r == posting.registry_id && o == posting.order_id.as_str() {
        return Ok(());
    }
    Err(ExportError::Integrity {
        stream_seq,
        message: format!(
            "posting {}/{}/{} stored on {}",
            posting.registry_id,
            posting.order_id,
            posting.seq,
            posting_subject(key)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{AttemptOutcome, DeliveryStatus};

    const AT: OffsetDateTime = time::macros::datetime!(2026-11-22 12:00 UTC);

    fn payload(registry: &str, order: &str, seq: u64) -> Vec<u8> {
        let key = crate::posting::idempotency_key(registry, order, seq);
        serde_json::to_vec(&serde_json::json!({
            "source_seq": 1, "registry_id": registry, "order_id": order, "seq": seq,
            "idempotency_key": key, "event_id": "e", "event_type": "order.confirmed",
            "occurred_at": "2026-11-22T12:00:00Z", "mode": "delta", "currency": "EUR",
            "filtered": false, "entries": [], "cumulative": [],
        }))
        .unwrap()
    }

    fn record(order: &str, seq: u64, attempt: u32, outcome: AttemptOutcome) -> DeliveryRecord {
        DeliveryRecord {
            registry_id: "r".into(),
            order_id: order.into(),
            seq,
            idempotency_key: crate::posting::idempotency_key("r", order, seq),
            attempt,
            outcome,
            http_status: Some(200),
            duration_ms: 1,
            error: None,
            response_excerpt: None,
            next_attempt_at: None,
            at: AT,
        }
    }

    fn hold(j: &mut Join, order: &str, stream_seq: u64, seq: u64) {
        let payload = payload("r", order, seq);
        j.posting(
            &format!("r.{order}"),
            stream_seq,
            AT,
            payload.len(),
            decode_posting(&payload),
        );
    }

    fn pop(j: &mut Join) -> Option<(String, u64, DeliveryStatus, u32)> {
        j.pop().unwrap().map(|x| {
            (
                x.posting.order_id.to_string(),
                x.posting.seq,
                x.delivery.status,
                x.delivery.attempts,
            )
        })
    }

    /// The next posting to go is `order`'s `seq`, in `status` after
    /// `attempts`.
    fn popped(j: &mut Join, order: &str, seq: u64, status: DeliveryStatus, attempts: u32) {
        assert_eq!(pop(j), Some((order.to_owned(), seq, status, attempts)));
    }

    #[test]
    fn a_posting_goes_once_its_orders_last_record_at_the_snapshot_has_passed() {
        let mut j = Join::new(JoinLimits::DEFAULT);
        hold(&mut j, "a", 1, 1);
        assert_eq!(j.front(), Front::Unasked);
        assert_eq!(j.questions(10), vec![Box::from("r.a")]);
        assert_eq!(j.front(), Front::Asked);
        j.answer(&[Box::from("r.a")], |_| Some(3));
        assert_eq!(j.front(), Front::Ahead);
        assert!(j.wants("r.a"));
        j.record("r.a", 2, Some(&record("a", 1, 1, AttemptOutcome::Retrying)));
        assert_eq!(pop(&mut j), None);
        j.record(
            "r.a",
            3,
            Some(&record("a", 1, 2, AttemptOutcome::Delivered)),
        );
        assert!(!j.wants("r.a"));
        popped(&mut j, "a", 1, DeliveryStatus::Delivered, 2);
        assert!(j.is_empty());
        assert_eq!(j.front(), Front::Empty);
    }

    #[test]
    fn a_delivered_posting_goes_at_its_delivered_record_without_a_question() {
        let mut j = Join::new(JoinLimits::DEFAULT);
        hold(&mut j, "a", 1, 1);
        hold(&mut j, "a", 2, 2);
        hold(&mut j, "b", 3, 1);
        assert_eq!(j.unasked(), 2);
        j.record("r.a", 4, Some(&record("a", 1, 1, AttemptOutcome::Retrying)));
        assert_eq!(j.front(), Front::Unasked, "retrying is not final");
        j.record(
            "r.a",
            5,
            Some(&record("a", 1, 2, AttemptOutcome::Delivered)),
        );
        popped(&mut j, "a", 1, DeliveryStatus::Delivered, 2);
        assert_eq!(j.front(), Front::Unasked, "a's posting 2 has no record yet");
        j.record(
            "r.a",
            6,
            Some(&record("a", 2, 1, AttemptOutcome::Delivered)),
        );
        popped(&mut j, "a", 2, DeliveryStatus::Delivered, 1);
        // a left the window unasked: only b is left to ask about.
        assert_eq!(j.unasked(), 1);
        assert_eq!(j.questions(10), vec![Box::from("r.b")]);
        assert_eq!(j.unasked(), 0);
        j.answer(&[Box::from("r.b")], |_| None);
        popped(&mut j, "b", 1, DeliveryStatus::Pending, 0);
        assert!(j.is_empty());
    }

    #[test]
    fn questions_are_worth_asking_from_a_quarter_full_window() {
        let mut j = Join::new(JoinLimits {
            postings: 8,
            bytes: 1 << 20,
        });
        hold(&mut j, "a", 1, 1);
        assert!(!j.should_ask());
        hold(&mut j, "b", 2, 1);
        assert!(j.should_ask(), "2 of 8 postings");
        let size = payload("r", "a", 1).len();
        let mut j = Join::new(JoinLimits {
            postings: 1000,
            bytes: 4 * size,
        });
        hold(&mut j, "a", 1, 1);
        assert!(j.should_ask(), "a quarter of the bytes");
    }

    #[test]
    fn an_order_without_records_or_whose_last_is_behind_goes_at_once() {
        let mut j = Join::new(JoinLimits::DEFAULT);
        hold(&mut j, "a", 1, 1);
        j.record(
            "r.a",
            2,
            Some(&record("a", 1, 1, AttemptOutcome::Delivered)),
        );
        hold(&mut j, "b", 3, 1);
        let q = j.questions(10);
        assert_eq!(q.len(), 2);
        // a's last record (2) is behind the consumer; b has none.
        j.answer(&q, |k| (k == "r.a").then_some(2));
        popped(&mut j, "a", 1, DeliveryStatus::Delivered, 1);
        popped(&mut j, "b", 1, DeliveryStatus::Pending, 0);
    }

    #[test]
    fn postings_go_in_stream_order_behind_an_incomplete_one() {
        let mut j = Join::new(JoinLimits::DEFAULT);
        hold(&mut j, "a", 1, 1);
        hold(&mut j, "b", 2, 1);
        let q = j.questions(10);
        j.answer(&q, |k| (k == "r.a").then_some(9));
        assert_eq!(j.front(), Front::Ahead);
        assert_eq!(pop(&mut j), None, "b waits behind a");
        j.read_all();
        assert_eq!(pop(&mut j).unwrap().0, "a");
        assert_eq!(pop(&mut j).unwrap().0, "b");
    }

    #[test]
    fn an_order_with_several_postings_folds_each_seq_apart() {
        let mut j = Join::new(JoinLimits::DEFAULT);
        hold(&mut j, "a", 1, 1);
        j.record("r.a", 2, Some(&record("a", 1, 1, AttemptOutcome::Dead)));
        hold(&mut j, "a", 3, 2);
        // Redelivered: posting 1 again, then 2.
        j.record(
            "r.a",
            4,
            Some(&record("a", 1, 2, AttemptOutcome::Delivered)),
        );
        j.record(
            "r.a",
            5,
            Some(&record("a", 2, 1, AttemptOutcome::Delivered)),
        );
        assert_eq!(j.questions(10).len(), 1, "one question per order");
        j.answer(&[Box::from("r.a")], |_| Some(5));
        popped(&mut j, "a", 1, DeliveryStatus::Delivered, 2);
        popped(&mut j, "a", 2, DeliveryStatus::Delivered, 1);
        assert!(j.entries.is_empty());
    }

    #[test]
    fn a_resolved_order_ignores_the_records_that_pass_by_later() {
        let mut j = Join::new(JoinLimits {
            postings: 2,
            bytes: usize::MAX,
        });
        hold(&mut j, "a", 1, 1);
        j.record("r.a", 2, Some(&record("a", 1, 1, AttemptOutcome::Retrying)));
        hold(&mut j, "b", 3, 1);
        assert!(j.is_full());
        let q = j.questions(10);
        j.answer(&q, |k| (k == "r.a").then_some(100));
        assert_eq!(j.front(), Front::Ahead);
        assert_eq!(j.stuck(64), vec![Box::from("r.a")]);
        // What the per-order read found: two attempts, delivered.
        let mut d = SeqDeliveries::default();
        d.apply(&record("a", 1, 1, AttemptOutcome::Retrying));
        d.apply(&record("a", 1, 2, AttemptOutcome::Delivered));
        j.resolve("r.a", d);
        assert!(!j.wants("r.a"));
        j.record(
            "r.a",
            4,
            Some(&record("a", 1, 2, AttemptOutcome::Delivered)),
        );
        popped(&mut j, "a", 1, DeliveryStatus::Delivered, 2);
        assert!(!j.is_full());
        popped(&mut j, "b", 1, DeliveryStatus::Pending, 0);
    }

    #[test]
    fn the_window_is_bounded_in_postings_and_bytes() {
        let one = payload("r", "a", 1).len();
        let mut j = Join::new(JoinLimits {
            postings: 100,
            bytes: 3 * one,
        });
        for i in 0..3 {
            assert!(!j.is_full());
            hold(&mut j, &format!("o{i}"), i + 1, 1);
        }
        assert!(j.is_full());
        j.read_all();
        while pop(&mut j).is_some() {}
        assert_eq!((j.len(), j.bytes, j.entries.len()), (0, 0, 0));
    }

    #[test]
    fn questions_are_asked_once_oldest_first_and_in_batches() {
        let mut j = Join::new(JoinLimits::DEFAULT);
        for i in 0..5 {
            hold(&mut j, &format!("o{i}"), i + 1, 1);
        }
        hold(&mut j, "o0", 6, 2);
        assert_eq!(j.unasked(), 5);
        let first = j.questions(2);
        assert_eq!(first, vec![Box::from("r.o0"), Box::from("r.o1")]);
        let rest = j.questions(10);
        assert_eq!(rest.len(), 3);
        assert_eq!(j.unasked(), 0);
        assert!(j.questions(10).is_empty());
        // An answer for an order that has left meanwhile is dropped.
        j.read_all();
        while pop(&mut j).is_some() {}
        j.answer(&first, |_| Some(99));
        assert!(j.entries.is_empty());
    }

    #[test]
    fn an_order_that_comes_back_is_asked_again() {
        let mut j = Join::new(JoinLimits::DEFAULT);
        hold(&mut j, "a", 1, 1);
        let q = j.questions(10);
        j.answer(&q, |_| None);
        assert!(pop(&mut j).is_some());
        hold(&mut j, "a", 5, 2);
        assert_eq!(j.front(), Front::Unasked);
        assert_eq!(j.questions(10), vec![Box::from("r.a")]);
    }

    #[test]
    fn a_posting_on_another_orders_subject_is_an_integrity_error() {
        let mut j = Join::new(JoinLimits::DEFAULT);
        let payload = payload("r", "a", 1);
        j.posting("r.b", 7, AT, payload.len(), decode_posting(&payload));
        j.read_all();
        let e = j.pop().unwrap_err();
        assert_eq!(
            e.to_string(),
            "LEDGER message 7: posting r/a/1 stored on ledger.postings.r.b"
        );
    }

    #[test]
    fn order_keys_are_the_subject_tail() {
        assert_eq!(
            order_key("ledger.postings.xero-eu.o-1"),
            Some(("postings", "xero-eu.o-1"))
        );
        assert_eq!(
            order_key("ledger.deliveries.r.o"),
            Some(("deliveries", "r.o"))
        );
        assert_eq!(order_key("ledger.postings.r"), None);
        assert_eq!(order_key("ledger.postings.r.o.x"), None);
        assert_eq!(split_key("r.o"), ("r", "o"));
    }
}
