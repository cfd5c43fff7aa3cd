//! A registry's circuit breaker: after `breaker_failures` consecutive
//! failures that say "the receiver is not there" (connection errors,
//! timeouts, 408, 429, 5xx) it opens and no attempt is made for
//! `breaker_cool_down`; then one probe goes out (half-open); its success
//! closes the breaker, its failure opens it again. Replies that show the
//! receiver is up (2xx, other 4xx, refused replies) close it.
//!
//! In memory and per process on purpose: it protects the receiver, it is not
//! a record. Postings it holds back are not attempted and not recorded; their
//! JetStream messages are handed back with a delay, so a restart just starts
//! with a closed breaker.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// While a probe is out, how long other deliveries wait before asking
/// again: short, so a successful probe releases them quickly.
pub const HALF_OPEN_RECHECK: Duration = Duration::from_secs(1);

/// A probe that has not reported after this long is presumed lost (its
/// worker was stopped), and another probe is allowed. Above the longest
/// request timeout a registry may set.
pub const PROBE_STALE_AFTER: Duration =
    Duration::from_millis(2 * crate::registry::TIMEOUT_MS_MAX + 10_000);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_since: Instant },
}

/// Whether an attempt may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go; `probe` when this attempt decides whether the breaker closes.
    Go { probe: bool },
    /// Do not attempt before this instant.
    NotBefore(Instant),
}

/// How an attempt ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The receiver answered (2xx, a 4xx, a refused reply).
    Up,
    /// It did not, or said it is overloaded or broken.
    Down,
}

#[derive(Debug)]
pub struct Breaker {
    failures_to_open: u32,
    cool_down: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(failures_to_open: u32, cool_down: Duration) -> Self {
        Self {
            failures_to_open: failures_to_open.max(1),
            cool_down,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value, valid whatever a panicking holder did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May an attempt go out at `now`?
    pub fn admit(&self, now: Instant) -> Admission {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Admission::Go { probe: false },
            State::Open { until } if now < until => Admission::NotBefore(until),
            State::Open { .. } => {
                *s = State::HalfOpen { probe_since: now };
                Admission::Go { probe: true }
            }
            State::HalfOpen { probe_since }
                if now.duration_since(probe_since) > PROBE_STALE_AFTER =>
            {
                *s = State::HalfOpen { probe_since: now };
                Admission::Go { probe: true }
            }
            State::HalfOpen { .. } => {
                Admission::NotBefore(now + HALF_OPEN_RECHECK.min(self.cool_down))
            }
        }
    }

    /// Reports how an admitted attempt ended. Returns true when this report
    /// opened the breaker (for a log line).
    pub fn report(&self, now: Instant, health: Health) -> bool {
        let mut s = self.lock();
        match (health, *s) {
            (Health::Up, _) => {
                *s = State::Closed { failures: 0 };
                false
            }
            (Health::Down, State::Closed { failures }) => {
                let failures = failures + 1;
                if failures >= self.failures_to_open {
                    *s = State::Open {
                        until: now + self.cool_down,
                    };
                    true
                } else {
                    *s = State::Closed { failures };
                    false
                }
            }
            (Health::Down, State::HalfOpen { .. }) => {
                *s = State::Open {
                    until: now + self.cool_down,
                };
                true
            }
            // Attempts admitted before it opened report late: already open.
            (Health::Down, State::Open { .. }) => false,
        }
    }

    /// True when the breaker is closed.
    pub fn is_closed(&self) -> bool {
        matches!(*self.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_probes_once_then_closes_on_success() {
        let b = Breaker::new(3, Duration::from_secs(30));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Admission::Go { probe: false });
            assert!(!b.report(t0, Health::Down));
        }
        assert!(b.report(t0, Health::Down), "the third failure opens it");
        assert_eq!(
            b.admit(t0 + Duration::from_secs(10)),
            Admission::NotBefore(t0 + Duration::from_secs(30))
        );
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(b.admit(t1), Admission::Go { probe: true });
        assert_eq!(b.admit(t1), Admission::NotBefore(t1 + HALF_OPEN_RECHECK));
        b.report(t1, Health::Up);
        assert!(b.is_closed());
        assert_eq!(b.admit(t1), Admission::Go { probe: false });
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_successes_reset_the_count() {
        let b = Breaker::new(2, Duration::from_secs(5));
        let t0 = Instant::now();
        b.report(t0, Health::Down);
        b.report(t0, Health::Up);
        assert!(!b.report(t0, Health::Down), "the count restarted");
        assert!(b.report(t0, Health::Down));
        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(b.admit(t1), Admission::Go { probe: true });
        assert!(b.report(t1, Health::Down));
        assert_eq!(
            b.admit(t1),
            Admission::NotBefore(t1 + Duration::from_secs(5))
        );
    }

    #[test]
    fn a_lost_probe_does_not_keep_it_half_open_forever() {
        let b = Breaker::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        b.report(t0, Health::Down);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.admit(t1), Admission::Go { probe: true });
        let later = t1 + PROBE_STALE_AFTER + Duration::from_secs(1);
        assert_eq!(b.admit(later), Admission::Go { probe: true });
    }
}
