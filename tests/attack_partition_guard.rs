//! Attack on the partition guard (`removal::rows_inside_retention`): it must
//! never report 0 rows inside retention while retention enforcement
//! (`retention::ranges::expired_ranges`) would keep one of those rows.
//!
//! The guard is run on a plain table with the two columns it reads
//! (`tenant_id`, `minute_bucket`), so each case controls its rows exactly.

use chrono::{DateTime, Duration, TimeZone, Utc};
use uuid::Uuid;

use archiver_operator::api::retention_policy::{RetentionPolicy, Tier, Tiers};
use archiver_operator::partitions::PartitionError;
use archiver_operator::partitions::removal::rows_inside_retention;
use archiver_operator::retention::ranges::{Bounds, TierSpan, expired_ranges};
use archiver_operator::retention::tiers::Table;
use archiver_operator::testing::TestDatabase;

fn example_tiers() -> Tiers {
    let text = include_str!("../examples/retention-policy.yaml");
    let policy: RetentionPolicy = serde_yaml_ng::from_str(text).expect("example parses");
    policy.spec.tiers
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2028, 6, 15, 3, 30, 0).unwrap()
}

fn tenant() -> Uuid {
    Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_0a77)
}

struct Span {
    tier: Tier,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    contract: Option<i32>,
}

/// Does enforcement keep a probe_minute row of `tenant()` at `minute`?
fn enforcement_keeps(
    spans: &[Span],
    tiers: &Tiers,
    minute: DateTime<Utc>,
    at: DateTime<Utc>,
) -> bool {
    let spans: Vec<TierSpan> = spans
        .iter()
        .map(|s| TierSpan {
            tier: Some(s.tier),
            from: s.from,
            to: s.to,
            contract_minute_days: s.contract,
        })
        .collect();
    !expired_ranges(&spans, tiers, Table::ProbeMinute, at)
        .iter()
        .any(|range| match range.bounds {
            Bounds::Instants { lo, hi, last } => lo <= minute && minute < hi && minute <= last,
            Bounds::Dates { .. } => panic!("probe_minute has instant bounds"),
        })
}

/// The guard's count for one row of `tenant()` at `minute` under `spans`.
async fn guard_count(
    db: &TestDatabase,
    spans: &[Span],
    tiers: &Tiers,
    minute: DateTime<Utc>,
    at: DateTime<Utc>,
) -> Result<i64, PartitionError> {
    sqlx::query("CREATE TABLE IF NOT EXISTS attack_guard_rows (tenant_id uuid NOT NULL, minute_bucket timestamptz NOT NULL)")
        .execute(&db.pool)
        .await
        .expect("create the rows table");
    sqlx::query("TRUNCATE attack_guard_rows")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM tenant_tier_history WHERE tenant_id = $1")
        .bind(tenant())
        .execute(&db.pool)
        .await
        .unwrap();
    for span in spans {
        sqlx::query(
            "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from, valid_to, contract_minute_retention_days) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(tenant())
        .bind(span.tier.as_str())
        .bind(span.from)
        .bind(span.to)
        .bind(span.contract)
        .execute(&db.pool)
        .await
        .expect("insert a tier row");
    }
    sqlx::query("INSERT INTO attack_guard_rows VALUES ($1, $2)")
        .bind(tenant())
        .bind(minute)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    rows_inside_retention(&mut conn, "attack_guard_rows", at, tiers).await
}

/// The guard must not say "nothing inside" while enforcement keeps the row.
async fn check(
    db: &TestDatabase,
    case: &str,
    spans: &[Span],
    tiers: &Tiers,
    minute: DateTime<Utc>,
) {
    let keeps = enforcement_keeps(spans, tiers, minute, now());
    let inside = guard_count(db, spans, tiers, minute, now())
        .await
        .unwrap_or_else(|error| panic!("{case}: the guard failed: {error}"));
    assert!(
        !(keeps && inside == 0),
        "{case}: enforcement keeps the row at {minute} but the guard counts {inside} rows inside retention"
    );
}

fn days_ago(days: i64) -> DateTime<Utc> {
    now() - Duration::days(days)
}

/// Held: boundaries exactly at the row's minute, the window edge, a contract
/// above the cap. These agree with enforcement (or the guard keeps more).
#[tokio::test]
async fn aligned_boundaries_window_edges_and_contracts_agree_with_enforcement() {
    let db = TestDatabase::new().await;
    let tiers = example_tiers();
    let m = days_ago(100);
    // valid_to exactly at the row minute: the row belongs to the next tier.
    for (old, new) in [
        (Tier::Public, Tier::Enterprise),
        (Tier::Enterprise, Tier::Public),
    ] {
        let spans = [
            Span {
                tier: old,
                from: days_ago(1000),
                to: Some(m),
                contract: None,
            },
            Span {
                tier: new,
                from: m,
                to: None,
                contract: None,
            },
        ];
        check(
            &db,
            &format!("{old:?} then {new:?} at the minute"),
            &spans,
            &tiers,
            m,
        )
        .await;
        check(
            &db,
            "minute before the switch",
            &spans,
            &tiers,
            m - Duration::minutes(1),
        )
        .await;
    }
    // Window edge: public keeps 7 days; rows around now - 7 days.
    let spans = [Span {
        tier: Tier::Public,
        from: days_ago(1000),
        to: None,
        contract: None,
    }];
    for offset_seconds in [-120, -61, -60, -59, -1, 0, 1, 59, 60] {
        let minute = days_ago(7) + Duration::seconds(offset_seconds);
        check(
            &db,
            &format!("public edge {offset_seconds}s"),
            &spans,
            &tiers,
            minute,
        )
        .await;
        let keeps = enforcement_keeps(&spans, &tiers, minute, now());
        let inside = guard_count(&db, &spans, &tiers, minute, now())
            .await
            .unwrap();
        // At the edge the guard and enforcement should agree exactly.
        assert_eq!(
            keeps,
            inside == 1,
            "edge {offset_seconds}s: keeps {keeps}, guard {inside}"
        );
    }
    // A contract of 730 days on enterprise with the cap lowered to 400.
    let mut capped = tiers.clone();
    capped.enterprise.contractual_cap_days = Some(400);
    let spans = [Span {
        tier: Tier::Enterprise,
        from: days_ago(1000),
        to: None,
        contract: Some(730),
    }];
    for d in [364, 366, 399, 401, 729, 731] {
        check(
            &db,
            &format!("contract row {d} days old"),
            &spans,
            &capped,
            days_ago(d),
        )
        .await;
    }
}

/// Overlapping tier rows (a billing mistake): enforcement keeps an instant
/// while ANY covering tier keeps it, and so must the guard (it once took
/// only the tier row with the latest `valid_from`).
#[tokio::test]
async fn overlapping_tier_rows_the_guard_must_keep_what_enforcement_keeps() {
    let db = TestDatabase::new().await;
    let tiers = example_tiers();
    let spans = [
        Span {
            tier: Tier::Enterprise,
            from: days_ago(1000),
            to: None,
            contract: None,
        },
        Span {
            tier: Tier::Public,
            from: days_ago(500),
            to: None,
            contract: None,
        },
    ];
    check(
        &db,
        "overlap enterprise+public",
        &spans,
        &tiers,
        days_ago(100),
    )
    .await;
}

/// A tier row ending in the middle of a minute: the rest of the minute is
/// covered by a longer tier, so enforcement keeps the row, and so must the
/// guard (it once judged the whole minute by the tier at its first instant).
#[tokio::test]
async fn a_tier_switch_inside_the_minute_keeps_the_row_in_the_guard_too() {
    let db = TestDatabase::new().await;
    let tiers = example_tiers();
    let m = days_ago(100);
    let switch = m + Duration::seconds(30);
    let spans = [
        Span {
            tier: Tier::Public,
            from: days_ago(1000),
            to: Some(switch),
            contract: None,
        },
        Span {
            tier: Tier::Enterprise,
            from: switch,
            to: None,
            contract: None,
        },
    ];
    check(&db, "public -> enterprise at minute+30s", &spans, &tiers, m).await;
}

/// A tier row ending mid-minute with no tier after it (a churn): the rest
/// of the minute is untiered, which enforcement never expires.
#[tokio::test]
async fn a_tier_ending_inside_the_minute_keeps_the_row_in_the_guard_too() {
    let db = TestDatabase::new().await;
    let tiers = example_tiers();
    let m = days_ago(100);
    let switch = m + Duration::seconds(30);
    let spans = [Span {
        tier: Tier::Public,
        from: days_ago(1000),
        to: Some(switch),
        contract: None,
    }];
    check(&db, "public ends at minute+30s (churn)", &spans, &tiers, m).await;
}

/// A window reaching before PostgreSQL's first instant (4713 BC): the guard
/// must still answer, and say the row is inside, not fail. The policy now
/// bounds windows at `MAX_WINDOW_DAYS`; this holds for a policy that
/// reached the guard some other way.
#[tokio::test]
async fn a_huge_window_is_clamped_and_keeps_the_row() {
    let db = TestDatabase::new().await;
    let mut tiers = example_tiers();
    tiers.public.per_minute_days = 3_000_000;
    let spans = [Span {
        tier: Tier::Public,
        from: days_ago(1000),
        to: None,
        contract: None,
    }];
    let inside = guard_count(&db, &spans, &tiers, days_ago(100), now()).await;
    match inside {
        Ok(count) => assert_eq!(count, 1, "a row inside a huge window counts as inside"),
        Err(error) => panic!("the guard failed on a huge window instead of clamping: {error}"),
    }
}

/// Enforcement's expired_ranges with a window of u32::MAX days answers
/// (keeps everything) instead of panicking on the date arithmetic.
#[test]
fn enforcement_with_a_huge_window_keeps_the_row_without_panicking() {
    let mut tiers = example_tiers();
    tiers.public.per_minute_days = u32::MAX;
    let spans = [Span {
        tier: Tier::Public,
        from: days_ago(1000),
        to: None,
        contract: None,
    }];
    let outcome =
        std::panic::catch_unwind(|| enforcement_keeps(&spans, &tiers, days_ago(100), now()));
    assert!(
        matches!(outcome, Ok(true)),
        "enforcement panicked or expired the row: {outcome:?}"
    );
}
