//! The hourly stray-key audit: keys that look like verdicts but that the
//! drain will never archive, counted so that nothing is dropped silently.
//!
//! A key is a **stray** when its name starts with `verdict:` and one of:
//!
//! - `malformed`: the name is not `verdict:{a}:{b}:{c}:{integer}` (fewer
//!   than five `:`-separated parts, or a last part that is not an integer).
//!   Discovery (`verdict:*:*:*:{minute}`) never finds it. Keys of that shape
//!   whose middle parts are bad are found and rejected as `malformed_key`,
//!   so they are not strays.
//! - `unaligned`: the last part is an integer that is not a multiple of 60
//!   (e.g. `verdict:T:S:R:1700000030`): no minute is ever that epoch.
//! - `missed`: the minute is aligned and at least [`MISSED_GRACE`] behind
//!   the shard's watermark, the key is a hash, and it has no `archived_at`
//!   field: the drain never read it (written after its minute was
//!   archived, or absent from the minute's index set). The marker is
//!   written after the commit and a crash can lose the markers of the last
//!   minute, so a few keys of one minute may be counted after a crash;
//!   `probe_minute` tells (their rows are there). A key that is not a hash
//!   cannot carry that field: it is missed when the shard's rejects hold
//!   no row for it (a key absent from its minute's index set is never
//!   read, so never rejected as `not_a_hash`).
//!
//! The audit walks the keyspace with SCAN at a bounded rate (a page of
//! `count` keys, then a pause), on a task of its own, never on a minute's
//! transaction.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use super::verdict::ARCHIVED_AT_FIELD;

/// How often a shard's keyspace is audited.
pub const AUDIT_EVERY: chrono::Duration = chrono::Duration::hours(1);
/// An aligned minute this far behind the watermark has had its keys read
/// and marked, unless the drain never saw them.
pub const MISSED_GRACE: chrono::Duration = chrono::Duration::minutes(2);
/// Keys named in the status (the count covers all of them).
pub const EXAMPLES: usize = 5;
/// Characters kept of one example name.
const EXAMPLE_CHARS: usize = 200;

/// How fast the audit walks the keyspace: SCAN COUNT per page and the
/// pause after each page (at most `count / pause` keys a second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPace {
    pub count: usize,
    pub pause: Duration,
}

impl Default for AuditPace {
    /// At most about 50,000 keys a second: a 15-million-key shard takes
    /// about five minutes, an hour apart.
    fn default() -> Self {
        Self {
            count: 1_000,
            pause: Duration::from_millis(20),
        }
    }
}

/// Why a key is a stray.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StrayKind {
    Malformed,
    Unaligned,
    Missed,
}

impl StrayKind {
    pub const ALL: [Self; 3] = [Self::Malformed, Self::Unaligned, Self::Missed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unaligned => "unaligned",
            Self::Missed => "missed",
        }
    }
}

/// What a name alone says about a key under `verdict:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameClass {
    /// A stray whatever its content.
    Stray(StrayKind),
    /// Discovery finds it when its minute is archived (epoch seconds).
    Minute(i64),
}

/// Classifies a key name that starts with `verdict:` (bytes: a name need
/// not be UTF-8).
pub(crate) fn classify(name: &[u8]) -> NameClass {
    let parts = name.split(|b| *b == b':').count();
    let last = name.rsplit(|b| *b == b':').next().unwrap_or_default();
    let epoch = std::str::from_utf8(last)
        .ok()
        .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|text| text.parse::<i64>().ok());
    match epoch {
        Some(epoch) if parts >= 5 && epoch % 60 == 0 => NameClass::Minute(epoch),
        Some(_) if parts >= 5 => NameClass::Stray(StrayKind::Unaligned),
        _ => NameClass::Stray(StrayKind::Malformed),
    }
}

/// A key name as printable ASCII: `\\` and bytes outside 0x20..=0x7e as
/// `\xNN`, cut to a bounded length.
pub fn printable(name: &[u8]) -> String {
    let mut text = String::new();
    for byte in name {
        if text.len() >= EXAMPLE_CHARS {
            text.push_str("...");
            break;
        }
        match byte {
            b'\\' => text.push_str("\\\\"),
            0x20..=0x7e => text.push(char::from(*byte)),
            other => text.push_str(&format!("\\x{other:02x}")),
        }
    }
    text
}

/// What one audit found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrayAudit {
    /// Keys under `verdict:` the SCAN returned (a key may come twice).
    pub scanned: u64,
    pub by_kind: BTreeMap<StrayKind, u64>,
    /// The first few strays, printable-escaped, each with its kind.
    pub examples: Vec<String>,
}

impl StrayAudit {
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    fn found(&mut self, kind: StrayKind, name: &[u8]) {
        *self.by_kind.entry(kind).or_default() += 1;
        if self.examples.len() < EXAMPLES {
            self.examples
                .push(format!("{} ({})", printable(name), kind.as_str()));
        }
    }
}

/// Where the drain stores the rejects of a shard: a key that is not a hash
/// was read by the drain exactly when a reject row names it.
#[derive(Debug, Clone, Copy)]
pub struct ShardRejects<'a> {
    pub pool: &'a PgPool,
    pub shard_id: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("walking the keyspace: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("looking up the rejects of keys that are not hashes: {0}")]
    Postgres(#[from] sqlx::Error),
}

/// Walks the keyspace once at `pace`. `watermark` is the shard's last
/// archived minute (`None`: nothing archived yet, so nothing is missed).
pub async fn audit(
    redis: &mut ConnectionManager,
    watermark: Option<DateTime<Utc>>,
    pace: AuditPace,
    rejects: ShardRejects<'_>,
) -> Result<StrayAudit, AuditError> {
    let missed_before = watermark.map(|minute| (minute - MISSED_GRACE).timestamp());
    let mut found = StrayAudit::default();
    let mut cursor: u64 = 0;
    loop {
        let (next, names): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("verdict:*")
            .arg("COUNT")
            .arg(pace.count)
            .query_async(redis)
            .await?;
        found.scanned += names.len() as u64;
        let mut old_enough = Vec::new();
        for name in names {
            match classify(&name) {
                NameClass::Stray(kind) => found.found(kind, &name),
                NameClass::Minute(epoch) => {
                    if missed_before.is_some_and(|before| epoch <= before) {
                        old_enough.push(name);
                    }
                }
            }
        }
        if !old_enough.is_empty() {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for name in &old_enough {
                pipe.cmd("EXISTS").arg(name);
                pipe.cmd("HEXISTS").arg(name).arg(ARCHIVED_AT_FIELD);
            }
            let replies: Vec<redis::RedisResult<bool>> = pipe.query_async(redis).await?;
            let mut not_hashes = Vec::new();
            for (name, reply) in old_enough.iter().zip(replies.chunks(2)) {
                // A key gone meanwhile is no stray.
                match reply {
                    [Ok(true), Ok(false)] => found.found(StrayKind::Missed, name),
                    [Ok(true), Err(error)] if error.code() == Some("WRONGTYPE") => {
                        not_hashes.push(name)
                    }
                    _ => {}
                }
            }
            if !not_hashes.is_empty() {
                // Rejected as not_a_hash when read; missed when never read.
                let printed: Vec<String> = not_hashes
                    .iter()
                    .map(|name| super::key::printable(name))
                    .collect();
                let rejected: Vec<String> = sqlx::query_scalar(
                    "SELECT verdict_key FROM probe_minute_rejects \
                     WHERE shard_id = $1 AND verdict_key = ANY($2)",
                )
                .bind(rejects.shard_id)
                .bind(&printed)
                .fetch_all(rejects.pool)
                .await?;
                for (name, printed) in not_hashes.into_iter().zip(&printed) {
                    if !rejected.contains(printed) {
                        found.found(StrayKind::Missed, name);
                    }
                }
            }
        }
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
        tokio::time::sleep(pace.pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified_by_shape_and_minute() {
        let t = "6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01";
        let minute = |name: String| classify(name.as_bytes());
        assert_eq!(
            minute(format!("verdict:{t}:s:us-east:1795000050")),
            NameClass::Stray(StrayKind::Unaligned)
        );
        assert_eq!(
            minute(format!("verdict:{t}:s:us-east:1795000080")),
            NameClass::Minute(1_795_000_080)
        );
        assert_eq!(
            minute(format!("verdict:{t}:s:us-east")),
            NameClass::Stray(StrayKind::Malformed)
        );
        assert_eq!(
            minute(format!("verdict:{t}:s:us-east:soon")),
            NameClass::Stray(StrayKind::Malformed)
        );
        assert_eq!(
            minute("verdict:1795000080".into()),
            NameClass::Stray(StrayKind::Malformed)
        );
        assert_eq!(
            minute(format!("verdict:{t}:s:us-east:-60")),
            NameClass::Stray(StrayKind::Malformed)
        );
        // Found by discovery and rejected there as malformed_key.
        assert_eq!(
            minute("verdict:not-a-uuid:s:us-east:1795000080".into()),
            NameClass::Minute(1_795_000_080)
        );
    }

    #[test]
    fn examples_are_printable_and_bounded() {
        assert_eq!(printable(b"verdict:a\xff\n\\b"), "verdict:a\\xff\\x0a\\\\b");
        let long = vec![b'x'; 10_000];
        assert!(printable(&long).len() <= EXAMPLE_CHARS + 3);
    }
}
