//! One old month to drop, shared by the attack tests of the partition drop
//! (`attack_partition_guard_more.rs`, `attack_drop_reattach.rs`): the
//! 2027-01 partition holding one row of an enterprise tenant, judged at a
//! `drop_now()` in June 2028, and the waits those tests synchronise on.

use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use archiver_operator::api::retention_policy::{RetentionPolicy, Tiers};
use archiver_operator::partitions::PartitionError;
use archiver_operator::partitions::audit::LockDiscipline;
use archiver_operator::partitions::removal::{self, DropSettings};
use archiver_operator::testing::TestDatabase;

/// The month these tests drop.
pub const PARTITION: &str = "probe_minute_2027_01";

/// The enterprise tenant whose row the month holds.
pub const TENANT: Uuid = Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_0a04);

/// The tier windows of `examples/retention-policy.yaml`.
pub fn example_tiers() -> Tiers {
    let text = include_str!("../../examples/retention-policy.yaml");
    let policy: RetentionPolicy = serde_yaml_ng::from_str(text).expect("example parses");
    policy.spec.tiers
}

pub fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// When the drops run: the row of 2027-01-10 is 522 days old, past the
/// enterprise tier's 365 days and inside a 730-day contract.
pub fn drop_now() -> DateTime<Utc> {
    at(2028, 6, 15, 3, 30)
}

/// The 2027-01 partition with one row of an enterprise tenant (365 days):
/// past retention at `drop_now()` until billing records a 730-day contract.
pub async fn one_old_month(db: &TestDatabase) {
    one_old_month_in(&db.pool).await;
}

/// [`one_old_month`] on any pool (a private cluster of a restart test).
pub async fn one_old_month_in(pool: &PgPool) {
    archiver_operator::partitions::ensure_partitions(
        pool,
        at(2027, 1, 1, 0, 0),
        1,
        StdDuration::from_secs(1),
    )
    .await
    .expect("the 2027-01 partition");
    sqlx::query(
        "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from, valid_to) \
         VALUES ($1, 'enterprise', $2, NULL)",
    )
    .bind(TENANT)
    .bind(at(2025, 1, 1, 0, 0))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
         VALUES ($1, 'ent', 'us-east', $2, 'up')",
    )
    .bind(TENANT)
    .bind(at(2027, 1, 10, 12, 0))
    .execute(pool)
    .await
    .unwrap();
}

/// Billing records a two-year contract for the tenant (730 days, the cap).
pub async fn record_contract(db: &TestDatabase) {
    record_contract_in(&db.pool).await;
}

/// [`record_contract`] on any pool.
pub async fn record_contract_in(pool: &PgPool) {
    sqlx::query(
        "UPDATE tenant_tier_history SET contract_minute_retention_days = 730 WHERE tenant_id = $1",
    )
    .bind(TENANT)
    .execute(pool)
    .await
    .unwrap();
}

/// Waits until a backend waits for a lock of `mode` in this test's database
/// (pg_locks shows the whole cluster, shared by the tests running at once).
pub async fn wait_for_lock_wait(db: &TestDatabase, mode: &str) {
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = $1 \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(mode)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            started.elapsed() < StdDuration::from_secs(20),
            "nobody waited for a {mode} within 20 s"
        );
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
}

/// The month's bounds as the detach recorded them in its audit row (what
/// `drop_leftover` attaches a month again with).
pub fn recorded() -> serde_json::Value {
    serde_json::json!({
        "table": "probe_minute",
        "from": at(2027, 1, 1, 0, 0),
        "to": at(2027, 2, 1, 0, 0),
    })
}

/// One reconcile's finishing of the month left detached, at `drop_now()`.
pub async fn drop_leftover_with(
    db: &TestDatabase,
    lock: LockDiscipline,
) -> Result<Option<removal::Dropped>, PartitionError> {
    let tiers = example_tiers();
    let settings = DropSettings {
        now: drop_now(),
        lock,
        tiers: &tiers,
        actor: "attack",
    };
    removal::drop_leftover(&db.pool, PARTITION, &recorded(), settings).await
}

/// `Some(true)` attached, `Some(false)` a detached plain table, `None` gone.
pub async fn attached(db: &TestDatabase) -> Option<bool> {
    sqlx::query_scalar("SELECT relispartition FROM pg_class WHERE oid = to_regclass($1)")
        .bind(PARTITION)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}
