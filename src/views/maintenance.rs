//! One maintenance pass: the views watermark, the minutes every active
//! shard has archived, day closes, and the periodic work that is due.

use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use sqlx::{PgConnection, PgPool};

use super::clusters::{add_minute_to_clusters, snapshot_clusters};
use super::plan_check::{PlanCheck, check_alert_query_plan, check_plan_if_due};
use super::rollups::{add_minute_to_days, close_day};
use super::{Periodic, ViewsError, db};
use crate::db::locks;

/// What one maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaintenanceReport {
    pub minutes: Vec<DateTime<Utc>>,
    pub closed_days: Vec<NaiveDate>,
    pub snapshot_rows: u64,
    /// None when the plan was not checked in this pass.
    pub plan_uses_index: Option<bool>,
    /// The plan check of this pass, if it ran (every minute).
    pub plan_check: Option<PlanCheck>,
    /// Why suppression clusters were not maintained, if they were not.
    pub suppression_disabled: Option<&'static str>,
    /// The slowest active shard: the views never pass its watermark.
    /// None when no shard is active.
    pub waiting_on: Option<WaitingShard>,
}

impl MaintenanceReport {
    /// The pass's plan check, if it ran.
    fn note_plan_check(&mut self, check: Option<PlanCheck>) {
        self.plan_uses_index = check.as_ref().map(|check| check.problem.is_none());
        self.plan_check = check;
    }
}

/// The shard the views wait on: the active shard with the oldest watermark
/// (the lowest id among equals). A gap-held active shard is one: minutes it
/// has not archived may still arrive. Suspended and retired shards are not
/// (`super::lifecycle`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WaitingShard {
    pub shard_id: i32,
    pub last_minute: DateTime<Utc>,
    /// Why its last tick did not advance (`gap`, `unsealed`, ...), if it did not.
    pub waiting_reason: Option<String>,
}

/// Inputs of a maintenance pass.
#[derive(Debug, Clone)]
pub struct ViewSettings<'a> {
    /// Salt of the tenant hashes; without it the suppression work refuses to run.
    pub salt: Option<&'a str>,
    pub now: DateTime<Utc>,
    /// Stop taking new minutes after this long.
    pub budget: Duration,
}

/// Applies every minute that all shards have archived, closes finished
/// days, snapshots the suppression clusters hourly, keeps statistics of the
/// current partition fresh and checks the alert router's plan.
pub async fn maintain(
    pool: &PgPool,
    settings: &ViewSettings<'_>,
) -> Result<MaintenanceReport, ViewsError> {
    let started = Instant::now();
    let mut report = MaintenanceReport {
        suppression_disabled: settings
            .salt
            .is_none()
            .then_some("no suppression salt configured"),
        ..Default::default()
    };
    let Some(mut last) = watermark(pool).await? else {
        // Nothing archived and no active shard: there is no views watermark
        // row to schedule the plan check by, and the alert router may still
        // query an empty table. The check is three EXPLAINs: every pass.
        let check = check_alert_query_plan(pool, settings.now).await?;
        report.note_plan_check(Some(check));
        return Ok(report);
    };
    report.waiting_on = slowest_shard(pool).await?;
    let Some(ready_through) = report.waiting_on.as_ref().map(|shard| shard.last_minute) else {
        // No active shard (all suspended or retired): no minute to apply,
        // but the alert router still reads the clusters every minute.
        report.note_plan_check(check_plan_if_due(pool, settings.now).await?);
        return Ok(report);
    };
    if last < ready_through {
        crate::archive::brin::summarize_before_reading(
            pool,
            last + chrono::Duration::minutes(1),
            ready_through,
        )
        .await;
    }
    while last < ready_through && started.elapsed() < settings.budget {
        let minute = last + chrono::Duration::minutes(1);
        apply_minute(pool, minute, settings.salt).await?;
        report.minutes.push(minute);
        if minute.hour() == 23 && minute.minute() == 59 {
            let day = minute.date_naive();
            close_day(pool, day).await?;
            report.closed_days.push(day);
        }
        last = minute;
    }
    if settings.salt.is_some() {
        report.snapshot_rows = snapshot_clusters(pool, settings.now).await?;
    }
    analyze_current_partition(pool, settings.now).await?;
    report.note_plan_check(check_plan_if_due(pool, settings.now).await?);
    sqlx::query(
        "UPDATE derived_views_watermark SET last_run_at = $1, last_error = NULL, waiting_on_shard = $2",
    )
    .bind(settings.now)
    .bind(report.waiting_on.as_ref().map(|shard| shard.shard_id))
    .execute(pool)
        .await
        .map_err(db("recording the run"))?;
    Ok(report)
}

/// The views watermark, created on first use just before the oldest
/// archived minute (or the slowest shard's position when nothing is archived).
async fn watermark(pool: &PgPool) -> Result<Option<DateTime<Utc>>, ViewsError> {
    let existing: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT last_minute FROM derived_views_watermark")
            .fetch_optional(pool)
            .await
            .map_err(db("reading the views watermark"))?;
    if existing.is_some() {
        return Ok(existing);
    }
    // One-time scan on first start: where the history begins.
    let oldest: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT min(minute_bucket) FROM probe_minute")
            .fetch_one(pool)
            .await
            .map_err(db("finding the oldest archived minute"))?;
    let start = match oldest {
        Some(oldest) => Some(oldest - chrono::Duration::minutes(1)),
        None => slowest_shard(pool).await?.map(|shard| shard.last_minute),
    };
    let Some(start) = start else {
        return Ok(None);
    };
    sqlx::query(
        "INSERT INTO derived_views_watermark (last_minute) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(start)
    .execute(pool)
    .await
    .map_err(db("creating the views watermark"))?;
    Ok(Some(start))
}

/// Where the views are: the last minute applied and the last day closed
/// (None before their first pass).
pub(crate) async fn progress(
    pool: &PgPool,
) -> Result<Option<(DateTime<Utc>, Option<NaiveDate>)>, ViewsError> {
    sqlx::query_as("SELECT last_minute, last_closed_day FROM derived_views_watermark")
        .fetch_optional(pool)
        .await
        .map_err(db("reading the views watermark"))
}

/// The active shard with the oldest watermark: every active shard has
/// archived through its `last_minute`. Suspended and retired shards do not
/// hold the views (one stopped shard must not freeze every tenant's rollups).
async fn slowest_shard(pool: &PgPool) -> Result<Option<WaitingShard>, ViewsError> {
    sqlx::query_as(
        "SELECT shard_id, last_minute, waiting_reason FROM archive_watermark \
         WHERE lifecycle = 'active' ORDER BY last_minute, shard_id LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .map_err(db("reading the shard watermarks"))
}

/// One minute into probe_day (and the live suppression clusters), with the
/// views watermark, in one transaction.
pub async fn apply_minute(
    pool: &PgPool,
    minute: DateTime<Utc>,
    salt: Option<&str>,
) -> Result<(), ViewsError> {
    let mut tx = pool.begin().await.map_err(db("beginning a minute"))?;
    apply_minute_in(&mut tx, minute, salt).await?;
    tx.commit().await.map_err(db("committing a minute"))?;
    Ok(())
}

/// [`apply_minute`] inside the caller's transaction (the benchmark rolls it back).
pub async fn apply_minute_in(
    tx: &mut PgConnection,
    minute: DateTime<Utc>,
    salt: Option<&str>,
) -> Result<(), ViewsError> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(locks::ERASURE)
        .execute(&mut *tx)
        .await
        .map_err(db("taking the erasure lock (shared)"))?;
    // The minute's rows are found through probe_minute_brin_minute (or the
    // clusters' partial index); the maintenance pass ANALYZEs partitions
    // whose statistics are stale before applying minutes (brin.rs), so the
    // planner picks the index without being forced.
    let moved = sqlx::query(
        "UPDATE derived_views_watermark SET last_minute = $1 WHERE last_minute = $1 - interval '1 minute'",
    )
    .bind(minute)
    .execute(&mut *tx)
    .await
    .map_err(db("advancing the views watermark"))?;
    if moved.rows_affected() != 1 {
        // Someone else (a previous leader finishing up) applied it already.
        return Ok(());
    }
    add_minute_to_days(tx, minute).await?;
    if let Some(salt) = salt {
        add_minute_to_clusters(tx, minute, salt).await?;
    }
    Ok(())
}

/// ANALYZE of the current month's partition every 5 minutes, so plans of
/// the hot queries follow the data as the month fills up.
async fn analyze_current_partition(pool: &PgPool, now: DateTime<Utc>) -> Result<(), ViewsError> {
    if !Periodic::Analyze.claim_due(pool, now).await? {
        return Ok(());
    }
    let partition = format!("probe_minute_{:04}_{:02}", now.year(), now.month());
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&partition)
        .fetch_one(pool)
        .await
        .map_err(db("looking up the current partition"))?;
    if exists {
        // The name comes from the calendar, not from input.
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {partition}")))
            .execute(pool)
            .await
            .map_err(db("analyzing the current partition"))?;
    }
    Ok(())
}
