//! Attacks on the drain's batch read path (`src/archive/redis_source.rs`:
//! discovery, the sizes script, the HGETALL pipeline) with real PostgreSQL
//! and Redis: nothing may be lost, duplicated or hold the shard, and a bad
//! key is a reject.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use archiver_operator::api::archiver_shard::Discovery;
use archiver_operator::archive::verdict::index_key;
use archiver_operator::archive::worker::{ShardSettings, TickReport, Worker};
use archiver_operator::clock::{Clock, ManualClock};
use archiver_operator::local_servers::RedisServer;
use archiver_operator::metrics::Metrics;
use archiver_operator::testing::{TestDatabase, redis_server};

const TENANT: Uuid = Uuid::from_u128(0x4ead_0000_0000_4000_8000_0000_0000_0001);

fn minute(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap() + chrono::Duration::minutes(n)
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

/// A worker whose watermark starts at minute 0, at `now`.
async fn worker(
    db: &TestDatabase,
    redis: &RedisServer,
    discovery: Discovery,
    clock: Arc<ManualClock>,
) -> Worker {
    let now = clock.now();
    Worker::connect(
        ShardSettings::new(0, "test/shard-0", discovery, now - minute(0)),
        "worker-read-path".into(),
        db.pool.clone(),
        &redis.url(),
        clock,
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap()
}

async fn tick(worker: &mut Worker) -> TickReport {
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        worker.tick(Duration::from_secs(30)),
    )
    .await
    .expect("a tick ends")
    .expect("a tick succeeds");
    worker.flush_marks().await;
    report
}

fn key(server: &str, region: &str, at: DateTime<Utc>) -> Vec<u8> {
    format!("verdict:{TENANT}:{server}:{region}:{}", at.timestamp()).into_bytes()
}

async fn put_sealed(conn: &mut redis::aio::MultiplexedConnection, key: &[u8], at: DateTime<Utc>) {
    let mut pipe = redis::pipe();
    pipe.hset_multiple(key, &[("state", "up"), ("verdict_sealed", "1")])
        .ignore();
    pipe.sadd(index_key(at), key).ignore();
    pipe.query_async::<()>(conn).await.unwrap();
}

async fn rows(db: &TestDatabase) -> Vec<(String, DateTime<Utc>)> {
    sqlx::query_as("SELECT server_slug, minute_bucket FROM probe_minute ORDER BY 2, 1")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

async fn rejects(db: &TestDatabase) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT verdict_key, split_part(reason, ':', 1) FROM probe_minute_rejects ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// Attack: under the name of a minute's index set, a producer wrote a
/// string (and, for the next minute, a list) instead of a set. SMEMBERS
/// answers WRONGTYPE; before the fix that was "Redis unavailable" on every
/// tick for `index` and `auto` discovery alike, and the shard never passed
/// the minute. Now that minute is scanned: its verdicts are archived, once.
#[tokio::test]
async fn an_index_set_of_the_wrong_type_does_not_hold_the_shard() {
    for discovery in [Discovery::Auto, Discovery::Index] {
        let (db, redis, mut conn) = setup().await;
        let first = key("web", "us-east", minute(0));
        let second = key("web", "us-east", minute(1));
        put_sealed(&mut conn, &first, minute(0)).await;
        put_sealed(&mut conn, &second, minute(1)).await;
        let mut pipe = redis::pipe();
        pipe.del(index_key(minute(0))).ignore();
        pipe.set(index_key(minute(0)), "not a set").ignore();
        pipe.del(index_key(minute(1))).ignore();
        pipe.rpush(index_key(minute(1)), &second).ignore();
        pipe.query_async::<()>(&mut conn).await.unwrap();

        let clock = Arc::new(ManualClock::new(minute(2) + chrono::Duration::seconds(5)));
        let mut worker = worker(&db, &redis, discovery, clock).await;
        let report = tick(&mut worker).await;
        assert_eq!(report.archived.len(), 2, "{discovery:?}: {report:?}");
        assert_eq!(
            rows(&db).await,
            vec![
                ("web".to_string(), minute(0)),
                ("web".to_string(), minute(1))
            ],
            "{discovery:?}"
        );
        assert_eq!(rejects(&db).await, Vec::new(), "{discovery:?}");
    }
}

/// Attack: `SCRIPT FLUSH` between ticks (as a Redis restart or a failover
/// does): the sizes script is gone from Redis's cache, EVALSHA answers
/// NOSCRIPT. The next minute is archived anyway (the script is loaded
/// again), nothing is read twice.
#[tokio::test]
async fn a_script_flush_between_ticks_is_absorbed() {
    let (db, redis, mut conn) = setup().await;
    put_sealed(&mut conn, &key("web", "us-east", minute(0)), minute(0)).await;
    let clock = Arc::new(ManualClock::new(minute(1) + chrono::Duration::seconds(5)));
    let mut worker = worker(&db, &redis, Discovery::Index, clock.clone()).await;
    assert_eq!(tick(&mut worker).await.archived.len(), 1);

    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    put_sealed(&mut conn, &key("web", "us-east", minute(1)), minute(1)).await;
    clock.set(minute(2) + chrono::Duration::seconds(5));
    let report = tick(&mut worker).await;
    assert_eq!(report.archived.len(), 1, "{report:?}");
    assert_eq!(
        rows(&db).await,
        vec![
            ("web".to_string(), minute(0)),
            ("web".to_string(), minute(1))
        ]
    );
}

/// Attack: a minute's index set lists keys that do not exist (expired,
/// evicted, or never written) beside real verdicts, more of them than one
/// read batch holds. Each missing key is one `vanished` reject, the real
/// verdicts are archived, the minute passes.
#[tokio::test]
async fn an_index_naming_missing_keys_gives_vanished_rejects_and_passes() {
    let (db, redis, mut conn) = setup().await;
    for server in ["a", "b"] {
        put_sealed(&mut conn, &key(server, "us-east", minute(0)), minute(0)).await;
    }
    let missing: Vec<Vec<u8>> = (0..2_500)
        .map(|i| key(&format!("gone-{i:04}"), "us-east", minute(0)))
        .collect();
    redis::cmd("SADD")
        .arg(index_key(minute(0)))
        .arg(&missing)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(minute(1) + chrono::Duration::seconds(5)));
    let mut worker = worker(&db, &redis, Discovery::Index, clock).await;
    let report = tick(&mut worker).await;
    assert_eq!(report.archived.len(), 1, "{report:?}");
    assert_eq!(
        rows(&db).await,
        vec![("a".to_string(), minute(0)), ("b".to_string(), minute(0))]
    );
    let found = rejects(&db).await;
    assert_eq!(found.len(), missing.len());
    assert!(
        found.iter().all(|(_, reason)| reason == "vanished"),
        "{found:?}"
    );
}
