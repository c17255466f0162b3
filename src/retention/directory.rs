//! Which RetentionPolicy is in force. Exactly one may be: with none, or with
//! two or more (a conflict), nothing is deleted anywhere. Every source keeps
//! this directory complete before any reconcile reads it (the manifests
//! source from the whole directory, the Kubernetes source from its watch
//! cache), so no reconciler can act on a partial view.

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::api::RetentionPolicySpec;

/// The answer to "which tier table is in force?".
#[derive(Debug, Clone, PartialEq)]
pub enum InForce {
    /// No RetentionPolicy at all: nothing may be deleted.
    Missing,
    /// More than one: nothing may be deleted until resolved.
    Conflict(Vec<String>),
    /// Exactly one, by `namespace/name`.
    One {
        label: String,
        spec: Box<RetentionPolicySpec>,
    },
    /// The source has not listed every policy yet: act as if none.
    NotReady,
}

/// Every RetentionPolicy the operator knows of, by `namespace/name`.
#[derive(Debug, Default)]
pub struct PolicyDirectory {
    policies: RwLock<BTreeMap<String, RetentionPolicySpec>>,
    /// Set once a complete list has been loaded.
    ready: std::sync::atomic::AtomicBool,
}

impl PolicyDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, RetentionPolicySpec>> {
        self.policies
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, RetentionPolicySpec>> {
        self.policies
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the whole set with a complete list (a manifests pass, the
    /// watch cache) and marks the directory ready.
    pub fn replace_all(&self, policies: impl IntoIterator<Item = (String, RetentionPolicySpec)>) {
        *self.write() = policies.into_iter().collect();
        self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Forgets every policy and marks the directory not ready, until the
    /// next complete list: what a new term of leadership starts from, since
    /// the list of an earlier term may miss a policy created while this
    /// process was standing by.
    pub fn forget(&self) {
        let mut policies = self.write();
        policies.clear();
        self.ready.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn upsert(&self, label: String, spec: RetentionPolicySpec) {
        self.write().insert(label, spec);
    }

    pub fn remove(&self, label: &str) {
        self.write().remove(label);
    }

    pub(crate) fn in_force(&self) -> InForce {
        if !self.ready.load(std::sync::atomic::Ordering::SeqCst) {
            return InForce::NotReady;
        }
        let policies = self.read();
        match policies.len() {
            0 => InForce::Missing,
            1 => {
                let (label, spec) = policies.iter().next().expect("one entry");
                InForce::One {
                    label: label.clone(),
                    spec: Box::new(spec.clone()),
                }
            }
            _ => InForce::Conflict(policies.keys().cloned().collect()),
        }
    }

    /// The policy named by a reference (`namespace/name`), but only when it
    /// is the one in force.
    pub fn in_force_named(&self, label: &str) -> InForce {
        match self.in_force() {
            InForce::One { label: found, .. } if found != label => InForce::Missing,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RetentionPolicySpec {
        crate::api::retention_policy::example_spec()
    }

    #[test]
    fn nothing_is_in_force_until_the_list_is_complete() {
        let directory = PolicyDirectory::new();
        directory.upsert("archiver/tiers".into(), spec());
        assert_eq!(directory.in_force(), InForce::NotReady);
        directory.replace_all([("archiver/tiers".to_string(), spec())]);
        assert!(matches!(directory.in_force(), InForce::One { .. }));
    }

    #[test]
    fn two_policies_conflict_and_none_is_missing() {
        let directory = PolicyDirectory::new();
        directory.replace_all([("a/x".to_string(), spec()), ("b/y".to_string(), spec())]);
        assert_eq!(
            directory.in_force(),
            InForce::Conflict(vec!["a/x".into(), "b/y".into()])
        );
        assert_eq!(
            directory.in_force_named("a/x"),
            InForce::Conflict(vec!["a/x".into(), "b/y".into()])
        );
        directory.replace_all([]);
        assert_eq!(directory.in_force(), InForce::Missing);
    }

    #[test]
    fn a_reference_to_another_policy_finds_none_in_force() {
        let directory = PolicyDirectory::new();
        directory.replace_all([("archiver/tiers".to_string(), spec())]);
        assert_eq!(directory.in_force_named("archiver/other"), InForce::Missing);
        assert!(matches!(
            directory.in_force_named("archiver/tiers"),
            InForce::One { .. }
        ));
    }
}
