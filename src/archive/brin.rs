//! Summarization of `probe_minute_brin_minute`, the BRIN index through which
//! the per-minute work finds a minute's rows.
//!
//! A BRIN index only helps for block ranges that are summarized; rows added
//! to a range nobody has summarized yet are read by every query through the
//! index. PostgreSQL's `autosummarize` hands that work to autovacuum through
//! a small queue that one large minute overflows (migration 0012), so it is
//! off, and the derived-views maintenance summarizes the partitions it is
//! about to read, before reading them.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::partitions::catalog;

/// The partitioned BRIN index on `probe_minute (minute_bucket)`.
pub const INDEX: &str = "probe_minute_brin_minute";

/// How long summarization waits for a partition's lock. A VACUUM holds the
/// same lock for as long as it runs (and summarizes the ranges itself).
const LOCK_TIMEOUT: &str = "1s";

/// What one call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summarized {
    /// Block ranges summarized.
    pub ranges: i64,
    /// Partition indexes on which autosummarize was turned off.
    pub autosummarize_turned_off: Vec<String>,
    /// True when a lock was not granted in time; the next call does the work.
    pub skipped_busy: bool,
}

/// Turns autosummarize off where a partition created since migration 0012
/// copied it from the parent index, then summarizes the ranges not yet
/// summarized in the partitions holding minutes `from..=through`.
pub(crate) async fn summarize_new_ranges(
    pool: &PgPool,
    from: DateTime<Utc>,
    through: DateTime<Utc>,
) -> Result<Summarized, sqlx::Error> {
    let mut done = Summarized::default();
    let partitions: Vec<String> = catalog::read_partitions(pool)
        .await?
        .into_iter()
        .filter(|p| p.bounds.is_some_and(|b| b.from <= through && from < b.to))
        .map(|p| p.qualified)
        .collect();
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"
    )))
    .execute(&mut *tx)
    .await?;
    let outcome = async {
        let leaves: Vec<String> = sqlx::query_scalar(
            "SELECT t.relid::text FROM pg_partition_tree(to_regclass($1)) t \
             JOIN pg_class c ON c.oid = t.relid \
             WHERE t.isleaf AND EXISTS ( \
                 SELECT 1 FROM unnest(c.reloptions) o \
                 WHERE o ~* '^autosummarize=(on|true|yes|1)$')",
        )
        .bind(INDEX)
        .fetch_all(&mut *tx)
        .await?;
        for leaf in leaves {
            // The name comes from the catalog, quoted by regclass output.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER INDEX {leaf} SET (autosummarize = off)"
            )))
            .execute(&mut *tx)
            .await?;
            done.autosummarize_turned_off.push(leaf);
        }
        done.ranges = sqlx::query_scalar(
            "SELECT coalesce(sum(brin_summarize_new_values(t.relid)), 0)::bigint \
             FROM pg_partition_tree(to_regclass($1)) t \
             JOIN pg_index i ON i.indexrelid = t.relid \
             WHERE t.isleaf \
               AND i.indrelid IN (SELECT to_regclass(p) FROM unnest($2::text[]) p)",
        )
        .bind(INDEX)
        .bind(&partitions)
        .fetch_one(&mut *tx)
        .await?;
        Ok::<_, sqlx::Error>(())
    }
    .await;
    match outcome {
        Ok(()) => {
            tx.commit().await?;
            analyze_if_stale(pool, &partitions).await?;
        }
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => {
            // lock_not_available: a VACUUM (or DDL) holds a partition.
            tx.rollback().await?;
            return Ok(Summarized {
                skipped_busy: true,
                ..Summarized::default()
            });
        }
        Err(error) => return Err(error),
    }
    Ok(done)
}

/// ANALYZEs the partitions whose statistics are known to be stale: never
/// analyzed, or changed by more than half their rows since (a partition
/// analyzed while empty, a restore, a truncate). Without statistics the
/// planner costs the BRIN index as reading the whole partition and picks a
/// sequential scan for every minute. Forcing the plan instead
/// (`enable_seqscan = off`) made the per-minute statements choose nested
/// loops of lossy BRIN probes, far slower on a small table.
async fn analyze_if_stale(pool: &PgPool, partitions: &[String]) -> Result<(), sqlx::Error> {
    let stale: Vec<String> = sqlx::query_scalar(
        "SELECT p FROM unnest($1::text[]) p \
         JOIN pg_class c ON c.oid = to_regclass(p) \
         LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
         WHERE c.reltuples < 0 \
            OR coalesce(s.n_mod_since_analyze, 0) > greatest(1000, c.reltuples / 2)",
    )
    .bind(partitions)
    .fetch_all(pool)
    .await?;
    for partition in stale {
        // The name comes from the catalog, quoted by regclass output.
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {partition}")))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// [`summarize_new_ranges`] for a maintenance pass: a failure is logged and
/// the pass goes on (its statements still find their rows, only slower).
pub async fn summarize_before_reading(pool: &PgPool, from: DateTime<Utc>, through: DateTime<Utc>) {
    match summarize_new_ranges(pool, from, through).await {
        Ok(done) => {
            if !done.autosummarize_turned_off.is_empty() {
                tracing::info!(indexes = ?done.autosummarize_turned_off, "BRIN autosummarize turned off on new partitions");
            }
            if done.skipped_busy {
                tracing::debug!("BRIN summarization skipped: a partition is locked (VACUUM?)");
            } else {
                tracing::debug!(ranges = done.ranges, "BRIN ranges summarized");
            }
        }
        Err(error) => tracing::warn!(%error, "summarizing the BRIN index of probe_minute failed"),
    }
}
