//! Attacks on the re-attach of a detached month (`removal::attach_again`,
//! `add_missing_columns`, commit 603a810), reached through
//! `removal::drop_leftover`: the 2027-01 month was detached (the drop's
//! process died after the detach), probe_minute changed meanwhile, and
//! billing recorded a contract that keeps the month's row.
//!
//! Promises under attack: columns probe_minute gained are added to the
//! month as probe_minute defines them and recorded in `columnsAdded`; no
//! data is deleted or rewritten; what cannot be aligned leaves the month
//! detached with the error on every reconcile, never dropped.

use std::time::Duration as StdDuration;

use archiver_operator::partitions::PartitionError;
use archiver_operator::partitions::audit::LockDiscipline;
use archiver_operator::partitions::removal;
use archiver_operator::testing::TestDatabase;

#[path = "common/old_month.rs"]
#[allow(dead_code)] // shared by several test binaries; each uses a part
mod old_month;
use old_month::{PARTITION, attached, drop_leftover_with, one_old_month, record_contract};

fn lock() -> LockDiscipline {
    LockDiscipline {
        lock_timeout: StdDuration::from_millis(300),
        attempts: 3,
        backoff: StdDuration::from_millis(50),
    }
}

async fn drop_leftover(db: &TestDatabase) -> Result<Option<removal::Dropped>, PartitionError> {
    drop_leftover_with(db, lock()).await
}

async fn execute(db: &TestDatabase, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&db.pool)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

/// The month detached, then `migration` run on probe_minute, then the
/// contract that keeps the row recorded.
async fn detached_then(db: &TestDatabase, migration: &[&str]) {
    one_old_month(db).await;
    execute(
        db,
        &format!("ALTER TABLE probe_minute DETACH PARTITION {PARTITION}"),
    )
    .await;
    for statement in migration {
        execute(db, statement).await;
    }
    record_contract(db).await;
}

async fn columns_added(db: &TestDatabase) -> Option<serde_json::Value> {
    sqlx::query_scalar(
        "SELECT payload -> 'columnsAdded' FROM operator_audit_log \
         WHERE action = 'partition-drop-abandoned' AND payload ->> 'attachedAgain' = 'true'",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

/// Defect: a text column with a collation other than its type's default
/// (`COLLATE "C"`, as a migration adds a sortable key). `format_type` does
/// not render the collation, so the month gets the column with the
/// database's default collation, the ATTACH fails ("child table ... has
/// different collation for column"), and the month with a kept row stays
/// detached on every reconcile.
#[tokio::test]
async fn a_column_with_a_collation_is_added_with_it() {
    let db = TestDatabase::new().await;
    detached_then(
        &db,
        &[r#"ALTER TABLE probe_minute ADD COLUMN sort_key text COLLATE "C""#],
    )
    .await;
    let first = drop_leftover(&db).await;
    let next = drop_leftover(&db).await;
    assert_eq!(
        attached(&db).await,
        Some(true),
        "first reconcile: {first:?}; next: {next:?}; the month with a kept row must be attached \
         again with the column as probe_minute defines it (COLLATE \"C\")"
    );
}

/// Defect: a CHECK constraint added to probe_minute while the month was
/// detached (every attached month got it from the migration). Nothing adds
/// it to the month, the ATTACH fails ("child table is missing constraint"),
/// and the month with a kept row stays detached on every reconcile, though
/// its row satisfies the constraint.
#[tokio::test]
async fn a_check_constraint_probe_minute_gained_does_not_keep_the_month_detached() {
    let db = TestDatabase::new().await;
    detached_then(
        &db,
        &[
            "ALTER TABLE probe_minute ADD CONSTRAINT server_slug_grammar \
           CHECK (char_length(server_slug) BETWEEN 1 AND 512)",
        ],
    )
    .await;
    let first = drop_leftover(&db).await;
    let next = drop_leftover(&db).await;
    assert_eq!(
        attached(&db).await,
        Some(true),
        "first reconcile: {first:?}; next: {next:?}; the month (its row satisfies the new \
         constraint) must be attached again"
    );
}

/// Defect: NOT NULL set on an existing column of probe_minute while the
/// month was detached (a migration after a backfill). The ATTACH fails
/// ("column ... in child table must be marked NOT NULL") though the month's
/// row has a value there, and the month with a kept row stays detached.
#[tokio::test]
async fn a_not_null_probe_minute_gained_on_an_existing_column_does_not_keep_the_month_detached() {
    let db = TestDatabase::new().await;
    detached_then(&db, &[]).await;
    execute(&db, &format!("UPDATE {PARTITION} SET error_kind = 'none'")).await;
    execute(
        &db,
        "ALTER TABLE probe_minute ALTER COLUMN error_kind SET NOT NULL",
    )
    .await;
    let first = drop_leftover(&db).await;
    let next = drop_leftover(&db).await;
    assert_eq!(
        attached(&db).await,
        Some(true),
        "first reconcile: {first:?}; next: {next:?}; the month (no NULL in error_kind) must be \
         attached again"
    );
}

/// Held or not: a CHECK constraint probe_minute gained that the month's
/// row violates: nothing is rewritten to fit, the month stays detached
/// with its row, and every reconcile names the constraint.
#[tokio::test]
async fn a_check_constraint_the_row_violates_leaves_the_month_detached_and_reported() {
    let db = TestDatabase::new().await;
    detached_then(
        &db,
        &["ALTER TABLE probe_minute ADD CONSTRAINT long_slugs_only \
           CHECK (char_length(server_slug) > 5)"],
    )
    .await;
    for reconcile in 0..2 {
        let error = drop_leftover(&db)
            .await
            .expect_err("the month cannot be attached");
        assert!(
            error.to_string().contains("long_slugs_only"),
            "reconcile {reconcile}: {error}"
        );
        assert_eq!(attached(&db).await, Some(false), "reconcile {reconcile}");
    }
    let slug: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT server_slug FROM {PARTITION}"
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(slug, "ent");
}

/// Held or not: several columns at once with hostile names (a double
/// quote, a space, upper case, unicode, SQL in the name) and types with
/// modifiers, arrays, a domain, an enum, a volatile default, a NOT NULL
/// default and a generated column over a hostile name: all added as
/// probe_minute defines them, in order, the row kept unchanged.
#[tokio::test]
async fn hostile_names_and_types_are_added_as_probe_minute_defines_them() {
    let db = TestDatabase::new().await;
    detached_then(
        &db,
        &[
            "CREATE DOMAIN \"Weird Domain\" AS integer CHECK (VALUE >= 0)",
            "CREATE TYPE \"mood \"\"enum\"\"\" AS ENUM ('calm', 'loud')",
            r#"ALTER TABLE probe_minute
                 ADD COLUMN "we""ird col" varchar(12) DEFAULT 'a"b''c',
                 ADD COLUMN "Upper Case" numeric(10,3) NOT NULL DEFAULT 1.5,
                 ADD COLUMN "ünïcødé" integer[] DEFAULT '{1,2}',
                 ADD COLUMN "x; DROP TABLE probe_minute; --" "Weird Domain" DEFAULT 7,
                 ADD COLUMN "mood" "mood ""enum""" DEFAULT 'loud',
                 ADD COLUMN "seen at" timestamptz NOT NULL DEFAULT clock_timestamp(),
                 ADD COLUMN "twice ""Upper""" numeric GENERATED ALWAYS AS ("Upper Case" * 2) STORED"#,
        ],
    )
    .await;
    let outcome = drop_leftover(&db).await;
    assert!(
        matches!(
            outcome,
            Err(PartitionError::RowsInsideRetention { rows: 1, .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(attached(&db).await, Some(true), "{outcome:?}");
    assert_eq!(
        columns_added(&db).await,
        Some(serde_json::json!([
            "we\"ird col",
            "Upper Case",
            "ünïcødé",
            "x; DROP TABLE probe_minute; --",
            "mood",
            "seen at",
            "twice \"Upper\"",
        ]))
    );
    let row: (String, String, String, i32, String, bool, String, String) = sqlx::query_as(
        r#"SELECT "we""ird col"::text, "Upper Case"::text, "ünïcødé"::text,
                  "x; DROP TABLE probe_minute; --"::integer, "mood"::text,
                  "seen at" IS NOT NULL, "twice ""Upper"""::text, server_slug
           FROM probe_minute WHERE tableoid = 'probe_minute_2027_01'::regclass"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "a\"b'c".to_string(),
            "1.500".to_string(),
            "{1,2}".to_string(),
            7,
            "loud".to_string(),
            true,
            "3.000".to_string(),
            "ent".to_string()
        )
    );
}

/// Held or not: a NOT NULL column without a default (possible when every
/// attached month was empty). The ADD fails for the month's row: the month
/// must stay, detached with its row, and every reconcile says why.
#[tokio::test]
async fn a_not_null_column_without_default_never_loses_the_month() {
    let db = TestDatabase::new().await;
    detached_then(
        &db,
        &["ALTER TABLE probe_minute ADD COLUMN owner_ref text NOT NULL"],
    )
    .await;
    for reconcile in 0..3 {
        let outcome = drop_leftover(&db).await;
        let error = outcome.expect_err("the month cannot be attached");
        assert!(
            error.to_string().contains("owner_ref"),
            "reconcile {reconcile}: {error}"
        );
        assert_eq!(attached(&db).await, Some(false), "reconcile {reconcile}");
    }
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {PARTITION}"
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows, 1);
}

/// Held or not: a type that differs, or a column the month has and
/// probe_minute does not (dropped upstream): nothing is rewritten or deleted, the
/// month stays detached with its row, and every reconcile reports it.
#[tokio::test]
async fn a_changed_type_or_dropped_column_leaves_the_month_detached_and_reported() {
    // The views of probe_minute pin its columns' types, so the difference
    // is made on the detached month (the ATTACH sees the same mismatch),
    // and a column of probe_minute's (a new one) is dropped again.
    for (migration, month_columns) in [
        (
            "ALTER TABLE probe_minute_2027_01 ALTER COLUMN p95_ms TYPE bigint",
            12,
        ),
        (
            "ALTER TABLE probe_minute_2027_01 ALTER COLUMN error_kind TYPE varchar(40)",
            12,
        ),
        (
            "ALTER TABLE probe_minute_2027_01 ADD COLUMN dropped_upstream text DEFAULT 'x'",
            13,
        ),
    ] {
        let db = TestDatabase::new().await;
        detached_then(&db, &[migration]).await;
        for reconcile in 0..2 {
            let outcome = drop_leftover(&db).await;
            assert!(
                outcome.is_err(),
                "{migration}, reconcile {reconcile}: {outcome:?}"
            );
            assert_eq!(
                attached(&db).await,
                Some(false),
                "{migration}, reconcile {reconcile}: {outcome:?}"
            );
        }
        let columns: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass($1) \
             AND attnum > 0 AND NOT attisdropped",
        )
        .bind(PARTITION)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            columns, month_columns,
            "{migration}: the month's columns are untouched"
        );
    }
}

/// Held or not: the detached month renamed by a person: drop_leftover
/// neither drops it nor anything else.
#[tokio::test]
async fn a_renamed_detached_month_is_not_dropped() {
    let db = TestDatabase::new().await;
    detached_then(&db, &[]).await;
    execute(
        &db,
        &format!("ALTER TABLE {PARTITION} RENAME TO kept_by_hand"),
    )
    .await;
    let outcome = drop_leftover(&db).await;
    assert!(matches!(outcome, Ok(None)), "{outcome:?}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM kept_by_hand")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

/// An index probe_minute gained while the month was detached (the ATTACH
/// builds it for the month) and a NOT VALID CHECK constraint (added as NOT
/// VALID too): the month is attached again with both. Failed before the
/// constraints were carried over ("child table is missing constraint").
#[tokio::test]
async fn an_index_and_a_not_valid_check_probe_minute_gained_are_carried_over() {
    let db = TestDatabase::new().await;
    detached_then(
        &db,
        &[
            "CREATE INDEX probe_minute_by_state ON probe_minute (state, minute_bucket)",
            "ALTER TABLE probe_minute ADD CONSTRAINT asn_positive CHECK (asn > 0) NOT VALID",
        ],
    )
    .await;
    let outcome = drop_leftover(&db).await;
    assert_eq!(attached(&db).await, Some(true), "{outcome:?}");
    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'probe_minute_by_state'::regclass \
           AND c.relname LIKE 'probe_minute_2027_01%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        indexes, 1,
        "the month's index is a partition of the new index"
    );
}
