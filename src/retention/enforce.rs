//! Row-level enforcement inside the UTC window.
//!
//! A **run** belongs to one occurrence of the window. It visits every tenant
//! with a tier row, one tenant per **pass**, starting after the tenant where
//! the previous run stopped (so a run cut short by the window or its cap is
//! continued tomorrow instead of starting over at the first tenant), plus
//! one pass over the cross-tenant tables (the suppression history and the
//! rejected verdicts). A pass deletes at
//! most `maxRowsPerTenantPass` rows; tenants whose pass hit that cap are
//! revisited in a further cycle while the window is open and the run is
//! under `maxRowsPerRun`.
//!
//! Rows go in short transactions of at most `batch_rows` rows
//! (`DELETE ... USING (SELECT ctid ... ORDER BY key LIMIT n)`), each of which
//! also updates the run's row: counters and cursor are exact after a crash,
//! and the next call resumes from the last commit. A batch holds the
//! erasure advisory lock shared, like a drain tick, so it never interleaves
//! with an erasure's transaction; it takes no lock the drain needs.
//!
//! Each call works for at most `slice` of wall time and returns, so the
//! reconciler can report progress and other objects get reconciled.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::items::{WorkItem, delete_batch, with_rows};
use super::ranges::expired_ranges;
use super::store::{
    self, NewRun, OUTCOME_COMPLETE, OUTCOME_RUN_CAP, OUTCOME_WINDOW_CLOSED, RowsDeleted, RunRow,
};
use super::tiers::Table;
use super::{RetentionError, db};
use crate::api::RetentionPolicySpec;
use crate::api::common::{UtcWindow, WindowError};
use crate::api::retention_policy::Tiers;
use crate::clock::Clock;
use crate::db::locks;

/// Rows per delete transaction: big enough to amortise the round trips,
/// small enough that no transaction holds locks for long.
pub const DEFAULT_BATCH_ROWS: i64 = 5_000;
/// Wall time one call may spend deleting before it returns.
pub const DEFAULT_SLICE: Duration = Duration::from_secs(20);

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    pub window: UtcWindow,
    pub max_rows_per_run: i64,
    pub max_rows_per_pass: i64,
    pub batch_rows: i64,
    pub slice: Duration,
    /// Sleep between two batches, to leave I/O to the drain.
    pub pause: Duration,
}

impl Settings {
    pub fn from_spec(spec: &RetentionPolicySpec) -> Result<Self, WindowError> {
        Ok(Self {
            window: UtcWindow::parse(&spec.enforcement.window)?,
            max_rows_per_run: spec.enforcement.max_rows_per_run.max(1),
            max_rows_per_pass: spec.enforcement.max_rows_per_tenant_pass.max(1),
            batch_rows: DEFAULT_BATCH_ROWS,
            slice: DEFAULT_SLICE,
            pause: Duration::ZERO,
        })
    }
}

/// Start of the occurrence of `window` that contains `now`, if it is open.
pub(crate) fn occurrence_start(window: &UtcWindow, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if !window.contains(now) {
        return None;
    }
    let today = now.date_naive().and_time(window.start).and_utc();
    Some(if today <= now {
        today
    } else {
        today - chrono::Duration::days(1)
    })
}

/// The next time `window` opens, strictly after `now`.
pub(crate) fn next_window_start(window: &UtcWindow, now: DateTime<Utc>) -> DateTime<Utc> {
    let today = now.date_naive().and_time(window.start).and_utc();
    if today > now {
        today
    } else {
        today + chrono::Duration::days(1)
    }
}

/// What one call did.
#[derive(Debug, Default)]
pub struct StepReport {
    /// Rows deleted by this call, per table and tier.
    pub deleted: RowsDeleted,
    /// Runs that ended during this call (a run left open by an earlier
    /// window, and the current one).
    pub finished: Vec<RunRow>,
    /// The run of the open window, after this call.
    pub current: Option<RunRow>,
}

impl StepReport {
    /// Whether the window is open and its run is not finished.
    pub(crate) fn in_progress(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|run| run.finished_at.is_none())
    }

    pub fn rows(&self) -> i64 {
        self.deleted.values().flat_map(|tiers| tiers.values()).sum()
    }
}

/// What enforcement needs besides the database.
pub struct Enforcer<'a> {
    pub pool: &'a PgPool,
    /// The enforced tier table (the previous one while a shrink is held).
    pub tiers: &'a Tiers,
    pub policy_hash: &'a str,
    pub settings: &'a Settings,
    pub clock: &'a dyn Clock,
    /// Audit subject, `RetentionPolicy/namespace/name`.
    pub subject: &'a str,
}

/// The subject of a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    History,
    Tenant(Uuid),
}

fn current_subject(run: &RunRow) -> Option<Subject> {
    match (run.current_tenant, run.current_history) {
        (Some(tenant), _) => Some(Subject::Tenant(tenant)),
        (None, true) => Some(Subject::History),
        (None, false) => None,
    }
}

/// The work left in the pass in progress (rebuilt after a restart).
struct Pass {
    subject: Subject,
    items: VecDeque<WorkItem>,
}

/// The next thing a run does.
enum Action {
    Finish(&'static str),
    Start(Subject),
    Wrap,
    NextCycle,
    Batch,
}

impl Enforcer<'_> {
    /// Closes a run the window left open, then, while the window is open,
    /// starts or continues its run for at most `settings.slice`.
    pub async fn step(&self) -> Result<StepReport, RetentionError> {
        let mut report = StepReport::default();
        let now = self.clock.now();
        let occurrence = occurrence_start(&self.settings.window, now);
        if let Some(open) = store::open_run(self.pool).await?
            && Some(open.window_start) != occurrence
            && let Some(closed) = self.close(open.id).await?
        {
            report.finished.push(closed);
        }
        let Some(window_start) = occurrence else {
            return Ok(report);
        };
        let run = match store::run_for_window(self.pool, window_start).await? {
            Some(run) => run,
            None => {
                let new = NewRun {
                    window_start,
                    now,
                    policy_hash: self.policy_hash,
                    max_rows_per_run: self.settings.max_rows_per_run,
                    max_rows_per_pass: self.settings.max_rows_per_pass,
                };
                let run = store::start_run(self.pool, &new).await?;
                tracing::info!(run = run.id, start_after = ?run.start_after, "retention run started");
                run
            }
        };
        if run.finished_at.is_some() {
            report.current = Some(run);
            return Ok(report);
        }
        self.work(run, &mut report).await?;
        Ok(report)
    }

    /// Only closes a run a past window left open (nothing is deleted): for
    /// a suspended policy, and when enforcement is withheld.
    pub(crate) async fn close_stale(&self) -> Result<Vec<RunRow>, RetentionError> {
        let occurrence = occurrence_start(&self.settings.window, self.clock.now());
        let mut closed = Vec::new();
        if let Some(open) = store::open_run(self.pool).await?
            && Some(open.window_start) != occurrence
            && let Some(run) = self.close(open.id).await?
        {
            closed.push(run);
        }
        Ok(closed)
    }

    /// Ends run `id` as window-closed, at its last progress, and audits it.
    async fn close(&self, id: i64) -> Result<Option<RunRow>, RetentionError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("beginning to close a run"))?;
        let mut run = store::lock_run(&mut tx, id).await?;
        if run.finished_at.is_some() {
            return Ok(None);
        }
        run.finished_at = Some(run.progress_at);
        run.outcome = Some(OUTCOME_WINDOW_CLOSED.into());
        run.version += 1;
        store::save_run(&mut tx, &run).await?;
        store::audit(
            &mut *tx,
            self.clock.now(),
            store::actions::RUN,
            self.subject,
            store::run_payload(&run),
        )
        .await?;
        tx.commit().await.map_err(db("closing a run"))?;
        tracing::info!(
            run = run.id,
            rows = run.rows_total,
            "retention run closed with its window"
        );
        Ok(Some(run))
    }

    async fn work(&self, mut run: RunRow, report: &mut StepReport) -> Result<(), RetentionError> {
        let deadline = Instant::now() + self.settings.slice;
        let mut pass: Option<Pass> = None;
        loop {
            if Instant::now() >= deadline || !self.settings.window.contains(self.clock.now()) {
                break;
            }
            let started = Instant::now();
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(db("beginning a retention batch"))?;
            // Shared, like a drain tick: an erasure (exclusive) never runs
            // between our read of a row and its delete.
            sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
                .bind(locks::ERASURE)
                .execute(&mut *tx)
                .await
                .map_err(db("taking the erasure lock (shared)"))?;
            let mut row = store::lock_run(&mut tx, run.id).await?;
            if row.version != run.version || row.finished_at.is_some() {
                // Another writer moved the run on: start from what it committed.
                drop(tx);
                pass = None;
                let done = row.finished_at.is_some();
                run = row;
                if done {
                    break;
                }
                continue;
            }
            let now = self.clock.now();
            let mut deleted = RowsDeleted::new();
            match self.decide(&mut tx, &row).await? {
                Action::Finish(outcome) => {
                    row.finished_at = Some(now);
                    row.outcome = Some(outcome.into());
                }
                Action::Wrap => {
                    // Past the last tenant: continue from the first, up to
                    // where this run started.
                    row.wrapped = true;
                    row.cursor = None;
                }
                Action::NextCycle => {
                    let mut pending = std::mem::take(&mut row.capped_tenants);
                    pending.sort();
                    row.pending = pending;
                    row.cycle += 1;
                }
                Action::Start(subject) => {
                    match subject {
                        Subject::History => {
                            row.current_history = true;
                            row.history_cycle = row.cycle;
                        }
                        Subject::Tenant(tenant) => row.current_tenant = Some(tenant),
                    }
                    row.current_rows = 0;
                }
                Action::Batch => {
                    let Some(subject) = current_subject(&row) else {
                        return Err(RetentionError::Invariant("a batch without a pass".into()));
                    };
                    if pass.as_ref().is_none_or(|p| p.subject != subject) {
                        pass = Some(self.build_pass(&mut tx, subject, row.as_of).await?);
                    }
                    let Some(work) = pass.as_mut() else {
                        return Err(RetentionError::Invariant("a pass was just built".into()));
                    };
                    self.batch(&mut tx, &mut row, work, &mut deleted).await?;
                    if work.items.is_empty() {
                        end_pass(&mut row, false);
                        pass = None;
                    } else if row.current_rows >= row.max_rows_per_pass {
                        end_pass(&mut row, true);
                        pass = None;
                    }
                }
            }
            row.policy_hash = self.policy_hash.to_string();
            row.version += 1;
            row.progress_at = now;
            row.active_seconds += started.elapsed().as_secs_f64();
            store::save_run(&mut tx, &row).await?;
            if row.finished_at.is_some() {
                store::audit(
                    &mut *tx,
                    now,
                    store::actions::RUN,
                    self.subject,
                    store::run_payload(&row),
                )
                .await?;
            }
            tx.commit()
                .await
                .map_err(db("committing a retention batch"))?;
            merge(&mut report.deleted, &deleted);
            let finished = row.finished_at.is_some();
            let any = deleted
                .values()
                .flat_map(|tiers| tiers.values())
                .any(|n| *n > 0);
            run = row;
            if finished {
                tracing::info!(run = run.id, rows = run.rows_total, outcome = ?run.outcome, "retention run finished");
                report.finished.push(run.clone());
                break;
            }
            if any && !self.settings.pause.is_zero() {
                tokio::time::sleep(self.settings.pause).await;
            }
        }
        report.current = Some(run);
        Ok(())
    }

    async fn decide(
        &self,
        conn: &mut PgConnection,
        row: &RunRow,
    ) -> Result<Action, RetentionError> {
        if row.rows_total >= row.max_rows_per_run {
            return Ok(Action::Finish(OUTCOME_RUN_CAP));
        }
        if current_subject(row).is_some() {
            return Ok(Action::Batch);
        }
        if !row.history_done && row.history_cycle < row.cycle {
            return Ok(Action::Start(Subject::History));
        }
        if row.cycle == 1 {
            let up_to = if row.wrapped { row.start_after } else { None };
            match store::next_tenant(&mut *conn, row.cursor, up_to).await? {
                Some(tenant) => return Ok(Action::Start(Subject::Tenant(tenant))),
                None if !row.wrapped && row.start_after.is_some() => return Ok(Action::Wrap),
                None => {}
            }
        } else if let Some(tenant) = row.pending.first() {
            return Ok(Action::Start(Subject::Tenant(*tenant)));
        }
        if row.capped_tenants.is_empty() && row.history_done {
            Ok(Action::Finish(OUTCOME_COMPLETE))
        } else {
            Ok(Action::NextCycle)
        }
    }

    /// The expired rows of one subject, as work items that have rows.
    async fn build_pass(
        &self,
        conn: &mut PgConnection,
        subject: Subject,
        as_of: DateTime<Utc>,
    ) -> Result<Pass, RetentionError> {
        let mut items = VecDeque::new();
        match subject {
            Subject::History => {
                items.extend(WorkItem::cross_tenant_tables(self.tiers, as_of));
            }
            Subject::Tenant(tenant) => {
                let spans = store::tier_spans(&mut *conn, tenant).await?;
                for table in Table::PER_TENANT {
                    let ranges = expired_ranges(&spans, self.tiers, table, as_of);
                    if ranges.is_empty() {
                        continue;
                    }
                    let servers = store::servers(&mut *conn, table, tenant).await?;
                    let candidates = WorkItem::for_servers(table, tenant, &servers, &ranges);
                    items.extend(with_rows(conn, candidates).await?);
                }
            }
        }
        Ok(Pass { subject, items })
    }

    /// Deletes up to one batch of the pass, within the pass and run caps.
    async fn batch(
        &self,
        conn: &mut PgConnection,
        row: &mut RunRow,
        pass: &mut Pass,
        deleted: &mut RowsDeleted,
    ) -> Result<(), RetentionError> {
        let limit = self
            .settings
            .batch_rows
            .min(row.max_rows_per_pass - row.current_rows)
            .min(row.max_rows_per_run - row.rows_total);
        let mut remaining = limit;
        while remaining > 0 {
            let Some(item) = pass.items.front_mut() else {
                break;
            };
            let batch = delete_batch(conn, item, remaining).await?;
            if batch.deleted > 0 {
                *deleted
                    .entry(item.table.name().to_string())
                    .or_default()
                    .entry(item.tier.clone())
                    .or_insert(0) += batch.deleted;
            }
            if batch.found < remaining {
                // Fewer than asked: nothing of this item is left.
                pass.items.pop_front();
            }
            // Rows another transaction took still count against the limit,
            // so a batch never selects more than `limit` rows.
            remaining -= batch.found;
        }
        let total: i64 = deleted.values().flat_map(|tiers| tiers.values()).sum();
        row.rows_total += total;
        row.current_rows += total;
        merge(&mut row.rows_deleted.0, deleted);
        Ok(())
    }
}

/// Ends the pass in progress; a capped tenant is revisited in the next cycle.
fn end_pass(row: &mut RunRow, capped: bool) {
    match current_subject(row) {
        Some(Subject::Tenant(tenant)) => {
            if row.cycle == 1 {
                row.cursor = Some(tenant);
            } else {
                row.pending.retain(|pending| *pending != tenant);
            }
            row.tenant_passes += 1;
            if capped {
                row.capped_tenants.push(tenant);
                row.capped_passes += 1;
            }
        }
        Some(Subject::History) => {
            row.history_done = !capped;
            if capped {
                row.capped_passes += 1;
            }
        }
        None => {}
    }
    row.current_tenant = None;
    row.current_history = false;
    row.current_rows = 0;
}

fn merge(into: &mut RowsDeleted, from: &RowsDeleted) {
    for (table, tiers) in from {
        for (tier, n) in tiers {
            *into
                .entry(table.clone())
                .or_default()
                .entry(tier.clone())
                .or_insert(0) += n;
        }
    }
}

/// Per-table sums of a per-table-and-tier map.
pub fn by_table(rows: &RowsDeleted) -> BTreeMap<String, i64> {
    rows.iter()
        .map(|(table, tiers)| (table.clone(), tiers.values().sum()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn occurrences_of_plain_and_wrapping_windows() {
        let at = |d, h, m| Utc.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap();
        let night = UtcWindow::parse("03:00-05:00").unwrap();
        assert_eq!(occurrence_start(&night, at(23, 4, 10)), Some(at(23, 3, 0)));
        assert_eq!(occurrence_start(&night, at(23, 5, 0)), None);
        assert_eq!(next_window_start(&night, at(23, 4, 10)), at(24, 3, 0));
        assert_eq!(next_window_start(&night, at(23, 2, 0)), at(23, 3, 0));
        let wrapping = UtcWindow::parse("23:00-01:00").unwrap();
        assert_eq!(
            occurrence_start(&wrapping, at(24, 0, 30)),
            Some(at(23, 23, 0))
        );
        assert_eq!(
            occurrence_start(&wrapping, at(23, 23, 30)),
            Some(at(23, 23, 0))
        );
        assert_eq!(next_window_start(&wrapping, at(24, 0, 30)), at(24, 23, 0));
    }
}
