//! The delivery state of one (registry, order), read back from LEDGER.
//!
//! Nothing about a delivery lives only in memory: after a restart the
//! dispatcher (and `deliveries list`, `redeliver`) rebuild it from three
//! subjects:
//! - the last `ledger.registry_data.<R>.<O>`: the last posting delivered,
//!   the registry_data the next one carries, and (header
//!   [`H_POSTING_STREAM_SEQ`]) where that posting is in the stream;
//! - the last `ledger.deliveries.<R>.<O>`: the attempts of the posting
//!   after it, whether it is retrying (and when the next attempt is due)
//!   or dead, and (headers [`H_ROUND_ATTEMPT`], [`H_ROUND_STARTED`]) the
//!   round of attempts `max_attempts` and `max_age` bound;
//! - the last `ledger.postings.<R>.<O>`: how many postings there are.
//!
//! State is read with Direct Get (`allow_direct` is on): cheap, and on one
//! server always current. In a cluster a replica may answer a little behind;
//! that is safe because every write that moves an order forward (the next
//! registry_data record, and every delivery record) is guarded by
//! `Nats-Expected-Last-Subject-Sequence` on the leader, and the body of posting n depends only on the stored
//! registry_data of n − 1: a stale read can at worst send a posting again
//! (or try a dead-lettered one once more) with its same key and body, never
//! another body, never skip one.
//!
//! [`OrderDeliveries`] is the one summary of an order's deliveries (a row of
//! `deliveries list` and the admin API), and [`Progress::posting_status`]
//! says where each posting stands, both in the one status model,
//! [`DeliveryStatus`].

use async_nats::jetstream::stream::Stream;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use crate::records::{AttemptOutcome, DeliveryRecord, DeliveryStatus, RegistryDataRecord};
use crate::streams::subjects;

/// Header on registry_data records: the LEDGER stream sequence of the
/// posting the record answers.
pub const H_POSTING_STREAM_SEQ: &str = "Ledgerline-Posting-Stream-Seq";
/// Header on delivery records: the attempt's number within its round.
pub const H_ROUND_ATTEMPT: &str = "Ledgerline-Round-Attempt";
/// Header on delivery records: when the round began (RFC 3339).
pub const H_ROUND_STARTED: &str = "Ledgerline-Round-Started";

/// Reading LEDGER failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {subject}: {source}")]
    Read {
        subject: String,
        #[source]
        source: async_nats::jetstream::stream::DirectGetError,
    },
    #[error("the record at {subject} #{stream_seq} is unreadable: {source}")]
    Corrupt {
        subject: String,
        stream_seq: u64,
        #[source]
        source: serde_json::Error,
    },
}

/// The last delivery record of an (R, O), with its round.
#[derive(Debug, Clone, PartialEq)]
pub struct LastDelivery {
    pub record: DeliveryRecord,
    pub stream_seq: u64,
    pub round_attempt: u32,
    pub round_started_at: OffsetDateTime,
}

/// Where one (registry, order) stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub registry_id: String,
    pub order_id: String,
    /// The last posting delivered (0: none).
    pub delivered_seq: u64,
    /// What posting `delivered_seq + 1` carries.
    pub registry_data: Value,
    /// Stream sequence of the last registry_data record (0: none), for the
    /// optimistic-concurrency check of the next one.
    pub registry_data_stream_seq: u64,
    /// Stream sequence of posting `delivered_seq` (0: unknown or none).
    pub delivered_posting_stream_seq: u64,
    pub last_delivery: Option<LastDelivery>,
}

/// Where posting `delivered_seq + 1` stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Current {
    /// Never attempted (or attempted in a record that was lost).
    Fresh,
    /// A retry is scheduled.
    Retrying {
        attempt: u32,
        round_attempt: u32,
        round_started_at: OffsetDateTime,
        next_attempt_at: OffsetDateTime,
    },
    /// Dead-lettered: holds the later postings until `redeliver`.
    Dead {
        attempt: u32,
        /// Stream sequence of the dead record: a redeliver request newer
        /// than it applies.
        stream_seq: u64,
    },
}

/// A message of a subject, or none.
async fn last_message(
    stream: &Stream,
    subject: &str,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, StateError> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
            Ok(None)
        }
        Err(source) => Err(StateError::Read {
            subject: subject.to_owned(),
            source,
        }),
    }
}

fn header<'a>(m: &'a async_nats::jetstream::message::StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

fn parse<T: serde::de::DeserializeOwned>(
    m: &async_nats::jetstream::message::StreamMessage,
) -> Result<T, StateError> {
    serde_json::from_slice(&m.payload).map_err(|source| StateError::Corrupt {
        subject: m.subject.to_string(),
        stream_seq: m.sequence,
        source,
    })
}

impl Progress {
    /// A (registry, order) with nothing delivered or attempted yet.
    pub fn new(registry_id: &str, order_id: &str) -> Self {
        Progress {
            registry_id: registry_id.to_owned(),
            order_id: order_id.to_owned(),
            delivered_seq: 0,
            registry_data: Value::Object(Default::default()),
            registry_data_stream_seq: 0,
            delivered_posting_stream_seq: 0,
            last_delivery: None,
        }
    }

    /// Reads the state of (registry, order) from LEDGER.
    pub async fn load(
        ledger: &Stream,
        registry_id: &str,
        order_id: &str,
    ) -> Result<Self, StateError> {
        let mut p = Progress::new(registry_id, order_id);
        // Both reads at once: a cold start costs one round trip, not two.
        let rd_subject = subjects::registry_data(registry_id, order_id);
        let dl_subject = subjects::deliveries(registry_id, order_id);
        let (last_rd, last_dl) = futures::future::try_join(
            last_message(ledger, &rd_subject),
            last_message(ledger, &dl_subject),
        )
        .await?;
        if let Some(m) = last_rd {
            let rd: RegistryDataRecord = parse(&m)?;
            p.delivered_seq = rd.seq;
            p.registry_data = rd.registry_data;
            p.registry_data_stream_seq = m.sequence;
            p.delivered_posting_stream_seq = header(&m, H_POSTING_STREAM_SEQ)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        if let Some(m) = last_dl {
            let record: DeliveryRecord = parse(&m)?;
            let round_attempt = header(&m, H_ROUND_ATTEMPT)
                .and_then(|v| v.parse().ok())
                .unwrap_or(record.attempt);
            let round_started_at = header(&m, H_ROUND_STARTED)
                .and_then(|v| {
                    OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok()
                })
                .unwrap_or(record.at);
            p.last_delivery = Some(LastDelivery {
                record,
                stream_seq: m.sequence,
                round_attempt,
                round_started_at,
            });
        }
        Ok(p)
    }

    /// The posting to deliver next.
    ///
    /// Saturates: a record claiming posting `u64::MAX` was delivered (only
    /// a corrupt one can) leaves nothing after it, rather than wrapping to 0.
    pub fn next_seq(&self) -> u64 {
        self.delivered_seq.saturating_add(1)
    }

    /// Where posting [`Progress::next_seq`] stands.
    pub fn current(&self) -> Current {
        let Some(last) = &self.last_delivery else {
            return Current::Fresh;
        };
        if last.record.seq != self.next_seq() {
            return Current::Fresh;
        }
        match last.record.outcome {
            AttemptOutcome::Retrying => Current::Retrying {
                attempt: last.record.attempt,
                round_attempt: last.round_attempt,
                round_started_at: last.round_started_at,
                // A retrying record always names its next attempt; without
                // one, retry now.
                next_attempt_at: last.record.next_attempt_at.unwrap_or(last.record.at),
            },
            AttemptOutcome::Dead => Current::Dead {
                attempt: last.record.attempt,
                stream_seq: last.stream_seq,
            },
            // Delivered but the registry_data record is not there (the two
            // are sent together; it was lost, or refused to a stale
            // writer): deliver again (same key, same body), counting on.
            AttemptOutcome::Delivered => Current::Retrying {
                attempt: last.record.attempt,
                round_attempt: last.round_attempt,
                round_started_at: last.round_started_at,
                next_attempt_at: last.record.at,
            },
        }
    }

    /// Where posting `seq` of the order stands: delivered up to
    /// `delivered_seq`, then the next one as [`Progress::current`] says,
    /// then held behind it if it is dead, else pending.
    pub fn posting_status(&self, seq: u64) -> DeliveryStatus {
        let current = self.current();
        if seq <= self.delivered_seq {
            DeliveryStatus::Delivered
        } else if seq == self.next_seq() {
            match current {
                Current::Fresh => DeliveryStatus::Pending,
                Current::Retrying { .. } => DeliveryStatus::Retrying,
                Current::Dead { .. } => DeliveryStatus::Dead,
            }
        } else if matches!(current, Current::Dead { .. }) {
            DeliveryStatus::Held
        } else {
            DeliveryStatus::Pending
        }
    }

    /// The number of the next attempt of posting `next_seq` (global, and in
    /// its round). Saturating: the counts come from stored records.
    pub fn next_attempt_numbers(&self) -> (u32, u32) {
        match self.current() {
            Current::Fresh => (1, 1),
            Current::Retrying {
                attempt,
                round_attempt,
                ..
            } => (attempt.saturating_add(1), round_attempt.saturating_add(1)),
            Current::Dead { attempt, .. } => (attempt.saturating_add(1), 1),
        }
    }
}

/// One (registry, order) as `deliveries list` and the admin API show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderDeliveries {
    pub registry_id: String,
    pub order_id: String,
    pub status: DeliveryStatus,
    /// Postings stored for the order.
    pub postings: u64,
    /// Postings delivered.
    pub delivered: u64,
    /// Postings held behind a dead-lettered one.
    pub held: u64,
    /// The posting that is retrying or dead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_seq: Option<u64>,
    /// Attempts of that posting so far.
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub next_attempt_at: Option<OffsetDateTime>,
}

impl OrderDeliveries {
    /// Summarises `progress` for an (R, O) with `postings` postings.
    pub fn new(progress: &Progress, postings: u64) -> Self {
        let mut out = OrderDeliveries {
            registry_id: progress.registry_id.clone(),
            order_id: progress.order_id.clone(),
            status: DeliveryStatus::Pending,
            postings,
            delivered: progress.delivered_seq.min(postings),
            held: 0,
            failing_seq: None,
            attempts: 0,
            http_status: None,
            last_error: None,
            next_attempt_at: None,
        };
        if progress.delivered_seq >= postings {
            out.status = DeliveryStatus::Delivered;
            return out;
        }
        let last = progress
            .last_delivery
            .as_ref()
            .filter(|l| l.record.seq == progress.next_seq());
        if let Some(l) = last {
            out.attempts = l.record.attempt;
            out.http_status = l.record.http_status;
            out.last_error = l.record.error.clone();
            out.failing_seq = Some(l.record.seq);
        }
        match progress.current() {
            Current::Fresh => {}
            Current::Retrying {
                next_attempt_at, ..
            } => {
                out.status = DeliveryStatus::Retrying;
                out.next_attempt_at = Some(next_attempt_at);
            }
            Current::Dead { .. } => {
                out.status = DeliveryStatus::Dead;
                out.held = postings.saturating_sub(progress.next_seq());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use uuid::Uuid;

    fn record(seq: u64, attempt: u32, outcome: AttemptOutcome) -> DeliveryRecord {
        serde_json::from_value(serde_json::json!({
            "registry_id": "r", "order_id": "o", "seq": seq,
            "idempotency_key": Uuid::nil(), "attempt": attempt,
            "outcome": outcome, "duration_ms": 3,
            "next_attempt_at": "2026-01-01T00:00:05Z",
            "at": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    fn progress(delivered: u64, last: Option<DeliveryRecord>) -> Progress {
        Progress {
            registry_id: "r".into(),
            order_id: "o".into(),
            delivered_seq: delivered,
            registry_data: Value::Object(Default::default()),
            registry_data_stream_seq: 0,
            delivered_posting_stream_seq: 0,
            last_delivery: last.map(|record| LastDelivery {
                round_attempt: record.attempt,
                round_started_at: record.at,
                record,
                stream_seq: 9,
            }),
        }
    }

    #[test]
    fn the_last_records_say_where_an_order_stands() {
        let p = progress(1, Some(record(1, 1, AttemptOutcome::Delivered)));
        assert_eq!(p.current(), Current::Fresh);
        assert_eq!(
            OrderDeliveries::new(&p, 1).status,
            DeliveryStatus::Delivered
        );
        assert_eq!(OrderDeliveries::new(&p, 3).status, DeliveryStatus::Pending);

        let p = progress(1, Some(record(2, 3, AttemptOutcome::Retrying)));
        assert!(matches!(
            p.current(),
            Current::Retrying { attempt: 3, next_attempt_at, .. }
                if next_attempt_at == datetime!(2026-01-01 00:00:05 UTC)
        ));
        assert_eq!(p.next_attempt_numbers(), (4, 4));
        let s = OrderDeliveries::new(&p, 2);
        assert_eq!(
            (s.status, s.attempts, s.failing_seq),
            (DeliveryStatus::Retrying, 3, Some(2))
        );
        assert_eq!(
            (p.posting_status(2), p.posting_status(3)),
            (DeliveryStatus::Retrying, DeliveryStatus::Pending)
        );

        let p = progress(1, Some(record(2, 4, AttemptOutcome::Dead)));
        assert_eq!(
            p.current(),
            Current::Dead {
                attempt: 4,
                stream_seq: 9
            }
        );
        assert_eq!(
            p.next_attempt_numbers(),
            (5, 1),
            "a redelivery starts a new round"
        );
        let s = OrderDeliveries::new(&p, 5);
        assert_eq!((s.status, s.held), (DeliveryStatus::Dead, 3));
        assert_eq!(
            (1..=4).map(|n| p.posting_status(n)).collect::<Vec<_>>(),
            [
                DeliveryStatus::Delivered,
                DeliveryStatus::Dead,
                DeliveryStatus::Held,
                DeliveryStatus::Held
            ]
        );
    }

    /// Found with the `records` fuzz target (an input made for its
    /// harness): counters read from LEDGER at their maximum (a corrupt or
    /// hostile record) overflowed (a panic in debug builds, a wrap to
    /// posting 0 / attempt 0 in release).
    #[test]
    fn counters_at_their_maximum_do_not_overflow() {
        let p = progress(
            u64::MAX,
            Some(record(2, u32::MAX, AttemptOutcome::Retrying)),
        );
        assert_eq!(p.next_seq(), u64::MAX);
        assert_eq!(p.current(), Current::Fresh);
        assert_eq!(
            OrderDeliveries::new(&p, 7).status,
            DeliveryStatus::Delivered
        );

        let p = progress(1, Some(record(2, u32::MAX, AttemptOutcome::Retrying)));
        assert_eq!(p.next_attempt_numbers(), (u32::MAX, u32::MAX));
        let p = progress(1, Some(record(2, u32::MAX, AttemptOutcome::Dead)));
        assert_eq!(p.next_attempt_numbers(), (u32::MAX, 1));
    }
}
