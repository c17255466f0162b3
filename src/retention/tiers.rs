//! Tier semantics: the tables the tiers govern (a view of the catalogue), the policy hash,
//! and which changes of the tier table the shrink guard holds.

use std::fmt;

use crate::canonical::{canonical_json, sha256_hex};

use crate::api::RetentionPolicySpec;
pub use crate::api::retention_policy::Tier;
use crate::api::retention_policy::{Guarantee, MAX_WINDOW_DAYS, TierRetention, Tiers};

use crate::schema;
/// How finely a table's rows are keyed in time (the catalogue's).
pub use crate::schema::Granularity;

/// A table retention prunes: a catalogue table ([`schema::Table`]) whose
/// entry has a retention rule, seen from retention. It keeps no list of its
/// own: [`Table::ALL`] is the catalogue's tables with a rule, and what it
/// knows of a table (name, time column, granularity, window, the tenant
/// columns) is the catalogue entry's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Table(schema::Table);

/// Whether retention prunes `table` and, if so, as a whole.
const fn has_rule(table: schema::Table, cross_tenant: bool) -> bool {
    let rule = table.retention();
    rule.prunes() && rule.is_cross_tenant() == cross_tenant
}

/// How many catalogue tables [`has_rule`].
const fn count_pruned(cross_tenant: bool) -> usize {
    let (mut i, mut n) = (0, 0);
    while i < schema::Table::ALL.len() {
        if has_rule(schema::Table::ALL[i], cross_tenant) {
            n += 1;
        }
        i += 1;
    }
    n
}

/// The catalogue tables that [`has_rule`], in the catalogue's order.
const fn pruned<const N: usize>(cross_tenant: bool) -> [Table; N] {
    let mut found = [Table(schema::Table::ProbeMinute); N];
    let (mut i, mut n) = (0, 0);
    while i < schema::Table::ALL.len() {
        let table = schema::Table::ALL[i];
        if has_rule(table, cross_tenant) {
            found[n] = Table(table);
            n += 1;
        }
        i += 1;
    }
    found
}

const PER_TENANT_COUNT: usize = count_pruned(false);
const CROSS_TENANT_COUNT: usize = count_pruned(true);

/// The view of `table`; the build fails when retention does not prune it.
const fn pruned_table(table: schema::Table) -> Table {
    assert!(table.retention().prunes());
    Table(table)
}

// Named like the catalogue's variants, so call sites read the same.
#[allow(non_upper_case_globals)]
impl Table {
    pub const ProbeMinute: Table = pruned_table(schema::Table::ProbeMinute);
    pub const ProbeDay: Table = pruned_table(schema::Table::ProbeDay);
    pub const ProbeMonth: Table = pruned_table(schema::Table::ProbeMonth);
}

impl Table {
    /// The tables that carry a `tenant_id`, pruned tenant by tenant.
    pub const PER_TENANT: [Table; PER_TENANT_COUNT] = pruned(false);
    /// The tables pruned as a whole (tier `all`).
    pub const CROSS_TENANT: [Table; CROSS_TENANT_COUNT] = pruned(true);
    /// Every table retention prunes: the per-tenant ones, then the
    /// cross-tenant ones.
    pub const ALL: [Table; PER_TENANT_COUNT + CROSS_TENANT_COUNT] = {
        let mut all = [Table(schema::Table::ProbeMinute); PER_TENANT_COUNT + CROSS_TENANT_COUNT];
        let mut i = 0;
        while i < Self::PER_TENANT.len() {
            all[i] = Self::PER_TENANT[i];
            i += 1;
        }
        let mut j = 0;
        while j < Self::CROSS_TENANT.len() {
            all[i + j] = Self::CROSS_TENANT[j];
            j += 1;
        }
        all
    };

    /// The view of a catalogue table; `None` when retention does not prune it.
    pub fn of(table: schema::Table) -> Option<Self> {
        table.retention().prunes().then_some(Self(table))
    }

    /// The catalogue table.
    pub(crate) fn catalogued(self) -> schema::Table {
        self.0
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// Tables without a per-tenant rule: pruned as a whole, tier `all`.
    pub(crate) fn is_cross_tenant(self) -> bool {
        self.0.retention().is_cross_tenant()
    }

    pub fn parse(text: &str) -> Option<Self> {
        schema::Table::parse(text).and_then(Self::of)
    }

    /// The column that places a row in time.
    pub(crate) fn time_column(self) -> &'static str {
        self.0.time_column()
    }

    pub(crate) fn granularity(self) -> Granularity {
        self.0.granularity()
    }

    /// Whether a contract extends this table's window (the catalogue's rule).
    pub(crate) fn contract_extends(self) -> bool {
        self.0.retention().contract_extends()
    }

    /// The columns naming a row's tenant and server (per-tenant tables).
    pub fn owner_columns(self) -> Option<(&'static str, &'static str)> {
        self.0.owner_columns()
    }

    /// Days a row of this table is kept under `retention`, before any
    /// contract extension (the cross-tenant tables: the window the longest
    /// or shortest of every tier's is taken of).
    pub fn window_days(self, retention: &TierRetention) -> u32 {
        // Every table of this view has a window (`Table::of`); none would
        // mean keeping the rows.
        self.0
            .retention()
            .window()
            .map_or(u32::MAX, |window| window.days(retention))
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Label of the cross-tenant history table in per-tier counts.
pub const ALL_TIERS: &str = "all";

/// Per-minute days of a tenant of the contract tier with a contract of
/// `contract` days: the contract may only extend the tier's window, and never beyond
/// the cap. Without a cap in the policy no extension applies.
pub fn contract_minute_days(retention: &TierRetention, contract: Option<i32>) -> u32 {
    let base = retention.per_minute_days;
    match (contract, retention.contractual_cap_days) {
        (Some(days), Some(cap)) if days > 0 => base.max((days as u32).min(cap)),
        _ => base,
    }
}

/// SHA-256 (lowercase hex) of the canonical JSON of `spec.tiers`: object keys
/// sorted, no whitespace. The value the confirm-shrink annotation must carry.
pub fn policy_hash(tiers: &Tiers) -> String {
    let value = serde_json::to_value(tiers).unwrap_or(serde_json::Value::Null);
    sha256_hex(&canonical_json(&value))
}

/// Rules of the tier table checked here as well as by the CRD's CEL rules,
/// so a policy that reached the reconciler some other way (an old CRD, a
/// file for `plan`) still cannot cause a delete when it is broken.
pub fn spec_problems(spec: &RetentionPolicySpec) -> Vec<String> {
    let mut problems = Vec::new();
    for tier in Tier::ALL {
        let retention = tier.retention(&spec.tiers);
        let name = tier.as_str();
        if retention.per_minute_days < 1 {
            problems.push(format!("tiers.{name}.perMinuteDays must be at least 1"));
        }
        if retention.per_minute_days > retention.daily_days {
            problems.push(format!("tiers.{name}.perMinuteDays must be <= dailyDays"));
        }
        if retention.daily_days > retention.monthly_days {
            problems.push(format!("tiers.{name}.dailyDays must be <= monthlyDays"));
        }
        for (window, days) in [
            ("perMinuteDays", retention.per_minute_days),
            ("dailyDays", retention.daily_days),
            ("monthlyDays", retention.monthly_days),
        ] {
            if days > MAX_WINDOW_DAYS {
                problems.push(format!(
                    "tiers.{name}.{window} must be at most {MAX_WINDOW_DAYS} (a hundred years)"
                ));
            }
        }
        if retention.daily_days < 30 {
            problems.push(format!(
                "tiers.{name}.dailyDays must be at least 30 (uptime_30d is served from the daily rollup)"
            ));
        }
        if tier != Tier::CONTRACT && retention.contractual_cap_days.is_some() {
            problems.push(format!(
                "tiers.{name}.contractualCapDays: only the {} tier has one",
                Tier::CONTRACT
            ));
        }
    }
    let contract = Tier::CONTRACT;
    let contract_tier = spec.tiers.of(contract);
    match contract_tier.contractual_cap_days {
        None => problems.push(format!(
            "tiers.{contract}.contractualCapDays is required (at most 730)"
        )),
        Some(cap) if cap < contract_tier.per_minute_days || cap > 730 => problems.push(format!(
            "tiers.{contract}.contractualCapDays must be >= perMinuteDays and <= 730"
        )),
        Some(_) => {}
    }
    if let Err(error) = crate::api::common::UtcWindow::parse(&spec.enforcement.window) {
        problems.push(format!("enforcement.window: {error}"));
    }
    if spec.enforcement.max_rows_per_tenant_pass < 1 || spec.enforcement.max_rows_per_run < 1 {
        problems
            .push("enforcement: maxRowsPerTenantPass and maxRowsPerRun must be at least 1".into());
    }
    if spec.shrink_guard.max_shrink_percent > 100 {
        problems.push("shrinkGuard.maxShrinkPercent must be at most 100".into());
    }
    problems
}

/// Whether the privacy text calls this tier best effort.
pub(crate) fn is_best_effort(retention: &TierRetention) -> bool {
    retention.guarantee == Some(Guarantee::BestEffort)
}

/// One window of the tier table that differs between two policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowChange {
    /// e.g. `public.perMinuteDays`
    pub window: String,
    pub from_days: u32,
    pub to_days: u32,
}

impl WindowChange {
    pub(crate) fn shrinks(&self) -> bool {
        self.to_days < self.from_days
    }

    /// By how much the window shrinks, in percent of the old value (0 for growth).
    pub(crate) fn shrink_percent(&self) -> f64 {
        if !self.shrinks() || self.from_days == 0 {
            return 0.0;
        }
        f64::from(self.from_days - self.to_days) * 100.0 / f64::from(self.from_days)
    }

    /// Shrinks by strictly more than `max_percent` (integer arithmetic, so
    /// 50% of 7 days is not rounded either way).
    pub(crate) fn beyond(&self, max_percent: u32) -> bool {
        self.shrinks()
            && u64::from(self.from_days - self.to_days) * 100
                > u64::from(max_percent) * u64::from(self.from_days)
    }
}

impl fmt::Display for WindowChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.window, self.from_days, self.to_days)?;
        if self.shrinks() {
            write!(f, " (-{:.0}%)", self.shrink_percent())?;
        }
        Ok(())
    }
}

/// Every window that differs from `old` to `new`, in a stable order. A cap
/// that disappears counts as shrinking to the tier's per-minute days (no
/// extension any more).
pub(crate) fn window_changes(old: &Tiers, new: &Tiers) -> Vec<WindowChange> {
    let mut changes = Vec::new();
    for tier in Tier::ALL {
        let (a, b) = (tier.retention(old), tier.retention(new));
        let pairs = [
            ("perMinuteDays", a.per_minute_days, b.per_minute_days),
            ("dailyDays", a.daily_days, b.daily_days),
            ("monthlyDays", a.monthly_days, b.monthly_days),
        ];
        for (field, from_days, to_days) in pairs {
            if from_days != to_days {
                changes.push(WindowChange {
                    window: format!("{tier}.{field}"),
                    from_days,
                    to_days,
                });
            }
        }
    }
    let cap = |t: &TierRetention| t.contractual_cap_days.unwrap_or(t.per_minute_days);
    let contract = Tier::CONTRACT;
    let (from_days, to_days) = (cap(old.of(contract)), cap(new.of(contract)));
    if from_days != to_days {
        changes.push(WindowChange {
            window: format!("{contract}.contractualCapDays"),
            from_days,
            to_days,
        });
    }
    changes
}

/// The guard that applies to a change: the stricter of the enforced and the
/// new policy's, so a pull request cannot loosen the guard and use the
/// looser guard in the same step.
pub(crate) fn effective_guard_percent(
    enforced: &RetentionPolicySpec,
    new: &RetentionPolicySpec,
) -> u32 {
    enforced
        .shrink_guard
        .max_shrink_percent
        .min(new.shrink_guard.max_shrink_percent)
}

/// The changes the guard holds: windows shortened by more than `max_percent`.
pub(crate) fn guarded_shrinks(old: &Tiers, new: &Tiers, max_percent: u32) -> Vec<WindowChange> {
    window_changes(old, new)
        .into_iter()
        .filter(|change| change.beyond(max_percent))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> RetentionPolicySpec {
        crate::api::retention_policy::example_spec()
    }

    #[test]
    fn the_hash_ignores_key_order_and_everything_but_the_tiers() {
        let spec = example();
        let mut other = spec.clone();
        other.enforcement.max_rows_per_run = 1;
        other.privacy_policy.contact = "someone@else.example".into();
        assert_eq!(policy_hash(&spec.tiers), policy_hash(&other.tiers));
        assert_eq!(policy_hash(&spec.tiers).len(), 64);
        other.tiers.public.per_minute_days = 8;
        assert_ne!(policy_hash(&spec.tiers), policy_hash(&other.tiers));

        let canonical = canonical_json(&serde_json::json!({"b": 1, "a": {"d": [1, 2], "c": "x"}}));
        assert_eq!(canonical, r#"{"a":{"c":"x","d":[1,2]},"b":1}"#);
    }

    #[test]
    fn a_shrink_beyond_the_guard_is_held_and_growth_never_is() {
        let old = example().tiers;
        let mut new = old.clone();
        new.public.per_minute_days = 4; // -42.9%: within 50
        new.team.daily_days = 2000; // growth
        assert!(guarded_shrinks(&old, &new, 50).is_empty());
        new.author.per_minute_days = 45; // exactly -50%: not beyond
        assert!(guarded_shrinks(&old, &new, 50).is_empty());
        new.enterprise.per_minute_days = 36; // the typo of the design: 365 -> 36
        let held = guarded_shrinks(&old, &new, 50);
        assert_eq!(held.len(), 1);
        assert_eq!(
            held[0].to_string(),
            "enterprise.perMinuteDays: 365 -> 36 (-90%)"
        );
        assert_eq!(window_changes(&old, &new).len(), 4);
        // A zero guard holds every shrink, a 100% guard none.
        assert_eq!(guarded_shrinks(&old, &new, 0).len(), 3);
        assert!(guarded_shrinks(&old, &new, 100).is_empty());
    }

    #[test]
    fn a_window_past_a_hundred_years_is_a_problem_named_by_its_field() {
        let mut spec = example();
        assert!(spec_problems(&spec).is_empty());
        spec.tiers.team.monthly_days = MAX_WINDOW_DAYS;
        assert!(
            spec_problems(&spec).is_empty(),
            "the bound itself is allowed"
        );
        spec.tiers.team.monthly_days = MAX_WINDOW_DAYS + 1;
        spec.tiers.public.per_minute_days = u32::MAX;
        let problems = spec_problems(&spec);
        for field in ["tiers.team.monthlyDays", "tiers.public.perMinuteDays"] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(field) && p.contains("at most 36525")),
                "{field} not named in {problems:?}"
            );
        }
    }

    #[test]
    fn contracts_only_extend_and_never_past_the_cap() {
        let enterprise = example().tiers.enterprise;
        assert_eq!(contract_minute_days(&enterprise, None), 365);
        assert_eq!(contract_minute_days(&enterprise, Some(100)), 365);
        assert_eq!(contract_minute_days(&enterprise, Some(500)), 500);
        assert_eq!(contract_minute_days(&enterprise, Some(2000)), 730);
        assert_eq!(contract_minute_days(&enterprise, Some(-3)), 365);
    }

    /// The view holds what retention pruned before the catalogue existed:
    /// the probe tables tenant by tenant, the rejects and the suppression
    /// history as a whole, with the same windows.
    #[test]
    fn the_view_of_the_catalogue_is_what_retention_prunes() {
        let names = |tables: &[Table]| tables.iter().map(|t| t.name()).collect::<Vec<_>>();
        assert_eq!(
            names(&Table::PER_TENANT),
            ["probe_minute", "probe_day", "probe_month"]
        );
        assert_eq!(
            names(&Table::CROSS_TENANT),
            ["probe_minute_rejects", "suppression_clusters_history"]
        );
        assert_eq!(Table::ALL.len(), 5);
        assert_eq!(Table::parse("suppression_clusters"), None);
        let retention = example().tiers.team;
        let window = |name| Table::parse(name).unwrap().window_days(&retention);
        assert_eq!(window("probe_minute"), retention.per_minute_days);
        assert_eq!(window("probe_minute_rejects"), retention.per_minute_days);
        assert_eq!(window("probe_day"), retention.daily_days);
        assert_eq!(window("suppression_clusters_history"), retention.daily_days);
        assert_eq!(window("probe_month"), retention.monthly_days);
    }

    /// The cross-tenant rules of the catalogue are the ones `ranges`
    /// computes: the longest daily window of any tier, the shortest
    /// per-minute one.
    #[test]
    fn cross_tenant_rules_agree_with_the_ranges() {
        use crate::retention::ranges::{history_days, rejects_days};
        use crate::schema::Retention;
        let mut tiers = example().tiers;
        tiers.enterprise.daily_days = 900;
        tiers.public.per_minute_days = 3;
        for table in Table::CROSS_TENANT {
            let days = Tier::ALL.map(|tier| table.window_days(tier.retention(&tiers)));
            match table.catalogued().retention() {
                Retention::LongestDaily => {
                    assert_eq!(days.iter().max().copied(), Some(history_days(&tiers)));
                }
                Retention::ShortestPerMinute => {
                    assert_eq!(days.iter().min().copied(), Some(rejects_days(&tiers)));
                }
                other => panic!("{table} is cross-tenant with {other:?}"),
            }
        }
    }

    #[test]
    fn broken_tier_tables_are_reported() {
        assert!(spec_problems(&example()).is_empty());
        let mut spec = example();
        spec.tiers.author.daily_days = 20;
        spec.tiers.team.per_minute_days = 5000;
        spec.tiers.enterprise.contractual_cap_days = Some(900);
        spec.enforcement.window = "3-5".into();
        let problems = spec_problems(&spec);
        assert_eq!(problems.len(), 5, "{problems:#?}");
    }
}
