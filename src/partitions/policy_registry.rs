//! Where the PartitionSchedule reconciler finds the RetentionPolicy it
//! references.
//!
//! Objects come either from the API server or from a directory of
//! manifests, so this module must not query Kubernetes. Instead the
//! RetentionPolicy reconciler (the one place that knows which policy is in
//! force, whether two conflict, and whether a shrink is held) publishes what
//! it decided into this process-wide registry, and drops read it:
//!
//! - [`publish`] after a successful reconcile, with the tier windows that
//!   are actually enforced (while a shrink is held: the previous ones);
//! - [`conflict`] when another RetentionPolicy is also in force;
//! - [`withdraw`] when the object is deleted or no longer valid.
//!
//! Until something is published, [`lookup`] answers `Missing` and nothing is
//! dropped: a missing or broken policy must never cause deletion. The
//! registry lives in the leader's process, which is the process that runs
//! both reconcilers.
//!
//! [`in_force`] is what the PartitionSchedule reconciler uses: the registry
//! entry, but only while the source's directory of RetentionPolicies
//! (`Context::policies`, always complete) agrees that this very policy is
//! the one in force. A registry entry can be one reconcile stale (a second
//! policy appeared, the referenced one was deleted); the directory closes
//! that gap, and it can only ever withhold drops, never allow them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::api::RetentionPolicySpec;
use crate::retention::directory::{InForce, PolicyDirectory};

/// What the registry knows about one RetentionPolicy.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyLookup {
    /// Nothing published under that name (yet): no drops.
    Missing,
    /// The policy conflicts with another one in force: no drops until resolved.
    Conflict { reason: String },
    /// The tier windows in force.
    Found(Arc<RetentionPolicySpec>),
}

type Key = (String, String);

static REGISTRY: RwLock<BTreeMap<Key, PolicyLookup>> = RwLock::new(BTreeMap::new());

fn key(namespace: &str, name: &str) -> Key {
    (namespace.to_string(), name.to_string())
}

/// Records the tier windows in force for `namespace/name`, replacing
/// whatever was there (a conflict included: the caller decided it is over).
pub fn publish(namespace: &str, name: &str, spec: RetentionPolicySpec) {
    write().insert(key(namespace, name), PolicyLookup::Found(Arc::new(spec)));
}

/// Marks `namespace/name` as conflicting: drops stop until it is published again.
pub fn conflict(namespace: &str, name: &str, reason: impl Into<String>) {
    write().insert(
        key(namespace, name),
        PolicyLookup::Conflict {
            reason: reason.into(),
        },
    );
}

/// Forgets `namespace/name` (the object was deleted or became invalid).
pub fn withdraw(namespace: &str, name: &str) {
    write().remove(&key(namespace, name));
}

/// What is known about `namespace/name`.
pub fn lookup(namespace: &str, name: &str) -> PolicyLookup {
    REGISTRY
        .read()
        // A poisoned lock means a writer panicked between two whole-entry
        // writes; every entry is still a complete value.
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&key(namespace, name))
        .cloned()
        .unwrap_or(PolicyLookup::Missing)
}

/// The tier windows to drop by for the policy `namespace/name`: published
/// by its reconciler and, per `directory`, the one RetentionPolicy in force.
pub fn in_force(directory: &PolicyDirectory, namespace: &str, name: &str) -> PolicyLookup {
    let label = format!("{namespace}/{name}");
    match directory.in_force_named(&label) {
        InForce::One { .. } => lookup(namespace, name),
        InForce::Conflict(labels) => PolicyLookup::Conflict {
            reason: format!("RetentionPolicies in force: {}", labels.join(", ")),
        },
        InForce::Missing | InForce::NotReady => PolicyLookup::Missing,
    }
}

fn write() -> std::sync::RwLockWriteGuard<'static, BTreeMap<Key, PolicyLookup>> {
    REGISTRY
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
