//! `RetentionPolicy`: the tier table that is the single source of truth for
//! how long history is kept, and from which the privacy-policy text is rendered.

// Each `printcolumn(...)` of kube's derive repeats the same keys by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{WINDOW_MESSAGE, WINDOW_NOT_EMPTY_MESSAGE, WINDOW_NOT_EMPTY_RULE, WINDOW_RULE};

/// Retention tiers and how they are enforced. Exactly one RetentionPolicy may
/// be in force per operator; with none, or with two, nothing is deleted.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "archiver.uptime.dev",
    version = "v1alpha1",
    kind = "RetentionPolicy",
    namespaced,
    status = "RetentionPolicyStatus",
    shortname = "rp",
    category = "archiver",
    doc = "Retention tiers for the uptime history: the database is pruned to them and the privacy-policy retention text is rendered from them.",
    printcolumn(
        name = "Hash",
        type_ = "string",
        json_path = ".status.policyHash",
        description = "Hash of the tier table in force"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Last Run",
        type_ = "date",
        json_path = ".status.lastEnforcement.finishedAt"
    ),
    printcolumn(
        name = "No Tier",
        type_ = "integer",
        json_path = ".status.tenantsWithoutTier",
        priority = 1,
        description = "Tenants with no tier row (never pruned)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicySpec {
    /// Retention windows per tier. Exactly the four tiers public, author,
    /// team and enterprise; no others, and no per-tenant entries.
    pub tiers: Tiers,
    /// When and how fast row-level enforcement runs.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Holds back a change that shortens any window by more than this.
    #[serde(default)]
    pub shrink_guard: ShrinkGuard,
    /// Where and how the privacy-policy retention section is published.
    pub privacy_policy: PrivacyPolicyTarget,
    /// Stop enforcing (nothing is deleted) while true; status keeps updating.
    #[serde(default)]
    pub suspend: bool,
}

/// The four tiers. Each window is in days.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = contract_tier_has_a_cap())]
#[x_kube(validation = contract_cap_is_in_range())]
#[x_kube(validation = only_the_contract_tier_has_a_cap())]
pub struct Tiers {
    /// Free tier for public servers.
    pub public: TierRetention,
    /// Paid tier for a single author.
    pub author: TierRetention,
    /// Paid tier for teams.
    pub team: TierRetention,
    /// Contract tier; per-minute retention may be extended per tenant up to
    /// `contractualCapDays`.
    pub enterprise: TierRetention,
}

impl Tiers {
    /// The windows of `tier`.
    pub fn of(&self, tier: Tier) -> &TierRetention {
        match tier {
            Tier::Public => &self.public,
            Tier::Author => &self.author,
            Tier::Team => &self.team,
            Tier::Enterprise => &self.enterprise,
        }
    }

    /// The tiers with their names, in a stable order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'static str, &TierRetention)> {
        Tier::ALL
            .into_iter()
            .map(|tier| (tier.as_str(), self.of(tier)))
    }
}

/// CEL: the contract tier carries its cap.
fn contract_tier_has_a_cap() -> kube::core::Rule {
    let tier = Tier::CONTRACT;
    kube::core::Rule::new(format!("has(self.{tier}.contractualCapDays)"))
        .message(kube::core::Message::Message(format!(
            "{tier} needs contractualCapDays (at most 730)"
        )))
        .field_path(format!(".{tier}.contractualCapDays"))
}

/// CEL: the contract tier's cap lies between its own window and 730 days.
fn contract_cap_is_in_range() -> kube::core::Rule {
    let tier = Tier::CONTRACT;
    kube::core::Rule::new(format!(
        "!has(self.{tier}.contractualCapDays) || (self.{tier}.perMinuteDays <= \
         self.{tier}.contractualCapDays && self.{tier}.contractualCapDays <= 730)"
    ))
    .message(kube::core::Message::Message(format!(
        "{tier} contractualCapDays must be >= perMinuteDays and <= 730"
    )))
    .field_path(format!(".{tier}.contractualCapDays"))
}

/// CEL: no other tier has a cap; built from [`Tier::ALL`], so a new tier
/// is covered without editing the rule.
fn only_the_contract_tier_has_a_cap() -> kube::core::Rule {
    let others: Vec<String> = Tier::ALL
        .into_iter()
        .filter(|tier| *tier != Tier::CONTRACT)
        .map(|tier| format!("!has(self.{tier}.contractualCapDays)"))
        .collect();
    kube::core::Rule::new(others.join(" && ")).message(kube::core::Message::Message(format!(
        "only the {} tier has a contractualCapDays",
        Tier::CONTRACT
    )))
}

/// A tier of `spec.tiers` and of `tenant_tier_history.tier`: the one list of
/// tiers. Adding one is a variant here, its field in [`Tiers`] (the match in
/// [`Tiers::of`] asks for it), its customer-facing names (the matches in the
/// privacy text ask for them) and a migration that widens the `CHECK` on
/// `tenant_tier_history.tier`; a test (`tests/schema.rs`) fails until
/// `ALL`, the CRD schema and that `CHECK` agree. The CEL rules, the SQL
/// parameters, the privacy table and the demo are built from `ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Public,
    Author,
    Team,
    /// The only tier whose per-minute window a contract may extend.
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Public, Tier::Author, Tier::Team, Tier::Enterprise];

    /// The tier whose per-minute window a tenant's contract may extend, up
    /// to `contractualCapDays`.
    pub const CONTRACT: Tier = Tier::Enterprise;

    /// The name in `spec.tiers` and in `tenant_tier_history.tier`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Author => "author",
            Self::Team => "team",
            Self::Enterprise => "enterprise",
        }
    }

    /// The tier named in the database; `None` for anything else (such a row
    /// then protects its data: an unknown tier never causes a delete).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|tier| tier.as_str() == text)
    }

    /// The windows of this tier in `tiers`.
    pub(crate) fn retention(self, tiers: &Tiers) -> &TierRetention {
        tiers.of(self)
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest window of any tier, in days: a hundred years. Longer is a
/// typo, and a window reaching before the first instant PostgreSQL can
/// store would make every retention and partition statement fail.
pub const MAX_WINDOW_DAYS: u32 = 36_525;

/// Retention windows of one tier, in days.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.perMinuteDays <= self.dailyDays").message("perMinuteDays must be <= dailyDays").field_path(".perMinuteDays"))]
#[x_kube(validation = kube::core::Rule::new("self.dailyDays <= self.monthlyDays").message("dailyDays must be <= monthlyDays").field_path(".dailyDays"))]
pub struct TierRetention {
    /// Days per-minute history (probe_minute) is kept.
    #[schemars(range(min = 1, max = MAX_WINDOW_DAYS))]
    pub per_minute_days: u32,
    /// Days the daily rollup (probe_day, suppression history) is kept. At
    /// least 30, so uptime_30d is always served from the daily rollup.
    #[schemars(range(min = 30, max = MAX_WINDOW_DAYS))]
    pub daily_days: u32,
    /// Days the monthly rollup (probe_month) is kept.
    #[schemars(range(min = 1, max = MAX_WINDOW_DAYS))]
    pub monthly_days: u32,
    /// What the privacy policy promises for this tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guarantee: Option<Guarantee>,
    /// Enterprise only: the longest per-minute retention a contract may
    /// extend to (at most 730 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 730))]
    pub contractual_cap_days: Option<u32>,
}

/// How firmly a tier's retention is promised.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    /// Kept up to the window, but not guaranteed (free tier).
    BestEffort,
    /// Kept for the full window.
    Guaranteed,
}

/// Row-level enforcement settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Enforcement {
    /// Daily UTC window (HH:MM-HH:MM) in which rows are deleted.
    #[serde(default = "default_enforcement_window")]
    #[schemars(length(max = 11))]
    #[x_kube(validation = kube::core::Rule::new(WINDOW_RULE).message(WINDOW_MESSAGE))]
    #[x_kube(validation = kube::core::Rule::new(WINDOW_NOT_EMPTY_RULE).message(WINDOW_NOT_EMPTY_MESSAGE))]
    pub window: String,
    /// At most this many rows are deleted for one tenant in one pass.
    #[serde(default = "default_max_rows_per_tenant_pass")]
    #[schemars(range(min = 1))]
    pub max_rows_per_tenant_pass: i64,
    /// At most this many rows are deleted in one run (one window).
    #[serde(default = "default_max_rows_per_run")]
    #[schemars(range(min = 1))]
    pub max_rows_per_run: i64,
}

fn default_enforcement_window() -> String {
    "03:00-05:00".into()
}
fn default_max_rows_per_tenant_pass() -> i64 {
    100_000
}
fn default_max_rows_per_run() -> i64 {
    5_000_000
}

impl Default for Enforcement {
    fn default() -> Self {
        Self {
            window: default_enforcement_window(),
            max_rows_per_tenant_pass: default_max_rows_per_tenant_pass(),
            max_rows_per_run: default_max_rows_per_run(),
        }
    }
}

/// Guard against a typo that shortens retention by accident.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShrinkGuard {
    /// A change that shortens any window by more than this percentage is held
    /// until the annotation archiver.uptime.dev/confirm-shrink equals the new
    /// policy hash.
    #[serde(default = "default_max_shrink_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_shrink_percent: u32,
}

fn default_max_shrink_percent() -> u32 {
    50
}

impl Default for ShrinkGuard {
    fn default() -> Self {
        Self {
            max_shrink_percent: default_max_shrink_percent(),
        }
    }
}

/// Where the privacy-policy retention section goes, and what it says about erasure.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrivacyPolicyTarget {
    /// ConfigMap (same namespace) that receives the rendered Markdown and JSON.
    #[serde(default = "default_config_map_name")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$') && size(self) <= 253").message("must be a valid ConfigMap name (lowercase DNS subdomain)"))]
    pub config_map_name: String,
    /// Days within which an Article 17 erasure request is answered (at most 30).
    #[serde(default = "default_article17_days")]
    #[schemars(range(min = 1, max = 30))]
    pub article17_response_days: u32,
    /// Contact for privacy requests, printed in the policy text.
    #[schemars(length(min = 3, max = 320))]
    pub contact: String,
}

fn default_config_map_name() -> String {
    "privacy-policy-retention".into()
}
fn default_article17_days() -> u32 {
    30
}

/// Observed state of a RetentionPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicyStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Conflict, ShrinkHeld.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// SHA-256 of the tier table of this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// Hash of the tier table actually being enforced (differs from
    /// policyHash while a shrink is held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_policy_hash: Option<String>,
    /// The last enforcement run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_enforcement: Option<EnforcementRun>,
    /// When the next enforcement run may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_enforcement_at: Option<DateTime<Utc>>,
    /// Rows older than policy still present, per table.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drift: BTreeMap<String, i64>,
    /// Tenants with data but no tier row; they are never pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants_without_tier: Option<i64>,
    /// Present while a shrink is held: what confirming it would delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shrink_hold: Option<ShrinkHold>,
}

/// One enforcement run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnforcementRun {
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Rows deleted per table.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rows_deleted: BTreeMap<String, i64>,
    /// True when a row cap stopped the run before it was done.
    #[serde(default)]
    pub capped: bool,
}

/// A held shrink: the new hash to confirm and the rows it would delete.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShrinkHold {
    /// Set the confirm-shrink annotation to this value to apply the change.
    pub policy_hash: String,
    /// Windows that shrink beyond the guard, e.g. "public.perMinuteDays: 7 -> 0".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shrinking: Vec<String>,
    /// Rows the new values would delete, per table.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rows_would_delete: BTreeMap<String, i64>,
}

/// The spec of `examples/retention-policy.yaml`, for the unit tests.
#[cfg(test)]
pub(crate) fn example_spec() -> RetentionPolicySpec {
    let text = include_str!("../../examples/retention-policy.yaml");
    let policy: RetentionPolicy = serde_yaml_ng::from_str(text).expect("the example parses");
    policy.spec
}
