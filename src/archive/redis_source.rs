//! Reading one minute of verdicts from a Redis shard: discovery by the
//! minute's index set or by SCAN, pipelined reads, and the `archived_at`
//! marker written after commit.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;

use super::verdict::{ARCHIVED_AT_FIELD, index_key, scan_pattern};
use crate::api::archiver_shard::Discovery;

/// Keys per pipeline round trip.
const PIPELINE_BATCH: usize = 2_000;
/// SCAN COUNT hint: large, because a scan walks the whole keyspace.
const SCAN_COUNT: usize = 10_000;

/// The keys of one minute and how they were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteKeys {
    pub keys: Vec<String>,
    /// `Index` or `Scan`: what `Auto` resolved to.
    pub via: Discovery,
}

/// Finds the keys of `minute`. `Auto` uses the index set when it exists for
/// that minute: SCAN walks the whole keyspace on every call (seconds on a
/// big shard), the index only that minute's keys.
pub async fn discover(
    redis: &mut ConnectionManager,
    minute: DateTime<Utc>,
    discovery: Discovery,
) -> redis::RedisResult<MinuteKeys> {
    let via = match discovery {
        Discovery::Auto => {
            let exists: bool = redis::cmd("EXISTS")
                .arg(index_key(minute))
                .query_async(redis)
                .await?;
            if exists {
                Discovery::Index
            } else {
                Discovery::Scan
            }
        }
        other => other,
    };
    let mut keys = match via {
        Discovery::Index => {
            redis::cmd("SMEMBERS")
                .arg(index_key(minute))
                .query_async(redis)
                .await?
        }
        _ => scan_keys(redis, &scan_pattern(minute)).await?,
    };
    keys.sort();
    keys.dedup();
    Ok(MinuteKeys { keys, via })
}

/// Every key matching `pattern`, walking the whole keyspace with SCAN
/// (large COUNT: a scan pays per call). A key may come back twice.
pub async fn scan_keys<C>(redis: &mut C, pattern: &str) -> redis::RedisResult<Vec<String>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(redis)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// One chunk of a minute: its keys and their fields, in order.
pub type Chunk = (Vec<String>, Vec<BTreeMap<String, String>>);

/// Reads `keys` chunk by chunk on a task of its own, handing each chunk over
/// as soon as it arrives (at most two waiting), so the caller can write one
/// chunk while the next is read.
pub fn read_in_chunks(
    redis: ConnectionManager,
    keys: Vec<String>,
) -> tokio::sync::mpsc::Receiver<redis::RedisResult<Chunk>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let mut redis = redis;
        for chunk in keys.chunks(PIPELINE_BATCH) {
            let result = read(&mut redis, chunk)
                .await
                .map(|fields| (chunk.to_vec(), fields));
            let failed = result.is_err();
            if sender.send(result).await.is_err() || failed {
                // The writer stopped listening, or Redis failed: stop reading.
                return;
            }
        }
    });
    receiver
}

/// The fields of every key, in order, pipelined. A key gone since discovery
/// reads as an empty map.
pub async fn read(
    redis: &mut ConnectionManager,
    keys: &[String],
) -> redis::RedisResult<Vec<BTreeMap<String, String>>> {
    let mut all = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(PIPELINE_BATCH) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.hgetall(key);
        }
        let fields: Vec<BTreeMap<String, String>> = pipe.query_async(redis).await?;
        all.extend(fields);
    }
    Ok(all)
}

/// Marks keys as archived (after the Postgres commit): one script call per
/// batch. HSET on a key that has meanwhile expired would resurrect it without
/// a TTL, so only keys that still exist are marked.
pub async fn mark_archived(
    redis: &mut ConnectionManager,
    keys: &[String],
    at: DateTime<Utc>,
) -> redis::RedisResult<()> {
    let script = redis::Script::new(
        "for _, key in ipairs(KEYS) do \
           if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, ARGV[1], ARGV[2]) end \
         end return 0",
    );
    let stamp = at.timestamp();
    for chunk in keys.chunks(PIPELINE_BATCH) {
        let mut invocation = script.prepare_invoke();
        for key in chunk {
            invocation.key(key);
        }
        invocation.arg(ARCHIVED_AT_FIELD).arg(stamp);
        invocation.invoke_async::<()>(redis).await?;
    }
    Ok(())
}
