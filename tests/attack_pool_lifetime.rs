//! Attacks on the pool's connection lifetime (`db::CONNECTION_LIFETIME`,
//! commit 75d2098): every pooled PostgreSQL connection is closed and
//! replaced after 5 minutes, a transaction in flight is never cut, session
//! state never leaks, and the leader's own connection (with its session
//! advisory lock) is not pooled and not affected.
//!
//! There is no seam to shorten the production pool's lifetime
//! (`db::connect` sets [`db::CONNECTION_LIFETIME`] itself), so the tests
//! that need a replacement within seconds build a replica of that pool
//! (same maximum size, acquire timeout, and a lifetime of a few hundred
//! milliseconds). The replica lacks `db::connect`'s private `after_release`
//! hook (it closes a connection released inside a transaction); in sqlx
//! 0.9 (`PoolConnection::return_to_pool`) the lifetime is checked BEFORE
//! that hook, and a connection past its lifetime is closed without it, so
//! the hook does not change what these tests observe. The production pool
//! itself is checked for its configured lifetime.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use archiver_operator::db;
use archiver_operator::runtime::leader::postgres_advisory_lock;
use archiver_operator::testing::TestDatabase;
use archiver_operator::views;

/// A pool built as `db::connect` builds it, but with `lifetime`.
async fn replica_pool(url: &str, max_connections: u32, lifetime: Duration) -> PgPool {
    let options: PgConnectOptions = url.parse().expect("the test URL parses");
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .max_lifetime(lifetime)
        .connect_with(options)
        .await
        .expect("connect the replica pool")
}

async fn backend_pid(pool: &PgPool) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("ask the backend pid")
}

/// Held or not: the production pool replaces its connections after
/// `CONNECTION_LIFETIME` (5 minutes); sqlx's reaper of idle connections
/// runs every min(lifetime, idle timeout), so an idle connection is closed
/// at most one reaper period after its lifetime.
#[tokio::test]
async fn the_production_pool_has_the_five_minute_lifetime() {
    let db = TestDatabase::new().await;
    assert_eq!(db::CONNECTION_LIFETIME, Duration::from_secs(300));
    let options = db.pool.options();
    assert_eq!(options.get_max_lifetime(), Some(db::CONNECTION_LIFETIME));
    assert_eq!(options.get_idle_timeout(), Some(Duration::from_secs(600)));
    assert_eq!(options.get_acquire_timeout(), Duration::from_secs(10));
}

/// Held or not: a transaction that lasts three lifetimes is not cut (its
/// connection is checked only when released); it commits every row, its
/// connection is replaced when released, and its `SET LOCAL` and its
/// session temp table (`ON COMMIT DELETE ROWS`, as the writer's staging
/// table) do not reach the next connection, on which the writer's
/// `CREATE TEMP TABLE IF NOT EXISTS` works again.
#[tokio::test]
async fn a_transaction_longer_than_the_lifetime_completes_and_is_replaced_after() {
    let db = TestDatabase::new().await;
    let lifetime = Duration::from_millis(300);
    let pool = replica_pool(&db.url, 1, lifetime).await;
    sqlx::query("CREATE TABLE lifetime_probe (n int)")
        .execute(&pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let pid_in_transaction: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    for statement in [
        "SET LOCAL lock_timeout = '1ms'",
        "SET LOCAL enable_seqscan = off",
        "CREATE TEMP TABLE IF NOT EXISTS staging (n int) ON COMMIT DELETE ROWS",
        "INSERT INTO lifetime_probe VALUES (1)",
    ] {
        sqlx::query(statement).execute(&mut *tx).await.unwrap();
    }
    tokio::time::sleep(lifetime * 3).await;
    sqlx::query("INSERT INTO lifetime_probe VALUES (2)")
        .execute(&mut *tx)
        .await
        .expect("the transaction survives past the lifetime");
    let same: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        same, pid_in_transaction,
        "the connection changed mid-transaction"
    );
    tx.commit().await.expect("commit after the lifetime");

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM lifetime_probe")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 2);
    let next = backend_pid(&pool).await;
    assert_ne!(next, pid_in_transaction, "the old connection was kept");
    let (lock_timeout, seqscan): (String, String) =
        sqlx::query_as("SELECT current_setting('lock_timeout'), current_setting('enable_seqscan')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((lock_timeout.as_str(), seqscan.as_str()), ("0", "on"));
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("CREATE TEMP TABLE IF NOT EXISTS staging (n int) ON COMMIT DELETE ROWS")
        .execute(&mut *tx)
        .await
        .expect("the staging table is created again on the new connection");
    tx.commit().await.unwrap();
}

/// Held or not: the plan check (`SET LOCAL enable_seqscan`, `enable_sort`)
/// run on connections replaced between runs keeps giving the same answer,
/// and leaves no setting behind on any connection of the production pool.
#[tokio::test]
async fn the_plan_check_across_replacements_leaks_no_setting() {
    let db = TestDatabase::new().await;
    let lifetime = Duration::from_millis(200);
    let pool = replica_pool(&db.url, 2, lifetime).await;
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let found = views::check_alert_query_plan(&pool, Utc::now())
            .await
            .expect("the plan check runs");
        assert_eq!(found.problem, None, "{found:?}");
        pids.insert(backend_pid(&pool).await);
        tokio::time::sleep(lifetime * 2).await;
    }
    assert!(pids.len() >= 3, "connections were not replaced: {pids:?}");

    for _ in 0..3 {
        views::check_alert_query_plan(&db.pool, Utc::now())
            .await
            .expect("the plan check runs");
    }
    // Every connection the production pool holds, at once.
    let mut held = Vec::new();
    for _ in 0..db.pool.options().get_max_connections() {
        held.push(db.pool.acquire().await.expect("acquire"));
    }
    for conn in &mut held {
        let (seqscan, sort): (String, String) = sqlx::query_as(
            "SELECT current_setting('enable_seqscan'), current_setting('enable_sort')",
        )
        .fetch_one(&mut **conn)
        .await
        .unwrap();
        assert_eq!((seqscan.as_str(), sort.as_str()), ("on", "on"));
    }
}

/// Held or not: the leader's session advisory lock lives on its own
/// connection; while pooled connections are replaced several times over,
/// the lock's holder stays the same backend, is none of the pooled ones,
/// and the process keeps leading.
#[tokio::test]
async fn the_leader_lock_is_not_on_a_replaced_connection() {
    let db = TestDatabase::new().await;
    let key = 0x6c69_6665_7469_6d65;
    let (leadership, task) = postgres_advisory_lock(db.url.clone(), key, Duration::from_millis(50));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !leadership.is_leader() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let holder = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND classid::bigint = ($1 >> 32) AND objid::bigint = ($1 & 4294967295)",
        )
        .bind(key)
        .fetch_one(&db.pool)
        .await
        .expect("the leader's lock is held")
    };
    let leader_pid = holder().await;
    let lifetime = Duration::from_millis(200);
    let pool = replica_pool(&db.url, 1, lifetime).await;
    let mut pooled = std::collections::BTreeSet::new();
    for _ in 0..5 {
        pooled.insert(backend_pid(&pool).await);
        tokio::time::sleep(lifetime * 2).await;
    }
    assert!(
        pooled.len() >= 4,
        "pooled connections were not replaced: {pooled:?}"
    );
    assert!(!pooled.contains(&leader_pid));
    assert_eq!(holder().await, leader_pid, "the leader's lock moved");
    assert!(leadership.is_leader());
    task.abort();
}
