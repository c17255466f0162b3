//! Calendar math of monthly partitions: which UTC month an instant falls in,
//! where a month starts and ends, and which months must exist.
//!
//! Everything is whole calendar months in UTC; durations in days are real
//! 24-hour days (no "a month is 30 days" shortcuts: that is how a leap year
//! ends up dropping a month too early, seed 000 failure mode 7).

use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};

/// The partitioned table this module manages.
pub const TABLE: &str = crate::schema::Table::ProbeMinute.name();

/// One calendar month in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: i32,
    /// 1..=12
    month: u32,
}

impl Month {
    /// The month `(year, month)`, or None when `month` is not 1..=12 or the
    /// year is outside what chrono can represent.
    pub fn new(year: i32, month: u32) -> Option<Self> {
        // Validating through NaiveDate keeps every Month constructible into
        // a timestamp, so `start()` needs no error path.
        NaiveDate::from_ymd_opt(year, month, 1)?;
        NaiveDate::from_ymd_opt(year.checked_add(1)?, 1, 1)?;
        Some(Self { year, month })
    }

    /// The month containing `at` (UTC).
    pub fn containing(at: DateTime<Utc>) -> Self {
        Self {
            year: at.year(),
            month: at.month(),
        }
    }

    pub fn year(self) -> i32 {
        self.year
    }

    pub fn month(self) -> u32 {
        self.month
    }

    /// The following month.
    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The preceding month.
    pub fn previous(self) -> Self {
        if self.month == 1 {
            Self {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Self {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// 00:00 UTC on the first day of the month (inclusive lower bound).
    pub fn start(self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.month, 1, 0, 0, 0)
            .single()
            .expect("Month::new and Month::containing only produce representable months")
    }

    /// 00:00 UTC on the first day of the next month (exclusive upper bound).
    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }

    /// The month's bounds as a half-open range `[start, end)`.
    pub fn bounds(self) -> Bounds {
        Bounds {
            from: self.start(),
            to: self.end(),
        }
    }

    /// `probe_minute_YYYY_MM`, the name the operator gives the month's partition.
    pub fn partition_name(self) -> String {
        format!("{TABLE}_{:04}_{:02}", self.year, self.month)
    }

    /// The month a partition name of the operator's format stands for.
    pub fn from_partition_name(name: &str) -> Option<Self> {
        let rest = name.strip_prefix(TABLE)?.strip_prefix('_')?;
        let (year, month) = rest.split_once('_')?;
        if year.len() != 4 || month.len() != 2 {
            return None;
        }
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(year) || !all_digits(month) {
            return None;
        }
        Self::new(year.parse().ok()?, month.parse().ok()?)
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// A half-open time range `[from, to)`, as in `FOR VALUES FROM (..) TO (..)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bounds {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Bounds {
    /// Whether the two ranges share at least one instant.
    pub(crate) fn overlaps(&self, other: &Bounds) -> bool {
        self.from < other.to && other.from < self.to
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn contains(&self, other: &Bounds) -> bool {
        self.from <= other.from && other.to <= self.to
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}, {})",
            self.from.format("%Y-%m-%dT%H:%M:%SZ"),
            self.to.format("%Y-%m-%dT%H:%M:%SZ")
        )
    }
}

/// The months whose partitions must exist at `now`: the current month
/// through the month containing `now + ahead_days`, in order.
pub fn required_months(now: DateTime<Utc>, ahead_days: u32) -> Vec<Month> {
    let last = Month::containing(now + Duration::days(i64::from(ahead_days)));
    let mut months = vec![Month::containing(now)];
    while let Some(&current) = months.last()
        && current < last
    {
        months.push(current.next());
    }
    months
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_lookalikes() {
        let month = Month::new(2028, 2).unwrap();
        assert_eq!(month.partition_name(), "probe_minute_2028_02");
        assert_eq!(
            Month::from_partition_name("probe_minute_2028_02"),
            Some(month)
        );
        for bad in [
            "probe_minute_2028_2",
            "probe_minute_2028_13",
            "probe_minute_28_02",
            "probe_minute_2028_02_x",
            "probe_minutes_2028_02",
            "probe_minute_+028_02",
        ] {
            assert_eq!(Month::from_partition_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn february_of_a_leap_year_has_29_days() {
        let feb = Month::new(2028, 2).unwrap();
        assert_eq!((feb.end() - feb.start()).num_days(), 29);
        let feb = Month::new(2027, 2).unwrap();
        assert_eq!((feb.end() - feb.start()).num_days(), 28);
    }

    #[test]
    fn december_rolls_into_january() {
        let dec = Month::new(2027, 12).unwrap();
        assert_eq!(dec.next(), Month::new(2028, 1).unwrap());
        assert_eq!(dec.next().previous(), dec);
    }
}
