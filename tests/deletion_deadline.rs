//! The erasure deadline, through the binary and the manifests source: the
//! RetentionPolicy's `article17ResponseDays` (the number the privacy text
//! promises) and an Art. 12(3) extension both move it, and the receipt
//! records the extension.

use std::path::Path;
use std::process::{Command, Output};

use archiver_operator::testing::{TestDatabase, redis_server};
use serde_json::Value;

/// The examples, with the shard's Redis Secret pointing at `redis_url`.
fn examples(redis_url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(examples).expect("examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path)
                .expect("example")
                .replace("redis://127.0.0.1:6379/0", redis_url);
            std::fs::write(dir.path().join(path.file_name().expect("name")), text).expect("copy");
        }
    }
    dir
}

fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).expect("example");
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(path, text.replace(from, to)).expect("write");
}

fn binary(args: &[&str], database_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("ARCHIVER_LOG_FORMAT", "text")
        .output()
        .expect("run the binary")
}

fn run_once(dir: &Path, database_url: &str) -> Output {
    let dir = dir.to_str().expect("utf-8 path");
    binary(
        &[
            "run",
            "--manifests",
            dir,
            "--once",
            "--now",
            "2026-11-23T10:00:00Z",
        ],
        database_url,
    )
}

fn deletion_status(dir: &Path) -> Value {
    let output = binary(
        &[
            "status",
            "--manifests",
            dir.to_str().expect("utf-8 path"),
            "-o",
            "json",
        ],
        "",
    );
    let objects: Vec<Value> = serde_json::from_slice(&output.stdout).expect("status is JSON");
    objects
        .into_iter()
        .find(|o| o["kind"] == "DeletionRequest")
        .expect("the DeletionRequest has a status")["status"]
        .clone()
}

const EXTENSION: &str =
    "  extension: {days: 45, reason: \"the request covers every server of the account\"}\n";

#[tokio::test]
async fn the_policy_response_days_and_the_extension_set_the_deadline_and_the_receipt_says_so() {
    let db = TestDatabase::empty().await;
    let redis = redis_server();
    let dir = examples(&redis.url());
    edit(
        dir.path(),
        "retention-policy.yaml",
        "article17ResponseDays: 30",
        "article17ResponseDays: 21",
    );
    let request = dir.path().join("deletion-request.yaml");
    let mut text = std::fs::read_to_string(&request).expect("example");
    text.push_str(EXTENSION);
    std::fs::write(&request, text).expect("write");

    let output = run_once(dir.path(), &db.url);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = deletion_status(dir.path());
    assert_eq!(status["phase"], "Completed", "{status:#}");
    // receivedAt 2026-11-22T09:00:00Z + 21 days + 45 days.
    assert_eq!(status["deadline"], "2027-01-27T09:00:00Z", "{status:#}");
    let receipt: Value =
        serde_json::from_str(status["receipt"].as_str().expect("a receipt")).expect("JSON");
    assert_eq!(
        receipt["request"]["deadline"], "2027-01-27T09:00:00.000000Z",
        "{receipt:#}"
    );
    assert_eq!(receipt["request"]["extension"]["days"], 45, "{receipt:#}");
    assert_eq!(
        receipt["request"]["extension"]["reason"],
        "the request covers every server of the account"
    );
}

#[tokio::test]
async fn without_a_policy_in_force_the_deadline_is_thirty_days_and_the_receipt_has_no_extension() {
    let db = TestDatabase::empty().await;
    let redis = redis_server();
    let dir = examples(&redis.url());
    std::fs::remove_file(dir.path().join("retention-policy.yaml")).expect("remove");
    std::fs::remove_file(dir.path().join("partition-schedule.yaml")).expect("remove");

    let output = run_once(dir.path(), &db.url);
    let status = deletion_status(dir.path());
    assert_eq!(
        status["phase"],
        "Completed",
        "{status:#}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(status["deadline"], "2026-12-22T09:00:00Z", "{status:#}");
    let receipt: Value =
        serde_json::from_str(status["receipt"].as_str().expect("a receipt")).expect("JSON");
    assert!(receipt["request"].get("extension").is_none(), "{receipt:#}");
}

/// The stored object of the DeletionRequest, as `status -o json` prints it.
fn deletion_object(dir: &Path) -> Value {
    let output = binary(
        &[
            "status",
            "--manifests",
            dir.to_str().expect("utf-8 path"),
            "-o",
            "json",
        ],
        "",
    );
    let objects: Vec<Value> = serde_json::from_slice(&output.stdout).expect("status is JSON");
    objects
        .into_iter()
        .find(|o| o["kind"] == "DeletionRequest")
        .expect("the DeletionRequest has a status")
}

/// The condition saying the file's spec was refused, if any.
fn refusal(object: &Value) -> Option<Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "SpecChangeRefused")
        .cloned()
}

const RULE_MESSAGE: &str = "spec is immutable (only an extension may be added, once)";
const TENANT: &str = "6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01";

/// The manifests source enforces the CRD's transition rule as the API
/// server does: the extension may be added once; changing or removing it,
/// or changing the scope, is refused while the erasure is open, the
/// request keeps its accepted spec (scope, deadline, extension), the
/// refusal shows in the status, and it clears when the file is put back.
#[tokio::test]
async fn in_manifests_mode_an_extension_may_be_added_once_and_the_rest_of_the_spec_never_changes() {
    let db = TestDatabase::empty().await;
    let redis = redis_server();
    let dir = examples(&redis.url());
    // No shard yet: the erasure waits (Pending), open to edits.
    let shard = dir.path().join("archiver-shard.yaml");
    let shard_manifest = std::fs::read_to_string(&shard).expect("example");
    std::fs::remove_file(&shard).expect("remove");
    let request = dir.path().join("deletion-request.yaml");
    let original = std::fs::read_to_string(&request).expect("example");

    run_once(dir.path(), &db.url);
    let stored = deletion_object(dir.path());
    assert_eq!(stored["status"]["phase"], "Pending", "{stored:#}");
    assert_eq!(stored["status"]["deadline"], "2026-12-22T09:00:00Z");
    assert!(refusal(&stored).is_none(), "{stored:#}");

    // Added once: accepted, and the deadline moves by its 45 days.
    let extended = format!("{original}{EXTENSION}");
    std::fs::write(&request, &extended).expect("write");
    run_once(dir.path(), &db.url);
    let stored = deletion_object(dir.path());
    assert_eq!(stored["generation"], 2, "{stored:#}");
    assert_eq!(stored["status"]["deadline"], "2027-02-05T09:00:00Z");
    assert!(refusal(&stored).is_none(), "{stored:#}");

    let refused = [
        (
            "changing the extension",
            extended.replace("days: 45", "days: 60"),
        ),
        ("removing the extension", original.clone()),
        (
            "another tenant",
            extended.replace(TENANT, "0a0a0a0a-1b1b-4c4c-8d8d-2e2e2e2e2e2e"),
        ),
        (
            "another server",
            extended.replace("serverSlug: my-server", "serverSlug: other-server"),
        ),
    ];
    for (edit, text) in &refused {
        assert_ne!(text, &extended, "{edit}: the file must change");
        std::fs::write(&request, text).expect("write");
        let output = run_once(dir.path(), &db.url);
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{edit}: {printed}");
        let stored = deletion_object(dir.path());
        assert_eq!(stored["generation"], 2, "{edit}: {stored:#}");
        assert_eq!(
            stored["status"]["deadline"], "2027-02-05T09:00:00Z",
            "{edit}: {stored:#}"
        );
        let condition = refusal(&stored).unwrap_or_else(|| panic!("{edit}: {stored:#}"));
        assert_eq!(condition["status"], "True", "{edit}: {condition:#}");
        assert!(
            condition["message"]
                .as_str()
                .is_some_and(|m| m.contains(RULE_MESSAGE)),
            "{edit}: {condition:#}"
        );
        let events = stored["events"].as_array().expect("events");
        assert!(
            events.iter().any(|e| e["reason"] == "SpecChangeRefused"
                && e["type"] == "Warning"
                && e["note"].as_str().is_some_and(|n| n.contains(RULE_MESSAGE))),
            "{edit}: {stored:#}"
        );
        // The warning log and the pass report name the object and the rule.
        assert!(
            printed
                .lines()
                .any(|line| line.contains("erase-6f1c-my-server")
                    && line.contains(RULE_MESSAGE)
                    && line.contains("WARN")),
            "{edit}: {printed}"
        );
        assert!(
            printed.lines().any(|line| line.starts_with("invalid")
                && line.contains("DeletionRequest/archiver/erase-6f1c-my-server")
                && line.contains(RULE_MESSAGE)),
            "{edit}: {printed}"
        );
        let table = binary(
            &["status", "--manifests", dir.path().to_str().expect("utf-8")],
            "",
        );
        assert!(
            String::from_utf8_lossy(&table.stdout).contains("SpecChangeRefused"),
            "{edit}: {}",
            String::from_utf8_lossy(&table.stdout)
        );
    }

    // The shard arrives while the file still names another server: the
    // erasure runs with the accepted scope, deadline and extension.
    std::fs::write(&shard, &shard_manifest).expect("write");
    run_once(dir.path(), &db.url);
    let stored = deletion_object(dir.path());
    assert_eq!(stored["status"]["phase"], "Completed", "{stored:#}");
    assert!(refusal(&stored).is_some(), "{stored:#}");
    let receipt: Value =
        serde_json::from_str(stored["status"]["receipt"].as_str().expect("receipt")).expect("JSON");
    assert_eq!(receipt["request"]["tenantId"], TENANT, "{receipt:#}");
    assert_eq!(receipt["request"]["serverSlug"], "my-server", "{receipt:#}");
    assert_eq!(receipt["request"]["extension"]["days"], 45, "{receipt:#}");
    assert_eq!(
        receipt["request"]["deadline"], "2027-02-05T09:00:00.000000Z",
        "{receipt:#}"
    );

    // Put back: the refusal clears and the pass succeeds.
    std::fs::write(&request, &extended).expect("write");
    let output = run_once(dir.path(), &db.url);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stored = deletion_object(dir.path());
    assert!(refusal(&stored).is_none(), "{stored:#}");
    assert_eq!(stored["generation"], 2, "{stored:#}");
    assert_eq!(stored["status"]["phase"], "Completed", "{stored:#}");
    assert_eq!(stored["status"]["deadline"], "2027-02-05T09:00:00Z");
}

/// The manifests source checks the kinds that declare a spec transition
/// rule; every CRD with an `oldSelf` rule must declare it.
#[test]
fn every_kind_with_a_transition_rule_is_checked_by_the_manifests_source() {
    use archiver_operator::api::{
        ArchiverShard, DeletionRequest, PartitionSchedule, RetentionPolicy,
    };
    use archiver_operator::runtime::reconcile::Managed;

    fn declared_as_in_crd<K: Managed>() -> (bool, bool) {
        let crd = serde_json::to_string(&K::crd()).expect("CRD serializes");
        (K::SPEC_TRANSITION_RULE, crd.contains("oldSelf"))
    }
    let (declared, in_crd) = declared_as_in_crd::<DeletionRequest>();
    assert!(declared && in_crd);
    for (declared, in_crd) in [
        declared_as_in_crd::<ArchiverShard>(),
        declared_as_in_crd::<PartitionSchedule>(),
        declared_as_in_crd::<RetentionPolicy>(),
    ] {
        assert_eq!(declared, in_crd);
    }
}
