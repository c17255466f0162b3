//! The Postgres surfaces that hold a tenant's data (the catalogue's
//! tables, `crate::schema::tables`), and the one statement per surface that
//! erases (or counts) a scope in it, built from the table's entry: its
//! tenant and server columns or its column of salted hashes, its time
//! column and granularity. The erasure, its verification and the tombstone
//! replay all go through here, so a surface added to the catalogue needs
//! nothing here.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, PgConnection, Postgres};

use super::scope::{Scope, TOMBSTONE_HASH};

/// The Postgres tables holding tenant data: the catalogue's, whose entries
/// say how each names a tenant and what an erasure does to it.
pub use crate::schema::Table;
/// Names of the surfaces, as they appear in statuses and receipts (the
/// catalogue's table names).
pub use crate::schema::names;
use crate::schema::{ErasureMode, Granularity, Identity};

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

/// The erasure's statements over a catalogue table, built from its entry.
impl Table {
    fn is_hash_table(self) -> bool {
        self.erasure() == ErasureMode::ReplaceHash
    }

    /// The WHERE clause of `selection` (constants only; values are bound
    /// by [`Table::bind`] in the same order).
    fn condition(self, selection: &Selection<'_>) -> String {
        let (mut condition, used) = match self.identity() {
            Identity::Columns { tenant, server } => match selection.scope.server {
                Some(_) => (format!("{tenant} = $1 AND {server} = $2"), 2),
                None => (format!("{tenant} = $1"), 1),
            },
            Identity::SaltedHashes { column } => (format!("{column} @> ARRAY[$1]::text[]"), 1),
        };
        if selection.upto.is_some() {
            let p = used + 1;
            // A reject without a readable minute counts from when it was rejected.
            let time = self.time_expression();
            let bound = match self.granularity() {
                Granularity::Minute => format!("{time} <= ${p}"),
                Granularity::Day => {
                    format!("{time} <= (${p}::timestamptz AT TIME ZONE 'UTC')::date")
                }
                Granularity::Month => format!(
                    "{time} <= date_trunc('month', ${p}::timestamptz AT TIME ZONE 'UTC')::date"
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
        let query = match self.identity() {
            Identity::Columns { .. } => selection.scope.bind(query),
            Identity::SaltedHashes { .. } => query.bind(selection.tenant_hash.unwrap_or_default()),
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
        let table = self.name();
        // The erasure mode follows from the identity (`Table::erasure`).
        let sql = match self.identity() {
            Identity::SaltedHashes { column } => format!(
                "UPDATE {table} SET {column} = \
                 array_replace({column}, $1, '{TOMBSTONE_HASH}') WHERE {condition}"
            ),
            Identity::Columns { .. } => format!("DELETE FROM {table} WHERE {condition}"),
        };
        let query = self.bind(sqlx::query(AssertSqlSafe(sql)), selection);
        Ok(query.execute(&mut *conn).await?.rows_affected())
    }

    /// Counts the selection's rows (for the hash tables: rows still
    /// holding the tenant hash).
    pub(crate) async fn count(
        self,
        conn: &mut PgConnection,
        selection: &Selection<'_>,
    ) -> Result<i64, sqlx::Error> {
        self.count_in(conn, self.name(), selection).await
    }

    /// Counts the selection's rows in `relation`: the table itself, or one
    /// of its partitions (a name read from the catalog, already quoted).
    pub(crate) async fn count_in(
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

/// Whether every table naming tenants by salted hashes (the suppression
/// tables) is empty: without the salt the tenant's hash cannot be
/// computed, which is only harmless when there is nothing to look through.
pub(crate) async fn suppression_tables_empty(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let any_rows: Vec<String> = Table::ALL
        .into_iter()
        .filter(|table| matches!(table.identity(), Identity::SaltedHashes { .. }))
        .map(|table| format!("EXISTS (SELECT 1 FROM {})", table.name()))
        .collect();
    if any_rows.is_empty() {
        return Ok(true);
    }
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT NOT ({})",
        any_rows.join(" OR ")
    )))
    .fetch_one(&mut *conn)
    .await
}

/// The partitions of `table`, as quoted relation names.
pub(crate) async fn partitions_of(
    conn: &mut PgConnection,
    table: Table,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT i.inhrelid::regclass::text FROM pg_inherits i \
         WHERE i.inhparent = $1::regclass ORDER BY 1",
    )
    .bind(table.name())
    .fetch_all(&mut *conn)
    .await
}
