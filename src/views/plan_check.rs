//! The alert router's query plan (seed 004 failure mode 5): the
//! suppression-cluster query must be served by `suppression_clusters_recent`;
//! a plan that flips to a sequential scan under load makes the alert router's
//! per-minute query take seconds instead of milliseconds.
//!
//! The check EXPLAINs the router's query for the last minute, every minute,
//! and is right at every table size:
//!
//! - **Usable, at any size.** Inside a transaction that is rolled back,
//!   with `SET LOCAL enable_seqscan = off`, the planner must choose the
//!   index. On a small or empty table a sequential scan is the planner's
//!   honest best choice, so the plan under normal settings proves nothing
//!   there; making sequential scans unattractive asks "could the query use
//!   its index at all?". It cannot when the index was dropped, rebuilt on
//!   another expression, made partial with a predicate the query does not
//!   imply, or when a column's type changed under it (then the query may
//!   not even plan any more). An index whose first key is not
//!   `minute_bucket` is unusable too, whatever the plan shows: its index
//!   condition on the minute (a later key) reads every entry of the
//!   leading keys, the whole index.
//!
//!   The index that finds the minute may also be another valid index of
//!   the table leading with `minute_bucket` (a covering twin an operator
//!   added, which the planner prefers for an index-only scan): the router is
//!   served then too. `suppression_clusters_recent` itself must still exist,
//!   be valid and lead with `minute_bucket`, so dropping it is reported even
//!   while a twin serves.
//!
//!   This question is asked with a tenant threshold the planner cannot see
//!   ([`Threshold`]), so a predicate on the count is never proved from a
//!   value the router may not send; and every scan of the plan must find
//!   the minute (a relation of the query read whole, such as an
//!   inheritance child without an index on the minute, is unusable however
//!   well another scan finds it).
//!
//!   On a small table the unique key's index (whose last column is
//!   `minute_bucket`) can cost the same or less, and the planner may take
//!   it. Then the question is asked once more, of the query ordered by
//!   `contributing_tenant_count` with sorts made unattractive too: with
//!   `minute_bucket` fixed by the query, only an index on
//!   `(minute_bucket, contributing_tenant_count)` delivers that order
//!   without a sort, so a healthy `suppression_clusters_recent` wins and
//!   an unusable one still loses (a twin of the same key may win instead,
//!   and serves as well).
//! - **Used, on a big table.** When the planner itself estimates the table
//!   at [`PLAN_CHECK_MIN_ROWS`] rows or more (its estimate scales with the
//!   table's current size in pages, so statistics taken when the table was
//!   small do not hide a big one), the plan under the normal settings,
//!   asked with the least selective tenant threshold ([`Threshold`]), must
//!   use the index: anything else is the flip of the seed, unless the
//!   minute, counted through the index, holds a fifth of the table or more
//!   (a burst, for which reading the whole table is the honest plan).
//!
//! How to pin a plan that flipped is in docs/OPERATIONS.md ("The alert
//! router's query plan").

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::{Periodic, ViewsError, db};

/// The planner's estimate of the table's rows from which the alert router's
/// query must use its index under normal planner settings. Below it, a
/// sequential scan of a few pages may honestly be cheaper, and the check
/// only requires that the index stays usable.
pub(crate) const PLAN_CHECK_MIN_ROWS: f64 = 10_000.0;

/// The index the alert router's query must be served by.
const ALERT_ROUTER_INDEX: &str = "suppression_clusters_recent";

/// The alert router's question: clusters of the last minute above a share of
/// all tenants. It must be served by `suppression_clusters_recent`.
const ALERT_ROUTER_QUERY: &str = "SELECT error_kind, asn, registry_of_origin, contributing_tenant_count \
     FROM suppression_clusters WHERE minute_bucket = $1 AND contributing_tenant_count > $2";

/// Why the alert router's query is not (or could not be) served by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanProblem {
    /// There is no valid index `suppression_clusters_recent` on
    /// `suppression_clusters`.
    IndexMissing,
    /// The query no longer plans: a column it names changed type or name.
    QueryFails,
    /// Even with sequential scans made unattractive the planner does not
    /// use the index: it no longer matches the query (another expression or
    /// column, a partial index whose predicate the query does not imply).
    IndexUnusable,
    /// The table is big and the planner, with its normal settings, chose
    /// another plan than the index (stale statistics, changed cost settings).
    PlanFlipped,
}

impl PlanProblem {
    /// The `reason` label of `archiver_suppression_plan_problem`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::IndexMissing => "index_missing",
            Self::QueryFails => "query_fails",
            Self::IndexUnusable => "index_unusable",
            Self::PlanFlipped => "plan_flipped",
        }
    }
}

/// What one plan check found.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanCheck {
    /// None when the index serves (or, on a small table, can serve) the query.
    pub problem: Option<PlanProblem>,
    /// The planner's estimate of the table's rows.
    pub estimated_table_rows: f64,
    /// The scans of the plan under normal settings (`Seq Scan on
    /// suppression_clusters`, `Index Scan using suppression_clusters_recent`),
    /// or why there is none.
    pub plan: String,
    /// The scans of the plan with sequential scans made unattractive.
    pub plan_without_seqscan: String,
}

/// Every minute: the plan check, recorded in the views watermark row.
pub(super) async fn check_plan_if_due(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<Option<PlanCheck>, ViewsError> {
    if !Periodic::PlanCheck.claim_due(pool, now).await? {
        return Ok(None);
    }
    let check = check_alert_query_plan(pool, now).await?;
    sqlx::query("UPDATE derived_views_watermark SET plan_uses_index = $1")
        .bind(check.problem.is_none())
        .execute(pool)
        .await
        .map_err(db("recording the plan check"))?;
    Ok(Some(check))
}

/// True when the check finds no problem ([`check_alert_query_plan`]).
pub async fn alert_query_uses_index(pool: &PgPool, now: DateTime<Utc>) -> Result<bool, ViewsError> {
    Ok(check_alert_query_plan(pool, now).await?.problem.is_none())
}

/// The plan check itself: the alert router's query for the minute before
/// `now`, explained twice in one transaction that is rolled back (also on
/// the early returns: dropping the transaction rolls it back).
pub async fn check_alert_query_plan(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<PlanCheck, ViewsError> {
    let mut tx = pool.begin().await.map_err(db("beginning the plan check"))?;
    let estimated_table_rows = estimated_rows(&mut tx).await?;
    let mut check = PlanCheck {
        problem: None,
        estimated_table_rows,
        plan: String::new(),
        plan_without_seqscan: String::new(),
    };
    let index = router_index(&mut tx).await?;
    let minute = crate::clock::minute_floor(now) - chrono::Duration::minutes(1);
    let normal = match explain(&mut tx, minute, Order::AsTheRouterAsks, Threshold::Lowest).await? {
        Ok(plan) => plan,
        Err(why) => {
            check.plan = why;
            check.problem = Some(PlanProblem::QueryFails);
            return Ok(check);
        }
    };
    check.plan = normal.describe();
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .map_err(db("making sequential scans unattractive"))?;
    let mut forced =
        match explain(&mut tx, minute, Order::AsTheRouterAsks, Threshold::Unseen).await? {
            Ok(plan) => plan,
            Err(why) => {
                check.plan_without_seqscan = why;
                check.problem = Some(PlanProblem::QueryFails);
                return Ok(check);
            }
        };
    if !forced.uses_any(&index.serving) {
        // Another index found the minute at no higher cost: ask for the
        // order only the router's index delivers (module comment).
        sqlx::query("SET LOCAL enable_sort = off")
            .execute(&mut *tx)
            .await
            .map_err(db("making sorts unattractive"))?;
        if let Ok(ordered) =
            explain(&mut tx, minute, Order::ByTenantCount, Threshold::Unseen).await?
        {
            forced = ordered;
        }
    }
    check.plan_without_seqscan = forced.describe();
    let usable = index.valid
        && index.leads_with_minute
        && forced.uses_any(&index.serving)
        && !forced.reads_a_relation_whole(&index.finders());
    let scans_instead =
        usable && estimated_table_rows >= PLAN_CHECK_MIN_ROWS && !normal.uses_any(&index.serving);
    // A sequential scan is the honest plan for a minute holding a large
    // share of the table (a burst): counted through the index (sequential
    // scans are still off here), so statistics that wrongly claim a burst
    // do not excuse a flip.
    let burst =
        scans_instead && minute_share(&mut tx, minute, estimated_table_rows).await? >= BURST_SHARE;
    // Nothing was written; the setting must not outlive the check.
    tx.rollback()
        .await
        .map_err(db("rolling the plan check back"))?;
    check.problem = if !index.valid {
        Some(PlanProblem::IndexMissing)
    } else if !usable {
        Some(PlanProblem::IndexUnusable)
    } else if scans_instead && !burst {
        Some(PlanProblem::PlanFlipped)
    } else {
        None
    };
    Ok(check)
}

/// What the catalog says about the router's index and its peers.
struct RouterIndex {
    /// `suppression_clusters_recent` exists and is valid and ready.
    valid: bool,
    /// Its first key is the column `minute_bucket` itself. Only then does an
    /// index condition on the minute find the minute's entries; an index
    /// with the minute as a later key (`(contributing_tenant_count,
    /// minute_bucket)`, `(error_kind, minute_bucket)`, the unique key) shows
    /// the same index condition in the plan but reads every entry of its
    /// leading keys.
    leads_with_minute: bool,
    /// The valid indexes of `suppression_clusters` whose first key is
    /// `minute_bucket`, `suppression_clusters_recent` among them when it
    /// qualifies: a plan that finds the minute through any of them serves
    /// the router. An operator may add a covering twin the planner prefers
    /// (an index-only scan); the router is served as well, and reporting
    /// the healthy named index as unusable would page for nothing.
    serving: Vec<String>,
    /// The same for the tables that inherit from `suppression_clusters`
    /// (the router's query reads them too): a scan of one of them finds the
    /// minute only through one of these.
    serving_in_children: Vec<String>,
}

impl RouterIndex {
    /// Every index through which a scan of the query finds the minute.
    fn finders(&self) -> Vec<String> {
        self.serving
            .iter()
            .chain(&self.serving_in_children)
            .cloned()
            .collect()
    }
}

async fn router_index(tx: &mut PgConnection) -> Result<RouterIndex, ViewsError> {
    let (valid, leads_with_minute): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT FROM pg_index WHERE indexrelid = to_regclass($1) \
                AND indrelid = 'suppression_clusters'::regclass AND indisvalid AND indisready), \
                EXISTS (SELECT FROM pg_index i JOIN pg_attribute a \
                          ON a.attrelid = i.indrelid AND a.attname = 'minute_bucket' \
                         AND NOT a.attisdropped \
                        WHERE i.indexrelid = to_regclass($1) \
                          AND i.indrelid = 'suppression_clusters'::regclass \
                          AND i.indkey[0] = a.attnum)",
    )
    .bind(ALERT_ROUTER_INDEX)
    .fetch_one(&mut *tx)
    .await
    .map_err(db("looking up the index"))?;
    // `relname`: the plan names an index without its schema, as here.
    let serving: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_index i \
           JOIN pg_class c ON c.oid = i.indexrelid \
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attname = 'minute_bucket' \
                              AND NOT a.attisdropped \
          WHERE i.indrelid = 'suppression_clusters'::regclass \
            AND i.indisvalid AND i.indisready AND i.indkey[0] = a.attnum",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db("listing the indexes that find a minute"))?;
    let serving_in_children: Vec<String> = sqlx::query_scalar(
        "WITH RECURSIVE children(relid) AS ( \
             SELECT inhrelid FROM pg_inherits \
              WHERE inhparent = 'suppression_clusters'::regclass \
             UNION \
             SELECT h.inhrelid FROM pg_inherits h JOIN children c ON h.inhparent = c.relid) \
         SELECT c.relname::text FROM pg_index i \
           JOIN pg_class c ON c.oid = i.indexrelid \
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attname = 'minute_bucket' \
                              AND NOT a.attisdropped \
          WHERE i.indrelid IN (SELECT relid FROM children) \
            AND i.indisvalid AND i.indisready AND i.indkey[0] = a.attnum",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db(
        "listing the indexes of inheriting tables that find a minute",
    ))?;
    Ok(RouterIndex {
        valid,
        leads_with_minute,
        serving,
        serving_in_children,
    })
}

/// The share of the table's rows from which the minute is a burst: reading
/// the whole table is then as cheap as reading the minute through the index.
const BURST_SHARE: f64 = 0.2;

/// The minute's rows, counted through the index, as a share of the table's
/// estimated rows.
async fn minute_share(
    tx: &mut PgConnection,
    minute: DateTime<Utc>,
    estimated_table_rows: f64,
) -> Result<f64, ViewsError> {
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM suppression_clusters WHERE minute_bucket = $1")
            .bind(minute)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("counting the minute's clusters"))?;
    Ok(rows as f64 / estimated_table_rows.max(1.0))
}

/// The planner's own estimate of the table's rows (what it costs plans
/// with): `reltuples` scaled to the table's current number of pages.
async fn estimated_rows(tx: &mut PgConnection) -> Result<f64, ViewsError> {
    let plan: serde_json::Value =
        sqlx::query_scalar("EXPLAIN (FORMAT JSON) SELECT * FROM suppression_clusters")
            .fetch_one(&mut *tx)
            .await
            .map_err(db("estimating the table size"))?;
    Ok(plan
        .pointer("/0/Plan/Plan Rows")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0))
}

/// The router's query explained: its plan, or why it does not plan
/// (an error of SQLSTATE class 42, e.g. an operator that no longer exists
/// for a column's new type). Other errors (the connection) are errors.
async fn explain(
    tx: &mut PgConnection,
    minute: DateTime<Utc>,
    order: Order,
    threshold: Threshold,
) -> Result<Result<Plan, String>, ViewsError> {
    // A savepoint: a query that no longer plans must not abort the check's
    // transaction (the second EXPLAIN and the rollback still run).
    sqlx::query("SAVEPOINT explain_alert_query")
        .execute(&mut *tx)
        .await
        .map_err(db("taking a savepoint"))?;
    // The minute is a literal (a timestamp this code formats): the router's
    // custom plans see its value too. The threshold: see [`Threshold`].
    let order_by = match order {
        Order::AsTheRouterAsks => "",
        Order::ByTenantCount => " ORDER BY contributing_tenant_count",
    };
    let explained = sqlx::query_scalar::<_, serde_json::Value>(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (FORMAT JSON) {}{order_by}",
        ALERT_ROUTER_QUERY
            .replace("$1", &format!("'{}'::timestamptz", minute.to_rfc3339()))
            .replace("$2", threshold.sql())
    )))
    // A new text every minute: not worth a cached prepared statement.
    .persistent(false)
    .fetch_one(&mut *tx)
    .await;
    let outcome = match explained {
        Ok(plan) => Ok(Plan(plan)),
        Err(sqlx::Error::Database(error))
            if error.code().is_some_and(|code| code.starts_with("42")) =>
        {
            sqlx::query("ROLLBACK TO SAVEPOINT explain_alert_query")
                .execute(&mut *tx)
                .await
                .map_err(db("rolling back to the savepoint"))?;
            Err(format!("the query does not plan: {}", error.message()))
        }
        Err(source) => return Err(db("explaining the alert router query")(source)),
    };
    Ok(outcome)
}

/// What the explained query compares `contributing_tenant_count` with.
///
/// The router asks above a share of all tenants, a number this check does
/// not know. Whether the query can use an index at all is asked with a
/// threshold the planner cannot see (an uncorrelated sub-select): with a
/// literal, the planner would prove a partial index's predicate on the
/// count (`WHERE contributing_tenant_count > 5` from `> 10`), an index a
/// router asking above 3 tenants cannot use. Whether the planner chooses
/// the index on a big table is asked with the least selective threshold,
/// 1 (every cluster has at least 2 tenants): the more of the minute's rows
/// the query returns, the likelier a sequential scan, so a router asking
/// above any share plans at least as well as the plan checked (a literal
/// 10 let a router asking above 3 tenants flip unreported).
#[derive(Debug, Clone, Copy)]
enum Threshold {
    /// `1`, a literal: every row of the minute.
    Lowest,
    /// `(SELECT 10)`, a value known only when the plan runs.
    Unseen,
}

impl Threshold {
    fn sql(self) -> &'static str {
        match self {
            Self::Lowest => "1",
            Self::Unseen => "(SELECT 10)",
        }
    }
}

/// In which order the router's query is explained.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// As the router sends it: no order.
    AsTheRouterAsks,
    /// Ordered by `contributing_tenant_count`, the order only the router's
    /// index delivers for one minute.
    ByTenantCount,
}

/// An `EXPLAIN (FORMAT JSON)` result.
struct Plan(serde_json::Value);

/// One scan node of a plan.
struct Scan {
    kind: String,
    relation: Option<String>,
    index: Option<String>,
    index_condition: Option<String>,
}

impl Plan {
    /// The scan nodes, in plan order.
    fn scans(&self) -> Vec<Scan> {
        fn walk(node: &serde_json::Value, out: &mut Vec<Scan>) {
            let text = |key: &str| node.get(key).and_then(|v| v.as_str()).map(str::to_string);
            if let Some(kind) = text("Node Type")
                && (kind.contains("Scan") || text("Index Name").is_some())
            {
                out.push(Scan {
                    kind,
                    relation: text("Relation Name"),
                    index: text("Index Name"),
                    index_condition: text("Index Cond"),
                });
            }
            for child in node
                .get("Plans")
                .and_then(|plans| plans.as_array())
                .into_iter()
                .flatten()
            {
                walk(child, out);
            }
        }
        let mut out = Vec::new();
        if let Some(root) = self.0.pointer("/0/Plan") {
            walk(root, &mut out);
        }
        out
    }

    /// Whether one of `indexes` finds the minute's rows: a scan of it whose
    /// index condition constrains `minute_bucket`. A scan of the whole index
    /// that only checks `contributing_tenant_count` (possible when the index
    /// was rebuilt on another leading expression) reads as much as a
    /// sequential scan and does not count.
    fn uses_any(&self, indexes: &[String]) -> bool {
        self.scans().iter().any(|scan| {
            scan.index
                .as_deref()
                .is_some_and(|name| indexes.iter().any(|index| index == name))
                && scan
                    .index_condition
                    .as_deref()
                    .is_some_and(|condition| condition.contains("(minute_bucket = "))
        })
    }

    /// Whether a scan of the plan reads a relation or an index whole: a
    /// sequential scan, or an index scan that does not find the minute
    /// through one of `finders` (its condition does not constrain
    /// `minute_bucket`, or the minute is not its index's first key). With
    /// sequential scans made unattractive that is a part of the query no
    /// index can find the minute in (an inheritance child of
    /// `suppression_clusters` without such an index), however well another
    /// scan of the same plan finds it.
    fn reads_a_relation_whole(&self, finders: &[String]) -> bool {
        self.scans().iter().any(|scan| match scan.index.as_deref() {
            Some(name) => {
                !finders.iter().any(|finder| finder == name)
                    || !scan
                        .index_condition
                        .as_deref()
                        .is_some_and(|condition| condition.contains("(minute_bucket = "))
            }
            None => scan.kind == "Seq Scan",
        })
    }

    /// `Seq Scan on suppression_clusters`, `Bitmap Index Scan using
    /// suppression_clusters_recent`, ... joined by `; `.
    fn describe(&self) -> String {
        let scans = self.scans();
        if scans.is_empty() {
            return "no scan".to_string();
        }
        scans
            .into_iter()
            .map(|scan| match (scan.index, scan.relation) {
                (Some(index), _) => match scan.index_condition {
                    Some(condition) => format!("{} using {index} ({condition})", scan.kind),
                    None => format!("{} using {index}", scan.kind),
                },
                (None, Some(relation)) => format!("{} on {relation}", scan.kind),
                (None, None) => scan.kind,
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}
