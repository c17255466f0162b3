//! Attacks on the plan check's twins (`views::check_alert_query_plan`,
//! commit 47e6be7): a plan that finds the minute through any valid and
//! ready index of `suppression_clusters` whose first key is the column
//! `minute_bucket` serves the alert router; `suppression_clusters_recent`
//! itself must still exist, be valid and lead with the minute.
//!
//! Promises under attack (docs/OPERATIONS.md, "The alert router's query
//! plan"): a broken setup is always reported, a healthy one never is, and
//! the plan the check logs names the index that served.

use chrono::Duration;
use sqlx::PgPool;

use archiver_operator::testing::TestDatabase;
use archiver_operator::views::{self, PlanProblem};

#[path = "common/plan_fixtures.rs"]
#[allow(dead_code)]
mod plan_fixtures;
use plan_fixtures::{check, clusters_into as clusters, execute, now, rebuild_index};

/// `suppression_clusters_recent` made partial with a predicate no minute
/// of today implies: valid and leading with the minute, so only a twin can
/// make the check pass.
const UNUSABLE_RECENT: &str = "(minute_bucket DESC, contributing_tenant_count) \
                               WHERE minute_bucket < '2000-01-01'";

/// The router's own question, as it sends it (a bound threshold), with
/// sequential scans off: the scans of its plan, `Node Type using Index
/// Name (Index Cond)`. What the router can really use, to prove a setup is
/// broken or healthy independently of the check.
async fn router_plan_without_seqscan(pool: &PgPool, threshold: i32) -> String {
    let mut tx = pool.begin().await.expect("begin");
    execute_in(&mut tx, "SET LOCAL enable_seqscan = off").await;
    let minute = archiver_operator::clock::minute_floor(now()) - Duration::minutes(1);
    let plan: String = sqlx::query_scalar(
        "SELECT string_agg(coalesce(n->>'Node Type', '') || ' using ' || \
                coalesce(n->>'Index Name', '-') || ' (' || coalesce(n->>'Index Cond', '-') || ')', '; ') \
         FROM jsonb_path_query( \
                (SELECT plan FROM plan_of_router($1, $2) plan), 'strict $.**') n \
         WHERE jsonb_typeof(n) = 'object' AND n ? 'Node Type'",
    )
    .bind(minute)
    .bind(threshold)
    .fetch_one(&mut *tx)
    .await
    .expect("explain the router's query");
    tx.rollback().await.expect("rollback");
    plan
}

async fn execute_in(tx: &mut sqlx::PgConnection, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

/// `plan_of_router(minute, threshold)`: EXPLAIN of the router's query with
/// the two values bound as parameters of a custom plan (what the router's
/// unnamed prepared statement gets).
async fn install_plan_of_router(pool: &PgPool) {
    execute(
        pool,
        "CREATE FUNCTION plan_of_router(minute timestamptz, threshold int) RETURNS jsonb \
         LANGUAGE plpgsql AS $$ DECLARE p json; BEGIN \
           EXECUTE 'EXPLAIN (FORMAT JSON) SELECT error_kind, asn, registry_of_origin, \
                    contributing_tenant_count FROM suppression_clusters \
                    WHERE minute_bucket = $1 AND contributing_tenant_count > $2' \
             INTO p USING minute, threshold; \
           RETURN p::jsonb; END $$",
    )
    .await;
}

/// Defect: a twin made partial on the router's threshold, `WHERE
/// contributing_tenant_count > 5`. The router's query is `... AND
/// contributing_tenant_count > $2`, which does not imply the predicate: a
/// router asking for clusters above 3 tenants cannot use the twin. The
/// check explains the query with the literal 10 in place of `$2`, the
/// planner proves `> 10` implies `> 5`, the twin "serves", and the check
/// reports no problem while the named index is unusable and the router's
/// query (threshold 3) has no index that finds the minute.
#[tokio::test]
async fn a_twin_partial_on_the_threshold_does_not_serve_the_router() {
    let db = TestDatabase::new().await;
    install_plan_of_router(&db.pool).await;
    clusters(&db.pool, "suppression_clusters", now(), 300, 1440).await;
    rebuild_index(&db.pool, UNUSABLE_RECENT).await;
    execute(
        &db.pool,
        "CREATE INDEX twin ON suppression_clusters (minute_bucket, contributing_tenant_count) \
         WHERE contributing_tenant_count > 5",
    )
    .await;
    execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
    // The setup is broken for the router: asking above 3 tenants, no index
    // finds the minute even with sequential scans off.
    let router = router_plan_without_seqscan(&db.pool, 3).await;
    assert!(
        !router.contains("using twin") && !router.contains("using suppression_clusters_recent"),
        "the router could use an index leading with the minute: {router}"
    );
    let found = check(&db.pool).await;
    assert_eq!(
        found.problem,
        Some(PlanProblem::IndexUnusable),
        "a twin partial on the threshold was taken as serving: {found:?}"
    );
}

/// Defect, the same without a twin: `suppression_clusters_recent` itself
/// made partial on the threshold (`WHERE contributing_tenant_count > 5`).
/// Docs: "made partial with a predicate the query does not imply" is
/// unusable; the check's literal 10 implies it.
#[tokio::test]
async fn the_index_partial_on_the_threshold_is_unusable() {
    let db = TestDatabase::new().await;
    install_plan_of_router(&db.pool).await;
    clusters(&db.pool, "suppression_clusters", now(), 300, 1440).await;
    rebuild_index(
        &db.pool,
        "(minute_bucket DESC, contributing_tenant_count) WHERE contributing_tenant_count > 5",
    )
    .await;
    execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
    let router = router_plan_without_seqscan(&db.pool, 3).await;
    assert!(
        !router.contains("using twin") && !router.contains("using suppression_clusters_recent"),
        "the router could use an index leading with the minute: {router}"
    );
    let found = check(&db.pool).await;
    assert_eq!(
        found.problem,
        Some(PlanProblem::IndexUnusable),
        "an index partial on the threshold was taken as usable: {found:?}"
    );
}

/// Held or not: twins that must not serve, next to a named index that is
/// valid and leads with the minute but cannot be used (partial on an old
/// minute). Each is reported `IndexUnusable`.
#[tokio::test]
async fn twins_that_cannot_find_the_minute_do_not_serve() {
    let twins: &[(&str, &[&str])] = &[
        (
            "expression date_trunc",
            &["CREATE INDEX twin ON suppression_clusters \
               ((date_trunc('minute', minute_bucket AT TIME ZONE 'UTC')), contributing_tenant_count)"],
        ),
        (
            "expression minute_bucket AT TIME ZONE 'UTC'",
            &["CREATE INDEX twin ON suppression_clusters ((minute_bucket AT TIME ZONE 'UTC'))"],
        ),
        (
            "partial, predicate not implied",
            &["CREATE INDEX twin ON suppression_clusters (minute_bucket) \
               WHERE contributing_tenant_count > 1000"],
        ),
        (
            "minute as a later key",
            &["CREATE INDEX twin ON suppression_clusters (error_kind, minute_bucket)"],
        ),
        (
            "same-named table in another schema, with a twin",
            &[
                "CREATE SCHEMA other",
                "CREATE TABLE other.suppression_clusters (LIKE suppression_clusters)",
                "CREATE INDEX twin ON other.suppression_clusters (minute_bucket)",
                "CREATE INDEX suppression_clusters_recent ON other.suppression_clusters \
                 (minute_bucket)",
            ],
        ),
        (
            "index named like the twin on another table",
            &["CREATE INDEX twin ON suppression_clusters_history (minute_bucket)"],
        ),
    ];
    let mut wrong = Vec::new();
    for (what, statements) in twins {
        let db = TestDatabase::new().await;
        clusters(&db.pool, "suppression_clusters", now(), 300, 1440).await;
        rebuild_index(&db.pool, UNUSABLE_RECENT).await;
        for statement in *statements {
            execute(&db.pool, statement).await;
        }
        execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
        let found = check(&db.pool).await;
        if found.problem != Some(PlanProblem::IndexUnusable) {
            wrong.push((*what, found));
        }
    }
    assert!(
        wrong.is_empty(),
        "a twin that cannot serve served: {wrong:?}"
    );
}

/// Held or not: a twin left INVALID by a failed `CREATE UNIQUE INDEX
/// CONCURRENTLY` (duplicates), leading with the minute, does not serve.
#[tokio::test]
async fn an_invalid_twin_does_not_serve() {
    let db = TestDatabase::new().await;
    clusters(&db.pool, "suppression_clusters", now(), 3000, 1440).await;
    rebuild_index(&db.pool, UNUSABLE_RECENT).await;
    let failed = sqlx::query(
        "CREATE UNIQUE INDEX CONCURRENTLY twin ON suppression_clusters (minute_bucket)",
    )
    .execute(&db.pool)
    .await;
    assert!(failed.is_err(), "the unique twin was built over duplicates");
    let invalid: bool = sqlx::query_scalar(
        "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = 'twin'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the invalid twin is left behind");
    assert!(invalid);
    execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
    let found = check(&db.pool).await;
    assert_eq!(found.problem, Some(PlanProblem::IndexUnusable), "{found:?}");
}

/// Held or not: a BRIN twin leading with the minute, on a big table whose
/// minutes are spread over every block (inserted in a shuffled order): the
/// planner reads the table instead, and the flip is reported.
#[tokio::test]
async fn a_brin_twin_on_a_big_shuffled_table_is_reported() {
    let db = TestDatabase::new().await;
    sqlx::query(
        "INSERT INTO suppression_clusters (error_kind, asn, registry_of_origin, minute_bucket, \
             contributing_tenant_count, contributing_tenant_hashes, contributing_pair_count) \
         SELECT 'kind-' || (g % 7), g, 'mcp.so', \
                date_trunc('minute', $1::timestamptz) - (1 + (g * 7919) % 1440) * interval '1 minute', \
                2 + g % 40, ARRAY['a', 'b'], 3 \
         FROM generate_series(1::bigint, 30000::bigint) g",
    )
    .bind(now())
    .execute(&db.pool)
    .await
    .expect("insert clusters");
    rebuild_index(&db.pool, UNUSABLE_RECENT).await;
    execute(
        &db.pool,
        "CREATE INDEX twin ON suppression_clusters USING brin (minute_bucket)",
    )
    .await;
    execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
    let found = check(&db.pool).await;
    assert!(
        found.problem.is_some(),
        "a BRIN twin over shuffled minutes passed on a big table: {found:?}"
    );
}

/// Held or not: healthy setups (the named index as migrated) next to twins
/// of every kind and odd names, at every size, after TRUNCATE and with
/// statistics from another size, are never reported; and when a twin
/// serves, the plan the check logs names it.
#[tokio::test]
async fn healthy_index_with_twins_of_every_kind_is_never_reported() {
    let twins = [
        "CREATE INDEX \"Twin.With Space\" ON suppression_clusters \
         (minute_bucket DESC, contributing_tenant_count) \
         INCLUDE (error_kind, asn, registry_of_origin)",
        "CREATE INDEX \"ÜBER_twin\" ON suppression_clusters USING hash (minute_bucket)",
        "CREATE INDEX brin_twin ON suppression_clusters USING brin (minute_bucket)",
        "CREATE INDEX expression_twin ON suppression_clusters \
         ((date_trunc('minute', minute_bucket AT TIME ZONE 'UTC')))",
        "CREATE INDEX partial_twin ON suppression_clusters (minute_bucket) \
         WHERE contributing_tenant_count > 1000",
        "CREATE EXTENSION IF NOT EXISTS btree_gist",
        "CREATE INDEX gist_twin ON suppression_clusters USING gist (minute_bucket)",
    ];
    let mut reported = Vec::new();
    for (count, minutes, analyze_first) in [
        (0, 1, false),
        (80, 2, false),
        (300, 1440, false),
        (20000, 1440, false),
        // Statistics taken when the table was empty, then 20,000 rows.
        (20000, 1440, true),
    ] {
        let db = TestDatabase::new().await;
        for twin in twins {
            execute(&db.pool, twin).await;
        }
        if analyze_first {
            execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
            clusters(&db.pool, "suppression_clusters", now(), count, minutes).await;
        } else {
            clusters(&db.pool, "suppression_clusters", now(), count, minutes).await;
            execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
        }
        let found = check(&db.pool).await;
        let named = [
            "suppression_clusters_recent",
            "Twin.With Space",
            "ÜBER_twin",
            "brin_twin",
            "gist_twin",
        ]
        .iter()
        .any(|name| {
            found
                .plan_without_seqscan
                .contains(&format!("using {name} ("))
        });
        if found.problem.is_some() || !named {
            reported.push((count, analyze_first, found.clone()));
        }
        // After TRUNCATE (no statistics of the new, empty file).
        execute(&db.pool, "TRUNCATE suppression_clusters").await;
        let found = check(&db.pool).await;
        if found.problem.is_some() {
            reported.push((count, true, found));
        }
    }
    assert!(
        reported.is_empty(),
        "a healthy setup was reported (or its plan names no serving index): {reported:#?}"
    );
}

/// Held or not: the covering twin with an odd name that the planner
/// prefers is named in both plans the check logs, as
/// the plan shows it.
#[tokio::test]
async fn the_logged_plan_names_the_serving_twin() {
    let db = TestDatabase::new().await;
    clusters(&db.pool, "suppression_clusters", now(), 20000, 1440).await;
    execute(
        &db.pool,
        "CREATE INDEX \"Twin.With Space\" ON suppression_clusters \
         (minute_bucket DESC, contributing_tenant_count) \
         INCLUDE (error_kind, asn, registry_of_origin)",
    )
    .await;
    execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
    let found = check(&db.pool).await;
    assert_eq!(found.problem, None, "{found:?}");
    for plan in [&found.plan, &found.plan_without_seqscan] {
        assert!(
            plan.contains("Scan using Twin.With Space (((minute_bucket = "),
            "the plan does not name the twin that served: {found:?}"
        );
    }
}

/// Defect: an inheritance child of `suppression_clusters` without any
/// index (rows of the router's table that no index can ever find). With
/// sequential scans off, the parent's part of the plan uses
/// `suppression_clusters_recent` and the child's part is a sequential
/// scan: the check counts the plan as finding the minute because ONE of
/// its scans does, and a table of 300 rows the router can never read
/// through an index passes as usable.
#[tokio::test]
async fn a_child_table_no_index_can_read_is_unusable() {
    let db = TestDatabase::new().await;
    execute(
        &db.pool,
        "CREATE TABLE suppression_clusters_child () INHERITS (suppression_clusters)",
    )
    .await;
    clusters(&db.pool, "suppression_clusters_child", now(), 300, 1440).await;
    execute(&db.pool, "VACUUM ANALYZE suppression_clusters_child").await;
    execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
    let found = check(&db.pool).await;
    assert!(
        found
            .plan_without_seqscan
            .contains("Seq Scan on suppression_clusters_child"),
        "the setup did not produce a sequential scan of the child: {found:?}"
    );
    assert_eq!(
        found.problem,
        Some(PlanProblem::IndexUnusable),
        "a plan with a sequential scan passed as usable: {found:?}"
    );
}

/// Defect: an inheritance child whose only index has the minute as a later
/// key, `(error_kind, minute_bucket)`. With sequential scans off its scan
/// shows an index condition on `minute_bucket` but reads every entry of
/// its leading key; the parent's scan uses `suppression_clusters_recent`,
/// and the check passed the plan as usable.
#[tokio::test]
async fn a_child_table_whose_index_has_the_minute_second_is_unusable() {
    let db = TestDatabase::new().await;
    execute(
        &db.pool,
        "CREATE TABLE suppression_clusters_child () INHERITS (suppression_clusters)",
    )
    .await;
    execute(
        &db.pool,
        "CREATE INDEX child_by_kind ON suppression_clusters_child (error_kind, minute_bucket)",
    )
    .await;
    clusters(&db.pool, "suppression_clusters_child", now(), 300, 1440).await;
    execute(&db.pool, "VACUUM ANALYZE suppression_clusters_child").await;
    execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
    let found = check(&db.pool).await;
    assert!(
        found.plan_without_seqscan.contains("using child_by_kind"),
        "the setup did not read the child through its index: {found:?}"
    );
    assert_eq!(
        found.problem,
        Some(PlanProblem::IndexUnusable),
        "a child read through an index with the minute second passed: {found:?}"
    );
}

/// Held or not: a child with its own index leading with the minute is
/// read through it, and the plan passes.
#[tokio::test]
async fn a_child_table_with_an_index_on_the_minute_passes() {
    let db = TestDatabase::new().await;
    execute(
        &db.pool,
        "CREATE TABLE suppression_clusters_child () INHERITS (suppression_clusters)",
    )
    .await;
    execute(
        &db.pool,
        "CREATE INDEX child_recent ON suppression_clusters_child \
         (minute_bucket, contributing_tenant_count)",
    )
    .await;
    clusters(&db.pool, "suppression_clusters_child", now(), 300, 1440).await;
    execute(&db.pool, "VACUUM ANALYZE suppression_clusters_child").await;
    execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
    let found = check(&db.pool).await;
    assert_eq!(found.problem, None, "{found:?}");
}

/// Held or not: a twin marked valid but not ready (`indisready = false`,
/// set in the catalog as a superuser; CREATE INDEX CONCURRENTLY passes
/// through that state) does not serve, though the planner may use it.
#[tokio::test]
async fn a_twin_that_is_not_ready_does_not_serve() {
    let db = TestDatabase::new().await;
    clusters(&db.pool, "suppression_clusters", now(), 300, 1440).await;
    rebuild_index(&db.pool, UNUSABLE_RECENT).await;
    execute(
        &db.pool,
        "CREATE INDEX twin ON suppression_clusters (minute_bucket, contributing_tenant_count)",
    )
    .await;
    execute(
        &db.pool,
        "UPDATE pg_index SET indisready = false WHERE indexrelid = 'twin'::regclass",
    )
    .await;
    execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
    let found = check(&db.pool).await;
    assert_eq!(found.problem, Some(PlanProblem::IndexUnusable), "{found:?}");
}

/// Defect: the flip question was asked with the literal threshold 10, a
/// value the router may not send. On a big table whose costs make random
/// reads expensive (`random_page_cost = 60`), the router asking above 3
/// tenants (more of the minute's rows) scans the table, while the check's
/// query above 10 tenants goes through a covering twin partial on `> 5`
/// (the same happens without the twin, through the named index): no flip
/// reported. The flip question is asked now with the least selective
/// threshold (1: every cluster has at least 2 tenants), so whatever share
/// the router asks, its plan is at least as selective as the one checked.
#[tokio::test]
async fn a_flip_of_a_router_asking_below_ten_tenants_is_reported() {
    let db = TestDatabase::new().await;
    install_plan_of_router(&db.pool).await;
    clusters(&db.pool, "suppression_clusters", now(), 30000, 1440).await;
    execute(
        &db.pool,
        "CREATE INDEX twin ON suppression_clusters (minute_bucket, contributing_tenant_count) \
         INCLUDE (error_kind, asn, registry_of_origin) WHERE contributing_tenant_count > 5",
    )
    .await;
    execute(&db.pool, "VACUUM ANALYZE suppression_clusters").await;
    execute(
        &db.pool,
        &format!("ALTER DATABASE {} SET random_page_cost = 60", db.name),
    )
    .await;
    // New sessions, which take the database's setting.
    let pool = archiver_operator::db::connect(&db.url, 2).await.unwrap();
    let minute = archiver_operator::clock::minute_floor(now()) - Duration::minutes(1);
    let router: serde_json::Value = sqlx::query_scalar("SELECT plan_of_router($1, 3)")
        .bind(minute)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        router.to_string().contains("\"Node Type\":\"Seq Scan\""),
        "the setup did not flip the router's plan: {router}"
    );
    let found = views::check_alert_query_plan(&pool, now()).await.unwrap();
    assert_eq!(
        found.problem,
        Some(PlanProblem::PlanFlipped),
        "the router (above 3 tenants) scans the table, the check saw no flip: {found:?}"
    );
}
