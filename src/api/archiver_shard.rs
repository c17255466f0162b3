//! `ArchiverShard`: one Redis shard drained into `probe_minute` every minute.

// Each `printcolumn(...)` of kube's derive repeats the same keys by design.
#![allow(clippy::duplicated_attributes)]

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::SecretKeyRef;

/// CEL rule for Go-style durations such as `1h`, `90m`, `1h30m`.
const DURATION_RULE: &str = "self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != ''";

/// A Redis shard whose sealed verdicts are archived every minute, behind a
/// watermark, exactly once.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "archiver.uptime.dev",
    version = "v1alpha1",
    kind = "ArchiverShard",
    namespaced,
    status = "ArchiverShardStatus",
    shortname = "ash",
    category = "archiver",
    doc = "A Redis shard drained into the Postgres history table probe_minute every minute, idempotently, behind a watermark.",
    printcolumn(name = "Shard", type_ = "integer", json_path = ".spec.shardId"),
    printcolumn(
        name = "Last Minute",
        type_ = "string",
        json_path = ".status.lastArchivedMinute",
        description = "Last archived minute (UTC)"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.lagSeconds",
        description = "Seconds behind real time"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Owner",
        type_ = "string",
        json_path = ".status.lockOwner",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ArchiverShardSpec {
    /// Shard number; one watermark row per shard id.
    #[schemars(range(min = 0))]
    pub shard_id: i32,
    /// How to reach the shard's Redis.
    pub redis: RedisConnection,
    /// How a minute's keys are found: `index` (the verdict-index set),
    /// `scan` (SCAN MATCH), or `auto` (index when the set exists).
    #[serde(default)]
    pub discovery: Discovery,
    /// Seconds after the minute boundary at which a tick starts.
    #[serde(default = "default_tick_offset_seconds")]
    #[schemars(range(min = 0, max = 59))]
    pub tick_offset_seconds: u32,
    /// Where to start when the shard has no watermark yet (Go duration, e.g. 1h).
    #[serde(default = "default_backfill")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message("must be a duration such as 1h, 90m or 1h30m"))]
    // `0m` matches the pattern but means no backfill at all (the API server
    // accepted it before this rule; `validate` did not).
    #[x_kube(validation = kube::core::Rule::new("self.matches('[1-9]')").message("must be a positive duration such as 1h or 90m"))]
    pub backfill_when_no_watermark: String,
    /// Lag above this many seconds turns LagWithinSLO false.
    #[serde(default = "default_lag_slo_seconds")]
    #[schemars(range(min = 1))]
    pub lag_slo_seconds: u32,
    /// How long (seconds past its end) a minute waits for verdicts the
    /// coalescer has not sealed. Past it the sealed verdicts are archived and
    /// each unsealed one goes to probe_minute_rejects as `unsealed_timeout`,
    /// so one verdict never sealed cannot hold the shard (1 to 3600).
    #[serde(default = "default_unsealed_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 3600").message("must be between 1 and 3600 seconds"))]
    pub unsealed_timeout_seconds: u32,
    /// Worker replicas (two are safe: the watermark row lock serialises them).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 10))]
    pub replicas: i32,
    /// Minutes known to be lost (e.g. evicted); the watermark may pass them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acknowledged_gaps: Vec<AcknowledgedGap>,
    /// Pause draining while true.
    #[serde(default)]
    pub suspend: bool,
}

pub(crate) fn default_tick_offset_seconds() -> u32 {
    5
}
fn default_backfill() -> String {
    "1h".into()
}
fn default_lag_slo_seconds() -> u32 {
    180
}
pub(crate) fn default_unsealed_timeout_seconds() -> u32 {
    300
}
fn default_replicas() -> i32 {
    2
}

/// Connection settings for the shard's Redis; the URL lives in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisConnection {
    /// Secret key holding the redis:// URL (may include a password).
    pub url_secret_ref: SecretKeyRef,
}

/// How the keys of one minute are discovered.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// Read the verdict-index:{minute} set (O(keys of the minute)).
    Index,
    /// SCAN MATCH the whole keyspace (slow on big shards).
    Scan,
    /// Use the index set when it exists for the minute, else scan.
    #[default]
    Auto,
}

/// A range of minutes acknowledged as lost.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
// Both are date-time strings, timestamps to CEL (the API server accepted a
// reversed gap before this rule; `validate` did not).
#[x_kube(validation = kube::core::Rule::new("self.to > self.from").message("must be after from").field_path(".to"))]
pub struct AcknowledgedGap {
    /// First lost minute (inclusive, RFC 3339).
    pub from: DateTime<Utc>,
    /// End of the gap (exclusive, RFC 3339).
    pub to: DateTime<Utc>,
    /// Why the minutes are lost, for the audit log.
    #[schemars(length(min = 1))]
    pub reason: String,
}

/// Observed state of an ArchiverShard.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiverShardStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, LagWithinSLO, GapDetected, PartitionMissing, HoldsDerivedViews,
    /// StrayKeys.
    /// Ready is False whenever the shard cannot make progress, with the
    /// reason: RedisUnavailable, DatabaseError, GapHeld, PartitionMissing,
    /// UnsealedWait, NoRecentTick.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The watermark: last minute fully archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_minute: Option<DateTime<Utc>>,
    /// Seconds between now and the end of the last archived minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<i64>,
    /// Worker currently holding the watermark lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_owner: Option<String>,
    /// Rows written in the last tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_archived_last_tick: Option<i64>,
    /// Verdicts sent to probe_minute_rejects in the last tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_rejected_last_tick: Option<i64>,
    /// How long the next minute has waited for unsealed keys, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsealed_wait_seconds: Option<i64>,
    /// The last minute archived without some of its verdicts because they
    /// were not sealed within `spec.unsealedTimeoutSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsealed_timeout_minute: Option<DateTime<Utc>>,
    /// How many verdicts of that minute went to probe_minute_rejects as
    /// `unsealed_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsealed_timeout_verdicts: Option<i64>,
    /// Keys that look like verdicts but can never be archived (minute not a
    /// multiple of 60, no minute at all, or written after their minute was
    /// archived), at the last hourly audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stray_keys: Option<i64>,
    /// A few of those keys, printable-escaped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stray_key_examples: Vec<String>,
    /// When the last stray-key audit finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stray_audit_time: Option<DateTime<Utc>>,
    /// Name of the worker Deployment the operator owns for this shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_deployment: Option<String>,
}
