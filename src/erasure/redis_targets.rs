//! The Redis instances an erasure must clean.
//!
//! Verdict keys live in the shard Redis instances, and a DeletionRequest
//! does not name a shard: an erasure cleans every shard the operator knows.
//! The ArchiverShard reconciler publishes each shard's Redis URL into the
//! context's [`RedisTargets`] (it resolves the Secret anyway); the source
//! removes shards that are gone (the manifests pass when a file goes, the
//! Kubernetes source when the watch cache no longer holds the object).
//! URLs are kept as [`SecretString`]: they may hold a password and never
//! reach a log, an event or a status; only the shard label does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use crate::secret::SecretString;

/// One Redis instance to erase in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// `namespace/name` of the ArchiverShard, for receipts and errors.
    pub label: String,
    pub url: SecretString,
}

/// The shard Redis instances known to one operator, by shard label.
#[derive(Debug, Default)]
pub struct RedisTargets {
    shards: RwLock<BTreeMap<String, SecretString>>,
}

impl RedisTargets {
    pub fn new() -> Self {
        Self::default()
    }

    /// Only the given targets (a drill, a test, a bench).
    pub fn of(targets: impl IntoIterator<Item = RedisTarget>) -> Self {
        let registry = Self::new();
        for target in targets {
            registry.publish_shard(target.label, target.url);
        }
        registry
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, SecretString>> {
        // A poisoned lock only means a panic elsewhere while holding a map
        // of strings; the map itself is still consistent.
        self.shards
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers (or updates) the Redis of shard `label`.
    pub fn publish_shard(&self, label: impl Into<String>, redis_url: SecretString) {
        self.write().insert(label.into(), redis_url);
    }

    /// Forgets shard `label` (the ArchiverShard was deleted).
    pub fn remove_shard(&self, label: &str) {
        self.write().remove(label);
    }

    /// Forgets every shard not in `present` (the source's complete list).
    pub fn retain_shards(&self, present: &BTreeSet<String>) {
        self.write().retain(|label, _| present.contains(label));
    }

    /// Every registered Redis, sorted by label.
    pub fn targets(&self) -> Vec<RedisTarget> {
        self.shards
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(label, url)| RedisTarget {
                label: label.clone(),
                url: url.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_published_updated_and_removed_without_exposing_urls() {
        let registry = RedisTargets::new();
        registry.publish_shard("unit/b", SecretString::new("redis://:pw@b:6379/"));
        registry.publish_shard("unit/a", SecretString::new("redis://a:6379/"));
        registry.publish_shard("unit/a", SecretString::new("redis://a2:6379/"));
        let targets = registry.targets();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].label, "unit/a");
        assert_eq!(targets[0].url.expose(), "redis://a2:6379/");
        assert!(!format!("{targets:?}").contains("pw"));
        registry.remove_shard("unit/a");
        assert_eq!(registry.targets().len(), 1);
    }

    #[test]
    fn shards_the_source_no_longer_lists_are_forgotten() {
        let registry = RedisTargets::new();
        registry.publish_shard("ns/kept", SecretString::new("redis://a/"));
        registry.publish_shard("ns/deleted", SecretString::new("redis://b/"));
        registry.retain_shards(&BTreeSet::from(["ns/kept".to_string()]));
        let labels: Vec<String> = registry.targets().into_iter().map(|t| t.label).collect();
        assert_eq!(labels, vec!["ns/kept"]);
    }
}
