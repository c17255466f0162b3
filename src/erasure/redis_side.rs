//! The Redis side of an erasure: every verdict key of the scope (and its
//! entry in the minute's index set) and every alert-router key matching the
//! configured patterns, in one Redis instance. Keys are found with
//! `SCAN MATCH` and removed with pipelined `UNLINK` (non-blocking for the
//! server, unlike `DEL` of many keys). Key names are bytes (one name that
//! is not UTF-8 must not fail an erasure), and a verdict key is the scope's
//! when the drain's own key reading says so ([`Scope::owns_verdict_key`]):
//! the glob only narrows the walk, for every spelling of the tenant.
//!
//! SCAN walks the whole keyspace; that is the price of completeness: the
//! scope's keys cannot be enumerated otherwise (minutes outside any known
//! window, regions that failed validation).

use std::collections::BTreeSet;
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use super::redis_targets::RedisTarget;
use super::scope::{AlertKeySearch, PatternError, Scope};
use crate::archive::verdict::index_key;

/// Commands per pipeline round trip.
const PIPELINE_BATCH: usize = 2_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Every minute's index set (see [`index_key`]).
const INDEX_SET_GLOB: &str = "verdict-index:*";
/// Members per SSCAN round trip.
const SSCAN_COUNT: usize = 10_000;
/// Index sets whose first SSCAN shares one pipeline.
const INDEX_SETS_PER_PIPELINE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum RedisSideError {
    #[error("Redis of shard {shard}: {action}: {source}")]
    Redis {
        shard: String,
        action: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error(transparent)]
    Pattern(#[from] PatternError),
}

/// A verdict key (its name's bytes) and its minute (epoch seconds), when
/// readable.
pub type VerdictKey = (Vec<u8>, Option<i64>);
/// Verdict keys per shard label.
pub type KeysByShard = Vec<(String, Vec<VerdictKey>)>;

/// What was removed from one Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub verdict_keys: u64,
    pub index_entries: u64,
    pub alert_keys: u64,
    /// The verdict keys removed, with their minute: verification checks
    /// that no index set still lists them.
    pub verdict_key_names: Vec<VerdictKey>,
}

/// What is still there (verification).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remaining {
    pub verdict_keys: u64,
    pub index_entries: u64,
    pub alert_keys: u64,
}

struct Connection<'a> {
    shard: &'a str,
    conn: MultiplexedConnection,
}

impl<'a> Connection<'a> {
    async fn open(target: &'a RedisTarget) -> Result<Self, RedisSideError> {
        let fail = |action| {
            move |source| RedisSideError::Redis {
                shard: target.label.clone(),
                action,
                source,
            }
        };
        let client = crate::redis_client::open(target.url.expose()).map_err(fail("opening"))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(fail("connecting"))?;
        Ok(Self {
            shard: &target.label,
            conn,
        })
    }

    fn fail(&self, action: &'static str) -> impl FnOnce(redis::RedisError) -> RedisSideError {
        let shard = self.shard.to_string();
        move |source| RedisSideError::Redis {
            shard,
            action,
            source,
        }
    }

    /// Every key matching `pattern`. SCAN may return a key twice; the set
    /// removes duplicates.
    async fn scan_all(&mut self, pattern: &str) -> Result<BTreeSet<Vec<u8>>, RedisSideError> {
        let keys = crate::archive::redis_source::scan_keys(&mut self.conn, pattern)
            .await
            .map_err(self.fail("scanning"))?;
        Ok(keys.into_iter().collect())
    }

    /// Every member of every index set (`verdict-index:*`) that is one of
    /// the scope's verdict keys, with the set's name. Index members are key
    /// names, so they hold the tenant and the server: an entry whose key
    /// expired, or that a producer filed under another minute than its key
    /// names, is the scope's data as much as the key itself.
    async fn index_entries(
        &mut self,
        scope: &Scope,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, RedisSideError> {
        let sets: Vec<Vec<u8>> = self.scan_all(INDEX_SET_GLOB).await?.into_iter().collect();
        let member_glob = scope.verdict_key_glob();
        let mut entries = Vec::new();
        // A minute's set is small and there is one per minute resident: the
        // first SSCAN of many sets goes in one pipeline (one round trip per
        // chunk, not per set); a set with more members than one SSCAN
        // returns is followed on its own.
        for chunk in sets.chunks(INDEX_SETS_PER_PIPELINE) {
            let mut pipe = redis::pipe();
            for set in chunk {
                pipe.cmd("SSCAN")
                    .arg(set)
                    .arg(0)
                    .arg("MATCH")
                    .arg(&member_glob)
                    .arg("COUNT")
                    .arg(SSCAN_COUNT);
            }
            let replies: redis::RedisResult<Vec<(u64, Vec<Vec<u8>>)>> =
                pipe.query_async(&mut self.conn).await;
            let replies = match replies {
                Ok(replies) => replies,
                // A reply that is an error (a key of the glob that is not a
                // set answers WRONGTYPE): set by set, so that such a key is
                // skipped and any other error is reported as itself.
                Err(error) if !error.is_io_error() && !error.is_connection_dropped() => {
                    for set in chunk {
                        self.sscan_from(set, 0, &member_glob, scope, &mut entries)
                            .await?;
                    }
                    continue;
                }
                Err(error) => return Err(self.fail("scanning index sets")(error)),
            };
            for (set, (next, members)) in chunk.iter().zip(replies) {
                entries.extend(
                    members
                        .into_iter()
                        .filter(|member| scope.owns_verdict_key(member).is_some())
                        .map(|member| (set.clone(), member)),
                );
                if next != 0 {
                    self.sscan_from(set, next, &member_glob, scope, &mut entries)
                        .await?;
                }
            }
        }
        entries.sort_unstable();
        entries.dedup();
        Ok(entries)
    }

    /// The scope's members of index set `set`, from SSCAN cursor `cursor`
    /// to the end. A key that is not a set has none.
    async fn sscan_from(
        &mut self,
        set: &[u8],
        mut cursor: u64,
        member_glob: &str,
        scope: &Scope,
        entries: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), RedisSideError> {
        loop {
            let reply: redis::RedisResult<(u64, Vec<Vec<u8>>)> = redis::cmd("SSCAN")
                .arg(set)
                .arg(cursor)
                .arg("MATCH")
                .arg(member_glob)
                .arg("COUNT")
                .arg(SSCAN_COUNT)
                .query_async(&mut self.conn)
                .await;
            let (next, members) = match reply {
                Ok(reply) => reply,
                // Not a set: not an index set the drain can read, and no
                // member of it can be the scope's.
                Err(error) if error.code() == Some("WRONGTYPE") => return Ok(()),
                Err(error) => return Err(self.fail("scanning index sets")(error)),
            };
            entries.extend(
                members
                    .into_iter()
                    .filter(|member| scope.owns_verdict_key(member).is_some())
                    .map(|member| (set.to_vec(), member)),
            );
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The alert-router keys of every search: one walk per pattern for
    /// every spelling of the tenant, then the exact globs.
    async fn alert_keys(
        &mut self,
        searches: &[AlertKeySearch],
    ) -> Result<BTreeSet<Vec<u8>>, RedisSideError> {
        let mut keys = BTreeSet::new();
        for search in searches {
            let found = self.scan_all(&search.prefilter).await?;
            keys.extend(found.into_iter().filter(|name| search.selects(name)));
        }
        Ok(keys)
    }
}

/// Removes the scope's verdict keys, their index-set entries and the alert
/// keys from one Redis. Idempotent: a second run removes nothing.
pub async fn erase(
    target: &RedisTarget,
    scope: &Scope,
    alert_patterns: &[String],
) -> Result<Removed, RedisSideError> {
    let alert_searches = alert_searches(scope, alert_patterns)?;
    let mut conn = Connection::open(target).await?;
    let mut removed = Removed::default();

    let verdict_keys: Vec<VerdictKey> = conn
        .scan_all(&scope.verdict_key_glob())
        .await?
        .into_iter()
        .filter_map(|key| scope.owns_verdict_key(&key).map(|minute| (key, minute)))
        .collect();
    for chunk in verdict_keys.chunks(PIPELINE_BATCH) {
        let mut pipe = redis::pipe();
        for (key, minute) in chunk {
            pipe.unlink(key);
            if let Some(minute) = minute {
                pipe.srem(index_key_of(*minute), key);
            }
        }
        let counts: Vec<u64> = pipe
            .query_async(&mut conn.conn)
            .await
            .map_err(conn.fail("unlinking verdict keys"))?;
        let mut counts = counts.into_iter();
        for (_, minute) in chunk {
            removed.verdict_keys += counts.next().unwrap_or(0);
            if minute.is_some() {
                removed.index_entries += counts.next().unwrap_or(0);
            }
        }
    }
    removed.verdict_key_names = verdict_keys;

    // Entries left in any index set: keys gone before the erasure, or
    // listed under another minute than their name says.
    let entries = conn.index_entries(scope).await?;
    for chunk in entries.chunks(PIPELINE_BATCH) {
        let mut pipe = redis::pipe();
        for (set, member) in chunk {
            pipe.srem(set, member);
        }
        let counts: Vec<u64> = pipe
            .query_async(&mut conn.conn)
            .await
            .map_err(conn.fail("removing index entries"))?;
        removed.index_entries += counts.into_iter().sum::<u64>();
    }

    let alert_keys = conn.alert_keys(&alert_searches).await?;
    {
        let keys: Vec<Vec<u8>> = alert_keys.into_iter().collect();
        for chunk in keys.chunks(PIPELINE_BATCH) {
            let unlinked: u64 = redis::cmd("UNLINK")
                .arg(chunk)
                .query_async(&mut conn.conn)
                .await
                .map_err(conn.fail("unlinking alert-router keys"))?;
            removed.alert_keys += unlinked;
        }
    }
    Ok(removed)
}

/// Counts what is left of the scope in one Redis: verdict keys of minutes
/// at or before `upto` (epoch seconds; later minutes are new data the
/// tombstone does not cover), index entries still listing the keys removed,
/// and alert keys.
pub(crate) async fn remaining(
    target: &RedisTarget,
    scope: &Scope,
    alert_patterns: &[String],
    upto: i64,
    removed_keys: &[VerdictKey],
) -> Result<Remaining, RedisSideError> {
    let alert_searches = alert_searches(scope, alert_patterns)?;
    let mut conn = Connection::open(target).await?;
    let mut remaining = Remaining::default();
    for key in conn.scan_all(&scope.verdict_key_glob()).await? {
        if let Some(minute) = scope.owns_verdict_key(&key)
            && minute.is_none_or(|m| m <= upto)
        {
            remaining.verdict_keys += 1;
        }
    }
    // Every entry of the scope in an index set of a minute up to `upto`
    // (or of a set whose name names no minute) ...
    for (set, _) in conn.index_entries(scope).await? {
        if index_set_minute(&set).is_none_or(|m| m <= upto) {
            remaining.index_entries += 1;
        }
    }
    // ... and the entries of the keys removed that name a later minute
    // (their sets are not counted above).
    let indexed: Vec<&VerdictKey> = removed_keys
        .iter()
        .filter(|(_, m)| m.is_some_and(|m| m > upto))
        .collect();
    for chunk in indexed.chunks(PIPELINE_BATCH) {
        let mut pipe = redis::pipe();
        for (key, minute) in chunk {
            if let Some(minute) = minute {
                pipe.sismember(index_key_of(*minute), key);
            }
        }
        let present: Vec<bool> = pipe
            .query_async(&mut conn.conn)
            .await
            .map_err(conn.fail("checking index sets"))?;
        remaining.index_entries += present.into_iter().filter(|p| *p).count() as u64;
    }
    let alert_keys = conn.alert_keys(&alert_searches).await?;
    remaining.alert_keys = alert_keys.len() as u64;
    Ok(remaining)
}

fn alert_searches(
    scope: &Scope,
    patterns: &[String],
) -> Result<Vec<AlertKeySearch>, RedisSideError> {
    let mut searches = Vec::new();
    for pattern in patterns {
        searches.extend(scope.alert_key_search(pattern)?);
    }
    Ok(searches)
}

/// The minute (epoch seconds) an index set's name gives.
fn index_set_minute(set: &[u8]) -> Option<i64> {
    std::str::from_utf8(set.strip_prefix(b"verdict-index:")?)
        .ok()?
        .parse()
        .ok()
}

fn index_key_of(minute: i64) -> String {
    match chrono::DateTime::from_timestamp(minute, 0) {
        Some(at) => index_key(at),
        None => format!("verdict-index:{minute}"),
    }
}
