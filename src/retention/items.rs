//! Units of retention work: "the expired rows of one table, for one
//! tenant's server (or the cross-tenant history), attributed to one tier",
//! and the statements that count, find and delete them. Every statement
//! uses the same `key >= lo AND key < hi AND key <= last` condition, so
//! what `plan` and the drift count report is exactly what a run deletes.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::ranges::{Bounds, ExpiredRange, history_bounds, rejects_bounds};
use super::tiers::{ALL_TIERS, Granularity, Table};
use super::{RetentionError, db};
use crate::api::retention_policy::Tiers;
use crate::schema::Retention;

/// The expired rows of one table for one (tenant, server), or of the
/// history table (no tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    pub table: Table,
    /// Tier name, or [`ALL_TIERS`] for the history table.
    pub tier: String,
    /// `None` only for the cross-tenant tables.
    pub owner: Option<(Uuid, String)>,
    pub bounds: Bounds,
}

impl WorkItem {
    /// The expired rows of a cross-tenant table (tier `all`).
    pub(crate) fn cross_tenant(table: Table, bounds: Bounds) -> Self {
        Self {
            table,
            tier: ALL_TIERS.into(),
            owner: None,
            bounds,
        }
    }

    /// The expired rows of every cross-tenant table as of `as_of`, by the
    /// rule of its catalogue entry: the suppression history kept for the
    /// longest daily window of any tier (minute buckets), the rejects for
    /// the shortest per-minute window (`rejected_at` instants).
    pub(crate) fn cross_tenant_tables(tiers: &Tiers, as_of: DateTime<Utc>) -> Vec<Self> {
        Table::CROSS_TENANT
            .into_iter()
            .filter_map(|table| {
                let bounds = match table.catalogued().retention() {
                    Retention::LongestDaily => history_bounds(tiers, as_of),
                    Retention::ShortestPerMinute => rejects_bounds(tiers, as_of),
                    Retention::TierWindow(_) | Retention::NotByRetention { .. } => return None,
                };
                Some(Self::cross_tenant(table, bounds))
            })
            .collect()
    }

    /// The items of `ranges` for every server of a tenant.
    pub(crate) fn for_servers(
        table: Table,
        tenant: Uuid,
        servers: &[String],
        ranges: &[ExpiredRange],
    ) -> Vec<Self> {
        let mut items = Vec::with_capacity(servers.len() * ranges.len());
        for server in servers {
            for range in ranges {
                items.push(Self {
                    table,
                    tier: range.tier.as_str().into(),
                    owner: Some((tenant, server.clone())),
                    bounds: range.bounds,
                });
            }
        }
        items
    }

    /// Moves the lower bound to `key` after a batch deleted the rows before
    /// it, so the next batch does not walk dead index entries again. Rows at
    /// exactly `key` (other regions of that minute) are still included.
    fn advance(&mut self, key: Key) {
        match (&mut self.bounds, key) {
            (Bounds::Instants { lo, .. }, Key::Instant(at)) => *lo = (*lo).max(at),
            (Bounds::Dates { lo, .. }, Key::Date(day)) => *lo = (*lo).max(day),
            _ => {}
        }
    }
}

/// The largest key a delete removed.
#[derive(Debug, Clone, Copy)]
enum Key {
    Instant(DateTime<Utc>),
    Date(NaiveDate),
}

/// The tenant and server columns of a per-tenant table (the catalogue's).
pub(crate) fn owner_columns(table: Table) -> Result<(&'static str, &'static str), RetentionError> {
    table.owner_columns().ok_or_else(|| {
        RetentionError::Invariant(format!(
            "{table} is pruned tenant by tenant but names no tenant in a column"
        ))
    })
}

fn sql_type(table: Table) -> &'static str {
    match table.granularity() {
        Granularity::Minute => "timestamptz",
        Granularity::Day | Granularity::Month => "date",
    }
}

/// Column-wise arrays of items of one table, for `unnest`.
#[derive(Default)]
struct Arrays {
    tenants: Vec<Uuid>,
    servers: Vec<String>,
    tiers: Vec<String>,
    instants: [Vec<DateTime<Utc>>; 3],
    dates: [Vec<NaiveDate>; 3],
}

impl Arrays {
    fn of(items: &[WorkItem]) -> Self {
        let mut arrays = Self::default();
        for item in items {
            let Some((tenant, server)) = &item.owner else {
                continue;
            };
            arrays.tenants.push(*tenant);
            arrays.servers.push(server.clone());
            arrays.tiers.push(item.tier.clone());
            match item.bounds {
                Bounds::Instants { lo, hi, last } => {
                    for (column, value) in arrays.instants.iter_mut().zip([lo, hi, last]) {
                        column.push(value);
                    }
                }
                Bounds::Dates { lo, hi, last } => {
                    for (column, value) in arrays.dates.iter_mut().zip([lo, hi, last]) {
                        column.push(value);
                    }
                }
            }
        }
        arrays
    }

    fn bind_bounds<'q>(
        &'q self,
        table: Table,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match table.granularity() {
            Granularity::Minute => query
                .bind(&self.instants[0])
                .bind(&self.instants[1])
                .bind(&self.instants[2]),
            Granularity::Day | Granularity::Month => query
                .bind(&self.dates[0])
                .bind(&self.dates[1])
                .bind(&self.dates[2]),
        }
    }
}

/// At most this many items per statement, so one count never becomes a
/// statement with millions of parameters' worth of array.
const ITEMS_PER_STATEMENT: usize = 5_000;

/// Rows matching `items` (all of one per-tenant table), per tier.
pub(crate) async fn count_per_tier(
    executor: &sqlx::PgPool,
    table: Table,
    items: &[WorkItem],
) -> Result<BTreeMap<String, i64>, RetentionError> {
    let mut counts = BTreeMap::new();
    let (name, column, ty) = (table.name(), table.time_column(), sql_type(table));
    if table.is_cross_tenant() {
        for item in items {
            let n = count_cross_tenant(executor, table, item.bounds).await?;
            *counts.entry(item.tier.clone()).or_insert(0) += n;
        }
        return Ok(counts);
    }
    let (tenant_column, server_column) = owner_columns(table)?;
    let sql = format!(
        "SELECT i.tier, count(*)::bigint \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::{ty}[], $5::{ty}[], $6::{ty}[]) AS i(tenant, server, tier, lo, hi, last) \
         CROSS JOIN LATERAL (SELECT 1 FROM {name} t WHERE t.{tenant_column} = i.tenant AND t.{server_column} = i.server \
             AND t.{column} >= i.lo AND t.{column} < i.hi AND t.{column} <= i.last) r \
         GROUP BY i.tier"
    );
    for chunk in items.chunks(ITEMS_PER_STATEMENT) {
        let arrays = Arrays::of(chunk);
        let query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(&arrays.tenants)
            .bind(&arrays.servers)
            .bind(&arrays.tiers);
        let rows = arrays
            .bind_bounds(table, query)
            .fetch_all(executor)
            .await
            .map_err(db(format!("counting expired rows of {name}")))?;
        for row in rows {
            let tier: String = sqlx::Row::try_get(&row, 0).map_err(db("reading a count"))?;
            let n: i64 = sqlx::Row::try_get(&row, 1).map_err(db("reading a count"))?;
            *counts.entry(tier).or_insert(0) += n;
        }
    }
    Ok(counts)
}

async fn count_cross_tenant(
    executor: impl PgExecutor<'_>,
    table: Table,
    bounds: Bounds,
) -> Result<i64, RetentionError> {
    let Bounds::Instants { lo, hi, last } = bounds else {
        return Ok(0);
    };
    let (name, column) = (table.name(), table.time_column());
    let sql = format!(
        "SELECT count(*)::bigint FROM {name} \
         WHERE {column} >= $1 AND {column} < $2 AND {column} <= $3"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(lo)
        .bind(hi)
        .bind(last)
        .fetch_one(executor)
        .await
        .map_err(db(format!("counting expired rows of {name}")))
}

/// The items (of one per-tenant table and tenant) that have at least one
/// row, so a pass spends statements only where there is something to delete.
pub(crate) async fn with_rows(
    conn: &mut PgConnection,
    items: Vec<WorkItem>,
) -> Result<Vec<WorkItem>, RetentionError> {
    let Some(first) = items.first() else {
        return Ok(items);
    };
    let table = first.table;
    if table.is_cross_tenant() {
        return Ok(items);
    }
    let (name, column, ty) = (table.name(), table.time_column(), sql_type(table));
    let (tenant_column, server_column) = owner_columns(table)?;
    let sql = format!(
        "SELECT i.ord FROM unnest($1::uuid[], $2::text[], $3::{ty}[], $4::{ty}[], $5::{ty}[]) \
             WITH ORDINALITY AS i(tenant, server, lo, hi, last, ord) \
         WHERE EXISTS (SELECT 1 FROM {name} t WHERE t.{tenant_column} = i.tenant AND t.{server_column} = i.server \
             AND t.{column} >= i.lo AND t.{column} < i.hi AND t.{column} <= i.last)"
    );
    let mut kept = Vec::new();
    for chunk in items.chunks(ITEMS_PER_STATEMENT) {
        let arrays = Arrays::of(chunk);
        let query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(&arrays.tenants)
            .bind(&arrays.servers);
        let rows = arrays
            .bind_bounds(table, query)
            .fetch_all(&mut *conn)
            .await
            .map_err(db(format!("finding expired rows of {name}")))?;
        for row in rows {
            let ordinal: i64 =
                sqlx::Row::try_get(&row, 0).map_err(db("reading an item ordinal"))?;
            if let Some(item) = usize::try_from(ordinal - 1).ok().and_then(|i| chunk.get(i)) {
                kept.push(item.clone());
            }
        }
    }
    Ok(kept)
}

/// What one delete of an item did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    /// Rows found expired (at most the limit). Fewer than the limit: the
    /// item is exhausted.
    pub found: i64,
    /// Rows deleted (fewer than found only when another transaction, e.g.
    /// an erasure, deleted some of them first).
    pub deleted: i64,
}

/// The condition on an item's rows, `$1`.. numbered from `first`.
fn item_condition(item: &WorkItem, column: &str, first: usize) -> Result<String, RetentionError> {
    let owner = if item.owner.is_some() {
        let (tenant_column, server_column) = owner_columns(item.table)?;
        format!(
            "{tenant_column} = ${} AND {server_column} = ${} AND ",
            first,
            first + 1
        )
    } else {
        String::new()
    };
    let n = first + if item.owner.is_some() { 2 } else { 0 };
    Ok(format!(
        "{owner}{column} >= ${} AND {column} < ${} AND {column} <= ${}",
        n,
        n + 1,
        n + 2
    ))
}

fn bind_item<'q>(
    item: &WorkItem,
    mut query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    if let Some((tenant, server)) = &item.owner {
        query = query.bind(*tenant).bind(server.clone());
    }
    match item.bounds {
        Bounds::Instants { lo, hi, last } => query.bind(lo).bind(hi).bind(last),
        Bounds::Dates { lo, hi, last } => query.bind(lo).bind(hi).bind(last),
    }
}

/// Deletes at most `limit` rows of `item`, oldest first, in the caller's
/// transaction, and moves the item's lower bound past them.
///
/// Two statements, on purpose: the rows are first selected (an ordered
/// index range scan with LIMIT), then deleted by `ctid = ANY(...)` in the
/// partition that holds them, which can only be a TID scan. A single
/// `DELETE ... USING (SELECT ctid ...)` is at the mercy of the planner: its
/// generic plan for the partitioned table was measured joining every victim
/// against every row of the server's range (quadratic), and so was a
/// delete whose recheck the planner could serve from an index. The delete
/// repeats the item's condition, so a ctid reused in between can only ever
/// name a row that is just as expired; `( ... ) IS TRUE` keeps that recheck
/// a filter (not an index condition) so the TID scan stays the only plan.
pub(crate) async fn delete_batch(
    conn: &mut PgConnection,
    item: &mut WorkItem,
    limit: i64,
) -> Result<Deleted, RetentionError> {
    let table = item.table;
    let (name, column) = (table.name(), table.time_column());
    let condition = item_condition(item, column, 1)?;
    let limit_param = if item.owner.is_some() { 6 } else { 4 };
    let select = format!(
        "SELECT tableoid::regclass::text, ctid::text, {column} FROM {name} \
         WHERE {condition} ORDER BY {column} LIMIT ${limit_param}"
    );
    let rows = bind_item(item, sqlx::query(sqlx::AssertSqlSafe(select)))
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(format!("finding expired rows of {name}")))?;
    let mut by_relation: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last_key = None;
    for row in &rows {
        let relation: String =
            sqlx::Row::try_get(row, 0).map_err(db("reading a partition name"))?;
        let tid: String = sqlx::Row::try_get(row, 1).map_err(db("reading a row id"))?;
        last_key = Some(match item.bounds {
            Bounds::Instants { .. } => {
                Key::Instant(sqlx::Row::try_get(row, 2).map_err(db("reading a key"))?)
            }
            Bounds::Dates { .. } => {
                Key::Date(sqlx::Row::try_get(row, 2).map_err(db("reading a key"))?)
            }
        });
        by_relation.entry(relation).or_default().push(tid);
    }
    let mut deleted = 0;
    for (relation, tids) in by_relation {
        // `relation` is the catalog's own rendering of a regclass (quoted
        // where needed), not user input.
        let delete = format!(
            "DELETE FROM {relation} WHERE ctid = ANY($1::text[]::tid[]) AND ({}) IS TRUE",
            item_condition(item, column, 2)?
        );
        let query = sqlx::query(sqlx::AssertSqlSafe(delete)).bind(tids);
        deleted += bind_item(item, query)
            .execute(&mut *conn)
            .await
            .map_err(db(format!("deleting expired rows of {name}")))?
            .rows_affected() as i64;
    }
    if let Some(key) = last_key {
        item.advance(key);
    }
    Ok(Deleted {
        found: rows.len() as i64,
        deleted,
    })
}
