//! More attacks on `lifecycle::retire_absent` with `RetireScope::Namespace`
//! (see tests/attack_retire_scope.rs): the scope owns exactly the rows whose
//! `shard_object` is `namespace/name` — one '/', a non-empty name — and the
//! namespace is compared as it is spelled (no pattern, case or Unicode
//! folding).

use chrono::{DateTime, TimeZone, Utc};

use archiver_operator::archive::lifecycle::{self, RetireScope};
use archiver_operator::testing::TestDatabase;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2028, 6, 15, 3, 30, 0).unwrap()
}

async fn rows(db: &TestDatabase, objects: &[(i32, &str)]) {
    for (shard_id, object) in objects {
        sqlx::query(
            "INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at, shard_object) \
             VALUES ($1, $2, 't', now(), $3)",
        )
        .bind(shard_id)
        .bind(now())
        .bind(object)
        .execute(&db.pool)
        .await
        .expect("a watermark row");
    }
}

async fn retire(db: &TestDatabase, scope: &str) -> Vec<i32> {
    lifecycle::retire_absent(&db.pool, &[], RetireScope::Namespace(scope), now())
        .await
        .expect("retire_absent answers")
}

/// Held: LIKE and regular-expression metacharacters, a backslash, a
/// namespace that is a prefix of another, case and Unicode spellings are
/// compared literally.
#[tokio::test]
async fn metacharacters_prefixes_case_and_unicode_are_compared_literally() {
    let db = TestDatabase::new().await;
    rows(
        &db,
        &[
            (1, "team/a"),
            (2, "team-b/x"),
            (3, r"te\am/c"),
            (4, "te.m/d"),
            (5, "te[a]m/e"),
            (6, "Team/f"),
            (7, "t\u{e9}am/g"),   // é precomposed (NFC)
            (8, "te\u{301}am/h"), // e + combining acute (NFD)
            (9, "team /i"),
            (10, "te%m/j"),
        ],
    )
    .await;
    for (scope, expected) in [
        (r"te\am", vec![3]),
        (r"te\\am", vec![]),
        ("te.m", vec![4]),
        ("te[a]m", vec![5]),
        ("te.*", vec![]),
        ("^team", vec![]),
        ("TEAM", vec![]),
        ("t\u{e9}am", vec![7]),
        ("team ", vec![9]),
        ("te%m", vec![10]),
        ("team-", vec![]),
        ("team", vec![1]),
        ("team-b", vec![2]),
    ] {
        assert_eq!(retire(&db, scope).await, expected, "scope {scope:?}");
    }
    // Whatever the scopes above retired, "Team/f" (case) and the NFD
    // spelling were never matched by another spelling.
    let left: Vec<i32> = sqlx::query_scalar(
        "SELECT shard_id FROM archive_watermark WHERE lifecycle <> 'retired' ORDER BY shard_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(left, vec![6, 8]);
}

/// `teamx/team/h` is not `teamx/<name>`: a Kubernetes name has no '/', so
/// no ArchiverShard of namespace `teamx` records it (the controller writes
/// `namespace/name`). `RetireScope::Namespace` documents that an object that
/// is not `namespace/name` is not the scope's to retire; the query only
/// checks the prefix `teamx/`.
#[tokio::test]
async fn an_object_with_two_slashes_is_not_namespace_slash_name() {
    let db = TestDatabase::new().await;
    rows(&db, &[(1, "teamx/team/h"), (2, "teamx/a")]).await;
    let retired = retire(&db, "teamx").await;
    assert_eq!(
        retired,
        vec![2],
        "scope \"teamx\" retired {retired:?}; the object \"teamx/team/h\" (shard 1) is not \
         teamx/<name> and must stay"
    );
}

/// `team/` names no object (empty name); the controller never writes it,
/// and the scope must not own it either.
#[tokio::test]
async fn an_object_with_an_empty_name_is_not_namespace_slash_name() {
    let db = TestDatabase::new().await;
    rows(&db, &[(1, "team/"), (2, "team/a")]).await;
    let retired = retire(&db, "team").await;
    assert_eq!(
        retired,
        vec![2],
        "scope \"team\" retired {retired:?}; the object \"team/\" (shard 1) has no name and must stay"
    );
}
