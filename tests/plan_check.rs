//! The alert router's query plan check (seed 004 failure mode 5, issue 16
//! item 4) against a real PostgreSQL: right at every table size. A healthy
//! empty, small or big table passes; a dropped index, an index the query
//! can no longer use (another expression, a partial index whose predicate
//! the query does not imply, a column whose type changed) and a real flip
//! of the plan on a big table each raise the problem, in the metric and in
//! the views watermark row.

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

use archiver_operator::metrics::Metrics;
use archiver_operator::testing::TestDatabase;
use archiver_operator::views::{self, PlanProblem};

fn now() -> DateTime<Utc> {
    archiver_operator::clock::minute_floor(Utc::now()) + Duration::seconds(20)
}

/// `count` live clusters over the 24 hours before `now` (several per
/// minute, the last minute included), as the maintenance writes them.
async fn clusters(pool: &PgPool, now: DateTime<Utc>, from: i64, count: i64) {
    sqlx::query(
        "INSERT INTO suppression_clusters (error_kind, asn, registry_of_origin, minute_bucket, \
             contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count) \
         SELECT 'kind-' || (g % 7), g, 'mcp.so', \
                date_trunc('minute', $1::timestamptz) - (1 + g % 1440) * interval '1 minute', \
                2 + g % 40, ARRAY['a', 'b'], 3 \
         FROM generate_series($2::bigint, $3::bigint) g",
    )
    .bind(now)
    .bind(from)
    .bind(from + count - 1)
    .execute(pool)
    .await
    .expect("insert clusters");
}

async fn execute(pool: &PgPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

async fn check(pool: &PgPool) -> views::PlanCheck {
    views::check_alert_query_plan(pool, now())
        .await
        .expect("the plan check runs")
}

#[tokio::test]
async fn a_healthy_empty_or_small_table_passes_though_a_sequential_scan_is_its_best_plan() {
    let db = TestDatabase::new().await;
    assert!(
        views::alert_query_uses_index(&db.pool, now())
            .await
            .unwrap()
    );
    let empty = check(&db.pool).await;
    assert_eq!(empty.problem, None, "{empty:?}");
    assert!(empty.estimated_table_rows < 10_000.0, "{empty:?}");

    clusters(&db.pool, now(), 1, 30).await;
    execute(&db.pool, "ANALYZE suppression_clusters").await;
    assert!(
        views::alert_query_uses_index(&db.pool, now())
            .await
            .unwrap()
    );
    let small = check(&db.pool).await;
    assert_eq!(small.problem, None, "{small:?}");
    // The small path is exercised: the planner's honest plan is a
    // sequential scan, and the index is still proved usable.
    assert!(small.plan.contains("Seq Scan"), "{small:?}");
    assert!(
        small
            .plan_without_seqscan
            .contains("suppression_clusters_recent"),
        "{small:?}"
    );
}

#[tokio::test]
async fn a_dropped_index_is_missing() {
    let db = TestDatabase::new().await;
    clusters(&db.pool, now(), 1, 300).await;
    execute(&db.pool, "DROP INDEX suppression_clusters_recent").await;
    assert!(
        !views::alert_query_uses_index(&db.pool, now())
            .await
            .unwrap()
    );
    assert_eq!(
        check(&db.pool).await.problem,
        Some(PlanProblem::IndexMissing)
    );
}

/// Same name, another expression: the query's `minute_bucket = $1` cannot
/// use an index on `minute_bucket AT TIME ZONE 'UTC'`.
#[tokio::test]
async fn an_index_on_another_expression_is_unusable() {
    let db = TestDatabase::new().await;
    clusters(&db.pool, now(), 1, 300).await;
    execute(&db.pool, "DROP INDEX suppression_clusters_recent").await;
    execute(
        &db.pool,
        "CREATE INDEX suppression_clusters_recent ON suppression_clusters \
         ((minute_bucket AT TIME ZONE 'UTC'), contributing_tenant_count)",
    )
    .await;
    assert!(
        !views::alert_query_uses_index(&db.pool, now())
            .await
            .unwrap()
    );
    let found = check(&db.pool).await;
    assert_eq!(found.problem, Some(PlanProblem::IndexUnusable), "{found:?}");
}

/// A partial index whose predicate (`> 1000`) the query's
/// `contributing_tenant_count > 10` does not imply.
#[tokio::test]
async fn a_partial_index_whose_predicate_the_query_does_not_imply_is_unusable() {
    let db = TestDatabase::new().await;
    clusters(&db.pool, now(), 1, 300).await;
    execute(&db.pool, "DROP INDEX suppression_clusters_recent").await;
    execute(
        &db.pool,
        "CREATE INDEX suppression_clusters_recent ON suppression_clusters \
         (minute_bucket DESC, contributing_tenant_count) WHERE contributing_tenant_count > 1000",
    )
    .await;
    assert!(
        !views::alert_query_uses_index(&db.pool, now())
            .await
            .unwrap()
    );
    let found = check(&db.pool).await;
    assert_eq!(found.problem, Some(PlanProblem::IndexUnusable), "{found:?}");
}

/// A column type changed under the query (the index is rebuilt on text):
/// the router's `minute_bucket = $1::timestamptz` no longer plans at all.
#[tokio::test]
async fn a_changed_column_type_makes_the_query_fail_and_is_raised() {
    let db = TestDatabase::new().await;
    clusters(&db.pool, now(), 1, 300).await;
    execute(
        &db.pool,
        "ALTER TABLE suppression_clusters ALTER COLUMN minute_bucket TYPE text \
         USING minute_bucket::text",
    )
    .await;
    assert!(
        !views::alert_query_uses_index(&db.pool, now())
            .await
            .unwrap()
    );
    let found = check(&db.pool).await;
    assert_eq!(found.problem, Some(PlanProblem::QueryFails), "{found:?}");
    assert!(found.plan.contains("operator does not exist"), "{found:?}");
}

/// The seed's flip: a big table whose statistics were taken while it was
/// small (ANALYZE at 100 rows, then 20,000), healthy under normal costs;
/// then the cost settings change (as in the seed's database upgrade) and
/// the planner turns to a sequential scan. Statistics that still say "100
/// rows" must not hide it.
#[tokio::test]
async fn a_real_flip_on_a_big_table_is_raised_and_a_small_table_is_not() {
    let db = TestDatabase::new().await;
    execute(
        &db.pool,
        "ALTER TABLE suppression_clusters SET (autovacuum_enabled = false)",
    )
    .await;
    clusters(&db.pool, now(), 1, 100).await;
    execute(&db.pool, "ANALYZE suppression_clusters").await;
    clusters(&db.pool, now(), 101, 19_900).await;
    let healthy = check(&db.pool).await;
    assert_eq!(healthy.problem, None, "{healthy:?}");
    assert!(healthy.estimated_table_rows >= 10_000.0, "{healthy:?}");
    assert!(
        healthy.plan.contains("suppression_clusters_recent"),
        "{healthy:?}"
    );

    execute(
        &db.pool,
        &format!("ALTER DATABASE {} SET random_page_cost = 4000", db.name),
    )
    .await;
    let costly = archiver_operator::db::connect(&db.url, 2)
        .await
        .expect("a connection with the new settings");
    assert!(!views::alert_query_uses_index(&costly, now()).await.unwrap());
    let flipped = views::check_alert_query_plan(&costly, now()).await.unwrap();
    assert_eq!(
        flipped.problem,
        Some(PlanProblem::PlanFlipped),
        "{flipped:?}"
    );
    assert!(flipped.plan.contains("Seq Scan"), "{flipped:?}");

    // The same costs on a small table: a sequential scan is right there.
    execute(&costly, "TRUNCATE suppression_clusters").await;
    clusters(&costly, now(), 1, 300).await;
    execute(&costly, "ANALYZE suppression_clusters").await;
    let small = views::check_alert_query_plan(&costly, now()).await.unwrap();
    assert_eq!(small.problem, None, "{small:?}");
    costly.close().await;
}

/// Through the maintenance pass: the metric names the reason, the views
/// watermark row records it, and both clear once the index is back.
#[tokio::test]
async fn a_problem_is_exported_with_its_reason_and_cleared_once_fixed() {
    let db = TestDatabase::new().await;
    let metrics = Metrics::new();
    let at = now();
    sqlx::query(
        "INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at) \
         VALUES (0, $1, 't', now())",
    )
    .bind(at - Duration::minutes(2))
    .execute(&db.pool)
    .await
    .unwrap();
    clusters(&db.pool, at, 1, 300).await;
    execute(&db.pool, "DROP INDEX suppression_clusters_recent").await;
    execute(
        &db.pool,
        "CREATE INDEX suppression_clusters_recent ON suppression_clusters \
         (minute_bucket DESC, contributing_tenant_count) WHERE contributing_tenant_count > 1000",
    )
    .await;
    let report = views::maintain_and_report(&db.pool, None, at, &metrics)
        .await
        .unwrap();
    assert_eq!(report.plan_uses_index, Some(false));
    let text = metrics.encode();
    assert!(
        text.contains("archiver_suppression_plan_problem{reason=\"index_unusable\"} 1"),
        "{text}"
    );
    assert!(text.contains("\narchiver_suppression_plan_uses_index 0\n"));
    let recorded: Option<bool> =
        sqlx::query_scalar("SELECT plan_uses_index FROM derived_views_watermark")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(recorded, Some(false));

    // Within the minute the check is not due again; after it, it is.
    let again = views::maintain_and_report(&db.pool, None, at + Duration::seconds(10), &metrics)
        .await
        .unwrap();
    assert_eq!(again.plan_check, None);
    execute(&db.pool, "DROP INDEX suppression_clusters_recent").await;
    execute(
        &db.pool,
        "CREATE INDEX suppression_clusters_recent ON suppression_clusters \
         (minute_bucket DESC, contributing_tenant_count)",
    )
    .await;
    let fixed = views::maintain_and_report(&db.pool, None, at + Duration::minutes(1), &metrics)
        .await
        .unwrap();
    assert_eq!(fixed.plan_uses_index, Some(true));
    let text = metrics.encode();
    assert!(
        !text.contains("archiver_suppression_plan_problem{"),
        "{text}"
    );
    assert!(text.contains("\narchiver_suppression_plan_uses_index 1\n"));
}

/// A flip from stale statistics: ANALYZE ran while the table held only the
/// last minute's clusters, so the planner believes the router's minute is
/// the whole table and scans it sequentially once the table is big. The
/// first pin of docs/OPERATIONS.md (ANALYZE) clears it, and the covering
/// index of its step 4, swapped in with its commands, passes the check.
#[tokio::test]
async fn a_flip_from_stale_statistics_is_raised_and_the_documented_pins_clear_it() {
    let db = TestDatabase::new().await;
    let at = now();
    execute(
        &db.pool,
        "ALTER TABLE suppression_clusters SET (autovacuum_enabled = false)",
    )
    .await;
    sqlx::query(
        "INSERT INTO suppression_clusters (error_kind, asn, registry_of_origin, minute_bucket, \
             contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count) \
         SELECT 'kind', -g, 'mcp.so', date_trunc('minute', $1::timestamptz) - interval '1 minute', \
                20, ARRAY['a', 'b'], 3 \
         FROM generate_series(1, 100) g",
    )
    .bind(at)
    .execute(&db.pool)
    .await
    .unwrap();
    execute(&db.pool, "ANALYZE suppression_clusters").await;
    clusters(&db.pool, at, 1, 30_000).await;
    assert!(!views::alert_query_uses_index(&db.pool, at).await.unwrap());
    let flipped = check(&db.pool).await;
    assert_eq!(
        flipped.problem,
        Some(PlanProblem::PlanFlipped),
        "{flipped:?}"
    );

    execute(&db.pool, "ANALYZE suppression_clusters").await;
    let pinned = check(&db.pool).await;
    assert_eq!(pinned.problem, None, "{pinned:?}");

    for step in [
        "CREATE INDEX CONCURRENTLY suppression_clusters_recent_covering \
         ON suppression_clusters (minute_bucket DESC, contributing_tenant_count) \
         INCLUDE (error_kind, asn, registry_of_origin)",
        "DROP INDEX CONCURRENTLY suppression_clusters_recent",
        "ALTER INDEX suppression_clusters_recent_covering RENAME TO suppression_clusters_recent",
        "VACUUM (ANALYZE) suppression_clusters",
    ] {
        execute(&db.pool, step).await;
    }
    let covering = check(&db.pool).await;
    assert_eq!(covering.problem, None, "{covering:?}");
    assert!(
        covering.plan.contains("suppression_clusters_recent"),
        "{covering:?}"
    );
}

/// `run --manifests DIR --once` with no ArchiverShard: the only shard row
/// is retired and nothing is archived, so there is no views watermark and
/// no minute to apply, and the plan check still runs: the pass's notes and
/// the log name the problem. Then, with a views watermark and still no
/// active shard (every shard suspended or retired), it runs on its schedule
/// and is recorded in the views watermark row.
#[tokio::test]
async fn the_check_runs_without_an_active_shard_and_run_once_reports_it() {
    let db = TestDatabase::new().await;
    let at = now();
    sqlx::query(
        "INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at) \
         VALUES (0, $1, 't', now())",
    )
    .bind(at - Duration::minutes(2))
    .execute(&db.pool)
    .await
    .unwrap();
    clusters(&db.pool, at, 1, 300).await;
    execute(&db.pool, "DROP INDEX suppression_clusters_recent").await;
    execute(
        &db.pool,
        "CREATE INDEX suppression_clusters_recent ON suppression_clusters \
         ((minute_bucket AT TIME ZONE 'UTC'), contributing_tenant_count)",
    )
    .await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests", dir.path().to_str().unwrap(), "--once"])
        .args(["--now", &at.to_rfc3339()])
        .env("DATABASE_URL", &db.url)
        .env("ARCHIVER_LOG_FORMAT", "text")
        .output()
        .expect("run the binary");
    let printed = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let retired: String =
        sqlx::query_scalar("SELECT lifecycle FROM archive_watermark WHERE shard_id = 0")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(retired, "retired", "{printed}");
    assert!(
        printed.contains("the alert router's query is not served by its index (index_unusable"),
        "{printed}"
    );
    assert!(
        printed.contains("not served by suppression_clusters_recent"),
        "{printed}"
    );

    sqlx::query("INSERT INTO derived_views_watermark (last_minute) VALUES ($1)")
        .bind(at - Duration::minutes(5))
        .execute(&db.pool)
        .await
        .unwrap();
    let metrics = Metrics::new();
    let report = views::maintain_and_report(&db.pool, None, at + Duration::minutes(1), &metrics)
        .await
        .unwrap();
    assert_eq!(report.waiting_on, None);
    assert_eq!(
        report.plan_check.map(|check| check.problem),
        Some(Some(PlanProblem::IndexUnusable))
    );
    let recorded: Option<bool> =
        sqlx::query_scalar("SELECT plan_uses_index FROM derived_views_watermark")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(recorded, Some(false), "{printed}");
}

/// The soak's minute 2: 80 clusters in the last two minutes, upserted
/// minute after minute (each upsert a new row version in both indexes),
/// then analyzed. With sequential scans made unattractive, the planner
/// costed the unique key's index (it also finds `minute_bucket = $1`) below
/// `suppression_clusters_recent` and chose it; the index is healthy, so no
/// problem may be reported. This test failed before the ordered second
/// question of the check.
#[tokio::test]
async fn a_small_upserted_table_where_the_key_index_wins_is_not_reported() {
    let db = TestDatabase::new().await;
    let now = now();
    sqlx::query(
        "INSERT INTO suppression_clusters (error_kind, asn, registry_of_origin, minute_bucket, \
             contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count) \
         SELECT 'kind-' || (g % 7), 64500 + g, 'registry-' || (g % 3), \
                date_trunc('minute', $1::timestamptz) - (1 + g % 2) * interval '1 minute', \
                2 + g % 5, ARRAY[md5(g::text) || md5(g::text), md5(g::text)], 3 \
         FROM generate_series(1, 80) g",
    )
    .bind(now)
    .execute(&db.pool)
    .await
    .expect("insert clusters");
    for _ in 0..60 {
        execute(
            &db.pool,
            "UPDATE suppression_clusters SET contributing_tenant_count = contributing_tenant_count + 1, \
             updated_at = now()",
        )
        .await;
    }
    execute(&db.pool, "ANALYZE suppression_clusters").await;
    let found = check(&db.pool).await;
    assert_eq!(found.problem, None, "{found:?}");
    assert!(
        found
            .plan_without_seqscan
            .contains("suppression_clusters_recent"),
        "{found:?}"
    );
}
