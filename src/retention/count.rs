//! Counting expired rows without deleting them: the drift of the status,
//! the rows a held shrink would delete, and `plan`. The counts use the same
//! work items and conditions as the deletes (see `items`).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::RetentionError;
use super::items::{WorkItem, count_per_tier};
use super::ranges::expired_ranges;
use super::store;
use super::tiers::Table;
use crate::api::retention_policy::Tiers;

/// Expired rows present, per table and tier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiredCounts {
    /// table -> tier -> rows (the cross-tenant tables' tier is `all`).
    pub rows: BTreeMap<String, BTreeMap<String, i64>>,
    /// Tenants with rows in probe_minute, probe_day or probe_month and no
    /// tier row at all: never pruned.
    pub tenants_without_tier: i64,
    /// The first of them, by id, at most [`UNTIERED_EXAMPLES`].
    pub untiered_examples: Vec<Uuid>,
}

/// How many tenants without a tier are named (status, condition).
pub const UNTIERED_EXAMPLES: usize = 5;

impl ExpiredCounts {
    /// Rows per table, every table present (zero when nothing is expired).
    pub fn by_table(&self) -> BTreeMap<String, i64> {
        Table::ALL
            .into_iter()
            .map(|table| {
                let n = self
                    .rows
                    .get(table.name())
                    .map_or(0, |tiers| tiers.values().sum());
                (table.name().to_string(), n)
            })
            .collect()
    }

    pub fn total(&self) -> i64 {
        self.by_table().values().sum()
    }

    pub fn get(&self, table: Table, tier: &str) -> i64 {
        self.rows
            .get(table.name())
            .and_then(|tiers| tiers.get(tier))
            .copied()
            .unwrap_or(0)
    }
}

/// Counts, as of `as_of`, the rows `tiers` would have deleted that are
/// still present.
pub async fn count_expired(
    pool: &PgPool,
    tiers: &Tiers,
    as_of: DateTime<Utc>,
) -> Result<ExpiredCounts, RetentionError> {
    let spans = store::all_tier_spans(pool).await?;
    let mut counts = ExpiredCounts::default();
    let mut tenants_with_data: BTreeSet<Uuid> = BTreeSet::new();
    for table in Table::PER_TENANT {
        let pairs = store::tenant_servers(pool, table).await?;
        let mut items = Vec::new();
        let mut ranges_of = BTreeMap::new();
        for (tenant, server) in pairs {
            tenants_with_data.insert(tenant);
            let Some(tenant_spans) = spans.get(&tenant) else {
                continue;
            };
            let ranges = ranges_of
                .entry(tenant)
                .or_insert_with(|| expired_ranges(tenant_spans, tiers, table, as_of));
            items.extend(WorkItem::for_servers(table, tenant, &[server], ranges));
        }
        let per_tier = count_per_tier(pool, table, &items).await?;
        counts.rows.insert(table.name().to_string(), per_tier);
    }
    for item in WorkItem::cross_tenant_tables(tiers, as_of) {
        let table = item.table;
        let per_tier = count_per_tier(pool, table, &[item]).await?;
        counts.rows.insert(table.name().to_string(), per_tier);
    }
    let untiered: Vec<Uuid> = tenants_with_data
        .into_iter()
        .filter(|tenant| !spans.contains_key(tenant))
        .collect();
    counts.tenants_without_tier = untiered.len() as i64;
    counts.untiered_examples = untiered.into_iter().take(UNTIERED_EXAMPLES).collect();
    Ok(counts)
}
