//! The one place the operator reads the time.
//!
//! Every scheduling decision (drain ticks, enforcement windows, partition
//! creation, erasure deadlines) asks a [`Clock`], so tests and the demo can run
//! days of operation in seconds and `run --once --now` is deterministic.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, DurationRound, Utc};

/// Source of "now" for everything that schedules work.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// Shared handle to a clock, cheap to clone into tasks.
pub type SharedClock = Arc<dyn Clock>;

/// The wall clock of the machine (UTC).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to: for tests, `run --once --now`, and
/// the demo's accelerated time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward (or backward, for negative durations).
    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        *now += by;
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self.lock() = to;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DateTime<Utc>> {
        // A poisoned lock only means another thread panicked while holding a
        // plain timestamp; the value itself is still valid.
        self.now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.lock()
    }
}

/// The start of the epoch-aligned minute containing `t`.
pub fn minute_floor(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::minutes(1))
        .expect("truncating a valid UTC timestamp to the minute cannot overflow")
}

/// Parses a Go-style duration (`1h`, `90m`, `1h30m`, `45s`).
pub fn parse_duration(text: &str) -> Option<chrono::Duration> {
    let mut total = chrono::Duration::zero();
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        total += match c {
            'h' => chrono::Duration::try_hours(n)?,
            'm' => chrono::Duration::try_minutes(n)?,
            's' => chrono::Duration::try_seconds(n)?,
            _ => return None,
        };
    }
    (digits.is_empty() && !text.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::days(3));
        assert_eq!(clock.now(), start + Duration::days(3));
    }

    #[test]
    fn minute_floor_is_epoch_aligned() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 9, 41, 59).unwrap();
        let floored = minute_floor(t);
        assert_eq!(
            floored,
            Utc.with_ymd_and_hms(2026, 11, 22, 9, 41, 0).unwrap()
        );
        assert_eq!(floored.timestamp() % 60, 0);
    }
}
