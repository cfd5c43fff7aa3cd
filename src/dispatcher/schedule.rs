//! When the next attempt of a failed delivery is due: the configured retry
//! schedule with jitter, a receiver's `Retry-After`, and the two bounds of a
//! round of attempts (`max_attempts`, `max_age`). Pure: the caller passes
//! the clock and the randomness.

use std::time::Duration;

use time::OffsetDateTime;

/// Jitter applied to each scheduled delay: ±20 % (the documented
/// `delivery.retry_schedule` behaviour), so orders that failed together do
/// not all come back in the same millisecond.
pub const JITTER_RATIO: f64 = 0.2;

/// The longest `Retry-After` honoured. A receiver asking for more is still
/// bounded by `max_age`; this only keeps a silly value (years) from being
/// stored as a date.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

/// The longest delay of one step of `delivery.retry_schedule`: as long as
/// the longest `max_age`, since a retry later than that never happens.
pub const RETRY_DELAY_MAX: Duration = crate::registry::MAX_AGE_MAX;

/// The delays between attempts: the n-th retry waits `delays[n - 1]`, the
/// last delay repeating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

/// A schedule that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("delivery.retry_schedule must list at least one delay")]
    Empty,
    #[error("delivery.retry_schedule[{index}]: {value:?} is not a duration like \"30s\"")]
    Bad { index: usize, value: String },
    #[error("delivery.retry_schedule[{index}]: {value:?} is longer than 30 days")]
    TooLong { index: usize, value: String },
}

impl RetrySchedule {
    /// Parses `["5s", "30s", "2m", …]`.
    pub fn parse(texts: &[String]) -> Result<Self, ScheduleError> {
        if texts.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let delays = texts
            .iter()
            .enumerate()
            .map(|(index, t)| {
                let d = humantime::parse_duration(t).map_err(|_| ScheduleError::Bad {
                    index,
                    value: t.clone(),
                })?;
                if d > RETRY_DELAY_MAX {
                    return Err(ScheduleError::TooLong {
                        index,
                        value: t.clone(),
                    });
                }
                Ok(d)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { delays })
    }

    pub fn new(delays: Vec<Duration>) -> Result<Self, ScheduleError> {
        if delays.is_empty() {
            return Err(ScheduleError::Empty);
        }
        Ok(Self { delays })
    }

    /// The delay after the `failed_attempt`-th attempt of a round (1-based)
    /// failed, before jitter.
    pub fn base_delay(&self, failed_attempt: u32) -> Duration {
        let i = (failed_attempt.max(1) - 1) as usize;
        // `delays` is never empty (checked by both constructors).
        self.delays[i.min(self.delays.len() - 1)]
    }

    /// The base delay scaled by `jitter` in [-1, 1] times [`JITTER_RATIO`];
    /// saturates at `Duration::MAX` instead of overflowing.
    pub fn delay(&self, failed_attempt: u32, jitter: f64) -> Duration {
        let factor = 1.0 + JITTER_RATIO * jitter.clamp(-1.0, 1.0);
        Duration::try_from_secs_f64(self.base_delay(failed_attempt).as_secs_f64() * factor)
            .unwrap_or(Duration::MAX)
    }
}

/// Parses a `Retry-After` value: seconds, or an HTTP date (IMF-fixdate).
/// A date in the past means "now"; values above [`RETRY_AFTER_MAX`] are
/// capped.
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let v = value.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
        let secs = (at - now).whole_milliseconds().max(0);
        Duration::from_millis(u64::try_from(secs).unwrap_or(u64::MAX))
    };
    Some(d.min(RETRY_AFTER_MAX))
}

/// What bounds a round of attempts (a registry's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundLimits {
    pub max_attempts: u32,
    pub max_age: Duration,
}

/// What to do after a retryable failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Try again at this time.
    RetryAt(OffsetDateTime),
    /// The round is over: dead-letter, saying why.
    GiveUp(String),
}

/// Decides the next step after the `round_attempt`-th attempt of a round
/// failed in a retryable way: honour `retry_after` when the receiver gave
/// one, else the schedule with `jitter`; give up when the round has used
/// `max_attempts` or the next attempt would fall after `round_started_at +
/// max_age`.
pub fn next_step(
    schedule: &RetrySchedule,
    limits: RoundLimits,
    round_attempt: u32,
    round_started_at: OffsetDateTime,
    now: OffsetDateTime,
    retry_after: Option<Duration>,
    jitter: f64,
) -> NextStep {
    let RoundLimits {
        max_attempts,
        max_age,
    } = limits;
    if round_attempt >= max_attempts {
        return NextStep::GiveUp(format!(
            "gave up after {round_attempt} attempts (max_attempts = {max_attempts})"
        ));
    }
    let delay = retry_after.unwrap_or_else(|| schedule.delay(round_attempt, jitter));
    // Checked: a time past the calendar's end is "never", not a panic.
    let after = |t: OffsetDateTime, d: Duration| {
        time::Duration::try_from(d)
            .ok()
            .and_then(|d| t.checked_add(d))
    };
    match (after(now, delay), after(round_started_at, max_age)) {
        // A deadline past the calendar's end bounds nothing.
        (Some(at), deadline) if deadline.is_none_or(|d| at <= d) => NextStep::RetryAt(at),
        _ => NextStep::GiveUp(format!(
            "gave up: the next attempt ({}) would be after max_age ({}) since the first",
            fmt_duration(delay),
            humantime::format_duration(max_age)
        )),
    }
}

/// A duration for people, to the millisecond.
pub fn fmt_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn schedule() -> RetrySchedule {
        RetrySchedule::parse(&["5s".into(), "30s".into(), "2m".into()]).unwrap()
    }

    #[test]
    fn the_last_delay_repeats_and_jitter_stays_within_twenty_percent() {
        let s = schedule();
        assert_eq!(s.base_delay(1), Duration::from_secs(5));
        assert_eq!(s.base_delay(3), Duration::from_secs(120));
        assert_eq!(s.base_delay(9), Duration::from_secs(120));
        assert_eq!(s.delay(1, 1.0), Duration::from_secs(6));
        assert_eq!(s.delay(1, -1.0), Duration::from_secs(4));
        assert_eq!(s.delay(1, 7.0), Duration::from_secs(6));
    }

    #[test]
    fn bad_schedules_name_the_entry() {
        assert_eq!(RetrySchedule::parse(&[]), Err(ScheduleError::Empty));
        assert_eq!(
            RetrySchedule::parse(&["5s".into(), "soon".into()]),
            Err(ScheduleError::Bad {
                index: 1,
                value: "soon".into()
            })
        );
    }

    #[test]
    fn huge_delays_give_up_instead_of_overflowing() {
        let t0 = datetime!(2026-01-01 00:00:00 UTC);
        let limits = RoundLimits {
            max_attempts: 10,
            max_age: Duration::from_secs(3600),
        };
        let huge = RetrySchedule::new(vec![Duration::MAX]).unwrap();
        assert_eq!(huge.delay(1, 1.0), Duration::MAX);
        assert!(matches!(
            next_step(&huge, limits, 1, t0, t0, None, 1.0),
            NextStep::GiveUp(m) if m.contains("max_age")
        ));
        let s = schedule();
        assert!(matches!(
            next_step(&s, limits, 1, t0, t0, Some(Duration::MAX), 0.0),
            NextStep::GiveUp(_)
        ));
        assert_eq!(
            RetrySchedule::parse(&["5s".into(), "31days".into()]),
            Err(ScheduleError::TooLong {
                index: 1,
                value: "31days".into()
            })
        );
        let end = time::PrimitiveDateTime::MAX.assume_utc();
        assert!(matches!(
            next_step(&s, limits, 1, end, end, None, 0.0),
            NextStep::GiveUp(_)
        ));
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = datetime!(2015-10-21 07:28:00 UTC);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999999", now), Some(RETRY_AFTER_MAX));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn a_round_ends_at_max_attempts_or_max_age() {
        let s = schedule();
        let t0 = datetime!(2026-01-01 00:00:00 UTC);
        let hour = RoundLimits {
            max_attempts: 3,
            max_age: Duration::from_secs(3600),
        };
        let short = RoundLimits {
            max_attempts: 10,
            max_age: Duration::from_secs(20),
        };
        assert_eq!(
            next_step(&s, hour, 1, t0, t0, None, 0.0),
            NextStep::RetryAt(t0 + Duration::from_secs(5))
        );
        assert!(matches!(
            next_step(&s, hour, 3, t0, t0, None, 0.0),
            NextStep::GiveUp(m) if m.contains("3 attempts")
        ));
        assert!(matches!(
            next_step(&s, short, 2, t0, t0, None, 0.0),
            NextStep::GiveUp(m) if m.contains("max_age")
        ));
        assert_eq!(
            next_step(&s, hour, 1, t0, t0, Some(Duration::from_secs(42)), 1.0),
            NextStep::RetryAt(t0 + Duration::from_secs(42))
        );
    }
}
