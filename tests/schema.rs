//! The embedded migrations against a real PostgreSQL server.

use archiver_operator::testing::TestDatabase;

const TENANT: &str = "6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01";

async fn create_november_partition(pool: &sqlx::PgPool) {
    sqlx::query(
        "CREATE TABLE probe_minute_2026_11 PARTITION OF probe_minute \
         FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00')",
    )
    .execute(pool)
    .await
    .expect("create a partition");
}

async fn insert_minute(
    pool: &sqlx::PgPool,
    region: &str,
    state: &str,
    minute: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
         VALUES ($1::uuid, 'my-server', $2, $3::timestamptz, $4)",
    )
    .bind(TENANT)
    .bind(region)
    .bind(minute)
    .bind(state)
    .execute(pool)
    .await
    .map(|_| ())
}

fn check_violation(error: sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => {
            assert_eq!(
                db.code().as_deref(),
                Some("23514"),
                "expected a CHECK violation: {db}"
            );
            db.message().to_string()
        }
        other => panic!("expected a database error, got {other}"),
    }
}

#[tokio::test]
async fn migrate_twice_is_idempotent_through_the_command() {
    let db = TestDatabase::empty().await;
    for _ in 0..2 {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
            .args(["migrate", "--database-url", &db.url])
            .output()
            .expect("run the binary");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
         AND c.relname NOT LIKE '\\_sqlx%' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("list tables");
    assert_eq!(
        tables,
        [
            "archive_watermark",
            "data_deletion_log",
            "derived_views_watermark",
            "operator_audit_log",
            "probe_day",
            "probe_minute",
            "probe_minute_rejects",
            "probe_month",
            "retention_drift",
            "retention_enforced_policy",
            "retention_run",
            "suppression_clusters",
            "suppression_clusters_history",
            "tenant_tier_history",
        ]
    );
}

#[tokio::test]
async fn probe_minute_is_range_partitioned_with_no_default_partition() {
    let db = TestDatabase::new().await;
    let strategy: String = sqlx::query_scalar(
        "SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = 'probe_minute'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .expect("probe_minute is partitioned");
    assert_eq!(strategy, "r");
    // No partition at all yet: a row must fail loudly, not land in a default.
    let error = insert_minute(&db.pool, "us-east", "up", "2026-11-22 09:00+00")
        .await
        .expect_err("no partition for the row");
    assert!(error.to_string().contains("no partition"), "{error}");
    create_november_partition(&db.pool).await;
    insert_minute(&db.pool, "us-east", "up", "2026-11-22 09:00+00")
        .await
        .expect("a valid row is accepted");
    let outside = insert_minute(&db.pool, "us-east", "up", "2026-12-01 00:00+00").await;
    assert!(outside.is_err(), "December has no partition");
}

#[tokio::test]
async fn a_region_typo_and_an_unknown_state_are_rejected_by_the_table() {
    let db = TestDatabase::new().await;
    create_november_partition(&db.pool).await;
    let typo = insert_minute(&db.pool, "us-easr", "up", "2026-11-22 09:00+00").await;
    assert!(check_violation(typo.expect_err("region typo")).contains("check constraint"));
    let state = insert_minute(&db.pool, "us-east", "sideways", "2026-11-22 09:01+00").await;
    assert!(check_violation(state.expect_err("unknown state")).contains("check constraint"));
}

#[tokio::test]
async fn the_primary_key_absorbs_a_replayed_minute() {
    let db = TestDatabase::new().await;
    create_november_partition(&db.pool).await;
    insert_minute(&db.pool, "us-east", "up", "2026-11-22 09:00+00")
        .await
        .expect("first write");
    let replay = sqlx::query(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
         VALUES ($1::uuid, 'my-server', 'us-east', '2026-11-22 09:00+00', 'down') ON CONFLICT DO NOTHING",
    )
    .bind(TENANT)
    .execute(&db.pool)
    .await
    .expect("replay");
    assert_eq!(replay.rows_affected(), 0);
    let state: String = sqlx::query_scalar("SELECT state FROM probe_minute")
        .fetch_one(&db.pool)
        .await
        .expect("one row");
    assert_eq!(state, "up");
}

#[tokio::test]
async fn the_hot_path_indexes_of_the_design_exist() {
    let db = TestDatabase::new().await;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename IN ('probe_minute', 'suppression_clusters') ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("list indexes");
    for expected in [
        "probe_minute_idx_cluster",
        "probe_minute_idx_uptime",
        "suppression_clusters_recent",
    ] {
        assert!(
            indexes.iter().any(|i| i == expected),
            "{expected} missing from {indexes:?}"
        );
    }
}

#[tokio::test]
async fn tier_history_rejects_unknown_tiers_and_contracts_above_the_cap() {
    let db = TestDatabase::new().await;
    let insert = |tier: &'static str, contract: Option<i32>| {
        sqlx::query(
            "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from, contract_minute_retention_days) \
             VALUES (gen_random_uuid(), $1, now(), $2)",
        )
        .bind(tier)
        .bind(contract)
        .execute(&db.pool)
    };
    insert("enterprise", Some(730))
        .await
        .expect("a contract at the cap is fine");
    check_violation(insert("platinum", None).await.expect_err("unknown tier"));
    check_violation(
        insert("enterprise", Some(731))
            .await
            .expect_err("above the cap"),
    );
    check_violation(
        insert("team", Some(200))
            .await
            .expect_err("contract on a non-enterprise tier"),
    );
}

/// The catalogue (`src/schema/`) covers every table of the migrated
/// schema that names a tenant, and every table it names exists; a table
/// another team adds with a `tenant_id` column or tenant hashes, in any
/// schema and also as a materialized view, is found, unless declared out of
/// scope; partitions belong to their parent and views hold no data.
#[tokio::test]
async fn every_table_naming_a_tenant_is_in_the_catalogue_or_reported() {
    use archiver_operator::schema::{catalogued_tables, uncatalogued_tables};
    let db = TestDatabase::new().await;
    create_november_partition(&db.pool).await;
    assert_eq!(
        uncatalogued_tables(&db.pool, &[]).await.unwrap(),
        Vec::<String>::new(),
        "the migrations add no table the catalogue misses"
    );
    for table in catalogued_tables() {
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(table)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(
            exists.as_deref(),
            Some(table),
            "the catalogue names {table}"
        );
    }
    sqlx::raw_sql(
        "CREATE TABLE other_team_notes (tenant_id uuid, note text); \
         CREATE SCHEMA billing; CREATE TABLE billing.invoices (tenant_id uuid, total int); \
         CREATE TABLE alert_dedup (alert_tenant_hash text); \
         CREATE MATERIALIZED VIEW tenant_days AS SELECT DISTINCT tenant_id FROM probe_day; \
         CREATE VIEW tenant_servers AS SELECT tenant_id, server_slug FROM probe_month; \
         CREATE TABLE unrelated (id int)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        uncatalogued_tables(&db.pool, &[]).await.unwrap(),
        vec![
            "alert_dedup",
            "billing.invoices",
            "other_team_notes",
            "tenant_days"
        ]
    );
    assert_eq!(
        uncatalogued_tables(&db.pool, &["billing.invoices".into(), "alert_dedup".into()])
            .await
            .unwrap(),
        vec!["other_team_notes", "tenant_days"]
    );
}

/// The one list of tiers (`Tier::ALL`) against the two lists it cannot
/// generate: the CRD's `spec.tiers` fields (a struct, so a field added
/// without a tier, or a tier added to the enum but left out of `ALL`, shows
/// here) and the `CHECK` on `tenant_tier_history.tier` (a migration).
#[tokio::test]
async fn every_tier_list_agrees_with_tier_all() {
    use std::collections::BTreeSet;

    use archiver_operator::api::retention_policy::Tier;
    use archiver_operator::api::{RetentionPolicy, crd_json};
    use kube::CustomResourceExt;

    let all: BTreeSet<String> = Tier::ALL.iter().map(|t| t.as_str().to_string()).collect();
    assert_eq!(all.len(), Tier::ALL.len(), "a tier is listed twice");

    let crd = crd_json(&RetentionPolicy::crd());
    let tiers = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["tiers"];
    let fields: BTreeSet<String> = tiers["properties"]
        .as_object()
        .expect("spec.tiers has properties")
        .keys()
        .cloned()
        .collect();
    assert_eq!(fields, all, "spec.tiers fields vs Tier::ALL");
    let required: BTreeSet<String> = tiers["required"]
        .as_array()
        .expect("spec.tiers lists its required fields")
        .iter()
        .filter_map(|name| name.as_str().map(str::to_string))
        .collect();
    assert_eq!(required, all, "every tier is required in spec.tiers");

    let db = TestDatabase::new().await;
    let definitions: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conrelid = 'tenant_tier_history'::regclass AND contype = 'c'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // `CHECK ((tier = ANY (ARRAY['public'::text, ...])))`
    let tier_check: Vec<&String> = definitions
        .iter()
        .filter(|d| d.contains("tier = ANY"))
        .collect();
    assert_eq!(
        tier_check.len(),
        1,
        "one CHECK lists the tiers: {definitions:?}"
    );
    let in_check: BTreeSet<String> = tier_check[0]
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert_eq!(
        in_check, all,
        "tenant_tier_history.tier CHECK vs Tier::ALL: {}",
        tier_check[0]
    );
}
