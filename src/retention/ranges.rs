//! Which stretches of time are past retention, for one tenant and table.
//!
//! The rule (DESIGN.md section 5): a row is expired when it is older than
//! the window of the tier that was in force at the row's time. Rows cover a
//! period (a minute, a day, a month), so the precise form used here is:
//! a row is expired when **every instant it covers** is covered by at least
//! one tier row of `tenant_tier_history` and is past the window of every
//! tier row covering it. Consequences, all on the side of keeping data:
//!
//! - time with no tier row (before the first one, after a churn, in a gap)
//!   is never expired, so tenants without any tier are never pruned;
//! - overlapping tier rows (a billing mistake) keep an instant while any of
//!   them still keeps it;
//! - a daily or monthly row goes only once the whole day or month is past
//!   the window, so `uptime_30d` is always servable from probe_day.
//!
//! The result is a list of key ranges per tier, which the delete and the
//! count statements use as they are: `key >= lo AND key < hi AND key <= last`.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc};

use super::tiers::{Granularity, Table, Tier, contract_minute_days};
use crate::api::retention_policy::Tiers;

/// One row of `tenant_tier_history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierSpan {
    /// `None` when the database names a tier this operator does not know:
    /// such a span keeps its data.
    pub tier: Option<Tier>,
    pub from: DateTime<Utc>,
    /// `None` = still in force.
    pub to: Option<DateTime<Utc>>,
    pub contract_minute_days: Option<i32>,
}

/// A half-open interval `[start, end)`.
pub type Interval = (DateTime<Utc>, DateTime<Utc>);

/// A set of instants as sorted, disjoint, non-touching half-open intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    intervals: Vec<Interval>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn of(start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        let mut set = Self::new();
        set.insert(start, end);
        set
    }

    pub(crate) fn intervals(&self) -> &[Interval] {
        &self.intervals
    }

    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }

    /// Adds `[start, end)`, merging what it touches; empty intervals are ignored.
    pub fn insert(&mut self, start: DateTime<Utc>, end: DateTime<Utc>) {
        if start >= end {
            return;
        }
        // The intervals are sorted and disjoint, so their ends are sorted
        // too: the ones touching `[start, end)` are one run, found by two
        // binary searches.
        let first = self.intervals.partition_point(|&(_, b)| b < start);
        let past = self.intervals.partition_point(|&(a, _)| a <= end);
        let (mut start, mut end) = (start, end);
        if first < past {
            start = start.min(self.intervals[first].0);
            end = end.max(self.intervals[past - 1].1);
        }
        self.intervals.splice(first..past, [(start, end)]);
    }

    pub fn union(&self, other: &RangeSet) -> RangeSet {
        let mut result = self.clone();
        for &(a, b) in &other.intervals {
            result.insert(a, b);
        }
        result
    }

    /// The instants of `self` that are not in `other`: one pass over both
    /// sorted lists.
    pub fn subtract(&self, other: &RangeSet) -> RangeSet {
        let mut result = Vec::new();
        let mut next = 0;
        for &(a, b) in &self.intervals {
            while next < other.intervals.len() && other.intervals[next].1 <= a {
                next += 1;
            }
            let mut start = a;
            for &(c, d) in other.intervals[next..].iter().take_while(|(c, _)| *c < b) {
                if c > start {
                    result.push((start, c));
                }
                start = start.max(d);
                if start >= b {
                    break;
                }
            }
            if start < b {
                result.push((start, b));
            }
        }
        RangeSet { intervals: result }
    }

    /// The instants in both sets: one pass over both sorted lists.
    pub fn intersect(&self, other: &RangeSet) -> RangeSet {
        let (mut i, mut j) = (0, 0);
        let mut result = Vec::new();
        while let (Some(&(a, b)), Some(&(c, d))) = (self.intervals.get(i), other.intervals.get(j)) {
            let (lo, hi) = (a.max(c), b.min(d));
            if lo < hi {
                result.push((lo, hi));
            }
            if b < d {
                i += 1;
            } else {
                j += 1;
            }
        }
        RangeSet { intervals: result }
    }

    /// The interval of the set that contains `[start, end)` entirely.
    fn component_of(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> Option<Interval> {
        self.intervals
            .iter()
            .copied()
            .find(|&(a, b)| a <= start && end <= b)
    }
}

/// Key bounds of the rows one range may touch: `key >= lo AND key < hi AND key <= last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bounds {
    Instants {
        lo: DateTime<Utc>,
        hi: DateTime<Utc>,
        last: DateTime<Utc>,
    },
    Dates {
        lo: NaiveDate,
        hi: NaiveDate,
        last: NaiveDate,
    },
}

/// Expired rows of one table and tenant attributed to one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiredRange {
    pub tier: Tier,
    pub bounds: Bounds,
}

/// How a contract's per-minute extension (`contract_minute_retention_days`)
/// counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contracts {
    /// Capped at the policy's `contractualCapDays`: what enforcement deletes by.
    CappedByPolicy,
    /// As billing recorded it, even above the cap: what the partition guard
    /// keeps by. A contract above the cap is an inconsistency a person must
    /// resolve; the guard shows it as `DropBlocked`, never as dropped rows.
    AsRecorded,
}

/// The days `span`'s rows of `table` are kept (contract extension included).
fn span_window_days(
    tiers: &Tiers,
    tier: Tier,
    span: &TierSpan,
    table: Table,
    contracts: Contracts,
) -> u32 {
    if table.contract_extends() && tier == Tier::CONTRACT {
        let retention = tiers.of(tier);
        let capped = contract_minute_days(retention, span.contract_minute_days);
        return match (contracts, span.contract_minute_days) {
            (Contracts::AsRecorded, Some(days)) => capped.max(u32::try_from(days).unwrap_or(0)),
            _ => capped,
        };
    }
    table.window_days(tier.retention(tiers))
}

/// The first instant still inside a window of `days` days at `as_of`, no
/// earlier than the start of year 1: a window reaching further back (a tier
/// table stored before windows were bounded) keeps everything, with bounds
/// PostgreSQL can still compare (its first instant is in 4713 BC; chrono's
/// is long before that).
fn window_start(as_of: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    /// 0001-01-01T00:00:00Z in seconds since 1970.
    const YEAR_ONE: i64 = -62_135_596_800;
    let first = DateTime::from_timestamp(YEAR_ONE, 0).unwrap_or(DateTime::<Utc>::MIN_UTC);
    Duration::try_days(i64::from(days))
        .and_then(|window| as_of.checked_sub_signed(window))
        .map_or(first, |start| start.max(first))
}

/// The expired stretches of `table` for a tenant with tier rows `spans`, as
/// of `as_of`, split by the tier each row is attributed to: the tier row with
/// the latest `valid_from` covering the row's start. Contracts are capped by
/// the policy, as enforcement deletes.
pub fn expired_ranges(
    spans: &[TierSpan],
    tiers: &Tiers,
    table: Table,
    as_of: DateTime<Utc>,
) -> Vec<ExpiredRange> {
    expired_ranges_with(spans, tiers, table, as_of, Contracts::CappedByPolicy)
}

/// [`expired_ranges`], with the contract extension counted as `contracts` says.
pub fn expired_ranges_with(
    spans: &[TierSpan],
    tiers: &Tiers,
    table: Table,
    as_of: DateTime<Utc>,
    contracts: Contracts,
) -> Vec<ExpiredRange> {
    let mut expired_by_span = Vec::with_capacity(spans.len());
    let mut expired = RangeSet::new();
    let mut kept = RangeSet::new();
    for span in spans {
        let to = span.to.unwrap_or(DateTime::<Utc>::MAX_UTC);
        let Some(tier) = span.tier else {
            kept.insert(span.from, to);
            continue;
        };
        let cut = window_start(as_of, span_window_days(tiers, tier, span, table, contracts));
        let part = RangeSet::of(span.from, to.min(cut));
        expired.insert(span.from, to.min(cut));
        kept.insert(span.from.max(cut), to);
        expired_by_span.push((span.from, tier, part));
    }
    let components = expired.subtract(&kept);
    // Latest valid_from first: the most recent billing row wins a row.
    expired_by_span.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let mut unassigned = components.clone();
    let mut ranges = Vec::new();
    for (_, tier, part) in expired_by_span {
        let piece = part.intersect(&unassigned);
        unassigned = unassigned.subtract(&piece);
        for &(start, end) in piece.intervals() {
            let Some((_, component_end)) = components.component_of(start, end) else {
                continue;
            };
            if let Some(bounds) = bounds_for(table.granularity(), start, end, component_end) {
                ranges.push(ExpiredRange { tier, bounds });
            }
        }
    }
    ranges.sort_by_key(|range| match range.bounds {
        Bounds::Instants { lo, .. } => (lo, NaiveDate::MIN),
        Bounds::Dates { lo, .. } => (DateTime::<Utc>::MIN_UTC, lo),
    });
    ranges
}

/// Bounds of the rows whose start lies in `[start, end)` and whose whole
/// period ends by `component_end`; `None` when there is no such row.
fn bounds_for(
    granularity: Granularity,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    component_end: DateTime<Utc>,
) -> Option<Bounds> {
    match granularity {
        Granularity::Minute => {
            let last = component_end - Duration::minutes(1);
            (start < end && start <= last).then_some(Bounds::Instants {
                lo: start,
                hi: end,
                last,
            })
        }
        Granularity::Day => {
            let lo = ceil_day(start);
            let hi = ceil_day(end);
            let last = component_end.date_naive().pred_opt()?;
            (lo < hi && lo <= last).then_some(Bounds::Dates { lo, hi, last })
        }
        Granularity::Month => {
            let lo = ceil_month(start);
            let hi = ceil_month(end);
            let last = previous_month(first_of_month(component_end.date_naive()))?;
            (lo < hi && lo <= last).then_some(Bounds::Dates { lo, hi, last })
        }
    }
}

/// The first day starting at or after `t`.
fn ceil_day(t: DateTime<Utc>) -> NaiveDate {
    let day = t.date_naive();
    if t.time() == NaiveTime::MIN {
        day
    } else {
        day.succ_opt().unwrap_or(NaiveDate::MAX)
    }
}

fn first_of_month(day: NaiveDate) -> NaiveDate {
    day.with_day(1).unwrap_or(day)
}

fn previous_month(first: NaiveDate) -> Option<NaiveDate> {
    first.checked_sub_months(chrono::Months::new(1))
}

/// The first month starting at or after `t`.
fn ceil_month(t: DateTime<Utc>) -> NaiveDate {
    let first = first_of_month(t.date_naive());
    let starts_exactly = t == Utc.from_utc_datetime(&first.and_time(NaiveTime::MIN));
    if starts_exactly {
        first
    } else {
        first
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(NaiveDate::MAX)
    }
}

/// The days the cross-tenant suppression history is kept: the longest daily
/// window of any tier. Its rows carry no tenant id (tenants appear only as
/// salted hashes), so no single tier applies, and a cluster that involved an
/// enterprise tenant is evidence that tenant's daily data may still cite.
pub(crate) fn history_days(tiers: &Tiers) -> u32 {
    Tier::ALL
        .into_iter()
        .map(|tier| tier.retention(tiers).daily_days)
        .max()
        .unwrap_or(u32::MAX)
}

/// The expired rows of the suppression history: minutes that ended at
/// least [`history_days`] before `as_of`.
pub(crate) fn history_bounds(tiers: &Tiers, as_of: DateTime<Utc>) -> Bounds {
    kept_for(history_days(tiers), as_of, Duration::minutes(1))
}

/// Rows (of a cross-tenant table) whose time is at least `days` before
/// `as_of` once `span`, the time one row covers, has passed too.
fn kept_for(days: u32, as_of: DateTime<Utc>, span: Duration) -> Bounds {
    let cut = window_start(as_of, days);
    Bounds::Instants {
        lo: DateTime::<Utc>::UNIX_EPOCH,
        hi: cut,
        last: cut.checked_sub_signed(span).unwrap_or(cut),
    }
}

/// The days a rejected verdict is kept: the shortest per-minute window of
/// any tier. A reject cannot always be tied to a tenant (its key may be the
/// malformed part), so it is kept no longer than any tenant's per-minute
/// history may be; long enough to look into a burst of rejects.
pub(crate) fn rejects_days(tiers: &Tiers) -> u32 {
    Tier::ALL
        .into_iter()
        .map(|tier| tier.retention(tiers).per_minute_days)
        .min()
        .unwrap_or(u32::MAX)
}

/// The expired rows of the rejects table: rejected at least
/// [`rejects_days`] before `as_of`.
pub(crate) fn rejects_bounds(tiers: &Tiers, as_of: DateTime<Utc>) -> Bounds {
    // `rejected_at` is an instant, not a minute bucket.
    kept_for(rejects_days(tiers), as_of, Duration::zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The set operations against a model that lists every covered minute,
    /// on pseudo-random sets of up to 12 intervals over two hours.
    #[test]
    fn set_operations_agree_with_a_minute_by_minute_model() {
        let base = at(2026, 1, 1, 0, 0);
        let minute = |n: i64| base + Duration::minutes(n);
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        let covered = |set: &RangeSet| -> Vec<bool> {
            (0..120)
                .map(|n| {
                    set.intervals()
                        .iter()
                        .any(|&(a, b)| a <= minute(n) && minute(n) < b)
                })
                .collect()
        };
        for _ in 0..500 {
            let mut sets = Vec::new();
            for _ in 0..2 {
                let mut set = RangeSet::new();
                for _ in 0..next(13) {
                    let start = next(120) as i64;
                    set.insert(minute(start), minute(start + 1 + next(30) as i64));
                }
                sets.push(set);
            }
            let (x, y) = (&sets[0], &sets[1]);
            let (cx, cy) = (covered(x), covered(y));
            let model = |f: fn(bool, bool) -> bool| -> Vec<bool> {
                cx.iter().zip(&cy).map(|(a, b)| f(*a, *b)).collect()
            };
            for set in [x.union(y), x.subtract(y), x.intersect(y)] {
                // Sorted, disjoint, non-touching, non-empty intervals.
                assert!(set.intervals().iter().all(|(a, b)| a < b));
                assert!(set.intervals().windows(2).all(|w| w[0].1 < w[1].0));
            }
            assert_eq!(covered(&x.union(y)), model(|a, b| a || b));
            assert_eq!(covered(&x.subtract(y)), model(|a, b| a && !b));
            assert_eq!(covered(&x.intersect(y)), model(|a, b| a && b));
        }
    }

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    fn tiers() -> Tiers {
        crate::api::retention_policy::example_spec().tiers
    }

    fn span(tier: Tier, from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> TierSpan {
        TierSpan {
            tier: Some(tier),
            from,
            to,
            contract_minute_days: None,
        }
    }

    #[test]
    fn range_sets_merge_subtract_and_intersect() {
        let mut set = RangeSet::new();
        set.insert(at(2026, 1, 1, 0, 0), at(2026, 1, 2, 0, 0));
        set.insert(at(2026, 1, 2, 0, 0), at(2026, 1, 3, 0, 0)); // touching: merged
        set.insert(at(2026, 1, 5, 0, 0), at(2026, 1, 6, 0, 0));
        assert_eq!(set.intervals().len(), 2);
        let hole = RangeSet::of(at(2026, 1, 1, 12, 0), at(2026, 1, 5, 12, 0));
        let rest = set.subtract(&hole);
        assert_eq!(
            rest.intervals(),
            [
                (at(2026, 1, 1, 0, 0), at(2026, 1, 1, 12, 0)),
                (at(2026, 1, 5, 12, 0), at(2026, 1, 6, 0, 0))
            ]
        );
        assert_eq!(
            set.intersect(&hole).intervals(),
            [
                (at(2026, 1, 1, 12, 0), at(2026, 1, 3, 0, 0)),
                (at(2026, 1, 5, 0, 0), at(2026, 1, 5, 12, 0))
            ]
        );
    }

    #[test]
    fn a_public_tenant_loses_minutes_older_than_seven_days() {
        let as_of = at(2026, 11, 23, 3, 0);
        let spans = [span(Tier::Public, at(2024, 1, 1, 0, 0), None)];
        let ranges = expired_ranges(&spans, &tiers(), Table::ProbeMinute, as_of);
        assert_eq!(
            ranges,
            [ExpiredRange {
                tier: Tier::Public,
                bounds: Bounds::Instants {
                    lo: at(2024, 1, 1, 0, 0),
                    hi: at(2026, 11, 16, 3, 0),
                    last: at(2026, 11, 16, 2, 59),
                }
            }]
        );
        // Days: whole days ended by the cut (2025-11-23 03:00); months: none
        // (2555 days).
        let days = expired_ranges(&spans, &tiers(), Table::ProbeDay, as_of);
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(
            days,
            [ExpiredRange {
                tier: Tier::Public,
                bounds: Bounds::Dates {
                    lo: day(2024, 1, 1),
                    hi: day(2025, 11, 24),
                    last: day(2025, 11, 22),
                }
            }]
        );
        assert!(expired_ranges(&spans, &tiers(), Table::ProbeDay, at(2024, 6, 1, 0, 0)).is_empty());
        assert!(expired_ranges(&spans, &tiers(), Table::ProbeMonth, as_of).is_empty());
    }

    #[test]
    fn time_without_a_tier_and_overlaps_keep_their_rows() {
        let as_of = at(2026, 11, 23, 0, 0);
        // Public until March, nothing in April, public again from May, and a
        // team row overlapping June: team keeps 180 days, so June stays.
        let spans = [
            span(
                Tier::Public,
                at(2026, 1, 1, 0, 0),
                Some(at(2026, 4, 1, 0, 0)),
            ),
            span(Tier::Public, at(2026, 5, 1, 0, 0), None),
            span(Tier::Team, at(2026, 6, 1, 0, 0), Some(at(2026, 7, 1, 0, 0))),
        ];
        let ranges = expired_ranges(&spans, &tiers(), Table::ProbeMinute, as_of);
        let covered: Vec<(DateTime<Utc>, DateTime<Utc>)> = ranges
            .iter()
            .map(|r| match r.bounds {
                Bounds::Instants { lo, hi, .. } => (lo, hi),
                Bounds::Dates { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(
            covered,
            [
                (at(2026, 1, 1, 0, 0), at(2026, 4, 1, 0, 0)),
                (at(2026, 5, 1, 0, 0), at(2026, 6, 1, 0, 0)),
                (at(2026, 7, 1, 0, 0), at(2026, 11, 16, 0, 0)),
            ]
        );
        assert!(ranges.iter().all(|r| r.tier == Tier::Public));
    }

    #[test]
    fn contracts_and_history_use_their_own_windows() {
        let as_of = at(2026, 11, 23, 0, 0);
        let spans = [TierSpan {
            contract_minute_days: Some(500),
            ..span(Tier::Enterprise, at(2024, 1, 1, 0, 0), None)
        }];
        let ranges = expired_ranges(&spans, &tiers(), Table::ProbeMinute, as_of);
        assert_eq!(ranges.len(), 1);
        assert!(
            matches!(ranges[0].bounds, Bounds::Instants { hi, .. } if hi == as_of - Duration::days(500))
        );
        assert_eq!(history_days(&tiers()), 2555);
    }

    #[test]
    fn months_go_only_when_the_whole_month_is_past() {
        let mut t = tiers();
        t.public.monthly_days = 60;
        let spans = [span(Tier::Public, at(2026, 1, 15, 10, 0), None)];
        // cut = 2026-09-24: August ended on Sep 1, before the cut, so
        // February to August go; September ends after the cut; January
        // started before the tier row, so it stays.
        let ranges = expired_ranges(&spans, &t, Table::ProbeMonth, at(2026, 11, 23, 0, 0));
        assert_eq!(
            ranges[0].bounds,
            Bounds::Dates {
                lo: NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
                hi: NaiveDate::from_ymd_opt(2026, 10, 1).unwrap(),
                last: NaiveDate::from_ymd_opt(2026, 8, 1).unwrap(),
            }
        );
    }
}
