//! Shared set-up of the plan-check tests (tests/attack_plan_check_*.rs):
//! suppression clusters written around the check's minute, statements run
//! by text, the check itself, and `suppression_clusters_recent` rebuilt.
//! Included with `#[path = "common/plan_fixtures.rs"] mod plan_fixtures;`.

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

use archiver_operator::views;

/// 20 s into the current minute: the check looks at the minute before.
pub fn now() -> DateTime<Utc> {
    archiver_operator::clock::minute_floor(Utc::now()) + Duration::seconds(20)
}

/// `count` clusters over the `minutes` minutes before `now` (the last
/// minute included), as tests/plan_check.rs writes them, into `table`
/// (`suppression_clusters` or a table inheriting from it); tenant counts
/// run from 2 to 41.
pub async fn clusters_into(
    pool: &PgPool,
    table: &str,
    now: DateTime<Utc>,
    count: i64,
    minutes: i64,
) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (error_kind, asn, registry_of_origin, minute_bucket, \
             contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count) \
         SELECT 'kind-' || (g % 7), g, 'mcp.so', \
                date_trunc('minute', $1::timestamptz) - (1 + g % $3) * interval '1 minute', \
                2 + g % 40, ARRAY['a', 'b'], 3 \
         FROM generate_series(1::bigint, $2::bigint) g"
    )))
    .bind(now)
    .bind(count)
    .bind(minutes)
    .execute(pool)
    .await
    .expect("insert clusters");
}

/// [`clusters_into`] `suppression_clusters`.
pub async fn clusters(pool: &PgPool, now: DateTime<Utc>, count: i64, minutes: i64) {
    clusters_into(pool, "suppression_clusters", now, count, minutes).await;
}

pub async fn execute(pool: &PgPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

pub async fn check(pool: &PgPool) -> views::PlanCheck {
    views::check_alert_query_plan(pool, now())
        .await
        .expect("the plan check runs")
}

/// Replaces `suppression_clusters_recent` by `definition` (same name).
pub async fn rebuild_index(pool: &PgPool, definition: &str) {
    execute(pool, "DROP INDEX suppression_clusters_recent").await;
    execute(
        pool,
        &format!("CREATE INDEX suppression_clusters_recent ON suppression_clusters {definition}"),
    )
    .await;
}
