//! The demo runs to completion in a short mode and shows each part of the
//! lifecycle working: archiving, retention, an erasure with its receipt and
//! the rendered privacy text. It leaves nothing running.

use std::process::Command;

#[test]
fn the_demo_runs_the_whole_lifecycle_and_exits_0() {
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["demo", "--minutes", "22", "--servers", "20"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    // Every simulated minute archived 20 servers x 5 regions.
    assert!(stdout.contains("      100 "), "{stdout}");
    // The retention run deleted the public tier's expired rows.
    assert!(stdout.contains(" del"), "{stdout}");
    assert!(stdout.contains("phase: Completed"), "{stdout}");
    assert!(
        stdout.contains("left in probe_minute: 0; tombstones: 1"),
        "{stdout}"
    );
    assert!(stdout.contains("receipt sha256: "), "{stdout}");
    assert!(
        stdout.contains("## How long we keep monitoring data"),
        "{stdout}"
    );
    assert!(
        stdout.contains("DeletionRequest    archiver   erase-6f1c-my-server"),
        "{stdout}"
    );
}
