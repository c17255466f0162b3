//! The leader's shard lag from `archive_watermark` (issue 16 item 1) against
//! a real PostgreSQL, and what it shows when the table cannot be read.

use archiver_operator::archive::health::ShardLagExport;
use archiver_operator::local_servers::free_port;
use archiver_operator::metrics::Metrics;
use archiver_operator::testing::TestDatabase;
use chrono::{DateTime, Duration, Utc};

fn series(metrics: &Metrics, series: &str) -> Option<f64> {
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn an_unreadable_watermark_is_counted_and_the_lag_keeps_rising() {
    let db = TestDatabase::empty().await;
    archiver_operator::db::migrate(&db.pool)
        .await
        .expect("migrate");
    let last_minute: DateTime<Utc> = "2026-03-01T10:00:00Z".parse().unwrap();
    for (shard_id, minute) in [(0, last_minute), (7, last_minute)] {
        sqlx::query(
            "INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at) \
             VALUES ($1, $2, 'nobody', $2)",
        )
        .bind(shard_id)
        .bind(minute)
        .execute(&db.pool)
        .await
        .expect("a watermark row");
    }
    let metrics = Metrics::new();
    metrics.observe_shard(0, "archiver/shard-0", 180);
    let mut export = ShardLagExport::default();
    let now = last_minute + Duration::minutes(11);
    export.export(&db.pool, now, &metrics).await;
    let lag = "archiver_shard_lag_seconds{shard=\"archiver/shard-0\"}";
    assert_eq!(series(&metrics, lag), Some(600.0));
    assert_eq!(
        series(
            &metrics,
            "archiver_shard_lag_slo_seconds{shard=\"archiver/shard-0\"}"
        ),
        Some(180.0)
    );
    // Shard 7 has a row but no ArchiverShard was reconciled: no label, no series.
    assert!(!metrics.encode().contains("shard_lag_seconds{shard=\"7\""));
    assert_eq!(
        series(&metrics, "archiver_watermark_read_failures_total"),
        Some(0.0)
    );

    // PostgreSQL gone: a port nobody listens on.
    let closed = free_port().expect("free port");
    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy(&format!("postgres://postgres@127.0.0.1:{closed}/nothing"))
        .expect("a lazy pool");
    export
        .export(&unreachable, now + Duration::minutes(5), &metrics)
        .await;
    assert_eq!(
        series(&metrics, "archiver_watermark_read_failures_total"),
        Some(1.0)
    );
    assert_eq!(
        series(&metrics, lag),
        Some(900.0),
        "the lag keeps rising from the last minute read"
    );
}

/// A replica that stops leading clears its shard lag series and its views
/// lag: a frozen value would keep `max()` over the replicas (and the alerts)
/// wrong after failover.
#[tokio::test]
async fn the_lag_series_are_cleared_when_the_loop_stops() {
    let db = TestDatabase::empty().await;
    archiver_operator::db::migrate(&db.pool)
        .await
        .expect("migrate");
    sqlx::query(
        "INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at) \
         VALUES (0, now() - interval '1 hour', 'nobody', now())",
    )
    .execute(&db.pool)
    .await
    .expect("a watermark row");
    let metrics = std::sync::Arc::new(Metrics::new());
    metrics.observe_shard(0, "archiver/shard-0", 180);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let exported = {
        let metrics = metrics.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while series(
                &metrics,
                "archiver_shard_lag_seconds{shard=\"archiver/shard-0\"}",
            )
            .is_none()
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let seen = series(
                &metrics,
                "archiver_shard_lag_seconds{shard=\"archiver/shard-0\"}",
            );
            let _ = stop.send(());
            seen
        }
    };
    let maintenance = archiver_operator::views::run_forever(
        db.pool.clone(),
        None,
        std::sync::Arc::new(archiver_operator::clock::SystemClock),
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
    );
    let (seen, ()) = tokio::join!(exported, maintenance);
    assert!(seen.is_some_and(|lag| lag >= 3_500.0), "{seen:?}");
    let text = metrics.encode();
    assert!(!text.contains("archiver_shard_lag_seconds{"), "{text}");
    assert!(!text.contains("archiver_shard_lag_slo_seconds{"), "{text}");
    // The views waited on the hour-old watermark while it led (its pass ends
    // before the loop stops); a standby reports 0.
    assert_eq!(series(&metrics, "archiver_views_lag_seconds "), Some(0.0));
}
