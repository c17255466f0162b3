//! Which partition may be dropped, and why (not): pure functions of the
//! catalog's bounds, the clock, the drop window and the retention policy.
//!
//! A partition `[from, to)` becomes eligible once `to <= now - horizon`, where
//! the horizon is the longest per-minute retention anything may have: every
//! tier of the policy and every enterprise contract extension (capped). The
//! verification query (see `removal`) then checks every row against its own
//! tier before anything is detached; this module only decides which
//! partition is worth verifying.

use chrono::{DateTime, Duration, Utc};

use super::calendar::{Bounds, Month};
use super::catalog::CatalogPartition;
use crate::api::RetentionPolicySpec;
use crate::api::common::UtcWindow;
use crate::api::retention_policy::Tier;

/// Absolute ceiling of a contract extension (design: enterprise per-minute
/// <= contractualCapDays <= 730), used when a policy lacks its cap.
pub const CONTRACT_CEILING_DAYS: u32 = 730;

/// The longest per-minute retention any row may have, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionHorizon {
    pub days: u32,
    /// e.g. `enterprise.perMinuteDays` or `enterprise contract (capped at 730)`.
    pub source: String,
}

impl RetentionHorizon {
    pub(crate) fn duration(&self) -> Duration {
        Duration::days(i64::from(self.days))
    }
}

/// The longest per-minute retention: the maximum over every tier's
/// `perMinuteDays` and the longest contract extension in
/// `tenant_tier_history`, the latter capped by `contractualCapDays`.
pub fn retention_horizon(
    policy: &RetentionPolicySpec,
    longest_contract_days: Option<i32>,
) -> RetentionHorizon {
    let mut horizon = RetentionHorizon {
        days: 0,
        source: String::new(),
    };
    for (tier, retention) in policy.tiers.iter() {
        if retention.per_minute_days > horizon.days || horizon.source.is_empty() {
            horizon = RetentionHorizon {
                days: retention.per_minute_days,
                source: format!("{tier}.perMinuteDays"),
            };
        }
    }
    let cap = policy
        .tiers
        .of(Tier::CONTRACT)
        .contractual_cap_days
        .unwrap_or(CONTRACT_CEILING_DAYS);
    // A negative or zero contract (impossible under the table's CHECK) can
    // only shorten nothing: clamp it away instead of trusting it.
    let contract = longest_contract_days
        .and_then(|days| u32::try_from(days).ok())
        .map(|days| days.min(cap));
    if let Some(days) = contract
        && days > horizon.days
    {
        horizon = RetentionHorizon {
            days,
            source: format!("{} contract extension (cap {cap} days)", Tier::CONTRACT),
        };
    }
    horizon
}

/// The hard guard: the current month and every later one are never dropped,
/// whatever the policy, the contracts or the arithmetic above say. A range
/// reaching past the start of the current month is protected.
pub fn is_protected(bounds: &Bounds, now: DateTime<Utc>) -> bool {
    bounds.to > Month::containing(now).start()
}

/// Why a partition may or may not be dropped now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropDecision {
    /// Eligible, inside the window: verify its rows, then detach and drop.
    Droppable,
    /// No usable RetentionPolicy: the retention horizon is unknown.
    NoPolicy,
    /// The current or a future month.
    Protected,
    /// Rows in it may still be inside the longest retention.
    NotYetEligible,
    /// Eligible, but drops only happen inside the drop window.
    OutsideWindow,
}

/// One partition, oldest first, with its drop decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub bounds: Bounds,
    /// When every row is past the longest retention (`to + horizon`).
    pub eligible_at: Option<DateTime<Utc>>,
    pub decision: DropDecision,
    pub reason: String,
}

/// What the drop planner needs besides the partitions and the policy.
#[derive(Debug, Clone, Copy)]
pub struct DropInputs<'a> {
    pub now: DateTime<Utc>,
    pub window: &'a UtcWindow,
    /// `max(contract_minute_retention_days)` of `tenant_tier_history`.
    pub longest_contract_days: Option<i32>,
}

/// Every partition with range bounds, oldest first, with whether it may be
/// dropped now. Partitions without range bounds (a DEFAULT partition) are
/// not candidates: the operator never touches them.
pub fn plan_drops(
    partitions: &[CatalogPartition],
    inputs: DropInputs<'_>,
    policy: Option<&RetentionPolicySpec>,
) -> Vec<Candidate> {
    let horizon = policy.map(|policy| retention_horizon(policy, inputs.longest_contract_days));
    let mut ranged: Vec<(&str, Bounds)> = partitions
        .iter()
        .filter_map(|p| Some((p.name.as_str(), p.bounds?)))
        .collect();
    ranged.sort_by_key(|(name, bounds)| (*bounds, *name));
    ranged
        .into_iter()
        .map(|(name, bounds)| decide(name, bounds, inputs, horizon.as_ref()))
        .collect()
}

fn decide(
    name: &str,
    bounds: Bounds,
    inputs: DropInputs<'_>,
    horizon: Option<&RetentionHorizon>,
) -> Candidate {
    // A horizon past the last representable instant: never eligible.
    let eligible_at = horizon.map(|h| {
        bounds
            .to
            .checked_add_signed(h.duration())
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    });
    let (decision, reason) = if is_protected(&bounds, inputs.now) {
        (
            DropDecision::Protected,
            "holds the current or a future month: never dropped".to_string(),
        )
    } else {
        match (horizon, eligible_at) {
            (Some(horizon), Some(eligible_at)) => eligibility(horizon, eligible_at, inputs),
            _ => (
                DropDecision::NoPolicy,
                "no RetentionPolicy in force: nothing is dropped".to_string(),
            ),
        }
    };
    Candidate {
        name: name.to_string(),
        bounds,
        eligible_at,
        decision,
        reason,
    }
}

fn eligibility(
    horizon: &RetentionHorizon,
    eligible_at: DateTime<Utc>,
    inputs: DropInputs<'_>,
) -> (DropDecision, String) {
    let at = eligible_at.format("%Y-%m-%dT%H:%M:%SZ");
    if eligible_at > inputs.now {
        return (
            DropDecision::NotYetEligible,
            format!(
                "kept until {at}: rows may be inside the longest per-minute retention ({} days, {})",
                horizon.days, horizon.source
            ),
        );
    }
    if !inputs.window.contains(inputs.now) {
        return (
            DropDecision::OutsideWindow,
            format!(
                "eligible since {at}; waiting for the drop window {}-{} UTC",
                inputs.window.start.format("%H:%M"),
                inputs.window.end.format("%H:%M")
            ),
        );
    }
    (
        DropDecision::Droppable,
        format!(
            "eligible since {at} ({} days, {}); rows are verified before it is detached",
            horizon.days, horizon.source
        ),
    )
}
