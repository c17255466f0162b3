//! Where rendered documents (the privacy-policy retention section) are
//! published: a ConfigMap in a cluster, files under the status directory in
//! standalone mode.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};

use super::kubernetes::FIELD_MANAGER;
use crate::api::common::{is_dns1123_label, is_dns1123_subdomain};

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
                let file_error = |path: PathBuf, reason: String| PublishError::File {
                    path,
                    source: std::io::Error::other(reason),
                };
                // Names validated as the API server does, and directories
                // created without following links: a document is never
                // written outside the manifests directory.
                let valid_key = |key: &str| {
                    !key.is_empty()
                        && !key.starts_with('.')
                        && key
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                };
                if !is_dns1123_label(namespace) || !is_dns1123_subdomain(name) {
                    return Err(file_error(
                        root.clone(),
                        format!("{namespace:?}/{name:?} is not a valid ConfigMap name"),
                    ));
                }
                let (Some(base), Some(archiver), Some(published)) = (
                    root.parent().and_then(std::path::Path::parent),
                    root.parent().and_then(std::path::Path::file_name),
                    root.file_name(),
                ) else {
                    return Err(file_error(root.clone(), "no parent directory".into()));
                };
                let components = [
                    archiver.to_str().unwrap_or_default(),
                    published.to_str().unwrap_or_default(),
                    namespace,
                    name,
                ];
                let dir = super::status_store::create_private_dirs(base, &components)
                    .map_err(|error| file_error(root.clone(), error.to_string()))?;
                for (key, text) in data {
                    let path = dir.join(&key);
                    if !valid_key(&key) {
                        return Err(file_error(path, "not a valid ConfigMap key".into()));
                    }
                    // Written aside, then renamed over: never through a
                    // link left in its place, never half-written.
                    let temporary = dir.join(format!(".{key}.tmp"));
                    match std::fs::remove_file(&temporary) {
                        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                            return Err(PublishError::File {
                                path: temporary,
                                source,
                            });
                        }
                        _ => {}
                    }
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&temporary)
                        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
                        .and_then(|()| std::fs::rename(&temporary, &path))
                        .map_err(|source| PublishError::File { path, source })?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> BTreeMap<String, String> {
        [("retention.md".to_string(), "text".to_string())].into()
    }

    #[tokio::test]
    async fn documents_stay_inside_the_manifests_directory() {
        let base = tempfile::tempdir().unwrap();
        let manifests = base.path().join("checkout");
        std::fs::create_dir_all(&manifests).unwrap();
        let publisher = Publisher::Directory(manifests.join(".archiver").join("published"));
        publisher
            .publish("archiver", "policy", data())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(
                manifests.join(".archiver/published/archiver/policy/retention.md")
            )
            .unwrap(),
            "text"
        );
        assert!(
            publisher
                .publish("x/../../../..", "policy", data())
                .await
                .is_err()
        );
        // A link shipped in place of a directory is refused.
        let outside = base.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, manifests.join(".archiver/published/other")).unwrap();
        assert!(publisher.publish("other", "policy", data()).await.is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
