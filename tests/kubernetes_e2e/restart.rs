//! kube-apiserver stopped and started again mid-run (issue 14, "Restarts"),
//! on a control plane of this test's own (restarting the shared one would
//! disturb the tests running beside it).
//!
//! No kubelet runs, so the test stands in for one: it starts the shard's
//! worker from the pod template of the Deployment the operator created (its
//! arguments, its environment resolved from the Secrets and the pod's own
//! fields, as the pod's ServiceAccount), which also drains against a shard
//! read from the real API server.

use super::*;

use archiver_operator::archive::verdict::index_key;
use archiver_operator::testing::{TestDatabase, redis_server};
use chrono::{DateTime, DurationRound, Utc};
use common::control_plane::PrivateControlPlane;
use uuid::Uuid;

/// The shard's worker as a kubelet would run one replica of its Deployment:
/// the container's arguments, the environment it declares, a token of the
/// pod's ServiceAccount. Killed when dropped.
struct StandInPod {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl StandInPod {
    fn start(cluster: &ControlPlane, namespace: &str, deployment: &Value) -> Self {
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let pod_name = format!(
            "{}-standin",
            deployment["metadata"]["name"].as_str().unwrap_or("worker")
        );
        let dir = tempfile::tempdir().expect("pod directory");
        let service_account = pod["serviceAccountName"].as_str().unwrap_or("default");
        let kubeconfig = dir.path().join("pod.kubeconfig");
        cluster.service_account_kubeconfig(namespace, service_account, &kubeconfig);

        let mut command = Command::new(env!("CARGO_BIN_EXE_archiver-operator"));
        let args: Vec<&str> = container["args"]
            .as_array()
            .expect("the worker container has args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        command.args(args).env_clear();
        for variable in container["env"].as_array().into_iter().flatten() {
            let name = variable["name"].as_str().expect("env name");
            let from = &variable["valueFrom"];
            let value = if let Some(value) = variable["value"].as_str() {
                value.to_string()
            } else if let Some(secret) = from["secretKeyRef"].as_object() {
                secret_value(
                    cluster,
                    namespace,
                    secret["name"].as_str().expect("Secret name"),
                    secret["key"].as_str().expect("Secret key"),
                )
            } else {
                match from["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => pod_name.clone(),
                    Some("metadata.namespace") => namespace.to_string(),
                    other => panic!("{name}: a field the stand-in cannot give: {other:?}"),
                }
            };
            command.env(name, value);
        }
        // A pod has a network namespace of its own; here the port is chosen
        // free on loopback.
        let port = archiver_operator::local_servers::free_port().expect("free port");
        let log = dir.path().join("worker.log");
        let log_file = std::fs::File::create(&log).expect("worker log");
        command
            .env("ARCHIVER_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("KUBECONFIG", &kubeconfig)
            .env("ARCHIVER_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file);
        let child = command.spawn().expect("start the worker");
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

impl Drop for StandInPod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One key of a Secret, decoded.
fn secret_value(cluster: &ControlPlane, namespace: &str, name: &str, key: &str) -> String {
    use base64::Engine;
    let secret = get_json(cluster, namespace, &format!("secret/{name}"));
    let encoded = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("Secret {name} has no key {key}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("Secret data is base64");
    String::from_utf8(bytes).expect("a UTF-8 URL")
}

/// Sealed verdicts of `servers` of `tenant` for `minute`, indexed.
async fn put_verdicts(redis_url: &str, tenant: Uuid, servers: &[&str], minute: DateTime<Utc>) {
    let client = redis::Client::open(redis_url).expect("Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let mut pipe = redis::pipe();
    for server in servers {
        let key = format!("verdict:{tenant}:{server}:us-east:{}", minute.timestamp());
        pipe.hset_multiple(&key, &[("state", "up"), ("verdict_sealed", "1")])
            .ignore();
        pipe.sadd(index_key(minute), &key).ignore();
    }
    pipe.query_async::<()>(&mut conn)
        .await
        .expect("write verdicts");
}

async fn rows_of(pool: &sqlx::PgPool, tenant: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM probe_minute WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(pool)
        .await
        .expect("count rows")
}

/// Polls `check` every half second until it holds or `bound` passes.
async fn eventually<F: AsyncFnMut() -> bool>(bound: Duration, mut check: F) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    check().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_api_server_restart_watches_resume_and_pending_work_completes() {
    let cluster = PrivateControlPlane::with_crds();
    let database = TestDatabase::new().await;
    let redis = redis_server();
    sqlx::query(
        "CREATE TABLE probe_minute_restart PARTITION OF probe_minute \
         FOR VALUES FROM ('2000-01-01 00:00+00') TO ('2100-01-01 00:00+00')",
    )
    .execute(&database.pool)
    .await
    .expect("a partition for every minute of the test");

    // The chart's RBAC; the operator runs as its ServiceAccount, the worker
    // as the namespace's `default` one (which only a controller-manager
    // would create here).
    let rbac = chart_rbac(
        "archiver",
        &serde_json::json!({"watchNamespace": "archiver"}),
    );
    for object in &rbac {
        let applied = cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&object.to_string()));
        assert!(applied.success, "{object}: {}", applied.stderr);
    }
    cluster
        .kubectl_ok(&["create", "serviceaccount", "default", "-n", "archiver"])
        .expect("the namespace's default ServiceAccount");
    let service_account = rbac
        .iter()
        .find(|object| object["kind"] == "ServiceAccount")
        .and_then(|object| object["metadata"]["name"].as_str())
        .expect("the chart renders the operator's ServiceAccount")
        .to_string();
    let secrets = serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "redis-shard-0", "namespace": "archiver"},
             "stringData": {"url": format!("{}0", redis.url())}},
            {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "archiver-database", "namespace": "archiver"},
             "stringData": {"url": database.url.clone()}},
        ],
    });
    assert!(
        cluster
            .kubectl_with_stdin(&["apply", "-f", "-"], Some(&secrets.to_string()))
            .success
    );

    // Verdicts of a minute already over, drained on the worker's first tick.
    let (early, late) = (Uuid::new_v4(), Uuid::new_v4());
    let this_minute = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .expect("a whole minute");
    put_verdicts(
        &redis.url(),
        early,
        &["api", "web"],
        this_minute - chrono::Duration::minutes(2),
    )
    .await;
    // A server with a verdict in every minute of the test: a minute without
    // any key after one with keys is held as a suspected eviction.
    let steady = Uuid::new_v4();
    for minutes in -2..=5 {
        put_verdicts(
            &redis.url(),
            steady,
            &["steady"],
            this_minute + chrono::Duration::minutes(minutes),
        )
        .await;
    }

    cluster
        .kubectl_ok(&[
            "apply",
            "-f",
            path_str(&repo().join("examples/archiver-shard.yaml")),
        ])
        .expect("kubectl apply the shard");
    let credentials = tempfile::tempdir().expect("a directory for the kubeconfig");
    let kubeconfig = credentials.path().join("operator.kubeconfig");
    cluster.service_account_kubeconfig("archiver", &service_account, &kubeconfig);
    let mut operator = Operator::start(&kubeconfig, &database.url);
    let created = cluster.kubectl(&[
        "wait",
        "-n",
        "archiver",
        "--for=create",
        "--timeout=90s",
        "deployment/archiver-worker-shard-0",
    ]);
    assert!(
        created.success,
        "{}\noperator log:\n{}",
        created.stderr,
        operator.log()
    );
    let deployment = get_json(&cluster, "archiver", "deployment/archiver-worker-shard-0");
    let mut worker = StandInPod::start(&cluster, "archiver", &deployment);
    assert!(
        eventually(Duration::from_secs(60), async || rows_of(
            &database.pool,
            early
        )
        .await
            == 2)
        .await,
        "the worker drained the early minute\nworker log:\n{}",
        worker.log()
    );

    // kube-apiserver goes away for 10 s. Meanwhile verdicts of the current
    // minute arrive; the worker needs no API server to drain them.
    let restarted_at = Instant::now();
    // The new kube-apiserver cannot answer before the old one was stopped
    // and the 10 s were over: a request received after this is served by
    // it. (Its readiness is seen later, so the operator may watch again
    // before `restart_apiserver` returns.)
    let new_server_from = Utc::now() + chrono::Duration::seconds(10);
    let restart = {
        let plane = ControlPlane::clone(&cluster);
        std::thread::spawn(move || plane.restart_apiserver(Duration::from_secs(10)))
    };
    let now_minute = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .expect("a whole minute");
    put_verdicts(&redis.url(), late, &["api"], now_minute).await;
    restart
        .join()
        .expect("the restart thread")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(restarted_at.elapsed() >= Duration::from_secs(10));

    // Work given after the restart: the operator's watches must see it
    // without the operator being restarted. A new DeletionRequest completes,
    // and a changed shard is reconciled to its new generation.
    let request = serde_json::json!({
        "apiVersion": "archiver.uptime.dev/v1alpha1", "kind": "DeletionRequest",
        "metadata": {"name": "erase-after-restart", "namespace": "archiver"},
        "spec": {"tenantId": early.to_string(), "serverSlug": "api", "reason": "drill",
                 "requester": Uuid::new_v4().to_string()},
    });
    let applied = cluster.kubectl_with_stdin(&["apply", "-f", "-"], Some(&request.to_string()));
    assert!(applied.success, "{}", applied.stderr);
    let patched = cluster.kubectl(&[
        "patch",
        "-n",
        "archiver",
        "archivershard/shard-0",
        "--type=merge",
        "-p",
        r#"{"spec":{"lagSloSeconds":240}}"#,
    ]);
    assert!(patched.success, "{}", patched.stderr);
    let completed = cluster.kubectl(&[
        "wait",
        "-n",
        "archiver",
        "--for=jsonpath={.status.phase}=Completed",
        "--timeout=120s",
        "deletionrequest/erase-after-restart",
    ]);
    assert!(
        completed.success,
        "{}\noperator log:\n{}",
        completed.stderr,
        operator.log()
    );
    let shard = cluster.kubectl(&[
        "wait",
        "-n",
        "archiver",
        "--for=jsonpath={.status.observedGeneration}=2",
        "--timeout=60s",
        "archivershard/shard-0",
    ]);
    assert!(
        shard.success,
        "{}\noperator log:\n{}",
        shard.stderr,
        operator.log()
    );
    // The operator's watches were opened again on the new kube-apiserver
    // (the audit log is appended to across the restart).
    let user = format!("system:serviceaccount:archiver:{service_account}");
    let rewatched: BTreeSet<String> = cluster
        .audit_events()
        .iter()
        .filter(|event| event["user"]["username"] == user.as_str() && event["verb"] == "watch")
        .filter(|event| {
            event["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t >= new_server_from)
        })
        .filter_map(|event| event["objectRef"]["resource"].as_str().map(str::to_string))
        .collect();
    for resource in ["archivershards", "deletionrequests", "retentionpolicies"] {
        assert!(
            rewatched.contains(resource),
            "{resource} watched again after the restart: {rewatched:?}"
        );
    }
    assert_eq!(
        rows_of(&database.pool, early).await,
        1,
        "the erasure removed the pair's row and kept the other server's"
    );
    // The minute written during the outage is drained after it ends.
    assert!(
        eventually(Duration::from_secs(90), async || rows_of(
            &database.pool,
            late
        )
        .await
            == 1)
        .await,
        "the worker drained the minute written while kube-apiserver was down\nworker log:\n{}",
        worker.log()
    );
    assert!(
        matches!(operator.child.try_wait(), Ok(None)),
        "the operator kept running through the restart\n{}",
        operator.log()
    );
    assert!(
        matches!(worker.child.try_wait(), Ok(None)),
        "the worker kept running through the restart\n{}",
        worker.log()
    );
}
