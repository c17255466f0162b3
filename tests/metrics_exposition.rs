//! The metrics the running binary exports, against what the chart's Grafana
//! dashboard and PrometheusRule query.
//!
//! A metric the dashboard names but no process serves is an empty panel, and
//! an alert on it never fires. A scrape of the running operator is the truth
//! about what it serves, but not all of it: prometheus-client 0.25 leaves a
//! labelled family nobody has touched yet out of the exposition entirely (no
//! `# TYPE` line; a fresh operator has no `archiver_deletion_failures_total`).
//! So the names the chart may use are those of `Metrics::every_family_exposition`
//! (the same registry with one sample in every family; its unit test checks
//! it lists every registered metric), and the scrape of the real process
//! must be a part of them: anything the binary serves outside that registry
//! fails here. Reading names out of the Rust source instead would trust a
//! pattern over the code that registers them.
//!
//! The list is also committed as `tests/chart/exported-metrics.txt`, one
//! sample name and its label names a line, for the chart tests (`scripts/chart-tests.sh`), which
//! check the rendered rules and dashboard against it without building the
//! binary or starting PostgreSQL. This test fails while that copy is stale;
//! `ARCHIVER_WRITE_EXPORTED_METRICS=1 cargo test --test metrics_exposition`
//! rewrites it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use archiver_operator::clock::SystemClock;
use archiver_operator::local_servers::free_port;
use archiver_operator::metrics::Metrics;
use archiver_operator::runtime::context::Context;
use archiver_operator::runtime::leader::Leadership;
use archiver_operator::runtime::manifests::ManifestsEngine;
use archiver_operator::testing::TestDatabase;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
        // SAFETY: kill(2) on the pid of a child this test started.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

/// The sample names an OpenMetrics/Prometheus text exposition can carry,
/// from its `# TYPE` lines: what PromQL can select.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
            panic!("malformed TYPE line: {line}");
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{family}{suffix}"));
        }
    }
    names
}

/// Every `archiver_...` metric name in a text (PromQL, JSON, a template).
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("archiver_") {
        let start = at + found;
        let preceded_by_name = start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        let mut end = start + "archiver_".len();
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded_by_name {
            names.insert(text[start..end].to_string());
        }
        at = end;
    }
    names
}

fn copy_examples() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for entry in std::fs::read_dir(repo().join("examples")).expect("examples") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(
                &path,
                dir.path().join(path.file_name().expect("a file name")),
            )
            .expect("copy an example");
        }
    }
    dir
}

/// One scrape of the operator's `/metrics` once it has reconciled.
async fn scrape_running_operator() -> String {
    let db = TestDatabase::new().await;
    let dir = copy_examples();
    let port = free_port().expect("free port");
    let child = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["run", "--manifests"])
        .arg(dir.path())
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the operator");
    let _guard = Stopped(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some((200, body)) = get(port, "/metrics")
            && body.contains("archiver_reconciles_total{")
        {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the operator's /metrics never showed a reconcile within 60 s");
}

fn committed_list_path() -> PathBuf {
    repo()
        .join("tests")
        .join("chart")
        .join("exported-metrics.txt")
}

/// Each sample name of an exposition with the names of its labels.
fn label_names(exposition: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in exposition.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = found.entry(line[..name_end].to_string()).or_default();
        if let Some(rest) = line[name_end..].strip_prefix('{') {
            let (inside, _) = rest.split_once('}').expect("a closed label set");
            // The values here are plain words ("example", bucket bounds).
            for pair in inside.split(',') {
                let (label, _) = pair.split_once('=').expect("label=value");
                labels.insert(label.to_string());
            }
        }
    }
    found
}

fn list_text(names: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut text = String::from(
        "# Sample names the archiver-operator binary exports on /metrics, with their\n\
         # labels (every family of its registry; tests/metrics_exposition.rs checks\n\
         # this copy and a scrape of the running process against it;\n\
         # ARCHIVER_WRITE_EXPORTED_METRICS=1 cargo test --test metrics_exposition\n\
         # rewrites it). The chart tests check the dashboard and the alerts against it.\n",
    );
    for (name, labels) in names {
        text.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            text.push_str(&format!("{{{}}}", labels.join(",")));
        }
        text.push('\n');
    }
    text
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metric name of every sample line.
fn sample_line_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_query_only_metrics_the_binary_exports() {
    let scrape = scrape_running_operator().await;
    let served = sample_names(&scrape);
    let every_family = Metrics::every_family_exposition();
    let known = sample_names(&every_family);
    // One sample in every family: each name has its sample lines, hence its
    // labels.
    let labelled = label_names(&every_family);
    assert_eq!(
        labelled.keys().cloned().collect::<BTreeSet<_>>(),
        known,
        "every family has samples"
    );
    assert!(
        served.contains("archiver_reconciles_total"),
        "the scrape has no reconciles: {scrape}"
    );
    // The TYPE lines name what the sample lines carry.
    let lines = sample_line_names(&scrape);
    assert!(
        lines.is_subset(&served),
        "samples outside their TYPE lines: {:?}",
        lines.difference(&served).collect::<Vec<_>>()
    );
    let unknown: Vec<&String> = served.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "the running operator serves metrics outside Metrics::every_family_exposition: {unknown:?}"
    );

    let chart = repo().join("charts").join("archiver-operator");
    for path in [
        chart.join("dashboards").join("archiver.json"),
        chart.join("templates").join("prometheusrule.yaml"),
    ] {
        let names = metric_names_in(&read(&path));
        assert!(
            names.len() >= 5,
            "{} names almost no metric: {names:?}",
            path.display()
        );
        let missing: Vec<&String> = names.difference(&known).collect();
        assert!(
            missing.is_empty(),
            "{} queries metrics the binary does not export: {missing:?}\nexported: {known:?}",
            path.display()
        );
    }

    let expected = list_text(&labelled);
    let path = committed_list_path();
    if std::env::var_os("ARCHIVER_WRITE_EXPORTED_METRICS").is_some() {
        std::fs::write(&path, &expected).expect("write the exported metrics list");
    }
    assert!(
        read(&path) == expected,
        "{} is stale: run ARCHIVER_WRITE_EXPORTED_METRICS=1 cargo test --test metrics_exposition",
        path.display()
    );
}

#[test]
fn metric_names_are_found_in_promql_json_and_templates() {
    let names = metric_names_in(
        r#"{"expr": "max by (shard) (archiver_shard_lag_seconds{shard=~\"$shard\"}) / archiver_x_total[5m]"} job:archiver_recorded:rate5m archiver-operator"#,
    );
    let expected: BTreeSet<String> = ["archiver_shard_lag_seconds", "archiver_x_total"]
        .map(String::from)
        .into();
    assert_eq!(names, expected);
}

#[test]
fn type_lines_give_the_sample_names_promql_selects() {
    let names = sample_names(
        "# HELP archiver_a A.\n# TYPE archiver_a counter\n# TYPE archiver_b histogram\n\
         # TYPE archiver_c gauge\narchiver_c 1\n# EOF\n",
    );
    for name in [
        "archiver_a_total",
        "archiver_b_bucket",
        "archiver_b_count",
        "archiver_b_sum",
        "archiver_c",
    ] {
        assert!(names.contains(name), "{name}: {names:?}");
    }
    assert!(!names.contains("archiver_a"));
}

/// The value of an unlabelled gauge, and whether a labelled family has series.
fn gauge(metrics: &Metrics, name: &str) -> Option<i64> {
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn has_series(metrics: &Metrics, family: &str) -> bool {
    metrics.encode().contains(&format!("{family}{{"))
}

/// A standalone engine that loses the lock but keeps running exports no
/// leader gauge frozen at its last value: the alerts take max() over the
/// replicas.
#[tokio::test]
async fn a_standalone_engine_that_stops_leading_forgets_its_leader_gauges() {
    let db = TestDatabase::new().await;
    let dir = copy_examples();
    let metrics = Arc::new(Metrics::new());
    let ctx = Context::new(Arc::new(SystemClock))
        .with_database(db.pool.clone())
        .with_metrics(metrics.clone());
    let engine = ManifestsEngine::new(dir.path().to_path_buf(), ctx);
    let (lead, leading) = tokio::sync::watch::channel(true);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        engine
            .run(Leadership::from_receiver(leading), async {
                let _ = stopped.await;
            })
            .await
    });
    let wait = async |what: &str, condition: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait("the leader's gauges", &|| {
        gauge(&metrics, "archiver_partition_coverage_months").is_some_and(|months| months >= 1)
            && has_series(&metrics, "archiver_retention_drift_rows")
    })
    .await;

    lead.send(false).expect("the engine listens");
    wait("a standby's gauges", &|| {
        gauge(&metrics, "archiver_partition_coverage_months") == Some(0)
            && !has_series(&metrics, "archiver_retention_drift_rows")
    })
    .await;
    let _ = stop.send(());
    running.await.expect("the engine stops");
}
