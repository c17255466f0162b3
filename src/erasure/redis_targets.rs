//! The Redis instances an erasure must clean, process-wide.
//!
//! Verdict keys live in the shard Redis instances, and a DeletionRequest
//! does not name a shard: an erasure cleans every shard this process knows.
//! The ArchiverShard reconciler publishes each shard's Redis URL here (it
//! resolves the Secret anyway) and removes it when the shard goes away.
//! URLs are kept as [`SecretString`]: they may hold a password and never
//! reach a log, an event or a status; only the shard label does.

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::runtime::config::SecretString;

/// One Redis instance to erase in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// `namespace/name` of the ArchiverShard, for receipts and errors.
    pub label: String,
    pub url: SecretString,
}

static TARGETS: RwLock<BTreeMap<String, SecretString>> = RwLock::new(BTreeMap::new());

fn write() -> std::sync::RwLockWriteGuard<'static, BTreeMap<String, SecretString>> {
    // A poisoned lock only means a panic elsewhere while holding a map of
    // strings; the map itself is still consistent.
    TARGETS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Registers (or updates) the Redis of shard `label`.
pub fn publish_shard(label: impl Into<String>, redis_url: SecretString) {
    write().insert(label.into(), redis_url);
}

/// Forgets shard `label` (the ArchiverShard was deleted).
pub fn remove_shard(label: &str) {
    write().remove(label);
}

/// Every registered Redis, sorted by label.
pub fn targets() -> Vec<RedisTarget> {
    TARGETS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .map(|(label, url)| RedisTarget {
            label: label.clone(),
            url: url.clone(),
        })
        .collect()
}

/// Forgets every shard: for tests and the drill, which bring their own Redis.
#[doc(hidden)]
pub fn clear() {
    write().clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_published_updated_and_removed_without_exposing_urls() {
        publish_shard("unit/b", SecretString::new("redis://:pw@b:6379/"));
        publish_shard("unit/a", SecretString::new("redis://a:6379/"));
        publish_shard("unit/a", SecretString::new("redis://a2:6379/"));
        let mine: Vec<RedisTarget> = targets()
            .into_iter()
            .filter(|t| t.label.starts_with("unit/"))
            .collect();
        assert_eq!(mine.len(), 2);
        assert_eq!(mine[0].label, "unit/a");
        assert_eq!(mine[0].url.expose(), "redis://a2:6379/");
        assert!(!format!("{mine:?}").contains("pw"));
        remove_shard("unit/a");
        remove_shard("unit/b");
        assert!(targets().iter().all(|t| !t.label.starts_with("unit/")));
    }
}
