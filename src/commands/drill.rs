//! The deletion drill (seed 000, "quarterly GDPR delete fan-out drill"):
//! reseed a synthetic tenant in every surface, Redis included, check each
//! surface holds it, erase it through a real DeletionRequest reconcile,
//! check every surface is empty and the tombstone exists, and keep the
//! receipt. Run it on the production database: the synthetic tenant's id
//! is fixed and recognisable, and nothing else is touched.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use redis::AsyncCommands;
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use crate::api::deletion_request::{DeletionPhase, DeletionReason, DeletionRequestSpec};
use crate::api::{DeletionRequest, DeletionRequestStatus};
use crate::archive::verdict::{REGIONS, index_key, verdict_key};
use crate::clock::{SharedClock, minute_floor};
use crate::erasure::redis_side::VerdictKey;
use crate::erasure::redis_targets::{RedisTarget, RedisTargets};
use crate::erasure::scope::{Scope, tenant_hash};
use crate::erasure::surfaces::names;
use crate::erasure::transaction::{ACTOR, ErasureError};
use crate::erasure::verify::count_surfaces;
use crate::runtime::config::{OperatorConfig, SecretString};
use crate::runtime::context::Context;
use crate::runtime::reconcile::{Managed, ReconcileError};
use crate::schema::{ErasureMode, Table};

/// The synthetic tenant: `d2111` reads "drill".
pub const DRILL_TENANT: Uuid = Uuid::from_u128(0x00000000_0000_4000_8000_0000000d2111);
/// A second synthetic tenant, only present as a hash next to the drill
/// tenant's in the seeded suppression cluster (clusters need two tenants).
pub const DRILL_PEER_TENANT: Uuid = Uuid::from_u128(0x00000000_0000_4000_8000_0000000d2112);
/// The person accountable for drill erasures unless one is named.
pub const DRILL_REQUESTER: Uuid = Uuid::from_u128(0x00000000_0000_4000_8000_0000000d2100);
pub const DRILL_SERVER: &str = "drill-server";
/// Namespace of the in-process DeletionRequest.
pub const DRILL_NAMESPACE: &str = "archiver-drill";
const DRILL_SHARD: &str = "drill/redis";
/// Marks the seeded suppression clusters, so they can be removed afterwards.
const DRILL_ERROR_KIND: &str = "drill-synthetic";
const DRILL_REGISTRY: &str = "drill.invalid";
/// AS64496 is reserved for documentation (RFC 5398).
const DRILL_ASN: i32 = 64496;
/// Minutes of per-minute history seeded.
const SEEDED_MINUTES: i64 = 60;
/// Seeded Redis keys expire on their own if a drill is interrupted.
const REDIS_TTL_SECONDS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("{context}: {source}")]
    Database {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("Redis: {context}: {source}")]
    Redis {
        context: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error("counting surfaces: {0}")]
    Count(#[source] ErasureError),
    #[error("reconciling the drill DeletionRequest: {0}")]
    Reconcile(#[source] ReconcileError),
    #[error(
        "the drill needs the suppression salt (--suppression-salt / ARCHIVER_SUPPRESSION_SALT): it erases like production does"
    )]
    NoSalt,
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> DrillError {
    move |source| DrillError::Database { context, source }
}

fn redis_err(context: &'static str) -> impl FnOnce(redis::RedisError) -> DrillError {
    move |source| DrillError::Redis { context, source }
}

/// What the drill saw.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillReport {
    pub request: String,
    /// Per surface, after reseeding.
    pub seeded: BTreeMap<String, i64>,
    /// Per surface, after the erasure.
    pub after: BTreeMap<String, i64>,
    pub status: DeletionRequestStatus,
    /// Failed assertions; empty when the drill passed.
    pub problems: Vec<String>,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs the drill against `pool` and the Redis at `redis_url`, with the
/// operator's salt, cache-invalidation URLs and alert-key patterns.
pub async fn run(
    pool: &PgPool,
    redis_url: &SecretString,
    config: OperatorConfig,
    requester: Uuid,
    clock: SharedClock,
) -> Result<DrillReport, DrillError> {
    let Some(salt) = config.suppression_salt.clone() else {
        return Err(DrillError::NoSalt);
    };
    let now = clock.now();
    let scope = Scope::server(DRILL_TENANT, DRILL_SERVER);
    let target = RedisTarget {
        label: DRILL_SHARD.into(),
        url: redis_url.clone(),
    };
    let settings = config.erasure_settings(vec![target]);

    let minutes = seeded_minutes(now);
    ensure_month_partition(pool, minutes.0).await?;
    seed_postgres(pool, &salt, minutes, now).await?;
    let keys = seed_redis(redis_url, &config.alert_key_patterns, minutes).await?;
    let indexed = vec![(DRILL_SHARD.to_string(), keys)];
    let seeded = count_surfaces(pool, &scope, &settings, clock.now(), &indexed)
        .await
        .map_err(DrillError::Count)?;
    let mut problems = empty_surfaces(&seeded, !config.alert_key_patterns.is_empty());

    let object = drill_request(now, requester);
    let request = format!(
        "{DRILL_NAMESPACE}/{}",
        object.metadata.name.as_deref().unwrap_or("")
    );
    let ctx = Context {
        // Only the drill's own Redis: the drill never touches real shards.
        redis_targets: Arc::new(RedisTargets::of([RedisTarget {
            label: DRILL_SHARD.into(),
            url: redis_url.clone(),
        }])),
        ..Context::new(clock.clone())
            .with_database(pool.clone())
            .with_config(config)
    };
    let outcome = object.reconcile(&ctx).await;
    let status = outcome.map_err(DrillError::Reconcile)?.status;

    let after = count_surfaces(pool, &scope, &settings, clock.now(), &indexed)
        .await
        .map_err(DrillError::Count)?;
    if problems.is_empty() {
        problems.extend(check_erased(pool, &status, &after).await?);
    }
    remove_seeded_clusters(pool).await?;
    let report = DrillReport {
        request,
        seeded,
        after,
        status,
        problems,
    };
    audit(pool, &report, clock.now()).await?;
    Ok(report)
}

/// Every seeded surface must hold the tenant before the erasure, or the
/// drill proves nothing.
fn empty_surfaces(seeded: &BTreeMap<String, i64>, alert_patterns: bool) -> Vec<String> {
    seeded
        .iter()
        .filter(|(surface, count)| {
            **count == 0 && (alert_patterns || surface.as_str() != names::REDIS_ALERT_KEYS)
        })
        .map(|(surface, _)| format!("seeding left {surface} empty"))
        .collect()
}

async fn check_erased(
    pool: &PgPool,
    status: &DeletionRequestStatus,
    after: &BTreeMap<String, i64>,
) -> Result<Vec<String>, DrillError> {
    let mut problems = Vec::new();
    if status.phase != Some(DeletionPhase::Completed) {
        problems.push(format!(
            "the DeletionRequest ended {:?}, not Completed: {}",
            status.phase,
            status.last_failure.as_deref().unwrap_or("-")
        ));
    }
    for (surface, count) in after {
        if *count != 0 {
            problems.push(format!("{surface} still holds {count} after the erasure"));
        }
    }
    match status.tombstone_id {
        None => problems.push("no tombstone id in the status".into()),
        Some(id) => {
            let found: Option<(Uuid, Option<String>, String)> = sqlx::query_as(
                "SELECT tenant_id, server_slug, reason FROM data_deletion_log WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(db("reading the tombstone"))?;
            if found != Some((DRILL_TENANT, Some(DRILL_SERVER.into()), "drill".into())) {
                problems.push(format!(
                    "tombstone #{id} missing or not the drill's: {found:?}"
                ));
            }
        }
    }
    if status.receipt.is_none() || status.receipt_sha256.is_none() {
        problems.push("no receipt in the status".into());
    }
    Ok(problems)
}

fn drill_request(now: DateTime<Utc>, requester: Uuid) -> DeletionRequest {
    let name = format!("drill-{}", now.format("%Y%m%dt%H%M%Sz"));
    let mut object = DeletionRequest::new(
        &name,
        DeletionRequestSpec {
            tenant_id: DRILL_TENANT,
            server_slug: Some(DRILL_SERVER.into()),
            reason: DeletionReason::Drill,
            requester,
            received_at: Some(now),
            extension: None,
        },
    );
    object.metadata.namespace = Some(DRILL_NAMESPACE.into());
    object.metadata.uid = Some(Uuid::new_v4().to_string());
    object.metadata.generation = Some(1);
    object.metadata.creation_timestamp = Some(crate::api::common::kube_time(now));
    object
}

/// The seeded minutes: the last hour, kept inside the current month so
/// one partition covers them (first and last minute, inclusive).
fn seeded_minutes(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let last = minute_floor(now);
    let month = month_start(last);
    let first = (last - chrono::Duration::minutes(SEEDED_MINUTES - 1)).max(month);
    (first, last)
}

fn month_start(at: DateTime<Utc>) -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(at.year(), at.month(), 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(at, |d| d.and_utc())
}

fn next_month(start: DateTime<Utc>) -> DateTime<Utc> {
    let (year, month) = if start.month() == 12 {
        (start.year() + 1, 1)
    } else {
        (start.year(), start.month() + 1)
    };
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(start, |d| d.and_utc())
}

/// Creates the partition of the month holding `at` when no partition covers
/// it. A partition of another name covering the month (made by the
/// PartitionSchedule reconciler) makes Postgres refuse the overlap
/// (42P17): that counts as present.
async fn ensure_month_partition(pool: &PgPool, at: DateTime<Utc>) -> Result<(), DrillError> {
    let from = month_start(at);
    let to = next_month(from);
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS probe_minute_{:04}_{:02} PARTITION OF probe_minute \
         FOR VALUES FROM ('{}') TO ('{}')",
        from.year(),
        from.month(),
        from.format("%Y-%m-%d %H:%M:%S+00"),
        to.format("%Y-%m-%d %H:%M:%S+00"),
    );
    match sqlx::query(AssertSqlSafe(sql)).execute(pool).await {
        Ok(_) => Ok(()),
        Err(error)
            if error
                .as_database_error()
                .and_then(|e| e.code())
                .is_some_and(|code| code == "42P17") =>
        {
            Ok(())
        }
        Err(source) => Err(DrillError::Database {
            context: "creating the month's probe_minute partition",
            source,
        }),
    }
}

/// Every Postgres surface of the catalogue gets the synthetic tenant, in
/// set-based inserts. Re-running is harmless (conflicts keep what is there).
async fn seed_postgres(
    pool: &PgPool,
    salt: &SecretString,
    minutes: (DateTime<Utc>, DateTime<Utc>),
    now: DateTime<Utc>,
) -> Result<(), DrillError> {
    let hashes = vec![
        tenant_hash(DRILL_TENANT, salt.expose()),
        tenant_hash(DRILL_PEER_TENANT, salt.expose()),
    ];
    let mut tx = pool.begin().await.map_err(db("beginning the reseed"))?;
    for table in Table::ALL {
        seed_table(&mut tx, table, minutes, now, &hashes).await?;
    }
    tx.commit().await.map_err(db("committing the reseed"))?;
    Ok(())
}

/// Seeds one table: every table has its own columns, so a table added to
/// the catalogue is asked for here by the compiler (and a surface the seed
/// leaves empty fails the drill, see [`empty_surfaces`]).
async fn seed_table(
    conn: &mut sqlx::PgConnection,
    table: Table,
    (first, last): (DateTime<Utc>, DateTime<Utc>),
    now: DateTime<Utc>,
    hashes: &[String],
) -> Result<(), DrillError> {
    match table {
        Table::ProbeMinute => sqlx::query(
            "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state, p95_ms, \
                                       error_kind, asn, registry_of_origin, archived_at, extra) \
             SELECT $1, $2, region, minute, \
                    CASE WHEN extract(minute FROM minute)::int % 10 = 0 THEN 'down' ELSE 'up' END, \
                    100 + extract(minute FROM minute)::int, NULL, $5, $6, $7, '{\"drill\": true}' \
             FROM generate_series($3::timestamptz, $4::timestamptz, interval '1 minute') AS minute, \
                  unnest($8::text[]) AS region \
             ON CONFLICT DO NOTHING",
        )
        .bind(DRILL_TENANT)
        .bind(DRILL_SERVER)
        .bind(first)
        .bind(last)
        .bind(DRILL_ASN)
        .bind(DRILL_REGISTRY)
        .bind(now)
        .bind(REGIONS.as_slice())
        .execute(&mut *conn)
        .await
        .map_err(db("seeding probe_minute"))?,
        Table::ProbeMinuteRejects => sqlx::query(
            "INSERT INTO probe_minute_rejects \
               (shard_id, verdict_key, minute_bucket, raw_fields, reason, rejected_at, tenant_id, server_slug) \
             VALUES (0, $1, $2, '{\"state\": \"up\", \"drill\": \"1\"}', 'unknown_region: drill', $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(verdict_key(DRILL_TENANT, DRILL_SERVER, "us-easr", last))
        .bind(last)
        .bind(now)
        .bind(DRILL_TENANT)
        .bind(DRILL_SERVER)
        .execute(&mut *conn)
        .await
        .map_err(db("seeding probe_minute_rejects"))?,
        Table::ProbeDay => sqlx::query(
            "INSERT INTO probe_day (tenant_id, server_slug, day, minutes_total, minutes_up, minutes_down, \
                                    minutes_degraded, minutes_auth_walled, minutes_unknown, \
                                    p95_ms_p50_of_day, p95_ms_p95_of_day, incident_count, updated_at) \
             VALUES ($1, $2, ($3::timestamptz AT TIME ZONE 'UTC')::date, 60, 54, 6, 0, 0, 0, 130, 158, 6, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(DRILL_TENANT)
        .bind(DRILL_SERVER)
        .bind(last)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db("seeding probe_day"))?,
        Table::ProbeMonth => sqlx::query(
            "INSERT INTO probe_month (tenant_id, server_slug, month, days_total, minutes_up, minutes_down, \
                                      minutes_degraded, minutes_auth_walled, minutes_unknown, \
                                      incident_count, sla_uptime_pct, updated_at) \
             VALUES ($1, $2, date_trunc('month', $3::timestamptz AT TIME ZONE 'UTC')::date, \
                     1, 54, 6, 0, 0, 0, 6, 90.000, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(DRILL_TENANT)
        .bind(DRILL_SERVER)
        .bind(last)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db("seeding probe_month"))?,
        // Both suppression tables have the same columns.
        Table::SuppressionClusters | Table::SuppressionClustersHistory => {
            let table = table.name();
            let sql = format!(
                "INSERT INTO {table} (error_kind, asn, registry_of_origin, minute_bucket, \
                                      contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count) \
                 VALUES ($1, $2, $3, $4, 2, $5, 2) \
                 ON CONFLICT ON CONSTRAINT {table}_key \
                 DO UPDATE SET contributing_tenant_hashes = EXCLUDED.contributing_tenant_hashes"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(DRILL_ERROR_KIND)
                .bind(DRILL_ASN)
                .bind(DRILL_REGISTRY)
                .bind(last)
                .bind(hashes)
                .execute(&mut *conn)
                .await
                .map_err(db("seeding the suppression tables"))?
        }
    };
    Ok(())
}

/// Sealed verdict keys (with index entries) for the seeded minutes older
/// than five minutes, which a running drain has already passed, and one
/// key per alert-router pattern. Returns the verdict keys with their minute.
async fn seed_redis(
    redis_url: &SecretString,
    alert_patterns: &[String],
    (first, last): (DateTime<Utc>, DateTime<Utc>),
) -> Result<Vec<VerdictKey>, DrillError> {
    let client = crate::redis_client::open(redis_url.expose()).map_err(redis_err("opening"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(redis_err("connecting"))?;
    let newest = (last - chrono::Duration::minutes(5)).max(first);
    let mut keys = Vec::new();
    let mut pipe = redis::pipe();
    let mut minute = first;
    while minute <= newest {
        for region in REGIONS {
            let key = verdict_key(DRILL_TENANT, DRILL_SERVER, region, minute);
            pipe.hset_multiple(
                &key,
                &[
                    ("state", "up"),
                    ("p95_ms", "120"),
                    ("asn", "64496"),
                    ("registry_of_origin", DRILL_REGISTRY),
                    ("verdict_sealed", "1"),
                ],
            )
            .ignore();
            pipe.expire(&key, REDIS_TTL_SECONDS).ignore();
            pipe.sadd(index_key(minute), &key).ignore();
            keys.push((key.into_bytes(), Some(minute.timestamp())));
        }
        minute += chrono::Duration::minutes(1);
    }
    pipe.query_async::<()>(&mut conn)
        .await
        .map_err(redis_err("seeding verdict keys"))?;
    let scope = Scope::server(DRILL_TENANT, DRILL_SERVER);
    for pattern in alert_patterns {
        // Only patterns a server erasure applies to; the key is the
        // pattern spelled out (the tenant canonical, wildcards as text).
        if !scope
            .alert_key_globs(pattern)
            .is_ok_and(|globs| !globs.is_empty())
        {
            continue;
        }
        let key = pattern
            .replace("{tenant}", &DRILL_TENANT.to_string())
            .replace("{server}", DRILL_SERVER)
            .replace(['*', '?'], "drill");
        conn.set_ex::<_, _, ()>(&key, "drill", REDIS_TTL_SECONDS as u64)
            .await
            .map_err(redis_err("seeding alert-router keys"))?;
    }
    Ok(keys)
}

/// The seeded clusters keep `tombstone` after the erasure, as real ones
/// do; they are the drill's own rows and go afterwards.
async fn remove_seeded_clusters(pool: &PgPool) -> Result<(), DrillError> {
    let hash_tables = Table::ALL
        .into_iter()
        .filter(|table| table.erasure() == ErasureMode::ReplaceHash);
    for table in hash_tables {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE error_kind = $1 AND registry_of_origin = $2"
        )))
        .bind(DRILL_ERROR_KIND)
        .bind(DRILL_REGISTRY)
        .execute(pool)
        .await
        .map_err(db("removing the drill's suppression clusters"))?;
    }
    Ok(())
}

async fn audit(pool: &PgPool, report: &DrillReport, now: DateTime<Utc>) -> Result<(), DrillError> {
    sqlx::query(
        "INSERT INTO operator_audit_log (at, action, subject, actor, payload) \
         VALUES ($1, 'deletion-drill', $2, $3, $4)",
    )
    .bind(now)
    .bind(format!("DeletionRequest/{}", report.request))
    .bind(ACTOR)
    .bind(serde_json::json!({
        "passed": report.passed(),
        "tenantId": DRILL_TENANT,
        "serverSlug": DRILL_SERVER,
        "seeded": report.seeded,
        "after": report.after,
        "tombstoneId": report.status.tombstone_id,
        "receiptSha256": report.status.receipt_sha256,
        "problems": report.problems,
    }))
    .execute(pool)
    .await
    .map_err(db("auditing the drill"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn seeded_minutes_stay_inside_the_current_month() {
        let mid = Utc.with_ymd_and_hms(2026, 11, 23, 9, 30, 20).unwrap();
        let (first, last) = seeded_minutes(mid);
        assert_eq!(last, Utc.with_ymd_and_hms(2026, 11, 23, 9, 30, 0).unwrap());
        assert_eq!(first, Utc.with_ymd_and_hms(2026, 11, 23, 8, 31, 0).unwrap());
        let month_start = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 40).unwrap();
        let (first, last) = seeded_minutes(month_start);
        assert_eq!(first, last, "one minute at the very start of a month");
        assert_eq!(first, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
    }

    #[test]
    fn december_is_followed_by_january() {
        let december = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        assert_eq!(
            next_month(december),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
    }
}
