//! Attacks on the erasure catalogue check (DESIGN §9, `src/schema/`): an
//! erasure refuses while the database holds a table naming a tenant that
//! neither the catalogue nor `--erasure-out-of-scope-table` covers. With
//! real PostgreSQL and Redis: tenant columns spelled as ORMs spell them,
//! table names that read as other names, and a table created while the
//! erasure waits for its locks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use archiver_operator::api::deletion_request::{
    DeletionPhase, DeletionReason, DeletionRequestSpec,
};
use archiver_operator::api::{DeletionRequest, DeletionRequestStatus};
use archiver_operator::clock::ManualClock;
use archiver_operator::local_servers::RedisServer;
use archiver_operator::metrics::Metrics;
use archiver_operator::runtime::config::{OperatorConfig, SecretString};
use archiver_operator::runtime::context::{Context, SecretSource};
use archiver_operator::runtime::reconcile::{Managed, Outcome};
use archiver_operator::runtime::workers::WorkerHost;
use archiver_operator::schema::uncatalogued_tables;
use archiver_operator::testing::{TestDatabase, redis_server};

const TENANT: Uuid = Uuid::from_u128(0xca7a_0000_0000_4000_8000_0000_0000_0001);

fn erasure_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 30, 0).unwrap()
}

fn context(pool: &PgPool, redis: &RedisServer) -> Context {
    let ctx = Context {
        clock: Arc::new(ManualClock::new(erasure_time())),
        db: Some(pool.clone()),
        config: Arc::new(OperatorConfig {
            suppression_salt: Some(SecretString::new("catalogue-salt")),
            cache_invalidate_urls: Vec::new(),
            alert_key_patterns: Vec::new(),
            erasure_out_of_scope_tables: Vec::new(),
            erasure_redis_urls: Vec::new(),
        }),
        secrets: SecretSource::Manifests(Default::default()),
        metrics: Arc::new(Metrics::new()),
        workers: WorkerHost::Disabled,
        policies: Arc::new(archiver_operator::retention::directory::PolicyDirectory::new()),
        enforced_policies: Default::default(),
        redis_targets: Default::default(),
        publisher: archiver_operator::runtime::publish::Publisher::Disabled,
    };
    ctx.redis_targets
        .publish_shard("test/shard-0", SecretString::new(redis.url()));
    ctx
}

fn request(name: &str) -> DeletionRequest {
    let mut object = DeletionRequest::new(
        name,
        DeletionRequestSpec {
            tenant_id: TENANT,
            server_slug: Some("web".into()),
            reason: DeletionReason::GdprArt17,
            requester: Uuid::from_u128(0x0b7e),
            received_at: Some(Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap()),
            extension: None,
        },
    );
    object.metadata.namespace = Some("privacy".into());
    object.metadata.uid = Some(Uuid::new_v4().to_string());
    object.metadata.generation = Some(1);
    object
}

async fn uncatalogued(pool: &PgPool, declared: &[&str]) -> BTreeSet<String> {
    let declared: Vec<String> = declared.iter().map(|d| d.to_string()).collect();
    uncatalogued_tables(pool, &declared)
        .await
        .expect("the catalogue check runs")
        .into_iter()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Attack: tenant columns as ORMs and other teams spell them (`"TenantId"`,
/// `"Tenant_Id"`, `"Owner_Tenant_Hash"`), an unlogged table, a
/// partitioned table whose partition lives in another schema, a foreign
/// table (its rows live elsewhere, and no erasure reaches them), a table in
/// `public` whose name holds a dot (`"billing.invoices"`) beside the real
/// `billing.invoices`, and a temporary table of another session. Every
/// table holding tenant ids is found (before the fix the quoted spellings
/// were not: the check compared `attname = 'tenant_id'` exactly), once per
/// table (partitions belong to their parent), and named as SQL spells it,
/// so that declaring `billing.invoices` out of scope does not also exempt
/// the unrelated `public."billing.invoices"` (before the fix both printed,
/// and matched, as `billing.invoices`).
#[tokio::test]
async fn tenant_columns_in_any_spelling_are_found_and_names_are_not_ambiguous() {
    let db = TestDatabase::new().await;
    sqlx::raw_sql(
        r#"CREATE TABLE crm_accounts ("TenantId" uuid, name text);
           CREATE TABLE "Ledger" ("Tenant_Id" uuid, amount int);
           CREATE TABLE notify ("Owner_Tenant_Hash" text);
           CREATE UNLOGGED TABLE scratch_cache (tenant_id uuid);
           CREATE SCHEMA billing;
           CREATE TABLE billing.invoices (tenant_id uuid, total int);
           CREATE TABLE "billing.invoices" (tenant_id uuid, copy_of int);
           CREATE SCHEMA parts;
           CREATE TABLE events (tenant_id uuid, at date) PARTITION BY RANGE (at);
           CREATE TABLE parts.events_2026 PARTITION OF events
               FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
           CREATE TABLE tenants_seen (tenant_count int, tenantless text);
           CREATE FOREIGN DATA WRAPPER attack_wrapper;
           CREATE SERVER attack_remote FOREIGN DATA WRAPPER attack_wrapper;
           CREATE FOREIGN TABLE remote_invoices (tenant_id uuid) SERVER attack_remote;"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // A temporary table lives as long as its session, in pg_temp_N: no
    // erasure could reach it and it is gone when the session ends.
    let mut other_session = db.pool.acquire().await.unwrap();
    sqlx::query("CREATE TEMPORARY TABLE session_notes (tenant_id uuid)")
        .execute(&mut *other_session)
        .await
        .unwrap();

    let all = set(&[
        r#""Ledger""#,
        r#""billing.invoices""#,
        "billing.invoices",
        "crm_accounts",
        "events",
        "notify",
        "remote_invoices",
        "scratch_cache",
    ]);
    assert_eq!(uncatalogued(&db.pool, &[]).await, all);

    // Declared names are read as SQL reads them: `Billing.Invoices` is the
    // table of schema billing only; `public.crm_accounts` is crm_accounts;
    // `Ledger` unquoted is `ledger`, not `"Ledger"`; a name that is no
    // table exempts nothing.
    let left = uncatalogued(
        &db.pool,
        &[
            "Billing.Invoices",
            "public.crm_accounts",
            "Ledger",
            " notify ",
            "no_such_table",
        ],
    )
    .await;
    assert_eq!(
        left,
        set(&[
            r#""Ledger""#,
            r#""billing.invoices""#,
            "events",
            "remote_invoices",
            "scratch_cache"
        ])
    );
    let left = uncatalogued(
        &db.pool,
        &[
            r#""Ledger""#,
            r#""billing.invoices""#,
            "events",
            "remote_invoices",
            "scratch_cache",
        ],
    )
    .await;
    assert_eq!(left, set(&["billing.invoices", "crm_accounts", "notify"]));
    drop(other_session);
}

/// Attack: a table naming the tenant is created (and filled with a copy of
/// the tenant's data) after the erasure's catalogue check passed, while the
/// erasure transaction waits for a lock another session holds on one of its
/// surfaces. Before the fix the erasure completed, "Verified" and with a
/// receipt, although the copy was still there: the check ran once, before
/// the transaction. Now the check is repeated with the verification, and
/// the receipt is withheld, naming the table.
#[tokio::test]
async fn a_table_created_while_the_erasure_waits_for_its_locks_withholds_the_receipt() {
    let db = TestDatabase::new().await;
    let redis = redis_server();
    let ctx = context(&db.pool, &redis);
    let object = request("erase-racing-table");

    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE probe_month IN EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let erasure = async {
        let outcome: Outcome<DeletionRequestStatus> =
            object.reconcile(&ctx).await.expect("a status");
        outcome.status
    };
    let interleave = async {
        // Wait until the erasure's transaction is blocked on the lock: its
        // catalogue check is behind it.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the erasure never waited for the lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE exported_probes (tenant_id uuid, server_slug text); \
             INSERT INTO exported_probes VALUES ('{TENANT}', 'web')"
        )))
        .execute(&db.pool)
        .await
        .unwrap();
        holder.commit().await.unwrap();
    };
    let (status, ()) = tokio::join!(erasure, interleave);

    assert_ne!(status.phase, Some(DeletionPhase::Completed), "{status:#?}");
    assert_eq!(status.receipt, None, "{status:#?}");
    let failure = status.last_failure.clone().unwrap_or_default();
    assert!(
        failure.contains("catalogue") && failure.contains("exported_probes"),
        "{failure}"
    );
    assert!(
        !status
            .conditions
            .iter()
            .any(|c| c.type_ == "Verified" && c.status == "True"),
        "{status:#?}"
    );
    let receipts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM data_deletion_log WHERE receipt_sha256 IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(receipts, 0, "no receipt is recorded");

    // Its owners erase it by their own process: declared out of scope, the
    // retry completes, and its receipt covers both runs' tombstones.
    let mut object = object;
    object.status = Some(status);
    let mut ctx = ctx;
    let mut config = (*ctx.config).clone();
    config.erasure_out_of_scope_tables = vec!["exported_probes".into()];
    ctx.config = Arc::new(config);
    let outcome: Outcome<DeletionRequestStatus> = object.reconcile(&ctx).await.expect("a status");
    let status = outcome.status;
    assert_eq!(status.phase, Some(DeletionPhase::Completed), "{status:#?}");
    let receipt: serde_json::Value =
        serde_json::from_str(status.receipt.as_deref().unwrap_or("null")).unwrap();
    assert_eq!(
        receipt["tombstones"].as_array().map(Vec::len),
        Some(2),
        "{receipt:#}"
    );
}

/// Attack: the operator's search path starts with a schema that is not
/// the one the migrations used (`"$user", public` with a schema named like
/// the role, created later by a DBA; here `ops, public`). The erasure's
/// unqualified statements still reach `public.probe_minute` and the rest,
/// since `ops` has none of them. Before the fix the check compared schemas
/// with `current_schema()` (`ops`): every catalogue table printed as
/// `public.<name>`, was "uncatalogued", and every erasure refused. Now a
/// table is the catalogue's when its unqualified name finds it through the
/// search path, which is also what decides which table an erasure
/// statement erases: a catalogue name shadowed in `ops` (`ops.probe_day`)
/// is the one erased, so the real `public.probe_day` is reported.
#[tokio::test]
async fn the_catalogue_follows_the_search_path_as_the_erasure_statements_do() {
    use sqlx::Executor;
    let db = TestDatabase::new().await;
    sqlx::raw_sql(
        "CREATE SCHEMA ops; \
         CREATE TABLE ops.support_notes (tenant_id uuid); \
         CREATE TABLE public.billing_notes (tenant_id uuid)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let ops_first = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET search_path = ops, public").await?;
                Ok(())
            })
        })
        .connect(&db.url)
        .await
        .unwrap();

    assert_eq!(
        uncatalogued(&ops_first, &[]).await,
        set(&["billing_notes", "support_notes"])
    );
    assert_eq!(
        uncatalogued(&ops_first, &["ops.support_notes", "public.billing_notes"]).await,
        set(&[])
    );

    sqlx::query("CREATE TABLE ops.probe_day (tenant_id uuid)")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        uncatalogued(&ops_first, &[]).await,
        set(&["billing_notes", "public.probe_day", "support_notes"])
    );
    ops_first.close().await;
}
