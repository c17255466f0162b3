//! The manifests source end to end, through the binary, with a real
//! PostgreSQL: `run --once`, `status -o json`, a changed file, a broken file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use archiver_operator::testing::{TestDatabase, redis_server};
use serde_json::Value;

/// The examples, with the shard's Redis Secret pointing at `redis`.
fn copy_examples_with(redis: &archiver_operator::local_servers::RedisServer) -> tempfile::TempDir {
    let dir = copy_examples();
    let secret = dir.path().join("secret-redis-shard-0.yaml");
    let text = std::fs::read_to_string(&secret)
        .unwrap()
        .replace("redis://127.0.0.1:6379/0", &redis.url());
    std::fs::write(secret, text).unwrap();
    dir
}

fn copy_examples() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(examples).expect("examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).expect("copy");
        }
    }
    dir
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

fn status_json(dir: &Path) -> Vec<Value> {
    let output = binary(
        &["status", "--manifests", dir.to_str().unwrap(), "-o", "json"],
        "",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("status is JSON")
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} missing from status"))
}

fn ready_status(object: &Value) -> String {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("missing")
        .to_string()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn once_reconciles_every_object_and_status_shows_them_ready() {
    let db = TestDatabase::empty().await;
    let redis = redis_server();
    let dir = copy_examples_with(&redis);
    let output = run_once(dir.path(), "2026-11-23T10:00:00Z", &db.url);
    assert!(output.status.success(), "{}", text(&output));

    let objects = status_json(dir.path());
    assert_eq!(
        objects.len(),
        4,
        "one status per custom resource: {objects:#?}"
    );
    for object in &objects {
        assert_eq!(ready_status(object), "True", "{object:#}");
        assert_eq!(object["status"]["observedGeneration"], 1);
        assert_eq!(object["generation"], 1);
        assert_eq!(object["lastReconciled"], "2026-11-23T10:00:00Z");
    }
    // `run` applied the schema to the database it was given.
    let migrated: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .expect("migrations table");
    assert!(migrated >= 4);
    let deletion = find(&objects, "DeletionRequest", "erase-6f1c-my-server");
    // Nothing of that tenant is in this database: the erasure completes
    // with zero counts and a receipt.
    assert_eq!(deletion["status"]["phase"], "Completed");
    assert_eq!(deletion["status"]["deadline"], "2026-12-22T09:00:00Z");
    assert!(
        deletion["status"]["receiptSha256"].is_string(),
        "{deletion:#}"
    );
    // The Secret's value never reaches a status file.
    for file in std::fs::read_dir(dir.path().join(".archiver/status")).unwrap() {
        let content = std::fs::read_to_string(file.unwrap().path()).unwrap();
        assert!(!content.contains("redis://"), "{content}");
    }
}

#[tokio::test]
async fn a_changed_file_is_a_new_generation_on_the_next_pass() {
    let db = TestDatabase::empty().await;
    let redis = redis_server();
    let dir = copy_examples_with(&redis);
    assert!(
        run_once(dir.path(), "2026-11-23T10:00:00Z", &db.url)
            .status
            .success()
    );
    let policy = dir.path().join("retention-policy.yaml");
    let edited = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("maxShrinkPercent: 50", "maxShrinkPercent: 40");
    std::fs::write(&policy, edited).unwrap();
    let output = run_once(dir.path(), "2026-11-23T10:05:00Z", &db.url);
    assert!(output.status.success(), "{}", text(&output));
    let objects = status_json(dir.path());
    let policy = find(&objects, "RetentionPolicy", "tiers");
    assert_eq!(policy["generation"], 2);
    assert_eq!(policy["status"]["observedGeneration"], 2);
    // The others did not change: still generation 1.
    assert_eq!(
        find(&objects, "PartitionSchedule", "probe-minute")["generation"],
        1
    );
    // Ready stayed True, so its transition time is the first pass's.
    let ready = policy["status"]["conditions"][0].clone();
    assert_eq!(ready["lastTransitionTime"], "2026-11-23T10:00:00Z");
}

#[tokio::test]
async fn a_broken_file_is_reported_and_the_others_still_reconcile() {
    let db = TestDatabase::empty().await;
    let redis = redis_server();
    let dir = copy_examples_with(&redis);
    let shard = dir.path().join("archiver-shard.yaml");
    let broken = std::fs::read_to_string(&shard)
        .unwrap()
        .replace("discovery: auto", "discovery: keys");
    std::fs::write(&shard, broken).unwrap();
    std::fs::write(dir.path().join("garbage.yaml"), "kind: [unclosed\n").unwrap();

    let output = run_once(dir.path(), "2026-11-23T10:00:00Z", &db.url);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let printed = text(&output);
    assert!(
        printed.contains("ArchiverShard/archiver/shard-0: spec.discovery: must be one of"),
        "{printed}"
    );
    assert!(printed.contains("garbage.yaml:"), "{printed}");

    let objects = status_json(dir.path());
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["DeletionRequest", "PartitionSchedule", "RetentionPolicy"]
    );
    for object in &objects {
        if object["kind"] == "DeletionRequest" {
            // Without a valid shard no Redis is known: the erasure waits
            // rather than run without its Redis side.
            assert_eq!(ready_status(object), "False", "{object:#}");
            assert_eq!(object["status"]["phase"], "Pending");
        } else {
            assert_eq!(ready_status(object), "True", "{object:#}");
        }
    }
}

#[tokio::test]
async fn a_paused_object_is_not_reconciled() {
    let db = TestDatabase::empty().await;
    let redis = redis_server();
    let dir = copy_examples_with(&redis);
    let schedule = dir.path().join("partition-schedule.yaml");
    let paused = std::fs::read_to_string(&schedule).unwrap().replace(
        "  annotations:\n",
        "  annotations:\n    archiver.uptime.dev/reconcile: disabled\n",
    );
    std::fs::write(&schedule, paused).unwrap();
    let output = run_once(dir.path(), "2026-11-23T10:00:00Z", &db.url);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("paused      PartitionSchedule/archiver/probe-minute"));
    let objects = status_json(dir.path());
    let schedule = find(&objects, "PartitionSchedule", "probe-minute");
    assert_eq!(schedule["paused"], true);
    assert!(schedule.get("lastReconciled").is_none(), "{schedule:#}");
}

#[test]
fn a_missing_secret_fails_the_pass_with_the_reason() {
    let dir = copy_examples();
    std::fs::remove_file(dir.path().join("secret-redis-shard-0.yaml")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests", dir.path().to_str().unwrap(), "--once"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let printed = text(&output);
    assert!(
        printed.contains(
            "failed      ArchiverShard/archiver/shard-0: Secret archiver/redis-shard-0 not found"
        ),
        "{printed}"
    );
    let status: PathBuf = dir
        .path()
        .join(".archiver/status/ArchiverShard_archiver_shard-0.yaml");
    let stored = std::fs::read_to_string(status).expect("a failed object still has a status");
    assert!(stored.contains("ReconcileFailed"), "{stored}");
}
