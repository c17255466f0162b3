//! A PartitionSchedule and the RetentionPolicy it references, against the
//! real API server: the schedule sees the policy in force as soon as the
//! policy's reconciler has accepted it (both are applied in one go, and the
//! schedule's first reconcile comes before that), and while no policy is in
//! force it says so with a stable message, looks again within a bound, and
//! writes nothing until something changes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use archiver_operator::testing::TestDatabase;
use serde_json::{Value, json};

use super::flows::{apply, chart_identity, condition, example, wait_for};
use super::{Operator, get_json};
use crate::common::control_plane::{ControlPlane, with_crds};

const SCHEDULE: &str = "partitionschedule/probe-minute";
const POLICY: &str = "retentionpolicy/tiers";
/// How soon after its policy is Ready the schedule must see it in force:
/// well under both the schedule's idle requeue (120 s) and its requeue while
/// the policy is not in force (20 s), so only a reconcile woken by the
/// policy's acceptance meets it.
const PROMPTLY: Duration = Duration::from_secs(10);

/// Whether `object` has condition `type_` with `status` and `reason`.
fn has(object: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(object, type_).is_some_and(|c| c["status"] == status && c["reason"] == reason)
}

/// The operator's count of reconciles of `kind`, from its /metrics.
fn reconciles(operator: &Operator, kind: &str) -> u64 {
    let prefix = format!("archiver_reconciles_total{{kind=\"{kind}\"}} ");
    operator
        .reconcile_metrics()
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// The events about the schedule, by name, with their resourceVersion: a
/// repeated event bumps its series, and so its resourceVersion.
fn schedule_events(cluster: &ControlPlane, namespace: &str) -> BTreeMap<String, String> {
    let listed = cluster.kubectl(&["get", "events.events.k8s.io", "-n", namespace, "-o", "json"]);
    assert!(listed.success, "{}", listed.stderr);
    let events: Value = serde_json::from_str(&listed.stdout).expect("kubectl prints JSON");
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["regarding"]["name"] == "probe-minute")
        .map(|event| {
            (
                event["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                event["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
            )
        })
        .collect()
}

/// The schedule's resourceVersion (a status write bumps it) and its events.
fn writes_so_far(cluster: &ControlPlane, namespace: &str) -> (Value, BTreeMap<String, String>) {
    let live = get_json(cluster, namespace, SCHEDULE);
    (live, schedule_events(cluster, namespace))
}

/// Nothing about the schedule is written over `quiet`.
#[track_caller]
fn assert_quiet(cluster: &ControlPlane, namespace: &str, quiet: Duration, operator: &Operator) {
    let (before, events_before) = writes_so_far(cluster, namespace);
    std::thread::sleep(quiet);
    let (after, events_after) = writes_so_far(cluster, namespace);
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"],
        "the schedule's status was rewritten while nothing changed:\nbefore {:#}\nafter {:#}\noperator log:\n{}",
        before["status"],
        after["status"],
        operator.log()
    );
    assert_eq!(
        events_before, events_after,
        "events about the schedule were written while nothing changed"
    );
}

/// Polls until the policy is Ready, then until the schedule sees it in force
/// (DropBlocked False), which must follow within [`PROMPTLY`].
fn assert_schedule_sees_the_policy_promptly(
    cluster: &ControlPlane,
    namespace: &str,
    operator: &Operator,
) {
    wait_for(
        cluster,
        namespace,
        POLICY,
        Duration::from_secs(90),
        "Ready=True",
        operator,
        |live| has(live, "Ready", "True", "Reconciled"),
    );
    let ready_at = Instant::now();
    let schedule = wait_for(
        cluster,
        namespace,
        SCHEDULE,
        PROMPTLY,
        "the RetentionPolicy in force (DropBlocked False)",
        operator,
        |live| has(live, "DropBlocked", "False", "NotBlocked"),
    );
    eprintln!(
        "{namespace}: the schedule saw its policy in force {:?} after the policy was Ready",
        ready_at.elapsed()
    );
    assert!(
        has(&schedule, "Ready", "True", "Reconciled"),
        "{schedule:#}"
    );
}

/// `kubectl apply -f examples/` applies the RetentionPolicy and the
/// PartitionSchedule together; the schedule's first reconcile finds the
/// policy not in force yet (the operator is still listing policies, or the
/// policy's reconciler has not accepted it). Once the policy is Ready the
/// schedule sees it in force promptly, not at its next periodic reconcile
/// (it used to keep `DropBlocked: NoRetentionPolicy` for two minutes, and
/// then change its status: the steady state was not steady).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_applied_with_its_policy_sees_it_in_force_once_the_policy_is_ready() {
    let cluster = with_crds();
    let namespace = "schedule-with-policy";
    cluster.ensure_namespace(namespace).expect("namespace");
    let database = TestDatabase::new().await;
    let (_credentials, kubeconfig) =
        chart_identity(cluster, namespace, &json!({"watchNamespace": namespace}));
    apply(cluster, &example("retention-policy.yaml", namespace));
    apply(cluster, &example("partition-schedule.yaml", namespace));
    let operator = Operator::start_as(&kubeconfig, &database.url, namespace, Some(namespace));

    assert_schedule_sees_the_policy_promptly(cluster, namespace, &operator);
}

/// A schedule whose policy does not exist: it says so (a reason and message
/// that do not change while the state does not), looks again within a bound
/// without writing anything, picks the policy up as soon as it is Ready,
/// and then settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_without_its_policy_waits_quietly_and_picks_it_up_when_ready() {
    let cluster = with_crds();
    let namespace = "schedule-policy-later";
    cluster.ensure_namespace(namespace).expect("namespace");
    let database = TestDatabase::new().await;
    let (_credentials, kubeconfig) =
        chart_identity(cluster, namespace, &json!({"watchNamespace": namespace}));
    let operator = Operator::start_as(&kubeconfig, &database.url, namespace, Some(namespace));
    apply(cluster, &example("partition-schedule.yaml", namespace));

    let waiting = wait_for(
        cluster,
        namespace,
        SCHEDULE,
        Duration::from_secs(90),
        "DropBlocked NoRetentionPolicy",
        &operator,
        |live| {
            has(live, "DropBlocked", "True", "NoRetentionPolicy")
                && condition(live, "DropBlocked").is_some_and(|c| {
                    c["message"]
                        .as_str()
                        .is_some_and(|m| !m.contains("still listing"))
                })
        },
    );
    assert!(has(&waiting, "Ready", "True", "Reconciled"), "{waiting:#}");

    // Re-checked within the bound (20 s) while nothing is written: the
    // reason and message are the same every time.
    let before = reconciles(&operator, "PartitionSchedule");
    assert_quiet(cluster, namespace, Duration::from_secs(30), &operator);
    let after = reconciles(&operator, "PartitionSchedule");
    assert!(
        after > before,
        "the schedule did not look for its policy again within 30 s ({before} reconciles, then {after})"
    );
    let message = condition(&waiting, "DropBlocked").expect("DropBlocked")["message"]
        .as_str()
        .expect("a message")
        .to_string();
    assert_eq!(
        message,
        format!(
            "RetentionPolicy {namespace}/tiers is not in force (no RetentionPolicy exists): \
             nothing is dropped"
        )
    );

    apply(cluster, &example("retention-policy.yaml", namespace));
    assert_schedule_sees_the_policy_promptly(cluster, namespace, &operator);
    // Settled: no status rewrite, no repeated event (a schedule with its
    // policy in force is re-checked every 120 s, not every 20 s).
    assert_quiet(cluster, namespace, Duration::from_secs(25), &operator);
}
