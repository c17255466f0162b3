//! The operator against a real Kubernetes control plane (kube-apiserver + etcd,
//! `scripts/dev-cluster.sh`), driven with the real `kubectl` as a user would:
//! the CRDs are accepted and served, the API server and `archiver-operator
//! validate` reject the same invalid objects for the same field, and the
//! operator (out of cluster, real PostgreSQL and Redis) brings every example to
//! Ready through kubectl.
//!
//! All tests share one control plane; each works in its own namespace (the
//! lifecycle test owns `archiver`, the namespace of the examples).

mod common;
#[path = "kubernetes_e2e/flows.rs"]
mod flows;
#[path = "kubernetes_e2e/restart.rs"]
mod restart;
#[path = "kubernetes_e2e/schedule_policy.rs"]
mod schedule_policy;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::control_plane::{ControlPlane, chart_rbac, repo, with_crds};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every document of a YAML file, as JSON values.
fn documents(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).expect("readable manifest");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        })
        .filter(|value: &Value| !value.is_null())
        .collect()
}

fn crds() -> Vec<Value> {
    yaml_files(&repo().join("crds"))
        .iter()
        .flat_map(|file| documents(file))
        .collect()
}

/// Whitespace-collapsed text, so wrapped help text compares with its source.
fn collapsed(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

// ---------------------------------------------------------------------------
// 1. CRDs
// ---------------------------------------------------------------------------

#[test]
fn crds_are_established_served_with_printer_columns_and_explained() {
    let cluster = with_crds();
    // No warnings either (an unknown `format: uint32` drew one per field).
    let warnings = common::control_plane::crd_apply_warnings();
    assert!(
        warnings.trim().is_empty(),
        "kubectl apply -f crds/: {warnings}"
    );
    // The chart ships its own copies: the API server accepts them as well (they
    // are applied over the crds/ ones; a difference would show as a change).
    let chart_crds = repo().join("charts/archiver-operator/crds");
    let applied = cluster
        .kubectl_ok(&["apply", "-f", path_str(&chart_crds)])
        .expect("the chart's CRDs are accepted");
    assert_eq!(
        applied.matches("unchanged").count(),
        4,
        "the chart's CRDs equal crds/: {applied}"
    );
    let crds = crds();
    assert_eq!(crds.len(), 4);
    for crd in &crds {
        let name = crd["metadata"]["name"].as_str().expect("CRD name");
        cluster
            .kubectl_ok(&[
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                &format!("crd/{name}"),
            ])
            .expect("Established");
        // Structural schema, CEL within its cost budget: no condition says otherwise.
        let live: Value = serde_json::from_str(
            &cluster
                .kubectl_ok(&["get", &format!("crd/{name}"), "-o", "json"])
                .expect("CRD readable"),
        )
        .expect("JSON");
        for condition in live["status"]["conditions"].as_array().expect("conditions") {
            if condition["type"] == "NonStructuralSchema" {
                panic!("{name}: {condition}");
            }
        }
    }

    // One object of each kind (the examples, in a namespace no operator watches).
    let namespace = "crd-columns";
    cluster.ensure_namespace(namespace).expect("namespace");
    for file in yaml_files(&repo().join("examples")) {
        for mut object in documents(&file) {
            object["metadata"]["namespace"] = namespace.into();
            let applied =
                cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&object.to_string()));
            assert!(applied.success, "{}: {}", file.display(), applied.stderr);
        }
    }

    // `kubectl get archiver` lists the four kinds (the CRDs' category).
    let listed = cluster
        .kubectl_ok(&["get", "archiver", "-n", namespace])
        .expect("kubectl get archiver");
    for crd in &crds {
        let group_kind = format!(
            "{}.{}/",
            crd["spec"]["names"]["singular"].as_str().expect("singular"),
            crd["spec"]["group"].as_str().expect("group")
        );
        assert!(listed.contains(&group_kind), "{group_kind} in:\n{listed}");
    }

    for crd in &crds {
        let plural = crd["spec"]["names"]["plural"].as_str().expect("plural");
        let version = &crd["spec"]["versions"][0];
        // Printer columns: every column without a priority is a header of `kubectl get`.
        let table = cluster
            .kubectl_ok(&["get", plural, "-n", namespace])
            .expect("kubectl get");
        let header = table.lines().next().unwrap_or_default();
        let columns = version["additionalPrinterColumns"]
            .as_array()
            .expect("printer columns");
        assert!(columns.len() >= 2, "{plural} has printer columns");
        for column in columns {
            if column["priority"].as_i64().unwrap_or(0) > 0 {
                continue;
            }
            let title = column["name"].as_str().expect("column name").to_uppercase();
            assert!(header.contains(&title), "{plural}: {title} in {header:?}");
        }
        assert_eq!(table.lines().count(), 2, "{plural}: one object\n{table}");

        // `kubectl explain` shows the field docs of every spec field.
        let explained = collapsed(
            &cluster
                .kubectl_ok(&["explain", &format!("{plural}.spec")])
                .expect("kubectl explain"),
        );
        let properties = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            .as_object()
            .expect("spec properties");
        for (field, schema) in properties {
            let description = schema["description"]
                .as_str()
                .unwrap_or_else(|| panic!("{plural}.spec.{field} has no description"));
            let words: Vec<&str> = description.split_whitespace().take(8).collect();
            let start = words.join(" ");
            assert!(
                explained.contains(&start),
                "kubectl explain {plural}.spec: {field}: {start:?} not in {explained}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Admission parity
// ---------------------------------------------------------------------------

/// Fixtures whose problem no admission of a single object can see.
const OFFLINE_ONLY: &[(&str, &str)] = &[
    (
        "duplicate-shard-id.yaml",
        "two ArchiverShards with one shardId: a rule across objects",
    ),
    (
        "two-retention-policies.yaml",
        "two RetentionPolicies in one directory: a rule across objects",
    ),
    (
        "unparseable.yaml",
        "not YAML: kubectl fails before anything reaches the server",
    ),
];

fn expectation(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("readable fixture");
    text.lines()
        .next()
        .and_then(|line| line.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} has no '# expect:' first line", file.display()))
        .to_string()
}

fn validate(files: &[PathBuf]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .arg("validate")
        .arg("-f")
        .args(files)
        .output()
        .expect("run archiver-operator validate");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn the_api_server_and_validate_reject_the_same_fixtures_for_the_same_field() {
    let cluster = with_crds();
    let mut disagreements = Vec::new();
    let fixtures = yaml_files(&repo().join("tests/fixtures/invalid"));
    assert!(fixtures.len() >= 30);
    for fixture in &fixtures {
        let file_name = fixture.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let expected = expectation(fixture);
        let (accepted_offline, offline) = validate(std::slice::from_ref(fixture));
        assert!(!accepted_offline, "{file_name}: validate accepted it");
        if OFFLINE_ONLY.iter().any(|(name, _)| *name == file_name) {
            continue;
        }
        // Dry run: nothing is stored, so the fixtures' own namespace
        // (`archiver`, shared with the lifecycle test) is fine.
        let server = cluster.kubectl(&["apply", "--dry-run=server", "-f", path_str(fixture)]);
        let server_text = format!("{}{}", server.stderr, server.stdout);
        if server.success {
            disagreements.push(format!(
                "{file_name}: validate rejects it ({expected}), the API server accepts it"
            ));
            continue;
        }
        // The field the problem is about: the fixture's expected one is among
        // the fields `validate` names, and the API server names one of them in
        // its causes (it stops at the first decoding error, so it may name
        // fewer: `redis.url` unknown rather than `redis.urlSecretRef` missing).
        match expected.split_once(": ") {
            Some((field, _)) if field.starts_with("spec") || field.starts_with("metadata") => {
                let offline_fields = validate_fields(&offline);
                assert!(
                    offline_fields.iter().any(|f| f == field),
                    "{file_name}: {offline}"
                );
                let server_fields = server_causes(&server_text);
                if !server_fields.iter().any(|f| offline_fields.contains(f)) {
                    disagreements.push(format!(
                        "{file_name}: validate names {offline_fields:?}, the API server names {server_fields:?}: {server_text}"
                    ));
                }
            }
            // Not about a field (an unknown kind): both reject it, that is all.
            _ => {}
        }
    }
    assert!(
        disagreements.is_empty(),
        "the API server and `archiver-operator validate` disagree:\n{}",
        disagreements.join("\n")
    );

    // Every example is accepted by both.
    let examples = yaml_files(&repo().join("examples"));
    let (valid, problems) = validate(&examples);
    assert!(valid, "{problems}");
    for example in &examples {
        let applied = cluster.kubectl(&["apply", "--dry-run=server", "-f", path_str(example)]);
        assert!(applied.success, "{}: {}", example.display(), applied.stderr);
    }
}

/// The fields `validate` names: `FILE: Kind/namespace/name: FIELD: reason`.
fn validate_fields(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ": ");
            let (_file, _object, field) = (parts.next()?, parts.next()?, parts.next()?);
            parts.next().map(|_| field.to_string())
        })
        .collect()
}

/// The field paths an API server error names: `<field>: Invalid value`,
/// `<field>: Required value`, `unknown field "<field>"`, ...
fn server_causes(text: &str) -> Vec<String> {
    let mut fields = Vec::new();
    // Several causes come as `[a: ..., b: ...]`; field paths keep their `[0]`.
    for part in text.split([',', '\n']) {
        let part = part.trim().trim_start_matches(['*', '[', ' ']);
        if let Some((_, rest)) = part.split_once("unknown field \"") {
            if let Some(field) = rest.split('"').next() {
                fields.push(field.to_string());
            }
            continue;
        }
        for marker in [
            ": Invalid value",
            ": Required value",
            ": Unsupported value",
            ": Forbidden",
            ": Too many",
            ": Too long",
            ": Duplicate value",
        ] {
            if let Some((field, _)) = part.split_once(marker) {
                // "The X "name" is invalid: spec.a: Invalid value" -> spec.a
                let field = field.rsplit(": ").next().unwrap_or(field).trim();
                fields.push(field.to_string());
            }
        }
    }
    fields
}

#[test]
fn deletion_request_spec_cannot_be_changed_with_kubectl_apply() {
    let cluster = with_crds();
    let namespace = "immutability";
    cluster.ensure_namespace(namespace).expect("namespace");
    let mut request = documents(&repo().join("examples/deletion-request.yaml"))
        .pop()
        .expect("one DeletionRequest");
    request["metadata"]["namespace"] = namespace.into();
    let created = cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&request.to_string()));
    assert!(
        created.success,
        "the example is created: {}",
        created.stderr
    );
    request["spec"]["serverSlug"] = "another-server".into();
    let changed = cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&request.to_string()));
    assert!(!changed.success, "a changed spec was accepted");
    assert!(
        changed.stderr.contains("spec is immutable"),
        "{}",
        changed.stderr
    );
    // The object is unchanged.
    let slug = cluster
        .kubectl_ok(&[
            "get",
            "-n",
            namespace,
            "deletionrequest/erase-6f1c-my-server",
            "-o",
            "jsonpath={.spec.serverSlug}",
        ])
        .expect("readable");
    assert_eq!(slug, "my-server");
}

// ---------------------------------------------------------------------------
// 3. Lifecycle through kubectl, operator out of cluster
// ---------------------------------------------------------------------------

/// `archiver-operator run` against the control plane; stopped when dropped.
struct Operator {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    fn start(kubeconfig: &Path, database_url: &str) -> Self {
        Self::start_as(kubeconfig, database_url, "archiver", None)
    }

    /// An operator watching `namespace` (its Lease there too), named
    /// `identity` in the Lease when given (as POD_NAME names it in a cluster).
    fn start_as(
        kubeconfig: &Path,
        database_url: &str,
        namespace: &str,
        identity: Option<&str>,
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().expect("operator directory");
        let log = dir.path().join("operator.log");
        let log_file = std::fs::File::create(&log).expect("operator log");
        let port = archiver_operator::local_servers::free_port().expect("free port");
        let mut command = Command::new(env!("CARGO_BIN_EXE_archiver-operator"));
        command
            .args(["run", "--namespace", namespace, "--http-addr"])
            .arg(format!("127.0.0.1:{port}"))
            .env("KUBECONFIG", kubeconfig)
            .env("DATABASE_URL", database_url)
            .env("ARCHIVER_SUPPRESSION_SALT", "e2e-salt")
            .env("ARCHIVER_LOG_FORMAT", "text")
            .env("POD_NAMESPACE", namespace)
            .env(
                "RUST_LOG",
                std::env::var("ARCHIVER_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file);
        if let Some(identity) = identity {
            command.env("POD_NAME", identity);
        }
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("start archiver-operator run");
        Self {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The operator's reconcile counters, for a failure message.
    fn reconcile_metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut text = String::new();
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let _ = stream.read_to_string(&mut text);
        }
        text.lines()
            .filter(|line| line.starts_with("archiver_reconcile"))
            .filter(|line| !line.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get_json(cluster: &ControlPlane, namespace: &str, object: &str) -> Value {
    let text = cluster
        .kubectl_ok(&["get", "-n", namespace, object, "-o", "json"])
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&text).expect("kubectl prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_applied_with_kubectl_become_ready_and_the_deletion_completes() {
    let cluster = with_crds();
    let database = archiver_operator::testing::TestDatabase::new().await;
    let redis = archiver_operator::testing::redis_server();
    let examples = repo().join("examples");
    cluster
        .kubectl_ok(&["apply", "-f", path_str(&examples)])
        .expect("kubectl apply -f examples/");
    // The shard's Secret points at this test's Redis (the example's URL is a placeholder).
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "redis-shard-0", "namespace": "archiver"},
        "type": "Opaque",
        "stringData": {"url": format!("{}0", redis.url())},
    });
    assert!(
        cluster
            .kubectl_with_stdin(&["apply", "-f", "-"], Some(&secret.to_string()))
            .success
    );
    // Least privilege: the operator runs as the chart's ServiceAccount with
    // exactly the RBAC the chart renders (watching this one namespace), with
    // a token from the TokenRequest API.
    let rbac = chart_rbac(
        "archiver",
        &serde_json::json!({"watchNamespace": "archiver"}),
    );
    let service_account = rbac
        .iter()
        .find(|object| object["kind"] == "ServiceAccount")
        .and_then(|object| object["metadata"]["name"].as_str())
        .expect("the chart renders the operator's ServiceAccount")
        .to_string();
    for object in &rbac {
        // Another test may be applying the same cluster-scoped role.
        flows::apply(cluster, object);
    }
    let credentials = tempfile::tempdir().expect("a directory for the kubeconfig");
    let kubeconfig = credentials.path().join("operator.kubeconfig");
    cluster.service_account_kubeconfig("archiver", &service_account, &kubeconfig);
    let operator = Operator::start(&kubeconfig, &database.url);
    let objects = [
        "retentionpolicy/tiers",
        "partitionschedule/probe-minute",
        "archivershard/shard-0",
        "deletionrequest/erase-6f1c-my-server",
    ];
    let mut wait = vec![
        "wait",
        "-n",
        "archiver",
        "--for=condition=Ready",
        "--timeout=120s",
    ];
    wait.extend(objects);
    let ready = cluster.kubectl(&wait);
    if !ready.success {
        let live = cluster.kubectl(&["get", "-n", "archiver", "archiver", "-o", "yaml"]);
        panic!(
            "{}{}\nlive objects:\n{}\nreconciles:\n{}\noperator log:\n{}",
            ready.stdout,
            ready.stderr,
            live.stdout,
            operator.reconcile_metrics(),
            operator.log()
        );
    }
    let completed = cluster.kubectl(&[
        "wait",
        "-n",
        "archiver",
        "--for=jsonpath={.status.phase}=Completed",
        "--timeout=120s",
        "deletionrequest/erase-6f1c-my-server",
    ]);
    assert!(
        completed.success,
        "{}\noperator log:\n{}",
        completed.stderr,
        operator.log()
    );

    for object in objects {
        let live = get_json(cluster, "archiver", object);
        let generation = live["metadata"]["generation"].as_i64().expect("generation");
        assert_eq!(
            live["status"]["observedGeneration"].as_i64(),
            Some(generation),
            "{object}: {}",
            live["status"]
        );
        let ready = live["status"]["conditions"]
            .as_array()
            .and_then(|conditions| conditions.iter().find(|c| c["type"] == "Ready"))
            .unwrap_or_else(|| panic!("{object} has a Ready condition"));
        assert_eq!(ready["status"], "True", "{object}: {ready}");
        assert_eq!(
            ready["observedGeneration"].as_i64(),
            Some(generation),
            "{object}: {ready}"
        );
    }

    // The schedule sees the examples' policy in force (it used to report
    // `NoRetentionPolicy` until its next periodic reconcile, two minutes
    // after its first, which came before the policy was accepted).
    let schedule = get_json(cluster, "archiver", "partitionschedule/probe-minute");
    let drop_blocked = schedule["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == "DropBlocked"))
        .unwrap_or_else(|| panic!("the schedule has a DropBlocked condition: {schedule:#}"));
    assert_eq!(
        (&drop_blocked["status"], &drop_blocked["reason"]),
        (&Value::from("False"), &Value::from("NotBlocked")),
        "{drop_blocked}"
    );

    // The receipt: in the status, hashed, and the same one the database keeps.
    let request = get_json(cluster, "archiver", "deletionrequest/erase-6f1c-my-server");
    let receipt = request["status"]["receipt"].as_str().expect("a receipt");
    let digest = request["status"]["receiptSha256"]
        .as_str()
        .expect("its SHA-256");
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(receipt.as_bytes())),
        digest
    );
    let tombstone = request["status"]["tombstoneId"]
        .as_i64()
        .expect("a tombstone id");
    let (kept,): (Option<String>,) =
        sqlx::query_as("SELECT receipt_sha256 FROM data_deletion_log WHERE id = $1")
            .bind(tombstone)
            .fetch_one(&database.pool)
            .await
            .expect("the tombstone row");
    assert_eq!(kept.as_deref(), Some(digest));

    // The same checks through the kubectl plugin, as the DPO runs them.
    let plugin = Plugin::new(cluster);
    let checked = plugin.run(
        &["receipt", "erase-6f1c-my-server", "-n", "archiver"],
        &[("DATABASE_URL", database.url.as_str())],
    );
    assert!(
        checked.status.success(),
        "kubectl archiver receipt: {}",
        text(&checked)
    );
    assert!(
        String::from_utf8_lossy(&checked.stdout).contains(digest),
        "{}",
        text(&checked)
    );
    let status = plugin.run(&["status", "-n", "archiver"], &[]);
    assert!(
        status.status.success(),
        "kubectl archiver status: {}",
        text(&status)
    );
    let table = String::from_utf8_lossy(&status.stdout);
    for object in ["shard-0", "tiers", "probe-minute", "erase-6f1c-my-server"] {
        assert!(
            table
                .lines()
                .any(|line| line.contains(object) && line.contains(" True ")),
            "{object} not listed as Ready in:\n{table}"
        );
    }
    let plan = plugin.run(
        &[
            "plan",
            "-f",
            path_str(&examples.join("retention-policy.yaml")),
        ],
        &[("DATABASE_URL", database.url.as_str())],
    );
    assert!(
        plan.status.success(),
        "kubectl archiver plan: {}",
        text(&plan)
    );

    let finalizers: BTreeSet<&str> = request["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        finalizers.is_empty() || finalizers.iter().all(|f| f.contains("archiver.uptime.dev")),
        "{finalizers:?}"
    );

    // The shard's worker Deployment, owned by the shard (garbage-collected with it).
    let shard = get_json(cluster, "archiver", "archivershard/shard-0");
    let deployment = get_json(cluster, "archiver", "deployment/archiver-worker-shard-0");
    let owner = &deployment["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ArchiverShard", "{owner}");
    assert_eq!(owner["name"], "shard-0");
    assert_eq!(owner["uid"], shard["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
    assert_eq!(
        shard["status"]["workerDeployment"], "archiver-worker-shard-0",
        "{}",
        shard["status"]
    );

    // Steady state is quiet: with nothing changing, the operator writes
    // nothing but its Lease (no status rewrites, no repeated events), over a
    // window longer than the slowest periodic reconcile (the shard's 30 s
    // status refresh). Read from the API server's audit log.
    let quiet_from = chrono::Utc::now();
    std::thread::sleep(Duration::from_secs(35));
    let quiet_until = chrono::Utc::now();
    let writes: Vec<(String, String)> = cluster
        .audit_events()
        .iter()
        .filter(|event| event["stage"] == "ResponseComplete")
        // This test's operator only, by its identity: the operators of tests
        // running in parallel (other namespaces, other ServiceAccounts) and
        // the API server (its own Lease) write meanwhile, and every operator
        // sends the same User-Agent (a filter on it would let the other
        // operators' writes through).
        .filter(|event| {
            event["user"]["username"]
                == format!("system:serviceaccount:archiver:{service_account}").as_str()
        })
        .filter(|event| {
            matches!(
                event["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .filter(|event| {
            event["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t >= quiet_from && t <= quiet_until)
        })
        .map(|event| {
            (
                event["verb"].as_str().unwrap_or_default().to_string(),
                event["requestURI"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let (lease, other): (Vec<_>, Vec<_>) = writes
        .into_iter()
        .partition(|(_, uri)| uri.contains("/leases/"));
    // Each shard reconcile (a 30 s status refresh) finds its worker
    // Deployment in the watch cache as it would apply it, and writes nothing.
    eprintln!("steady state: {} Lease renewals", lease.len());
    assert!(!lease.is_empty(), "the leader renews its Lease");
    assert!(
        other.is_empty(),
        "writes in a steady state besides the Lease: {other:#?}"
    );
    drop(operator);

    // Every request of the operator was allowed, and every permission the
    // chart grants it was used by the scenario above.
    let user = format!("system:serviceaccount:archiver:{service_account}");
    let requests: Vec<Value> = cluster
        .audit_events()
        .into_iter()
        .filter(|event| event["stage"] == "ResponseComplete" && event["user"]["username"] == user)
        .collect();
    assert!(requests.len() > 20, "the operator's requests are audited");
    // Every request names the operator and its version (kube sends no
    // User-Agent of its own: the audit log showed none).
    let expected_agent = format!("archiver-operator/{}", env!("CARGO_PKG_VERSION"));
    let unnamed: Vec<String> = requests
        .iter()
        .filter(|event| event["userAgent"] != expected_agent.as_str())
        .map(|event| {
            format!(
                "{} {} ({})",
                event["verb"], event["requestURI"], event["userAgent"]
            )
        })
        .collect();
    assert!(
        unnamed.is_empty(),
        "requests without the operator's User-Agent {expected_agent}: {unnamed:#?}"
    );
    let forbidden: Vec<String> = requests
        .iter()
        .filter(|event| event["responseStatus"]["code"] == 403)
        .map(|event| format!("{} {}", event["verb"], event["requestURI"]))
        .collect();
    assert!(
        forbidden.is_empty(),
        "forbidden with the chart's RBAC: {forbidden:#?}"
    );
    let unused = unused_permissions(&rbac, &service_account, &requests);
    eprintln!("permissions granted but not used by a request: {unused:?}");
    let unjustified: Vec<&String> = unused
        .iter()
        .filter(|permission| !JUSTIFIED_UNUSED.iter().any(|(p, _)| p == permission))
        .collect();
    assert!(
        unjustified.is_empty(),
        "permissions the chart grants that no request used: {unjustified:#?}"
    );
}

/// Permissions no audited request can show in use, and why they are granted.
const JUSTIFIED_UNUSED: &[(&str, &str)] = &[(
    "archiver.uptime.dev/archivershards/finalizers update",
    "checked by the OwnerReferencesPermissionEnforcement admission plugin when \
     the worker Deployment's ownerReference has blockOwnerDeletion; not a request",
)];

/// `group/resource[/subresource] verb` for every rule of the Roles and
/// ClusterRoles bound to the ServiceAccount that no request used. Creating
/// with a server-side apply is authorized as `create` and audited as a
/// `patch` answered 201.
fn unused_permissions(rbac: &[Value], service_account: &str, requests: &[Value]) -> Vec<String> {
    let bound: BTreeSet<(String, String)> = rbac
        .iter()
        .filter(|object| {
            matches!(
                object["kind"].as_str(),
                Some("RoleBinding" | "ClusterRoleBinding")
            )
        })
        .filter(|binding| {
            binding["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|subject| {
                    subject["kind"] == "ServiceAccount" && subject["name"] == service_account
                })
        })
        .map(|binding| {
            (
                binding["roleRef"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                binding["roleRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert!(
        !bound.is_empty(),
        "the chart binds roles to {service_account}"
    );
    let mut unused = Vec::new();
    for role in rbac.iter().filter(|object| {
        bound.contains(&(
            object["kind"].as_str().unwrap_or_default().to_string(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ))
    }) {
        for rule in role["rules"].as_array().into_iter().flatten() {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    let (resource_name, subresource) = match resource.split_once('/') {
                        Some((r, s)) => (r.to_string(), Some(s.to_string())),
                        None => (resource.clone(), None),
                    };
                    for verb in strings("verbs") {
                        let used = requests.iter().any(|event| {
                            let object = &event["objectRef"];
                            object["apiGroup"].as_str().unwrap_or("") == group
                                && object["resource"] == resource_name.as_str()
                                && object["subresource"].as_str().map(str::to_string) == subresource
                                && (event["verb"] == verb.as_str()
                                    || (verb == "create"
                                        && event["verb"] == "patch"
                                        && event["responseStatus"]["code"] == 201))
                        });
                        if !used {
                            unused.push(format!("{group}/{resource} {verb}"));
                        }
                    }
                }
            }
        }
    }
    unused
}

// ---------------------------------------------------------------------------
// 4. Leader election between two operator processes
// ---------------------------------------------------------------------------

fn lease_holder(cluster: &ControlPlane, namespace: &str) -> Option<String> {
    let holder = cluster.kubectl(&[
        "get",
        "-n",
        namespace,
        "lease/archiver-operator-leader",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    (holder.success && !holder.stdout.is_empty()).then_some(holder.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_is_killed_the_other_operator_takes_over_within_the_lease() {
    let cluster = with_crds();
    let namespace = "election";
    cluster.ensure_namespace(namespace).expect("namespace");
    let database = archiver_operator::testing::TestDatabase::new().await;
    let rbac = chart_rbac(namespace, &serde_json::json!({"watchNamespace": namespace}));
    for object in &rbac {
        // Another test may be applying the same cluster-scoped role.
        flows::apply(cluster, object);
    }
    // Each operator runs under its own ServiceAccount, bound to the chart's
    // Roles, so that the audit log tells their requests apart.
    let second = "archiver-operator-second";
    apply_json(
        cluster,
        &serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": second, "namespace": namespace},
        }),
    );
    for binding in rbac.iter().filter(|object| {
        object["kind"] == "RoleBinding"
            && object["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == "archiver-operator")
    }) {
        let mut copy = binding.clone();
        copy["metadata"]["name"] = format!(
            "{}-second",
            binding["metadata"]["name"].as_str().unwrap_or_default()
        )
        .into();
        copy["subjects"] = serde_json::json!([
            {"kind": "ServiceAccount", "name": second, "namespace": namespace}
        ]);
        apply_json(cluster, &copy);
    }
    let credentials = tempfile::tempdir().expect("a directory for the kubeconfigs");
    let kubeconfigs = [
        credentials.path().join("operator-a.kubeconfig"),
        credentials.path().join("operator-b.kubeconfig"),
    ];
    cluster.service_account_kubeconfig(namespace, "archiver-operator", &kubeconfigs[0]);
    cluster.service_account_kubeconfig(namespace, second, &kubeconfigs[1]);
    let users = [
        format!("system:serviceaccount:{namespace}:archiver-operator"),
        format!("system:serviceaccount:{namespace}:{second}"),
    ];
    let mut operators = vec![
        Operator::start_as(
            &kubeconfigs[0],
            &database.url,
            namespace,
            Some("operator-a"),
        ),
        Operator::start_as(
            &kubeconfigs[1],
            &database.url,
            namespace,
            Some("operator-b"),
        ),
    ];
    let mut policy = documents(&repo().join("examples/retention-policy.yaml"))
        .pop()
        .expect("one RetentionPolicy");
    policy["metadata"]["namespace"] = namespace.into();
    let applied = cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&policy.to_string()));
    assert!(applied.success, "{}", applied.stderr);
    let ready = cluster.kubectl(&[
        "wait",
        "-n",
        namespace,
        "--for=condition=Ready",
        "--timeout=120s",
        "retentionpolicy/tiers",
    ]);
    assert!(ready.success, "{}\n{}", ready.stderr, operators[0].log());
    let leader = lease_holder(cluster, namespace).expect("a leader holds the Lease");
    let (index, follower) = match leader.as_str() {
        "operator-a" => (0, "operator-b"),
        "operator-b" => (1, "operator-a"),
        other => panic!("unexpected Lease holder {other}"),
    };
    // Only the leader reconciles: the follower's log never starts controllers.
    assert!(
        !operators[1 - index]
            .log()
            .contains("leading: starting controllers"),
        "{}",
        operators[1 - index].log()
    );

    // SIGKILL: no graceful release of the Lease; the follower must wait it out.
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(operators[index].child.id() as libc::pid_t, libc::SIGKILL);
    }
    let killed_at = Instant::now();
    // Once a zombie, the killed leader can send nothing more (not reaped
    // here: the pid stays ours until the Operator is dropped).
    let stat = format!("/proc/{}/stat", operators[index].child.id());
    while !std::fs::read_to_string(&stat).is_ok_and(|text| {
        text.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    }) {
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "the leader did not die"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed_wall = chrono::Utc::now();
    let deadline = killed_at + Duration::from_secs(60);
    while lease_holder(cluster, namespace).as_deref() != Some(follower) {
        assert!(
            Instant::now() < deadline,
            "{follower} did not take the Lease:\n{}",
            operators[1 - index].log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let takeover = killed_at.elapsed();
    // The Lease lasts 15 s; renewal and the watch add a few seconds.
    assert!(
        takeover < Duration::from_secs(30),
        "takeover took {takeover:?}"
    );

    // The new leader reconciles: a PartitionSchedule applied now becomes Ready.
    let mut schedule = documents(&repo().join("examples/partition-schedule.yaml"))
        .pop()
        .expect("one PartitionSchedule");
    schedule["metadata"]["namespace"] = namespace.into();
    let applied = cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&schedule.to_string()));
    assert!(applied.success, "{}", applied.stderr);
    let ready = cluster.kubectl(&[
        "wait",
        "-n",
        namespace,
        "--for=condition=Ready",
        "--timeout=120s",
        "partitionschedule/probe-minute",
    ]);
    assert!(
        ready.success,
        "{}\n{}",
        ready.stderr,
        operators[1 - index].log()
    );
    eprintln!("leader {leader} killed; {follower} took over in {takeover:?}");
    operators.clear();

    // At no time do both write: every write of the operators (anything but
    // the Lease, and not refused) comes from the Lease holder of the moment.
    // A process holds the Lease from its first successful patch of it; the
    // killed leader writes nothing after the kill, the follower nothing
    // before it took the Lease.
    let (leader_user, follower_user) = (&users[index], &users[1 - index]);
    let events = cluster.audit_events();
    let at = |event: &Value| {
        event["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .expect("an audit event has its request time")
    };
    let writes_of = |user: &str, lease: bool| -> Vec<&Value> {
        events
            .iter()
            .filter(|event| event["stage"] == "ResponseComplete")
            .filter(|event| event["user"]["username"] == user)
            .filter(|event| {
                matches!(
                    event["verb"].as_str(),
                    Some("create" | "update" | "patch" | "delete")
                )
            })
            .filter(|event| event["responseStatus"]["code"].as_i64().unwrap_or(0) < 400)
            .filter(|event| (event["objectRef"]["resource"] == "leases") == lease)
            .collect()
    };
    let describe = |events: &[&Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| {
                format!(
                    "{} {} {} {}",
                    e["requestReceivedTimestamp"].as_str().unwrap_or_default(),
                    e["verb"].as_str().unwrap_or_default(),
                    e["requestURI"].as_str().unwrap_or_default(),
                    e["responseStatus"]["code"]
                )
            })
            .collect()
    };
    // The Lease is created empty by whichever process comes first
    // (kube-lease-manager); a process takes it with a patch naming itself
    // (refused with 409 while another holds it).
    let acquired = |user: &str| {
        writes_of(user, true)
            .into_iter()
            .filter(|event| event["verb"] != "create")
            .map(at)
            .min()
            .unwrap_or_else(|| panic!("{user} never took the Lease"))
    };
    let (leader_acquired, follower_acquired) = (acquired(leader_user), acquired(follower_user));
    assert!(
        follower_acquired > killed_wall,
        "{follower} wrote the Lease at {follower_acquired}, before the leader was killed at {killed_wall}"
    );
    let leader_writes = writes_of(leader_user, false);
    let follower_writes = writes_of(follower_user, false);
    assert!(
        !leader_writes.is_empty() && !follower_writes.is_empty(),
        "both leaders reconciled in turn: leader {:#?} follower {:#?}",
        describe(&leader_writes),
        describe(&follower_writes)
    );
    let out_of_term: Vec<&Value> = leader_writes
        .iter()
        .copied()
        .filter(|e| at(e) < leader_acquired || at(e) > killed_wall)
        .chain(
            follower_writes
                .iter()
                .copied()
                .filter(|e| at(e) < follower_acquired),
        )
        .collect();
    assert!(
        out_of_term.is_empty(),
        "writes outside the writer's term ({leader} led {leader_acquired} .. {killed_wall}, \
         {follower} from {follower_acquired}): {:#?}",
        describe(&out_of_term)
    );
    eprintln!(
        "audit: {} writes by {leader} while leading, {} by {follower} after {follower_acquired}",
        leader_writes.len(),
        follower_writes.len()
    );
}

fn apply_json(cluster: &ControlPlane, object: &Value) {
    flows::apply(cluster, object);
}

// ---------------------------------------------------------------------------
// The kubectl plugin and the deadline extension, through the real kubectl
// ---------------------------------------------------------------------------

/// `kubectl archiver ...`: the real kubectl finding the binary on PATH as
/// `kubectl-archiver`, as after the chart README's install step.
struct Plugin<'a> {
    cluster: &'a ControlPlane,
    bin: tempfile::TempDir,
}

impl<'a> Plugin<'a> {
    fn new(cluster: &'a ControlPlane) -> Self {
        let bin = tempfile::tempdir().expect("plugin directory");
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_archiver-operator"),
            bin.path().join("kubectl-archiver"),
        )
        .expect("link kubectl-archiver");
        Self { cluster, bin }
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let path = format!(
            "{}:{}",
            self.bin.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // kubectl looks a plugin up by the words before the first flag, so
        // no global flag may come first.
        let mut command = Command::new(&self.cluster.kubectl);
        command
            .env("KUBECONFIG", &self.cluster.kubeconfig)
            .env("PATH", path)
            .arg("archiver")
            .args(args);
        for (name, value) in env {
            command.env(name, value);
        }
        common::control_plane::run_bounded(command, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("kubectl archiver {args:?}: {e}"))
    }
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn kubectl_archiver_erase_creates_a_deletion_request_with_a_generated_name() {
    let cluster = with_crds();
    let namespace = "plugin";
    cluster.ensure_namespace(namespace).expect("namespace");
    let plugin = Plugin::new(cluster);
    let erase = [
        "erase",
        "--tenant",
        "6F1C2A9E-4B1D-4C55-9A43-2F5E7D8C9B01",
        "--server",
        "web",
        "--reason",
        "gdpr-art17",
        "--requester",
        "0b7e3c41-9d2a-4f6b-8e15-7a9c0d4e2f63",
        "-n",
        namespace,
    ];
    let mut dry_run = erase.to_vec();
    dry_run.push("--dry-run");
    let printed = plugin.run(&dry_run, &[]);
    assert!(printed.status.success(), "{}", text(&printed));
    assert!(String::from_utf8_lossy(&printed.stdout).contains("generateName: erase-6f1c2a9e-"));

    let created = plugin.run(&erase, &[]);
    assert!(created.status.success(), "{}", text(&created));
    let list: Value = serde_json::from_str(
        &cluster
            .kubectl_ok(&["get", "deletionrequests", "-n", namespace, "-o", "json"])
            .expect("list"),
    )
    .expect("JSON");
    let items = list["items"].as_array().expect("items");
    assert_eq!(
        items.len(),
        1,
        "the dry run created nothing, the real run one: {list:#}"
    );
    let object = &items[0];
    let name = object["metadata"]["name"].as_str().expect("a name");
    assert!(name.starts_with("erase-6f1c2a9e-"), "{name}");
    assert!(
        String::from_utf8_lossy(&created.stdout).contains(name),
        "{}",
        text(&created)
    );
    assert_eq!(
        object["spec"]["tenantId"],
        "6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01"
    );
    assert_eq!(object["spec"]["serverSlug"], "web");
    assert!(
        object["spec"]["receivedAt"].as_str().is_some(),
        "{object:#}"
    );

    let status = plugin.run(&["status", "-n", namespace], &[]);
    assert!(status.status.success(), "{}", text(&status));
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("DeletionRequest") && l.contains(name)),
        "{table}"
    );

    // Bad input never reaches the API server.
    let refused = plugin.run(
        &[
            "erase",
            "--tenant",
            "6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01",
            "--server",
            "a:b",
            "--reason",
            "drill",
            "--requester",
            "0b7e3c41-9d2a-4f6b-8e15-7a9c0d4e2f63",
            "-n",
            namespace,
        ],
        &[],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
}

#[test]
fn an_extension_may_be_added_once_with_kubectl_apply_and_never_changed() {
    let cluster = with_crds();
    let namespace = "extension";
    cluster.ensure_namespace(namespace).expect("namespace");
    let mut request = documents(&repo().join("examples/deletion-request.yaml"))
        .pop()
        .expect("one DeletionRequest");
    request["metadata"]["namespace"] = namespace.into();
    let apply = |object: &Value| {
        cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&object.to_string()))
    };
    assert!(apply(&request).success, "the example is created");

    let mut extended = request.clone();
    extended["spec"]["extension"] =
        serde_json::json!({"days": 30, "reason": "the request covers many servers"});
    let added = apply(&extended);
    assert!(
        added.success,
        "adding an extension is allowed: {}",
        added.stderr
    );

    let mut longer = extended.clone();
    longer["spec"]["extension"]["days"] = 60.into();
    let changed = apply(&longer);
    assert!(!changed.success, "a changed extension was accepted");
    assert!(
        changed.stderr.contains("spec is immutable"),
        "{}",
        changed.stderr
    );

    let removed = cluster.kubectl_with_stdin(&["replace", "-f", "-"], Some(&request.to_string()));
    assert!(!removed.success, "removing the extension was accepted");

    let mut too_long = request.clone();
    too_long["metadata"]["name"] = "erase-too-long".into();
    too_long["spec"]["extension"] = serde_json::json!({"days": 61, "reason": "more time"});
    assert!(!apply(&too_long).success, "61 days were accepted");

    let days = cluster
        .kubectl_ok(&[
            "get",
            "-n",
            namespace,
            "deletionrequest/erase-6f1c-my-server",
            "-o",
            "jsonpath={.spec.extension.days}",
        ])
        .expect("readable");
    assert_eq!(days, "30");
}
