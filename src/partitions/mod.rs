//! Monthly partitions of `probe_minute`: calendar math, creation ahead of
//! need, and drops behind retention with guards.
//!
//! - [`calendar`]: months, bounds, which months must exist;
//! - [`catalog`]: partitions and bounds as the database has them;
//! - [`create`]: idempotent creation (never a DEFAULT partition);
//! - [`plan`]: which partition may go, and why (not) — pure;
//! - [`removal`]: verification, detach and drop under `lock_timeout`;
//! - [`coverage`]: what the status reports (coverage, warnings);
//! - [`policy_registry`]: where the RetentionPolicy in force is found;
//! - `reconciler`: the `PartitionSchedule` adapter.

pub mod audit;
pub mod calendar;
pub mod catalog;
pub mod coverage;
pub mod create;
pub mod plan;
pub mod policy_registry;
pub mod removal;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use self::calendar::Bounds;

/// Condition types of a PartitionSchedule besides Ready.
pub mod conditions {
    /// The current month and, once due, the next one have partitions.
    pub const COVERED: &str = "Covered";
    /// Drops are held: no RetentionPolicy in force, a conflict, or rows of
    /// the candidate still inside their retention.
    pub const DROP_BLOCKED: &str = "DropBlocked";
}

/// Errors of partition work, each naming the partition and the step.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("{context}: {source}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "{step} of {partition}: locks still held by others after {attempts} attempt(s) \
         of lock_timeout {lock_timeout:?}; it is tried again on the next reconcile"
    )]
    LockTimeout {
        step: &'static str,
        partition: String,
        attempts: u32,
        lock_timeout: Duration,
    },
    /// A partition or relation in the way of a month, left untouched.
    #[error("{message}")]
    UnexpectedBounds { partition: String, message: String },
    /// The hard guard: the current and future months are never dropped.
    #[error("refusing to {step} {partition} {bounds}: it holds the current or a future month")]
    Protected {
        partition: String,
        bounds: Bounds,
        step: &'static str,
    },
    #[error("{partition}: {rows} row(s) still inside their own retention; nothing was dropped")]
    RowsInsideRetention { partition: String, rows: i64 },
    #[error("{partition} cannot be dropped: {reason}")]
    NotAPartition { partition: String, reason: String },
    /// The tier rows the guard judges a partition's rows by could not be read.
    #[error("reading the tier history for the drop guard: {source}")]
    TierHistory {
        #[source]
        source: crate::retention::RetentionError,
    },
}

/// `map_err` adapter that adds what was being done to a database error.
pub(crate) fn db_error(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> PartitionError {
    let context = context.into();
    move |source| PartitionError::Database { context, source }
}

/// A Postgres identifier in double quotes (for names of our own format; names
/// read from the catalog use `regclass::text`, which quotes them already).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates every missing monthly partition of `probe_minute` from the month
/// of `now` through the month containing `now + ahead_days`, each under
/// `lock_timeout` (three attempts), ANALYZEd and recorded in
/// `operator_audit_log`. Returns the partitions created by this call, in
/// month order; months that already exist are left alone. A month that
/// cannot be created (its range or name is taken by something else, or its
/// locks stay busy) is an error after the other months were created.
pub async fn ensure_partitions(
    pool: &PgPool,
    now: DateTime<Utc>,
    ahead_days: u32,
    lock_timeout: Duration,
) -> Result<Vec<String>, PartitionError> {
    let report = create::create_missing(
        pool,
        now,
        ahead_days,
        audit::LockDiscipline::new(lock_timeout),
        audit::DEFAULT_ACTOR,
    )
    .await?;
    let mut problems = report.problems.into_iter();
    match problems.next() {
        None => Ok(report.created),
        Some(first) => {
            for other in problems {
                tracing::warn!(error = %other, "a partition could not be created");
            }
            Err(first)
        }
    }
}
