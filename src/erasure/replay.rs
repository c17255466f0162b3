//! Tombstone replay: every tombstone in `data_deletion_log` is applied
//! again to the data it covers (rows at or before its `deleted_at`; daily
//! and monthly rows of that day or month and before). After a restore from
//! a backup taken before an erasure, this is what erases the data again;
//! run periodically, it is the safety net behind the drain's tombstone
//! filter. Data archived after a tombstone for the same server is new and
//! stays.
//!
//! A backup taken before an erasure does not hold its tombstone: the
//! tombstones are first imported from the live database (or any copy of
//! the deletion log), then replayed.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::scope::Scope;
use super::surfaces::{Selection, Table, suppression_tables_empty};
use super::transaction::{ACTOR, ErasureError, lock_scope};
use crate::secret::SecretString;

/// Audit-log action of a replay that changed something.
pub const ACTION: &str = "tombstone-replay";
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{context}: {source}")]
    Database {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("tombstone #{id}: {source}")]
    Tombstone {
        id: i64,
        #[source]
        source: ErasureError,
    },
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> ReplayError {
    move |source| ReplayError::Database { context, source }
}

/// One row of `data_deletion_log`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Tombstone {
    pub id: i64,
    pub tenant_id: Uuid,
    pub server_slug: Option<String>,
    pub deleted_at: DateTime<Utc>,
    pub reason: String,
    pub requester: Uuid,
    pub request_namespace: Option<String>,
    pub request_name: Option<String>,
    pub request_uid: Option<String>,
    pub receipt_sha256: Option<String>,
}

impl Tombstone {
    pub fn scope(&self) -> Scope {
        Scope {
            tenant: self.tenant_id,
            server: self.server_slug.clone(),
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayReport {
    pub tombstones: usize,
    /// Tombstones copied in from the source deletion log.
    pub imported: usize,
    /// Rows removed (or hashes replaced), per surface.
    pub removed: BTreeMap<String, i64>,
    /// Tombstones that removed something: data had come back.
    pub effective: Vec<i64>,
    /// The suppression tables hold rows but no salt was given: they were
    /// not replayed.
    pub suppression_skipped: bool,
}

impl ReplayReport {
    pub fn total_removed(&self) -> i64 {
        self.removed.values().sum()
    }
}

const COLUMNS: &str = "id, tenant_id, server_slug, deleted_at, reason, requester, \
                       request_namespace, request_name, request_uid, receipt_sha256";

pub async fn tombstones(pool: &PgPool) -> Result<Vec<Tombstone>, ReplayError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM data_deletion_log ORDER BY id"
    )))
    .fetch_all(pool)
    .await
    .map_err(db("reading tombstones"))
}

/// Copies every tombstone of `source` that `target` lacks (same tenant,
/// server and time) into `target`, with its request and receipt hash.
/// Returns how many were copied.
pub async fn import_tombstones(source: &PgPool, target: &PgPool) -> Result<usize, ReplayError> {
    let wanted = tombstones(source).await?;
    let mut tx = target
        .begin()
        .await
        .map_err(db("beginning the tombstone import"))?;
    let mut imported = 0;
    for t in &wanted {
        let inserted = sqlx::query(
            "INSERT INTO data_deletion_log \
               (tenant_id, server_slug, deleted_at, reason, requester, \
                request_namespace, request_name, request_uid, receipt_sha256) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 \
             WHERE NOT EXISTS (SELECT 1 FROM data_deletion_log \
                               WHERE tenant_id = $1 AND server_slug IS NOT DISTINCT FROM $2 \
                                 AND deleted_at = $3)",
        )
        .bind(t.tenant_id)
        .bind(t.server_slug.as_deref())
        .bind(t.deleted_at)
        .bind(&t.reason)
        .bind(t.requester)
        .bind(t.request_namespace.as_deref())
        .bind(t.request_name.as_deref())
        .bind(t.request_uid.as_deref())
        .bind(t.receipt_sha256.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(db("importing a tombstone"))?
        .rows_affected();
        imported += usize::try_from(inserted).unwrap_or(0);
    }
    tx.commit()
        .await
        .map_err(db("committing the tombstone import"))?;
    Ok(imported)
}

/// Re-applies every tombstone of `pool`, each in its own transaction under
/// the exclusive erasure lock (a drain tick cannot interleave). Audited
/// when it removed anything.
pub async fn replay_tombstones(
    pool: &PgPool,
    suppression_salt: Option<&SecretString>,
    now: DateTime<Utc>,
) -> Result<ReplayReport, ReplayError> {
    replay(pool, suppression_salt, now, 0).await
}

/// After a restore: imports the tombstones of `source` (the live deletion
/// log) into `target` (the restored database), then replays them all.
pub async fn import_and_replay(
    source: &PgPool,
    target: &PgPool,
    suppression_salt: Option<&SecretString>,
    now: DateTime<Utc>,
) -> Result<ReplayReport, ReplayError> {
    let imported = import_tombstones(source, target).await?;
    replay(target, suppression_salt, now, imported).await
}

async fn replay(
    pool: &PgPool,
    suppression_salt: Option<&SecretString>,
    now: DateTime<Utc>,
    imported: usize,
) -> Result<ReplayReport, ReplayError> {
    let all = tombstones(pool).await?;
    let mut report = ReplayReport {
        tombstones: all.len(),
        imported,
        ..ReplayReport::default()
    };
    if suppression_salt.is_none() {
        let mut conn = pool.acquire().await.map_err(db("connecting"))?;
        report.suppression_skipped = !suppression_tables_empty(&mut conn)
            .await
            .map_err(db("looking at the suppression tables"))?;
    }
    for tombstone in &all {
        let removed = replay_one(pool, tombstone, suppression_salt)
            .await
            .map_err(|source| ReplayError::Tombstone {
                id: tombstone.id,
                source,
            })?;
        let total: i64 = removed.values().sum();
        if total > 0 {
            report.effective.push(tombstone.id);
            tracing::warn!(
                tombstone = tombstone.id,
                rows = total,
                "tombstone replay removed data that had come back (restore?)"
            );
        }
        for (surface, count) in removed {
            *report.removed.entry(surface).or_insert(0) += count;
        }
    }
    if report.total_removed() > 0 || report.imported > 0 {
        audit(pool, &report, now).await?;
    }
    Ok(report)
}

async fn replay_one(
    pool: &PgPool,
    tombstone: &Tombstone,
    salt: Option<&SecretString>,
) -> Result<BTreeMap<String, i64>, ErasureError> {
    use super::transaction::{Step, db as step_db};
    let scope = tombstone.scope();
    let hash = salt.map(|salt| scope.tenant_hash(salt.expose()));
    let selection = Selection {
        scope: &scope,
        tenant_hash: hash.as_deref(),
        upto: Some(tombstone.deleted_at),
    };
    let mut tx = pool.begin().await.map_err(step_db(Step::Begin))?;
    lock_scope(&mut tx, &scope, LOCK_TIMEOUT).await?;
    let mut removed = BTreeMap::new();
    for table in Table::ALL {
        let rows = table
            .erase(&mut tx, &selection)
            .await
            .map_err(step_db(Step::Delete(table.name())))?;
        removed.insert(
            table.name().to_string(),
            i64::try_from(rows).unwrap_or(i64::MAX),
        );
    }
    tx.commit().await.map_err(step_db(Step::Commit))?;
    Ok(removed)
}

async fn audit(
    pool: &PgPool,
    report: &ReplayReport,
    now: DateTime<Utc>,
) -> Result<(), ReplayError> {
    sqlx::query(
        "INSERT INTO operator_audit_log (at, action, subject, actor, payload) \
         VALUES ($1, $2, 'data_deletion_log', $3, $4)",
    )
    .bind(now)
    .bind(ACTION)
    .bind(ACTOR)
    .bind(serde_json::json!({
        "tombstones": report.tombstones,
        "imported": report.imported,
        "effectiveTombstones": report.effective,
        "removed": report.removed,
        "suppressionSkipped": report.suppression_skipped,
    }))
    .execute(pool)
    .await
    .map_err(db("auditing the replay"))?;
    Ok(())
}
