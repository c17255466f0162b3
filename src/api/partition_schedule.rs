//! `PartitionSchedule`: monthly partitions exist ahead of need and are dropped
//! only when every row in them is past retention.

// Each `printcolumn(...)` of kube's derive repeats the same keys by design.
#![allow(clippy::duplicated_attributes)]

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    LocalObjectRef, WINDOW_MESSAGE, WINDOW_NOT_EMPTY_MESSAGE, WINDOW_NOT_EMPTY_RULE, WINDOW_RULE,
};

/// Monthly partitions of the history table, created ahead and dropped behind
/// retention with guards.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "archiver.uptime.dev",
    version = "v1alpha1",
    kind = "PartitionSchedule",
    namespaced,
    status = "PartitionScheduleStatus",
    shortname = "ps",
    category = "archiver",
    doc = "Monthly partitions of probe_minute: created ahead of need, dropped only when every row is past retention.",
    printcolumn(name = "Table", type_ = "string", json_path = ".spec.table"),
    printcolumn(
        name = "Months Ahead",
        type_ = "integer",
        json_path = ".status.coverageMonthsAhead"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Next Drop",
        type_ = "string",
        json_path = ".status.nextDrop.partition"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PartitionScheduleSpec {
    /// Partitioned table; only probe_minute is managed.
    #[serde(default = "default_table")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self == 'probe_minute'").message("only probe_minute is partitioned by this operator"))]
    pub table: String,
    /// The next month's partition exists at least this many days before it starts.
    #[serde(default = "default_create_ahead_days")]
    #[schemars(range(min = 1, max = 62))]
    pub create_ahead_days: u32,
    /// Daily UTC window (HH:MM-HH:MM) in which partitions may be dropped.
    #[serde(default = "default_drop_window")]
    #[schemars(length(max = 11))]
    #[x_kube(validation = kube::core::Rule::new(WINDOW_RULE).message(WINDOW_MESSAGE))]
    #[x_kube(validation = kube::core::Rule::new(WINDOW_NOT_EMPTY_RULE).message(WINDOW_NOT_EMPTY_MESSAGE))]
    pub drop_window: String,
    /// RetentionPolicy whose longest per-minute window bounds drops.
    pub retention_policy_ref: LocalObjectRef,
    /// lock_timeout for create, detach and drop statements, in seconds.
    #[serde(default = "default_lock_timeout_seconds")]
    #[schemars(range(min = 1, max = 60))]
    pub lock_timeout_seconds: u32,
    /// Stop creating and dropping while true.
    #[serde(default)]
    pub suspend: bool,
}

fn default_table() -> String {
    "probe_minute".into()
}
fn default_create_ahead_days() -> u32 {
    7
}
fn default_drop_window() -> String {
    "03:00-04:00".into()
}
fn default_lock_timeout_seconds() -> u32 {
    5
}

/// Observed state of a PartitionSchedule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionScheduleStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Covered, DropBlocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Partitions as read from the catalog.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionInfo>,
    /// Whole months covered after the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage_months_ahead: Option<i32>,
    /// Last time a partition was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_create_at: Option<DateTime<Utc>>,
    /// Last time a partition was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drop_at: Option<DateTime<Utc>>,
    /// The oldest partition and whether it may be dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_drop: Option<NextDrop>,
}

/// One partition with bounds read from the catalog.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionInfo {
    pub name: String,
    /// Inclusive lower bound.
    pub from: DateTime<Utc>,
    /// Exclusive upper bound.
    pub to: DateTime<Utc>,
    /// Planner estimate (pg_class.reltuples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approximate_rows: Option<i64>,
}

/// The next drop candidate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NextDrop {
    pub partition: String,
    /// Earliest time every row in it is past the longest retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligible_at: Option<DateTime<Utc>>,
    pub droppable: bool,
    /// Why it is or is not droppable now.
    pub reason: String,
}
