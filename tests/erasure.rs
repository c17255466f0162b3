//! The erasure against real PostgreSQL, real Redis and a real HTTP server
//! for cache invalidation: every surface emptied for the pair and nothing
//! else touched, a failure at each step rolling Postgres back (no
//! tombstone) and the retry completing, drain ticks racing an erasure,
//! restore-then-replay, empty tenants, the lifecycle (terminal Completed,
//! finalizer), the receipt command and the drill. Each test's context knows
//! only that test's Redis.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use archiver_operator::api::archiver_shard::Discovery;
use archiver_operator::api::deletion_request::{
    DeletionPhase, DeletionReason, DeletionRequestSpec,
};
use archiver_operator::api::{DeletionRequest, DeletionRequestStatus};
use archiver_operator::archive::verdict::{REGIONS, index_key, verdict_key};
use archiver_operator::archive::worker::{ShardSettings, Worker};
use archiver_operator::clock::{Clock, ManualClock};
use archiver_operator::erasure::receipt::{SealedReceipt, sha256_hex};
use archiver_operator::erasure::scope::tenant_hash;
use archiver_operator::erasure::{ErasureRequest, Scope, replay};
use archiver_operator::local_servers::RedisServer;
use archiver_operator::metrics::{DeletionLabels, Metrics};
use archiver_operator::runtime::config::{OperatorConfig, SecretString};
use archiver_operator::runtime::context::Context;
use archiver_operator::runtime::reconcile::{CleanupOutcome, Managed, Outcome};
use archiver_operator::schema::{ErasureMode, Table};
use archiver_operator::testing::{TestDatabase, redis_server};

const SALT: &str = "test-salt";
const NAMESPACE: &str = "privacy";
const ALERT_PATTERNS: [&str; 2] = ["alert:{tenant}:{server}:*", "tenantcfg:{tenant}"];
const SERVERS: [&str; 2] = ["server-0", "server_1"];
const REDIS_MINUTES: i64 = 10;
const DB_MINUTES: i64 = 30;

fn tenant(n: u128) -> Uuid {
    Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_0000 + n)
}

fn minute(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap() + chrono::Duration::minutes(n)
}

/// When the tests' erasures run: after every seeded minute.
fn erasure_time() -> DateTime<Utc> {
    minute(DB_MINUTES) + chrono::Duration::seconds(30)
}

// ------------------------------------------------------------ cache server

/// Bodies received, status to answer, delay before answering (ms).
type CacheState = (Arc<Mutex<Vec<Value>>>, Arc<AtomicU16>, Arc<AtomicU64>);

/// A read-side API stand-in: records every POST body and answers with the
/// status (and after the delay) it is told to.
#[derive(Clone)]
struct CacheServer {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
}

impl CacheServer {
    async fn start() -> Self {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let state = (bodies.clone(), status.clone(), delay_ms.clone());
        let app = axum::Router::new()
            .route(
                "/api/admin/cache-invalidate",
                axum::routing::post(
                    |axum::extract::State((bodies, status, delay)): axum::extract::State<
                        CacheState,
                    >,
                     axum::Json(body): axum::Json<Value>| async move {
                        let wait = delay.load(Ordering::SeqCst);
                        if wait > 0 {
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                        }
                        bodies.lock().unwrap().push(body);
                        axum::http::StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/api/admin/cache-invalidate"),
            bodies,
            status,
            delay_ms,
        }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

// ------------------------------------------------------------- environment

struct Env {
    db: TestDatabase,
    redis: RedisServer,
    cache: CacheServer,
    clock: ManualClock,
    ctx: Context,
}

async fn env() -> Env {
    let db = TestDatabase::new().await;
    november_partition(&db.pool).await;
    let redis = redis_server();
    let cache = CacheServer::start().await;
    let clock = ManualClock::new(erasure_time());
    let ctx = context(&db.pool, &clock, vec![cache.url.clone()]);
    ctx.redis_targets
        .publish_shard("test/shard-0", SecretString::new(redis.url()));
    Env {
        db,
        redis,
        cache,
        clock,
        ctx,
    }
}

fn context(pool: &PgPool, clock: &ManualClock, cache_urls: Vec<String>) -> Context {
    Context::new(Arc::new(clock.clone()))
        .with_database(pool.clone())
        .with_config(OperatorConfig {
            suppression_salt: Some(SecretString::new(SALT)),
            cache_invalidate_urls: cache_urls,
            alert_key_patterns: ALERT_PATTERNS.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        })
}

async fn november_partition(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS probe_minute_2026_11 PARTITION OF probe_minute \
         FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00')",
    )
    .execute(pool)
    .await
    .unwrap();
}

fn request(name: &str, tenant: Uuid, server: Option<&str>) -> DeletionRequest {
    let mut object = DeletionRequest::new(
        name,
        DeletionRequestSpec {
            tenant_id: tenant,
            server_slug: server.map(str::to_string),
            reason: DeletionReason::GdprArt17,
            requester: Uuid::from_u128(0x0b7e),
            received_at: Some(Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap()),
            extension: None,
        },
    );
    object.metadata.namespace = Some(NAMESPACE.into());
    object.metadata.uid = Some(Uuid::new_v4().to_string());
    object.metadata.generation = Some(1);
    object
}

/// One reconcile, with the status written back as the runtime would.
async fn reconcile(object: &mut DeletionRequest, ctx: &Context) -> Outcome<DeletionRequestStatus> {
    let outcome = object
        .reconcile(ctx)
        .await
        .expect("reconcile returns a status");
    object.status = Some(outcome.status.clone());
    outcome
}

fn phase(object: &DeletionRequest) -> Option<DeletionPhase> {
    object.status.as_ref().and_then(|s| s.phase)
}

fn status(object: &DeletionRequest) -> &DeletionRequestStatus {
    object.status.as_ref().expect("a status")
}

// ------------------------------------------------------------------ seeding

/// Every Postgres surface for tenants 0 and 1, servers `server-0` and
/// `server_1` (an underscore, which LIKE must not read as a wildcard).
async fn seed_postgres(pool: &PgPool) {
    for t in [tenant(0), tenant(1)] {
        for server in SERVERS {
            sqlx::query(
                "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state, p95_ms, \
                                           error_kind, asn, registry_of_origin) \
                 SELECT $1, $2, region, m, CASE WHEN extract(minute FROM m)::int % 3 = 0 THEN 'down' ELSE 'up' END, \
                        100, 'tls-expired', 16509, 'mcp.so' \
                 FROM generate_series($3::timestamptz, $4::timestamptz, interval '1 minute') m, \
                      unnest($5::text[]) region",
            )
            .bind(t)
            .bind(server)
            .bind(minute(0))
            .bind(minute(DB_MINUTES - 1))
            .bind(REGIONS.as_slice())
            .execute(pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO probe_minute_rejects (shard_id, verdict_key, minute_bucket, raw_fields, reason, \
                                                   tenant_id, server_slug) \
                 VALUES (0, $1, $2, '{\"state\": \"up\"}', 'unknown_region: us-easr', $3, $4)",
            )
            .bind(verdict_key(t, server, "us-easr", minute(3)))
            .bind(minute(3))
            .bind(t)
            .bind(server)
            .execute(pool)
            .await
            .unwrap();
            for day in ["2026-11-22", "2026-11-23"] {
                sqlx::query(
                    "INSERT INTO probe_day (tenant_id, server_slug, day, minutes_total, minutes_up, minutes_down, \
                       minutes_degraded, minutes_auth_walled, minutes_unknown) \
                     VALUES ($1, $2, $3::date, 1440, 1400, 40, 0, 0, 0)",
                )
                .bind(t)
                .bind(server)
                .bind(day)
                .execute(pool)
                .await
                .unwrap();
            }
            for month in ["2026-10-01", "2026-11-01"] {
                sqlx::query(
                    "INSERT INTO probe_month (tenant_id, server_slug, month, days_total, minutes_up, minutes_down, \
                       minutes_degraded, minutes_auth_walled, minutes_unknown, sla_uptime_pct) \
                     VALUES ($1, $2, $3::date, 30, 43000, 200, 0, 0, 0, 99.5)",
                )
                .bind(t)
                .bind(server)
                .bind(month)
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }
    let h0 = tenant_hash(tenant(0), SALT);
    let h1 = tenant_hash(tenant(1), SALT);
    let clusters: [(i64, Vec<&str>); 3] = [
        (0, vec![&h0, &h1]),
        (3, vec![&h0]),
        (6, vec![&h1, "tombstone"]),
    ];
    for table in Table::ALL
        .into_iter()
        .filter(|table| table.erasure() == ErasureMode::ReplaceHash)
    {
        for (m, hashes) in &clusters {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} (error_kind, asn, registry_of_origin, minute_bucket, \
                   contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count) \
                 VALUES ('tls-expired', 16509, 'mcp.so', $1, $2, $3, 4)"
            )))
            .bind(minute(*m))
            .bind(hashes.len() as i32)
            .bind(hashes)
            .execute(pool)
            .await
            .unwrap();
        }
    }
}

/// Verdict keys (with index entries) and alert-router keys for both
/// tenants and servers, plus a tenant-wide config key per tenant.
async fn seed_redis(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    for t in [tenant(0), tenant(1)] {
        for server in SERVERS {
            for m in 0..REDIS_MINUTES {
                for region in REGIONS {
                    let key = verdict_key(t, server, region, minute(m));
                    pipe.hset_multiple(&key, &[("state", "up"), ("verdict_sealed", "1")])
                        .ignore();
                    pipe.sadd(index_key(minute(m)), &key).ignore();
                }
            }
            pipe.set(format!("alert:{t}:{server}:cooldown"), "1")
                .ignore();
            pipe.set(format!("alert:{t}:{server}:last-state"), "up")
                .ignore();
        }
        pipe.set(format!("tenantcfg:{t}"), "{}").ignore();
    }
    pipe.set("unrelated:key", "stays").ignore();
    pipe.query_async::<()>(&mut conn).await.unwrap();
}

// ---------------------------------------------------------------- snapshots

/// Every row of every tenant-data table (the catalogue's), as text, per table.
async fn postgres_snapshot(pool: &PgPool) -> BTreeMap<String, BTreeSet<String>> {
    let mut snapshot = BTreeMap::new();
    for table in Table::ALL {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM {table} t"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        snapshot.insert(table.to_string(), rows.into_iter().collect());
    }
    snapshot
}

/// Rows of the pair in the tables whose rows name it in columns (the
/// catalogue's); its rejects are found by their key instead, as the drain
/// wrote it, independently of the columns the erasure reads.
async fn pair_rows(pool: &PgPool, t: Uuid, server: Option<&str>) -> BTreeMap<&'static str, i64> {
    let mut counts = BTreeMap::new();
    for table in Table::ALL {
        let Some((tenant_column, server_column)) = table.owner_columns() else {
            continue;
        };
        if table == Table::ProbeMinuteRejects {
            continue;
        }
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE {tenant_column} = $1 \
             AND ($2::text IS NULL OR {server_column} = $2)"
        )))
        .bind(t)
        .bind(server)
        .fetch_one(pool)
        .await
        .unwrap();
        counts.insert(table.name(), count);
    }
    let prefix = match server {
        Some(s) => format!("verdict:{t}:{s}:"),
        None => format!("verdict:{t}:"),
    };
    let rejects: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM probe_minute_rejects WHERE starts_with(verdict_key, $1)",
    )
    .bind(prefix)
    .fetch_one(pool)
    .await
    .unwrap();
    counts.insert("probe_minute_rejects", rejects);
    counts
}

async fn tombstones(pool: &PgPool) -> Vec<(i64, Uuid, Option<String>, String)> {
    sqlx::query_as("SELECT id, tenant_id, server_slug, reason FROM data_deletion_log ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Every key, and every index-set member, of a Redis.
async fn redis_snapshot(url: &str) -> BTreeSet<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut all = BTreeSet::new();
    for key in keys {
        if key.starts_with("verdict-index:") {
            let members: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            all.extend(members.into_iter().map(|m| format!("{key} ∋ {m}")));
        } else {
            all.insert(key);
        }
    }
    all
}

/// Whether a snapshot line belongs to tenant `t` (and server `server`).
fn of_pair(line: &str, t: Uuid, server: Option<&str>) -> bool {
    let tenant = t.to_string();
    match server {
        Some(s) => {
            line.contains(&format!("{tenant}:{s}:"))
                || line.contains(&format!("{tenant},{s},"))
                || line.contains(&format!("({tenant},{s},"))
        }
        None => line.contains(&tenant),
    }
}

fn without_pair(
    snapshot: &BTreeMap<String, BTreeSet<String>>,
    t: Uuid,
    server: Option<&str>,
) -> BTreeMap<String, BTreeSet<String>> {
    let hash = tenant_hash(t, SALT);
    snapshot
        .iter()
        .map(|(table, rows)| {
            let rows = rows
                .iter()
                .filter(|row| !of_pair(row, t, server))
                // The suppression rows stay, with the hash replaced.
                .map(|row| row.replace(&hash, "tombstone"))
                .collect();
            (table.clone(), rows)
        })
        .collect()
}

// ------------------------------------------------------------------- tests

#[tokio::test]
async fn erasure_empties_every_surface_of_the_pair_and_touches_nothing_else() {
    let env = env().await;
    seed_postgres(&env.db.pool).await;
    seed_redis(&env.redis.url()).await;
    let (t, server) = (tenant(0), "server_1");
    let before = postgres_snapshot(&env.db.pool).await;
    let redis_before = redis_snapshot(&env.redis.url()).await;

    let mut object = request("erase-t0-server-1", t, Some(server));
    let outcome = reconcile(&mut object, &env.ctx).await;
    let st = status(&object);
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    assert_eq!(st.attempts, Some(1));
    assert_eq!(
        st.deadline,
        Some(Utc.with_ymd_and_hms(2026, 12, 22, 9, 0, 0).unwrap())
    );
    assert_eq!(outcome.events.len(), 1);
    assert_eq!(outcome.events[0].reason, "Erased");

    // Every surface of the pair is empty...
    assert!(
        pair_rows(&env.db.pool, t, Some(server))
            .await
            .values()
            .all(|c| *c == 0)
    );
    let hash = tenant_hash(t, SALT);
    let with_hash: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM suppression_clusters WHERE $1 = ANY (contributing_tenant_hashes)) \
              + (SELECT count(*) FROM suppression_clusters_history WHERE $1 = ANY (contributing_tenant_hashes))",
    )
    .bind(&hash)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(with_hash, 0);
    // ...and everything else is exactly as it was (suppression rows kept,
    // the tenant's hash replaced by `tombstone`).
    assert_eq!(
        postgres_snapshot(&env.db.pool).await,
        without_pair(&before, t, Some(server))
    );
    let redis_after = redis_snapshot(&env.redis.url()).await;
    let expected: BTreeSet<String> = redis_before
        .iter()
        .filter(|k| !of_pair(k, t, Some(server)))
        .cloned()
        .collect();
    assert_eq!(redis_after, expected);
    assert!(
        redis_after.contains(&format!("tenantcfg:{t}")),
        "tenant-wide keys stay for a server erasure"
    );

    // Counts per surface, in the status and the receipt.
    let per_pair = DB_MINUTES * 5;
    let expected_removed: BTreeMap<String, i64> = [
        ("probe_minute", per_pair),
        ("probe_minute_rejects", 1),
        ("probe_day", 2),
        ("probe_month", 2),
        ("suppression_clusters", 2),
        ("suppression_clusters_history", 2),
        ("redis_verdict_keys", REDIS_MINUTES * 5),
        ("redis_index_entries", REDIS_MINUTES * 5),
        ("redis_alert_keys", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(st.removed, expected_removed);
    let verification = st.verification.as_ref().unwrap();
    assert!(verification.verified);
    assert_eq!(verification.remaining.len(), expected_removed.len());
    assert!(verification.remaining.values().all(|c| *c == 0));

    // One invalidation, with the pair.
    assert_eq!(
        env.cache.bodies(),
        vec![json!({"tenantId": t, "serverSlug": server})]
    );
    assert_eq!(st.cache_invalidations.len(), 1);
    assert_eq!(st.cache_invalidations[0].status, 200);

    // The tombstone, written with the request.
    let tomb: replay::Tombstone = sqlx::query_as(
        "SELECT id, tenant_id, server_slug, deleted_at, reason, requester, request_namespace, \
                request_name, request_uid, receipt_sha256 FROM data_deletion_log",
    )
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(Some(tomb.id), st.tombstone_id);
    assert_eq!(
        (tomb.tenant_id, tomb.server_slug.as_deref()),
        (t, Some(server))
    );
    assert_eq!(tomb.deleted_at, erasure_time());
    assert_eq!(tomb.reason, "gdpr-art17");
    assert_eq!(tomb.requester, Uuid::from_u128(0x0b7e));
    assert_eq!(tomb.request_namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(tomb.request_name.as_deref(), Some("erase-t0-server-1"));
    assert_eq!(tomb.request_uid, object.metadata.uid);

    // The receipt: canonical, hashed, in the audit log and on the tombstone.
    let receipt = st.receipt.as_deref().unwrap();
    let sha = st.receipt_sha256.as_deref().unwrap();
    assert_eq!(sha256_hex(receipt), sha);
    let parsed: Value = serde_json::from_str(receipt).unwrap();
    assert_eq!(SealedReceipt::from_value(&parsed).canonical, receipt);
    assert_eq!(parsed["request"]["tenantId"], t.to_string());
    assert_eq!(parsed["request"]["serverSlug"], server);
    assert_eq!(parsed["tombstones"][0]["id"], tomb.id);
    assert_eq!(parsed["removed"]["probe_minute"], per_pair);
    assert_eq!(parsed["verification"]["verified"], true);
    assert_eq!(parsed["redisShards"], json!(["test/shard-0"]));
    assert_eq!(tomb.receipt_sha256.as_deref(), Some(sha));
    let audited: Value = sqlx::query_scalar(
        "SELECT payload FROM operator_audit_log WHERE action = 'erasure-receipt' AND subject = $1",
    )
    .bind(format!("DeletionRequest/{NAMESPACE}/erase-t0-server-1"))
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(SealedReceipt::from_value(&audited).sha256, sha);

    // Metrics: the deadline gauge is gone once completed, the duration observed.
    let text = env.ctx.metrics.encode();
    assert!(
        text.contains("archiver_deletion_duration_seconds_count 1"),
        "{text}"
    );
    assert!(
        !text.contains("archiver_deletion_deadline_seconds{"),
        "{text}"
    );
}

#[tokio::test]
async fn whole_tenant_erasure_removes_every_server_and_tenant_wide_keys() {
    let env = env().await;
    seed_postgres(&env.db.pool).await;
    seed_redis(&env.redis.url()).await;
    let t = tenant(1);
    let before = postgres_snapshot(&env.db.pool).await;
    let redis_before = redis_snapshot(&env.redis.url()).await;

    let mut object = request("erase-t1", t, None);
    reconcile(&mut object, &env.ctx).await;
    assert_eq!(phase(&object), Some(DeletionPhase::Completed));
    assert!(
        pair_rows(&env.db.pool, t, None)
            .await
            .values()
            .all(|c| *c == 0)
    );
    assert_eq!(
        postgres_snapshot(&env.db.pool).await,
        without_pair(&before, t, None)
    );
    let expected: BTreeSet<String> = redis_before
        .iter()
        .filter(|k| !of_pair(k, t, None))
        .cloned()
        .collect();
    assert_eq!(redis_snapshot(&env.redis.url()).await, expected);
    let st = status(&object);
    assert_eq!(st.removed["probe_minute"], 2 * DB_MINUTES * 5);
    assert_eq!(st.removed["redis_alert_keys"], 2 * 2 + 1);
    assert_eq!(
        env.cache.bodies(),
        vec![json!({"tenantId": t, "serverSlug": null})]
    );
    let tomb = tombstones(&env.db.pool).await;
    assert_eq!(tomb.len(), 1);
    assert_eq!(tomb[0].2, None, "server_slug NULL = the whole tenant");
}

/// Asserts the failed attempt left Postgres exactly as it was and wrote no
/// tombstone, and the status says which step failed.
async fn assert_rolled_back(
    env: &Env,
    object: &DeletionRequest,
    before: &BTreeMap<String, BTreeSet<String>>,
    step: &str,
) {
    let st = status(object);
    assert_eq!(st.phase, Some(DeletionPhase::Failed), "{st:#?}");
    let failure = st.last_failure.as_deref().unwrap_or_default();
    assert!(
        failure.starts_with(&format!("{step}: ")),
        "expected a {step} failure, got {failure:?}"
    );
    assert_eq!(&postgres_snapshot(&env.db.pool).await, before);
    assert!(tombstones(&env.db.pool).await.is_empty(), "no tombstone");
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operator_audit_log WHERE action LIKE 'erasure%'")
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(audited, 0);
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ErasureFailed")
    );
}

#[tokio::test]
async fn redis_down_rolls_back_and_the_retry_completes() {
    let mut env = env().await;
    seed_postgres(&env.db.pool).await;
    let before = postgres_snapshot(&env.db.pool).await;
    env.redis.halt();

    let mut object = request("erase-redis-down", tenant(0), Some("server-0"));
    let outcome = reconcile(&mut object, &env.ctx).await;
    assert_rolled_back(&env, &object, &before, "redis").await;
    assert_eq!(status(&object).attempts, Some(1));
    assert_eq!(outcome.requeue_after, Duration::from_secs(15));
    assert_eq!(outcome.events[0].reason, "ErasureFailed");
    assert!(
        env.ctx
            .metrics
            .encode()
            .contains("archiver_deletion_failures_total{step=\"redis\"} 1")
    );
    assert!(
        !status(&object)
            .last_failure
            .as_deref()
            .unwrap()
            .contains(&env.redis.url()),
        "the Redis URL never reaches a status"
    );
    // The deadline is watched while the request is open.
    let gauge = env
        .ctx
        .metrics
        .deletion_deadline_seconds
        .get_or_create(&DeletionLabels {
            namespace: NAMESPACE.into(),
            name: "erase-redis-down".into(),
        })
        .get();
    assert_eq!(
        gauge,
        (Utc.with_ymd_and_hms(2026, 12, 22, 9, 0, 0).unwrap() - erasure_time()).num_seconds()
    );

    env.redis.start_again().unwrap();
    seed_redis(&env.redis.url()).await;
    let outcome = reconcile(&mut object, &env.ctx).await;
    let st = status(&object);
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    assert_eq!(st.attempts, Some(2));
    assert_eq!(st.last_failure, None);
    assert_eq!(st.removed["redis_verdict_keys"], REDIS_MINUTES * 5);
    assert_eq!(outcome.requeue_after, Duration::from_secs(3600));
    assert!(
        pair_rows(&env.db.pool, tenant(0), Some("server-0"))
            .await
            .values()
            .all(|c| *c == 0)
    );
}

/// A table another team added with a `tenant_id` column is a surface no
/// erasure covers: nothing is erased (no tombstone, no receipt, no
/// "Verified") and the failure names the table, until the operator's
/// configuration declares it out of scope.
#[tokio::test]
async fn a_table_naming_a_tenant_outside_the_catalogue_holds_the_erasure() {
    let mut env = env().await;
    seed_postgres(&env.db.pool).await;
    seed_redis(&env.redis.url()).await;
    sqlx::query("CREATE TABLE support_tickets (tenant_id uuid NOT NULL, body text)")
        .execute(&env.db.pool)
        .await
        .unwrap();
    let before = postgres_snapshot(&env.db.pool).await;

    let mut object = request("erase-uncatalogued", tenant(0), Some("server-0"));
    let outcome = reconcile(&mut object, &env.ctx).await;
    assert_rolled_back(&env, &object, &before, "catalogue").await;
    let failure = status(&object).last_failure.clone().unwrap_or_default();
    assert!(failure.contains("support_tickets"), "{failure}");
    assert!(
        !status(&object)
            .conditions
            .iter()
            .any(|c| c.type_ == "Verified" && c.status == "True")
    );
    assert_eq!(status(&object).receipt, None);
    assert_eq!(outcome.events[0].reason, "ErasureFailed");
    assert!(outcome.events[0].note.contains("support_tickets"));
    assert!(
        env.ctx
            .metrics
            .encode()
            .contains("archiver_deletion_failures_total{step=\"catalogue\"} 1")
    );

    // Declared out of scope (its team erases it on its own): the retry completes.
    let mut config = (*env.ctx.config).clone();
    config.erasure_out_of_scope_tables = vec!["support_tickets".into()];
    env.ctx.config = Arc::new(config);
    reconcile(&mut object, &env.ctx).await;
    let st = status(&object);
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    assert!(
        pair_rows(&env.db.pool, tenant(0), Some("server-0"))
            .await
            .values()
            .all(|c| *c == 0)
    );
}

/// An erasure-only Redis (the alert router's own, `--erasure-redis-url`):
/// the pair's keys there are erased in the same attempt and counted by the
/// verification, labelled without its URL; the neighbours' keys stay.
#[tokio::test]
async fn an_erasure_only_redis_is_cleaned_and_verified_with_the_shards() {
    let mut env = env().await;
    seed_postgres(&env.db.pool).await;
    seed_redis(&env.redis.url()).await;
    let alert_redis = redis_server();
    seed_redis(&alert_redis.url()).await;
    let before = redis_snapshot(&alert_redis.url()).await;
    let mut config = (*env.ctx.config).clone();
    config.erasure_redis_urls = vec![SecretString::new(alert_redis.url())];
    env.ctx.config = Arc::new(config);

    let mut object = request("erase-with-alert-redis", tenant(0), Some("server-0"));
    reconcile(&mut object, &env.ctx).await;
    let st = status(&object);
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    let after = redis_snapshot(&alert_redis.url()).await;
    let expected: BTreeSet<String> = before
        .iter()
        .filter(|line| !of_pair(line, tenant(0), Some("server-0")))
        .cloned()
        .collect();
    assert_eq!(
        after, expected,
        "exactly the pair's keys are gone from the erasure-only Redis"
    );
    assert!(
        !before
            .iter()
            .all(|line| !of_pair(line, tenant(0), Some("server-0"))),
        "it held keys of the pair"
    );
    let receipt = st.receipt.clone().unwrap_or_default();
    assert!(receipt.contains("erasure-redis/0"), "{receipt}");
    assert!(
        !receipt.contains(&alert_redis.url()),
        "no URL in the receipt"
    );
}

#[tokio::test]
async fn an_invalidation_answering_500_rolls_back_and_the_retry_completes() {
    let env = env().await;
    seed_postgres(&env.db.pool).await;
    seed_redis(&env.redis.url()).await;
    let before = postgres_snapshot(&env.db.pool).await;
    env.cache.status.store(500, Ordering::SeqCst);

    let mut object = request("erase-cache-500", tenant(0), Some("server-0"));
    reconcile(&mut object, &env.ctx).await;
    assert_rolled_back(&env, &object, &before, "cache-invalidation").await;
    assert!(
        status(&object)
            .last_failure
            .as_deref()
            .unwrap()
            .contains("HTTP 500")
    );

    env.cache.status.store(204, Ordering::SeqCst);
    reconcile(&mut object, &env.ctx).await;
    let st = status(&object);
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    assert_eq!(st.attempts, Some(2));
    assert_eq!(st.cache_invalidations[0].status, 204);
    assert_eq!(tombstones(&env.db.pool).await.len(), 1);
    assert_eq!(
        st.removed["probe_minute"],
        DB_MINUTES * 5,
        "the retry removed the rows the failed attempt rolled back"
    );
}

#[tokio::test]
async fn an_invalidation_that_hangs_fails_after_the_timeout() {
    let env = env().await;
    seed_postgres(&env.db.pool).await;
    let before = postgres_snapshot(&env.db.pool).await;
    env.cache.delay_ms.store(3_000, Ordering::SeqCst);
    let mut settings = env
        .ctx
        .config
        .erasure_settings(env.ctx.redis_targets.targets());
    settings.invalidation_timeout = Duration::from_millis(300);
    let request = ErasureRequest {
        namespace: NAMESPACE.into(),
        name: "erase-hangs".into(),
        uid: None,
        scope: Scope::server(tenant(0), "server-0"),
        reason: DeletionReason::GdprArt17,
        requester: Uuid::nil(),
        received_at: None,
        response_days: archiver_operator::erasure::RESPONSE_DAYS,
        extension: None,
    };
    let started = std::time::Instant::now();
    let error = archiver_operator::erasure::transaction::erase(
        &env.db.pool,
        &request,
        &settings,
        erasure_time(),
    )
    .await
    .expect_err("a hanging read side fails the erasure");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(error.step(), "cache-invalidation");
    assert!(error.to_string().contains("did not answer"), "{error}");
    assert_eq!(postgres_snapshot(&env.db.pool).await, before);
    assert!(tombstones(&env.db.pool).await.is_empty());
}

#[tokio::test]
async fn a_postgres_error_after_some_deletes_rolls_everything_back() {
    let env = env().await;
    seed_postgres(&env.db.pool).await;
    seed_redis(&env.redis.url()).await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN RAISE EXCEPTION 'injected failure on %', TG_TABLE_NAME; END $$; \
         CREATE TRIGGER refuse_delete BEFORE DELETE ON probe_month \
           FOR EACH ROW EXECUTE FUNCTION refuse_delete();",
    )
    .execute(&env.db.pool)
    .await
    .unwrap();
    let before = postgres_snapshot(&env.db.pool).await;

    let mut object = request("erase-pg-error", tenant(0), Some("server-0"));
    reconcile(&mut object, &env.ctx).await;
    // probe_minute and probe_day were deleted before probe_month failed:
    // all of it is back.
    assert_rolled_back(&env, &object, &before, "probe_month").await;
    assert!(
        status(&object)
            .last_failure
            .as_deref()
            .unwrap()
            .contains("injected failure on probe_month")
    );
    assert_eq!(
        pair_rows(&env.db.pool, tenant(0), Some("server-0")).await["probe_minute"],
        DB_MINUTES * 5
    );

    sqlx::query("DROP TRIGGER refuse_delete ON probe_month")
        .execute(&env.db.pool)
        .await
        .unwrap();
    reconcile(&mut object, &env.ctx).await;
    assert_eq!(phase(&object), Some(DeletionPhase::Completed));
    assert!(
        pair_rows(&env.db.pool, tenant(0), Some("server-0"))
            .await
            .values()
            .all(|c| *c == 0)
    );
}

#[tokio::test]
async fn a_tenant_without_data_and_an_already_erased_pair_complete_with_zero_counts() {
    let env = env().await;
    seed_postgres(&env.db.pool).await;
    let mut nobody = request("erase-nobody", tenant(42), None);
    reconcile(&mut nobody, &env.ctx).await;
    let st = status(&nobody);
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    assert!(!st.removed.is_empty());
    assert!(st.removed.values().all(|c| *c == 0), "{:?}", st.removed);
    assert!(st.verification.as_ref().unwrap().verified);

    let mut first = request("erase-first", tenant(0), Some("server-0"));
    reconcile(&mut first, &env.ctx).await;
    assert!(status(&first).removed["probe_minute"] > 0);
    let mut second = request("erase-again", tenant(0), Some("server-0"));
    reconcile(&mut second, &env.ctx).await;
    let st = status(&second);
    assert_eq!(st.phase, Some(DeletionPhase::Completed));
    assert!(st.removed.values().all(|c| *c == 0), "{:?}", st.removed);
    assert_eq!(
        tombstones(&env.db.pool).await.len(),
        3,
        "one tombstone per request"
    );
}

#[tokio::test]
async fn completed_is_terminal_even_when_the_status_is_lost() {
    let env = env().await;
    seed_postgres(&env.db.pool).await;
    let mut object = request("erase-once", tenant(0), Some("server-0"));
    reconcile(&mut object, &env.ctx).await;
    let completed = status(&object).clone();
    assert_eq!(completed.phase, Some(DeletionPhase::Completed));

    // Re-applied (a later reconcile): nothing runs, nothing changes.
    env.clock.advance(chrono::Duration::hours(2));
    let outcome = reconcile(&mut object, &env.ctx).await;
    assert_eq!(outcome.status, completed);
    assert!(outcome.events.is_empty());
    assert_eq!(tombstones(&env.db.pool).await.len(), 1);

    // The status was lost (e.g. written to a status file that was removed):
    // the receipt in the audit log is found by namespace, name and uid.
    object.status = None;
    reconcile(&mut object, &env.ctx).await;
    let recovered = status(&object);
    assert_eq!(recovered.phase, Some(DeletionPhase::Completed));
    assert_eq!(recovered.receipt_sha256, completed.receipt_sha256);
    assert_eq!(recovered.removed, completed.removed);
    assert_eq!(recovered.tombstone_id, completed.tombstone_id);
    assert_eq!(tombstones(&env.db.pool).await.len(), 1, "not run twice");
}

#[tokio::test]
async fn a_run_that_committed_without_its_receipt_is_folded_into_the_next() {
    let env = env().await;
    seed_postgres(&env.db.pool).await;
    let mut object = request("erase-crashed", tenant(0), Some("server-0"));
    let request = ErasureRequest {
        namespace: NAMESPACE.into(),
        name: "erase-crashed".into(),
        uid: object.metadata.uid.clone(),
        scope: Scope::server(tenant(0), "server-0"),
        reason: DeletionReason::GdprArt17,
        requester: Uuid::from_u128(0x0b7e),
        received_at: None,
        response_days: archiver_operator::erasure::RESPONSE_DAYS,
        extension: None,
    };
    // The process died right after COMMIT: no verification, no receipt.
    let settings = env
        .ctx
        .config
        .erasure_settings(env.ctx.redis_targets.targets());
    let first = archiver_operator::erasure::transaction::erase(
        &env.db.pool,
        &request,
        &settings,
        erasure_time(),
    )
    .await
    .unwrap();
    assert_eq!(first.removed["probe_minute"], DB_MINUTES * 5);

    env.clock.advance(chrono::Duration::minutes(1));
    reconcile(&mut object, &env.ctx).await;
    let st = status(&object);
    assert_eq!(st.phase, Some(DeletionPhase::Completed));
    assert_eq!(
        st.removed["probe_minute"],
        DB_MINUTES * 5,
        "the first run's counts"
    );
    let receipt: Value = serde_json::from_str(st.receipt.as_deref().unwrap()).unwrap();
    let ids: Vec<i64> = receipt["tombstones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![first.tombstone_id, st.tombstone_id.unwrap()]);
    let unmarked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM data_deletion_log WHERE receipt_sha256 IS NULL")
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(unmarked, 0, "both tombstones carry the receipt's hash");
}

#[tokio::test]
async fn the_finalizer_stays_until_the_erasure_completed() {
    let mut env = env().await;
    seed_postgres(&env.db.pool).await;
    let mut object = request("erase-deleted", tenant(0), Some("server-0"));
    env.redis.halt();
    reconcile(&mut object, &env.ctx).await;
    assert_eq!(phase(&object), Some(DeletionPhase::Failed));

    // Deleted while failing: cleanup retries the erasure and waits, with
    // the attempt's status and an event saying why the object stays.
    let attempts_before = object.status.as_ref().and_then(|s| s.attempts).unwrap_or(0);
    let waiting = object.cleanup(&env.ctx).await.expect("cleanup ran");
    let CleanupOutcome::Waiting { outcome, why } = waiting else {
        panic!("the finalizer must stay: {waiting:?}");
    };
    assert!(why.contains("redis:"), "the wait says why: {why}");
    assert_eq!(
        outcome.status.attempts,
        Some(attempts_before + 1),
        "the retry is counted in the status written back"
    );
    assert!(
        outcome
            .events
            .iter()
            .any(|e| e.reason == "DeletionWaitsForErasure" && e.note.contains("redis:")),
        "{:?}",
        outcome.events
    );
    object.status = Some(outcome.status);
    assert!(tombstones(&env.db.pool).await.is_empty());

    // Redis back: cleanup completes the erasure, then lets go.
    env.redis.start_again().unwrap();
    assert_eq!(
        object.cleanup(&env.ctx).await.expect("cleanup ran"),
        CleanupOutcome::Finished,
        "completed: the finalizer may go"
    );
    assert_eq!(tombstones(&env.db.pool).await.len(), 1);
    let receipts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operator_audit_log WHERE action = 'erasure-receipt'",
    )
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(receipts, 1, "the receipt reached the audit log");

    // A completed request lets go at once, and deleting undoes nothing.
    let mut done = request("erase-done", tenant(1), Some("server-0"));
    reconcile(&mut done, &env.ctx).await;
    assert_eq!(phase(&done), Some(DeletionPhase::Completed));
    assert_eq!(
        done.cleanup(&env.ctx).await.unwrap(),
        CleanupOutcome::Finished
    );
    assert!(
        pair_rows(&env.db.pool, tenant(1), Some("server-0"))
            .await
            .values()
            .all(|c| *c == 0)
    );
}

#[tokio::test]
async fn without_shard_redis_the_request_waits_and_erases_nothing() {
    let env = env().await;
    seed_postgres(&env.db.pool).await;
    let before = postgres_snapshot(&env.db.pool).await;
    env.ctx.redis_targets.remove_shard("test/shard-0");
    let mut object = request("erase-waits", tenant(0), Some("server-0"));
    let outcome = reconcile(&mut object, &env.ctx).await;
    let st = status(&object);
    assert_eq!(st.phase, Some(DeletionPhase::Pending));
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "WaitingForRedisShards");
    assert_eq!(outcome.requeue_after, Duration::from_secs(15));
    assert_eq!(postgres_snapshot(&env.db.pool).await, before);
    assert!(tombstones(&env.db.pool).await.is_empty());
    // Still waiting: no second event.
    assert!(reconcile(&mut object, &env.ctx).await.events.is_empty());
}

/// Ticks until caught up with its clock; returns the rows dropped by the
/// drain's tombstone filter.
async fn drain_until_caught_up(worker: &mut Worker) -> usize {
    use archiver_operator::archive::worker::MinuteOutcome;
    let mut erased = 0;
    loop {
        // Short ticks, so the erasure lands between and inside them.
        let report = worker.tick(Duration::from_millis(30)).await.expect("tick");
        erased += report.archived.iter().map(|m| m.erased).sum::<usize>();
        match report.stopped_at {
            Some(MinuteOutcome::CaughtUp) => return erased,
            Some(MinuteOutcome::Waiting { minute, reason }) => {
                panic!("the drain waits at {minute}: {reason:?}")
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn drain_ticks_racing_an_erasure_never_bring_the_server_back() {
    const MINUTES: i64 = 300;
    let env = env().await;
    let t = tenant(7);
    let servers = ["s-0", "s-1", "s-2", "s-3"];
    let client = redis::Client::open(env.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let write_minutes = |servers: &[&str], minutes: std::ops::Range<i64>| {
        let mut pipe = redis::pipe();
        for m in minutes {
            for server in servers {
                for region in REGIONS {
                    let key = verdict_key(t, server, region, minute(m));
                    pipe.hset_multiple(
                        &key,
                        &[("state", "up"), ("p95_ms", "10"), ("verdict_sealed", "1")],
                    )
                    .ignore();
                    pipe.sadd(index_key(minute(m)), &key).ignore();
                }
            }
        }
        pipe
    };
    write_minutes(&servers, 0..(MINUTES - 20))
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    // The erasure runs after every minute; the drain's own clock first
    // lets it reach minute MINUTES - 21 only.
    env.clock
        .set(minute(MINUTES) + chrono::Duration::seconds(10));
    let drain_clock = ManualClock::new(minute(MINUTES - 20) + chrono::Duration::seconds(10));
    let settings = ShardSettings::new(
        0,
        "test/shard-0",
        Discovery::Index,
        drain_clock.now() - minute(0),
    );
    let mut worker = Worker::connect(
        settings,
        "worker-a".into(),
        env.db.pool.clone(),
        &env.redis.url(),
        Arc::new(drain_clock.clone()),
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap();
    let drain = tokio::spawn(async move {
        let erased = drain_until_caught_up(&mut worker).await;
        (worker, erased)
    });
    let watermark = || async {
        sqlx::query_scalar::<_, DateTime<Utc>>(
            "SELECT last_minute FROM archive_watermark WHERE shard_id = 0",
        )
        .fetch_optional(&env.db.pool)
        .await
        .unwrap()
    };
    while watermark().await.is_none_or(|w| w < minute(10)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 1. The race: an erasure while ticks are archiving the same server.
    let mut object = request("erase-racing", t, Some("s-0"));
    reconcile(&mut object, &env.ctx).await;
    assert_eq!(
        phase(&object),
        Some(DeletionPhase::Completed),
        "{:#?}",
        object.status
    );
    let at_commit = watermark().await.unwrap();
    assert!(
        at_commit < minute(MINUTES - 21),
        "the erasure must land while the drain still has minutes to go (watermark {at_commit})"
    );
    let removed = status(&object).removed.clone();
    assert!(
        removed["probe_minute"] > 0 && removed["redis_verdict_keys"] > 0,
        "the erasure found both archived rows and keys not yet drained: {removed:?}"
    );
    let (mut worker, erased) = drain.await.unwrap();
    assert_eq!(erased, 0, "the erasure took the keys with it");

    // 2. Verdicts of s-0 for minutes before the tombstone arrive late (the
    // coalescer wrote them after the erasure): the drain's tombstone
    // filter drops them; the other servers' minutes go in.
    write_minutes(&servers, (MINUTES - 20)..MINUTES)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    drain_clock.set(minute(MINUTES) + chrono::Duration::seconds(10));
    let erased = drain_until_caught_up(&mut worker).await;
    assert_eq!(
        erased,
        20 * 5,
        "s-0's late verdicts were dropped by the drain"
    );

    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT server_slug, count(*) FROM probe_minute WHERE tenant_id = $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(t)
    .fetch_all(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("s-1".to_string(), MINUTES * 5),
            ("s-2".to_string(), MINUTES * 5),
            ("s-3".to_string(), MINUTES * 5),
        ],
        "s-0 never came back; the other servers are complete"
    );
}

// -------------------------------------------------------- restore & replay

fn postgres_tool(name: &str) -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin").join(name))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    })
}

/// A copy of the database as it is now, restored into a fresh database:
/// pg_dump/pg_restore when available, else the rows copied table by table
/// into a freshly migrated database.
struct Backup {
    file: Option<tempfile::NamedTempFile>,
    rows: BTreeMap<String, Value>,
}

/// The catalogue's tables, the tombstones and the audit log.
fn data_tables() -> Vec<&'static str> {
    Table::ALL
        .iter()
        .map(|table| table.name())
        .chain(["data_deletion_log", "operator_audit_log"])
        .collect()
}

async fn backup(db: &TestDatabase) -> Backup {
    if let Some(pg_dump) = postgres_tool("pg_dump") {
        let file = tempfile::NamedTempFile::new().unwrap();
        let output = std::process::Command::new(pg_dump)
            .args(["--format=custom", "--no-owner", "--file"])
            .arg(file.path())
            .arg("--dbname")
            .arg(&db.url)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return Backup {
            file: Some(file),
            rows: BTreeMap::new(),
        };
    }
    let mut rows = BTreeMap::new();
    for table in data_tables() {
        let value: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(json_agg(t), '[]'::json)::jsonb FROM {table} t"
        )))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        rows.insert(table.to_string(), value);
    }
    Backup { file: None, rows }
}

async fn restore(backup: &Backup) -> TestDatabase {
    if let Some(file) = &backup.file {
        let restored = TestDatabase::empty().await;
        let pg_restore = postgres_tool("pg_restore").expect("pg_restore next to pg_dump");
        let output = std::process::Command::new(pg_restore)
            .args(["--no-owner", "--exit-on-error", "--dbname"])
            .arg(&restored.url)
            .arg(file.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_restore: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return restored;
    }
    let restored = TestDatabase::new().await;
    november_partition(&restored.pool).await;
    for (table, rows) in &backup.rows {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1)"
        )))
        .bind(rows)
        .execute(&restored.pool)
        .await
        .unwrap();
    }
    restored
}

#[tokio::test]
async fn a_restore_from_before_the_erasure_loses_the_data_again_on_replay() {
    let env = env().await;
    seed_postgres(&env.db.pool).await;
    let (t, server) = (tenant(0), "server-0");
    let before = postgres_snapshot(&env.db.pool).await;
    let backup = backup(&env.db).await;

    let mut object = request("erase-then-restore", t, Some(server));
    reconcile(&mut object, &env.ctx).await;
    assert_eq!(phase(&object), Some(DeletionPhase::Completed));

    let restored = restore(&backup).await;
    assert_eq!(
        postgres_snapshot(&restored.pool).await,
        before,
        "the restore brought the erased rows back"
    );
    assert!(
        tombstones(&restored.pool).await.is_empty(),
        "the backup predates the tombstone"
    );
    // After the restore the drain archives new minutes for the same server,
    // after the tombstone: they are new data and must survive the replay.
    let later = minute(DB_MINUTES + 2);
    sqlx::query(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
         SELECT $1, $2, region, $3, 'up' FROM unnest($4::text[]) region",
    )
    .bind(t)
    .bind(server)
    .bind(later)
    .bind(REGIONS.as_slice())
    .execute(&restored.pool)
    .await
    .unwrap();

    let salt = SecretString::new(SALT);
    let report = replay::import_and_replay(&env.db.pool, &restored.pool, Some(&salt), Utc::now())
        .await
        .unwrap();
    assert_eq!((report.tombstones, report.imported), (1, 1));
    assert_eq!(report.removed["probe_minute"], DB_MINUTES * 5);
    assert_eq!(report.removed["suppression_clusters"], 2);
    assert!(!report.suppression_skipped);

    let left: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT DISTINCT minute_bucket FROM probe_minute WHERE tenant_id = $1 AND server_slug = $2",
    )
    .bind(t)
    .bind(server)
    .fetch_all(&restored.pool)
    .await
    .unwrap();
    assert_eq!(
        left,
        vec![later],
        "only the minute archived after the tombstone is left"
    );
    let mut restored_now = postgres_snapshot(&restored.pool).await;
    if let Some(rows) = restored_now.get_mut("probe_minute") {
        rows.retain(|row| !row.contains(&later.format("%Y-%m-%d %H:%M").to_string()));
    }
    assert_eq!(restored_now, without_pair(&before, t, Some(server)));

    // A second replay (the periodic safety net) finds nothing to do.
    let again = replay::replay_tombstones(&restored.pool, Some(&salt), Utc::now())
        .await
        .unwrap();
    assert_eq!(again.total_removed(), 0);
    assert!(again.effective.is_empty());
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operator_audit_log WHERE action = 'tombstone-replay'",
    )
    .fetch_one(&restored.pool)
    .await
    .unwrap();
    assert_eq!(
        audited, 1,
        "only the replay that changed something is audited"
    );
}

#[tokio::test]
async fn periodic_replay_removes_rows_that_came_back_in_place() {
    let env = env().await;
    seed_postgres(&env.db.pool).await;
    let mut object = request("erase-replayed", tenant(1), None);
    reconcile(&mut object, &env.ctx).await;
    assert_eq!(phase(&object), Some(DeletionPhase::Completed));
    // Something (a rollup backfill, a manual import) put rows back.
    sqlx::query(
        "INSERT INTO probe_day (tenant_id, server_slug, day, minutes_total, minutes_up, minutes_down, \
           minutes_degraded, minutes_auth_walled, minutes_unknown) \
         VALUES ($1, 'server-0', '2026-11-20', 1440, 1440, 0, 0, 0, 0), \
                ($1, 'server-0', '2026-11-24', 1440, 1440, 0, 0, 0, 0)",
    )
    .bind(tenant(1))
    .execute(&env.db.pool)
    .await
    .unwrap();
    let report = replay::replay_tombstones(&env.db.pool, None, Utc::now())
        .await
        .unwrap();
    assert_eq!(
        report.removed["probe_day"], 1,
        "the day after the tombstone stays"
    );
    assert!(
        report.suppression_skipped,
        "no salt given, the tables hold rows"
    );
    let days: Vec<chrono::NaiveDate> =
        sqlx::query_scalar("SELECT day FROM probe_day WHERE tenant_id = $1")
            .bind(tenant(1))
            .fetch_all(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(
        days,
        vec![chrono::NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()]
    );
}

// --------------------------------------------------------- commands, drill

/// The operator binary, run without blocking the test's runtime (the
/// cache-invalidation server lives on it).
fn binary() -> tokio::process::Command {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
}

#[tokio::test]
async fn the_receipt_command_prints_the_receipt_and_checks_its_hash() {
    use archiver_operator::runtime::status_store::{StatusStore, StoredObject};
    let env = env().await;
    seed_postgres(&env.db.pool).await;
    let mut object = request("erase-printed", tenant(0), Some("server-0"));
    reconcile(&mut object, &env.ctx).await;
    let st = status(&object).clone();
    let dir = tempfile::tempdir().unwrap();
    let store = StatusStore::for_manifests(dir.path());
    let mut stored = StoredObject {
        kind: "DeletionRequest".into(),
        namespace: NAMESPACE.into(),
        name: "erase-printed".into(),
        generation: 1,
        spec_hash: String::new(),
        trigger_hash: String::new(),
        first_seen: erasure_time(),
        last_reconciled: None,
        next_reconcile: None,
        consecutive_failures: 0,
        last_error: None,
        paused: false,
        status: serde_json::to_value(&st).unwrap(),
        events: Vec::new(),
        accepted_spec: None,
    };
    store.save(&stored).unwrap();
    let run = || async {
        binary()
            .args(["receipt", "erase-printed", "-n", NAMESPACE, "--manifests"])
            .arg(dir.path())
            .args(["--database-url", &env.db.url])
            .output()
            .await
            .unwrap()
    };
    let output = run().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(st.receipt_sha256.as_deref().unwrap()),
        "{stdout}"
    );
    assert!(stdout.contains("\"tenantId\""), "{stdout}");
    assert!(stdout.contains("hash matches"), "{stdout}");
    assert!(!stdout.contains("MISMATCH"), "{stdout}");

    // A receipt edited after the fact no longer matches.
    let mut forged: Value = serde_json::from_str(st.receipt.as_deref().unwrap()).unwrap();
    forged["removed"]["probe_minute"] = json!(1);
    stored.status["receipt"] = Value::String(SealedReceipt::from_value(&forged).canonical);
    store.save(&stored).unwrap();
    let output = run().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("MISMATCH"), "{stdout}");
    assert!(stdout.contains("HASH DOES NOT MATCH"), "{stdout}");
}

#[tokio::test]
async fn the_drill_passes_leaves_the_tombstone_and_its_receipt_prints() {
    let env = env().await;
    seed_postgres(&env.db.pool).await;
    let before = postgres_snapshot(&env.db.pool).await;
    let run = || async {
        binary()
            .args(["drill", "--database-url", &env.db.url])
            .args(["--redis-url", &env.redis.url()])
            .args(["--suppression-salt", SALT])
            .args(["--alert-key-pattern", "alert:{tenant}:{server}:*"])
            .args(["--cache-invalidate-url", &env.cache.url])
            .output()
            .await
            .unwrap()
    };
    let output = run().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("drill PASSED"), "{stdout}");
    assert!(stdout.contains("receipt sha256:"), "{stdout}");
    let drill_tenant = archiver_operator::commands::drill::DRILL_TENANT;
    assert_eq!(
        drill_tenant.to_string(),
        "00000000-0000-4000-8000-0000000d2111"
    );
    let tomb = tombstones(&env.db.pool).await;
    assert_eq!(tomb.len(), 1);
    assert_eq!(
        (tomb[0].1, tomb[0].2.as_deref(), tomb[0].3.as_str()),
        (drill_tenant, Some("drill-server"), "drill")
    );
    assert!(
        pair_rows(&env.db.pool, drill_tenant, None)
            .await
            .values()
            .all(|c| *c == 0)
    );
    // The real tenants were not touched, the drill's own clusters are gone.
    assert_eq!(postgres_snapshot(&env.db.pool).await, before);
    assert_eq!(
        env.cache.bodies(),
        vec![json!({"tenantId": drill_tenant, "serverSlug": "drill-server"})]
    );
    let passed: Value = sqlx::query_scalar(
        "SELECT payload FROM operator_audit_log WHERE action = 'deletion-drill'",
    )
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(passed["passed"], true);
    assert!(passed["seeded"]["redis_verdict_keys"].as_i64().unwrap() > 0);
    assert!(passed["seeded"]["redis_alert_keys"].as_i64().unwrap() > 0);

    // The receipt is printable from the audit log alone (no status file).
    let request = stdout
        .lines()
        .find_map(|l| l.strip_prefix("deletion drill archiver-drill/"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the drill names its request")
        .to_string();
    let empty = tempfile::tempdir().unwrap();
    let output = binary()
        .args(["receipt", &request, "-n", "archiver-drill", "--manifests"])
        .arg(empty.path())
        .args(["--database-url", &env.db.url])
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("hash matches"), "{printed}");

    // The drill runs again (next quarter) and passes again.
    let output = run().await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(tombstones(&env.db.pool).await.len(), 2);
}

#[tokio::test]
async fn the_drill_fails_loudly_when_a_surface_cannot_be_erased() {
    let env = env().await;
    env.cache.status.store(503, Ordering::SeqCst);
    let output = binary()
        .args(["drill", "--database-url", &env.db.url])
        .args(["--redis-url", &env.redis.url()])
        .args(["--suppression-salt", SALT])
        .args(["--cache-invalidate-url", &env.cache.url])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("drill FAILED"), "{stdout}");
    assert!(stdout.contains("HTTP 503"), "{stdout}");
    assert!(tombstones(&env.db.pool).await.is_empty());
}

/// The drill reads the operator's erasure flags through the same parser: a
/// cache-invalidation URL the operator would refuse at startup is refused
/// by the drill before anything is seeded (it used to be taken as given and
/// fail the drill's erasure half-way).
#[tokio::test]
async fn the_drill_refuses_an_erasure_flag_the_operator_refuses() {
    let env = env().await;
    let output = binary()
        .args(["drill", "--database-url", &env.db.url])
        .args(["--redis-url", &env.redis.url()])
        .args([
            "--cache-invalidate-url",
            "ftp://cache.example.com/invalidate",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("only http:// and https:// URLs are supported"),
        "{stderr}"
    );
    let seeded: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(seeded, 0, "the drill seeded before checking its flags");
}

// ------------------------------------------ identity: spellings and key bytes

/// A drain worker of the test Redis whose clock stands `at`, backfilling
/// from `first`.
async fn drain_worker(env: &Env, first: DateTime<Utc>, at: DateTime<Utc>) -> Worker {
    let clock = ManualClock::new(at);
    Worker::connect(
        ShardSettings::new(0, "test/shard-0", Discovery::Index, at - first),
        "worker-a".into(),
        env.db.pool.clone(),
        &env.redis.url(),
        Arc::new(clock),
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap()
}

/// Writes sealed verdicts under these key names (bytes), listed in their
/// minute's index set.
async fn put_verdicts(url: &str, keys: &[(Vec<u8>, &str)], minute: DateTime<Utc>) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    for (key, state) in keys {
        pipe.hset_multiple(key, &[("state", *state), ("verdict_sealed", "1")])
            .ignore();
        pipe.sadd(index_key(minute), key).ignore();
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();
}

/// Every key name of a Redis, as bytes.
async fn redis_key_names(url: &str) -> BTreeSet<Vec<u8>> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.into_iter().collect()
}

/// Upper-case, simple and braced spellings of the tenant: the drain
/// archives them as the canonical tenant, and before the fix the erasure
/// only looked for the lower-case spelling (Redis keys and the reject
/// survived while verification said zero).
#[tokio::test]
async fn every_spelling_of_the_tenant_that_the_drain_reads_is_erased_and_verified() {
    let env = env().await;
    let (t, server) = (tenant(2), "server-0");
    let m = minute(2);
    let epoch = m.timestamp();
    let upper = t.hyphenated().to_string().to_uppercase();
    let simple = t.simple().to_string().to_uppercase();
    let key = |tenant: &str, server: &str, region: &str| {
        format!("verdict:{tenant}:{server}:{region}:{epoch}").into_bytes()
    };
    let pair_keys = vec![
        (key(&upper, server, "us-east"), "up"),
        (key(&simple, server, "eu-west"), "down"),
        (key(&format!("{{{upper}}}"), server, "ap-southeast"), "up"),
        // Rejected by the drain (unknown region): a reject of the pair.
        (key(&upper, server, "us-easr"), "up"),
    ];
    let other_keys = vec![
        (key(&upper, "server_1", "us-east"), "up"),
        (key(&upper, "SERVER-0", "us-east"), "up"),
        (
            key(&tenant(3).to_string().to_uppercase(), server, "us-east"),
            "up",
        ),
    ];
    put_verdicts(&env.redis.url(), &pair_keys, m).await;
    put_verdicts(&env.redis.url(), &other_keys, m).await;
    let mut worker = drain_worker(&env, m, m + chrono::Duration::seconds(65)).await;
    let report = worker.tick(Duration::from_secs(30)).await.unwrap();
    assert_eq!(report.archived.len(), 1, "{report:?}");
    worker.flush_marks().await;
    let stored: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT tenant_id, server_slug, region FROM probe_minute WHERE tenant_id = $1 AND server_slug = $2 \
         ORDER BY region",
    )
    .bind(t)
    .bind(server)
    .fetch_all(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(
        stored.len(),
        3,
        "the drain archives every spelling: {stored:?}"
    );

    // Verification counts with the drain's reading: it sees the pair's
    // keys and reject before the erasure (it said zero before the fix).
    let scope = Scope::server(t, server);
    let settings = env
        .ctx
        .config
        .erasure_settings(env.ctx.redis_targets.targets());
    let before = archiver_operator::erasure::verify::count_surfaces(
        &env.db.pool,
        &scope,
        &settings,
        erasure_time(),
        &Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(before["redis_verdict_keys"], 4, "{before:?}");
    assert_eq!(before["probe_minute"], 3, "{before:?}");
    assert_eq!(before["probe_minute_rejects"], 1, "{before:?}");

    let mut object = request("erase-every-spelling", t, Some(server));
    reconcile(&mut object, &env.ctx).await;
    let st = status(&object);
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    assert!(st.verification.as_ref().unwrap().verified);
    assert_eq!(st.removed["redis_verdict_keys"], 4);
    assert_eq!(st.removed["redis_index_entries"], 4);
    assert_eq!(st.removed["probe_minute_rejects"], 1);
    let left = redis_key_names(&env.redis.url()).await;
    for (key, _) in &pair_keys {
        assert!(
            !left.contains(key),
            "{} survived",
            String::from_utf8_lossy(key)
        );
    }
    for (key, _) in &other_keys {
        assert!(
            left.contains(key),
            "{} was erased",
            String::from_utf8_lossy(key)
        );
    }
    let rejects: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM probe_minute_rejects WHERE verdict_key ILIKE '%' || $1 || '%'",
    )
    .bind(&upper)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(rejects, 0, "the upper-case reject of the pair is gone");
}

/// Alert-router keys written with an upper-case tenant are the tenant's
/// too.
#[tokio::test]
async fn alert_keys_in_any_spelling_of_the_tenant_are_erased() {
    let env = env().await;
    let t = tenant(4);
    let upper = t.to_string().to_uppercase();
    let client = redis::Client::open(env.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    pipe.set(format!("alert:{upper}:api:cooldown"), "1")
        .ignore()
        .set(format!("tenantcfg:{{{upper}}}"), "{}")
        .ignore()
        .set(
            format!("tenantcfg:{}", tenant(5).to_string().to_uppercase()),
            "{}",
        )
        .ignore();
    pipe.query_async::<()>(&mut conn).await.unwrap();
    let mut object = request("erase-alert-spellings", t, None);
    reconcile(&mut object, &env.ctx).await;
    let st = status(&object);
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    assert_eq!(st.removed["redis_alert_keys"], 2);
    let left = redis_key_names(&env.redis.url()).await;
    assert_eq!(
        left,
        BTreeSet::from([
            format!("tenantcfg:{}", tenant(5).to_string().to_uppercase()).into_bytes()
        ])
    );
}

/// A key name that is not UTF-8 failed every whole-tenant erasure on the
/// shard ("Cannot convert from UTF-8") before the fix.
#[tokio::test]
async fn a_whole_tenant_erasure_succeeds_with_key_names_that_are_not_utf8() {
    let env = env().await;
    seed_redis(&env.redis.url()).await;
    let t = tenant(0);
    let of_tenant = [format!("verdict:{t}:").as_bytes(), b"caf\xe9:us-east:60"].concat();
    let of_tenant_upper = [
        format!("verdict:{}:", t.to_string().to_uppercase()).as_bytes(),
        b"s:us-east:\xff",
    ]
    .concat();
    let unrelated = b"verdict:\xff\xfe:server-0:us-east:60".to_vec();
    put_verdicts(
        &env.redis.url(),
        &[
            (of_tenant.clone(), "up"),
            (of_tenant_upper.clone(), "up"),
            (unrelated.clone(), "up"),
        ],
        minute(1),
    )
    .await;
    let mut object = request("erase-not-utf8", t, None);
    reconcile(&mut object, &env.ctx).await;
    let st = status(&object);
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    assert!(st.verification.as_ref().unwrap().verified, "{st:#?}");
    let left = redis_key_names(&env.redis.url()).await;
    assert!(!left.contains(&of_tenant));
    assert!(!left.contains(&of_tenant_upper));
    assert!(left.contains(&unrelated), "another tenant's key stays");
    assert!(
        !left
            .iter()
            .any(|k| String::from_utf8_lossy(k).contains(&t.to_string())),
        "nothing of the tenant is left"
    );
    // The server erasure of another tenant walks past those names too.
    let mut object = request("erase-t1-not-utf8", tenant(1), Some("server-0"));
    reconcile(&mut object, &env.ctx).await;
    assert_eq!(phase(&object), Some(DeletionPhase::Completed));
}

/// Rejects are reached by their columns: replay removes a reject that
/// came back in any spelling of its key.
#[tokio::test]
async fn replay_removes_a_reject_that_came_back_whatever_its_key_spelling() {
    let env = env().await;
    let (t, server) = (tenant(6), "api");
    let mut object = request("erase-then-replay-rejects", t, Some(server));
    reconcile(&mut object, &env.ctx).await;
    assert_eq!(phase(&object), Some(DeletionPhase::Completed));
    // A restore brings back a reject whose key spells the tenant in upper case.
    sqlx::query(
        "INSERT INTO probe_minute_rejects (shard_id, verdict_key, minute_bucket, raw_fields, reason, \
                                           tenant_id, server_slug) \
         VALUES (0, $1, $2, '{}', 'unknown_region: us-easr', $3, $4)",
    )
    .bind(format!(
        "verdict:{}:{server}:us-easr:{}",
        t.to_string().to_uppercase(),
        minute(3).timestamp()
    ))
    .bind(minute(3))
    .bind(t)
    .bind(server)
    .execute(&env.db.pool)
    .await
    .unwrap();
    let report =
        replay::replay_tombstones(&env.db.pool, Some(&SecretString::new(SALT)), Utc::now())
            .await
            .unwrap();
    assert_eq!(report.removed["probe_minute_rejects"], 1, "{report:?}");
}
