//! The suppression-cluster log the alert router reads: live clusters a
//! minute at a time, and hourly snapshots into the permanent history.

use chrono::{DateTime, Timelike, Utc};
use sqlx::{PgConnection, PgPool};

use super::{ViewsError, db};
use crate::db::locks;

/// Clusters of the minute: failing verdicts sharing (error_kind, asn,
/// registry_of_origin) across more than one tenant, tenants only as salted
/// SHA-256 hashes.
pub(super) async fn add_minute_to_clusters(
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

/// Once an hour: copies the live clusters into the permanent history and
/// drops live rows older than 24 hours.
pub(super) async fn snapshot_clusters(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<u64, ViewsError> {
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
