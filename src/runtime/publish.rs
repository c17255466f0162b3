//! Where rendered documents (the privacy-policy retention section) are
//! published: a ConfigMap in a cluster, files under the status directory in
//! standalone mode.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};

use super::kubernetes::FIELD_MANAGER;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("applying ConfigMap {namespace}/{name}: {source}")]
    ConfigMap {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Destination of published documents.
#[derive(Clone)]
pub enum Publisher {
    /// Nothing is written (tests of other parts).
    Disabled,
    /// ConfigMaps, server-side applied.
    Kubernetes(kube::Client),
    /// `DIR/<namespace>/<name>/<key>` files.
    Directory(PathBuf),
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disabled => f.write_str("Publisher::Disabled"),
            Self::Kubernetes(_) => f.write_str("Publisher::Kubernetes"),
            Self::Directory(dir) => write!(f, "Publisher::Directory({})", dir.display()),
        }
    }
}

impl Publisher {
    /// Publishes `data` (key -> text) as ConfigMap `namespace/name`, or as
    /// one file per key.
    pub async fn publish(
        &self,
        namespace: &str,
        name: &str,
        data: BTreeMap<String, String>,
    ) -> Result<(), PublishError> {
        match self {
            Self::Disabled => Ok(()),
            Self::Kubernetes(client) => {
                let config_map = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: Some(namespace.to_string()),
                        labels: Some(
                            [(
                                "app.kubernetes.io/managed-by".to_string(),
                                "archiver-operator".to_string(),
                            )]
                            .into(),
                        ),
                        ..Default::default()
                    },
                    data: Some(data),
                    ..Default::default()
                };
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                api.patch(
                    name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&config_map),
                )
                .await
                .map(|_| ())
                .map_err(|source| PublishError::ConfigMap {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    source,
                })
            }
            Self::Directory(root) => {
                let dir = root.join(namespace).join(name);
                std::fs::create_dir_all(&dir).map_err(|source| PublishError::File {
                    path: dir.clone(),
                    source,
                })?;
                for (key, text) in data {
                    let path = dir.join(&key);
                    std::fs::write(&path, text)
                        .map_err(|source| PublishError::File { path, source })?;
                }
                Ok(())
            }
        }
    }
}
