//! The Kubernetes adapters against kube's mock service (the tower-test
//! pattern of controller-rs): every request the reconcile makes is asserted,
//! in order — status apply, finalizer add/remove, events, Secret reads — and
//! a paused object makes none.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Client, Resource};
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

use archiver_operator::api::{ArchiverShard, DeletionRequest, RetentionPolicy};
use archiver_operator::clock::ManualClock;
use archiver_operator::runtime::context::{Context, SecretSource};
use archiver_operator::runtime::kubernetes::{KubeContext, backoff, error_policy, reconcile};
use archiver_operator::runtime::workers::{KubeWorkers, WorkerHost};
use archiver_operator::testing::TestDatabase;

type MockHandle = Handle<Request<Body>, Response<Body>>;

fn example<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(file);
    let text = std::fs::read_to_string(path).expect("example exists");
    serde_yaml_ng::from_str(&text).expect("example parses")
}

fn with_meta<K: Resource>(mut object: K, generation: i64) -> K {
    object.meta_mut().generation = Some(generation);
    object.meta_mut().resource_version = Some("1".into());
    object.meta_mut().uid = Some("0e9c1c52-8f0a-4a55-9d3e-000000000001".into());
    object
}

fn mock_context(secrets_from_cluster: bool) -> (Arc<KubeContext>, MockHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let clock = ManualClock::new(chrono::Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap());
    let secrets = if secrets_from_cluster {
        SecretSource::Kubernetes(client.clone())
    } else {
        SecretSource::Manifests(Default::default())
    };
    let ctx = Context::new(Arc::new(clock)).with_secrets(secrets);
    (
        Arc::new(KubeContext::new(ctx, client, Some("operator-0".into()))),
        handle,
    )
}

/// Waits for the next request, asserts its method and path, returns its JSON body.
async fn expect_request(
    handle: &mut MockHandle,
    method: Method,
    path: &str,
) -> (Value, SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request; expected {method} {path}"))
        .expect("the client is still connected");
    assert_eq!(request.method(), method, "method of {}", request.uri());
    assert_eq!(request.uri().path(), path);
    let query = request.uri().query().unwrap_or_default().to_string();
    let bytes = request.into_body().collect_bytes().await.expect("body");
    let mut body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    if let Value::Object(map) = &mut body {
        map.insert("__query".into(), Value::String(query));
    }
    (body, send)
}

fn respond(send: SendResponse<Response<Body>>, body: Value) {
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

fn respond_status(send: SendResponse<Response<Body>>, code: u16, body: Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

fn ready(status: &Value) -> (&str, &str) {
    let condition = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .expect("a Ready condition");
    (
        condition["status"].as_str().unwrap(),
        condition["reason"].as_str().unwrap(),
    )
}

async fn assert_no_request(handle: &mut MockHandle) {
    // Either nothing arrives, or every client is gone (no request can come).
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await
    {
        panic!(
            "expected no request, got {} {}",
            request.method(),
            request.uri()
        );
    }
}

const POLICY_STATUS: &str =
    "/apis/archiver.uptime.dev/v1alpha1/namespaces/archiver/retentionpolicies/tiers/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/archiver/events";

#[tokio::test]
async fn retention_policy_status_is_applied_then_an_event_recorded() {
    let (kctx, mut handle) = mock_context(false);
    let policy = with_meta(example::<RetentionPolicy>("retention-policy.yaml"), 3);
    let object = Arc::new(policy.clone());
    let task = tokio::spawn(reconcile(object, kctx));

    let (patch, send) = expect_request(&mut handle, Method::PATCH, POLICY_STATUS).await;
    assert!(
        patch["__query"]
            .as_str()
            .unwrap()
            .contains("fieldManager=archiver-operator")
    );
    assert!(patch["__query"].as_str().unwrap().contains("force=true"));
    assert_eq!(patch["kind"], "RetentionPolicy");
    assert_eq!(patch["apiVersion"], "archiver.uptime.dev/v1alpha1");
    assert_eq!(patch["status"]["observedGeneration"], 3);
    assert_eq!(ready(&patch["status"]), ("True", "Reconciled"));
    respond(send, serde_json::to_value(&policy).unwrap());

    let (event, send) = expect_request(&mut handle, Method::POST, EVENTS).await;
    assert_eq!(event["reason"], "Reconciled");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["regarding"]["name"], "tiers");
    assert_eq!(event["reportingController"], "archiver-operator");
    respond(send, event.clone());

    let action = task.await.expect("no panic").expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn an_unchanged_status_is_not_written_again() {
    let (kctx, mut handle) = mock_context(false);
    let policy = with_meta(example::<RetentionPolicy>("retention-policy.yaml"), 3);
    // First pass computes the status the object would then carry.
    let task = tokio::spawn(reconcile(Arc::new(policy.clone()), kctx.clone()));
    let (patch, send) = expect_request(&mut handle, Method::PATCH, POLICY_STATUS).await;
    respond(send, serde_json::to_value(&policy).unwrap());
    let (event, send) = expect_request(&mut handle, Method::POST, EVENTS).await;
    respond(send, event);
    task.await.unwrap().unwrap();

    let mut steady = policy;
    steady.status = Some(serde_json::from_value(patch["status"].clone()).unwrap());
    // A request would wait for an answer that never comes: the reconcile
    // must finish on its own, and the server must have seen nothing.
    tokio::time::timeout(
        Duration::from_secs(2),
        reconcile(Arc::new(steady), kctx.clone()),
    )
    .await
    .expect("no request was awaited")
    .expect("steady reconcile");
    assert_no_request(&mut handle).await;
}

#[tokio::test]
async fn a_paused_object_makes_no_request() {
    let (kctx, mut handle) = mock_context(false);
    let mut policy = with_meta(example::<RetentionPolicy>("retention-policy.yaml"), 1);
    policy
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert("archiver.uptime.dev/reconcile".into(), "disabled".into());
    let action = tokio::time::timeout(
        Duration::from_secs(2),
        reconcile(Arc::new(policy), kctx.clone()),
    )
    .await
    .expect("no request was awaited")
    .expect("paused is not an error");
    assert_eq!(action, Action::await_change());
    assert_no_request(&mut handle).await;
}

#[tokio::test]
async fn deletion_request_gets_its_finalizer_then_status_then_loses_it_on_delete() {
    let (kctx, mut handle) = mock_context(false);
    let path = "/apis/archiver.uptime.dev/v1alpha1/namespaces/archiver/deletionrequests/erase-6f1c-my-server";
    let request = with_meta(example::<DeletionRequest>("deletion-request.yaml"), 1);

    // 1. No finalizer yet: the first request adds it (JSON patch with a test).
    let task = tokio::spawn(reconcile(Arc::new(request.clone()), kctx.clone()));
    let (patch, send) = expect_request(&mut handle, Method::PATCH, path).await;
    assert!(
        patch.to_string().contains("archiver.uptime.dev/cleanup"),
        "{patch}"
    );
    let mut with_finalizer = request.clone();
    with_finalizer.meta_mut().finalizers = Some(vec!["archiver.uptime.dev/cleanup".into()]);
    respond(send, serde_json::to_value(&with_finalizer).unwrap());
    task.await.unwrap().expect("finalizer added");

    // 2. With the finalizer: status (Pending, deadline = receivedAt + 30 d) and an event.
    let task = tokio::spawn(reconcile(Arc::new(with_finalizer.clone()), kctx.clone()));
    let (status_patch, send) =
        expect_request(&mut handle, Method::PATCH, &format!("{path}/status")).await;
    assert_eq!(status_patch["status"]["phase"], "Pending");
    assert_eq!(status_patch["status"]["deadline"], "2026-12-22T09:00:00Z");
    respond(send, serde_json::to_value(&with_finalizer).unwrap());
    let (event, send) = expect_request(&mut handle, Method::POST, EVENTS).await;
    respond(send, event);
    task.await.unwrap().expect("status written");

    // 3. Deleted while still pending: the finalizer stays (the erasure must
    // finish first; the finalizer is never patched away), and the status and
    // a DeletionWaitsForErasure event say why the object is still there.
    let deletion_time = || {
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_795_000_000).unwrap(),
        ))
    };
    let mut deleting = with_finalizer.clone();
    deleting.meta_mut().deletion_timestamp = deletion_time();
    let task = tokio::spawn(reconcile(Arc::new(deleting), kctx.clone()));
    let (waiting_status, send) =
        expect_request(&mut handle, Method::PATCH, &format!("{path}/status")).await;
    assert_eq!(waiting_status["status"]["phase"], "Pending");
    respond(send, serde_json::to_value(&with_finalizer).unwrap());
    let mut reasons = Vec::new();
    while !task.is_finished() {
        let Ok(Some((request, send))) =
            tokio::time::timeout(Duration::from_millis(500), handle.next_request()).await
        else {
            continue;
        };
        // A new event is POSTed; a repeated one PATCHes its series.
        assert!(
            request.uri().path().starts_with(EVENTS),
            "only events are written: {} {}",
            request.method(),
            request.uri()
        );
        let bytes = request.into_body().collect_bytes().await.expect("body");
        let event: Value = serde_json::from_slice(&bytes).expect("JSON event");
        if let Some(reason) = event["reason"].as_str() {
            reasons.push(reason.to_string());
        }
        respond(send, event);
    }
    let refused = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the cleanup ended")
        .unwrap();
    assert!(refused.is_err(), "a pending erasure keeps its finalizer");
    assert!(
        reasons.iter().any(|r| r == "DeletionWaitsForErasure"),
        "{reasons:?}"
    );
    assert_no_request(&mut handle).await;

    // 4. Deleted once completed: the finalizer is removed; nothing else.
    let mut completed = with_finalizer.clone();
    completed.meta_mut().deletion_timestamp = deletion_time();
    let mut status = serde_json::from_value::<archiver_operator::api::DeletionRequestStatus>(
        status_patch["status"].clone(),
    )
    .unwrap();
    status.phase = Some(archiver_operator::api::deletion_request::DeletionPhase::Completed);
    completed.status = Some(status);
    let task = tokio::spawn(reconcile(Arc::new(completed), kctx.clone()));
    let (remove, send) = expect_request(&mut handle, Method::PATCH, path).await;
    let text = remove.to_string();
    assert!(
        text.contains("remove") || text.contains("finalizers"),
        "{text}"
    );
    respond(send, serde_json::to_value(&request).unwrap());
    task.await.unwrap().expect("finalizer removed");
    assert_no_request(&mut handle).await;
}

const SECRET: &str = "/api/v1/namespaces/archiver/secrets/redis-shard-0";
const SHARD_STATUS: &str =
    "/apis/archiver.uptime.dev/v1alpha1/namespaces/archiver/archivershards/shard-0/status";

fn redis_secret() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis-shard-0", "namespace": "archiver"},
           "data": {"url": "cmVkaXM6Ly9zZWNyZXQtaG9zdDo2Mzc5LzA="}})
}

#[tokio::test]
async fn shard_owns_a_worker_deployment_and_reports_its_watermark() {
    let db = TestDatabase::new().await;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (kctx, _) = mock_context(true);
    let mut ctx = kctx.ctx.clone();
    ctx.secrets = SecretSource::Kubernetes(client.clone());
    ctx.db = Some(db.pool.clone());
    ctx.workers = WorkerHost::Kubernetes(Arc::new(KubeWorkers::new(
        client.clone(),
        "archiver-operator:test".into(),
        archiver_operator::api::common::SecretKeyRef {
            name: "archiver-database".into(),
            key: "url".into(),
        },
        "archiver-worker".into(),
    )));
    sqlx::query(
        "INSERT INTO archive_watermark (shard_id, last_minute, owner, taken_at, expires_at, rows_archived_last_tick) \
         VALUES (0, '2026-11-23 08:55+00', 'worker-pod-1', now(), now(), 1234)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let kctx = Arc::new(KubeContext::new(ctx, client, Some("operator-0".into())));
    let shard = with_meta(example::<ArchiverShard>("archiver-shard.yaml"), 2);
    let task = tokio::spawn(reconcile(Arc::new(shard.clone()), kctx));

    let (_, send) = expect_request(&mut handle, Method::GET, SECRET).await;
    respond(send, redis_secret());
    let (deployment, send) = expect_request(
        &mut handle,
        Method::PATCH,
        "/apis/apps/v1/namespaces/archiver/deployments/archiver-worker-shard-0",
    )
    .await;
    assert!(
        deployment["__query"]
            .as_str()
            .unwrap()
            .contains("fieldManager=archiver-operator")
    );
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["kind"],
        "ArchiverShard"
    );
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["controller"],
        true
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["args"],
        json!(["worker", "--shard", "archiver/shard-0"])
    );
    assert_eq!(
        container["env"][1]["valueFrom"]["secretKeyRef"]["name"],
        "redis-shard-0"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "archiver-worker"
    );
    assert!(
        !deployment.to_string().contains("secret-host"),
        "the URL goes by reference, never by value"
    );
    respond(send, deployment.clone());

    let (patch, send) = expect_request(&mut handle, Method::PATCH, SHARD_STATUS).await;
    let status = &patch["status"];
    assert_eq!(ready(status), ("True", "Reconciled"));
    assert_eq!(status["workerDeployment"], "archiver-worker-shard-0");
    assert_eq!(status["lastArchivedMinute"], "2026-11-23T08:55:00Z");
    assert_eq!(status["lockOwner"], "worker-pod-1");
    assert_eq!(status["rowsArchivedLastTick"], 1234);
    assert_eq!(status["lagSeconds"], 240, "09:00 minus the end of 08:55");
    let lag = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "LagWithinSLO")
        .unwrap();
    assert_eq!(lag["status"], "False", "240 s is above the 180 s SLO");
    respond(send, serde_json::to_value(&shard).unwrap());
    let (event, send) = expect_request(&mut handle, Method::POST, EVENTS).await;
    respond(send, event);
    task.await.unwrap().expect("reconciled");
}

#[tokio::test]
async fn shard_without_database_or_secret_fails_with_the_reason_and_backs_off() {
    let (kctx, mut handle) = mock_context(true);
    let shard = with_meta(example::<ArchiverShard>("archiver-shard.yaml"), 2);

    // No database: Ready False saying so, a Warning event, an error.
    let task = tokio::spawn(reconcile(Arc::new(shard.clone()), kctx.clone()));
    let (_, send) = expect_request(&mut handle, Method::GET, SECRET).await;
    respond(send, redis_secret());
    let (patch, send) = expect_request(&mut handle, Method::PATCH, SHARD_STATUS).await;
    assert_eq!(ready(&patch["status"]), ("False", "ReconcileFailed"));
    assert!(
        patch.to_string().contains("no database configured"),
        "{patch}"
    );
    assert!(
        !patch.to_string().contains("secret-host"),
        "the Redis URL must not reach status"
    );
    respond(send, serde_json::to_value(&shard).unwrap());
    let (event, send) = expect_request(&mut handle, Method::POST, EVENTS).await;
    assert_eq!(event["type"], "Warning");
    assert!(
        !event.to_string().contains("secret-host"),
        "the Redis URL must not reach an event"
    );
    respond(send, event);
    task.await.unwrap().expect_err("no database is an error");

    // The Secret is gone: the reason names it.
    let task = tokio::spawn(reconcile(Arc::new(shard.clone()), kctx.clone()));
    let (_, send) = expect_request(&mut handle, Method::GET, SECRET).await;
    respond_status(
        send,
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
               "message": "secrets \"redis-shard-0\" not found"}),
    );
    let (patch, send) = expect_request(&mut handle, Method::PATCH, SHARD_STATUS).await;
    assert_eq!(ready(&patch["status"]), ("False", "ReconcileFailed"));
    let message = patch["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("redis-shard-0"), "{message}");
    respond(send, serde_json::to_value(&shard).unwrap());
    // The same Warning again: kube's recorder updates the event series.
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("an event update")
        .expect("client alive");
    assert_eq!(request.method(), Method::PATCH);
    assert!(
        request.uri().path().starts_with(EVENTS),
        "{}",
        request.uri()
    );
    respond(send, json!({}));
    let error = task
        .await
        .unwrap()
        .expect_err("a missing Secret fails the reconcile");

    let first = error_policy(Arc::new(shard.clone()), &error, kctx.clone());
    let second = error_policy(Arc::new(shard), &error, kctx);
    assert_eq!(first, Action::requeue(backoff(1)));
    assert_eq!(second, Action::requeue(backoff(2)));
    assert!(backoff(2) > backoff(1));
    assert_eq!(backoff(30), Duration::from_secs(300));
}
