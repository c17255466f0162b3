//! The lifecycle of a shard in `archive_watermark`: `active` (its minutes
//! are awaited by the derived views), `suspended` (`spec.suspend`: no worker
//! runs, the views go on without it) and `retired` (its ArchiverShard is
//! gone). Rows are never deleted: a shard that becomes active again resumes
//! from its watermark and holds the views again.
//!
//! Who sets what: the ArchiverShard controller sets active or suspended on
//! every reconcile; the source that sees objects disappear (a removed
//! manifest, the watch cache) retires the rows no present shard names.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;

/// Where a shard is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardLifecycle {
    Active,
    Suspended,
    Retired,
}

impl ShardLifecycle {
    /// The value of the `lifecycle` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Retired => "retired",
        }
    }

    /// The state a present shard should be in.
    pub(crate) fn of_present_shard(suspended: bool) -> Self {
        if suspended {
            Self::Suspended
        } else {
            Self::Active
        }
    }
}

/// Sets the lifecycle of `shard_id`, stamping when it changed, and records
/// `object` (`namespace/name` of its ArchiverShard) as the row's owner.
/// Returns whether the lifecycle changed; a shard with no watermark row yet
/// (it never ticked) has nothing to hold the views with and is left alone.
pub async fn set(
    pool: &PgPool,
    shard_id: i32,
    object: &str,
    lifecycle: ShardLifecycle,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let changed: Option<bool> = sqlx::query_scalar(
        "WITH before AS ( \
             SELECT lifecycle FROM archive_watermark WHERE shard_id = $1 FOR UPDATE \
         ) \
         UPDATE archive_watermark w SET \
             lifecycle = $2, \
             lifecycle_since = CASE WHEN before.lifecycle <> $2 THEN $3 ELSE w.lifecycle_since END, \
             shard_object = $4 \
         FROM before \
         WHERE w.shard_id = $1 \
           AND (before.lifecycle <> $2 OR w.shard_object IS DISTINCT FROM $4) \
         RETURNING before.lifecycle <> $2",
    )
    .bind(shard_id)
    .bind(lifecycle.as_str())
    .bind(now)
    .bind(object)
    .fetch_optional(pool)
    .await?;
    Ok(changed.unwrap_or(false))
}

/// Which watermark rows a source may retire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireScope<'a> {
    /// The source sees every ArchiverShard that uses this database (a
    /// cluster-wide operator, or the manifests directory).
    Everything,
    /// The source watches this namespace only: rows of shards in other
    /// namespaces, or of an unknown one (no object recorded, an object that
    /// is not `namespace/name` with a non-empty name and no other '/'), are
    /// not its to retire; an empty namespace owns nothing.
    Namespace(&'a str),
}

/// Retires every shard that is not retired yet, that no present shard
/// names (`present`: the shard ids of every ArchiverShard the source sees)
/// and that lies in `scope`. Returns the ids retired now, in order.
pub async fn retire_absent(
    pool: &PgPool,
    present: &[i32],
    scope: RetireScope<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<i32>, sqlx::Error> {
    let namespace = match scope {
        RetireScope::Everything => None,
        RetireScope::Namespace(namespace) => Some(namespace),
    };
    let mut retired: Vec<i32> = sqlx::query_scalar(
        "UPDATE archive_watermark SET lifecycle = 'retired', lifecycle_since = $2 \
         WHERE lifecycle <> 'retired' AND NOT (shard_id = ANY($1)) \
           AND ($3::text IS NULL OR ($3 <> '' AND starts_with(shard_object, $3 || '/') \
                AND length(shard_object) > length($3) + 1 \
                AND strpos(substr(shard_object, length($3) + 2), '/') = 0)) \
         RETURNING shard_id",
    )
    .bind(present)
    .bind(now)
    .bind(namespace)
    .fetch_all(pool)
    .await?;
    retired.sort_unstable();
    Ok(retired)
}

/// The lifecycle of `shard_id` and since when, if it has a watermark row.
pub async fn read(
    pool: &PgPool,
    shard_id: i32,
) -> Result<Option<(ShardLifecycle, DateTime<Utc>)>, sqlx::Error> {
    let row: Option<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT lifecycle, lifecycle_since FROM archive_watermark WHERE shard_id = $1",
    )
    .bind(shard_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(lifecycle, since)| {
        let lifecycle = match lifecycle.as_str() {
            "suspended" => ShardLifecycle::Suspended,
            "retired" => ShardLifecycle::Retired,
            // The column's CHECK allows nothing else.
            _ => ShardLifecycle::Active,
        };
        (lifecycle, since)
    }))
}

/// What a shard that becomes active again behind the derived views means
/// for the rollups, or None when it is not behind them. The views never go
/// back: they wait on it again until it passes `views_through`; the minutes
/// it archives up to then are not added minute by minute, but reach
/// probe_day when their day closes (an exact recompute from probe_minute).
/// Days closed while it was away (through `last_closed_day`) keep counts
/// without its rows.
pub(crate) fn rejoin_note(
    shard_through: DateTime<Utc>,
    views_through: DateTime<Utc>,
    last_closed_day: Option<NaiveDate>,
) -> Option<String> {
    if shard_through >= views_through {
        return None;
    }
    let first_missing_day = (shard_through + chrono::Duration::minutes(1)).date_naive();
    let closed = match last_closed_day {
        Some(last) if last >= first_missing_day => format!(
            "; days {first_missing_day} to {last} were closed without its rows and keep those counts"
        ),
        _ => String::new(),
    };
    Some(format!(
        "archived through {shard_through}, behind the derived views ({views_through}): they wait on \
         this shard again until it passes them; its minutes up to then reach probe_day when their \
         day closes{closed}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("a time")
    }

    #[test]
    fn a_shard_rejoining_behind_the_views_says_which_closed_days_miss_it() {
        let views = at("2026-11-12T08:00:00Z");
        assert_eq!(rejoin_note(views, views, None), None, "not behind");
        let day = |text: &str| text.parse::<NaiveDate>().expect("a day");
        let note = rejoin_note(at("2026-11-10T23:59:00Z"), views, Some(day("2026-11-11")))
            .expect("behind");
        assert!(
            note.ends_with(
                "days 2026-11-11 to 2026-11-11 were closed without its rows and keep those counts"
            ),
            "{note}"
        );
        let note = rejoin_note(at("2026-11-12T07:00:00Z"), views, Some(day("2026-11-11")))
            .expect("behind");
        assert!(note.ends_with("when their day closes"), "{note}");
    }
}
