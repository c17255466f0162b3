//! Attacks on `archiver-operator restore-drill` with a real PostgreSQL: a
//! server whose `template1` holds objects, and a hostile plain-SQL dump.

use std::path::Path;
use std::process::{Command, Output};

use archiver_operator::testing::TestDatabase;
use serde_json::Value;

fn drill(db: &TestDatabase, dump: &Path) -> (Output, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["restore-drill", "--json", "--dump"])
        .arg(dump)
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("restore-drill runs");
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

/// `url` naming database `name`.
fn database_url(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

/// Attack: the live server's `template1` holds objects (an extension's
/// tables, a DBA's defaults; here a table of the same name as one of the
/// backup's). `CREATE DATABASE` copies `template1`, so before the fix the
/// scratch database was not empty and `pg_restore --exit-on-error` failed on
/// "relation already exists": a sound backup was reported as a failed
/// restore. The scratch database is now a copy of `template0`, as
/// PostgreSQL's documentation asks for a restore.
#[tokio::test]
async fn objects_in_template1_do_not_reach_the_scratch_database() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("archiver.dump");
    db.dump_custom(&backup);
    let template1 = archiver_operator::db::connect(&database_url(&db.url, "template1"), 1)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS tenant_tier_history (note text); \
         CREATE TABLE IF NOT EXISTS dba_defaults (tenant_id uuid)",
    )
    .execute(&template1)
    .await
    .unwrap();
    template1.close().await;

    let (output, report) = drill(&db, &backup);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(report["surprises"], Value::Array(Vec::new()), "{report:#}");
}

/// Attack: a plain-SQL dump (restored with `psql`) holding psql
/// meta-commands: `\!` runs a shell command as the operator, `\connect`
/// switches the restore from the scratch database to the live one, where
/// the dump's statements then run. A backup file is outside input (a
/// bucket, another team's job; without `--sha256` nothing vouches for it),
/// and the drill is run with the live database's credentials.
/// Decided: a plain dump is refused before anything runs (exit 1, the
/// reason named); only `pg_dump` archives are restored, with `pg_restore`.
#[tokio::test]
async fn a_plain_dump_can_neither_run_commands_nor_write_to_the_live_database() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("shell-ran");
    let backup = dir.path().join("hostile.sql");
    std::fs::write(
        &backup,
        format!(
            "CREATE TABLE restored_here (x int);\n\
             \\! touch {marker}\n\
             \\connect {live}\n\
             CREATE TABLE written_by_the_dump (x int);\n",
            marker = marker.display(),
            live = db.name,
        ),
    )
    .unwrap();

    let (output, _) = drill(&db, &backup);
    let written: bool = sqlx::query_scalar("SELECT to_regclass('written_by_the_dump') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        !marker.exists(),
        "the dump ran a shell command: {}",
        text(&output)
    );
    assert!(
        !written,
        "the dump wrote to the live database: {}",
        text(&output)
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("a plain SQL dump is refused"),
        "{}",
        text(&output)
    );
}

fn drill_with_url(url: &str, dump: &Path) -> (Output, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["restore-drill", "--json", "--dump"])
        .arg(dump)
        .env("DATABASE_URL", url)
        .output()
        .expect("restore-drill runs");
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output, report)
}

/// Attack: a DATABASE_URL as libpq and sqlx read it but the drill's
/// `pg_restore` did not: a user name with a percent-encoded space, the
/// server's socket directory and port as `host` and `port` parameters
/// (the URL's own host and port lead nowhere), and the live database as a
/// `dbname` parameter. Before the fix `pg_restore` got the encoded user and
/// the dead host (a failed restore), and the scratch URL kept
/// `dbname=<live>`, which the client reads over the path: the checks ran on
/// the live database. Now the restore reaches the scratch database on the
/// same server, and the counts are the backup's (30 rows) beside the live
/// database's (20, ten deleted after the backup).
#[tokio::test]
async fn a_libpq_style_database_url_restores_and_checks_the_scratch_database() {
    let db = TestDatabase::new().await;
    sqlx::raw_sql(
        "CREATE TABLE probe_minute_2026_11 PARTITION OF probe_minute \
         FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00'); \
         INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
         SELECT 'a7ac0000-0000-4000-8000-000000000001', 'web', 'us-east', m, 'up' \
         FROM generate_series('2026-11-02 00:00+00'::timestamptz, '2026-11-02 00:29+00', \
                              interval '1 minute') AS m; \
         DO $$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'drill user') THEN \
             CREATE ROLE \"drill user\" LOGIN SUPERUSER; \
           END IF; \
         END $$",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("archiver.dump");
    db.dump_custom(&backup);
    sqlx::query("DELETE FROM probe_minute WHERE minute_bucket >= '2026-11-02 00:20+00'")
        .execute(&db.pool)
        .await
        .unwrap();
    let socket: String = sqlx::query_scalar("SHOW unix_socket_directories")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let port = url::Url::parse(&db.url).unwrap().port().unwrap();
    let url = format!(
        "postgres://drill%20user@127.0.0.1:1/postgres?host={socket}&port={port}&dbname={}",
        db.name
    );

    let (output, report) = drill_with_url(&url, &backup);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(report["surprises"], Value::Array(Vec::new()), "{report:#}");
    let minute_counts: Vec<(String, i64, i64)> = report["counts"]
        .as_array()
        .expect("counts")
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
        vec![("2026-11".to_string(), 30, 20)],
        "{report:#}"
    );
}

/// Attack: `--dump` naming a device that never ends (`/dev/zero`) and a
/// FIFO nobody writes. Before the fix the drill hashed `/dev/zero` for
/// ever and blocked opening the FIFO (no timeout covers the hash). Now
/// both are refused at once, exit 1.
#[test]
fn a_dump_that_is_not_a_regular_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("backup.fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    for dump in [Path::new("/dev/zero"), fifo.as_path()] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
            .args(["restore-drill", "--dump"])
            .arg(dump)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("restore-drill starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let status =
            status.unwrap_or_else(|| panic!("{}: still running after 20 s", dump.display()));
        assert_eq!(status.code(), Some(1), "{}: {stderr}", dump.display());
        assert!(
            stderr.contains("not a regular file"),
            "{}: {stderr}",
            dump.display()
        );
    }
}

/// Attack: a backup whose file name starts with `-`, given relative to the
/// working directory (`--dump -nightly.dump`). Before the fix `pg_restore`
/// read the name as options (`-n ightly.dump`: only that schema, the
/// archive from standard input) and the restore failed; now the tools get
/// `./-nightly.dump`.
#[tokio::test]
async fn a_dump_named_like_an_option_is_restored_as_a_file() {
    let db = TestDatabase::new().await;
    sqlx::raw_sql(
        "CREATE TABLE probe_minute_2026_11 PARTITION OF probe_minute \
         FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00'); \
         INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
         SELECT 'a7ac0000-0000-4000-8000-000000000001', 'web', 'us-east', m, 'up' \
         FROM generate_series('2026-11-02 00:00+00'::timestamptz, '2026-11-02 00:04+00', \
                              interval '1 minute') AS m",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    db.dump_custom(&dir.path().join("-nightly.dump"));
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["restore-drill", "--json", "--dump=-nightly.dump"])
        .current_dir(dir.path())
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("restore-drill runs");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(report["surprises"], Value::Array(Vec::new()), "{report:#}");
    let restored: Vec<i64> = report["counts"]
        .as_array()
        .expect("counts")
        .iter()
        .filter(|c| c["table"] == "probe_minute")
        .map(|c| c["restored"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(restored, vec![5], "{report:#}");
}
