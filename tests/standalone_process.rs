//! The standalone operator as a process: HTTP endpoints, and leader election
//! between two engines sharing one database.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use archiver_operator::clock::SystemClock;
use archiver_operator::local_servers::free_port;
use archiver_operator::metrics::Metrics;
use archiver_operator::runtime::context::Context;
use archiver_operator::runtime::leader::postgres_advisory_lock;
use archiver_operator::runtime::manifests::ManifestsEngine;
use archiver_operator::testing::TestDatabase;

fn copy_examples() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(examples).expect("examples") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).expect("copy");
        }
    }
    dir
}

/// A minimal HTTP/1.0 GET: status code and body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((code, body))
}

struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SIGTERM: the operator stops gracefully, as in a pod.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn health_ready_and_metrics_answer_as_specified() {
    let db = TestDatabase::empty().await;
    let dir = copy_examples();
    let port = free_port().expect("free port");
    let child = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests", dir.path().to_str().unwrap()])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .env("ARCHIVER_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the operator");
    let _guard = Stopped(child);

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        if let Some((200, body)) = get(port, "/metrics")
            && body.contains("archiver_reconciles_total{kind=\"DeletionRequest\"}")
        {
            metrics = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        metrics.contains("archiver_reconcile_duration_seconds"),
        "metrics never showed reconciles: {metrics}"
    );
    assert!(
        metrics.contains("# EOF"),
        "OpenMetrics text ends with # EOF"
    );

    let (code, body) = get(port, "/health").expect("/health answers");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("/health answers JSON");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    // This test runs from a git checkout: build.rs recorded HEAD.
    let commit = health["commit"].as_str().expect("commit");
    assert!(
        commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{body}"
    );
    let built = health["buildTime"].as_str().expect("buildTime");
    chrono::DateTime::parse_from_rfc3339(built).expect("buildTime is RFC 3339");
    let (code, body) = get(port, "/ready").expect("/ready answers");
    assert_eq!(code, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["role"], "leader");
    assert_eq!(ready["database"], "ok");
    let (code, _) = get(port, "/nothing").expect("404 answers");
    assert_eq!(code, 404);
}

fn engine(dir: &Path, db: &TestDatabase) -> (ManifestsEngine, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let ctx = Context::new(Arc::new(SystemClock))
        .with_database(db.pool.clone())
        .with_metrics(metrics.clone());
    (ManifestsEngine::new(dir.to_path_buf(), ctx), metrics)
}

fn reconciles(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|line| line.starts_with("archiver_reconciles_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn of_two_engines_on_one_database_only_the_leader_reconciles() {
    let db = TestDatabase::new().await;
    let dir = copy_examples();
    let key = 42;
    let retry = Duration::from_millis(100);

    let (engine_a, metrics_a) = engine(dir.path(), &db);
    let (engine_b, metrics_b) = engine(dir.path(), &db);
    let (leader_a, lock_a) = postgres_advisory_lock(db.url.clone(), key, retry);
    let mut probe_a = leader_a.clone();
    let (stop_a, stopped_a) = tokio::sync::oneshot::channel::<()>();
    let run_a = tokio::spawn(async move {
        engine_a
            .run(leader_a, async {
                let _ = stopped_a.await;
            })
            .await
    });
    probe_a.acquired().await;

    let (leader_b, lock_b) = postgres_advisory_lock(db.url.clone(), key, retry);
    let probe_b = leader_b.clone();
    let (stop_b, stopped_b) = tokio::sync::oneshot::channel::<()>();
    let run_b = tokio::spawn(async move {
        engine_b
            .run(leader_b, async {
                let _ = stopped_b.await;
            })
            .await
    });

    wait_until("the leader to reconcile", || reconciles(&metrics_a) >= 4).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !probe_b.is_leader(),
        "the standby must not lead while the leader holds the lock"
    );
    assert_eq!(reconciles(&metrics_b), 0, "the standby reconciled");

    // The leader dies (its session goes): the standby takes over.
    let _ = stop_a.send(());
    lock_a.abort();
    let _ = run_a.await;
    wait_until("the standby to take over and reconcile", || {
        reconciles(&metrics_b) >= 1
    })
    .await;
    assert!(probe_b.is_leader());

    let _ = stop_b.send(());
    lock_b.abort();
    let _ = run_b.await;
}

#[tokio::test]
async fn an_edit_in_the_directory_is_reconciled_within_seconds() {
    let db = TestDatabase::new().await;
    let dir = copy_examples();
    let (engine, metrics) = engine(dir.path(), &db);
    let store = engine.store().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        engine
            .run(
                archiver_operator::runtime::leader::Leadership::always(),
                async {
                    let _ = stopped.await;
                },
            )
            .await
    });
    wait_until("the first pass", || reconciles(&metrics) >= 4).await;

    let policy = dir.path().join("retention-policy.yaml");
    let edited = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("maxShrinkPercent: 50", "maxShrinkPercent: 30");
    std::fs::write(&policy, edited).unwrap();
    let edited_at = Instant::now();
    wait_until("generation 2 to be observed", || {
        store
            .load("RetentionPolicy", "archiver", "tiers")
            .ok()
            .flatten()
            .is_some_and(|s| s.status["observedGeneration"] == 2)
    })
    .await;
    assert!(
        edited_at.elapsed() < Duration::from_secs(5),
        "took {:?}",
        edited_at.elapsed()
    );
    let _ = stop.send(());
    let _ = running.await;
}

/// An unchanged directory is not read again: only a file whose size, time
/// or inode changed is parsed again (before, every file was read, parsed
/// and validated every second).
#[test]
fn only_changed_files_are_read_again() {
    use archiver_operator::runtime::manifests::ManifestCache;
    let dir = copy_examples();
    let mut cache = ManifestCache::default();
    let first = cache.refresh(dir.path());
    assert!(first.changed);
    assert_eq!(first.reread.len(), 5, "{:?}", first.reread);
    let second = cache.refresh(dir.path());
    assert!(!second.changed);
    assert!(second.reread.is_empty(), "{:?}", second.reread);

    let policy = dir.path().join("retention-policy.yaml");
    let edited = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("maxShrinkPercent: 50", "maxShrinkPercent: 40");
    std::fs::write(&policy, edited).unwrap();
    let third = cache.refresh(dir.path());
    assert!(third.changed);
    assert_eq!(third.reread.into_iter().collect::<Vec<_>>(), vec![policy]);
    assert_eq!(
        third.set.policies[0].spec.shrink_guard.max_shrink_percent, 40,
        "the change is seen"
    );

    std::fs::remove_file(dir.path().join("partition-schedule.yaml")).unwrap();
    let fourth = cache.refresh(dir.path());
    assert!(fourth.changed, "a removed file is a change");
    assert!(fourth.set.schedules.is_empty());
}

/// An invalid manifest was logged at every one-second pass. It is logged
/// once, and once more when its file changes.
#[tokio::test]
async fn an_invalid_manifest_is_reported_once_per_change() {
    let dir = copy_examples();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "kind: [unclosed\n").unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let port = free_port().expect("free port");
    let child = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests", dir.path().to_str().unwrap()])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .env_remove("DATABASE_URL")
        .env("ARCHIVER_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .expect("start the operator");
    let guard = Stopped(child);
    let reports = || {
        std::fs::read_to_string(log.path())
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                line.contains("invalid manifest skipped") && line.contains("broken.yaml")
            })
            .count()
    };
    wait_until("the first report", || reports() >= 1).await;
    // Several one-second polls.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(reports(), 1, "reported again without a change");

    std::fs::write(&broken, "kind: [still unclosed\n").unwrap();
    wait_until("the report of the change", || reports() >= 2).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(reports(), 2, "one report per change");
    drop(guard);
}

fn stored_object(index: usize) -> archiver_operator::runtime::status_store::StoredObject {
    archiver_operator::runtime::status_store::StoredObject {
        kind: "DeletionRequest".into(),
        namespace: "archiver".into(),
        name: format!("erase-{index}"),
        generation: 1,
        spec_hash: "0".repeat(64),
        trigger_hash: "0".repeat(64),
        first_seen: chrono::Utc::now(),
        last_reconciled: None,
        next_reconcile: None,
        consecutive_failures: 0,
        last_error: None,
        paused: false,
        status: serde_json::json!({"phase": "Completed"}),
        events: Vec::new(),
        accepted_spec: None,
    }
}

/// Output to a pipe whose reader has gone (`| head`, `| grep -q`) panicked
/// with a backtrace and exit code 101. The command now stops quietly.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let store = archiver_operator::runtime::status_store::StatusStore::for_manifests(dir.path());
    // Far more than a pipe buffer (64 KiB): the writer must meet the closed pipe.
    for index in 0..2000 {
        store.save(&stored_object(index)).unwrap();
    }
    let closed_reader = |args: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start");
        // The reader reads a little, then goes away, as `head -c 100` does.
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 100];
        stdout.read_exact(&mut first).unwrap();
        drop(stdout);
        let output = child.wait_with_output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let manifests = dir.path().to_str().unwrap();
    for format in ["json", "yaml", "table"] {
        let (code, stderr) = closed_reader(&["status", "--manifests", manifests, "-o", format]);
        assert_eq!(code, Some(0), "status -o {format}: {stderr}");
        assert!(!stderr.contains("panicked"), "status -o {format}: {stderr}");
        assert!(
            !stderr.contains("Broken pipe"),
            "status -o {format}: {stderr}"
        );
    }
    // `validate` keeps the exit code of its result (problems found: 1).
    let invalid = dir.path().join("invalid");
    std::fs::create_dir(&invalid).unwrap();
    for index in 0..2000 {
        std::fs::write(invalid.join(format!("{index}.yaml")), "kind: Nothing\n").unwrap();
    }
    let (code, stderr) = closed_reader(&["validate", "-f", invalid.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // `crd` prints more than a pipe buffer too.
    let (code, stderr) = closed_reader(&["crd"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The value of the series `name{labels}` in an OpenMetrics text.
fn series_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Issue 16 item 1: with no worker able to tick (its Redis is a closed port)
/// and a watermark two hours old, the leader's /metrics still shows the
/// shard's lag, from the watermark row and the clock, and it rises.
#[tokio::test]
async fn the_leader_exports_a_rising_shard_lag_while_no_worker_ticks() {
    let db = TestDatabase::empty().await;
    let dir = copy_examples();
    let closed = free_port().expect("free port");
    let secret = dir.path().join("secret-redis-shard-0.yaml");
    let text = std::fs::read_to_string(&secret).expect("secret manifest");
    std::fs::write(
        &secret,
        text.replace(
            "redis://127.0.0.1:6379/0",
            &format!("redis://127.0.0.1:{closed}/0"),
        ),
    )
    .expect("write the secret");
    archiver_operator::db::migrate(&db.pool)
        .await
        .expect("migrate");
    sqlx::query(
        "INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at) \
         VALUES (0, date_trunc('minute', now()) - interval '2 hours', 'nobody', now())",
    )
    .execute(&db.pool)
    .await
    .expect("a stale watermark");
    let port = free_port().expect("free port");
    let child = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests", dir.path().to_str().unwrap()])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .env("ARCHIVER_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the operator");
    let _guard = Stopped(child);

    let lag_series = "archiver_shard_lag_seconds{shard=\"archiver/shard-0\"}";
    let scrape_lag = || {
        let (_, body) = get(port, "/metrics")?;
        Some((series_value(&body, lag_series)?, body))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first = None;
    while Instant::now() < deadline && first.is_none() {
        first = scrape_lag();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (first, body) = first.expect("the leader never exported archiver_shard_lag_seconds");
    assert!(
        (7_100.0..7_300.0).contains(&first),
        "two hours behind, got {first}"
    );
    assert_eq!(
        series_value(
            &body,
            "archiver_shard_lag_slo_seconds{shard=\"archiver/shard-0\"}"
        ),
        Some(180.0),
        "{body}"
    );
    assert_eq!(
        series_value(&body, "archiver_watermark_read_failures_total"),
        Some(0.0)
    );
    // The export runs every 10 s: the lag rises without any tick.
    let mut later = first;
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline && later <= first {
        tokio::time::sleep(Duration::from_secs(2)).await;
        later = scrape_lag().map_or(later, |(lag, _)| lag);
    }
    assert!(later > first, "the lag stayed at {first} s");
    let last_minute: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT last_minute FROM archive_watermark WHERE shard_id = 0")
            .fetch_one(&db.pool)
            .await
            .expect("watermark");
    assert!(
        chrono::Utc::now() - last_minute > chrono::Duration::minutes(110),
        "no worker archived anything: the watermark is still stale"
    );
}

/// Issue 16 item 6: a worker's /ready checks its shard's Redis and its
/// shard's progress: 200 while both are fine, 503 with a JSON reason once
/// its Redis is gone.
#[tokio::test]
async fn a_worker_is_not_ready_when_its_redis_is_down() {
    let db = TestDatabase::empty().await;
    let dir = copy_examples();
    let redis = archiver_operator::testing::redis_server();
    archiver_operator::db::migrate(&db.pool)
        .await
        .expect("migrate");
    // Caught up: the shard progresses as soon as the worker ticks.
    sqlx::query(
        "INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at) \
         VALUES (0, date_trunc('minute', now()) - interval '1 minute', 'nobody', now())",
    )
    .execute(&db.pool)
    .await
    .expect("a current watermark");
    let port = free_port().expect("free port");
    let child = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["worker", "--shard", "archiver/shard-0"])
        .args(["--manifests", dir.path().to_str().unwrap()])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis.url())
        .env("ARCHIVER_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the worker");
    let _guard = Stopped(child);

    let ready = |expected: u16| {
        let (code, body) = get(port, "/ready")?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == expected).then_some(json)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut up = None;
    while Instant::now() < deadline && up.is_none() {
        up = ready(200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let up = up.expect("the worker never became ready with its Redis up");
    assert_eq!(up["redis"], "ok", "{up}");
    assert_eq!(up["shard"]["progressing"], true, "{up}");

    drop(redis);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut down = None;
    while Instant::now() < deadline && down.is_none() {
        down = ready(503);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let down = down.expect("the worker stayed ready after its Redis stopped");
    assert_eq!(down["ready"], false, "{down}");
    assert_eq!(down["redis"], "unreachable", "{down}");
    assert_eq!(down["database"], "ok", "{down}");

    // The worker's next tick (within a minute) records why the shard holds:
    // `/ready` then says the shard is not progressing, and why.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut held = None;
    while Instant::now() < deadline && held.is_none() {
        held = ready(503).filter(|body| body["shard"]["progressing"] == false);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let held = held.expect("/ready never said the shard stopped progressing without its Redis");
    assert_eq!(held["shard"]["reason"], "RedisUnavailable", "{held}");
    assert!(
        held["shard"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{held}"
    );
}
