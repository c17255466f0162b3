//! Derived views against an independent computation: after random minutes
//! (partial regions, every state, midnight and a month boundary, an erasure
//! in the middle), the incremental probe_day/probe_month equal what this
//! test computes from probe_minute in Rust; suppression clusters match an
//! independent grouping; the plan check notices a dropped index.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use archiver_operator::metrics::Metrics;
use archiver_operator::testing::TestDatabase;
use archiver_operator::views::{self, ViewSettings};

const REGIONS: [&str; 5] = ["us-east", "us-west", "eu-west", "ap-southeast", "sa-east"];
const STATES: [&str; 5] = ["up", "down", "degraded", "auth-walled", "unknown"];
const SALT: &str = "pepper";

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

fn tenant(n: u64) -> Uuid {
    Uuid::from_u128(0x7000_0000_0000_4000_8000_0000_0000_0000 + u128::from(n))
}

/// The quorum rule, written again here independently of the SQL function.
fn reference_state(states: &[String]) -> &'static str {
    let q = states.len().min(2);
    let count = |s: &str| states.iter().filter(|x| x.as_str() == s).count();
    if states.is_empty() {
        "unknown"
    } else if count("down") >= q {
        "down"
    } else if count("down") + count("degraded") >= q {
        "degraded"
    } else if count("up") >= q {
        "up"
    } else if count("auth-walled") >= q {
        "auth-walled"
    } else {
        "unknown"
    }
}

async fn partitions(db: &TestDatabase) {
    for (name, from, to) in [
        ("probe_minute_2026_11", "2026-11-01", "2026-12-01"),
        ("probe_minute_2026_12", "2026-12-01", "2027-01-01"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {name} PARTITION OF probe_minute FOR VALUES FROM ('{from} 00:00+00') TO ('{to} 00:00+00')"
        )))
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

/// Inserts minutes [from, to) of random verdicts for `tenants` x 2 servers.
async fn archive_minutes(
    db: &TestDatabase,
    random: &mut Lcg,
    from: DateTime<Utc>,
    minutes: i64,
    tenants: u64,
) {
    for m in 0..minutes {
        let at = from + chrono::Duration::minutes(m);
        let mut builder = sqlx::QueryBuilder::new(
            "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state, p95_ms, error_kind, asn, registry_of_origin) ",
        );
        let mut rows = Vec::new();
        for t in 0..tenants {
            for s in 0..2 {
                // Some servers miss regions in some minutes (late or absent regions).
                let regions = 1 + random.next(5) as usize;
                for region in &REGIONS[..regions] {
                    let state = STATES[random.next(5) as usize];
                    let p95 = random.next(900) as i32 + 1;
                    rows.push((
                        tenant(t),
                        format!("srv-{s}"),
                        region.to_string(),
                        at,
                        state,
                        p95,
                    ));
                }
            }
        }
        builder.push_values(rows, |mut b, (t, s, r, at, state, p95)| {
            b.push_bind(t)
                .push_bind(s)
                .push_bind(r)
                .push_bind(at)
                .push_bind(state)
                .push_bind(p95)
                .push_bind("tls-expired")
                .push_bind(16509)
                .push_bind("mcp.so");
        });
        builder.build().execute(&db.pool).await.unwrap();
    }
    let last = from + chrono::Duration::minutes(minutes - 1);
    sqlx::query(
        "INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at) VALUES (0, $1, 't', now()) \
         ON CONFLICT (shard_id) DO UPDATE SET last_minute = EXCLUDED.last_minute",
    )
    .bind(last)
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn maintain(db: &TestDatabase, now: DateTime<Utc>) -> views::MaintenanceReport {
    views::maintain(
        &db.pool,
        &ViewSettings {
            salt: Some(SALT),
            now,
            budget: std::time::Duration::from_secs(600),
        },
    )
    .await
    .expect("maintenance")
}

type DayKey = (Uuid, String, NaiveDate);
/// A probe_minute row: tenant, server, minute, state, p95.
type MinuteRow = (Uuid, String, DateTime<Utc>, String, Option<i32>);
/// A probe_day row as read back.
type DayRow = (
    Uuid,
    String,
    NaiveDate,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    Option<i32>,
    Option<i32>,
    bool,
);
/// A probe_month row: tenant, server, days, up, down, degraded, sla.
type MonthRow = (Uuid, String, i32, i32, i32, i32, Option<f64>);
/// total, up, down, degraded, auth-walled, unknown, incidents
type DayCounts = [i64; 7];

async fn reference_days(
    db: &TestDatabase,
) -> (BTreeMap<DayKey, DayCounts>, BTreeMap<DayKey, (i32, i32)>) {
    let rows: Vec<MinuteRow> = sqlx::query_as(
        "SELECT tenant_id, server_slug, minute_bucket, state, p95_ms FROM probe_minute ORDER BY 1, 2, 3",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut minutes: BTreeMap<(Uuid, String), BTreeMap<DateTime<Utc>, Vec<String>>> =
        BTreeMap::new();
    let mut p95s: BTreeMap<DayKey, Vec<i32>> = BTreeMap::new();
    for (t, s, at, state, p95) in rows {
        minutes
            .entry((t, s.clone()))
            .or_default()
            .entry(at)
            .or_default()
            .push(state);
        if let Some(p95) = p95 {
            p95s.entry((t, s, at.date_naive())).or_default().push(p95);
        }
    }
    let mut days: BTreeMap<DayKey, DayCounts> = BTreeMap::new();
    for ((t, s), by_minute) in minutes {
        let mut previous: Option<&str> = None;
        for (at, states) in &by_minute {
            let state = reference_state(states);
            let counts = days.entry((t, s.clone(), at.date_naive())).or_default();
            counts[0] += 1;
            counts[1 + STATES.iter().position(|x| *x == state).unwrap()] += 1;
            if state != "up" && previous == Some("up") {
                counts[6] += 1;
            }
            previous = Some(state);
        }
    }
    let percentiles = p95s
        .into_iter()
        .map(|(key, mut values)| {
            values.sort();
            // percentile_disc: the first value whose cumulative share >= q.
            let pick = |q: f64| values[((q * values.len() as f64).ceil() as usize).max(1) - 1];
            (key, (pick(0.5), pick(0.95)))
        })
        .collect();
    (days, percentiles)
}

async fn stored_days(
    db: &TestDatabase,
) -> BTreeMap<DayKey, (DayCounts, Option<i32>, Option<i32>, bool)> {
    let rows: Vec<DayRow> =
        sqlx::query_as(
            "SELECT tenant_id, server_slug, day, minutes_total, minutes_up, minutes_down, minutes_degraded, \
             minutes_auth_walled, minutes_unknown, incident_count, p95_ms_p50_of_day, p95_ms_p95_of_day, closed FROM probe_day",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
    rows.into_iter()
        .map(|r| {
            let counts = [r.3, r.4, r.5, r.6, r.7, r.8, r.9].map(i64::from);
            ((r.0, r.1, r.2), (counts, r.10, r.11, r.12))
        })
        .collect()
}

#[tokio::test]
async fn incremental_rollups_equal_an_independent_recompute_across_midnight_a_month_end_and_an_erasure()
 {
    let db = TestDatabase::new().await;
    partitions(&db).await;
    let mut random = Lcg(20261130);
    let start = Utc.with_ymd_and_hms(2026, 11, 30, 23, 40, 0).unwrap();

    archive_minutes(&db, &mut random, start, 12, 6).await;
    let report = maintain(&db, start + chrono::Duration::minutes(13)).await;
    assert_eq!(report.minutes.len(), 12);

    // An erasure of tenant 2 / srv-1 (what the erasure does to these tables).
    for table in ["probe_minute", "probe_day", "probe_month"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE tenant_id = $1 AND server_slug = 'srv-1'"
        )))
        .bind(tenant(2))
        .execute(&db.pool)
        .await
        .unwrap();
    }

    // The rest of the day, midnight, and the first minutes of December
    // (new data for the erased server after its erasure is kept).
    archive_minutes(
        &db,
        &mut random,
        start + chrono::Duration::minutes(12),
        30,
        6,
    )
    .await;
    let report = maintain(&db, start + chrono::Duration::minutes(43)).await;
    assert_eq!(report.minutes.len(), 30);
    assert_eq!(
        report.closed_days,
        vec![NaiveDate::from_ymd_opt(2026, 11, 30).unwrap()]
    );

    let (expected, percentiles) = reference_days(&db).await;
    let stored = stored_days(&db).await;
    assert_eq!(
        stored.keys().collect::<BTreeSet<_>>(),
        expected.keys().collect::<BTreeSet<_>>(),
        "the same server-days"
    );
    for (key, counts) in &expected {
        let (stored_counts, p50, p95, closed) = &stored[key];
        assert_eq!(
            stored_counts, counts,
            "{key:?}: [total, up, down, degraded, auth-walled, unknown, incidents]"
        );
        if key.2.day() == 30 {
            assert!(closed, "{key:?} closed");
            assert_eq!(
                (*p50, *p95),
                (Some(percentiles[key].0), Some(percentiles[key].1)),
                "{key:?} exact percentiles"
            );
        } else {
            assert!(!closed);
            // Until the day closes the exact percentiles are computed on
            // read by the view probe_day_live.
            assert_eq!(
                *p50, None,
                "probe_day holds exact percentiles only once the day closes"
            );
            let live: (i32, i32) = sqlx::query_as(
                "SELECT p95_ms_p50, p95_ms_p95 FROM probe_day_live WHERE tenant_id = $1 AND server_slug = $2 AND day = $3",
            )
            .bind(key.0)
            .bind(&key.1)
            .bind(key.2)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            assert_eq!(live, percentiles[key], "{key:?} live percentiles");
        }
    }

    // probe_month of November from the closed day.
    let months: Vec<MonthRow> = sqlx::query_as(
        "SELECT tenant_id, server_slug, days_total, minutes_up, minutes_down, minutes_degraded, sla_uptime_pct::float8 \
         FROM probe_month WHERE month = '2026-11-01'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let november: Vec<_> = expected.iter().filter(|(k, _)| k.2.month() == 11).collect();
    assert_eq!(months.len(), november.len());
    for (t, s, days, up, down, degraded, sla) in months {
        let counts = expected[&(t, s.clone(), NaiveDate::from_ymd_opt(2026, 11, 30).unwrap())];
        assert_eq!(
            (days, i64::from(up), i64::from(down), i64::from(degraded)),
            (1, counts[1], counts[2], counts[3])
        );
        let denominator = counts[1] + counts[2] + counts[3];
        let expected_sla = (denominator > 0)
            .then(|| ((100.0 * counts[1] as f64 / denominator as f64) * 1000.0).round() / 1000.0);
        assert_eq!(sla, expected_sla, "{t} {s}");
    }
}

#[tokio::test]
async fn each_minute_is_applied_once_even_when_maintenance_runs_twice() {
    let db = TestDatabase::new().await;
    partitions(&db).await;
    let mut random = Lcg(7);
    let start = Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap();
    archive_minutes(&db, &mut random, start, 5, 3).await;
    let now = start + chrono::Duration::minutes(6);
    let (first, second) = tokio::join!(maintain(&db, now), maintain(&db, now));
    assert!(first.minutes.len() + second.minutes.len() >= 5);
    let total: i64 = sqlx::query_scalar("SELECT sum(minutes_total)::bigint FROM probe_day")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, 5 * 3 * 2, "5 minutes x 6 servers, each once");
}

fn hash(t: Uuid) -> String {
    hex::encode(Sha256::digest(format!("{t}{SALT}")))
}

#[tokio::test]
async fn suppression_clusters_match_an_independent_grouping_and_survive_a_tombstone() {
    let db = TestDatabase::new().await;
    partitions(&db).await;
    let at = Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap();
    // Three tenants fail on the same (tls-expired, 16509, mcp.so); one alone on another cause.
    let mut rows = vec![];
    for t in 0..3 {
        rows.push((
            tenant(t),
            "srv-0",
            "us-east",
            "down",
            "tls-expired",
            16509,
            "mcp.so",
        ));
        rows.push((
            tenant(t),
            "srv-1",
            "us-east",
            "degraded",
            "tls-expired",
            16509,
            "mcp.so",
        ));
    }
    rows.push((
        tenant(3),
        "srv-0",
        "us-east",
        "down",
        "dns",
        13335,
        "smithery",
    ));
    rows.push((
        tenant(4),
        "srv-0",
        "us-east",
        "up",
        "tls-expired",
        16509,
        "mcp.so",
    ));
    for (t, s, r, state, kind, asn, registry) in &rows {
        sqlx::query(
            "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state, error_kind, asn, registry_of_origin) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(t)
        .bind(s)
        .bind(r)
        .bind(at)
        .bind(state)
        .bind(kind)
        .bind(asn)
        .bind(registry)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at) VALUES (0, $1, 't', now())")
        .bind(at)
        .execute(&db.pool)
        .await
        .unwrap();
    maintain(&db, at + chrono::Duration::minutes(2)).await;

    let clusters: Vec<(String, i32, String, i32, Vec<String>, i32)> = sqlx::query_as(
        "SELECT error_kind, asn, registry_of_origin, contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count \
         FROM suppression_clusters",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected_hashes: BTreeSet<String> = (0..3).map(|t| hash(tenant(t))).collect();
    assert_eq!(
        clusters.len(),
        1,
        "only the multi-tenant cause clusters: {clusters:?}"
    );
    let (kind, asn, registry, tenants, hashes, pairs) = &clusters[0];
    assert_eq!(
        (kind.as_str(), *asn, registry.as_str(), *tenants, *pairs),
        ("tls-expired", 16509, "mcp.so", 3, 6)
    );
    assert_eq!(
        hashes.iter().cloned().collect::<BTreeSet<_>>(),
        expected_hashes
    );
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM suppression_clusters_history")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(history, 1, "the hourly snapshot copied the cluster");

    // An erasure replaces the tenant's hash; the cluster row survives.
    sqlx::query("UPDATE suppression_clusters SET contributing_tenant_hashes = array_replace(contributing_tenant_hashes, $1, 'tombstone')")
        .bind(hash(tenant(1)))
        .execute(&db.pool)
        .await
        .unwrap();
    let hashes: Vec<String> =
        sqlx::query_scalar("SELECT contributing_tenant_hashes FROM suppression_clusters")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(hashes.contains(&"tombstone".to_string()) && !hashes.contains(&hash(tenant(1))));
    assert_eq!(hashes.len(), 3);
}

#[tokio::test]
async fn without_a_salt_suppression_work_refuses_and_says_why() {
    let db = TestDatabase::new().await;
    let report = views::maintain(
        &db.pool,
        &ViewSettings {
            salt: None,
            now: Utc::now(),
            budget: std::time::Duration::from_secs(5),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        report.suppression_disabled,
        Some("no suppression salt configured")
    );
}

#[tokio::test]
async fn the_plan_check_fails_when_the_index_is_dropped() {
    let db = TestDatabase::new().await;
    let now = Utc::now();
    assert!(views::alert_query_uses_index(&db.pool, now).await.unwrap());
    sqlx::query("DROP INDEX suppression_clusters_recent")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(!views::alert_query_uses_index(&db.pool, now).await.unwrap());
}

/// A 30-day daily window ends inside a 31-day month: retention may delete
/// the month's first day rows before its last day closes. The month keeps
/// every day it was given (recomputing it from probe_day would have dropped
/// the first day from the SLA), and closing a day twice counts it once.
#[tokio::test]
async fn a_month_keeps_days_retention_deleted_before_it_was_complete() {
    let db = TestDatabase::new().await;
    partitions(&db).await;
    let (t, server) = (tenant(1), "srv-0");
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
    let insert = |d: u32, minute: u32, state: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
                 VALUES ($1, $2, 'us-east', $3, $4)",
            )
            .bind(t)
            .bind(server)
            .bind(Utc.with_ymd_and_hms(2026, 12, d, 10, minute, 0).unwrap())
            .bind(state)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    for (minute, state) in [(0, "up"), (1, "up"), (2, "up"), (3, "down")] {
        insert(1, minute, state).await;
    }
    views::close_day(&db.pool, day(1)).await.unwrap();

    // Retention deletes December 1 (per-minute and daily rows).
    for table in ["probe_minute", "probe_day"] {
        let column = if table == "probe_day" {
            "day::timestamptz"
        } else {
            "minute_bucket"
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE {column} < '2026-12-02 00:00+00'"
        )))
        .execute(&db.pool)
        .await
        .unwrap();
    }

    for (minute, state) in [(0, "up"), (1, "degraded")] {
        insert(31, minute, state).await;
    }
    let month = || async {
        sqlx::query_as::<_, (i32, i32, i32, i32, Option<f64>)>(
            "SELECT days_total, minutes_up, minutes_down, minutes_degraded, sla_uptime_pct::float8 \
             FROM probe_month WHERE tenant_id = $1 AND server_slug = $2 AND month = '2026-12-01'",
        )
        .bind(t)
        .bind(server)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    views::close_day(&db.pool, day(31)).await.unwrap();
    // 4 up, 1 down, 1 degraded over both days: 66.667 %.
    assert_eq!(month().await, (2, 4, 1, 1, Some(66.667)));

    // Closing the last day again (late data for it) replaces its share.
    insert(31, 2, "up").await;
    views::close_day(&db.pool, day(31)).await.unwrap();
    assert_eq!(month().await, (2, 5, 1, 1, Some(71.429)));
}

/// Inserts `minutes` minutes from `from`, `tenants` x 2 servers x 5 regions
/// per minute, one statement per minute in minute order as the drain writes
/// them, every state present (so suppression clusters form). No ANALYZE.
async fn load_minutes(db: &TestDatabase, from: DateTime<Utc>, minutes: i64, tenants: i32) {
    for m in 0..minutes {
        sqlx::query(
            "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state, p95_ms, \
                 error_kind, asn, registry_of_origin) \
             SELECT ('70000000-0000-4000-8000-' || lpad(to_hex(t), 12, '0'))::uuid, 'srv-' || s, r, $1, \
                    (ARRAY['up','down','degraded','auth-walled','unknown'])[1 + (t + s) % 5], 100 + t % 50, \
                    'tls-expired', 16509, 'mcp.so' \
             FROM generate_series(0, $2 - 1) t, generate_series(0, 1) s, \
                  unnest(ARRAY['us-east','us-west','eu-west','ap-southeast','sa-east']) r",
        )
        .bind(from + chrono::Duration::minutes(m))
        .bind(tenants)
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

/// Scans of a table as PostgreSQL counts them: (sequential, index).
async fn scans(db: &TestDatabase, table: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(seq_scan, 0), coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Closes `pool` (opened with `application_name=name`) and waits until its
/// backends are gone: a backend reports its scan counters when it exits
/// (while it lives, only when idle, up to 10 s later).
async fn close_and_report(db: &TestDatabase, pool: sqlx::PgPool, name: &str) {
    pool.close().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let alive: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(name)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if alive == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backends of {name} did not exit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
}

/// The per-minute statements on a large partition without statistics (it
/// was analyzed while empty, as a new month's partition is; autovacuum kept
/// off so it stays that way): they find the minute through an index, never
/// by reading the whole partition. Seen in production as minutes per
/// minute after a restore.
#[tokio::test]
async fn the_minute_statements_use_an_index_whatever_the_statistics_say() {
    let db = TestDatabase::new().await;
    partitions(&db).await;
    for statement in [
        "ALTER TABLE probe_minute_2026_11 SET (autovacuum_enabled = off)",
        // No summarization work (it counts as sequential scans) but ours.
        "ALTER INDEX probe_minute_2026_11_minute_bucket_idx SET (autosummarize = off)",
        "ANALYZE probe_minute_2026_11",
    ] {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
    let first = Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap();
    // 30 minutes of 10,000 rows.
    load_minutes(&db, first, 30, 1000).await;
    let statistics: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stats WHERE tablename = 'probe_minute_2026_11'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        statistics, 0,
        "the partition has column statistics after all"
    );
    sqlx::query("INSERT INTO derived_views_watermark (last_minute) VALUES ($1)")
        .bind(first + chrono::Duration::minutes(19))
        .execute(&db.pool)
        .await
        .unwrap();

    // The maintenance pass's preparation, as before every pass: new BRIN
    // ranges summarized (which PostgreSQL counts as sequential scans) and
    // partitions with stale statistics analyzed. On its own connection, so
    // the counters below see only the minute statements.
    let prepare = "views-prepare";
    let pool = archiver_operator::db::connect(&format!("{}?application_name={prepare}", db.url), 1)
        .await
        .unwrap();
    archiver_operator::archive::brin::summarize_before_reading(
        &pool,
        first + chrono::Duration::minutes(20),
        first + chrono::Duration::minutes(29),
    )
    .await;
    close_and_report(&db, pool, prepare).await;

    let (seq_before, index_before) = scans(&db, "probe_minute_2026_11").await;
    let name = "views-minute-statements";
    let work = archiver_operator::db::connect(&format!("{}?application_name={name}", db.url), 2)
        .await
        .unwrap();
    for m in 20..30 {
        views::apply_minute(&work, first + chrono::Duration::minutes(m), Some(SALT))
            .await
            .unwrap();
    }
    close_and_report(&db, work, name).await;
    let (seq_after, index_after) = scans(&db, "probe_minute_2026_11").await;
    assert_eq!(
        seq_after - seq_before,
        0,
        "ten minutes applied with {} sequential scans of the whole partition",
        seq_after - seq_before
    );
    assert!(
        index_after - index_before >= 20,
        "two statements per minute through an index, saw {}",
        index_after - index_before
    );
    // And they did their work: every server of every minute counted.
    let minutes: i64 = sqlx::query_scalar("SELECT sum(minutes_total)::bigint FROM probe_day")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(minutes, 10 * 2000);
    let clusters: i64 = sqlx::query_scalar("SELECT count(*) FROM suppression_clusters")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(clusters > 0);
}

/// Autosummarize of every index of the partition tree, by index name.
async fn autosummarize(db: &TestDatabase) -> BTreeMap<String, bool> {
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT t.relid::text, coalesce(c.reloptions @> ARRAY['autosummarize=on'], false) \
         FROM pg_partition_tree('probe_minute_brin_minute') t JOIN pg_class c ON c.oid = t.relid \
         WHERE t.isleaf",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// The maintenance summarizes the BRIN ranges it is about to read (a query
/// for one minute then reads about that minute's blocks), and no partition
/// index hands summarization to autovacuum's queue, which one large minute
/// overflows.
#[tokio::test]
async fn the_maintenance_summarizes_the_minute_index_itself() {
    let db = TestDatabase::new().await;
    partitions(&db).await;
    // A partition created after the migrations copies the parent's options.
    let before = autosummarize(&db).await;
    assert_eq!(before.len(), 2, "{before:?}");
    sqlx::query("ALTER TABLE probe_minute_2026_11 SET (autovacuum_enabled = off)")
        .execute(&db.pool)
        .await
        .unwrap();
    let first = Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap();
    load_minutes(&db, first, 12, 1000).await;
    sqlx::query("INSERT INTO derived_views_watermark (last_minute) VALUES ($1)")
        .bind(first - chrono::Duration::minutes(1))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at) VALUES (0, $1, 't', now())",
    )
    .bind(first + chrono::Duration::minutes(11))
    .execute(&db.pool)
    .await
    .unwrap();
    let report = maintain(&db, first + chrono::Duration::minutes(13)).await;
    assert_eq!(report.minutes.len(), 12);

    let after = autosummarize(&db).await;
    assert!(
        after.values().all(|on| !on),
        "autosummarize still on: {after:?}"
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT brin_summarize_new_values('probe_minute_2026_11_minute_bucket_idx')::bigint",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "{left} block ranges were left unsummarized");

    // One minute's query reads about one minute's blocks, not the partition.
    let pages: i64 = sqlx::query_scalar(
        "SELECT pg_relation_size('probe_minute_2026_11') / current_setting('block_size')::bigint",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    let plan: serde_json::Value = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM probe_minute \
         WHERE minute_bucket = '2026-11-20 08:06:00+00'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let plan_text = plan.to_string();
    let heap_blocks = |field: &str| -> i64 {
        plan_text
            .split(&format!("\"{field}\":"))
            .nth(1)
            .and_then(|rest| rest.split([',', '}']).next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let read = heap_blocks("Lossy Heap Blocks") + heap_blocks("Exact Heap Blocks");
    assert!(
        read > 0 && read * 4 < pages,
        "one minute of twelve read {read} of {pages} blocks: {plan_text}"
    );
}

/// Migration 0012 turns autosummarize off on the indexes of partitions that
/// exist when it runs.
#[tokio::test]
async fn migration_0012_turns_autosummarize_off_on_existing_partitions() {
    let db = TestDatabase::empty().await;
    archiver_operator::db::MIGRATOR
        .run_to(11, &db.pool)
        .await
        .unwrap();
    partitions(&db).await;
    assert!(
        autosummarize(&db).await.values().all(|on| *on),
        "before 0012 partitions copy autosummarize from the parent"
    );
    archiver_operator::db::migrate(&db.pool).await.unwrap();
    let after = autosummarize(&db).await;
    assert_eq!(after.len(), 2);
    assert!(
        after.values().all(|on| !on),
        "autosummarize still on: {after:?}"
    );
}

/// The gauge ArchiverViewsLagAboveSLO watches keeps rising while the
/// maintenance fails: it is read from derived_views_watermark after every
/// pass, not only after a successful one.
#[tokio::test]
async fn the_views_lag_gauge_rises_while_maintenance_fails() {
    let db = TestDatabase::new().await;
    partitions(&db).await;
    let mut random = Lcg(11);
    let start = Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).unwrap();
    archive_minutes(&db, &mut random, start, 5, 2).await;
    let metrics = Metrics::new();
    let now = start + chrono::Duration::minutes(6);
    views::maintain_and_report(&db.pool, Some(SALT), now, &metrics)
        .await
        .expect("a pass");
    // Minutes up to start + 4 applied: 60 s behind at start + 6.
    assert_eq!(metrics.views_lag_seconds.get(), 60);

    // The rollups cannot be written any more; the shard keeps archiving.
    sqlx::query("ALTER TABLE probe_day RENAME TO probe_day_unavailable")
        .execute(&db.pool)
        .await
        .unwrap();
    archive_minutes(&db, &mut random, start + chrono::Duration::minutes(5), 5, 2).await;
    let later = start + chrono::Duration::minutes(30);
    let failed = views::maintain_and_report(&db.pool, Some(SALT), later, &metrics).await;
    assert!(failed.is_err(), "the pass cannot write probe_day");
    assert_eq!(
        metrics.views_lag_seconds.get(),
        25 * 60,
        "the lag counts from the last minute applied"
    );
}
