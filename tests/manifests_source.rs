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

/// Every regular file under `dir`, relative to it (links are not followed).
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else {
                found.push(
                    entry
                        .path()
                        .strip_prefix(dir)
                        .unwrap()
                        .display()
                        .to_string(),
                );
            }
        }
    }
    found.sort();
    found
}

/// A namespace such as `x/../../../../outside` made `run` write a status
/// file outside the manifests directory. It is now an invalid manifest, and
/// nothing is written outside.
#[test]
fn a_namespace_naming_a_path_writes_nothing_outside_the_directory() {
    let base = tempfile::tempdir().unwrap();
    let manifests = base.path().join("checkout");
    std::fs::create_dir(&manifests).unwrap();
    for entry in std::fs::read_dir(copy_examples().path()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, manifests.join(path.file_name().unwrap())).unwrap();
    }
    let deletion = manifests.join("deletion-request.yaml");
    let crafted = std::fs::read_to_string(&deletion).unwrap().replace(
        "namespace: archiver",
        "namespace: \"x/../../../../outside\"",
    );
    std::fs::write(&deletion, crafted).unwrap();
    // What the crafted path needs to resolve: a directory a checkout can carry.
    std::fs::create_dir_all(manifests.join(".archiver/status/DeletionRequest_x")).unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests", manifests.to_str().unwrap(), "--once"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    let printed = text(&output);
    let outside: Vec<String> = files_under(base.path())
        .into_iter()
        .filter(|f| !f.starts_with("checkout/"))
        .collect();
    assert_eq!(outside, Vec::<String>::new(), "written outside: {printed}");
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("metadata.namespace: must be a lowercase DNS label"),
        "{printed}"
    );
}

/// A crafted file under `.archiver/status/` naming a path made `run`
/// delete a file outside the directory. Only status files the operator
/// wrote (content matching the file name) are ever removed.
#[test]
fn a_crafted_status_file_deletes_nothing_outside_the_directory() {
    let base = tempfile::tempdir().unwrap();
    let manifests = base.path().join("checkout");
    std::fs::create_dir(&manifests).unwrap();
    for entry in std::fs::read_dir(copy_examples().path()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, manifests.join(path.file_name().unwrap())).unwrap();
    }
    let victim = base.path().join("victim_precious.yaml");
    std::fs::write(&victim, "precious").unwrap();
    let status = manifests.join(".archiver/status");
    std::fs::create_dir_all(status.join("DeletionRequest_x")).unwrap();
    std::fs::write(
        status.join("crafted.yaml"),
        "kind: DeletionRequest\nnamespace: x/../../../../victim\nname: precious\ngeneration: 1\n\
         specHash: ''\ntriggerHash: ''\nfirstSeen: 2026-11-23T10:00:00Z\n",
    )
    .unwrap();
    // Also one whose content names a valid object other than its file name.
    let other = status.join("DeletionRequest_archiver_kept.yaml");
    std::fs::write(
        &other,
        "kind: DeletionRequest\nnamespace: archiver\nname: not-kept\ngeneration: 1\n\
         specHash: ''\ntriggerHash: ''\nfirstSeen: 2026-11-23T10:00:00Z\n",
    )
    .unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests", manifests.to_str().unwrap(), "--once"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    let printed = text(&output);
    assert_eq!(
        std::fs::read_to_string(&victim).ok().as_deref(),
        Some("precious"),
        "the file outside was removed: {printed}"
    );
    assert!(
        other.exists(),
        "a file the operator did not write was removed"
    );
    assert!(
        printed.contains("not a status file written by the operator"),
        "{printed}"
    );
    // `status` lists the operator's own files and warns about the others.
    let status = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["status", "--manifests", manifests.to_str().unwrap()])
        .output()
        .expect("status");
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("crafted.yaml is not a status file"),
        "{}",
        text(&status)
    );
}

/// Links that resolve outside the directory were followed: a Secret was
/// loaded through one (and any readable file could be read). Such a link
/// is now a manifest problem and is not read; a link that stays inside the
/// directory still works, however many links it goes through.
#[test]
fn links_leaving_the_directory_are_not_followed() {
    let base = tempfile::tempdir().unwrap();
    let manifests = base.path().join("checkout");
    std::fs::create_dir(&manifests).unwrap();
    for entry in std::fs::read_dir(copy_examples().path()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, manifests.join(path.file_name().unwrap())).unwrap();
    }
    // The shard's Secret lives outside, reached through a link.
    let outside = base.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::rename(
        manifests.join("secret-redis-shard-0.yaml"),
        outside.join("secret.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../outside/secret.yaml",
        manifests.join("secret-redis-shard-0.yaml"),
    )
    .unwrap();
    // A link to a link inside a linked directory, ending outside.
    std::os::unix::fs::symlink(&outside, manifests.join("linked-dir")).unwrap();
    std::fs::create_dir(manifests.join("inner")).unwrap();
    std::os::unix::fs::symlink(
        "../linked-dir/secret.yaml",
        manifests.join("inner/hop.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink("inner/hop.yaml", manifests.join("chained.yaml")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", manifests.join("passwd.yaml")).unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests", manifests.to_str().unwrap(), "--once"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    for link in ["secret-redis-shard-0.yaml", "chained.yaml", "passwd.yaml"] {
        assert!(
            printed.contains(&format!(
                "{}: is a link that leaves the manifests directory",
                manifests.join(link).display()
            )),
            "{link}: {printed}"
        );
    }
    assert!(
        !printed.contains("root:"),
        "/etc/passwd was read: {printed}"
    );
    assert!(
        printed.contains(
            "failed      ArchiverShard/archiver/shard-0: Secret archiver/redis-shard-0 not found"
        ),
        "the Secret behind the link was used: {printed}"
    );

    // The same Secret reached through links that stay inside is used.
    std::fs::remove_file(manifests.join("secret-redis-shard-0.yaml")).unwrap();
    std::fs::remove_file(manifests.join("chained.yaml")).unwrap();
    std::fs::remove_file(manifests.join("passwd.yaml")).unwrap();
    std::fs::rename(
        outside.join("secret.yaml"),
        manifests.join("inner/secret.yml"),
    )
    .unwrap();
    std::os::unix::fs::symlink("inner/secret.yml", manifests.join("via-inner.yaml")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests", manifests.to_str().unwrap(), "--once"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    let printed = text(&output);
    assert!(
        !printed.contains("leaves the manifests directory"),
        "{printed}"
    );
    assert!(
        !printed.contains("Secret archiver/redis-shard-0 not found"),
        "{printed}"
    );
}

/// `run --once` exited 0 after a failed erasure. A DeletionRequest whose
/// erasure fails (its cache invalidation cannot be delivered) reports
/// Ready=False, and the pass exits 1.
#[tokio::test]
async fn once_exits_1_when_an_erasure_fails() {
    let db = TestDatabase::empty().await;
    let redis = redis_server();
    let dir = copy_examples_with(&redis);
    let closed = archiver_operator::local_servers::free_port().expect("a free port");
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests", dir.path().to_str().unwrap(), "--once"])
        .args(["--now", "2026-11-23T10:00:00Z"])
        .args([
            "--cache-invalidate-url",
            &format!("http://127.0.0.1:{closed}/invalidate"),
        ])
        .env("DATABASE_URL", &db.url)
        .env("ARCHIVER_LOG_FORMAT", "text")
        .output()
        .expect("run the binary");
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("not ready   DeletionRequest/archiver/erase-6f1c-my-server: Ready=False"),
        "{printed}"
    );
    let objects = status_json(dir.path());
    let deletion = find(&objects, "DeletionRequest", "erase-6f1c-my-server");
    assert_eq!(deletion["status"]["phase"], "Failed", "{deletion:#}");
}

#[test]
fn once_exits_2_on_a_configuration_error() {
    let missing = tempfile::tempdir().unwrap().path().join("missing");
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests", missing.to_str().unwrap(), "--once"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let dir = copy_examples();
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests", dir.path().to_str().unwrap(), "--once"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--once"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let help = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Exit codes of `run --manifests DIR --once`: 0 every object reconciled"),
        "{help}"
    );
}
