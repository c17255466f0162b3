//! User flows of issue 14 through kubectl, against the shared control plane,
//! each with its own namespace and its own operator (`run --namespace NS`,
//! as the chart's ServiceAccount with the chart's RBAC for that namespace):
//! deleting a DeletionRequest that has not completed, a RetentionPolicy
//! shrink held and released, the published privacy-policy ConfigMap, and
//! the Argo CD health scripts on the live objects.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use archiver_operator::testing::{TestDatabase, redis_server};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Operator, Plugin, documents, get_json, path_str, text};
use crate::common::argocd_lua;
use crate::common::control_plane::{ControlPlane, chart_rbac, repo, with_crds};

/// The finalizer the operator puts on DeletionRequests.
const FINALIZER: &str = "archiver.uptime.dev/cleanup";
const REQUEST: &str = "deletionrequest/erase-6f1c-my-server";
/// Tenant and server of `examples/deletion-request.yaml`.
const EXAMPLE_TENANT: &str = "6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01";

/// The one object of `examples/<file>`, moved to `namespace`.
pub(crate) fn example(file: &str, namespace: &str) -> Value {
    let mut object = documents(&repo().join("examples").join(file))
        .pop()
        .unwrap_or_else(|| panic!("examples/{file} holds an object"));
    object["metadata"]["namespace"] = namespace.into();
    object
}

pub(crate) fn apply(cluster: &ControlPlane, object: &Value) {
    let mut applied = cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&object.to_string()));
    // Tests running in parallel apply the same cluster-scoped RBAC: when two
    // create it at once, one is told it already exists; applied again, it
    // is patched like any existing object.
    if !applied.success && applied.stderr.contains("AlreadyExists") {
        applied = cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&object.to_string()));
    }
    assert!(applied.success, "{object}: {}", applied.stderr);
}

/// The chart's RBAC for `namespace` (rendered with `values`), applied, and
/// a kubeconfig of the chart's ServiceAccount (in the returned directory).
pub(crate) fn chart_identity(
    cluster: &ControlPlane,
    namespace: &str,
    values: &Value,
) -> (tempfile::TempDir, PathBuf) {
    for object in &chart_rbac(namespace, values) {
        apply(cluster, object);
    }
    let credentials = tempfile::tempdir().expect("a directory for the kubeconfig");
    let kubeconfig = credentials.path().join("operator.kubeconfig");
    cluster.service_account_kubeconfig(namespace, "archiver-operator", &kubeconfig);
    (credentials, kubeconfig)
}

pub(crate) fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Polls `object` until `done` holds on it (bounded); the last live object.
pub(crate) fn wait_for(
    cluster: &ControlPlane,
    namespace: &str,
    object: &str,
    timeout: Duration,
    what: &str,
    operator: &Operator,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let live = get_json(cluster, namespace, object);
        if done(&live) {
            return live;
        }
        assert!(
            Instant::now() < deadline,
            "{object}: {what} not reached within {timeout:?}:\n{live:#}\noperator log:\n{}",
            operator.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn finalizers(object: &Value) -> Vec<&str> {
    object["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

async fn probe_days(database: &TestDatabase, tenant: Uuid, server: &str) -> i64 {
    let (count,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM probe_day WHERE tenant_id = $1 AND server_slug = $2")
            .bind(tenant)
            .bind(server)
            .fetch_one(&database.pool)
            .await
            .expect("count probe_day rows");
    count
}

async fn seed_probe_days(database: &TestDatabase, tenant: Uuid, server: &str, days_ago: &[i64]) {
    let today = chrono::Utc::now().date_naive();
    for days in days_ago {
        sqlx::query(
            "INSERT INTO probe_day (tenant_id, server_slug, day, minutes_total, minutes_up, \
             minutes_down, minutes_degraded, minutes_auth_walled, minutes_unknown, closed) \
             VALUES ($1, $2, $3, 1440, 1440, 0, 0, 0, 0, true)",
        )
        .bind(tenant)
        .bind(server)
        .bind(today - chrono::Duration::days(*days))
        .execute(&database.pool)
        .await
        .expect("seed a probe_day row");
    }
}

// ---------------------------------------------------------------------------
// kubectl delete of a DeletionRequest that has not completed
// ---------------------------------------------------------------------------

/// Deleting a DeletionRequest never cancels its erasure: while the erasure
/// cannot run (the shard's Redis is unknown: its Secret is missing), the
/// object stays, marked for deletion, with the operator's finalizer; once
/// the Secret exists the erasure runs during the deletion and only then does
/// the object go (`kubectl wait --for=delete`), leaving its tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_of_an_uncompleted_deletion_request_waits_until_its_erasure_has_run() {
    let cluster = with_crds();
    let namespace = "flows-delete";
    cluster.ensure_namespace(namespace).expect("namespace");
    let database = TestDatabase::new().await;
    let redis = redis_server();
    let tenant: Uuid = EXAMPLE_TENANT.parse().expect("the example's tenant");
    seed_probe_days(&database, tenant, "my-server", &[3]).await;
    seed_probe_days(&database, tenant, "other-server", &[3]).await;
    let (_credentials, kubeconfig) =
        chart_identity(cluster, namespace, &json!({"watchNamespace": namespace}));
    let operator = Operator::start_as(&kubeconfig, &database.url, namespace, Some(namespace));

    // The shard refers to a Secret that does not exist yet: no Redis is
    // known, so the erasure waits (it never erases without the Redis side).
    apply(cluster, &example("archiver-shard.yaml", namespace));
    apply(cluster, &example("deletion-request.yaml", namespace));
    let pending = wait_for(
        cluster,
        namespace,
        REQUEST,
        Duration::from_secs(120),
        "Pending with the finalizer",
        &operator,
        |live| live["status"]["phase"] == "Pending" && finalizers(live).contains(&FINALIZER),
    );
    let ready = condition(&pending, "Ready").expect("a Ready condition");
    assert_eq!(ready["reason"], "WaitingForRedisShards", "{ready}");

    let deleted = cluster.kubectl(&["delete", "-n", namespace, REQUEST, "--wait=false"]);
    assert!(deleted.success, "{}", deleted.stderr);
    // For several cleanup attempts (retried after 5 s, then 10 s) the
    // object stays, marked for deletion, held by the finalizer.
    let held_until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < held_until {
        let live = cluster.kubectl(&["get", "-n", namespace, REQUEST, "-o", "json"]);
        assert!(
            live.success,
            "the DeletionRequest went away before its erasure ran: {}\noperator log:\n{}",
            live.stderr,
            operator.log()
        );
        let live: Value = serde_json::from_str(&live.stdout).expect("JSON");
        assert!(
            live["metadata"]["deletionTimestamp"].is_string(),
            "{live:#}"
        );
        assert_eq!(finalizers(&live), vec![FINALIZER], "{live:#}");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(probe_days(&database, tenant, "my-server").await, 1);
    assert!(
        operator
            .log()
            .contains("the object stays until its erasure has completed"),
        "{}",
        operator.log()
    );
    // `kubectl describe` says why the object stays.
    let events = cluster.kubectl(&[
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=erase-6f1c-my-server,reason=DeletionWaitsForErasure",
        "-o",
        "json",
    ]);
    assert!(events.success, "{}", events.stderr);
    let events: Value = serde_json::from_str(&events.stdout).expect("JSON");
    let notes: Vec<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|event| event["note"].as_str().or(event["message"].as_str()))
        .collect();
    assert!(
        notes
            .iter()
            .any(|note| note.contains("stays until its erasure has completed")),
        "no DeletionWaitsForErasure event: {events:#}\noperator log:\n{}",
        operator.log()
    );

    // The shard's Secret appears: the erasure can run, and the deletion ends.
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "redis-shard-0", "namespace": namespace},
        "type": "Opaque",
        "stringData": {"url": format!("{}0", redis.url())},
    });
    apply(cluster, &secret);
    let gone = cluster.kubectl(&[
        "wait",
        "-n",
        namespace,
        "--for=delete",
        "--timeout=150s",
        REQUEST,
    ]);
    assert!(
        gone.success,
        "{}\noperator log:\n{}",
        gone.stderr,
        operator.log()
    );

    // The erasure ran: its tombstone (with the receipt's hash) names the
    // request, the server's rows are gone and the other server's are not.
    let tombstones: Vec<(Option<String>,)> = sqlx::query_as(
        "SELECT receipt_sha256 FROM data_deletion_log WHERE tenant_id = $1 \
         AND server_slug = 'my-server' AND request_namespace = $2 AND request_name = $3",
    )
    .bind(tenant)
    .bind(namespace)
    .bind("erase-6f1c-my-server")
    .fetch_all(&database.pool)
    .await
    .expect("read the tombstones");
    assert_eq!(tombstones.len(), 1, "{tombstones:?}");
    assert!(
        tombstones[0].0.as_deref().is_some_and(|h| h.len() == 64),
        "{tombstones:?}"
    );
    assert_eq!(probe_days(&database, tenant, "my-server").await, 0);
    assert_eq!(probe_days(&database, tenant, "other-server").await, 1);
    // The object is gone; its receipt is still there for the DPO.
    let digest = tombstones[0].0.clone().unwrap_or_default();
    let receipt = Plugin::new(cluster).run(
        &["receipt", "erase-6f1c-my-server", "-n", namespace],
        &[("DATABASE_URL", database.url.as_str())],
    );
    assert!(
        receipt.status.success() && String::from_utf8_lossy(&receipt.stdout).contains(&digest),
        "kubectl archiver receipt after the deletion: {}",
        text(&receipt)
    );
    assert!(
        operator.log().contains("erasure completed during deletion"),
        "{}",
        operator.log()
    );

    // A completed request holds nothing back: applied again (a new object,
    // so a new erasure and tombstone), it completes, and `kubectl delete`
    // returns at once; deleting it undoes nothing.
    apply(cluster, &example("deletion-request.yaml", namespace));
    let completed = cluster.kubectl(&[
        "wait",
        "-n",
        namespace,
        "--for=jsonpath={.status.phase}=Completed",
        "--timeout=120s",
        REQUEST,
    ]);
    assert!(
        completed.success,
        "{}\noperator log:\n{}",
        completed.stderr,
        operator.log()
    );
    let started = Instant::now();
    cluster
        .kubectl_ok(&["delete", "-n", namespace, REQUEST, "--timeout=30s"])
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "a completed DeletionRequest deleted in {:?}",
        started.elapsed()
    );
    let (count,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM data_deletion_log WHERE request_namespace = $1 AND request_name = $2",
    )
    .bind(namespace)
    .bind("erase-6f1c-my-server")
    .fetch_one(&database.pool)
    .await
    .expect("count the tombstones");
    assert_eq!(count, 2);
    assert_eq!(probe_days(&database, tenant, "my-server").await, 0);
    assert_eq!(probe_days(&database, tenant, "other-server").await, 1);
}

// ---------------------------------------------------------------------------
// RetentionPolicy shrink: held, released by kubectl annotate; the ConfigMap
// ---------------------------------------------------------------------------

/// `HH:MM-HH:MM` (UTC) from `now + from` to `now + to`.
fn window(from: chrono::Duration, to: chrono::Duration) -> String {
    let now = chrono::Utc::now();
    format!(
        "{}-{}",
        (now + from).format("%H:%M"),
        (now + to).format("%H:%M")
    )
}

/// Writes `object` as a YAML manifest file and applies it with kubectl.
fn apply_file(cluster: &ControlPlane, object: &Value, file: &Path) {
    std::fs::write(
        file,
        serde_yaml_ng::to_string(object).expect("YAML of the policy"),
    )
    .expect("write the policy file");
    cluster
        .kubectl_ok(&["apply", "-f", path_str(file)])
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The published ConfigMap holds, key by key, what `archiver-operator
/// render-privacy-policy -f FILE --generation N` prints for each format.
fn assert_published(cluster: &ControlPlane, namespace: &str, file: &Path, generation: i64) {
    let config_map = get_json(cluster, namespace, "configmap/privacy-policy-retention");
    let data = config_map["data"]
        .as_object()
        .expect("the ConfigMap's data");
    let keys: Vec<&String> = data.keys().collect();
    assert_eq!(
        keys,
        ["retention.html", "retention.json", "retention.md"],
        "{config_map:#}"
    );
    for (format, key) in [
        ("markdown", "retention.md"),
        ("json", "retention.json"),
        ("html", "retention.html"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
            .args(["render-privacy-policy", "--format", format, "--generation"])
            .arg(generation.to_string())
            .arg("-f")
            .arg(file)
            .output()
            .expect("run render-privacy-policy");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let rendered = String::from_utf8(output.stdout).expect("UTF-8");
        assert_eq!(
            data[key].as_str(),
            Some(rendered.as_str()),
            "{key} differs from render-privacy-policy --format {format} -f {}",
            file.display()
        );
    }
}

/// A RetentionPolicy change that shortens the author tier's daily window
/// from 730 to 300 days (59 % > maxShrinkPercent 50) is held: `ShrinkHeld`
/// with the rows it would delete, the previous tier table still enforced and
/// published, and a run in an open window deletes nothing of the shrink;
/// `kubectl annotate ... confirm-shrink=<hash from status>` releases it, the
/// ConfigMap follows, and in the next enforcement window the rows are
/// deleted in Postgres (one run per window occurrence). The operator watches only its own
/// namespace, so the lifecycle test's `archiver/tiers` is not in its view
/// (two policies in one view would be a conflict that deletes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shrink_is_held_until_kubectl_annotate_confirms_its_hash_and_the_configmap_is_the_rendered_text()
 {
    let cluster = with_crds();
    let namespace = "flows-retention";
    cluster.ensure_namespace(namespace).expect("namespace");
    let database = TestDatabase::new().await;
    let tenant = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from) \
         VALUES ($1, 'author', now() - interval '1000 days')",
    )
    .bind(tenant)
    .execute(&database.pool)
    .await
    .expect("seed the tenant's tier");
    // Five days past 300 days (deleted by the shrink), three well inside.
    let expiring = [400, 401, 402, 403, 404];
    seed_probe_days(&database, tenant, "api", &expiring).await;
    seed_probe_days(&database, tenant, "api", &[100, 101, 102]).await;
    let (_credentials, kubeconfig) =
        chart_identity(cluster, namespace, &json!({"watchNamespace": namespace}));
    let operator = Operator::start_as(&kubeconfig, &database.url, namespace, Some(namespace));
    let files = tempfile::tempdir().expect("a directory for the policy files");
    let policy = "retentionpolicy/tiers";

    // Generation 1, with the enforcement window closed now (3 to 4 hours ahead).
    let mut first = example("retention-policy.yaml", namespace);
    first["spec"]["enforcement"]["window"] =
        window(chrono::Duration::hours(3), chrono::Duration::hours(4)).into();
    let first_file = files.path().join("first.yaml");
    apply_file(cluster, &first, &first_file);
    let accepted = wait_for(
        cluster,
        namespace,
        policy,
        Duration::from_secs(120),
        "generation 1 enforced",
        &operator,
        |live| {
            live["status"]["observedGeneration"] == 1
                && live["status"]["enforcedPolicyHash"].is_string()
                && live["status"]["enforcedPolicyHash"] == live["status"]["policyHash"]
        },
    );
    let first_hash = accepted["status"]["policyHash"]
        .as_str()
        .expect("policy hash")
        .to_string();
    assert_eq!(
        condition(&accepted, "ShrinkHeld").map(|c| c["status"].clone()),
        Some("False".into()),
        "{accepted:#}"
    );
    assert_published(cluster, namespace, &first_file, 1);

    // Generation 2 shortens the author tier's daily window beyond the guard.
    let mut shrunk = first.clone();
    shrunk["spec"]["tiers"]["author"]["dailyDays"] = 300.into();
    let shrunk_file = files.path().join("shrunk.yaml");
    apply_file(cluster, &shrunk, &shrunk_file);
    let held = wait_for(
        cluster,
        namespace,
        policy,
        Duration::from_secs(120),
        "ShrinkHeld",
        &operator,
        |live| {
            live["status"]["observedGeneration"] == 2
                && condition(live, "ShrinkHeld").is_some_and(|c| c["status"] == "True")
        },
    );
    let status = &held["status"];
    let hash = status["policyHash"].as_str().expect("the new hash");
    assert_ne!(hash, first_hash);
    assert_eq!(status["shrinkHold"]["policyHash"], hash, "{status:#}");
    assert_eq!(
        status["enforcedPolicyHash"],
        first_hash.as_str(),
        "{status:#}"
    );
    let would = status["shrinkHold"]["rowsWouldDelete"]
        .as_object()
        .expect("rowsWouldDelete");
    assert_eq!(would.get("probe_day"), Some(&json!(5)), "{status:#}");
    assert_eq!(
        would.values().filter_map(Value::as_i64).sum::<i64>(),
        5,
        "{status:#}"
    );
    let shrink_held = condition(&held, "ShrinkHeld").expect("ShrinkHeld");
    assert_eq!(shrink_held["reason"], "ShrinkBeyondGuard");
    assert!(
        shrink_held["message"]
            .as_str()
            .is_some_and(|m| m.contains(hash) && m.contains("5 row(s)")),
        "{shrink_held}"
    );
    let ready = condition(&held, "Ready").expect("Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("True"), &json!("ShrinkHeld"))
    );
    // The text published still states the tier table in force.
    assert_published(cluster, namespace, &first_file, 1);
    assert_eq!(probe_days(&database, tenant, "api").await, 8);

    // Held, in an open enforcement window: the run enforces the tier table
    // in force (730 days) and deletes none of the rows.
    let mut held_open = shrunk.clone();
    held_open["spec"]["enforcement"]["window"] = window(
        chrono::Duration::minutes(-60),
        chrono::Duration::minutes(120),
    )
    .into();
    let held_open_file = files.path().join("held-open.yaml");
    apply_file(cluster, &held_open, &held_open_file);
    let ran = wait_for(
        cluster,
        namespace,
        policy,
        Duration::from_secs(120),
        "a finished run in the open window",
        &operator,
        |live| {
            live["status"]["observedGeneration"] == 3
                && live["status"]["lastEnforcement"]["finishedAt"].is_string()
        },
    );
    assert_eq!(
        condition(&ran, "ShrinkHeld").map(|c| c["status"].clone()),
        Some("True".into()),
        "{:#}",
        ran["status"]
    );
    assert_eq!(ran["status"]["enforcedPolicyHash"], first_hash.as_str());
    assert_eq!(probe_days(&database, tenant, "api").await, 8);

    // The DPO confirms with the hash from status.
    cluster
        .kubectl_ok(&[
            "annotate",
            "-n",
            namespace,
            policy,
            &format!("archiver.uptime.dev/confirm-shrink={hash}"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let released = wait_for(
        cluster,
        namespace,
        policy,
        Duration::from_secs(120),
        "the shrink released",
        &operator,
        |live| live["status"]["enforcedPolicyHash"] == hash,
    );
    let shrink_held = condition(&released, "ShrinkHeld").expect("ShrinkHeld");
    assert_eq!(shrink_held["status"], "False", "{shrink_held}");
    assert!(
        released["status"]["shrinkHold"].is_null(),
        "{:#}",
        released["status"]
    );
    assert_published(cluster, namespace, &held_open_file, 3);

    // This window's run is over; the next window (here: a window starting a
    // minute later, also open now) deletes exactly the five rows.
    assert_eq!(probe_days(&database, tenant, "api").await, 8);
    let mut now_open = shrunk.clone();
    now_open["spec"]["enforcement"]["window"] = window(
        chrono::Duration::minutes(-59),
        chrono::Duration::minutes(120),
    )
    .into();
    apply_file(cluster, &now_open, &files.path().join("open.yaml"));
    let deadline = Instant::now() + Duration::from_secs(90);
    while probe_days(&database, tenant, "api").await != 3 {
        assert!(
            Instant::now() < deadline,
            "the shrink was not enforced: {} rows left\n{:#}\noperator log:\n{}",
            probe_days(&database, tenant, "api").await,
            get_json(cluster, namespace, policy)["status"],
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (oldest,): (Option<chrono::NaiveDate>,) =
        sqlx::query_as("SELECT min(day) FROM probe_day WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&database.pool)
            .await
            .expect("the oldest row left");
    assert_eq!(
        oldest,
        Some(chrono::Utc::now().date_naive() - chrono::Duration::days(102))
    );
}

// ---------------------------------------------------------------------------
// Argo CD health of the live objects
// ---------------------------------------------------------------------------

/// `archiver-operator worker` for one shard, out of cluster (no kubelet runs
/// the shard's Deployment here); stopped when dropped.
struct ShardWorker {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ShardWorker {
    fn start(cluster: &ControlPlane, shard: &str, database_url: &str) -> Self {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().expect("worker directory");
        let log = dir.path().join("worker.log");
        let log_file = std::fs::File::create(&log).expect("worker log");
        let port = archiver_operator::local_servers::free_port().expect("free port");
        let mut command = Command::new(env!("CARGO_BIN_EXE_archiver-operator"));
        command
            .args(["worker", "--shard", shard, "--http-addr"])
            .arg(format!("127.0.0.1:{port}"))
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("DATABASE_URL", database_url)
            .env("ARCHIVER_SUPPRESSION_SALT", "e2e-salt")
            .env("ARCHIVER_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("start archiver-operator worker");
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ShardWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The health script's verdict on the object as the API server returns it.
fn live_health(cluster: &ControlPlane, namespace: &str, object: &str) -> argocd_lua::Health {
    argocd_lua::health(&get_json(cluster, namespace, object))
}

#[track_caller]
fn assert_live_health(
    cluster: &ControlPlane,
    namespace: &str,
    object: &str,
    status: &str,
    needle: &str,
) {
    let live = get_json(cluster, namespace, object);
    let health = argocd_lua::health(&live);
    eprintln!("{object}: {} ({})", health.status, health.message);
    assert_eq!(health.status, status, "{object}: {health:?}\n{live:#}");
    assert!(
        health.message.contains(needle),
        "{object}: {health:?} lacks {needle:?}"
    );
}

/// `argocd/health/<Kind>.lua` on the objects read back with `kubectl get -o
/// json`, as documented in the scripts' headers and the chart README:
/// Progressing before the operator reports, Healthy once Ready (the shard
/// once its worker keeps the lag within the SLO), Degraded for a shard whose
/// Secret is missing, Suspended when paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_cd_health_scripts_judge_the_live_objects_as_documented() {
    let cluster = with_crds();
    let namespace = "flows-health";
    cluster.ensure_namespace(namespace).expect("namespace");
    let database = TestDatabase::new().await;
    let redis = redis_server();
    let mut broken = example("archiver-shard.yaml", namespace);
    broken["metadata"]["name"] = "shard-broken".into();
    broken["spec"]["shardId"] = 1.into();
    broken["spec"]["redis"]["urlSecretRef"]["name"] = "redis-shard-missing".into();
    let objects = [
        example("retention-policy.yaml", namespace),
        example("partition-schedule.yaml", namespace),
        example("archiver-shard.yaml", namespace),
        broken,
        example("deletion-request.yaml", namespace),
    ];
    let names = [
        "retentionpolicy/tiers",
        "partitionschedule/probe-minute",
        "archivershard/shard-0",
        "archivershard/shard-broken",
        REQUEST,
    ];
    for object in &objects {
        apply(cluster, object);
    }
    apply(
        cluster,
        &json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "redis-shard-0", "namespace": namespace},
            "type": "Opaque",
            "stringData": {"url": format!("{}0", redis.url())},
        }),
    );
    // Nothing has reconciled them yet.
    for name in names {
        assert_live_health(
            cluster,
            namespace,
            name,
            "Progressing",
            "Waiting for the operator to report status",
        );
    }

    let (_credentials, kubeconfig) = chart_identity(
        cluster,
        namespace,
        &json!({
            "watchNamespace": namespace,
            "rbac": {"secretNames": ["redis-shard-0", "redis-shard-missing"]},
        }),
    );
    let operator = Operator::start_as(&kubeconfig, &database.url, namespace, Some(namespace));
    let ready = cluster.kubectl(&[
        "wait",
        "-n",
        namespace,
        "--for=condition=Ready",
        "--timeout=120s",
        "retentionpolicy/tiers",
        "partitionschedule/probe-minute",
        "archivershard/shard-0",
        REQUEST,
    ]);
    assert!(
        ready.success,
        "{}\noperator log:\n{}",
        ready.stderr,
        operator.log()
    );
    let completed = cluster.kubectl(&[
        "wait",
        "-n",
        namespace,
        "--for=jsonpath={.status.phase}=Completed",
        "--timeout=120s",
        REQUEST,
    ]);
    assert!(completed.success, "{}", completed.stderr);
    assert_live_health(
        cluster,
        namespace,
        "retentionpolicy/tiers",
        "Healthy",
        "Ready",
    );
    assert_live_health(cluster, namespace, REQUEST, "Healthy", "receipt sha256");

    // The broken shard: Ready=False naming its missing Secret -> Degraded.
    wait_for(
        cluster,
        namespace,
        "archivershard/shard-broken",
        Duration::from_secs(60),
        "Ready=False",
        &operator,
        |live| condition(live, "Ready").is_some_and(|c| c["status"] == "False"),
    );
    assert_live_health(
        cluster,
        namespace,
        "archivershard/shard-broken",
        "Degraded",
        "redis-shard-missing",
    );

    // The good shard: Ready but no tick yet -> Progressing; with its worker
    // ticking (the Deployment's job, run here out of cluster) the lag is
    // within the SLO at the next status refresh (30 s) -> Healthy.
    assert_live_health(
        cluster,
        namespace,
        "archivershard/shard-0",
        "Progressing",
        "NoWatermarkYet",
    );
    //
    // The PartitionSchedule is Ready, and Healthy once it has seen the
    // RetentionPolicy in force: applied together, it may first report
    // DropBlocked (Degraded) until its next reconcile (every 120 s).
    let worker = ShardWorker::start(cluster, &format!("{namespace}/shard-0"), &database.url);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    let (mut shard_healthy_after, mut schedule_healthy_after) = (None, None);
    loop {
        let shard = live_health(cluster, namespace, "archivershard/shard-0");
        let schedule = live_health(cluster, namespace, "partitionschedule/probe-minute");
        if shard.status == "Healthy" {
            shard_healthy_after.get_or_insert(started.elapsed());
        }
        if schedule.status == "Healthy" {
            schedule_healthy_after.get_or_insert(started.elapsed());
        }
        if shard.status == "Healthy" && schedule.status == "Healthy" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shard-0 {shard:?}, probe-minute {schedule:?}\n{:#}\nworker log:\n{}\noperator log:\n{}",
            get_json(cluster, namespace, "archivershard/shard-0")["status"],
            worker.log(),
            operator.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "shard-0 Healthy {shard_healthy_after:?} after its worker started; \
         probe-minute Healthy after {schedule_healthy_after:?}"
    );
    assert_live_health(
        cluster,
        namespace,
        "archivershard/shard-0",
        "Healthy",
        "Ready",
    );
    assert_live_health(
        cluster,
        namespace,
        "partitionschedule/probe-minute",
        "Healthy",
        "Ready",
    );

    // Paused with the annotation: Suspended.
    cluster
        .kubectl_ok(&[
            "annotate",
            "-n",
            namespace,
            "partitionschedule/probe-minute",
            "archiver.uptime.dev/reconcile=disabled",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_live_health(
        cluster,
        namespace,
        "partitionschedule/probe-minute",
        "Suspended",
        "reconcile: disabled",
    );
    drop(worker);
}

// ---------------------------------------------------------------------------
// An ArchiverShard's lifecycle through kubectl (issue 16 item 2)

/// The shard the derived views wait on says so in its status
/// (`HoldsDerivedViews=True`), and `kubectl delete` of the ArchiverShard
/// retires its watermark row, so the views stop waiting on it. No kubelet
/// runs here, so no worker pod ticks: the test writes the row a first tick
/// would have written.
#[tokio::test]
async fn a_shard_says_it_holds_the_views_and_is_retired_when_deleted_with_kubectl() {
    let cluster = with_crds();
    let namespace = "flows-retire";
    cluster.ensure_namespace(namespace).expect("namespace");
    let database = TestDatabase::new().await;
    let redis = redis_server();
    let shard = example("archiver-shard.yaml", namespace);
    let shard_id = shard["spec"]["shardId"]
        .as_i64()
        .expect("the example's shardId") as i32;
    sqlx::query(
        "INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at) \
         VALUES ($1, date_trunc('minute', now()) - interval '2 minutes', 'stand-in for a tick', now())",
    )
    .bind(shard_id)
    .execute(&database.pool)
    .await
    .expect("the watermark row of a first tick");
    apply(
        cluster,
        &json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "redis-shard-0", "namespace": namespace},
            "type": "Opaque",
            "stringData": {"url": format!("{}0", redis.url())},
        }),
    );
    let (_credentials, kubeconfig) =
        chart_identity(cluster, namespace, &json!({"watchNamespace": namespace}));
    let operator = Operator::start_as(&kubeconfig, &database.url, namespace, Some(namespace));
    apply(cluster, &shard);
    let object = "archivershard/shard-0";
    let holding = wait_for(
        cluster,
        namespace,
        object,
        Duration::from_secs(150),
        "HoldsDerivedViews=True",
        &operator,
        |live| condition(live, "HoldsDerivedViews").is_some_and(|c| c["status"] == "True"),
    );
    let held = condition(&holding, "HoldsDerivedViews").expect("the condition");
    assert_eq!(held["reason"], "ViewsWaitOnThisShard", "{held}");

    cluster
        .kubectl_ok(&["delete", "-n", namespace, object, "--timeout=60s"])
        .expect("kubectl delete the shard");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (lifecycle, shard_object): (String, Option<String>) = sqlx::query_as(
            "SELECT lifecycle, shard_object FROM archive_watermark WHERE shard_id = $1",
        )
        .bind(shard_id)
        .fetch_one(&database.pool)
        .await
        .expect("the watermark row stays");
        if lifecycle == "retired" {
            assert_eq!(
                shard_object.as_deref(),
                Some("flows-retire/shard-0"),
                "the controller recorded which ArchiverShard the row is"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted shard is still {lifecycle}\noperator log:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
