//! The alert router's query plan (seed 004 failure mode 5): a plan that
//! flips to a sequential scan under load.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{ViewsError, db};

/// Rows above which the alert router's query must use its index.
const PLAN_CHECK_MIN_ROWS: f64 = 10_000.0;

/// The alert router's question: clusters of the last minute above a share of
/// all tenants. It must be served by `suppression_clusters_recent`.
const ALERT_ROUTER_QUERY: &str = "SELECT error_kind, asn, registry_of_origin, contributing_tenant_count \
     FROM suppression_clusters WHERE minute_bucket = $1 AND contributing_tenant_count > $2";

/// Every 10 minutes: does the index exist, and (on a table big enough for
/// it to matter) does the planner use it? Seed failure mode 5: a plan that
/// flips to a sequential scan under load.
pub(super) async fn check_plan_if_due(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<Option<bool>, ViewsError> {
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
