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
//! cause deletion. The registry lives in the process's context, which is the
//! one both reconcilers run with; the Kubernetes source empties it when a
//! term of leadership begins ([`EnforcedPolicies::clear`]), since another
//! leader may have accepted other tier windows meanwhile.
//!
//! [`EnforcedPolicies::in_force`] is what the PartitionSchedule reconciler
//! uses: the registry
//! entry, but only while the source's directory of RetentionPolicies
//! (`Context::policies`, always complete) agrees that this very policy is
//! the one in force. A registry entry can be one reconcile stale (a second
//! policy appeared, the referenced one was deleted); the directory closes
//! that gap, and it can only ever withhold drops, never allow them.
//!
//! The two reconcilers run independently (a fresh install applies both
//! objects at once, and the schedule's first reconcile usually comes before
//! the policy's reconciler has accepted anything). So every change of an
//! entry is announced ([`EnforcedPolicies::changes`]): the Kubernetes source
//! reconciles the PartitionSchedules again on it, instead of leaving them
//! reporting a policy "not in force" until their next periodic reconcile.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::api::RetentionPolicySpec;
use crate::retention::directory::{InForce, PolicyDirectory};

/// What the registry knows about one RetentionPolicy.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyLookup {
    /// Not in force (yet), and why: no drops.
    Missing(NotInForce),
    /// The policy conflicts with another one in force: no drops until resolved.
    Conflict { reason: String },
    /// The tier windows in force.
    Found(Arc<RetentionPolicySpec>),
}

/// Why a referenced RetentionPolicy is not in force. Each says what state
/// the policy is in, never when it was seen, so a status built from it
/// stays the same for as long as the state does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotInForce {
    /// The source has not listed every RetentionPolicy yet.
    StillListing,
    /// The source lists no RetentionPolicy at all.
    NoPolicy,
    /// Another RetentionPolicy (`namespace/name`) is the one in force: the
    /// referenced one does not exist.
    OtherInForce(String),
    /// The referenced policy is the one listed, but its reconciler has not
    /// published tier windows: it has not reconciled yet, or it is invalid,
    /// suspended or withheld (its own status says which).
    NotPublished,
}

type Key = (String, String);

/// The tier windows each RetentionPolicy's reconciler decided are enforced.
#[derive(Debug)]
pub struct EnforcedPolicies {
    entries: RwLock<BTreeMap<Key, PolicyLookup>>,
    /// Bumped on every change of an entry (not on a publish of the same
    /// windows, which every periodic reconcile of the policy makes).
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for EnforcedPolicies {
    fn default() -> Self {
        Self {
            entries: RwLock::default(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }
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
        self.set(
            key(namespace, name),
            Some(PolicyLookup::Found(Arc::new(spec))),
        );
    }

    /// Marks `namespace/name` as conflicting: drops stop until it is published again.
    pub fn conflict(&self, namespace: &str, name: &str, reason: impl Into<String>) {
        self.set(
            key(namespace, name),
            Some(PolicyLookup::Conflict {
                reason: reason.into(),
            }),
        );
    }

    /// Forgets `namespace/name` (the object was deleted or became invalid).
    pub fn withdraw(&self, namespace: &str, name: &str) {
        self.set(key(namespace, name), None);
    }

    /// Forgets every entry: a new term of leadership starts from what its
    /// own RetentionPolicy reconciles publish, not from what this process
    /// published in an earlier term (another leader may have accepted other
    /// tier windows since; until republished, nothing is dropped).
    pub fn clear(&self) {
        let emptied = {
            let mut entries = self.write();
            let had = !entries.is_empty();
            entries.clear();
            had
        };
        if emptied {
            self.announce();
        }
    }

    /// A receiver that sees a new value after every change of an entry.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
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
            .unwrap_or(PolicyLookup::Missing(NotInForce::NotPublished))
    }

    /// The tier windows to drop by for the policy `namespace/name`: published
    /// by its reconciler and, per `directory`, the one RetentionPolicy in force.
    pub(crate) fn in_force(
        &self,
        directory: &PolicyDirectory,
        namespace: &str,
        name: &str,
    ) -> PolicyLookup {
        let label = format!("{namespace}/{name}");
        match directory.in_force() {
            InForce::One { label: found, .. } if found == label => self.lookup(namespace, name),
            InForce::One { label: other, .. } => {
                PolicyLookup::Missing(NotInForce::OtherInForce(other))
            }
            InForce::Conflict(labels) => PolicyLookup::Conflict {
                reason: format!("RetentionPolicies in force: {}", labels.join(", ")),
            },
            InForce::Missing => PolicyLookup::Missing(NotInForce::NoPolicy),
            InForce::NotReady => PolicyLookup::Missing(NotInForce::StillListing),
        }
    }

    /// Replaces (or, with `None`, removes) one entry, announcing a change.
    fn set(&self, key: Key, entry: Option<PolicyLookup>) {
        let changed = {
            let mut entries = self.write();
            let before = match &entry {
                Some(entry) => entries.insert(key, entry.clone()),
                None => entries.remove(&key),
            };
            before != entry
        };
        if changed {
            self.announce();
        }
    }

    fn announce(&self) {
        self.changed
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Key, PolicyLookup>> {
        self.entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RetentionPolicySpec {
        crate::api::retention_policy::example_spec()
    }

    fn listed(labels: &[&str]) -> PolicyDirectory {
        let directory = PolicyDirectory::new();
        directory.replace_all(labels.iter().map(|label| (label.to_string(), spec())));
        directory
    }

    #[test]
    fn a_policy_is_found_only_once_published_and_listed_as_the_one_in_force() {
        let registry = EnforcedPolicies::new();
        let directory = PolicyDirectory::new();
        assert_eq!(
            registry.in_force(&directory, "archiver", "tiers"),
            PolicyLookup::Missing(NotInForce::StillListing)
        );
        let directory = listed(&[]);
        assert_eq!(
            registry.in_force(&directory, "archiver", "tiers"),
            PolicyLookup::Missing(NotInForce::NoPolicy)
        );
        let directory = listed(&["archiver/other"]);
        assert_eq!(
            registry.in_force(&directory, "archiver", "tiers"),
            PolicyLookup::Missing(NotInForce::OtherInForce("archiver/other".into()))
        );
        let directory = listed(&["archiver/tiers"]);
        assert_eq!(
            registry.in_force(&directory, "archiver", "tiers"),
            PolicyLookup::Missing(NotInForce::NotPublished)
        );
        registry.publish("archiver", "tiers", spec());
        assert!(matches!(
            registry.in_force(&directory, "archiver", "tiers"),
            PolicyLookup::Found(_)
        ));
    }

    #[test]
    fn every_change_is_announced_and_a_republished_entry_is_not() {
        let registry = EnforcedPolicies::new();
        let mut changes = registry.changes();
        registry.publish("archiver", "tiers", spec());
        assert!(changes.has_changed().expect("the registry is alive"));
        changes.mark_unchanged();

        // Every reconcile of the policy publishes the same windows again.
        registry.publish("archiver", "tiers", spec());
        registry.withdraw("archiver", "absent");
        assert!(!changes.has_changed().expect("the registry is alive"));

        let mut longer = spec();
        longer.tiers.public.per_minute_days += 1;
        registry.publish("archiver", "tiers", longer);
        assert!(changes.has_changed().expect("the registry is alive"));
        changes.mark_unchanged();

        registry.conflict("archiver", "tiers", "also in force: other");
        assert!(changes.has_changed().expect("the registry is alive"));
        changes.mark_unchanged();

        registry.withdraw("archiver", "tiers");
        assert!(changes.has_changed().expect("the registry is alive"));
        changes.mark_unchanged();

        registry.publish("archiver", "tiers", spec());
        changes.mark_unchanged();
        registry.clear();
        assert!(changes.has_changed().expect("the registry is alive"));
        assert_eq!(
            registry.lookup("archiver", "tiers"),
            PolicyLookup::Missing(NotInForce::NotPublished)
        );
    }
}
