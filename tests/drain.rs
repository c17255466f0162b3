//! The drain worker against real PostgreSQL and Redis: an oracle test over
//! several minutes of generated verdicts, and the failure cases of the
//! design (unsealed minutes, gaps, watermark drift, missing partitions,
//! two replicas, erasures racing a tick, Redis going away).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use archiver_operator::api::archiver_shard::Discovery;
use archiver_operator::archive::verdict::{REGIONS, index_key, verdict_key};
use archiver_operator::archive::worker::{MinuteOutcome, ShardSettings, WaitReason, Worker};
use archiver_operator::archive::writer::WritePath;
use archiver_operator::clock::{Clock, ManualClock};
use archiver_operator::local_servers::RedisServer;
use archiver_operator::metrics::Metrics;
use archiver_operator::testing::{TestDatabase, redis_server};

const BUDGET: Duration = Duration::from_secs(60);

fn minute(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap() + chrono::Duration::minutes(n)
}

fn tenant(n: usize) -> Uuid {
    Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_0000 + n as u128)
}

/// One row of probe_minute: (tenant, server, region, minute, state, p95).
type Row = (Uuid, String, String, DateTime<Utc>, String, Option<i32>);
/// What the fixtures say probe_minute must hold.
type Expected = BTreeSet<Row>;

struct Fixture {
    expected: Expected,
    rejected_keys: BTreeSet<String>,
    all_keys: Vec<String>,
}

/// Writes `minutes` minutes of verdicts: tenants x servers x five regions,
/// an unknown field on some, and three malformed verdicts per minute.
async fn seed(
    redis: &RedisServer,
    minutes: std::ops::Range<i64>,
    tenants: usize,
    with_index: bool,
) -> Fixture {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut fixture = Fixture {
        expected: Expected::new(),
        rejected_keys: BTreeSet::new(),
        all_keys: Vec::new(),
    };
    for m in minutes {
        let at = minute(m);
        let mut pipe = redis::pipe();
        let mut keys = Vec::new();
        for t in 0..tenants {
            for s in 0..3 {
                let server = format!("server-{s}");
                for (r, region) in REGIONS.iter().enumerate() {
                    let key = verdict_key(tenant(t), &server, region, at);
                    let state = ["up", "down", "degraded", "auth-walled", "unknown"]
                        [(t + s + r + m as usize) % 5];
                    let p95 = (t * 7 + s * 3 + r) as i32;
                    let mut fields: Vec<(&str, String)> = vec![
                        ("state", state.into()),
                        ("p95_ms", p95.to_string()),
                        ("tool_list_hash", format!("{:02x}ab", t % 256)),
                        (
                            "error_kind",
                            if state == "up" {
                                String::new()
                            } else {
                                "tls-expired".into()
                            },
                        ),
                        ("asn", "16509".into()),
                        ("registry_of_origin", "mcp.so".into()),
                        ("verdict_sealed", "1".into()),
                    ];
                    if t % 4 == 0 {
                        fields.push(("step_timings", "{\"connect\":12}".into()));
                    }
                    pipe.hset_multiple(&key, &fields).ignore();
                    fixture.expected.insert((
                        tenant(t),
                        server.clone(),
                        region.to_string(),
                        at,
                        state.into(),
                        Some(p95),
                    ));
                    keys.push(key);
                }
            }
        }
        let malformed = [
            (verdict_key(tenant(900), "typo", "us-easr", at), "up", "1"),
            (
                verdict_key(tenant(901), "slow", "us-east", at),
                "up",
                "fast",
            ),
            (
                verdict_key(tenant(902), "weird", "eu-west", at),
                "sideways",
                "3",
            ),
        ];
        for (key, state, p95) in malformed {
            pipe.hset_multiple(
                &key,
                &[("state", state), ("p95_ms", p95), ("verdict_sealed", "1")],
            )
            .ignore();
            fixture.rejected_keys.insert(key.clone());
            keys.push(key);
        }
        if with_index {
            for key in &keys {
                pipe.sadd(index_key(at), key).ignore();
            }
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
        fixture.all_keys.extend(keys);
    }
    fixture
}

async fn november_partition(db: &TestDatabase) {
    sqlx::query(
        "CREATE TABLE probe_minute_2026_11 PARTITION OF probe_minute \
         FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

fn settings(
    shard_id: i32,
    discovery: Discovery,
    first: DateTime<Utc>,
    now: DateTime<Utc>,
) -> ShardSettings {
    ShardSettings::new(
        shard_id,
        format!("test/shard-{shard_id}"),
        discovery,
        now - first,
    )
}

async fn worker(
    db: &TestDatabase,
    redis: &RedisServer,
    settings: ShardSettings,
    clock: &ManualClock,
    owner: &str,
) -> Worker {
    Worker::connect(
        settings,
        owner.into(),
        db.pool.clone(),
        &redis.url(),
        Arc::new(clock.clone()),
        Arc::new(Metrics::new()),
    )
    .await
    .expect("connect the worker")
}

async fn archived_rows(db: &TestDatabase) -> Expected {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT tenant_id, server_slug, region, minute_bucket, state, p95_ms FROM probe_minute",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

async fn watermark(db: &TestDatabase, shard: i32) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT last_minute FROM archive_watermark WHERE shard_id = $1")
        .bind(shard)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn oracle_every_valid_verdict_archived_once_every_bad_one_rejected() {
    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let redis = redis_server();
    let fixture = seed(&redis, 0..4, 12, true).await;
    let clock = ManualClock::new(minute(4) + chrono::Duration::seconds(5));
    let mut w = worker(
        &db,
        &redis,
        settings(0, Discovery::Auto, minute(0), clock.now()),
        &clock,
        "worker-a",
    )
    .await;

    let report = w.tick(BUDGET).await.expect("tick");
    assert_eq!(report.archived.len(), 4, "{report:?}");
    assert_eq!(report.stopped_at, Some(MinuteOutcome::CaughtUp));
    assert!(
        report
            .archived
            .iter()
            .all(|m| m.via == Discovery::Index && m.path == WritePath::Copy)
    );
    assert_eq!(
        archived_rows(&db).await,
        fixture.expected,
        "probe_minute differs from the fixtures"
    );
    assert_eq!(report.rows(), fixture.expected.len() as u64);

    let rejects: BTreeSet<String> =
        sqlx::query_scalar("SELECT verdict_key FROM probe_minute_rejects")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(rejects, fixture.rejected_keys);
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM probe_minute_rejects ORDER BY reason")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(reasons.iter().any(|r| r.starts_with("unknown_region")));
    assert!(reasons.iter().any(|r| r.starts_with("bad_number")));
    assert!(reasons.iter().any(|r| r.starts_with("unknown_state")));

    // Unknown fields went to extra, hashes to bytea.
    let extra: serde_json::Value = sqlx::query_scalar(
        "SELECT extra FROM probe_minute WHERE tenant_id = $1 AND server_slug = 'server-0' AND region = 'us-east' AND minute_bucket = $2",
    )
    .bind(tenant(0))
    .bind(minute(0))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        extra,
        serde_json::json!({"step_timings": "{\"connect\":12}"})
    );
    let hash: Vec<u8> =
        sqlx::query_scalar("SELECT tool_list_hash FROM probe_minute WHERE tenant_id = $1 LIMIT 1")
            .bind(tenant(3))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(hash, vec![0x03, 0xab]);
    assert_eq!(watermark(&db, 0).await, minute(3));

    // Every key carries the archived_at marker once the marker task is
    // done; a second tick changes nothing.
    w.flush_marks().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for key in fixture.all_keys.iter().step_by(7) {
        let marked: Option<String> = redis::cmd("HGET")
            .arg(key)
            .arg("archived_at")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(marked.is_some(), "{key} not marked archived");
    }
    let again = w.tick(BUDGET).await.expect("second tick");
    assert!(again.archived.is_empty());
    assert_eq!(archived_rows(&db).await.len(), fixture.expected.len());
}

#[tokio::test]
async fn discovery_by_index_and_by_scan_archive_the_same_rows() {
    let redis = redis_server();
    seed(&redis, 0..2, 6, true).await;
    let clock = ManualClock::new(minute(2) + chrono::Duration::seconds(65));
    let mut results = Vec::new();
    for discovery in [Discovery::Index, Discovery::Scan] {
        let db = TestDatabase::new().await;
        november_partition(&db).await;
        let mut w = worker(
            &db,
            &redis,
            settings(0, discovery, minute(0), clock.now()),
            &clock,
            "w",
        )
        .await;
        let report = w.tick(BUDGET).await.unwrap();
        assert!(report.archived.iter().all(|m| m.via == discovery));
        results.push(archived_rows(&db).await);
    }
    assert!(!results[0].is_empty());
    assert_eq!(results[0], results[1]);
}

#[tokio::test]
async fn an_unsealed_minute_waits_then_archives_once_sealed() {
    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let redis = redis_server();
    let fixture = seed(&redis, 0..1, 2, true).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let half_written = verdict_key(tenant(0), "server-0", "us-east", minute(0));
    redis::cmd("HSET")
        .arg(&half_written)
        .arg("verdict_sealed")
        .arg("0")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(65));
    let mut w = worker(
        &db,
        &redis,
        settings(0, Discovery::Index, minute(0), clock.now()),
        &clock,
        "w",
    )
    .await;
    let report = w.tick(BUDGET).await.unwrap();
    assert!(report.archived.is_empty());
    assert_eq!(
        report.stopped_at,
        Some(MinuteOutcome::Waiting {
            minute: minute(0),
            reason: WaitReason::Unsealed { keys: 1 }
        })
    );
    assert!(
        archived_rows(&db).await.is_empty(),
        "nothing of a half-written minute is archived"
    );
    let waiting: Option<String> =
        sqlx::query_scalar("SELECT waiting_reason FROM archive_watermark WHERE shard_id = 0")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(waiting.as_deref(), Some("unsealed"));

    redis::cmd("HSET")
        .arg(&half_written)
        .arg("verdict_sealed")
        .arg("1")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    clock.advance(chrono::Duration::seconds(30));
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(report.archived.len(), 1);
    assert_eq!(archived_rows(&db).await, fixture.expected);
}

#[tokio::test]
async fn a_gap_holds_the_watermark_until_acknowledged() {
    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let redis = redis_server();
    seed(&redis, 0..1, 2, true).await;
    seed(&redis, 2..3, 2, true).await; // minute 1 evicted
    let clock = ManualClock::new(minute(3) + chrono::Duration::seconds(65));
    let mut config = settings(0, Discovery::Auto, minute(0), clock.now());
    let mut w = worker(&db, &redis, config.clone(), &clock, "w").await;
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(report.archived.len(), 1);
    assert_eq!(
        report.stopped_at,
        Some(MinuteOutcome::Waiting {
            minute: minute(1),
            reason: WaitReason::Gap
        })
    );
    assert_eq!(watermark(&db, 0).await, minute(0));

    config.acknowledged_gaps = vec![(minute(1), minute(2), "INC-1 eviction".into())];
    let mut w = worker(&db, &redis, config, &clock, "w").await;
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(report.gaps_skipped, vec![minute(1)]);
    assert_eq!(report.archived.len(), 1);
    assert_eq!(watermark(&db, 0).await, minute(2));
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operator_audit_log WHERE action = 'gap-acknowledged'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn rows_already_present_after_watermark_drift_take_the_fallback_path() {
    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let redis = redis_server();
    let fixture = seed(&redis, 0..1, 4, true).await;
    // A failover lost the watermark commit but not some rows of the minute.
    let (t, s, r, m, state, p95) = fixture.expected.iter().next().unwrap().clone();
    sqlx::query(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state, p95_ms) VALUES ($1,$2,$3,$4,$5,$6)",
    )
    .bind(t)
    .bind(&s)
    .bind(&r)
    .bind(m)
    .bind(&state)
    .bind(p95)
    .execute(&db.pool)
    .await
    .unwrap();
    let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(65));
    let mut w = worker(
        &db,
        &redis,
        settings(0, Discovery::Index, minute(0), clock.now()),
        &clock,
        "w",
    )
    .await;
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(report.archived[0].path, WritePath::ConflictFallback);
    assert_eq!(report.archived[0].rows, fixture.expected.len() as u64 - 1);
    assert_eq!(archived_rows(&db).await, fixture.expected);
}

#[tokio::test]
async fn a_missing_partition_fails_the_minute_and_keeps_the_watermark() {
    let db = TestDatabase::new().await;
    let redis = redis_server();
    let fixture = seed(&redis, 0..1, 2, true).await;
    let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(65));
    let mut w = worker(
        &db,
        &redis,
        settings(0, Discovery::Index, minute(0), clock.now()),
        &clock,
        "w",
    )
    .await;
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(
        report.stopped_at,
        Some(MinuteOutcome::Waiting {
            minute: minute(0),
            reason: WaitReason::PartitionMissing
        })
    );
    assert_eq!(watermark(&db, 0).await, minute(-1));
    let rejects: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute_rejects")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rejects, 0, "a failed minute writes nothing at all");

    november_partition(&db).await;
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(report.archived.len(), 1);
    assert_eq!(archived_rows(&db).await, fixture.expected);
}

#[tokio::test]
async fn two_workers_on_one_shard_never_archive_the_same_minute_and_miss_none() {
    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let redis = redis_server();
    let fixture = seed(&redis, 0..12, 3, true).await;
    let clock = ManualClock::new(minute(12) + chrono::Duration::seconds(65));
    let config = settings(0, Discovery::Index, minute(0), clock.now());
    let mut a = worker(&db, &redis, config.clone(), &clock, "worker-a").await;
    let mut b = worker(&db, &redis, config, &clock, "worker-b").await;
    let mut minutes_a = Vec::new();
    let mut minutes_b = Vec::new();
    // Ticks of one minute each, interleaved and concurrent.
    for _ in 0..20 {
        let (ra, rb) = tokio::join!(a.tick(Duration::ZERO), b.tick(Duration::ZERO));
        minutes_a.extend(ra.unwrap().archived.into_iter().map(|m| m.minute));
        minutes_b.extend(rb.unwrap().archived.into_iter().map(|m| m.minute));
    }
    let set_a: BTreeSet<_> = minutes_a.iter().collect();
    let set_b: BTreeSet<_> = minutes_b.iter().collect();
    assert!(
        set_a.is_disjoint(&set_b),
        "both archived {:?}",
        set_a.intersection(&set_b).collect::<Vec<_>>()
    );
    assert_eq!(
        minutes_a.len() + minutes_b.len(),
        12,
        "a={minutes_a:?} b={minutes_b:?}"
    );
    assert_eq!(archived_rows(&db).await, fixture.expected);
}

#[tokio::test]
async fn rows_of_a_pair_erased_at_or_after_the_minute_are_not_archived() {
    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let redis = redis_server();
    let fixture = seed(&redis, 0..2, 3, true).await;
    // The erasure of tenant 1 / server-2 committed after minute 0 was read.
    sqlx::query(
        "INSERT INTO data_deletion_log (tenant_id, server_slug, deleted_at, reason, requester) \
         VALUES ($1, 'server-2', $2, 'gdpr-art17', $3)",
    )
    .bind(tenant(1))
    .bind(minute(1) + chrono::Duration::seconds(30))
    .bind(Uuid::nil())
    .execute(&db.pool)
    .await
    .unwrap();
    let clock = ManualClock::new(minute(2) + chrono::Duration::seconds(65));
    let mut w = worker(
        &db,
        &redis,
        settings(0, Discovery::Index, minute(0), clock.now()),
        &clock,
        "w",
    )
    .await;
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(
        report.archived.iter().map(|m| m.erased).sum::<usize>(),
        10,
        "5 regions x 2 minutes"
    );
    let expected: Expected = fixture
        .expected
        .into_iter()
        .filter(|(t, s, ..)| !(*t == tenant(1) && s == "server-2"))
        .collect();
    assert_eq!(archived_rows(&db).await, expected);
}

#[tokio::test]
async fn redis_going_away_holds_the_watermark() {
    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let mut redis = redis_server();
    seed(&redis, 0..1, 2, true).await;
    let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(65));
    let mut w = worker(
        &db,
        &redis,
        settings(0, Discovery::Index, minute(0), clock.now()),
        &clock,
        "w",
    )
    .await;
    redis.halt();
    let report = w
        .tick(BUDGET)
        .await
        .expect("a Redis outage is a wait, not a crash");
    match report.stopped_at {
        Some(MinuteOutcome::Waiting {
            reason: WaitReason::RedisUnavailable(_),
            ..
        }) => {}
        other => panic!("expected a Redis wait, got {other:?}"),
    }
    assert_eq!(watermark(&db, 0).await, minute(-1));
    let reason: Option<String> =
        sqlx::query_scalar("SELECT waiting_reason FROM archive_watermark WHERE shard_id = 0")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(reason.as_deref(), Some("redis-unavailable"));

    // Redis comes back (empty: no persistence): the worker reconnects by
    // itself and archives once the minute is there again.
    redis.start_again().expect("restart redis");
    let fixture = seed(&redis, 0..1, 2, true).await;
    let mut report = w.tick(BUDGET).await.expect("tick after the outage");
    for _ in 0..20 {
        if !report.archived.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        report = w.tick(BUDGET).await.expect("tick after the outage");
    }
    assert_eq!(report.archived.len(), 1, "{report:?}");
    assert_eq!(archived_rows(&db).await, fixture.expected);
}

#[tokio::test]
async fn a_minute_with_far_fewer_keys_warns_without_holding_the_watermark() {
    use archiver_operator::api::ArchiverShardStatus;
    use archiver_operator::archive::health;
    use archiver_operator::metrics::ShardLabels;

    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let redis = redis_server();
    seed(&redis, 0..1, 10, true).await; // 153 keys
    seed(&redis, 1..2, 1, true).await; // 18 keys: most of the minute evicted?
    let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(65));
    let metrics = Arc::new(Metrics::new());
    let mut w = Worker::connect(
        settings(0, Discovery::Auto, minute(0), clock.now()),
        "w".into(),
        db.pool.clone(),
        &redis.url(),
        Arc::new(clock.clone()),
        metrics.clone(),
    )
    .await
    .unwrap();
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(
        report.archived.len(),
        2,
        "a warning does not hold: {report:?}"
    );
    assert_eq!(watermark(&db, 0).await, minute(1));
    let labels = ShardLabels {
        shard: "test/shard-0".into(),
    };
    assert_eq!(metrics.key_drop_warnings.get_or_create(&labels).get(), 1);

    let shard_health = health::read(&db.pool, 0).await.unwrap().unwrap();
    let warning = shard_health
        .last_warning
        .clone()
        .expect("a warning recorded");
    assert!(
        warning.contains("has 18 keys") && warning.contains("had 153"),
        "{warning}"
    );
    let mut status = ArchiverShardStatus::default();
    archiver_operator::controllers::archiver_shard::apply_health(
        &mut status,
        &shard_health,
        120,
        Some(1),
        clock.now(),
    );
    let gap = status
        .conditions
        .iter()
        .find(|c| c.type_ == "GapDetected")
        .unwrap();
    assert_eq!(
        (gap.status.as_str(), gap.reason.as_str()),
        ("False", "FewerKeysThanBefore")
    );
    assert_eq!(gap.message, warning);

    // A full minute again clears the warning.
    seed(&redis, 2..3, 10, true).await;
    clock.set(minute(2) + chrono::Duration::seconds(65));
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(report.archived.len(), 1);
    let shard_health = health::read(&db.pool, 0).await.unwrap().unwrap();
    assert_eq!(shard_health.last_warning, None);
    assert_eq!(metrics.key_drop_warnings.get_or_create(&labels).get(), 1);
}

/// One verdict that PostgreSQL text cannot hold (bytes that are not UTF-8, a
/// NUL) or that is not a hash at all used to fail the whole minute, again
/// on every tick: a poison pill for the shard. Each is now rejected with its
/// reason and the rest of the minute is archived.
#[tokio::test]
async fn verdicts_postgres_cannot_hold_are_rejected_and_the_minute_archives() {
    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let redis = redis_server();
    let fixture = seed(&redis, 0..1, 2, true).await;
    let at = minute(0);
    let not_utf8 = verdict_key(tenant(910), "latin1", "us-east", at);
    let with_nul = verdict_key(tenant(911), "nul", "us-east", at);
    let nul_in_extra = verdict_key(tenant(912), "nul-extra", "us-east", at);
    let not_a_hash = verdict_key(tenant(913), "string", "us-east", at);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    pipe.hset(&not_utf8, "state", "down")
        .hset(&not_utf8, "error_kind", b"caf\xe9".as_slice())
        .hset(&not_utf8, "verdict_sealed", "1")
        .hset(&with_nul, "state", "down")
        .hset(&with_nul, "error_kind", "tls\0expired")
        .hset(&with_nul, "verdict_sealed", "1")
        .hset(&nul_in_extra, "state", "up")
        .hset(&nul_in_extra, "note", "a\0b")
        .hset(&nul_in_extra, "verdict_sealed", "1")
        .set(&not_a_hash, "up");
    for key in [&not_utf8, &with_nul, &nul_in_extra, &not_a_hash] {
        pipe.sadd(index_key(at), key);
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();

    let clock = ManualClock::new(minute(0) + chrono::Duration::seconds(65));
    let mut w = worker(
        &db,
        &redis,
        settings(0, Discovery::Auto, minute(0), clock.now()),
        &clock,
        "w",
    )
    .await;
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(report.archived.len(), 1, "{report:?}");
    assert_eq!(watermark(&db, 0).await, minute(0));
    assert_eq!(archived_rows(&db).await, fixture.expected);

    let rejects: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT verdict_key, reason, raw_fields FROM probe_minute_rejects ORDER BY verdict_key",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let reason_of = |key: &str| {
        rejects
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, reason, raw)| (reason.split(':').next().unwrap().to_string(), raw.clone()))
            .unwrap_or_else(|| panic!("{key} not rejected: {rejects:?}"))
    };
    assert_eq!(reason_of(&not_utf8).0, "invalid_text");
    assert_eq!(
        reason_of(&not_utf8).1["error_kind"],
        serde_json::json!("caf\u{FFFD}")
    );
    assert_eq!(reason_of(&with_nul).0, "invalid_text");
    assert_eq!(
        reason_of(&with_nul).1["error_kind"],
        serde_json::json!("tls\u{FFFD}expired")
    );
    assert_eq!(reason_of(&nul_in_extra).0, "invalid_text");
    assert_eq!(reason_of(&not_a_hash).0, "not_a_hash");
    assert_eq!(rejects.len(), fixture.rejected_keys.len() + 4);
}

// ---------------------------------------------------------------------
// Nothing holds a shard silently: unsealed timeout, oversize verdicts,
// stray keys, and Ready=False whenever the shard cannot make progress,
// each seen through the real status path (worker -> watermark row ->
// the ArchiverShard reconcile that fills the status).

mod status_path {
    use std::collections::BTreeMap;
    use std::sync::{Arc, RwLock};

    use archiver_operator::api::{ArchiverShard, ArchiverShardStatus};
    use archiver_operator::clock::ManualClock;

    use archiver_operator::runtime::config::SecretString;
    use archiver_operator::runtime::context::{Context, SecretSource};
    use archiver_operator::runtime::reconcile::{EventType, Managed, Outcome};

    use archiver_operator::testing::TestDatabase;

    /// The example shard (shard 0, namespace archiver), generation 1.
    pub fn shard() -> ArchiverShard {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/archiver-shard.yaml");
        let mut shard: ArchiverShard =
            serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        shard.metadata.generation = Some(1);
        shard
    }

    /// What the operator sees: the test database, the shard's Redis URL
    /// Secret, no worker of its own (the test drives the worker).
    pub fn context(db: &TestDatabase, redis_url: &str, clock: &ManualClock) -> Context {
        let mut secrets = BTreeMap::new();
        secrets.insert(
            ("archiver".to_string(), "redis-shard-0".to_string()),
            BTreeMap::from([("url".to_string(), SecretString::new(redis_url).into())]),
        );
        Context::new(Arc::new(clock.clone()))
            .with_database(db.pool.clone())
            .with_secrets(SecretSource::Manifests(Arc::new(RwLock::new(secrets))))
    }

    pub async fn reconcile(shard: &ArchiverShard, ctx: &Context) -> Outcome<ArchiverShardStatus> {
        shard.reconcile(ctx).await.expect("the shard reconciles")
    }

    /// (status, reason, message) of a condition.
    pub fn condition(status: &ArchiverShardStatus, type_: &str) -> (String, String, String) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition: {:?}", status.conditions));
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    /// Reasons of the Warning events.
    pub fn warnings(outcome: &Outcome<ArchiverShardStatus>) -> Vec<(String, String)> {
        outcome
            .events
            .iter()
            .filter(|e| e.type_ == EventType::Warning)
            .map(|e| (e.reason.clone(), e.note.clone()))
            .collect()
    }
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A verdict the coalescer never seals used to hold its shard forever.
/// Past spec.unsealedTimeoutSeconds (300 s by default) the sealed verdicts
/// of the minute are archived, the unsealed one is a reject
/// (`unsealed_timeout`), a counter rises and the operator raises one
/// Warning event naming how many.
#[tokio::test]
async fn a_verdict_never_sealed_is_rejected_after_the_timeout_and_the_minute_archives() {
    use archiver_operator::metrics::ShardLabels;
    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let redis = redis_server();
    let fixture = seed(&redis, 0..1, 2, true).await;
    let mut conn = redis_conn(&redis).await;
    let never_sealed = verdict_key(tenant(0), "server-0", "us-east", minute(0));
    redis::cmd("HSET")
        .arg(&never_sealed)
        .arg("verdict_sealed")
        .arg("0")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    // Within the timeout: the minute waits, nothing is archived.
    let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(299));
    let metrics = Arc::new(Metrics::new());
    let mut w = Worker::connect(
        settings(0, Discovery::Index, minute(0), clock.now()),
        "w".into(),
        db.pool.clone(),
        &redis.url(),
        Arc::new(clock.clone()),
        metrics.clone(),
    )
    .await
    .unwrap();
    let ctx = status_path::context(&db, &redis.url(), &clock);
    let mut shard = status_path::shard();
    let report = w.tick(BUDGET).await.unwrap();
    assert!(
        matches!(
            report.stopped_at,
            Some(MinuteOutcome::Waiting {
                reason: WaitReason::Unsealed { keys: 1 },
                ..
            })
        ),
        "{report:?}"
    );
    assert!(archived_rows(&db).await.is_empty());
    let outcome = status_path::reconcile(&shard, &ctx).await;
    shard.status = Some(outcome.status.clone());

    // At the timeout: archived without it; the unsealed one is a reject.
    clock.set(minute(1) + chrono::Duration::seconds(300));
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(report.archived.len(), 1, "{report:?}");
    assert_eq!(report.archived[0].unsealed_timed_out, 1);
    assert_eq!(watermark(&db, 0).await, minute(0));
    let expected: Expected = fixture
        .expected
        .iter()
        .filter(|(t, s, r, ..)| !(*t == tenant(0) && s == "server-0" && r == "us-east"))
        .cloned()
        .collect();
    assert_eq!(archived_rows(&db).await, expected);
    let (reason, raw): (String, serde_json::Value) = sqlx::query_as(
        "SELECT reason, raw_fields FROM probe_minute_rejects WHERE verdict_key = $1",
    )
    .bind(&never_sealed)
    .fetch_one(&db.pool)
    .await
    .expect("the unsealed verdict is a reject");
    assert!(reason.starts_with("unsealed_timeout:"), "{reason}");
    assert_eq!(raw["verdict_sealed"], "0");
    let labels = ShardLabels {
        shard: "test/shard-0".into(),
    };
    assert_eq!(
        metrics
            .unsealed_timeout_verdicts
            .get_or_create(&labels)
            .get(),
        1
    );
    assert!(
        metrics
            .encode()
            .contains("archiver_unsealed_timeout_verdicts_total{shard=\"test/shard-0\"} 1")
    );

    let outcome = status_path::reconcile(&shard, &ctx).await;
    assert_eq!(outcome.status.unsealed_timeout_minute, Some(minute(0)));
    assert_eq!(outcome.status.unsealed_timeout_verdicts, Some(1));
    let warnings = status_path::warnings(&outcome);
    let (_, note) = warnings
        .iter()
        .find(|(reason, _)| reason == "UnsealedTimeout")
        .unwrap_or_else(|| panic!("no UnsealedTimeout event: {warnings:?}"));
    assert!(note.starts_with("1 verdict(s) of minute"), "{note}");
    // Once per minute: the next reconcile does not repeat it.
    shard.status = Some(outcome.status.clone());
    let again = status_path::reconcile(&shard, &ctx).await;
    assert!(
        status_path::warnings(&again)
            .iter()
            .all(|(reason, _)| reason != "UnsealedTimeout")
    );
}

/// A hash over 64 KiB or 256 fields used to be read whole and archived
/// with its unknown fields in `extra`. It is now a `too_large` reject with
/// a bounded, truncated sample and its size, and the minute archives.
#[tokio::test]
async fn oversize_verdicts_are_rejected_with_a_bounded_sample() {
    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let redis = redis_server();
    let fixture = seed(&redis, 0..1, 2, true).await;
    let at = minute(0);
    let many_fields = verdict_key(tenant(920), "many", "us-east", at);
    let huge_value = verdict_key(tenant(921), "huge", "us-east", at);
    let many_bytes = verdict_key(tenant(922), "bytes", "us-east", at);
    let just_fits = verdict_key(tenant(923), "fits", "us-east", at);
    let mut conn = redis_conn(&redis).await;
    let sealed_up = [
        ("state", "up".to_string()),
        ("verdict_sealed", "1".to_string()),
    ];
    let mut pipe = redis::pipe();
    let mut fields: Vec<(String, String)> = sealed_up
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    fields.extend((0..300).map(|i| (format!("f{i}"), "x".to_string())));
    pipe.hset_multiple(&many_fields, &fields);
    pipe.hset_multiple(&huge_value, &sealed_up).hset(
        &huge_value,
        "blob",
        "y".repeat(2 * 1024 * 1024),
    );
    let mut fields: Vec<(String, String)> = sealed_up
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    fields.extend((0..200).map(|i| (format!("g{i}"), "z".repeat(400))));
    pipe.hset_multiple(&many_bytes, &fields);
    // 250 fields and ~60 KiB: within both limits, archived whole.
    let mut fields: Vec<(String, String)> = sealed_up
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    fields.extend((0..248).map(|i| (format!("h{i:03}"), "w".repeat(240))));
    pipe.hset_multiple(&just_fits, &fields);
    for key in [&many_fields, &huge_value, &many_bytes, &just_fits] {
        pipe.sadd(index_key(at), key);
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();

    let clock = ManualClock::new(minute(0) + chrono::Duration::seconds(65));
    let mut w = worker(
        &db,
        &redis,
        settings(0, Discovery::Index, minute(0), clock.now()),
        &clock,
        "w",
    )
    .await;
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(report.archived.len(), 1, "{report:?}");
    let mut expected = fixture.expected.clone();
    expected.insert((
        tenant(923),
        "fits".into(),
        "us-east".into(),
        at,
        "up".into(),
        None,
    ));
    assert_eq!(archived_rows(&db).await, expected);
    let extra: serde_json::Value =
        sqlx::query_scalar("SELECT extra FROM probe_minute WHERE tenant_id = $1")
            .bind(tenant(923))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(extra.as_object().unwrap().len(), 248);

    for (key, size) in [
        (&many_fields, "302 fields, bytes not summed"),
        (&huge_value, "3 fields, 2097178 bytes"),
        (&many_bytes, "202 fields, 80712 bytes"),
    ] {
        let (reason, raw): (String, serde_json::Value) = sqlx::query_as(
            "SELECT reason, raw_fields FROM probe_minute_rejects WHERE verdict_key = $1",
        )
        .bind(key)
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{key} not rejected: {e}"));
        assert!(reason.starts_with("too_large: "), "{reason}");
        assert!(reason.contains(size), "{key}: {reason}");
        let sample = raw.as_object().unwrap();
        assert!(
            !sample.is_empty() && sample.len() <= 16,
            "{key}: {}",
            sample.len()
        );
        for (name, value) in sample {
            assert!(
                name.len() <= 256 && value.as_str().unwrap().len() <= 256,
                "{name}"
            );
        }
    }
    let blob: serde_json::Value = sqlx::query_scalar(
        "SELECT raw_fields->'blob' FROM probe_minute_rejects WHERE verdict_key = $1",
    )
    .bind(&huge_value)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        blob,
        serde_json::json!("<2097152 bytes>"),
        "never read whole"
    );
}

/// Keys whose minute is not a multiple of 60, or that have no minute, or
/// that arrive after their minute was archived, used to be never
/// discovered and never reported. The hourly audit counts them, exports
/// the gauge and names a few (escaped) in the status.
#[tokio::test]
async fn the_hourly_audit_reports_keys_that_can_never_be_archived() {
    use archiver_operator::archive::stray::AuditPace;
    use archiver_operator::metrics::StrayKeyLabels;
    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let redis = redis_server();
    seed(&redis, 0..3, 2, true).await;
    let mut conn = redis_conn(&redis).await;
    let unaligned = format!(
        "verdict:{}:s:us-east:{}",
        tenant(0),
        minute(0).timestamp() + 30
    );
    let no_minute = format!("verdict:{}:s:us-east", tenant(0));
    let mut not_utf8 = b"verdict:\xff\xfe:s:us-east:".to_vec();
    not_utf8.extend((minute(1).timestamp() + 1).to_string().as_bytes());
    // A key of minute 0 that is not a hash, first in the minute's order:
    // rejected as not_a_hash, and no reason to miss marking the others.
    let not_a_hash = verdict_key(Uuid::nil(), "string", "us-east", minute(0));
    let mut pipe = redis::pipe();
    pipe.hset(&unaligned, "state", "up")
        .hset(&no_minute, "state", "up")
        .hset(&not_utf8, "state", "up")
        .set(&not_a_hash, "up")
        .sadd(index_key(minute(0)), &not_a_hash)
        // Not a verdict at all: never counted.
        .set("session:abc", "1");
    pipe.query_async::<()>(&mut conn).await.unwrap();

    let clock = ManualClock::new(minute(3) + chrono::Duration::seconds(5));
    let metrics = Arc::new(Metrics::new());
    let mut w = Worker::connect(
        settings(0, Discovery::Index, minute(0), clock.now()),
        "w".into(),
        db.pool.clone(),
        &redis.url(),
        Arc::new(clock.clone()),
        metrics.clone(),
    )
    .await
    .unwrap();
    w.set_audit_pace(AuditPace {
        count: 10,
        pause: Duration::from_millis(1),
    });
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(report.archived.len(), 3, "{report:?}");
    w.wait_for_audit().await;
    w.flush_marks().await;
    let gauge = |kind: &str| {
        metrics
            .stray_keys
            .get_or_create(&StrayKeyLabels {
                shard: "test/shard-0".into(),
                kind: kind.into(),
            })
            .get()
    };
    assert_eq!(
        (gauge("unaligned"), gauge("malformed"), gauge("missed")),
        (2, 1, 0)
    );

    let ctx = status_path::context(&db, &redis.url(), &clock);
    let mut shard = status_path::shard();
    let outcome = status_path::reconcile(&shard, &ctx).await;
    assert_eq!(outcome.status.stray_keys, Some(3));
    assert_eq!(outcome.status.stray_audit_time, Some(clock.now()));
    let examples = outcome.status.stray_key_examples.join(" ");
    assert!(
        examples.contains(&format!("{unaligned} (unaligned)")),
        "{examples}"
    );
    assert!(
        examples.contains(&format!("{no_minute} (malformed)")),
        "{examples}"
    );
    assert!(
        examples.contains("verdict:\\xff\\xfe:s:us-east:"),
        "{examples}"
    );
    let (on, reason, message) = status_path::condition(&outcome.status, "StrayKeys");
    assert_eq!((on.as_str(), reason.as_str()), ("True", "StrayKeysFound"));
    assert!(message.starts_with("3 key(s)"), "{message}");
    assert!(
        status_path::warnings(&outcome)
            .iter()
            .any(|(reason, _)| reason == "StrayKeysFound")
    );
    shard.status = Some(outcome.status.clone());

    // A verdict of minute 0 written after minute 0 was archived is missed.
    let late = verdict_key(tenant(50), "late", "us-east", minute(0));
    redis::cmd("HSET")
        .arg(&late)
        .arg("state")
        .arg("up")
        .arg("verdict_sealed")
        .arg("1")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    // Not before an hour has passed on the worker's clock...
    clock.advance(chrono::Duration::minutes(59));
    w.tick(BUDGET).await.unwrap();
    w.wait_for_audit().await;
    assert_eq!(gauge("missed"), 0);
    // ...then again.
    clock.advance(chrono::Duration::minutes(1));
    w.tick(BUDGET).await.unwrap();
    w.wait_for_audit().await;
    assert_eq!(
        (gauge("unaligned"), gauge("malformed"), gauge("missed")),
        (2, 1, 1)
    );
    let outcome = status_path::reconcile(&shard, &ctx).await;
    assert_eq!(outcome.status.stray_keys, Some(4));
    assert!(
        outcome
            .status
            .stray_key_examples
            .iter()
            .any(|e| e == &format!("{late} (missed)")),
        "{:?}",
        outcome.status.stray_key_examples
    );
}

/// Ready used to be True whatever the drain was doing. Each state in which
/// the shard cannot make progress is now Ready=False with its reason.
mod ready_is_false_when_the_shard_cannot_progress {
    use super::*;

    async fn ready_after_tick(
        db: &TestDatabase,
        redis_url: &str,
        clock: &ManualClock,
        w: &mut Worker,
    ) -> (String, String, String) {
        let _ = w.tick(BUDGET).await;
        let ctx = status_path::context(db, redis_url, clock);
        let outcome = status_path::reconcile(&status_path::shard(), &ctx).await;
        status_path::condition(&outcome.status, "Ready")
    }

    #[tokio::test]
    async fn a_healthy_shard_is_ready_and_one_that_stopped_ticking_is_not() {
        let db = TestDatabase::new().await;
        november_partition(&db).await;
        let redis = redis_server();
        seed(&redis, 0..1, 2, true).await;
        let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(5));
        let mut w = worker(
            &db,
            &redis,
            settings(0, Discovery::Index, minute(0), clock.now()),
            &clock,
            "w",
        )
        .await;
        let (on, reason, _) = ready_after_tick(&db, &redis.url(), &clock, &mut w).await;
        assert_eq!((on.as_str(), reason.as_str()), ("True", "Reconciled"));

        // No tick for four minutes: the worker is gone or cannot write.
        clock.advance(chrono::Duration::minutes(4));
        let ctx = status_path::context(&db, &redis.url(), &clock);
        let outcome = status_path::reconcile(&status_path::shard(), &ctx).await;
        let (on, reason, message) = status_path::condition(&outcome.status, "Ready");
        assert_eq!(
            (on.as_str(), reason.as_str()),
            ("False", "NoRecentTick"),
            "{message}"
        );
        assert!(
            status_path::warnings(&outcome)
                .iter()
                .any(|(reason, _)| reason == "NoRecentTick")
        );
    }

    #[tokio::test]
    async fn redis_on_a_closed_port() {
        let db = TestDatabase::new().await;
        november_partition(&db).await;
        let port = archiver_operator::local_servers::free_port().unwrap();
        let url = format!("redis://127.0.0.1:{port}");
        let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(5));
        let mut w = Worker::connect(
            settings(0, Discovery::Index, minute(0), clock.now()),
            "w".into(),
            db.pool.clone(),
            &url,
            Arc::new(clock.clone()),
            Arc::new(Metrics::new()),
        )
        .await
        .expect("a Redis that is down is a wait, not a worker that never starts");
        let (on, reason, message) = ready_after_tick(&db, &url, &clock, &mut w).await;
        assert_eq!(
            (on.as_str(), reason.as_str()),
            ("False", "RedisUnavailable"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn redis_stopped_after_the_worker_started() {
        let db = TestDatabase::new().await;
        november_partition(&db).await;
        let mut redis = redis_server();
        seed(&redis, 0..1, 2, true).await;
        let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(5));
        let mut w = worker(
            &db,
            &redis,
            settings(0, Discovery::Index, minute(0), clock.now()),
            &clock,
            "w",
        )
        .await;
        redis.halt();
        let (on, reason, _) = ready_after_tick(&db, &redis.url(), &clock, &mut w).await;
        assert_eq!(
            (on.as_str(), reason.as_str()),
            ("False", "RedisUnavailable")
        );
    }

    #[tokio::test]
    async fn a_postgres_error_while_writing() {
        let db = TestDatabase::new().await;
        november_partition(&db).await;
        let redis = redis_server();
        seed(&redis, 0..1, 2, true).await;
        sqlx::raw_sql(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'could not extend file' USING ERRCODE = '53100'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON probe_minute FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .execute(&db.pool)
        .await
        .unwrap();
        let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(5));
        let mut w = worker(
            &db,
            &redis,
            settings(0, Discovery::Index, minute(0), clock.now()),
            &clock,
            "w",
        )
        .await;
        let (on, reason, message) = ready_after_tick(&db, &redis.url(), &clock, &mut w).await;
        assert_eq!(
            (on.as_str(), reason.as_str()),
            ("False", "DatabaseError"),
            "{message}"
        );
        assert!(message.contains("could not extend file"), "{message}");
    }

    #[tokio::test]
    async fn a_held_gap() {
        let db = TestDatabase::new().await;
        november_partition(&db).await;
        let redis = redis_server();
        seed(&redis, 0..1, 2, true).await;
        seed(&redis, 2..3, 2, true).await;
        let clock = ManualClock::new(minute(3) + chrono::Duration::seconds(5));
        let mut w = worker(
            &db,
            &redis,
            settings(0, Discovery::Auto, minute(0), clock.now()),
            &clock,
            "w",
        )
        .await;
        let (on, reason, message) = ready_after_tick(&db, &redis.url(), &clock, &mut w).await;
        assert_eq!(
            (on.as_str(), reason.as_str()),
            ("False", "GapHeld"),
            "{message}"
        );
        assert!(message.contains("acknowledgedGaps"), "{message}");
    }

    #[tokio::test]
    async fn but_a_suspended_shard_is_not_blocked_by_what_its_last_tick_saw() {
        let db = TestDatabase::new().await;
        november_partition(&db).await;
        let redis = redis_server();
        seed(&redis, 0..1, 2, true).await;
        seed(&redis, 2..3, 2, true).await;
        let clock = ManualClock::new(minute(3) + chrono::Duration::seconds(5));
        let mut w = worker(
            &db,
            &redis,
            settings(0, Discovery::Auto, minute(0), clock.now()),
            &clock,
            "w",
        )
        .await;
        w.tick(BUDGET).await.unwrap();
        clock.advance(chrono::Duration::minutes(30));
        let mut shard = status_path::shard();
        shard.spec.suspend = true;
        let mut ctx = status_path::context(&db, &redis.url(), &clock);
        ctx.workers = archiver_operator::runtime::workers::WorkerHost::Inline;
        let outcome = status_path::reconcile(&shard, &ctx).await;
        let (on, reason, message) = status_path::condition(&outcome.status, "Ready");
        assert_eq!(
            (on.as_str(), reason.as_str()),
            ("True", "Reconciled"),
            "{message}"
        );
        assert!(message.starts_with("suspended"), "{message}");
    }

    #[tokio::test]
    async fn an_unsealed_wait() {
        let db = TestDatabase::new().await;
        november_partition(&db).await;
        let redis = redis_server();
        seed(&redis, 0..1, 2, true).await;
        let mut conn = redis_conn(&redis).await;
        redis::cmd("HSET")
            .arg(verdict_key(tenant(0), "server-0", "us-east", minute(0)))
            .arg("verdict_sealed")
            .arg("0")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(65));
        let mut w = worker(
            &db,
            &redis,
            settings(0, Discovery::Index, minute(0), clock.now()),
            &clock,
            "w",
        )
        .await;
        let (on, reason, message) = ready_after_tick(&db, &redis.url(), &clock, &mut w).await;
        assert_eq!(
            (on.as_str(), reason.as_str()),
            ("False", "UnsealedWait"),
            "{message}"
        );
        assert!(
            message.contains("waited 65 s of spec.unsealedTimeoutSeconds 300"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_missing_partition() {
        let db = TestDatabase::new().await;
        let redis = redis_server();
        seed(&redis, 0..1, 2, true).await;
        let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(5));
        let mut w = worker(
            &db,
            &redis,
            settings(0, Discovery::Index, minute(0), clock.now()),
            &clock,
            "w",
        )
        .await;
        let (on, reason, _) = ready_after_tick(&db, &redis.url(), &clock, &mut w).await;
        assert_eq!(
            (on.as_str(), reason.as_str()),
            ("False", "PartitionMissing")
        );
    }
}

/// spec.unsealedTimeoutSeconds: 300 when absent, and outside 1..=3600 a
/// problem of the spec, both by the CRD schema and its CEL rule, as
/// `validate` and every reconcile check them offline.
#[test]
fn the_unsealed_timeout_defaults_to_300_and_is_bounded() {
    use archiver_operator::runtime::reconcile::spec_problems;
    let shard = status_path::shard();
    assert!(
        spec_problems(&shard).is_empty(),
        "{:?}",
        spec_problems(&shard)
    );
    let mut yaml: serde_json::Value = serde_json::to_value(&shard).unwrap();
    yaml["spec"]
        .as_object_mut()
        .unwrap()
        .remove("unsealedTimeoutSeconds");
    let defaulted: archiver_operator::api::ArchiverShard = serde_json::from_value(yaml).unwrap();
    assert_eq!(defaulted.spec.unsealed_timeout_seconds, 300);
    assert_eq!(
        archiver_operator::controllers::archiver_shard::shard_settings(&defaulted).unsealed_timeout,
        chrono::Duration::seconds(300)
    );
    for bad in [0, 3601] {
        let mut shard = status_path::shard();
        shard.spec.unsealed_timeout_seconds = bad;
        let problems = spec_problems(&shard);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("unsealedTimeoutSeconds")),
            "{bad}: {problems:?}"
        );
    }
    // The API server checks the same bounds with the CEL rule too.
    let crd = archiver_operator::api::crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == "ArchiverShard")
        .unwrap();
    let yaml = archiver_operator::api::crd_yaml(&crd);
    assert!(
        yaml.contains("rule: self >= 1 && self <= 3600"),
        "no CEL rule for unsealedTimeoutSeconds"
    );
}

/// Writes sealed verdicts under these key names (bytes) with `state`,
/// listed in the minute's index set.
async fn put_verdicts(redis: &RedisServer, at: DateTime<Utc>, keys: &[(Vec<u8>, &str)]) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    for (key, state) in keys {
        pipe.hset_multiple(key, &[("state", *state), ("verdict_sealed", "1")])
            .ignore();
        pipe.sadd(index_key(at), key).ignore();
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();
}

/// A reject as stored: key text, reason, tenant and server columns.
type RejectRow = (String, String, Option<Uuid>, Option<String>);

async fn rejects(db: &TestDatabase) -> Vec<RejectRow> {
    sqlx::query_as(
        "SELECT verdict_key, reason, tenant_id, server_slug FROM probe_minute_rejects ORDER BY verdict_key",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// A key name that is not UTF-8, listed in the index set or found by SCAN,
/// stopped the whole shard before the fix ("Cannot convert from UTF-8").
/// Now it is a reject under an escaped name, attributed to the tenant its
/// key names, and the minute archives.
#[tokio::test]
async fn key_names_that_are_not_utf8_are_rejects_and_the_minute_archives() {
    for discovery in [Discovery::Index, Discovery::Scan] {
        let db = TestDatabase::new().await;
        november_partition(&db).await;
        let redis = redis_server();
        let fixture = seed(&redis, 0..1, 2, true).await;
        let at = minute(0);
        let epoch = at.timestamp();
        let of_tenant = [
            format!("verdict:{}:caf", tenant(920)).as_bytes(),
            b"\xe9",
            format!(":us-east:{epoch}").as_bytes(),
        ]
        .concat();
        let no_tenant = [
            b"verdict:\xff\xfe:s:us-east:".as_slice(),
            epoch.to_string().as_bytes(),
        ]
        .concat();
        put_verdicts(&redis, at, &[(of_tenant, "up"), (no_tenant, "up")]).await;

        let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(5));
        let mut w = worker(
            &db,
            &redis,
            settings(0, discovery, minute(0), clock.now()),
            &clock,
            "w",
        )
        .await;
        let report = w.tick(BUDGET).await.expect("the minute is not an error");
        assert_eq!(report.archived.len(), 1, "{discovery:?}: {report:?}");
        assert_eq!(watermark(&db, 0).await, minute(0));
        assert_eq!(archived_rows(&db).await, fixture.expected);
        let stored = rejects(&db).await;
        let of = |name: &str| {
            stored
                .iter()
                .find(|(key, ..)| key == name)
                .unwrap_or_else(|| panic!("{name} not rejected: {stored:?}"))
                .clone()
        };
        let (_, reason, owner, server) =
            of(&format!("verdict:{}:caf\\xe9:us-east:{epoch}", tenant(920)));
        assert!(reason.starts_with("invalid_text"), "{reason}");
        assert_eq!((owner, server), (Some(tenant(920)), None));
        let (_, reason, owner, _) = of(&format!("verdict:\\xff\\xfe:s:us-east:{epoch}"));
        assert!(reason.starts_with("invalid_text"), "{reason}");
        assert_eq!(owner, None);
        assert_eq!(stored.len(), fixture.rejected_keys.len() + 2);
    }
}

/// After an erasure, a late verdict of the erased pair (valid or not, in
/// any spelling of the tenant) is stored neither as a row nor as a reject.
/// Before the fix the tombstone filter dropped rows but stored rejects.
#[tokio::test]
async fn a_late_verdict_of_an_erased_pair_is_stored_neither_as_row_nor_as_reject() {
    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let redis = redis_server();
    let fixture = seed(&redis, 0..1, 2, true).await;
    let at = minute(0);
    let epoch = at.timestamp();
    let (pair_tenant, whole_tenant) = (tenant(1), tenant(930));
    let upper = pair_tenant.to_string().to_uppercase();
    let late: Vec<(Vec<u8>, &str)> = vec![
        (
            format!("verdict:{pair_tenant}:server-0:us-easr:{epoch}").into_bytes(),
            "up",
        ),
        (
            format!("verdict:{upper}:server-0:ap-southeast:{epoch}").into_bytes(),
            "sideways",
        ),
        (
            format!("verdict:{upper}:server-0:us-west:{epoch}").into_bytes(),
            "up",
        ),
        (
            format!("verdict:{whole_tenant}:any:us-east:{epoch}").into_bytes(),
            "up",
        ),
        (
            format!("verdict:{whole_tenant}:any:us-easr:{epoch}").into_bytes(),
            "up",
        ),
        (format!("verdict:{whole_tenant}").into_bytes(), "up"),
    ];
    put_verdicts(&redis, at, &late).await;
    // Another server of the erased pair's tenant is not erased: its reject stays.
    let kept = format!("verdict:{upper}:server-1:us-easr:{epoch}");
    put_verdicts(&redis, at, &[(kept.clone().into_bytes(), "up")]).await;
    sqlx::query(
        "INSERT INTO data_deletion_log (tenant_id, server_slug, deleted_at, reason, requester) \
         VALUES ($1, 'server-0', $3, 'gdpr-art17', $4), ($2, NULL, $3, 'gdpr-art17', $4)",
    )
    .bind(pair_tenant)
    .bind(whole_tenant)
    .bind(minute(0) + chrono::Duration::seconds(90))
    .bind(Uuid::nil())
    .execute(&db.pool)
    .await
    .unwrap();

    let clock = ManualClock::new(minute(1) + chrono::Duration::seconds(5));
    let mut w = worker(
        &db,
        &redis,
        settings(0, Discovery::Index, minute(0), clock.now()),
        &clock,
        "w",
    )
    .await;
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(report.archived.len(), 1, "{report:?}");
    let expected: Expected = fixture
        .expected
        .into_iter()
        .filter(|(t, s, ..)| !(*t == pair_tenant && s == "server-0"))
        .collect();
    assert_eq!(archived_rows(&db).await, expected);
    let stored = rejects(&db).await;
    let erased: Vec<&RejectRow> = stored
        .iter()
        .filter(|(key, ..)| {
            let key = key.to_lowercase();
            key.contains(&whole_tenant.to_string())
                || key.contains(&format!("{pair_tenant}:server-0:"))
        })
        .collect();
    assert!(
        erased.is_empty(),
        "rejects of erased pairs stored: {erased:?}"
    );
    let kept_row = stored
        .iter()
        .find(|(key, ..)| *key == kept)
        .unwrap_or_else(|| panic!("{kept} not rejected: {stored:?}"));
    assert_eq!(
        (kept_row.2, kept_row.3.as_deref()),
        (Some(pair_tenant), Some("server-1")),
        "a reject carries the canonical tenant and the server of its key"
    );
    assert_eq!(stored.len(), fixture.rejected_keys.len() + 1);
    assert_eq!(
        report.archived[0].erased,
        5 + late.len(),
        "5 regions of the pair's fixture rows, its 3 late verdicts, the whole tenant's 3"
    );
}

/// A Redis (or proxy) that refuses MEMORY USAGE still gets the size limits
/// right: the exact sum is taken instead, and nothing holds the minute.
#[tokio::test]
async fn the_size_limits_hold_where_memory_usage_is_refused() {
    let db = TestDatabase::new().await;
    november_partition(&db).await;
    let redis = redis_server();
    let fixture = seed(&redis, 0..1, 1, true).await;
    let at = minute(0);
    let many_bytes = verdict_key(tenant(930), "bytes", "us-east", at);
    let fits = verdict_key(tenant(931), "fits", "us-east", at);
    let mut conn = redis_conn(&redis).await;
    let mut pipe = redis::pipe();
    pipe.hset(&many_bytes, "state", "up")
        .hset(&many_bytes, "verdict_sealed", "1")
        .hset(&many_bytes, "blob", "z".repeat(70_000))
        .hset(&fits, "state", "up")
        .hset(&fits, "verdict_sealed", "1")
        .hset(&fits, "note", "n".repeat(60_000))
        .sadd(index_key(at), &many_bytes)
        .sadd(index_key(at), &fits)
        .cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-memory");
    pipe.query_async::<()>(&mut conn).await.unwrap();
    let refused: redis::RedisResult<i64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&fits)
        .query_async(&mut conn)
        .await;
    assert!(
        refused.is_err(),
        "MEMORY USAGE must be refused: {refused:?}"
    );

    let clock = ManualClock::new(minute(0) + chrono::Duration::seconds(65));
    let mut w = worker(
        &db,
        &redis,
        settings(0, Discovery::Index, minute(0), clock.now()),
        &clock,
        "w",
    )
    .await;
    let report = w.tick(BUDGET).await.unwrap();
    assert_eq!(report.archived.len(), 1, "{report:?}");
    let mut expected = fixture.expected.clone();
    expected.insert((
        tenant(931),
        "fits".into(),
        "us-east".into(),
        at,
        "up".into(),
        None,
    ));
    assert_eq!(archived_rows(&db).await, expected);
    let reason: String =
        sqlx::query_scalar("SELECT reason FROM probe_minute_rejects WHERE verdict_key = $1")
            .bind(&many_bytes)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        reason.starts_with("too_large: 3 fields, 70026 bytes"),
        "{reason}"
    );
}
