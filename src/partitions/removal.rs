//! Detaching and dropping a partition, with every guard on the way:
//!
//! 1. bounds come from the catalog, and the hard guard refuses the current
//!    and future months whatever the planner said;
//! 2. a verification query counts rows still inside their own retention
//!    (tier in force at the row's minute); any -> abort;
//! 3. the intent is committed to the audit log;
//! 4. one short transaction takes a SHARE lock on the partition (writers to
//!    it wait, readers do not) and on `tenant_tier_history` (billing cannot
//!    record a tier until the commit), verifies again under them (the count
//!    that decides), and runs a plain `DETACH PARTITION` under
//!    `lock_timeout`; a lost lock wait rolls the whole attempt (locks,
//!    verification, DETACH) back to its savepoint and tries again after a
//!    pause, so nothing of ours is held during the pause (a writer that got
//!    `probe_minute` meanwhile would otherwise wait for the partition while
//!    our DETACH waits for it: a deadlock). Nothing runs after the DETACH
//!    but the audit row and the commit: ACCESS EXCLUSIVE on probe_minute
//!    is held for no count and no other lock wait;
//! 5. the intent to drop is committed; the drop's transaction locks the
//!    detached table, counts once more under the tier history's SHARE lock,
//!    and runs `DROP TABLE`, or attaches the table again when rows became
//!    inside retention since the detach; lock waits are retried the same
//!    way. Billing's writes wait for a count and at most one DETACH lock
//!    wait, never for a pause.
//!
//! Why not `DETACH PARTITION ... CONCURRENTLY`: it cannot run in a
//! transaction, so the verification could not be made atomic with the
//! detach; an interruption leaves the partition "detach pending" and needs
//! a FINALIZE step; and it waits for every older snapshot, unbounded by
//! `lock_timeout`. The plain detach needs ACCESS EXCLUSIVE on probe_minute
//! for a moment: while it waits, inserts queue behind it for at most
//! `lock_timeout`, then proceed during the pause before the next attempt.

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{Acquire, PgConnection, PgPool};

use super::audit::{self, LockDiscipline, actions, is_lock_conflict};
use super::calendar::{Bounds, TABLE};
use super::catalog::{self, CatalogPartition};
use super::plan::is_protected;
use super::{PartitionError, db_error};
use crate::api::retention_policy::{Tier, Tiers};
use crate::retention::ranges::{self, Contracts, expired_ranges_with};
use crate::retention::store::all_tier_spans;
use crate::retention::tiers::Table;
use crate::schema::Table as CatalogueTable;
use uuid::Uuid;

/// What keeps `tenant_tier_history` still while a partition is judged by it
/// and detached or dropped.
const LOCK_TIER_HISTORY: &str = "LOCK TABLE tenant_tier_history IN SHARE MODE";

/// Everything a drop needs besides the partition.
#[derive(Debug, Clone, Copy)]
pub struct DropSettings<'a> {
    pub now: DateTime<Utc>,
    pub lock: LockDiscipline,
    /// The tier windows in force, for the verification query.
    pub tiers: &'a Tiers,
    pub actor: &'a str,
}

/// A partition that is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub name: String,
    pub bounds: Bounds,
    pub detach_attempts: u32,
    pub drop_attempts: u32,
}

/// Rows of the relation `qualified` (rows of probe_minute) still inside
/// their own retention at `now`, by the rule enforcement deletes by
/// ([`expired_ranges_with`], one implementation for both): a row is past
/// retention only when every instant of its minute is covered by a tier row
/// and past the window of every tier row covering it. Time with no tier row
/// (a tenant without a tier, a churn in the middle of a minute), overlapping
/// tier rows of which one still keeps the minute, and tiers this policy does
/// not know all count as inside. The tier rows are read on `conn`, so under
/// the detach's lock they are the ones the decision is made with.
///
/// This is the independent second computation behind the planner's horizon
/// (seed 000 failure mode 7: the two disagree when one is wrong), so it errs
/// towards keeping: a contract is honoured as billing recorded it, even above
/// the policy's `contractualCapDays` (the horizon and enforcement use the
/// capped value, [`Contracts::AsRecorded`]). A contract above the cap is an
/// inconsistency a person must resolve; it shows up as `DropBlocked`, never
/// as deleted rows.
pub async fn rows_inside_retention(
    conn: &mut PgConnection,
    qualified: &str,
    now: DateTime<Utc>,
    tiers: &Tiers,
) -> Result<i64, PartitionError> {
    // Whole microseconds, rounded down: PostgreSQL keeps microseconds and
    // sqlx truncates an instant toward 2000-01-01, which moves a cut before
    // 2000 *up*, past a row enforcement keeps. Rounding `now` down first
    // only ever keeps more.
    let now = now.trunc_subsecs(6);
    let spans = all_tier_spans(&mut *conn)
        .await
        .map_err(|source| PartitionError::TierHistory { source })?;
    let mut expired = ExpiredMinutes::default();
    for (tenant, tenant_spans) in &spans {
        let tenant_expired = expired_ranges_with(
            tenant_spans,
            tiers,
            Table::ProbeMinute,
            now,
            Contracts::AsRecorded,
        );
        for range in tenant_expired {
            if let ranges::Bounds::Instants { lo, hi, last } = range.bounds {
                expired.push(*tenant, lo, hi, last);
            }
        }
    }
    // `qualified` comes from `oid::regclass::text`, already quoted; the
    // columns are the catalogue's. The anti-join keeps every row no expired
    // range of its own tenant covers; the range test is the one
    // enforcement's DELETE uses.
    let table = CatalogueTable::ProbeMinute;
    let (tenant, _) = table
        .owner_columns()
        .ok_or_else(|| PartitionError::NotAPartition {
            partition: qualified.to_string(),
            reason: format!("the catalogue names no tenant column of {}", table.name()),
        })?;
    let minute = table.time_column();
    let statement = format!(
        "SELECT count(*) FROM {qualified} r \
         WHERE NOT EXISTS ( \
             SELECT 1 FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[]) \
                 AS e(tenant, lo, hi, last) \
             WHERE e.tenant = r.{tenant} \
               AND r.{minute} >= e.lo AND r.{minute} < e.hi AND r.{minute} <= e.last)"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(statement))
        .bind(expired.tenants)
        .bind(expired.lo)
        .bind(expired.hi)
        .bind(expired.last)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error(format!(
            "counting the rows of {qualified} inside retention"
        )))
}

/// The expired per-minute ranges of every tenant, as the statement's columns.
#[derive(Default)]
struct ExpiredMinutes {
    tenants: Vec<Uuid>,
    lo: Vec<DateTime<Utc>>,
    hi: Vec<DateTime<Utc>>,
    last: Vec<DateTime<Utc>>,
}

impl ExpiredMinutes {
    fn push(&mut self, tenant: Uuid, lo: DateTime<Utc>, hi: DateTime<Utc>, last: DateTime<Utc>) {
        self.tenants.push(tenant);
        self.lo.push(lo);
        self.hi.push(hi);
        self.last.push(last);
    }
}

/// The longest per-minute contract extension billing has recorded for any
/// tenant (uncapped; [`super::plan::retention_horizon`] caps it).
pub(crate) async fn longest_contract_days(pool: &PgPool) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT max(contract_minute_retention_days) FROM tenant_tier_history WHERE tier = $1",
    )
    .bind(Tier::CONTRACT.as_str())
    .fetch_one(pool)
    .await
}

/// Verifies, detaches and drops the partition named `name` of probe_minute.
pub async fn detach_and_drop(
    pool: &PgPool,
    name: &str,
    settings: DropSettings<'_>,
) -> Result<Dropped, PartitionError> {
    let (qualified, bounds) = attached_bounds(pool, name).await?;
    guard(name, bounds, settings.now, "detach")?;
    let mut conn = pool
        .acquire()
        .await
        .map_err(db_error("acquiring a connection"))?;
    // A first count without locks, so a blocked drop costs no audit rows
    // and no lock traffic; the count that decides runs under the lock.
    let rows = rows_inside_retention(&mut conn, &qualified, settings.now, settings.tiers).await?;
    if rows > 0 {
        return Err(PartitionError::RowsInsideRetention {
            partition: name.to_string(),
            rows,
        });
    }
    // The drop, its re-attach and a later reconcile's `drop_leftover` name
    // the detached table by its schema, recorded with the detach: the bare
    // name resolves through the search_path, which may not hold the month's
    // schema (the table is not found and left detached) or may hold a
    // namesake first (a table that was never the month would be dropped).
    let schema = catalog::schema_of(&mut *conn, &qualified)
        .await
        .map_err(db_error(format!("reading the schema of {name}")))?;
    let detached = DetachedTable::new(name, Some(&schema));
    let payload = detached.payload(bounds);
    audit::record(
        &mut *conn,
        settings.now,
        actions::DETACH_INTENT,
        name,
        settings.actor,
        payload,
    )
    .await
    .map_err(db_error(format!("recording the intent to detach {name}")))?;
    let detach_attempts = match detach(&mut conn, &detached, &qualified, bounds, settings).await {
        Ok(attempts) => attempts,
        Err(error) => {
            abandon(&mut conn, name, "detach", &error, settings).await;
            return Err(error);
        }
    };
    let drop_attempts = drop_detached(&mut conn, &detached, bounds, settings).await?;
    Ok(Dropped {
        name: name.to_string(),
        bounds,
        detach_attempts,
        drop_attempts,
    })
}

/// A table detached from probe_minute: its name (the audit rows' subject)
/// and how statements name it (schema-qualified when the schema is known).
struct DetachedTable<'a> {
    name: &'a str,
    schema: Option<String>,
    relation: String,
}

impl<'a> DetachedTable<'a> {
    /// Without a schema (a detach recorded by an older version) the bare
    /// name is looked up through the search_path.
    fn new(name: &'a str, schema: Option<&str>) -> Self {
        let relation = match schema {
            Some(schema) => format!(
                "{}.{}",
                super::quote_ident(schema),
                super::quote_ident(name)
            ),
            None => super::quote_ident(name),
        };
        Self {
            name,
            schema: schema.map(str::to_string),
            relation,
        }
    }

    /// The audit payload's fields for this table and `bounds`.
    fn payload(&self, bounds: Bounds) -> serde_json::Value {
        serde_json::json!({
            "table": TABLE, "from": bounds.from, "to": bounds.to, "schema": self.schema,
        })
    }
}

/// Finishes a drop whose detach committed but whose drop did not (the
/// process died, or the drop ran out of retries): the table (in the schema
/// recorded with the detach) is checked against the guard with the bounds
/// recorded at detach time, verified again, and dropped.
pub async fn drop_leftover(
    pool: &PgPool,
    name: &str,
    recorded: &serde_json::Value,
    settings: DropSettings<'_>,
) -> Result<Option<Dropped>, PartitionError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(db_error("acquiring a connection"))?;
    let schema = recorded.get("schema").and_then(serde_json::Value::as_str);
    let detached = DetachedTable::new(name, schema);
    if !catalog::is_detached_table(&mut *conn, &detached.relation)
        .await
        .map_err(db_error(format!("looking up {name}")))?
    {
        // Gone already (dropped by hand) or attached again: nothing to finish.
        return Ok(None);
    }
    let bounds = recorded_bounds(recorded).ok_or_else(|| PartitionError::NotAPartition {
        partition: name.to_string(),
        reason: "its detach was recorded without bounds".into(),
    })?;
    guard(name, bounds, settings.now, "drop")?;
    let rows =
        rows_inside_retention(&mut conn, &detached.relation, settings.now, settings.tiers).await?;
    if rows > 0 {
        // Its rows are kept after all: back into probe_minute.
        attach_again(&mut conn, &detached, bounds, rows, settings).await?;
        return Err(PartitionError::RowsInsideRetention {
            partition: name.to_string(),
            rows,
        });
    }
    let drop_attempts = drop_detached(&mut conn, &detached, bounds, settings).await?;
    Ok(Some(Dropped {
        name: name.to_string(),
        bounds,
        detach_attempts: 0,
        drop_attempts,
    }))
}

fn recorded_bounds(payload: &serde_json::Value) -> Option<Bounds> {
    let at = |key: &str| -> Option<DateTime<Utc>> {
        serde_json::from_value(payload.get(key)?.clone()).ok()
    };
    Some(Bounds {
        from: at("from")?,
        to: at("to")?,
    })
}

/// The hard guard, applied right before acting and independent of the plan.
fn guard(
    name: &str,
    bounds: Bounds,
    now: DateTime<Utc>,
    step: &'static str,
) -> Result<(), PartitionError> {
    if is_protected(&bounds, now) {
        return Err(PartitionError::Protected {
            partition: name.to_string(),
            bounds,
            step,
        });
    }
    Ok(())
}

/// The catalog's bounds of an attached partition of probe_minute.
async fn attached_bounds(pool: &PgPool, name: &str) -> Result<(String, Bounds), PartitionError> {
    let partitions = catalog::read_partitions(pool)
        .await
        .map_err(db_error("reading the partitions of probe_minute"))?;
    qualified_and_bounds(partitions, name, || format!("not a partition of {TABLE}"))
}

/// `name` among `partitions`: its qualified name and its bounds, or why it
/// cannot be dropped (`missing` says why when it is not among them).
fn qualified_and_bounds(
    partitions: Vec<CatalogPartition>,
    name: &str,
    missing: impl FnOnce() -> String,
) -> Result<(String, Bounds), PartitionError> {
    let partition = partitions
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| PartitionError::NotAPartition {
            partition: name.to_string(),
            reason: missing(),
        })?;
    let bounds = partition
        .bounds
        .ok_or_else(|| PartitionError::NotAPartition {
            partition: name.to_string(),
            reason: format!("its bound is {}", partition.bound_expression),
        })?;
    Ok((partition.qualified, bounds))
}

/// The detach transaction; returns how many DETACH attempts it took.
async fn detach(
    conn: &mut PgConnection,
    detached: &DetachedTable<'_>,
    qualified: &str,
    bounds: Bounds,
    settings: DropSettings<'_>,
) -> Result<u32, PartitionError> {
    let name = detached.name;
    let lock = settings.lock;
    let context = |what: &str| format!("{what} {name}");
    let mut tx = conn
        .begin()
        .await
        .map_err(db_error("starting the detach transaction"))?;
    lock.apply(&mut tx)
        .await
        .map_err(db_error("setting lock_timeout"))?;
    // Each attempt locks, verifies and detaches inside one savepoint, and a
    // lost lock wait rolls all of it back: during the pause before the next
    // attempt this transaction holds no lock on the partition, so a writer
    // that got probe_minute meanwhile (retention's DELETE of this month)
    // finishes instead of waiting for the partition while our next DETACH
    // waits for it on probe_minute (a lock cycle: deadlock).
    let mut attempt = 1;
    loop {
        let mut savepoint = tx
            .begin()
            .await
            .map_err(db_error(context("taking a savepoint to detach")))?;
        match detach_attempt(&mut savepoint, name, qualified, bounds, settings).await {
            Ok(()) => {
                savepoint
                    .commit()
                    .await
                    .map_err(db_error(context("releasing the savepoint of")))?;
                break;
            }
            Err(AttemptError::LockLost { step, source }) => {
                savepoint
                    .rollback()
                    .await
                    .map_err(db_error(context("rolling back the attempt to detach")))?;
                if attempt >= lock.attempts {
                    return Err(lock_error(source, step, name, attempt, lock, context(step)));
                }
                tracing::info!(partition = %name, step, attempt, "lock wait lost; retrying");
                attempt += 1;
                tokio::time::sleep(lock.backoff).await;
            }
            Err(AttemptError::Failed(error)) => return Err(error),
        }
    }
    // The attempt's count decided under the tier history's SHARE lock,
    // held until the commit: no tier row changed since. Nothing is counted
    // after the DETACH: that would hold ACCESS EXCLUSIVE on probe_minute
    // (every insert of the drain waiting) through a count of the whole
    // month and, before it, through a lock wait for the tier history.
    audit::record(
        &mut *tx,
        settings.now,
        actions::DETACH,
        name,
        settings.actor,
        serde_json::json!({
            "table": TABLE, "from": bounds.from, "to": bounds.to, "schema": detached.schema,
            "rowsInsideRetention": 0, "attempts": attempt,
        }),
    )
    .await
    .map_err(db_error(context("recording the detach of")))?;
    tx.commit()
        .await
        .map_err(db_error(context("committing the detach of")))?;
    tracing::info!(partition = %name, %bounds, attempts = attempt, "detached partition");
    Ok(attempt)
}

/// How one attempt to detach ended, when it did not detach.
enum AttemptError {
    /// A lock wait was lost (`lock_timeout`, or a deadlock PostgreSQL
    /// broke): worth another attempt after a pause.
    LockLost {
        step: &'static str,
        source: sqlx::Error,
    },
    /// Anything else, rows inside retention included: the drop stops.
    Failed(PartitionError),
}

/// One attempt, each statement waiting at most `lock_timeout`: a SHARE
/// lock on the partition (no row can be written into it from here on,
/// while readers carry on) and on the tier history, the bounds read again
/// and the guard and the verification under them, then the `DETACH`.
async fn detach_attempt(
    tx: &mut PgConnection,
    name: &str,
    qualified: &str,
    bounds: Bounds,
    settings: DropSettings<'_>,
) -> Result<(), AttemptError> {
    let locked = |step: &'static str, what: &'static str| {
        move |source: sqlx::Error| {
            if is_lock_conflict(&source) {
                AttemptError::LockLost { step, source }
            } else {
                AttemptError::Failed(db_error(format!("{what} {name}"))(source))
            }
        }
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {qualified} IN SHARE MODE"
    )))
    .execute(&mut *tx)
    .await
    .map_err(locked("lock", "locking"))?;
    // The tier history too, before the count and until the commit: billing
    // may record a tier row while the DETACH waits, and the count must be
    // the one the detach commits with. Billing's writes wait for this
    // attempt (its count and at most one `lock_timeout` of the DETACH),
    // never for the pause: a lost wait rolls the lock back with the rest.
    sqlx::query(LOCK_TIER_HISTORY)
        .execute(&mut *tx)
        .await
        .map_err(locked("verify", "locking the tier history to verify"))?;
    let (_, locked_bounds) = attached_bounds_in(tx, name)
        .await
        .map_err(AttemptError::Failed)?;
    if locked_bounds != bounds {
        return Err(AttemptError::Failed(PartitionError::NotAPartition {
            partition: name.to_string(),
            reason: format!("its bounds changed to {locked_bounds} while it was being dropped"),
        }));
    }
    guard(name, locked_bounds, settings.now, "detach").map_err(AttemptError::Failed)?;
    let rows = rows_inside_retention(tx, qualified, settings.now, settings.tiers)
        .await
        .map_err(AttemptError::Failed)?;
    if rows > 0 {
        return Err(AttemptError::Failed(PartitionError::RowsInsideRetention {
            partition: name.to_string(),
            rows,
        }));
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {TABLE} DETACH PARTITION {qualified}"
    )))
    .execute(&mut *tx)
    .await
    .map_err(locked("detach", "detaching"))?;
    Ok(())
}

/// Rows of `qualified` inside retention, counted under a SHARE lock on the
/// tier history taken here and held until the transaction ends.
async fn locked_count(
    tx: &mut PgConnection,
    qualified: &str,
    settings: DropSettings<'_>,
    lock: LockDiscipline,
    attempt: &mut u32,
    name: &str,
) -> Result<i64, PartitionError> {
    retry_locked(tx, LOCK_TIER_HISTORY, lock, attempt)
        .await
        .map_err(|e| {
            lock_error(
                e,
                "verify",
                name,
                *attempt,
                lock,
                format!("locking the tier history to verify {name}"),
            )
        })?;
    rows_inside_retention(tx, qualified, settings.now, settings.tiers).await
}

/// Runs `statement` inside a savepoint, trying again after `lock.backoff`
/// when it loses a lock wait, until `attempt` reaches `lock.attempts`.
/// Rolling back to the savepoint withdraws the queued lock request, so
/// nothing waits behind us during the pause.
async fn retry_locked(
    tx: &mut PgConnection,
    statement: &str,
    lock: LockDiscipline,
    attempt: &mut u32,
) -> Result<(), sqlx::Error> {
    loop {
        let mut savepoint = tx.begin().await?;
        match sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&mut *savepoint)
            .await
        {
            Ok(_) => return savepoint.commit().await,
            Err(error) if is_lock_conflict(&error) && *attempt < lock.attempts => {
                savepoint.rollback().await?;
                tracing::info!(statement, attempt = *attempt, "lock wait lost; retrying");
                *attempt += 1;
                tokio::time::sleep(lock.backoff).await;
            }
            Err(error) => {
                let _ = savepoint.rollback().await;
                return Err(error);
            }
        }
    }
}

fn lock_error(
    error: sqlx::Error,
    step: &'static str,
    name: &str,
    attempts: u32,
    lock: LockDiscipline,
    context: String,
) -> PartitionError {
    if is_lock_conflict(&error) {
        PartitionError::LockTimeout {
            step,
            partition: name.to_string(),
            attempts,
            lock_timeout: lock.lock_timeout,
        }
    } else {
        PartitionError::Database {
            context,
            source: error,
        }
    }
}

async fn attached_bounds_in(
    conn: &mut PgConnection,
    name: &str,
) -> Result<(String, Bounds), PartitionError> {
    let partitions = catalog::read_partitions(&mut *conn)
        .await
        .map_err(db_error("re-reading the partitions under lock"))?;
    qualified_and_bounds(partitions, name, || {
        "it was detached by someone else meanwhile".into()
    })
}

/// What the drop transaction found.
enum DropStep {
    Dropped,
    /// The table is not a detached table any more.
    NotDetached,
    /// Rows became inside retention since the detach (billing recorded a
    /// longer tier meanwhile): the table is to be attached again.
    Keep {
        rows: i64,
    },
}

/// Commits the intent, then drops the detached table under `lock_timeout`,
/// after counting its rows again under a SHARE lock on the tier history: a
/// tier row recorded since the detach's count (or since a leftover's first
/// look) is seen, and the table goes back into probe_minute instead.
async fn drop_detached(
    conn: &mut PgConnection,
    detached: &DetachedTable<'_>,
    bounds: Bounds,
    settings: DropSettings<'_>,
) -> Result<u32, PartitionError> {
    let name = detached.name;
    let lock = settings.lock;
    let payload = detached.payload(bounds);
    audit::record(
        &mut *conn,
        settings.now,
        actions::DROP_INTENT,
        name,
        settings.actor,
        payload,
    )
    .await
    .map_err(db_error(format!("recording the intent to drop {name}")))?;
    let mut attempt = 1;
    let quoted = &detached.relation;
    let result = async {
        let sql = |context: &str| db_error(format!("{context} {name}"));
        let mut tx = conn.begin().await.map_err(sql("starting the drop of"))?;
        lock.apply(&mut tx)
            .await
            .map_err(sql("setting lock_timeout to drop"))?;
        // Only a plain table that is no longer a partition may go here:
        // whatever happened since the detach, an attached partition is not
        // dropped by this path.
        if !catalog::is_detached_table(&mut *tx, quoted)
            .await
            .map_err(sql("looking up"))?
        {
            return Ok(DropStep::NotDetached);
        }
        // The table first (its readers are waited for without holding the
        // tier history), then the count that decides, under the history.
        let statement = format!("LOCK TABLE {quoted} IN ACCESS EXCLUSIVE MODE");
        retry_locked(&mut tx, &statement, lock, &mut attempt)
            .await
            .map_err(|e| lock_error(e, "drop", name, attempt, lock, format!("locking {name}")))?;
        let rows = locked_count(&mut tx, quoted, settings, lock, &mut attempt, name).await?;
        if rows > 0 {
            // Rolled back when the transaction is dropped: the tier history
            // is free again before the table is attached (keeping is safe
            // without it).
            return Ok(DropStep::Keep { rows });
        }
        let statement = format!("DROP TABLE {quoted}");
        retry_locked(&mut tx, &statement, lock, &mut attempt)
            .await
            .map_err(|e| lock_error(e, "drop", name, attempt, lock, format!("dropping {name}")))?;
        audit::record(
            &mut *tx,
            settings.now,
            actions::DROP,
            name,
            settings.actor,
            serde_json::json!({
                "table": TABLE, "from": bounds.from, "to": bounds.to, "schema": detached.schema,
                "attempts": attempt,
            }),
        )
        .await
        .map_err(sql("recording the drop of"))?;
        tx.commit().await.map_err(sql("committing the drop of"))?;
        Ok::<_, PartitionError>(DropStep::Dropped)
    }
    .await;
    match result {
        Ok(DropStep::Dropped) => {
            tracing::info!(partition = %name, %bounds, attempts = attempt, "dropped partition");
            Ok(attempt)
        }
        Ok(DropStep::NotDetached) => Err(PartitionError::NotAPartition {
            partition: name.to_string(),
            reason: "it is not a detached table any more; left as is".into(),
        }),
        Ok(DropStep::Keep { rows }) => {
            attach_again(conn, detached, bounds, rows, settings).await?;
            Err(PartitionError::RowsInsideRetention {
                partition: name.to_string(),
                rows,
            })
        }
        Err(error) => {
            abandon(conn, name, "drop", &error, settings).await;
            Err(error)
        }
    }
}

/// Attaches the detached table `name` to probe_minute again with the bounds
/// it was detached with, because `rows` of it are inside retention after
/// all: a month is never left detached holding rows that must be kept (they
/// would be invisible to every query of probe_minute). Its own transaction,
/// without the tier history's lock, under `lock_timeout` with retries; when
/// it fails the table stays detached and the next reconcile tries again
/// (`drop_leftover`), and the error says so.
async fn attach_again(
    conn: &mut PgConnection,
    detached: &DetachedTable<'_>,
    bounds: Bounds,
    rows: i64,
    settings: DropSettings<'_>,
) -> Result<(), PartitionError> {
    let name = detached.name;
    let lock = settings.lock;
    let quoted = &detached.relation;
    let mut attempt = 1;
    let result = async {
        let sql = |context: &str| db_error(format!("{context} {name}"));
        let mut tx = conn.begin().await.map_err(sql("starting the attach of"))?;
        lock.apply(&mut tx)
            .await
            .map_err(sql("setting lock_timeout to attach"))?;
        // What probe_minute gained while the month was detached, which the
        // ATTACH requires: first the columns, then the constraints on them.
        let added = add_missing_columns(&mut tx, quoted, name).await?;
        add_missing_constraints(&mut tx, quoted, name).await?;
        let statement = format!(
            "ALTER TABLE {TABLE} ATTACH PARTITION {quoted} FOR VALUES FROM ('{}') TO ('{}')",
            bounds.from.to_rfc3339(),
            bounds.to.to_rfc3339()
        );
        retry_locked(&mut tx, &statement, lock, &mut attempt)
            .await
            .map_err(|e| {
                lock_error(
                    e,
                    "attach",
                    name,
                    attempt,
                    lock,
                    format!("attaching {name} again"),
                )
            })?;
        audit::record(
            &mut *tx,
            settings.now,
            actions::ABANDONED,
            name,
            settings.actor,
            serde_json::json!({
                "table": TABLE, "step": "drop", "from": bounds.from, "to": bounds.to,
                "rowsInsideRetention": rows, "attachedAgain": true,
                "columnsAdded": added,
            }),
        )
        .await
        .map_err(sql("recording the attach of"))?;
        tx.commit().await.map_err(sql("committing the attach of"))
    }
    .await;
    match result {
        Ok(()) => {
            tracing::warn!(partition = %name, %bounds, rows, "rows are inside retention after the detach; attached again");
            Ok(())
        }
        Err(error) => {
            tracing::error!(partition = %name, %bounds, rows, %error, "a detached month holds rows inside retention and could not be attached again; the next reconcile tries again");
            abandon(conn, name, "attach", &error, settings).await;
            Err(error)
        }
    }
}

/// A column of probe_minute as the catalog renders it: name, type with
/// modifiers, default or generation expression, NOT NULL, generated
/// stored, and its collation when it is not its type's own.
type ParentColumn = (String, String, Option<String>, bool, bool, Option<String>);

/// Gives the detached table `quoted` every column `probe_minute` gained
/// while it was detached (a migration that ran meanwhile), defined as the
/// parent defines it: type, default or generation expression, NOT NULL. The
/// migration did the same to every attached month, so the month's rows end
/// up as they would have had it stayed attached (a volatile default is
/// evaluated now, not when the migration ran). Without this the ATTACH
/// fails and the month stays detached with rows inside retention.
/// Columns the table has and the parent lost, or types that differ, are
/// left for a person: aligning them would delete or rewrite data, and the
/// ATTACH's error says which.
async fn add_missing_columns(
    tx: &mut PgConnection,
    quoted: &str,
    name: &str,
) -> Result<Vec<String>, PartitionError> {
    // The collation only when it is not the type's own: `format_type`
    // does not render it, and the ATTACH requires the parent's.
    let missing: Vec<ParentColumn> = sqlx::query_as(
        "SELECT p.attname::text, format_type(p.atttypid, p.atttypmod), \
                pg_get_expr(d.adbin, d.adrelid), p.attnotnull, p.attgenerated = 's', \
                (SELECT quote_ident(n.nspname) || '.' || quote_ident(co.collname) \
                 FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace \
                 JOIN pg_type t ON t.oid = p.atttypid \
                 WHERE co.oid = p.attcollation AND p.attcollation <> t.typcollation) \
         FROM pg_attribute p \
         LEFT JOIN pg_attrdef d ON d.adrelid = p.attrelid AND d.adnum = p.attnum \
         WHERE p.attrelid = $1::regclass AND p.attnum > 0 AND NOT p.attisdropped \
           AND NOT EXISTS (SELECT FROM pg_attribute c WHERE c.attrelid = to_regclass($2) \
                           AND c.attname = p.attname AND c.attnum > 0 AND NOT c.attisdropped) \
         ORDER BY p.attnum",
    )
    .bind(TABLE)
    .bind(quoted)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error(format!(
        "comparing the columns of {name} with {TABLE}"
    )))?;
    let mut added = Vec::with_capacity(missing.len());
    for (column, type_, expression, not_null, generated, collation) in missing {
        let mut definition = format!("{} {type_}", super::quote_ident(&column));
        if let Some(collation) = collation {
            definition.push_str(&format!(" COLLATE {collation}"));
        }
        match (expression, generated) {
            (Some(expression), true) => {
                definition.push_str(&format!(" GENERATED ALWAYS AS ({expression}) STORED"));
            }
            (Some(expression), false) => definition.push_str(&format!(" DEFAULT {expression}")),
            (None, _) => {}
        }
        if not_null {
            definition.push_str(" NOT NULL");
        }
        // The definition is the catalog's own rendering of the parent's column.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {quoted} ADD COLUMN {definition}"
        )))
        .execute(&mut *tx)
        .await
        .map_err(db_error(format!(
            "adding {TABLE}'s column {column} to the detached {name}"
        )))?;
        tracing::warn!(partition = %name, column = %column, definition = %definition, "the detached month lacked a column probe_minute gained meanwhile; added as probe_minute defines it");
        added.push(column);
    }
    Ok(added)
}

/// Gives the detached table `quoted` the NOT NULL and CHECK constraints
/// `probe_minute` gained while it was detached (the ATTACH requires every
/// one of them). Each is checked against the month's rows as it is added:
/// a row that violates one fails the attach, and the month stays detached
/// with that error (nothing is rewritten to fit).
async fn add_missing_constraints(
    tx: &mut PgConnection,
    quoted: &str,
    name: &str,
) -> Result<(), PartitionError> {
    let not_null: Vec<String> = sqlx::query_scalar(
        "SELECT p.attname::text FROM pg_attribute p \
         JOIN pg_attribute c ON c.attrelid = to_regclass($2) AND c.attname = p.attname \
              AND c.attnum > 0 AND NOT c.attisdropped \
         WHERE p.attrelid = $1::regclass AND p.attnum > 0 AND NOT p.attisdropped \
           AND p.attnotnull AND NOT c.attnotnull \
         ORDER BY p.attnum",
    )
    .bind(TABLE)
    .bind(quoted)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error(format!(
        "comparing the NOT NULL columns of {name} with {TABLE}"
    )))?;
    let checks: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.conname::text, pg_get_constraintdef(p.oid) FROM pg_constraint p \
         WHERE p.conrelid = $1::regclass AND p.contype = 'c' AND NOT p.connoinherit \
           AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conrelid = to_regclass($2) \
                           AND c.contype = 'c' AND c.conname = p.conname) \
         ORDER BY p.conname",
    )
    .bind(TABLE)
    .bind(quoted)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error(format!(
        "comparing the constraints of {name} with {TABLE}"
    )))?;
    let statements = not_null
        .iter()
        .map(|column| format!("ALTER COLUMN {} SET NOT NULL", super::quote_ident(column)))
        .chain(checks.iter().map(|(constraint, definition)| {
            format!(
                "ADD CONSTRAINT {} {definition}",
                super::quote_ident(constraint)
            )
        }));
    for statement in statements {
        // The catalog's own rendering of the parent's constraint.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {quoted} {statement}"
        )))
        .execute(&mut *tx)
        .await
        .map_err(db_error(format!(
            "giving the detached {name} {TABLE}'s {statement}"
        )))?;
        tracing::warn!(partition = %name, %statement, "the detached month lacked a constraint probe_minute gained meanwhile; added as probe_minute defines it");
    }
    Ok(())
}

/// Records that a step gave up, so the audit log explains an intent row
/// without a matching action. Best effort: the step's own error is what
/// the caller reports.
async fn abandon(
    conn: &mut PgConnection,
    name: &str,
    step: &str,
    error: &PartitionError,
    settings: DropSettings<'_>,
) {
    let recorded = audit::record(
        &mut *conn,
        settings.now,
        actions::ABANDONED,
        name,
        settings.actor,
        serde_json::json!({"table": TABLE, "step": step, "error": error.to_string()}),
    )
    .await;
    if let Err(audit_error) = recorded {
        tracing::warn!(partition = %name, %audit_error, "could not record an abandoned {step}");
    }
}
