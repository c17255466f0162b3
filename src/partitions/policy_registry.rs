//! Where the PartitionSchedule reconciler finds the RetentionPolicy it
//! references.
//!
//! Objects come either from the API server or from a directory of
//! manifests, so this module must not query Kubernetes. Instead the
//! RetentionPolicy reconciler (the one place that knows which policy is in
//! force, whether two conflict, and whether a shrink is held) publishes what
//! it decided into this registry (`Context::enforced_policies`, one per
//! operator), and drops read it:
//!
//! - [`EnforcedPolicies::publish`] after a successful reconcile, with the
//!   tier windows that are actually enforced (while a shrink is held: the
//!   previous ones);
//! - [`EnforcedPolicies::conflict`] when another RetentionPolicy is also in
//!   force;
//! - [`EnforcedPolicies::withdraw`] when the object is deleted or no longer
//!   valid.
//!
//! Until something is published, [`EnforcedPolicies::lookup`] answers
//! `Missing` and nothing is dropped: a missing or broken policy must never
//! cause deletion. The registry lives in the leader's context, which is the
//! one both reconcilers run with.
//!
//! [`EnforcedPolicies::in_force`] is what the PartitionSchedule reconciler
//! uses: the registry
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

/// The tier windows each RetentionPolicy's reconciler decided are enforced.
#[derive(Debug, Default)]
pub struct EnforcedPolicies {
    entries: RwLock<BTreeMap<Key, PolicyLookup>>,
}

fn key(namespace: &str, name: &str) -> Key {
    (namespace.to_string(), name.to_string())
}

impl EnforcedPolicies {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the tier windows in force for `namespace/name`, replacing
    /// whatever was there (a conflict included: the caller decided it is over).
    pub fn publish(&self, namespace: &str, name: &str, spec: RetentionPolicySpec) {
        self.write()
            .insert(key(namespace, name), PolicyLookup::Found(Arc::new(spec)));
    }

    /// Marks `namespace/name` as conflicting: drops stop until it is published again.
    pub fn conflict(&self, namespace: &str, name: &str, reason: impl Into<String>) {
        self.write().insert(
            key(namespace, name),
            PolicyLookup::Conflict {
                reason: reason.into(),
            },
        );
    }

    /// Forgets `namespace/name` (the object was deleted or became invalid).
    pub fn withdraw(&self, namespace: &str, name: &str) {
        self.write().remove(&key(namespace, name));
    }

    /// What is known about `namespace/name`.
    pub fn lookup(&self, namespace: &str, name: &str) -> PolicyLookup {
        self.entries
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
    pub fn in_force(
        &self,
        directory: &PolicyDirectory,
        namespace: &str,
        name: &str,
    ) -> PolicyLookup {
        let label = format!("{namespace}/{name}");
        match directory.in_force_named(&label) {
            InForce::One { .. } => self.lookup(namespace, name),
            InForce::Conflict(labels) => PolicyLookup::Conflict {
                reason: format!("RetentionPolicies in force: {}", labels.join(", ")),
            },
            InForce::Missing | InForce::NotReady => PolicyLookup::Missing,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Key, PolicyLookup>> {
        self.entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
