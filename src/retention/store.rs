//! The retention tables of migration 0009 and the reads of the tables
//! retention depends on (`tenant_tier_history`), plus its audit rows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::items::owner_columns;
use super::ranges::TierSpan;
use super::tiers::{Table, Tier, WindowChange};
use super::{RetentionError, db};
use crate::api::RetentionPolicySpec;

/// Who the audit log names as actor.
pub const ACTOR: &str = "archiver-operator";

/// `operator_audit_log.action` values written by retention.
pub mod actions {
    /// A tier table became the one enforced (first policy, a change within
    /// the guard, or a confirmed shrink).
    pub const POLICY_ACCEPTED: &str = "retention-policy-accepted";
    /// A new generation shrinks beyond the guard and is held.
    pub const SHRINK_HELD: &str = "retention-shrink-held";
    /// One enforcement run ended (complete, run cap, or window closed).
    pub const RUN: &str = "retention-run";
}

/// Row shapes read with `query_as`.
type EnforcedRow = (
    String,
    String,
    Option<i64>,
    serde_json::Value,
    DateTime<Utc>,
    String,
);
type SpanRow = (String, DateTime<Utc>, Option<DateTime<Utc>>, Option<i32>);
type TenantSpanRow = (
    Uuid,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<i32>,
);
type DriftTuple = (
    String,
    DateTime<Utc>,
    Json<BTreeMap<String, i64>>,
    i64,
    Vec<uuid::Uuid>,
);

/// Rows deleted per table, then per tier.
pub type RowsDeleted = BTreeMap<String, BTreeMap<String, i64>>;

/// Why the enforced copy was (re)written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptedAs {
    /// No tier table had ever been enforced: nothing to compare with.
    FirstPolicy,
    /// Same tiers (same hash); another part of the spec changed.
    SameTiers,
    /// Windows changed, none shortened beyond the guard.
    WithinGuard,
    /// A shrink beyond the guard, confirmed by the annotation.
    Confirmed,
}

impl AcceptedAs {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FirstPolicy => "first-policy",
            Self::SameTiers => "same-tiers",
            Self::WithinGuard => "within-guard",
            Self::Confirmed => "confirmed",
        }
    }
}

/// The tier table being enforced.
#[derive(Debug, Clone, PartialEq)]
pub struct EnforcedPolicy {
    pub policy_hash: String,
    /// `namespace/name` of the RetentionPolicy it came from.
    pub policy: String,
    pub generation: Option<i64>,
    pub spec: RetentionPolicySpec,
    pub accepted_at: DateTime<Utc>,
    pub accepted_as: String,
}

pub async fn enforced_policy(
    executor: impl PgExecutor<'_>,
) -> Result<Option<EnforcedPolicy>, RetentionError> {
    let row: Option<EnforcedRow> = sqlx::query_as(
        "SELECT policy_hash, policy, generation, spec, accepted_at, accepted_as FROM retention_enforced_policy",
    )
    .fetch_optional(executor)
    .await
    .map_err(db("reading the enforced tier table"))?;
    let Some((policy_hash, policy, generation, spec, accepted_at, accepted_as)) = row else {
        return Ok(None);
    };
    let spec = serde_json::from_value(spec).map_err(RetentionError::StoredPolicy)?;
    Ok(Some(EnforcedPolicy {
        policy_hash,
        policy,
        generation,
        spec,
        accepted_at,
        accepted_as,
    }))
}

/// What an acceptance records.
pub struct Acceptance<'a> {
    pub policy: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a RetentionPolicySpec,
    pub policy_hash: &'a str,
    pub accepted_as: AcceptedAs,
    pub previous_hash: Option<&'a str>,
    pub changes: &'a [WindowChange],
    pub guard_percent: Option<u32>,
    pub at: DateTime<Utc>,
}

/// Makes `acceptance.spec` the enforced tier table and records why, in one
/// transaction.
pub async fn accept(pool: &PgPool, acceptance: &Acceptance<'_>) -> Result<(), RetentionError> {
    let spec = serde_json::to_value(acceptance.spec).map_err(RetentionError::StoredPolicy)?;
    let mut tx = pool.begin().await.map_err(db("beginning an acceptance"))?;
    sqlx::query(
        "INSERT INTO retention_enforced_policy (id, policy_hash, policy, generation, spec, accepted_at, accepted_as) \
         VALUES (true, $1, $2, $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET policy_hash = EXCLUDED.policy_hash, policy = EXCLUDED.policy, \
             generation = EXCLUDED.generation, spec = EXCLUDED.spec, accepted_at = EXCLUDED.accepted_at, \
             accepted_as = EXCLUDED.accepted_as",
    )
    .bind(acceptance.policy_hash)
    .bind(acceptance.policy)
    .bind(acceptance.generation)
    .bind(&spec)
    .bind(acceptance.at)
    .bind(acceptance.accepted_as.as_str())
    .execute(&mut *tx)
    .await
    .map_err(db("storing the enforced tier table"))?;
    let changes: Vec<serde_json::Value> = acceptance
        .changes
        .iter()
        .map(|c| serde_json::json!({"window": c.window, "fromDays": c.from_days, "toDays": c.to_days}))
        .collect();
    audit(
        &mut *tx,
        acceptance.at,
        actions::POLICY_ACCEPTED,
        &subject(acceptance.policy),
        serde_json::json!({
            "policyHash": acceptance.policy_hash,
            "previousHash": acceptance.previous_hash,
            "generation": acceptance.generation,
            "acceptedAs": acceptance.accepted_as.as_str(),
            "changes": changes,
            "maxShrinkPercent": acceptance.guard_percent,
        }),
    )
    .await?;
    tx.commit().await.map_err(db("committing an acceptance"))?;
    Ok(())
}

/// `RetentionPolicy/namespace/name`, the audit subject of a policy.
pub(crate) fn subject(policy: &str) -> String {
    format!("RetentionPolicy/{policy}")
}

/// Appends one audit row.
pub async fn audit(
    executor: impl PgExecutor<'_>,
    at: DateTime<Utc>,
    action: &str,
    subject: &str,
    payload: serde_json::Value,
) -> Result<(), RetentionError> {
    sqlx::query(
        "INSERT INTO operator_audit_log (at, action, subject, actor, payload) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(at)
    .bind(action)
    .bind(subject)
    .bind(ACTOR)
    .bind(payload)
    .execute(executor)
    .await
    .map_err(db("writing the audit log"))?;
    Ok(())
}

// ------------------------------------------------------------- tier history

fn span_of(
    tier: String,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    contract: Option<i32>,
) -> TierSpan {
    let parsed = Tier::parse(&tier);
    if parsed.is_none() {
        tracing::warn!(tier = %tier, "tenant_tier_history names an unknown tier; its rows are kept");
    }
    TierSpan {
        tier: parsed,
        from,
        to,
        contract_minute_days: contract,
    }
}

/// `valid_from, valid_to` as instants chrono can hold: PostgreSQL accepts
/// `infinity`, `-infinity` and years past chrono's 262142, which would panic
/// while decoding. `-infinity` and a start before year 1 read as year 1 and
/// an end from year 262000 on as no end (`valid_to` NULL; GREATEST would
/// turn a NULL into year 1, hence the explicit test); rows starting from
/// year 262000 on are left out ([`TIER_ROWS_IN_RANGE`]), so their time reads
/// as untiered, which keeps. Every change only widens what is kept, and no
/// data lies outside those years.
const TIER_BOUNDS: &str = "GREATEST(valid_from, '0001-01-01 00:00+00') AS valid_from, \
     CASE WHEN valid_to IS NULL OR valid_to >= '262000-01-01 00:00+00' THEN NULL \
          ELSE GREATEST(valid_to, '0001-01-01 00:00+00') END AS valid_to";
/// The tier rows [`TIER_BOUNDS`] can read.
const TIER_ROWS_IN_RANGE: &str = "valid_from < '262000-01-01 00:00+00'";

/// The tier rows of one tenant.
pub async fn tier_spans(
    executor: impl PgExecutor<'_>,
    tenant: Uuid,
) -> Result<Vec<TierSpan>, RetentionError> {
    let rows: Vec<SpanRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT tier, {TIER_BOUNDS}, contract_minute_retention_days FROM tenant_tier_history \
         WHERE tenant_id = $1 AND {TIER_ROWS_IN_RANGE} ORDER BY valid_from",
    )))
    .bind(tenant)
    .fetch_all(executor)
    .await
    .map_err(db("reading tenant_tier_history"))?;
    Ok(rows
        .into_iter()
        .map(|(tier, from, to, contract)| span_of(tier, from, to, contract))
        .collect())
}

/// The tier rows of every tenant.
pub async fn all_tier_spans(
    executor: impl PgExecutor<'_>,
) -> Result<BTreeMap<Uuid, Vec<TierSpan>>, RetentionError> {
    let rows: Vec<TenantSpanRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT tenant_id, tier, {TIER_BOUNDS}, contract_minute_retention_days FROM tenant_tier_history \
         WHERE {TIER_ROWS_IN_RANGE} ORDER BY tenant_id, valid_from",
    )))
    .fetch_all(executor)
    .await
    .map_err(db("reading tenant_tier_history"))?;
    let mut spans: BTreeMap<Uuid, Vec<TierSpan>> = BTreeMap::new();
    for (tenant, tier, from, to, contract) in rows {
        spans
            .entry(tenant)
            .or_default()
            .push(span_of(tier, from, to, contract));
    }
    Ok(spans)
}

/// The first tenant with a tier row after `after` (from the start when
/// `None`), and not after `up_to` when given.
pub(crate) async fn next_tenant(
    executor: impl PgExecutor<'_>,
    after: Option<Uuid>,
    up_to: Option<Uuid>,
) -> Result<Option<Uuid>, RetentionError> {
    sqlx::query_scalar(
        "SELECT tenant_id FROM tenant_tier_history \
         WHERE ($1::uuid IS NULL OR tenant_id > $1) AND ($2::uuid IS NULL OR tenant_id <= $2) \
         ORDER BY tenant_id LIMIT 1",
    )
    .bind(after)
    .bind(up_to)
    .fetch_optional(executor)
    .await
    .map_err(db("finding the next tenant"))
}

// ---------------------------------------------------------------- servers

/// The servers of `tenant` in `table`, by a loose index scan (one index
/// probe per server, whatever the number of rows).
pub(crate) async fn servers(
    executor: impl PgExecutor<'_>,
    table: Table,
    tenant: Uuid,
) -> Result<Vec<String>, RetentionError> {
    let name = table.name();
    let (tenant_column, server_column) = owner_columns(table)?;
    let sql = format!(
        "WITH RECURSIVE s AS ( \
             (SELECT {server_column} AS server FROM {name} WHERE {tenant_column} = $1 \
              ORDER BY {server_column} LIMIT 1) \
             UNION ALL \
             SELECT next.server FROM s CROSS JOIN LATERAL ( \
                 SELECT {server_column} AS server FROM {name} \
                 WHERE {tenant_column} = $1 AND {server_column} > s.server \
                 ORDER BY {server_column} LIMIT 1) next \
         ) SELECT server FROM s"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .fetch_all(executor)
        .await
        .map_err(db(format!("listing the servers of a tenant in {name}")))
}

/// Every (tenant, server) pair of `table`, by a loose index scan.
pub(crate) async fn tenant_servers(
    executor: impl PgExecutor<'_>,
    table: Table,
) -> Result<Vec<(Uuid, String)>, RetentionError> {
    let name = table.name();
    let (tenant, server) = owner_columns(table)?;
    let sql = format!(
        "WITH RECURSIVE pairs AS ( \
             (SELECT {tenant} AS tenant, {server} AS server FROM {name} \
              ORDER BY {tenant}, {server} LIMIT 1) \
             UNION ALL \
             SELECT next.tenant, next.server FROM pairs p CROSS JOIN LATERAL ( \
                 SELECT {tenant} AS tenant, {server} AS server FROM {name} t \
                 WHERE (t.{tenant}, t.{server}) > (p.tenant, p.server) \
                 ORDER BY {tenant}, {server} LIMIT 1) next \
         ) SELECT tenant, server FROM pairs"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(executor)
        .await
        .map_err(db(format!("listing tenants and servers of {name}")))
}

// ------------------------------------------------------------------- runs

/// One row of `retention_run`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RunRow {
    pub id: i64,
    pub window_start: DateTime<Utc>,
    pub as_of: DateTime<Utc>,
    pub policy_hash: String,
    pub started_at: DateTime<Utc>,
    pub progress_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub version: i64,
    pub start_after: Option<Uuid>,
    pub cycle: i32,
    pub wrapped: bool,
    pub cursor: Option<Uuid>,
    pub pending: Vec<Uuid>,
    pub capped_tenants: Vec<Uuid>,
    pub history_done: bool,
    pub history_cycle: i32,
    pub current_tenant: Option<Uuid>,
    pub current_history: bool,
    pub current_rows: i64,
    pub tenant_passes: i32,
    pub capped_passes: i32,
    pub rows_total: i64,
    pub rows_deleted: Json<RowsDeleted>,
    pub active_seconds: f64,
    pub max_rows_per_run: i64,
    pub max_rows_per_pass: i64,
}

impl RunRow {
    /// Rows deleted per table, all tiers together.
    pub(crate) fn rows_by_table(&self) -> BTreeMap<String, i64> {
        self.rows_deleted
            .0
            .iter()
            .map(|(table, tiers)| (table.clone(), tiers.values().sum()))
            .collect()
    }

    /// Whether a row cap stopped the run with work left: the run cap, or a
    /// tenant whose pass hit its cap and was not finished later.
    pub(crate) fn capped(&self) -> bool {
        self.outcome.as_deref() == Some(OUTCOME_RUN_CAP) || !self.capped_tenants.is_empty()
    }
}

pub const OUTCOME_COMPLETE: &str = "complete";
pub const OUTCOME_RUN_CAP: &str = "run-cap";
pub const OUTCOME_WINDOW_CLOSED: &str = "window-closed";

const RUN_COLUMNS: &str = "id, window_start, as_of, policy_hash, started_at, progress_at, finished_at, outcome, \
     version, start_after, cycle, wrapped, cursor, pending, capped_tenants, history_done, history_cycle, \
     current_tenant, current_history, current_rows, tenant_passes, capped_passes, rows_total, rows_deleted, \
     active_seconds, max_rows_per_run, max_rows_per_pass";

/// The run left open (there is at most one: runs are closed before a new
/// one starts).
pub(crate) async fn open_run(
    executor: impl PgExecutor<'_>,
) -> Result<Option<RunRow>, RetentionError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM retention_run WHERE finished_at IS NULL ORDER BY window_start LIMIT 1"
    )))
    .fetch_optional(executor)
    .await
    .map_err(db("reading the open enforcement run"))
}

pub(crate) async fn run_for_window(
    executor: impl PgExecutor<'_>,
    window_start: DateTime<Utc>,
) -> Result<Option<RunRow>, RetentionError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM retention_run WHERE window_start = $1"
    )))
    .bind(window_start)
    .fetch_optional(executor)
    .await
    .map_err(db("reading the enforcement run of this window"))
}

/// The most recent run, finished or not.
pub(crate) async fn latest_run(
    executor: impl PgExecutor<'_>,
) -> Result<Option<RunRow>, RetentionError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM retention_run ORDER BY window_start DESC LIMIT 1"
    )))
    .fetch_optional(executor)
    .await
    .map_err(db("reading the latest enforcement run"))
}

/// Locks the run's row for one batch.
pub(crate) async fn lock_run(conn: &mut PgConnection, id: i64) -> Result<RunRow, RetentionError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM retention_run WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_one(&mut *conn)
    .await
    .map_err(db("locking the enforcement run"))
}

/// What a new run starts with.
pub struct NewRun<'a> {
    pub window_start: DateTime<Utc>,
    pub now: DateTime<Utc>,
    pub policy_hash: &'a str,
    pub max_rows_per_run: i64,
    pub max_rows_per_pass: i64,
}

/// Starts the run of a window after the cursor of the previous run (so a
/// run cut short by its window or its cap is continued by the next one
/// instead of starting over at the first tenant). Returns the run of that
/// window, also when another process started it first.
pub(crate) async fn start_run(pool: &PgPool, new: &NewRun<'_>) -> Result<RunRow, RetentionError> {
    insert_run(pool, new).await?;
    run_for_window(pool, new.window_start)
        .await?
        .ok_or_else(|| RetentionError::Invariant("the enforcement run just started is gone".into()))
}

async fn insert_run(pool: &PgPool, new: &NewRun<'_>) -> Result<(), RetentionError> {
    sqlx::query(
        "INSERT INTO retention_run (window_start, as_of, policy_hash, started_at, progress_at, start_after, \
             cursor, max_rows_per_run, max_rows_per_pass) \
         SELECT $1, $2, $3, $2, $2, previous.cursor, previous.cursor, $4, $5 \
         FROM (SELECT (SELECT cursor FROM retention_run ORDER BY window_start DESC LIMIT 1) AS cursor) previous \
         ON CONFLICT (window_start) DO NOTHING",
    )
    .bind(new.window_start)
    .bind(new.now)
    .bind(new.policy_hash)
    .bind(new.max_rows_per_run)
    .bind(new.max_rows_per_pass)
    .execute(pool)
    .await
    .map_err(db("starting an enforcement run"))?;
    Ok(())
}

/// Writes back every mutable field of `run` (the caller bumped `version`).
pub(crate) async fn save_run(conn: &mut PgConnection, run: &RunRow) -> Result<(), RetentionError> {
    sqlx::query(
        "UPDATE retention_run SET policy_hash = $2, progress_at = $3, finished_at = $4, outcome = $5, \
             version = $6, cycle = $7, wrapped = $8, cursor = $9, pending = $10, capped_tenants = $11, \
             history_done = $12, history_cycle = $13, current_tenant = $14, current_history = $15, \
             current_rows = $16, tenant_passes = $17, capped_passes = $18, rows_total = $19, \
             rows_deleted = $20, active_seconds = $21 \
         WHERE id = $1",
    )
    .bind(run.id)
    .bind(&run.policy_hash)
    .bind(run.progress_at)
    .bind(run.finished_at)
    .bind(&run.outcome)
    .bind(run.version)
    .bind(run.cycle)
    .bind(run.wrapped)
    .bind(run.cursor)
    .bind(&run.pending)
    .bind(&run.capped_tenants)
    .bind(run.history_done)
    .bind(run.history_cycle)
    .bind(run.current_tenant)
    .bind(run.current_history)
    .bind(run.current_rows)
    .bind(run.tenant_passes)
    .bind(run.capped_passes)
    .bind(run.rows_total)
    .bind(&run.rows_deleted)
    .bind(run.active_seconds)
    .execute(&mut *conn)
    .await
    .map_err(db("saving enforcement progress"))?;
    Ok(())
}

/// The audit payload of a finished run.
pub(crate) fn run_payload(run: &RunRow) -> serde_json::Value {
    serde_json::json!({
        "runId": run.id,
        "windowStart": run.window_start,
        "asOf": run.as_of,
        "policyHash": run.policy_hash,
        "startedAt": run.started_at,
        "finishedAt": run.finished_at,
        "durationSeconds": run
            .finished_at
            .map(|finished| (finished - run.started_at).num_milliseconds() as f64 / 1000.0),
        "activeSeconds": run.active_seconds,
        "outcome": run.outcome,
        "capped": run.capped(),
        "rowsTotal": run.rows_total,
        "rowsDeleted": run.rows_deleted.0,
        "tenantPasses": run.tenant_passes,
        "cappedPasses": run.capped_passes,
        "tenantsLeftCapped": run.capped_tenants,
        "cycles": run.cycle,
        "maxRowsPerRun": run.max_rows_per_run,
        "maxRowsPerTenantPass": run.max_rows_per_pass,
    })
}

// ------------------------------------------------------------------ drift

/// The last drift count.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftRow {
    pub policy_hash: String,
    pub counted_at: DateTime<Utc>,
    pub rows_by_table: BTreeMap<String, i64>,
    pub tenants_without_tier: i64,
    /// A few of those tenants (at most `count::UNTIERED_EXAMPLES`).
    pub untiered_tenant_examples: Vec<uuid::Uuid>,
}

pub(crate) async fn drift(
    executor: impl PgExecutor<'_>,
) -> Result<Option<DriftRow>, RetentionError> {
    let row: Option<DriftTuple> = sqlx::query_as(
        "SELECT policy_hash, counted_at, rows_by_table, tenants_without_tier, untiered_tenant_examples \
         FROM retention_drift",
    )
    .fetch_optional(executor)
    .await
    .map_err(db("reading the last drift count"))?;
    Ok(row.map(
        |(policy_hash, counted_at, rows, tenants_without_tier, untiered_tenant_examples)| {
            DriftRow {
                policy_hash,
                counted_at,
                rows_by_table: rows.0,
                tenants_without_tier,
                untiered_tenant_examples,
            }
        },
    ))
}

pub(crate) async fn save_drift(
    executor: impl PgExecutor<'_>,
    drift: &DriftRow,
) -> Result<(), RetentionError> {
    sqlx::query(
        "INSERT INTO retention_drift (id, policy_hash, counted_at, rows_by_table, tenants_without_tier, \
             untiered_tenant_examples) \
         VALUES (true, $1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET policy_hash = EXCLUDED.policy_hash, counted_at = EXCLUDED.counted_at, \
             rows_by_table = EXCLUDED.rows_by_table, tenants_without_tier = EXCLUDED.tenants_without_tier, \
             untiered_tenant_examples = EXCLUDED.untiered_tenant_examples",
    )
    .bind(&drift.policy_hash)
    .bind(drift.counted_at)
    .bind(Json(&drift.rows_by_table))
    .bind(drift.tenants_without_tier)
    .bind(&drift.untiered_tenant_examples)
    .execute(executor)
    .await
    .map_err(db("saving the drift count"))?;
    Ok(())
}
