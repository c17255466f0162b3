//! `examples/ci/check-manifests.sh`, the pull-request check for the
//! repository that holds the manifests, run as a CI system would: in a git
//! repository of the examples (a base commit and a pull request's commit on
//! top), with the release binary and a real database whose enforced policy
//! is the base commit's (the operator enforced it with `run --manifests
//! --once`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use archiver_operator::testing::TestDatabase;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .args(["-c", "user.name=ci", "-c", "user.email=ci@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A manifests repository: `manifests/` holds the examples, committed on
/// `main`; the pull request is a branch `change` checked out.
fn manifests_repository() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a repository directory");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("manifests/");
    for file in [
        "retention-policy.yaml",
        "partition-schedule.yaml",
        "archiver-shard.yaml",
        "secret-redis-shard-0.yaml",
    ] {
        std::fs::copy(repo().join("examples").join(file), manifests.join(file)).expect("copy");
    }
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "base"]);
    git(dir.path(), &["checkout", "-q", "-b", "change"]);
    (dir, manifests)
}

fn commit(dir: &Path, message: &str) {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
}

fn check(dir: &Path, database_url: &str) -> (Output, String) {
    let plan = dir.join("plan.md");
    let output = Command::new(repo().join("examples/ci/check-manifests.sh"))
        .args(["main", "manifests"])
        .current_dir(dir)
        .env("ARCHIVER", env!("CARGO_BIN_EXE_archiver-operator"))
        .env("DATABASE_URL", database_url)
        .env("PLAN_OUTPUT", &plan)
        .output()
        .expect("the script runs");
    let markdown = std::fs::read_to_string(&plan).unwrap_or_default();
    (output, markdown)
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The database as the operator left it after enforcing the base commit's
/// policy: `run --manifests --once` on a directory with only that policy.
async fn database_enforcing(policy: &Path) -> TestDatabase {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().expect("a manifests directory");
    std::fs::copy(policy, dir.path().join("retention-policy.yaml")).expect("copy");
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests"])
        .arg(dir.path())
        .args(["--once", "--http-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("ARCHIVER_SUPPRESSION_SALT", "ci-salt")
        .output()
        .expect("run --once");
    assert!(output.status.success(), "{}", text(&output));
    let enforced: i64 = sqlx::query_scalar("SELECT count(*) FROM retention_enforced_policy")
        .fetch_one(&db.pool)
        .await
        .expect("the enforced policy");
    assert_eq!(enforced, 1, "the base policy is enforced");
    db
}

#[tokio::test]
async fn the_pull_request_check_validates_plans_and_holds_an_unconfirmed_shrink() {
    let (dir, manifests) = manifests_repository();
    let policy = manifests.join("retention-policy.yaml");
    let db = database_enforcing(&policy).await;
    let original = std::fs::read_to_string(&policy).expect("the policy");

    // A change that touches no RetentionPolicy: validated, no plan.
    let shard = manifests.join("archiver-shard.yaml");
    let shard_text = std::fs::read_to_string(&shard).expect("the shard");
    std::fs::write(
        &shard,
        shard_text.replace("lagSloSeconds: 180", "lagSloSeconds: 240"),
    )
    .expect("edit the shard");
    commit(dir.path(), "a shard setting");
    let (output, markdown) = check(dir.path(), &db.url);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(markdown.is_empty(), "{markdown}");

    // An invalid manifest fails the check and names the field.
    std::fs::write(
        &shard,
        shard_text.replace("lagSloSeconds: 180", "lagSloSeconds: -1"),
    )
    .expect("break the shard");
    commit(dir.path(), "a broken shard");
    let (output, _) = check(dir.path(), &db.url);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("lagSloSeconds"), "{}", text(&output));
    std::fs::write(&shard, &shard_text).expect("restore the shard");

    // Public per-minute retention from 7 to 3 days (beyond the 50 % guard):
    // the plan is written for the comment and the check fails with 3.
    let shrunk = original.replace(
        "public:     {perMinuteDays: 7,",
        "public:     {perMinuteDays: 3,",
    );
    assert_ne!(shrunk, original, "the example's public tier is edited");
    std::fs::write(&policy, &shrunk).expect("shrink");
    commit(dir.path(), "shorter public retention");
    let (output, markdown) = check(dir.path(), &db.url);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    assert!(
        markdown.contains("### Retention plan for `manifests/retention-policy.yaml`"),
        "{markdown}"
    );
    assert!(markdown.contains("NEEDED"), "{markdown}");

    // The annotation with the new policy's hash (shown by the plan) confirms it.
    let hash = markdown
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|word| word.len() == 64)
        .unwrap_or_else(|| panic!("the plan shows the policy hash:\n{markdown}"))
        .to_string();
    let confirmed = shrunk.replace(
        "    argocd.argoproj.io/sync-wave: \"1\"\n",
        &format!(
            "    argocd.argoproj.io/sync-wave: \"1\"\n    archiver.uptime.dev/confirm-shrink: \"{hash}\"\n"
        ),
    );
    assert_ne!(confirmed, shrunk, "the annotation is added");
    std::fs::write(&policy, &confirmed).expect("confirm");
    commit(dir.path(), "confirm the shrink");
    let (output, markdown) = check(dir.path(), &db.url);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        markdown.contains("the shrink applies at once"),
        "{markdown}"
    );

    // Nothing was written to the database by the check.
    let enforced: String = sqlx::query_scalar("SELECT policy_hash FROM retention_enforced_policy")
        .fetch_one(&db.pool)
        .await
        .expect("the enforced policy");
    assert_ne!(enforced, hash, "plan never enforces");
}
