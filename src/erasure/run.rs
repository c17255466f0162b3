//! One attempt at a request, end to end: the transaction, the recount,
//! the receipt. A request whose receipt already exists is not run again.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;
use sqlx::PgPool;

use super::receipt::{
    self, Receipt, ReceiptRequest, ReceiptTombstone, ReceiptVerification, SealedReceipt,
    StoredReceipt, timestamp,
};
use super::request::ErasureRequest;
use super::transaction::{self, ErasureError, ErasureSettings, Step, db};
use super::verify::{self, describe_remaining};
use crate::api::deletion_request::{CacheInvalidation, Verification};
use crate::clock::Clock;

/// A finished erasure.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    /// The newest tombstone of the request.
    pub tombstone_id: i64,
    pub removed: BTreeMap<String, i64>,
    pub invalidations: Vec<CacheInvalidation>,
    pub verification: Verification,
    pub receipt: SealedReceipt,
    pub completed_at: DateTime<Utc>,
    /// The receipt was found, nothing ran (the status had been lost).
    pub already_done: bool,
    /// Seconds per phase of the transaction, then verification and receipt.
    pub phases: Vec<(&'static str, f64)>,
}

/// Timestamps go to Postgres (microseconds) and into the receipt: cut them
/// to microseconds once, so every copy reads the same.
fn now(clock: &dyn Clock) -> DateTime<Utc> {
    clock.now().trunc_subsecs(6)
}

/// Runs (or recovers) the erasure of `request`.
pub async fn execute(
    pool: &PgPool,
    request: &ErasureRequest,
    settings: &ErasureSettings,
    clock: &dyn Clock,
    attempts: i32,
    started_at: DateTime<Utc>,
) -> Result<Completed, ErasureError> {
    if let Some(stored) = receipt::find_completed(pool, request)
        .await
        .map_err(db(Step::Receipt))?
    {
        return Ok(from_stored(&stored));
    }
    // A table naming a tenant that no erasure covers would make this
    // erasure's "verified" untrue: nothing is erased while one exists.
    let uncatalogued = crate::schema::uncatalogued_tables(pool, &settings.out_of_scope_tables)
        .await
        .map_err(db(Step::Catalogue))?;
    if !uncatalogued.is_empty() {
        return Err(ErasureError::UncataloguedTables(uncatalogued));
    }
    let committed = transaction::erase(pool, request, settings, now(clock)).await?;
    let mut phases = committed.phases.clone();
    let timer = std::time::Instant::now();
    let (verification, verify_phases) =
        verify::verify(pool, request, settings, &committed, now(clock)).await?;
    phases.extend(verify_phases);
    phases.push(("verification", timer.elapsed().as_secs_f64()));
    // A table naming a tenant created since the check above (while the
    // transaction waited for its locks, say) may hold the scope's data
    // where no erasure looks: "verified" would be untrue again.
    let appeared = crate::schema::uncatalogued_tables(pool, &settings.out_of_scope_tables)
        .await
        .map_err(db(Step::Catalogue))?;
    if !appeared.is_empty() {
        return Err(ErasureError::UncataloguedTables(appeared));
    }
    if !verification.verified {
        return Err(ErasureError::Unverified(format!(
            "still present after COMMIT: {}",
            describe_remaining(&verification.remaining)
        )));
    }

    let timer = std::time::Instant::now();
    let mut conn = pool.acquire().await.map_err(db(Step::Receipt))?;
    let earlier = receipt::unreceipted_runs(&mut conn, request, committed.tombstone_id)
        .await
        .map_err(db(Step::Receipt))?;
    drop(conn);
    let mut tombstones = Vec::new();
    let mut removed = BTreeMap::new();
    let mut invalidations = Vec::new();
    for run in &earlier {
        tombstones.push(ReceiptTombstone {
            id: run.tombstone_id,
            deleted_at: timestamp(run.deleted_at),
        });
        add_counts(&mut removed, &run.removed);
        invalidations.extend(run.invalidations.iter().cloned());
    }
    tombstones.push(ReceiptTombstone {
        id: committed.tombstone_id,
        deleted_at: timestamp(committed.deleted_at),
    });
    add_counts(&mut removed, &committed.removed);
    invalidations.extend(committed.invalidations.iter().cloned());

    let receipt = Receipt {
        kind: "ErasureReceipt",
        format_version: receipt::FORMAT_VERSION,
        request: ReceiptRequest::from_request(request),
        tombstones: tombstones.clone(),
        removed: removed.clone(),
        cache_invalidations: invalidations.clone(),
        redis_shards: settings.redis.iter().map(|t| t.label.clone()).collect(),
        attempts,
        started_at: timestamp(started_at),
        committed_at: timestamp(committed.deleted_at),
        verification: ReceiptVerification::from_verification(&verification),
        operator_version: env!("CARGO_PKG_VERSION"),
    };
    let sealed = SealedReceipt::seal(&receipt);
    let completed_at = now(clock);
    let ids: Vec<i64> = tombstones.iter().map(|t| t.id).collect();
    receipt::record(pool, request, &sealed, &ids, completed_at)
        .await
        .map_err(db(Step::Receipt))?;
    phases.push(("receipt", timer.elapsed().as_secs_f64()));
    Ok(Completed {
        tombstone_id: committed.tombstone_id,
        removed,
        invalidations,
        verification,
        receipt: sealed,
        completed_at,
        already_done: false,
        phases,
    })
}

fn add_counts(total: &mut BTreeMap<String, i64>, counts: &BTreeMap<String, i64>) {
    for (surface, count) in counts {
        *total.entry(surface.clone()).or_insert(0) += count;
    }
}

/// The outcome recorded in an earlier receipt.
fn from_stored(stored: &StoredReceipt) -> Completed {
    let payload = &stored.payload;
    let verification = &payload["verification"];
    Completed {
        tombstone_id: payload["tombstones"]
            .as_array()
            .and_then(|t| t.last())
            .and_then(|t| t["id"].as_i64())
            .unwrap_or_default(),
        removed: serde_json::from_value(payload["removed"].clone()).unwrap_or_default(),
        invalidations: serde_json::from_value(payload["cacheInvalidations"].clone())
            .unwrap_or_default(),
        verification: Verification {
            verified: verification["verified"].as_bool().unwrap_or(false),
            remaining: serde_json::from_value(verification["remaining"].clone())
                .unwrap_or_default(),
            checked_at: parse_time(&verification["checkedAt"]).unwrap_or(stored.recorded_at),
        },
        receipt: stored.sealed.clone(),
        completed_at: stored.recorded_at,
        already_done: true,
        phases: Vec::new(),
    }
}

fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|at| at.with_timezone(&Utc))
}
