//! The Postgres surfaces that hold a tenant's data, and the one statement
//! per surface that erases (or counts) a scope in it. The erasure, its
//! verification and the tombstone replay all go through here, so a surface
//! added later is added once.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, PgConnection, Postgres};

use super::scope::{Scope, TOMBSTONE_HASH};

/// Names of the surfaces, as they appear in statuses and receipts (the
/// catalogue's table names).
pub use crate::schema::names;

/// A Postgres table holding tenant data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    ProbeMinute,
    /// Verdicts that failed validation: their raw fields are the verdict;
    /// `tenant_id` and `server_slug` are what their key names, as the drain
    /// reads it (NULL when the key names none).
    ProbeMinuteRejects,
    ProbeDay,
    ProbeMonth,
    /// Rows survive (the outage happened to others too); the tenant's
    /// salted hash is replaced by `tombstone`.
    SuppressionClusters,
    SuppressionClustersHistory,
}

/// The tables whose rows are deleted, in the order of the design.
pub const ROW_TABLES: [Table; 4] = [
    Table::ProbeMinute,
    Table::ProbeMinuteRejects,
    Table::ProbeDay,
    Table::ProbeMonth,
];
/// The tables where the tenant hash is replaced.
pub const HASH_TABLES: [Table; 2] = [
    Table::SuppressionClusters,
    Table::SuppressionClustersHistory,
];

/// What a statement selects: a scope, and optionally only data at or
/// before a tombstone's time (replay and verification: later data for the
/// same server is new and stays).
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    pub scope: &'a Scope,
    /// The tenant's salted hash (suppression tables only).
    pub tenant_hash: Option<&'a str>,
    pub upto: Option<DateTime<Utc>>,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Self::ProbeMinute => names::PROBE_MINUTE,
            Self::ProbeMinuteRejects => names::PROBE_MINUTE_REJECTS,
            Self::ProbeDay => names::PROBE_DAY,
            Self::ProbeMonth => names::PROBE_MONTH,
            Self::SuppressionClusters => names::SUPPRESSION_CLUSTERS,
            Self::SuppressionClustersHistory => names::SUPPRESSION_CLUSTERS_HISTORY,
        }
    }

    /// The time a row stands for, as an SQL expression over the table's
    /// columns (a reject without a readable minute: when it was rejected).
    pub fn time_expression(self) -> &'static str {
        match self {
            Self::ProbeMinute | Self::SuppressionClusters | Self::SuppressionClustersHistory => {
                "minute_bucket"
            }
            Self::ProbeMinuteRejects => "coalesce(minute_bucket, rejected_at)",
            Self::ProbeDay => "day",
            Self::ProbeMonth => "month",
        }
    }

    fn is_hash_table(self) -> bool {
        HASH_TABLES.contains(&self)
    }

    /// The WHERE clause of `selection` (constants only; values are bound
    /// by [`Table::bind`] in the same order).
    fn condition(self, selection: &Selection<'_>) -> String {
        let (mut condition, used) = match self {
            Self::ProbeMinute | Self::ProbeMinuteRejects | Self::ProbeDay | Self::ProbeMonth => (
                selection.scope.predicate().to_string(),
                selection.scope.param_count(),
            ),
            Self::SuppressionClusters | Self::SuppressionClustersHistory => (
                "contributing_tenant_hashes @> ARRAY[$1]::text[]".to_string(),
                1,
            ),
        };
        if selection.upto.is_some() {
            let p = used + 1;
            let bound = match self {
                Self::ProbeMinute
                | Self::SuppressionClusters
                | Self::SuppressionClustersHistory => {
                    format!("minute_bucket <= ${p}")
                }
                // A reject without a readable minute counts from when it was rejected.
                Self::ProbeMinuteRejects => format!("coalesce(minute_bucket, rejected_at) <= ${p}"),
                Self::ProbeDay => format!("day <= (${p}::timestamptz AT TIME ZONE 'UTC')::date"),
                Self::ProbeMonth => format!(
                    "month <= date_trunc('month', ${p}::timestamptz AT TIME ZONE 'UTC')::date"
                ),
            };
            condition.push_str(" AND ");
            condition.push_str(&bound);
        }
        condition
    }

    fn bind<'q>(
        self,
        query: Query<'q, Postgres, PgArguments>,
        selection: &Selection<'q>,
    ) -> Query<'q, Postgres, PgArguments> {
        let query = match self {
            Self::ProbeMinute | Self::ProbeMinuteRejects | Self::ProbeDay | Self::ProbeMonth => {
                selection.scope.bind(query)
            }
            Self::SuppressionClusters | Self::SuppressionClustersHistory => {
                query.bind(selection.tenant_hash.unwrap_or_default())
            }
        };
        match selection.upto {
            Some(upto) => query.bind(upto),
            None => query,
        }
    }

    /// Erases the selection: deletes its rows, or replaces the tenant hash
    /// by `tombstone` in the suppression tables. Returns the rows affected.
    pub async fn erase(
        self,
        conn: &mut PgConnection,
        selection: &Selection<'_>,
    ) -> Result<u64, sqlx::Error> {
        if self.is_hash_table() && selection.tenant_hash.is_none() {
            return Ok(0);
        }
        let condition = self.condition(selection);
        let sql = if self.is_hash_table() {
            format!(
                "UPDATE {table} SET contributing_tenant_hashes = \
                 array_replace(contributing_tenant_hashes, $1, '{TOMBSTONE_HASH}') WHERE {condition}",
                table = self.name()
            )
        } else {
            format!("DELETE FROM {table} WHERE {condition}", table = self.name())
        };
        let query = self.bind(sqlx::query(AssertSqlSafe(sql)), selection);
        Ok(query.execute(&mut *conn).await?.rows_affected())
    }

    /// Counts the selection's rows (for the hash tables: rows still
    /// holding the tenant hash).
    pub async fn count(
        self,
        conn: &mut PgConnection,
        selection: &Selection<'_>,
    ) -> Result<i64, sqlx::Error> {
        self.count_in(conn, self.name(), selection).await
    }

    /// Counts the selection's rows in `relation`: the table itself, or one
    /// of its partitions (a name read from the catalog, already quoted).
    pub async fn count_in(
        self,
        conn: &mut PgConnection,
        relation: &str,
        selection: &Selection<'_>,
    ) -> Result<i64, sqlx::Error> {
        if self.is_hash_table() && selection.tenant_hash.is_none() {
            return Ok(0);
        }
        let sql = format!(
            "SELECT count(*) FROM {relation} WHERE {condition}",
            condition = self.condition(selection)
        );
        let row = self
            .bind(sqlx::query(AssertSqlSafe(sql)), selection)
            .fetch_one(&mut *conn)
            .await?;
        sqlx::Row::try_get::<i64, _>(&row, 0)
    }
}

/// Whether any suppression table holds any row at all: without the salt
/// the tenant's hash cannot be computed, which is only harmless when there
/// is nothing to look through.
pub async fn suppression_tables_empty(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT (EXISTS (SELECT 1 FROM suppression_clusters) \
                  OR EXISTS (SELECT 1 FROM suppression_clusters_history))",
    )
    .fetch_one(&mut *conn)
    .await
}

/// The partitions of probe_minute, as quoted relation names.
pub async fn probe_minute_partitions(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT i.inhrelid::regclass::text FROM pg_inherits i \
         WHERE i.inhparent = 'probe_minute'::regclass ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
}
