//! Shard lifecycle (issue 16 item 2) against a real PostgreSQL: the derived
//! views follow active shards only, so a suspended or retired shard with an
//! old watermark no longer freezes every tenant's rollups, an active one
//! (gap-held included) still holds them, and the shard they wait on is
//! reported. The lifecycle is set by the ArchiverShard controller and
//! retired when the manifest goes (through the binary, `run --once`).

use std::path::Path;
use std::process::{Command, Output};

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use archiver_operator::archive::lifecycle::{self, RetireScope, ShardLifecycle};
use archiver_operator::metrics::Metrics;
use archiver_operator::testing::{TestDatabase, redis_server};
use archiver_operator::views;

fn start() -> DateTime<Utc> {
    "2026-11-10T10:00:00Z".parse().unwrap()
}

async fn partition(db: &TestDatabase) {
    sqlx::query(
        "CREATE TABLE probe_minute_2026_11 PARTITION OF probe_minute \
         FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00')",
    )
    .execute(&db.pool)
    .await
    .expect("partition");
}

/// One `up` row per minute of [start, start + minutes) for one server.
async fn archive(db: &TestDatabase, minutes: i64) {
    let tenant = Uuid::from_u128(0x7000_0000_0000_4000_8000_0000_0000_0001);
    for m in 0..minutes {
        sqlx::query(
            "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state, p95_ms) \
             VALUES ($1, 'srv', 'us-east', $2, 'up', 10) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(start() + Duration::minutes(m))
        .execute(&db.pool)
        .await
        .expect("a row");
    }
}

/// Puts shard `shard_id`'s watermark at `start + minute`.
async fn watermark(db: &TestDatabase, shard_id: i32, minute: i64, waiting_reason: Option<&str>) {
    sqlx::query(
        "INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at, waiting_reason) \
         VALUES ($1, $2, 't', now(), $3) \
         ON CONFLICT (shard_id) DO UPDATE SET last_minute = EXCLUDED.last_minute, \
             waiting_reason = EXCLUDED.waiting_reason",
    )
    .bind(shard_id)
    .bind(start() + Duration::minutes(minute))
    .bind(waiting_reason)
    .execute(&db.pool)
    .await
    .expect("a watermark row");
}

async fn maintain(db: &TestDatabase, metrics: &Metrics) -> views::MaintenanceReport {
    views::maintain_and_report(&db.pool, None, start() + Duration::hours(2), metrics)
        .await
        .expect("maintenance")
}

async fn views_through(db: &TestDatabase) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT last_minute FROM derived_views_watermark")
        .fetch_one(&db.pool)
        .await
        .expect("the views watermark")
}

async fn minutes_in_probe_day(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT coalesce(sum(minutes_total), 0)::bigint FROM probe_day")
        .fetch_one(&db.pool)
        .await
        .expect("probe_day")
}

fn waiting_series(metrics: &Metrics) -> Vec<String> {
    metrics
        .encode()
        .lines()
        .filter(|line| line.starts_with("archiver_views_waiting_on{"))
        .map(str::to_string)
        .collect()
}

/// Shard 1 is stuck 2 minutes into the data (a gap), shard 0 is 30 minutes
/// in. Active, the gap-held shard holds the views (its minutes may still
/// arrive) and is named; suspended or retired, it does not.
#[tokio::test]
async fn views_follow_active_shards_only_and_name_the_shard_they_wait_on() {
    let db = TestDatabase::new().await;
    partition(&db).await;
    archive(&db, 60).await;
    let metrics = Metrics::new();
    metrics.observe_shard(0, "archiver/fast", 180);
    metrics.observe_shard(1, "archiver/stuck", 180);
    watermark(&db, 0, 30, None).await;
    watermark(&db, 1, 2, Some("gap")).await;

    let report = maintain(&db, &metrics).await;
    assert_eq!(views_through(&db).await, start() + Duration::minutes(2));
    let waiting = report.waiting_on.expect("a shard is waited on");
    assert_eq!(
        (waiting.shard_id, waiting.waiting_reason.as_deref()),
        (1, Some("gap")),
        "the gap-held active shard holds the views and is named with its reason"
    );
    assert_eq!(
        waiting_series(&metrics),
        vec!["archiver_views_waiting_on{shard=\"archiver/stuck\",shard_id=\"1\"} 1"]
    );
    let recorded: Option<i32> =
        sqlx::query_scalar("SELECT waiting_on_shard FROM derived_views_watermark")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(recorded, Some(1));

    // Suspended: the views go on to the next active shard.
    let suspended_at = start() + Duration::hours(1);
    assert!(
        lifecycle::set(
            &db.pool,
            1,
            "archiver/shard-1",
            ShardLifecycle::Suspended,
            suspended_at
        )
        .await
        .unwrap()
    );
    assert!(
        !lifecycle::set(
            &db.pool,
            1,
            "archiver/shard-1",
            ShardLifecycle::Suspended,
            suspended_at
        )
        .await
        .unwrap(),
        "setting the same state again changes nothing"
    );
    assert_eq!(
        lifecycle::read(&db.pool, 1).await.unwrap(),
        Some((ShardLifecycle::Suspended, suspended_at))
    );
    let report = maintain(&db, &metrics).await;
    assert_eq!(views_through(&db).await, start() + Duration::minutes(30));
    assert_eq!(report.waiting_on.map(|shard| shard.shard_id), Some(0));
    assert_eq!(
        waiting_series(&metrics),
        vec!["archiver_views_waiting_on{shard=\"archiver/fast\",shard_id=\"0\"} 1"],
        "one series: the shard waited on now"
    );
    assert_eq!(minutes_in_probe_day(&db).await, 31);

    // Active again (its watermark still old): it holds the views again.
    lifecycle::set(
        &db.pool,
        1,
        "archiver/shard-1",
        ShardLifecycle::Active,
        suspended_at,
    )
    .await
    .unwrap();
    watermark(&db, 0, 50, None).await;
    let report = maintain(&db, &metrics).await;
    assert_eq!(
        views_through(&db).await,
        start() + Duration::minutes(30),
        "the re-activated shard holds the views"
    );
    assert_eq!(report.waiting_on.map(|shard| shard.shard_id), Some(1));

    // Retired (its ArchiverShard deleted): the views go on.
    let retired = lifecycle::retire_absent(&db.pool, &[0], RetireScope::Everything, suspended_at)
        .await
        .unwrap();
    assert_eq!(retired, vec![1]);
    let report = maintain(&db, &metrics).await;
    assert_eq!(views_through(&db).await, start() + Duration::minutes(50));
    assert_eq!(report.waiting_on.map(|shard| shard.shard_id), Some(0));
    assert_eq!(minutes_in_probe_day(&db).await, 51);

    // No active shard at all: nothing is waited on, no series.
    lifecycle::retire_absent(&db.pool, &[], RetireScope::Everything, suspended_at)
        .await
        .unwrap();
    let report = maintain(&db, &metrics).await;
    assert_eq!(report.waiting_on, None);
    assert!(
        waiting_series(&metrics).is_empty(),
        "{:?}",
        waiting_series(&metrics)
    );
}

/// A row no reconciled ArchiverShard names is still reported, by its id.
#[tokio::test]
async fn an_unreconciled_shard_is_reported_by_its_id() {
    let db = TestDatabase::new().await;
    partition(&db).await;
    archive(&db, 5).await;
    watermark(&db, 4, 3, None).await;
    let metrics = Metrics::new();
    maintain(&db, &metrics).await;
    assert_eq!(
        waiting_series(&metrics),
        vec!["archiver_views_waiting_on{shard=\"unreconciled\",shard_id=\"4\"} 1"]
    );
}

fn binary(args: &[&str], database_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("ARCHIVER_LOG_FORMAT", "text")
        .output()
        .expect("run the binary")
}

fn run_once(dir: &Path, now: &str, database_url: &str) -> Output {
    binary(
        &[
            "run",
            "--manifests",
            dir.to_str().unwrap(),
            "--once",
            "--now",
            now,
        ],
        database_url,
    )
}

/// A manifests directory with the example shard and its Redis Secret
/// pointing at `redis_url`: the directory, the shard's file and its text.
fn shard_directory(redis_url: &str) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let shard_file = dir.path().join("archiver-shard.yaml");
    let shard = std::fs::read_to_string(examples.join("archiver-shard.yaml")).unwrap();
    std::fs::write(&shard_file, &shard).unwrap();
    let secret = std::fs::read_to_string(examples.join("secret-redis-shard-0.yaml"))
        .unwrap()
        .replace("redis://127.0.0.1:6379/0", redis_url);
    std::fs::write(dir.path().join("secret-redis-shard-0.yaml"), secret).unwrap();
    (dir, shard_file, shard)
}

async fn lifecycle_of(db: &TestDatabase, shard_id: i32) -> Option<(String, DateTime<Utc>)> {
    sqlx::query_as("SELECT lifecycle, lifecycle_since FROM archive_watermark WHERE shard_id = $1")
        .bind(shard_id)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

/// Through the binary and a manifests directory: the controller sets the
/// shard active, then suspended with `spec.suspend`; a removed manifest
/// retires it, and a row no manifest names (a shard deleted while the
/// operator was not running) is retired on the first pass.
#[tokio::test]
async fn the_controller_suspends_and_a_removed_manifest_retires_the_shard() {
    let db = TestDatabase::new().await;
    let redis = redis_server();
    let (dir, shard_file, _) = shard_directory(&redis.url());
    // Shard 9 has a row but no manifest.
    sqlx::query(
        "INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at) \
         VALUES (9, '2026-11-01T00:00:00Z', 'gone', now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let first = "2026-11-10T10:00:30Z";
    let output = run_once(dir.path(), first, &db.url);
    let printed = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let first: DateTime<Utc> = first.parse().unwrap();
    assert_eq!(
        lifecycle_of(&db, 0).await,
        Some(("active".to_string(), first)),
        "the worker's first tick creates the row, active since the operator's clock: {printed}"
    );
    assert_eq!(
        lifecycle_of(&db, 9).await,
        Some(("retired".to_string(), first)),
        "{printed}"
    );
    assert!(printed.contains("retired shard(s) [9]"), "{printed}");

    let suspended = std::fs::read_to_string(&shard_file)
        .unwrap()
        .replace("  shardId: 0\n", "  shardId: 0\n  suspend: true\n");
    std::fs::write(&shard_file, suspended).unwrap();
    let second = "2026-11-10T10:05:30Z";
    let output = run_once(dir.path(), second, &db.url);
    let printed = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        lifecycle_of(&db, 0).await,
        Some(("suspended".to_string(), second.parse().unwrap())),
        "{printed}"
    );

    // Active again while the views are ahead of it (another shard moved
    // them): it says what that means for the rollups.
    sqlx::query("UPDATE derived_views_watermark SET last_minute = '2026-11-10T10:20:00Z'")
        .execute(&db.pool)
        .await
        .unwrap();
    let active = std::fs::read_to_string(&shard_file)
        .unwrap()
        .replace("  suspend: true\n", "");
    std::fs::write(&shard_file, active).unwrap();
    let output = run_once(dir.path(), "2026-11-10T10:08:30Z", &db.url);
    let printed = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        lifecycle_of(&db, 0).await.map(|(l, _)| l).as_deref(),
        Some("active"),
        "{printed}"
    );
    let stored = std::fs::read_to_string(
        dir.path()
            .join(".archiver/status/ArchiverShard_archiver_shard-0.yaml"),
    )
    .unwrap();
    assert!(stored.contains("ShardSuspended"), "{stored}");
    assert!(stored.contains("ShardActive"), "{stored}");
    assert!(
        stored.contains("RejoinedBehindViews")
            && stored.contains("behind the derived views (2026-11-10 10:20:00 UTC)"),
        "{stored}"
    );

    std::fs::remove_file(&shard_file).unwrap();
    let third = "2026-11-10T10:10:30Z";
    let output = run_once(dir.path(), third, &db.url);
    let printed = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        lifecycle_of(&db, 0).await,
        Some(("retired".to_string(), third.parse().unwrap())),
        "{printed}"
    );
    assert!(printed.contains("retired shard(s) [0]"), "{printed}");
}

/// The leader's per-shard export says each shard's lifecycle, and a retired
/// shard (deleted) has no lag series left to page on; a suspended one keeps
/// its rising lag, which alerts can leave out with the lifecycle series.
#[tokio::test]
async fn the_lag_export_carries_the_lifecycle_and_drops_retired_shards() {
    let db = TestDatabase::new().await;
    for shard_id in [0, 1, 2] {
        watermark(&db, shard_id, 0, None).await;
    }
    let metrics = Metrics::new();
    for (shard_id, name) in [(0, "archiver/a"), (1, "archiver/b"), (2, "archiver/c")] {
        metrics.observe_shard(shard_id, name, 180);
    }
    let mut export = archiver_operator::archive::health::ShardLagExport::default();
    let now = start() + Duration::minutes(11);
    export.export(&db.pool, now, &metrics).await;
    assert!(
        metrics
            .encode()
            .contains("archiver_shard_lag_seconds{shard=\"archiver/c\"} 600")
    );

    lifecycle::set(
        &db.pool,
        1,
        "archiver/shard-1",
        ShardLifecycle::Suspended,
        now,
    )
    .await
    .unwrap();
    lifecycle::retire_absent(&db.pool, &[0, 1], RetireScope::Everything, now)
        .await
        .unwrap();
    export.export(&db.pool, now, &metrics).await;
    let text = metrics.encode();
    for (shard, state, value) in [
        ("a", "active", 1),
        ("a", "suspended", 0),
        ("b", "suspended", 1),
        ("b", "active", 0),
        ("c", "retired", 1),
        ("c", "active", 0),
    ] {
        let line = format!(
            "archiver_shard_lifecycle{{shard=\"archiver/{shard}\",state=\"{state}\"}} {value}\n"
        );
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
    assert!(
        text.contains("archiver_shard_lag_seconds{shard=\"archiver/b\"} 600"),
        "{text}"
    );
    assert!(
        !text.contains("archiver_shard_lag_seconds{shard=\"archiver/c\"}"),
        "{text}"
    );
    assert!(
        !text.contains("archiver_shard_lag_slo_seconds{shard=\"archiver/c\"}"),
        "{text}"
    );
}

/// Operators that each watch one namespace may share a database (shard ids
/// are unique per database): one of them retires only the rows of shards of
/// its own namespace that are gone, never another namespace's shard, nor a
/// row whose shard it cannot place. A cluster-wide operator retires any row
/// no present shard names. (Before rows knew their ArchiverShard, an
/// operator with `--namespace a` retired namespace b's live shard, and the
/// derived views stopped waiting on it.)
#[tokio::test]
async fn a_namespaced_operator_retires_only_its_own_namespace() {
    let db = TestDatabase::new().await;
    let now = start();
    for id in [0, 1, 2] {
        watermark(&db, id, 10, None).await;
    }
    lifecycle::set(&db.pool, 0, "a/shard-0", ShardLifecycle::Active, now)
        .await
        .unwrap();
    lifecycle::set(&db.pool, 1, "b/shard-1", ShardLifecycle::Active, now)
        .await
        .unwrap();
    // Shard 2 never reconciled since the migration: its namespace is unknown.

    // The operator of namespace b sees none of its shards (shard 1 is in
    // b and present; here it sees nothing at all, as after b's shard was
    // deleted), so only shard 1 may go.
    let retired = lifecycle::retire_absent(&db.pool, &[], RetireScope::Namespace("b"), now)
        .await
        .unwrap();
    assert_eq!(retired, vec![1]);
    // The operator of namespace a sees shard 0: nothing of a is gone.
    let retired = lifecycle::retire_absent(&db.pool, &[0], RetireScope::Namespace("a"), now)
        .await
        .unwrap();
    assert!(retired.is_empty(), "{retired:?}");
    assert_eq!(lifecycle_of(&db, 0).await.unwrap().0, "active");
    assert_eq!(lifecycle_of(&db, 2).await.unwrap().0, "active");
    // A namespace that is a prefix of another is not that namespace.
    lifecycle::set(&db.pool, 0, "ab/shard-0", ShardLifecycle::Active, now)
        .await
        .unwrap();
    let retired = lifecycle::retire_absent(&db.pool, &[], RetireScope::Namespace("a"), now)
        .await
        .unwrap();
    assert!(retired.is_empty(), "{retired:?}");

    // Recording the owner is not a lifecycle change; suspending is.
    assert!(
        !lifecycle::set(&db.pool, 0, "a/shard-0", ShardLifecycle::Active, now)
            .await
            .unwrap()
    );
    assert!(
        lifecycle::set(&db.pool, 0, "a/shard-0", ShardLifecycle::Suspended, now)
            .await
            .unwrap()
    );

    // Everything: what no present shard names goes, whatever its namespace.
    let retired = lifecycle::retire_absent(&db.pool, &[], RetireScope::Everything, now)
        .await
        .unwrap();
    assert_eq!(retired, vec![0, 2]);
}

/// A shard made active again while it cannot make progress (its Redis is
/// down) keeps its lifecycle event beside the Warning that says why it is
/// not ready: the not-ready report replaced every event of the reconcile,
/// and `ShardActive` was lost.
#[tokio::test]
async fn a_shard_reactivated_while_not_ready_keeps_its_lifecycle_event() {
    let db = TestDatabase::new().await;
    let mut redis = redis_server();
    let (dir, shard_file, shard) = shard_directory(&redis.url());
    run_once(dir.path(), "2026-11-10T10:00:30Z", &db.url);
    std::fs::write(
        &shard_file,
        shard.replace("  shardId: 0\n", "  shardId: 0\n  suspend: true\n"),
    )
    .unwrap();
    run_once(dir.path(), "2026-11-10T10:05:30Z", &db.url);
    assert_eq!(
        lifecycle_of(&db, 0).await.map(|(l, _)| l).as_deref(),
        Some("suspended")
    );

    redis.halt();
    std::fs::write(&shard_file, &shard).unwrap();
    let output = run_once(dir.path(), "2026-11-10T10:08:30Z", &db.url);
    let printed = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        lifecycle_of(&db, 0).await.map(|(l, _)| l).as_deref(),
        Some("active"),
        "{printed}"
    );
    let stored = std::fs::read_to_string(
        dir.path()
            .join(".archiver/status/ArchiverShard_archiver_shard-0.yaml"),
    )
    .unwrap();
    assert!(
        stored.contains("status: 'False'") || stored.contains("status: \"False\""),
        "not ready: {stored}"
    );
    let after_suspend = stored
        .split("ShardSuspended")
        .nth(1)
        .unwrap_or_else(|| panic!("no ShardSuspended event: {stored}"));
    assert!(
        after_suspend.contains("ShardActive"),
        "the reactivation's event was lost: {stored}\n{printed}"
    );
}

/// The condition `type` of a stored manifests-mode status: (status, reason).
fn stored_condition(dir: &Path, object_file: &str, type_: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string(dir.join(".archiver/status").join(object_file))
        .expect("the stored status");
    let stored: serde_json::Value = serde_yaml_ng::from_str(&text).expect("YAML");
    let conditions = stored.pointer("/status/conditions")?.as_array()?;
    conditions
        .iter()
        .find(|condition| condition["type"] == type_)
        .map(|condition| {
            (
                condition["status"].as_str().unwrap_or_default().to_string(),
                condition["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// The shard the derived views wait on says so in its own status
/// (`HoldsDerivedViews`), through the binary and a manifests directory;
/// suspended, it no longer holds them.
#[tokio::test]
async fn the_shard_the_views_wait_on_says_so_in_its_status() {
    let db = TestDatabase::new().await;
    let redis = redis_server();
    let (dir, shard_file, _) = shard_directory(&redis.url());
    let status_file = "ArchiverShard_archiver_shard-0.yaml";
    // The first pass creates the shard's row, then the views run and wait
    // on it; the second pass's status reads what they recorded.
    for now in ["2026-11-10T10:00:30Z", "2026-11-10T10:01:30Z"] {
        let output = run_once(dir.path(), now, &db.url);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let recorded: Option<i32> =
        sqlx::query_scalar("SELECT waiting_on_shard FROM derived_views_watermark")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(recorded, Some(0));
    assert_eq!(
        stored_condition(dir.path(), status_file, "HoldsDerivedViews"),
        Some(("True".to_string(), "ViewsWaitOnThisShard".to_string()))
    );

    let suspended = std::fs::read_to_string(&shard_file)
        .unwrap()
        .replace("  shardId: 0\n", "  shardId: 0\n  suspend: true\n");
    std::fs::write(&shard_file, suspended).unwrap();
    let output = run_once(dir.path(), "2026-11-10T10:02:30Z", &db.url);
    assert!(output.status.success());
    assert_eq!(
        stored_condition(dir.path(), status_file, "HoldsDerivedViews"),
        Some(("False".to_string(), "ViewsNotWaiting".to_string()))
    );
}
