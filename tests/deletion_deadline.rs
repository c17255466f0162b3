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
