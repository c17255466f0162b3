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
