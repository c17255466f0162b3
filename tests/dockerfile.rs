//! The release image's build stage (Dockerfile) copies everything cargo
//! needs to build the binary. No container engine runs here, so the image is
//! never built by the tests; instead its COPY list is compared with cargo's
//! own list of the package's targets (`cargo metadata`: the library, the
//! binary, the build script, the declared benches and examples) and with the
//! files the source embeds at compile time (`include_str!`, `include_bytes!`,
//! `sqlx::migrate!`). A file that is not copied, or that `.dockerignore`
//! keeps out of the context, fails the image build; the build script was
//! such a file once.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The sources of the build stage's `COPY` instructions (not `COPY
/// --from=...`, which copy out of another stage), as paths relative to the
/// context.
fn copied_sources(dockerfile: &str) -> Vec<PathBuf> {
    let mut sources = Vec::new();
    for line in dockerfile.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&"COPY", arguments)) = words.split_first() else {
            continue;
        };
        if arguments.iter().any(|word| word.starts_with("--from")) {
            continue;
        }
        let paths: Vec<&str> = arguments
            .iter()
            .copied()
            .filter(|word| !word.starts_with("--"))
            .collect();
        // The last path is the destination.
        if let Some((_, copied)) = paths.split_last() {
            sources.extend(copied.iter().map(|path| normalized(Path::new(path))));
        }
    }
    sources
}

/// `./a/../b` as `b`.
fn normalized(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether `needed` is one of `sources` or inside one of them.
fn covered(needed: &Path, sources: &[PathBuf]) -> bool {
    sources.iter().any(|source| needed.starts_with(source))
}

/// Whether a `.dockerignore` line keeps `path` out of the build context
/// (the forms this repository's file uses: a name at the top, `*.ext` at
/// the top, `**/name` anywhere).
fn ignored(path: &Path, dockerignore: &str) -> Option<String> {
    let names: Vec<String> = path
        .components()
        .map(|component| component.as_os_str().to_string_lossy().into_owned())
        .collect();
    dockerignore
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .find(|pattern| {
            if let Some(name) = pattern.strip_prefix("**/") {
                names.iter().any(|part| part == name)
            } else if let Some(extension) = pattern.strip_prefix("*.") {
                names.len() == 1 && names[0].ends_with(&format!(".{extension}"))
            } else {
                names.first().map(String::as_str) == Some(pattern.trim_end_matches('/'))
            }
        })
        .map(str::to_string)
}

/// Every file of the package's non-test targets, relative to the root.
fn target_sources() -> Vec<(String, PathBuf)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata answers JSON");
    let package = metadata["packages"]
        .as_array()
        .and_then(|packages| {
            packages
                .iter()
                .find(|package| package["name"] == "archiver-operator")
        })
        .expect("the package is listed");
    let root = root().canonicalize().expect("the root exists");
    let mut sources = Vec::new();
    for target in package["targets"].as_array().expect("targets") {
        let kinds: Vec<&str> = target["kind"]
            .as_array()
            .expect("kinds")
            .iter()
            .filter_map(|kind| kind.as_str())
            .collect();
        // Test targets are found by cargo only when tests/ exists; the image
        // builds none of them and leaves tests/ out.
        if kinds == ["test"] {
            continue;
        }
        let path = PathBuf::from(target["src_path"].as_str().expect("src_path"));
        let relative = path
            .strip_prefix(&root)
            .expect("a target of the package lies inside it")
            .to_path_buf();
        sources.push((format!("{kinds:?} {}", target["name"]), relative));
    }
    sources
}

/// Files and directories the source embeds at compile time, relative to
/// the root.
fn embedded_files() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|extension| extension != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            let file_dir = path.parent().expect("a file has a directory");
            for (macro_call, relative_to) in [
                ("include_str!(\"", file_dir),
                ("include_bytes!(\"", file_dir),
                ("migrate!(\"", root().as_path()),
            ] {
                for (at, _) in text.match_indices(macro_call) {
                    let rest = &text[at + macro_call.len()..];
                    let literal = &rest[..rest.find('"').expect("a closed literal")];
                    let absolute = normalized(&relative_to.join(literal));
                    let relative = absolute
                        .strip_prefix(normalized(&root()))
                        .expect("an embedded file of the package")
                        .to_path_buf();
                    found.push(relative);
                }
            }
        }
    }
    found
}

#[test]
fn the_image_build_stage_copies_everything_cargo_builds_from() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("the Dockerfile");
    let dockerignore =
        std::fs::read_to_string(root().join(".dockerignore")).expect("the .dockerignore");
    let sources = copied_sources(&dockerfile);
    let mut needed: Vec<(String, PathBuf)> = vec![
        ("the manifest".to_string(), PathBuf::from("Cargo.toml")),
        (
            "the lock file (--locked)".to_string(),
            PathBuf::from("Cargo.lock"),
        ),
    ];
    needed.extend(target_sources());
    needed.extend(
        embedded_files()
            .into_iter()
            .map(|path| ("embedded at compile time".to_string(), path)),
    );
    assert!(
        needed.iter().any(|(what, _)| what.contains("custom-build")),
        "cargo lists the build script: {needed:?}"
    );
    let mut missing = Vec::new();
    for (what, path) in &needed {
        if !covered(path, &sources) {
            missing.push(format!("{} ({what}) is not copied", path.display()));
        } else if let Some(pattern) = ignored(path, &dockerignore) {
            missing.push(format!(
                "{} ({what}) is left out of the context by .dockerignore `{pattern}`",
                path.display()
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "the image cannot be built: {missing:#?}\n(COPY sources: {sources:?})"
    );
}

/// The image has no `.git`: the commit `/health` reports comes in as the
/// build argument the build script reads.
#[test]
fn the_image_build_passes_the_commit_to_the_build_script() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("the Dockerfile");
    let build_script = std::fs::read_to_string(root().join("build.rs")).expect("build.rs");
    assert!(
        build_script.contains("std::env::var(\"ARCHIVER_GIT_COMMIT\")"),
        "build.rs reads the commit from the environment"
    );
    let build_stage = dockerfile
        .split("\nFROM ")
        .find(|stage| stage.contains("cargo build"))
        .expect("a stage that runs cargo build");
    let before_build = &build_stage[..build_stage.find("cargo build").expect("cargo build")];
    assert!(
        before_build
            .lines()
            .any(|line| line.trim_start().starts_with("ARG ARCHIVER_GIT_COMMIT")),
        "the build stage declares ARG ARCHIVER_GIT_COMMIT before cargo build"
    );
}

#[test]
fn the_checks_themselves_see_a_missing_file() {
    let sources = copied_sources(
        "COPY Cargo.toml Cargo.lock ./\nCOPY src ./src\nCOPY --from=build /out/x /x\n",
    );
    assert_eq!(
        sources,
        vec![
            PathBuf::from("Cargo.toml"),
            PathBuf::from("Cargo.lock"),
            PathBuf::from("src")
        ]
    );
    assert!(covered(Path::new("src/main.rs"), &sources));
    assert!(!covered(Path::new("build.rs"), &sources));
    assert_eq!(
        ignored(Path::new("README.md"), "target\n*.md\n"),
        Some("*.md".to_string())
    );
    assert_eq!(ignored(Path::new("docs/x.md"), "*.md\n"), None);
    assert_eq!(
        ignored(Path::new("src/a/.archiver/x"), "**/.archiver\n"),
        Some("**/.archiver".to_string())
    );
    assert_eq!(ignored(Path::new("src/lib.rs"), "target\n.git\n"), None);
}
