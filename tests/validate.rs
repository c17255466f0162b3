//! `archiver-operator validate`: every shipped example passes; every invalid
//! fixture fails for its own reason, named by field. Each fixture states the
//! line it must produce in its first line (`# expect: ...`).

use std::path::{Path, PathBuf};
use std::process::Command;

use archiver_operator::api::validation::validate_files;

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
            .expect("fixture directory exists")
            .map(|entry| entry.expect("readable entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
            .collect();
    files.sort();
    files
}

fn expectation(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("readable fixture");
    text.lines()
        .next()
        .and_then(|line| line.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} has no '# expect:' first line", file.display()))
        .to_string()
}

#[test]
fn every_shipped_example_is_valid() {
    let examples = yaml_files("examples");
    assert!(examples.len() >= 5, "one example per kind plus the Secret");
    let problems = validate_files(&examples);
    assert!(problems.is_empty(), "examples have problems: {problems:#?}");
}

#[test]
fn every_invalid_fixture_fails_for_its_own_reason() {
    let fixtures = yaml_files("tests/fixtures/invalid");
    assert!(fixtures.len() >= 30);
    for fixture in fixtures {
        let expected = expectation(&fixture);
        let problems = validate_files(std::slice::from_ref(&fixture));
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            lines.iter().any(|line| line.contains(&expected)),
            "{}: expected a problem containing {expected:?}, got {lines:#?}",
            fixture.display()
        );
    }
}

#[test]
fn the_command_exits_1_and_prints_one_line_per_problem() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/invalid/deletion-bad-tenant.yaml");
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["validate", "-f"])
        .arg(&fixture)
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with(&fixture.display().to_string()));
    assert!(
        stdout.contains(
            "DeletionRequest/archiver/erase-6f1c-my-server: spec.tenantId: must be a UUID"
        )
    );
}

#[test]
fn the_command_exits_0_on_the_examples() {
    let examples = yaml_files("examples");
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["validate", "-f"])
        .args(&examples)
        .output()
        .expect("run the binary");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn deletion_request_spec_is_immutable_at_update() {
    use archiver_operator::api::{DeletionRequest, crd_json};
    use kube::CustomResourceExt;
    let crd = crd_json(&DeletionRequest::crd());
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let old = serde_json::json!({"spec": {
        "tenantId": "6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01", "serverSlug": "my-server",
        "reason": "gdpr-art17", "requester": "0b7e3c41-9d2a-4f6b-8e15-7a9c0d4e2f63"}});
    let mut new = old.clone();
    new["spec"]["serverSlug"] = "other-server".into();
    let validator = kube::core::cel::Validator::new();
    assert!(validator.validate(schema, &old, Some(&old)).is_ok());
    let errors = validator
        .validate(schema, &new, Some(&old))
        .expect_err("changing the spec must be rejected");
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("spec is immutable")),
        "{errors:?}"
    );
}

fn validate_binary(paths: &[&Path]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["validate", "-f"])
        .args(paths)
        .output()
        .expect("run the binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// A schema error used to hide the CEL and semantic errors of the same
/// object: every problem of every object comes out of one run now.
#[test]
fn every_problem_of_every_object_is_reported_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    let policy = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/retention-policy.yaml"),
    )
    .unwrap()
    // Schema: a wrong type and an unknown field.
    .replace("maxShrinkPercent: 50", "maxShrinkPercent: lots")
    .replace(
        "public:     {perMinuteDays: 7,",
        "public:     {perMinuteDay: 7, perMinuteDays: 7,",
    )
    // CEL: a tier whose per-minute window is longer than its daily one.
    .replace(
        "author:     {perMinuteDays: 90,",
        "author:     {perMinuteDays: 900,",
    )
    // CEL and semantic: a malformed window (reported once).
    .replace("window: \"03:00-05:00\"", "window: \"3-5\"");
    let shard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/archiver-shard.yaml"),
    )
    .unwrap()
    .replace("discovery: auto", "discovery: keys")
    .replace("name: shard-0", "name: Shard_0");
    std::fs::write(&file, format!("{policy}\n---\n{shard}")).unwrap();

    let (code, stdout) = validate_binary(&[&file]);
    assert_eq!(code, Some(1), "{stdout}");
    for expected in [
        "RetentionPolicy/archiver/tiers: spec.shrinkGuard.maxShrinkPercent: must be of type integer",
        "RetentionPolicy/archiver/tiers: spec.tiers.public.perMinuteDay: unknown field",
        "RetentionPolicy/archiver/tiers: spec.tiers.author.perMinuteDays: perMinuteDays must be <= dailyDays",
        "RetentionPolicy/archiver/tiers: spec.enforcement.window: must be a UTC window",
        "spec.discovery: must be one of",
        "metadata.name: must be a lowercase DNS subdomain",
    ] {
        assert!(
            stdout.lines().any(|line| line.contains(expected)),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let window_lines = stdout
        .lines()
        .filter(|line| line.contains("spec.enforcement.window"))
        .count();
    assert_eq!(window_lines, 1, "one problem per field:\n{stdout}");
}

#[test]
fn a_file_that_is_not_utf8_gets_its_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("latin1.yaml");
    // The invalid byte 0xe9 is at offset 18 of the file, on line 2.
    std::fs::write(&file, b"# header\nkind: Caf\xe9\n").unwrap();
    let (code, stdout) = validate_binary(&[&file]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{}:2: not UTF-8: invalid byte 0xe9 at byte offset 18",
            file.display()
        )),
        "{stdout}"
    );
}

#[test]
fn a_namespace_must_be_a_dns_label() {
    let dir = tempfile::tempdir().unwrap();
    for (namespace, valid) in [
        ("archiver", true),
        ("x/../../../outside", false),
        ("..", false),
        ("a.b", false),
        ("UPPER", false),
    ] {
        let file = dir.path().join("policy.yaml");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/retention-policy.yaml"),
        )
        .unwrap()
        .replace("namespace: archiver", &format!("namespace: {namespace:?}"));
        std::fs::write(&file, text).unwrap();
        let problems: Vec<String> = validate_files(std::slice::from_ref(&file))
            .iter()
            .map(ToString::to_string)
            .collect();
        if valid {
            assert!(problems.is_empty(), "{namespace:?}: {problems:#?}");
        } else {
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains("metadata.namespace: must be a lowercase DNS label")),
                "{namespace:?}: {problems:#?}"
            );
        }
    }
}

/// Limits: a file over 4 MiB, nesting beyond 64 levels and an alias
/// expansion beyond the budget are each one clear problem, found after
/// bounded work (the old parser accepted all three).
#[test]
fn oversize_deep_and_alias_bomb_files_are_clear_problems() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    let mut text =
        String::from("apiVersion: v1\nkind: Secret\nmetadata: {name: big}\nstringData:\n");
    let line = format!("  k{{}}: {}\n", "x".repeat(1000));
    for i in 0..4300 {
        text.push_str(&line.replace("{}", &i.to_string()));
    }
    std::fs::write(&big, &text).unwrap();
    let deep = dir.path().join("deep.yaml");
    std::fs::write(
        &deep,
        format!("kind: {}{}\n", "[".repeat(100), "]".repeat(100)),
    )
    .unwrap();
    let bomb = dir.path().join("bomb.yaml");
    let mut text = format!("a: &a \"{}\"\nb: [", "x".repeat(10_000));
    for _ in 0..10_000 {
        text.push_str("*a, ");
    }
    text.push_str("]\n");
    std::fs::write(&bomb, text).unwrap();

    for (file, expected) in [
        (&big, "larger than 4 MiB"),
        (&deep, "nested deeper than 64 levels"),
        (&bomb, "too large once its aliases are expanded"),
    ] {
        let (code, stdout) = validate_binary(&[file]);
        assert_eq!(code, Some(1), "{stdout}");
        assert!(
            stdout.starts_with(&file.display().to_string()) && stdout.contains(expected),
            "{}: expected {expected:?}, got {stdout}",
            file.display()
        );
    }
}
