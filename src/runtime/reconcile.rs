//! The reconciler interface every kind implements, independent of where
//! objects come from (the API server or a directory of manifests): the object
//! and a [`Context`] in; the desired status, events and a requeue time out.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::{Context, SecretError};
use crate::api::common::{ConditionUpdate, RECONCILE_ANNOTATION, condition_types, set_condition};
use crate::api::validation::{Document, validate_document};

/// Finalizer of the kinds that must finish work before they go away.
pub const FINALIZER: &str = "archiver.uptime.dev/cleanup";

/// Severity of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

/// Something a person should see in `kubectl describe` (or the status file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub type_: EventType,
    /// PascalCase reason, e.g. `Reconciled`, `InvalidSpec`.
    pub reason: String,
    /// PascalCase action, e.g. `Reconcile`.
    pub action: String,
    pub note: String,
}

impl Event {
    /// A `Normal` event.
    pub(crate) fn normal(reason: &str, action: &str, note: impl Into<String>) -> Self {
        Self::new(EventType::Normal, reason, action, note)
    }

    /// A `Warning` event.
    pub(crate) fn warning(reason: &str, action: &str, note: impl Into<String>) -> Self {
        Self::new(EventType::Warning, reason, action, note)
    }

    fn new(type_: EventType, reason: &str, action: &str, note: impl Into<String>) -> Self {
        Self {
            type_,
            reason: reason.into(),
            action: action.into(),
            note: note.into(),
        }
    }
}

/// What the cleanup of a deleted object found.
#[derive(Debug, Clone, PartialEq)]
pub enum CleanupOutcome<S> {
    /// Nothing holds the object any more: its finalizer may go.
    Finished,
    /// Work the deletion must wait for: the finalizer stays, `outcome`'s
    /// status and events are written as a reconcile's are (so people see
    /// why the object is still there), and cleanup runs again with backoff.
    Waiting { outcome: Outcome<S>, why: String },
}

/// What one reconcile wants written back.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<S> {
    pub status: S,
    pub events: Vec<Event>,
    pub requeue_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{context}: {source}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("no database configured (set --database-url or DATABASE_URL)")]
    NoDatabase,
    #[error("partitions: {0}")]
    Partitions(#[source] crate::partitions::PartitionError),
    #[error("retention: {0}")]
    Retention(#[source] crate::retention::RetentionError),
    /// A DeletionRequest deleted before its erasure completed keeps its
    /// finalizer: the deletion waits for the erasure.
    #[error("erasure: the object stays until its erasure has completed ({why})")]
    ErasureNotCompleted { why: String },
    #[error("drain tick: {0}")]
    DrainTick(#[source] crate::archive::worker::DrainError),
    #[error("connecting to the shard's Redis: {0}")]
    RedisConnect(#[source] redis::RedisError),
    #[error("applying Deployment {deployment}: {source}")]
    ApplyDeployment {
        deployment: String,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// Short, bounded label for the failure metric: one per variant.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Secret(_) => "Secret",
            Self::Database { .. } => "Database",
            Self::NoDatabase => "NoDatabase",
            Self::Partitions(_) => "Partitions",
            Self::Retention(_) => "Retention",
            Self::ErasureNotCompleted { .. } => "ErasureNotCompleted",
            Self::DrainTick(_) => "DrainTick",
            Self::RedisConnect(_) => "RedisConnect",
            Self::ApplyDeployment { .. } => "ApplyDeployment",
        }
    }

    /// `map_err` adapter that says what was being done to a database error.
    pub fn database(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let context = context.into();
        move |source| Self::Database { context, source }
    }
}

/// Status types with the fields every kind has.
pub trait ObjectStatus:
    Clone + Default + Serialize + DeserializeOwned + PartialEq + Debug + Send + Sync + 'static
{
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn set_observed_generation(&mut self, generation: Option<i64>);
}

macro_rules! object_status {
    ($($status:ty),*) => {$(
        impl ObjectStatus for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
            }
        }
    )*};
}

object_status!(
    crate::api::ArchiverShardStatus,
    crate::api::RetentionPolicyStatus,
    crate::api::PartitionScheduleStatus,
    crate::api::DeletionRequestStatus
);

/// A kind the operator reconciles.
pub trait Managed:
    Resource<DynamicType = ()>
    + kube::CustomResourceExt
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    type Status: ObjectStatus;

    /// Whether the CRD has a transition rule on the spec (CEL `oldSelf`).
    /// The API server enforces it on update; the manifests source, which
    /// has no API server, remembers the last accepted spec and enforces it.
    const SPEC_TRANSITION_RULE: bool = false;

    fn status(&self) -> Option<&Self::Status>;

    /// Whether the object carries [`FINALIZER`] so that [`Managed::cleanup`]
    /// runs before it disappears.
    fn uses_finalizer() -> bool {
        false
    }

    /// Brings the world in line with the object and returns its new status.
    fn reconcile(
        &self,
        ctx: &Context,
    ) -> impl Future<Output = Result<Outcome<Self::Status>, ReconcileError>> + Send;

    /// Runs when a finalizer-carrying object is deleted. Deleting an object
    /// never undoes data work; this only lets in-flight work finish.
    fn cleanup(
        &self,
        _ctx: &Context,
    ) -> impl Future<Output = Result<CleanupOutcome<Self::Status>, ReconcileError>> + Send {
        async { Ok(CleanupOutcome::Finished) }
    }
}

/// Whether the object is paused with `archiver.uptime.dev/reconcile: disabled`.
pub fn is_paused<K: Resource>(object: &K) -> bool {
    object
        .annotations()
        .get(RECONCILE_ANNOTATION)
        .is_some_and(|value| value == "disabled")
}

/// `Kind/namespace/name` of an object, for logs and status files.
pub(crate) fn object_label<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_else(|| "default".into()),
        object.name_any()
    )
}

/// The same problems `archiver-operator validate` reports for this object.
pub fn spec_problems<K: Managed>(object: &K) -> Vec<String> {
    let value = match serde_json::to_value(object) {
        Ok(value) => value,
        Err(error) => return vec![format!("object does not serialize: {error}")],
    };
    let document = Document {
        file: std::path::PathBuf::from("<object>"),
        index: 0,
        value,
    };
    validate_document(&document)
        .into_iter()
        .map(|problem| match problem.field {
            Some(field) => format!("{field}: {}", problem.reason),
            None => problem.reason,
        })
        .collect()
}

/// The starting point of every reconcile: the previous status with
/// observedGeneration set, and `Ready` false with the reasons when the spec
/// breaks a rule. Returns the status and whether the spec is valid.
pub(crate) fn begin_status<K: Managed>(object: &K, ctx: &Context) -> (K::Status, Vec<String>) {
    let mut status = object.status().cloned().unwrap_or_default();
    status.set_observed_generation(object.meta().generation);
    let problems = spec_problems(object);
    if !problems.is_empty() {
        set_condition(
            status.conditions_mut(),
            ConditionUpdate {
                type_: condition_types::READY,
                status: false,
                reason: "InvalidSpec",
                message: problems.join("; "),
            },
            object.meta().generation,
            ctx.clock.now(),
        );
    }
    (status, problems)
}

/// Marks the status Ready and returns the outcome with a `Reconciled` event
/// (or the `InvalidSpec` warning when `problems` is not empty).
pub fn finish<K: Managed>(
    object: &K,
    ctx: &Context,
    status: K::Status,
    problems: &[String],
    ready_message: &str,
    requeue_after: Duration,
) -> Outcome<K::Status> {
    let mut report = StatusReport::new(object, status, ctx.clock.now());
    let event = if problems.is_empty() {
        report.condition(condition_types::READY, true, "Reconciled", ready_message);
        Event::normal("Reconciled", "Reconcile", ready_message)
    } else {
        Event::warning("InvalidSpec", "Validate", problems.join("; "))
    };
    report.event_if_changed(event);
    report.into_outcome(requeue_after)
}

/// The status, conditions and events one reconcile writes, gathered in one
/// place: every condition is stamped with the object's generation and the
/// same instant, and the stored status (before this reconcile) stays at hand
/// to decide which events are news.
pub(crate) struct StatusReport<'a, K: Managed> {
    object: &'a K,
    pub(crate) status: K::Status,
    pub(crate) events: Vec<Event>,
    now: DateTime<Utc>,
}

impl<'a, K: Managed> StatusReport<'a, K> {
    pub(crate) fn new(object: &'a K, status: K::Status, now: DateTime<Utc>) -> Self {
        Self {
            object,
            status,
            events: Vec::new(),
            now,
        }
    }

    /// Sets condition `type_` (its transition time kept when `on` is unchanged).
    pub(crate) fn condition(
        &mut self,
        type_: &str,
        on: bool,
        reason: &str,
        message: impl Into<String>,
    ) {
        set_condition(
            self.status.conditions_mut(),
            ConditionUpdate {
                type_,
                status: on,
                reason,
                message: message.into(),
            },
            self.object.meta().generation,
            self.now,
        );
    }

    pub(crate) fn event(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Adds `event` only when the status differs from the stored one, so a
    /// steady object does not fill the event log every requeue.
    pub(crate) fn event_if_changed(&mut self, event: Event) {
        if self.changed() {
            self.events.push(event);
        }
    }

    /// Whether the status differs from the stored one.
    pub(crate) fn changed(&self) -> bool {
        self.object.status() != Some(&self.status)
    }

    /// The stored status, before this reconcile.
    pub(crate) fn previous(&self) -> Option<&'a K::Status> {
        self.object.status()
    }

    /// Condition `type_` of the stored status.
    pub(crate) fn previous_condition(&self, type_: &str) -> Option<&'a Condition> {
        previous_condition(self.object, type_)
    }

    /// Whether condition `type_` was `True` in the stored status (None when absent).
    pub(crate) fn was(&self, type_: &str) -> Option<bool> {
        self.previous_condition(type_).map(|c| c.status == "True")
    }

    pub(crate) fn into_outcome(self, requeue_after: Duration) -> Outcome<K::Status> {
        Outcome {
            status: self.status,
            events: self.events,
            requeue_after,
        }
    }
}

/// Condition `type_` of the object's stored status.
pub(crate) fn previous_condition<'a, K: Managed>(
    object: &'a K,
    type_: &str,
) -> Option<&'a Condition> {
    object
        .status()
        .and_then(|status| status.conditions().iter().find(|c| c.type_ == type_))
}

/// The previous status with `Ready` false and the error as its message.
pub fn failed_status<K: Managed>(
    object: &K,
    error: &ReconcileError,
    now: chrono::DateTime<chrono::Utc>,
) -> K::Status {
    let mut status = object.status().cloned().unwrap_or_default();
    status.set_observed_generation(object.meta().generation);
    set_condition(
        status.conditions_mut(),
        ConditionUpdate {
            type_: condition_types::READY,
            status: false,
            reason: "ReconcileFailed",
            message: error.to_string(),
        },
        object.meta().generation,
        now,
    );
    status
}

/// The event that goes with a failed reconcile.
pub fn failure_event(error: &ReconcileError) -> Event {
    Event::warning("ReconcileFailed", "Reconcile", error.to_string())
}
