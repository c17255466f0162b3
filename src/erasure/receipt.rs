//! The erasure receipt: what was asked, what was removed where, which
//! tombstone proves it, and the recount after COMMIT. It is canonical JSON
//! (object keys sorted, no whitespace, integers only), so its SHA-256 is
//! reproducible from any copy: the status, the audit log's jsonb payload
//! (which reorders keys) or a printed file.

use std::collections::BTreeMap;

pub use crate::canonical::{canonical_json, sha256_hex};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::request::{ErasureRequest, subject};
use super::transaction::ACTOR;
use crate::api::deletion_request::{CacheInvalidation, Verification};

/// Audit-log action of a receipt.
pub const ACTION: &str = "erasure-receipt";
/// Audit-log action of a committed run (written inside its transaction).
pub const RUN_ACTION: &str = "erasure";
/// Bumped when the receipt's shape changes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub kind: &'static str,
    pub format_version: u32,
    pub request: ReceiptRequest,
    /// Every tombstone of this request; more than one when an earlier run
    /// committed but never got its receipt (its counts are included).
    pub tombstones: Vec<ReceiptTombstone>,
    /// Rows or keys removed, per surface.
    pub removed: BTreeMap<String, i64>,
    pub cache_invalidations: Vec<CacheInvalidation>,
    /// ArchiverShards whose Redis was cleaned.
    pub redis_shards: Vec<String>,
    pub attempts: i32,
    pub started_at: String,
    pub committed_at: String,
    pub verification: ReceiptVerification,
    pub operator_version: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptRequest {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub tenant_id: String,
    /// None: every server of the tenant.
    pub server_slug: Option<String>,
    pub scope: &'static str,
    pub reason: &'static str,
    pub requester: String,
    pub received_at: Option<String>,
    pub deadline: Option<String>,
    /// The Art. 12(3) extension, when the deadline was extended (absent
    /// otherwise, so receipts of unextended requests keep their shape).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension: Option<ReceiptExtension>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptExtension {
    pub days: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptTombstone {
    pub id: i64,
    pub deleted_at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptVerification {
    pub verified: bool,
    /// Every surface, recounted after COMMIT.
    pub remaining: BTreeMap<String, i64>,
    pub checked_at: String,
}

impl ReceiptRequest {
    pub(crate) fn from_request(request: &ErasureRequest) -> Self {
        Self {
            namespace: request.namespace.clone(),
            name: request.name.clone(),
            uid: request.uid.clone(),
            tenant_id: request.scope.tenant.to_string(),
            server_slug: request.scope.server.clone(),
            scope: request.scope.kind(),
            reason: request.reason.as_str(),
            requester: request.requester.to_string(),
            received_at: request.received_at.map(timestamp),
            deadline: request.deadline().map(timestamp),
            extension: request.extension.as_ref().map(|e| ReceiptExtension {
                days: e.days,
                reason: e.reason.clone(),
            }),
        }
    }
}

impl ReceiptVerification {
    pub(crate) fn from_verification(verification: &Verification) -> Self {
        Self {
            verified: verification.verified,
            remaining: verification.remaining.clone(),
            checked_at: timestamp(verification.checked_at),
        }
    }
}

/// A receipt in its canonical text, with its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedReceipt {
    pub canonical: String,
    pub sha256: String,
}

impl SealedReceipt {
    pub(crate) fn seal(receipt: &Receipt) -> Self {
        let value = serde_json::to_value(receipt).unwrap_or(Value::Null);
        Self::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Self {
        let canonical = canonical_json(value);
        let sha256 = sha256_hex(&canonical);
        Self { canonical, sha256 }
    }
}

/// Timestamps in receipts: RFC 3339, UTC, microseconds (Postgres precision,
/// so a value read back from the database prints the same).
pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Writes the receipt to the audit log and its hash onto every tombstone
/// it covers, in one transaction. Returns the audit row's id.
pub(crate) async fn record(
    pool: &PgPool,
    request: &ErasureRequest,
    sealed: &SealedReceipt,
    tombstone_ids: &[i64],
    now: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    let payload: Value = serde_json::from_str(&sealed.canonical).unwrap_or(Value::Null);
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO operator_audit_log (at, action, subject, actor, payload) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(now)
    .bind(ACTION)
    .bind(request.subject())
    .bind(ACTOR)
    .bind(payload)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("UPDATE data_deletion_log SET receipt_sha256 = $1 WHERE id = ANY($2)")
        .bind(&sealed.sha256)
        .bind(tombstone_ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// A receipt found in the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReceipt {
    pub audit_id: i64,
    pub recorded_at: DateTime<Utc>,
    pub sealed: SealedReceipt,
    pub payload: Value,
}

/// Receipts of `namespace/name` in the audit log, newest first.
pub(crate) async fn stored_receipts(
    pool: &PgPool,
    namespace: &str,
    name: &str,
) -> Result<Vec<StoredReceipt>, sqlx::Error> {
    let rows: Vec<(i64, DateTime<Utc>, Value)> = sqlx::query_as(
        "SELECT id, at, payload FROM operator_audit_log \
         WHERE action = $1 AND subject = $2 ORDER BY id DESC",
    )
    .bind(ACTION)
    .bind(subject(namespace, name))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(audit_id, recorded_at, payload)| StoredReceipt {
            audit_id,
            recorded_at,
            sealed: SealedReceipt::from_value(&payload),
            payload,
        })
        .collect())
}

/// The receipt of this very request (same namespace, name and uid), when
/// one was already written: a completed erasure is never run again, even
/// if its status was lost.
pub(crate) async fn find_completed(
    pool: &PgPool,
    request: &ErasureRequest,
) -> Result<Option<StoredReceipt>, sqlx::Error> {
    let hashes: Vec<String> = sqlx::query_scalar(
        "SELECT receipt_sha256 FROM data_deletion_log \
         WHERE request_namespace = $1 AND request_name = $2 \
           AND request_uid IS NOT DISTINCT FROM $3 AND receipt_sha256 IS NOT NULL \
         ORDER BY id DESC",
    )
    .bind(&request.namespace)
    .bind(&request.name)
    .bind(request.uid.as_deref())
    .fetch_all(pool)
    .await?;
    if hashes.is_empty() {
        return Ok(None);
    }
    let stored = stored_receipts(pool, &request.namespace, &request.name).await?;
    Ok(stored
        .into_iter()
        .find(|receipt| hashes.contains(&receipt.sealed.sha256)))
}

/// An earlier run of this request that committed but has no receipt.
#[derive(Debug, Clone, PartialEq)]
pub struct UnreceiptedRun {
    pub tombstone_id: i64,
    pub deleted_at: DateTime<Utc>,
    pub removed: BTreeMap<String, i64>,
    pub invalidations: Vec<CacheInvalidation>,
}

/// Earlier committed runs of this request without a receipt (the process
/// died after COMMIT, or their verification failed), oldest first.
pub(crate) async fn unreceipted_runs(
    conn: &mut PgConnection,
    request: &ErasureRequest,
    except_tombstone: i64,
) -> Result<Vec<UnreceiptedRun>, sqlx::Error> {
    let rows: Vec<(i64, DateTime<Utc>, Option<Value>)> = sqlx::query_as(
        "SELECT t.id, t.deleted_at, a.payload FROM data_deletion_log t \
         LEFT JOIN operator_audit_log a \
           ON a.action = $4 AND (a.payload->>'tombstoneId')::bigint = t.id \
         WHERE t.request_namespace = $1 AND t.request_name = $2 \
           AND t.request_uid IS NOT DISTINCT FROM $3 \
           AND t.receipt_sha256 IS NULL AND t.id <> $5 \
         ORDER BY t.id",
    )
    .bind(&request.namespace)
    .bind(&request.name)
    .bind(request.uid.as_deref())
    .bind(RUN_ACTION)
    .bind(except_tombstone)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tombstone_id, deleted_at, payload)| {
            let payload = payload.unwrap_or(Value::Null);
            UnreceiptedRun {
                tombstone_id,
                deleted_at,
                removed: serde_json::from_value(payload["removed"].clone()).unwrap_or_default(),
                invalidations: serde_json::from_value(payload["cacheInvalidations"].clone())
                    .unwrap_or_default(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level_and_has_no_whitespace() {
        let a: Value = serde_json::from_str(
            r#"{"b": 1, "a": {"d": [2, {"z": null, "y": "é\""}], "c": true}}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"a": {"c": true, "d": [2, {"y": "é\"", "z": null}]}, "b": 1}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":true,"d":[2,{"y":"é\"","z":null}]},"b":1}"#
        );
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            SealedReceipt::from_value(&a).sha256,
            sha256_hex(r#"{"a":{"c":true,"d":[2,{"y":"é\"","z":null}]},"b":1}"#)
        );
    }

    #[test]
    fn timestamps_keep_microseconds_only() {
        let at = DateTime::parse_from_rfc3339("2026-11-23T09:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(timestamp(at), "2026-11-23T09:00:00.123456Z");
    }
}
