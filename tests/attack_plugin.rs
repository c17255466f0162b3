//! Attacks on `kubectl archiver erase`: namespaces that name paths, escape
//! them or use look-alike characters, and server slugs outside the drain's
//! grammar (a key separator, a control character, too long), are refused
//! offline (exit 2) before any call to a cluster. A slug is only ever bound
//! as a value (SQL parameter, escaped Redis glob, JSON), never a path.

use std::path::PathBuf;
use std::process::{Command, Output};

fn plugin() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let link = dir.path().join("kubectl-archiver");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_archiver-operator"), &link).expect("symlink");
    (dir, link)
}

/// Runs the plugin against a kubeconfig naming a server that would be
/// noticed if called: nothing listens there, so a call fails with a
/// connection error, which the assertions rule out.
fn erase(extra: &[&str]) -> Output {
    let (dir, link) = plugin();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {server: 'http://127.0.0.1:9'}\ncontexts:\n- name: c\n  context: {cluster: k, user: u, namespace: archiver}\nusers:\n- name: u\n  user: {token: t}\n",
    )
    .unwrap();
    let mut args = vec![
        "erase",
        "--tenant",
        "6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01",
        "--reason",
        "gdpr-art17",
        "--requester",
        "0b7e3c41-9d2a-4f6b-8e15-7a9c0d4e2f63",
    ];
    args.extend_from_slice(extra);
    Command::new(&link)
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("run the plugin")
}

#[test]
fn names_that_are_not_kubernetes_names_are_refused_offline() {
    let long_namespace = "a".repeat(64);
    let long_slug = "s".repeat(513);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-n", "../kube-system"], "metadata.namespace"),
        (vec!["-n", "Archiver"], "metadata.namespace"),
        (vec!["-n", "arch%2eiver"], "metadata.namespace"),
        (vec!["-n", "archivér"], "metadata.namespace"),
        (vec!["-n", "archiver/x"], "metadata.namespace"),
        (vec!["-n", ""], "metadata.namespace"),
        (vec!["-n", &long_namespace], "metadata.namespace"),
        // The slug grammar of the drain (key::is_server_slug): no key
        // separator, no control character, at most 512 characters.
        (vec!["--server", "api:eu-west"], "spec.serverSlug"),
        (vec!["--server", "line\nbreak"], "spec.serverSlug"),
        (vec!["--server", "escape\u{1b}[31m"], "spec.serverSlug"),
        (vec!["--server", &long_slug], "spec.serverSlug"),
        (vec!["--server", ""], "spec.serverSlug"),
    ];
    for (extra, field) in cases {
        let output = erase(&extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(field), "{extra:?}: {stderr}");
        assert!(
            !stderr.contains("127.0.0.1") && !stderr.to_lowercase().contains("connect"),
            "{extra:?} reached for the cluster: {stderr}"
        );
    }
    // The largest valid namespace passes the offline check (a dry run
    // prints it).
    let longest = "a".repeat(63);
    let output = erase(&["-n", &longest, "--dry-run"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(&longest));
}
