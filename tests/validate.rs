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
