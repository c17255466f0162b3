//! Attacks on "no single key holds a shard" (DESIGN §9) with real
//! PostgreSQL and Redis: keys of every Redis type under verdict names,
//! names that are not UTF-8 in each segment, huge hashes. Each must become
//! one reject (with the tenant and server its name gives, when it gives
//! them) and the minute must be archived with its good verdicts.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use archiver_operator::api::archiver_shard::Discovery;
use archiver_operator::archive::verdict::index_key;
use archiver_operator::archive::worker::{ShardSettings, Worker};
use archiver_operator::clock::ManualClock;
use archiver_operator::local_servers::RedisServer;
use archiver_operator::metrics::Metrics;
use archiver_operator::testing::{TestDatabase, redis_server};

const TENANT: Uuid = Uuid::from_u128(0xd7a1_0000_0000_4000_8000_0000_0000_0001);

fn minute() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
}

async fn setup() -> (TestDatabase, RedisServer, redis::aio::MultiplexedConnection) {
    let db = TestDatabase::new().await;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS probe_minute_2026_11 PARTITION OF probe_minute \
         FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let redis = redis_server();
    let conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    (db, redis, conn)
}

async fn drain_one_minute(db: &TestDatabase, redis: &RedisServer) {
    let at = minute() + chrono::Duration::seconds(65);
    let mut worker = Worker::connect(
        ShardSettings::new(0, "test/shard-0", Discovery::Index, at - minute()),
        "worker-attack".into(),
        db.pool.clone(),
        &redis.url(),
        Arc::new(ManualClock::new(at)),
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        worker.tick(Duration::from_secs(30)),
    )
    .await
    .expect("a tick ends")
    .expect("a tick succeeds");
    assert_eq!(
        report.archived.len(),
        1,
        "the minute is archived: {report:?}"
    );
    worker.flush_marks().await;
}

fn key(tenant: &str, server: &str, region: &str) -> Vec<u8> {
    format!(
        "verdict:{tenant}:{server}:{region}:{}",
        minute().timestamp()
    )
    .into_bytes()
}

type RejectRow = (String, String, Option<Uuid>, Option<String>, i64);

async fn rejects(db: &TestDatabase) -> Vec<RejectRow> {
    sqlx::query_as(
        "SELECT verdict_key, reason, tenant_id, server_slug, length(raw_fields::text)::bigint \
         FROM probe_minute_rejects ORDER BY verdict_key",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn rows(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn sealed_up() -> [(&'static str, &'static str); 2] {
    [("state", "up"), ("verdict_sealed", "1")]
}

/// Attack: a string, a list, a set, a sorted set and a stream under
/// verdict names (in upper-case spellings of the tenant), listed in the
/// index set beside a good verdict. Each is one `not_a_hash` reject with
/// its tenant and server; the good verdict is archived.
#[tokio::test]
async fn keys_of_every_redis_type_under_verdict_names_are_rejects_of_their_pair() {
    let (db, redis, mut conn) = setup().await;
    let upper = TENANT.to_string().to_uppercase();
    let good = key(&upper, "good", "us-east");
    let string = key(&upper, "string", "us-east");
    let list = key(&upper, "list", "us-east");
    let set = key(&upper, "set", "us-east");
    let zset = key(&upper, "zset", "us-east");
    let stream = key(&upper, "stream", "us-east");
    let mut pipe = redis::pipe();
    pipe.hset_multiple(&good, &sealed_up()).ignore();
    pipe.set(&string, "up").ignore();
    pipe.rpush(&list, "up").ignore();
    pipe.sadd(&set, "up").ignore();
    pipe.zadd(&zset, "up", 1).ignore();
    pipe.cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("state")
        .arg("up")
        .ignore();
    for k in [&good, &string, &list, &set, &zset, &stream] {
        pipe.sadd(index_key(minute()), k).ignore();
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();

    drain_one_minute(&db, &redis).await;
    assert_eq!(rows(&db).await, 1);
    let found = rejects(&db).await;
    assert_eq!(found.len(), 5, "{found:?}");
    for (name, reason, tenant, server, _) in &found {
        assert!(reason.starts_with("not_a_hash"), "{name}: {reason}");
        assert_eq!(*tenant, Some(TENANT), "{name}");
        let slug = name.split(':').nth(2).unwrap();
        assert_eq!(server.as_deref(), Some(slug));
    }
}

/// Attack: a byte that is not UTF-8 in each segment of a verdict name,
/// and index members that are no key name at all (empty, one byte 0xff).
/// Each is a reject with an escaped, printable name, attributed to the
/// tenant when the tenant segment is readable; the minute is archived.
#[tokio::test]
async fn names_that_are_not_utf8_in_any_segment_are_rejects_never_minute_errors() {
    let (db, redis, mut conn) = setup().await;
    let t = TENANT.to_string();
    let epoch = minute().timestamp().to_string();
    let good = key(&t, "good", "us-east");
    let bad_prefix = [
        b"verd\xffct:",
        t.as_bytes(),
        b":s:us-east:",
        epoch.as_bytes(),
    ]
    .concat();
    let bad_tenant = [
        b"verdict:\xff",
        &t.as_bytes()[1..],
        b":s:us-east:",
        epoch.as_bytes(),
    ]
    .concat();
    let bad_server = [
        b"verdict:",
        t.as_bytes(),
        b":s\xc3\x28:us-east:",
        epoch.as_bytes(),
    ]
    .concat();
    let bad_region = [
        b"verdict:",
        t.as_bytes(),
        b":s:us\xfe-east:",
        epoch.as_bytes(),
    ]
    .concat();
    let bad_minute = [
        b"verdict:",
        t.as_bytes(),
        b":s:us-east:",
        epoch.as_bytes(),
        b"\xff",
    ]
    .concat();
    let empty: Vec<u8> = Vec::new();
    let lone = b"\xff".to_vec();
    let names = [
        &good,
        &bad_prefix,
        &bad_tenant,
        &bad_server,
        &bad_region,
        &bad_minute,
        &empty,
        &lone,
    ];
    let mut pipe = redis::pipe();
    for name in names {
        pipe.hset_multiple(name, &sealed_up()).ignore();
        pipe.sadd(index_key(minute()), name).ignore();
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();

    drain_one_minute(&db, &redis).await;
    assert_eq!(rows(&db).await, 1);
    let found = rejects(&db).await;
    assert_eq!(found.len(), names.len() - 1, "{found:?}");
    let attributed: Vec<(&str, Option<&str>)> = found
        .iter()
        .filter(|(_, _, tenant, _, _)| *tenant == Some(TENANT))
        .map(|(name, _, _, server, _)| (name.as_str(), server.as_deref()))
        .collect();
    // The tenant segment is readable in these three; the server only where
    // it is UTF-8.
    assert_eq!(attributed.len(), 3, "{found:?}");
    for (name, server) in attributed {
        if name.contains("\\xc3(") {
            assert_eq!(server, None, "{name}");
        } else {
            assert_eq!(server, Some("s"), "{name}");
        }
    }
    assert!(found.iter().all(|(name, ..)| !name.contains('\u{fffd}')));
}

/// Attack: a hash with one 8 MiB value, and one with 20,000 fields. Each
/// is a `too_large` reject whose stored sample is bounded; the minute is
/// archived with its good verdict.
#[tokio::test]
async fn huge_hashes_are_bounded_rejects() {
    let (db, redis, mut conn) = setup().await;
    let t = TENANT.to_string();
    let good = key(&t, "good", "us-east");
    let big_value = key(&t, "big-value", "us-east");
    let many_fields = key(&t, "many-fields", "us-east");
    let mut pipe = redis::pipe();
    pipe.hset_multiple(&good, &sealed_up()).ignore();
    pipe.hset_multiple(&big_value, &sealed_up()).ignore();
    pipe.hset(&big_value, "note", "x".repeat(8 << 20)).ignore();
    pipe.hset_multiple(&many_fields, &sealed_up()).ignore();
    let fields: Vec<(String, String)> = (0..20_000)
        .map(|i| (format!("f{i}"), "v".repeat(16)))
        .collect();
    pipe.hset_multiple(&many_fields, &fields).ignore();
    for k in [&good, &big_value, &many_fields] {
        pipe.sadd(index_key(minute()), k).ignore();
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();

    drain_one_minute(&db, &redis).await;
    assert_eq!(rows(&db).await, 1);
    let found = rejects(&db).await;
    assert_eq!(found.len(), 2, "{found:?}");
    for (name, reason, tenant, _, raw_len) in &found {
        assert!(reason.starts_with("too_large"), "{name}: {reason}");
        assert_eq!(*tenant, Some(TENANT));
        assert!(
            *raw_len < 64 * 1024,
            "{name}: a sample of {raw_len} bytes is stored"
        );
    }
}

/// Attack: a key under a verdict name that is not a hash (a string here),
/// at an aligned minute long archived, never listed in that minute's
/// index set. Index discovery never reads it, so it is no reject; the
/// audit counts only hashes without `archived_at` as missed, so it is no
/// stray either: it was dropped silently before the fix. A hash in the
/// same place is counted (the control); a string the drain read and
/// rejected is not (its reject row names it).
#[tokio::test]
async fn a_non_hash_key_missed_by_index_discovery_is_reported_by_the_audit() {
    use archiver_operator::archive::stray::{AuditPace, ShardRejects, StrayKind, audit};
    let (db, redis, mut conn) = setup().await;
    let old = minute() - chrono::Duration::minutes(30);
    let stamp = old.timestamp();
    let missed_hash = format!("verdict:{TENANT}:hash:us-east:{stamp}");
    let missed_string = format!("verdict:{TENANT}:string:us-east:{stamp}");
    let rejected_string = format!("verdict:{TENANT}:rejected:us-east:{stamp}");
    sqlx::query(
        "INSERT INTO probe_minute_rejects (shard_id, verdict_key, minute_bucket, reason, tenant_id, server_slug) \
         VALUES (0, $1, $2, 'not_a_hash: WRONGTYPE', $3, 'rejected')",
    )
    .bind(&rejected_string)
    .bind(old)
    .bind(TENANT)
    .execute(&db.pool)
    .await
    .unwrap();
    redis::pipe()
        .set(&rejected_string, "up")
        .ignore()
        .hset(&missed_hash, "state", "up")
        .ignore()
        .set(&missed_string, "up")
        .ignore()
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let mut manager = redis::Client::open(redis.url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let pace = AuditPace {
        count: 100,
        pause: Duration::from_millis(1),
    };
    let rejects = ShardRejects {
        pool: &db.pool,
        shard_id: 0,
    };
    let found = audit(&mut manager, Some(minute()), pace, rejects)
        .await
        .unwrap();
    assert_eq!(
        found.by_kind.get(&StrayKind::Missed),
        Some(&2),
        "the hash and the string never read: {found:?}"
    );
}
