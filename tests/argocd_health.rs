//! The Argo CD health checks in `argocd/health/<Kind>.lua`, executed on the
//! status objects the real reconcilers produce: `archiver-operator run
//! --manifests DIR --once` on copies of `examples/` (without a database,
//! with a throw-away PostgreSQL and Redis, suspended, paused, two
//! RetentionPolicies, a held shrink), each status file joined with its
//! manifest into the object Argo CD would see.
//!
//! The scripts run in Debian's `lua5.4` (required: `apt-get install
//! lua5.4`) inside a sandbox shaped like Argo CD's VM (only the base and
//! table libraries, no string methods), and also in `lua5.1` when it is
//! installed, since Argo CD's gopher-lua implements Lua 5.1.

#[path = "common/argocd_lua.rs"]
mod argocd_lua;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use archiver_operator::testing::{TestDatabase, redis_server};
use serde_json::{Value, json};

use argocd_lua::{Health, health, script};

const KINDS: [&str; 4] = [
    "ArchiverShard",
    "RetentionPolicy",
    "PartitionSchedule",
    "DeletionRequest",
];
const NOW: &str = "2026-11-23T10:00:00Z";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Asserts the health and that the message contains `needle`.
#[track_caller]
fn assert_health(object: &Value, status: &str, needle: &str) -> Health {
    let got = health(object);
    eprintln!(
        "{}/{}: {} ({})",
        object["kind"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default(),
        got.status,
        got.message
    );
    assert_eq!(
        got.status, status,
        "health of {}/{}: {got:?}\nobject: {object:#}",
        object["kind"], object["metadata"]["name"]
    );
    assert!(
        got.message.contains(needle),
        "message {:?} lacks {needle:?}\nobject: {object:#}",
        got.message
    );
    got
}

// ---------------------------------------------------------------------
// Driving the real reconcilers.

fn copy_examples() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for entry in std::fs::read_dir(repo().join("examples")).expect("examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).expect("copy");
        }
    }
    dir
}

/// The examples with the shard's Redis Secret pointing at `redis_url`.
fn copy_examples_with_redis(redis_url: &str) -> tempfile::TempDir {
    let dir = copy_examples();
    edit(dir.path(), "secret-redis-shard-0.yaml", |text| {
        text.replace("redis://127.0.0.1:6379/0", redis_url)
    });
    dir
}

fn edit(dir: &Path, file: &str, change: impl FnOnce(String) -> String) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).expect("read manifest");
    let changed = change(text.clone());
    assert_ne!(text, changed, "the edit of {file} changed nothing");
    std::fs::write(path, changed).expect("write manifest");
}

fn run_once(dir: &Path, database_url: Option<&str>, now: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_archiver-operator"));
    command
        .args(["run", "--manifests"])
        .arg(dir)
        .args(["--once", "--now", now])
        .env("ARCHIVER_LOG_FORMAT", "text")
        .env_remove("DATABASE_URL");
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    command.output().expect("run the binary")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read YAML");
    serde_yaml_ng::Deserializer::from_str(&text)
        .filter_map(|doc| {
            let value: Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            (!value.is_null()).then_some(value)
        })
        .collect()
}

/// What Argo CD would see for each custom resource of `dir`: the manifest's
/// metadata and spec, the generation the operator counted and the status it
/// wrote, keyed by `Kind/name`.
fn live_objects(dir: &Path) -> BTreeMap<String, Value> {
    let mut manifests = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("manifests directory") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            for doc in yaml_documents(&path) {
                let kind = doc["kind"].as_str().unwrap_or_default().to_string();
                if KINDS.contains(&kind.as_str()) {
                    let name = doc["metadata"]["name"].as_str().unwrap().to_string();
                    manifests.insert(format!("{kind}/{name}"), doc);
                }
            }
        }
    }
    let mut objects = BTreeMap::new();
    let status_dir = dir.join(".archiver/status");
    for entry in std::fs::read_dir(&status_dir).expect("status directory") {
        let path = entry.expect("entry").path();
        let stored = yaml_documents(&path).remove(0);
        let kind = stored["kind"].as_str().expect("kind").to_string();
        let name = stored["name"].as_str().expect("name").to_string();
        let key = format!("{kind}/{name}");
        let manifest = manifests
            .get(&key)
            .unwrap_or_else(|| panic!("{key} has a status but no manifest"));
        let mut metadata = json!({
            "name": name,
            "namespace": stored["namespace"],
            "generation": stored["generation"],
        });
        if let Some(annotations) = manifest["metadata"].get("annotations") {
            metadata["annotations"] = annotations.clone();
        }
        let mut object = json!({
            "apiVersion": "archiver.uptime.dev/v1alpha1",
            "kind": kind,
            "metadata": metadata,
            "spec": manifest["spec"],
        });
        let status = &stored["status"];
        if status.as_object().is_some_and(|s| !s.is_empty()) {
            object["status"] = status.clone();
        }
        objects.insert(key, object);
    }
    objects
}

fn object<'a>(objects: &'a BTreeMap<String, Value>, key: &str) -> &'a Value {
    objects
        .get(key)
        .unwrap_or_else(|| panic!("{key} has no status: {:?}", objects.keys()))
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The health a DeletionRequest's phase calls for.
fn phase_health(phase: &str) -> &'static str {
    match phase {
        "Completed" => "Healthy",
        "Failed" => "Degraded",
        "Pending" | "Running" => "Progressing",
        other => panic!("unknown phase {other}"),
    }
}

// ---------------------------------------------------------------------
// The scripts themselves.

#[test]
fn every_kind_has_a_script_argo_cd_can_load() {
    for kind in KINDS {
        let text = std::fs::read_to_string(script(kind)).expect("script");
        // gopher-lua has no string library in argocd-cm health checks, and
        // Lua 5.1 has neither goto nor integer division.
        for forbidden in [
            "string.", ":sub(", ":find(", ":match(", ":format(", "goto ", "//",
        ] {
            assert!(
                !text.contains(forbidden),
                "{kind}.lua uses {forbidden:?}, which Argo CD's Lua VM lacks"
            );
        }
        // No status yet: Progressing, never an error.
        let fresh = json!({
            "apiVersion": "archiver.uptime.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": "fresh", "namespace": "archiver", "generation": 1},
            "spec": {},
        });
        assert_health(&fresh, "Progressing", "Waiting for the operator");
    }
}

#[test]
fn the_argocd_cm_example_ships_the_scripts_verbatim() {
    let path = repo().join("examples/argocd/argocd-cm-health.yaml");
    let docs = yaml_documents(&path);
    let data = &docs[0]["data"];
    for kind in KINDS {
        let key = format!("resource.customizations.health.archiver.uptime.dev_{kind}");
        let shipped = data[&key]
            .as_str()
            .unwrap_or_else(|| panic!("{} lacks {key}", path.display()));
        let source = std::fs::read_to_string(script(kind)).expect("script");
        assert_eq!(
            shipped,
            source,
            "{key} in {} differs from argocd/health/{kind}.lua (run python3 tests/chart/sync_generated.py)",
            path.display()
        );
    }
}

// ---------------------------------------------------------------------
// Real status objects.

#[test]
fn without_a_database_the_failing_kinds_are_degraded() {
    let dir = copy_examples();
    let output = run_once(dir.path(), None, NOW);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let objects = live_objects(dir.path());

    let shard = object(&objects, "ArchiverShard/shard-0");
    assert_health(shard, "Degraded", "no database configured");
    let schedule = object(&objects, "PartitionSchedule/probe-minute");
    assert_health(schedule, "Degraded", "ReconcileFailed");
    // A policy needs no database to be valid; with none nothing is enforced.
    let policy = object(&objects, "RetentionPolicy/tiers");
    assert_health(policy, "Healthy", "nothing is enforced");
    // The erasure waits for a database: still Pending.
    let deletion = object(&objects, "DeletionRequest/erase-6f1c-my-server");
    assert_eq!(deletion["status"]["phase"], "Pending");
    assert_health(deletion, "Progressing", "Pending");

    // A new generation the operator has not observed yet: Progressing,
    // whatever the old status said.
    for key in ["RetentionPolicy/tiers", "ArchiverShard/shard-0"] {
        let mut edited = object(&objects, key).clone();
        edited["metadata"]["generation"] = json!(2);
        assert_health(&edited, "Progressing", "observe generation 2");
    }

    // Synthetic phases, shaped like the erasure reconciler's, on the real
    // Pending object (the manifests source reaches Completed only once the
    // shards' Redis is known to the erasure).
    let mut failed = deletion.clone();
    failed["status"]["phase"] = json!("Failed");
    failed["status"]["lastFailure"] = json!("redis: connection refused");
    assert_health(&failed, "Degraded", "connection refused");
    let mut completed = deletion.clone();
    completed["status"]["phase"] = json!("Completed");
    completed["status"]["receiptSha256"] = json!("ab12");
    completed["status"]["conditions"] = json!([{
        "type": "Ready", "status": "True", "reason": "Completed",
        "message": "erased", "lastTransitionTime": NOW, "observedGeneration": 1,
    }]);
    assert_health(&completed, "Healthy", "receipt sha256 ab12");
    let mut running = deletion.clone();
    running["status"]["phase"] = json!("Running");
    assert_health(&running, "Progressing", "Running");
}

#[test]
fn an_invalid_spec_is_degraded_even_when_suspended() {
    let dir = copy_examples();
    let _ = run_once(dir.path(), None, NOW);
    let objects = live_objects(dir.path());
    for kind in KINDS {
        let key = objects
            .keys()
            .find(|k| k.starts_with(&format!("{kind}/")))
            .expect("one object per kind")
            .clone();
        let mut invalid = objects[&key].clone();
        invalid["spec"]["suspend"] = json!(true);
        invalid["status"]["conditions"] = json!([{
            "type": "Ready", "status": "False", "reason": "InvalidSpec",
            "message": "spec: rejected by the admission rules", "lastTransitionTime": NOW,
        }]);
        assert_health(&invalid, "Degraded", "InvalidSpec");
    }
}

#[tokio::test]
async fn with_a_database_and_redis_the_examples_are_healthy() {
    let db = TestDatabase::new().await;
    let redis = redis_server();
    let dir = copy_examples_with_redis(&redis.url());
    let output = run_once(dir.path(), Some(&db.url), NOW);
    assert!(output.status.success(), "{}", text(&output));
    let output = run_once(dir.path(), Some(&db.url), "2026-11-23T10:01:00Z");
    assert!(output.status.success(), "{}", text(&output));
    let objects = live_objects(dir.path());

    assert_health(
        object(&objects, "RetentionPolicy/tiers"),
        "Healthy",
        "Ready",
    );
    assert_health(
        object(&objects, "PartitionSchedule/probe-minute"),
        "Healthy",
        "partition",
    );
    // The shard's health follows its conditions: Ready, then lag.
    let shard = object(&objects, "ArchiverShard/shard-0");
    let lag = condition(shard, "LagWithinSLO").expect("LagWithinSLO");
    let expected = match (lag["status"].as_str(), lag["reason"].as_str()) {
        (Some("True"), _) => "Healthy",
        (_, Some("NoWatermarkYet")) => "Progressing",
        _ => "Degraded",
    };
    assert_health(shard, expected, "");
    // Whatever phase the erasure reached, its health is the phase's.
    let deletion = object(&objects, "DeletionRequest/erase-6f1c-my-server");
    let phase = deletion["status"]["phase"].as_str().expect("phase");
    assert_health(deletion, phase_health(phase), "");
}

#[tokio::test]
async fn suspended_and_paused_objects_are_suspended() {
    let db = TestDatabase::new().await;
    let redis = redis_server();
    let dir = copy_examples_with_redis(&redis.url());
    for file in [
        "archiver-shard.yaml",
        "retention-policy.yaml",
        "partition-schedule.yaml",
    ] {
        edit(dir.path(), file, |text| {
            text.replacen("spec:\n", "spec:\n  suspend: true\n", 1)
        });
    }
    // The DeletionRequest has no suspend (its spec is immutable): pause it.
    edit(dir.path(), "deletion-request.yaml", |text| {
        text.replacen(
            "  annotations:\n",
            "  annotations:\n    archiver.uptime.dev/reconcile: disabled\n",
            1,
        )
    });
    let output = run_once(dir.path(), Some(&db.url), NOW);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("paused      DeletionRequest/archiver/erase-6f1c-my-server"),
        "{}",
        text(&output)
    );
    let objects = live_objects(dir.path());

    let shard = object(&objects, "ArchiverShard/shard-0");
    assert_eq!(condition(shard, "Ready").unwrap()["status"], "True");
    assert_health(shard, "Suspended", "no worker runs");
    assert_health(
        object(&objects, "RetentionPolicy/tiers"),
        "Suspended",
        "nothing is deleted",
    );
    assert_health(
        object(&objects, "PartitionSchedule/probe-minute"),
        "Suspended",
        "no partition is created or dropped",
    );
    let deletion = object(&objects, "DeletionRequest/erase-6f1c-my-server");
    assert!(deletion.get("status").is_none(), "{deletion:#}");
    assert_health(deletion, "Suspended", "reconcile: disabled");
}

#[tokio::test]
async fn two_retention_policies_are_a_degraded_conflict() {
    let db = TestDatabase::new().await;
    let dir = copy_examples();
    for file in [
        "archiver-shard.yaml",
        "secret-redis-shard-0.yaml",
        "deletion-request.yaml",
    ] {
        std::fs::remove_file(dir.path().join(file)).expect("remove");
    }
    let second = std::fs::read_to_string(dir.path().join("retention-policy.yaml"))
        .unwrap()
        .replace("name: tiers", "name: tiers-copy");
    std::fs::write(dir.path().join("retention-policy-copy.yaml"), second).unwrap();
    let output = run_once(dir.path(), Some(&db.url), NOW);
    assert!(
        text(&output).contains("exactly one RetentionPolicy"),
        "{}",
        text(&output)
    );
    let objects = live_objects(dir.path());
    for key in ["RetentionPolicy/tiers", "RetentionPolicy/tiers-copy"] {
        let policy = object(&objects, key);
        let conflict = condition(policy, "Conflict").expect("Conflict condition");
        assert_eq!(conflict["status"], "True", "{policy:#}");
        assert_health(policy, "Degraded", "Conflict");
    }
    // With the policy in conflict the schedule drops nothing.
    let schedule = object(&objects, "PartitionSchedule/probe-minute");
    assert_health(schedule, "Degraded", "DropBlocked");
}

#[tokio::test]
async fn a_held_shrink_is_degraded_until_confirmed() {
    let db = TestDatabase::new().await;
    let dir = copy_examples();
    for file in [
        "archiver-shard.yaml",
        "secret-redis-shard-0.yaml",
        "deletion-request.yaml",
        "partition-schedule.yaml",
    ] {
        std::fs::remove_file(dir.path().join(file)).expect("remove");
    }
    let output = run_once(dir.path(), Some(&db.url), NOW);
    assert!(output.status.success(), "{}", text(&output));
    assert_health(
        object(&live_objects(dir.path()), "RetentionPolicy/tiers"),
        "Healthy",
        "",
    );

    // 90 -> 30 days for the author tier: a shrink beyond maxShrinkPercent 50.
    edit(dir.path(), "retention-policy.yaml", |text| {
        text.replace(
            "author:     {perMinuteDays: 90,",
            "author:     {perMinuteDays: 30,",
        )
    });
    let output = run_once(dir.path(), Some(&db.url), "2026-11-23T10:05:00Z");
    assert!(output.status.success(), "{}", text(&output));
    let objects = live_objects(dir.path());
    let policy = object(&objects, "RetentionPolicy/tiers");
    assert_eq!(policy["metadata"]["generation"], 2);
    let held = assert_health(policy, "Degraded", "ShrinkHeld");
    assert!(held.message.contains("ShrinkBeyondGuard"), "{held:?}");

    // The confirmation annotation releases it.
    let hash = policy["status"]["shrinkHold"]["policyHash"]
        .as_str()
        .or_else(|| policy["status"]["policyHash"].as_str())
        .expect("the policy hash to confirm")
        .to_string();
    edit(dir.path(), "retention-policy.yaml", |text| {
        text.replacen(
            "  annotations:\n",
            &format!("  annotations:\n    archiver.uptime.dev/confirm-shrink: \"{hash}\"\n"),
            1,
        )
    });
    let output = run_once(dir.path(), Some(&db.url), "2026-11-23T10:10:00Z");
    assert!(output.status.success(), "{}", text(&output));
    let policy = object(&live_objects(dir.path()), "RetentionPolicy/tiers").clone();
    assert_health(&policy, "Healthy", "");
}
