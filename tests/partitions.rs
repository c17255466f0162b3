//! PartitionSchedule against real PostgreSQL: calendar math over every day
//! of 2027-2029 (leap day, month ends, year ends), creation ahead of need,
//! drops only behind every row's retention, only inside the window, never
//! the current or a future month, and never blocking ingestion for longer
//! than lock_timeout.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use uuid::Uuid;

use archiver_operator::api::common::{LocalObjectRef, UtcWindow};
use archiver_operator::api::{
    PartitionSchedule, PartitionScheduleSpec, PartitionScheduleStatus, RetentionPolicy,
    RetentionPolicySpec,
};
use archiver_operator::clock::ManualClock;
use archiver_operator::metrics::Metrics;
use archiver_operator::partitions::calendar::{Bounds, Month, required_months};
use archiver_operator::partitions::catalog::{self, CatalogPartition};
use archiver_operator::partitions::plan::{
    DropDecision, DropInputs, is_protected, plan_drops, retention_horizon,
};
use archiver_operator::partitions::removal::{self, DropSettings};
use archiver_operator::partitions::{PartitionError, ensure_partitions};
use archiver_operator::runtime::context::Context;
use archiver_operator::runtime::reconcile::{EventType, Managed, Outcome};
use archiver_operator::testing::TestDatabase;

// ---------------------------------------------------------------- helpers

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// Every day of 2027, 2028 (leap) and 2029.
fn days_2027_to_2029() -> impl Iterator<Item = NaiveDate> {
    let first = NaiveDate::from_ymd_opt(2027, 1, 1).unwrap();
    let last = NaiveDate::from_ymd_opt(2029, 12, 31).unwrap();
    first.iter_days().take_while(move |d| *d <= last)
}

fn instant(day: NaiveDate, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(h, mi, s).unwrap())
}

/// Independent oracle: the (year, month) of every day from `now` to
/// `now + ahead_days`, stepping one calendar day at a time.
fn oracle_months(now: DateTime<Utc>, ahead_days: u32) -> Vec<(i32, u32)> {
    let end = (now + chrono::Duration::days(i64::from(ahead_days))).date_naive();
    let mut months = Vec::new();
    let mut day = now.date_naive();
    loop {
        let ym = (day.year(), day.month());
        if months.last() != Some(&ym) {
            months.push(ym);
        }
        if day >= end {
            return months;
        }
        day = day.succ_opt().unwrap();
    }
}

/// Independent oracle: days in a month by counting them.
fn oracle_days_in_month(year: i32, month: u32) -> i64 {
    NaiveDate::from_ymd_opt(year, month, 1)
        .unwrap()
        .iter_days()
        .take_while(|d| d.month() == month)
        .count() as i64
}

fn example_policy() -> RetentionPolicySpec {
    let text = include_str!("../examples/retention-policy.yaml");
    let policy: RetentionPolicy = serde_yaml_ng::from_str(text).expect("example parses");
    policy.spec
}

/// The example tiers with the enterprise cap changed.
fn policy_with_cap(cap: u32) -> RetentionPolicySpec {
    let mut policy = example_policy();
    policy.tiers.enterprise.contractual_cap_days = Some(cap);
    policy
}

fn tenant(n: u128) -> Uuid {
    Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_0000 + n)
}

async fn insert_row(pool: &sqlx::PgPool, tenant: Uuid, server: &str, minute: DateTime<Utc>) {
    sqlx::query(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
         VALUES ($1, $2, 'us-east', $3, 'up')",
    )
    .bind(tenant)
    .bind(server)
    .bind(minute)
    .execute(pool)
    .await
    .expect("insert a row");
}

async fn set_tier(
    pool: &sqlx::PgPool,
    tenant: Uuid,
    tier: &str,
    from: DateTime<Utc>,
    contract_days: Option<i32>,
) {
    sqlx::query(
        "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from, contract_minute_retention_days) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(tenant)
    .bind(tier)
    .bind(from)
    .bind(contract_days)
    .execute(pool)
    .await
    .expect("insert a tier row");
}

async fn partition_names(pool: &sqlx::PgPool) -> BTreeSet<String> {
    catalog::read_partitions(pool)
        .await
        .expect("read the catalog")
        .into_iter()
        .map(|p| p.name)
        .collect()
}

async fn audit_count(pool: &sqlx::PgPool, action: &str, subject: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM operator_audit_log WHERE action = $1 AND subject = $2")
        .bind(action)
        .bind(subject)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn condition<'a>(status: &'a PartitionScheduleStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:#?}"))
}

fn names(months: &[(i32, u32)]) -> BTreeSet<String> {
    months
        .iter()
        .map(|(y, m)| format!("probe_minute_{y:04}_{m:02}"))
        .collect()
}

/// A schedule, its context and clock, reconciled through `Managed`.
struct Harness {
    db: TestDatabase,
    clock: ManualClock,
    ctx: Context,
    metrics: Arc<Metrics>,
    schedule: PartitionSchedule,
    namespace: String,
}

impl Harness {
    async fn new(namespace: &str, start: DateTime<Utc>, lock_timeout_seconds: u32) -> Self {
        let db = TestDatabase::new().await;
        let clock = ManualClock::new(start);
        let metrics = Arc::new(Metrics::new());
        let ctx = Context::new(Arc::new(clock.clone()))
            .with_database(db.pool.clone())
            .with_metrics(metrics.clone());
        let mut schedule = PartitionSchedule::new(
            "probe-minute",
            PartitionScheduleSpec {
                table: "probe_minute".into(),
                create_ahead_days: 7,
                drop_window: "03:00-04:00".into(),
                retention_policy_ref: LocalObjectRef {
                    name: "tiers".into(),
                },
                lock_timeout_seconds,
                suspend: false,
            },
        );
        schedule.metadata.namespace = Some(namespace.to_string());
        schedule.metadata.generation = Some(1);
        Self {
            db,
            clock,
            ctx,
            metrics,
            schedule,
            namespace: namespace.to_string(),
        }
    }

    fn pool(&self) -> &sqlx::PgPool {
        &self.db.pool
    }

    /// What the RetentionPolicy side does for one policy in force: the
    /// source lists it, its reconciler publishes the enforced tiers.
    fn publish(&self, policy: RetentionPolicySpec) {
        self.ctx
            .policies
            .replace_all([(format!("{}/tiers", self.namespace), policy.clone())]);
        self.ctx
            .enforced_policies
            .publish(&self.namespace, "tiers", policy);
    }

    /// One reconcile at `now`; the status is kept for the next one, as the
    /// runtime does.
    async fn reconcile_at(&mut self, now: DateTime<Utc>) -> Outcome<PartitionScheduleStatus> {
        self.clock.set(now);
        let outcome = Managed::reconcile(&self.schedule, &self.ctx)
            .await
            .unwrap_or_else(|e| panic!("reconcile at {now}: {e}"));
        self.schedule.status = Some(outcome.status.clone());
        outcome
    }

    async fn names(&self) -> BTreeSet<String> {
        partition_names(self.pool()).await
    }

    /// The value of archiver_partition_drop_blocked (ArchiverPartitionDropBlocked).
    fn drop_blocked_metric(&self) -> String {
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix("archiver_partition_drop_blocked "))
            .expect("the drop-blocked gauge is exported")
            .to_string()
    }

    fn coverage_metric(&self) -> String {
        self.metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("archiver_partition_coverage_months "))
            .expect("the coverage gauge is exported")
            .to_string()
    }
}

/// A status partition entry: name, from, to, approximate rows.
type Listed<'a> = (&'a str, DateTime<Utc>, DateTime<Utc>, Option<i64>);

fn has_event(outcome: &Outcome<PartitionScheduleStatus>, reason: &str, note_part: &str) -> bool {
    outcome
        .events
        .iter()
        .any(|e| e.reason == reason && e.note.contains(note_part))
}

// ------------------------------------------------------- calendar (pure)

#[test]
fn required_months_match_a_day_by_day_oracle_for_every_day_of_2027_to_2029() {
    let mut checked = 0;
    for day in days_2027_to_2029() {
        for (h, mi, s) in [(0, 0, 0), (0, 0, 1), (11, 30, 0), (23, 59, 59)] {
            let now = instant(day, h, mi, s);
            for ahead in [1, 7, 28, 29, 30, 31, 62] {
                let months = required_months(now, ahead);
                let got: Vec<(i32, u32)> = months.iter().map(|m| (m.year(), m.month())).collect();
                assert_eq!(got, oracle_months(now, ahead), "now {now}, ahead {ahead}");
                // The first month holds now, the last holds now + ahead.
                let first = months.first().unwrap();
                assert!(first.start() <= now && now < first.end(), "{now}");
                let horizon = now + chrono::Duration::days(i64::from(ahead));
                let last = months.last().unwrap();
                assert!(last.start() <= horizon && horizon < last.end(), "{now}");
                // Contiguous, day 1 at midnight, exact month lengths.
                for pair in months.windows(2) {
                    assert_eq!(pair[0].end(), pair[1].start());
                }
                for month in &months {
                    let start = month.start();
                    assert_eq!((start.day(), start.timestamp() % 86_400), (1, 0));
                    assert_eq!(
                        (month.end() - start).num_days(),
                        oracle_days_in_month(month.year(), month.month()),
                        "{month}"
                    );
                    assert_eq!(
                        month.partition_name(),
                        format!("probe_minute_{:04}_{:02}", month.year(), month.month())
                    );
                    assert_eq!(
                        Month::from_partition_name(&month.partition_name()),
                        Some(*month)
                    );
                }
                // The next month exists at least `ahead` days before it starts.
                let next = Month::containing(now).next();
                if next.start() - chrono::Duration::days(i64::from(ahead)) <= now {
                    assert!(months.contains(&next), "{now} ahead {ahead}: {next} is due");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 1096 * 4 * 7, "2028 is a leap year: 1096 days");
}

#[test]
fn leap_day_month_ends_and_year_ends_have_the_right_bounds() {
    let feb = Month::containing(at(2028, 2, 29, 23, 59));
    assert_eq!(
        feb.bounds(),
        Bounds {
            from: at(2028, 2, 1, 0, 0),
            to: at(2028, 3, 1, 0, 0)
        }
    );
    assert_eq!(
        Month::containing(at(2029, 2, 28, 23, 59)).end(),
        at(2029, 3, 1, 0, 0)
    );
    // 31st days and the year end.
    let december = Month::containing(at(2027, 12, 31, 23, 59));
    assert_eq!(december.partition_name(), "probe_minute_2027_12");
    assert_eq!(december.end(), at(2028, 1, 1, 0, 0));
    assert_eq!(
        required_months(at(2027, 12, 25, 0, 0), 7)
            .iter()
            .map(|m| m.partition_name())
            .collect::<Vec<_>>(),
        ["probe_minute_2027_12", "probe_minute_2028_01"]
    );
    // One second earlier, the new year is not due yet.
    assert_eq!(
        required_months(at(2027, 12, 24, 23, 59) + chrono::Duration::seconds(59), 7).len(),
        1
    );
}

// ---------------------------------------------------- drop planning (pure)

fn month_partitions(first: Month, last: Month) -> Vec<CatalogPartition> {
    let mut out = Vec::new();
    let mut month = first;
    while month <= last {
        out.push(CatalogPartition {
            name: month.partition_name(),
            qualified: month.partition_name(),
            bounds: Some(month.bounds()),
            bound_expression: String::new(),
            approximate_rows: None,
        });
        month = month.next();
    }
    out
}

#[test]
fn drop_decisions_match_an_epoch_seconds_oracle_for_every_day_of_2027_to_2029() {
    let partitions = month_partitions(Month::new(2024, 1).unwrap(), Month::new(2030, 3).unwrap());
    let window = UtcWindow::parse("03:00-04:00").unwrap();
    // (policy, longest contract in tenant_tier_history, expected horizon in days)
    let scenarios = [
        (example_policy(), None, 365),
        (example_policy(), Some(366), 366),
        (policy_with_cap(400), Some(500), 400),
        (example_policy(), Some(700), 700),
        (example_policy(), Some(100), 365),
    ];
    for (policy, contract, expected_days) in &scenarios {
        assert_eq!(retention_horizon(policy, *contract).days, *expected_days);
    }
    let mut droppable_seen = 0;
    for day in days_2027_to_2029() {
        for now in [instant(day, 3, 30, 0), instant(day, 12, 0, 0)] {
            // Independent of Month: the first instant of the current month.
            let month_start = instant(
                NaiveDate::from_ymd_opt(now.year(), now.month(), 1).unwrap(),
                0,
                0,
                0,
            );
            for (policy, contract, days) in &scenarios {
                let inputs = DropInputs {
                    now,
                    window: &window,
                    longest_contract_days: *contract,
                };
                let candidates = plan_drops(&partitions, inputs, Some(policy));
                assert_eq!(candidates.len(), partitions.len());
                for c in &candidates {
                    let horizon_secs = i64::from(*days) * 86_400;
                    let eligible = c.bounds.to.timestamp() + horizon_secs <= now.timestamp();
                    let protected = c.bounds.to > month_start;
                    let in_window = now.time() >= chrono::NaiveTime::from_hms_opt(3, 0, 0).unwrap()
                        && now.time() < chrono::NaiveTime::from_hms_opt(4, 0, 0).unwrap();
                    let expect_droppable = !protected && eligible && in_window;
                    assert_eq!(
                        c.decision == DropDecision::Droppable,
                        expect_droppable,
                        "{} at {now}, horizon {days} days: {:?} ({})",
                        c.name,
                        c.decision,
                        c.reason
                    );
                    if protected {
                        assert_eq!(c.decision, DropDecision::Protected, "{} at {now}", c.name);
                    }
                    assert_eq!(
                        c.eligible_at,
                        Some(c.bounds.to + chrono::Duration::days(i64::from(*days)))
                    );
                    if expect_droppable {
                        // Its last minute is older than the horizon.
                        let last_minute = c.bounds.to - chrono::Duration::minutes(1);
                        assert!(last_minute + chrono::Duration::days(i64::from(*days)) < now);
                        droppable_seen += 1;
                    }
                }
            }
        }
    }
    assert!(
        droppable_seen > 1000,
        "the oracle must exercise drops too: {droppable_seen}"
    );
}

/// Seed 000, failure mode 7: on 1 February of a leap year a month-based
/// threshold drops January of the previous year one day too early.
#[test]
fn the_leap_year_boundary_does_not_drop_january_a_day_early() {
    let partitions = month_partitions(Month::new(2026, 12).unwrap(), Month::new(2028, 3).unwrap());
    let window = UtcWindow::parse("03:00-04:00").unwrap();
    let january = |now, contract| {
        let inputs = DropInputs {
            now,
            window: &window,
            longest_contract_days: contract,
        };
        plan_drops(&partitions, inputs, Some(&example_policy()))
            .into_iter()
            .find(|c| c.name == "probe_minute_2027_01")
            .unwrap()
    };
    // 366 days (a contract): "one year before 2028-02-01" is 2027-02-01, the
    // end of January 2027, but 366 days before is 2027-01-31.
    let c = january(at(2028, 2, 1, 3, 30), Some(366));
    assert_eq!(c.decision, DropDecision::NotYetEligible, "{}", c.reason);
    assert_eq!(c.eligible_at, Some(at(2028, 2, 2, 0, 0)));
    assert_eq!(
        january(at(2028, 2, 2, 3, 30), Some(366)).decision,
        DropDecision::Droppable
    );
    // 365 days: eligible exactly at 2028-02-01 00:00 (2027 has 365 days).
    assert_eq!(
        january(at(2028, 2, 1, 3, 30), None).decision,
        DropDecision::Droppable
    );
    assert_eq!(
        january(at(2028, 1, 31, 3, 30), None).decision,
        DropDecision::NotYetEligible
    );
    // February 2027 across 29 February 2028: 2027-03-01 + 366 days is
    // 2028-03-01 (the leap day counts), + 365 days is 2028-02-29.
    let february = |now, contract| {
        let inputs = DropInputs {
            now,
            window: &window,
            longest_contract_days: contract,
        };
        plan_drops(&partitions, inputs, Some(&example_policy()))
            .into_iter()
            .find(|c| c.name == "probe_minute_2027_02")
            .unwrap()
    };
    let c = february(at(2028, 2, 29, 3, 30), Some(366));
    assert_eq!(c.eligible_at, Some(at(2028, 3, 1, 0, 0)));
    assert_eq!(c.decision, DropDecision::NotYetEligible);
    assert_eq!(
        february(at(2028, 3, 1, 3, 30), Some(366)).decision,
        DropDecision::Droppable
    );
    let c = february(at(2028, 2, 28, 3, 30), None);
    assert_eq!(c.eligible_at, Some(at(2028, 2, 29, 0, 0)));
    assert_eq!(c.decision, DropDecision::NotYetEligible);
    assert_eq!(
        february(at(2028, 2, 29, 3, 30), None).decision,
        DropDecision::Droppable
    );
}

#[test]
fn the_current_and_future_months_are_protected_on_every_day() {
    for day in days_2027_to_2029() {
        for now in [
            instant(day, 0, 0, 0),
            instant(day, 3, 30, 0),
            instant(day, 23, 59, 59),
        ] {
            let current = Month::containing(now);
            assert!(is_protected(&current.bounds(), now), "{now}");
            assert!(is_protected(&current.next().bounds(), now), "{now}");
            assert!(!is_protected(&current.previous().bounds(), now), "{now}");
        }
    }
    // A forged policy with zero-day windows still never offers them.
    let mut zero = example_policy();
    for tier in [
        &mut zero.tiers.public,
        &mut zero.tiers.author,
        &mut zero.tiers.team,
        &mut zero.tiers.enterprise,
    ] {
        tier.per_minute_days = 0;
    }
    let now = at(2028, 3, 1, 3, 30);
    let window = UtcWindow::parse("03:00-04:00").unwrap();
    let candidates = plan_drops(
        &month_partitions(Month::new(2028, 1).unwrap(), Month::new(2028, 5).unwrap()),
        DropInputs {
            now,
            window: &window,
            longest_contract_days: None,
        },
        Some(&zero),
    );
    let droppable: Vec<&str> = candidates
        .iter()
        .filter(|c| c.decision == DropDecision::Droppable)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(droppable, ["probe_minute_2028_01", "probe_minute_2028_02"]);
}

// ------------------------------------------------------------- database

#[tokio::test]
async fn the_executor_refuses_the_current_and_next_month_whatever_it_is_told() {
    let db = TestDatabase::new().await;
    let now = at(2028, 3, 1, 3, 30);
    ensure_partitions(&db.pool, now, 31, Duration::from_secs(1))
        .await
        .unwrap();
    let mut tiny = example_policy();
    tiny.tiers.public.per_minute_days = 0;
    tiny.tiers.enterprise.per_minute_days = 0;
    let settings = DropSettings {
        now,
        lock: archiver_operator::partitions::audit::LockDiscipline::new(Duration::from_secs(1)),
        tiers: &tiny.tiers,
        actor: "test",
    };
    for name in ["probe_minute_2028_03", "probe_minute_2028_04"] {
        let refused = removal::detach_and_drop(&db.pool, name, settings).await;
        assert!(
            matches!(refused, Err(PartitionError::Protected { .. })),
            "{name}: {refused:?}"
        );
    }
    assert_eq!(
        partition_names(&db.pool).await,
        names(&[(2028, 3), (2028, 4)])
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operator_audit_log WHERE action LIKE 'partition-d%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(audited, 0, "a refused drop leaves no intent behind");
}

#[tokio::test]
async fn ensure_partitions_is_idempotent_concurrent_safe_and_never_makes_a_default() {
    let db = TestDatabase::new().await;
    let now = at(2028, 2, 25, 12, 0);
    let (a, b) = tokio::join!(
        ensure_partitions(&db.pool, now, 7, Duration::from_secs(2)),
        ensure_partitions(&db.pool, now, 7, Duration::from_secs(2)),
    );
    let mut created: Vec<String> = a.unwrap().into_iter().chain(b.unwrap()).collect();
    created.sort();
    assert_eq!(created, ["probe_minute_2028_02", "probe_minute_2028_03"]);
    let again = ensure_partitions(&db.pool, now, 7, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    // Bounds from the catalog are the calendar's, leap day included.
    let partitions = catalog::read_partitions(&db.pool).await.unwrap();
    assert_eq!(
        partitions
            .iter()
            .map(|p| p.bounds.unwrap())
            .collect::<Vec<_>>(),
        [
            Month::new(2028, 2).unwrap().bounds(),
            Month::new(2028, 3).unwrap().bounds()
        ]
    );
    insert_row(&db.pool, tenant(1), "leap", at(2028, 2, 29, 23, 59)).await;
    let in_february: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute_2028_02")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(in_february, 1);
    let defaults: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'probe_minute'::regclass AND partdefid <> 0",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(defaults, 0);
    for name in ["probe_minute_2028_02", "probe_minute_2028_03"] {
        assert_eq!(
            audit_count(&db.pool, "partition-create", name).await,
            1,
            "{name}"
        );
    }
    // ANALYZEd right after creation.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let analyzed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_user_tables \
             WHERE relname IN ('probe_minute_2028_02', 'probe_minute_2028_03') AND analyze_count > 0",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if analyzed == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new partitions were not analyzed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reconciles at 00:00:00 of every day of `year` (and 23:59:59 near month
/// ends), from an empty database, and checks the exact set of partitions
/// after each one.
async fn reconcile_every_day_of(year: i32) {
    let first = NaiveDate::from_ymd_opt(year, 1, 1).unwrap();
    let mut h = Harness::new(&format!("calendar-{year}"), instant(first, 0, 0, 0), 5).await;
    let origin = Month::containing(instant(first, 0, 0, 0));
    for day in days_2027_to_2029().filter(|d| d.year() == year) {
        // The last second of the day only matters where now + 7 days can
        // reach the next month.
        let near_month_end = (day + chrono::Duration::days(8)).month() != day.month();
        let times = if near_month_end {
            vec![instant(day, 0, 0, 0), instant(day, 23, 59, 59)]
        } else {
            vec![instant(day, 0, 0, 0)]
        };
        for now in times {
            let outcome = h.reconcile_at(now).await;
            // Everything from the first month through month(now + 7 days).
            let last = *oracle_months(now, 7).last().unwrap();
            let mut expected = Vec::new();
            let (mut y, mut m) = (origin.year(), origin.month());
            while (y, m) <= last {
                expected.push((y, m));
                (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            }
            assert_eq!(
                h.names().await,
                names(&expected),
                "after reconcile at {now}"
            );
            let status = &outcome.status;
            assert_eq!(condition(status, "Covered").status, "True", "{now}");
            assert_eq!(condition(status, "Ready").status, "True", "{now}");
            let ahead = oracle_months(now, 7).len() as i32 - 1;
            assert_eq!(status.coverage_months_ahead, Some(ahead), "{now}");
            assert_eq!(
                h.coverage_metric(),
                format!("archiver_partition_coverage_months {}", ahead + 1)
            );
            assert!(outcome.requeue_after <= Duration::from_secs(300));
        }
    }
    // Nothing is dropped without a RetentionPolicy, and each month was
    // created exactly once.
    let created: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operator_audit_log WHERE action = 'partition-create'",
    )
    .fetch_one(h.pool())
    .await
    .unwrap();
    assert_eq!(created, h.names().await.len() as i64);
    assert_eq!(created, 13, "{year} and January of the next year");
}

#[tokio::test]
async fn reconcile_keeps_exactly_the_expected_partitions_every_day_of_2027() {
    reconcile_every_day_of(2027).await;
}

#[tokio::test]
async fn reconcile_keeps_exactly_the_expected_partitions_every_day_of_leap_2028() {
    reconcile_every_day_of(2028).await;
}

#[tokio::test]
async fn reconcile_keeps_exactly_the_expected_partitions_every_day_of_2029() {
    reconcile_every_day_of(2029).await;
}

#[tokio::test]
async fn a_missing_next_month_is_created_on_the_next_reconcile() {
    let mut h = Harness::new("next-month", at(2027, 3, 24, 23, 59), 5).await;
    let outcome = h.reconcile_at(at(2027, 3, 24, 23, 59)).await;
    assert_eq!(h.names().await, names(&[(2027, 3)]));
    let covered = condition(&outcome.status, "Covered");
    assert_eq!(covered.status, "True");
    assert!(
        covered
            .message
            .contains("2027-04 is created from 2027-03-25T00:00:00Z"),
        "{}",
        covered.message
    );
    assert_eq!(h.coverage_metric(), "archiver_partition_coverage_months 1");

    let outcome = h.reconcile_at(at(2027, 3, 25, 0, 0)).await;
    assert_eq!(h.names().await, names(&[(2027, 3), (2027, 4)]));
    assert!(has_event(
        &outcome,
        "PartitionCreated",
        "probe_minute_2027_04"
    ));
    assert_eq!(outcome.status.last_create_at, Some(at(2027, 3, 25, 0, 0)));
    assert_eq!(h.coverage_metric(), "archiver_partition_coverage_months 2");

    // Someone drops next month by hand: the next reconcile puts it back.
    sqlx::query("DROP TABLE probe_minute_2027_04")
        .execute(h.pool())
        .await
        .unwrap();
    let outcome = h.reconcile_at(at(2027, 3, 25, 0, 2)).await;
    assert_eq!(h.names().await, names(&[(2027, 3), (2027, 4)]));
    assert!(has_event(
        &outcome,
        "PartitionCreated",
        "probe_minute_2027_04"
    ));
    assert_eq!(
        audit_count(h.pool(), "partition-create", "probe_minute_2027_04").await,
        2
    );
    // A steady reconcile creates nothing and says nothing new.
    let outcome = h.reconcile_at(at(2027, 3, 25, 0, 4)).await;
    assert!(
        outcome
            .events
            .iter()
            .all(|e| e.reason != "PartitionCreated")
    );
}

#[tokio::test]
async fn partitions_with_unexpected_bounds_are_reported_never_replaced() {
    let mut h = Harness::new("unexpected", at(2027, 3, 28, 12, 0), 5).await;
    // April's name holds June; a hand-made partition half-covers May.
    sqlx::query(
        "CREATE TABLE probe_minute_2027_04 PARTITION OF probe_minute \
         FOR VALUES FROM ('2027-06-01 00:00+00') TO ('2027-07-01 00:00+00')",
    )
    .execute(h.pool())
    .await
    .unwrap();
    sqlx::query(
        "CREATE TABLE probe_minute_handmade PARTITION OF probe_minute \
         FOR VALUES FROM ('2027-05-10 00:00+00') TO ('2027-05-20 00:00+00')",
    )
    .execute(h.pool())
    .await
    .unwrap();
    let outcome = h.reconcile_at(at(2027, 3, 28, 12, 0)).await;
    let status = &outcome.status;
    let covered = condition(status, "Covered");
    assert_eq!(covered.status, "False");
    assert!(
        covered.message.contains("no partition for 2027-04"),
        "{}",
        covered.message
    );
    assert!(
        covered.message.contains(
            "probe_minute_2027_04 exists with bounds [2027-06-01T00:00:00Z, 2027-07-01T00:00:00Z)"
        ),
        "{}",
        covered.message
    );
    assert_eq!(condition(status, "Ready").status, "False");
    assert!(has_event(
        &outcome,
        "PartitionNotCreated",
        "probe_minute_2027_04"
    ));
    assert!(has_event(
        &outcome,
        "PartitionAnomaly",
        "named for 2027-04 but holds 2027-06"
    ));
    assert!(has_event(
        &outcome,
        "PartitionAnomaly",
        "probe_minute_handmade has bounds"
    ));
    // Nothing was replaced: March was created, the others are as they were.
    let partitions = catalog::read_partitions(h.pool()).await.unwrap();
    let april = partitions
        .iter()
        .find(|p| p.name == "probe_minute_2027_04")
        .unwrap();
    assert_eq!(april.bounds, Some(Month::new(2027, 6).unwrap().bounds()));
    assert_eq!(
        h.names().await,
        [
            "probe_minute_2027_03",
            "probe_minute_2027_04",
            "probe_minute_handmade"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    // May is partly covered: creating it is refused, also through the function.
    let refused =
        ensure_partitions(h.pool(), at(2027, 5, 2, 0, 0), 7, Duration::from_secs(1)).await;
    match refused {
        Err(PartitionError::UnexpectedBounds { message, .. }) => {
            assert!(
                message.contains("overlaps probe_minute_handmade"),
                "{message}"
            )
        }
        other => panic!("expected UnexpectedBounds, got {other:?}"),
    }
    // The warning is announced once, not at every requeue.
    let outcome = h.reconcile_at(at(2027, 3, 28, 12, 2)).await;
    assert!(
        outcome.events.iter().all(|e| e.type_ != EventType::Warning),
        "{:?}",
        outcome.events
    );
}

/// Old partitions 2027-01..2027-06 with expired public rows in each.
async fn old_history(h: &Harness) {
    ensure_partitions(h.pool(), at(2027, 1, 1, 0, 0), 160, Duration::from_secs(1))
        .await
        .unwrap();
    set_tier(h.pool(), tenant(1), "public", at(2025, 1, 1, 0, 0), None).await;
    for month in 1..=6 {
        insert_row(
            h.pool(),
            tenant(1),
            "public-server",
            at(2027, month, 10, 12, 0),
        )
        .await;
    }
}

fn old_months() -> BTreeSet<String> {
    names(&[
        (2027, 1),
        (2027, 2),
        (2027, 3),
        (2027, 4),
        (2027, 5),
        (2027, 6),
    ])
}

#[tokio::test]
async fn a_row_inside_an_enterprise_contract_keeps_its_partition_until_it_expires() {
    let mut h = Harness::new("contract-expiry", at(2028, 6, 10, 3, 30), 5).await;
    old_history(&h).await;
    // Cap 400 -> horizon 400 days; billing recorded a 700-day contract.
    h.publish(policy_with_cap(400));
    set_tier(
        h.pool(),
        tenant(2),
        "enterprise",
        at(2025, 1, 1, 0, 0),
        Some(700),
    )
    .await;
    insert_row(
        h.pool(),
        tenant(2),
        "enterprise-server",
        at(2027, 1, 15, 0, 0),
    )
    .await;
    // Every day inside the window until the row leaves its 700 days.
    let mut day = NaiveDate::from_ymd_opt(2028, 6, 10).unwrap();
    let expiry = NaiveDate::from_ymd_opt(2028, 12, 15).unwrap();
    while day < expiry {
        let outcome = h.reconcile_at(instant(day, 3, 30, 0)).await;
        assert!(
            h.names().await.contains("probe_minute_2027_01"),
            "dropped on {day}"
        );
        let blocked = condition(&outcome.status, "DropBlocked");
        assert_eq!(blocked.status, "True", "{day}");
        assert_eq!(blocked.reason, "RowsInsideRetention");
        assert!(
            blocked.message.contains("probe_minute_2027_01: 1 row(s)"),
            "{}",
            blocked.message
        );
        day = day.succ_opt().unwrap();
    }
    assert_eq!(h.drop_blocked_metric(), "1");
    let outcome = h.reconcile_at(instant(expiry, 3, 30, 0)).await;
    let names = h.names().await;
    assert!(!names.contains("probe_minute_2027_01"), "{names:?}");
    assert_eq!(condition(&outcome.status, "DropBlocked").status, "False");
    assert_eq!(h.drop_blocked_metric(), "0");
    assert!(has_event(
        &outcome,
        "PartitionDropped",
        "probe_minute_2027_01"
    ));
}

#[tokio::test]
async fn with_the_contract_row_gone_the_partition_drops_inside_the_window_only() {
    let mut h = Harness::new("contract-window", at(2028, 6, 10, 3, 30), 5).await;
    old_history(&h).await;
    h.publish(policy_with_cap(400));
    set_tier(
        h.pool(),
        tenant(2),
        "enterprise",
        at(2025, 1, 1, 0, 0),
        Some(700),
    )
    .await;
    insert_row(
        h.pool(),
        tenant(2),
        "enterprise-server",
        at(2027, 1, 15, 0, 0),
    )
    .await;

    let outcome = h.reconcile_at(at(2028, 6, 10, 3, 30)).await;
    assert!(
        h.names().await.is_superset(&old_months()),
        "nothing may go yet"
    );
    assert!(has_event(&outcome, "DropBlocked", "1 row(s)"));
    let next = outcome.status.next_drop.clone().unwrap();
    assert_eq!(next.partition, "probe_minute_2027_01");
    assert!(!next.droppable);
    assert!(
        next.reason.contains("1 row(s) still inside"),
        "{}",
        next.reason
    );

    sqlx::query("DELETE FROM probe_minute WHERE tenant_id = $1")
        .bind(tenant(2))
        .execute(h.pool())
        .await
        .unwrap();
    // Outside the window: nothing happens.
    let outcome = h.reconcile_at(at(2028, 6, 10, 5, 0)).await;
    assert!(h.names().await.is_superset(&old_months()));
    let next = outcome.status.next_drop.clone().unwrap();
    assert!(
        next.reason
            .contains("waiting for the drop window 03:00-04:00"),
        "{}",
        next.reason
    );
    assert!(!next.droppable);
    assert_eq!(outcome.status.last_drop_at, None);

    // Inside the next window: every month past 400 days goes, oldest first.
    let now = at(2028, 6, 11, 3, 5);
    let outcome = h.reconcile_at(now).await;
    assert_eq!(
        h.names().await,
        names(&[(2027, 5), (2027, 6), (2028, 6)]),
        "2027-05 ends 2027-06-01, within 400 days of {now}"
    );
    for month in 1..=4 {
        let name = format!("probe_minute_2027_{month:02}");
        assert!(has_event(&outcome, "PartitionDropped", &name), "{name}");
        for action in [
            "partition-detach-intent",
            "partition-detach",
            "partition-drop-intent",
            "partition-drop",
        ] {
            assert_eq!(
                audit_count(h.pool(), action, &name).await,
                1,
                "{action} {name}"
            );
        }
    }
    let status = &outcome.status;
    assert_eq!(status.last_drop_at, Some(now));
    assert_eq!(condition(status, "DropBlocked").status, "False");
    let next = status.next_drop.clone().unwrap();
    assert_eq!(next.partition, "probe_minute_2027_05");
    assert_eq!(
        next.eligible_at,
        Some(at(2027, 6, 1, 0, 0) + chrono::Duration::days(400))
    );
    assert!(!next.droppable);
    // The public rows of the kept months are still there.
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(h.pool())
        .await
        .unwrap();
    assert_eq!(kept, 2);
}

#[tokio::test]
async fn a_tenant_without_a_tier_row_keeps_its_partition() {
    let mut h = Harness::new("no-tier", at(2028, 6, 10, 3, 30), 5).await;
    old_history(&h).await;
    h.publish(example_policy());
    insert_row(h.pool(), tenant(9), "untiered", at(2027, 1, 20, 0, 0)).await;
    let outcome = h.reconcile_at(at(2028, 6, 10, 3, 30)).await;
    assert!(h.names().await.is_superset(&old_months()));
    let blocked = condition(&outcome.status, "DropBlocked");
    assert_eq!(
        (blocked.status.as_str(), blocked.reason.as_str()),
        ("True", "RowsInsideRetention")
    );
    // Years later still: a tenant with no tier is never pruned.
    h.reconcile_at(at(2031, 6, 10, 3, 30)).await;
    assert!(h.names().await.contains("probe_minute_2027_01"));
}

#[tokio::test]
async fn without_a_policy_or_with_a_conflicting_one_nothing_is_dropped() {
    let mut h = Harness::new("no-policy", at(2028, 6, 10, 3, 30), 5).await;
    old_history(&h).await;
    let outcome = h.reconcile_at(at(2028, 6, 10, 3, 30)).await;
    assert!(h.names().await.is_superset(&old_months()));
    let blocked = condition(&outcome.status, "DropBlocked");
    assert_eq!(
        (blocked.status.as_str(), blocked.reason.as_str()),
        ("True", "NoRetentionPolicy")
    );
    assert_eq!(h.drop_blocked_metric(), "1");
    assert_eq!(condition(&outcome.status, "Ready").status, "True");

    // Its reconciler found another policy in force and marked it.
    let namespace = h.namespace.clone();
    let label = |name: &str| format!("{namespace}/{name}");
    h.ctx
        .policies
        .replace_all([(label("tiers"), example_policy())]);
    h.ctx
        .enforced_policies
        .conflict(&h.namespace, "tiers", "also in force: other");
    let outcome = h.reconcile_at(at(2028, 6, 10, 3, 35)).await;
    assert!(h.names().await.is_superset(&old_months()));
    let blocked = condition(&outcome.status, "DropBlocked");
    assert_eq!(blocked.reason, "RetentionPolicyConflict");
    let next = outcome.status.next_drop.clone().unwrap();
    assert!(
        next.reason.contains("conflict") && !next.droppable,
        "{next:?}"
    );

    // The registry still says "tiers" (one reconcile stale) while the source
    // already lists a second policy: the directory withholds the drop.
    h.ctx
        .enforced_policies
        .publish(&h.namespace, "tiers", example_policy());
    h.ctx.policies.replace_all([
        (label("tiers"), example_policy()),
        (label("other"), example_policy()),
    ]);
    let outcome = h.reconcile_at(at(2028, 6, 10, 3, 40)).await;
    assert!(h.names().await.is_superset(&old_months()));
    let blocked = condition(&outcome.status, "DropBlocked");
    assert_eq!(blocked.reason, "RetentionPolicyConflict");
    assert!(blocked.message.contains("other"), "{}", blocked.message);

    // Only another policy is in force: the referenced one is not.
    h.ctx
        .policies
        .replace_all([(label("other"), example_policy())]);
    h.ctx
        .enforced_policies
        .publish(&h.namespace, "other", example_policy());
    let outcome = h.reconcile_at(at(2028, 6, 10, 3, 42)).await;
    assert!(h.names().await.is_superset(&old_months()));
    let blocked = condition(&outcome.status, "DropBlocked");
    assert_eq!(blocked.reason, "NoRetentionPolicy");
    assert!(
        blocked.message.contains(&format!(
            "({} is the RetentionPolicy in force)",
            label("other")
        )),
        "{}",
        blocked.message
    );

    // Listed as the one in force, but its reconciler has not published it.
    h.ctx
        .policies
        .replace_all([(label("tiers"), example_policy())]);
    h.ctx.enforced_policies.withdraw(&h.namespace, "tiers");
    let outcome = h.reconcile_at(at(2028, 6, 10, 3, 43)).await;
    assert!(h.names().await.is_superset(&old_months()));
    let blocked = condition(&outcome.status, "DropBlocked");
    assert_eq!(blocked.reason, "NoRetentionPolicy");
    assert!(
        blocked
            .message
            .contains("its reconciler does not enforce it"),
        "{}",
        blocked.message
    );

    // Once the referenced policy is in force, the expired months go.
    h.publish(example_policy());
    h.reconcile_at(at(2028, 6, 10, 3, 45)).await;
    assert!(!h.names().await.contains("probe_minute_2027_01"));
}

/// Inserts a row into the current month every 50 ms until told to stop;
/// returns when each insert started and ended.
fn ingest(
    pool: sqlx::PgPool,
    first_minute: DateTime<Utc>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, Instant)>> {
    tokio::spawn(async move {
        let mut timings = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            insert_row(
                &pool,
                tenant(5),
                "ingest",
                first_minute + chrono::Duration::minutes(n),
            )
            .await;
            timings.push((started, Instant::now()));
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        timings
    })
}

/// A reader of probe_minute that keeps the old month open for `hold`.
async fn long_reader(pool: &sqlx::PgPool, hold: Duration) -> tokio::task::JoinHandle<Instant> {
    let mut reader = pool.begin().await.unwrap();
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM probe_minute \
         WHERE minute_bucket >= '2027-01-01 00:00+00' AND minute_bucket < '2027-02-01 00:00+00'",
    )
    .fetch_one(&mut *reader)
    .await
    .unwrap();
    assert_eq!(rows, 1);
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        reader.commit().await.unwrap();
        Instant::now()
    })
}

async fn reader_setup(namespace: &str) -> Harness {
    let mut h = Harness::new(namespace, at(2028, 6, 10, 2, 0), 1).await;
    ensure_partitions(h.pool(), at(2027, 1, 1, 0, 0), 1, Duration::from_secs(1))
        .await
        .unwrap();
    set_tier(h.pool(), tenant(1), "public", at(2025, 1, 1, 0, 0), None).await;
    insert_row(h.pool(), tenant(1), "old", at(2027, 1, 10, 0, 0)).await;
    h.publish(example_policy());
    // Outside the window: only the current month is created.
    h.reconcile_at(at(2028, 6, 10, 2, 0)).await;
    assert_eq!(h.names().await, names(&[(2027, 1), (2028, 6)]));
    h
}

#[tokio::test]
async fn a_long_reader_delays_the_drop_within_lock_timeout_and_ingestion_continues() {
    let mut h = reader_setup("long-reader").await;
    let reader = long_reader(h.pool(), Duration::from_millis(3500)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ingestion = ingest(h.pool().clone(), at(2028, 6, 10, 3, 0), stop.clone());
    let started = Instant::now();
    h.reconcile_at(at(2028, 6, 10, 3, 30)).await;
    stop.store(true, Ordering::SeqCst);
    let released = reader.await.unwrap();
    let timings = ingestion.await.expect("every insert succeeded");

    assert!(
        !h.names().await.contains("probe_minute_2027_01"),
        "dropped once the reader left"
    );
    let attempts: i64 = sqlx::query_scalar(
        "SELECT (payload->>'attempts')::int8 FROM operator_audit_log \
         WHERE action = 'partition-detach' AND subject = 'probe_minute_2027_01'",
    )
    .fetch_one(h.pool())
    .await
    .unwrap();
    assert!(
        attempts >= 2,
        "the detach waited, gave up and retried: {attempts}"
    );
    // Ingestion went on while the reader still held the old month: inserts
    // that began after the first lock wait had timed out finished before
    // the reader let go (a detach without lock_timeout would hold them all).
    let during = timings
        .iter()
        .filter(|(s, e)| *s >= started + Duration::from_millis(1200) && *e < released)
        .count();
    assert!(
        during >= 3,
        "inserts completed while the reader held its lock: {during}"
    );
    let slowest = timings.iter().map(|(s, e)| *e - *s).max().unwrap();
    assert!(
        slowest < Duration::from_secs(3),
        "an insert waited {slowest:?}"
    );
    let inserted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM probe_minute WHERE tenant_id = $1")
            .bind(tenant(5))
            .fetch_one(h.pool())
            .await
            .unwrap();
    assert_eq!(inserted, timings.len() as i64);
}

#[tokio::test]
async fn a_reader_longer_than_every_retry_postpones_the_drop_to_the_next_reconcile() {
    let mut h = reader_setup("longer-reader").await;
    let reader = long_reader(h.pool(), Duration::from_secs(7)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ingestion = ingest(h.pool().clone(), at(2028, 6, 10, 3, 0), stop.clone());
    let outcome = h.reconcile_at(at(2028, 6, 10, 3, 30)).await;
    stop.store(true, Ordering::SeqCst);
    let timings = ingestion.await.expect("every insert succeeded");
    assert!(
        h.names().await.contains("probe_minute_2027_01"),
        "still attached"
    );
    assert!(
        has_event(&outcome, "DropDelayed", "locks still held"),
        "{:?}",
        outcome.events
    );
    let next = outcome.status.next_drop.clone().unwrap();
    assert!(
        next.droppable && next.reason.contains("last attempt"),
        "{next:?}"
    );
    assert_eq!(condition(&outcome.status, "Ready").status, "True");
    assert!(outcome.requeue_after < Duration::from_secs(60));
    assert_eq!(
        audit_count(h.pool(), "partition-drop-abandoned", "probe_minute_2027_01").await,
        1
    );
    assert_eq!(
        audit_count(h.pool(), "partition-detach", "probe_minute_2027_01").await,
        0
    );
    let slowest = timings.iter().map(|(s, e)| *e - *s).max().unwrap();
    assert!(
        slowest < Duration::from_secs(3),
        "an insert waited {slowest:?}"
    );

    reader.await.unwrap();
    h.reconcile_at(at(2028, 6, 10, 3, 31)).await;
    assert!(!h.names().await.contains("probe_minute_2027_01"));
}

#[tokio::test]
async fn a_detached_partition_left_behind_is_dropped_on_the_next_window() {
    let mut h = reader_setup("leftover").await;
    // The detach committed, then the process died before the drop.
    sqlx::query("ALTER TABLE probe_minute DETACH PARTITION probe_minute_2027_01")
        .execute(h.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO operator_audit_log (action, subject, actor, payload) VALUES \
         ('partition-detach', 'probe_minute_2027_01', 'test', \
          '{\"from\": \"2027-01-01T00:00:00Z\", \"to\": \"2027-02-01T00:00:00Z\"}')",
    )
    .execute(h.pool())
    .await
    .unwrap();
    h.reconcile_at(at(2028, 6, 10, 2, 30)).await;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('probe_minute_2027_01') IS NOT NULL")
        .fetch_one(h.pool())
        .await
        .unwrap();
    assert!(exists, "outside the window nothing is dropped");
    let outcome = h.reconcile_at(at(2028, 6, 10, 3, 30)).await;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('probe_minute_2027_01') IS NOT NULL")
        .fetch_one(h.pool())
        .await
        .unwrap();
    assert!(!exists);
    assert!(has_event(
        &outcome,
        "PartitionDropped",
        "probe_minute_2027_01"
    ));
    assert_eq!(
        audit_count(h.pool(), "partition-drop", "probe_minute_2027_01").await,
        1
    );
}

#[tokio::test]
async fn status_lists_partitions_and_warns_about_a_tenfold_month() {
    let mut h = Harness::new("coverage", at(2027, 3, 28, 12, 0), 5).await;
    ensure_partitions(h.pool(), at(2027, 2, 1, 0, 0), 1, Duration::from_secs(1))
        .await
        .unwrap();
    h.reconcile_at(at(2027, 3, 28, 12, 0)).await;
    for n in 0..2 {
        insert_row(h.pool(), tenant(1), "s", at(2027, 2, 10, 0, n)).await;
    }
    for n in 0..25 {
        insert_row(h.pool(), tenant(1), "s", at(2027, 3, 10, 0, n)).await;
    }
    sqlx::query("ANALYZE probe_minute_2027_02")
        .execute(h.pool())
        .await
        .unwrap();
    sqlx::query("ANALYZE probe_minute_2027_03")
        .execute(h.pool())
        .await
        .unwrap();

    let outcome = h.reconcile_at(at(2027, 3, 28, 12, 5)).await;
    let status = &outcome.status;
    let listed: Vec<Listed<'_>> = status
        .partitions
        .iter()
        .map(|p| (p.name.as_str(), p.from, p.to, p.approximate_rows))
        .collect();
    assert_eq!(
        listed[0],
        (
            "probe_minute_2027_02",
            at(2027, 2, 1, 0, 0),
            at(2027, 3, 1, 0, 0),
            Some(2)
        )
    );
    assert_eq!(
        listed[1],
        (
            "probe_minute_2027_03",
            at(2027, 3, 1, 0, 0),
            at(2027, 4, 1, 0, 0),
            Some(25)
        )
    );
    assert_eq!(listed[2].0, "probe_minute_2027_04");
    assert_eq!(status.coverage_months_ahead, Some(1));
    assert_eq!(status.last_create_at, Some(at(2027, 3, 28, 12, 0)));
    assert_eq!(condition(status, "Covered").status, "True");
    let ready = condition(status, "Ready");
    assert_eq!(ready.status, "True");
    assert!(
        ready.message.contains(
            "warning: probe_minute_2027_03 has ~25 rows, 12x the ~2 of probe_minute_2027_02"
        ),
        "{}",
        ready.message
    );
    assert!(has_event(
        &outcome,
        "PartitionAnomaly",
        "probe_minute_2027_03 has ~25 rows"
    ));
    assert_eq!(h.coverage_metric(), "archiver_partition_coverage_months 2");
    // Announced once.
    let outcome = h.reconcile_at(at(2027, 3, 28, 12, 7)).await;
    assert!(!has_event(
        &outcome,
        "PartitionAnomaly",
        "probe_minute_2027_03"
    ));
    // Below ten times: no warning.
    sqlx::query("DELETE FROM probe_minute WHERE minute_bucket >= '2027-03-10 00:10+00'")
        .execute(h.pool())
        .await
        .unwrap();
    sqlx::query("ANALYZE probe_minute_2027_03")
        .execute(h.pool())
        .await
        .unwrap();
    let outcome = h.reconcile_at(at(2027, 3, 28, 12, 9)).await;
    assert!(
        !condition(&outcome.status, "Ready")
            .message
            .contains("warning")
    );
}

/// A fresh install applies the RetentionPolicy and the PartitionSchedule in
/// one sync wave: the schedule's first reconcile often finds no policy in
/// force yet. It looks again within the busy interval (20 s), not the
/// idle one (120 s, which kept it reporting the missing policy for two
/// minutes), and settles to the idle interval once the policy is in force.
#[tokio::test]
async fn a_schedule_without_its_policy_in_force_looks_again_soon() {
    let mut h = Harness::new("policy-later", at(2026, 11, 20, 12, 0), 5).await;
    let first = h.reconcile_at(at(2026, 11, 20, 12, 0)).await;
    assert_eq!(condition(&first.status, "Ready").status, "True");
    assert!(
        first.requeue_after <= Duration::from_secs(20),
        "requeued after {:?} while the policy is not in force",
        first.requeue_after
    );
    // Looking again changes nothing while the policy is still not in
    // force: the same status (no time or count in it), no event.
    let again = h
        .reconcile_at(at(2026, 11, 20, 12, 0) + chrono::Duration::seconds(20))
        .await;
    assert_eq!(again.status, first.status);
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert!(again.requeue_after <= Duration::from_secs(20));
    h.publish(example_policy());
    let settled = h.reconcile_at(at(2026, 11, 20, 12, 1)).await;
    assert_eq!(settled.requeue_after, Duration::from_secs(120));
}
