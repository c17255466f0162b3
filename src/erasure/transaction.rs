//! The erasure transaction (DESIGN §5): locks -> tombstone first -> delete
//! probe_minute, its rejects, probe_day, probe_month -> replace the tenant
//! hash by `tombstone` in the suppression tables -> UNLINK the Redis keys
//! (dispatched alongside the deletes, awaited) -> POST cache invalidations
//! (awaited) -> COMMIT. Any failure before COMMIT drops the transaction, so
//! Postgres rolls back and the tombstone never exists for a run that did
//! not finish. Redis is not transactional: keys unlinked by a run that then
//! failed stay unlinked (the retry finds fewer), which is the safe side.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use super::invalidate::{self, InvalidationError};
use super::redis_side::{self, KeysByShard, RedisSideError};
use super::redis_targets::RedisTarget;
use super::request::ErasureRequest;
use super::scope::Scope;
use super::surfaces::{self, Selection, Table, names};
use crate::api::deletion_request::CacheInvalidation;
use crate::db::locks;
use crate::secret::SecretString;

/// Who the audit log names as actor.
pub const ACTOR: &str = "archiver-operator";

/// The step of an erasure; failures are reported as `step: reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Begin,
    Lock,
    Tombstone,
    Delete(&'static str),
    Suppression,
    Redis,
    CacheInvalidation,
    Audit,
    Commit,
    Verification,
    Receipt,
    /// Checking that every table naming a tenant is in the catalogue.
    Catalogue,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Begin => "begin",
            Self::Lock => "lock",
            Self::Tombstone => "tombstone",
            Self::Delete(table) => table,
            Self::Suppression => "suppression",
            Self::Redis => "redis",
            Self::CacheInvalidation => "cache-invalidation",
            Self::Audit => "audit",
            Self::Commit => "commit",
            Self::Verification => "verification",
            Self::Receipt => "receipt",
            Self::Catalogue => "catalogue",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error("{step}: {source}")]
    Database {
        step: Step,
        #[source]
        source: sqlx::Error,
    },
    #[error("redis: {0}")]
    Redis(#[from] RedisSideError),
    #[error("cache-invalidation: {0}")]
    Invalidation(#[from] InvalidationError),
    #[error(
        "suppression: the suppression tables hold tenant hashes but no suppression salt is configured (--suppression-salt / ARCHIVER_SUPPRESSION_SALT)"
    )]
    NoSalt,
    #[error("verification: {0}")]
    Unverified(String),
    /// Tables that name a tenant but are neither erasure surfaces nor
    /// declared kept: nothing is erased until they are.
    #[error(
        "catalogue: {} hold(s) tenant data but no erasure covers it: add it to the catalogue \
         (src/schema/tables.rs) or declare it out of scope (--erasure-out-of-scope-table); nothing was erased",
        .0.join(", ")
    )]
    UncataloguedTables(Vec<String>),
}

impl ErasureError {
    /// The step that failed, the label of `archiver_deletion_failures_total`.
    pub fn step(&self) -> &'static str {
        match self {
            Self::Database { step, .. } => step.as_str(),
            Self::Redis(_) => Step::Redis.as_str(),
            Self::Invalidation(_) => Step::CacheInvalidation.as_str(),
            Self::NoSalt => Step::Suppression.as_str(),
            Self::Unverified(_) => Step::Verification.as_str(),
            Self::UncataloguedTables(_) => Step::Catalogue.as_str(),
        }
    }
}

pub(crate) fn db(step: Step) -> impl FnOnce(sqlx::Error) -> ErasureError {
    move |source| ErasureError::Database { step, source }
}

/// What an erasure needs besides the request.
#[derive(Debug, Clone)]
pub struct ErasureSettings {
    pub suppression_salt: Option<SecretString>,
    pub cache_invalidate_urls: Vec<String>,
    pub alert_key_patterns: Vec<String>,
    /// Every shard Redis: the request does not name one.
    pub redis: Vec<RedisTarget>,
    pub invalidation_timeout: Duration,
    /// Longest wait for a lock (drain ticks in flight, a rollup of the
    /// server): past it the attempt fails and is retried.
    pub lock_timeout: Duration,
    /// Tables naming a tenant that are knowingly not erased
    /// (`crate::schema::uncatalogued_tables`).
    pub out_of_scope_tables: Vec<String>,
}

impl ErasureSettings {
    /// Settings with the default bounds: the invalidation timeout and a
    /// minute of waiting for locks.
    pub fn new(
        suppression_salt: Option<SecretString>,
        cache_invalidate_urls: Vec<String>,
        alert_key_patterns: Vec<String>,
        redis: Vec<RedisTarget>,
    ) -> Self {
        Self {
            suppression_salt,
            cache_invalidate_urls,
            alert_key_patterns,
            redis,
            invalidation_timeout: invalidate::TIMEOUT,
            lock_timeout: Duration::from_secs(60),
            out_of_scope_tables: Vec::new(),
        }
    }

    /// The same, leaving the tables `declared` out of scope.
    pub(crate) fn with_out_of_scope_tables(mut self, declared: Vec<String>) -> Self {
        self.out_of_scope_tables = declared;
        self
    }
}

/// A committed erasure.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub tombstone_id: i64,
    pub deleted_at: DateTime<Utc>,
    /// Rows or keys removed, per surface (every surface listed).
    pub removed: BTreeMap<String, i64>,
    pub invalidations: Vec<CacheInvalidation>,
    /// Verdict keys removed, per shard label, for verification.
    pub removed_keys: KeysByShard,
    /// Seconds spent per phase, for logs and the benchmark.
    pub phases: Phases,
}

/// Runs the erasure transaction at time `now` (the tombstone's deleted_at).
pub async fn erase(
    pool: &PgPool,
    request: &ErasureRequest,
    settings: &ErasureSettings,
    now: DateTime<Utc>,
) -> Result<Committed, ErasureError> {
    let scope = &request.scope;
    let mut phases = Vec::new();
    let started = Instant::now();
    let mut tx = pool.begin().await.map_err(db(Step::Begin))?;
    lock_scope(&mut tx, scope, settings.lock_timeout).await?;
    let tombstone_id = insert_tombstone(&mut tx, request, now).await?;
    let tenant_hash = tenant_hash(&mut tx, scope, settings).await?;
    phases.push(("lock+tombstone", started.elapsed().as_secs_f64()));

    // The Redis side is dispatched alongside the Postgres deletes and both
    // are awaited before COMMIT: the order of failure handling is the
    // design's (any failure drops the transaction), the wall time is the
    // longer of the two instead of their sum.
    let started = Instant::now();
    let (deleted, redis) = tokio::join!(
        delete_rows(&mut tx, scope, tenant_hash.as_deref()),
        timed(erase_redis(
            &settings.redis,
            scope,
            &settings.alert_key_patterns
        )),
    );
    let (mut removed, delete_phases) = deleted?;
    let ((redis_removed, removed_keys), redis_seconds) = (redis.0?, redis.1);
    removed.extend(redis_removed);
    phases.extend(delete_phases);
    phases.push(("redis (alongside the deletes)", redis_seconds));
    phases.push(("deletes+redis", started.elapsed().as_secs_f64()));

    let started = Instant::now();
    let invalidations = invalidate::invalidate_all(
        &settings.cache_invalidate_urls,
        scope,
        settings.invalidation_timeout,
    )
    .await?;
    phases.push(("cache-invalidation", started.elapsed().as_secs_f64()));

    let started = Instant::now();
    audit_run(
        &mut tx,
        request,
        tombstone_id,
        now,
        &removed,
        &invalidations,
    )
    .await?;
    tx.commit().await.map_err(db(Step::Commit))?;
    phases.push(("commit", started.elapsed().as_secs_f64()));

    Ok(Committed {
        tombstone_id,
        deleted_at: now,
        removed,
        invalidations,
        removed_keys,
        phases,
    })
}

/// Phase timings, for logs and the benchmark.
pub type Phases = Vec<(&'static str, f64)>;

async fn timed<T>(future: impl std::future::Future<Output = T>) -> (T, f64) {
    let started = Instant::now();
    let value = future.await;
    (value, started.elapsed().as_secs_f64())
}

/// The row deletes, then the hash replacement, in the design's order.
async fn delete_rows(
    conn: &mut PgConnection,
    scope: &Scope,
    tenant_hash: Option<&str>,
) -> Result<(BTreeMap<String, i64>, Phases), ErasureError> {
    let selection = Selection {
        scope,
        tenant_hash,
        upto: None,
    };
    let mut removed = BTreeMap::new();
    let mut phases = Vec::new();
    for table in Table::ALL {
        let (rows, seconds) = timed(table.erase(conn, &selection)).await;
        let rows = rows.map_err(db(Step::Delete(table.name())))?;
        removed.insert(table.name().to_string(), to_i64(rows));
        phases.push((table.name(), seconds));
    }
    Ok((removed, phases))
}

/// The exclusive erasure lock (waits for drain ticks in flight and holds
/// new ones until COMMIT), then the per-server keys rollup recomputes take,
/// in a fixed order: erasure, tenant, servers sorted.
pub(crate) async fn lock_scope(
    conn: &mut PgConnection,
    scope: &Scope,
    timeout: Duration,
) -> Result<(), ErasureError> {
    sqlx::query(AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{}ms'",
        timeout.as_millis()
    )))
    .execute(&mut *conn)
    .await
    .map_err(db(Step::Lock))?;
    for key in [locks::ERASURE, locks::tenant(scope.tenant)] {
        advisory_lock(conn, key).await?;
    }
    // Listed under the erasure lock: no drain tick can add a server now.
    let servers = match &scope.server {
        Some(server) => vec![server.clone()],
        None => servers_of(conn, scope).await?,
    };
    for server in servers {
        advisory_lock(conn, locks::server(scope.tenant, &server)).await?;
    }
    Ok(())
}

async fn advisory_lock(conn: &mut PgConnection, key: i64) -> Result<(), ErasureError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(&mut *conn)
        .await
        .map_err(db(Step::Lock))?;
    Ok(())
}

/// Every server of a tenant with rows anywhere, sorted. probe_minute is
/// walked as a loose index scan (one index probe per server), not row by row.
async fn servers_of(conn: &mut PgConnection, scope: &Scope) -> Result<Vec<String>, ErasureError> {
    sqlx::query_scalar(
        "WITH RECURSIVE servers(slug) AS ( \
           SELECT min(server_slug) FROM probe_minute WHERE tenant_id = $1 \
           UNION ALL \
           SELECT (SELECT min(server_slug) FROM probe_minute \
                   WHERE tenant_id = $1 AND server_slug > servers.slug) \
           FROM servers WHERE servers.slug IS NOT NULL) \
         SELECT slug FROM servers WHERE slug IS NOT NULL \
         UNION SELECT server_slug FROM probe_day WHERE tenant_id = $1 \
         UNION SELECT server_slug FROM probe_month WHERE tenant_id = $1 \
         ORDER BY 1",
    )
    .bind(scope.tenant)
    .fetch_all(&mut *conn)
    .await
    .map_err(db(Step::Lock))
}

async fn insert_tombstone(
    conn: &mut PgConnection,
    request: &ErasureRequest,
    now: DateTime<Utc>,
) -> Result<i64, ErasureError> {
    sqlx::query_scalar(
        "INSERT INTO data_deletion_log \
           (tenant_id, server_slug, deleted_at, reason, requester, request_namespace, request_name, request_uid) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(request.scope.tenant)
    .bind(request.scope.server.as_deref())
    .bind(now)
    .bind(request.reason.as_str())
    .bind(request.requester)
    .bind(&request.namespace)
    .bind(&request.name)
    .bind(request.uid.as_deref())
    .fetch_one(&mut *conn)
    .await
    .map_err(db(Step::Tombstone))
}

/// The tenant's salted hash, or None when no salt is configured and the
/// suppression tables are empty (nothing to replace). Without a salt and
/// with rows present, the erasure cannot be complete: it fails.
async fn tenant_hash(
    conn: &mut PgConnection,
    scope: &Scope,
    settings: &ErasureSettings,
) -> Result<Option<String>, ErasureError> {
    match &settings.suppression_salt {
        Some(salt) => Ok(Some(scope.tenant_hash(salt.expose()))),
        None => {
            let empty = surfaces::suppression_tables_empty(conn)
                .await
                .map_err(db(Step::Suppression))?;
            if empty {
                Ok(None)
            } else {
                Err(ErasureError::NoSalt)
            }
        }
    }
}

/// Every shard Redis at once; each one's keys are awaited before COMMIT.
async fn erase_redis(
    targets: &[RedisTarget],
    scope: &Scope,
    alert_patterns: &[String],
) -> Result<(BTreeMap<String, i64>, KeysByShard), ErasureError> {
    let results = futures::future::join_all(
        targets
            .iter()
            .map(|target| redis_side::erase(target, scope, alert_patterns)),
    )
    .await;
    let mut keys = Vec::new();
    let (mut verdicts, mut index, mut alerts) = (0u64, 0u64, 0u64);
    for (target, result) in targets.iter().zip(results) {
        let done = result?;
        verdicts += done.verdict_keys;
        index += done.index_entries;
        alerts += done.alert_keys;
        keys.push((target.label.clone(), done.verdict_key_names));
    }
    let removed = BTreeMap::from([
        (names::REDIS_VERDICT_KEYS.to_string(), to_i64(verdicts)),
        (names::REDIS_INDEX_ENTRIES.to_string(), to_i64(index)),
        (names::REDIS_ALERT_KEYS.to_string(), to_i64(alerts)),
    ]);
    Ok((removed, keys))
}

/// What this run did, committed with the deletes: if the process dies
/// between COMMIT and the receipt, the next run folds these counts into
/// its receipt instead of losing them.
async fn audit_run(
    conn: &mut PgConnection,
    request: &ErasureRequest,
    tombstone_id: i64,
    now: DateTime<Utc>,
    removed: &BTreeMap<String, i64>,
    invalidations: &[CacheInvalidation],
) -> Result<(), ErasureError> {
    sqlx::query(
        "INSERT INTO operator_audit_log (at, action, subject, actor, payload) \
         VALUES ($1, 'erasure', $2, $3, $4)",
    )
    .bind(now)
    .bind(request.subject())
    .bind(ACTOR)
    .bind(serde_json::json!({
        "tombstoneId": tombstone_id,
        "requestUid": request.uid,
        "scope": request.scope.kind(),
        "removed": removed,
        "cacheInvalidations": invalidations,
    }))
    .execute(&mut *conn)
    .await
    .map_err(db(Step::Audit))?;
    Ok(())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
