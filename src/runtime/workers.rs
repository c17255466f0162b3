//! Where the drain workers of ArchiverShards run: one Deployment per shard in
//! a cluster, a background task per shard in standalone mode, or one inline
//! tick per reconcile for `run --once`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector;
use kube::{Resource, ResourceExt};
use sqlx::PgPool;
use tokio::task::JoinHandle;

use super::config::SecretString;
use super::kubernetes::FIELD_MANAGER;
use super::reconcile::ReconcileError;
use crate::api::ArchiverShard;
use crate::api::common::SecretKeyRef;
use crate::archive::worker::{TICK_BUDGET, TickReport, Worker, run_forever};
use crate::clock::SharedClock;
use crate::metrics::Metrics;

/// How a shard's worker is run.
#[derive(Clone)]
pub enum WorkerHost {
    /// Nothing runs (adapter tests, or no database).
    Disabled,
    /// `run --once`: one tick inside the reconcile, on the pass's clock.
    Inline,
    /// Standalone: a task per shard in this process.
    InProcess(Arc<InProcessWorkers>),
    /// Cluster: a Deployment per shard running `archiver-operator worker`.
    Kubernetes(Arc<KubeWorkers>),
}

impl std::fmt::Debug for WorkerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Disabled => "WorkerHost::Disabled",
            Self::Inline => "WorkerHost::Inline",
            Self::InProcess(_) => "WorkerHost::InProcess",
            Self::Kubernetes(_) => "WorkerHost::Kubernetes",
        })
    }
}

/// What `ensure` did.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerState {
    Disabled,
    Suspended,
    Ticked(TickReport),
    Running,
    Deployment(String),
}

/// Everything a worker needs besides the shard.
pub struct WorkerInputs<'a> {
    pub redis_url: &'a SecretString,
    pub pool: Option<&'a PgPool>,
    pub clock: &'a SharedClock,
    pub metrics: &'a Arc<Metrics>,
}

impl WorkerHost {
    /// Makes sure the shard's worker runs as its spec says.
    pub(crate) async fn ensure(
        &self,
        shard: &ArchiverShard,
        inputs: WorkerInputs<'_>,
    ) -> Result<WorkerState, ReconcileError> {
        match self {
            Self::Disabled => Ok(WorkerState::Disabled),
            Self::Inline => {
                if shard.spec.suspend {
                    return Ok(WorkerState::Suspended);
                }
                let pool = inputs.pool.ok_or(ReconcileError::NoDatabase)?;
                let mut worker = connect(shard, &inputs, pool).await?;
                let report = worker.tick(TICK_BUDGET).await;
                // A one-shot tick (`run --once`): the process may exit next,
                // so markers and a stray-key audit that fell due finish first.
                worker.flush_marks().await;
                worker.wait_for_audit().await;
                let report = report.map_err(ReconcileError::DrainTick)?;
                Ok(WorkerState::Ticked(report))
            }
            Self::InProcess(workers) => workers.ensure(shard, &inputs),
            Self::Kubernetes(workers) => workers.ensure(shard).await,
        }
    }

    /// Stops the worker of a shard that is gone (standalone only; in a
    /// cluster the Deployment is garbage-collected with its owner).
    pub fn stop(&self, shard_label: &str) {
        if let Self::InProcess(workers) = self {
            workers.stop(shard_label);
        }
    }
}

async fn connect(
    shard: &ArchiverShard,
    inputs: &WorkerInputs<'_>,
    pool: &PgPool,
) -> Result<Worker, ReconcileError> {
    Worker::connect(
        crate::controllers::archiver_shard::shard_settings(shard),
        owner_name(),
        pool.clone(),
        inputs.redis_url.expose(),
        inputs.clock.clone(),
        inputs.metrics.clone(),
    )
    .await
    .map_err(ReconcileError::RedisConnect)
}

/// This process as a watermark owner: the pod name in a cluster.
pub(crate) fn owner_name() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| format!("archiver-{}", std::process::id()))
}

/// Background drain tasks of the standalone operator.
pub struct InProcessWorkers {
    tasks: Mutex<HashMap<String, (u64, JoinHandle<()>)>>,
}

impl Default for InProcessWorkers {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessWorkers {
    pub fn new() -> Self {
        Self {
            tasks: Mutex::new(HashMap::new()),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, JoinHandle<()>)>> {
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ensure(
        &self,
        shard: &ArchiverShard,
        inputs: &WorkerInputs<'_>,
    ) -> Result<WorkerState, ReconcileError> {
        let label = format!(
            "{}/{}",
            shard.namespace().unwrap_or_default(),
            shard.name_any()
        );
        if shard.spec.suspend {
            self.stop(&label);
            return Ok(WorkerState::Suspended);
        }
        let pool = inputs.pool.ok_or(ReconcileError::NoDatabase)?.clone();
        let settings = crate::controllers::archiver_shard::shard_settings(shard);
        let mut hasher = DefaultHasher::new();
        format!("{settings:?}").hash(&mut hasher);
        inputs.redis_url.expose().hash(&mut hasher);
        let fingerprint = hasher.finish();
        let mut tasks = self.tasks();
        if let Some((running, handle)) = tasks.get(&label)
            && *running == fingerprint
            && !handle.is_finished()
        {
            return Ok(WorkerState::Running);
        }
        if let Some((_, old)) = tasks.remove(&label) {
            old.abort();
        }
        let redis_url = inputs.redis_url.clone();
        let clock = inputs.clock.clone();
        let metrics = inputs.metrics.clone();
        let task = tokio::spawn(async move {
            loop {
                match Worker::connect(
                    settings.clone(),
                    owner_name(),
                    pool.clone(),
                    redis_url.expose(),
                    clock.clone(),
                    metrics.clone(),
                )
                .await
                {
                    Ok(worker) => return run_forever(worker, std::future::pending()).await,
                    Err(error) => {
                        tracing::warn!(shard = %settings.label, %error, "cannot connect to Redis; retrying");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        });
        tasks.insert(label, (fingerprint, task));
        Ok(WorkerState::Running)
    }

    pub fn stop(&self, label: &str) {
        if let Some((_, handle)) = self.tasks().remove(label) {
            handle.abort();
        }
    }
}

/// Deployments of workers in a cluster.
pub struct KubeWorkers {
    pub client: kube::Client,
    /// Image of the worker pods (the operator's own image).
    pub image: String,
    /// Secret key (in each shard's namespace) holding the database URL.
    pub database_secret: SecretKeyRef,
    /// ServiceAccount the worker pods run as.
    pub service_account: String,
    /// The watch cache of the worker Deployments while the shard controller
    /// runs (`run_controllers` sets it): a Deployment that already is what
    /// would be applied is not applied again, so a steady state writes
    /// nothing.
    deployments: Mutex<Option<reflector::Store<Deployment>>>,
}

/// The SHA-256 of the Deployment the operator applied last, on the
/// Deployment: equal to the desired one's means nothing needs applying.
pub const APPLIED_SPEC_ANNOTATION: &str = "archiver.uptime.dev/applied-spec-sha256";

impl KubeWorkers {
    pub fn new(
        client: kube::Client,
        image: String,
        database_secret: SecretKeyRef,
        service_account: String,
    ) -> Self {
        Self {
            client,
            image,
            database_secret,
            service_account,
            deployments: Mutex::new(None),
        }
    }

    /// Hands over the watch cache of the worker Deployments.
    pub fn watch_cache(&self, store: reflector::Store<Deployment>) {
        if let Ok(mut deployments) = self.deployments.lock() {
            *deployments = Some(store);
        }
    }

    /// Whether the live Deployment (from the watch cache) already carries
    /// what would be applied: the same applied spec and the same replica
    /// count (the field people change by hand, `kubectl scale`, is put
    /// back). Other hand edits are put back on the next change of the spec.
    fn up_to_date(&self, namespace: &str, name: &str, desired: &Deployment, hash: &str) -> bool {
        let Ok(deployments) = self.deployments.lock() else {
            return false;
        };
        let Some(live) = deployments
            .as_ref()
            .and_then(|store| store.get(&reflector::ObjectRef::new(name).within(namespace)))
        else {
            return false;
        };
        live.annotations()
            .get(APPLIED_SPEC_ANNOTATION)
            .map(String::as_str)
            == Some(hash)
            && live.spec.replicas == desired.spec.replicas
    }

    async fn ensure(&self, shard: &ArchiverShard) -> Result<WorkerState, ReconcileError> {
        let mut deployment = worker_deployment(shard, &self.image, &self.database_secret);
        if let Some(pod) = deployment.spec.template.spec.as_mut() {
            pod.service_account_name = Some(self.service_account.clone());
        }
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let namespace = shard.namespace().unwrap_or_else(|| "default".into());
        let hash = {
            use sha2::Digest;
            let bytes = serde_json::to_vec(&deployment).unwrap_or_default();
            hex::encode(sha2::Sha256::digest(bytes))
        };
        if self.up_to_date(&namespace, &name, &deployment, &hash) {
            return Ok(WorkerState::Deployment(name));
        }
        deployment
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(APPLIED_SPEC_ANNOTATION.to_string(), hash);
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &namespace);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&deployment),
        )
        .await
        .map_err(|source| ReconcileError::ApplyDeployment {
            deployment: format!("{namespace}/{name}"),
            source,
        })?;
        Ok(WorkerState::Deployment(name))
    }
}

/// Name of a shard's worker Deployment (at most 63 characters).
pub(crate) fn worker_deployment_name(shard: &ArchiverShard) -> String {
    let name: String = format!("archiver-worker-{}", shard.name_any())
        .chars()
        .take(63)
        .collect();
    name.trim_end_matches('-').to_string()
}

/// The worker Deployment of a shard: owned by it (deleting the shard removes
/// the Deployment, never data), `replicas` from the spec (0 when
/// suspended), the Redis URL and database URL from Secrets as environment,
/// probes on /health and /ready, and the restricted pod security profile.
pub(crate) fn worker_deployment(
    shard: &ArchiverShard,
    image: &str,
    database_secret: &SecretKeyRef,
) -> Deployment {
    let name = worker_deployment_name(shard);
    let labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name", "archiver-worker".to_string()),
        ("app.kubernetes.io/instance", shard.name_any()),
        ("app.kubernetes.io/component", "shard-worker".to_string()),
        (
            "app.kubernetes.io/managed-by",
            "archiver-operator".to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let selector: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| {
            k.as_str() != "app.kubernetes.io/managed-by"
                && k.as_str() != "app.kubernetes.io/component"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let secret_env = |env: &str, secret: &SecretKeyRef| EnvVar {
        name: env.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let field_env = |env: &str, path: &str| EnvVar {
        name: env.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    };
    let quantity = |q: &str| Quantity(q.into());
    let container = Container {
        name: "worker".into(),
        image: Some(image.into()),
        args: Some(vec![
            "worker".into(),
            "--shard".into(),
            format!(
                "{}/{}",
                shard.namespace().unwrap_or_else(|| "default".into()),
                shard.name_any()
            ),
        ]),
        env: Some(vec![
            secret_env("DATABASE_URL", database_secret),
            secret_env("REDIS_URL", &shard.spec.redis.url_secret_ref),
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            ..Default::default()
        }]),
        liveness_probe: Some(probe("/health")),
        readiness_probe: Some(probe("/ready")),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_string(), quantity("100m")),
                    ("memory".to_string(), quantity("128Mi")),
                ]
                .into(),
            ),
            limits: Some([("memory".to_string(), quantity("512Mi"))].into()),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Deployment {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: shard.namespace(),
            labels: Some(labels.clone()),
            owner_references: shard.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(if shard.spec.suspend {
                0
            } else {
                shard.spec.replicas
            }),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    // A spec change (e.g. an acknowledged gap) rolls the
                    // workers so they read the new spec.
                    annotations: Some(
                        [(
                            "archiver.uptime.dev/spec-hash".to_string(),
                            spec_hash(shard),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(true),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn spec_hash(shard: &ArchiverShard) -> String {
    use sha2::{Digest, Sha256};
    let spec = serde_json::to_vec(&shard.spec).unwrap_or_default();
    hex::encode(&Sha256::digest(spec)[..8])
}
