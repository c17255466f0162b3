//! End-to-end benchmark of one erasure against real servers (a throw-away
//! PostgreSQL cluster and a throw-away Redis started from the binaries on
//! this machine).
//!
//! The erased server is an enterprise server holding 365 days x 5 regions
//! of minutes (about 2.6 million `probe_minute` rows across 13 monthly
//! partitions), its daily and monthly rollups, rejects, suppression-cluster
//! hashes and 50,000 Redis verdict keys (with their index-set entries) plus
//! alert-router keys, in a database and a Redis that also hold other
//! tenants (interleaved minute by minute, as the drain writes them). One
//! measured run is `erasure::run::execute`: locks, tombstone, deletes,
//! hash replacement, Redis fan-out, cache invalidation (a local HTTP
//! server), COMMIT, the recount of every surface and the receipt. The
//! baseline, measured in the same process on an identical copy of the
//! database, is a bare `DELETE` of the same probe_minute, probe_day and
//! probe_month rows in one transaction.
//!
//! The database is seeded once (set-based `INSERT ... SELECT
//! generate_series`), then every measured run gets its own copy
//! (`CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY`, then CHECKPOINT;
//! not timed) and the Redis keys of the server are written again (not
//! timed). Results go to `docs/BENCHMARKS.md` between the
//! `<!-- bench:erasure -->` markers; nothing else in that file is touched.
//!
//! Run with `cargo bench --bench erasure`. Shrink it for a smoke run with
//! BENCH_DAYS, BENCH_RUNS, BENCH_OTHER_SERVERS, BENCH_REDIS_KEYS. Without
//! `--bench` on the command line (`cargo test --all-targets`) it does nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use redis::aio::MultiplexedConnection;
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use archiver_operator::api::deletion_request::DeletionReason;
use archiver_operator::archive::verdict::{REGIONS, index_key, verdict_key};
use archiver_operator::clock::ManualClock;
use archiver_operator::erasure::redis_targets::RedisTarget;
use archiver_operator::erasure::run::{self, Completed};
use archiver_operator::erasure::scope::tenant_hash;
use archiver_operator::erasure::{ErasureRequest, Scope};
use archiver_operator::runtime::config::{OperatorConfig, SecretString};
use archiver_operator::testing::{TestDatabase, redis_server};

const TARGET_SECONDS: f64 = 3.0;
const SALT: &str = "bench-salt";
const SERVER: &str = "enterprise-api";
const MARK_START: &str = "<!-- bench:erasure -->";
const MARK_END: &str = "<!-- /bench:erasure -->";

fn enterprise() -> Uuid {
    Uuid::from_u128(0x0e0e_0000_0000_4000_8000_0000_0000_0001)
}

fn other_tenant(n: usize) -> Uuid {
    Uuid::from_u128(0x0e0e_0000_0000_4000_8000_0001_0000_0000 + n as u128)
}

struct Params {
    days: i64,
    runs: usize,
    /// Servers of other tenants, sharing the database and Redis.
    other_servers: usize,
    /// Other servers have a row every this many minutes (keeps seeding short
    /// while every page of every partition holds other tenants' rows).
    other_every_minutes: i64,
    redis_keys: usize,
    other_redis_keys: usize,
}

impl Params {
    fn from_env() -> Self {
        let var = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            days: var("BENCH_DAYS", 365) as i64,
            runs: var("BENCH_RUNS", 3).max(1),
            other_servers: var("BENCH_OTHER_SERVERS", 20),
            other_every_minutes: 20,
            redis_keys: var("BENCH_REDIS_KEYS", 50_000),
            other_redis_keys: var("BENCH_OTHER_REDIS_KEYS", 200_000),
        }
    }
}

/// The last seeded minute: the day before the erasure.
fn last_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 22).expect("a valid date")
}

fn erasure_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
}

fn month_start(date: NaiveDate) -> NaiveDate {
    NaiveDate::from_ymd_opt(date.year(), date.month(), 1).expect("day 1 exists")
}

fn next_month(date: NaiveDate) -> NaiveDate {
    if date.month() == 12 {
        NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
    }
    .expect("day 1 exists")
}

fn utc(date: NaiveDate) -> DateTime<Utc> {
    date.and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

// ------------------------------------------------------------------ seeding

struct Seeded {
    minute_rows: i64,
    partitions: usize,
    other_minute_rows: i64,
}

async fn seed_postgres(pool: &PgPool, p: &Params) -> anyhow::Result<Seeded> {
    let first_day = last_day() - chrono::Duration::days(p.days - 1);
    let mut month = month_start(first_day);
    let mut partitions = 0;
    while month <= last_day() {
        let next = next_month(month);
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE probe_minute_{:04}_{:02} PARTITION OF probe_minute \
             FOR VALUES FROM ('{month} 00:00+00') TO ('{next} 00:00+00')",
            month.year(),
            month.month()
        )))
        .execute(pool)
        .await
        .context("creating a partition")?;
        partitions += 1;
        // One month per statement: minute by minute, the enterprise server
        // and the other servers interleaved as the drain writes them.
        let from = utc(month.max(first_day));
        let to = utc(next.min(last_day() + chrono::Duration::days(1)));
        let started = Instant::now();
        sqlx::query(
            "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state, p95_ms, \
                                       error_kind, asn, registry_of_origin, archived_at) \
             SELECT s.tenant_id, s.server_slug, r.region, m, \
                    CASE WHEN (extract(epoch FROM m)::bigint / 60 + r.n) % 97 = 0 THEN 'down' ELSE 'up' END, \
                    80 + r.n * 7, NULL, 16509, 'mcp.so', m + interval '65 seconds' \
             FROM generate_series($1::timestamptz, $2::timestamptz - interval '1 minute', interval '1 minute') m \
             CROSS JOIN LATERAL ( \
                 SELECT $3::uuid AS tenant_id, $4::text AS server_slug \
                 UNION ALL \
                 SELECT ('0e0e0000-0000-4000-8000-0001' || lpad(to_hex(i), 8, '0'))::uuid, 'server-' || i \
                 FROM generate_series(0, $5 - 1) i \
                 WHERE (extract(epoch FROM m)::bigint / 60) % $6 = i % $6 \
             ) s \
             CROSS JOIN unnest($7::text[]) WITH ORDINALITY AS r(region, n)",
        )
        .bind(from)
        .bind(to)
        .bind(enterprise())
        .bind(SERVER)
        .bind(p.other_servers as i32)
        .bind(p.other_every_minutes)
        .bind(REGIONS.as_slice())
        .execute(pool)
        .await
        .context("seeding probe_minute")?;
        eprintln!(
            "[erasure bench] seeded {month}: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        month = next;
    }
    sqlx::query(
        "INSERT INTO probe_day (tenant_id, server_slug, day, minutes_total, minutes_up, minutes_down, \
                                minutes_degraded, minutes_auth_walled, minutes_unknown, closed) \
         SELECT tenant_id, server_slug, day::date, 1440, 1420, 20, 0, 0, 0, true \
         FROM generate_series($1::date, $2::date, interval '1 day') day, \
              (SELECT $3::uuid AS tenant_id, $4::text AS server_slug \
               UNION ALL SELECT ('0e0e0000-0000-4000-8000-0001' || lpad(to_hex(i), 8, '0'))::uuid, 'server-' || i \
               FROM generate_series(0, $5 - 1) i) s",
    )
    .bind(first_day)
    .bind(last_day())
    .bind(enterprise())
    .bind(SERVER)
    .bind(p.other_servers as i32)
    .execute(pool)
    .await
    .context("seeding probe_day")?;
    sqlx::query(
        "INSERT INTO probe_month (tenant_id, server_slug, month, days_total, minutes_up, minutes_down, \
                                  minutes_degraded, minutes_auth_walled, minutes_unknown, sla_uptime_pct) \
         SELECT tenant_id, server_slug, date_trunc('month', day)::date, count(*), sum(minutes_up), \
                sum(minutes_down), 0, 0, 0, 99.5 \
         FROM probe_day GROUP BY 1, 2, 3",
    )
    .execute(pool)
    .await
    .context("seeding probe_month")?;
    sqlx::query(
        "INSERT INTO probe_minute_rejects (shard_id, verdict_key, minute_bucket, reason, tenant_id, server_slug) \
         SELECT 0, 'verdict:' || $1 || ':' || s || ':us-easr:' || extract(epoch FROM m)::bigint, m, 'unknown_region', $1::uuid, s \
         FROM generate_series($3::timestamptz, $3::timestamptz + interval '99 minutes', interval '1 minute') m, \
              unnest(ARRAY[$2, 'server-0']) s",
    )
    .bind(enterprise().to_string())
    .bind(SERVER)
    .bind(utc(last_day()))
    .execute(pool)
    .await
    .context("seeding rejects")?;
    // Clusters: one every 10 minutes of the year in the history, the last
    // day in the live table. The server's tenant is in one in 20 of them:
    // 2,628 a year, as many as the failing minutes a 99.5 % SLA allows.
    let own = tenant_hash(enterprise(), SALT);
    for (table, from) in [
        ("suppression_clusters_history", utc(first_day)),
        ("suppression_clusters", utc(last_day())),
    ] {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (error_kind, asn, registry_of_origin, minute_bucket, \
                                  contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count) \
             SELECT 'tls-expired', 16509, 'mcp.so', m, 3, \
                    CASE WHEN extract(epoch FROM m)::bigint % 12000 = 0 \
                         THEN ARRAY[$1, md5(m::text), md5(m::text || 'b')] \
                         ELSE ARRAY[md5(m::text), md5(m::text || 'b'), md5(m::text || 'c')] END, 3 \
             FROM generate_series($2::timestamptz, $3::timestamptz, interval '10 minutes') m"
        )))
        .bind(&own)
        .bind(from)
        .bind(utc(last_day() + chrono::Duration::days(1)) - chrono::Duration::minutes(1))
        .execute(pool)
        .await
        .context("seeding suppression clusters")?;
    }
    sqlx::query("ANALYZE").execute(pool).await?;
    let minute_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM probe_minute WHERE tenant_id = $1 AND server_slug = $2",
    )
    .bind(enterprise())
    .bind(SERVER)
    .fetch_one(pool)
    .await?;
    let all_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(pool)
        .await?;
    Ok(Seeded {
        minute_rows,
        partitions,
        other_minute_rows: all_rows - minute_rows,
    })
}

/// The server's verdict keys for its last `keys / 5` minutes, with index
/// entries, and its alert-router keys. Other tenants' keys are written once.
async fn seed_redis_server(conn: &mut MultiplexedConnection, p: &Params) -> anyhow::Result<()> {
    let minutes = (p.redis_keys / REGIONS.len()) as i64;
    let last = utc(last_day() + chrono::Duration::days(1)) - chrono::Duration::minutes(1);
    let mut pipe = redis::pipe();
    for m in 0..minutes {
        let at = last - chrono::Duration::minutes(m);
        for region in REGIONS {
            let key = verdict_key(enterprise(), SERVER, region, at);
            pipe.hset_multiple(
                &key,
                &[
                    ("state", "up"),
                    ("p95_ms", "120"),
                    ("asn", "16509"),
                    ("registry_of_origin", "mcp.so"),
                    ("verdict_sealed", "1"),
                    ("archived_at", "1795000000"),
                ],
            )
            .ignore();
            pipe.sadd(index_key(at), &key).ignore();
        }
        if pipe.len() > 20_000 {
            pipe.query_async::<()>(conn).await?;
            pipe = redis::pipe();
        }
    }
    for n in 0..100 {
        pipe.set(format!("alert:{}:{SERVER}:state-{n}", enterprise()), "up")
            .ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

async fn seed_redis_others(conn: &mut MultiplexedConnection, p: &Params) -> anyhow::Result<()> {
    let last = utc(last_day() + chrono::Duration::days(1)) - chrono::Duration::minutes(1);
    let per_server = p.other_redis_keys / p.other_servers.max(1);
    let mut pipe = redis::pipe();
    for s in 0..p.other_servers {
        for k in 0..per_server {
            let at = last - chrono::Duration::minutes((k / REGIONS.len()) as i64);
            let region = REGIONS[k % REGIONS.len()];
            let key = verdict_key(other_tenant(s), &format!("server-{s}"), region, at);
            pipe.hset_multiple(&key, &[("state", "up"), ("verdict_sealed", "1")])
                .ignore();
            pipe.sadd(index_key(at), &key).ignore();
            if pipe.len() > 20_000 {
                pipe.query_async::<()>(conn).await?;
                pipe = redis::pipe();
            }
        }
        pipe.set(format!("alert:{}:server-{s}:state", other_tenant(s)), "up")
            .ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

// ------------------------------------------------------------ cache server

async fn cache_server() -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/invalidate",
        axum::routing::post(|| async { axum::http::StatusCode::NO_CONTENT }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/invalidate"))
}

// --------------------------------------------------------------- databases

/// `postgres://…/<name>` of the same cluster.
fn database_url(url: &str, name: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => url.to_string(),
    }
}

async fn copy_database(admin: &PgPool, template: &str, name: &str) -> anyhow::Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY"
    )))
    .execute(admin)
    .await
    .context("copying the seeded database")?;
    sqlx::query("CHECKPOINT").execute(admin).await?;
    Ok(())
}

async fn drop_database(admin: &PgPool, name: &str) -> anyhow::Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(admin)
    .await?;
    sqlx::query("CHECKPOINT").execute(admin).await?;
    Ok(())
}

// -------------------------------------------------------------- measuring

struct Measured {
    erasure: Vec<f64>,
    erasure_phases: Vec<Vec<(&'static str, f64)>>,
    bare: Vec<f64>,
    bare_minute_only: Vec<f64>,
    removed: BTreeMap<String, i64>,
}

fn request() -> ErasureRequest {
    ErasureRequest {
        namespace: "bench".into(),
        name: "erase-enterprise-api".into(),
        uid: None,
        scope: Scope::server(enterprise(), SERVER),
        reason: DeletionReason::GdprArt17,
        requester: Uuid::nil(),
        received_at: Some(erasure_time()),
        response_days: archiver_operator::erasure::RESPONSE_DAYS,
        extension: None,
    }
}

async fn measure_erasure(
    pool: &PgPool,
    redis_url: &str,
    cache_url: &str,
) -> anyhow::Result<(f64, Completed)> {
    let config = OperatorConfig {
        suppression_salt: Some(SecretString::new(SALT)),
        cache_invalidate_urls: vec![cache_url.to_string()],
        alert_key_patterns: vec!["alert:{tenant}:{server}:*".into()],
        erasure_out_of_scope_tables: Vec::new(),
        erasure_redis_urls: Vec::new(),
    };
    let settings = config.erasure_settings(vec![RedisTarget {
        label: "bench/shard-0".into(),
        url: SecretString::new(redis_url),
    }]);
    let clock = ManualClock::new(erasure_time());
    let started = Instant::now();
    let done = run::execute(pool, &request(), &settings, &clock, 1, erasure_time())
        .await
        .map_err(|e| anyhow::anyhow!("erasure failed: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(done.verification.verified, "the erasure did not verify");
    Ok((seconds, done))
}

/// The naive baseline: the same rows, plain DELETEs in one transaction.
async fn measure_bare_delete(pool: &PgPool) -> anyhow::Result<(f64, f64, i64)> {
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    let minute_rows =
        sqlx::query("DELETE FROM probe_minute WHERE tenant_id = $1 AND server_slug = $2")
            .bind(enterprise())
            .bind(SERVER)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let minute_only = started.elapsed().as_secs_f64();
    for table in ["probe_day", "probe_month"] {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE tenant_id = $1 AND server_slug = $2"
        )))
        .bind(enterprise())
        .bind(SERVER)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok((
        started.elapsed().as_secs_f64(),
        minute_only,
        minute_rows as i64,
    ))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let mid = sorted.len() / 2;
    if !sorted.len().is_multiple_of(2) {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        })
}

fn thousands(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

async fn run(p: Params, redis_url: String) -> anyhow::Result<String> {
    let whole = Instant::now();
    let seed_db = TestDatabase::new().await;
    let admin = archiver_operator::db::connect(&database_url(&seed_db.url, "postgres"), 2).await?;
    let started = Instant::now();
    let seeded = seed_postgres(&seed_db.pool, &p).await?;
    let seed_seconds = started.elapsed().as_secs_f64();
    let db_size: String =
        sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size(current_database()))")
            .fetch_one(&seed_db.pool)
            .await?;
    let pg_version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&seed_db.pool)
        .await?;
    seed_db.pool.close().await;
    eprintln!(
        "[erasure bench] seeded {} rows of the server ({} others), {db_size}, in {seed_seconds:.0} s",
        seeded.minute_rows, seeded.other_minute_rows
    );

    let client = redis::Client::open(redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    seed_redis_others(&mut conn, &p).await?;
    let cache_url = cache_server().await?;

    let mut measured = Measured {
        erasure: Vec::new(),
        erasure_phases: Vec::new(),
        bare: Vec::new(),
        bare_minute_only: Vec::new(),
        removed: BTreeMap::new(),
    };
    for i in 0..p.runs {
        // Baseline and erasure alternate, each on a fresh copy.
        let name = format!("{}_bare_{i}", seed_db.name);
        copy_database(&admin, &seed_db.name, &name).await?;
        let pool = archiver_operator::db::connect(&database_url(&seed_db.url, &name), 4).await?;
        let (bare, minute_only, rows) = measure_bare_delete(&pool).await?;
        ensure!(
            rows == seeded.minute_rows,
            "the baseline deleted {rows} rows"
        );
        pool.close().await;
        drop_database(&admin, &name).await?;
        measured.bare.push(bare);
        measured.bare_minute_only.push(minute_only);

        let name = format!("{}_erase_{i}", seed_db.name);
        copy_database(&admin, &seed_db.name, &name).await?;
        seed_redis_server(&mut conn, &p).await?;
        // As many connections as the operator's pool (verification counts
        // partitions on several at once).
        let pool = archiver_operator::db::connect(&database_url(&seed_db.url, &name), 10).await?;
        let (seconds, done) = measure_erasure(&pool, &redis_url, &cache_url).await?;
        ensure!(
            done.removed["probe_minute"] == seeded.minute_rows,
            "the erasure removed {} rows",
            done.removed["probe_minute"]
        );
        ensure!(
            done.removed["redis_verdict_keys"] == p.redis_keys as i64,
            "the erasure removed {} keys",
            done.removed["redis_verdict_keys"]
        );
        let others: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute")
            .fetch_one(&pool)
            .await?;
        ensure!(
            others == seeded.other_minute_rows,
            "other tenants' rows changed"
        );
        pool.close().await;
        drop_database(&admin, &name).await?;
        eprintln!(
            "[erasure bench] run {}: erasure {seconds:.2} s, bare DELETE {bare:.2} s",
            i + 1
        );
        measured.erasure.push(seconds);
        measured.erasure_phases.push(done.phases.clone());
        measured.removed = done.removed;
    }
    let redis_version: String = redis::cmd("INFO")
        .arg("server")
        .query_async::<String>(&mut conn)
        .await?
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:").map(str::to_string))
        .unwrap_or_default();
    let redis_keys: i64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
    Ok(report(
        &p,
        &seeded,
        &measured,
        RunInfo {
            db_size,
            pg_version,
            redis_version,
            redis_keys,
            seed_seconds,
            whole_minutes: whole.elapsed().as_secs_f64() / 60.0,
        },
    ))
}

struct RunInfo {
    db_size: String,
    pg_version: String,
    redis_version: String,
    redis_keys: i64,
    seed_seconds: f64,
    whole_minutes: f64,
}

fn report(p: &Params, seeded: &Seeded, m: &Measured, c: RunInfo) -> String {
    let mut md = String::new();
    let erasure = median(&m.erasure);
    let bare = median(&m.bare);
    let (lo, hi) = min_max(&m.erasure);
    let (bare_lo, bare_hi) = min_max(&m.bare);
    let _ = writeln!(md, "## Erasure benchmark\n");
    let _ = writeln!(
        md,
        "Written by `cargo bench --bench erasure` ([`benches/erasure.rs`](../benches/erasure.rs)) on {}; \
         re-run the bench instead of editing. Whole bench: {:.1} min (seeding {:.0} s).\n",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        c.whole_minutes,
        c.seed_seconds
    );
    let _ = writeln!(
        md,
        "One enterprise server: {} days x 5 regions of minutes = **{} probe_minute rows** across {} monthly \
         partitions, {} daily and monthly rows, 200 rejects (half its own), suppression clusters (its salted hash in 1 in 20 of the \
         year's 52,560 cluster rows: the failing minutes a 99.5 % SLA allows), **{} Redis verdict keys** (+ index entries) and 100 alert-router keys. The same database holds \
         {} rows of {} other servers, interleaved minute by minute as the drain writes them ({} on disk); Redis \
         holds {} keys in all. {} runs, each on a fresh copy of the seeded database (copy and CHECKPOINT not \
         timed); baseline and erasure alternate. {}; Redis {}; PostgreSQL with `fsync=off`, \
         `full_page_writes=off`, `shared_buffers=128MB` (the test servers of `src/local_servers.rs`), all on \
         the same {}-core machine as the bench.\n",
        p.days,
        thousands(seeded.minute_rows),
        seeded.partitions,
        thousands(p.days + seeded.partitions as i64),
        thousands(p.redis_keys as i64),
        thousands(seeded.other_minute_rows),
        p.other_servers,
        c.db_size,
        thousands(c.redis_keys),
        p.runs,
        c.pg_version.split(" on ").next().unwrap_or_default(),
        c.redis_version,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let _ = writeln!(md, "| measurement | median s | min s | max s |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let _ = writeln!(
        md,
        "| **erasure, end to end** (locks, tombstone, deletes, hash replacement, Redis UNLINK, cache invalidation, COMMIT, recount of every surface, receipt) | **{erasure:.2}** | {lo:.2} | {hi:.2} |"
    );
    let _ = writeln!(
        md,
        "| baseline: bare `DELETE` of the same probe_minute + probe_day + probe_month rows, one transaction | {bare:.2} | {bare_lo:.2} | {bare_hi:.2} |"
    );
    let _ = writeln!(
        md,
        "| baseline, the probe_minute `DELETE` alone | {:.2} | | |",
        median(&m.bare_minute_only)
    );
    let _ = writeln!(
        md,
        "\nTarget: <= {TARGET_SECONDS:.0} s end to end. Result: **{}** ({erasure:.2} s, {:.2}x the bare DELETE).\n",
        if erasure <= TARGET_SECONDS {
            "met"
        } else {
            "NOT met"
        },
        erasure / bare
    );
    let _ = writeln!(md, "Where the erasure's time goes (median of the runs):\n");
    let _ = writeln!(md, "| phase | s |");
    let _ = writeln!(md, "|---|---:|");
    let mut phases: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for run in &m.erasure_phases {
        for (name, seconds) in run {
            if !order.contains(name) {
                order.push(name);
            }
            phases.entry(name).or_default().push(*seconds);
        }
    }
    for name in order {
        let _ = writeln!(md, "| {name} | {:.3} |", median(&phases[name]));
    }
    let _ = writeln!(md, "\nRemoved per surface (each run):\n");
    let _ = writeln!(md, "| surface | rows / keys |");
    let _ = writeln!(md, "|---|---:|");
    for (surface, count) in &m.removed {
        let _ = writeln!(md, "| {surface} | {} |", thousands(*count));
    }
    md
}

/// Replaces the erasure section of `text` (between the markers), or
/// appends it with the markers at the end. Nothing else is touched.
fn splice(text: &str, section: &str) -> String {
    let block = format!("{MARK_START}\n{section}{MARK_END}\n");
    match (text.find(MARK_START), text.find(MARK_END)) {
        (Some(start), Some(end)) if start < end => {
            let after = &text[end + MARK_END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{block}{after}", &text[..start])
        }
        _ => {
            let mut out = text.to_string();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&block);
            out
        }
    }
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!(
            "erasure bench: run it with `cargo bench --bench erasure` (skipped without --bench)"
        );
        return Ok(());
    }
    let params = Params::from_env();
    // Servers are tied to the thread that starts them: start Redis here,
    // on the main thread, which outlives the runtime.
    let redis = redis_server();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let section = runtime.block_on(run(params, redis.url()))?;
    drop(runtime);
    drop(redis);

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS.md");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    std::fs::write(&path, splice(&existing, &section))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{section}");
    eprintln!("[erasure bench] wrote its section of {}", path.display());
    Ok(())
}
