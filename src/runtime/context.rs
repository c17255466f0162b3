//! What a reconciler gets besides its object: the clock, the database, the
//! process configuration, Secret resolution and metrics. The same context
//! type serves the Kubernetes and the manifests source.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Secret;
use sqlx::PgPool;

use super::config::{OperatorConfig, SecretString};
use crate::api::common::SecretKeyRef;
use crate::clock::SharedClock;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Secret {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("Secret {namespace}/{name} has no key {key:?}")]
    MissingKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("Secret {namespace}/{name} key {key:?} is not UTF-8")]
    NotUtf8 {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("reading Secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Secrets of the manifests source, by (namespace, name), then key.
pub type SecretMap = BTreeMap<(String, String), BTreeMap<String, SecretValue>>;

/// One value of a Secret manifest: text, or `data` that decodes to bytes
/// that are not UTF-8 (kept so a reference to it is answered "is not
/// UTF-8", as the Kubernetes source answers, not "has no key").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretValue {
    Text(SecretString),
    NotUtf8,
}

impl From<SecretString> for SecretValue {
    fn from(text: SecretString) -> Self {
        Self::Text(text)
    }
}

/// Where `secretRef`s are resolved.
#[derive(Clone)]
pub enum SecretSource {
    /// Secrets of the cluster (read-only, only those referenced).
    Kubernetes(kube::Client),
    /// `Secret` manifests found beside the custom resources.
    Manifests(Arc<RwLock<SecretMap>>),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kubernetes(_) => f.write_str("SecretSource::Kubernetes"),
            Self::Manifests(_) => f.write_str("SecretSource::Manifests"),
        }
    }
}

impl SecretSource {
    /// The value of `reference` in `namespace`.
    pub(crate) async fn resolve(
        &self,
        namespace: &str,
        reference: &SecretKeyRef,
    ) -> Result<SecretString, SecretError> {
        let not_found = || SecretError::NotFound {
            namespace: namespace.to_string(),
            name: reference.name.clone(),
        };
        let missing_key = || SecretError::MissingKey {
            namespace: namespace.to_string(),
            name: reference.name.clone(),
            key: reference.key.clone(),
        };
        match self {
            Self::Manifests(map) => {
                let map = map.read().unwrap_or_else(|poisoned| poisoned.into_inner());
                let data = map
                    .get(&(namespace.to_string(), reference.name.clone()))
                    .ok_or_else(not_found)?;
                match data.get(&reference.key).ok_or_else(missing_key)? {
                    SecretValue::Text(text) => Ok(text.clone()),
                    SecretValue::NotUtf8 => Err(SecretError::NotUtf8 {
                        namespace: namespace.to_string(),
                        name: reference.name.clone(),
                        key: reference.key.clone(),
                    }),
                }
            }
            Self::Kubernetes(client) => {
                let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
                let secret = api
                    .get_opt(&reference.name)
                    .await
                    .map_err(|source| SecretError::Api {
                        namespace: namespace.to_string(),
                        name: reference.name.clone(),
                        source,
                    })?
                    .ok_or_else(not_found)?;
                let bytes = secret
                    .data
                    .as_ref()
                    .and_then(|data| data.get(&reference.key))
                    .map(|value| value.0.clone())
                    .or_else(|| {
                        secret
                            .string_data
                            .as_ref()
                            .and_then(|data| data.get(&reference.key))
                            .map(|value| value.clone().into_bytes())
                    })
                    .ok_or_else(missing_key)?;
                String::from_utf8(bytes)
                    .map(SecretString::new)
                    .map_err(|_| SecretError::NotUtf8 {
                        namespace: namespace.to_string(),
                        name: reference.name.clone(),
                        key: reference.key.clone(),
                    })
            }
        }
    }
}

/// Everything a reconciler may use, cheap to clone.
#[derive(Clone, Debug)]
pub struct Context {
    pub clock: SharedClock,
    /// None only in tests of the Kubernetes adapters that need no database.
    pub db: Option<PgPool>,
    pub config: Arc<OperatorConfig>,
    pub secrets: SecretSource,
    pub metrics: Arc<Metrics>,
    /// Where ArchiverShard drain workers run.
    pub workers: super::workers::WorkerHost,
    /// Every RetentionPolicy, kept complete by the source: which one is in force.
    pub policies: Arc<crate::retention::directory::PolicyDirectory>,
    /// The tier windows each RetentionPolicy reconciler enforces, for
    /// partition drops.
    pub enforced_policies: Arc<crate::partitions::policy_registry::EnforcedPolicies>,
    /// Every shard's Redis, for erasures: published by the ArchiverShard
    /// reconciler, pruned by the source when a shard goes away.
    pub redis_targets: Arc<crate::erasure::redis_targets::RedisTargets>,
    /// Where rendered documents (the privacy-policy text) go.
    pub publisher: super::publish::Publisher,
}

impl Context {
    /// A context on `clock` with nothing attached: no database, the default
    /// configuration, no Secrets, fresh metrics, no workers, nothing
    /// published, and empty registries (policies, enforced windows, Redis
    /// targets), which the sources fill as they run. The `with_*` methods
    /// attach the rest.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            db: None,
            config: Arc::new(OperatorConfig::default()),
            secrets: SecretSource::Manifests(Default::default()),
            metrics: Arc::new(Metrics::new()),
            workers: super::workers::WorkerHost::Disabled,
            policies: Default::default(),
            enforced_policies: Default::default(),
            redis_targets: Default::default(),
            publisher: super::publish::Publisher::Disabled,
        }
    }

    pub fn with_database(self, pool: PgPool) -> Self {
        Self {
            db: Some(pool),
            ..self
        }
    }

    pub fn with_config(self, config: OperatorConfig) -> Self {
        Self {
            config: Arc::new(config),
            ..self
        }
    }

    pub fn with_secrets(self, secrets: SecretSource) -> Self {
        Self { secrets, ..self }
    }

    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Self { metrics, ..self }
    }

    pub fn with_workers(self, workers: super::workers::WorkerHost) -> Self {
        Self { workers, ..self }
    }

    pub fn with_publisher(self, publisher: super::publish::Publisher) -> Self {
        Self { publisher, ..self }
    }
}
