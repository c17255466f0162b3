//! Attack on `lifecycle::retire_absent` with `RetireScope::Namespace`: a
//! namespaced operator retires only absent shards of its own namespace,
//! never another namespace's row nor a row whose object is unknown.

use chrono::{DateTime, TimeZone, Utc};

use archiver_operator::archive::lifecycle::{self, RetireScope};
use archiver_operator::testing::TestDatabase;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2028, 6, 15, 3, 30, 0).unwrap()
}

async fn row(db: &TestDatabase, shard_id: i32, object: Option<&str>) {
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

async fn lifecycle_of(db: &TestDatabase, shard_id: i32) -> String {
    sqlx::query_scalar("SELECT lifecycle FROM archive_watermark WHERE shard_id = $1")
        .bind(shard_id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_namespace_retires_only_its_own_absent_shards() {
    let db = TestDatabase::new().await;
    let objects: [(i32, Option<&str>); 11] = [
        (1, Some("team/a")),   // ours, absent: retired
        (2, Some("team/b")),   // ours, present: kept
        (3, Some("team-a/c")), // namespace that has ours as a prefix
        (4, Some("tea/d")),    // namespace that is a prefix of ours
        (5, Some("te%/e")),    // LIKE metacharacters
        (6, Some("t_am/f")),
        (7, None),                  // unknown object
        (8, Some("")),              // empty object
        (9, Some("/g")),            // empty namespace (controller with no namespace)
        (10, Some("teamx/team/h")), // name with a slash
        (11, Some("TEAM/i")),       // case differs
    ];
    for (id, object) in objects {
        row(&db, id, object).await;
    }
    let retired = lifecycle::retire_absent(&db.pool, &[2], RetireScope::Namespace("team"), now())
        .await
        .unwrap();
    assert_eq!(retired, vec![1], "only team/a is team's to retire");
    for id in 2..=11 {
        assert_ne!(lifecycle_of(&db, id).await, "retired", "shard {id} retired");
    }

    // LIKE metacharacters as the scope match nothing but themselves.
    for scope in ["te%", "t_am", "%", "_"] {
        let retired = lifecycle::retire_absent(&db.pool, &[], RetireScope::Namespace(scope), now())
            .await
            .unwrap();
        let expected: Vec<i32> = match scope {
            "te%" => vec![5],
            "t_am" => vec![6],
            _ => vec![],
        };
        assert_eq!(retired, expected, "scope {scope:?}");
    }
    // Nothing outside "tea" and the unknown rows is touched by scope "tea".
    assert_eq!(
        lifecycle::retire_absent(&db.pool, &[], RetireScope::Namespace("tea"), now())
            .await
            .unwrap(),
        vec![4]
    );
    assert_eq!(
        lifecycle_of(&db, 7).await,
        "active",
        "a NULL object is never retired by a namespace"
    );
}

/// An empty namespace scope (a namespaced operator whose namespace was
/// read as empty) must not retire rows with an empty or unknown object.
#[tokio::test]
async fn an_empty_namespace_scope_retires_no_unknown_rows() {
    let db = TestDatabase::new().await;
    row(&db, 1, None).await;
    row(&db, 2, Some("")).await;
    row(&db, 3, Some("team/a")).await;
    let retired = lifecycle::retire_absent(&db.pool, &[], RetireScope::Namespace(""), now())
        .await
        .unwrap();
    assert!(
        retired.is_empty(),
        "an empty namespace retired {retired:?} (rows with no namespace recorded)"
    );
}

/// A row whose object is a bare label without '/' (what `ShardSettings::new`
/// lets a worker record) is not `namespace/name`: no namespace owns it.
#[tokio::test]
async fn a_bare_label_object_is_not_a_namespace() {
    let db = TestDatabase::new().await;
    row(&db, 1, Some("team")).await;
    let retired = lifecycle::retire_absent(&db.pool, &[], RetireScope::Namespace("team"), now())
        .await
        .unwrap();
    assert!(
        retired.is_empty(),
        "scope 'team' retired the bare label row: {retired:?}"
    );
}
