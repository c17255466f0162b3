//! Attacks on the manifests source and `validate` with input nobody wrote
//! on purpose: names at their length limits, a file caught half-written,
//! duplicate keys, odd encodings, special files. Through the binary, with a
//! real PostgreSQL where objects are reconciled.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use archiver_operator::testing::TestDatabase;
use serde_json::Value;

fn binary(args: &[&str], database_url: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_archiver-operator"));
    command.args(args).env("ARCHIVER_LOG_FORMAT", "text");
    match database_url {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    command.output().expect("run the binary")
}

fn run_once(dir: &Path, database_url: &str) -> Output {
    binary(
        &[
            "run",
            "--manifests",
            dir.to_str().unwrap(),
            "--once",
            "--now",
            "2026-11-23T10:00:00Z",
        ],
        Some(database_url),
    )
}

fn validate(path: &Path) -> Output {
    binary(&["validate", "-f", path.to_str().unwrap()], None)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .expect("example")
}

/// `Kind/name` of every status `status -o json` prints.
fn statuses(dir: &Path) -> Vec<String> {
    let output = binary(
        &["status", "--manifests", dir.to_str().unwrap(), "-o", "json"],
        None,
    );
    assert!(output.status.success(), "{}", text(&output));
    let objects: Vec<Value> = serde_json::from_slice(&output.stdout).expect("status is JSON");
    objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// A valid DNS subdomain of exactly `len` characters.
fn long_name(len: usize) -> String {
    let mut name = String::new();
    while name.len() < len {
        if !name.is_empty() {
            name.push('.');
        }
        let label = 63.min(len - name.len());
        name.push_str(&"a".repeat(label));
    }
    // A label cannot end up empty or start with '.': the loop above only
    // adds a dot before a label of at least one character.
    assert_eq!(name.len(), len);
    name
}

/// An object with a 253-character name (valid for the API server, and so
/// for `validate`) could not keep a status: its file name
/// `Kind_namespace_name.yaml` passes the 255 bytes a file name may hold,
/// so every pass failed with "File name too long" and `run --once` exited 1.
#[tokio::test]
async fn names_at_the_length_limits_keep_a_status() {
    let db = TestDatabase::empty().await;
    let dir = tempfile::tempdir().unwrap();
    let namespace = "n".repeat(63);
    let name = long_name(253);
    // A second name equal to the first up to where the status file name is
    // cut: the two must not share a file.
    let twin = format!("{}b", &name[..252]);
    std::fs::write(
        dir.path().join("policy.yaml"),
        example("retention-policy.yaml")
            .replace("namespace: archiver", &format!("namespace: {namespace}")),
    )
    .unwrap();
    let schedule = example("partition-schedule.yaml")
        .replace("namespace: archiver", &format!("namespace: {namespace}"));
    for (file, object) in [("a.yaml", &name), ("b.yaml", &twin)] {
        std::fs::write(
            dir.path().join(file),
            schedule.replace("name: probe-minute", &format!("name: {object}")),
        )
        .unwrap();
    }
    let checked = validate(dir.path());
    assert!(checked.status.success(), "{}", text(&checked));

    let output = run_once(dir.path(), &db.url);
    assert!(output.status.success(), "{}", text(&output));
    let mut expected = vec![
        format!("PartitionSchedule/{name}"),
        format!("PartitionSchedule/{twin}"),
        "RetentionPolicy/tiers".to_string(),
    ];
    expected.sort();
    let mut found = statuses(dir.path());
    found.sort();
    assert_eq!(found, expected);
    for entry in std::fs::read_dir(dir.path().join(".archiver/status")).unwrap() {
        let file = entry.unwrap().file_name();
        assert!(file.len() <= 251, "{file:?}");
    }
    // A second pass finds both statuses again (nothing reported foreign,
    // nothing forgotten).
    let output = run_once(dir.path(), &db.url);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        !text(&output).contains("not a status file"),
        "{}",
        text(&output)
    );
    assert_eq!(statuses(dir.path()).len(), 3);
}

/// A manifest caught half-written (a `git checkout` or an editor saving in
/// place) or briefly not UTF-8 made the objects after the break vanish from
/// the set, and the pass then deleted their statuses as if their manifests
/// had been removed (and stopped their shard's worker). Nothing may be
/// forgotten on account of a file that cannot be read whole.
#[tokio::test]
async fn a_file_caught_half_written_forgets_no_status() {
    let db = TestDatabase::empty().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = example("retention-policy.yaml");
    let schedule = example("partition-schedule.yaml");
    let both = dir.path().join("both.yaml");
    std::fs::write(&both, format!("{policy}\n---\n{schedule}")).unwrap();
    let output = run_once(dir.path(), &db.url);
    assert!(output.status.success(), "{}", text(&output));
    let before = statuses(dir.path());
    assert_eq!(
        before,
        ["PartitionSchedule/probe-minute", "RetentionPolicy/tiers"]
    );

    // The second document cut short in the middle of a flow sequence.
    let cut = schedule.find("spec:").unwrap();
    std::fs::write(
        &both,
        format!(
            "{policy}\n---\n{}spec: {{table: [probe_minute",
            &schedule[..cut]
        ),
    )
    .unwrap();
    let output = run_once(dir.path(), &db.url);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("both.yaml:"), "{}", text(&output));
    assert_eq!(statuses(dir.path()), before, "{}", text(&output));

    // The whole file briefly not UTF-8.
    let mut bytes = format!("{policy}\n---\n{schedule}").into_bytes();
    bytes.insert(10, 0xff);
    std::fs::write(&both, bytes).unwrap();
    let output = run_once(dir.path(), &db.url);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("not UTF-8"), "{}", text(&output));
    assert_eq!(statuses(dir.path()), before, "{}", text(&output));

    // Once it reads whole again, a removed object is forgotten as before.
    std::fs::write(&both, &policy).unwrap();
    let output = run_once(dir.path(), &db.url);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(statuses(dir.path()), ["RetentionPolicy/tiers"]);
}

/// A key given twice was taken silently (the last one won), so the object
/// that ran was not the one a reviewer read; kubectl and the API server
/// refuse such a manifest.
#[test]
fn a_key_given_twice_is_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    let policy = example("retention-policy.yaml");
    std::fs::write(
        &file,
        policy.replace("  name: tiers\n", "  name: tiers\n  name: other\n"),
    )
    .unwrap();
    let output = validate(&file);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("duplicate key \"name\""),
        "{}",
        text(&output)
    );
    // The same at the top of a nested mapping.
    std::fs::write(
        &file,
        policy.replace(
            "  shrinkGuard:\n",
            "  shrinkGuard:\n    maxShrinkPercent: 90\n",
        ),
    )
    .unwrap();
    let output = validate(&file);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("maxShrinkPercent"),
        "{}",
        text(&output)
    );
}

/// Encodings and YAML features a manifest may carry by accident: a BOM,
/// CRLF line endings, YAML 1.1 numbers. The valid ones stay valid; what
/// cannot be represented is a clear problem, never a crash or a hang.
#[test]
fn odd_encodings_are_read_or_clearly_refused() {
    let dir = tempfile::tempdir().unwrap();
    let policy = example("retention-policy.yaml");
    let write = |name: &str, content: Vec<u8>| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let bom = write(
        "bom.yaml",
        [b"\xef\xbb\xbf".as_slice(), policy.as_bytes()].concat(),
    );
    let output = validate(&bom);
    assert!(output.status.success(), "BOM: {}", text(&output));
    let crlf = write("crlf.yaml", policy.replace('\n', "\r\n").into_bytes());
    let output = validate(&crlf);
    assert!(output.status.success(), "CRLF: {}", text(&output));

    for (name, replacement, field) in [
        (
            "huge.yaml",
            "maxShrinkPercent: 1e400",
            "spec.shrinkGuard.maxShrinkPercent",
        ),
        (
            "hex.yaml",
            "maxShrinkPercent: 0x100",
            "spec.shrinkGuard.maxShrinkPercent",
        ),
        ("tagged.yaml", "maxShrinkPercent: !custom 5", ""),
        ("binary.yaml", "maxShrinkPercent: !!binary aGVsbG8=", ""),
    ] {
        let path = write(
            name,
            policy
                .replace("maxShrinkPercent: 50", replacement)
                .into_bytes(),
        );
        let output = validate(&path);
        assert_eq!(output.status.code(), Some(1), "{name}: {}", text(&output));
        assert!(text(&output).contains(name), "{name}: {}", text(&output));
        assert!(text(&output).contains(field), "{name}: {}", text(&output));
    }
}

/// Special files named like manifests (a FIFO, a socket, a link to
/// `/dev/zero`) neither block the pass nor get read.
#[test]
fn special_files_named_yaml_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        example("retention-policy.yaml"),
    )
    .unwrap();
    let fifo = std::ffi::CString::new(dir.path().join("fifo.yaml").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("socket.yaml")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.yaml")).unwrap();
    std::os::unix::fs::symlink("fifo.yaml", dir.path().join("to-fifo.yaml")).unwrap();

    let started = std::time::Instant::now();
    let output = validate(dir.path());
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("zero.yaml: is a link that leaves"),
        "{printed}"
    );
    assert!(!printed.contains("fifo.yaml"), "{printed}");
    assert!(!printed.contains("socket.yaml"), "{printed}");
}

/// The status directory swapped for a link to elsewhere between two passes
/// (a checkout that carries `.archiver/status -> /somewhere`): the next pass
/// neither writes there nor removes anything there, and says why.
#[tokio::test]
async fn a_status_directory_replaced_by_a_link_between_passes() {
    let db = TestDatabase::empty().await;
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("checkout");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("policy.yaml"), example("retention-policy.yaml")).unwrap();
    std::fs::write(
        dir.join("schedule.yaml"),
        example("partition-schedule.yaml"),
    )
    .unwrap();
    let output = run_once(&dir, &db.url);
    assert!(output.status.success(), "{}", text(&output));

    let outside = base.path().join("outside");
    std::fs::rename(dir.join(".archiver/status"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join(".archiver/status")).unwrap();
    let listing = |path: &Path| {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let before = listing(&outside);
    assert_eq!(before.len(), 2);
    // The schedule's manifest goes: its status would be removed.
    std::fs::remove_file(dir.join("schedule.yaml")).unwrap();
    let output = run_once(&dir, &db.url);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("is a link or not a directory"),
        "{}",
        text(&output)
    );
    assert_eq!(listing(&outside), before, "{}", text(&output));

    // `.archiver` itself as the link.
    std::fs::remove_file(dir.join(".archiver/status")).unwrap();
    std::fs::remove_dir_all(dir.join(".archiver")).unwrap();
    std::fs::create_dir(base.path().join("elsewhere")).unwrap();
    std::fs::rename(&outside, base.path().join("elsewhere/status")).unwrap();
    std::os::unix::fs::symlink(base.path().join("elsewhere"), dir.join(".archiver")).unwrap();
    let output = run_once(&dir, &db.url);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(
        listing(&base.path().join("elsewhere/status")),
        before,
        "{}",
        text(&output)
    );
    // Nor is the privacy text published through the link.
    assert!(
        !base.path().join("elsewhere/published").exists(),
        "{}",
        text(&output)
    );
}

/// Files the operator did not write, left in the status directory (a
/// temporary file of a process killed mid-write, a file named like a status
/// but holding another object, a FIFO), survive every pass and block
/// nothing.
#[tokio::test]
async fn leftovers_in_the_status_directory_are_left_alone() {
    let db = TestDatabase::empty().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        example("retention-policy.yaml"),
    )
    .unwrap();
    let output = run_once(dir.path(), &db.url);
    assert!(output.status.success(), "{}", text(&output));
    let status = dir.path().join(".archiver/status");
    let own = status.join("RetentionPolicy_archiver_tiers.yaml");
    let content = std::fs::read_to_string(&own).unwrap();
    // What a SIGKILL between write and rename leaves: a half temporary file.
    std::fs::write(
        status.join("RetentionPolicy_archiver_tiers.yaml.tmp"),
        &content[..content.len() / 2],
    )
    .unwrap();
    std::fs::write(
        status.join("PartitionSchedule_archiver_gone.yaml"),
        content.replace("name: tiers", "name: other"),
    )
    .unwrap();
    let fifo = std::ffi::CString::new(status.join("Fifo_a_b.yaml").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

    let started = std::time::Instant::now();
    let output = run_once(dir.path(), &db.url);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        status.join("PartitionSchedule_archiver_gone.yaml").exists(),
        "a file the operator did not write was removed"
    );
    assert!(status.join("Fifo_a_b.yaml").exists());
    // The status itself is whole and still read back.
    assert_eq!(statuses(dir.path()), ["RetentionPolicy/tiers"]);
}

/// A directory of 5,000 manifests where one file changes, one is renamed
/// over another, and one is rewritten with the same size and contents in
/// the same second: only those are read again.
#[test]
fn only_changed_files_are_read_again_among_five_thousand() {
    use archiver_operator::runtime::manifests::ManifestCache;
    let dir = tempfile::tempdir().unwrap();
    let secret = |i: usize, value: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s-{i}\n  namespace: archiver\nstringData:\n  k: {value}\n"
        )
    };
    for i in 0..5000 {
        std::fs::write(dir.path().join(format!("s-{i:04}.yaml")), secret(i, "v")).unwrap();
    }
    let mut cache = ManifestCache::default();
    let first = cache.refresh(dir.path());
    assert_eq!(first.reread.len(), 5000);
    assert_eq!(first.set.secrets.len(), 5000);
    assert!(first.set.problems.is_empty(), "{:?}", first.set.problems);

    let unchanged = cache.refresh(dir.path());
    assert!(!unchanged.changed);
    assert!(unchanged.reread.is_empty());

    std::fs::write(dir.path().join("s-0042.yaml"), secret(42, "w")).unwrap();
    let renamed_from = dir.path().join("s-4000.yaml");
    let renamed_over = dir.path().join("s-4001.yaml");
    std::fs::rename(&renamed_from, &renamed_over).unwrap();
    let second = cache.refresh(dir.path());
    assert!(second.changed);
    let reread: Vec<String> = second
        .reread
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(reread, ["s-0042.yaml", "s-4001.yaml"]);
    assert_eq!(second.set.secrets.len(), 4999);
    let key = |i: usize| ("archiver".to_string(), format!("s-{i}"));
    assert!(second.set.secrets.contains_key(&key(4000)));
    assert!(!second.set.secrets.contains_key(&key(4001)));
}

/// Forty documents in one file, each an alias bomb just small enough on
/// its own: refused quickly, never gigabytes of expanded values.
#[test]
fn a_file_of_many_small_alias_bombs_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let mut document = String::from("a0: &a0 [x, x, x, x, x, x, x, x]\n");
    for level in 1..7 {
        let previous = format!("*a{}", level - 1);
        document.push_str(&format!(
            "a{level}: &a{level} [{}]\n",
            vec![previous; 8].join(", ")
        ));
    }
    let file = dir.path().join("bombs.yaml");
    std::fs::write(&file, format!("---\n{document}").repeat(40)).unwrap();
    let started = std::time::Instant::now();
    let output = validate(&file);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("bombs.yaml"), "{}", text(&output));
}

/// The continuous operator killed with SIGKILL at many points of its first
/// passes (before, during and after writing statuses), then started again:
/// every status file left is whole, and one pass afterwards leaves no
/// temporary file behind.
#[tokio::test]
async fn sigkill_mid_pass_leaves_whole_statuses() {
    let db = TestDatabase::empty().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        example("retention-policy.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("schedule.yaml"),
        example("partition-schedule.yaml"),
    )
    .unwrap();
    for delay_ms in [150u64, 300, 450, 600, 800, 1000, 1300, 1700, 2200, 3000] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
            .args(["run", "--manifests", dir.path().to_str().unwrap()])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", &db.url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the operator");
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        // Whatever was left parses as statuses the operator wrote.
        let output = binary(
            &[
                "status",
                "--manifests",
                dir.path().to_str().unwrap(),
                "-o",
                "json",
            ],
            None,
        );
        assert!(
            output.status.success(),
            "after {delay_ms} ms: {}",
            text(&output)
        );
        assert!(
            !text(&output).contains("not a status file"),
            "after {delay_ms} ms: {}",
            text(&output)
        );
    }
    let output = run_once(dir.path(), &db.url);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        statuses(dir.path()),
        ["PartitionSchedule/probe-minute", "RetentionPolicy/tiers"]
    );
    let leftovers: Vec<String> = std::fs::read_dir(dir.path().join(".archiver/status"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".yaml"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A Secret whose `data` value decodes to bytes that are not UTF-8 was
/// dropped key by key in the manifests source, so the shard reported
/// `Secret archiver/redis-shard-0 has no key "url"` although the key is
/// there; it is now named as the Kubernetes source names it: `key "url"
/// is not UTF-8`.
#[test]
fn a_secret_value_that_is_not_utf8_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["archiver-shard.yaml", "secret-redis-shard-0.yaml"] {
        std::fs::write(dir.path().join(name), example(name)).unwrap();
    }
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(b"redis://127.0.0.1:1/0\xff");
    let secret = dir.path().join("secret-redis-shard-0.yaml");
    let original = std::fs::read_to_string(&secret).unwrap();
    let start = original.find("stringData:").unwrap();
    std::fs::write(
        &secret,
        format!("{}data:\n  url: {encoded}\n", &original[..start]),
    )
    .unwrap();
    let output = binary(
        &["run", "--manifests", dir.path().to_str().unwrap(), "--once"],
        None,
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("\"url\" is not UTF-8"),
        "{}",
        text(&output)
    );
}

/// Deep flow nesting costs the YAML parser time quadratic in the depth
/// before the depth limit (64) can refuse it: 40,000 `[` (80 KB) take 16 s
/// in a debug build, so a 4 MiB file of them (within the size limit) would
/// take hours, blocking `validate` and every pass of the manifests source.
/// Brackets are now counted before parsing.
#[test]
fn deep_flow_nesting_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deep.yaml");
    std::fs::write(&file, format!("a:{}\n", " [".repeat(100_000))).unwrap();
    let started = std::time::Instant::now();
    let output = validate(&file);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("nested deeper than 64"),
        "{}",
        text(&output)
    );
}

/// Quoted closing brackets cannot hide nesting from the count: every level
/// `[ "]"` is real nesting for the parser; the total of flow collections
/// still bounds its work.
#[test]
fn flow_nesting_hidden_behind_quoted_brackets_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hidden.yaml");
    std::fs::write(&file, format!("a:{}\n", " [ \"]\",".repeat(30_000))).unwrap();
    let started = std::time::Instant::now();
    let output = validate(&file);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("flow collections"),
        "{}",
        text(&output)
    );
}
