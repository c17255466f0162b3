//! The daily and monthly rollups: `probe_day` a minute at a time and
//! exactly when the day closes, `probe_month` from its closed days.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use sqlx::{PgConnection, PgPool};

use super::{ViewsError, db};
use crate::db::locks;

/// Adds one minute's server-minutes to probe_day: counts, incident
/// transitions against each server's previous archived server-minute (found
/// through its latest day row, so midnight is no boundary).
/// The day's p95 percentiles are written exactly when the day closes; until
/// then the view `probe_day_live` computes them on read.
pub(super) async fn add_minute_to_days(
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
