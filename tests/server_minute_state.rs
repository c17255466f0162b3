//! The quorum rule of DESIGN.md section 5, table-driven, against the one SQL
//! function every rollup uses.

use archiver_operator::testing::TestDatabase;

async fn state(db: &TestDatabase, regions: &[&str]) -> String {
    let states: Vec<String> = regions.iter().map(|s| s.to_string()).collect();
    sqlx::query_scalar("SELECT server_minute_state($1)")
        .bind(&states)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn quorum_rule_table() {
    let db = TestDatabase::new().await;
    let table: &[(&[&str], &str)] = &[
        // One region: q = 1.
        (&["up"], "up"),
        (&["down"], "down"),
        (&["degraded"], "degraded"),
        (&["auth-walled"], "auth-walled"),
        (&["unknown"], "unknown"),
        // Two regions: q = 2.
        (&["up", "up"], "up"),
        (&["up", "down"], "unknown"),
        (&["down", "down"], "down"),
        (&["down", "degraded"], "degraded"),
        (&["degraded", "degraded"], "degraded"),
        (&["auth-walled", "auth-walled"], "auth-walled"),
        (&["up", "auth-walled"], "unknown"),
        (&["unknown", "unknown"], "unknown"),
        // Three to five regions: q = 2.
        (&["up", "up", "down"], "up"),
        (&["up", "down", "down"], "down"),
        (&["up", "down", "degraded"], "degraded"),
        (&["up", "degraded", "auth-walled"], "unknown"),
        (&["auth-walled", "auth-walled", "up"], "auth-walled"),
        (&["up", "up", "auth-walled", "auth-walled"], "up"),
        (&["down", "down", "up", "up"], "down"),
        (&["up", "up", "up", "up", "down"], "up"),
        (&["up", "up", "up", "down", "down"], "down"),
        (&["up", "up", "up", "down", "degraded"], "degraded"),
        (
            &["unknown", "unknown", "unknown", "unknown", "unknown"],
            "unknown",
        ),
        (
            &["up", "unknown", "unknown", "unknown", "unknown"],
            "unknown",
        ),
        (
            &["auth-walled", "unknown", "unknown", "unknown", "up"],
            "unknown",
        ),
        // No rows at all.
        (&[], "unknown"),
    ];
    for (regions, expected) in table {
        assert_eq!(&state(&db, regions).await, expected, "regions {regions:?}");
    }
}

#[tokio::test]
async fn order_of_regions_does_not_matter() {
    let db = TestDatabase::new().await;
    let all = ["up", "down", "degraded", "auth-walled", "unknown"];
    // Every multiset of three states, in two orders.
    for a in all {
        for b in all {
            for c in all {
                let forward = state(&db, &[a, b, c]).await;
                let backward = state(&db, &[c, b, a]).await;
                assert_eq!(forward, backward, "{a} {b} {c}");
            }
        }
    }
}
