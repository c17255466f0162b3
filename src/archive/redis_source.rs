//! Reading one minute of verdicts from a Redis shard: discovery by the
//! minute's index set or by SCAN, pipelined reads, and the `archived_at`
//! marker written after commit.

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;

use super::verdict::{ARCHIVED_AT_FIELD, RawFields, index_key, scan_pattern};
use crate::api::archiver_shard::Discovery;

/// Keys per pipeline round trip.
const PIPELINE_BATCH: usize = 2_000;
/// SCAN COUNT hint: large, because a scan walks the whole keyspace.
const SCAN_COUNT: usize = 10_000;

/// The keys of one minute and how they were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteKeys {
    /// Key names as bytes: Redis does not require them to be UTF-8.
    pub keys: Vec<Vec<u8>>,
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
    let via = resolve(redis, minute, discovery).await?;
    let keys = find_keys(redis, minute, via).await?;
    Ok(MinuteKeys { keys, via })
}

/// Every key matching `pattern`, walking the whole keyspace with SCAN
/// (large COUNT: a scan pays per call). A key may come back twice. Names
/// are bytes: one name that is not UTF-8 must not fail the whole scan.
pub async fn scan_keys<C>(redis: &mut C, pattern: &str) -> redis::RedisResult<Vec<Vec<u8>>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
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
pub type Chunk = (Vec<Vec<u8>>, Vec<RawFields>);

/// A minute being read: how its keys are found, and its chunks as they
/// arrive.
pub struct MinuteStream {
    /// `Index` or `Scan`: what `Auto` resolved to.
    pub via: Discovery,
    /// Non-empty chunks, each key once; closed after the last one (no chunk
    /// at all: the minute has no keys). An error ends the stream.
    pub chunks: tokio::sync::mpsc::Receiver<redis::RedisResult<Chunk>>,
}

/// Starts reading `minute`: discovery and reads run on tasks of their own,
/// so the caller can write one chunk while the next is read, and two
/// pipelines are in flight, so Redis works while the last reply is decoded.
///
/// Keys are read in sorted order, which is the primary key's order: rows
/// then reach the B-tree indexes nearly sequentially. That is also why a
/// scan is completed before the first read instead of reading each page as
/// it comes: measured on a 250k-key minute, rows arriving in SCAN's hash
/// order cost the COPY more index maintenance than the overlap saved.
pub async fn stream_minute(
    redis: &ConnectionManager,
    minute: DateTime<Utc>,
    discovery: Discovery,
) -> redis::RedisResult<MinuteStream> {
    let mut conn = redis.clone();
    let via = resolve(&mut conn, minute, discovery).await?;
    let (key_sender, key_batches) = tokio::sync::mpsc::channel(4);
    tokio::spawn(send_keys(conn.clone(), minute, via, key_sender));
    let (chunk_sender, chunks) = tokio::sync::mpsc::channel(2);
    tokio::spawn(read_batches(conn, key_batches, chunk_sender));
    Ok(MinuteStream { via, chunks })
}

type KeyBatches = tokio::sync::mpsc::Sender<redis::RedisResult<Vec<Vec<u8>>>>;

async fn resolve(
    redis: &mut ConnectionManager,
    minute: DateTime<Utc>,
    discovery: Discovery,
) -> redis::RedisResult<Discovery> {
    Ok(match discovery {
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
    })
}

/// The minute's keys, sorted and each once, in batches of `PIPELINE_BATCH`.
async fn send_keys(
    mut redis: ConnectionManager,
    minute: DateTime<Utc>,
    via: Discovery,
    sender: KeyBatches,
) {
    let keys = match find_keys(&mut redis, minute, via).await {
        Ok(keys) => keys,
        Err(error) => {
            let _ = sender.send(Err(error)).await;
            return;
        }
    };
    for batch in keys.chunks(PIPELINE_BATCH) {
        if sender.send(Ok(batch.to_vec())).await.is_err() {
            return;
        }
    }
}

/// The keys of `minute` by the index set or by SCAN, sorted, each once.
async fn find_keys(
    redis: &mut ConnectionManager,
    minute: DateTime<Utc>,
    via: Discovery,
) -> redis::RedisResult<Vec<Vec<u8>>> {
    let mut keys: Vec<Vec<u8>> = match via {
        Discovery::Index => {
            redis::cmd("SMEMBERS")
                .arg(index_key(minute))
                .query_async(redis)
                .await?
        }
        _ => scan_keys(redis, &scan_pattern(minute)).await?,
    };
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

/// HGETALL for every batch of keys, two pipelines in flight, chunks
/// handed over in order. Stops at the first error (passed on) or when the
/// reader of the chunks goes away.
async fn read_batches(
    redis: ConnectionManager,
    mut key_batches: tokio::sync::mpsc::Receiver<redis::RedisResult<Vec<Vec<u8>>>>,
    sender: tokio::sync::mpsc::Sender<redis::RedisResult<Chunk>>,
) {
    use futures::StreamExt;
    let batches = futures::stream::poll_fn(move |cx| key_batches.poll_recv(cx));
    let mut chunks = batches
        .map(|batch| {
            let mut redis = redis.clone();
            async move {
                let keys = batch?;
                let fields = read(&mut redis, &keys).await?;
                Ok((keys, fields))
            }
        })
        .buffered(2);
    while let Some(chunk) = chunks.next().await {
        let failed = chunk.is_err();
        if sender.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

/// The fields of every key, in order, pipelined. A key gone since discovery
/// reads as empty; a key that is not a hash (WRONGTYPE) carries Redis's
/// error, so one bad key is rejected instead of failing the minute.
pub async fn read(
    redis: &mut ConnectionManager,
    keys: &[Vec<u8>],
) -> redis::RedisResult<Vec<RawFields>> {
    let mut all = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(PIPELINE_BATCH) {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for key in chunk {
            pipe.hgetall(key);
        }
        let replies: Vec<redis::RedisResult<RawFields>> = pipe.query_async(redis).await?;
        for reply in replies {
            all.push(match reply {
                Ok(fields) => fields,
                // Only this key's own problem is a reject; anything else
                // (LOADING, BUSY, connection trouble) holds the minute.
                Err(error) if error.code() == Some("WRONGTYPE") => RawFields {
                    read_error: Some(error.to_string()),
                    ..RawFields::default()
                },
                Err(error) => return Err(error),
            });
        }
    }
    Ok(all)
}

/// An HGETALL reply (RESP2 array or RESP3 map). Bytes that are not UTF-8
/// are replaced and flagged rather than failing the whole pipeline.
impl redis::FromRedisValue for RawFields {
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        let pairs: Vec<(redis::Value, redis::Value)> = match value {
            redis::Value::Nil => Vec::new(),
            redis::Value::Map(pairs) => pairs,
            redis::Value::Array(items) => {
                if items.len() % 2 != 0 {
                    return Err("HGETALL returned an odd number of items".to_string().into());
                }
                let mut items = items.into_iter();
                let mut pairs = Vec::with_capacity(items.len() / 2);
                while let (Some(name), Some(value)) = (items.next(), items.next()) {
                    pairs.push((name, value));
                }
                pairs
            }
            other => return Err(format!("HGETALL returned {other:?}").into()),
        };
        let mut raw = RawFields::default();
        for (name, value) in pairs {
            let name = text(name, &mut raw.not_utf8)?;
            let value = text(value, &mut raw.not_utf8)?;
            raw.fields.insert(name, value);
        }
        Ok(raw)
    }
}

/// A bulk or simple string as text; invalid UTF-8 is replaced and flagged.
fn text(value: redis::Value, not_utf8: &mut bool) -> Result<String, redis::ParsingError> {
    match value {
        redis::Value::BulkString(bytes) => Ok(String::from_utf8(bytes).unwrap_or_else(|error| {
            *not_utf8 = true;
            String::from_utf8_lossy(error.as_bytes()).into_owned()
        })),
        redis::Value::SimpleString(text) => Ok(text),
        redis::Value::Int(number) => Ok(number.to_string()),
        other => Err(format!("expected a string in an HGETALL reply, got {other:?}").into()),
    }
}

/// Marks keys as archived (after the Postgres commit): one script call per
/// batch. HSET on a key that has meanwhile expired would resurrect it without
/// a TTL, so only keys that still exist are marked.
pub async fn mark_archived(
    redis: &mut ConnectionManager,
    keys: &[Vec<u8>],
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
