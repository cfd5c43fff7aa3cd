//! What a delivery worker does next, decided without I/O.
//!
//! [`decide`] reads where the order stands ([`Progress`]), what is known of
//! the posting after the last delivered one ([`Next`]), what the held
//! wake-ups say ([`WakeUp`], without their messages) and the time, and
//! returns one [`Step`]: a row of the table in [`super::worker`], which
//! then carries the step out against NATS (`Worker::apply`). Pure: no
//! async, no NATS types, no clock, no randomness, so each row is
//! unit-tested here without a server.
//!
//! What stays with the worker, because it touches shared state: the
//! circuit breaker, the rate limiter, the lease fence and the attempt.

use std::time::Duration;

use time::OffsetDateTime;

use super::state::{Current, Progress};

/// A wake-up for a posting the stream does not show yet (a lagging
/// replica) is looked at again after this long.
pub const NOT_VISIBLE_DELAY: Duration = Duration::from_secs(1);

/// What is known of posting `progress.next_seq()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next<P, W> {
    /// On the stream (or in a held wake-up), ready to send.
    Found(P),
    /// Not on the stream (yet).
    NotOnStream,
    /// Missing or unreadable: it can never be sent, for this reason.
    Unsendable(W),
}

impl<P, W> Next<P, W> {
    pub fn as_ref(&self) -> Next<&P, &W> {
        match self {
            Next::Found(p) => Next::Found(p),
            Next::NotOnStream => Next::NotOnStream,
            Next::Unsendable(w) => Next::Unsendable(w),
        }
    }
}

/// What a held wake-up says: a consumer message's stream sequence and
/// kind, without the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WakeUp {
    pub stream_seq: u64,
    pub kind: WakeUpKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WakeUpKind {
    /// Posting `seq` was stored.
    Posting { seq: u64 },
    /// A posting message that cannot be read.
    UnreadablePosting,
    /// An operator asked to redeliver posting `seq`.
    Redeliver { seq: u64 },
    /// The overdue-retry sweep woke the order ([`super::sweep`]).
    Wake,
}

/// An attempt's numbers: global, within its round, and when the round began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Round {
    pub attempt: u32,
    pub round_attempt: u32,
    pub round_started_at: OffsetDateTime,
}

/// Why a worker waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// A wake-up names a posting the stream does not show yet.
    NotVisible,
    /// The posting's next attempt is scheduled later.
    RetryNotDue,
}

/// What the worker does next: one row of the table in [`super::worker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step<P, W> {
    /// Every posting is delivered: ack every wake-up, keep the state for
    /// the order's next worker, end.
    CaughtUp,
    /// Wait `delay` durably: hand every wake-up back with it, end.
    Park { delay: Duration, why: Wait },
    /// The posting is dead and nobody asked for it again: ack every
    /// wake-up, end (until a redeliver request).
    HoldDead,
    /// The posting is dead and a redeliver request newer than its dead
    /// record is held: send it again (same key, same body) in a new round.
    Redeliver { posting: P, round: Round },
    /// The posting is fresh or its retry is due: send it.
    Attempt { posting: P, round: Round },
    /// The posting can never be sent: dead-letter it unsent, for `why`.
    DeadLetterUnsendable { why: W, round: Round },
}

/// What to do with the order `progress` describes, given what is known of
/// its next posting, the wake-ups held and the time.
pub(crate) fn decide<P, W>(
    progress: &Progress,
    next: Next<P, W>,
    held: &[WakeUp],
    now: OffsetDateTime,
) -> Step<P, W> {
    match next {
        Next::NotOnStream => caught_up(progress, held),
        Next::Unsendable(why) => unsendable(progress, why, now),
        Next::Found(posting) => found(progress, posting, held, now),
    }
}

/// Caught up, unless a wake-up names a posting the stream does not show
/// yet.
fn caught_up<P, W>(progress: &Progress, held: &[WakeUp]) -> Step<P, W> {
    let named_later = held
        .iter()
        .any(|w| matches!(w.kind, WakeUpKind::Posting { seq } if seq > progress.delivered_seq));
    if named_later {
        Step::Park {
            delay: NOT_VISIBLE_DELAY,
            why: Wait::NotVisible,
        }
    } else {
        Step::CaughtUp
    }
}

/// A posting that can never be sent is dead-lettered once (counting on
/// from its last attempt, in a round of its own), then held.
fn unsendable<P, W>(progress: &Progress, why: W, now: OffsetDateTime) -> Step<P, W> {
    if let Current::Dead { .. } = progress.current() {
        return Step::HoldDead;
    }
    let (attempt, _) = progress.next_attempt_numbers();
    Step::DeadLetterUnsendable {
        why,
        round: Round {
            attempt,
            round_attempt: 1,
            round_started_at: now,
        },
    }
}

/// The posting is there: what its status says.
fn found<P, W>(
    progress: &Progress,
    posting: P,
    held: &[WakeUp],
    now: OffsetDateTime,
) -> Step<P, W> {
    match progress.current() {
        Current::Dead {
            stream_seq,
            attempt,
        } => {
            let n = progress.next_seq();
            let asked = held.iter().any(|w| {
                matches!(w.kind, WakeUpKind::Redeliver { seq } if seq == n)
                    && w.stream_seq > stream_seq
            });
            if !asked {
                return Step::HoldDead;
            }
            Step::Redeliver {
                posting,
                round: Round {
                    attempt: attempt.saturating_add(1),
                    round_attempt: 1,
                    round_started_at: now,
                },
            }
        }
        Current::Retrying {
            next_attempt_at,
            attempt,
            round_attempt,
            round_started_at,
        } => {
            if next_attempt_at > now {
                return Step::Park {
                    delay: (next_attempt_at - now).unsigned_abs(),
                    why: Wait::RetryNotDue,
                };
            }
            Step::Attempt {
                posting,
                round: Round {
                    attempt: attempt.saturating_add(1),
                    round_attempt: round_attempt.saturating_add(1),
                    round_started_at,
                },
            }
        }
        Current::Fresh => Step::Attempt {
            posting,
            round: Round {
                attempt: 1,
                round_attempt: 1,
                round_started_at: now,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatcher::state::LastDelivery;
    use crate::records::{AttemptOutcome, DeliveryRecord};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);
    const ROUND_STARTED: OffsetDateTime = datetime!(2026-03-01 11:00:00 UTC);
    /// Stream sequence of the last delivery record in these tests.
    const RECORD_STREAM_SEQ: u64 = 50;

    type TestStep = Step<&'static str, &'static str>;

    /// An order with postings 1 and 2 delivered.
    fn delivered_two() -> Progress {
        Progress {
            registry_id: "r".into(),
            order_id: "o".into(),
            delivered_seq: 2,
            registry_data: serde_json::json!({"journal_id": "J-2"}),
            registry_data_stream_seq: 40,
            delivered_posting_stream_seq: 30,
            last_delivery: None,
        }
    }

    /// [`delivered_two`] whose posting 3 was last attempted (`attempt`-th
    /// attempt, `round_attempt`-th of its round) with `outcome`.
    fn posting_3(
        outcome: AttemptOutcome,
        attempt: u32,
        round_attempt: u32,
        next_attempt_at: Option<OffsetDateTime>,
    ) -> Progress {
        let record = DeliveryRecord {
            registry_id: "r".into(),
            order_id: "o".into(),
            seq: 3,
            idempotency_key: uuid::Uuid::nil(),
            attempt,
            outcome,
            http_status: Some(500),
            duration_ms: 12,
            error: Some("HTTP 500".into()),
            response_excerpt: None,
            next_attempt_at,
            at: ROUND_STARTED,
        };
        Progress {
            last_delivery: Some(LastDelivery {
                record,
                stream_seq: RECORD_STREAM_SEQ,
                round_attempt,
                round_started_at: ROUND_STARTED,
            }),
            ..delivered_two()
        }
    }

    fn retrying(next_attempt_at: OffsetDateTime) -> Progress {
        posting_3(AttemptOutcome::Retrying, 4, 2, Some(next_attempt_at))
    }

    fn dead() -> Progress {
        posting_3(AttemptOutcome::Dead, 5, 3, None)
    }

    fn wake_up(stream_seq: u64, kind: WakeUpKind) -> WakeUp {
        WakeUp { stream_seq, kind }
    }

    fn posting(stream_seq: u64, seq: u64) -> WakeUp {
        wake_up(stream_seq, WakeUpKind::Posting { seq })
    }

    fn redeliver(stream_seq: u64, seq: u64) -> WakeUp {
        wake_up(stream_seq, WakeUpKind::Redeliver { seq })
    }

    fn found() -> Next<&'static str, &'static str> {
        Next::Found("posting 3")
    }

    fn step(p: &Progress, next: Next<&'static str, &'static str>, held: &[WakeUp]) -> TestStep {
        decide(p, next, held, NOW)
    }

    #[test]
    fn an_order_with_no_posting_left_is_caught_up() {
        let held = [
            posting(30, 2),
            wake_up(31, WakeUpKind::Wake),
            wake_up(32, WakeUpKind::UnreadablePosting),
        ];
        assert_eq!(
            step(&delivered_two(), Next::NotOnStream, &held),
            Step::CaughtUp
        );
        assert_eq!(
            step(&delivered_two(), Next::NotOnStream, &[]),
            Step::CaughtUp
        );
    }

    #[test]
    fn a_posting_named_by_a_wake_up_but_not_visible_yet_is_looked_at_again_later() {
        let held = [posting(30, 2), posting(60, 3)];
        assert_eq!(
            step(&delivered_two(), Next::NotOnStream, &held),
            Step::Park {
                delay: NOT_VISIBLE_DELAY,
                why: Wait::NotVisible
            }
        );
    }

    #[test]
    fn a_fresh_posting_gets_its_first_attempt_in_a_round_starting_now() {
        assert_eq!(
            step(&delivered_two(), found(), &[posting(60, 3)]),
            Step::Attempt {
                posting: "posting 3",
                round: Round {
                    attempt: 1,
                    round_attempt: 1,
                    round_started_at: NOW
                }
            }
        );
        // A delivery record of an earlier posting says nothing of this one.
        let earlier = Progress {
            delivered_seq: 3,
            ..retrying(NOW + Duration::from_secs(60))
        };
        assert_eq!(
            step(&earlier, Next::Found("posting 4"), &[]),
            Step::Attempt {
                posting: "posting 4",
                round: Round {
                    attempt: 1,
                    round_attempt: 1,
                    round_started_at: NOW
                }
            }
        );
    }

    #[test]
    fn a_retry_not_yet_due_parks_until_it_is() {
        let p = retrying(NOW + Duration::from_millis(90_500));
        assert_eq!(
            step(&p, found(), &[wake_up(70, WakeUpKind::Wake)]),
            Step::Park {
                delay: Duration::from_millis(90_500),
                why: Wait::RetryNotDue
            }
        );
    }

    #[test]
    fn a_due_retry_counts_on_in_its_round() {
        for due in [NOW, NOW - Duration::from_secs(5)] {
            assert_eq!(
                step(&retrying(due), found(), &[]),
                Step::Attempt {
                    posting: "posting 3",
                    round: Round {
                        attempt: 5,
                        round_attempt: 3,
                        round_started_at: ROUND_STARTED
                    }
                }
            );
        }
    }

    #[test]
    fn a_delivered_record_without_its_registry_data_is_sent_again_at_once() {
        let p = posting_3(AttemptOutcome::Delivered, 2, 2, None);
        assert_eq!(
            step(&p, found(), &[]),
            Step::Attempt {
                posting: "posting 3",
                round: Round {
                    attempt: 3,
                    round_attempt: 3,
                    round_started_at: ROUND_STARTED
                }
            }
        );
    }

    #[test]
    fn a_dead_posting_nobody_asked_for_is_held() {
        let held = [posting(60, 3), wake_up(70, WakeUpKind::Wake)];
        assert_eq!(step(&dead(), found(), &held), Step::HoldDead);
        // A request for another posting does not release this one.
        assert_eq!(step(&dead(), found(), &[redeliver(80, 2)]), Step::HoldDead);
    }

    #[test]
    fn a_redeliver_request_newer_than_the_dead_record_starts_a_new_round() {
        let held = [posting(60, 3), redeliver(RECORD_STREAM_SEQ + 1, 3)];
        assert_eq!(
            step(&dead(), found(), &held),
            Step::Redeliver {
                posting: "posting 3",
                round: Round {
                    attempt: 6,
                    round_attempt: 1,
                    round_started_at: NOW
                }
            }
        );
    }

    #[test]
    fn a_redeliver_request_older_than_the_dead_record_is_ignored() {
        let held = [redeliver(RECORD_STREAM_SEQ - 1, 3)];
        assert_eq!(step(&dead(), found(), &held), Step::HoldDead);
        // The dead record's own sequence is not newer either.
        let held = [redeliver(RECORD_STREAM_SEQ, 3)];
        assert_eq!(step(&dead(), found(), &held), Step::HoldDead);
    }

    #[test]
    fn an_unsendable_posting_is_dead_lettered_unless_already_dead() {
        let missing = Next::Unsendable("posting 3 is missing");
        assert_eq!(
            step(&delivered_two(), missing, &[]),
            Step::DeadLetterUnsendable {
                why: "posting 3 is missing",
                round: Round {
                    attempt: 1,
                    round_attempt: 1,
                    round_started_at: NOW
                }
            }
        );
        // While retrying, the dead record counts on from the last attempt,
        // in a round of its own.
        assert_eq!(
            step(&retrying(NOW + Duration::from_secs(60)), missing, &[]),
            Step::DeadLetterUnsendable {
                why: "posting 3 is missing",
                round: Round {
                    attempt: 5,
                    round_attempt: 1,
                    round_started_at: NOW
                }
            }
        );
        // Already dead: held, even when a redeliver is asked (it still
        // cannot be sent).
        assert_eq!(step(&dead(), missing, &[]), Step::HoldDead);
        assert_eq!(
            step(&dead(), missing, &[redeliver(RECORD_STREAM_SEQ + 1, 3)]),
            Step::HoldDead
        );
    }
}
