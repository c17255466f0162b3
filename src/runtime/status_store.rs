//! Status of the manifests source, one YAML file per object under
//! `DIR/.archiver/status/`, so it survives restarts and can be printed by
//! `archiver-operator status`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::reconcile::Event;
use crate::api::common::{is_dns1123_label, is_dns1123_subdomain};

/// Events kept per object (the newest last).
pub const EVENTS_KEPT: usize = 20;

/// Condition set while the manifest's spec is one the kind's transition
/// rule refuses (the object runs on with its accepted spec).
pub const SPEC_CHANGE_REFUSED: &str = "SpecChangeRefused";

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
    /// The spec last accepted, for kinds whose CRD has a transition rule:
    /// a changed manifest is checked against it, as the API server checks
    /// an update against the stored object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_spec: Option<serde_json::Value>,
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
    #[error(
        "{kind} {namespace:?}/{name:?} has no status file: a namespace must be an RFC 1123 \
         label and a name an RFC 1123 subdomain"
    )]
    InvalidName {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("{path} is a link or not a directory: the status stays inside the manifests directory")]
    NotADirectory { path: PathBuf },
}

/// A file under the status directory that is not a status the operator
/// wrote: it is neither read as one nor ever removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignFile {
    pub path: PathBuf,
    pub reason: String,
}

/// The status directory of one manifests directory.
#[derive(Debug, Clone)]
pub struct StatusStore {
    /// The manifests directory: nothing is written outside it.
    base: PathBuf,
    root: PathBuf,
}

/// The directories between a manifests directory and its status files.
const STATUS_DIRS: [&str; 2] = [".archiver", "status"];

/// The file name of one object's status. Only names the API server would
/// accept have one: a namespace is an RFC 1123 label and a name an RFC 1123
/// subdomain, so neither can hold `/`, `..` or `_` (the separator), and the
/// kind is one of the operator's (letters only). No object can name a path.
///
/// A file name holds at most 255 bytes, but a kind, a 63-character namespace
/// and a 253-character name do not fit: a longer one keeps the start of the
/// name and adds a third `_` and the SHA-256 of the name, a form no short
/// name can take (names hold no `_`), so two objects never share a file.
pub fn status_file_name(kind: &str, namespace: &str, name: &str) -> Option<String> {
    let valid = !kind.is_empty()
        && kind.bytes().all(|b| b.is_ascii_alphabetic())
        && is_dns1123_label(namespace)
        && is_dns1123_subdomain(name);
    if !valid {
        return None;
    }
    let plain = format!("{kind}_{namespace}_{name}.yaml");
    if plain.len() <= MAX_STATUS_FILE_NAME {
        return Some(plain);
    }
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    let fixed = format!("{kind}_{namespace}__{digest}.yaml").len();
    // The name is ASCII (checked above): any byte index is a boundary.
    let kept = &name[..MAX_STATUS_FILE_NAME.saturating_sub(fixed).min(name.len())];
    Some(format!("{kind}_{namespace}_{kept}_{digest}.yaml"))
}

/// Longest status file name: 255 bytes (NAME_MAX) less the `.tmp` of the
/// temporary file written before it.
const MAX_STATUS_FILE_NAME: usize = 255 - ".tmp".len();

impl StatusStore {
    pub fn for_manifests(dir: &Path) -> Self {
        let mut root = dir.to_path_buf();
        root.extend(STATUS_DIRS);
        Self {
            base: dir.to_path_buf(),
            root,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, kind: &str, namespace: &str, name: &str) -> Result<PathBuf, StatusStoreError> {
        status_file_name(kind, namespace, name)
            .map(|file| self.root.join(file))
            .ok_or_else(|| StatusStoreError::InvalidName {
                kind: kind.to_string(),
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
    }

    /// Whether the status directory exists as real directories (never a
    /// link: a checkout could carry `.archiver -> /etc`).
    fn root_exists(&self) -> Result<bool, StatusStoreError> {
        let mut path = self.base.clone();
        for component in STATUS_DIRS {
            path.push(component);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(StatusStoreError::NotADirectory { path }),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(source) => {
                    return Err(StatusStoreError::Io {
                        action: "checking",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(true)
    }

    pub fn load(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredObject>, StatusStoreError> {
        let path = self.path(kind, namespace, name)?;
        if !self.root_exists()? {
            return Ok(None);
        }
        match read_regular_file(&path) {
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
    /// leaves half a status behind. The temporary file is created afresh
    /// (never through a link left in its place).
    pub fn save(&self, object: &StoredObject) -> Result<(), StatusStoreError> {
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StatusStoreError::Io {
                action,
                path,
                source,
            }
        };
        let path = self.path(&object.kind, &object.namespace, &object.name)?;
        create_private_dirs(&self.base, &STATUS_DIRS)?;
        let text = serde_yaml_ng::to_string(object).expect("a stored object always serializes");
        let temporary = path.with_extension("yaml.tmp");
        match std::fs::remove_file(&temporary) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing", &temporary)(error));
            }
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
            .map_err(io("creating", &temporary))?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io("writing", &temporary))?;
        drop(file);
        std::fs::rename(&temporary, &path).map_err(io("renaming", &path))?;
        Ok(())
    }

    /// Removes the status of one object: the file named after it, inside
    /// the status directory (a link there is removed, never its target).
    pub fn remove(&self, kind: &str, namespace: &str, name: &str) -> Result<(), StatusStoreError> {
        let path = self.path(kind, namespace, name)?;
        if !self.root_exists()? {
            return Ok(());
        }
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
        self.list_with_foreign().map(|(objects, _)| objects)
    }

    /// Every stored object, and the files of the status directory that are
    /// not statuses the operator wrote: not a regular file, unreadable, or
    /// a content that does not match its file name (a crafted file naming
    /// another object or a path). Those are reported, never acted upon.
    pub fn list_with_foreign(
        &self,
    ) -> Result<(Vec<StoredObject>, Vec<ForeignFile>), StatusStoreError> {
        if !self.root_exists()? {
            return Ok((Vec::new(), Vec::new()));
        }
        let entries = std::fs::read_dir(&self.root).map_err(|source| StatusStoreError::Io {
            action: "listing",
            path: self.root.clone(),
            source,
        })?;
        let mut objects = Vec::new();
        let mut foreign = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            match read_status_file(&path, &entry.file_name()) {
                Ok(object) => objects.push(object),
                Err(reason) => foreign.push(ForeignFile { path, reason }),
            }
        }
        objects.sort_by(|a, b| {
            (&a.kind, &a.namespace, &a.name).cmp(&(&b.kind, &b.namespace, &b.name))
        });
        foreign.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((objects, foreign))
    }
}

/// One status file, if it is one the operator wrote.
fn read_status_file(path: &Path, file_name: &std::ffi::OsStr) -> Result<StoredObject, String> {
    let text = read_regular_file(path).map_err(|error| format!("cannot be read: {error}"))?;
    let object: StoredObject =
        serde_yaml_ng::from_str(&text).map_err(|error| format!("not a status file: {error}"))?;
    let expected = status_file_name(&object.kind, &object.namespace, &object.name);
    if expected.as_deref().map(std::ffi::OsStr::new) != Some(file_name) {
        return Err(format!(
            "names {} {:?}/{:?}, which is not the object this file is named after",
            object.kind, object.namespace, object.name
        ));
    }
    Ok(object)
}

/// Reads a regular file, refusing a link in its last component.
fn read_regular_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let mut file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Creates `base/a/b/...` one directory at a time, refusing any component
/// that exists as a link or a file, so that what is written there stays
/// under `base`.
pub(crate) fn create_private_dirs(
    base: &Path,
    components: &[&str],
) -> Result<PathBuf, StatusStoreError> {
    let mut path = base.to_path_buf();
    for component in components {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => return Err(StatusStoreError::NotADirectory { path }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StatusStoreError::Io {
                    action: "checking",
                    path,
                    source,
                });
            }
        }
        match std::fs::create_dir(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(StatusStoreError::Io {
                    action: "creating",
                    path,
                    source: error,
                });
            }
            _ => {}
        }
        // Created meanwhile by someone else: check again what it is.
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err(StatusStoreError::NotADirectory { path });
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(namespace: &str, name: &str) -> StoredObject {
        StoredObject {
            kind: "DeletionRequest".into(),
            namespace: namespace.into(),
            name: name.into(),
            generation: 1,
            spec_hash: String::new(),
            trigger_hash: String::new(),
            first_seen: DateTime::<Utc>::UNIX_EPOCH,
            last_reconciled: None,
            next_reconcile: None,
            consecutive_failures: 0,
            last_error: None,
            paused: false,
            status: serde_json::Value::Null,
            events: Vec::new(),
            accepted_spec: None,
        }
    }

    #[test]
    fn only_valid_names_have_a_status_file() {
        assert_eq!(
            status_file_name("DeletionRequest", "archiver", "erase.6f1c"),
            Some("DeletionRequest_archiver_erase.6f1c.yaml".into())
        );
        for (kind, namespace, name) in [
            ("DeletionRequest", "x/../../outside", "a"),
            ("DeletionRequest", "archiver", "../a"),
            ("DeletionRequest", "archiver", ".."),
            ("DeletionRequest", "a_b", "c"),
            ("Deletion/Request", "archiver", "a"),
            ("", "archiver", "a"),
        ] {
            assert_eq!(
                status_file_name(kind, namespace, name),
                None,
                "{namespace}/{name}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let store = StatusStore::for_manifests(dir.path());
        assert!(matches!(
            store.save(&object("x/../../outside", "a")),
            Err(StatusStoreError::InvalidName { .. })
        ));
        assert!(matches!(
            store.remove("DeletionRequest", "archiver", "../../a"),
            Err(StatusStoreError::InvalidName { .. })
        ));
    }

    #[test]
    fn links_in_the_status_path_are_never_followed() {
        let base = tempfile::tempdir().unwrap();
        let manifests = base.path().join("checkout");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::create_dir_all(outside.join("status")).unwrap();
        let store = StatusStore::for_manifests(&manifests);

        // `.archiver` shipped as a link to elsewhere.
        std::os::unix::fs::symlink(&outside, manifests.join(".archiver")).unwrap();
        assert!(matches!(
            store.save(&object("archiver", "a")),
            Err(StatusStoreError::NotADirectory { .. })
        ));
        assert!(store.list().is_err());
        assert_eq!(
            std::fs::read_dir(outside.join("status")).unwrap().count(),
            0
        );
        std::fs::remove_file(manifests.join(".archiver")).unwrap();

        // A link left where the temporary file goes, and one in place of
        // a status file.
        let status = manifests.join(".archiver/status");
        std::fs::create_dir_all(&status).unwrap();
        let target = outside.join("target");
        std::fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, status.join("DeletionRequest_archiver_a.yaml.tmp"))
            .unwrap();
        std::os::unix::fs::symlink(&target, status.join("DeletionRequest_archiver_b.yaml"))
            .unwrap();
        store.save(&object("archiver", "a")).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert!(store.load("DeletionRequest", "archiver", "b").is_err());
        let (objects, foreign) = store.list_with_foreign().unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(foreign.len(), 1, "{foreign:?}");
        store.remove("DeletionRequest", "archiver", "b").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    }
}
