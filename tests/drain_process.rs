//! Exactly once under SIGKILL: the worker process is killed at random points
//! across many ticks and restarted; at the end every sealed minute is in
//! probe_minute exactly once and nothing else is.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use uuid::Uuid;

use archiver_operator::archive::verdict::{REGIONS, index_key, verdict_key};
use archiver_operator::clock::minute_floor;
use archiver_operator::testing::{TestDatabase, redis_server};

/// Partitions for the month of `at` and the one after (tests run on real time).
async fn partitions_around(db: &TestDatabase, at: DateTime<Utc>) {
    let month_start =
        |year: i32, month: u32| Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).unwrap();
    let next = |d: DateTime<Utc>| {
        if d.month() == 12 {
            month_start(d.year() + 1, 1)
        } else {
            month_start(d.year(), d.month() + 1)
        }
    };
    let previous = |d: DateTime<Utc>| {
        if d.month() == 1 {
            month_start(d.year() - 1, 12)
        } else {
            month_start(d.year(), d.month() - 1)
        }
    };
    let this = month_start(at.year(), at.month());
    for start in [previous(this), this, next(this)] {
        let end = next(start);
        let name = format!("probe_minute_{}", start.format("%Y_%m"));
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {name} PARTITION OF probe_minute FOR VALUES FROM ('{}') TO ('{}')",
            start.to_rfc3339(),
            end.to_rfc3339()
        )))
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

fn spawn_worker(dir: &Path, database_url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args([
            "worker",
            "--shard",
            "archiver/shard-0",
            "--manifests",
            dir.to_str().unwrap(),
        ])
        .args(["--http-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the worker")
}

/// A small deterministic generator; the seed is printed so a failure replays.
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

#[tokio::test]
async fn a_worker_killed_at_random_points_archives_every_minute_exactly_once() {
    let db = TestDatabase::new().await;
    let now = Utc::now();
    partitions_around(&db, now).await;
    let redis = redis_server();

    // 15 complete minutes of 2,000 keys each, ending two minutes ago.
    let last = minute_floor(now) - chrono::Duration::minutes(2);
    let minutes: Vec<DateTime<Utc>> = (0..15)
        .rev()
        .map(|i| last - chrono::Duration::minutes(i))
        .collect();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut expected = BTreeSet::new();
    for at in &minutes {
        let mut pipe = redis::pipe();
        for t in 0..100u128 {
            for s in 0..4 {
                for region in REGIONS {
                    let tenant = Uuid::from_u128(0xabc0_0000_0000_4000_8000_0000_0000_0000 + t);
                    let server = format!("srv-{s}");
                    let key = verdict_key(tenant, &server, region, *at);
                    pipe.hset_multiple(
                        &key,
                        &[("state", "up"), ("p95_ms", "120"), ("verdict_sealed", "1")],
                    )
                    .ignore();
                    pipe.sadd(index_key(*at), &key).ignore();
                    expected.insert((tenant, server, region.to_string(), *at));
                }
            }
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let shard = std::fs::read_to_string(examples.join("archiver-shard.yaml"))
        .unwrap()
        .replace(
            "backfillWhenNoWatermark: 1h",
            "backfillWhenNoWatermark: 16m",
        );
    std::fs::write(dir.path().join("shard.yaml"), shard).unwrap();
    let secret = std::fs::read_to_string(examples.join("secret-redis-shard-0.yaml"))
        .unwrap()
        .replace("redis://127.0.0.1:6379/0", &redis.url());
    std::fs::write(dir.path().join("secret.yaml"), secret).unwrap();

    let seed = now.timestamp_subsec_nanos() as u64;
    println!("kill schedule seed: {seed}");
    let mut random = Lcg(seed);
    for _ in 0..10 {
        let mut worker = spawn_worker(dir.path(), &db.url);
        std::thread::sleep(Duration::from_millis(150 + random.next(500)));
        worker.kill().expect("SIGKILL");
        worker.wait().unwrap();
    }

    // A last worker runs to the end: the minute after the seeded ones has no
    // keys, so the watermark stops at the last seeded minute (a gap).
    let mut worker = spawn_worker(dir.path(), &db.url);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let watermark: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT last_minute FROM archive_watermark WHERE shard_id = 0")
                .fetch_optional(&db.pool)
                .await
                .unwrap();
        if watermark == Some(last) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watermark stuck at {watermark:?}, expected {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worker.kill().unwrap();
    worker.wait().unwrap();

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        count as usize,
        expected.len(),
        "every sealed verdict exactly once"
    );
    let rows: Vec<(Uuid, String, String, DateTime<Utc>)> =
        sqlx::query_as("SELECT tenant_id, server_slug, region, minute_bucket FROM probe_minute")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let archived: BTreeSet<_> = rows.into_iter().collect();
    assert_eq!(archived, expected);
}
