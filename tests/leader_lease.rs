//! Leader election on a Kubernetes Lease (`runtime::leader::kubernetes_lease`)
//! against a fake Lease API: two operators, each with its own client, share
//! one Lease the way two replicas share one in a cluster. The fake keeps the
//! object and answers GET, POST (create, 409 when it exists) and PATCH
//! (strategic merge; server-side apply refuses, 409, to take
//! `holderIdentity` from another holder) like the API server does for these
//! requests. No API server can run here; this is the closest stand-in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use archiver_operator::runtime::leader::{Leadership, kubernetes_lease_with};

const NAMESPACE: &str = "archiver";
const LEASE: &str = "archiver-operator-leader";

/// The one Lease object, shared by every client of the fake.
#[derive(Clone, Default)]
struct FakeLeases {
    lease: Arc<Mutex<Option<Value>>>,
    version: Arc<Mutex<u64>>,
}

impl FakeLeases {
    /// A client whose requests this fake answers, and a switch that cuts it
    /// off (every request then fails with 503, as from a partitioned node).
    fn client(&self) -> (Client, Arc<AtomicBool>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = self.clone();
        let cut_off = Arc::new(AtomicBool::new(false));
        let switch = cut_off.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let response = if switch.load(Ordering::SeqCst) {
                    status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
                } else {
                    fake.answer(request).await
                };
                respond.send_response(response);
            }
        });
        (Client::new(service, NAMESPACE), cut_off)
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let collection = format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases");
        let object = format!("{collection}/{LEASE}");
        let mut lease = self.lease.lock().unwrap();
        match (method, path.as_str()) {
            (Method::GET, p) if p == object => match lease.as_ref() {
                Some(found) => reply(StatusCode::OK, found.clone()),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            (Method::POST, p) if p == collection => {
                if lease.is_some() {
                    return status(StatusCode::CONFLICT, "AlreadyExists");
                }
                let mut created: Value = serde_json::from_slice(&body).unwrap();
                created["metadata"]["resourceVersion"] = json!(self.next_version());
                *lease = Some(created.clone());
                reply(StatusCode::CREATED, created)
            }
            (Method::PATCH, p) if p == object => {
                let Some(current) = lease.as_mut() else {
                    return status(StatusCode::NOT_FOUND, "NotFound");
                };
                let patch: Value = if content_type.contains("apply-patch+yaml") {
                    serde_yaml_ng::from_slice(&body).unwrap()
                } else {
                    serde_json::from_slice(&body).unwrap()
                };
                let holder = current["spec"]["holderIdentity"].clone();
                let wanted = &patch["spec"]["holderIdentity"];
                // Server-side apply: the holder field belongs to the holder's
                // field manager; taking it over without force is a conflict.
                if content_type.contains("apply-patch")
                    && holder.is_string()
                    && wanted.is_string()
                    && holder != *wanted
                {
                    return status(StatusCode::CONFLICT, "Conflict");
                }
                if let Some(fields) = patch["spec"].as_object() {
                    for (name, value) in fields {
                        if value.is_null() {
                            if let Some(spec) = current["spec"].as_object_mut() {
                                spec.remove(name);
                            }
                        } else {
                            current["spec"][name] = value.clone();
                        }
                    }
                }
                current["metadata"]["resourceVersion"] = json!(self.next_version());
                reply(StatusCode::OK, current.clone())
            }
            (method, path) => status(
                StatusCode::NOT_FOUND,
                &format!("the fake has no {method} {path}"),
            ),
        }
    }

    fn next_version(&self) -> String {
        let mut version = self.version.lock().unwrap();
        *version += 1;
        version.to_string()
    }

    fn holder(&self) -> Option<String> {
        self.lease
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_string))
    }
}

fn reply(code: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn status(code: StatusCode, reason: &str) -> Response<Body> {
    reply(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": reason, "reason": reason, "code": code.as_u16(),
        }),
    )
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn operator(fake: &FakeLeases, identity: &str) -> Leadership {
    operator_with_switch(fake, identity).await.0
}

async fn operator_with_switch(fake: &FakeLeases, identity: &str) -> (Leadership, Arc<AtomicBool>) {
    let (client, cut_off) = fake.client();
    let (leadership, _task) = kubernetes_lease_with(client, NAMESPACE, LEASE, identity, 3, 1)
        .await
        .expect("the lease manager starts");
    (leadership, cut_off)
}

#[tokio::test]
async fn one_replica_leads_the_other_waits_and_takes_over_when_it_steps_down() {
    let fake = FakeLeases::default();
    let first = operator(&fake, "replica-a").await;
    until("replica-a leads", || first.is_leader()).await;
    assert_eq!(fake.holder().as_deref(), Some("replica-a"));

    let second = operator(&fake, "replica-b").await;
    // Several renewals of the first replica's lease go by without the
    // leadership flickering.
    for _ in 0..100 {
        assert!(first.is_leader(), "the leader keeps renewing");
        assert!(!second.is_leader(), "never two leaders");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.holder().as_deref(), Some("replica-a"));

    // The first replica shuts down: it releases the Lease and the standby
    // takes over.
    drop(first);
    until("replica-b leads", || second.is_leader()).await;
    assert_eq!(fake.holder().as_deref(), Some("replica-b"));
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_steps_down_and_the_standby_takes_over() {
    let fake = FakeLeases::default();
    let (first, cut_off) = operator_with_switch(&fake, "replica-a").await;
    until("replica-a leads", || first.is_leader()).await;
    let second = operator(&fake, "replica-b").await;

    // replica-a can no longer renew: once its Lease has expired the other
    // replica takes it, and replica-a must stop acting as leader.
    cut_off.store(true, Ordering::SeqCst);
    until("replica-b leads", || {
        assert!(
            !(first.is_leader() && second.is_leader()),
            "two leaders at once"
        );
        second.is_leader()
    })
    .await;
    assert_eq!(fake.holder().as_deref(), Some("replica-b"));
    assert!(!first.is_leader(), "replica-a stepped down before");
}
