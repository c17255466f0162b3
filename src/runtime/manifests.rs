//! The manifests source: custom resources read from a directory of YAML (a
//! git checkout) instead of the API server, reconciled in-process by the
//! same reconcilers, with status kept beside the manifests.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use kube::ResourceExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::config::SecretString;
use super::context::{Context, SecretMap, SecretSource};
use super::kubernetes::backoff;
use super::leader::Leadership;
use super::reconcile::{Event, Managed, failed_status, failure_event, is_paused, object_label};
use super::status_store::{EVENTS_KEPT, StatusStore, StoredEvent, StoredObject};
use crate::api::validation::{
    Document, Problem, duplicate_problems, manifest_files, policy_conflict_problems,
    read_documents, validate_document,
};
use crate::api::{
    ArchiverShard, DeletionRequest, PartitionSchedule, RetentionPolicy, common::kube_time,
};

/// The valid objects of a directory, its Secrets, and what was wrong.
#[derive(Debug, Default)]
pub struct ManifestSet {
    pub shards: Vec<ArchiverShard>,
    pub policies: Vec<RetentionPolicy>,
    pub schedules: Vec<PartitionSchedule>,
    pub deletions: Vec<DeletionRequest>,
    pub secrets: SecretMap,
    /// Invalid manifests, with the messages of the validate command.
    pub problems: Vec<Problem>,
}

impl ManifestSet {
    /// `Kind/namespace/name` of every valid custom resource.
    pub fn labels(&self) -> BTreeSet<String> {
        let mut labels = BTreeSet::new();
        labels.extend(self.shards.iter().map(object_label));
        labels.extend(self.policies.iter().map(object_label));
        labels.extend(self.schedules.iter().map(object_label));
        labels.extend(self.deletions.iter().map(object_label));
        labels
    }
}

/// Reads and validates every YAML file under `dir` (hidden directories such
/// as `.archiver/` and `.git/` excluded). Invalid objects are reported and
/// left out; the valid ones are returned.
pub fn load(dir: &Path) -> ManifestSet {
    let mut set = ManifestSet::default();
    let mut documents = Vec::new();
    for file in manifest_files(&[dir.to_path_buf()]) {
        match read_documents(&file) {
            Ok(docs) => documents.extend(docs),
            Err(problem) => set.problems.push(problem),
        }
    }
    let mut valid: Vec<&Document> = Vec::new();
    for doc in &documents {
        let problems = validate_document(doc);
        if problems.is_empty() {
            valid.push(doc);
        } else {
            set.problems.extend(problems);
        }
    }
    // Duplicates never run. Conflicting RetentionPolicies are reported but
    // still reconciled: each then reports Conflict, and nothing is deleted.
    let duplicates = duplicate_problems(&valid);
    let rejected: BTreeSet<String> = duplicates.iter().filter_map(|p| p.object.clone()).collect();
    set.problems.extend(duplicates);
    set.problems.extend(policy_conflict_problems(&valid));
    for doc in valid.into_iter().filter(|d| !rejected.contains(&d.label())) {
        if let Err(problem) = add_document(&mut set, doc) {
            set.problems.push(problem);
        }
    }
    set
}

fn add_document(set: &mut ManifestSet, doc: &Document) -> Result<(), Problem> {
    let parse_error = |error: serde_json::Error| Problem {
        file: doc.file.clone(),
        line: None,
        object: Some(doc.label()),
        field: None,
        reason: format!("cannot be read: {error}"),
    };
    let mut value = doc.value.clone();
    // Objects without a namespace land in `default`, as with kubectl.
    if value.pointer("/metadata/namespace").is_none()
        && let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut)
    {
        metadata.insert("namespace".into(), Value::String("default".into()));
    }
    match doc.kind() {
        "Secret" => {
            let key = (doc.namespace().to_string(), doc.name().to_string());
            set.secrets.insert(key, secret_data(&value));
        }
        "ArchiverShard" => set
            .shards
            .push(serde_json::from_value(value).map_err(parse_error)?),
        "RetentionPolicy" => set
            .policies
            .push(serde_json::from_value(value).map_err(parse_error)?),
        "PartitionSchedule" => set
            .schedules
            .push(serde_json::from_value(value).map_err(parse_error)?),
        "DeletionRequest" => set
            .deletions
            .push(serde_json::from_value(value).map_err(parse_error)?),
        _ => {}
    }
    Ok(())
}

/// `data` (base64) and `stringData` of a Secret; `stringData` wins, as in the API server.
fn secret_data(secret: &Value) -> BTreeMap<String, SecretString> {
    let mut data = BTreeMap::new();
    if let Some(encoded) = secret.get("data").and_then(Value::as_object) {
        for (key, value) in encoded {
            let decoded = value
                .as_str()
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                .and_then(|bytes| String::from_utf8(bytes).ok());
            if let Some(decoded) = decoded {
                data.insert(key.clone(), SecretString::new(decoded));
            }
        }
    }
    if let Some(plain) = secret.get("stringData").and_then(Value::as_object) {
        for (key, value) in plain {
            if let Some(text) = value.as_str() {
                data.insert(key.clone(), SecretString::new(text));
            }
        }
    }
    data
}

/// A cheap fingerprint of the directory (paths, sizes, modification times):
/// polling it notices a `git pull` within a second, including atomic renames
/// that file-watch APIs can miss.
pub fn fingerprint(dir: &Path) -> u64 {
    let mut hasher = DefaultHasher::new();
    for file in manifest_files(&[dir.to_path_buf()]) {
        file.hash(&mut hasher);
        if let Ok(meta) = std::fs::metadata(&file) {
            meta.len().hash(&mut hasher);
            meta.modified().ok().hash(&mut hasher);
        }
    }
    hasher.finish()
}

fn sha256_hex(value: &impl serde::Serialize) -> String {
    let bytes = serde_json::to_vec(value).expect("a JSON value serializes");
    hex::encode(Sha256::digest(bytes))
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub reconciled: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub paused: Vec<String>,
    pub invalid: Vec<String>,
    /// What else the pass did, one line each.
    pub notes: Vec<String>,
}

impl PassReport {
    pub fn is_success(&self) -> bool {
        self.failed.is_empty() && self.invalid.is_empty()
    }
}

/// Runs the reconcilers over a manifests directory.
pub struct ManifestsEngine {
    dir: PathBuf,
    store: StatusStore,
    ctx: Context,
    secrets: Arc<std::sync::RwLock<SecretMap>>,
}

impl ManifestsEngine {
    /// `ctx.secrets` is replaced by the Secrets found in `dir`.
    pub fn new(dir: PathBuf, mut ctx: Context) -> Self {
        let secrets = Arc::new(std::sync::RwLock::new(SecretMap::new()));
        ctx.secrets = SecretSource::Manifests(secrets.clone());
        Self {
            store: StatusStore::for_manifests(&dir),
            dir,
            ctx,
            secrets,
        }
    }

    pub fn store(&self) -> &StatusStore {
        &self.store
    }

    /// One pass over the directory. With `force`, every object is reconciled
    /// (as `--once` does); otherwise only those due: new, changed, or past
    /// their requeue time.
    pub async fn pass(&self, force: bool) -> PassReport {
        let set = load(&self.dir);
        *self
            .secrets
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = set.secrets.clone();
        // Complete before any reconcile reads it.
        self.ctx.policies.replace_all(
            set.policies
                .iter()
                .map(|p| (namespaced_name(p), p.spec.clone())),
        );
        let mut report = PassReport::default();
        for problem in &set.problems {
            tracing::warn!(problem = %problem, "invalid manifest skipped");
            report.invalid.push(problem.to_string());
        }
        for object in &set.policies {
            self.reconcile_one(object.clone(), force, &mut report).await;
        }
        for object in &set.schedules {
            self.reconcile_one(object.clone(), force, &mut report).await;
        }
        for object in &set.shards {
            self.reconcile_one(object.clone(), force, &mut report).await;
        }
        for object in &set.deletions {
            self.reconcile_one(object.clone(), force, &mut report).await;
        }
        self.forget_removed(&set, &mut report).await;
        report
    }

    /// Objects whose manifest is gone: finalizer kinds get their cleanup,
    /// then the status file goes. Data work is never undone.
    async fn forget_removed(&self, set: &ManifestSet, report: &mut PassReport) {
        let present = set.labels();
        let invalid_objects: BTreeSet<String> = set
            .problems
            .iter()
            .filter_map(|p| p.object.clone())
            .collect();
        let Ok(stored) = self.store.list() else {
            return;
        };
        for object in stored {
            let label = format!("{}/{}/{}", object.kind, object.namespace, object.name);
            // An object that is only broken keeps its status until fixed.
            if present.contains(&label) || invalid_objects.contains(&label) {
                continue;
            }
            tracing::info!(object = %label, "manifest removed; forgetting its status");
            if object.kind == "ArchiverShard" {
                let shard = format!("{}/{}", object.namespace, object.name);
                self.ctx.workers.stop(&shard);
                self.ctx.redis_targets.remove_shard(&shard);
            }
            if let Err(error) = self
                .store
                .remove(&object.kind, &object.namespace, &object.name)
            {
                report.failed.push((label, error.to_string()));
            }
        }
    }

    async fn reconcile_one<K: Managed>(&self, mut object: K, force: bool, report: &mut PassReport) {
        let label = object_label(&object);
        let now = self.ctx.clock.now();
        let namespace = object.namespace().unwrap_or_else(|| "default".into());
        let kind = K::kind(&()).to_string();
        let previous = match self.store.load(&kind, &namespace, &object.name_any()) {
            Ok(previous) => previous,
            Err(error) => {
                report.failed.push((label, error.to_string()));
                return;
            }
        };
        let spec_hash = sha256_hex(
            &serde_json::to_value(&object)
                .map(|v| v["spec"].clone())
                .unwrap_or_default(),
        );
        let trigger_hash = sha256_hex(&(spec_hash.as_str(), object.annotations()));
        let mut stored = previous.clone().unwrap_or_else(|| StoredObject {
            kind: kind.clone(),
            namespace: namespace.clone(),
            name: object.name_any(),
            generation: 1,
            spec_hash: spec_hash.clone(),
            trigger_hash: String::new(),
            first_seen: now,
            last_reconciled: None,
            next_reconcile: None,
            consecutive_failures: 0,
            last_error: None,
            paused: false,
            status: Value::Null,
            events: Vec::new(),
        });
        if stored.spec_hash != spec_hash {
            stored.generation += 1;
            stored.spec_hash = spec_hash;
        }
        let changed = stored.trigger_hash != trigger_hash;
        stored.trigger_hash = trigger_hash;
        self.dress(&mut object, &stored);

        stored.paused = is_paused(&object);
        if stored.paused {
            report.paused.push(label.clone());
            self.save(&stored, previous.as_ref(), report, &label);
            return;
        }
        let due = force || changed || stored.next_reconcile.is_none_or(|next| next <= now);
        if !due {
            return;
        }
        let span = tracing::info_span!("reconcile", kind = %kind, namespace = %namespace, object = %object.name_any());
        let started = Instant::now();
        let result = object.reconcile(&self.ctx).instrument(span).await;
        self.ctx.metrics.observe_reconcile(
            &kind,
            started.elapsed().as_secs_f64(),
            result.as_ref().err().map(|e| e.metric_label()),
        );
        stored.last_reconciled = Some(now);
        match result {
            Ok(outcome) => {
                stored.consecutive_failures = 0;
                stored.last_error = None;
                stored.status = serde_json::to_value(&outcome.status).unwrap_or(Value::Null);
                stored.next_reconcile = Some(now + chrono_duration(outcome.requeue_after));
                record_events(&mut stored, &outcome.events, now);
                report.reconciled.push(label.clone());
            }
            Err(error) => {
                tracing::warn!(object = %label, %error, "reconcile failed");
                stored.consecutive_failures += 1;
                stored.last_error = Some(error.to_string());
                let status = failed_status(&object, &error, now);
                stored.status = serde_json::to_value(&status).unwrap_or(Value::Null);
                stored.next_reconcile =
                    Some(now + chrono_duration(backoff(stored.consecutive_failures)));
                record_events(&mut stored, &[failure_event(&error)], now);
                report.failed.push((label.clone(), error.to_string()));
            }
        }
        self.save(&stored, previous.as_ref(), report, &label);
    }

    /// Gives the object what the API server would: generation, creation
    /// time, and its current status.
    fn dress<K: Managed>(&self, object: &mut K, stored: &StoredObject) {
        let meta = object.meta_mut();
        meta.generation = Some(stored.generation);
        meta.creation_timestamp = Some(kube_time(stored.first_seen));
        meta.uid
            .get_or_insert_with(|| format!("manifests-{}", stored.name));
        if !stored.status.is_null() {
            set_status(object, &stored.status);
        }
    }

    fn save(
        &self,
        stored: &StoredObject,
        previous: Option<&StoredObject>,
        report: &mut PassReport,
        label: &str,
    ) {
        if previous == Some(stored) {
            return;
        }
        if let Err(error) = self.store.save(stored) {
            report.failed.push((label.to_string(), error.to_string()));
        }
    }

    /// Reconciles due objects until `shutdown` resolves, re-reading the
    /// directory as soon as it changes. Only the leader reconciles.
    pub async fn run(
        &self,
        mut leadership: Leadership,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut last_fingerprint = None;
        let mut was_leader = false;
        loop {
            let leading = leadership.is_leader();
            if leading {
                let current = fingerprint(&self.dir);
                let changed = last_fingerprint != Some(current);
                last_fingerprint = Some(current);
                if changed {
                    tracing::info!(dir = %self.dir.display(), "manifests changed; reconciling");
                }
                // A new leader reconciles everything once, as a controller
                // does after its initial list: the previous leader may have
                // died half-way.
                let report = self.pass(!was_leader).await;
                if !report.failed.is_empty() {
                    tracing::warn!(
                        failed = report.failed.len(),
                        "some objects failed to reconcile"
                    );
                }
            }
            was_leader = leading;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = leadership.acquired(), if !leadership.is_leader() => {}
            }
        }
    }
}

/// `namespace/name` of an object.
pub fn namespaced_name<K: kube::Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_else(|| "default".into()),
        object.name_any()
    )
}

fn record_events(stored: &mut StoredObject, events: &[Event], now: DateTime<Utc>) {
    for event in events {
        tracing::info!(reason = %event.reason, note = %event.note, "event");
        stored.events.push(StoredEvent {
            at: now,
            event: event.clone(),
        });
    }
    let excess = stored.events.len().saturating_sub(EVENTS_KEPT);
    stored.events.drain(..excess);
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// Puts a stored status back onto the object (through JSON, since the
/// status field is kind-specific).
fn set_status<K: Managed>(object: &mut K, status: &Value) {
    let Ok(mut value) = serde_json::to_value(&*object) else {
        return;
    };
    value["status"] = status.clone();
    if let Ok(with_status) = serde_json::from_value::<K>(value) {
        *object = with_status;
    }
}
