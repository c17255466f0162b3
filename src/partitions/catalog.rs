//! What the database says the partitions are. Bounds are read from the
//! catalog (`pg_inherits` + `pg_get_expr(relpartbound)`), never recomputed
//! from a name: a partition created by hand, or by an older version with a
//! different layout, must be seen as it is.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::calendar::{Bounds, TABLE};

/// One partition of `probe_minute` as the catalog describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogPartition {
    /// `pg_class.relname`.
    pub name: String,
    /// `oid::regclass::text`: quoted and schema-qualified where needed, so it
    /// can be spliced into DDL as is.
    pub qualified: String,
    /// None for a partition that is not a finite timestamp range (DEFAULT,
    /// MINVALUE/MAXVALUE, infinity): the operator never acts on those.
    pub bounds: Option<Bounds>,
    /// The bound as Postgres prints it, for messages.
    pub bound_expression: String,
    /// `pg_class.reltuples`; None before the first ANALYZE (or VACUUM).
    pub approximate_rows: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct Row {
    name: String,
    qualified: String,
    bound_expression: String,
    lower: Option<DateTime<Utc>>,
    upper: Option<DateTime<Utc>>,
    reltuples: f64,
}

/// Every partition of `probe_minute`, ordered by lower bound (unbounded last).
pub async fn read_partitions<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<CatalogPartition>, sqlx::Error> {
    // The bound literals carry their UTC offset in whatever TimeZone the
    // session uses, so casting them back in the same session is exact; doing
    // it in SQL avoids parsing Postgres' timestamp output in Rust.
    let rows: Vec<Row> = sqlx::query_as(
        "WITH parts AS ( \
             SELECT c.oid, c.relname::text AS name, c.oid::regclass::text AS qualified, \
                    pg_get_expr(c.relpartbound, c.oid) AS bound_expression, \
                    c.reltuples::float8 AS reltuples \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass($1) \
         ), matched AS ( \
             SELECT p.*, regexp_match(p.bound_expression, \
                 '^FOR VALUES FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)$') AS r \
             FROM parts p \
         ), cast_bounds AS ( \
             SELECT m.*, \
                    CASE WHEN m.r IS NOT NULL THEN m.r[1]::timestamptz END AS lo, \
                    CASE WHEN m.r IS NOT NULL THEN m.r[2]::timestamptz END AS hi \
             FROM matched m \
         ) \
         SELECT name, qualified, bound_expression, reltuples, \
                CASE WHEN isfinite(lo) AND isfinite(hi) THEN lo END AS lower, \
                CASE WHEN isfinite(lo) AND isfinite(hi) THEN hi END AS upper \
         FROM cast_bounds \
         ORDER BY lower NULLS LAST, name",
    )
    .bind(TABLE)
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(CatalogPartition::from).collect())
}

impl From<Row> for CatalogPartition {
    fn from(row: Row) -> Self {
        let bounds = match (row.lower, row.upper) {
            (Some(from), Some(to)) => Some(Bounds { from, to }),
            _ => None,
        };
        // reltuples is -1 for a table never analyzed (PostgreSQL 14+).
        let approximate_rows = (row.reltuples >= 0.0).then(|| row.reltuples.round() as i64);
        Self {
            name: row.name,
            qualified: row.qualified,
            bounds,
            bound_expression: row.bound_expression,
            approximate_rows,
        }
    }
}

/// What a name refers to outside the partition list: nothing, or some other
/// relation (a detached leftover, a table created by hand).
pub(crate) async fn relation_exists<'e>(
    executor: impl PgExecutor<'e>,
    name: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass(quote_ident($1)) IS NOT NULL")
        .bind(name)
        .fetch_one(executor)
        .await
}

/// Whether `relation` (a quoted name, schema-qualified or found through the
/// search_path) is a table that is not (or no longer) a partition.
pub(crate) async fn is_detached_table<'e>(
    executor: impl PgExecutor<'e>,
    relation: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_class c \
         WHERE c.oid = to_regclass($1) AND c.relkind = 'r' AND NOT c.relispartition)",
    )
    .bind(relation)
    .fetch_one(executor)
    .await
}

/// The schema of the relation `qualified` (`oid::regclass::text`).
pub(crate) async fn schema_of<'e>(
    executor: impl PgExecutor<'e>,
    qualified: &str,
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = $1::regclass",
    )
    .bind(qualified)
    .fetch_one(executor)
    .await
}
