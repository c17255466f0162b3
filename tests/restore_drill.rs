//! `archiver-operator restore-drill` against a real PostgreSQL: a backup
//! taken with `pg_dump` before an erasure is restored into a scratch
//! database, the live tombstones are replayed into it, and the drill passes
//! only when the erased pair is gone from the restore; a wrong hash and a
//! broken dump are surprises; the scratch database never stays behind.

use std::path::Path;
use std::process::{Command, Output};

use archiver_operator::api::deletion_request::DeletionReason;
use archiver_operator::clock::ManualClock;
use archiver_operator::erasure::{ErasureRequest, ErasureSettings, Scope, run};
use archiver_operator::testing::TestDatabase;
use chrono::{TimeZone, Utc};
use serde_json::Value;
use uuid::Uuid;

const ERASED: Uuid = Uuid::from_u128(0x6f1c2a9e_4b1d_4c55_9a43_2f5e7d8c9b01);
const KEPT: Uuid = Uuid::from_u128(0x6f1c2a9e_4b1d_4c55_9a43_2f5e7d8c9b02);

async fn seed(db: &TestDatabase) {
    sqlx::raw_sql(
        "CREATE TABLE probe_minute_2026_10 PARTITION OF probe_minute \
         FOR VALUES FROM ('2026-10-01 00:00+00') TO ('2026-11-01 00:00+00'); \
         CREATE TABLE probe_minute_2026_11 PARTITION OF probe_minute \
         FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for tenant in [ERASED, KEPT] {
        for server in ["api", "web"] {
            sqlx::query(
                "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
                 SELECT $1, $2, 'us-east', m, 'up' \
                 FROM generate_series('2026-10-31 23:50+00'::timestamptz, \
                                      '2026-11-01 00:09+00', interval '1 minute') AS m",
            )
            .bind(tenant)
            .bind(server)
            .execute(&db.pool)
            .await
            .unwrap();
        }
    }
}

async fn erase(db: &TestDatabase, server: &str) {
    let at = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
    let request = ErasureRequest {
        namespace: "archiver".into(),
        name: "erase-after-backup".into(),
        uid: Some(Uuid::new_v4().to_string()),
        scope: Scope {
            tenant: ERASED,
            server: Some(server.into()),
        },
        reason: DeletionReason::GdprArt17,
        requester: Uuid::from_u128(7),
        received_at: Some(at),
        response_days: 30,
        extension: None,
    };
    let settings = ErasureSettings::new(None, Vec::new(), Vec::new(), Vec::new());
    run::execute(&db.pool, &request, &settings, &ManualClock::new(at), 1, at)
        .await
        .expect("the erasure completes");
}

fn drill(db: &TestDatabase, dump: &Path, sha256: Option<&str>) -> (Output, Value) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_archiver-operator"));
    command
        .args(["restore-drill", "--json", "--dump"])
        .arg(dump)
        .env("DATABASE_URL", &db.url);
    if let Some(hash) = sha256 {
        command.args(["--sha256", hash]);
    }
    let output = command.output().expect("restore-drill runs");
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output, report)
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Whether the drill's scratch database (named in its report) still
/// exists. (Tests run in parallel on one PostgreSQL server, so only the
/// drill's own name is looked for.)
async fn scratch_left(db: &TestDatabase, report: &Value) -> bool {
    let name = report["scratch_database"].as_str().unwrap_or_default();
    assert!(name.starts_with("archiver_restore_drill_"), "{report:#}");
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn sha256_of(file: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(file).unwrap()))
}

#[tokio::test]
async fn a_backup_older_than_an_erasure_is_restored_without_the_erased_pair() {
    let db = TestDatabase::new().await;
    seed(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("archiver.dump");
    db.dump_custom(&backup);
    erase(&db, "api").await;
    let hash = sha256_of(&backup);

    let (output, report) = drill(&db, &backup, Some(&hash));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(report["surprises"], Value::Array(Vec::new()), "{report:#}");
    assert_eq!(report["dump_sha256"], hash.as_str());
    assert_eq!(report["tombstones_replayed"], 1);
    // The backup held the erased pair's 20 minutes: the replay removed them.
    assert_eq!(
        report["tombstones_effective"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(report["removed_by_replay"]["probe_minute"], 20);
    // After the replay the restore has what the live database has.
    let counts = report["counts"].as_array().expect("counts");
    let minute_counts: Vec<(String, i64, i64)> = counts
        .iter()
        .filter(|c| c["table"] == "probe_minute")
        .map(|c| {
            (
                c["month"].as_str().unwrap_or_default().to_string(),
                c["restored"].as_i64().unwrap_or(-1),
                c["live"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        minute_counts,
        vec![("2026-10".into(), 30, 30), ("2026-11".into(), 30, 30)],
        "{report:#}"
    );
    assert!(
        !scratch_left(&db, &report).await,
        "the scratch database is dropped"
    );
}

#[tokio::test]
async fn a_wrong_hash_or_a_broken_dump_is_a_surprise_and_leaves_nothing_behind() {
    let db = TestDatabase::new().await;
    seed(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("archiver.dump");
    db.dump_custom(&backup);

    let (output, report) = drill(&db, &backup, Some(&"0".repeat(64)));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let surprises = report["surprises"].to_string();
    assert!(surprises.contains("nothing was restored"), "{report:#}");
    assert_eq!(
        report["scratch_database"], "",
        "no scratch database was made"
    );

    let bytes = std::fs::read(&backup).unwrap();
    let broken = dir.path().join("broken.dump");
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let (output, report) = drill(&db, &broken, None);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        report["surprises"]
            .to_string()
            .contains("the restore failed"),
        "{report:#}"
    );
    assert!(
        !scratch_left(&db, &report).await,
        "the scratch database is dropped"
    );
}

/// A backup that misses a month the live database holds, while it holds
/// later months (a partition left out of the dump, here a month emptied
/// before it): a surprise, exit 1. Row counts that differ for the usual
/// reasons (new data after the dump, retention) stay a report.
#[tokio::test]
async fn a_backup_missing_a_month_before_later_ones_is_a_surprise() {
    let db = TestDatabase::new().await;
    seed(&db).await;
    let october = "probe_minute WHERE minute_bucket < '2026-11-01 00:00+00'";
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE october_kept AS SELECT * FROM {october}; DELETE FROM {october}"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("archiver.dump");
    db.dump_custom(&backup);
    sqlx::raw_sql("INSERT INTO probe_minute SELECT * FROM october_kept; DROP TABLE october_kept")
        .execute(&db.pool)
        .await
        .unwrap();

    let (output, report) = drill(&db, &backup, None);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let surprises: Vec<String> = report["surprises"]
        .as_array()
        .expect("surprises")
        .iter()
        .map(|surprise| surprise.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(surprises.len(), 1, "{report:#}");
    assert!(
        surprises[0].starts_with(
            "probe_minute 2026-10: the live database holds 40 row(s), the restore none"
        ),
        "{report:#}"
    );
    assert!(!scratch_left(&db, &report).await);

    // The text form (for the drill log) says the same.
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["restore-drill", "--dump"])
        .arg(&backup)
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("restore-drill runs");
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("0 tombstone(s) replayed"), "{printed}");
    assert!(
        printed.contains("SURPRISE: probe_minute 2026-10: the live database holds 40 row(s)"),
        "{printed}"
    );
    assert!(
        printed
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>()
                == ["probe_minute", "2026-10", "0", "40"]),
        "the counts table: {printed}"
    );
}
