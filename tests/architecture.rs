//! The direction of dependencies (issue 15): the domain modules — draining
//! (`archive`), the derived `views`, `erasure`, `retention`, `partitions`, the catalogue
//! of tables (`schema`), and the neutral
//! modules they use (`clock`, `db`, `metrics`, `secret`, `redis_client`) —
//! know nothing about Kubernetes or about the layers above them. They may
//! use the spec value types of `crate::api` (plain data), never a resource
//! object, its status or conditions, the `kube`/`k8s_openapi` crates, or
//! `runtime`, `controllers`, `commands`, the CLI, the demo or test support.
//!
//! The check reads the source: comments, string literals and `#[cfg(test)]`
//! modules are left out (a unit test may parse an example object), then
//! every identifier and `crate::` path is compared with the forbidden ones.

use std::path::{Path, PathBuf};

/// Identifiers a domain module must not name.
const FORBIDDEN_NAMES: &[&str] = &[
    "kube",
    "k8s_openapi",
    "ArchiverShard",
    "RetentionPolicy",
    "PartitionSchedule",
    "DeletionRequest",
    "ArchiverShardStatus",
    "RetentionPolicyStatus",
    "PartitionScheduleStatus",
    "DeletionRequestStatus",
    "ResourceExt",
    "set_condition",
    "ConditionUpdate",
    "Managed",
    "ReconcileError",
];

/// Modules of this crate a domain module must not reach (`crate::NAME`).
const FORBIDDEN_MODULES: &[&str] = &[
    "runtime",
    "controllers",
    "commands",
    "cli",
    "demo",
    "plugin",
    "testing",
    "local_servers",
];

const DOMAIN_DIRECTORIES: &[&str] = &[
    "archive",
    "views",
    "erasure",
    "retention",
    "partitions",
    "schema",
];
const NEUTRAL_FILES: &[&str] = &[
    "canonical.rs",
    "clock.rs",
    "db.rs",
    "metrics.rs",
    "secret.rs",
    "redis_client.rs",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

fn domain_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in DOMAIN_DIRECTORIES {
        rust_files(&src().join(dir), &mut files);
    }
    files.extend(NEUTRAL_FILES.iter().map(|file| src().join(file)));
    files.sort();
    files
}

/// The code of `source` without comments, string and char literals, and
/// without what follows the first `#[cfg(test)]` (unit tests sit at the
/// end of a file).
fn code_only(source: &str) -> String {
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &source[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |end| end + 2);
        } else if let Some(hashes) = raw_string_start(source, i) {
            let open = 2 + hashes;
            let close = format!("\"{}", "#".repeat(hashes));
            i += rest[open..]
                .find(&close)
                .map_or(rest.len(), |end| open + end + close.len());
            out.push_str("\"\"");
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() && !rest[j..].starts_with('"') {
                j += if rest[j..].starts_with('\\') { 2 } else { 1 };
                while !rest.is_char_boundary(j.min(rest.len())) {
                    j += 1;
                }
            }
            i += (j + 1).min(rest.len());
            out.push_str("\"\"");
        } else if let Some(length) = char_literal(rest) {
            i += length;
        } else {
            let c = rest.chars().next().expect("a character");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// `r"`, `r#"`, ... at `i`, not inside an identifier: the number of `#`.
fn raw_string_start(source: &str, i: usize) -> Option<usize> {
    let rest = &source[i..];
    let after_r = rest.strip_prefix('r')?;
    let hashes = after_r.len() - after_r.trim_start_matches('#').len();
    let preceded_by_identifier = source[..i]
        .chars()
        .next_back()
        .is_some_and(|c| c.is_alphanumeric() || c == '_');
    (after_r[hashes..].starts_with('"') && !preceded_by_identifier).then_some(hashes)
}

/// The length of a char literal (`'a'`, `'\n'`, `'\''`) at the start of
/// `rest`; lifetimes (`'a`) are not char literals.
fn char_literal(rest: &str) -> Option<usize> {
    let mut chars = rest.char_indices();
    if chars.next()?.1 != '\'' {
        return None;
    }
    let (_, first) = chars.next()?;
    if first == '\\' {
        let end = rest[2..].find('\'')?;
        return Some(2 + end + 1);
    }
    let (at, close) = chars.next()?;
    (close == '\'').then_some(at + 1)
}

/// Every forbidden identifier or module path in `code`.
fn violations(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut words = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| !word.is_empty());
    for word in words.by_ref() {
        let parts: Vec<&str> = word.split("::").filter(|part| !part.is_empty()).collect();
        for (at, part) in parts.iter().enumerate() {
            if FORBIDDEN_NAMES.contains(part) {
                found.push(word.to_string());
            }
            if at > 0 && parts[at - 1] == "crate" && FORBIDDEN_MODULES.contains(part) {
                found.push(word.to_string());
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn domain_modules_import_nothing_of_kubernetes_or_the_layers_above() {
    let files = domain_files();
    assert!(files.len() > 30, "the domain files are found: {files:?}");
    let mut offences = Vec::new();
    for file in files {
        let source =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let found = violations(&code_only(&source));
        if !found.is_empty() {
            offences.push(format!(
                "{}: {}",
                file.strip_prefix(src()).unwrap_or(&file).display(),
                found.join(", ")
            ));
        }
    }
    assert!(
        offences.is_empty(),
        "domain modules must not depend on Kubernetes or the layers above them \
         (move the code to src/controllers/ or src/commands/, or pass plain values):\n{}",
        offences.join("\n")
    );
}

/// The check finds what it must and ignores comments, strings and tests.
#[test]
fn the_check_sees_imports_and_paths_but_not_comments_strings_or_tests() {
    let source = r##"
//! A DeletionRequest is described here (a comment).
use kube::ResourceExt;
use crate::api::{ArchiverShard, ArchiverShardSpec};
use crate::runtime::context::Context;
fn f(x: &crate::controllers::Thing) -> &'static str {
    let c = '"';
    let s = "a RetentionPolicy in a string";
    let r = r#"crate::runtime in a raw string"#;
    s
}
#[cfg(test)]
mod tests { use crate::testing::TestDatabase; }
"##;
    assert_eq!(
        violations(&code_only(source)),
        vec![
            "ArchiverShard",
            "crate::controllers::Thing",
            "crate::runtime::context::Context",
            "kube::ResourceExt",
        ]
    );
    let clean = "use crate::api::RetentionPolicySpec;\nuse crate::metrics::Metrics;\n";
    assert!(violations(&code_only(clean)).is_empty());
}
