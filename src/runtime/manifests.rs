//! The manifests source: custom resources read from a directory of YAML (a
//! git checkout) instead of the API server, reconciled in-process by the
//! same reconcilers, with status kept beside the manifests.

use std::collections::{BTreeMap, BTreeSet};
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
use super::context::{Context, SecretMap, SecretSource, SecretValue};
use super::kubernetes::backoff;
use super::leader::Leadership;
use super::reconcile::{Event, Managed, failed_status, failure_event, is_paused, object_label};
use super::status_store::{
    EVENTS_KEPT, SPEC_CHANGE_REFUSED, StatusStore, StoredEvent, StoredObject,
};
use crate::api::common::{ConditionUpdate, set_condition};
use crate::api::validation::{
    Document, FileReading, Problem, duplicate_problems, list_manifests, policy_conflict_problems,
    read_manifest, validate_document,
};
use crate::api::{
    ArchiverShard, DeletionRequest, PartitionSchedule, RetentionPolicy, common::kube_time,
};

/// The valid objects of a directory, its Secrets, and what was wrong.
#[derive(Debug, Default, Clone)]
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
    let set = ManifestCache::default().refresh(dir).set;
    Arc::try_unwrap(set).unwrap_or_else(|shared| (*shared).clone())
}

/// What identifies one version of a file without reading it: when none of
/// these changed, the file is not read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    changed: (i64, i64),
    #[cfg(unix)]
    inode: (u64, u64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Some(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            changed: (meta.ctime(), meta.ctime_nsec()),
            #[cfg(unix)]
            inode: (meta.dev(), meta.ino()),
        })
    }
}

/// One manifest file as last read: its documents and their problems.
#[derive(Debug)]
struct CachedFile {
    resolved: PathBuf,
    stamp: Option<FileStamp>,
    reading: FileReading,
    /// The problems of each document on its own, in document order.
    checked: Vec<Vec<Problem>>,
}

/// The manifests of a directory, read again only where a file changed
/// (size, modification or change time, inode, or link target), so that an
/// unchanged directory of thousands of files costs one `stat` per file.
#[derive(Debug, Default)]
pub struct ManifestCache {
    files: BTreeMap<PathBuf, CachedFile>,
    listing_problems: Vec<Problem>,
    set: Arc<ManifestSet>,
    loaded: bool,
}

/// What one [`ManifestCache::refresh`] found.
#[derive(Debug, Clone)]
pub struct Refresh {
    pub set: Arc<ManifestSet>,
    /// Whether anything differs from the previous refresh.
    pub changed: bool,
    /// Files read again (new or changed) by this refresh.
    pub reread: BTreeSet<PathBuf>,
}

impl ManifestCache {
    pub fn refresh(&mut self, dir: &Path) -> Refresh {
        let listing = list_manifests(&[dir.to_path_buf()]);
        let mut changed = !self.loaded || listing.problems != self.listing_problems;
        let mut reread = BTreeSet::new();
        let mut files = BTreeMap::new();
        for entry in listing.files {
            let stamp = FileStamp::of(&entry.resolved);
            match self.files.remove(&entry.path) {
                Some(cached)
                    if stamp.is_some()
                        && cached.stamp == stamp
                        && cached.resolved == entry.resolved =>
                {
                    files.insert(entry.path, cached);
                }
                _ => {
                    changed = true;
                    let reading = read_manifest(&entry.path, &entry.resolved);
                    let checked = reading.documents.iter().map(validate_document).collect();
                    reread.insert(entry.path.clone());
                    files.insert(
                        entry.path,
                        CachedFile {
                            resolved: entry.resolved,
                            stamp,
                            reading,
                            checked,
                        },
                    );
                }
            }
        }
        // What is left was removed from the directory.
        changed |= !self.files.is_empty();
        self.files = files;
        self.listing_problems = listing.problems;
        self.loaded = true;
        if changed {
            self.set = Arc::new(self.assemble());
        }
        Refresh {
            set: self.set.clone(),
            changed,
            reread,
        }
    }

    /// The result of the last refresh, as an unchanged one (when the
    /// directory is known not to have changed).
    pub fn unchanged(&self) -> Refresh {
        Refresh {
            set: self.set.clone(),
            changed: false,
            reread: BTreeSet::new(),
        }
    }

    /// The directories whose changes matter besides the manifests
    /// directory itself: those holding the targets of its links.
    fn link_target_dirs(&self) -> BTreeSet<PathBuf> {
        self.files
            .iter()
            .filter(|(path, file)| file.resolved.parent() != path.parent())
            .filter_map(|(_, file)| file.resolved.parent().map(Path::to_path_buf))
            .collect()
    }

    /// The valid objects and every problem, from the cached files.
    fn assemble(&self) -> ManifestSet {
        let mut set = ManifestSet {
            problems: self.listing_problems.clone(),
            ..ManifestSet::default()
        };
        let mut valid: Vec<&Document> = Vec::new();
        for file in self.files.values() {
            set.problems.extend(file.reading.problems.iter().cloned());
            for (doc, problems) in file.reading.documents.iter().zip(&file.checked) {
                if problems.is_empty() {
                    valid.push(doc);
                } else {
                    set.problems.extend(problems.iter().cloned());
                }
            }
        }
        // Duplicates never run. Conflicting RetentionPolicies are reported but
        // still reconciled: each then reports Conflict, and nothing is deleted.
        let duplicates = duplicate_problems(&valid);
        let rejected: BTreeSet<String> =
            duplicates.iter().filter_map(|p| p.object.clone()).collect();
        set.problems.extend(duplicates);
        set.problems.extend(policy_conflict_problems(&valid));
        for doc in valid.into_iter().filter(|d| !rejected.contains(&d.label())) {
            if let Err(problem) = add_document(&mut set, doc) {
                set.problems.push(problem);
            }
        }
        set
    }
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
fn secret_data(secret: &Value) -> BTreeMap<String, SecretValue> {
    let mut data = BTreeMap::new();
    if let Some(encoded) = secret.get("data").and_then(Value::as_object) {
        for (key, value) in encoded {
            let decoded = value
                .as_str()
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok());
            // Not base64 at all: validation reports the manifest; the key
            // stays absent.
            if let Some(bytes) = decoded {
                let value = match String::from_utf8(bytes) {
                    Ok(text) => SecretValue::Text(SecretString::new(text)),
                    Err(_) => SecretValue::NotUtf8,
                };
                data.insert(key.clone(), value);
            }
        }
    }
    if let Some(plain) = secret.get("stringData").and_then(Value::as_object) {
        for (key, value) in plain {
            if let Some(text) = value.as_str() {
                data.insert(key.clone(), SecretValue::Text(SecretString::new(text)));
            }
        }
    }
    data
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
    /// Reconciled, but reporting `Ready=False`: the object could not do its
    /// work (a failed erasure, a shard that cannot progress, a held policy).
    pub not_ready: Vec<(String, String)>,
    pub paused: Vec<String>,
    pub invalid: Vec<String>,
    /// What else the pass did, one line each.
    pub notes: Vec<String>,
}

impl PassReport {
    /// Whether every object did its work: nothing failed, nothing reports
    /// `Ready=False`, no manifest is invalid (`run --once` exits 0 only then).
    pub fn is_success(&self) -> bool {
        self.failed.is_empty() && self.not_ready.is_empty() && self.invalid.is_empty()
    }
}

/// Runs the reconcilers over a manifests directory.
pub struct ManifestsEngine {
    dir: PathBuf,
    store: StatusStore,
    ctx: Context,
    secrets: Arc<std::sync::RwLock<SecretMap>>,
    state: std::sync::Mutex<EngineState>,
}

/// What the engine remembers between passes.
#[derive(Debug, Default)]
struct EngineState {
    cache: ManifestCache,
    /// Problems already logged, so an invalid manifest is reported once per
    /// change of its file, not at every pass.
    reported: BTreeSet<String>,
    /// Status files already reported as not written by the operator.
    reported_foreign: BTreeSet<PathBuf>,
    /// The earliest requeue time of the objects of the last pass; `None`
    /// when nothing is scheduled.
    next_due: Option<DateTime<Utc>>,
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
            state: Default::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EngineState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn store(&self) -> &StatusStore {
        &self.store
    }

    /// One pass over the directory. With `force`, every object is reconciled
    /// (as `--once` does); otherwise only those due: new, changed, or past
    /// their requeue time.
    pub async fn pass(&self, force: bool) -> PassReport {
        let refresh = self.state().cache.refresh(&self.dir);
        self.pass_over(refresh, force).await
    }

    async fn pass_over(&self, refresh: Refresh, force: bool) -> PassReport {
        let set = refresh.set;
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
        {
            let mut state = self.state();
            let mut current = BTreeSet::new();
            for problem in &set.problems {
                let line = problem.to_string();
                let fresh =
                    refresh.reread.contains(&problem.file) || !state.reported.contains(&line);
                if fresh {
                    tracing::warn!(problem = %line, "invalid manifest skipped");
                }
                report.invalid.push(line.clone());
                current.insert(line);
            }
            state.reported = current;
        }
        let mut next_due: Option<DateTime<Utc>> = None;
        for object in &set.policies {
            self.reconcile_one(object.clone(), force, &mut report, &mut next_due)
                .await;
        }
        for object in &set.schedules {
            self.reconcile_one(object.clone(), force, &mut report, &mut next_due)
                .await;
        }
        for object in &set.shards {
            self.reconcile_one(object.clone(), force, &mut report, &mut next_due)
                .await;
        }
        for object in &set.deletions {
            self.reconcile_one(object.clone(), force, &mut report, &mut next_due)
                .await;
        }
        // Statuses only go when manifests go: nothing to do otherwise.
        if force || refresh.changed {
            self.forget_removed(&set, &mut report).await;
        }
        self.state().next_due = next_due;
        report
    }

    /// Objects whose manifest is gone: their status file goes (data work is
    /// never undone). Only status files the operator wrote are considered:
    /// one whose content does not match its name is reported and left alone.
    async fn forget_removed(&self, set: &ManifestSet, report: &mut PassReport) {
        let present = set.labels();
        let invalid_objects: BTreeSet<String> = set
            .problems
            .iter()
            .filter_map(|p| p.object.clone())
            .collect();
        let (stored, foreign) = match self.store.list_with_foreign() {
            Ok(listed) => listed,
            Err(error) => {
                report
                    .failed
                    .push(("status directory".into(), error.to_string()));
                return;
            }
        };
        {
            let mut state = self.state();
            for file in &foreign {
                if !state.reported_foreign.contains(&file.path) {
                    tracing::warn!(file = %file.path.display(), reason = %file.reason, "not a status file written by the operator; left alone");
                }
            }
            state.reported_foreign = foreign.into_iter().map(|f| f.path).collect();
        }
        // A file that could not be read whole (being written, truncated,
        // not UTF-8, too large, a link refused) may still hold objects that
        // are missing from this set: which ones is unknown, so no status
        // goes until every file reads again.
        if let Some(unreadable) = set.problems.iter().find(|p| p.object.is_none()) {
            if !stored.is_empty() {
                report.notes.push(format!(
                    "statuses kept: {} cannot be read whole, so no manifest is known to be removed",
                    unreadable.file.display()
                ));
            }
            return;
        }
        self.retire_absent_shards(set, &invalid_objects, report)
            .await;
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

    /// Retires the watermark rows no ArchiverShard manifest names any more
    /// (removed, also while the operator was not running), so the derived
    /// views stop waiting on them. Not while a shard manifest is invalid:
    /// its shard id is unknown, and it may be the one a row belongs to.
    async fn retire_absent_shards(
        &self,
        set: &ManifestSet,
        invalid_objects: &BTreeSet<String>,
        report: &mut PassReport,
    ) {
        let Some(pool) = self.ctx.db.as_ref() else {
            return;
        };
        if invalid_objects
            .iter()
            .any(|label| label.starts_with("ArchiverShard/"))
        {
            return;
        }
        let present: Vec<i32> = set.shards.iter().map(|shard| shard.spec.shard_id).collect();
        match crate::archive::lifecycle::retire_absent(
            pool,
            &present,
            // The directory is the whole configuration of this database.
            crate::archive::lifecycle::RetireScope::Everything,
            self.ctx.clock.now(),
        )
        .await
        {
            Ok(retired) if retired.is_empty() => {}
            Ok(retired) => {
                tracing::info!(shards = ?retired, "no ArchiverShard names these shards any more: retired, the derived views no longer wait on them");
                report.notes.push(format!(
                    "retired shard(s) {retired:?}: no ArchiverShard names them; the derived views no longer wait on them"
                ));
            }
            Err(error) => report.failed.push((
                "shard lifecycle".into(),
                format!("retiring removed shards: {error}"),
            )),
        }
    }

    async fn reconcile_one<K: Managed>(
        &self,
        mut object: K,
        force: bool,
        report: &mut PassReport,
        next_due: &mut Option<DateTime<Utc>>,
    ) {
        let label = object_label(&object);
        let now = self.ctx.clock.now();
        let namespace = object.namespace().unwrap_or_else(|| "default".into());
        let kind = K::kind(&()).to_string();
        let mut schedule = |at: DateTime<Utc>| {
            *next_due = Some(next_due.map_or(at, |due| due.min(at)));
        };
        let previous = match self.store.load(&kind, &namespace, &object.name_any()) {
            Ok(previous) => previous,
            Err(error) => {
                report.failed.push((label, error.to_string()));
                schedule(now + chrono_duration(backoff(1)));
                return;
            }
        };
        let spec_of = |object: &K| {
            serde_json::to_value(object)
                .map(|v| v["spec"].clone())
                .unwrap_or_default()
        };
        let file_spec_hash = sha256_hex(&spec_of(&object));
        // A change the kind's transition rule refuses is not taken, as the
        // API server would not take it: the object runs on as accepted.
        let mut spec_hash = file_spec_hash.clone();
        let mut refusal = None;
        if let Some(stored) = &previous
            && let Some((accepted, why)) = refused_change(&object, stored, &file_spec_hash)
        {
            object = accepted;
            spec_hash = stored.spec_hash.clone();
            refusal = Some(why);
        }
        // The manifest as written: any edit wakes a reconcile, refused or not.
        let trigger_hash = sha256_hex(&(file_spec_hash.as_str(), object.annotations()));
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
            accepted_spec: None,
        });
        if stored.spec_hash != spec_hash {
            stored.generation += 1;
            stored.spec_hash = spec_hash;
        }
        if K::SPEC_TRANSITION_RULE {
            stored.accepted_spec = Some(spec_of(&object));
        }
        let changed = stored.trigger_hash != trigger_hash;
        stored.trigger_hash = trigger_hash;
        if let Some(why) = &refusal {
            report.invalid.push(format!("{label}: {why}"));
        }
        mark_refusal(&mut stored, &label, refusal.as_deref(), force, now);
        self.dress(&mut object, &stored);

        stored.paused = is_paused(&object);
        if stored.paused {
            report.paused.push(label.clone());
            self.save(&stored, previous.as_ref(), report, &label);
            return;
        }
        let due = force || changed || stored.next_reconcile.is_none_or(|next| next <= now);
        if !due {
            if let Some(next) = stored.next_reconcile {
                schedule(next);
            }
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
                if let Some(why) = not_ready(&stored.status)
                    && !is_suspended(&object)
                {
                    report.not_ready.push((label.clone(), why));
                }
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
        if let Some(next) = stored.next_reconcile {
            schedule(next);
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
    /// directory as soon as it changes. Only the leader reconciles. A second
    /// in which no file changed and no object is due costs one `stat` per
    /// file and nothing else.
    pub async fn run(
        &self,
        mut leadership: Leadership,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        // Poll the shutdown future once now: a signal listener it sets up
        // exists from here on, so a SIGTERM that arrives during a long first
        // pass is not lost (a listener created later never sees it).
        tokio::select! {
            biased;
            _ = &mut shutdown => return,
            _ = std::future::ready(()) => {}
        }
        let mut was_leader = false;
        // File-system notifications say when to look again; without them
        // (or when they cannot be set up) the directory is polled.
        let watch = DirectoryWatch::new(&self.dir);
        let mut last_scan: Option<Instant> = None;
        loop {
            let leading = leadership.is_leader();
            if was_leader && !leading {
                // No pass runs (they are awaited below): the reconcilers'
                // gauges must not stay frozen on a standby.
                self.ctx.metrics.forget_leader_state();
            }
            if leading {
                // Events are drained before the scan: a change made during
                // the scan leaves an event for the next round.
                let notified = watch.as_ref().is_none_or(DirectoryWatch::take_events);
                let scan_due = last_scan.is_none_or(|at| at.elapsed() >= FULL_SCAN_INTERVAL);
                let refresh = if notified || scan_due || !was_leader {
                    last_scan = Some(Instant::now());
                    let mut state = self.state();
                    let refresh = state.cache.refresh(&self.dir);
                    if let Some(watch) = &watch {
                        for dir in state.cache.link_target_dirs() {
                            watch.add(&dir);
                        }
                    }
                    refresh
                } else {
                    self.state().cache.unchanged()
                };
                let now = self.ctx.clock.now();
                let due = self.state().next_due.is_some_and(|due| due <= now);
                if refresh.changed && was_leader {
                    tracing::info!(dir = %self.dir.display(), "manifests changed; reconciling");
                }
                // A new leader reconciles everything once, as a controller
                // does after its initial list: the previous leader may have
                // died half-way.
                if !was_leader || refresh.changed || due {
                    let report = self.pass_over(refresh, !was_leader).await;
                    if !report.failed.is_empty() {
                        tracing::warn!(
                            failed = report.failed.len(),
                            "some objects failed to reconcile"
                        );
                    }
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

/// The manifest's object with the spec last accepted, and why its own spec
/// is refused, when the kind's transition rule (the CEL rule the API server
/// runs on update) refuses the change from the accepted spec.
fn refused_change<K: Managed>(
    object: &K,
    stored: &StoredObject,
    file_spec_hash: &str,
) -> Option<(K, String)> {
    if !K::SPEC_TRANSITION_RULE || stored.spec_hash == file_spec_hash {
        return None;
    }
    // A status written before specs were remembered has nothing to compare.
    let accepted_spec = stored.accepted_spec.as_ref()?;
    let mut accepted = serde_json::to_value(object).ok()?;
    let changed = changed_fields(&accepted["spec"], accepted_spec);
    accepted["spec"] = accepted_spec.clone();
    let accepted: K = match serde_json::from_value(accepted) {
        Ok(accepted) => accepted,
        Err(error) => {
            tracing::warn!(object = %object_label(object), %error, "the accepted spec no longer reads; the manifest's spec is taken");
            return None;
        }
    };
    let errors = kube::core::cel::validate_cel_update(object, &accepted).err()?;
    let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
    Some((
        accepted,
        format!(
            "{} (changed: {changed}); the object runs on with its accepted spec",
            reasons.join("; ")
        ),
    ))
}

/// The top-level spec fields that differ, as `spec.a, spec.b`.
fn changed_fields(new: &Value, old: &Value) -> String {
    let keys: BTreeSet<&String> = [new, old]
        .into_iter()
        .filter_map(Value::as_object)
        .flat_map(|fields| fields.keys())
        .collect();
    keys.into_iter()
        .filter(|key| new.get(key) != old.get(key))
        .map(|key| format!("spec.{key}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sets or clears the [`SPEC_CHANGE_REFUSED`] condition of a stored status.
/// A new (or different) refusal is logged and recorded as a warning event;
/// with `force` (a new process, `--once`) a standing one is logged again.
fn mark_refusal(
    stored: &mut StoredObject,
    label: &str,
    refusal: Option<&str>,
    force: bool,
    now: DateTime<Utc>,
) {
    let mut conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> =
        serde_json::from_value(stored.status["conditions"].clone()).unwrap_or_default();
    let standing = conditions
        .iter()
        .position(|c| c.type_ == SPEC_CHANGE_REFUSED);
    match (refusal, standing) {
        (None, None) => return,
        (None, Some(index)) => {
            tracing::info!(object = %label, "the manifest's spec is allowed again: refusal cleared");
            conditions.remove(index);
        }
        (Some(why), standing) => {
            let news = standing.is_none_or(|index| conditions[index].message != why);
            if news || force {
                tracing::warn!(object = %label, refusal = %why, "spec change refused by the CRD's transition rule");
            }
            if !news {
                return;
            }
            record_events(
                stored,
                &[Event::warning(SPEC_CHANGE_REFUSED, "Validate", why)],
                now,
            );
            set_condition(
                &mut conditions,
                ConditionUpdate {
                    type_: SPEC_CHANGE_REFUSED,
                    status: true,
                    reason: "TransitionRule",
                    message: why.to_string(),
                },
                Some(stored.generation),
                now,
            );
        }
    }
    if !stored.status.is_object() {
        stored.status = Value::Object(serde_json::Map::new());
    }
    stored.status["conditions"] = serde_json::to_value(conditions).unwrap_or_default();
}

/// `spec.suspend: true`: the object was stopped on purpose, so its
/// `Ready=False` is what was asked for, not a failure of the pass (the
/// status still says it).
fn is_suspended<K: serde::Serialize>(object: &K) -> bool {
    serde_json::to_value(object)
        .ok()
        .and_then(|value| value.pointer("/spec/suspend").and_then(Value::as_bool))
        .unwrap_or(false)
}

/// Why a reconciled object is not ready: its `Ready` condition is `False`
/// (reason and message), or `None` when it is ready or reports no condition.
fn not_ready(status: &Value) -> Option<String> {
    let ready = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    (ready["status"] == "False").then(|| {
        format!(
            "Ready=False {}: {}",
            ready["reason"].as_str().unwrap_or(""),
            ready["message"].as_str().unwrap_or("")
        )
    })
}

/// How often the directory is scanned even without a notification: the
/// safety net for changes notifications do not report (a file system
/// mounted over the network, a notification queue that overflowed).
const FULL_SCAN_INTERVAL: Duration = Duration::from_secs(60);

/// Notifications of changes in the manifests directory and in the
/// directories its links point into (Linux inotify). When nothing changed,
/// a round costs one `read` that finds nothing.
struct DirectoryWatch {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
}

impl DirectoryWatch {
    #[cfg(target_os = "linux")]
    fn new(dir: &Path) -> Option<Self> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: inotify_init1 takes no pointers; a negative result is an error.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "no file-system notifications; polling the manifests directory");
            return None;
        }
        // SAFETY: fd is a new descriptor owned by nobody else.
        let watch = Self {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        };
        watch.add(dir).then_some(watch)
    }

    #[cfg(not(target_os = "linux"))]
    fn new(_dir: &Path) -> Option<Self> {
        None
    }

    /// Watches one directory; false (with a warning) when it cannot.
    #[cfg(target_os = "linux")]
    fn add(&self, dir: &Path) -> bool {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::ffi::OsStrExt as _;
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        let mask = libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MODIFY
            | libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO
            | libc::IN_ATTRIB
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF
            | libc::IN_ONLYDIR;
        // SAFETY: path is a NUL-terminated string that outlives the call.
        let added = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), mask) };
        if added < 0 {
            tracing::warn!(dir = %dir.display(), error = %std::io::Error::last_os_error(), "cannot watch a directory; relying on the periodic scan");
        }
        added >= 0
    }

    #[cfg(not(target_os = "linux"))]
    fn add(&self, _dir: &Path) -> bool {
        false
    }

    /// Whether anything happened since the last call (every pending event
    /// is consumed). An error counts as a change: better a scan too many.
    #[cfg(target_os = "linux")]
    fn take_events(&self) -> bool {
        use std::os::fd::AsRawFd as _;
        let mut buffer = [0u8; 4096];
        let mut seen = false;
        loop {
            // SAFETY: the buffer is valid for its whole length.
            let read = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if read > 0 {
                seen = true;
                continue;
            }
            if read == 0 {
                return true;
            }
            let error = std::io::Error::last_os_error();
            match error.kind() {
                std::io::ErrorKind::WouldBlock => return seen,
                std::io::ErrorKind::Interrupted => {}
                _ => return true,
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn take_events(&self) -> bool {
        true
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
