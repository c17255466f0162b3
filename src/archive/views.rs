//! Derived views kept current every minute at the cost of that minute:
//! the daily and monthly rollups and the suppression-cluster log.
//!
//! Work runs in the operator leader, minute by minute behind a watermark
//! of its own that never passes the slowest shard's watermark (every region
//! of a minute is in). Each minute is applied exactly once, in one
//! transaction with the views watermark. A day is recomputed exactly from
//! `probe_minute` when it closes, and its month from `probe_day` then.
//! Transactions hold the erasure lock shared, so an erasure (exclusive) can
//! never be undone by a concurrent rollup.

use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use sqlx::{PgConnection, PgPool};

use crate::db::locks;

/// Rows above which the alert router's query must use its index.
pub const PLAN_CHECK_MIN_ROWS: f64 = 10_000.0;

#[derive(Debug, thiserror::Error)]
#[error("derived views: {context}: {source}")]
pub struct ViewsError {
    context: &'static str,
    #[source]
    source: sqlx::Error,
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> ViewsError {
    move |source| ViewsError { context, source }
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaintenanceReport {
    pub minutes: Vec<DateTime<Utc>>,
    pub closed_days: Vec<NaiveDate>,
    pub snapshot_rows: u64,
    /// None when the plan was not checked in this pass.
    pub plan_uses_index: Option<bool>,
    /// Why suppression clusters were not maintained, if they were not.
    pub suppression_disabled: Option<&'static str>,
    /// The slowest active shard: the views never pass its watermark.
    /// None when no shard is active.
    pub waiting_on: Option<WaitingShard>,
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
        return Ok(report);
    };
    report.waiting_on = slowest_shard(pool).await?;
    let Some(ready_through) = report.waiting_on.as_ref().map(|shard| shard.last_minute) else {
        return Ok(report);
    };
    if last < ready_through {
        super::brin::summarize_before_reading(
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
    report.plan_uses_index = check_plan_if_due(pool, settings.now).await?;
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
pub async fn progress(
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
pub async fn slowest_shard(pool: &PgPool) -> Result<Option<WaitingShard>, ViewsError> {
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

/// Adds one minute's server-minutes to probe_day: counts, incident
/// transitions against each server's previous archived server-minute (found
/// through its latest day row, so midnight is no boundary).
/// The day's p95 percentiles are written exactly when the day closes; until
/// then the view `probe_day_live` computes them on read.
async fn add_minute_to_days(
    tx: &mut PgConnection,
    minute: DateTime<Utc>,
) -> Result<(), ViewsError> {
    sqlx::query(
        r#"
        WITH minute_rows AS (
            SELECT tenant_id, server_slug,
                   server_minute_state_counts(count(*), count(*) FILTER (WHERE state = 'down'),
                       count(*) FILTER (WHERE state = 'degraded'), count(*) FILTER (WHERE state = 'up'),
                       count(*) FILTER (WHERE state = 'auth-walled')) AS state
            FROM probe_minute
            WHERE minute_bucket = $1
            GROUP BY tenant_id, server_slug
        ), with_previous AS (
            SELECT m.*, previous.last_state AS previous_state
            FROM minute_rows m
            LEFT JOIN LATERAL (
                SELECT d.last_state FROM probe_day d
                WHERE d.tenant_id = m.tenant_id AND d.server_slug = m.server_slug
                  AND d.day <= $2 AND d.last_minute < $1
                ORDER BY d.day DESC LIMIT 1
            ) previous ON true
        )
        INSERT INTO probe_day AS d (tenant_id, server_slug, day, minutes_total, minutes_up, minutes_down,
            minutes_degraded, minutes_auth_walled, minutes_unknown, incident_count,
            last_minute, last_state, updated_at)
        SELECT tenant_id, server_slug, $2, 1,
               (state = 'up')::int, (state = 'down')::int, (state = 'degraded')::int,
               (state = 'auth-walled')::int, (state = 'unknown')::int,
               (state <> 'up' AND coalesce(previous_state = 'up', false))::int,
               $1, state, now()
        FROM with_previous
        ON CONFLICT (tenant_id, server_slug, day) DO UPDATE SET
            minutes_total = d.minutes_total + 1,
            minutes_up = d.minutes_up + EXCLUDED.minutes_up,
            minutes_down = d.minutes_down + EXCLUDED.minutes_down,
            minutes_degraded = d.minutes_degraded + EXCLUDED.minutes_degraded,
            minutes_auth_walled = d.minutes_auth_walled + EXCLUDED.minutes_auth_walled,
            minutes_unknown = d.minutes_unknown + EXCLUDED.minutes_unknown,
            incident_count = d.incident_count + EXCLUDED.incident_count,
            last_minute = EXCLUDED.last_minute,
            last_state = EXCLUDED.last_state,
            updated_at = now()
        "#,
    )
    .bind(minute)
    .bind(minute.date_naive())
    .execute(&mut *tx)
    .await
    .map_err(db("adding a minute to probe_day"))?;
    Ok(())
}

/// Clusters of the minute: failing verdicts sharing (error_kind, asn,
/// registry_of_origin) across more than one tenant, tenants only as salted
/// SHA-256 hashes.
async fn add_minute_to_clusters(
    tx: &mut PgConnection,
    minute: DateTime<Utc>,
    salt: &str,
) -> Result<(), ViewsError> {
    sqlx::query(
        r#"
        INSERT INTO suppression_clusters AS c (error_kind, asn, registry_of_origin, minute_bucket,
            contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count, updated_at)
        SELECT error_kind, asn, registry_of_origin, minute_bucket,
               count(DISTINCT tenant_id),
               array_agg(DISTINCT encode(sha256(convert_to(tenant_id::text || $2, 'UTF8')), 'hex')),
               count(DISTINCT (tenant_id, server_slug)),
               now()
        FROM probe_minute
        WHERE minute_bucket = $1 AND state IN ('down', 'degraded')
        GROUP BY error_kind, asn, registry_of_origin, minute_bucket
        HAVING count(DISTINCT tenant_id) > 1
        ON CONFLICT ON CONSTRAINT suppression_clusters_key DO UPDATE SET
            contributing_tenant_count = EXCLUDED.contributing_tenant_count,
            contributing_tenant_hashes = EXCLUDED.contributing_tenant_hashes,
            contributing_pair_count = EXCLUDED.contributing_pair_count,
            updated_at = now()
        "#,
    )
    .bind(minute)
    .bind(salt)
    .execute(&mut *tx)
    .await
    .map_err(db("adding a minute to suppression_clusters"))?;
    Ok(())
}

/// Recomputes a finished day exactly from probe_minute, then adds it to its
/// month.
///
/// The month is updated by the day's difference (the day as now closed
/// minus what an earlier close of it had contributed), not recomputed from
/// probe_day: retention may already have deleted the month's first days
/// (a 30-day daily window ends inside a 31-day month), and a recompute
/// would silently drop them from the month's SLA.
pub async fn close_day(pool: &PgPool, day: NaiveDate) -> Result<(), ViewsError> {
    let mut tx = pool.begin().await.map_err(db("beginning a day close"))?;
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(locks::ERASURE)
        .execute(&mut *tx)
        .await
        .map_err(db("taking the erasure lock (shared)"))?;
    remember_closed_day(&mut tx, day).await?;
    recompute_day(&mut tx, day).await?;
    add_day_to_month(&mut tx, day).await?;
    sqlx::query("UPDATE derived_views_watermark SET last_closed_day = $1")
        .bind(day)
        .execute(&mut *tx)
        .await
        .map_err(db("recording the closed day"))?;
    tx.commit().await.map_err(db("committing a day close"))?;
    Ok(())
}

/// Keeps the rows of `day` as an earlier close left them (if it was closed
/// before), for [`add_day_to_month`].
async fn remember_closed_day(tx: &mut PgConnection, day: NaiveDate) -> Result<(), ViewsError> {
    sqlx::query(
        "CREATE TEMP TABLE IF NOT EXISTS closed_day_before (LIKE probe_day) ON COMMIT DELETE ROWS",
    )
    .execute(&mut *tx)
    .await
    .map_err(db("creating the closed-day table"))?;
    sqlx::query("INSERT INTO closed_day_before SELECT * FROM probe_day WHERE day = $1 AND closed")
        .bind(day)
        .execute(&mut *tx)
        .await
        .map_err(db("remembering the closed day"))?;
    Ok(())
}

/// Adds the just-closed `day` to its month: the day's counts minus what an
/// earlier close of the same day had added, one more day when it is new to
/// the month; then the month's SLA from its new sums.
async fn add_day_to_month(tx: &mut PgConnection, day: NaiveDate) -> Result<(), ViewsError> {
    sqlx::query(
        r#"
        INSERT INTO probe_month AS m (tenant_id, server_slug, month, days_total, minutes_up, minutes_down,
            minutes_degraded, minutes_auth_walled, minutes_unknown, incident_count, sla_uptime_pct, updated_at)
        SELECT d.tenant_id, d.server_slug, $2,
               CASE WHEN b.tenant_id IS NULL THEN 1 ELSE 0 END,
               d.minutes_up - coalesce(b.minutes_up, 0),
               d.minutes_down - coalesce(b.minutes_down, 0),
               d.minutes_degraded - coalesce(b.minutes_degraded, 0),
               d.minutes_auth_walled - coalesce(b.minutes_auth_walled, 0),
               d.minutes_unknown - coalesce(b.minutes_unknown, 0),
               d.incident_count - coalesce(b.incident_count, 0),
               NULL, now()
        FROM probe_day d
        LEFT JOIN closed_day_before b USING (tenant_id, server_slug, day)
        WHERE d.day = $1
        ON CONFLICT (tenant_id, server_slug, month) DO UPDATE SET
            days_total = m.days_total + EXCLUDED.days_total,
            minutes_up = m.minutes_up + EXCLUDED.minutes_up,
            minutes_down = m.minutes_down + EXCLUDED.minutes_down,
            minutes_degraded = m.minutes_degraded + EXCLUDED.minutes_degraded,
            minutes_auth_walled = m.minutes_auth_walled + EXCLUDED.minutes_auth_walled,
            minutes_unknown = m.minutes_unknown + EXCLUDED.minutes_unknown,
            incident_count = m.incident_count + EXCLUDED.incident_count,
            updated_at = now()
        "#,
    )
    .bind(day)
    .bind(first_of_month(day))
    .execute(&mut *tx)
    .await
    .map_err(db("adding a day to its month"))?;
    sqlx::query(
        r#"
        UPDATE probe_month m SET sla_uptime_pct =
            CASE WHEN m.minutes_up + m.minutes_down + m.minutes_degraded = 0 THEN NULL
                 ELSE round(100.0 * m.minutes_up / (m.minutes_up + m.minutes_down + m.minutes_degraded), 3) END
        FROM probe_day d
        WHERE d.day = $1 AND m.month = $2 AND m.tenant_id = d.tenant_id AND m.server_slug = d.server_slug
        "#,
    )
    .bind(day)
    .bind(first_of_month(day))
    .execute(&mut *tx)
    .await
    .map_err(db("computing the month's SLA"))?;
    Ok(())
}

fn first_of_month(day: NaiveDate) -> NaiveDate {
    day.with_day(1).expect("the first of a month always exists")
}

/// The exact day: server-minute states, incidents with the state carried
/// over midnight from the previous day row, p95 percentiles over the day's
/// region values.
pub async fn recompute_day(tx: &mut PgConnection, day: NaiveDate) -> Result<(), ViewsError> {
    sqlx::query(
        r#"
        WITH server_minutes AS (
            SELECT tenant_id, server_slug, minute_bucket,
                   server_minute_state_counts(count(*), count(*) FILTER (WHERE state = 'down'),
                       count(*) FILTER (WHERE state = 'degraded'), count(*) FILTER (WHERE state = 'up'),
                       count(*) FILTER (WHERE state = 'auth-walled')) AS state
            FROM probe_minute
            WHERE minute_bucket >= $1::date AND minute_bucket < $1::date + 1
            GROUP BY tenant_id, server_slug, minute_bucket
        ), ordered AS (
            SELECT s.*,
                   lag(state) OVER w AS previous_in_day,
                   row_number() OVER w AS position,
                   first_value(state) OVER (PARTITION BY tenant_id, server_slug ORDER BY minute_bucket DESC) AS day_last_state,
                   max(minute_bucket) OVER (PARTITION BY tenant_id, server_slug) AS day_last_minute
            FROM server_minutes s
            WINDOW w AS (PARTITION BY tenant_id, server_slug ORDER BY minute_bucket)
        ), counted AS (
            SELECT o.tenant_id, o.server_slug,
                   count(*) AS total,
                   count(*) FILTER (WHERE state = 'up') AS up,
                   count(*) FILTER (WHERE state = 'down') AS down,
                   count(*) FILTER (WHERE state = 'degraded') AS degraded,
                   count(*) FILTER (WHERE state = 'auth-walled') AS walled,
                   count(*) FILTER (WHERE state = 'unknown') AS unknown,
                   count(*) FILTER (WHERE state <> 'up' AND coalesce(previous_in_day, before.last_state) = 'up') AS incidents,
                   max(day_last_state) AS last_state,
                   max(day_last_minute) AS last_minute
            FROM ordered o
            LEFT JOIN LATERAL (
                SELECT d.last_state FROM probe_day d
                WHERE d.tenant_id = o.tenant_id AND d.server_slug = o.server_slug AND d.day < $1
                ORDER BY d.day DESC LIMIT 1
            ) before ON o.position = 1
            GROUP BY o.tenant_id, o.server_slug
        ), latency AS (
            SELECT tenant_id, server_slug,
                   percentile_disc(0.5) WITHIN GROUP (ORDER BY p95_ms) AS p50,
                   percentile_disc(0.95) WITHIN GROUP (ORDER BY p95_ms) AS p95
            FROM probe_minute
            WHERE minute_bucket >= $1::date AND minute_bucket < $1::date + 1 AND p95_ms IS NOT NULL
            GROUP BY tenant_id, server_slug
        )
        INSERT INTO probe_day AS d (tenant_id, server_slug, day, minutes_total, minutes_up, minutes_down,
            minutes_degraded, minutes_auth_walled, minutes_unknown, incident_count,
            p95_ms_p50_of_day, p95_ms_p95_of_day, last_minute, last_state, updated_at, closed)
        SELECT c.tenant_id, c.server_slug, $1, c.total, c.up, c.down, c.degraded, c.walled, c.unknown,
               c.incidents, l.p50, l.p95, c.last_minute, c.last_state, now(), true
        FROM counted c LEFT JOIN latency l USING (tenant_id, server_slug)
        ON CONFLICT (tenant_id, server_slug, day) DO UPDATE SET
            minutes_total = EXCLUDED.minutes_total, minutes_up = EXCLUDED.minutes_up,
            minutes_down = EXCLUDED.minutes_down, minutes_degraded = EXCLUDED.minutes_degraded,
            minutes_auth_walled = EXCLUDED.minutes_auth_walled, minutes_unknown = EXCLUDED.minutes_unknown,
            incident_count = EXCLUDED.incident_count,
            p95_ms_p50_of_day = EXCLUDED.p95_ms_p50_of_day, p95_ms_p95_of_day = EXCLUDED.p95_ms_p95_of_day,
            last_minute = EXCLUDED.last_minute, last_state = EXCLUDED.last_state,
            updated_at = now(), closed = true
        "#,
    )
    .bind(day)
    .execute(&mut *tx)
    .await
    .map_err(db("recomputing a day"))?;
    Ok(())
}

/// probe_month of `month` (its first day) from probe_day. sla_uptime_pct is
/// NULL when no minute of the month was conclusive.
pub async fn recompute_month(tx: &mut PgConnection, month: NaiveDate) -> Result<(), ViewsError> {
    sqlx::query(
        r#"
        INSERT INTO probe_month AS m (tenant_id, server_slug, month, days_total, minutes_up, minutes_down,
            minutes_degraded, minutes_auth_walled, minutes_unknown, incident_count, sla_uptime_pct, updated_at)
        SELECT tenant_id, server_slug, $1, count(*), sum(minutes_up), sum(minutes_down), sum(minutes_degraded),
               sum(minutes_auth_walled), sum(minutes_unknown), sum(incident_count),
               CASE WHEN sum(minutes_up + minutes_down + minutes_degraded) = 0 THEN NULL
                    ELSE round(100.0 * sum(minutes_up) / sum(minutes_up + minutes_down + minutes_degraded), 3) END,
               now()
        FROM probe_day
        WHERE day >= $1 AND day < ($1 + interval '1 month')::date
        GROUP BY tenant_id, server_slug
        ON CONFLICT (tenant_id, server_slug, month) DO UPDATE SET
            days_total = EXCLUDED.days_total, minutes_up = EXCLUDED.minutes_up,
            minutes_down = EXCLUDED.minutes_down, minutes_degraded = EXCLUDED.minutes_degraded,
            minutes_auth_walled = EXCLUDED.minutes_auth_walled, minutes_unknown = EXCLUDED.minutes_unknown,
            incident_count = EXCLUDED.incident_count, sla_uptime_pct = EXCLUDED.sla_uptime_pct,
            updated_at = now()
        "#,
    )
    .bind(month)
    .execute(&mut *tx)
    .await
    .map_err(db("recomputing a month"))?;
    Ok(())
}

/// Recomputes `month` on demand from the probe_day rows still present
/// (e.g. after a correction); days retention has already deleted are then
/// no longer counted.
pub async fn recompute_month_now(pool: &PgPool, month: NaiveDate) -> Result<(), ViewsError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(db("beginning a month recompute"))?;
    recompute_month(&mut tx, first_of_month(month)).await?;
    tx.commit()
        .await
        .map_err(db("committing a month recompute"))
}

/// Once an hour: copies the live clusters into the permanent history and
/// drops live rows older than 24 hours.
async fn snapshot_clusters(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, ViewsError> {
    let hour = now
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(now);
    let mut tx = pool.begin().await.map_err(db("beginning a snapshot"))?;
    // An erasure replaces hashes in both tables: never copy a hash it is
    // removing (it holds this lock exclusively).
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(locks::ERASURE)
        .execute(&mut *tx)
        .await
        .map_err(db("taking the erasure lock (shared)"))?;
    let due = sqlx::query(
        "UPDATE derived_views_watermark SET last_snapshot_hour = $1 \
         WHERE last_snapshot_hour IS NULL OR last_snapshot_hour < $1",
    )
    .bind(hour)
    .execute(&mut *tx)
    .await
    .map_err(db("claiming the hourly snapshot"))?;
    if due.rows_affected() == 0 {
        return Ok(0);
    }
    let copied = sqlx::query(
        r#"
        INSERT INTO suppression_clusters_history AS h (error_kind, asn, registry_of_origin, minute_bucket,
            contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count, snapshot_at)
        SELECT error_kind, asn, registry_of_origin, minute_bucket, contributing_tenant_count,
               contributing_tenant_hashes, contributing_pair_count, $1
        FROM suppression_clusters
        ON CONFLICT ON CONSTRAINT suppression_clusters_history_key DO UPDATE SET
            contributing_tenant_count = EXCLUDED.contributing_tenant_count,
            contributing_tenant_hashes = EXCLUDED.contributing_tenant_hashes,
            contributing_pair_count = EXCLUDED.contributing_pair_count,
            snapshot_at = EXCLUDED.snapshot_at
        "#,
    )
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db("snapshotting suppression clusters"))?
    .rows_affected();
    sqlx::query("DELETE FROM suppression_clusters WHERE minute_bucket < $1 - interval '24 hours'")
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db("pruning live suppression clusters"))?;
    tx.commit().await.map_err(db("committing a snapshot"))?;
    Ok(copied)
}

/// ANALYZE of the current month's partition every 5 minutes, so plans of
/// the hot queries follow the data as the month fills up.
async fn analyze_current_partition(pool: &PgPool, now: DateTime<Utc>) -> Result<(), ViewsError> {
    let due = sqlx::query(
        "UPDATE derived_views_watermark SET last_analyze_at = $1 \
         WHERE last_analyze_at IS NULL OR last_analyze_at <= $1 - interval '5 minutes'",
    )
    .bind(now)
    .execute(pool)
    .await
    .map_err(db("claiming the analyze"))?;
    if due.rows_affected() == 0 {
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

/// The alert router's question: clusters of the last minute above a share of
/// all tenants. It must be served by `suppression_clusters_recent`.
pub const ALERT_ROUTER_QUERY: &str = "SELECT error_kind, asn, registry_of_origin, contributing_tenant_count \
     FROM suppression_clusters WHERE minute_bucket = $1 AND contributing_tenant_count > $2";

/// Every 10 minutes: does the index exist, and (on a table big enough for
/// it to matter) does the planner use it? Seed failure mode 5: a plan that
/// flips to a sequential scan under load.
async fn check_plan_if_due(pool: &PgPool, now: DateTime<Utc>) -> Result<Option<bool>, ViewsError> {
    let due = sqlx::query(
        "UPDATE derived_views_watermark SET plan_checked_at = $1 \
         WHERE plan_checked_at IS NULL OR plan_checked_at <= $1 - interval '10 minutes'",
    )
    .bind(now)
    .execute(pool)
    .await
    .map_err(db("claiming the plan check"))?;
    if due.rows_affected() == 0 {
        return Ok(None);
    }
    let uses_index = alert_query_uses_index(pool, now).await?;
    sqlx::query("UPDATE derived_views_watermark SET plan_uses_index = $1")
        .bind(uses_index)
        .execute(pool)
        .await
        .map_err(db("recording the plan check"))?;
    Ok(Some(uses_index))
}

/// The plan check itself.
pub async fn alert_query_uses_index(pool: &PgPool, now: DateTime<Utc>) -> Result<bool, ViewsError> {
    let index_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('suppression_clusters_recent') IS NOT NULL")
            .fetch_one(pool)
            .await
            .map_err(db("looking up the index"))?;
    if !index_exists {
        return Ok(false);
    }
    let rows: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE relname = 'suppression_clusters'")
            .fetch_one(pool)
            .await
            .map_err(db("reading the table size"))?;
    if f64::from(rows) < PLAN_CHECK_MIN_ROWS {
        // A sequential scan of a tiny table is the right plan.
        return Ok(true);
    }
    let minute = crate::clock::minute_floor(now) - chrono::Duration::minutes(1);
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (FORMAT JSON) {}",
        ALERT_ROUTER_QUERY
            .replace("$1", &format!("'{}'::timestamptz", minute.to_rfc3339()))
            .replace("$2", "10")
    )))
    .fetch_one(pool)
    .await
    .map_err(db("explaining the alert router query"))?;
    Ok(plan
        .to_string()
        .contains("\"Index Name\":\"suppression_clusters_recent\""))
}

/// How often the leader looks for newly archived minutes.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// Runs one pass and publishes it in metrics and logs.
pub async fn maintain_and_report(
    pool: &PgPool,
    salt: Option<&str>,
    now: DateTime<Utc>,
    metrics: &crate::metrics::Metrics,
) -> Result<MaintenanceReport, ViewsError> {
    let started = Instant::now();
    let result = maintain(
        pool,
        &ViewSettings {
            salt,
            now,
            budget: Duration::from_secs(50),
        },
    )
    .await;
    metrics
        .views_duration
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(report) => {
            if let Some(uses) = report.plan_uses_index {
                metrics.suppression_plan_uses_index.set(i64::from(uses));
                if !uses {
                    tracing::warn!(
                        "the alert router's cluster query no longer uses suppression_clusters_recent"
                    );
                }
            }
            if let Some(why) = report.suppression_disabled {
                tracing::warn!("suppression clusters not maintained: {why}");
            }
            export_waiting_on(metrics, report.waiting_on.as_ref());
            if !report.minutes.is_empty() {
                tracing::info!(
                    minutes = report.minutes.len(),
                    closed_days = ?report.closed_days,
                    waiting_on_shard = report.waiting_on.as_ref().map(|shard| shard.shard_id),
                    "derived views updated"
                );
            }
        }
        Err(error) => {
            tracing::warn!(%error, "derived views maintenance failed");
            let _ = sqlx::query("UPDATE derived_views_watermark SET last_error = $1")
                .bind(error.to_string())
                .execute(pool)
                .await;
        }
    }
    // After a failed pass too: a lag frozen at its last success would keep
    // ArchiverViewsLagAboveSLO silent while the views stop.
    if let Ok(Some(last)) =
        sqlx::query_scalar::<_, DateTime<Utc>>("SELECT last_minute FROM derived_views_watermark")
            .fetch_optional(pool)
            .await
    {
        metrics.views_lag_seconds.set(
            (now - (last + chrono::Duration::minutes(1)))
                .num_seconds()
                .max(0),
        );
    }
    result
}

/// `archiver_views_waiting_on`: one series, for the shard the views wait on.
fn export_waiting_on(metrics: &crate::metrics::Metrics, waiting_on: Option<&WaitingShard>) {
    let labels = waiting_on.map(|shard| crate::metrics::ViewsWaitLabels {
        shard: metrics
            .shard_label(shard.shard_id)
            .unwrap_or_else(|| "unreconciled".to_string()),
        shard_id: shard.shard_id.to_string(),
    });
    let current = labels
        .as_ref()
        .is_some_and(|labels| metrics.views_waiting_on.get(labels).is_some());
    if !current {
        metrics.views_waiting_on.clear();
    }
    if let Some(labels) = labels {
        metrics.views_waiting_on.get_or_create(&labels).set(1);
    }
}

/// Says in the log when the shard the views wait on changes (not every
/// pass): which shard now bounds every tenant's rollups, and why it waits.
#[derive(Debug, Default)]
pub struct WaitingOnLog {
    last: Option<i32>,
}

impl WaitingOnLog {
    pub fn note(&mut self, report: &MaintenanceReport) {
        let now = report.waiting_on.as_ref().map(|shard| shard.shard_id);
        if now == self.last {
            return;
        }
        self.last = now;
        match &report.waiting_on {
            Some(shard) => tracing::info!(
                shard_id = shard.shard_id,
                archived_through = %shard.last_minute,
                waiting_reason = shard.waiting_reason.as_deref().unwrap_or("none"),
                "derived views now wait on shard {}",
                shard.shard_id
            ),
            None => tracing::info!("derived views wait on no shard: none is active"),
        }
    }
}

/// The leader's maintenance loop.
pub async fn run_forever(
    pool: PgPool,
    salt: Option<crate::secret::SecretString>,
    clock: crate::clock::SharedClock,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut shard_lag = crate::archive::health::ShardLagExport::default();
    let mut waiting_on_log = WaitingOnLog::default();
    loop {
        shard_lag.export(&pool, clock.now(), &metrics).await;
        if let Ok(report) = maintain_and_report(
            &pool,
            salt.as_ref().map(|s| s.expose()),
            clock.now(),
            &metrics,
        )
        .await
        {
            waiting_on_log.note(&report);
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
        }
    }
    // A replica that stops leading must not keep exporting a frozen lag:
    // alerts take max() over the replicas (a standby's views lag is 0).
    metrics.shard_lag_seconds.clear();
    metrics.shard_lag_slo_seconds.clear();
    metrics.views_lag_seconds.set(0);
    metrics.views_waiting_on.clear();
    metrics.shard_lifecycle.clear();
}
