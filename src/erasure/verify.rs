//! Verification after COMMIT: every surface is counted again for the scope
//! and must be zero, Redis included. Data after the tombstone (a minute
//! archived or written later for the same server) is new data and is not
//! counted: the tombstone covers what existed up to its time.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::redis_side::{self, KeysByShard, Remaining};
use super::request::ErasureRequest;
use super::scope::Scope;
use futures::{StreamExt, TryStreamExt};

use super::surfaces::{Selection, Table, names, partitions_of};
use super::transaction::{Committed, ErasureError, ErasureSettings, Phases, Step, db};
use crate::api::deletion_request::Verification;

/// Partitions of probe_minute counted at once. Right after an erasure
/// every index entry of the scope still points at a dead row, and the first
/// reader pays for visiting them (and marks them dead): split by partition,
/// that work runs on several connections.
const PARTITION_COUNTS_IN_FLIGHT: usize = 4;

/// Recounts every surface of `request`'s scope up to the tombstone.
pub(crate) async fn verify(
    pool: &PgPool,
    request: &ErasureRequest,
    settings: &ErasureSettings,
    committed: &Committed,
    now: DateTime<Utc>,
) -> Result<(Verification, Phases), ErasureError> {
    let mut conn = pool.acquire().await.map_err(db(Step::Verification))?;
    let tombstone: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM data_deletion_log WHERE id = $1)")
            .bind(committed.tombstone_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(db(Step::Verification))?;
    if !tombstone {
        return Err(ErasureError::Unverified(format!(
            "tombstone #{} is missing after COMMIT",
            committed.tombstone_id
        )));
    }
    drop(conn);
    let (remaining, phases) = count_surfaces_timed(
        pool,
        &request.scope,
        settings,
        committed.deleted_at,
        &committed.removed_keys,
    )
    .await?;
    let verification = Verification {
        verified: remaining.values().all(|count| *count == 0),
        remaining,
        checked_at: now,
    };
    Ok((verification, phases))
}

/// Counts the scope in every surface, data up to `upto`: rows, rows still
/// holding the tenant hash, verdict and alert keys, and index-set entries
/// still listing `indexed_keys` (per shard label).
pub async fn count_surfaces(
    pool: &PgPool,
    scope: &Scope,
    settings: &ErasureSettings,
    upto: DateTime<Utc>,
    indexed_keys: &KeysByShard,
) -> Result<BTreeMap<String, i64>, ErasureError> {
    Ok(
        count_surfaces_timed(pool, scope, settings, upto, indexed_keys)
            .await?
            .0,
    )
}

async fn count_surfaces_timed(
    pool: &PgPool,
    scope: &Scope,
    settings: &ErasureSettings,
    upto: DateTime<Utc>,
    indexed_keys: &KeysByShard,
) -> Result<(BTreeMap<String, i64>, Phases), ErasureError> {
    let tenant_hash = settings
        .suppression_salt
        .as_ref()
        .map(|salt| scope.tenant_hash(salt.expose()));
    let selection = Selection {
        scope,
        tenant_hash: tenant_hash.as_deref(),
        upto: Some(upto),
    };
    // Postgres and Redis are counted at the same time.
    let (postgres, redis) = tokio::join!(
        timed(count_postgres(pool, &selection)),
        timed(redis_remaining(scope, settings, upto, indexed_keys)),
    );
    let mut counts = postgres.0?;
    let remaining = redis.0?;
    counts.insert(
        names::REDIS_VERDICT_KEYS.into(),
        to_i64(remaining.verdict_keys),
    );
    counts.insert(
        names::REDIS_INDEX_ENTRIES.into(),
        to_i64(remaining.index_entries),
    );
    counts.insert(names::REDIS_ALERT_KEYS.into(), to_i64(remaining.alert_keys));
    let phases = vec![
        ("verification: postgres", postgres.1),
        ("verification: redis (alongside)", redis.1),
    ];
    Ok((counts, phases))
}

async fn timed<T>(future: impl std::future::Future<Output = T>) -> (T, f64) {
    let started = std::time::Instant::now();
    let value = future.await;
    (value, started.elapsed().as_secs_f64())
}

/// probe_minute partition by partition on several connections, the other
/// tables on one more, all at once.
async fn count_postgres(
    pool: &PgPool,
    selection: &Selection<'_>,
) -> Result<BTreeMap<String, i64>, ErasureError> {
    let partitions = {
        let mut conn = pool.acquire().await.map_err(db(Step::Verification))?;
        partitions_of(&mut conn, Table::ProbeMinute)
            .await
            .map_err(db(Step::Verification))?
    };
    let minute_rows = futures::stream::iter(partitions)
        .map(|partition| async move {
            let mut conn = pool.acquire().await?;
            Table::ProbeMinute
                .count_in(&mut conn, &partition, selection)
                .await
        })
        .buffer_unordered(PARTITION_COUNTS_IN_FLIGHT)
        .try_fold(0i64, |total, count| async move { Ok(total + count) });
    let others = async {
        let mut counts = BTreeMap::new();
        let mut conn = pool.acquire().await?;
        for table in Table::ALL.into_iter().filter(|t| *t != Table::ProbeMinute) {
            let count = table.count(&mut conn, selection).await?;
            counts.insert(table.name().to_string(), count);
        }
        Ok::<_, sqlx::Error>(counts)
    };
    let (minute_rows, others) = tokio::join!(minute_rows, others);
    let mut counts = others.map_err(db(Step::Verification))?;
    counts.insert(
        Table::ProbeMinute.name().to_string(),
        minute_rows.map_err(db(Step::Verification))?,
    );
    Ok(counts)
}

async fn redis_remaining(
    scope: &Scope,
    settings: &ErasureSettings,
    upto: DateTime<Utc>,
    indexed_keys: &KeysByShard,
) -> Result<Remaining, ErasureError> {
    let no_keys = Vec::new();
    let checks = settings.redis.iter().map(|target| {
        let keys = indexed_keys
            .iter()
            .find(|(label, _)| *label == target.label)
            .map_or(&no_keys, |(_, keys)| keys);
        redis_side::remaining(
            target,
            scope,
            &settings.alert_key_patterns,
            upto.timestamp(),
            keys,
        )
    });
    let mut total = Remaining::default();
    for result in futures::future::join_all(checks).await {
        let found = result?;
        total.verdict_keys += found.verdict_keys;
        total.index_entries += found.index_entries;
        total.alert_keys += found.alert_keys;
    }
    Ok(total)
}

/// `probe_minute: 3, redis_verdict_keys: 1`: the surfaces not at zero.
pub(crate) fn describe_remaining(remaining: &BTreeMap<String, i64>) -> String {
    remaining
        .iter()
        .filter(|(_, count)| **count != 0)
        .map(|(surface, count)| format!("{surface}: {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
