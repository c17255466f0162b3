//! Attack on the window bound (windows are at most `MAX_WINDOW_DAYS`,
//! 36,525 days: the CRD schema, `spec_problems` and `validate`): a window
//! above it must not reach the partition planner, enforcement, the guard or
//! the privacy text and make them panic.
//!
//! The path: the tier table *enforced* is read back from
//! `retention_enforced_policy`, which an operator version before the bound
//! accepted (and stored) without it, and which is never checked against the
//! bound again. When the live object is corrected to a valid window, the
//! shrink guard holds the correction (a shrink from millions of days to
//! 36,525 is far beyond 50%), so the stored table stays the enforced one:
//!
//! - with windows beyond PostgreSQL's first instant (about 2.45 million days
//!   before 2028), `window_start` clamps to chrono's `MIN_UTC` (year
//!   -262143), which PostgreSQL rejects: every RetentionPolicy reconcile
//!   fails ("timestamp out of range"), in and out of the enforcement window;
//! - the partition planner trusts whatever table is published and adds
//!   `Duration::days(horizon)` to a bound with `+`: above about 95 million
//!   days it panics. (Through the reconciler the table is published only
//!   after the drift count, which fails first as above, so this is the
//!   planner's own arithmetic, reached by any table published to it.)

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, TimeZone, Utc};
use kube::Resource;

use archiver_operator::api::common::{LocalObjectRef, UtcWindow};
use archiver_operator::api::retention_policy::MAX_WINDOW_DAYS;
use archiver_operator::api::{
    PartitionSchedule, PartitionScheduleSpec, RetentionPolicy, RetentionPolicySpec,
};
use archiver_operator::clock::ManualClock;
use archiver_operator::partitions::calendar::{Bounds, Month};
use archiver_operator::partitions::catalog::CatalogPartition;
use archiver_operator::partitions::plan::{DropDecision, DropInputs, plan_drops};
use archiver_operator::partitions::policy_registry::PolicyLookup;
use archiver_operator::retention::store::{self, Acceptance, AcceptedAs};
use archiver_operator::retention::tiers::{policy_hash, spec_problems};
use archiver_operator::runtime::context::Context;
use archiver_operator::runtime::reconcile::Managed;
use archiver_operator::testing::TestDatabase;

/// "Keep team forever", beyond chrono's range when added to a date.
const OLD_FOREVER_DAYS: u32 = 100_000_000;
/// "Keep team forever", inside chrono's range but before PostgreSQL's
/// first instant (4713 BC) when subtracted from 2028.
const BEFORE_POSTGRES_DAYS: u32 = 3_000_000;
/// Large, but every instant it reaches is a PostgreSQL instant.
const LARGE_DAYS: u32 = 1_000_000;

/// Outside the example's enforcement window (03:00-05:00), inside the drop
/// window of the schedule below (06:00-07:00).
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2028, 6, 10, 6, 30, 0).unwrap()
}

/// Inside the example's enforcement window.
fn in_enforcement_window() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2028, 6, 10, 3, 30, 0).unwrap()
}

fn example() -> RetentionPolicy {
    let text = include_str!("../examples/retention-policy.yaml");
    let mut policy: RetentionPolicy = serde_yaml_ng::from_str(text).expect("example parses");
    policy.meta_mut().generation = Some(1);
    policy
}

fn forever(spec: &mut RetentionPolicySpec, days: u32) {
    let team = &mut spec.tiers.team;
    team.per_minute_days = days;
    team.daily_days = days;
    team.monthly_days = days;
}

fn old_partitions() -> Vec<CatalogPartition> {
    let first = Month::containing(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
    let mut month = first;
    let mut partitions = Vec::new();
    for _ in 0..3 {
        let bounds = Bounds {
            from: month.start(),
            to: month.next().start(),
        };
        partitions.push(CatalogPartition {
            name: format!("probe_minute_{}", month.start().format("%Y_%m")),
            qualified: format!("probe_minute_{}", month.start().format("%Y_%m")),
            bounds: Some(bounds),
            bound_expression: String::new(),
            approximate_rows: None,
        });
        month = month.next();
    }
    partitions
}

/// A tier table above the bound stored by an earlier version, the live
/// object corrected to the bound and reconciled at `at` (the correction is
/// held by the shrink guard).
async fn stored_and_corrected(
    at: DateTime<Utc>,
    stored_days: u32,
) -> (TestDatabase, Context, RetentionPolicy) {
    let db = TestDatabase::new().await;
    let mut old = example();
    forever(&mut old.spec, stored_days);
    let old_hash = policy_hash(&old.spec.tiers);
    store::accept(
        &db.pool,
        &Acceptance {
            policy: "archiver/tiers",
            generation: Some(1),
            spec: &old.spec,
            policy_hash: &old_hash,
            accepted_as: AcceptedAs::FirstPolicy,
            previous_hash: None,
            changes: &[],
            guard_percent: None,
            at: at - chrono::Duration::days(30),
        },
    )
    .await
    .expect("the earlier version stored its table");
    let mut live = example();
    forever(&mut live.spec, MAX_WINDOW_DAYS);
    live.meta_mut().generation = Some(2);
    assert!(
        spec_problems(&live.spec).is_empty(),
        "{:?}",
        spec_problems(&live.spec)
    );
    let clock = ManualClock::new(at);
    let ctx = Context::new(Arc::new(clock)).with_database(db.pool.clone());
    ctx.policies
        .replace_all([("archiver/tiers".to_string(), live.spec.clone())]);
    (db, ctx, live)
}

/// Reconciles the RetentionPolicy until it asks for more than the 1 s
/// "still running" requeue; the first error is returned.
async fn reconcile_policy(live: &mut RetentionPolicy, ctx: &Context) -> Result<(), String> {
    for _ in 0..200 {
        let outcome = live.reconcile(ctx).await.map_err(|e| e.to_string())?;
        live.status = Some(outcome.status.clone());
        if outcome.requeue_after > StdDuration::from_secs(1) {
            break;
        }
    }
    Ok(())
}

/// The planner with a per-minute window above the bound (as published from
/// a stored tier table): it must answer, not panic.
#[test]
fn the_planner_answers_for_a_window_above_the_bound() {
    let mut spec = example().spec;
    forever(&mut spec, OLD_FOREVER_DAYS);
    let window = UtcWindow::parse("06:00-07:00").unwrap();
    let inputs = DropInputs {
        now: now(),
        window: &window,
        longest_contract_days: None,
    };
    let partitions = old_partitions();
    let outcome = std::panic::catch_unwind(|| plan_drops(&partitions, inputs, Some(&spec)));
    match outcome {
        Ok(candidates) => assert!(
            candidates
                .iter()
                .all(|c| c.decision == DropDecision::NotYetEligible),
            "a {OLD_FOREVER_DAYS}-day window keeps every partition: {candidates:#?}"
        ),
        Err(_) => panic!(
            "plan_drops panicked for perMinuteDays {OLD_FOREVER_DAYS} (above MAX_WINDOW_DAYS \
             {MAX_WINDOW_DAYS}) instead of keeping every partition"
        ),
    }
}

/// Held: a stored table above the bound whose instants PostgreSQL can
/// represent (1,000,000 days) keeps working while its correction is held:
/// the reconcile succeeds, the stored table is what drops are planned by,
/// and the planner keeps every partition.
#[tokio::test]
async fn a_large_stored_table_stays_enforced_while_held_and_keeps_every_partition() {
    for at in [now(), in_enforcement_window()] {
        let (db, ctx, mut live) = stored_and_corrected(at, LARGE_DAYS).await;
        reconcile_policy(&mut live, &ctx)
            .await
            .unwrap_or_else(|error| panic!("the retention reconcile at {at}: {error}"));
        let held = live
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "ShrinkHeld"))
            .map(|c| c.status.clone());
        assert_eq!(held.as_deref(), Some("True"), "{:#?}", live.status);
        let published = match ctx.enforced_policies.lookup("archiver", "tiers") {
            PolicyLookup::Found(spec) => spec,
            other => panic!("nothing published for drops: {other:?}"),
        };
        assert_eq!(published.tiers.team.per_minute_days, LARGE_DAYS);
        archiver_operator::partitions::ensure_partitions(
            &db.pool,
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap(),
            60,
            StdDuration::from_secs(1),
        )
        .await
        .expect("old partitions");
        let mut schedule = PartitionSchedule::new(
            "probe-minute",
            PartitionScheduleSpec {
                table: "probe_minute".into(),
                create_ahead_days: 7,
                drop_window: "06:00-07:00".into(),
                retention_policy_ref: LocalObjectRef {
                    name: "tiers".into(),
                },
                lock_timeout_seconds: 1,
                suspend: false,
            },
        );
        schedule.metadata.namespace = Some("archiver".into());
        schedule.metadata.generation = Some(1);
        let before = archiver_operator::partitions::catalog::read_partitions(&db.pool)
            .await
            .unwrap()
            .len();
        Managed::reconcile(&schedule, &ctx)
            .await
            .expect("the PartitionSchedule reconcile answers");
        let after = archiver_operator::partitions::catalog::read_partitions(&db.pool)
            .await
            .unwrap()
            .len();
        assert!(after >= before, "a partition was dropped at {at}");
    }
}

/// A stored table whose windows reach before PostgreSQL's first instant
/// (3,000,000 days, or 100,000,000): the suppression-history bound is
/// `window_start(as_of, dailyDays)`, documented to "keep everything", but
/// it is an instant PostgreSQL rejects ("timestamp out of range"), so every
/// reconcile fails — in the enforcement window (the history pass) and out
/// of it (the drift count) — and nothing is pruned for any tenant while the
/// correction is held. The error does not say which window is at fault.
#[tokio::test]
async fn a_stored_table_beyond_postgres_instants_does_not_break_the_reconcile() {
    for days in [BEFORE_POSTGRES_DAYS, OLD_FOREVER_DAYS] {
        for at in [in_enforcement_window(), now()] {
            let (_db, ctx, mut live) = stored_and_corrected(at, days).await;
            if let Err(error) = reconcile_policy(&mut live, &ctx).await {
                panic!(
                    "the RetentionPolicy reconcile at {at} failed with the stored table (team \
                     windows {days} days, above {MAX_WINDOW_DAYS}): {error}; expected the \
                     history and rejects bounds to saturate at PostgreSQL's first instant (keep \
                     everything, as window_start documents) or the stored table to be refused \
                     with a condition naming the window"
                );
            }
        }
    }
}

/// `plan` (the CI check of the pull request that corrects the window)
/// counts what the enforced table deletes too: with the stored table whose
/// windows reach before 4713 BC it fails with "timestamp out of range" and
/// suggests running `migrate`, instead of showing the change (and that it
/// needs the confirm-shrink annotation).
#[tokio::test]
async fn plan_of_the_correction_answers_with_a_stored_table_above_the_bound() {
    let (db, _ctx, live) = stored_and_corrected(now(), BEFORE_POSTGRES_DAYS).await;
    match archiver_operator::commands::retention::plan_of(&db.pool, &live, now()).await {
        Ok(plan) => assert!(
            plan.needs_confirmation(),
            "the correction shrinks team from {BEFORE_POSTGRES_DAYS} to {MAX_WINDOW_DAYS} days"
        ),
        Err(error) => panic!(
            "plan of the corrected policy (team windows {MAX_WINDOW_DAYS} days) against the \
             stored table (team windows {BEFORE_POSTGRES_DAYS} days) failed: {error}; expected \
             the plan, with the shrink needing confirmation"
        ),
    }
}
