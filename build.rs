//! Records what `/health` reports about the build: the git commit
//! (`ARCHIVER_GIT_COMMIT` when set, as the Dockerfile sets it; else `git
//! rev-parse HEAD`; "unknown" outside a git checkout)
//! and the build time in seconds since the epoch (`SOURCE_DATE_EPOCH` when
//! set, so reproducible builds stay reproducible).

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    // A container build has no `.git`: the Dockerfile passes the commit as
    // the build argument ARCHIVER_GIT_COMMIT instead.
    let commit = std::env::var("ARCHIVER_GIT_COMMIT")
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
        .or_else(git_head)
        .unwrap_or_else(|| "unknown".to_string());
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|value| value.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|elapsed| elapsed.as_secs() as i64)
                .unwrap_or(0)
        });
    println!("cargo:rustc-env=ARCHIVER_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=ARCHIVER_BUILD_EPOCH={epoch}");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=ARCHIVER_GIT_COMMIT");
    // A new commit changes HEAD (or the branch file it points to).
    if let Ok(output) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        && output.status.success()
    {
        let git_dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        if let Ok(output) = Command::new("git")
            .args(["rev-parse", "--symbolic-full-name", "HEAD"])
            .output()
        {
            let reference = String::from_utf8_lossy(&output.stdout).trim().to_string();
            if reference.starts_with("refs/") {
                let common = Command::new("git")
                    .args(["rev-parse", "--git-common-dir"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or(git_dir);
                println!("cargo:rerun-if-changed={common}/{reference}");
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// `git rev-parse HEAD`, when this is a git checkout.
fn git_head() -> Option<String> {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}
