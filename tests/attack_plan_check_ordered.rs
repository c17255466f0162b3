//! Attacks on the plan check's second, ordered question
//! (`views::check_alert_query_plan`, commit e783ab3): when the planner,
//! with sequential scans off, takes another index than
//! `suppression_clusters_recent`, the query is explained again ordered by
//! `contributing_tenant_count` with sorts off, and only that plan decides.
//!
//! Promises under attack: a healthy index is never reported; a broken one
//! always is (docs/OPERATIONS.md, "The alert router's query plan").

use archiver_operator::testing::TestDatabase;
use archiver_operator::views::{self, PlanProblem};

#[path = "common/plan_fixtures.rs"]
#[allow(dead_code)]
mod plan_fixtures;
use plan_fixtures::{check, clusters, execute, now, rebuild_index};

/// Defect: the index rebuilt with its columns swapped,
/// `(contributing_tenant_count, minute_bucket)`. It cannot find a minute:
/// every entry above the tenant share, of every minute of the day, is read
/// and filtered on `minute_bucket`. Its index condition still names
/// `minute_bucket` (as the second key), so `Plan::uses` counts it, and the
/// ordered question (which this index answers without a sort) takes it
/// whenever the first did not. The check reports no problem on a small
/// table, where the real index would have been required to be usable.
#[tokio::test]
async fn an_index_with_minute_bucket_second_is_unusable_on_a_small_table() {
    let db = TestDatabase::new().await;
    clusters(&db.pool, now(), 300, 1440).await;
    rebuild_index(&db.pool, "(contributing_tenant_count, minute_bucket)").await;
    execute(&db.pool, "ANALYZE suppression_clusters").await;
    let found = check(&db.pool).await;
    assert_eq!(
        found.problem,
        Some(PlanProblem::IndexUnusable),
        "an index leading with contributing_tenant_count cannot find the minute: {found:?}"
    );
}

/// The same defect with another leading column than the count: the key's
/// own first column, `(error_kind, minute_bucket)`. The minute is only a
/// second key; the index condition reads `(minute_bucket = ...)` alone.
#[tokio::test]
async fn an_index_with_another_leading_column_is_unusable() {
    let db = TestDatabase::new().await;
    clusters(&db.pool, now(), 300, 1440).await;
    rebuild_index(&db.pool, "(error_kind, minute_bucket)").await;
    execute(&db.pool, "ANALYZE suppression_clusters").await;
    let found = check(&db.pool).await;
    assert_eq!(
        found.problem,
        Some(PlanProblem::IndexUnusable),
        "an index leading with error_kind cannot find the minute: {found:?}"
    );
}

/// Held or not: healthy variants of the index are never reported, at a
/// tiny, small and many-clusters-in-one-minute size, with fresh and no
/// statistics. `(minute_bucket, contributing_tenant_count)` ascending is the
/// same index read backwards.
#[tokio::test]
async fn healthy_variants_are_not_reported_at_any_small_size() {
    for definition in [
        "(minute_bucket DESC, contributing_tenant_count)",
        "(minute_bucket, contributing_tenant_count)",
    ] {
        for (count, minutes) in [(1, 1), (3, 2), (80, 2), (2000, 1), (5000, 1440)] {
            for analyze in [false, true] {
                let db = TestDatabase::new().await;
                clusters(&db.pool, now(), count, minutes).await;
                rebuild_index(&db.pool, definition).await;
                if analyze {
                    execute(&db.pool, "ANALYZE suppression_clusters").await;
                }
                let found = check(&db.pool).await;
                assert_eq!(
                    found.problem, None,
                    "{definition}, {count} clusters over {minutes} minute(s), analyzed: \
                     {analyze}: {found:?}"
                );
            }
        }
    }
}

/// Held or not: a healthy index with changed cost settings (as
/// tests/plan_check.rs changes them, by ALTER DATABASE) on a small table.
#[tokio::test]
async fn healthy_index_with_changed_costs_is_not_reported() {
    for setting in [
        "random_page_cost = 100",
        "cpu_index_tuple_cost = 1",
        "cpu_operator_cost = 0.5",
        "seq_page_cost = 0.01",
    ] {
        let db = TestDatabase::new().await;
        clusters(&db.pool, now(), 80, 2).await;
        execute(&db.pool, "ANALYZE suppression_clusters").await;
        execute(
            &db.pool,
            &format!("ALTER DATABASE {} SET {setting}", db.name),
        )
        .await;
        // New connections see the database's settings.
        let pool = archiver_operator::db::connect(&db.url, 1)
            .await
            .expect("a connection with the new settings");
        let found = views::check_alert_query_plan(&pool, now())
            .await
            .expect("the plan check runs");
        assert_eq!(found.problem, None, "{setting}: {found:?}");
        pool.close().await;
    }
}

/// Held or not: broken indexes the ordered question must not mask.
#[tokio::test]
async fn broken_indexes_are_reported_on_a_small_table() {
    for (definition, expected) in [
        // Partial, on a minute long gone.
        (
            "(minute_bucket DESC, contributing_tenant_count) \
             WHERE minute_bucket < '2000-01-01'",
            PlanProblem::IndexUnusable,
        ),
        // The count only.
        ("(contributing_tenant_count)", PlanProblem::IndexUnusable),
    ] {
        let db = TestDatabase::new().await;
        clusters(&db.pool, now(), 300, 1440).await;
        rebuild_index(&db.pool, definition).await;
        execute(&db.pool, "ANALYZE suppression_clusters").await;
        let found = check(&db.pool).await;
        assert_eq!(found.problem, Some(expected), "{definition}: {found:?}");
    }
}

/// Held or not: an INVALID index of that name (a failed CREATE INDEX
/// CONCURRENTLY) is missing, also with a healthy index of another name
/// serving the query.
#[tokio::test]
async fn an_invalid_index_is_missing_even_with_a_twin_serving_the_query() {
    let db = TestDatabase::new().await;
    clusters(&db.pool, now(), 300, 1440).await;
    execute(&db.pool, "DROP INDEX suppression_clusters_recent").await;
    execute(
        &db.pool,
        "CREATE INDEX twin ON suppression_clusters (minute_bucket DESC, contributing_tenant_count)",
    )
    .await;
    // A duplicate key makes the concurrent build of a UNIQUE index fail
    // after the catalog entry exists: it stays, marked invalid.
    execute(
        &db.pool,
        "INSERT INTO suppression_clusters (error_kind, asn, registry_of_origin, minute_bucket, \
             contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count) \
         SELECT error_kind, asn + 1000000, registry_of_origin, minute_bucket, \
                contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count \
         FROM suppression_clusters LIMIT 1",
    )
    .await;
    let failed = sqlx::query(
        "CREATE UNIQUE INDEX CONCURRENTLY suppression_clusters_recent \
         ON suppression_clusters (minute_bucket DESC, contributing_tenant_count)",
    )
    .execute(&db.pool)
    .await;
    assert!(failed.is_err(), "the concurrent build must fail");
    let invalid: bool = sqlx::query_scalar(
        "SELECT NOT indisvalid FROM pg_index \
         WHERE indexrelid = 'suppression_clusters_recent'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(invalid, "the failed build left an invalid index");
    let found = check(&db.pool).await;
    assert_eq!(found.problem, Some(PlanProblem::IndexMissing), "{found:?}");
}

/// Held or not: a BRIN index of that name on `minute_bucket` (lossy: reads
/// whole page ranges) is reported on a big table, where the planner does
/// not take it under normal settings. (On a small table it passes: with
/// sequential scans off it does find the minute through its condition.)
#[tokio::test]
async fn a_brin_index_is_reported_on_a_big_table() {
    let db = TestDatabase::new().await;
    clusters(&db.pool, now(), 20000, 1440).await;
    rebuild_index(&db.pool, "USING brin (minute_bucket)").await;
    execute(&db.pool, "ANALYZE suppression_clusters").await;
    let found = check(&db.pool).await;
    assert_eq!(found.problem, Some(PlanProblem::PlanFlipped), "{found:?}");
}

/// Defect (open): the healthy index on a big table whose last minute holds
/// most of its rows (a burst of 15,000 clusters in one minute over 1,000
/// in the rest of the day, analyzed). The planner rightly reads the whole
/// table for that minute (a sequential scan is the cheapest plan for 94 %
/// of the rows), and the check reports `PlanFlipped` for an index that is
/// healthy and was used with sequential scans off. The size rule ("10,000
/// rows or more: the normal plan must use the index") does not ask what
/// share of the table the minute is. A fix needs the real size of the
/// minute (a count through the index) to tell a burst from statistics
/// that wrongly claim one. Fixed: a minute holding a fifth of the table or
/// more, counted through the index, is a burst and not a flip. The alert needs 5 minutes of
/// this, so only a burst lasting 5 minutes (or a table holding little but
/// the burst, e.g. after a TRUNCATE) raises it.
#[tokio::test]
async fn a_burst_minute_holding_most_of_a_big_table_is_not_a_flip() {
    let db = TestDatabase::new().await;
    clusters(&db.pool, now(), 1000, 1440).await;
    sqlx::query(
        "INSERT INTO suppression_clusters (error_kind, asn, registry_of_origin, minute_bucket, \
             contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count) \
         SELECT 'burst', g, 'mcp.so', date_trunc('minute', $1::timestamptz) - interval '1 minute', \
                2 + g % 40, ARRAY['a', 'b'], 3 \
         FROM generate_series(1, 15000) g",
    )
    .bind(now())
    .execute(&db.pool)
    .await
    .unwrap();
    execute(&db.pool, "ANALYZE suppression_clusters").await;
    let found = check(&db.pool).await;
    assert_eq!(
        found.problem, None,
        "the index is healthy; a sequential scan is the right plan for a minute holding most \
         of the table: {found:?}"
    );
}

/// Defect: the healthy index next to an extra index that serves the
/// router's query (and its order) better, a covering twin an operator
/// added. The planner takes the twin (an index-only scan) in the plan with
/// sequential scans off and in the ordered one, and the check reported
/// `IndexUnusable` for a healthy `suppression_clusters_recent` at every
/// size (80, 300 and 20,000 clusters). Fixed: a plan that finds the minute
/// through any valid index leading with `minute_bucket` serves the router
/// (docs/OPERATIONS.md, "The alert router's query plan").
#[tokio::test]
async fn a_healthy_index_next_to_a_better_covering_twin_is_not_reported() {
    let mut found_at = Vec::new();
    for (count, minutes) in [(80, 2), (300, 1440), (20000, 1440)] {
        let db = TestDatabase::new().await;
        clusters(&db.pool, now(), count, minutes).await;
        execute(
            &db.pool,
            "CREATE INDEX covering_twin ON suppression_clusters \
             (minute_bucket DESC, contributing_tenant_count) \
             INCLUDE (error_kind, asn, registry_of_origin)",
        )
        .await;
        execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
        let found = check(&db.pool).await;
        found_at.push((count, found.problem, found.plan_without_seqscan));
    }
    assert!(
        found_at.iter().all(|(_, problem, _)| problem.is_none()),
        "the healthy index was reported: {found_at:?}"
    );
}

/// The decision behind the fix above, both ways: a twin leading with
/// `minute_bucket` serves the router even when the named index was made
/// partial with a predicate the query does not imply (the router's query is
/// what the check protects), but a twin whose minute is a later key does
/// not serve it, and the named index's own defect is reported then.
#[tokio::test]
async fn a_twin_serves_only_when_it_leads_with_the_minute() {
    let partial = "(minute_bucket DESC, contributing_tenant_count) \
                   WHERE minute_bucket < '2000-01-01'";
    for (twin, expected) in [
        (
            "(minute_bucket, contributing_tenant_count) INCLUDE (error_kind)",
            None,
        ),
        (
            "(contributing_tenant_count, minute_bucket) INCLUDE (error_kind)",
            Some(PlanProblem::IndexUnusable),
        ),
    ] {
        let db = TestDatabase::new().await;
        clusters(&db.pool, now(), 300, 1440).await;
        rebuild_index(&db.pool, partial).await;
        execute(
            &db.pool,
            &format!("CREATE INDEX twin ON suppression_clusters {twin}"),
        )
        .await;
        execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
        let found = check(&db.pool).await;
        assert_eq!(found.problem, expected, "twin {twin}: {found:?}");
    }
}
