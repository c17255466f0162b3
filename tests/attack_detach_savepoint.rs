//! Attacks on the detach's attempts (`removal::detach` /
//! `detach_attempt`, commit 85e9024): each attempt (SHARE lock on the
//! month, bounds re-read, guard, count, DETACH) is one savepoint rolled
//! back whole on a lost lock wait.
//!
//! Promises under attack: nothing of the drop is held during a pause, and
//! ingestion into probe_minute, retention's DELETE and billing's writes
//! never wait for more than one `lock_timeout` of ours; a month holding a
//! row inside its retention is never detached or dropped; after the
//! attempts run out the month is still attached.

use std::time::{Duration as StdDuration, Instant};

use uuid::Uuid;

use archiver_operator::partitions::PartitionError;
use archiver_operator::partitions::audit::LockDiscipline;
use archiver_operator::partitions::removal::{self, DropSettings};
use archiver_operator::testing::TestDatabase;

#[path = "common/old_month.rs"]
#[allow(dead_code)] // shared by several test binaries; each uses a part
mod old_month;
use old_month::{PARTITION, TENANT, at, drop_now, example_tiers, one_old_month};

/// `Some(true)` attached, `Some(false)` a detached plain table, `None` gone.
async fn attached(db: &TestDatabase) -> Option<bool> {
    sqlx::query_scalar("SELECT relispartition FROM pg_class WHERE oid = to_regclass($1)")
        .bind(PARTITION)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

fn spawn_drop(
    db: &TestDatabase,
    lock: LockDiscipline,
) -> tokio::task::JoinHandle<Result<removal::Dropped, PartitionError>> {
    let pool = db.pool.clone();
    tokio::spawn(async move {
        let tiers = example_tiers();
        let settings = DropSettings {
            now: drop_now(),
            lock,
            tiers: &tiers,
            actor: "attack",
        };
        removal::detach_and_drop(&pool, PARTITION, settings).await
    })
}

/// The current month (at `drop_now()`), where the drain writes.
async fn current_month(db: &TestDatabase) {
    archiver_operator::partitions::ensure_partitions(
        &db.pool,
        drop_now(),
        1,
        StdDuration::from_secs(1),
    )
    .await
    .expect("the current month");
}

/// Waits until a backend of this database waits for `mode` on `relation`.
async fn wait_for_wait_on(db: &TestDatabase, mode: &str, relation: &str) {
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = $1 \
             AND relation = to_regclass($2) \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(mode)
        .bind(relation)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            started.elapsed() < StdDuration::from_secs(20),
            "nobody waited for {mode} on {relation} within 20 s"
        );
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
}

/// The drain's insert of one current minute, timed.
async fn ingest(pool: &sqlx::PgPool, slug: &str) -> StdDuration {
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
         VALUES ($1, $2, 'us-east', $3, 'up')",
    )
    .bind(TENANT)
    .bind(slug)
    .bind(drop_now())
    .execute(pool)
    .await
    .unwrap();
    started.elapsed()
}

/// Defect: two of our lock waits, back to back, for one insert. The
/// drain's insert queues behind the DETACH's wait for ACCESS EXCLUSIVE on
/// probe_minute; the DETACH gets it late in its `lock_timeout`, and then,
/// holding it, the detach waits once more, for SHARE on the tier history
/// (billing has a write open), for up to another `lock_timeout`. The
/// insert waits for both.
#[tokio::test]
async fn ingestion_waits_for_at_most_one_lock_timeout_of_the_detach() {
    let db = TestDatabase::new().await;
    one_old_month(&db).await;
    current_month(&db).await;
    let lock = LockDiscipline {
        lock_timeout: StdDuration::from_millis(600),
        attempts: 1,
        backoff: StdDuration::from_millis(50),
    };
    // A reader of probe_minute the DETACH waits for.
    let mut reader = db.pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(&mut *reader)
        .await
        .unwrap();
    // Billing writes a tier row of another tenant, in a transaction open
    // a while.
    let mut billing = db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from) VALUES ($1, 'enterprise', $2)",
    )
    .bind(Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_0d04))
    .bind(drop_now())
    .execute(&mut *billing)
    .await
    .unwrap();
    let drop = spawn_drop(&db, lock);
    // The drop waits: for probe_minute (its DETACH) or for the tier
    // history, whichever it asks for first.
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE NOT granted \
             AND relation IN (to_regclass('probe_minute'), to_regclass('tenant_tier_history')) \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            started.elapsed() < StdDuration::from_secs(20),
            "the drop never waited"
        );
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    let ingestion = {
        let pool = db.pool.clone();
        tokio::spawn(async move { ingest(&pool, "queued").await })
    };
    // The insert queues behind the DETACH (if that is what waits); the
    // reader ends late in the DETACH's wait.
    tokio::time::sleep(StdDuration::from_millis(400)).await;
    reader.commit().await.unwrap();
    let waited = ingestion.await.unwrap();
    let outcome = drop.await.unwrap();
    billing.rollback().await.unwrap();
    assert_eq!(attached(&db).await, Some(true), "{outcome:?}");
    assert!(
        waited < lock.lock_timeout + StdDuration::from_millis(150),
        "the drain's insert into probe_minute waited {waited:?} (lock_timeout {:?}): the DETACH's \
         wait and then, holding ACCESS EXCLUSIVE on probe_minute, the tier history's; drop: \
         {outcome:?}",
        lock.lock_timeout
    );
}

/// Defect: the count that decides runs after the DETACH, holding ACCESS
/// EXCLUSIVE on probe_minute: every row of the month is counted (and every
/// tenant's tier rows read) while the drain's inserts into any month wait.
/// The wait grows with the month and the tier history, not bounded by
/// `lock_timeout`. Here 600,000 rows of 10,000 tenants in an expired month.
/// (Several workers: the drop's range computation in Rust must not stall
/// the sampling task.)
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn ingestion_does_not_wait_for_the_count_of_the_whole_month() {
    let db = TestDatabase::new().await;
    one_old_month(&db).await;
    current_month(&db).await;
    // 10,000 enterprise tenants, three tier rows each (no gap), and
    // 600,000 rows of theirs in the month, all past retention.
    sqlx::query(
        "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from, valid_to) \
         SELECT ('6f1d0000-0000-4000-8000-' || lpad(to_hex(t), 12, '0'))::uuid, 'enterprise', \
                b.valid_from, b.valid_to \
         FROM generate_series(1, 10000) t, (VALUES \
             ('2025-01-01'::timestamptz, '2025-09-01'::timestamptz), \
             ('2025-09-01', '2026-05-01'), ('2026-05-01', NULL)) b(valid_from, valid_to)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
         SELECT ('6f1d0000-0000-4000-8000-' || lpad(to_hex(1 + g % 10000), 12, '0'))::uuid, \
                'bulk', 'us-east', $1::timestamptz + (g / 10000) * interval '1 minute', 'up' \
         FROM generate_series(0, 599999) g",
    )
    .bind(at(2027, 1, 1, 0, 0))
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE probe_minute")
        .execute(&db.pool)
        .await
        .unwrap();
    let lock = LockDiscipline {
        lock_timeout: StdDuration::from_millis(100),
        attempts: 3,
        backoff: StdDuration::from_millis(50),
    };
    let drop = spawn_drop(&db, lock);
    // How long the drop holds ACCESS EXCLUSIVE on probe_minute at a
    // stretch: what an insert of the drain arriving at its start waits
    // (sampled every few milliseconds from another connection; timing
    // inserts instead would also measure CPU contention on a small test
    // machine).
    let mut longest_hold = StdDuration::ZERO;
    let mut held_since: Option<Instant> = None;
    let mut samples = 0;
    while !drop.is_finished() {
        let held: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE granted AND mode = 'AccessExclusiveLock' \
             AND relation = to_regclass('probe_minute') \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        samples += 1;
        match (held, held_since) {
            (true, None) => held_since = Some(Instant::now()),
            (true, Some(since)) => longest_hold = longest_hold.max(since.elapsed()),
            (false, _) => held_since = None,
        }
        tokio::time::sleep(StdDuration::from_millis(2)).await;
    }
    let outcome = drop.await.unwrap();
    assert!(outcome.is_ok(), "the expired month is dropped: {outcome:?}");
    assert!(
        longest_hold < lock.lock_timeout,
        "the detach held ACCESS EXCLUSIVE on probe_minute (every insert of the drain waiting) \
         for {longest_hold:?} at a stretch (lock_timeout {:?}, {samples} samples): it counted \
         the whole month under it",
        lock.lock_timeout
    );
}

/// Held or not (after the fix above moved the tier history's lock into
/// the attempt): billing's write to the tier history, issued while the
/// DETACH waits, waits for at most that one `lock_timeout`, not for the
/// retries; when the attempts run out the month is still attached and the
/// error is LockTimeout at the DETACH.
#[tokio::test]
async fn billing_waits_for_at_most_one_detach_wait_and_the_month_stays_attached() {
    let db = TestDatabase::new().await;
    one_old_month(&db).await;
    let lock = LockDiscipline {
        lock_timeout: StdDuration::from_millis(300),
        attempts: 4,
        backoff: StdDuration::from_millis(200),
    };
    // A reader of probe_minute longer than every attempt.
    let mut reader = db.pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(&mut *reader)
        .await
        .unwrap();
    let drop = spawn_drop(&db, lock);
    wait_for_wait_on(&db, "AccessExclusiveLock", "probe_minute").await;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from) VALUES ($1, 'enterprise', $2)",
    )
    .bind(Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_0f04))
    .bind(drop_now())
    .execute(&db.pool)
    .await
    .unwrap();
    let billing_wait = started.elapsed();
    let outcome = drop.await.unwrap();
    reader.commit().await.unwrap();
    assert!(
        billing_wait < lock.lock_timeout + StdDuration::from_millis(150),
        "billing's INSERT waited {billing_wait:?} (lock_timeout {:?}); drop: {outcome:?}",
        lock.lock_timeout
    );
    assert!(
        matches!(
            outcome,
            Err(PartitionError::LockTimeout {
                step: "detach",
                attempts: 4,
                ..
            })
        ),
        "{outcome:?}"
    );
    assert_eq!(attached(&db).await, Some(true));
}

/// Held or not (the cycle the tier history's lock inside the attempt
/// makes possible): a billing transaction that read probe_minute (ACCESS
/// SHARE, which the DETACH waits for) then writes a tier row (which waits
/// for the attempt's SHARE on the tier history). PostgreSQL breaks the
/// cycle at the detach's deadlock check (it waited first), the attempt is
/// rolled back whole, billing's write goes through well within one
/// `lock_timeout`, and the next attempt detaches and drops the month.
#[tokio::test]
async fn a_billing_transaction_reading_probe_minute_first_is_not_aborted() {
    let db = TestDatabase::new().await;
    one_old_month(&db).await;
    let lock = LockDiscipline {
        lock_timeout: StdDuration::from_secs(3),
        attempts: 5,
        backoff: StdDuration::from_millis(100),
    };
    let mut billing = db.pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(&mut *billing)
        .await
        .unwrap();
    let drop = spawn_drop(&db, lock);
    wait_for_wait_on(&db, "AccessExclusiveLock", "probe_minute").await;
    let started = Instant::now();
    let written = sqlx::query(
        "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from) VALUES ($1, 'enterprise', $2)",
    )
    .bind(Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_1004))
    .bind(drop_now())
    .execute(&mut *billing)
    .await;
    let billing_wait = started.elapsed();
    let committed = billing.commit().await;
    let outcome = drop.await.unwrap();
    assert!(
        written.is_ok() && committed.is_ok(),
        "billing's transaction was aborted: {written:?} {committed:?}; drop: {outcome:?}"
    );
    assert!(
        billing_wait < lock.lock_timeout,
        "billing waited {billing_wait:?}; drop: {outcome:?}"
    );
    assert!(
        matches!(&outcome, Ok(dropped) if dropped.detach_attempts >= 2),
        "{outcome:?}"
    );
    assert_eq!(attached(&db).await, None);
}

/// Held or not: a row of a tenant inside its retention inserted into the
/// month during the pause between two attempts is seen by the next
/// attempt: the month is not detached.
#[tokio::test]
async fn a_row_written_between_attempts_keeps_the_month() {
    let db = TestDatabase::new().await;
    one_old_month(&db).await;
    let kept = Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_0e04);
    // A tenant without any tier row: its rows are always inside retention.
    let mut reader = db.pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(&mut *reader)
        .await
        .unwrap();
    let lock = LockDiscipline {
        lock_timeout: StdDuration::from_millis(200),
        attempts: 20,
        backoff: StdDuration::from_millis(300),
    };
    let drop = spawn_drop(&db, lock);
    wait_for_wait_on(&db, "AccessExclusiveLock", "probe_minute").await;
    // The first attempt times out; during the pause, the insert.
    tokio::time::sleep(StdDuration::from_millis(250)).await;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
         VALUES ($1, 'late', 'us-east', $2, 'up')",
    )
    .bind(kept)
    .bind(at(2027, 1, 20, 0, 0))
    .execute(&db.pool)
    .await
    .unwrap();
    let waited = started.elapsed();
    reader.commit().await.unwrap();
    let outcome = drop.await.unwrap();
    assert!(
        matches!(outcome, Err(PartitionError::RowsInsideRetention { .. })),
        "{outcome:?}"
    );
    assert_eq!(attached(&db).await, Some(true));
    assert!(
        waited < lock.lock_timeout + StdDuration::from_millis(100),
        "the insert into the month waited {waited:?}"
    );
}

/// Held or not: the drop's backend killed (pg_terminate_backend) while
/// its DETACH waits: the drop fails, the month is still attached with its
/// row, and the next drop runs normally.
#[tokio::test]
async fn a_killed_backend_mid_attempt_leaves_the_month_attached() {
    let db = TestDatabase::new().await;
    one_old_month(&db).await;
    let mut reader = db.pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(&mut *reader)
        .await
        .unwrap();
    let lock = LockDiscipline {
        lock_timeout: StdDuration::from_millis(2000),
        attempts: 3,
        backoff: StdDuration::from_millis(50),
    };
    let drop = spawn_drop(&db, lock);
    wait_for_wait_on(&db, "AccessExclusiveLock", "probe_minute").await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_locks \
         WHERE NOT granted AND mode = 'AccessExclusiveLock' \
           AND relation = 'probe_minute'::regclass \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) k",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    let outcome = drop.await.unwrap();
    reader.commit().await.unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    assert_eq!(attached(&db).await, Some(true), "{outcome:?}");
    // Nothing left behind: the next drop (the row is past retention)
    // detaches and drops the month.
    let tiers = example_tiers();
    let settings = DropSettings {
        now: drop_now(),
        lock,
        tiers: &tiers,
        actor: "attack",
    };
    let next = removal::detach_and_drop(&db.pool, PARTITION, settings).await;
    assert!(next.is_ok(), "{next:?}");
    assert_eq!(attached(&db).await, None);
}
