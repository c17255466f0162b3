//! Status of the manifests source, one YAML file per object under
//! `DIR/.archiver/status/`, so it survives restarts and can be printed by
//! `archiver-operator status`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::reconcile::Event;

/// Events kept per object (the newest last).
pub const EVENTS_KEPT: usize = 20;

/// Everything the manifests source remembers about one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredObject {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Bumped whenever the spec changes, like metadata.generation.
    pub generation: i64,
    /// SHA-256 of the spec, to notice changes.
    pub spec_hash: String,
    /// Hash of spec and annotations: a change wakes a reconcile.
    pub trigger_hash: String,
    /// Stands in for metadata.creationTimestamp.
    pub first_seen: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconciled: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_reconcile: Option<DateTime<Utc>>,
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default)]
    pub paused: bool,
    /// The object's status, as the API server would hold it.
    #[serde(default)]
    pub status: serde_json::Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<StoredEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusStoreError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a status file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
}

/// The status directory of one manifests directory.
#[derive(Debug, Clone)]
pub struct StatusStore {
    root: PathBuf,
}

impl StatusStore {
    pub fn for_manifests(dir: &Path) -> Self {
        Self {
            root: dir.join(".archiver").join("status"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, kind: &str, namespace: &str, name: &str) -> PathBuf {
        // Kubernetes names and namespaces cannot contain '_': unambiguous.
        self.root.join(format!("{kind}_{namespace}_{name}.yaml"))
    }

    pub fn load(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredObject>, StatusStoreError> {
        let path = self.path(kind, namespace, name);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_yaml_ng::from_str(&text)
                .map(Some)
                .map_err(|source| StatusStoreError::Parse { path, source }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StatusStoreError::Io {
                action: "reading",
                path,
                source,
            }),
        }
    }

    /// Writes atomically (temporary file, then rename): a crash never
    /// leaves half a status behind.
    pub fn save(&self, object: &StoredObject) -> Result<(), StatusStoreError> {
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StatusStoreError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&self.root).map_err(io("creating", &self.root))?;
        let path = self.path(&object.kind, &object.namespace, &object.name);
        let text = serde_yaml_ng::to_string(object).expect("a stored object always serializes");
        let temporary = path.with_extension("yaml.tmp");
        std::fs::write(&temporary, text).map_err(io("writing", &temporary))?;
        std::fs::rename(&temporary, &path).map_err(io("renaming", &path))?;
        Ok(())
    }

    pub fn remove(&self, kind: &str, namespace: &str, name: &str) -> Result<(), StatusStoreError> {
        let path = self.path(kind, namespace, name);
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(StatusStoreError::Io {
                    action: "removing",
                    path,
                    source: error,
                })
            }
            _ => Ok(()),
        }
    }

    /// Every stored object, sorted by kind, namespace and name.
    pub fn list(&self) -> Result<Vec<StoredObject>, StatusStoreError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StatusStoreError::Io {
                    action: "listing",
                    path: self.root.clone(),
                    source,
                });
            }
        };
        let mut objects = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text =
                    std::fs::read_to_string(&path).map_err(|source| StatusStoreError::Io {
                        action: "reading",
                        path: path.clone(),
                        source,
                    })?;
                let object: StoredObject = serde_yaml_ng::from_str(&text)
                    .map_err(|source| StatusStoreError::Parse { path, source })?;
                objects.push(object);
            }
        }
        objects.sort_by(|a, b| {
            (&a.kind, &a.namespace, &a.name).cmp(&(&b.kind, &b.namespace, &b.name))
        });
        Ok(objects)
    }
}
