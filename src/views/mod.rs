//! Derived views kept current every minute at the cost of that minute:
//! the daily and monthly rollups and the suppression-cluster log.
//!
//! Work runs in the operator leader, minute by minute behind a watermark
//! of its own that never passes the slowest shard's watermark (every region
//! of a minute is in). Each minute is applied exactly once, in one
//! transaction with the views watermark. A day is recomputed exactly from
//! `probe_minute` when it closes, and its month from `probe_day` then.
//! Transactions hold the erasure lock shared, so an erasure (exclusive) can
//! never be undone by a concurrent rollup.
//!
//! - [`maintenance`]: one pass: the views watermark, the minutes all active
//!   shards have archived, day closes, the hourly snapshot, ANALYZE of the
//!   current partition and the plan check when they are due.
//! - [`rollups`]: `probe_day` (a minute at a time, exact at the day's
//!   close) and `probe_month`.
//! - [`clusters`]: the suppression-cluster log and its hourly history.
//! - [`plan_check`]: the alert router's query plan (seed 004 failure mode 5).
//! - [`leader_loop`]: the leader's loop and what each pass publishes
//!   (metrics, logs, the error of a failed pass).

mod clusters;
mod leader_loop;
mod maintenance;
mod plan_check;
mod rollups;

pub use leader_loop::{maintain_and_report, run_forever};
pub(crate) use maintenance::progress;
pub use maintenance::{
    MaintenanceReport, ViewSettings, WaitingShard, apply_minute, apply_minute_in, maintain,
};
pub use plan_check::{PlanCheck, PlanProblem, alert_query_uses_index, check_alert_query_plan};
pub use rollups::{close_day, recompute_day};

#[derive(Debug, thiserror::Error)]
#[error("derived views: {context}: {source}")]
pub struct ViewsError {
    context: &'static str,
    #[source]
    source: sqlx::Error,
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> ViewsError {
    move |source| ViewsError { context, source }
}

/// A periodic task of the views, scheduled by a time column of the views
/// watermark row.
#[derive(Debug, Clone, Copy)]
enum Periodic {
    /// ANALYZE of the current month's partition, every 5 minutes.
    Analyze,
    /// The alert router's plan check, every minute.
    PlanCheck,
}

impl Periodic {
    /// The claim: one statement that moves the task's time to `now` when it
    /// is due, so only one pass (of one leader) runs it.
    fn claim(self) -> &'static str {
        match self {
            Self::Analyze => {
                "UPDATE derived_views_watermark SET last_analyze_at = $1 \
                 WHERE last_analyze_at IS NULL OR last_analyze_at <= $1 - interval '5 minutes'"
            }
            Self::PlanCheck => {
                "UPDATE derived_views_watermark SET plan_checked_at = $1 \
                 WHERE plan_checked_at IS NULL OR plan_checked_at <= $1 - interval '1 minute'"
            }
        }
    }

    /// Claims the task at `now`: true when it is due and this pass runs it.
    async fn claim_due(
        self,
        pool: &sqlx::PgPool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, ViewsError> {
        let claimed = sqlx::query(self.claim())
            .bind(now)
            .execute(pool)
            .await
            .map_err(db(match self {
                Self::Analyze => "claiming the analyze",
                Self::PlanCheck => "claiming the plan check",
            }))?;
        Ok(claimed.rows_affected() == 1)
    }
}
