//! Attack on "partition guard = enforcement" from the side of the tier
//! table each one is given. Enforcement deletes by the table stored in
//! `retention_enforced_policy`; partition drops go by the table the
//! RetentionPolicy reconciler *published* to the registry, which happens at
//! the very end of a successful reconcile. A reconcile that accepts (and
//! stores) a new table and then fails on a later step leaves the previous
//! table published: until a reconcile succeeds, the guard judges rows by
//! windows that are no longer enforced (nor announced in the privacy text).

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, TimeZone, Utc};
use kube::Resource;
use uuid::Uuid;

use archiver_operator::api::common::LocalObjectRef;
use archiver_operator::api::{PartitionSchedule, PartitionScheduleSpec, RetentionPolicy};
use archiver_operator::clock::ManualClock;
use archiver_operator::partitions::policy_registry::PolicyLookup;
use archiver_operator::retention::store;
use archiver_operator::retention::tiers::policy_hash;
use archiver_operator::runtime::context::Context;
use archiver_operator::runtime::reconcile::Managed;
use archiver_operator::testing::TestDatabase;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn example() -> RetentionPolicy {
    let text = include_str!("../examples/retention-policy.yaml");
    let mut policy: RetentionPolicy = serde_yaml_ng::from_str(text).expect("example parses");
    policy.meta_mut().generation = Some(1);
    policy
}

const PARTITION: &str = "probe_minute_2027_05";

/// A growth of team's per-minute window (180 -> 400 days) is accepted and
/// stored, then the reconcile fails (here the drift read fails: any error
/// after the acceptance does the same). Enforcement now keeps a team row of
/// 2027-05-20 (387 days old) for 400 days; the registry still holds 180
/// days and the PartitionSchedule drops its month. Without the failure (the
/// control) generation 2 is published and the month is kept. Returns
/// whether the month is still there, the published team window and `now`.
async fn scenario(fail_after_accepting: bool) -> (bool, u32, DateTime<Utc>) {
    let db = TestDatabase::new().await;
    // 02:30: outside the enforcement window (03:00-05:00), inside the drop
    // window below; nothing is deleted by enforcement in this test.
    let now = at(2028, 6, 10, 2, 30);
    let clock = ManualClock::new(now);
    let ctx = Context::new(Arc::new(clock.clone())).with_database(db.pool.clone());
    let team_tenant = Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_0001);
    archiver_operator::partitions::ensure_partitions(
        &db.pool,
        at(2027, 5, 1, 0, 0),
        1,
        StdDuration::from_secs(1),
    )
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from) VALUES ($1, 'team', $2)",
    )
    .bind(team_tenant)
    .bind(at(2025, 1, 1, 0, 0))
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
         VALUES ($1, 'team-server', 'us-east', $2, 'up')",
    )
    .bind(team_tenant)
    .bind(at(2027, 5, 20, 12, 0))
    .execute(&db.pool)
    .await
    .unwrap();

    // Generation 1 (team 180 days) is reconciled and published.
    let mut live = example();
    ctx.policies
        .replace_all([("archiver/tiers".to_string(), live.spec.clone())]);
    let outcome = live.reconcile(&ctx).await.expect("generation 1");
    live.status = Some(outcome.status);

    // Generation 2: team keeps per-minute rows 400 days (a growth, no hold).
    let mut next = example();
    next.spec.tiers.team.per_minute_days = 400;
    next.meta_mut().generation = Some(2);
    next.status = live.status.clone();
    ctx.policies
        .replace_all([("archiver/tiers".to_string(), next.spec.clone())]);
    if fail_after_accepting {
        sqlx::query("ALTER TABLE retention_drift RENAME TO retention_drift_unavailable")
            .execute(&db.pool)
            .await
            .unwrap();
        let failed = next.reconcile(&ctx).await;
        assert!(
            failed.is_err(),
            "the reconcile was meant to fail after accepting"
        );
        sqlx::query("ALTER TABLE retention_drift_unavailable RENAME TO retention_drift")
            .execute(&db.pool)
            .await
            .unwrap();
    } else {
        next.reconcile(&ctx).await.expect("generation 2");
    }
    let stored = store::enforced_policy(&db.pool)
        .await
        .unwrap()
        .expect("a stored table");
    assert_eq!(
        stored.policy_hash,
        policy_hash(&next.spec.tiers),
        "generation 2 is the enforced table"
    );
    let published = match ctx.enforced_policies.lookup("archiver", "tiers") {
        PolicyLookup::Found(spec) => spec.tiers.team.per_minute_days,
        other => panic!("nothing published: {other:?}"),
    };

    // The PartitionSchedule reconciles before the RetentionPolicy does again.
    let mut schedule = PartitionSchedule::new(
        "probe-minute",
        PartitionScheduleSpec {
            table: "probe_minute".into(),
            create_ahead_days: 7,
            drop_window: "02:00-03:00".into(),
            retention_policy_ref: LocalObjectRef {
                name: "tiers".into(),
            },
            lock_timeout_seconds: 1,
            suspend: false,
        },
    );
    schedule.metadata.namespace = Some("archiver".into());
    schedule.metadata.generation = Some(1);
    Managed::reconcile(&schedule, &ctx)
        .await
        .expect("the PartitionSchedule reconcile");
    let still_there: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(PARTITION)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    (still_there, published, now)
}

#[tokio::test]
async fn a_table_stored_by_a_failed_reconcile_is_the_one_drops_go_by() {
    let (still_there, published, now) = scenario(true).await;
    assert!(
        still_there,
        "{PARTITION} was dropped by the published table (team perMinuteDays {published}) while \
         the stored, enforced table (generation 2, team perMinuteDays 400) keeps its team row of \
         2027-05-20 (387 days old at {now})"
    );
}

/// Held (the control): when the reconcile of generation 2 succeeds, the
/// month is kept.
#[tokio::test]
async fn a_table_published_by_a_successful_reconcile_keeps_the_month() {
    let (still_there, published, _) = scenario(false).await;
    assert_eq!(published, 400);
    assert!(
        still_there,
        "{PARTITION} dropped under team perMinuteDays 400"
    );
}
