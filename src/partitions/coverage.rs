//! What the status says about the partitions: how far ahead rows have a
//! home, and what looks wrong (a DEFAULT partition, bounds that are not one
//! calendar month, a month with ten times the rows of the one before).

use chrono::{DateTime, Utc};

use super::calendar::{Month, required_months};
use super::catalog::CatalogPartition;
use super::create::{classify, describe_bounds};
use crate::api::partition_schedule::PartitionInfo;

/// Looking further ahead than this is never useful (createAheadDays <= 62).
const MAX_MONTHS_AHEAD: i32 = 120;

/// A month whose rows are this many times the previous month's is an anomaly
/// worth a look (seed 000: a backfill gone wrong, duplicate ingestion).
pub const GROWTH_FACTOR: i64 = 10;

/// How far ahead rows have a partition to land in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    pub current: Month,
    pub current_covered: bool,
    /// Consecutive covered months after the current one (0 when the current
    /// month itself is not covered).
    pub months_ahead: i32,
    /// Months that must exist now (current through now + createAheadDays)
    /// and do not.
    pub missing_required: Vec<Month>,
}

impl Coverage {
    /// Consecutive months with a partition, the current one included: the
    /// value of `archiver_partition_coverage_months` (0: rows of this month
    /// have nowhere to go).
    pub(crate) fn months_including_current(&self) -> i64 {
        if self.current_covered {
            1 + i64::from(self.months_ahead)
        } else {
            0
        }
    }

    /// The current month and, once it is due (`createAheadDays` before it
    /// starts), the next one exist.
    pub(crate) fn is_covered(&self) -> bool {
        self.missing_required.is_empty()
    }

    /// Whether the month after the current one exists already.
    pub(crate) fn next_month_covered(&self) -> bool {
        self.current_covered && self.months_ahead >= 1
    }
}

pub(crate) fn coverage(
    partitions: &[CatalogPartition],
    now: DateTime<Utc>,
    ahead_days: u32,
) -> Coverage {
    let current = Month::containing(now);
    let covered = |month: Month| classify(month, partitions).is_covered();
    let current_covered = covered(current);
    let mut months_ahead = 0;
    if current_covered {
        let mut month = current.next();
        while months_ahead < MAX_MONTHS_AHEAD && covered(month) {
            months_ahead += 1;
            month = month.next();
        }
    }
    let missing_required = required_months(now, ahead_days)
        .into_iter()
        .filter(|month| !covered(*month))
        .collect();
    Coverage {
        current,
        current_covered,
        months_ahead,
        missing_required,
    }
}

/// Partitions the operator would not have made: a DEFAULT (or otherwise
/// unbounded) partition, bounds that are not exactly one calendar month,
/// or a month name with other bounds. Reported, never changed.
pub(crate) fn unexpected_partitions(partitions: &[CatalogPartition]) -> Vec<String> {
    partitions
        .iter()
        .filter_map(|partition| {
            let Some(bounds) = partition.bounds else {
                return Some(format!(
                    "{} has bound {:?}: rows there are outside monthly management \
                     (the operator never creates a default partition)",
                    partition.name, partition.bound_expression
                ));
            };
            let month = Month::containing(bounds.from);
            if bounds != month.bounds() {
                return Some(format!(
                    "{} has bounds {bounds}, not one calendar month",
                    partition.name
                ));
            }
            match Month::from_partition_name(&partition.name) {
                Some(named) if named != month => Some(format!(
                    "{} is named for {named} but holds {month} {}",
                    partition.name,
                    describe_bounds(partition)
                )),
                _ => None,
            }
        })
        .collect()
}

/// Adjacent months where the later one has at least [`GROWTH_FACTOR`] times
/// the (approximate) rows of the earlier one.
pub(crate) fn growth_warnings(partitions: &[CatalogPartition]) -> Vec<String> {
    let mut ranged: Vec<&CatalogPartition> =
        partitions.iter().filter(|p| p.bounds.is_some()).collect();
    ranged.sort_by_key(|p| p.bounds);
    ranged
        .windows(2)
        .filter_map(|pair| {
            let (earlier, later) = (pair[0], pair[1]);
            let adjacent = earlier.bounds?.to == later.bounds?.from;
            let (before, after) = (earlier.approximate_rows?, later.approximate_rows?);
            (adjacent && before > 0 && after >= before.saturating_mul(GROWTH_FACTOR)).then(|| {
                format!(
                    "{} has ~{after} rows, {}x the ~{before} of {}: check for a backfill or \
                     duplicate ingestion",
                    later.name,
                    after / before,
                    earlier.name
                )
            })
        })
        .collect()
}

/// The status entries, oldest first.
pub(crate) fn partition_infos(partitions: &[CatalogPartition]) -> Vec<PartitionInfo> {
    let mut infos: Vec<PartitionInfo> = partitions
        .iter()
        .filter_map(|p| {
            let bounds = p.bounds?;
            Some(PartitionInfo {
                name: p.name.clone(),
                from: bounds.from,
                to: bounds.to,
                approximate_rows: p.approximate_rows,
            })
        })
        .collect();
    infos.sort_by(|a, b| (a.from, &a.name).cmp(&(b.from, &b.name)));
    infos
}
