//! The catalogue of the tables that name a tenant: every relation of the
//! database with a `tenant_id` column or a column of salted tenant hashes
//! is either an erasure surface (`crate::erasure::surfaces`) or kept on
//! purpose, with the reason, here. An erasure refuses to run while the
//! database holds such a table that is in neither list (a table added by
//! another team's migration is exactly how a surface gets missed), unless
//! the operator's configuration declares it out of scope.

use sqlx::PgPool;

use crate::erasure::surfaces::{HASH_TABLES, ROW_TABLES};

/// A table that names a tenant and is not erased, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptTable {
    pub table: &'static str,
    pub reason: &'static str,
}

/// Tables that name a tenant and are deliberately not erasure surfaces.
pub const KEPT_TABLES: [KeptTable; 2] = [
    KeptTable {
        table: "data_deletion_log",
        reason: "the tombstones of erasures: the proof an erasure happened and what replay \
                 re-applies after a restore; they hold no monitoring data",
    },
    KeptTable {
        table: "tenant_tier_history",
        reason: "the tenant's contract tier over time, which retention reads; it holds no \
                 monitoring data of the tenant's servers",
    },
];

/// Every table of the catalogue: the erasure surfaces, then the kept ones.
pub fn catalogued_tables() -> Vec<&'static str> {
    ROW_TABLES
        .iter()
        .chain(HASH_TABLES.iter())
        .map(|table| table.name())
        .chain(KEPT_TABLES.iter().map(|kept| kept.table))
        .collect()
}

/// Tables, partitioned tables and materialized views outside PostgreSQL's
/// own schemas with a `tenant_id` column or a column of tenant hashes
/// (named `*tenant_hash*`), as `name` in the search path's first schema and
/// `schema.name` elsewhere. Partitions are left out: their parent is the
/// table (erasing the parent erases them).
const TENANT_TABLES: &str = "\
SELECT DISTINCT CASE WHEN n.nspname = current_schema() THEN c.relname::text \
                     ELSE n.nspname || '.' || c.relname END AS name \
FROM pg_class c \
JOIN pg_namespace n ON n.oid = c.relnamespace \
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
WHERE c.relkind IN ('r', 'p', 'm') \
  AND NOT c.relispartition \
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
  AND n.nspname NOT LIKE 'pg\\_%' \
  AND (a.attname = 'tenant_id' OR a.attname LIKE '%tenant\\_hash%') \
ORDER BY 1";

/// The tables of the database that name a tenant and are neither in the
/// catalogue nor in `out_of_scope` (names as the operator's configuration
/// gives them: `name` or `schema.name`).
pub async fn uncatalogued_tables(
    pool: &PgPool,
    out_of_scope: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let found: Vec<String> = sqlx::query_scalar(TENANT_TABLES).fetch_all(pool).await?;
    let catalogued = catalogued_tables();
    Ok(found
        .into_iter()
        .filter(|name| !catalogued.contains(&name.as_str()))
        .filter(|name| !out_of_scope.iter().any(|declared| declared == name))
        .collect())
}
