//! Attacks on the drop's re-attach path (`removal::drop_detached`, reached
//! through `drop_leftover`) and on the range-set operations of
//! `retention::ranges`.
//!
//! Promises under attack (commit 35e5ff4 and before):
//! - a month is never left detached with rows inside retention when the
//!   drop refuses;
//! - billing's writes to `tenant_tier_history` never wait for one of the
//!   drop's lock waits, only for a count.

use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, TimeZone, Utc};
use uuid::Uuid;

use archiver_operator::partitions::PartitionError;
use archiver_operator::partitions::audit::LockDiscipline;
use archiver_operator::partitions::removal::{self, DropSettings};
use archiver_operator::retention::ranges::RangeSet;
use archiver_operator::testing::TestDatabase;

#[path = "common/old_month.rs"]
#[allow(dead_code)] // shared by several test binaries; each uses a part
mod old_month;
use old_month::{
    PARTITION, TENANT, at, attached, drop_leftover_with, drop_now, example_tiers, one_old_month,
    record_contract, recorded, wait_for_lock_wait,
};

fn lock() -> LockDiscipline {
    LockDiscipline {
        lock_timeout: StdDuration::from_millis(300),
        attempts: 8,
        backoff: StdDuration::from_millis(50),
    }
}

async fn drop_leftover(db: &TestDatabase) -> Result<Option<removal::Dropped>, PartitionError> {
    drop_leftover_with(db, lock()).await
}

async fn rows_in_partition(db: &TestDatabase) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {PARTITION}"
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// What gets in the way of the re-attach.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Obstacle {
    /// Another session holds SHARE on probe_minute (an index build, a
    /// `LOCK`, another replica's partition DDL) for longer than every retry.
    LockOnParent,
    /// A migration added a column to probe_minute while the month was
    /// detached.
    SchemaDrift,
    /// The same with a NOT NULL column and a default.
    SchemaDriftNotNull,
}

struct Scenario {
    outcome: Result<Option<removal::Dropped>, PartitionError>,
    /// How long a billing write to tenant_tier_history issued while the
    /// ATTACH waited took.
    billing_wait: Option<StdDuration>,
}

/// A month detached earlier (the drop's process died after the detach),
/// finished by `drop_leftover`: a reader of the detached table delays the
/// drop's ACCESS EXCLUSIVE lock; meanwhile billing records a contract that
/// keeps the row, so the locked count finds it and the drop must attach the
/// table again, and `obstacle` gets in the way of that ATTACH.
async fn reattach_scenario(db: &TestDatabase, obstacle: Obstacle) -> Scenario {
    one_old_month(db).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE probe_minute DETACH PARTITION {PARTITION}"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let mut reader = db.pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {PARTITION}"
    )))
    .fetch_one(&mut *reader)
    .await
    .unwrap();
    let drop = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let tiers = example_tiers();
            let settings = DropSettings {
                now: drop_now(),
                lock: lock(),
                tiers: &tiers,
                actor: "attack",
            };
            removal::drop_leftover(&pool, PARTITION, &recorded(), settings).await
        })
    };
    wait_for_lock_wait(db, "AccessExclusiveLock").await;
    record_contract(db).await;
    let mut blocker = db.pool.begin().await.unwrap();
    match obstacle {
        Obstacle::LockOnParent => {
            sqlx::query("LOCK TABLE probe_minute IN SHARE MODE")
                .execute(&mut *blocker)
                .await
                .unwrap();
        }
        Obstacle::SchemaDrift => {
            sqlx::query("ALTER TABLE probe_minute ADD COLUMN drift_note text")
                .execute(&mut *blocker)
                .await
                .unwrap();
            blocker.commit().await.unwrap();
            blocker = db.pool.begin().await.unwrap();
        }
        Obstacle::SchemaDriftNotNull => {
            sqlx::query(
                "ALTER TABLE probe_minute ADD COLUMN drift_flag boolean NOT NULL DEFAULT true",
            )
            .execute(&mut *blocker)
            .await
            .unwrap();
            blocker.commit().await.unwrap();
            blocker = db.pool.begin().await.unwrap();
        }
    }
    reader.commit().await.unwrap();
    let mut billing_wait = None;
    if obstacle == Obstacle::LockOnParent {
        // The drop holds the tier history's SHARE lock and waits for
        // SHARE UPDATE EXCLUSIVE on probe_minute (ATTACH).
        wait_for_lock_wait(db, "ShareUpdateExclusiveLock").await;
        let started = Instant::now();
        // Billing records a tier for another tenant.
        sqlx::query(
            "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from) \
             VALUES ($1, 'enterprise', $2)",
        )
        .bind(Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_0b04))
        .bind(drop_now())
        .execute(&db.pool)
        .await
        .unwrap();
        billing_wait = Some(started.elapsed());
    }
    let outcome = drop.await.unwrap();
    blocker.rollback().await.unwrap();
    Scenario {
        outcome,
        billing_wait,
    }
}

/// Defect: the ATTACH of the re-attach path loses its lock waits (another
/// session holds SHARE on probe_minute longer than every retry); the drop's
/// transaction rolls back and the month stays a detached table with a row
/// enforcement keeps. The next reconcile's `drop_leftover` refuses at its
/// first (unlocked) count and returns before anything attaches it, so the
/// month stays detached — invisible to every query of probe_minute —
/// on every later reconcile as well.
#[tokio::test]
async fn a_lock_timeout_while_attaching_again_leaves_the_month_detached_with_rows() {
    let db = TestDatabase::new().await;
    let scenario = reattach_scenario(&db, Obstacle::LockOnParent).await;
    assert!(
        scenario.outcome.is_err(),
        "the drop must refuse: {:?}",
        scenario.outcome
    );
    assert_eq!(rows_in_partition(&db).await, 1, "the row is still there");
    // The next reconcile, with nothing in the way any more.
    let next = drop_leftover(&db).await;
    assert!(
        matches!(
            next,
            Err(PartitionError::RowsInsideRetention { rows: 1, .. })
        ),
        "the next reconcile refuses: {next:?}"
    );
    assert_eq!(
        attached(&db).await,
        Some(true),
        "first drop: {:?}; next reconcile: {next:?}; the month holding a row enforcement keeps \
         must be a partition of probe_minute again, it is a detached table",
        scenario.outcome
    );
}

/// Defect: billing's INSERT into tenant_tier_history waits for the ATTACH's
/// lock waits (and the pauses between them): the SHARE lock on the tier
/// history is taken before the ATTACH and held through all its retries.
#[tokio::test]
async fn billing_does_not_wait_for_the_reattach_lock_waits() {
    let db = TestDatabase::new().await;
    let scenario = reattach_scenario(&db, Obstacle::LockOnParent).await;
    let waited = scenario.billing_wait.expect("measured");
    assert!(
        waited < lock().lock_timeout,
        "billing's INSERT into tenant_tier_history waited {waited:?} (lock_timeout {:?}): it \
         waited for the drop's ATTACH lock waits; drop outcome {:?}",
        lock().lock_timeout,
        scenario.outcome
    );
}

/// Defect (fixed: the re-attach first adds the columns probe_minute gained,
/// as probe_minute defines them): a migration added a column to
/// probe_minute while the month was detached; the re-ATTACH failed
/// ("missing column"), the month stayed a detached table holding a row
/// enforcement keeps, and the next reconcile refused at its first count
/// without saying the month is detached.
#[tokio::test]
async fn a_drifted_detached_table_is_not_left_detached_with_rows() {
    let db = TestDatabase::new().await;
    let scenario = reattach_scenario(&db, Obstacle::SchemaDrift).await;
    assert_eq!(rows_in_partition(&db).await, 1);
    let next = drop_leftover(&db).await;
    assert_eq!(
        attached(&db).await,
        Some(true),
        "first drop: {:?}; next reconcile: {next:?}; the month with a kept row is detached",
        scenario.outcome
    );
}

/// A NOT NULL column with a default, added while the month was detached:
/// the month is attached again, its row carries the default (as the
/// migration gave every attached month), and the audit names the column.
#[tokio::test]
async fn a_detached_month_gets_a_not_null_column_with_its_default_and_is_attached_again() {
    let db = TestDatabase::new().await;
    let scenario = reattach_scenario(&db, Obstacle::SchemaDriftNotNull).await;
    assert_eq!(
        attached(&db).await,
        Some(true),
        "drop outcome: {:?}",
        scenario.outcome
    );
    let flags: Vec<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT drift_flag FROM probe_minute WHERE tableoid = '{PARTITION}'::regclass"
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(flags, vec![true]);
    let added: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT payload -> 'columnsAdded' FROM operator_audit_log \
         WHERE action = 'partition-drop-abandoned' AND payload ->> 'attachedAgain' = 'true'",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    assert_eq!(added, Some(serde_json::json!(["drift_flag"])));
}

/// Defect: a month left detached by a drop that did not finish (the
/// process died after the detach committed, or the DROP lost its lock
/// waits), after which billing recorded a contract keeping its row: the
/// next reconcile's `drop_leftover` refuses at its first, unlocked count and
/// returns, so the re-attach of `drop_detached` is never reached and the
/// month stays a detached table on every reconcile.
#[tokio::test]
async fn a_leftover_with_rows_inside_retention_is_attached_again() {
    let db = TestDatabase::new().await;
    one_old_month(&db).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE probe_minute DETACH PARTITION {PARTITION}"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    record_contract(&db).await;
    let outcome = drop_leftover(&db).await;
    assert!(
        matches!(
            outcome,
            Err(PartitionError::RowsInsideRetention { rows: 1, .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(rows_in_partition(&db).await, 1);
    assert_eq!(
        attached(&db).await,
        Some(true),
        "drop_leftover refused ({outcome:?}) and left the month with a kept row detached"
    );
}

/// Held or not: the re-attach path with nothing in the way attaches the
/// month again, and the next reconcile leaves it alone; a second cycle
/// (contract removed again) then drops it, and the audit log has one intent
/// per action.
#[tokio::test]
async fn reattach_then_next_cycles_tell_a_consistent_story() {
    let db = TestDatabase::new().await;
    one_old_month(&db).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE probe_minute DETACH PARTITION {PARTITION}"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let mut reader = db.pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {PARTITION}"
    )))
    .fetch_one(&mut *reader)
    .await
    .unwrap();
    let drop = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let tiers = example_tiers();
            let settings = DropSettings {
                now: drop_now(),
                lock: lock(),
                tiers: &tiers,
                actor: "attack",
            };
            removal::drop_leftover(&pool, PARTITION, &recorded(), settings).await
        })
    };
    wait_for_lock_wait(&db, "AccessExclusiveLock").await;
    record_contract(&db).await;
    reader.commit().await.unwrap();
    let outcome = drop.await.unwrap();
    assert!(
        matches!(
            outcome,
            Err(PartitionError::RowsInsideRetention { rows: 1, .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(attached(&db).await, Some(true), "attached again");
    // Next reconcile: the leftover is attached, nothing to do.
    let next = drop_leftover(&db).await;
    assert!(matches!(next, Ok(None)), "{next:?}");
    assert_eq!(attached(&db).await, Some(true));
    // Billing removes the contract: the month is droppable again.
    sqlx::query(
        "UPDATE tenant_tier_history SET contract_minute_retention_days = NULL WHERE tenant_id = $1",
    )
    .bind(TENANT)
    .execute(&db.pool)
    .await
    .unwrap();
    let tiers = example_tiers();
    let settings = DropSettings {
        now: drop_now(),
        lock: lock(),
        tiers: &tiers,
        actor: "attack",
    };
    let dropped = removal::detach_and_drop(&db.pool, PARTITION, settings).await;
    assert!(dropped.is_ok(), "{dropped:?}");
    assert_eq!(attached(&db).await, None, "dropped");
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM operator_audit_log WHERE subject = $1 ORDER BY id")
            .bind(PARTITION)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        actions,
        [
            "partition-create",
            "partition-drop-intent",
            "partition-drop-abandoned",
            "partition-detach-intent",
            "partition-detach",
            "partition-drop-intent",
            "partition-drop",
        ],
        "audit story"
    );
}

/// Defect (fixed: each attempt's lock, verification and DETACH are one
/// savepoint, rolled back whole): the detach held SHARE on the partition
/// through every DETACH retry (the LOCK's savepoint was released into the
/// transaction; only the DETACH's own savepoint was rolled back), so a retention DELETE of the same
/// month that got its ROW EXCLUSIVE on probe_minute during a pause waits for
/// the partition, while the next DETACH attempt waits for that DELETE's lock
/// on probe_minute: a lock cycle. PostgreSQL breaks it by aborting the
/// DELETE (deadlock detected), or, when its check falls in a pause, the
/// DELETE waits for every retry of the detach.
#[tokio::test]
async fn a_retention_delete_of_the_month_does_not_deadlock_with_the_detach() {
    let db = TestDatabase::new().await;
    one_old_month(&db).await;
    // A long reader of probe_minute (ACCESS SHARE on the parent): the
    // DETACH waits for it and loses its first lock waits.
    let mut reader = db.pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(&mut *reader)
        .await
        .unwrap();
    let drop = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let tiers = example_tiers();
            let settings = DropSettings {
                now: drop_now(),
                lock: LockDiscipline {
                    lock_timeout: StdDuration::from_millis(300),
                    attempts: 12,
                    backoff: StdDuration::from_millis(100),
                },
                tiers: &tiers,
                actor: "attack",
            };
            removal::detach_and_drop(&pool, PARTITION, settings).await
        })
    };
    wait_for_lock_wait(&db, "AccessExclusiveLock").await;
    // Retention deletes the expired row of that month, as enforcement's
    // batch does, through probe_minute.
    let delete = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = sqlx::query(
                "DELETE FROM probe_minute WHERE tenant_id = $1 \
                 AND minute_bucket >= $2 AND minute_bucket < $3",
            )
            .bind(TENANT)
            .bind(at(2027, 1, 10, 0, 0))
            .bind(at(2027, 1, 11, 0, 0))
            .execute(&pool)
            .await;
            (result.map(|done| done.rows_affected()), started.elapsed())
        })
    };
    // The DELETE holds ROW EXCLUSIVE on probe_minute and waits for the
    // partition, on which the detach holds SHARE.
    // (It first queues behind the DETACH's request on probe_minute; when
    // that attempt times out, it gets probe_minute and waits for the
    // partition.)
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = 'RowExclusiveLock' \
             AND relation = to_regclass($1) \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(PARTITION)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        // Fixed: the DELETE gets the partition during the detach's pause
        // and finishes; before, it waited for the partition here.
        if waiting > 0 || delete.is_finished() {
            break;
        }
        assert!(
            started.elapsed() < StdDuration::from_secs(20),
            "the DELETE neither finished nor waited for the partition"
        );
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    reader.commit().await.unwrap();
    let (deleted, waited) = delete.await.unwrap();
    let outcome = drop.await.unwrap();
    assert!(
        matches!(deleted, Ok(1)) && waited < StdDuration::from_secs(1),
        "retention's DELETE of the month: {deleted:?} after {waited:?}; the drop: {outcome:?}"
    );
}

/// Defect: after the DETACH (ACCESS EXCLUSIVE on probe_minute, held to the
/// end of the transaction), the detach waits for its SHARE lock on
/// tenant_tier_history with retries and pauses. A billing transaction
/// holding ROW EXCLUSIVE on the tier history (an open INSERT) therefore
/// makes ingestion into probe_minute wait for every one of those lock
/// waits, not for one `lock_timeout` at most.
#[tokio::test]
async fn ingestion_does_not_wait_for_the_tier_history_lock_retries() {
    let db = TestDatabase::new().await;
    one_old_month(&db).await;
    archiver_operator::partitions::ensure_partitions(
        &db.pool,
        drop_now(),
        1,
        StdDuration::from_secs(1),
    )
    .await
    .expect("the current month");
    // Billing writes a tier row in a transaction that stays open a while.
    let mut billing = db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from) VALUES ($1, 'enterprise', $2)",
    )
    .bind(Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_0c04))
    .bind(drop_now())
    .execute(&mut *billing)
    .await
    .unwrap();
    let lock = LockDiscipline {
        lock_timeout: StdDuration::from_millis(300),
        attempts: 10,
        backoff: StdDuration::from_millis(100),
    };
    let drop = {
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
    };
    // The detach waits for SHARE on the tier history, after its DETACH.
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = 'ShareLock' \
             AND relation = to_regclass('tenant_tier_history') \
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
            "no wait for the tier history"
        );
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    // The drain writes a current minute.
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
         VALUES ($1, 'ent', 'us-east', $2, 'up')",
    )
    .bind(TENANT)
    .bind(drop_now())
    .execute(&db.pool)
    .await
    .unwrap();
    let ingestion_wait = started.elapsed();
    billing.commit().await.unwrap();
    let outcome = drop.await.unwrap();
    assert!(
        ingestion_wait < lock.lock_timeout + lock.backoff,
        "an insert of the current minute waited {ingestion_wait:?} (lock_timeout {:?}) behind \
         the detach's tier-history lock retries; drop: {outcome:?}",
        lock.lock_timeout
    );
}

/// Defect (far future only): `TIER_BOUNDS` clamps a `valid_from` after
/// 9999-12-31 down to 9999-12-31 00:00, so a tier row starting at
/// 9999-12-31 12:00 is read as covering 00:00-12:00 too. A row at 06:00 of
/// that day, in a gap no tier row covers (kept by the rule of DESIGN.md
/// section 5: time without a tier row is never expired), counts as past
/// retention for the guard (and enforcement, which reads the same clamp).
#[tokio::test]
async fn a_clamped_far_valid_from_does_not_cover_a_gap() {
    let db = TestDatabase::new().await;
    sqlx::query(
        "CREATE TABLE far_rows (id bigint NOT NULL, tenant_id uuid NOT NULL, minute_bucket timestamptz NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for (from, to) in [
        ("2020-01-01 00:00+00", Some("9999-12-31 03:00+00")),
        ("9999-12-31 12:00+00", Some("10000-01-02 00:00+00")),
    ] {
        sqlx::query(
            "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from, valid_to) \
             VALUES ($1, 'enterprise', $2::text::timestamptz, $3::text::timestamptz)",
        )
        .bind(TENANT)
        .bind(from)
        .bind(to)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO far_rows VALUES (1, $1, '9999-12-31 06:00+00'), (2, $1, '9999-12-31 02:00+00')",
    )
    .bind(TENANT)
    .execute(&db.pool)
    .await
    .unwrap();
    let now = Utc.with_ymd_and_hms(10005, 1, 1, 0, 0, 0).unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let inside = removal::rows_inside_retention(&mut conn, "far_rows", now, &example_tiers())
        .await
        .expect("the guard counts");
    // Row 2 (02:00, covered by the first tier row, 5 years past) is past
    // retention; row 1 (06:00, in the gap 03:00-12:00) is kept by the rule.
    assert_eq!(
        inside, 1,
        "the row at 9999-12-31 06:00 lies in a gap no tier row covers"
    );
}

// ------------------------------------------------------------ range sets

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn minute(n: u64) -> DateTime<Utc> {
    at(2027, 1, 1, 0, 0) + Duration::minutes(i64::try_from(n).unwrap())
}

/// A random set over `0..span` minutes and its minute-by-minute model.
/// Intervals are chosen to touch, share starts, be empty or reversed.
fn random_set(rng: &mut Rng, span: u64, count: u64) -> (RangeSet, Vec<bool>) {
    let mut set = RangeSet::new();
    let mut model = vec![false; usize::try_from(span).unwrap()];
    let mut last_end = 0;
    let mut last_start = 0;
    for _ in 0..count {
        let (a, b) = match rng.below(6) {
            0 => (last_end, last_end + rng.below(5)),
            1 => (last_start, last_start + rng.below(7)),
            2 => {
                let a = rng.below(span);
                (a, a)
            }
            3 => {
                let a = rng.below(span);
                (a, a.saturating_sub(rng.below(3)))
            }
            4 => (rng.below(span), span),
            _ => {
                let a = rng.below(span);
                (a, a + rng.below(span / 4 + 1))
            }
        };
        let b = b.min(span);
        set.insert(minute(a), minute(b));
        for m in a..b {
            model[usize::try_from(m).unwrap()] = true;
        }
        last_start = a;
        last_end = b;
    }
    (set, model)
}

fn set_of(model: &[bool]) -> RangeSet {
    let mut set = RangeSet::new();
    for (m, &inside) in model.iter().enumerate() {
        if inside {
            let m = u64::try_from(m).unwrap();
            set.insert(minute(m), minute(m + 1));
        }
    }
    set
}

/// Held: insert, union, subtract and intersect agree with a minute-by-minute
/// model on 20,000 random pairs with touching, identical, empty and reversed
/// intervals, small and large counts.
#[test]
fn range_set_operations_match_a_minute_model() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..20_000 {
        let span = 8 + rng.below(if case % 10 == 0 { 400 } else { 40 });
        let count_a = rng.below(if case % 50 == 0 { 300 } else { 12 });
        let count_b = rng.below(if case % 50 == 1 { 300 } else { 12 });
        let (a, model_a) = random_set(&mut rng, span, count_a);
        let (b, model_b) = random_set(&mut rng, span, count_b);
        assert_eq!(a, set_of(&model_a), "case {case}: insert");
        let zip = |f: fn(bool, bool) -> bool| -> Vec<bool> {
            model_a
                .iter()
                .zip(&model_b)
                .map(|(&x, &y)| f(x, y))
                .collect()
        };
        assert_eq!(
            a.union(&b),
            set_of(&zip(|x, y| x || y)),
            "case {case}: union {a:?} {b:?}"
        );
        assert_eq!(
            a.subtract(&b),
            set_of(&zip(|x, y| x && !y)),
            "case {case}: subtract {a:?} {b:?}"
        );
        assert_eq!(
            a.intersect(&b),
            set_of(&zip(|x, y| x && y)),
            "case {case}: intersect {a:?} {b:?}"
        );
    }
}
