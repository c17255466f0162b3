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

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use archiver_operator::testing::{TestDatabase, redis_server};
use serde_json::{Value, json};

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

fn script(kind: &str) -> PathBuf {
    repo().join("argocd/health").join(format!("{kind}.lua"))
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `lua5.4` always (the test fails without it), `lua5.1` too when present.
fn interpreters() -> Vec<&'static str> {
    assert!(
        on_path("lua5.4"),
        "lua5.4 is not on PATH: the Argo CD health checks cannot be executed. \
         Install it with `apt-get install lua5.4` (Debian package lua5.4)."
    );
    let mut found = vec!["lua5.4"];
    if on_path("lua5.1") {
        found.push("lua5.1");
    }
    found
}

/// A Lua expression for a JSON value (null fields are left out, as Argo CD
/// decodes them to nil).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for byte in s.bytes() {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(byte as char),
            // Decimal escapes work in Lua 5.1 and 5.4 alike, also for the
            // bytes of UTF-8 sequences.
            _ => out.push_str(&format!("\\{byte:03}")),
        }
    }
    out.push('"');
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Health {
    status: String,
    message: String,
}

/// Runs the kind's health script on `object` with every interpreter and
/// checks they agree.
fn health(object: &Value) -> Health {
    let kind = object["kind"].as_str().expect("object has a kind");
    let path = script(kind);
    assert!(path.exists(), "{} is missing", path.display());
    let program = format!(
        r#"local chunk = assert(loadfile({path}))
obj = {object}
local print, tostring, type, pcall = print, tostring, type, pcall
-- Argo CD's VM: base, table, package and a safe os only.
string = nil
io = nil
math = nil
coroutine = nil
utf8 = nil
debug.setmetatable("", nil)
debug = nil
local ok, hs = pcall(chunk)
if not ok then
  print("ERROR")
  print(tostring(hs))
elseif type(hs) ~= "table" then
  print("ERROR")
  print("the script returned " .. type(hs) .. ", not a table")
else
  print(tostring(hs.status))
  print(tostring(hs.message))
end
"#,
        path = lua_string(&path.to_string_lossy()),
        object = lua_literal(object),
    );
    let mut results = Vec::new();
    for interpreter in interpreters() {
        let mut child = Command::new(interpreter)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {interpreter}: {e}"));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(program.as_bytes())
            .expect("write the program");
        let output = child.wait_with_output().expect("lua finished");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{interpreter} failed on {kind}: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (status, message) = stdout.split_once('\n').unwrap_or((&stdout, ""));
        let health = Health {
            status: status.to_string(),
            message: message.trim_end_matches('\n').to_string(),
        };
        assert_ne!(
            health.status, "ERROR",
            "{interpreter}: {kind} health script raised {}\nobject: {object:#}",
            health.message
        );
        assert!(
            ["Healthy", "Progressing", "Degraded", "Suspended"].contains(&health.status.as_str()),
            "{interpreter}: {kind} returned status {:?}",
            health.status
        );
        results.push((interpreter, health));
    }
    let (first, expected) = results[0].clone();
    for (interpreter, other) in &results[1..] {
        assert_eq!(
            &expected, other,
            "{first} and {interpreter} disagree on {object:#}"
        );
    }
    expected
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
