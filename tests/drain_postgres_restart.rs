//! PostgreSQL restarted in the middle of a tick: the minute in flight rolls
//! back, the next tick (on fresh connections) archives everything exactly once.
//! Runs on its own cluster so the restart does not disturb other tests.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use archiver_operator::api::archiver_shard::Discovery;
use archiver_operator::archive::verdict::{REGIONS, index_key, verdict_key};
use archiver_operator::archive::worker::{ShardSettings, Worker};
use archiver_operator::clock::ManualClock;
use archiver_operator::local_servers::PostgresServer;
use archiver_operator::metrics::Metrics;
use archiver_operator::testing::redis_server;

fn minute(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap() + chrono::Duration::minutes(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_tick_loses_nothing_and_duplicates_nothing() {
    // Started on this test's thread, which outlives the server.
    let mut postgres = PostgresServer::start().expect("start postgres");
    let url = postgres.url("postgres");
    let pool = archiver_operator::db::connect(&url, 5).await.unwrap();
    archiver_operator::db::migrate(&pool).await.unwrap();
    sqlx::query(
        "CREATE TABLE probe_minute_2026_11 PARTITION OF probe_minute \
         FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00')",
    )
    .execute(&pool)
    .await
    .unwrap();

    let redis = redis_server();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let minutes = 90;
    let per_minute = 200 * 5;
    for m in 0..minutes {
        let mut pipe = redis::pipe();
        for t in 0..200u128 {
            for region in REGIONS {
                let key = verdict_key(Uuid::from_u128(t + 1), "srv", region, minute(m));
                pipe.hset_multiple(&key, &[("state", "up"), ("verdict_sealed", "1")])
                    .ignore();
                pipe.sadd(index_key(minute(m)), &key).ignore();
            }
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }

    let clock = ManualClock::new(minute(minutes) + chrono::Duration::seconds(5));
    let settings = ShardSettings::new(
        7,
        "test/restart",
        Discovery::Index,
        chrono::Duration::minutes(minutes),
    );
    let mut worker = Worker::connect(
        settings,
        "w".into(),
        pool.clone(),
        &redis.url(),
        Arc::new(clock),
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap();

    let tick = tokio::spawn(async move {
        let result = worker.tick(Duration::from_secs(120)).await;
        (worker, result)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    postgres.restart().expect("restart postgres");
    let (mut worker, first) = tick.await.unwrap();
    let first_minutes = first.as_ref().map(|r| r.archived.len()).unwrap_or(0);
    assert!(
        first_minutes < minutes as usize,
        "the restart should interrupt the tick (archived {first_minutes})"
    );

    let mut archived = 0;
    for _ in 0..20 {
        match worker.tick(Duration::from_secs(120)).await {
            Ok(report) if report.archived.is_empty() && archived > 0 => break,
            Ok(report) => archived += report.archived.len(),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        rows,
        minutes * per_minute as i64,
        "every minute exactly once"
    );
    let watermark: DateTime<Utc> =
        sqlx::query_scalar("SELECT last_minute FROM archive_watermark WHERE shard_id = 7")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(watermark, minute(minutes - 1));
    pool.close().await;
}
