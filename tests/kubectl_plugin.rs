//! The binary as the kubectl plugin `kubectl-archiver`, started under that
//! name as kubectl starts it. (Against a real API server: the Kubernetes
//! end-to-end suite.)

use std::path::PathBuf;
use std::process::{Command, Output};

/// The binary linked as `kubectl-archiver` in a temporary directory.
fn plugin() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let link = dir.path().join("kubectl-archiver");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_archiver-operator"), &link).expect("symlink");
    (dir, link)
}

fn run(args: &[&str]) -> Output {
    let (_dir, link) = plugin();
    Command::new(&link)
        .args(args)
        // No cluster: a dry run must not need one.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("run the plugin")
}

const TENANT: &str = "6F1C2A9E-4B1D-4C55-9A43-2F5E7D8C9B01";
const REQUESTER: &str = "0b7e3c41-9d2a-4f6b-8e15-7a9c0d4e2f63";

#[test]
fn erase_dry_run_prints_a_request_that_validate_accepts() {
    let output = run(&[
        "erase",
        "--tenant",
        TENANT,
        "--server",
        "my-server",
        "--reason",
        "gdpr-art17",
        "--requester",
        REQUESTER,
        "-n",
        "archiver",
        "--dry-run",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let yaml = String::from_utf8(output.stdout).expect("utf-8");
    let object: serde_json::Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
    assert_eq!(object["kind"], "DeletionRequest");
    assert_eq!(object["metadata"]["generateName"], "erase-6f1c2a9e-");
    assert_eq!(object["metadata"]["namespace"], "archiver");
    // The canonical spelling of the tenant, whatever was typed.
    assert_eq!(object["spec"]["tenantId"], TENANT.to_lowercase());
    assert_eq!(object["spec"]["reason"], "gdpr-art17");
    assert!(
        object["spec"]["receivedAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    // What was printed is a valid manifest once named, as kubectl would send it.
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("erase.yaml");
    std::fs::write(
        &file,
        yaml.replace("generateName: erase-6f1c2a9e-", "name: erase-6f1c2a9e-x1"),
    )
    .expect("write");
    let validate = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["validate", "-f", file.to_str().expect("utf-8")])
        .output()
        .expect("validate");
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stdout)
    );
}

#[test]
fn erase_refuses_bad_input_before_any_call_with_exit_two() {
    let bad_slug = run(&[
        "erase",
        "--tenant",
        TENANT,
        "--server",
        "api:eu-west",
        "--reason",
        "gdpr-art17",
        "--requester",
        REQUESTER,
    ]);
    assert_eq!(bad_slug.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_slug.stderr);
    assert!(stderr.contains("spec.serverSlug"), "{stderr}");
    assert!(
        !stderr.contains("Kubernetes API"),
        "validated before connecting: {stderr}"
    );

    let bad_reason = run(&[
        "erase",
        "--tenant",
        TENANT,
        "--reason",
        "because",
        "--requester",
        REQUESTER,
        "--dry-run",
    ]);
    assert_eq!(bad_reason.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_reason.stderr).contains("gdpr-art17"));

    let bad_tenant = run(&[
        "erase",
        "--tenant",
        "acme",
        "--reason",
        "drill",
        "--requester",
        REQUESTER,
        "--dry-run",
    ]);
    assert_eq!(bad_tenant.status.code(), Some(2));
}

#[test]
fn the_plugin_has_its_own_commands_and_help() {
    let help = run(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for command in ["erase", "receipt", "plan", "status"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
    assert!(text.contains("kubectl archiver"), "{text}");
    // The operator's own commands are not the plugin's.
    assert_eq!(run(&["run", "--once"]).status.code(), Some(2));
    // Without a reachable cluster, status fails clearly with exit 1.
    let status = run(&["status"]);
    assert_eq!(
        status.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(String::from_utf8_lossy(&status.stderr).contains("Kubernetes API"));
}
