//! What is stored on each LEDGER subject, as JSON (the event-sourced record).
//!
//! Every record is self-describing (registry, order, posting seq and
//! idempotency key), so the stream alone answers an auditor: what was posted,
//! what the receiver answered, every attempt and why it failed.
//!
//! It also holds the one model of where a posting stands with its receiver
//! ([`DeliveryStatus`]) and the one fold of an order's delivery records into
//! it, per posting ([`SeqDeliveries`]), used by the dispatcher's views, the
//! export, the admin API and the CLI.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::wire::wire_names;
use crate::posting::{GroupedEntry, Posting};

mod fast;

/// `ledger.postings.<R>.<O>`: a posting, and the ORDERS stream sequence of
/// the event that produced it (so a restarted aggregator knows whether an
/// event was already posted).
///
/// Read without `#[serde(flatten)]` (which buffers the whole record into an
/// intermediate tree before building the posting): through
/// `StoredPostingFields`, the same JSON object field by field: whole by
/// the aggregator and `verify`, and without its `cumulative`
/// ([`StoredPosting::read_without_cumulative`]) for every wake-up the
/// dispatcher takes and every posting the export writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredPostingFields<Vec<GroupedEntry>>")]
pub struct StoredPosting {
    /// ORDERS stream sequence of the event.
    pub source_seq: u64,
    /// LEDGER stream sequence of the previous posting on the same subject
    /// (0 for the first): lets a restarted aggregator find the cursor from
    /// before an event whose posting it had already published.
    #[serde(default)]
    pub previous_subject_seq: u64,
    #[serde(flatten)]
    pub posting: Posting,
}

/// A [`StoredPosting`] to store, borrowing its posting: the same JSON
/// (same fields, same order), without copying the posting first.
#[derive(Debug, Serialize)]
pub struct StoredPostingRef<'a> {
    pub source_seq: u64,
    pub previous_subject_seq: u64,
    #[serde(flatten)]
    pub posting: &'a Posting,
}

impl StoredPostingRef<'_> {
    /// The stored JSON, the bytes `serde_json::to_vec(self)` writes (the
    /// tests hold them equal), written by hand: see
    /// [`Posting::write_json_fields`].
    pub fn to_json(&self) -> Result<Vec<u8>, time::error::Format> {
        let mut out = Vec::with_capacity(self.posting.json_capacity());
        out.extend_from_slice(b"{\"source_seq\":");
        crate::money::write_unsigned(&mut out, self.source_seq);
        out.extend_from_slice(b",\"previous_subject_seq\":");
        crate::money::write_unsigned(&mut out, self.previous_subject_seq);
        out.push(b',');
        self.posting.write_json_fields(&mut out)?;
        out.push(b'}');
        Ok(out)
    }
}

/// [`StoredPosting`] as its stored JSON object has it: its own fields and
/// the posting's side by side. Building the [`Posting`] names every field,
/// so a field added to it cannot be forgotten here. `C` is how
/// `cumulative` is read: whole (`Vec<GroupedEntry>`), or skipped unparsed
/// ([`IgnoredAny`]) by [`StoredPosting::read_without_cumulative`].
#[derive(Deserialize)]
struct StoredPostingFields<C> {
    source_seq: u64,
    #[serde(default)]
    previous_subject_seq: u64,
    registry_id: String,
    order_id: crate::events::OrderId,
    seq: u64,
    idempotency_key: Uuid,
    event_id: String,
    event_type: crate::events::EventType,
    #[serde(with = "time::serde::rfc3339")]
    occurred_at: OffsetDateTime,
    mode: crate::registry::PostingMode,
    currency: Option<crate::money::Currency>,
    filtered: bool,
    entries: Vec<GroupedEntry>,
    cumulative: C,
}

/// How [`StoredPostingFields`] holds `cumulative`.
trait Cumulative {
    fn into_entries(self) -> Vec<GroupedEntry>;
}

impl Cumulative for Vec<GroupedEntry> {
    fn into_entries(self) -> Vec<GroupedEntry> {
        self
    }
}

impl Cumulative for IgnoredAny {
    fn into_entries(self) -> Vec<GroupedEntry> {
        Vec::new()
    }
}

impl<C: Cumulative> From<StoredPostingFields<C>> for StoredPosting {
    fn from(f: StoredPostingFields<C>) -> Self {
        StoredPosting {
            source_seq: f.source_seq,
            previous_subject_seq: f.previous_subject_seq,
            posting: Posting {
                registry_id: f.registry_id,
                order_id: f.order_id,
                seq: f.seq,
                idempotency_key: f.idempotency_key,
                event_id: f.event_id,
                event_type: f.event_type,
                occurred_at: f.occurred_at,
                mode: f.mode,
                currency: f.currency,
                filtered: f.filtered,
                entries: f.entries,
                cumulative: f.cumulative.into_entries(),
            },
        }
    }
}

impl StoredPosting {
    /// A stored posting read without its `cumulative` (the order's whole
    /// grouped ledger, often larger than the posting itself; left empty):
    /// for readers that send or list postings (the dispatcher, the export),
    /// not for those that build the next one.
    ///
    /// A record as the aggregator writes it is read straight from its
    /// bytes (`fast`); any other (an escape in a text, a field the reader
    /// does not know, a fault) by serde, which names what is wrong.
    pub fn read_without_cumulative(payload: &[u8]) -> Result<StoredPosting, serde_json::Error> {
        match fast::read_without_cumulative(payload) {
            Some(read) => Ok(read),
            None => Self::read_without_cumulative_by_serde(payload),
        }
    }

    /// [`StoredPosting::read_without_cumulative`] through serde alone.
    pub fn read_without_cumulative_by_serde(
        payload: &[u8],
    ) -> Result<StoredPosting, serde_json::Error> {
        serde_json::from_slice::<StoredPostingFields<IgnoredAny>>(payload).map(StoredPosting::from)
    }
}

/// How the `error` of a `dead` record begins when its posting was never
/// sent because it cannot be (missing or unreadable on LEDGER: a bug
/// upstream); a redelivery could only fail the same way.
pub const NOT_SENT: &str = "not sent: ";

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// 2xx (and the accept rule, if any): the posting is delivered.
    Delivered,
    /// A retryable failure; another attempt is scheduled.
    Retrying,
    /// A permanent failure, or attempts/age exhausted: dead-lettered.
    Dead,
}

/// `ledger.deliveries.<R>.<O>`: one delivery attempt of one posting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub registry_id: String,
    pub order_id: String,
    /// The posting's seq (n).
    pub seq: u64,
    pub idempotency_key: Uuid,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    /// HTTP status, when a response arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    pub duration_ms: u64,
    /// Why it failed (connection error, timeout, status, refused reply…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The start of the response body (at most [`RESPONSE_EXCERPT_MAX_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_excerpt: Option<String>,
    /// When the next attempt is due, for `retrying`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub next_attempt_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A [`DeliveryRecord`] read without copying its texts out of the stored
/// JSON (they are borrowed unless escaped): for readers that fold records
/// ([`SeqDeliveries::apply_view`]) and never keep them, like the export.
/// The same fields with the same types as [`DeliveryRecord`], so it accepts
/// exactly the records that one does.
#[derive(Debug, Deserialize)]
pub struct DeliveryRecordView<'a> {
    #[serde(borrow)]
    pub registry_id: Cow<'a, str>,
    #[serde(borrow)]
    pub order_id: Cow<'a, str>,
    pub seq: u64,
    pub idempotency_key: Uuid,
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    #[serde(default)]
    pub http_status: Option<u16>,
    pub duration_ms: u64,
    #[serde(default, borrow)]
    pub error: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub response_excerpt: Option<Cow<'a, str>>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `attempt()`, what the fold of [`SeqDeliveries`] reads of a record, for
/// the record and its borrowed view alike (the same fields).
macro_rules! fold_attempt {
    ($($record:ty),+) => {$(
        impl $record {
            /// What the fold of [`SeqDeliveries`] reads of it.
            fn attempt(&self) -> Attempt<'_> {
                Attempt {
                    seq: self.seq,
                    attempt: self.attempt,
                    outcome: self.outcome,
                    http_status: self.http_status,
                    error: self.error.as_deref(),
                    next_attempt_at: self.next_attempt_at,
                    at: self.at,
                }
            }
        }
    )+};
}

fold_attempt!(DeliveryRecord, DeliveryRecordView<'_>);

/// One attempt as the fold reads it, from a record or a view of one.
struct Attempt<'a> {
    seq: u64,
    attempt: u32,
    outcome: AttemptOutcome,
    http_status: Option<u16>,
    error: Option<&'a str>,
    next_attempt_at: Option<OffsetDateTime>,
    at: OffsetDateTime,
}

/// Where a posting (or, in `deliveries list`, an order) stands with its
/// receiver: the one model of delivery status. Its words ([`Self::as_str`],
/// and the same in JSON) are what users see in the export's
/// `delivery_status` column, the admin API and the CLI.
///
/// Read for an order (`deliveries list --status`, the variants' docs are its
/// help), a status is its first undelivered posting's; an order is never
/// `held`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum DeliveryStatus {
    /// Every posting delivered.
    Delivered,
    /// Postings wait for their first attempt.
    Pending,
    /// A posting failed and will be retried.
    Retrying,
    /// A posting is dead-lettered; later ones are held.
    Dead,
    /// A posting waiting behind a dead-lettered one of its order.
    #[value(skip)]
    Held,
}

wire_names!(DeliveryStatus);

impl From<AttemptOutcome> for DeliveryStatus {
    fn from(o: AttemptOutcome) -> Self {
        match o {
            AttemptOutcome::Delivered => DeliveryStatus::Delivered,
            AttemptOutcome::Retrying => DeliveryStatus::Retrying,
            AttemptOutcome::Dead => DeliveryStatus::Dead,
        }
    }
}

/// What the delivery records of one posting add up to, folded in stream
/// (attempt) order up to its first `delivered` record: a posting once
/// delivered stays delivered as it was. A record of it stored later (the
/// posting sent again because a crash lost its registry_data write, with
/// its same key and body) is kept on the stream and changes nothing here,
/// so the state of a delivered posting is known as soon as its `delivered`
/// record is read (the export lets a posting go there, without asking
/// where its order's last record lies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqDelivery {
    /// The last attempt's outcome, or `Pending` without any.
    pub status: DeliveryStatus,
    /// When the successful attempt ended.
    pub delivered_at: Option<OffsetDateTime>,
    /// Number of attempts recorded, up to the delivery (the export's
    /// `attempts` column).
    pub attempts: u32,
    /// The highest attempt number recorded (the admin API's `attempts`):
    /// the dispatcher numbers attempts on across rounds, so this is the
    /// count of attempts made even when a record was lost.
    pub highest_attempt: u32,
    /// The last attempt's HTTP status, when a response arrived.
    pub http_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the last attempt said the next one is due.
    pub next_attempt_at: Option<OffsetDateTime>,
}

impl SeqDelivery {
    /// A posting without any attempt.
    pub const PENDING: SeqDelivery = SeqDelivery {
        status: DeliveryStatus::Pending,
        delivered_at: None,
        attempts: 0,
        highest_attempt: 0,
        http_status: None,
        last_error: None,
        next_attempt_at: None,
    };

    /// Applies the next attempt of this posting.
    pub fn apply(&mut self, r: &DeliveryRecord) {
        self.apply_attempt(&r.attempt());
    }

    fn apply_attempt(&mut self, r: &Attempt<'_>) {
        if self.status == DeliveryStatus::Delivered {
            return;
        }
        self.attempts = self.attempts.saturating_add(1);
        self.highest_attempt = self.highest_attempt.max(r.attempt);
        self.status = r.outcome.into();
        self.http_status = r.http_status;
        match (r.error, &mut self.last_error) {
            (Some(e), Some(kept)) => {
                kept.clear();
                kept.push_str(e);
            }
            (e, kept) => *kept = e.map(str::to_owned),
        }
        self.next_attempt_at = r.next_attempt_at;
        if r.outcome == AttemptOutcome::Delivered {
            self.delivered_at = Some(r.at);
        }
    }
}

/// Every posting's [`SeqDelivery`] for one (registry, order), by seq: a
/// vector sorted by seq (an order has a handful of postings; a map's node
/// would be ten times the size).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqDeliveries {
    by_seq: Vec<(u64, SeqDelivery)>,
}

impl SeqDeliveries {
    /// Folds the next record (in stream order) in.
    pub fn apply(&mut self, r: &DeliveryRecord) {
        self.apply_attempt(&r.attempt());
    }

    /// [`Self::apply`] for a record read as a view: the same fold.
    pub fn apply_view(&mut self, r: &DeliveryRecordView<'_>) {
        self.apply_attempt(&r.attempt());
    }

    fn apply_attempt(&mut self, r: &Attempt<'_>) {
        let i = match self.by_seq.binary_search_by_key(&r.seq, |(s, _)| *s) {
            Ok(i) => i,
            Err(i) => {
                self.by_seq.insert(i, (r.seq, SeqDelivery::PENDING));
                i
            }
        };
        self.by_seq[i].1.apply_attempt(r);
    }

    /// The state of posting `seq`: pending when nothing was recorded.
    pub fn get(&self, seq: u64) -> SeqDelivery {
        match self.by_seq.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(i) => self.by_seq[i].1.clone(),
            Err(_) => SeqDelivery::PENDING,
        }
    }

    /// True when posting `seq`'s `delivered` record is folded in: its
    /// state is final ([`SeqDelivery`]).
    pub fn is_delivered(&self, seq: u64) -> bool {
        self.by_seq
            .binary_search_by_key(&seq, |(s, _)| *s)
            .is_ok_and(|i| self.by_seq[i].1.status == DeliveryStatus::Delivered)
    }

    /// Gives back the room kept for more postings (for a long-lived copy).
    pub fn shrink_to_fit(&mut self) {
        self.by_seq.shrink_to_fit();
    }
}

/// Longest response excerpt kept in a delivery record.
pub const RESPONSE_EXCERPT_MAX_BYTES: usize = 1024;

/// `ledger.registry_data.<R>.<O>`: the receiver's answer to posting `seq`,
/// sent back as registry_data with posting `seq + 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryDataRecord {
    pub registry_id: String,
    pub order_id: String,
    /// The posting this answers.
    pub seq: u64,
    pub idempotency_key: Uuid,
    pub registry_data: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

/// `ledger.alerts.<R>`: a posting was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub registry_id: String,
    pub order_id: String,
    pub seq: u64,
    pub idempotency_key: Uuid,
    /// Why it was dead-lettered, in words.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The receiver's own message, when its reply carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_message: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `ledger.control.<R>.<O>`: an operator action on a (registry, order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ControlRecord {
    /// Retry the dead-lettered posting `seq` with its same key, then release
    /// what it held.
    Redeliver {
        registry_id: String,
        order_id: String,
        seq: u64,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// The overdue-retry sweep found posting `seq` retrying with nothing
    /// scheduled to bring it back: a plain wake-up for the order.
    Wake {
        registry_id: String,
        order_id: String,
        seq: u64,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_statuses_are_named_alike_everywhere() {
        crate::domain::wire::assert_wire_names_are_serde_names::<DeliveryStatus>();
    }

    /// Found by `cargo fuzz run records` (fuzz/corpus/records/…c440f514):
    /// a receiver's registry_data with an integer beyond u64 is kept as an
    /// f64, and serde_json's default float parser did not read back what
    /// it wrote (1.8446744407370952e21 became …954e21), so the stored
    /// record, and the registry_data sent back, changed on every write and
    /// read.
    #[test]
    fn registry_data_reads_back_what_was_written() {
        let payload = br#"{"registry_id": "r", "order_id": "ord-0", "seq": 1,
            "idempotency_key": "6f1c2d3e-0000-5000-8000-000000000001",
            "registry_data": {"lines": [1, 1844674440737095516152, 0.1, 5e-324, 1.7976931348623157e308]},
            "received_at": "2026-11-22T10:03:00Z"}"#;
        let first: RegistryDataRecord = serde_json::from_slice(payload).unwrap();
        let written = serde_json::to_vec(&first).unwrap();
        let second: RegistryDataRecord = serde_json::from_slice(&written).unwrap();
        assert_eq!(second, first);
        assert_eq!(serde_json::to_vec(&second).unwrap(), written);
    }

    /// A record as the dispatcher stores it (built from JSON so that fields
    /// added to the record later do not break this test).
    fn attempt(seq: u64, n: u32, outcome: AttemptOutcome, status: Option<u16>) -> DeliveryRecord {
        let mut v = serde_json::json!({
            "registry_id": "r", "order_id": "o", "seq": seq,
            "idempotency_key": Uuid::nil(), "attempt": n, "outcome": outcome,
            "duration_ms": 5, "at": "2026-11-22T10:00:00Z",
        });
        if let Some(s) = status {
            v["http_status"] = s.into();
        }
        if outcome == AttemptOutcome::Retrying {
            v["error"] = format!("attempt {n} failed").into();
            v["next_attempt_at"] = "2026-11-22T10:05:00Z".into();
        }
        serde_json::from_value(v).expect("a valid delivery record")
    }

    #[test]
    fn the_last_attempt_decides_the_status_and_every_attempt_counts() {
        let mut d = SeqDeliveries::default();
        d.apply(&attempt(1, 1, AttemptOutcome::Retrying, Some(503)));
        d.apply(&attempt(1, 2, AttemptOutcome::Retrying, None));
        d.apply(&attempt(1, 3, AttemptOutcome::Delivered, Some(200)));
        d.apply(&attempt(2, 1, AttemptOutcome::Dead, Some(422)));
        let one = d.get(1);
        assert_eq!(one.status, DeliveryStatus::Delivered);
        assert_eq!((one.attempts, one.highest_attempt), (3, 3));
        assert_eq!(one.http_status, Some(200));
        assert_eq!(one.delivered_at, Some(datetime!(2026-11-22 10:00:00 UTC)));
        assert_eq!((one.last_error, one.next_attempt_at), (None, None));
        let two = d.get(2);
        assert_eq!(
            (two.status, two.attempts, two.http_status, two.delivered_at),
            (DeliveryStatus::Dead, 1, Some(422), None)
        );
        assert_eq!(d.get(3), SeqDelivery::PENDING);
    }

    #[test]
    fn a_timed_out_last_attempt_leaves_http_status_empty_and_says_why() {
        let mut s = SeqDelivery::PENDING;
        s.apply(&attempt(1, 1, AttemptOutcome::Retrying, Some(500)));
        s.apply(&attempt(1, 2, AttemptOutcome::Retrying, None));
        assert_eq!(s.http_status, None);
        assert_eq!(s.attempts, 2);
        assert_eq!(s.last_error.as_deref(), Some("attempt 2 failed"));
        assert_eq!(s.next_attempt_at, Some(datetime!(2026-11-22 10:05:00 UTC)));
    }

    /// A record read as a view folds exactly as the record does, and the
    /// view accepts and refuses the same JSON.
    #[test]
    fn a_view_of_a_record_folds_as_the_record_and_reads_the_same_json() {
        let records = [
            attempt(1, 1, AttemptOutcome::Retrying, Some(503)),
            attempt(1, 2, AttemptOutcome::Retrying, None),
            attempt(1, 3, AttemptOutcome::Delivered, Some(200)),
            attempt(2, 1, AttemptOutcome::Retrying, Some(500)),
            attempt(2, 2, AttemptOutcome::Dead, Some(422)),
        ];
        let (mut whole, mut viewed) = (SeqDeliveries::default(), SeqDeliveries::default());
        for mut r in records {
            // An escaped text is copied, not borrowed: the same either way.
            r.error = r.error.map(|e| format!("{e} \"quoted\" \u{e9}"));
            r.response_excerpt = Some("<html>".into());
            let json = serde_json::to_vec(&r).unwrap();
            whole.apply(&serde_json::from_slice(&json).unwrap());
            let view: DeliveryRecordView<'_> = serde_json::from_slice(&json).unwrap();
            assert_eq!((&*view.registry_id, &*view.order_id), ("r", "o"));
            viewed.apply_view(&view);
        }
        assert_eq!(viewed, whole);
        assert!(whole.get(2).last_error.is_none());
        for bad in [
            r#"{"registry_id":"r","order_id":"o","seq":1,"attempt":1,"outcome":"dead","duration_ms":1,"at":"2026-11-22T10:00:00Z"}"#,
            r#"{"registry_id":"r","order_id":"o","seq":1,"idempotency_key":"x","attempt":1,"outcome":"dead","duration_ms":1,"at":"2026-11-22T10:00:00Z"}"#,
        ] {
            assert!(serde_json::from_str::<DeliveryRecord>(bad).is_err());
            assert!(serde_json::from_str::<DeliveryRecordView<'_>>(bad).is_err());
        }
    }

    /// A posting sent again after its delivery (a crash lost its
    /// registry_data write) stays delivered as it was, whatever the resend
    /// gave: its `delivered` record settles it.
    #[test]
    fn a_delivered_posting_stays_delivered_whatever_follows() {
        let mut d = SeqDeliveries::default();
        d.apply(&attempt(1, 1, AttemptOutcome::Retrying, Some(503)));
        d.apply(&attempt(1, 2, AttemptOutcome::Delivered, Some(200)));
        let settled = d.get(1);
        let mut late = attempt(1, 3, AttemptOutcome::Retrying, Some(500));
        late.at = datetime!(2026-11-22 11:00:00 UTC);
        d.apply(&late);
        let mut again = attempt(1, 4, AttemptOutcome::Delivered, Some(201));
        again.at = datetime!(2026-11-22 12:00:00 UTC);
        d.apply(&again);
        assert_eq!(d.get(1), settled);
        assert_eq!(
            (settled.status, settled.attempts, settled.http_status),
            (DeliveryStatus::Delivered, 2, Some(200))
        );
        assert_eq!(
            settled.delivered_at,
            Some(datetime!(2026-11-22 10:00:00 UTC))
        );
    }

    /// Attempt numbers run on across rounds; a lost record leaves a gap.
    #[test]
    fn attempts_count_records_and_the_highest_number_is_kept_apart() {
        let mut s = SeqDelivery::PENDING;
        s.apply(&attempt(1, 4, AttemptOutcome::Retrying, Some(503)));
        s.apply(&attempt(1, 2, AttemptOutcome::Retrying, Some(503)));
        assert_eq!((s.attempts, s.highest_attempt), (2, 4));
    }

    /// The words users see (CSV `delivery_status`, API JSON, CLI tables).
    #[test]
    fn statuses_are_shown_by_the_same_words_everywhere() {
        let all = [
            DeliveryStatus::Delivered,
            DeliveryStatus::Pending,
            DeliveryStatus::Retrying,
            DeliveryStatus::Dead,
            DeliveryStatus::Held,
        ];
        let words = all.map(DeliveryStatus::as_str);
        assert_eq!(words, ["delivered", "pending", "retrying", "dead", "held"]);
        assert_eq!(
            serde_json::to_value(all).unwrap(),
            serde_json::json!(words),
            "JSON says the same words"
        );
        let cli: Vec<String> = <DeliveryStatus as clap::ValueEnum>::value_variants()
            .iter()
            .filter_map(clap::ValueEnum::to_possible_value)
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_owned())
            .collect();
        assert_eq!(
            cli,
            ["delivered", "pending", "retrying", "dead"],
            "an order is never held"
        );
    }

    use crate::events::{EventType, OrderId};
    use crate::ledger::EntryType;
    use crate::money::Currency;
    use crate::posting::{Columns, GroupKey, GroupedEntry};
    use crate::registry::PostingMode;
    use rust_decimal::Decimal;
    use time::macros::datetime;

    /// How the record was read before: with `#[serde(flatten)]`.
    #[derive(Deserialize)]
    struct Flattened {
        source_seq: u64,
        #[serde(default)]
        previous_subject_seq: u64,
        #[serde(flatten)]
        posting: Posting,
    }

    fn entry(t: EntryType, cents: i64) -> GroupedEntry {
        GroupedEntry {
            key: GroupKey {
                entry_type: t,
                ledger_code: Some("4000".into()),
                description: "Museum \"General\" Admission".into(),
                columns: Columns::from([]),
            }
            .into(),
            quantity: 2,
            amount: Decimal::new(cents, 2),
        }
    }

    #[test]
    fn a_stored_posting_reads_back_exactly_as_the_flattened_form_did() {
        let sp = StoredPosting {
            source_seq: 42,
            previous_subject_seq: 17,
            posting: Posting {
                registry_id: "books".into(),
                order_id: OrderId::parse("o-1").unwrap(),
                seq: 3,
                idempotency_key: Uuid::from_u128(7),
                event_id: "e-3".into(),
                event_type: EventType::OrderUpdated,
                occurred_at: datetime!(2026-11-22 10:00:01.5 UTC),
                mode: PostingMode::Delta,
                currency: Some(Currency::parse("JPY").unwrap()),
                filtered: true,
                entries: vec![entry(EntryType::Revenue, -1100)],
                cumulative: vec![entry(EntryType::Revenue, 2200), entry(EntryType::Tax, 0)],
            },
        };
        let bytes = serde_json::to_vec(&sp).unwrap();
        let read: StoredPosting = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(read, sp);
        // What the aggregator stores, borrowing the posting, is the same bytes.
        let borrowed = StoredPostingRef {
            source_seq: sp.source_seq,
            previous_subject_seq: sp.previous_subject_seq,
            posting: &sp.posting,
        };
        assert_eq!(serde_json::to_vec(&borrowed).unwrap(), bytes);
        // And so are the bytes it writes by hand.
        assert_eq!(borrowed.to_json().unwrap(), bytes);
        let before: Flattened = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (
                before.source_seq,
                before.previous_subject_seq,
                before.posting
            ),
            (read.source_seq, read.previous_subject_seq, read.posting)
        );
        // Older records have no previous_subject_seq, some no currency.
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.remove("previous_subject_seq");
        obj.insert("currency".into(), Value::Null);
        let old: StoredPosting = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(old.previous_subject_seq, 0);
        assert_eq!(old.posting.currency, None);
        // A missing field is still named.
        v.as_object_mut().unwrap().remove("seq");
        let e = serde_json::from_value::<StoredPosting>(v).unwrap_err();
        assert!(e.to_string().contains("seq"), "{e}");
    }
}
