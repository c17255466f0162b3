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

/// The GitHub Actions workflow's own steps, as a runner would execute them
/// (their `run:` text under bash with the workflow's environment, the
/// `${{ }}` expressions a pull request gives them, `GITHUB_OUTPUT`), in a
/// clone of the manifests repository whose `origin` holds the base branch:
/// the check step records exit 3 for an unconfirmed shrink, the plan is
/// there for the comment step, and the last step fails the job. An
/// expression this runner does not know fails the test, so a workflow
/// edited to need something new is seen here.
#[tokio::test]
async fn the_workflow_steps_run_the_script_and_fail_the_job_on_an_unconfirmed_shrink() {
    let (origin, manifests) = manifests_repository();
    let db = database_enforcing(&manifests.join("retention-policy.yaml")).await;
    let workflow: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("examples/ci/github-actions.yaml"))
            .expect("the workflow"),
    )
    .expect("the workflow is YAML");
    let steps = workflow
        .pointer("/jobs/check/steps")
        .and_then(|steps| steps.as_array())
        .expect("jobs.check.steps");
    let step = |name: &str| {
        steps
            .iter()
            .find(|step| step["name"] == name)
            .unwrap_or_else(|| panic!("a step named {name:?}"))
    };
    let manifests_dir = workflow["env"]["MANIFESTS"]
        .as_str()
        .expect("env.MANIFESTS");
    assert_eq!(manifests_dir, "manifests");
    assert_eq!(
        workflow
            .pointer("/on/pull_request/paths/0")
            .and_then(|path| path.as_str()),
        Some("manifests/**")
    );

    // The pull request, as actions/checkout with fetch-depth 0 leaves it.
    let workspace = tempfile::tempdir().expect("a workspace");
    let checkout = workspace.path().join("repo");
    git(
        workspace.path(),
        &["clone", "-q", origin.path().to_str().unwrap(), "repo"],
    );
    git(&checkout, &["checkout", "-q", "change"]);
    let policy = checkout.join("manifests/retention-policy.yaml");
    let original = std::fs::read_to_string(&policy).expect("the policy");
    std::fs::write(
        &policy,
        original.replace(
            "public:     {perMinuteDays: 7,",
            "public:     {perMinuteDays: 3,",
        ),
    )
    .expect("shrink");
    commit(&checkout, "shorter public retention");
    // The copy of the script the workflow's comment asks for, and the binary
    // on PATH as the first step installs it.
    std::fs::create_dir(checkout.join("ci")).expect("ci/");
    std::fs::copy(
        repo().join("examples/ci/check-manifests.sh"),
        checkout.join("ci/check-manifests.sh"),
    )
    .expect("copy the script");
    let bin = workspace.path().join("bin");
    std::fs::create_dir(&bin).expect("bin/");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_archiver-operator"),
        bin.join("archiver-operator"),
    )
    .expect("the binary on PATH");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let github_output = workspace.path().join("github_output");
    std::fs::write(&github_output, "").expect("GITHUB_OUTPUT");

    let run_step = |step: &serde_json::Value, outputs: &[(&str, String)]| -> Output {
        let expressions: Vec<(String, String)> = [
            ("github.base_ref".to_string(), "main".to_string()),
            (
                "secrets.ARCHIVER_PLAN_DATABASE_URL".to_string(),
                db.url.clone(),
            ),
        ]
        .into_iter()
        .chain(
            outputs
                .iter()
                .map(|(name, value)| (format!("steps.check.outputs.{name}"), value.clone())),
        )
        .collect();
        let expand = |text: &str| {
            let mut out = String::new();
            let mut rest = text;
            while let Some(start) = rest.find("${{") {
                out.push_str(&rest[..start]);
                let end = rest[start..].find("}}").expect("a closed expression") + start;
                let name = rest[start + 3..end].trim();
                let value = expressions
                    .iter()
                    .find(|(known, _)| known == name)
                    .map(|(_, value)| value.clone())
                    .unwrap_or_else(|| panic!("the workflow uses ${{{{ {name} }}}}"));
                out.push_str(&value);
                rest = &rest[end + 2..];
            }
            out.push_str(rest);
            out
        };
        let mut command = Command::new("bash");
        command
            .args(["--noprofile", "--norc", "-eo", "pipefail", "-c"])
            .arg(expand(step["run"].as_str().expect("a run step")))
            .current_dir(&checkout)
            .env("PATH", &path)
            .env("MANIFESTS", manifests_dir)
            .env("GITHUB_OUTPUT", &github_output);
        for (name, value) in step["env"].as_object().into_iter().flatten() {
            command.env(name, expand(value.as_str().expect("a string")));
        }
        command.output().expect("bash runs the step")
    };

    let check = step("Validate and plan");
    assert_eq!(check["id"], "check");
    let ran = run_step(check, &[]);
    assert_eq!(
        ran.status.code(),
        Some(0),
        "the step itself passes: {}",
        text(&ran)
    );
    let recorded = std::fs::read_to_string(&github_output).expect("the step's outputs");
    assert_eq!(recorded.trim(), "status=3", "{}", text(&ran));
    let plan = std::fs::read_to_string(checkout.join("plan.md")).expect("plan.md for the comment");
    assert!(plan.contains("NEEDED"), "{plan}");
    assert_eq!(
        step("Comment the plan on the pull request")["if"],
        "hashFiles('plan.md') != ''"
    );

    let fail = step("Fail on an invalid manifest or an unconfirmed shrink");
    assert_eq!(fail["if"], "steps.check.outputs.status != '0'");
    let failed = run_step(fail, &[("status", "3".to_string())]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(
        String::from_utf8_lossy(&failed.stdout).contains("exited 3"),
        "{}",
        text(&failed)
    );
}
