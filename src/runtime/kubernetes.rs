//! The Kubernetes source: one kube-rs `Controller` per kind, feeding the
//! domain reconcilers and writing back status (server-side apply), events
//! and finalizers.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector;
use kube::runtime::utils::{PredicateConfig, WatchStreamExt};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tracing::Instrument;

use super::context::Context;
use super::reconcile::{
    CleanupOutcome, Event, EventType, FINALIZER, Managed, ReconcileError, failed_status,
    failure_event, is_paused, object_label,
};
use super::workers::WorkerHost;
use crate::api::{ArchiverShard, DeletionRequest, PartitionSchedule, RetentionPolicy};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "archiver-operator";

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("reconcile of {object} failed: {source}")]
    Reconcile {
        object: String,
        #[source]
        source: ReconcileError,
    },
    #[error("writing status of {object}: {source}")]
    Status {
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("finalizer of {object}: {message}")]
    Finalizer { object: String, message: String },
}

/// What the Kubernetes adapters share: the domain context, the API client,
/// the event recorder and each object's consecutive failures (for backoff).
pub struct KubeContext {
    pub ctx: Context,
    pub client: Client,
    pub recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
}

impl KubeContext {
    pub fn new(ctx: Context, client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            ctx,
            client,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Backoff after `failures` consecutive failures: 5 s doubling, at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    let seconds = 5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(6));
    Duration::from_secs(seconds.min(300))
}

/// Reconciles one object: honours the pause annotation, manages the
/// finalizer of kinds that need one, runs the domain reconciler, applies the
/// status and publishes events.
pub async fn reconcile<K>(object: Arc<K>, kctx: Arc<KubeContext>) -> Result<Action, KubeSourceError>
where
    K: Managed + Resource<Scope = NamespaceResourceScope>,
{
    if is_paused(object.as_ref()) {
        tracing::debug!(object = %object_label(object.as_ref()), "paused by annotation");
        return Ok(Action::await_change());
    }
    let namespace = object.namespace().unwrap_or_else(|| "default".into());
    let api: Api<K> = Api::namespaced(kctx.client.clone(), &namespace);
    if !K::uses_finalizer() {
        return apply(object, &api, &kctx).await;
    }
    let label = object_label(object.as_ref());
    finalizer(&api, FINALIZER, object, |event| async {
        match event {
            FinalizerEvent::Apply(object) => apply(object, &api, &kctx).await,
            FinalizerEvent::Cleanup(object) => cleanup(object, &api, &kctx).await,
        }
    })
    .await
    .map_err(|error| match error {
        kube::runtime::finalizer::Error::ApplyFailed(inner)
        | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner,
        other => KubeSourceError::Finalizer {
            object: label,
            message: other.to_string(),
        },
    })
}

/// The cleanup of a deleted object. Waiting keeps the finalizer (an error
/// to kube's finalizer helper, retried with backoff) after writing the
/// status and events, so `kubectl get` and `kubectl describe` say why the
/// object is still there.
async fn cleanup<K>(
    object: Arc<K>,
    api: &Api<K>,
    kctx: &KubeContext,
) -> Result<Action, KubeSourceError>
where
    K: Managed + Resource<Scope = NamespaceResourceScope>,
{
    let label = object_label(object.as_ref());
    let result = object.cleanup(&kctx.ctx).await;
    match result {
        Ok(CleanupOutcome::Finished) => Ok(Action::await_change()),
        Ok(CleanupOutcome::Waiting { outcome, why }) => {
            write_status(object.as_ref(), api, &outcome.status).await?;
            publish(kctx, object.as_ref(), &outcome.events).await;
            Err(KubeSourceError::Reconcile {
                object: label,
                source: ReconcileError::ErasureNotCompleted { why },
            })
        }
        Err(source) => Err(KubeSourceError::Reconcile {
            object: label,
            source,
        }),
    }
}

async fn apply<K>(
    object: Arc<K>,
    api: &Api<K>,
    kctx: &KubeContext,
) -> Result<Action, KubeSourceError>
where
    K: Managed + Resource<Scope = NamespaceResourceScope>,
{
    let label = object_label(object.as_ref());
    let span = tracing::info_span!("reconcile", kind = %K::kind(&()), namespace = %object.namespace().unwrap_or_default(), object = %object.name_any());
    let started = Instant::now();
    let result = object.reconcile(&kctx.ctx).instrument(span).await;
    let elapsed = started.elapsed().as_secs_f64();
    kctx.ctx.metrics.observe_reconcile(
        &K::kind(&()),
        elapsed,
        result.as_ref().err().map(ReconcileError::metric_label),
    );
    match result {
        Ok(outcome) => {
            kctx.failures().remove(&label);
            write_status(object.as_ref(), api, &outcome.status).await?;
            publish(kctx, object.as_ref(), &outcome.events).await;
            Ok(Action::requeue(outcome.requeue_after))
        }
        Err(source) => {
            let status = failed_status(object.as_ref(), &source, kctx.ctx.clock.now());
            write_status(object.as_ref(), api, &status).await?;
            publish(kctx, object.as_ref(), &[failure_event(&source)]).await;
            Err(KubeSourceError::Reconcile {
                object: label,
                source,
            })
        }
    }
}

/// Server-side applies `status` unless it is what the object already has.
async fn write_status<K>(
    object: &K,
    api: &Api<K>,
    status: &K::Status,
) -> Result<(), KubeSourceError>
where
    K: Managed,
{
    if object.status() == Some(status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| KubeSourceError::Status {
        object: object_label(object),
        source,
    })
}

async fn publish<K: Managed>(kctx: &KubeContext, object: &K, events: &[Event]) {
    let reference = object.object_ref(&());
    for event in events {
        let kube_event = KubeEvent {
            type_: match event.type_ {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: event.reason.clone(),
            note: Some(event.note.chars().take(1000).collect()),
            action: event.action.clone(),
            secondary: None,
        };
        // An event that cannot be written must not fail the reconcile.
        if let Err(error) = kctx.recorder.publish(&kube_event, &reference).await {
            tracing::warn!(%error, object = %object_label(object), "could not publish event");
        }
    }
}

/// Requeue after a failure with per-object exponential backoff.
pub fn error_policy<K>(object: Arc<K>, error: &KubeSourceError, kctx: Arc<KubeContext>) -> Action
where
    K: Managed,
{
    let label = object_label(object.as_ref());
    let failures = {
        let mut map = kctx.failures();
        let count = map.entry(label.clone()).or_insert(0);
        *count += 1;
        *count
    };
    let delay = backoff(failures);
    tracing::warn!(object = %label, %error, failures, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

/// What should wake a reconcile: a new generation (spec), annotations (pause,
/// confirm-shrink), finalizers and deletion. Status writes alone do not,
/// so writing status never loops.
pub fn reconcile_trigger<K: Resource>(object: &K) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    object.meta().generation.hash(&mut hasher);
    object.annotations().hash(&mut hasher);
    object.finalizers().hash(&mut hasher);
    object.meta().deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

fn controller_for<K>(client: &Client, namespace: Option<&str>) -> Controller<K>
where
    K: Managed + Resource<Scope = NamespaceResourceScope>,
{
    controller_and_store(client, namespace).0
}

/// A controller and the watch cache it reconciles from.
fn controller_and_store<K>(
    client: &Client,
    namespace: Option<&str>,
) -> (Controller<K>, reflector::Store<K>)
where
    K: Managed + Resource<Scope = NamespaceResourceScope>,
{
    let api = api_for::<K>(client, namespace);
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(reconcile_trigger::<K>, PredicateConfig::default());
    (Controller::for_stream(stream, reader.clone()), reader)
}

/// Waits until a watch cache has listed every object; false when its writer
/// is gone. kube-runtime's `Store::wait_until_ready` keeps one waker (a
/// oneshot channel), so of several tasks waiting on one store only the last
/// to poll is woken — and the controller reconciling from the store waits on
/// it too. Asking again every 100 ms sees the cache ready whoever was woken.
async fn cache_listed<K>(store: &reflector::Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await {
            Ok(ready) => return ready.is_ok(),
            Err(_still_listing) => continue,
        }
    }
}

/// Keeps the policy directory equal to the watch cache of RetentionPolicies,
/// and only marks it ready once the cache has listed every object. Sends on
/// `changed` when it becomes ready and whenever the listing changes (what a
/// PartitionSchedule sees as in force depends on it).
async fn sync_policy_directory(
    store: reflector::Store<RetentionPolicy>,
    directory: Arc<crate::retention::directory::PolicyDirectory>,
    changed: tokio::sync::watch::Sender<()>,
) {
    if !cache_listed(&store).await {
        return;
    }
    let mut last = None;
    loop {
        let policies: std::collections::BTreeMap<_, _> = store
            .state()
            .into_iter()
            .map(|policy| {
                (
                    super::manifests::namespaced_name(policy.as_ref()),
                    policy.spec.clone(),
                )
            })
            .collect();
        directory.replace_all(policies.clone());
        if last.as_ref() != Some(&policies) {
            changed.send_replace(());
            last = Some(policies);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One item per change seen by `receiver` (several changes between two
/// polls make one item: a reconcile reads the latest state anyway).
fn changes<T>(receiver: tokio::sync::watch::Receiver<T>) -> impl futures::Stream<Item = ()>
where
    T: Send + Sync + 'static,
{
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.changed().await.ok().map(|()| ((), receiver))
    })
}

/// Keeps the erasure's Redis targets to the shards in the watch cache: a
/// deleted ArchiverShard stops being erased into (its Redis may be gone or
/// handed to someone else).
async fn sync_shard_targets(
    store: reflector::Store<ArchiverShard>,
    targets: Arc<crate::erasure::redis_targets::RedisTargets>,
) {
    if !cache_listed(&store).await {
        return;
    }
    loop {
        let present = store
            .state()
            .iter()
            .map(|shard| super::manifests::namespaced_name(shard.as_ref()))
            .collect();
        targets.retain_shards(&present);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How often the leader retires the watermark rows no ArchiverShard names
/// (besides whenever the set of shards changes).
const RETIRE_INTERVAL: Duration = Duration::from_secs(30);

/// Retires the watermark rows of shards gone from the watch cache (deleted,
/// also while no operator ran), so the derived views stop waiting on them.
/// Only once the cache has listed every object: a cache still listing would
/// retire shards that exist. An operator that watches one namespace
/// (`--namespace`) retires only rows whose ArchiverShard was in that
/// namespace: operators of other namespaces may share the database.
async fn sync_shard_lifecycle(
    store: reflector::Store<ArchiverShard>,
    pool: sqlx::PgPool,
    clock: crate::clock::SharedClock,
    namespace: Option<String>,
) {
    use crate::archive::lifecycle::RetireScope;
    let scope = match &namespace {
        Some(namespace) => RetireScope::Namespace(namespace),
        None => RetireScope::Everything,
    };
    if !cache_listed(&store).await {
        return;
    }
    let mut last: Option<(Vec<i32>, Instant)> = None;
    loop {
        let mut present: Vec<i32> = store
            .state()
            .iter()
            .map(|shard| shard.spec.shard_id)
            .collect();
        present.sort_unstable();
        present.dedup();
        let due = match &last {
            Some((previous, at)) => *previous != present || at.elapsed() >= RETIRE_INTERVAL,
            None => true,
        };
        if due {
            match crate::archive::lifecycle::retire_absent(&pool, &present, scope, clock.now())
                .await
            {
                Ok(retired) => {
                    if !retired.is_empty() {
                        tracing::info!(shards = ?retired, "no ArchiverShard names these shards any more: retired, the derived views no longer wait on them");
                    }
                    last = Some((present, Instant::now()));
                }
                Err(error) => {
                    tracing::warn!(%error, "retiring the watermark rows of deleted shards failed");
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn drive<K>(
    controller: Controller<K>,
    kctx: Arc<KubeContext>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) where
    K: Managed + Resource<Scope = NamespaceResourceScope>,
{
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<K>, error_policy::<K>, kctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
}

/// What a term of leadership starts from: nothing enforced and no list of
/// policies. The RetentionPolicy reconciles of this term publish what is in
/// force, and the directory is ready again once this term's watch cache
/// has listed: an earlier term's entries may be stale (another leader may
/// have accepted other tier windows, or a policy may have been created,
/// while this process stood by), and until both are fresh nothing is
/// dropped.
fn begin_term(ctx: &Context) {
    ctx.enforced_policies.clear();
    ctx.policies.forget();
}

/// Runs the four controllers until `shutdown` resolves.
pub async fn run_controllers(
    kctx: Arc<KubeContext>,
    namespace: Option<String>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let client = kctx.client.clone();
    let namespace = namespace.as_deref();
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    begin_term(&kctx.ctx);
    // A PartitionSchedule reads which policy is in force from the registry
    // and the directory, which the RetentionPolicy side fills in its own
    // time (usually after the schedule's first reconcile): a change of
    // either reconciles the schedules again, so they see the policy in
    // force as soon as it is, not at their next periodic reconcile.
    let registry_changes = changes(kctx.ctx.enforced_policies.changes());
    let (directory_changed, directory_changes) = tokio::sync::watch::channel(());
    let (policies, policy_store) = controller_and_store::<RetentionPolicy>(&client, namespace);
    let directory_sync = tokio::spawn(sync_policy_directory(
        policy_store,
        kctx.ctx.policies.clone(),
        directory_changed,
    ));
    let schedules = controller_for::<PartitionSchedule>(&client, namespace)
        .reconcile_all_on(registry_changes)
        .reconcile_all_on(changes(directory_changes));
    // The shard workers are Deployments the operator owns: a change to one
    // wakes its shard's reconcile.
    let deployments = api_for::<Deployment>(&client, namespace);
    let (shards, shard_store) = controller_and_store::<ArchiverShard>(&client, namespace);
    // Their watch cache also tells the worker host which Deployments are
    // already as they would be applied.
    let (deployment_cache, deployment_writer) = reflector::store();
    let owned = watcher(
        deployments,
        watcher::Config::default().labels("app.kubernetes.io/managed-by=archiver-operator"),
    )
    .default_backoff()
    .reflect(deployment_writer)
    .touched_objects();
    if let WorkerHost::Kubernetes(workers) = &kctx.ctx.workers {
        workers.watch_cache(deployment_cache);
    }
    let shards = shards.owns_stream(owned);
    let lifecycle_sync = kctx.ctx.db.clone().map(|pool| {
        tokio::spawn(sync_shard_lifecycle(
            shard_store.clone(),
            pool,
            kctx.ctx.clock.clone(),
            namespace.map(str::to_string),
        ))
    });
    let targets_sync = tokio::spawn(sync_shard_targets(
        shard_store,
        kctx.ctx.redis_targets.clone(),
    ));
    tokio::join!(
        drive(shards, kctx.clone(), stop(shutdown.clone())),
        drive(policies, kctx.clone(), stop(shutdown.clone())),
        drive(schedules, kctx.clone(), stop(shutdown.clone())),
        drive(
            controller_for::<DeletionRequest>(&client, namespace),
            kctx.clone(),
            stop(shutdown.clone())
        ),
    );
    directory_sync.abort();
    targets_sync.abort();
    if let Some(lifecycle_sync) = lifecycle_sync {
        lifecycle_sync.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erasure::redis_targets::RedisTargets;
    use crate::retention::directory::InForce;
    use crate::runtime::config::SecretString;

    fn shard(name: &str) -> ArchiverShard {
        let mut shard: ArchiverShard =
            serde_yaml_ng::from_str(include_str!("../../examples/archiver-shard.yaml"))
                .expect("the example parses");
        shard.metadata.name = Some(name.to_string());
        shard.metadata.namespace = Some("archiver".to_string());
        shard
    }

    fn policy(name: &str) -> RetentionPolicy {
        let mut policy: RetentionPolicy =
            serde_yaml_ng::from_str(include_str!("../../examples/retention-policy.yaml"))
                .expect("the example parses");
        policy.metadata.name = Some(name.to_string());
        policy.metadata.namespace = Some("archiver".to_string());
        policy
    }

    /// A new term of leadership trusts nothing of an earlier one: the
    /// policy published then is no longer in force for the schedule, and the
    /// list of policies is loading again (a policy created while this
    /// process stood by must not go unseen), until this term refills both.
    #[test]
    fn a_term_of_leadership_starts_with_no_policy_in_force_and_no_list() {
        let ctx = Context::new(Arc::new(crate::clock::SystemClock));
        let spec = policy("tiers").spec;
        ctx.policies
            .replace_all([("archiver/tiers".to_string(), spec.clone())]);
        ctx.enforced_policies.publish("archiver", "tiers", spec);
        assert!(matches!(
            ctx.enforced_policies
                .in_force(&ctx.policies, "archiver", "tiers"),
            crate::partitions::policy_registry::PolicyLookup::Found(_)
        ));
        begin_term(&ctx);
        assert_eq!(ctx.policies.in_force(), InForce::NotReady);
        assert_eq!(
            ctx.enforced_policies
                .in_force(&ctx.policies, "archiver", "tiers"),
            crate::partitions::policy_registry::PolicyLookup::Missing(
                crate::partitions::policy_registry::NotInForce::StillListing
            )
        );
    }

    /// Found against a real API server: the RetentionPolicy controller waits
    /// for the same watch cache as the directory sync, and kube-runtime's
    /// `Store::wait_until_ready` wakes only the last of several waiters. The
    /// sync slept forever, so no policy was ever in force (Ready=False "still
    /// loading" for good, nothing enforced).
    #[tokio::test]
    async fn the_policy_directory_is_filled_while_a_controller_waits_for_the_same_cache() {
        let (store, mut writer) = reflector::store::<RetentionPolicy>();
        let directory = Arc::new(crate::retention::directory::PolicyDirectory::new());
        let (changed, _changes) = tokio::sync::watch::channel(());
        let sync = tokio::spawn(sync_policy_directory(
            store.clone(),
            directory.clone(),
            changed,
        ));
        tokio::task::yield_now().await;
        // The controller reconciling from this cache waits on it too, after the sync.
        let controller = tokio::spawn({
            let store = store.clone();
            async move { store.wait_until_ready().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(policy("tiers")));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let deadline = Instant::now() + Duration::from_secs(5);
        while directory.in_force() == InForce::NotReady && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sync.abort();
        assert!(controller.await.expect("the controller's wait").is_ok());
        assert!(
            matches!(directory.in_force(), InForce::One { ref label, .. } if label == "archiver/tiers"),
            "{:?}",
            directory.in_force()
        );
    }

    /// The PartitionSchedules are reconciled again when the directory
    /// becomes ready and whenever its listing changes (a second policy, a
    /// deleted one), not on every pass of the sync.
    #[tokio::test]
    async fn the_policy_directory_announces_when_it_is_ready_and_when_it_changes() {
        let (store, mut writer) = reflector::store::<RetentionPolicy>();
        let directory = Arc::new(crate::retention::directory::PolicyDirectory::new());
        let (changed, mut changes) = tokio::sync::watch::channel(());
        let sync = tokio::spawn(sync_policy_directory(
            store.clone(),
            directory.clone(),
            changed,
        ));
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(policy("tiers")));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("announced once listed")
            .expect("the sync is running");
        assert!(matches!(directory.in_force(), InForce::One { .. }));
        // Passes over an unchanged listing announce nothing.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!changes.has_changed().expect("the sync is running"));
        writer.apply_watcher_event(&watcher::Event::Apply(policy("other")));
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("announced once a second policy is listed")
            .expect("the sync is running");
        assert!(matches!(directory.in_force(), InForce::Conflict(_)));
        sync.abort();
    }

    /// A shard deleted (gone from the watch cache) is retired in
    /// archive_watermark, so the derived views stop waiting on it; a row no
    /// ArchiverShard names at startup too. Nothing is retired before the
    /// cache has listed every object.
    #[tokio::test]
    async fn a_shard_gone_from_the_watch_cache_is_retired() {
        let db = crate::testing::TestDatabase::new().await;
        for shard_id in [0, 5, 9] {
            sqlx::query(
                "INSERT INTO archive_watermark (shard_id, last_minute, owner, expires_at) \
                 VALUES ($1, now(), 't', now())",
            )
            .bind(shard_id)
            .execute(&db.pool)
            .await
            .expect("a watermark row");
        }
        let lifecycles = || async {
            sqlx::query_as::<_, (i32, String)>(
                "SELECT shard_id, lifecycle FROM archive_watermark ORDER BY shard_id",
            )
            .fetch_all(&db.pool)
            .await
            .expect("lifecycles")
        };
        let with_id = |name: &str, id: i32| {
            let mut shard = shard(name);
            shard.spec.shard_id = id;
            shard
        };
        let (store, mut writer) = reflector::store::<ArchiverShard>();
        let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
        let sync = tokio::spawn(sync_shard_lifecycle(store, db.pool.clone(), clock, None));
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(with_id("zero", 0)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            lifecycles().await.iter().all(|(_, l)| l == "active"),
            "nothing is retired while the cache is still listing"
        );
        writer.apply_watcher_event(&watcher::Event::InitApply(with_id("five", 5)));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let wait_for = |expected: Vec<(i32, String)>| {
            let lifecycles = &lifecycles;
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let now = lifecycles().await;
                    if now == expected || Instant::now() > deadline {
                        return now;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let row = |id: i32, lifecycle: &str| (id, lifecycle.to_string());
        assert_eq!(
            wait_for(vec![row(0, "active"), row(5, "active"), row(9, "retired")]).await,
            vec![row(0, "active"), row(5, "active"), row(9, "retired")]
        );
        writer.apply_watcher_event(&watcher::Event::Delete(with_id("five", 5)));
        assert_eq!(
            wait_for(vec![row(0, "active"), row(5, "retired"), row(9, "retired")]).await,
            vec![row(0, "active"), row(5, "retired"), row(9, "retired")]
        );
        sync.abort();
    }

    #[tokio::test]
    async fn a_shard_gone_from_the_watch_cache_is_no_longer_erased_into() {
        let (store, mut writer) = reflector::store::<ArchiverShard>();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(shard("kept")));
        writer.apply_watcher_event(&watcher::Event::InitApply(shard("deleted")));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let targets = Arc::new(RedisTargets::new());
        targets.publish_shard("archiver/kept", SecretString::new("redis://a/"));
        targets.publish_shard("archiver/deleted", SecretString::new("redis://b/"));
        let sync = tokio::spawn(sync_shard_targets(store, targets.clone()));

        writer.apply_watcher_event(&watcher::Event::Delete(shard("deleted")));
        let labels = || -> Vec<String> { targets.targets().into_iter().map(|t| t.label).collect() };
        let deadline = Instant::now() + Duration::from_secs(5);
        while labels().len() > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sync.abort();
        assert_eq!(labels(), vec!["archiver/kept"]);
    }
}
