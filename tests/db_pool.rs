//! The connection pool of `db::connect` against a real PostgreSQL.

use archiver_operator::testing::TestDatabase;

/// What a `begin()` cancelled at the wrong moment leaves behind in sqlx 0.9:
/// a pooled connection inside a transaction sqlx does not know about. A
/// statement that then ran on it would never be committed. The pool must
/// not hand that connection out again.
#[tokio::test]
async fn a_connection_left_inside_a_transaction_is_not_reused() {
    let db = TestDatabase::new().await;
    // One connection, so a reused one would be that very connection.
    let pool = archiver_operator::db::connect(&db.url, 1).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO operator_audit_log (at, action, subject, actor, payload) \
         VALUES (now(), 'pool-test', 'pool', 'test', '{}'::jsonb)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let seen: i64 =
        sqlx::query_scalar("SELECT count(*) FROM operator_audit_log WHERE action = 'pool-test'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(seen, 1, "the insert ran inside a forgotten transaction");
}
