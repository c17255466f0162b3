//! Creating the monthly partitions that must exist, idempotently, under
//! `lock_timeout` with bounded retries. Never a DEFAULT partition, and never
//! a replacement: a month whose range or name is taken by something else is
//! reported, not fixed.

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::PgPool;

use super::audit::{self, LockDiscipline, actions, is_lock_conflict};
use super::calendar::{Bounds, Month, TABLE, required_months};
use super::catalog::{self, CatalogPartition};
use super::{PartitionError, db_error, quote_ident};

/// Transaction-level advisory lock that serialises creators (two operator
/// replicas during a failover, the demo, a test helper): the second one
/// waits, then finds the month present.
const CREATE_LOCK: i64 = 0x7061_7274_6372_0001;

/// How a required month stands in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonthState {
    /// A partition with exactly the month's bounds (usually named for it).
    Present { by: String },
    /// Rows of the month have a home, but in partitions with other bounds
    /// (created by hand); reported, left alone.
    CoveredByOthers { by: Vec<String> },
    /// Nothing covers any of it and its name is free: create it.
    Missing,
    /// Partly covered, or its name is taken by a partition with other
    /// bounds: creating it would fail or replace something.
    Conflict { message: String },
}

impl MonthState {
    /// Whether every instant of the month has a partition.
    pub(crate) fn is_covered(&self) -> bool {
        matches!(self, Self::Present { .. } | Self::CoveredByOthers { .. })
    }
}

/// Where `month` stands among `partitions` (from the catalog).
pub(crate) fn classify(month: Month, partitions: &[CatalogPartition]) -> MonthState {
    let wanted = month.bounds();
    if let Some(exact) = partitions.iter().find(|p| p.bounds == Some(wanted)) {
        return MonthState::Present {
            by: exact.name.clone(),
        };
    }
    let mut overlapping: Vec<(&str, Bounds)> = partitions
        .iter()
        .filter_map(|p| Some((p.name.as_str(), p.bounds?)))
        .filter(|(_, bounds)| bounds.overlaps(&wanted))
        .collect();
    overlapping.sort_by_key(|(_, bounds)| bounds.from);
    if overlapping.is_empty() {
        let name = month.partition_name();
        return match partitions.iter().find(|p| p.name == name) {
            Some(taken) => MonthState::Conflict {
                message: format!(
                    "{name} exists with bounds {}, expected {wanted}; it is left as is",
                    describe_bounds(taken)
                ),
            },
            None => MonthState::Missing,
        };
    }
    let names = overlapping.iter().map(|(n, _)| n.to_string()).collect();
    if covers(&overlapping, wanted) {
        MonthState::CoveredByOthers { by: names }
    } else {
        let described: Vec<String> = overlapping
            .iter()
            .map(|(name, bounds)| format!("{name} {bounds}"))
            .collect();
        MonthState::Conflict {
            message: format!(
                "{month} {wanted} overlaps {} but is not fully covered; no partition can be \
                 created for it until that is resolved by hand",
                described.join(", ")
            ),
        }
    }
}

/// Whether the ranges (sorted by lower bound) cover `wanted` without a hole.
fn covers(sorted: &[(&str, Bounds)], wanted: Bounds) -> bool {
    let mut reached = wanted.from;
    for (_, bounds) in sorted {
        if bounds.from > reached {
            return false;
        }
        reached = reached.max(bounds.to);
    }
    reached >= wanted.to
}

pub(crate) fn describe_bounds(partition: &CatalogPartition) -> String {
    match partition.bounds {
        Some(bounds) => bounds.to_string(),
        None => partition.bound_expression.clone(),
    }
}

/// The result of one creation pass.
#[derive(Debug, Default)]
pub struct CreateReport {
    /// Partitions this pass created, in month order.
    pub created: Vec<String>,
    /// Required months that could not be created, and why
    /// ([`PartitionError::UnexpectedBounds`] or [`PartitionError::LockTimeout`]).
    pub problems: Vec<PartitionError>,
}

/// Creates every missing month from the current one through the month
/// containing `now + ahead_days`. A month that cannot be created (a
/// conflicting partition, locks held past every retry) is reported in
/// `problems` and the others are still created; only a failure to talk to
/// the database is an error.
pub(crate) async fn create_missing(
    pool: &PgPool,
    now: DateTime<Utc>,
    ahead_days: u32,
    lock: LockDiscipline,
    actor: &str,
) -> Result<CreateReport, PartitionError> {
    let partitions = catalog::read_partitions(pool)
        .await
        .map_err(db_error("reading the partitions of probe_minute"))?;
    let mut report = CreateReport::default();
    for month in required_months(now, ahead_days) {
        match classify(month, &partitions) {
            MonthState::Present { .. } | MonthState::CoveredByOthers { .. } => {}
            MonthState::Conflict { message } => {
                report.problems.push(PartitionError::UnexpectedBounds {
                    partition: month.partition_name(),
                    message,
                });
            }
            MonthState::Missing => match create_month(pool, month, now, lock, actor).await {
                Ok(Created::Now) => report.created.push(month.partition_name()),
                Ok(Created::Meanwhile) => {}
                Err(
                    error @ (PartitionError::LockTimeout { .. }
                    | PartitionError::UnexpectedBounds { .. }),
                ) => report.problems.push(error),
                Err(error) => return Err(error),
            },
        }
    }
    Ok(report)
}

enum Created {
    /// By this call.
    Now,
    /// By someone else between our catalog read and our lock.
    Meanwhile,
}

/// Creates one month's partition, retrying lock timeouts, then ANALYZEs it.
async fn create_month(
    pool: &PgPool,
    month: Month,
    now: DateTime<Utc>,
    lock: LockDiscipline,
    actor: &str,
) -> Result<Created, PartitionError> {
    let name = month.partition_name();
    let mut attempt = 1;
    let created = loop {
        match try_create(pool, month, now, lock, actor).await {
            Ok(created) => break created,
            Err(Attempt::Locks) if attempt < lock.attempts => {
                attempt += 1;
                tokio::time::sleep(lock.backoff).await;
            }
            Err(Attempt::Locks) => {
                return Err(PartitionError::LockTimeout {
                    step: "create",
                    partition: name,
                    attempts: attempt,
                    lock_timeout: lock.lock_timeout,
                });
            }
            Err(Attempt::Failed(error)) => return Err(error),
        }
    };
    if matches!(created, Created::Now) {
        // Fresh statistics from minute one, so the planner does not treat the
        // new month as an unknown until autovacuum gets to it.
        let statement = format!("ANALYZE {}", quote_ident(&name));
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await
            .map_err(db_error(format!("analyzing {name}")))?;
        tracing::info!(partition = %name, bounds = %month.bounds(), "created partition");
    }
    Ok(created)
}

enum Attempt {
    /// Lost a lock wait; may be retried.
    Locks,
    Failed(PartitionError),
}

/// One transaction: serialise with other creators, re-check the catalog
/// under the lock, record the intent, create.
async fn try_create(
    pool: &PgPool,
    month: Month,
    now: DateTime<Utc>,
    lock: LockDiscipline,
    actor: &str,
) -> Result<Created, Attempt> {
    let name = month.partition_name();
    let failed = |context: String| {
        move |source: sqlx::Error| {
            if is_lock_conflict(&source) {
                tracing::info!(%context, error = %source, "lock wait lost; retrying");
                Attempt::Locks
            } else {
                Attempt::Failed(PartitionError::Database { context, source })
            }
        }
    };
    let mut tx = pool
        .begin()
        .await
        .map_err(failed("starting a transaction".into()))?;
    lock.apply(&mut tx)
        .await
        .map_err(failed("setting lock_timeout".into()))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CREATE_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(failed("taking the partition-creation lock".into()))?;
    let partitions = catalog::read_partitions(&mut *tx)
        .await
        .map_err(failed("re-reading the partitions".into()))?;
    match classify(month, &partitions) {
        MonthState::Missing => {}
        MonthState::Present { .. } | MonthState::CoveredByOthers { .. } => {
            return Ok(Created::Meanwhile);
        }
        MonthState::Conflict { message } => {
            return Err(Attempt::Failed(PartitionError::UnexpectedBounds {
                partition: name,
                message,
            }));
        }
    }
    if catalog::relation_exists(&mut *tx, &name)
        .await
        .map_err(failed(format!("looking up {name}")))?
    {
        return Err(Attempt::Failed(PartitionError::UnexpectedBounds {
            message: format!(
                "a relation named {name} exists but is not a partition of {TABLE}; it is left as is"
            ),
            partition: name,
        }));
    }
    let bounds = month.bounds();
    audit::record(
        &mut *tx,
        now,
        actions::CREATE,
        &name,
        actor,
        serde_json::json!({
            "table": TABLE,
            "month": month.to_string(),
            "from": bounds.from,
            "to": bounds.to,
        }),
    )
    .await
    .map_err(failed(format!("recording the creation of {name}")))?;
    // The literals carry an explicit +00:00, so the session's TimeZone
    // cannot shift the bounds.
    let statement = format!(
        "CREATE TABLE {} PARTITION OF {TABLE} FOR VALUES FROM ('{}') TO ('{}')",
        quote_ident(&name),
        bounds.from.to_rfc3339_opts(SecondsFormat::Secs, false),
        bounds.to.to_rfc3339_opts(SecondsFormat::Secs, false),
    );
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(&mut *tx)
        .await
        .map_err(failed(format!("creating {name}")))?;
    tx.commit()
        .await
        .map_err(failed(format!("committing the creation of {name}")))?;
    Ok(Created::Now)
}
