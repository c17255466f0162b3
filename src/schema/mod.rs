//! The catalogue of the tables that name a tenant: every relation of the
//! database with a `tenant_id` column or a column of salted tenant hashes
//! is either a table holding tenant data ([`Table`], described in
//! [`tables`]: erased, verified, replayed and pruned by what its entry says)
//! or kept on purpose, with the reason, here ([`KEPT_TABLES`]). An erasure
//! refuses to run while the database holds such a table that is in neither
//! list (a table added by another team's migration is exactly how a surface
//! gets missed), unless the operator's configuration declares it out of
//! scope.

use sqlx::PgPool;

pub mod tables;

pub use tables::{Entry, ErasureMode, Granularity, Identity, Retention, Table, Window};

/// The names of the Redis surfaces, as statuses and receipts show them
/// next to the tables' ([`Table::name`], from the table's entry).
pub mod names {
    pub const REDIS_VERDICT_KEYS: &str = "redis_verdict_keys";
    pub const REDIS_INDEX_ENTRIES: &str = "redis_index_entries";
    pub const REDIS_ALERT_KEYS: &str = "redis_alert_keys";
}

/// A table that names a tenant and is not erased, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptTable {
    pub table: &'static str,
    pub reason: &'static str,
}

/// Tables that name a tenant and are deliberately not erasure surfaces.
pub const KEPT_TABLES: [KeptTable; 4] = [
    KeptTable {
        table: "data_deletion_log",
        reason: "the tombstones of erasures: the proof an erasure happened and what replay \
                 re-applies after a restore; they hold no monitoring data",
    },
    KeptTable {
        table: "retention_drift",
        reason: "retention's diagnostics: at most five example tenant ids without a tier, \
                 rewritten by every retention run; an id, as in tenant_tier_history, and no \
                 monitoring data",
    },
    KeptTable {
        table: "retention_run",
        reason: "retention's progress through the tenants (the tenant of the pass in \
                 progress, where the cycle starts, the tenants whose pass was capped): ids, as \
                 in tenant_tier_history, and no monitoring data",
    },
    KeptTable {
        table: "tenant_tier_history",
        reason: "the tenant's contract tier over time, which retention reads; it holds no \
                 monitoring data of the tenant's servers",
    },
];

/// Every table of the catalogue: the tables holding tenant data (the
/// erasure surfaces), then the kept ones.
pub fn catalogued_tables() -> Vec<&'static str> {
    Table::ALL
        .iter()
        .map(|table| table.name())
        .chain(KEPT_TABLES.iter().map(|kept| kept.table))
        .collect()
}

/// Tables, partitioned tables, materialized views and foreign tables (the
/// rows live elsewhere, where no erasure reaches) outside PostgreSQL's
/// own schemas with a column of tenant ids or of tenant hashes: its name,
/// case and underscores aside, is `tenantid` or holds `tenanthash` (an ORM's
/// quoted `"TenantId"` or `"Tenant_Hash"` names a tenant as much as
/// `tenant_id` does), or it is a `uuid` or `uuid[]` whose name mentions a
/// tenant (`untiered_tenant_examples`, `owner_tenant`). Per relation: its schema, its name, whether its
/// unqualified name finds it through the search path (then it is the
/// relation an erasure statement naming it reaches, and the one the
/// catalogue's unqualified names mean) and its name as SQL spells it
/// (`quote_ident`: `name` when found so, `schema.name` otherwise, quoted
/// where case or characters need it, so `"billing.invoices"` in `public` is
/// never `billing.invoices`). Partitions are left out: their parent is the
/// table (erasing the parent erases them).
const TENANT_TABLES: &str = "\
SELECT schema, name, resolves, \
       CASE WHEN resolves THEN quote_ident(name) \
            ELSE quote_ident(schema) || '.' || quote_ident(name) END AS shown \
FROM (SELECT n.nspname::text AS schema, c.relname::text AS name, \
             coalesce(to_regclass(quote_ident(c.relname)) = c.oid, false) AS resolves \
FROM pg_class c \
JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind IN ('r', 'p', 'm', 'f') \
  AND NOT c.relispartition \
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
  AND n.nspname NOT LIKE 'pg\\_%' \
  AND EXISTS (SELECT 1 FROM pg_attribute a \
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                AND (lower(replace(a.attname, '_', '')) = 'tenantid' \
                     OR lower(replace(a.attname, '_', '')) LIKE '%tenanthash%' \
                     OR (lower(a.attname) LIKE '%tenant%' \
                         AND a.atttypid IN ('uuid'::regtype, 'uuid[]'::regtype))))) AS found \
ORDER BY 4";

/// A relation [`TENANT_TABLES`] found.
#[derive(Debug, sqlx::FromRow)]
struct TenantTable {
    schema: String,
    name: String,
    /// Its unqualified name finds it through the search path.
    resolves: bool,
    /// As SQL spells it.
    shown: String,
}

/// The identifiers of a table name as SQL reads it (`name`, `schema.name`,
/// `"Quoted"."Mixed.Case"`): unquoted parts fold to lower case, quoted
/// ones keep their case and characters (`""` is a quote). `None` when it is
/// not a name (empty part, unbalanced quote).
pub(crate) fn parse_table_name(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' || c == '"' {
                    break;
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => return Some(parts),
            Some('.') => continue,
            Some(_) => return None,
        }
    }
}

/// The tables of the database that name a tenant and are neither in the
/// catalogue nor in `out_of_scope`, as SQL spells them (`name` when the
/// search path finds it by that name, `schema.name` otherwise, quoted where
/// needed). A declared name is read as SQL reads it: `Billing.Invoices` is
/// `billing.invoices`, `"Crm"` keeps its case, and `public.notes` names
/// `notes` of `public` also when the search path finds it as `notes`.
pub async fn uncatalogued_tables(
    pool: &PgPool,
    out_of_scope: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let found: Vec<TenantTable> = sqlx::query_as(TENANT_TABLES).fetch_all(pool).await?;
    let catalogued = catalogued_tables();
    let declared: Vec<Vec<String>> = out_of_scope
        .iter()
        .filter_map(|name| parse_table_name(name))
        .collect();
    Ok(found
        .into_iter()
        .filter(|table| !(table.resolves && catalogued.contains(&table.name.as_str())))
        .filter(|table| {
            !declared.iter().any(|parts| match parts.as_slice() {
                [name] => table.resolves && *name == table.name,
                [schema, name] => *schema == table.schema && *name == table.name,
                _ => false,
            })
        })
        .map(|table| table.shown)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::parse_table_name;

    /// The run-time search for tables naming a tenant finds every table of
    /// tenant data and every kept table after the migrations: the catalogue
    /// and the search agree on what names a tenant, both ways (the other
    /// way is `tests/schema.rs`).
    #[tokio::test]
    async fn the_search_finds_every_catalogued_table() {
        let db = crate::testing::TestDatabase::new().await;
        let found: Vec<super::TenantTable> = sqlx::query_as(super::TENANT_TABLES)
            .fetch_all(&db.pool)
            .await
            .expect("searching the migrated database");
        for table in super::catalogued_tables() {
            assert!(
                found.iter().any(|f| f.resolves && f.name == table),
                "{table} does not name a tenant by the search's rule: {found:?}"
            );
        }
    }

    /// A table is either erased or kept, never both.
    #[test]
    fn kept_tables_are_not_tables_of_tenant_data() {
        for kept in super::KEPT_TABLES {
            assert_eq!(super::Table::parse(kept.table), None, "{}", kept.table);
        }
    }

    #[test]
    fn declared_names_are_read_as_sql_reads_them() {
        let parsed = |text| parse_table_name(text);
        assert_eq!(parsed("notes"), Some(vec!["notes".to_string()]));
        assert_eq!(
            parsed(" Billing.Invoices "),
            Some(vec!["billing".to_string(), "invoices".to_string()])
        );
        assert_eq!(
            parsed(r#""Crm"."a.b""c""#),
            Some(vec!["Crm".to_string(), r#"a.b"c"#.to_string()])
        );
        for bad in ["", ".", "a.", r#""open"#, r#""a"b"#, r#""""#] {
            assert_eq!(parsed(bad), None, "{bad:?}");
        }
    }

    /// Every table retention prunes that names a tenant is an erasure
    /// surface: what retention keeps for a tenant, an erasure can remove.
    #[test]
    fn every_table_retention_prunes_is_an_erasure_surface() {
        use crate::retention::tiers::Table;
        let surfaces: Vec<&str> = super::Table::ALL.iter().map(|table| table.name()).collect();
        for table in Table::ALL {
            assert!(
                surfaces.contains(&table.name()),
                "retention prunes {}, which no erasure reaches",
                table.name()
            );
        }
    }
}
